"""The checks of patch application's inputs (:mod:`provenance.kernels.patch`): each patch's tensors,
dtypes, shapes and index range, with errors that name the patch and the numbers, the tensors
returned on the base's device; the integer dtypes of the same width through which elements are
copied as bits; and which chains the Triton chain kernel takes.
"""

from __future__ import annotations

import math

import torch

from provenance.errors import InvalidParameterError

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
KINDS = ("sparse", "dense", "low_rank", "full")  # the patch kinds of apply_chain
_PARTS = {"sparse": ("indices", "values"), "dense": ("delta",), "low_rank": ("b", "a", "scale"), "full": ("tensor",)}
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integers, for bit copies


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} is a {type(t).__name__}, not a tensor")


def _check_contiguous(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise InvalidParameterError(f"{name} of shape {_shape(t)} has strides {t.stride()}: not contiguous")


def _check_sparse(base, indices, values, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices and values on the base's device, after checking their dtypes, shapes and range."""
    _check_tensor(base, f"{where}base")
    _check_tensor(indices, f"{where}sparse indices")
    _check_tensor(values, f"{where}sparse values")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{where}sparse indices must be int32 or int64, got {indices.dtype}")
    if indices.shape != values.shape or indices.dim() != 1:
        raise InvalidParameterError(
            f"{where}sparse indices {_shape(indices)} and values {_shape(values)} must be equal 1-D"
        )
    if values.dtype != base.dtype:
        raise TypeError(f"{where}sparse values have dtype {values.dtype}, the base {base.dtype}")
    indices, values = indices.detach().to(base.device), values.detach().to(base.device)
    n = base.numel()
    if indices.numel():
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= n:
            raise IndexError(
                f"{where}sparse index {lo if lo < 0 else hi} out of range for a tensor of {n} elements "
                f"(indices must be in [0, {n}))"
            )
    return indices, values


def _check_dense(base, delta, where: str) -> torch.Tensor:
    _check_tensor(base, f"{where}base")
    _check_tensor(delta, f"{where}dense delta")
    if base.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}a dense delta needs a float base (float32, bfloat16, float16, float64), got {base.dtype}")
    if delta.dtype != base.dtype:
        raise TypeError(f"{where}dense delta has dtype {delta.dtype}, the base {base.dtype}")
    if delta.shape != base.shape:
        raise InvalidParameterError(f"{where}dense delta has shape {_shape(delta)}, the base {_shape(base)}")
    _check_contiguous(delta, f"{where}dense delta")
    return delta.detach().to(base.device)


def _check_low_rank(base, b, a, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    for t, name in ((base, "base"), (b, "low-rank factor B"), (a, "low-rank factor A")):
        _check_tensor(t, f"{where}{name}")
    if base.dim() != 2:
        raise InvalidParameterError(f"{where}a low-rank patch needs a 2-D base, got shape {_shape(base)}")
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(base.shape):
        raise InvalidParameterError(
            f"{where}low-rank factors B {_shape(b)} and A {_shape(a)} do not make the base's shape {_shape(base)}"
        )
    return b.detach().to(base.device), a.detach().to(base.device)


def _check_full(base, full, where: str) -> torch.Tensor:
    _check_tensor(base, f"{where}base")
    _check_tensor(full, f"{where}full tensor")
    if full.shape != base.shape or full.dtype != base.dtype:
        raise InvalidParameterError(
            f"{where}full tensor {full.dtype}{_shape(full)} does not match the base {base.dtype}{_shape(base)}"
        )
    return full.detach().to(base.device)


def _check_scale(scale, where: str) -> float:
    """A low-rank patch's scale as a finite float: a NaN or infinite one made every element of the
    result NaN or infinite, silently, and a string failed in ``float()`` naming no patch."""
    try:
        value = None if isinstance(scale, (bool, str, bytes)) else float(scale)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one element
        value = None
    if value is None or not math.isfinite(value):
        shown = f"{type(scale).__name__} {scale!r:.40}" if value is None else repr(value)
        raise InvalidParameterError(f"{where}low-rank scale must be a finite number, got {shown}")
    return value


def _check_patch(base: torch.Tensor, patch, i: int) -> tuple:
    """Patch ``i`` of a chain, checked, with its tensors on the base's device."""
    where = f"patches[{i}]: "
    if not isinstance(patch, (tuple, list)) or not patch or not isinstance(patch[0], str):
        raise InvalidParameterError(f"patches[{i}] is {type(patch).__name__} {patch!r:.60}, not a tuple (kind, *parts)")
    kind = patch[0]
    if kind not in _PARTS:
        raise InvalidParameterError(f"patches[{i}] has unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if len(patch) != len(_PARTS[kind]) + 1:
        raise InvalidParameterError(
            f"patches[{i}] ({kind!r}) has {len(patch) - 1} parts, not {len(_PARTS[kind])}: "
            f"({kind!r}, {', '.join(_PARTS[kind])})"
        )
    if kind == "sparse":
        return ("sparse", *_check_sparse(base, patch[1], patch[2], where))
    if kind == "dense":
        return ("dense", _check_dense(base, patch[1], where))
    if kind == "low_rank":
        return ("low_rank", *_check_low_rank(base, patch[1], patch[2], where), _check_scale(patch[3], where))
    return ("full", _check_full(base, patch[1], where))


def _check_out(base: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    _check_tensor(base, "base")
    if out is None:
        return torch.empty_like(base, memory_format=torch.contiguous_format)
    if not isinstance(out, torch.Tensor) or (out.shape, out.dtype, out.device) != (base.shape, base.dtype, base.device):
        got = f"{out.dtype}{_shape(out)} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameterError(f"out is {got}, the base {base.dtype}{_shape(base)} on {base.device}")
    _check_contiguous(out, "out")
    return out


def _bits_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The integer dtype of the same width, for copying elements as bits (None: not possible)."""
    return None if dtype.is_complex else _BITS.get(dtype.itemsize)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_bits_dtype(t.dtype))


def _triton_chain_dtype(dtype: torch.dtype, rest: list[tuple]) -> bool:
    """Whether the chain kernel takes this chain: float tensors, or only sparse patches (bit copies)
    of a dtype with a same-width integer. Other chains run the exact torch path."""
    if all(s[0] == "sparse" for s in rest):
        return _bits_dtype(dtype) is not None
    return dtype in FLOAT_DTYPES


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.is_contiguous() and b.is_contiguous() and a.dtype == b.dtype
