"""The torch path of patch application (:mod:`provenance.kernels.patch`): the reference, and the
CPU path. Sparse replacements are copied as same-width integers (bit copies); a low-rank patch is
``(B.float() @ A.float()) * scale`` added in float32 and rounded once, a large one made block of
rows by block (:func:`row_blocks`: the same bits); a chain's patches are applied one after the
other, in place on the output.
"""

from __future__ import annotations

import torch

from provenance.kernels.patch_checks import _bits_dtype, _same_memory

ROW_BLOCK_ELEMENTS = 1 << 20  # elements per block of rows when a low-rank update is made block by block
LOW_RANK_WHOLE = 1 << 24  # updates up to this many elements are one GEMM; larger ones go by blocks of rows


def _sparse_torch(out: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """The replacements written into the contiguous ``out`` (``index_copy_``: the fastest of
    torch's scatters, and with unique indices the same as ``out.view(-1)[indices] = values``),
    as same-width integers: a bit copy, and one that torch has for FP8 and uint16/32/64 too."""
    bits = _bits_dtype(out.dtype)
    flat = out.view(-1)
    if bits is not None:
        flat, values = flat.view(bits), values.view(bits)
    flat.index_copy_(0, indices.long(), values)


def _low_rank_update(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B.float() @ A.float()) * scale``, a new float32 tensor: the low-rank patch's definition.
    (``x * 1.0`` is ``x`` bit for bit, the GEMM's NaNs being quiet, so the product is skipped.)"""
    update = b.float() @ a.float()
    if float(scale) != 1.0:
        update.mul_(float(scale))
    return update


def row_blocks(rows: int, cols: int, elements: int | None = None):
    """``(start, stop)`` of consecutive blocks of rows covering ``rows`` rows of ``cols`` elements:
    about ``elements`` elements each, never fewer than 256 rows (the last block takes the rest when
    less than two blocks remain). From 256 rows on, torch's CPU GEMM gives each block of ``B @ A``
    exactly as the whole product does (its small-M kernels round differently; tested)."""
    per = max(256, (elements or ROW_BLOCK_ELEMENTS) // max(1, cols))
    start = 0
    while start < rows:
        stop = rows if rows - start < 2 * per else start + per
        yield start, stop
        start = stop


def _low_rank_torch(cur: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``(cur.float() + update).to(cur.dtype)`` into ``out`` (None: a new tensor), with no more
    passes than needed: ``torch.add`` widens bfloat16 and float16 exactly by itself, and the sum is
    computed in the update's buffer (or straight into a float32 ``out``). An update of more than
    :data:`LOW_RANK_WHOLE` elements is made block of rows by block (:func:`row_blocks`), so the
    float32 ``B @ A`` is never held whole: the same bits, a few percent slower. Not on CUDA: there
    the whole product is made, as the chain kernel's exact path makes it (the same bits by
    construction; cuBLAS's blocks are not tested against its whole product), and the blocks'
    launches cost most of the time (64M elements on an H200: 2.26 ms by blocks, 0.49 ms through
    the chain's one GEMM)."""
    if cur.numel() > LOW_RANK_WHOLE and cur.shape[0] >= 512 and not cur.is_cuda:
        out = torch.empty_like(cur, memory_format=torch.contiguous_format) if out is None else out
        for r0, r1 in row_blocks(cur.shape[0], cur.shape[1]):
            _low_rank_torch(cur[r0:r1], b[r0:r1], a, scale, out=out[r0:r1])
        return out
    update = _low_rank_update(b, a, scale)
    x = cur if cur.dtype in (torch.float32, torch.bfloat16, torch.float16) else cur.float()
    if out is None:
        torch.add(x, update, out=update)
        return update if cur.dtype == torch.float32 else update.to(cur.dtype)
    if out.dtype == torch.float32:
        torch.add(x, update, out=out)
    else:
        out.copy_(torch.add(x, update, out=update))  # copy_ rounds as .to(dtype) does
    return out


def _chain_torch(out: torch.Tensor, src: torch.Tensor, rest: list[tuple]) -> None:
    """``rest`` applied to ``src``, into ``out``, each patch in place on ``out``; the first dense or
    low-rank patch reads ``src`` directly, so the copy of ``src`` is only made when needed."""
    cur = out if _same_memory(out, src) else src  # where the value so far lives
    for spec in rest:
        kind = spec[0]
        if kind == "sparse":
            if cur is not out:
                out.copy_(cur)
                cur = out
            _sparse_torch(out, spec[1], spec[2])
        elif kind == "dense":
            torch.add(cur, spec[1], out=out)
            cur = out
        else:  # low_rank
            _low_rank_torch(cur, spec[1], spec[2], spec[3], out=out)
            cur = out
    if cur is not out:
        out.copy_(cur)
