"""The CPU fast path of the merge kernels: numba loops that compute exactly what the torch path of
:mod:`provenance.kernels.merge` computes (the same recurrences, fused multiply-adds where torch's
vectorised code uses them), in one parallel pass over blocks of elements, each input read once and
the output written once; and exact TIES thresholds from two histogram passes instead of a sort.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import get_num_threads, njit, prange

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
    """:func:`_merge_torch`'s recurrences in :func:`_merge_nb`; the running means' ratios
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
    _merge_nb(_MODES[mode], len(thetas), _np(out), _np(base), _padded(thetas), fs, prm,
              out.dtype == torch.bfloat16, fbf16, 4 * max(1, get_num_threads()))


@njit(inline="always", cache=True)
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


@njit(inline="always", cache=True)
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


@njit(inline="always", cache=True, fastmath={"contract"})
def _fold_block(mode, x, f, b, s0, s1, s2, s3, lam, ext, ratio, eps, c):
    if mode == 0:
        if ratio != 0:
            for j in range(c):
                s0[j] += ratio * (x[j] - s0[j])
    elif mode == 1:
        for j in range(c):
            a = f[j] / ext
            if a < eps:
                a = eps
            a *= lam
            s1[j] += a
            r = a / s1[j] if s1[j] != 0 else a * 0
            s0[j] += r * (x[j] - s0[j])
            if ratio != 0:
                s2[j] += ratio * (x[j] - s2[j])
    elif mode == 2:
        for j in range(c):
            s0[j] += lam * (x[j] - b[j])
    else:  # branch-free, so that it vectorises: each sum gets λ·τ (or τ for a NaN) where it did, λ·0 or +0.0 elsewhere
        zero = lam * 0
        for j in range(c):
            tau = x[j] - b[j]
            kept = not (ext > 0 and abs(tau) < ext)
            up = kept and tau > 0
            down = kept and tau < 0
            nan = tau != tau
            s0[j] += lam * (tau if up else zero)
            s0[j] += tau if nan else zero
            s1[j] += lam if up else zero
            s2[j] += lam * (tau if down else zero)
            s2[j] += tau if nan else zero
            s3[j] += lam if down else zero


@njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _merge_nb(mode, nmod, out, base, xs, fs, prm, bf16, fbf16, chunks):
    n, blocks = out.size, (out.size + NB_BLOCK - 1) // NB_BLOCK
    per = (blocks + chunks - 1) // chunks
    for ch in prange(chunks):
        scratch = np.empty((7, NB_BLOCK), prm.dtype)
        bits = np.empty(NB_BLOCK, np.uint32)
        for blk in range(ch * per, min(blocks, ch * per + per)):
            lo = blk * NB_BLOCK
            c = min(NB_BLOCK, n - lo)
            x, f, b, s0, s1, s2, s3 = scratch[0, :c], scratch[1, :c], scratch[2, :c], scratch[3, :c], scratch[4, :c], scratch[5, :c], scratch[6, :c]
            for j in range(c):
                s0[j] = s1[j] = s2[j] = s3[j] = 0
            if mode >= 2:
                _load(b, base[lo : lo + c], bf16, bits)
            if mode == 2:
                s0[:] = b
            for k in range(nmod):
                lam, ext, ratio, eps = prm[0, k], prm[1, k], prm[2, k], prm[3, k]
                if mode == 1:
                    _load(f, fs[k][lo : lo + c], fbf16, bits)
                if bf16:
                    _load(x, xs[k][lo : lo + c], bf16, bits)
                    _fold_block(mode, x, f, b, s0, s1, s2, s3, lam, ext, ratio, eps, c)
                else:
                    _fold_block(mode, xs[k][lo : lo + c], f, b, s0, s1, s2, s3, lam, ext, ratio, eps, c)
            if mode == 1:
                for j in range(c):
                    if s1[j] == 0:
                        s0[j] = s2[j]
            elif mode == 3:
                for j in range(c):
                    up = s0[j] + s2[j] >= 0
                    den = s1[j] if up else s3[j]
                    s0[j] = ((s0[j] if up else s2[j]) / den + b[j]) if den != 0 else b[j] + 0
            _store(out[lo : lo + c], s0, bf16, bits)


def _kth_abs_numba(base: torch.Tensor, thetas: list[torch.Tensor], rank: int) -> list[float]:
    """Per model, the ``rank``-th smallest (0-based) float32 ``|θᵢ − θ₀|``, exactly as
    ``kthvalue(rank + 1)``: a histogram of the high 16 bits of the magnitudes' bit patterns
    (monotone for non-negative floats, NaN last), then one of the low 16 bits in the chosen bin."""
    chunks = max(1, get_num_threads()) * max(1, -(-base.numel() // (1 << 30)))
    xs, b, bf16 = _padded(thetas), _np(base), base.dtype == torch.bfloat16
    want = np.full(MAX_MODELS, -1, np.int64)
    counts = np.zeros((len(thetas), chunks, 1 << 15), np.int32)
    _abs_hist(b, xs, len(thetas), bf16, want, counts)
    cum = counts.sum(1, dtype=np.int64).cumsum(1)
    ranks = []
    for i in range(len(thetas)):
        want[i] = np.searchsorted(cum[i], rank, side="right")
        ranks.append(rank - (cum[i, want[i] - 1] if want[i] else 0))
    counts = np.zeros((len(thetas), chunks, 1 << 16), np.int32)
    _abs_hist(b, xs, len(thetas), bf16, want, counts)
    cum = counts.sum(1, dtype=np.int64).cumsum(1)
    bits = [(int(want[i]) << 16) | int(np.searchsorted(cum[i], ranks[i], side="right")) for i in range(len(thetas))]
    return np.array(bits, np.uint32).view(np.float32).astype(np.float64).tolist()


@njit(parallel=True, cache=True, nogil=True)
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


