"""Merging patches directly (provenance.kernels.merge_patches): against merging the materialised
inputs, on the torch path (bit for bit) and the Triton kernel (in the interpreter without a GPU)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton or the kernels are imported

import pytest  # noqa: E402

from provenance.errors import InvalidParameterError  # noqa: E402
from provenance.kernels import merge as M  # noqa: E402
from provenance.kernels import patch as P  # noqa: E402
from provenance.kernels import patch_torch  # noqa: E402
from provenance.kernels.dispatch import backend  # noqa: E402
from provenance.kernels.merge_patches import merge_patches  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16
METHODS = ["average", "fisher", "task_arithmetic"]


def patches_for(base: torch.Tensor, seed: int) -> list:
    """Four inputs of every kind: sparse, low rank, dense delta, and one equal to the base."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = base.shape
    idx = torch.randperm(rows * cols, generator=g)[: max(1, rows * cols // 50)].sort().values
    vals = torch.randn(len(idx), generator=g).to(base.dtype)
    b, a = torch.randn(rows, 3, generator=g), torch.randn(3, cols, generator=g)
    delta = (0.1 * torch.randn(rows, cols, generator=g)).to(base.dtype)
    return [("sparse", idx, vals), ("low_rank", b, a, 0.5), ("dense", delta), None]


def materialised(method, base, patches, weights, fishers):
    thetas = [base.clone() if p is None else P.apply_chain(base, [p]) for p in patches]
    if method == "average":
        return M.weighted_average(thetas, weights)
    if method == "fisher":
        return M.fisher_merge(thetas, fishers, weights)
    return M.task_arithmetic(base, thetas, weights)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("shape", [(1000, 37), (300, 64), (5, 3)])
def test_torch_path_is_the_merge_of_the_materialised_inputs(method, dtype, shape, monkeypatch):
    monkeypatch.setattr(patch_torch, "ROW_BLOCK_ELEMENTS", 1)  # blocks of 256 rows: several per tensor
    g = torch.Generator().manual_seed(sum(shape))
    base = torch.randn(shape, generator=g).to(dtype)
    patches = patches_for(base, seed=len(method))
    weights = [0.4, 0.3, 0.2, 0.1]
    fishers = [torch.rand(shape, generator=g) + 0.05 for _ in patches]
    out = torch.full_like(base, float("nan"))  # poisoned: an element not written fails
    with backend("torch"):
        got = merge_patches(base, patches, weights, method=method, fishers=fishers, out=out)
        want = materialised(method, base, patches, weights, fishers)
    assert got is out and torch.equal(got, want)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_triton_kernel_makes_the_inputs_in_registers(method, dtype):
    g = torch.Generator().manual_seed(11)
    base = torch.randn(33, 40, generator=g).to(dtype)
    patches = patches_for(base, seed=3)
    weights = [0.1, 0.2, 0.3, 0.4]
    fishers = [torch.rand(33, 40, generator=g) + 0.05 for _ in patches]
    with backend("torch"):
        ref = merge_patches(base, patches, weights, method=method, fishers=fishers)
    with backend("triton"):
        exact = merge_patches(base, patches, weights, method=method, fishers=fishers, exact=True,
                              out=torch.full_like(base, float("nan")))
        thetas = [base.clone() if p is None else P.apply_chain(base, [p]) for p in patches]
        if method == "average":
            kernel_of_materialised = M.weighted_average(thetas, weights)
        elif method == "fisher":
            kernel_of_materialised = M.fisher_merge(thetas, fishers, weights)
        else:
            kernel_of_materialised = M.task_arithmetic(base, thetas, weights)
        fused = merge_patches(base, patches, weights, method=method, fishers=fishers, exact=False)
    # exact=True: bit for bit the Triton merge of the Triton-made inputs
    assert torch.equal(exact, kernel_of_materialised)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == F32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(exact.float(), ref.float(), **tol)
    torch.testing.assert_close(fused.float(), ref.float(), **tol)  # B @ A never made


def test_bad_input_is_refused():
    base = torch.randn(8, 4)
    with pytest.raises(InvalidParameterError, match="not 'ties'"):
        merge_patches(base, [None], method="ties")
    with pytest.raises(InvalidParameterError, match=r"patches\[0\] is a full tensor"):
        merge_patches(base, [("full", base)])
    with pytest.raises(InvalidParameterError, match="one Fisher per patch: 2 patches, no Fishers"):
        merge_patches(base, [None, None], method="fisher")
    with pytest.raises(InvalidParameterError, match=r"patches\[1\] has unknown kind 'lora'"):
        merge_patches(base, [None, ("lora", 1)])
    with pytest.raises(InvalidParameterError, match="at least one patch"):
        merge_patches(base, [])
    b, a = torch.ones(8, 1), torch.ones(1, 4)
    for scale, shown in ((float("nan"), "nan"), (float("inf"), "inf"), ("2", "str '2'"), (True, "bool True"),
                         (None, "NoneType None"), (torch.ones(2), "Tensor")):
        message = rf"patches\[0\]: low-rank scale must be a finite number, got {shown}"
        with pytest.raises(InvalidParameterError, match=message):  # NaN made every element NaN, silently
            merge_patches(base, [("low_rank", b, a, scale)])
        with pytest.raises(InvalidParameterError, match=message):
            P.apply_chain(base, [("low_rank", b, a, scale)])
        with pytest.raises(InvalidParameterError, match="^low-rank scale must be a finite number"):
            P.apply_low_rank(base, b, a, scale)
    assert torch.equal(merge_patches(base, [("low_rank", b, a, torch.tensor(0.5))]), base + 0.5)  # a 0-d tensor
    five = [("dense", torch.full_like(base, float(i))) for i in range(5)]  # more than one launch takes
    assert torch.allclose(merge_patches(base, five), base + 2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_fused_kernel_matches_the_cpu_reference(method):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4096, 1024, generator=g)
    patches = patches_for(base, seed=9)
    weights = [0.1, 0.2, 0.3, 0.4]
    fishers = [torch.rand(4096, 1024, generator=g) + 0.05 for _ in patches]
    ref = merge_patches(base, patches, weights, method=method, fishers=fishers)
    cuda = lambda p: None if p is None else tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in p)  # noqa: E731
    got = merge_patches(base.cuda(), [cuda(p) for p in patches], weights, method=method,
                        fishers=[f.cuda() for f in fishers], exact=False)
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_eps_none_is_taken_by_the_methods_that_never_read_it(name):
    """A merge receipt records ``eps`` for Fisher merges only, and its re-run passes that None on
    (``receipt_check`` of a LoRA average on CUDA raised a TypeError on the first GPU run)."""
    g = torch.Generator().manual_seed(12)
    base = torch.randn(33, 40, generator=g)
    patches = patches_for(base, seed=4)
    with backend(name):
        for method in ("average", "task_arithmetic"):
            assert torch.equal(merge_patches(base, patches, method=method, eps=None),
                               merge_patches(base, patches, method=method))
        fishers = [torch.rand(33, 40, generator=g) + 0.05 for _ in patches]
        with pytest.raises(InvalidParameterError, match="a fisher merge needs eps, a float >= 0; got None"):
            merge_patches(base, patches, method="fisher", fishers=fishers, eps=None)


def test_unsorted_or_repeated_sparse_indices_are_refused_by_entry():
    """Stranger pass 49: each block of rows finds its sparse entries by binary search, so indices
    out of order were refused as "sparse index -868345 out of range for a tensor of 1048576
    elements" (an index never given, of a block's size, not the tensor's) or misplaced. They are
    refused naming the patch and the entry; sorted ones merge to the hand value."""
    base = torch.zeros(1024, 4096)  # four blocks of rows on the torch path
    for idx, entry in (([4096 * 300 + 7, 5], "entry 1 is 5 after 1228807"),
                       ([5, 4096 * 600 + 1, 4096 * 300 + 7], "entry 2 is 1228807 after 2457601"),
                       ([3, 3], "entry 1 is 3 after 3")):
        with pytest.raises(InvalidParameterError) as refused:
            merge_patches(base, [None, ("sparse", torch.tensor(idx), torch.ones(len(idx)))])
        assert str(refused.value).startswith(f"patches[1]: sparse indices must be sorted ascending and unique, as the "
                                             f"sparse encoding makes them; {entry} (")
    idx = torch.tensor([5, 4096 * 300 + 7, 4096 * 600 + 1])
    merged = merge_patches(base, [None, ("sparse", idx, torch.tensor([2.0, 4.0, 6.0]))], [0.5, 0.5]).reshape(-1)
    assert merged[idx].tolist() == [1.0, 2.0, 3.0] and int(torch.count_nonzero(merged)) == 3
