"""The merge kernels: the Triton kernel (on CPU through its interpreter) and the torch path against
each other and against naive float64 formulas, merge invariants as property tests, bad input."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton or the kernels are imported

import math  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from provenance.kernels import merge as M  # noqa: E402
from provenance.kernels.dispatch import backend  # noqa: E402

F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
TOL = {F64: {"rtol": 1e-12, "atol": 1e-12}, F32: {"rtol": 1e-5, "atol": 1e-5}, BF16: {"rtol": 1e-2, "atol": 1e-2}, F16: {"rtol": 2e-3, "atol": 2e-3}}
SHAPES = [(1,), (7,), (1000,), (3000,), (33, 17), (0,), (0, 5)]
METHODS = ["average", "fisher", "task", "ties"]
PROPERTY = settings(max_examples=25, deadline=None)


def make(shape, dtype, n, seed, *, fisher_dtype=F32):
    """``n`` random models, their positive Fishers, a base and positive weights."""
    g = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(shape, generator=g).to(dtype) for _ in range(n)]
    fishers = [(torch.rand(shape, generator=g) + 0.05).to(fisher_dtype) for _ in range(n)]
    base = torch.randn(shape, generator=g).to(dtype)
    weights = (torch.rand(n, generator=g) * 0.8 + 0.2).tolist()
    return thetas, fishers, base, weights


def run(method, thetas, fishers, base, weights, **kw):
    """The merge ``method`` through the public function."""
    if method == "average":
        return M.weighted_average(thetas, weights, **kw)
    if method == "fisher":
        return M.fisher_merge(thetas, fishers, weights, norms=[1.5 + i for i in range(len(thetas))], **kw)
    if method == "task":
        return M.task_arithmetic(base, thetas, weights, **kw)
    return M.ties(base, thetas, weights, density=0.3, **kw)


def naive(method, thetas, fishers, base, weights):
    """The same merge written directly, in float64, on stacked inputs."""
    x = torch.stack([t.double() for t in thetas])
    lam = torch.tensor(weights, dtype=F64).reshape(-1, *[1] * thetas[0].dim())
    b = base.double()
    if method == "average":
        return (lam * x).sum(0) / lam.sum()
    if method == "fisher":
        norms = torch.tensor([1.5 + i for i in range(len(thetas))], dtype=F64).reshape(lam.shape)
        a = lam * torch.clamp(torch.stack([f.double() for f in fishers]) / norms, min=1e-6)
        return (a * x).sum(0) / a.sum(0)
    if method == "task":
        return b + (lam * (x - b)).sum(0)
    tau = (x - b).reshape(len(thetas), -1)
    k = int(0.3 * tau.shape[1])
    if k:
        kth = tau.abs().sort(dim=1, descending=True).values[:, k - 1 : k]
        tau = torch.where(tau.abs() >= kth, tau, 0.0)
    else:
        tau = torch.zeros_like(tau)
    lam = lam.reshape(-1, 1)
    elected = torch.where((lam * tau).sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(tau) == elected).double()
    num, den = (lam * tau * agree).sum(0), (lam * agree).sum(0)
    return b + torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).reshape(b.shape)


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_triton_equals_torch_equals_naive(method, shape, dtype):
    thetas, fishers, base, weights = make(shape, dtype, 3, seed=zlib.crc32(f"{method}{shape}{dtype}".encode()))
    before = [t.clone() for t in [*thetas, *fishers, base]]
    results = {}
    for name in ("triton", "torch"):
        poison = torch.full(shape, math.nan, dtype=dtype)  # every element must be written
        with backend(name):
            results[name] = run(method, thetas, fishers, base, weights, out=poison)
        assert results[name] is poison and results[name].dtype == dtype and results[name].shape == shape
        assert not results[name].isnan().any()
    expected = naive(method, thetas, fishers, base, weights)
    torch.testing.assert_close(results["triton"].double(), expected, **TOL[dtype])
    torch.testing.assert_close(results["torch"].double(), expected, **TOL[dtype])
    torch.testing.assert_close(results["triton"], results["torch"], **TOL[dtype])
    assert all(torch.equal(a, b) for a, b in zip(before, [*thetas, *fishers, base]))  # inputs untouched


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("method", METHODS)
def test_every_model_count_of_the_kernel(method, n, dtype):
    thetas, fishers, base, weights = make((257,), dtype, n, seed=n)
    expected = naive(method, thetas, fishers, base, weights)
    for name in ("triton", "torch"):
        with backend(name):
            torch.testing.assert_close(run(method, thetas, fishers, base, weights).double(), expected, **TOL[dtype])


@pytest.mark.parametrize("method", METHODS)
def test_torch_path_over_several_chunks_and_float64(method):
    thetas, fishers, base, weights = make((M.CHUNK + 3,), F64, 3, seed=7)
    with backend("torch"):
        got = run(method, thetas, fishers, base, weights)
    assert got.dtype == F64
    torch.testing.assert_close(got, naive(method, thetas, fishers, base, weights), **TOL[F64])


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("method", ["task", "ties"])
def test_out_may_be_the_base(method, name):
    thetas, fishers, base, weights = make((700,), BF16, 3, seed=5)
    with backend(name):
        fresh = run(method, thetas, fishers, base, weights)
        assert run(method, thetas, fishers, base, weights, out=base) is base
    assert torch.equal(base, fresh)


def test_fisher_may_have_another_dtype_than_the_weights():
    thetas, fishers, _, weights = make((300,), BF16, 3, seed=3, fisher_dtype=F16)
    expected = naive("fisher", thetas, fishers, thetas[0], weights)
    for name in ("triton", "torch"):
        with backend(name):
            torch.testing.assert_close(run("fisher", thetas, fishers, None, weights).double(), expected, **TOL[BF16])


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_ties_by_hand(name):
    zeros = torch.zeros(4)
    with backend(name):
        # signs elected by the λ-weighted sum, positive when it is 0; the disjoint mean divides by
        # the weights of the agreeing models only
        pair = [torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([-1.0, -1.0, -3.0, 0.5])]
        assert M.ties(zeros, pair, [1.0, 1.0], density=1.0).tolist() == [1.0, -1.5, 3.0, 0.5]
        assert M.ties(zeros, pair, [1.0, 3.0], density=1.0).tolist() == [-1.0, -1.25, -3.0, 0.5]
        # k = int(0.5 * 4) = 2, and every magnitude equal to the 2nd largest is kept; k = 0 keeps none
        one = [torch.tensor([1.0, -1.0, 1.0, 0.1])]
        assert M.ties(zeros, one, density=0.5).tolist() == [1.0, -1.0, 1.0, 0.0]
        assert M.ties(zeros + 2, [one[0] + 2], density=0.1).tolist() == [2.0] * 4


# ---- invariants ----------------------------------------------------------------------------------

BACKENDS = pytest.mark.parametrize("name", ["torch", "triton"])
SIZES = st.integers(1, 300)
SEEDS = st.integers(0, 2**31 - 1)


@BACKENDS
@PROPERTY
@given(size=SIZES, seed=SEEDS)
def test_one_model_with_weight_one_comes_back_bit_for_bit(name, size, seed):
    (theta,), (fisher,), base, _ = make((size,), F32, 1, seed)
    with backend(name):
        assert torch.equal(M.weighted_average([theta], [1.0]), theta)
        assert torch.equal(M.fisher_merge([theta], [fisher], [1.0]), theta)
        torch.testing.assert_close(M.task_arithmetic(base, [theta], [1.0]), theta, rtol=0, atol=1e-6)


@BACKENDS
@PROPERTY
@given(size=SIZES, seed=SEEDS, n=st.integers(1, 5))
def test_equal_fishers_give_the_plain_average(name, size, seed, n):
    thetas, (fisher, *_), _, weights = make((size,), F32, n, seed)
    with backend(name):
        torch.testing.assert_close(M.fisher_merge(thetas, [fisher] * n, weights), M.weighted_average(thetas, weights))


@BACKENDS
@PROPERTY
@given(size=SIZES, seed=SEEDS, n=st.integers(2, 5), data=st.data())
def test_a_zero_fisher_removes_its_model(name, size, seed, n, data):
    thetas, fishers, _, weights = make((size,), F32, n, seed)
    j = data.draw(st.integers(0, n - 1))
    fishers[j] = torch.zeros_like(fishers[j])
    keep = [i for i in range(n) if i != j]
    with backend(name):
        merged = M.fisher_merge(thetas, fishers, weights, eps=0.0)
        others = M.fisher_merge([thetas[i] for i in keep], [fishers[i] for i in keep], [weights[i] for i in keep], eps=0.0)
    assert torch.equal(merged, others)


@BACKENDS
@PROPERTY
@given(size=SIZES, seed=SEEDS, n=st.integers(1, 5))
def test_zero_total_fisher_falls_back_to_the_weighted_average(name, size, seed, n):
    thetas, fishers, _, weights = make((size,), F32, n, seed)
    holes = torch.arange(size) % 3 == 0
    fishers = [f.masked_fill(holes, 0.0) for f in fishers]
    with backend(name):
        merged = M.fisher_merge(thetas, fishers, weights, eps=0.0)
        average = M.weighted_average(thetas, weights)
    assert not merged.isnan().any()
    torch.testing.assert_close(merged[holes], average[holes])
    a = torch.tensor(weights, dtype=F64)[:, None] * torch.stack(fishers).double()
    expected = (a * torch.stack(thetas).double()).sum(0) / a.sum(0)  # the Fisher merge off the holes
    torch.testing.assert_close(merged[~holes].double(), expected[~holes], **TOL[F32])


@BACKENDS
@PROPERTY
@given(size=SIZES, seed=SEEDS, n=st.integers(1, 5))
def test_ties_at_full_density_with_agreeing_signs_is_the_mean_task_vector(name, size, seed, n):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(size, generator=g)
    sign = torch.where(torch.rand(size, generator=g) < 0.5, -1.0, 1.0)
    taus = [sign * (torch.rand(size, generator=g) + 0.1) for _ in range(n)]
    with backend(name):
        merged = M.ties(base, [base + tau for tau in taus], density=1.0)
    torch.testing.assert_close(merged, base + torch.stack(taus).mean(0))


# ---- bad input -----------------------------------------------------------------------------------

A = torch.ones(3)
BAD = {
    "shapes": (lambda: M.weighted_average([A, torch.ones(4)]), ValueError, r"thetas\[1\] has shape \(4,\), thetas\[0\] \(3,\)"),
    "dtypes": (lambda: M.weighted_average([A, A.to(BF16)]), TypeError, r"thetas\[1\] has dtype torch.bfloat16, thetas\[0\] torch.float32"),
    "int": (lambda: M.weighted_average([torch.ones(3, dtype=torch.int64)]), TypeError, r"torch.int64"),
    "negative": (lambda: M.fisher_merge([A, A], [A, A], [1.0, -0.5]), ValueError, r"weights\[1\] is -0.5"),
    "nan": (lambda: M.task_arithmetic(A, [A], [math.nan]), ValueError, r"weights\[0\] is nan"),
    "zero sum": (lambda: M.ties(A, [A, A], [0.0, 0.0]), ValueError, r"weights sum to 0.0"),
    "count": (lambda: M.weighted_average([A, A], [1.0]), ValueError, r"1 weights for 2 models"),
    "none": (lambda: M.weighted_average([]), ValueError, r"got 0 thetas"),
    "strided": (lambda: M.weighted_average([torch.ones(4, 6).t()]), ValueError, r"strides \(1, 6\): not contiguous"),
    "fishers": (lambda: M.fisher_merge([A, A], [A]), ValueError, r"1 fishers for 2 thetas"),
    "norms": (lambda: M.fisher_merge([A], [A], norms=[0.0]), ValueError, r"norms\[0\] is 0.0"),
    "eps": (lambda: M.fisher_merge([A], [A], eps=-1.0), ValueError, r"eps must be finite and >= 0, got -1.0"),
    "base": (lambda: M.ties(torch.ones(2), [A]), ValueError, r"base has shape \(2,\), thetas\[0\] \(3,\)"),
    "density": (lambda: M.ties(A, [A], density=0.0), ValueError, r"density must be in \(0, 1\], got 0.0"),
    "out": (lambda: M.weighted_average([A], out=torch.empty(3, dtype=F16)), ValueError, r"out is torch.float16\(3,\)"),
}


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_with_the_numbers(case, name):
    call, error, message = BAD[case]
    with backend(name), pytest.raises(error, match=message):
        call()


def test_nine_models_run_on_the_torch_path_only():
    thetas = [torch.full((5,), float(i)) for i in range(9)]
    with backend("torch"):
        assert torch.equal(M.weighted_average(thetas), torch.full((5,), 4.0))
    with backend("triton"), pytest.raises(ValueError, match=r"takes 1 to 8 models, got 9"):
        M.weighted_average(thetas)


# ---- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnGPU:
    """The compiled kernel at a realistic size (several million elements) against the torch path."""

    @pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
    @pytest.mark.parametrize("method", METHODS)
    def test_kernel_equals_torch_path(self, method, dtype):
        thetas, fishers, base, weights = make((4096, 1031), dtype, 8, seed=11)
        thetas, fishers, base = [t.cuda() for t in thetas], [f.cuda() for f in fishers], base.cuda()
        fast = run(method, thetas, fishers, base, weights)
        with backend("torch"):
            slow = run(method, thetas, fishers, base, weights)
        assert fast.is_cuda and fast.dtype == dtype
        torch.testing.assert_close(fast, slow, **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (4097,), (33, 17), (9000,)], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_numba_path_is_bit_identical_to_the_torch_reference(method, shape, dtype, monkeypatch):
    thetas, fishers, base, weights = make(shape, dtype, 3, seed=zlib.crc32(f"nb{method}{shape}{dtype}".encode()))
    thetas[0].view(-1)[:1] = -0.0  # a signed zero and, for TIES, a tie at the threshold
    fast = run(method, thetas, fishers, base, weights)
    monkeypatch.setattr(M, "_numba_ok", lambda *a, **k: False)
    ref = run(method, thetas, fishers, base, weights)
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    assert torch.equal(fast.view(-1).view(torch.uint8), ref.view(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_numba_fisher_with_holes_is_bit_identical_to_the_torch_reference(n, dtype, monkeypatch):
    """Zero Fishers with eps=0 on every third element of the first 5,000 and on one element of a
    later block: the numba path folds the λ-weighted mean only in blocks with such holes."""
    thetas, fishers, _, weights = make((9000,), dtype, n, seed=n)
    holes = (torch.arange(9000) % 3 == 0) & (torch.arange(9000) < 5000)
    holes[8500] = True
    fishers = [f.masked_fill(holes, 0.0) for f in fishers]
    fast = M.fisher_merge(thetas, fishers, weights, eps=0.0)
    monkeypatch.setattr(M, "_numba_ok", lambda *a, **k: False)
    ref = M.fisher_merge(thetas, fishers, weights, eps=0.0)
    assert torch.equal(fast.view(-1).view(torch.uint8), ref.view(-1).view(torch.uint8))
    assert torch.equal(fast[holes], M.weighted_average(thetas, weights)[holes])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("density", [0.01, 0.3, 0.999])
def test_numba_ties_threshold_equals_kthvalue(dtype, density, monkeypatch):
    monkeypatch.setattr(M, "HISTOGRAM_MIN", 0)  # the histogram path, which large tensors take
    g = torch.Generator().manual_seed(7)
    base = torch.randn(5001, generator=g).to(dtype)
    thetas = [(base.float() + torch.randn(5001, generator=g).round(decimals=1)).to(dtype) for _ in range(2)]
    n, k = base.numel(), int(density * base.numel())
    got = M._ties_thresholds(base, thetas, density)
    want = [(t.float() - base.float()).abs().kthvalue(n - k + 1).values.item() for t in thetas]
    assert got == want


CUDA = torch.cuda.is_available()
WHERE = [("torch", "cpu"), ("triton", "cuda" if CUDA else "cpu"), *([("torch", "cuda")] if CUDA else [])]


@pytest.mark.parametrize("name, device", WHERE, ids=[f"{n}-{d}" for n, d in WHERE])
@pytest.mark.parametrize("path", ["window", "missed window", "radix"])
@pytest.mark.parametrize("dtype", [F32, BF16, torch.float16], ids=str)
def test_device_ties_threshold_equals_kthvalue(dtype, path, name, device, monkeypatch):
    """The thresholds CUDA tensors take (the counting pass in Triton, or torch ops): the sampled
    window's answer, and radix selection where the window misses (a sample of one position) or is
    not used, equal ``kthvalue`` at every rank tried, with ties, a NaN, an infinity, -0.0 and
    subnormals among the magnitudes, and an input equal to the base (all magnitudes 0)."""
    from provenance.kernels import merge_kth  # where _kth_abs_radix reads these

    radix_calls, radix = [], M._radix_select
    monkeypatch.setattr(merge_kth, "_radix_select", lambda *a: radix_calls.append(1) or radix(*a))
    if path == "missed window":
        monkeypatch.setattr(merge_kth, "SAMPLE", 1)
    elif path == "radix":
        monkeypatch.setattr(merge_kth, "_window_select", lambda *a: None)
    g = torch.Generator().manual_seed(13)
    n = 20_003 if name == "triton" and device == "cpu" else 200_003  # the interpreter runs each program in numpy
    base = torch.randn(n, generator=g).to(dtype)
    thetas = [(base.float() + torch.randn(n, generator=g).round(decimals=1) * s).to(dtype) for s in (1.0, 0.01)]
    thetas[0][:5] = torch.tensor([math.nan, math.inf, -0.0, 1e-40, -1e-45]).to(dtype)
    thetas.append(base.clone())
    b = base.float()
    ranks = (0, 1, n // 5, n // 2, n - 2, n - 1)
    with backend(name):
        for rank in ranks:
            want = [(t.float() - b).abs().kthvalue(rank + 1).values.item() for t in thetas]
            got = M._kth_abs_radix(base.to(device), [t.to(device) for t in thetas], rank)
            assert [str(v) for v in got] == [str(v) for v in want], rank  # str: NaN equals NaN
    if path == "window":  # the extreme ranks may fall outside the sample; the middle ones never
        assert len(radix_calls) <= 2 * len(thetas)
    else:
        assert len(radix_calls) >= (2 if path == "radix" else 1) * len(ranks)


@pytest.mark.parametrize("name, device", WHERE, ids=[f"{n}-{d}" for n, d in WHERE])
def test_window_select_counts_gathers_and_refuses_a_window_too_wide(name, device):
    """The counting pass given its window: the exact answer from a window that holds the rank;
    None (so radix selection runs) from one that misses it, and from one holding every element,
    more than the gather buffer's sixteenth, which the kernel must not write past."""
    g = torch.Generator().manual_seed(3)
    n = 30_011
    b, x = torch.randn(n, generator=g).to(device), torch.randn(n, generator=g).to(device)
    bits = (x - b).abs().view(torch.int32).cpu()
    ordered = bits.sort().values
    rank = 12_345
    want = (x - b).abs().cpu().kthvalue(rank + 1).values.item()
    lo, hi = int(ordered[rank - 700]), int(ordered[rank + 700])
    with backend(name):
        for r in (rank - 700, rank - 699, rank, rank + 699, rank + 700):  # the window's ends too
            assert M._window_select(b, x, lo, hi, r) == (x - b).abs().cpu().kthvalue(r + 1).values.item(), r
        assert M._window_select(b, x, int(ordered[rank + 1]), int(ordered[rank + 900]), rank) is None
        assert M._window_select(b, x, int(ordered[rank]), int(ordered[rank]), rank) == want  # lo == hi
        assert M._window_select(b, x, 0, 0x7FFFFFFF, rank) is None


@pytest.mark.parametrize("window", ["sampled", "missed", "overflowed"])
def test_numba_ties_threshold_of_a_large_tensor_in_one_pass_or_by_the_fallback(window, monkeypatch):
    """300,003 elements (past HISTOGRAM_MIN), magnitudes with many ties and a NaN: the sampled
    window's answer, and the exact two-pass fallback where the window misses the rank or holds
    more than was allotted, all equal ``kthvalue``."""
    from provenance.kernels import merge_cpu

    g = torch.Generator().manual_seed(11)
    base = torch.randn(300_003, generator=g)
    thetas = [base + torch.randn(300_003, generator=g).round(decimals=2) * s for s in (1.0, 0.01, 3.0)]
    thetas[2][5] = math.nan
    if window == "missed":  # a window far over the answer (2^127): every model falls back
        monkeypatch.setattr(merge_cpu, "_sample_window", lambda *a: (*(np.full(3, 0x7F000000, np.uint32),) * 2, 0.01))
    elif window == "overflowed":  # the whole range, with room for 1% of it
        monkeypatch.setattr(merge_cpu, "_sample_window",
                            lambda *a: (np.zeros(3, np.uint32), np.full(3, 0xFFFFFFFF, np.uint32), 0.0))
    calls, exact = [], merge_cpu._kth_abs_histogram
    monkeypatch.setattr(merge_cpu, "_kth_abs_histogram", lambda *a: calls.append(1) or exact(*a))
    for density in (0.2, 0.5, 0.999):
        n, k = base.numel(), int(density * base.numel())
        got = M._ties_thresholds(base, thetas, density)
        want = [(t - base).abs().kthvalue(n - k + 1).values.item() for t in thetas]
        assert got == want
    assert len(calls) == (0 if window == "sampled" else 3)


def test_cpu_merge_kernels_are_cacheable_and_small_merges_run_on_one_thread(monkeypatch):
    """A dispatcher in a kernel's closure made numba's cache miss in every process (3-10 s of
    compiling per merge); a merge of a few elements woke numba's threads for nothing."""
    import numba

    from provenance.kernels import merge_cpu

    for kernel in merge_cpu._MERGE_NB.values():
        cells = [c.cell_contents for c in kernel.py_func.__closure__ or ()]
        assert all(type(c) in (int, bool) for c in cells), cells
    seen = []
    real = merge_cpu._MERGE_NB[0, False, False, False]
    monkeypatch.setitem(merge_cpu._MERGE_NB, (0, False, False, False),
                        lambda *a: (seen.append((numba.get_num_threads(), a[-1])), real(*a)))
    threads = numba.get_num_threads()
    x = [torch.arange(4.0), torch.arange(4.0) + 2]
    out = torch.empty(4)
    merge_cpu._merge_numba("mean", out, x[0], x, [], [1.0, 1.0], [1.0, 1.0], 0.0)
    assert out.tolist() == [1.0, 2.0, 3.0, 4.0] and seen == [(1, 4)] and numba.get_num_threads() == threads
    big = [torch.ones(merge_cpu.SERIAL_BELOW), torch.ones(merge_cpu.SERIAL_BELOW) * 3]
    merge_cpu._merge_numba("mean", torch.empty(merge_cpu.SERIAL_BELOW), big[0], big, [], [1.0, 1.0], [1.0, 1.0], 0.0)
    assert seen[-1] == (threads, 4 * threads)
