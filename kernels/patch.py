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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provenance.errors import InvalidParameterError
from provenance.kernels.dispatch import pick

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None

BLOCK = 1024  # output elements per program of the chain kernel
SCATTER_BLOCK = 1024  # sparse entries per program of the scatter kernel
MAX_SLOTS = 4  # patches per launch of the chain kernel; a longer chain takes one more pass per 4 patches
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
ROW_BLOCK_ELEMENTS = 1 << 20  # elements per block of rows when a low-rank update is made block by block
LOW_RANK_WHOLE = 1 << 24  # updates up to this many elements are one GEMM; larger ones go by blocks of rows
KINDS = ("sparse", "dense", "low_rank", "full")  # the patch kinds of apply_chain
_PARTS = {"sparse": ("indices", "values"), "dense": ("delta",), "low_rank": ("b", "a", "scale"), "full": ("tensor",)}
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integers, for bit copies
_NONE, _SPARSE, _DENSE, _UPDATE, _FACTORS = 0, 1, 2, 3, 4  # what a slot of the chain kernel does

ChainPatch = tuple  # ("sparse", indices, values) | ("dense", delta) | ("low_rank", b, a, scale) | ("full", tensor)


# ---- public functions ----------------------------------------------------------------------------


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
    return _low_rank_torch(base.detach(), b, a, scale)


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


# ---- validation ----------------------------------------------------------------------------------


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
        return ("low_rank", *_check_low_rank(base, patch[1], patch[2], where), float(patch[3]))
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


# ---- torch path (the reference, and the CPU path) ------------------------------------------------


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


# ---- Triton path ---------------------------------------------------------------------------------


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
