"""Patch application: a parameter's stored patches (sparse, dense, low-rank, full) replayed onto its
base, one patch at a time or a whole chain of them in one pass over the output.

Anatomy (STYLE.md, "Kernels"): the public functions check their inputs and raise errors with the
numbers in them; :func:`provenance.kernels.dispatch.pick` then chooses between two private
``@triton.jit`` kernels, :func:`_scatter_kernel` (sparse replacements written in place) and
:func:`_chain_kernel` (one block of output elements, base loaded once, every patch of the chain
applied in registers, stored once), and the plain-torch path beside them, which is the reference
and the CPU path. Patch tensors are moved to the base's device first.

What each patch means, bit for bit, on either backend:

* ``sparse`` (:func:`apply_sparse`): the flat positions ``indices`` are *replaced* by ``values``
  (of the base's dtype); a copy of bits, exact for every dtype, NaN payloads and ``-0.0``
  included. Indices are int32 or int64, **sorted ascending and unique**, as the sparse encoding
  produces them. Only their range is checked (one pass over them); the Triton chain kernel
  finds each block's entries by binary search, so unsorted indices give wrong values there
  (never an out-of-bounds access), and duplicated indices leave either value on every path.
* ``dense`` (:func:`apply_dense_delta`): ``base + delta``, computed in float32 (float64 for float64
  tensors) and rounded once to the base's dtype: what ``torch.add`` does.
* ``low_rank`` (:func:`apply_low_rank`): ``base + scale · (B @ A)`` as
  ``(base.float() + (B.float() @ A.float()) * scale).to(base.dtype)``.
* ``full``: the stored tensor itself; in a chain it replaces everything before it.

**Low rank and bit-exactness.** The ``low_rank`` encoding is chosen only when
:func:`apply_low_rank` reproduces the committed tensor bit for bit
(``provenance.patches.low_rank``), so the function that checks a version out must round exactly
as the one that committed it. A kernel that sums the rank-r products in its own order (a Triton
tile, with FMA contraction) differs from the GEMM in the last bit of some elements, and which
order a GEMM library uses is not something a kernel can promise to copy. So :func:`apply_low_rank`
is torch on every backend: the GEMM ``B.float() @ A.float()`` (one fused library call) is the
definition of a low-rank patch, and the elementwise part is rounded exactly as ``torch.add``
rounds (the same library on the same device gives the same bits; CPU and CUDA GEMMs may differ
from each other, which a checkout never mixes: it replays stored CPU tensors).
:func:`apply_chain` keeps that definition by default (``exact=True``): on the Triton path it has
torch compute each low-rank update ``(B @ A) · scale`` in float32 and the fused kernel adds it,
bit-identical to the sequential torch path. With ``exact=False`` the kernel instead computes each
output element's rank-r sum from B's row and A's column in float32 registers, so ``B @ A`` is never
materialised (no ``4·rows·cols`` bytes written and read back): within float32 rounding of the
exact result, for callers that do not need bit-identical checkouts (reads, evaluation, merges).

Every other patch (sparse, dense, full) is bit-identical on both paths: copies are bit copies and
additions are single IEEE additions in the same precision, rounded to nearest-even after every
patch exactly as applying the patches one after the other does (to bfloat16 by hand in the kernel,
:func:`_round`), the one exception being the payload of a NaN that an addition makes, on which
even torch's own vectorised and scalar paths disagree.

Dtypes: sparse replacements run, on Triton and on torch, for every dtype 1, 2, 4 or 8 bytes wide
(viewed as the integer of that width: FP8 and uint16/32/64 included, which torch cannot scatter as
such); dense deltas need a float tensor; a chain with a dense or low-rank patch on
a non-float tensor (a low-rank patch accepts one, as it always has) runs the torch path, which is
exact. Results are never part of an autograd graph.

The parts are the modules beside this one: :mod:`provenance.kernels.patch_checks` (the inputs'
checks; which chains the Triton kernel takes), :mod:`provenance.kernels.patch_torch` (the torch
path) and :mod:`provenance.kernels.patch_triton` (the kernels and their launchers). This module
holds the public functions and gives, under its name, what callers use of the others
(:mod:`provenance.kernels.merge_patches` among them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provenance.kernels.dispatch import pick
from provenance.kernels.patch_checks import (
    _BITS,
    FLOAT_DTYPES,
    KINDS,
    _bits_dtype,
    _check_contiguous,
    _check_dense,
    _check_full,
    _check_low_rank,
    _check_out,
    _check_patch,
    _check_scale,
    _check_sparse,
    _check_tensor,
    _triton_chain_dtype,
)
from provenance.kernels.patch_torch import (
    LOW_RANK_WHOLE,
    ROW_BLOCK_ELEMENTS,
    _chain_torch,
    _low_rank_torch,
    _sparse_torch,
    row_blocks,
)
from provenance.kernels.patch_triton import (
    BLOCK,
    MAX_SLOTS,
    SCATTER_BLOCK,
    _chain_triton,
    _scatter_triton,
    _slot,
    triton,
)

if triton is not None:
    from provenance.kernels.patch_triton import _chain_step

ChainPatch = tuple  # ("sparse", indices, values) | ("dense", delta) | ("low_rank", b, a, scale) | ("full", tensor)


@torch.no_grad()
def apply_sparse(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``base`` with the flat positions ``indices`` (int32 or int64, sorted ascending and unique)
    replaced by ``values`` (the base's dtype): a new contiguous tensor, or ``base`` itself written in
    place with ``inplace`` (it must then be contiguous). Exact for every dtype."""
    indices, values = _check_sparse(base, indices, values, "")
    if inplace:
        _check_contiguous(base, "apply_sparse(inplace=True) needs a contiguous base: base")
    out = base if inplace else base.detach().clone(memory_format=torch.contiguous_format)
    if indices.numel():
        if pick(out, indices, values) == "triton" and _bits_dtype(out.dtype) is not None:
            _scatter_triton(out, indices, values)
        else:
            _sparse_torch(out, indices, values)
    return out


@torch.no_grad()
def apply_dense_delta(base: torch.Tensor, delta: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``base + delta`` (float dtypes; ``delta`` of the base's shape and dtype, contiguous), added in
    float32 (float64 for float64) and rounded once: a new contiguous tensor, or ``base`` itself
    with ``inplace`` (it must then be contiguous)."""
    delta = _check_dense(base, delta, "")
    if inplace:
        _check_contiguous(base, "apply_dense_delta(inplace=True) needs a contiguous base: base")
    out = base if inplace else torch.empty_like(base, memory_format=torch.contiguous_format)
    if not out.numel():
        return out
    if pick(out, base, delta) == "triton":
        _chain_triton(out, base.detach(), [("dense", delta)], exact=True)
    else:
        torch.add(base.detach(), delta, out=out)
    return out


@torch.no_grad()
def apply_low_rank(base: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """``base + scale * (b @ a)``, accumulated in float32 and cast back to the base's dtype: a new
    tensor. Torch on every backend: this GEMM is the definition of a low-rank patch (module
    docstring); :func:`apply_chain` with ``exact=False`` has the Triton kernel that skips it."""
    b, a = _check_low_rank(base, b, a, "")
    return _low_rank_torch(base.detach(), b, a, _check_scale(scale, ""))


@torch.no_grad()
def apply_full(base: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The stored tensor itself (a dense replacement), copied."""
    return _check_full(base, full, "").clone()


@torch.no_grad()
def apply_chain(
    base: torch.Tensor, patches: Sequence[ChainPatch], *, out: torch.Tensor | None = None, exact: bool = True
) -> torch.Tensor:
    """``base`` with ``patches`` applied in order, each as the function of its kind would:
    ``("sparse", indices, values)``, ``("dense", delta)``, ``("low_rank", b, a, scale)``,
    ``("full", tensor)``. The result is written to ``out`` (contiguous, the base's shape, dtype and
    device; it may be ``base`` itself) or to a new contiguous tensor, and returned.

    With ``exact=True`` (the default), bit-identical to applying the patches one after the other
    with :func:`apply_sparse`, :func:`apply_dense_delta`, :func:`apply_low_rank` and
    :func:`apply_full`, on both paths. Sparse indices must be sorted and unique (module docstring). The
    last ``full`` patch replaces everything before it (those patches are checked, not applied).
    The Triton path reads the base and writes the output once per :data:`MAX_SLOTS` patches.
    ``exact=False`` lets the Triton kernel compute low-rank updates from the factors without
    materialising ``B @ A``, within float32 rounding of the exact result (module docstring);
    the torch path is always exact.
    """
    specs = [_check_patch(base, p, i) for i, p in enumerate(patches)]
    out = _check_out(base, out)
    last_full = max((i for i, s in enumerate(specs) if s[0] == "full"), default=-1)
    src = base.detach() if last_full < 0 else specs[last_full][1]
    rest = specs[last_full + 1 :]
    if not out.numel():
        return out
    tensors = [t for s in rest for t in s[1:] if isinstance(t, torch.Tensor)]
    if pick(out, src, *tensors) == "triton" and _triton_chain_dtype(out.dtype, rest):
        _chain_triton(out, src, rest, exact)
    else:
        _chain_torch(out, src, rest)
    return out


__all__ = ["BLOCK", "FLOAT_DTYPES", "KINDS", "LOW_RANK_WHOLE", "MAX_SLOTS", "ROW_BLOCK_ELEMENTS", "SCATTER_BLOCK", "_BITS",
           "ChainPatch", "_chain_step", "_check_out", "_check_patch", "_check_tensor", "_slot", "apply_chain",
           "apply_dense_delta", "apply_full", "apply_low_rank", "apply_sparse", "row_blocks"]
