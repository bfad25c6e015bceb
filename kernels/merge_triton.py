"""The Triton path of the elementwise merges (:mod:`provenance.kernels.merge`): :func:`_merge_kernel`
folds up to :data:`~provenance.kernels.merge_cpu.MAX_MODELS` models into one block of output
elements, each input element read once, accumulated in float32 (float64 for float64 inputs);
:func:`_merge_triton` launches it. :func:`_fold` (one model folded into the merge state) is a step
of :mod:`provenance.kernels.merge_patches`' kernel too.
"""

from __future__ import annotations

import torch

from provenance.kernels.merge_cpu import MAX_MODELS
from provenance.kernels.merge_torch import _acc_dtype

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None

BLOCK = 1024  # elements per Triton program


def _merge_triton(mode, out, base, thetas, fishers, lam, extra, eps) -> None:
    """Launch :func:`_merge_kernel`: one program per ``BLOCK`` elements, the models as separate
    pointers (the unused ones point at ``thetas[0]``), weights, norms or thresholds and ``eps`` in
    one small tensor of the accumulation dtype."""
    pad = MAX_MODELS - len(thetas)
    params = torch.tensor(
        lam + [0.0] * pad + extra + [1.0] * pad + [eps], dtype=_acc_dtype(out.dtype), device=out.device
    )
    xs = thetas + thetas[:1] * pad
    fs = (fishers or thetas[:1] * len(thetas)) + thetas[:1] * pad
    grid = (triton.cdiv(out.numel(), BLOCK),)
    _merge_kernel[grid](out, base, *xs, *fs, params, out.numel(), N=len(thetas), MODE=mode, BLOCK=BLOCK)


if triton is not None:

    @triton.jit
    def _mean_step(m, w, a, x):
        """One step of a weighted running mean: ``x`` with weight ``a``; ``w`` is the weight so far."""
        w = w + a
        return m + a / tl.where(w > 0, w, 1.0) * (x - m), w

    @triton.jit
    def _step(s0, s1, s2, s3, x_ptr, f_ptr, p_ptr, b, offs, mask, K: tl.constexpr, MODE: tl.constexpr):
        """Fold model ``K``, loaded from ``x_ptr``, into the state ``s0..s3``."""
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        return _fold(s0, s1, s2, s3, x, f_ptr, p_ptr, b, offs, mask, K, MODE)

    @triton.jit
    def _fold(s0, s1, s2, s3, x, f_ptr, p_ptr, b, offs, mask, K: tl.constexpr, MODE: tl.constexpr):
        """Fold model ``K``'s block ``x`` (its stored dtype) into the state ``s0..s3`` (its meaning
        depends on ``MODE``)."""
        acc = p_ptr.dtype.element_ty
        x = x.to(acc)
        lam = tl.load(p_ptr + K)
        if MODE == "mean":
            s0, s1 = _mean_step(s0, s1, lam, x)
        elif MODE == "fisher":
            f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(acc)
            norm, eps = tl.load(p_ptr + 8 + K), tl.load(p_ptr + 16)
            s0, s1 = _mean_step(s0, s1, tl.maximum(f / norm, eps) * lam, x)
            s2, s3 = _mean_step(s2, s3, lam, x)  # the fallback where Σ λF' is 0
        elif MODE == "task":
            s0 += lam * (x - b)
        else:  # ties
            tau = x - b
            tau = tl.where(tl.abs(tau) >= tl.load(p_ptr + 8 + K), tau, 0.0)  # trim below the threshold
            s0 += tl.where(tau > 0, lam * tau, 0.0)
            s1 += tl.where(tau > 0, lam, 0.0)
            s2 += tl.where(tau < 0, lam * tau, 0.0)
            s3 += tl.where(tau < 0, lam, 0.0)
        return s0, s1, s2, s3

    @triton.jit
    def _merge_kernel(out_ptr, base_ptr, x0, x1, x2, x3, x4, x5, x6, x7, f0, f1, f2, f3, f4, f5, f6, f7,
                      p_ptr, n, N: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
        """One block of the merge ``MODE`` of ``N`` models: each input element read once, fp32 (or
        fp64) accumulation, the result cast to ``out``'s dtype on store."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc = p_ptr.dtype.element_ty
        s0 = tl.zeros([BLOCK], acc)
        s1, s2, s3, b = s0, s0, s0, s0
        if MODE == "task" or MODE == "ties":
            b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(acc)
        if MODE == "task":
            s0 = b
        s0, s1, s2, s3 = _step(s0, s1, s2, s3, x0, f0, p_ptr, b, offs, mask, 0, MODE)
        if N > 1:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x1, f1, p_ptr, b, offs, mask, 1, MODE)
        if N > 2:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x2, f2, p_ptr, b, offs, mask, 2, MODE)
        if N > 3:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x3, f3, p_ptr, b, offs, mask, 3, MODE)
        if N > 4:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x4, f4, p_ptr, b, offs, mask, 4, MODE)
        if N > 5:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x5, f5, p_ptr, b, offs, mask, 5, MODE)
        if N > 6:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x6, f6, p_ptr, b, offs, mask, 6, MODE)
        if N > 7:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x7, f7, p_ptr, b, offs, mask, 7, MODE)
        if MODE == "fisher":
            s0 = tl.where(s1 > 0, s0, s2)
        elif MODE == "ties":
            up = s0 + s2 >= 0
            den = tl.where(up, s1, s3)
            s0 = b + tl.where(up, s0, s2) / tl.where(den > 0, den, 1.0)
        tl.store(out_ptr + offs, s0.to(out_ptr.dtype.element_ty), mask=mask)
