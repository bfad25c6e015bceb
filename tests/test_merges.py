"""Merges as versions: the invariants users rely on, receipts that re-run, stored Fishers."""

from __future__ import annotations

import pytest
import torch

from provenance.errors import InvalidParameterError, NotFoundError
from provenance.kernels import merge as merge_kernels
from provenance.merges import load_fisher, receipt_check
from provenance.patches import same_bits


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(16, 8, generator=g), "b": torch.randn(8, generator=g)}


def _positive(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.rand(16, 8, generator=g) + 0.1, "b": torch.rand(8, generator=g) + 0.1}


@pytest.fixture
def two(ledger):
    base = ledger.commit(_state(0), message="base")
    a = ledger.commit(_state(1), parent=base, message="contributor a")
    b = ledger.commit(_state(2), parent=base, message="contributor b")
    return ledger, base, a, b


def test_one_model_with_weight_one_is_returned_exactly(two):
    ledger, _, a, _ = two
    ledger.store_fisher(a, _positive(3))
    for method in ("fisher", "average"):
        merged = ledger.merge([a], method=method, weights=[1.0], message=f"{method} of one")
        out = ledger.checkout(merged)
        assert all(same_bits(out[n], t) for n, t in _state(1).items())
        assert merged.parents == [a.version_id] and ledger.manifest(merged)["w"].encoding == "unchanged"


def test_equal_fishers_give_the_plain_average_and_a_zero_fisher_removes_a_model(two):
    ledger, _, a, b = two
    same = _positive(4)
    merged = ledger.merge([a, b], method="fisher", fisher=[same, same], message="equal fishers")
    average = ledger.merge([a, b], method="average", message="average")
    expected = {n: (_state(1)[n] + _state(2)[n]) / 2 for n in same}
    for n, t in ledger.checkout(merged).items():
        torch.testing.assert_close(t, expected[n], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(t, ledger.checkout(average)[n], rtol=1e-6, atol=1e-6)
    zero = {n: torch.zeros_like(t) for n, t in same.items()}
    only_a = ledger.merge([a, b], method="fisher", fisher={a.version_id: same, b.version_id[:8]: zero}, eps=0.0,
                          message="b has no information")
    for n, t in ledger.checkout(only_a).items():
        torch.testing.assert_close(t, _state(1)[n], rtol=1e-6, atol=1e-6)
    assert ledger.version(only_a).parents == [a.version_id, b.version_id]


def test_fisher_weights_each_element(two):
    ledger, _, a, b = two
    fa, fb = _positive(5), _positive(6)
    merged = ledger.checkout(ledger.merge([a, b], method="fisher", fisher=[fa, fb], weights=[0.3, 0.7], message="m"))
    for n in fa:
        num = 0.3 * fa[n].double() * _state(1)[n].double() + 0.7 * fb[n].double() * _state(2)[n].double()
        expected = num / (0.3 * fa[n].double() + 0.7 * fb[n].double())
        torch.testing.assert_close(merged[n].double(), expected, rtol=1e-5, atol=1e-6)


def test_task_arithmetic_and_ties_start_from_the_shared_parent(two):
    ledger, base, a, b = two
    ta = ledger.checkout(ledger.merge([a, b], method="task_arithmetic", weights=[0.5, 1.0], message="ta"))
    for n, t in ta.items():
        expected = _state(0)[n] + 0.5 * (_state(1)[n] - _state(0)[n]) + 1.0 * (_state(2)[n] - _state(0)[n])
        torch.testing.assert_close(t, expected, rtol=1e-5, atol=1e-5)
    ties = ledger.merge([a, b], method="ties", density=1.0, message="ties")
    assert ledger.receipt(ties)["base_version"] == base.version_id and ledger.receipt(ties)["density"] == 1.0
    out = ledger.checkout(ties)
    agree = torch.sign(_state(1)["b"] - _state(0)["b"]) == torch.sign(_state(2)["b"] - _state(0)["b"])
    mean = (_state(1)["b"] + _state(2)["b"]) / 2
    torch.testing.assert_close(out["b"][agree], mean[agree], rtol=1e-5, atol=1e-5)


def test_merging_lora_versions_merges_their_products(ledger):
    base_state = {"w": torch.randn(12, 10, generator=torch.Generator().manual_seed(0))}
    base = ledger.commit(base_state, message="base")
    versions, deltas = [], []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        b, a = torch.randn(12, 2, generator=g), torch.randn(2, 10, generator=g)
        from provenance.kernels.patch import apply_low_rank

        target = {"w": apply_low_rank(base_state["w"], b, a, 0.5)}
        v = ledger.commit(target, parent=base, low_rank={"w": (b, a, 0.5)}, message=f"lora {seed}")
        assert ledger.manifest(v)["w"].encoding == "low_rank"
        versions.append(v)
        deltas.append(0.5 * (b @ a))
    merged = ledger.checkout(ledger.merge(versions, method="average", message="lora average"))
    # the average of base + s·BᵢAᵢ, not base + s·(mean B)(mean A)
    torch.testing.assert_close(merged["w"], base_state["w"] + (deltas[0] + deltas[1]) / 2, rtol=1e-5, atol=1e-5)


def test_receipts_rerun_bit_for_bit(two):
    ledger, _, a, b = two
    ledger.store_fisher(a, _positive(7))
    ledger.store_fisher(b, _positive(8), keep=0.25)  # a top-k sketch
    with pytest.raises(NotFoundError, match="no audit 'abcd1234' in the ledger"):  # a merge cites a stored gate
        ledger.merge([a, b], method="fisher", message="cites nothing", audit="abcd1234")
    merged = ledger.merge([a, b], method="fisher", normalize=True, message="from stored fishers")
    receipt = ledger.receipt(merged)
    assert (receipt["method"], receipt["inputs"], receipt["weights"], receipt["eps"], receipt["normalize"]) == (
        "fisher", [a.version_id, b.version_id], [0.5, 0.5], 1e-6, True)
    assert receipt["audit_id"] is None and receipt["kernel"].startswith("torch")
    assert receipt_check(ledger, merged) == {"b": True, "w": True}
    sketch = load_fisher(ledger, b, "w")
    assert int((sketch > 0).sum()) == 32 and sketch.shape == (16, 8)  # 25% of 128 entries kept
    for method in ("average", "task_arithmetic", "ties"):
        assert all(receipt_check(ledger, ledger.merge([a, b], method=method, message=method)).values())
    assert ledger.receipt(a) is None
    with pytest.raises(InvalidParameterError, match="is not a merge"):
        receipt_check(ledger, a)


def test_gc_keeps_stored_fishers(two):
    ledger, _, a, _ = two
    ledger.store_fisher(a, _positive(9))
    assert ledger.gc()["unreferenced"] == []
    assert torch.equal(load_fisher(ledger, a, "b"), _positive(9)["b"])


def test_a_fisher_given_to_a_merge_is_for_that_merge_only(two):
    """A Fisher passed to ``merge`` leaves the one stored with each input as it was (the same
    merge made again gives the same model), and the receipt keeps the objects it read: it re-runs
    bit for bit after the stored Fisher is replaced, and ``gc`` leaves them."""
    ledger, _, a, b = two
    ledger.store_fisher(a, {n: 9 * t for n, t in _positive(1).items()}, meta={"mode": "exact", "examples": 256})
    ledger.store_fisher(b, _positive(1))
    first = ledger.merge([a, b], method="fisher", message="stored")
    ones = {n: torch.ones_like(t) for n, t in _state(0).items()}
    tried = ledger.merge([a, b], method="fisher", fisher=[ones, ones], message="uniform, once")
    assert torch.equal(load_fisher(ledger, a, "w"), 9 * _positive(1)["w"])
    assert ledger.fishers(a)["w"]["meta"] == {"mode": "exact", "examples": 256, "keep": None}
    again = ledger.merge([a, b], method="fisher", message="stored again")
    assert same_bits(ledger.checkout(again)["w"], ledger.checkout(first)["w"])
    expected = (9 * _state(1)["w"] + _state(2)["w"]) / 10  # Fishers 9F and F: weights 0.9 and 0.1
    torch.testing.assert_close(ledger.checkout(first)["w"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ledger.checkout(tried)["w"], (_state(1)["w"] + _state(2)["w"]) / 2, rtol=1e-6,
                               atol=1e-6)

    ledger.store_fisher(a, _positive(2))  # a new estimate replaces the stored one...
    assert ledger.gc(apply=True)["unreferenced"] == []  # ...and the receipts keep theirs
    assert ledger.verify().unreferenced_objects == 0  # verify counts what gc keeps: receipts' Fishers too
    assert receipt_check(ledger, first) == {"b": True, "w": True}
    assert receipt_check(ledger, tried) == {"b": True, "w": True}
    used = {r["address"] for r in ledger.object_references().to_pylist()
            if r["version_id"] == tried.version_id and r["kind"] == "fisher"}
    assert len(used) == 2  # ones for w and b, the same object for both inputs
    assert all(ledger.versions_using(address) == [tried.version_id] for address in used)


def test_a_fisher_given_that_the_merge_would_ignore_or_misread_is_refused(two):
    """``fisher=`` given to an average or TIES merge was ignored without a word (a plain average
    stored as if Fisher-weighted); a str was "3 Fishers for 2 versions"; one Fisher instead of one
    per input said "no version or tag 'b'"; two refs of one version in the mapping kept one of them."""
    ledger, _, a, b = two
    ones = {n: torch.ones_like(t) for n, t in _state(0).items()}
    before = len(ledger.versions())
    for method in ("average", "task_arithmetic", "ties"):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.merge([a, b], method=method, fisher=[ones, ones], message="m")
        assert str(refused.value) == (f"fisher= weighs each input's parameters (fisher); the {method} method does "
                                      "not use one")
    with pytest.raises(InvalidParameterError, match="fisher= is a str: give one Fisher"):
        ledger.merge([a, b], method="fisher", fisher="ab", message="m")
    with pytest.raises(InvalidParameterError, match="fisher= maps parameter names to tensors: that is one Fisher"):
        ledger.merge([a, b], method="fisher", fisher=ones, message="m")
    ledger.tag("contributor-a", a)
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([a, b], method="fisher", fisher={"contributor-a": ones, a.version_id: _positive(1), b.version_id: ones},
                     message="m")
    assert str(refused.value) == f"fisher= gives version {a.version_id[:12]} two Fishers ('contributor-a' and " \
                                 f"'{a.version_id}')"
    assert len(ledger.versions()) == before
    merged = ledger.merge([a, b], method="fisher", fisher=(ones, ones), message="a tuple is a sequence too")
    torch.testing.assert_close(ledger.checkout(merged)["w"], (_state(1)["w"] + _state(2)["w"]) / 2)


def test_storing_a_fisher_replaces_the_whole_estimate_unless_updating(two):
    ledger, _, a, _ = two
    ledger.store_fisher(a, _positive(3))
    ledger.store_fisher(a, {"w": _positive(4)["w"]})
    assert sorted(ledger.fishers(a)) == ["w"]  # not w from one estimate and b from another
    ledger.store_fisher(a, {"b": _positive(4)["b"]}, update=True)  # a few parameters at a time
    assert sorted(ledger.fishers(a)) == ["b", "w"]
    assert torch.equal(load_fisher(ledger, a, "w"), _positive(4)["w"])
    assert torch.equal(load_fisher(ledger, a, "b"), _positive(4)["b"])


def test_an_empty_fisher_or_a_meta_that_is_not_json_is_refused_and_the_stored_one_kept(two):
    """`store_fisher(a, {})` removed the Fisher stored with the version and returned 0; a ``meta``
    holding an object (or a str) failed in json.dumps with a TypeError (or ValueError) naming nothing."""
    ledger, _, a, _ = two
    ledger.store_fisher(a, _positive(3), meta={"examples": 256})
    with pytest.raises(InvalidParameterError, match=f"Fisher given for version {a.version_id[:12]} holds no parameters"):
        ledger.store_fisher(a, {})
    for meta, said in (({"x": object()}, "Object of type object is not JSON serializable"), ("abc", "a str was given"),
                       ({1: 2}, "a key is not text: 1"), ({"n": float("nan")}, "Out of range float values")):
        with pytest.raises(InvalidParameterError, match="meta must be a mapping of text keys to JSON values") as refused:
            ledger.store_fisher(a, _positive(4), meta=meta)
        assert said in str(refused.value)
    assert sorted(ledger.fishers(a)) == ["b", "w"] and ledger.fishers(a)["w"]["meta"]["examples"] == 256
    assert torch.equal(load_fisher(ledger, a, "w"), _positive(3)["w"])
    assert ledger.store_fisher(a, {}, update=True) == 0 and sorted(ledger.fishers(a)) == ["b", "w"]


def test_a_version_given_twice_or_a_weight_too_few_is_named(two):
    """`prov merge contributor-a c777c8766596` (one version, by its tag and its id) said only "a
    version is given twice", naming neither; `--weights 0.6` for two versions said "1 weights for
    2 versions". They name the version as it was given, and what the weights must be."""
    ledger, base, a, b = two
    ledger.tag("contributor-a", a)
    for refs, given in (([a.version_id[:8], b, "contributor-a"], f"'{a.version_id[:8]}' and 'contributor-a'"),
                        ([a, a], a.version_id[:12]), (["contributor-a", "contributor-a"], "'contributor-a'")):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.merge(refs, method="average", message="m")
        assert str(refused.value) == (f"version {a.version_id[:12]} is given twice ({given}); give it a larger weight "
                                      "instead")
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([a, b], method="average", weights=[0.6], message="m")
    assert str(refused.value) == "1 weights for 2 versions: give one per version, in their order"


def test_bad_merges_are_refused_and_write_nothing(two):
    ledger, base, a, b = two
    before = len(ledger.versions())
    with pytest.raises(InvalidParameterError, match=r"have no stored Fisher .*store_fisher"):
        ledger.merge([a, b], method="fisher", message="no fishers")
    with pytest.raises(InvalidParameterError, match="unknown merge method 'slerp'"):
        ledger.merge([a, b], method="slerp", message="m")
    with pytest.raises(InvalidParameterError, match="3 weights for 2 versions"):
        ledger.merge([a, b], method="average", weights=[1, 1, 1], message="m")
    with pytest.raises(InvalidParameterError, match="finite, >= 0"):
        ledger.merge([a, b], method="average", weights=[1, -1], message="m")
    with pytest.raises(InvalidParameterError, match="at most 1e\\+12"):  # their running sum overflowed
        ledger.merge([a, b], method="average", weights=[1e308, 1e308], message="m")
    with pytest.raises(InvalidParameterError, match="given twice"):
        ledger.merge([a, a], method="average", message="m")
    with pytest.raises(InvalidParameterError, match="lacks b"):
        ledger.merge([a, b], method="fisher", fisher=[_positive(1), {"w": _positive(1)["w"]}], message="m")
    with pytest.raises(InvalidParameterError) as misspelt:  # it was merged as if "bias" were not there
        ledger.merge([a, b], method="fisher", fisher=[_positive(1), {**_positive(2), "bias": torch.ones(8)}], message="m")
    assert str(misspelt.value) == (f"the Fisher given for input 2 ({b.version_id[:12]}) names parameters not in the "
                                   "version: 'bias'")
    other = ledger.commit({"w": torch.zeros(16, 8)}, message="other model")
    with pytest.raises(InvalidParameterError, match="different parameters: only [0-9a-f]{12} has 'b'"):
        ledger.merge([a, other], method="average", message="m")
    with pytest.raises(InvalidParameterError, match="do not share a first parent"):
        ledger.merge([a, other], method="task_arithmetic", message="m")
    with pytest.raises(InvalidParameterError, match=r"Fisher of 'w' is \[3\]"):
        ledger.store_fisher(a, {"w": torch.ones(3)})
    with pytest.raises(InvalidParameterError, match="negative, NaN or Inf"):
        ledger.store_fisher(a, {"w": -torch.ones(16, 8)})
    assert len(ledger.versions()) == before + 1  # only `other`
    # refused after some objects were written: the Fisher of 'b' before the NaN of 'w', the first
    # input's Fishers before the second's wrong shape; they were left in the store for gc
    nan = {"b": torch.ones(8) * 7, "w": torch.full((16, 8), float("nan"))}
    with pytest.raises(InvalidParameterError, match="Fisher of 'w' holds negative, NaN or Inf"):
        ledger.store_fisher(a, nan)
    with pytest.raises(InvalidParameterError, match=r"Fisher of 'b' is \[3\]"):
        ledger.merge([a, b], method="fisher", fisher=[_positive(5), {"w": _positive(6)["w"], "b": torch.ones(3)}],
                     message="m")
    assert ledger.gc()["unreferenced"] == []


def test_sparse_patches_of_one_parent_merge_where_they_changed_it(ledger):
    """Children that change a few elements of one parent (FISH-style) are merged on the union of
    their changes only; the result is bit for bit the whole-tensor merge (receipt_check re-runs
    it on whole tensors)."""
    g = torch.Generator().manual_seed(0)
    base_state = {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)}
    base = ledger.commit(base_state, message="base")
    children = []
    for seed in range(3):
        state = {n: t.clone() for n, t in base_state.items()}
        idx = torch.randperm(64 * 32, generator=torch.Generator().manual_seed(seed))[:40]
        state["w"].view(-1)[idx] += 0.5
        if seed == 0:
            state["b"][3] = 7.0  # b: sparse in one child, unchanged in the others
        children.append(ledger.commit(state, parent=base, message=f"child {seed}"))
    assert {ledger.manifest(c)["w"].encoding for c in children} == {"sparse"}
    for c in children:
        ledger.store_fisher(c, _positive_like(base_state, seed=len(c.version_id)))
    for method in ("average", "fisher", "task_arithmetic"):
        merged = ledger.merge(children, method=method, message=method)
        recorded = ledger.receipt(merged).to_dict()["groups"]
        assert recorded["w"]["inputs"] is None and recorded["b"]["inputs"] is None  # merged directly
        assert receipt_check(ledger, merged) == {"b": True, "w": True}, method
    averaged = ledger.checkout(ledger.merge(children, method="average", message="again"))
    full = [ledger.checkout(c) for c in children]
    torch.testing.assert_close(averaged["w"], sum(f["w"] for f in full) / 3, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(averaged["b"][3], 7.0 / 3 + 2 * base_state["b"][3] / 3, rtol=1e-6, atol=1e-6)
    assert torch.equal(averaged["b"][:3], base_state["b"][:3])  # untouched everywhere else, exactly


def _positive_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(t.shape, generator=g) + 0.1 for n, t in state.items()}


@pytest.mark.parametrize("method", ["average", "fisher", "task_arithmetic"])
def test_low_rank_patches_of_one_parent_merge_block_by_block(ledger, monkeypatch, method):
    """LoRA-style children of one parent (and a sparse one) are merged without materialising any
    input: rows are made block by block from the parent and the factors. The result is bit for bit
    the merge of the checked-out inputs (receipt_check re-runs it on whole tensors)."""
    from provenance.kernels import patch as patch_kernels
    from provenance.kernels import patch_torch  # where row_blocks reads its block size

    monkeypatch.setattr(patch_torch, "ROW_BLOCK_ELEMENTS", 256 * 37)  # blocks of 256 rows: 3 blocks of 1000
    g = torch.Generator().manual_seed(3)
    base_state = {"w": torch.randn(1000, 37, generator=g), "b": torch.randn(37, generator=g)}
    base = ledger.commit(base_state, message="base")
    children = []
    for seed, rank in ((1, 2), (2, 5)):
        b, a = torch.randn(1000, rank, generator=g), torch.randn(rank, 37, generator=g)
        target = {"w": patch_kernels.apply_low_rank(base_state["w"], b, a, 0.25), "b": base_state["b"]}
        children.append(ledger.commit(target, parent=base, low_rank={"w": (b, a, 0.25)}, message=f"lora {seed}"))
    sparse_state = {n: t.clone() for n, t in base_state.items()}
    sparse_state["w"].view(-1)[torch.randperm(37_000, generator=g)[:50]] += 1.0
    children.append(ledger.commit(sparse_state, parent=base, message="sparse"))
    assert [ledger.manifest(c)["w"].encoding for c in children] == ["low_rank", "low_rank", "sparse"]
    fishers = {c.version_id: _positive_like(base_state, seed=i) for i, c in enumerate(children)}
    merged = ledger.merge(children, method=method, weights=[0.5, 0.3, 0.2], message=method,
                          fisher=fishers if method == "fisher" else None)
    recorded = ledger.receipt(merged).to_dict()["groups"]
    assert recorded["w"]["inputs"] is None  # merged from the patches
    assert receipt_check(ledger, merged) == {"b": True, "w": True}
    full = [ledger.checkout(c)["w"] for c in children]
    got = ledger.checkout(merged)["w"]
    if method == "average":
        want = merge_kernels.weighted_average(full, [0.5, 0.3, 0.2])
    elif method == "task_arithmetic":
        want = merge_kernels.task_arithmetic(base_state["w"], full, [0.5, 0.3, 0.2])
    else:
        want = merge_kernels.fisher_merge(full, [fishers[c.version_id]["w"] for c in children], [0.5, 0.3, 0.2])
    assert torch.equal(got, want)
    assert not torch.equal(got, base_state["w"])


def test_merge_on_an_explicit_device(two):
    """``device="cpu"`` is the default path; a CUDA device is refused clearly where there is none,
    and on a GPU machine the merge runs the Triton kernels and its receipt re-runs there."""
    ledger, _, a, b = two
    merged = ledger.merge([a, b], method="average", message="on cpu", device="cpu")
    assert ledger.receipt(merged)["kernel"].startswith("torch") and all(receipt_check(ledger, merged).values())
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="torch sees no CUDA device"):
            ledger.merge([a, b], method="average", message="on gpu", device="cuda")
        return
    on_gpu = ledger.merge([a, b], method="fisher", fisher=[_positive(1), _positive(2)], message="gpu", device="cuda")
    assert ledger.receipt(on_gpu)["kernel"].startswith("triton")
    assert all(receipt_check(ledger, on_gpu).values())
    cpu = ledger.checkout(ledger.merge([a, b], method="fisher", message="cpu twin"))
    for name, t in ledger.checkout(on_gpu).items():
        torch.testing.assert_close(t, cpu[name], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lora_children_merged_on_cuda_by_the_fused_kernel(ledger):
    from provenance.kernels.patch import apply_low_rank

    g = torch.Generator().manual_seed(4)
    base_state = {"w": torch.randn(2048, 512, generator=g)}
    base = ledger.commit(base_state, message="base")
    children = []
    for i in range(3):
        b, a = torch.randn(2048, 4, generator=g), torch.randn(4, 512, generator=g)
        target = {"w": apply_low_rank(base_state["w"], b, a, 0.5)}
        children.append(ledger.commit(target, parent=base, low_rank={"w": (b, a, 0.5)}, message=f"lora {i}"))
    on_gpu = ledger.merge(children, method="average", message="gpu", device="cuda")
    assert ledger.receipt(on_gpu).groups["w"].inputs is None
    assert receipt_check(ledger, on_gpu) == {"w": True}
    on_cpu = ledger.merge(children, method="average", message="cpu")
    torch.testing.assert_close(ledger.checkout(on_gpu)["w"], ledger.checkout(on_cpu)["w"], rtol=1e-5, atol=1e-5)


def test_merge_methods_come_from_a_registry_a_new_one_plugs_in(two):
    from provenance import merge as methods
    from provenance.merge.base import _REGISTRY, MergeMethod, register

    ledger, base, a, b = two
    assert methods.names() == ["average", "fisher", "task_arithmetic", "ties"]
    with pytest.raises(InvalidParameterError, match="unknown merge method 'max'; one of average, fisher"):
        ledger.merge([a, b], method="max", message="not yet")

    @register
    class Maximum(MergeMethod):  # an elementwise method written by a user, in a file of their own
        name = "max"
        direct = True

        def merge(self, thetas, *, lam, theta0=None, fishers=None, eps=1e-6, norms=None, density=0.2):
            return torch.stack(thetas).amax(dim=0)

    try:
        merged = ledger.merge([a, b], method="max", message="elementwise maximum")
        out = ledger.checkout(merged)
        for name, want in ((n, torch.maximum(_state(1)[n], _state(2)[n])) for n in ("w", "b")):
            assert same_bits(out[name], want)
        receipt = ledger.receipt(merged)
        assert (receipt["method"], receipt["eps"], receipt["density"]) == ("max", None, None)
        assert all(receipt_check(ledger, merged).values())
    finally:
        _REGISTRY.pop("max")


def test_integer_and_boolean_groups_are_kept_when_the_inputs_agree(ledger):
    """A checkpoint's buffers (BERT's int64 position_ids, a bool mask, an int step counter) are
    not averaged: a merge keeps them bit for bit when every input holds the same value, and asks
    for no Fisher of them; inputs that disagree are refused, naming the group."""
    buffers = {"embeddings.position_ids": torch.arange(12).unsqueeze(0), "mask": torch.tensor([True, False, True]),
               "steps": torch.tensor([300], dtype=torch.int32),
               "bn.num_batches_tracked": torch.tensor(5)}  # 0-d, as every BatchNorm has
    base = ledger.commit({**_state(0), **buffers}, message="base")
    a = ledger.commit({**_state(1), **buffers}, parent=base, message="a")
    b = ledger.commit({**_state(2), **buffers}, parent=base, message="b")
    fishers = [{n: torch.rand_like(t) + 0.1 for n, t in _state(s).items()} for s in (5, 6)]  # float groups only
    for method, options in (("average", {}), ("fisher", {"fisher": fishers}), ("task_arithmetic", {}),
                            ("ties", {})):
        merged = ledger.merge([a, b], method=method, message=method, **options)
        out = ledger.checkout(merged)
        for name, value in buffers.items():
            assert out[name].dtype == value.dtype and torch.equal(out[name], value), (method, name)
        plain = ledger.merge([a, b], method=method, message=method, **options) if method == "average" else merged
        assert same_bits(out["w"], ledger.checkout(plain)["w"])
        assert receipt_check(ledger, merged) == {n: True for n in ("b", "w", *buffers)}, method
    expected = merge_kernels.weighted_average([ledger.checkout(v)["w"] for v in (a, b)], [0.5, 0.5])
    assert same_bits(ledger.checkout(ledger.merge([a, b], method="average", message="m"))["w"], expected)

    counted = ledger.commit({**_state(3), **buffers, "steps": torch.tensor([301], dtype=torch.int32)}, parent=base,
                            message="trained longer")
    before = ledger.versions()
    with pytest.raises(InvalidParameterError, match=f"'steps' is int32, which a merge does not average, and it "
                                                    f"differs between {a.version_id[:12]} and {counted.version_id[:12]}"):
        ledger.merge([a, counted], method="average", message="disagree")
    assert ledger.versions() == before


def test_ties_refuses_nan_or_inf_naming_the_input(two):
    """TIES keeps each task vector's largest magnitudes: a NaN there silently dropped every
    input at its element (the result fell back to the base). It is refused, naming the group and
    the version; averaging carries the NaN into the result, as torch does."""
    ledger, base, a, _ = two
    bad = _state(2)
    bad["w"][0, 5], bad["w"][1, 7] = float("nan"), float("inf")
    b = ledger.commit(bad, parent=base, message="with a NaN", allow_nonfinite=True)
    before = len(ledger.versions())
    with pytest.raises(InvalidParameterError, match=f"parameter 'w' of version {b.version_id[:12]} holds NaN or Inf"):
        ledger.merge([a, b], method="ties", density=1.0, message="ties")
    assert len(ledger.versions()) == before
    assert ledger.gc()["unreferenced"] == []  # group 'b', merged before 'w' was refused, was left behind
    averaged = ledger.checkout(ledger.merge([a, b], method="average", message="average"))["w"]
    assert torch.isnan(averaged[0, 5]) and torch.isinf(averaged[1, 7])


def test_a_base_that_is_no_ancestor_of_the_inputs_is_refused(two):
    """Task arithmetic and TIES are made of the base's values (θ₀ + Σλ(θᵢ − θ₀)); a base outside
    the inputs' ancestry left its data (and licences) out of the merge's lineage and taint."""
    ledger, base, a, b = two
    stranger = ledger.commit(_state(9), message="trained on something else")
    before = len(ledger.versions())
    for method in ("task_arithmetic", "ties"):
        with pytest.raises(InvalidParameterError, match=f"base {stranger.version_id[:12]} is not an ancestor of "
                                                        f"input {a.version_id[:12]}"):
            ledger.merge([a, b], method=method, base=stranger, message="foreign base")
    assert len(ledger.versions()) == before
    assert ledger.receipt(ledger.merge([a, b], method="ties", base=base, message="own base")).base_version == base.version_id


def test_a_base_is_refused_by_a_method_that_does_not_use_one(two):
    """``base=`` with averaging or Fisher merging was ignored, unread: a ref that named nothing
    merged without a word (stranger pass 25)."""
    ledger, base, a, b = two
    before = len(ledger.versions())
    for method, ref in (("average", "nosuch"), ("fisher", base)):
        with pytest.raises(InvalidParameterError, match=rf"base= is the version task vectors start from "
                                                        rf"\(task_arithmetic, ties\); the {method} method does not use one"):
            ledger.merge([a, b], method=method, base=ref, message="with a base")
    assert len(ledger.versions()) == before


def test_a_parameter_the_base_lacks_is_named_for_task_vectors(ledger):
    """A base saved by save_pretrained without the tied lm_head.weight, and children committed from
    state_dict() with it: task arithmetic failed with `parameter 'lm_head.weight' is not in version …`.
    The message now says why and what to do; averaging, which needs no base, merges them."""
    wte = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    base = ledger.commit({"wte.weight": wte}, message="save_pretrained: the tied copy left out")
    a = ledger.commit({"wte.weight": wte + 1, "lm_head.weight": wte + 1}, parent=base, message="a")
    b = ledger.commit({"wte.weight": wte - 1, "lm_head.weight": wte - 1}, parent=base, message="b")
    for method in ("task_arithmetic", "ties"):
        with pytest.raises(InvalidParameterError, match=rf"1 parameter\(s\) of the inputs are not in the base "
                                                        rf"{base.version_id[:12]} \(lm_head.weight\): {method} needs"):
            ledger.merge([a, b], method=method, message="tied")
    merged = ledger.checkout(ledger.merge([a, b], method="average", message="tied, averaged"))
    assert torch.allclose(merged["lm_head.weight"], wte) and torch.allclose(merged["wte.weight"], wte)


def test_inputs_and_results_a_merge_cannot_keep_are_refused_by_name(ledger):
    """Stranger pass 18: an empty group with keep < 1 was torch's 'selected index k out of range';
    a float64 Fisher of 1e300 was called negative, NaN or Inf; a complex one was taken with a torch
    warning; a bad Fisher given to a merge did not say whose; --device bogus/meta/mps were
    tracebacks; an fp16 task-arithmetic merge of finite inputs stored Inf."""
    base = ledger.commit({"w": torch.full((4,), 60000.0, dtype=torch.float16), "e": torch.zeros(0, 5)},
                         message="base")
    a, b = (ledger.commit({"w": torch.full((4,), 65000.0, dtype=torch.float16), "e": torch.zeros(0, 5)},
                          parent=base, message=m) for m in ("a", "b"))
    assert ledger.store_fisher(a, {"w": torch.rand(4), "e": torch.zeros(0, 5)}, keep=0.5) == 2 * 8 + 2 * 4
    with pytest.raises(InvalidParameterError, match=r"Fisher of 'w' holds values beyond float32's range"):
        ledger.store_fisher(a, {"w": torch.full((4,), 1e300, dtype=torch.float64)}, update=True)
    with pytest.raises(InvalidParameterError, match=r"Fisher of 'w' is complex64: a Fisher holds real"):
        ledger.store_fisher(a, {"w": torch.ones(4, dtype=torch.complex64)}, update=True)
    fishers = [{"w": torch.ones(4), "e": torch.zeros(0, 5)}, {"w": -torch.ones(4), "e": torch.zeros(0, 5)}]
    with pytest.raises(InvalidParameterError, match=rf"^the Fisher given for input 2 \({b.version_id[:12]}\): Fisher "
                                                    r"of 'w' holds negative, NaN or Inf values$"):
        ledger.merge([a, b], method="fisher", fisher=fishers, message="m")
    for device, said in (("bogus", r"device 'bogus' is not a torch device \(cpu, cuda, cuda:1\)$"),
                         ("meta", "device 'meta': merges run on the CPU or a CUDA device"),
                         ("mps", "device 'mps': merges run on the CPU or a CUDA device"),
                         ("cpu:99", "device 'cpu:99': the CPU has no numbered devices; give cpu$")):  # it ran
        with pytest.raises(InvalidParameterError, match=said):
            ledger.merge([a, b], method="average", device=device, message="m")
    with pytest.raises(InvalidParameterError, match=r"the merge of parameter 'w' overflows float16: its inputs are "
                                                    "finite and its result is not"):
        ledger.merge([a, b], method="task_arithmetic", weights=[1, 1], message="60000 + 2 × 5000")
    assert ledger.checkout(ledger.merge([a, b], method="average", message="m"))["w"].tolist() == [64992.0] * 4
    assert ledger.gc()["unreferenced"] == []
    # the review: an FP8 Fisher is taken (torch has no isfinite for FP8), and a NaN or Inf in a task
    # vector's base is carried, not called an overflow of finite inputs
    assert ledger.store_fisher(a, {"w": torch.ones(4).to(torch.float8_e4m3fn)}, update=True) == 16
    inf = ledger.commit({"w": torch.tensor([float("inf"), 1, 2, 3]), "e": torch.zeros(0, 5)}, message="root",
                        allow_nonfinite=True)
    c, d = (ledger.commit({"w": torch.tensor([1.0, 2, 3, x]), "e": torch.zeros(0, 5)}, parent=inf, message=f"{x}")
            for x in (4.0, 5.0))
    out = ledger.checkout(ledger.merge([c, d], method="task_arithmetic", base=inf, message="t"))["w"]
    assert torch.isnan(out[0]) and out[1:].tolist() == [2.0, 3.0, 4.5]  # inf + ½(1 - inf) + ½(1 - inf) is NaN


@pytest.mark.parametrize("method", ["average", "fisher"])
def test_nan_and_inf_inputs_merge_to_the_same_value_in_any_order(ledger, method):
    """The running mean made [Inf, 1] NaN and [1, Inf] Inf, and -Inf with -Inf NaN; a zero-weight
    input's Inf made its elements NaN. A weighted mean's NaN and Inf elements are now settled by
    the inputs of positive weight, whatever their order, and a receipt re-runs to the same bits."""
    inf, nan = float("inf"), float("nan")
    base = ledger.commit({"w": torch.zeros(7)}, message="base")
    a = ledger.commit({"w": torch.tensor([inf, 1.0, nan, inf, -inf, 2.0, 3e38])}, parent=base, message="a",
                      allow_nonfinite=True)
    b = ledger.commit({"w": torch.tensor([1.0, inf, 3.0, -inf, -inf, 4.0, -3e38])}, parent=base, message="b",
                      allow_nonfinite=True)
    if method == "fisher":
        ledger.store_fisher(a, {"w": torch.ones(7)})
        ledger.store_fisher(b, {"w": torch.full((7,), 3.0)})
    ab, ba = (ledger.merge(pair, method=method, message="m") for pair in ([a, b], [b, a]))
    first, second = ledger.checkout(ab)["w"], ledger.checkout(ba)["w"]
    assert same_bits(first, second)
    assert first[:2].tolist() == [inf, inf] and torch.isnan(first[2:4]).all() and first[4] == -inf
    assert first[5] == ((2.0 + 4.0) / 2 if method == "average" else (2.0 + 3 * 4.0) / 4)  # the kernels' own
    # 3e38 then -3e38 overflowed inside the running mean (x - m = -inf): their mean in float64 instead
    assert first[6] == (0.0 if method == "average" else torch.tensor((3e38 - 3 * 3e38) / 4).float())
    assert receipt_check(ledger, ab) == {"w": True} and receipt_check(ledger, ba) == {"w": True}
    only_b = ledger.checkout(ledger.merge([a, b], method=method, weights=[0.0, 1.0], message="b alone"))["w"]
    assert same_bits(only_b, ledger.checkout(b)["w"])  # a zero weight leaves exactly the other input
    # sparse patches of one parent merge without materialising the inputs: settled the same way
    c = ledger.commit({"w": torch.tensor([inf, 0, 0, 0, 0, 0, 0.0])}, parent=base, message="c", allow_nonfinite=True)
    d = ledger.commit({"w": torch.tensor([1.0, 0, 0, 0, 0, 0, 0])}, parent=base, message="d")
    if method == "fisher":
        ledger.store_fisher(c, {"w": torch.ones(7)})
        ledger.store_fisher(d, {"w": torch.ones(7)})
    cd, dc = (ledger.checkout(ledger.merge(p, method=method, message="sparse"))["w"] for p in ([c, d], [d, c]))
    assert cd[0] == dc[0] == inf and same_bits(cd, dc)


def test_settling_checks_its_inputs():
    out = torch.tensor([float("nan"), 1.0])
    with pytest.raises(InvalidParameterError, match="3 weights for 2 models"):
        merge_kernels.settle_nonfinite(out, [out, out], [1, 1, 1])
    with pytest.raises(InvalidParameterError, match=r"thetas\[1\] has shape \(3,\)"):
        merge_kernels.settle_nonfinite(out, [out, torch.zeros(3)], [1, 1])
    with pytest.raises(InvalidParameterError, match="out must be contiguous"):
        merge_kernels.settle_nonfinite(torch.zeros(2, 2).t(), [torch.zeros(2, 2)] * 2, [1, 1])
    with pytest.raises(InvalidParameterError, match="1 fishers for 2 thetas"):
        merge_kernels.settle_nonfinite(out, [out, out], [1, 1], fishers=[out])
    half = torch.tensor([float("inf"), 2.0], dtype=torch.bfloat16)
    settled = torch.tensor([float("nan"), 2.0], dtype=torch.bfloat16)
    assert merge_kernels.settle_nonfinite(settled, [half, torch.tensor([1.0, 2.0], dtype=torch.bfloat16)], [1, 1]) == 1
    assert settled.tolist() == [float("inf"), 2.0]


def test_a_merge_made_before_settling_still_passes_its_receipt_check(ledger, monkeypatch):
    """Merges made before non-finite elements were settled stored the running mean's NaN: their
    receipts still re-run to a result they recorded."""
    from provenance.merges import groups

    base = ledger.commit({"w": torch.zeros(3)}, message="base")
    a = ledger.commit({"w": torch.tensor([float("inf"), 1.0, 2.0])}, parent=base, message="a", allow_nonfinite=True)
    b = ledger.commit({"w": torch.tensor([1.0, 2.0, 3.0])}, parent=base, message="b")
    with monkeypatch.context() as m:
        m.setattr(groups, "settle_nonfinite", lambda *args, **kwargs: 0)  # the code before
        old = ledger.merge([a, b], method="average", message="before")
    assert torch.isnan(ledger.checkout(old)["w"][0])
    new = ledger.merge([a, b], method="average", message="after")
    assert ledger.checkout(new)["w"][0] == float("inf")
    assert receipt_check(ledger, old) == receipt_check(ledger, new) == {"w": True}


def test_a_fisher_that_is_not_a_mapping_of_names_is_refused_by_name(two):
    """Stranger pass 49: ``store_fisher(a, tensor)`` said "Boolean value of Tensor with more than one
    value is ambiguous", a list of pairs or a key that is not text "sequence item 0: expected str
    instance", None "'NoneType' object is not iterable"; ``fisher=[tensor, tensor]`` to a merge
    "Tensor.__contains__ only supports Tensor or scalar". Each is refused naming whose Fisher it is,
    and nothing is stored or merged."""
    ledger, _, a, b = two
    ledger.store_fisher(a, _positive(3))
    before = len(ledger.versions())
    va, vb = a.version_id[:12], b.version_id[:12]
    for given, said in ((torch.ones(16, 8), f"the Fisher given for version {va} is a Tensor: give a mapping of "
                                            "parameter name -> tensor"),
                        ([("w", torch.ones(16, 8))], f"the Fisher given for version {va} is a list: give a mapping"),
                        (None, f"the Fisher given for version {va} is a NoneType: give a mapping"),
                        ({1: torch.ones(16, 8)}, f"the Fisher given for version {va} has a key that is not a "
                                                 "parameter name (text): 1")):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.store_fisher(a, given)
        assert str(refused.value).startswith(said)
    for given, said in (([torch.ones(16, 8), torch.ones(16, 8)], f"the Fisher given for input 1 ({va}) is a Tensor"),
                        ([_positive(1), None], f"the Fisher given for input 2 ({vb}) is a NoneType"),
                        ([_positive(1), {0: torch.ones(8)}], f"the Fisher given for input 2 ({vb}) has a key that "
                                                             "is not a parameter name (text): 0")):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.merge([a, b], method="fisher", fisher=given, message="m")
        assert str(refused.value).startswith(said)
    assert len(ledger.versions()) == before
    assert torch.equal(load_fisher(ledger, a, "w"), _positive(3)["w"]) and sorted(ledger.fishers(a)) == ["b", "w"]


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_a_base_holding_a_group_in_another_shape_or_dtype_is_named(ledger, method):
    """Stranger pass 49: both contributors resized a vocabulary (or cast a group to float16) from
    the base, and task arithmetic or TIES from that base failed in the kernel with "base has shape
    (4, 3), thetas[0] (5, 3)" (a TypeError for the dtype: a traceback from `prov merge`), naming no
    parameter. It is refused by name before anything is written; averaging needs no base and
    merges them; an integer group (kept, never read from the base) may differ."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    base = ledger.commit({"w": w, "h": w.clone(), "ids": torch.arange(4)}, message="base")
    a, b = (ledger.commit({"w": torch.cat([w, torch.full((1, 3), x)]), "h": (w + x).half(), "ids": torch.arange(5)},
                          parent=base, message=f"resized {x}") for x in (1.0, -1.0))
    before = len(ledger.versions())
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([a, b], method=method, message="m")
    assert str(refused.value) == (f"parameter 'h' is float16[4, 3] in the inputs but float32[4, 3] in the base "
                                  f"{base.version_id[:12]}: {method} needs the base's value in the inputs' shape and "
                                  "dtype to make task vectors; merge with average or fisher, or give a base that has "
                                  "it so")
    assert len(ledger.versions()) == before and ledger.gc()["unreferenced"] == []
    merged = ledger.checkout(ledger.merge([a, b], method="average", message="averaged"))
    assert merged["w"].tolist() == [*w.tolist(), [0.0, 0.0, 0.0]] and merged["ids"].tolist() == [0, 1, 2, 3, 4]
    ha, hb = ((w + x).half().float() for x in (1.0, -1.0))
    assert torch.equal(merged["h"], ((ha + hb) / 2).half())  # exact in float32, rounded once


def test_fishers_whose_weighted_sum_passes_float32_are_refused(ledger):
    """Stranger pass 49: the kernels sum λᵢ·Fᵢ in float32. Stored Fishers of 3e38 (finite float32,
    taken) merged with weights 1 and 1 gave the first input back as the "merge", silently (6e38
    overflowed the running weight, so the second input's share was 0), as did eps=3e38. Such a
    merge is refused naming the parameter; with normalize=True the same Fishers merge to the hand
    value."""
    base = ledger.commit({"w": torch.zeros(4), "b": torch.zeros(2)}, message="base")
    a = ledger.commit({"w": torch.full((4,), -1.0), "b": torch.full((2,), 2.0)}, parent=base, message="a")
    b = ledger.commit({"w": torch.full((4,), 1.0), "b": torch.full((2,), 4.0)}, parent=base, message="b")
    huge = {"w": torch.tensor([3e38, 3e38, 1e38, 1.0]), "b": torch.ones(2)}
    ledger.store_fisher(a, huge)
    ledger.store_fisher(b, huge)
    before = len(ledger.versions())
    for options in ({"weights": [1, 1]}, {"weights": [1e12, 1e12]}):
        with pytest.raises(InvalidParameterError, match=r"^the Fisher merge of parameter 'w' would overflow float32, in "
                                                        r"which it sums each input's weight times its Fisher: the "
                                                        r"Fishers reach 3e\+38"):
            ledger.merge([a, b], method="fisher", message="m", **options)
    ones = {"w": torch.ones(4), "b": torch.ones(2)}
    with pytest.raises(InvalidParameterError, match=r"parameter 'b' would overflow .* eps is 3e\+38"):
        ledger.merge([a, b], method="fisher", fisher=[ones, ones], eps=3e38, weights=[1, 1], message="m")
    assert len(ledger.versions()) == before
    with pytest.raises(InvalidParameterError, match=r"parameter 'b' would overflow float32: the L2 norm of input 1's "
                                                    r"Fisher is 4.36e\+38, beyond 3.4e\+38, and normalize=True"):
        ledger.merge([a, b], method="fisher", weights=[1, 1], normalize=True, message="m")  # every F' was eps
    assert len(ledger.versions()) == before
    halves = ledger.checkout(ledger.merge([a, b], method="fisher", message="weights 0.5: 3e38 sums to 3e38"))
    assert halves["w"].tolist() == [0.0, 0.0, 0.0, 0.0]
    fa, fb = {"w": torch.tensor([3e38, 1e38, 1.0, 1.0]), "b": torch.ones(2)}, {"w": torch.tensor([1e38, 3e38, 1.0, 1.0]),
                                                                            "b": torch.ones(2)}
    with pytest.raises(InvalidParameterError, match="parameter 'w' would overflow float32"):
        ledger.merge([a, b], method="fisher", fisher=[fa, fb], weights=[1, 1], message="m")
    merged = ledger.checkout(ledger.merge([a, b], method="fisher", fisher=[fa, fb], weights=[1, 1], normalize=True,
                                          message="normalised: within float32"))
    norm = (9e76 + 1e76 + 4) ** 0.5  # each Fisher's L2 norm, both groups
    fa_w, fb_w = (torch.clamp(f["w"].double() / norm, min=1e-6) for f in (fa, fb))
    expected = (fa_w * -1.0 + fb_w * 1.0) / (fa_w + fb_w)  # about [-0.5, 0.5, 0, 0]
    torch.testing.assert_close(merged["w"].double(), expected, rtol=0, atol=1e-6)
    assert merged["b"].tolist() == [3.0, 3.0]


def test_weights_too_small_for_float32_are_refused_not_rounded_to_zero(ledger):
    """Weights of 1e-300 each passed the checks (finite, >= 0, not all 0) but are 0 in the
    kernels' float32: a TIES merge gave the base back (a = 3, b = 5 over a base of 0 gave 0, not
    4) and a Fisher merge the plain average. A positive weight under 1e-12 is refused, writing
    nothing; 1e-12 itself merges to the hand value."""
    base = ledger.commit({"w": torch.zeros(4)}, message="base")
    a = ledger.commit({"w": torch.full((4,), 3.0)}, parent=base, message="a")
    b = ledger.commit({"w": torch.full((4,), 5.0)}, parent=base, message="b")
    fa, fb = {"w": torch.full((4,), 3.0)}, {"w": torch.full((4,), 1.0)}
    before = len(ledger.versions())
    for method, options in (("ties", {"density": 1.0}), ("fisher", {"fisher": [fa, fb]}), ("average", {})):
        for weights in ([1e-300, 1e-300], [1e-40, 1.0]):
            with pytest.raises(InvalidParameterError, match=r"^weight 1e-(300|40) is below 1e-12, the smallest a merge "
                                                            r"takes besides 0 .*scale every weight up"):
                ledger.merge([a, b], method=method, weights=weights, message="m", **options)
    assert len(ledger.versions()) == before
    ties = ledger.checkout(ledger.merge([a, b], method="ties", density=1.0, weights=[1e-12, 1e-12], message="t"))
    fisher = ledger.checkout(ledger.merge([a, b], method="fisher", fisher=[fa, fb], weights=[1e-12, 1e-12], message="f"))
    assert ties["w"].tolist() == [4.0] * 4  # the disjoint mean of 3 and 5
    assert fisher["w"].tolist() == [3.5] * 4  # (3·3 + 1·5) / (3 + 1)
    only_b = ledger.checkout(ledger.merge([a, b], method="average", weights=[0, 1e-12], message="0 leaves a out"))
    assert only_b["w"].tolist() == [5.0] * 4


def test_a_group_kept_as_it_is_needs_no_value_in_the_base(ledger):
    """Task arithmetic and TIES refused inputs that both added a step counter the base lacked ("not
    in the base: task_arithmetic needs each one's value there to make task vectors"), though an
    integer group is kept as the inputs hold it and reads no base (a base holding it as int32 was
    taken). The counter is kept, the floats merged to the hand values; a float group the base
    lacks is still refused by name."""
    base = ledger.commit({"w": torch.zeros(4)}, message="base: parameters only")
    steps = torch.tensor(7)
    a = ledger.commit({"w": torch.full((4,), 3.0), "bn.num_batches_tracked": steps}, parent=base, message="a")
    b = ledger.commit({"w": torch.full((4,), 5.0), "bn.num_batches_tracked": steps}, parent=base, message="b")
    ta = ledger.checkout(ledger.merge([a, b], method="task_arithmetic", weights=[0.5, 0.25], message="ta"))
    ties = ledger.checkout(ledger.merge([a, b], method="ties", density=1.0, message="ties"))
    assert ta["w"].tolist() == [2.75] * 4 and ties["w"].tolist() == [4.0] * 4  # 0.5·3 + 0.25·5; the mean of 3, 5
    assert ta["bn.num_batches_tracked"].item() == 7 and ties["bn.num_batches_tracked"].dtype == torch.int64
    c = ledger.commit({"w": torch.full((4,), 3.0), "bn.num_batches_tracked": steps, "extra": torch.ones(2)},
                      parent=base, message="c")
    d = ledger.commit({"w": torch.full((4,), 5.0), "bn.num_batches_tracked": steps, "extra": torch.ones(2)},
                      parent=base, message="d")
    before = len(ledger.versions())
    with pytest.raises(InvalidParameterError, match=rf"^1 parameter\(s\) of the inputs are not in the base "
                                                    rf"{base.version_id[:12]} \(extra\): task_arithmetic needs"):
        ledger.merge([c, d], method="task_arithmetic", message="extra")
    assert len(ledger.versions()) == before


def test_a_stored_fisher_that_lacks_a_parameter_is_named(ledger):
    """A Fisher stored a few parameters at a time (update=True) that missed one was refused as
    "version(s) X have no stored Fisher for every parameter", naming no parameter, from the
    library and from `prov merge` alike; it names each version's missing ones, and integer groups,
    which need none, are not counted."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    state = {"w": torch.zeros(4), "b": torch.zeros(2), "steps": torch.tensor(1)}
    base = ledger.commit(state, message="base")
    a = ledger.commit({**state, "w": torch.full((4,), 3.0)}, parent=base, message="a")
    b = ledger.commit({**state, "w": torch.full((4,), 5.0)}, parent=base, message="b")
    ledger.store_fisher(a, {"w": torch.ones(4), "b": torch.ones(2)})
    ledger.store_fisher(b, {"w": torch.ones(4)}, update=True)
    before = len(ledger.versions())
    says = (f"version(s) {b.version_id[:12]} have no stored Fisher for every parameter ({b.version_id[:12]} lacks 'b' "
            "(1 of 2)): store one with ledger.store_fisher(version, fisher) (update=True adds parameters")
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([a, b], method="fisher", message="m")
    assert str(refused.value).startswith(says)
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "merge", a.version_id, b.version_id, "-m", "m"])
    assert result.exit_code == 4 and says in " ".join(result.output.split())
    assert len(ledger.versions()) == before
    ledger.store_fisher(b, {"b": torch.ones(2)}, update=True)
    assert ledger.checkout(ledger.merge([a, b], method="fisher", message="m"))["w"].tolist() == [4.0] * 4


def test_inputs_with_different_parameters_say_which_holds_which(ledger):
    """Inputs that do not hold the same parameters were refused as "have different parameters:
    extra, h", naming neither side; the message says which input holds each."""
    base = ledger.commit({"w": torch.zeros(4), "h": torch.zeros(2)}, message="base")
    a = ledger.commit({"w": torch.ones(4), "h": torch.ones(2), "extra": torch.ones(3)}, parent=base, message="a")
    b = ledger.commit({"w": torch.ones(4)}, parent=base, message="b: h removed")
    before = len(ledger.versions())
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([a, b], method="average", message="m")
    assert str(refused.value) == (f"versions {a.version_id[:12]} and {b.version_id[:12]} have different parameters: "
                                  f"only {a.version_id[:12]} has 'extra', 'h'")
    with pytest.raises(InvalidParameterError) as refused:
        ledger.merge([b, a], method="average", message="m")
    assert str(refused.value).endswith(f"have different parameters: only {a.version_id[:12]} has 'extra', 'h'")
    assert len(ledger.versions()) == before
