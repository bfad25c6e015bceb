"""TIES thresholds of CUDA tensors (chosen by :func:`provenance.kernels.merge._ties_thresholds`): the
k-th smallest float32 magnitude ``|θᵢ − θ₀|`` of each task vector, exactly as ``kthvalue`` gives
it, on the tensors' own device. A sample of the magnitudes gives a window of bit patterns that
holds the answer with near certainty; one pass counts the magnitudes under it and gathers those
inside (:func:`_window_select`: the Triton kernel :func:`_window_kernel` on a GPU), and the answer
is picked among those few. Where the window misses, radix selection is exact
(:func:`_radix_select`).
"""

from __future__ import annotations

import math

import torch

from provenance.kernels.dispatch import pick
from provenance.kernels.merge_triton import BLOCK

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None


def _kth_abs_radix(base: torch.Tensor, thetas: list[torch.Tensor], rank: int) -> list[float]:
    """Per model, the ``rank``-th smallest (0-based) float32 ``|θᵢ − θ₀|``, exactly as
    ``kthvalue(rank + 1)``, on the tensors' own device (CUDA's ``kthvalue`` took 470 ms for 64M
    elements on an H200). Non-negative float32 bit patterns order as their floats do. A sample of
    the magnitudes gives a window of bit patterns that holds the answer with near certainty; one
    pass counts the magnitudes under it and gathers those inside (:func:`_window_select`: one
    Triton kernel on a GPU), and the answer is picked among those few. Where the window misses, or
    holds too many, radix selection is exact (:func:`_radix_select`)."""
    b = base.reshape(-1)
    n = b.numel()
    positions = torch.randint(n, (min(SAMPLE, n),), device=b.device,
                              generator=torch.Generator(device=b.device).manual_seed(0))
    s, q = positions.numel(), rank / n
    margin = int(6 * math.sqrt(s * q * (1 - q))) + 16  # six standard deviations of a sample rank
    at = int(q * s)
    b_sample = b[positions].float()
    found = []
    for t in thetas:
        x = t.reshape(-1)
        sample = (x[positions].float() - b_sample).abs_().view(torch.int32).sort().values
        lo, hi = int(sample[max(0, at - margin)]), int(sample[min(s - 1, at + margin)])
        value = _window_select(b, x, lo, hi, rank)
        found.append(_radix_select(_magnitude_bits(b, x), rank) if value is None else value)
    return found


SAMPLE = 1 << 16  # magnitudes sampled per model for the window of _window_select


def _magnitude_bits(b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The int32 bit patterns of the float32 ``|x − b|`` (flat tensors)."""
    return x.float().sub(b.float()).abs_().view(torch.int32)


def _as_float(bits: int) -> float:
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()


def _window_select(b: torch.Tensor, x: torch.Tensor, lo: int, hi: int, rank: int) -> float | None:
    """The ``rank``-th smallest float32 ``|x − b|`` where its bit pattern lies in ``[lo, hi]``;
    None where the counts under the window and in it do not hold the rank, or more than a
    sixteenth of the elements fall inside. On CUDA one Triton pass reads ``b`` and ``x`` once,
    counts and gathers; elsewhere torch ops on the magnitudes."""
    n = b.numel()
    cap = max(1, n // 16)
    if pick(b, x) == "triton":
        counts = torch.zeros(2, dtype=torch.int64, device=b.device)
        gathered = torch.full((cap,), -1, dtype=torch.int32, device=b.device)  # a gap would sort first
        _window_kernel[(triton.cdiv(n, BLOCK),)](b, x, n, lo, hi, counts, gathered, cap, BLOCK=BLOCK)
        under, count = counts.tolist()
    else:
        bits = _magnitude_bits(b, x)
        inside = (bits >= lo) & (bits <= hi)
        under, count = int((bits < lo).sum()), int(inside.sum())
        gathered = None  # gathered below, once the counts say the window holds the answer
    if not under <= rank < under + count:
        return None
    if lo == hi:
        return _as_float(lo)
    if count > cap:
        return None
    if gathered is None:
        gathered = bits[inside]
    return _as_float(int(gathered[:count].sort().values[rank - under]))


def _radix_select(bits: torch.Tensor, rank: int) -> float:
    """The ``rank``-th smallest of ``bits`` (non-negative int32 patterns of float32) as a float, by
    two histograms: of the top 16 bits (the sign bit is 0: 2**15 buckets), then of the low 16 bits
    of the elements in the bucket that holds the rank."""
    high = bits >> 16
    want = torch.tensor([rank + 1], dtype=torch.int64, device=bits.device)
    counts = torch.bincount(high, minlength=1 << 15).cumsum_(0)
    h = int(torch.searchsorted(counts, want))
    under = int(counts[h - 1]) if h else 0
    low = torch.bincount(bits[high == h] & 0xFFFF, minlength=1 << 16).cumsum_(0)
    return _as_float((h << 16) | int(torch.searchsorted(low, want - under)))


if triton is not None:

    @triton.jit
    def _window_kernel(b_ptr, x_ptr, n, lo, hi, counts_ptr, out_ptr, cap, BLOCK: tl.constexpr):
        """TIES thresholds' counting pass: of the float32 ``|x − b|`` bit patterns in this block,
        add those under ``lo`` to ``counts[0]``, those in ``[lo, hi]`` to ``counts[1]``, and write
        the latter to ``out`` from the place that add returned (those past ``cap`` are dropped;
        the caller sees the count)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        bits = tl.abs(x - b).to(tl.int32, bitcast=True)
        under = tl.sum((mask & (bits < lo)).to(tl.int64), axis=0)
        inside = (mask & (bits >= lo) & (bits <= hi)).to(tl.int64)
        tl.atomic_add(counts_ptr, under)
        first = tl.atomic_add(counts_ptr + 1, tl.sum(inside, axis=0))
        at = first + tl.cumsum(inside, axis=0) - 1
        tl.store(out_ptr + at, bits, mask=(inside != 0) & (at < cap))
