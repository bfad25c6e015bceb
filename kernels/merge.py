"""Elementwise N-way merges of one parameter tensor: Fisher merging, weighted averaging, task
arithmetic and TIES, each computed in one fused pass over the inputs (TIES first reads each task
vector once more to find its magnitude threshold).

Anatomy (STYLE.md, "Kernels"): the public functions check their inputs and raise errors with the
numbers in them; :func:`provenance.kernels.dispatch.pick` then chooses between one private
``@triton.jit`` kernel, :func:`_merge_kernel`, and :func:`_merge_torch`, the plain-torch reference
that is also the CPU path; on the CPU, float32, float64 and bfloat16 merges of up to 8 models run
:func:`~provenance.kernels.merge_cpu._merge_kernel`, a numba loop over blocks with the torch
path's recurrences (FMA-contracted as torch's vectorised ops are: bit-identical to it), and TIES
finds its thresholds in one counting pass over the magnitudes' bits (:func:`_kth_abs_numba`, the
same values as ``kthvalue``). All run the same recurrences in float32 (float64 for float64 inputs),
read every input element once and return a new tensor of the inputs' dtype and shape (or write
``out=``, which may be one of the inputs: every element is read before it is written).

Weighted means (:func:`weighted_average`, :func:`fisher_merge`) are running means,
``m += a_i / (a_1 + ... + a_i) * (x_i - m)``, not a ratio of two sums, so merging one model returns
it bit for bit and a model whose weight ``a_i`` is zero leaves exactly the merge of the others.
Where an input holds NaN or Inf the recurrence depends on the inputs' order (``Inf`` then ``1``
gives NaN, ``1`` then ``Inf`` gives Inf); :func:`settle_nonfinite` sets those elements to the
value that does not.

The parts are the modules beside this one: :mod:`provenance.kernels.merge_torch` (the torch path),
:mod:`provenance.kernels.merge_triton` (the Triton kernel and its launcher),
:mod:`provenance.kernels.merge_cpu` (the numba path) and :mod:`provenance.kernels.merge_kth` (TIES
thresholds of CUDA tensors). This module holds the public functions, the checks of their inputs,
the choice of how a TIES threshold is found and of the backend (:func:`_launch`), and gives, under
its name, what callers use of the others (:mod:`provenance.kernels.merge_patches` among them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from provenance.errors import InvalidParameterError
from provenance.kernels.dispatch import forced, pick
from provenance.kernels.merge_cpu import MAX_MODELS, _kth_abs_numba, _merge_numba, _numba_ok
from provenance.kernels.merge_kth import SAMPLE, _kth_abs_radix, _radix_select, _window_select
from provenance.kernels.merge_torch import CHUNK, _acc_dtype, _merge_torch
from provenance.kernels.merge_triton import BLOCK, _merge_triton, triton

if triton is not None:
    from provenance.kernels.merge_triton import _fold, _merge_kernel

HISTOGRAM_MIN = 1 << 17  # TIES thresholds by histogram from this many elements; below, kthvalue is faster
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

Weights = Sequence[float] | torch.Tensor | None


def weighted_average(
    thetas: Sequence[torch.Tensor], weights: Weights = None, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``Σ λᵢ θᵢ / Σ λᵢ`` elementwise: Fisher merging with ``F ≡ 1``. Weights are finite, ``>= 0``
    with a positive sum, and default to equal."""
    thetas = _tensors(thetas, "thetas")
    lam = _scalars(weights, len(thetas), "weights", ">= 0")
    return _launch("mean", thetas, [], thetas[0], lam, [1.0] * len(thetas), 0.0, out)


def fisher_merge(
    thetas: Sequence[torch.Tensor],
    fishers: Sequence[torch.Tensor],
    weights: Weights = None,
    *,
    eps: float = 1e-6,
    norms: Sequence[float] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fisher merging (Matena & Raffel 2022): ``Σ λᵢ F'ᵢ θᵢ / Σ λᵢ F'ᵢ`` elementwise with
    ``F'ᵢ = max(Fᵢ / normᵢ, eps)``.

    ``fishers`` are diagonal Fishers of the thetas' shape, of any float dtype. ``norms`` are the
    callers' model-wide L2 norms of each Fisher (positive; None: no normalisation). Where
    ``Σ λᵢ F'ᵢ`` is 0 (possible with ``eps=0``) the result is the λ-weighted average.
    """
    thetas = _tensors(thetas, "thetas")
    fishers = _tensors(fishers, "fishers", like=thetas[0], same_dtype=False)
    if len(fishers) != len(thetas):
        raise InvalidParameterError(f"{len(fishers)} fishers for {len(thetas)} thetas")
    lam = _scalars(weights, len(thetas), "weights", ">= 0")
    scale = [1.0] * len(thetas) if norms is None else _scalars(norms, len(thetas), "norms", "> 0")
    if not (math.isfinite(eps) and eps >= 0):
        raise InvalidParameterError(f"eps must be finite and >= 0, got {eps}")
    return _launch("fisher", thetas, fishers, thetas[0], lam, scale, float(eps), out)


def settle_nonfinite(
    out: torch.Tensor,
    thetas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    fishers: Sequence[torch.Tensor] | None = None,
    eps: float = 1e-6,
    norms: Sequence[float] | None = None,
) -> int:
    """Where a weighted mean (:func:`weighted_average`, or :func:`fisher_merge` with ``fishers``)
    left NaN or ±Inf in ``out``, the value that does not depend on the inputs' order, in place: NaN
    where an input of positive weight is NaN or both +Inf and −Inf are among them, else that
    infinity, else (finite inputs: a zero-weight input's Inf, ``0 × Inf``, or an intermediate
    overflow) their weighted mean in float64. The running mean made ``[Inf, 1]`` NaN and
    ``[1, Inf]`` Inf. Returns how many elements were settled; the others are not read twice."""
    thetas = _tensors(thetas, "thetas", like=out)
    lam = _scalars(weights, len(thetas), "weights", ">= 0")
    if fishers is not None:
        fishers = _tensors(fishers, "fishers", like=out, same_dtype=False)
        if len(fishers) != len(thetas):
            raise InvalidParameterError(f"{len(fishers)} fishers for {len(thetas)} thetas")
    if not out.is_contiguous():
        raise InvalidParameterError("out must be contiguous: its elements are settled in place")
    flat = out.view(-1)
    idx = torch.nonzero(~torch.isfinite(flat)).squeeze(1)
    if not idx.numel():
        return 0
    xs = torch.stack([t.reshape(-1)[idx.to(t.device)].to(torch.float64).cpu() for t in thetas])
    w = torch.tensor(lam, dtype=torch.float64)[:, None].expand_as(xs)
    if fishers is not None:
        scale = list(norms) if norms is not None else [1.0] * len(fishers)
        f = torch.stack([fi.reshape(-1)[idx.to(fi.device)].to(torch.float64).cpu() / s for fi, s in zip(fishers, scale)])
        fw = w * f.clamp_min(eps)
        w = torch.where(fw.sum(0) > 0, fw, w)  # Σ λᵢ F'ᵢ == 0: the λ-weighted mean, as the kernels do
    live = w > 0
    pos, neg = (live & (xs == math.inf)).any(0), (live & (xs == -math.inf)).any(0)
    nan = (live & xs.isnan()).any(0) | (pos & neg)
    finite = torch.where(live & xs.isfinite(), xs * w, 0.0).sum(0) / torch.where(live, w, 0.0).sum(0)
    value = torch.where(nan, math.nan, torch.where(pos, math.inf, torch.where(neg, -math.inf, finite)))
    flat[idx.to(out.device)] = value.to(device=out.device, dtype=out.dtype)
    return int(idx.numel())


def task_arithmetic(
    base: torch.Tensor, thetas: Sequence[torch.Tensor], weights: Weights, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``θ₀ + Σ λᵢ (θᵢ − θ₀)``. Weights are finite and may be negative (negating a task vector;
    ``Ledger.merge`` takes them non-negative, as they are also lineage shares)."""
    thetas = _tensors(thetas, "thetas")
    _tensors([base], "base", like=thetas[0])
    lam = _scalars(weights, len(thetas), "weights", "any")
    return _launch("task", thetas, [], base, lam, [0.0] * len(thetas), 0.0, out)


def ties(
    base: torch.Tensor,
    thetas: Sequence[torch.Tensor],
    weights: Weights = None,
    *,
    density: float = 0.2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023): trim each task vector ``τᵢ = θᵢ − θ₀`` to its top
    ``density`` fraction by magnitude, elect a sign per element, add the disjoint mean to ``θ₀``.

    Following mergekit (``sparsify.magnitude``; ``GTATask`` with ``consensus_method="sum"`` and
    ``normalize=True``): ``k = int(density · numel)`` elements are kept per model (none when k is 0,
    all when density is 1); the elected sign is that of ``Σ λᵢ τ̂ᵢ``, positive when that sum is 0;
    a model agrees at an element when its trimmed value is nonzero and has the elected sign; the
    result is ``θ₀ + Σ_agree λᵢ τ̂ᵢ / Σ_agree λᵢ``, and ``θ₀`` where no model agrees. Unlike mergekit,
    which keeps exactly k elements and breaks ties at the threshold arbitrarily, every element with
    ``|τ| >=`` the k-th largest magnitude is kept, so the result does not depend on sort order;
    magnitudes are compared in float32 (float64 for float64 inputs), not in the inputs' dtype.
    """
    thetas = _tensors(thetas, "thetas")
    _tensors([base], "base", like=thetas[0])
    lam = _scalars(weights, len(thetas), "weights", ">= 0")
    if not 0 < density <= 1:
        raise InvalidParameterError(f"density must be in (0, 1], got {density}")
    return _launch("ties", thetas, [], base, lam, _ties_thresholds(base, thetas, density), 0.0, out)


# ---- validation ----------------------------------------------------------------------------------


def _tensors(tensors, what: str, *, like: torch.Tensor | None = None, same_dtype: bool = True) -> list[torch.Tensor]:
    """``tensors`` as a list, each a contiguous float tensor with the shape and device of ``like``
    (default: the first) and, with ``same_dtype``, its dtype."""
    tensors = list(tensors)
    if not tensors:
        raise InvalidParameterError(f"a merge needs at least one model, got 0 {what}")
    like = tensors[0] if like is None else like
    for i, t in enumerate(tensors):
        name = what if what == "base" else f"{what}[{i}]"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} is a {type(t).__name__}, not a tensor")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; merges take float32, bfloat16, float16 or float64")
        if same_dtype and t.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, thetas[0] {like.dtype}; the models must share one dtype")
        if t.shape != like.shape:
            raise InvalidParameterError(f"{name} has shape {tuple(t.shape)}, thetas[0] {tuple(like.shape)}")
        if t.device != like.device:
            raise InvalidParameterError(f"{name} is on {t.device}, thetas[0] on {like.device}")
        if not t.is_contiguous():
            raise InvalidParameterError(f"{name} of shape {tuple(t.shape)} has strides {t.stride()}: not contiguous")
    return tensors


def _scalars(values, n: int, what: str, sign: str) -> list[float]:
    """``n`` finite floats (equal ``1/n`` when ``values`` is None), ``sign``: "any", ">= 0" with a
    positive sum, or "> 0"."""
    if values is None:
        return [1.0 / n] * n
    vals = [float(v) for v in (values.detach().reshape(-1).tolist() if isinstance(values, torch.Tensor) else values)]
    if len(vals) != n:
        raise InvalidParameterError(f"{len(vals)} {what} for {n} models")
    for i, v in enumerate(vals):
        if not math.isfinite(v) or (sign == ">= 0" and v < 0) or (sign == "> 0" and v <= 0):
            raise InvalidParameterError(f"{what}[{i}] is {v}; {what} must be finite{'' if sign == 'any' else ' and ' + sign}")
    if sign == ">= 0" and sum(vals) <= 0:
        raise InvalidParameterError(f"the {what} sum to {sum(vals)}; at least one must be > 0")
    return vals


def _ties_thresholds(base: torch.Tensor, thetas: list[torch.Tensor], density: float) -> list[float]:
    """Per model, the magnitude from which its task vector's elements are kept: the k-th largest
    ``|θᵢ − θ₀|`` with ``k = int(density · numel)`` (0: keep all; inf: keep none)."""
    n = base.numel()
    k = int(density * n)
    if k >= n:
        return [0.0] * len(thetas)
    if k == 0:
        return [math.inf] * len(thetas)
    if _numba_ok(base, *thetas) and base.dtype != torch.float64 and n >= HISTOGRAM_MIN:
        return _kth_abs_numba(base, thetas, n - k)
    if base.is_cuda and base.dtype != torch.float64 and n >= HISTOGRAM_MIN:
        return _kth_abs_radix(base, thetas, n - k)
    b = base.reshape(-1).to(_acc_dtype(base.dtype))
    return [t.reshape(-1).to(b.dtype, copy=True).sub_(b).abs_().kthvalue(n - k + 1).values.item() for t in thetas]


def _launch(mode, thetas, fishers, base, lam, extra, eps, out) -> torch.Tensor:
    """Check ``out`` (or make it), pick the backend and run the merge ``mode`` into it."""
    like = thetas[0]
    if out is None:
        out = torch.empty_like(like)
    elif not isinstance(out, torch.Tensor) or (out.shape, out.dtype, out.device) != (like.shape, like.dtype, like.device):
        got = f"{out.dtype}{tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidParameterError(f"out is {got}, the merge gives {like.dtype}{tuple(like.shape)} on {like.device}")
    elif not out.is_contiguous():
        raise InvalidParameterError(f"out of shape {tuple(out.shape)} has strides {out.stride()}: not contiguous")
    chosen = pick(out, base, *thetas, *fishers)
    if chosen == "triton" and len(thetas) > MAX_MODELS and forced() == "auto":
        chosen = "torch"  # more models than one launch takes: the exact torch path, on the same device
    if chosen == "triton":
        if len(thetas) > MAX_MODELS:
            raise InvalidParameterError(
                f"the Triton merge kernel takes 1 to {MAX_MODELS} models, got {len(thetas)}; merge in groups or use backend('torch')"
            )
        if out.numel():
            _merge_triton(mode, out, base, thetas, fishers, lam, extra, eps)
    elif out.numel() and len(thetas) <= MAX_MODELS and _numba_ok(out, base, *thetas) and _numba_ok(*fishers, same=True):
        _merge_numba(mode, out, base, thetas, fishers, lam, extra, eps)
    elif out.numel():
        _merge_torch(mode, out, base, thetas, fishers, lam, extra, eps)
    return out


__all__ = ["BLOCK", "CHUNK", "FLOAT_DTYPES", "HISTOGRAM_MIN", "SAMPLE", "Weights", "_acc_dtype", "_fold", "_kth_abs_radix",
           "_merge_kernel", "_merge_triton", "_radix_select", "_scalars", "_tensors", "_ties_thresholds",
           "_window_select", "fisher_merge", "settle_nonfinite", "task_arithmetic", "ties", "weighted_average"]
