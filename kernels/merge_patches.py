"""Merging patches directly: ``θᵢ = θ₀ + Δᵢ`` made from each input's patch as the merge goes, never
held whole, then averaged, Fisher-merged or combined by task arithmetic.

Contributors' versions are patches on one base: a FISH-mask fine-tune is a sparse patch, a LoRA
adapter a low-rank one, a dense fine-tune a delta. :func:`merge_patches` merges them without
materialising any input, in one pass over the output:

* the Triton kernel :func:`_patched_merge_kernel` loads a block of the base once and, per input,
  applies its patch in registers (:func:`provenance.kernels.patch._chain_step`: a binary search
  among the block's sparse entries, a dense delta, or a low-rank row-times-column sum from the
  factors) before folding it into the merge state (:func:`provenance.kernels.merge._fold`), then
  stores the block once: ``B @ A`` and the inputs never exist in memory;
* the torch path, the reference and the CPU path, goes block of rows by block: each input's rows
  are made by :func:`provenance.kernels.patch.apply_chain` from the base's rows and its patch, and
  merged into the output's rows by the merge kernels, so memory holds the base, the output and
  one block per input.

Exactness: the torch path is bit for bit the merge of the materialised inputs (blocks of at least
256 rows, where torch's CPU GEMM gives the rows of ``B @ A`` exactly as the whole product;
:func:`provenance.kernels.patch.row_blocks`). The Triton kernel is too with ``exact=True``, where
torch makes each low-rank update ``(B @ A) · scale`` first (one float32 tensor per low-rank input)
and the kernel adds it; with ``exact=False`` (the default on the GPU: nothing materialised) the
rank-r sums are the kernel's own, within float32 rounding of the exact result. Up to
:data:`MAX_PATCHED` inputs per call (one kernel slot each).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provenance.errors import InvalidParameterError
from provenance.kernels import merge as _merge
from provenance.kernels import patch as _patch
from provenance.kernels.dispatch import pick

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works
    triton = None

MAX_PATCHED = 4  # inputs per call: one slot of the kernel each
MODES = {"average": "mean", "fisher": "fisher", "task_arithmetic": "task"}
_NONE_PATCH = ("sparse", None, None)


@torch.no_grad()
def merge_patches(
    base: torch.Tensor,
    patches: Sequence[tuple | None],
    weights: Sequence[float] | None = None,
    *,
    method: str = "average",
    fishers: Sequence[torch.Tensor] | None = None,
    eps: float | None = 1e-6,
    norms: Sequence[float] | None = None,
    exact: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge the inputs ``θᵢ = base + patches[i]`` without materialising them (module doc).

    ``patches[i]`` is one patch as :func:`provenance.kernels.patch.apply_chain` takes it
    (``("sparse", indices, values)``, its indices sorted ascending and unique, ``("dense", delta)``,
    ``("low_rank", B, A, scale)``) or None for an input equal to the base. ``method``:
    ``average``, ``fisher`` (with ``fishers``, one per input, and ``eps``, ``norms`` as
    :func:`provenance.kernels.merge.fisher_merge`) or
    ``task_arithmetic`` (task vectors from ``base``). ``exact``: Triton path only (module doc).
    """
    if method not in MODES:
        raise InvalidParameterError(f"merge_patches does {', '.join(MODES)}, not {method!r}")
    _patch._check_tensor(base, "base")
    base = base.detach()
    if not patches:
        raise InvalidParameterError("merge_patches needs at least one patch")
    specs = [_patch._check_patch(base, p, i) if p is not None else None for i, p in enumerate(patches)]
    for i, spec in enumerate(specs):
        if spec is not None and spec[0] == "full":
            raise InvalidParameterError(f"patches[{i}] is a full tensor: merge it with provenance.kernels.merge")
        if spec is not None and spec[0] == "sparse":
            _check_sorted(spec[1], i)
    if eps is None:  # a receipt records eps for Fisher merges only; the other methods never read it
        if method == "fisher":
            raise InvalidParameterError("a fisher merge needs eps, a float >= 0; got None")
        eps = 0.0
    n = len(specs)
    lam = _merge._scalars(weights if weights is not None else [1.0 / n] * n, n, "weights",
                          "any" if method == "task_arithmetic" else ">= 0")
    fs: list[torch.Tensor] = []
    extra = [1.0] * n if method != "task_arithmetic" else [0.0] * n
    if method == "fisher":
        if fishers is None or len(fishers) != n:
            raise InvalidParameterError(f"fisher needs one Fisher per patch: {n} patches, "
                                        f"{'no' if fishers is None else len(fishers)} Fishers")
        fs = _merge._tensors(fishers, "fishers", like=base, same_dtype=False)
        if norms is not None:
            extra = _merge._scalars(norms, n, "norms", "> 0")
    out = _patch._check_out(base, out)
    if not out.numel():
        return out
    mode = MODES[method]
    tensors = [t for s in specs if s is not None for t in s[1:] if isinstance(t, torch.Tensor)]
    if (pick(out, base, *tensors, *fs) == "triton" and n <= MAX_PATCHED and out.dtype in _patch.FLOAT_DTYPES
            and base.dim() <= 2):
        _patched_triton(mode, out, base, specs, fs, lam, extra, float(eps), exact)
    else:
        _patched_torch(mode, out, base, specs, fs, lam, extra, float(eps))
    return out


def _check_sorted(indices: torch.Tensor, i: int) -> None:
    """Refuse sparse indices that are not ascending and unique (one pass over them): both paths
    find each block's entries by binary search, so unsorted ones were misplaced or refused as
    "sparse index -868345 out of range", an index the caller never gave."""
    if indices.numel() < 2:
        return
    bad = torch.nonzero(indices[1:] <= indices[:-1])
    if bad.numel():
        at = int(bad[0]) + 1
        raise InvalidParameterError(
            f"patches[{i}]: sparse indices must be sorted ascending and unique, as the sparse encoding makes them; "
            f"entry {at} is {int(indices[at])} after {int(indices[at - 1])} (order = indices.argsort() sorts "
            "indices[order] and values[order]; keep one value per index)")


def _patched_torch(mode, out, base, specs, fishers, lam, extra, eps) -> None:
    """Block of rows by block: each input's rows made by apply_chain, merged into ``out``'s rows."""
    rows = base.shape[0] if base.dim() else 1
    cols = base.numel() // max(1, rows)
    flat_rows = base.reshape(rows, cols) if base.dim() != 2 else base
    flat_out = out.view(rows, cols) if base.dim() != 2 else out
    for r0, r1 in _patch.row_blocks(rows, cols):
        block = flat_rows[r0:r1]
        thetas = [block if spec is None else _patch.apply_chain(block, [_rows(spec, r0, r1, cols)]) for spec in specs]
        fs = [f.reshape(rows, cols)[r0:r1] for f in fishers]
        sub = flat_out[r0:r1]
        if mode == "mean":
            _merge.weighted_average(thetas, lam, out=sub)
        elif mode == "task":
            _merge.task_arithmetic(block, thetas, lam, out=sub)
        else:
            _merge.fisher_merge(thetas, fs, lam, eps=eps, norms=extra, out=sub)


def _rows(spec: tuple, r0: int, r1: int, cols: int) -> tuple:
    """The part of a checked patch that falls in rows ``r0:r1`` (of ``cols`` elements)."""
    kind = spec[0]
    if kind == "sparse":
        indices = spec[1]
        lo, hi = torch.searchsorted(indices, torch.tensor([r0 * cols, r1 * cols], dtype=indices.dtype,
                                                          device=indices.device)).tolist()
        return ("sparse", indices[lo:hi] - r0 * cols, spec[2][lo:hi])
    if kind == "dense":
        return ("dense", spec[1].reshape(-1, cols)[r0:r1] if spec[1].dim() != 2 else spec[1][r0:r1])
    return ("low_rank", spec[1][r0:r1], spec[2], spec[3])


def _patched_triton(mode, out, base, specs, fishers, lam, extra, eps, exact) -> None:
    """Launch :func:`_patched_merge_kernel` over all the blocks, one slot per input."""
    n, blocks = out.numel(), triton.cdiv(out.numel(), _patch.BLOCK)
    cols = out.shape[1] if out.dim() == 2 else 1
    pad = MAX_PATCHED - len(specs)
    acc = _merge._acc_dtype(out.dtype)
    params = torch.tensor(lam + [0.0] * (8 - len(lam)) + extra + [1.0] * (8 - len(extra)) + [eps], dtype=acc,
                          device=out.device)
    args, kinds = [], {}
    for k in range(MAX_PATCHED):
        spec = specs[k] if k < len(specs) else None
        if spec is None:
            kind, ptrs, rank, scale = 0, (out, out, out), 0, 0.0
        else:
            kind, ptrs, rank, scale = _patch._slot(spec, out, n, blocks, exact)
        args += [*ptrs, rank, scale]
        kinds[f"K{k}"] = kind
    fs = (fishers or [out] * len(specs)) + [out] * pad
    _patched_merge_kernel[(blocks,)](out, base.contiguous(), n, cols, *args, *fs[:MAX_PATCHED], params, **kinds,
                                     N=len(specs), MODE=mode, F64=out.dtype == torch.float64,
                                     BF16=out.dtype == torch.bfloat16, BLOCK=_patch.BLOCK,
                                     LOG=_patch.BLOCK.bit_length())


if triton is not None:

    @triton.jit
    def _input(x0, offs, mask, pa, pb, pc, rank, scale, cols, KIND: tl.constexpr, F64: tl.constexpr,
               BF16: tl.constexpr, BLOCK: tl.constexpr, LOG: tl.constexpr):
        """One input's block: the base block ``x0`` with the input's patch applied (none: KIND 0)."""
        x = x0
        if KIND != 0:
            x = _patch._chain_step(x0, offs, mask, pa, pb, pc, rank, scale, cols, KIND, F64, BF16, BLOCK, LOG)
        return x

    @triton.jit
    def _patched_merge_kernel(out_ptr, base_ptr, n, cols,
                              a0, b0, c0, r0, s0, a1, b1, c1, r1, s1, a2, b2, c2, r2, s2, a3, b3, c3, r3, s3,
                              f0, f1, f2, f3, p_ptr,
                              K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
                              N: tl.constexpr, MODE: tl.constexpr, F64: tl.constexpr, BF16: tl.constexpr,
                              BLOCK: tl.constexpr, LOG: tl.constexpr):
        """One block of output: the base loaded once, each input made in registers from it and its
        patch, folded into the merge state, the result stored once."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc = p_ptr.dtype.element_ty
        x0 = tl.load(base_ptr + offs, mask=mask, other=0.0)
        b = x0.to(acc)
        t0 = tl.zeros([BLOCK], acc)
        t1, t2, t3 = t0, t0, t0
        if MODE == "task":
            t0 = b
        x = _input(x0, offs, mask, a0, b0, c0, r0, s0, cols, K0, F64, BF16, BLOCK, LOG)
        t0, t1, t2, t3 = _merge._fold(t0, t1, t2, t3, x, f0, p_ptr, b, offs, mask, 0, MODE)
        if N > 1:
            x = _input(x0, offs, mask, a1, b1, c1, r1, s1, cols, K1, F64, BF16, BLOCK, LOG)
            t0, t1, t2, t3 = _merge._fold(t0, t1, t2, t3, x, f1, p_ptr, b, offs, mask, 1, MODE)
        if N > 2:
            x = _input(x0, offs, mask, a2, b2, c2, r2, s2, cols, K2, F64, BF16, BLOCK, LOG)
            t0, t1, t2, t3 = _merge._fold(t0, t1, t2, t3, x, f2, p_ptr, b, offs, mask, 2, MODE)
        if N > 3:
            x = _input(x0, offs, mask, a3, b3, c3, r3, s3, cols, K3, F64, BF16, BLOCK, LOG)
            t0, t1, t2, t3 = _merge._fold(t0, t1, t2, t3, x, f3, p_ptr, b, offs, mask, 3, MODE)
        if MODE == "fisher":
            t0 = tl.where(t1 > 0, t0, t2)
        tl.store(out_ptr + offs, t0.to(out_ptr.dtype.element_ty), mask=mask)
