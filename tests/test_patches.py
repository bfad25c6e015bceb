"""Patch encodings: apply(encode(a, b), a) == b bit for bit, and auto picks the smallest exact one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.errors import InvalidParameterError
from provenance.kernels.patch import apply_low_rank, apply_sparse
from provenance.patches import ENCODINGS, changed_mask, changed_mask_over, count_changed, encode, same_bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]


def _random(dtype, shape, g):
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 100, shape, generator=g).to(dtype)


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(DTYPES), rows=st.integers(0, 12), cols=st.integers(1, 12),
       density=st.sampled_from([0.0, 0.01, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_auto_round_trip_is_exact_and_smallest(dtype, rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    base = _random(dtype, (rows, cols), g)
    target = base.clone()
    mask = torch.rand((rows, cols), generator=g) < density
    target[mask] = _random(dtype, (rows, cols), g)[mask]
    patch = encode(base, target)
    assert same_bits(patch.apply(base), target)
    sizes = {name: p.nbytes for name, enc in ENCODINGS.items() if (p := enc.encode(base, target)) is not None}
    assert patch.nbytes == min(sizes.values())
    if same_bits(base, target):
        assert patch.encoding == "unchanged" and patch.nbytes == 0


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), n=st.integers(0, 300), steps=st.integers(0, 4),
       density=st.sampled_from([0.0, 0.02, 0.3, 1.0]), revert=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_changed_mask_over_sparse_patches_equals_the_mask_against_the_patched_copy(dtype, n, steps, density, revert,
                                                                                 seed):
    """What a commit uses instead of materialising a parent reached by sparse patches: the same
    mask as against the materialised parent, with patches that overlap, rewrite an index, and
    put back the copy's own value (so the copy and the parent differ where the target may not)."""
    g = torch.Generator().manual_seed(seed)
    copy = _random(dtype, (n,), g)
    parent, patches = copy.clone(), []
    for _ in range(steps):
        child = parent.clone()
        pick = torch.rand(n, generator=g) < density
        child[pick] = _random(dtype, (n,), g)[pick]
        back = pick & (torch.rand(n, generator=g) < revert)
        child[back] = copy[back]  # the copy's value again
        patch = encode(parent, child, encoding="sparse")
        patches.append((patch.tensors["indices"], patch.tensors["values"]))
        parent = patch.apply(parent)
        assert same_bits(parent, child)
    target = parent.clone()
    touched = torch.rand(n, generator=g) < 0.1
    target[touched] = _random(dtype, (n,), g)[touched]
    back = torch.rand(n, generator=g) < 0.2
    target[back] = copy[back]
    want = changed_mask(parent, target)
    got = changed_mask_over(copy, patches, target)
    assert torch.equal(got, want)
    assert count_changed(got) == int(want.sum())
    assert same_bits(encode(copy, target, changed=got).apply(parent), target)  # only the mask is read


def test_sparse_stores_replacements_not_deltas():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float16)
    target = base.clone()
    target[2] = 1e-3  # a delta of (1e-3 - 3.0) added back in fp16 would not round to 1e-3
    patch = encode(base, target, encoding="sparse")
    assert patch.tensors["indices"].tolist() == [2] and patch.tensors["indices"].dtype == torch.int32
    assert patch.tensors["values"].tolist() == [target[2].item()]
    assert same_bits(patch.apply(base), target)


def test_negative_zero_and_nan_payloads_count_as_changes():
    base = torch.tensor([0.0, float("nan")] + [1.0] * 8)
    target = base.clone()
    target[0] = -0.0
    target.view(torch.int32)[1] = 0x7FC00001  # another NaN
    patch = encode(base, target)
    assert patch.encoding == "sparse" and patch.tensors["indices"].tolist() == [0, 1]
    assert same_bits(patch.apply(base), target)


def test_low_rank_from_given_factors_and_a_chain():
    g = torch.Generator().manual_seed(0)
    v0 = torch.randn(256, 128, generator=g)
    # sparse step: 0.5% of the elements (a FISH-mask update)
    v1 = v0.clone()
    idx = torch.randperm(v0.numel(), generator=g)[: v0.numel() // 200]
    v1.view(-1)[idx] += 0.01
    # low-rank step: a rank-4 LoRA update
    b, a = torch.randn(256, 4, generator=g), torch.randn(4, 128, generator=g)
    v2 = apply_low_rank(v1, b, a, 0.5)
    # dense step
    v3 = torch.randn(256, 128, generator=g)
    p1, p2, p3 = encode(v0, v1), encode(v1, v2, low_rank=(b, a, 0.5)), encode(v2, v3)
    assert (p1.encoding, p2.encoding, p3.encoding) == ("sparse", "low_rank", "full")
    assert p1.nbytes == 163 * 8  # 163 changed elements, int32 index + float32 value each
    assert p2.nbytes == (256 * 4 + 4 * 128) * 4 and p2.meta == {"scale": 0.5}
    out = v0
    for p in (p1, p2, p3):
        out = p.apply(out)
    assert same_bits(out, v3)
    assert same_bits(p2.apply(p1.apply(v0)), v2)
    # factors that do not reproduce the target are not used
    assert encode(v1, v2, low_rank=(b, a, 0.25)).encoding == "full"


def test_bad_patches_are_refused():
    base = torch.zeros(3, 4)
    with pytest.raises(InvalidParameterError, match=r"does not match the parent torch.float32\(3, 4\)"):
        encode(base, torch.zeros(4, 3))
    with pytest.raises(InvalidParameterError, match="unknown encoding 'zip'"):
        encode(base, base, encoding="zip")
    with pytest.raises(InvalidParameterError, match="cannot reproduce"):
        encode(base, base + 1, encoding="unchanged")
    with pytest.raises(IndexError, match="out of range"):
        apply_sparse(base, torch.tensor([12], dtype=torch.int32), torch.zeros(1))
    with pytest.raises(ValueError, match="do not make the base's shape"):
        apply_low_rank(base, torch.zeros(3, 2), torch.zeros(2, 5), 1.0)
