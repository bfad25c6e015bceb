"""The CPU fast path of the merge kernels: numba loops that compute exactly what the torch path of
:mod:`provenance.kernels.merge` computes (the same recurrences, fused multiply-adds where torch's
vectorised code uses them), in one parallel pass over blocks of elements, each input read once and
the output written once; and exact TIES thresholds in one counting pass instead of a sort.

Each block folds the models in groups of 4, 2 or 1 (:func:`_fold_kernel`): the block's running
sums are read and written once per group, and the group's inputs stream side by side. One kernel
is compiled per merge method and input kind (:func:`_merge_kernel`), with those as constants, so
that each fold's branches fold away and its loop vectorises.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import get_num_threads, prange

from provenance.kernels.jit_cache import cached_njit, threads_for

MAX_MODELS = 8  # models per call: one Triton pointer argument each; here one compiled type, unused slots repeat the first
NB_BLOCK = 4096  # elements per block (its scratch rows stay in L1/L2)
_MODES = {"mean": 0, "fisher": 1, "task": 2, "ties": 3}


def _numba_ok(*tensors: torch.Tensor, same: bool = False) -> bool:
    """Whether the numba path takes these tensors: on the CPU, float32, float64 or bfloat16 (as its
    bits), one dtype with ``same``. float16 runs the torch path (numba has no float16)."""
    ok = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.bfloat16) for t in tensors)
    return ok and (not same or len({t.dtype for t in tensors}) <= 1)


def _np(t: torch.Tensor) -> np.ndarray:
    """The flat numpy view of the contiguous ``t`` (bfloat16 as its uint16 bits), no copy."""
    t = t.detach().reshape(-1)
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _padded(ts: list[torch.Tensor]) -> tuple:
    """``MAX_MODELS`` views (the unused ones repeat the first): one compiled type per dtype."""
    views = [_np(t) for t in ts]
    return tuple(views + views[:1] * (MAX_MODELS - len(views)))


def _merge_numba(mode, out, base, thetas, fishers, lam, extra, eps) -> None:
    """:func:`_merge_torch`'s recurrences in the numba kernel of ``mode`` and these inputs'
    kind (:func:`_merge_kernel`); the running means' ratios
    ``λᵢ / (λ₁ + … + λᵢ)`` are computed in Python double, as the torch path does."""
    ratios, total = [], 0.0
    for lam_i in lam:
        total += lam_i
        ratios.append(lam_i / total if lam_i else 0.0)
    pad = [0.0] * (MAX_MODELS - len(lam))
    prm = np.array([lam + pad, extra + pad, ratios + pad, [eps] * MAX_MODELS], dtype=np.float64)
    prm = prm.astype(np.float64 if out.dtype == torch.float64 else np.float32)
    fs = _padded(fishers) if fishers else _padded(thetas)
    fbf16 = bool(fishers) and fishers[0].dtype == torch.bfloat16
    fdirect = bool(fishers) and _np(fishers[0]).dtype == prm.dtype
    kernel = _MERGE_NB[_MODES[mode], out.dtype == torch.bfloat16, fbf16, fdirect]
    with threads_for(out.numel(), SERIAL_BELOW) as threads:
        kernel(len(thetas), _np(out), _np(base), _padded(thetas), fs, prm, 4 * threads)


SERIAL_BELOW = 1 << 18  # elements under which a merge runs on the calling thread alone


@cached_njit(inline="always")
def _load(dst, src, bf16, bits):
    """The block ``src`` into ``dst`` in the accumulation dtype (bfloat16 from its bits: exact)."""
    if bf16:
        fb = bits.view(np.float32)
        for j in range(dst.size):
            bits[j] = np.uint32(src[j]) << np.uint32(16)
        for j in range(dst.size):
            dst[j] = fb[j]
    else:
        for j in range(dst.size):
            dst[j] = src[j]


@cached_njit(inline="always")
def _store(out, src, bf16, bits):
    """``src`` into the block ``out``; to bfloat16 rounded to nearest-even by hand, NaN as torch's
    CPU conversion writes it (0xFFFF)."""
    if bf16:
        fb = bits.view(np.float32)
        for j in range(src.size):
            fb[j] = src[j]
        for j in range(src.size):
            u = bits[j]
            r = 0xFFFF if (u & 0x7FFFFFFF) > 0x7F800000 else (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
            out[j] = np.uint16(r)
    else:
        for j in range(src.size):
            out[j] = src[j]


@cached_njit(fastmath={"contract"}, error_model="numpy")  # a division by zero is inf or NaN, as in torch
def _step(mode, a0, a1, a2, a3, x, f, b, lam, ext, ratio, eps):
    """One model's element folded into the running sums ``a0..a3`` of the merge ``mode``: the
    torch path's recurrences, element by element."""
    if mode == 0:
        if ratio != 0:
            a0 += ratio * (x - a0)
    elif mode == 1:  # the running Fisher-weighted mean (a0) and its total weight (a1)
        a = f / ext if ext != 1 else f  # F / 1 is F: torch skips that division too
        if a < eps:
            a = eps
        a *= lam
        a1 += a
        r = a / a1 if a1 != 0 else a - a
        a0 += r * (x - a0)
    elif mode == 2:
        a0 += lam * (x - b)
    else:  # TIES, branch-free so that it vectorises: λ-weighted sums and weights of the positive (a0, a1) and
        # negative (a2, a3) trimmed values; τ times a 0/1 factor, not a select, so that the multiply-add stays
        # fused as torch's add_(alpha=λ) is (a NaN τ reaches both sums, as torch's clamps pass it)
        zero, one = lam - lam, np.float32(1.0)
        tau = x - b
        kept = not ((ext > 0) & (abs(tau) < ext))
        up = kept & (tau > 0)
        down = kept & (tau < 0)
        a0 += lam * (tau * (one if up else zero))
        a1 += lam if up else zero
        a2 += lam * (tau * (one if down else zero))
        a3 += lam if down else zero
    return a0, a1, a2, a3


def _fold_kernel(mode: int):
    """The fold of ``mode`` (a constant in it, its branches folded away so that it vectorises)."""

    @cached_njit(fastmath={"contract"}, error_model="numpy")  # named fold_MODE (jit_cache._specialised)
    def fold(g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c):
        """Models ``k .. k+g-1`` (``g`` = 1, 2 or 4) folded into the block's sums in one pass over it:
        the sums are read and written once per group, not once per model (the inputs are read side
        by side, which the memory system streams faster than one after the other)."""
        for j in range(c):
            a0, a1, a2, a3 = s0[j], s1[j], s2[j], s3[j]
            a0, a1, a2, a3 = _step(mode, a0, a1, a2, a3, x0[j], f0[j], b[j], prm[0, k], prm[1, k], prm[2, k], prm[3, k])
            if g >= 2:
                a0, a1, a2, a3 = _step(mode, a0, a1, a2, a3, x1[j], f1[j], b[j], prm[0, k + 1], prm[1, k + 1], prm[2, k + 1], prm[3, k + 1])
            if g == 4:
                a0, a1, a2, a3 = _step(mode, a0, a1, a2, a3, x2[j], f2[j], b[j], prm[0, k + 2], prm[1, k + 2], prm[2, k + 2], prm[3, k + 2])
                a0, a1, a2, a3 = _step(mode, a0, a1, a2, a3, x3[j], f3[j], b[j], prm[0, k + 3], prm[1, k + 3], prm[2, k + 3], prm[3, k + 3])
            s0[j] = a0
            if mode == 1 or mode == 3:
                s1[j] = a1
            if mode == 3:
                s2[j] = a2
                s3[j] = a3

    return fold


_FOLDS = [_fold_kernel(mode) for mode in range(4)]
_FOLD_0, _FOLD_1, _FOLD_2, _FOLD_3 = _FOLDS


@cached_njit(inline="always")
def _fold(mode, g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c):
    """The fold of ``mode``, named through module globals: a merge kernel that held the fold in
    its closure could not be found in numba's cache by another process (a dispatcher in a closure
    is part of the cache's key, and differs in every process), so each process compiled every
    kernel again (3-10 s per kernel) and added a file to the cache."""
    if mode == 0:
        _FOLD_0(g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c)
    elif mode == 1:
        _FOLD_1(g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c)
    elif mode == 2:
        _FOLD_2(g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c)
    else:
        _FOLD_3(g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c)


def _merge_kernel(mode: int, bf16: bool, fbf16: bool, fdirect: bool):
    """The numba merge kernel of ``mode`` for (bfloat16 or not) inputs and Fishers, the Fishers read
    in place (``fdirect``: of the accumulation dtype) or converted block by block, compiled with
    these as constants (their branches folded away, so that each fold vectorises and each kernel
    compiles only its own path); numba caches each apart."""

    @cached_njit(parallel=True, nogil=True, fastmath={"contract"}, error_model="numpy")  # merge_nb_BF16_FBF16_FDIRECT_MODE
    def merge_nb(nmod, out, base, xs, fs, prm, chunks):
        n, blocks = out.size, (out.size + NB_BLOCK - 1) // NB_BLOCK
        per = (blocks + chunks - 1) // chunks
        for ch in prange(chunks):
            scratch = np.empty((13, NB_BLOCK), prm.dtype)
            bits = np.empty(NB_BLOCK, np.uint32)
            for blk in range(ch * per, min(blocks, ch * per + per)):
                lo = blk * NB_BLOCK
                c = min(NB_BLOCK, n - lo)
                b, s0, s1, s2, s3 = scratch[0, :c], scratch[1, :c], scratch[2, :c], scratch[3, :c], scratch[4, :c]
                for j in range(c):
                    s0[j] = s1[j] = s2[j] = s3[j] = 0
                if mode >= 2 and bf16:
                    _load(b, base[lo : lo + c], bf16, bits)
                elif mode >= 2:  # read in place (the accumulation dtype already)
                    b = base[lo : lo + c]
                if mode == 2:
                    s0[:] = b
                k = 0
                while k < nmod:
                    g = 4 if nmod - k >= 4 else (2 if nmod - k >= 2 else 1)
                    f0, f1, f2, f3 = scratch[9, :c], scratch[10, :c], scratch[11, :c], scratch[12, :c]
                    if mode == 1 and fdirect:  # Fishers of the accumulation dtype: read in place
                        f0 = fs[k][lo : lo + c]
                        f1 = fs[k + 1][lo : lo + c] if g >= 2 else f0
                        f2 = fs[k + 2][lo : lo + c] if g == 4 else f0
                        f3 = fs[k + 3][lo : lo + c] if g == 4 else f0
                    elif mode == 1:
                        for i in range(g):
                            _load(scratch[9 + i, :c], fs[k + i][lo : lo + c], fbf16, bits)
                    if bf16:
                        for i in range(g):
                            _load(scratch[5 + i, :c], xs[k + i][lo : lo + c], bf16, bits)
                        _fold(mode, g, scratch[5, :c], scratch[6, :c], scratch[7, :c], scratch[8, :c], f0, f1, f2,
                              f3, b, s0, s1, s2, s3, prm, k, c)
                    else:
                        x0 = xs[k][lo : lo + c]
                        x1 = xs[k + 1][lo : lo + c] if g >= 2 else x0
                        x2 = xs[k + 2][lo : lo + c] if g == 4 else x0
                        x3 = xs[k + 3][lo : lo + c] if g == 4 else x0
                        _fold(mode, g, x0, x1, x2, x3, f0, f1, f2, f3, b, s0, s1, s2, s3, prm, k, c)
                    k += g
                if mode == 1:
                    holes = False
                    for j in range(c):
                        holes |= s1[j] == 0
                    if holes:  # Σ λᵢ F'ᵢ == 0 somewhere in the block: the λ-weighted running mean there, model by model
                        for j in range(c):
                            s2[j] = 0
                        for k in range(nmod):
                            if bf16:
                                _load(scratch[5, :c], xs[k][lo : lo + c], bf16, bits)
                                _FOLD_0(1, scratch[5, :c], b, b, b, b, b, b, b, b, s2, s3, s3, s3, prm, k, c)
                            else:
                                x0 = xs[k][lo : lo + c]
                                _FOLD_0(1, x0, x0, x0, x0, b, b, b, b, b, s2, s3, s3, s3, prm, k, c)
                        for j in range(c):
                            if s1[j] == 0:
                                s0[j] = s2[j]
                elif mode == 3:
                    for j in range(c):
                        up = s0[j] + s2[j] >= 0
                        den = s1[j] if up else s3[j]
                        s0[j] = ((s0[j] if up else s2[j]) / den + b[j]) if den != 0 else b[j] + 0
                _store(out[lo : lo + c], s0, bf16, bits)

    return merge_nb


_MERGE_NB = {(mode, bf16, fbf16, fdirect): _merge_kernel(mode, bf16, fbf16, fdirect)
             for mode in range(4) for bf16 in (False, True) for fbf16 in (False, True) for fdirect in (False, True)
             if mode == 1 or not (fbf16 or fdirect)}


def _kth_abs_numba(base: torch.Tensor, thetas: list[torch.Tensor], rank: int) -> list[float]:
    """Per model, the ``rank``-th smallest (0-based) float32 ``|θᵢ − θ₀|``, exactly as
    ``kthvalue(rank + 1)``, in one counting pass: a sample of the magnitudes gives a window of bit
    patterns that holds the answer with near certainty (:func:`_sample_window`); one pass counts,
    per model, the magnitudes under the window and gathers those inside it; the answer is then
    picked among the gathered few. A model whose window missed (or overflowed) takes the exact
    two-pass histogram of :func:`_kth_abs_histogram`."""
    xs, b, bf16 = _padded(thetas), _np(base), base.dtype == torch.bfloat16
    nmod, n = len(thetas), base.numel()
    lo, hi, share = _sample_window(b, xs, nmod, bf16, rank)
    chunks = max(1, get_num_threads())
    cap = int(2 * share * (-(-n // chunks))) + 4096  # gathered per model and chunk: twice the expected count
    below = np.zeros((nmod, chunks), np.int64)
    inside = np.zeros((nmod, chunks), np.int64)
    gathered = np.empty((nmod, chunks, cap), np.uint32)
    _abs_window(b, xs, nmod, bf16, lo, hi, below, inside, gathered)
    bits, missed = [0] * nmod, []
    for k in range(nmod):
        under, got = int(below[k].sum()), int(inside[k].sum())
        if not under <= rank < under + got or (inside[k] > cap).any():
            missed.append(k)
            continue
        pool = np.concatenate([gathered[k, ch, : inside[k, ch]] for ch in range(chunks)])
        bits[k] = int(np.partition(pool, rank - under)[rank - under])
    if missed:
        exact = _kth_abs_histogram(b, xs, nmod, bf16, rank)
        for k in missed:
            bits[k] = exact[k]
    return np.array(bits, np.uint32).view(np.float32).astype(np.float64).tolist()


SAMPLE_RUN = 64  # consecutive elements per sampled run (whole cache lines)


def _sample_window(b: np.ndarray, xs: tuple, nmod: int, bf16: bool, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per model, the bit patterns ``[lo, hi]`` between which the ``rank``-th smallest magnitude
    lies with near certainty, from a sample of evenly spaced runs (1/128 of the elements, 65,536
    to 4M): the sample's quantile ± 4 standard deviations of a sample rank. Also the share of
    the elements expected inside the window."""
    n = b.size
    m = min(n, max(1 << 16, min(1 << 22, n // 128)))
    runs = max(1, m // SAMPLE_RUN)
    starts = (np.arange(runs, dtype=np.int64) * (n // runs))
    idx = (starts[:, None] + np.arange(min(SAMPLE_RUN, n), dtype=np.int64)[None, :]).reshape(-1)
    idx = idx[idx < n]
    m = idx.size
    p = rank / n
    d = 4.0 * math.sqrt(m * p * (1.0 - p)) + 16.0
    q_lo, q_hi = max(0, int(p * m - d)), min(m - 1, int(math.ceil(p * m + d)))
    lo, hi = np.zeros(nmod, np.uint32), np.zeros(nmod, np.uint32)
    bs = _float32(b[idx], bf16)
    for k in range(nmod):
        u = np.partition((_float32(xs[k][idx], bf16) - bs).view(np.uint32) & np.uint32(0x7FFFFFFF), [q_lo, q_hi])
        lo[k] = u[q_lo] if q_lo > 0 else 0
        hi[k] = u[q_hi] if q_hi < m - 1 else 0xFFFFFFFF
    return lo, hi, (q_hi - q_lo + 1) / m


def _float32(v: np.ndarray, bf16: bool) -> np.ndarray:
    """``v`` as float32 (bfloat16 from its uint16 bits: exact)."""
    return (v.astype(np.uint32) << np.uint32(16)).view(np.float32) if bf16 else v.astype(np.float32, copy=False)


@cached_njit(parallel=True, nogil=True)
def _abs_window(base, xs, nmod, bf16, lo, hi, below, inside, gathered):
    """Per model and chunk of elements: how many float32 ``|x − b|`` bit patterns are under
    ``lo[k]``, how many lie in ``[lo[k], hi[k]]``, and those into ``gathered[k, chunk]`` while
    they fit (a count over the capacity tells the caller they did not). Counting and gathering
    are branch-free: each pattern is written to a scratch row whose end moves only for those in
    the window."""
    n, chunks, cap = base.size, below.shape[1], gathered.shape[2]
    per = (n + chunks - 1) // chunks
    for ch in prange(chunks):
        start, stop = ch * per, min(n, ch * per + per)
        b, x = np.empty(NB_BLOCK, np.float32), np.empty(NB_BLOCK, np.float32)
        bits, row = np.empty(NB_BLOCK, np.uint32), np.empty(NB_BLOCK, np.uint32)
        xb = x.view(np.uint32)
        for blk in range(start, stop, NB_BLOCK):
            c = min(NB_BLOCK, stop - blk)
            if bf16:
                _load(b[:c], base[blk : blk + c], bf16, bits)
            for k in range(nmod):
                low, width = lo[k], hi[k] - lo[k]
                if bf16:
                    _load(x[:c], xs[k][blk : blk + c], bf16, bits)
                    for j in range(c):
                        x[j] = x[j] - b[j]
                else:  # float32: subtracted straight from the inputs
                    xk, bk = xs[k][blk : blk + c], base[blk : blk + c]
                    for j in range(c):
                        x[j] = xk[j] - bk[j]
                under = 0
                for j in range(c):
                    under += (xb[j] & np.uint32(0x7FFFFFFF)) < low
                below[k, ch] += under
                g = 0
                for j in range(c):
                    u = xb[j] & np.uint32(0x7FFFFFFF)
                    row[g] = u
                    g += (u - low) <= width  # lo <= u <= hi, in one unsigned comparison
                got = inside[k, ch]
                if got + g <= cap:
                    gathered[k, ch, got : got + g] = row[:g]
                inside[k, ch] = got + g


def _kth_abs_histogram(b: np.ndarray, xs: tuple, nmod: int, bf16: bool, rank: int) -> list[int]:
    """Per model, the bit pattern of the ``rank``-th smallest float32 ``|x − b|``: a histogram of
    the high 16 bits of the magnitudes' bit patterns (monotone for non-negative floats, NaN last),
    then one of the low 16 bits in the chosen bin. Exact; two passes over the inputs."""
    chunks = max(1, get_num_threads()) * max(1, -(-b.size // (1 << 30)))
    want = np.full(MAX_MODELS, -1, np.int64)
    counts = np.zeros((nmod, chunks, 1 << 15), np.int32)
    _abs_hist(b, xs, nmod, bf16, want, counts)
    cum = counts.sum(1, dtype=np.int64).cumsum(1)
    ranks = []
    for i in range(nmod):
        want[i] = np.searchsorted(cum[i], rank, side="right")
        ranks.append(rank - (cum[i, want[i] - 1] if want[i] else 0))
    counts = np.zeros((nmod, chunks, 1 << 16), np.int32)
    _abs_hist(b, xs, nmod, bf16, want, counts)
    cum = counts.sum(1, dtype=np.int64).cumsum(1)
    return [(int(want[i]) << 16) | int(np.searchsorted(cum[i], ranks[i], side="right")) for i in range(nmod)]


@cached_njit(parallel=True, nogil=True)
def _abs_hist(base, xs, nmod, bf16, want, counts):
    """Per model and chunk of elements, the histogram of the float32 ``|x − b|`` bit patterns: of
    the high 16 bits (``want[k] < 0``), or of the low 16 bits of those whose high bits are ``want[k]``."""
    n, chunks = base.size, counts.shape[1]
    per = (n + chunks - 1) // chunks
    for ch in prange(chunks):
        start, stop = ch * per, min(n, ch * per + per)
        b, x = np.empty(NB_BLOCK, np.float32), np.empty(NB_BLOCK, np.float32)
        bits = np.empty(NB_BLOCK, np.uint32)
        xb = x.view(np.uint32)
        for lo in range(start, stop, NB_BLOCK):
            c = min(NB_BLOCK, stop - lo)
            _load(b[:c], base[lo : lo + c], bf16, bits)
            for k in range(nmod):
                _load(x[:c], xs[k][lo : lo + c], bf16, bits)
                for j in range(c):
                    x[j] = x[j] - b[j]
                hist, w = counts[k, ch], want[k]
                for j in range(c):
                    u = xb[j] & np.uint32(0x7FFFFFFF)
                    if w < 0:
                        hist[u >> 16] += 1
                    elif (u >> 16) == w:
                        hist[u & 0xFFFF] += 1


