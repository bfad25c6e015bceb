"""Whether a float tensor holds only finite values, in one single-threaded pass over its bits.

A commit checks every float tensor before storing it. ``torch.aminmax`` does that in one pass
too, but it runs on torch's intra-op threads, which a commit's object writers keep busy: there it
measured 53 ms per commit of a 91 MB encoder instead of 2.5 ms alone. This loop reads the bit
patterns on the calling thread (a value is NaN or ±Inf exactly when its exponent bits are all
ones), vectorised by LLVM, with no threads to wake.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from provenance.kernels.jit_cache import cached_njit

#: the exponent bits, per float dtype, and the unsigned view that holds them
_EXPONENT = {
    torch.float16: (torch.int16, np.uint16, np.uint16(0x7C00)),
    torch.bfloat16: (torch.int16, np.uint16, np.uint16(0x7F80)),
    torch.float32: (torch.int32, np.uint32, np.uint32(0x7F800000)),
    torch.float64: (torch.int64, np.uint64, np.uint64(0x7FF0000000000000)),
}


def all_finite(tensor: torch.Tensor) -> bool | None:
    """Whether the contiguous CPU ``tensor`` holds no NaN or Inf; None for a dtype this does not
    read (FP8, or a tensor elsewhere than the CPU): the caller checks those itself."""
    spec = _EXPONENT.get(tensor.dtype)
    if spec is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return None
    signed, unsigned, mask = spec
    bits = tensor.detach().resolve_neg().reshape(-1).view(signed).numpy().view(unsigned)
    return not _any_all_ones(bits, mask)


_COMPARED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # torch.aminmax takes these
_CHUNK = 1 << 22  # elements of another float dtype (FP8) widened to float32 at a time


def float_chunks(flat: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, part)`` covering the flat float tensor, each part of a dtype torch can compare:
    the tensor itself, or FP8 widened to float32 a chunk at a time (NaN and Inf stay so)."""
    if flat.dtype in _COMPARED:
        yield 0, flat
        return
    for start in range(0, flat.numel(), _CHUNK):
        yield start, flat[start : start + _CHUNK].float()


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or Inf (anything but a float holds none): the bit scan of
    :func:`all_finite` where it reads the tensor, else torch's ``aminmax`` over
    :func:`float_chunks` (FP8, or a tensor off the CPU)."""
    if not tensor.is_floating_point() or not tensor.numel():
        return True
    flat = tensor.reshape(-1)
    found = all_finite(flat)
    if found is None:
        found = all(_extremes_finite(part) for _, part in float_chunks(flat))
    return found


def _extremes_finite(part: torch.Tensor) -> bool:
    lo, hi = torch.aminmax(part)  # one pass, no mask: NaN propagates, +-Inf are extremes
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


@cached_njit(nogil=True)
def _any_all_ones(bits, mask):
    """Whether any value has all of ``mask``'s bits set (an OR of comparisons: it vectorises)."""
    found = False
    for i in range(bits.size):
        found |= (bits[i] & mask) == mask
    return found
