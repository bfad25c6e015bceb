"""Patch application: the plain-torch reference, which is also the CPU path.

Each function takes the base tensor and a patch's tensors and returns the patched tensor, bit for
bit what the patch encodes. The fused Triton kernels of the kernels issue will sit beside these,
behind the same functions.
"""

from __future__ import annotations

import torch


def apply_sparse(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``base`` with the flat positions ``indices`` replaced by ``values``: a new tensor, or
    ``base`` itself written in place with ``inplace`` (it must then be contiguous)."""
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"sparse indices must be int32 or int64, got {indices.dtype}")
    if indices.shape != values.shape or indices.dim() != 1:
        raise ValueError(f"sparse indices {tuple(indices.shape)} and values {tuple(values.shape)} must be equal 1-D")
    if values.dtype != base.dtype:
        raise TypeError(f"sparse values have dtype {values.dtype}, the base {base.dtype}")
    if inplace and not base.is_contiguous():
        raise ValueError("apply_sparse(inplace=True) needs a contiguous base")
    out = base.detach() if inplace else base.detach().clone().contiguous()
    if indices.numel():
        if int(indices.max()) >= out.numel() or int(indices.min()) < 0:
            raise IndexError(f"sparse index out of range for a tensor of {out.numel()} elements")
        out.view(-1)[indices.long()] = values
    return out


def apply_low_rank(base: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """``base + scale * (b @ a)``, accumulated in float32 and cast back to the base's dtype."""
    if base.dim() != 2:
        raise ValueError(f"a low-rank patch needs a 2-D base, got shape {tuple(base.shape)}")
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(base.shape):
        raise ValueError(
            f"low-rank factors B {tuple(b.shape)} and A {tuple(a.shape)} do not make the base's shape {tuple(base.shape)}"
        )
    update = (b.float() @ a.float()) * float(scale)
    return (base.float() + update).to(base.dtype)


def apply_full(base: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The stored tensor itself (a dense replacement)."""
    if full.shape != base.shape or full.dtype != base.dtype:
        raise ValueError(f"full tensor {full.dtype}{tuple(full.shape)} does not match the base {base.dtype}{tuple(base.shape)}")
    return full.clone()
