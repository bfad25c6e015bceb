"""The Triton path of patch application (:mod:`provenance.kernels.patch`): two ``@triton.jit``
kernels and their launchers. :func:`_scatter_kernel` writes sparse replacements in place, as
same-width integers; :func:`_chain_kernel` loads a block of output elements once, applies up to
:data:`MAX_SLOTS` patches to it in registers (:func:`_chain_step`, each rounded to the output dtype
as the patch function rounds, to bfloat16 by hand in :func:`_round`) and stores it once.
:func:`_chain_step` is a step of :mod:`provenance.kernels.merge_patches`' kernel too.
"""

from __future__ import annotations

import torch

from provenance.kernels.patch_checks import _bits, _same_memory
from provenance.kernels.patch_torch import _low_rank_update

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None

BLOCK = 1024  # output elements per program of the chain kernel
SCATTER_BLOCK = 1024  # sparse entries per program of the scatter kernel
MAX_SLOTS = 4  # patches per launch of the chain kernel; a longer chain takes one more pass per 4 patches
_NONE, _SPARSE, _DENSE, _UPDATE, _FACTORS = 0, 1, 2, 3, 4  # what a slot of the chain kernel does


def _scatter_triton(out: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """Launch :func:`_scatter_kernel` on ``out`` in place: one program per ``SCATTER_BLOCK`` entries,
    elements copied as same-width integers."""
    nnz = indices.numel()
    grid = (triton.cdiv(nnz, SCATTER_BLOCK),)
    _scatter_kernel[grid](_bits(out), indices.contiguous(), _bits(values.contiguous()), nnz, BLOCK=SCATTER_BLOCK)


def _block_starts(indices: torch.Tensor, n: int, blocks: int) -> torch.Tensor:
    """``starts[p]``: the first entry of the sorted ``indices`` at or after block ``p``'s first
    element (int64, ``blocks + 1`` of them): block ``p``'s entries are ``starts[p]:starts[p+1]``."""
    bounds = torch.arange(blocks + 1, dtype=torch.int64, device=indices.device).mul_(BLOCK).clamp_max_(n)
    return torch.searchsorted(indices, bounds.to(indices.dtype))


def _chain_triton(out: torch.Tensor, src: torch.Tensor, rest: list[tuple], exact: bool) -> None:
    """Launch :func:`_chain_kernel` once per ``MAX_SLOTS`` patches: the first launch reads ``src``,
    the next ones ``out``. A sparse-only chain is a copy and then each patch's entries scattered
    in order, as same-width integers (bit copies): on an H200 one 0.5% patch into an existing
    output took 1.22 ms through the chain kernel's per-element search (docs/benchmarks.md)."""
    if all(s[0] == "sparse" for s in rest):
        if not _same_memory(out, src):
            out.copy_(src)
        for _, indices, values in rest:
            if indices.numel():
                _scatter_triton(out, indices, values)
        return
    n, blocks = out.numel(), triton.cdiv(out.numel(), BLOCK)
    cur = src.contiguous()
    cols = out.shape[1] if out.dim() == 2 else 1
    for first in range(0, len(rest), MAX_SLOTS):
        args, kinds = [], {}
        for k in range(MAX_SLOTS):
            if first + k < len(rest):
                kind, ptrs, rank, scale = _slot(rest[first + k], out, n, blocks, exact)
            else:
                kind, ptrs, rank, scale = _NONE, (out, out, out), 0, 0.0
            args += [*ptrs, rank, scale]
            kinds[f"K{k}"] = kind
        _chain_kernel[(blocks,)](out, cur, n, cols, *args, **kinds, F64=out.dtype == torch.float64,
                                 BF16=out.dtype == torch.bfloat16, BLOCK=BLOCK, LOG=BLOCK.bit_length())
        cur = out


def _slot(spec: tuple, dst: torch.Tensor, n: int, blocks: int, exact: bool):
    """One patch as a slot of :func:`_chain_kernel`: its code, three pointers, a rank and a scale."""
    kind = spec[0]
    if kind == "sparse":
        indices, values = spec[1].contiguous(), spec[2].contiguous()
        return _SPARSE, (indices, values, _block_starts(indices, n, blocks)), 0, 0.0
    if kind == "dense":
        return _DENSE, (spec[1], dst, dst), 0, 0.0
    _, b, a, scale = spec
    if exact:  # the update as torch's GEMM makes it, so the sum rounds as apply_low_rank's
        return _UPDATE, (_low_rank_update(b, a, scale), dst, dst), 0, 0.0
    rank = b.shape[1]
    if rank == 0:  # no factor elements to point at; the kernel's loop over the rank runs 0 times
        return _FACTORS, (dst, dst, dst), 0, float(scale)
    return _FACTORS, (b.float().contiguous(), a.float().contiguous(), dst), rank, float(scale)


if triton is not None:

    @triton.jit
    def _scatter_kernel(out_ptr, idx_ptr, val_ptr, nnz, BLOCK: tl.constexpr):
        """``out[idx[j]] = val[j]`` for one block of entries ``j`` (unique indices: no races)."""
        j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = j < nnz
        i = tl.load(idx_ptr + j, mask=mask, other=0).to(tl.int64)
        tl.store(out_ptr + i, tl.load(val_ptr + j, mask=mask), mask=mask)

    @triton.jit
    def _round(v, dtype: tl.constexpr, BF16: tl.constexpr):
        """The float32 ``v`` rounded to ``dtype`` to nearest, ties to even, as torch rounds. To
        bfloat16 by hand: Triton's interpreter truncates that conversion (a GPU rounds it the same
        way as this), and a NaN stays a quiet NaN of the same sign."""
        if BF16:
            u = v.to(tl.uint32, bitcast=True)
            r = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
            r = tl.where(v != v, (u >> 16) | 0x40, r)
            x = r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            x = v.to(dtype)
        return x

    @triton.jit
    def _chain_step(x, offs, mask, pa, pb, pc, rank, scale, cols,
                    KIND: tl.constexpr, F64: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr, LOG: tl.constexpr):
        """One patch on the block ``x`` (the output dtype), rounded to that dtype afterwards as the
        patch function rounds. ``KIND``: sparse (pa indices, pb values, pc block starts), dense
        (pa delta), update (pa the float32 low-rank update), factors (pa B, pb A, ``rank``)."""
        if KIND == 1:  # sparse: binary search of each element among its block's sorted indices
            pid = tl.program_id(0)
            lo = tl.load(pc + pid)
            hi = tl.load(pc + pid + 1)
            left = tl.zeros([BLOCK], tl.int64) + lo
            right = tl.zeros([BLOCK], tl.int64) + hi
            for _ in tl.static_range(LOG):  # hi - lo <= BLOCK entries: LOG halvings empty the range
                active = left < right
                mid = (left + right) // 2
                v = tl.load(pa + mid, mask=active, other=0).to(tl.int64)
                below = v < offs
                left = tl.where(active & below, mid + 1, left)
                right = tl.where(active & (v >= offs), mid, right)
            hit = left < hi
            hit = hit & (tl.load(pa + left, mask=hit, other=-1).to(tl.int64) == offs)
            x = tl.where(hit, tl.load(pb + left, mask=hit & mask), x)
        elif KIND == 2:  # dense delta of x's dtype
            d = tl.load(pa + offs, mask=mask, other=0.0)
            if F64:
                x = x + d
            else:
                x = _round(x.to(tl.float32) + d.to(tl.float32), x.dtype, BF16)
        elif KIND == 3:  # low rank, the float32 update made by torch
            u = tl.load(pa + offs, mask=mask, other=0.0)
            x = _round(x.to(tl.float32) + u, x.dtype, BF16)
        elif KIND == 4:  # low rank from the factors: B's row times A's column, summed in float32
            row = offs // cols
            col = offs - row * cols
            acc = tl.zeros([BLOCK], tl.float32)
            for k in range(0, rank):
                bv = tl.load(pa + row * rank + k, mask=mask, other=0.0)
                av = tl.load(pb + k * cols + col, mask=mask, other=0.0)
                acc += bv * av
            x = _round(x.to(tl.float32) + acc * scale, x.dtype, BF16)
        return x

    @triton.jit
    def _chain_kernel(out_ptr, src_ptr, n, cols,
                      a0, b0, c0, r0, s0, a1, b1, c1, r1, s1, a2, b2, c2, r2, s2, a3, b3, c3, r3, s3,
                      K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
                      F64: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr, LOG: tl.constexpr):
        """One block of output elements: loaded once from ``src``, up to four patches applied in
        order (``K0..K3``, 0 for an empty slot), stored once to ``out``."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(src_ptr + offs, mask=mask)
        x = _chain_step(x, offs, mask, a0, b0, c0, r0, s0, cols, K0, F64, BF16, BLOCK, LOG)
        if K1 != 0:
            x = _chain_step(x, offs, mask, a1, b1, c1, r1, s1, cols, K1, F64, BF16, BLOCK, LOG)
        if K2 != 0:
            x = _chain_step(x, offs, mask, a2, b2, c2, r2, s2, cols, K2, F64, BF16, BLOCK, LOG)
        if K3 != 0:
            x = _chain_step(x, offs, mask, a3, b3, c3, r3, s3, cols, K3, F64, BF16, BLOCK, LOG)
        tl.store(out_ptr + offs, x, mask=mask)
