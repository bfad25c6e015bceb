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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from provenance.errors import InvalidParameterError
from provenance.kernels.dispatch import forced, pick
from provenance.kernels.merge_cpu import MAX_MODELS, _kth_abs_numba, _merge_numba, _numba_ok

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None

BLOCK = 1024  # elements per Triton program
CHUNK = 1 << 18  # elements per step of the torch path on CPU, so its buffers stay in cache
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


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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


# ---- torch path (the reference, and the CPU path) ------------------------------------------------


@torch.no_grad()
def _merge_torch(mode, out, base, thetas, fishers, lam, extra, eps) -> None:
    """The merge ``mode`` into ``out``, chunk by chunk: each chunk of every input is read once, and
    the steps are in-place ops on a few buffers of the chunk's size, reused from chunk to chunk."""
    n, acc = out.numel(), _acc_dtype(out.dtype)
    step = CHUNK if out.device.type == "cpu" else n
    bufs = torch.empty(7, min(step, n), dtype=acc, device=out.device)
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        m, w, p, q, t, u, b = bufs[:, : sl.stop - sl.start]
        xs = [x.view(-1)[sl] for x in thetas]
        if mode in ("task", "ties"):
            b.copy_(base.view(-1)[sl])  # upcast once, so that x - b is computed in the accumulation dtype
        if mode == "mean":
            _running_mean(m, xs, lam, t)
        elif mode == "fisher":
            m.zero_()
            w.zero_()
            for x, f, lam_i, norm in zip(xs, fishers, lam, extra):
                a = p.copy_(f.view(-1)[sl])  # F'ᵢ λᵢ, then the step's ratio a / W
                if norm != 1.0:
                    a.div_(norm)
                a.clamp_min_(eps).mul_(lam_i)
                w.add_(a)
                a.div_(w).masked_fill_(w == 0, 0.0)  # 0/0 only where every weight so far is 0
                m.addcmul_(a, torch.sub(x, m, out=t))
            holes = w == 0  # Σ λᵢ F'ᵢ == 0: the λ-weighted average there (rare, so computed lazily)
            if holes.any():
                m.copy_(torch.where(holes, _running_mean(q, xs, lam, t), m))
        elif mode == "task":
            m.copy_(b)
            for x, lam_i in zip(xs, lam):
                m.add_(torch.sub(x, b, out=t), alpha=lam_i)
        else:  # ties: λ-weighted sums and weights of the positive (m, w) and negative (p, q) trimmed values
            for buf in (m, w, p, q):
                buf.zero_()
            for x, lam_i, threshold in zip(xs, lam, extra):
                tau = torch.sub(x, b, out=t)
                if threshold > 0:  # trim: zero the magnitudes under the model's threshold
                    tau.masked_fill_(torch.abs(tau, out=u) < threshold, 0.0)
                m.add_(torch.clamp_min(tau, 0.0, out=u), alpha=lam_i)
                w.add_(u.sign_(), alpha=lam_i)  # λ where τ̂ > 0, with no bool-to-float conversion
                p.add_(torch.clamp_max(tau, 0.0, out=u), alpha=lam_i)
                q.sub_(u.sign_(), alpha=lam_i)
            up = (m + p) >= 0
            den = torch.where(up, w, q)
            m.copy_(torch.where(up, m, p).div_(den).masked_fill_(den == 0, 0.0)).add_(b)
        out.view(-1)[sl].copy_(m)


def _running_mean(m: torch.Tensor, xs: list[torch.Tensor], lam: list[float], tmp: torch.Tensor) -> torch.Tensor:
    """The λ-weighted running mean of ``xs`` into ``m`` (scalar weights, so the ratio is a float)."""
    m.zero_()
    total = 0.0
    for x, lam_i in zip(xs, lam):
        total += lam_i
        if lam_i:
            m.add_(torch.sub(x, m, out=tmp), alpha=lam_i / total)
    return m


# ---- Triton path ---------------------------------------------------------------------------------


def _merge_triton(mode, out, base, thetas, fishers, lam, extra, eps) -> None:
    """Launch :func:`_merge_kernel`: one program per ``BLOCK`` elements, the models as separate
    pointers (the unused ones point at ``thetas[0]``), weights, norms or thresholds and ``eps`` in
    one small tensor of the accumulation dtype."""
    pad = MAX_MODELS - len(thetas)
    params = torch.tensor(
        lam + [0.0] * pad + extra + [1.0] * pad + [eps], dtype=_acc_dtype(out.dtype), device=out.device
    )
    xs = thetas + thetas[:1] * pad
    fs = (fishers or thetas[:1] * len(thetas)) + thetas[:1] * pad
    grid = (triton.cdiv(out.numel(), BLOCK),)
    _merge_kernel[grid](out, base, *xs, *fs, params, out.numel(), N=len(thetas), MODE=mode, BLOCK=BLOCK)


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

    @triton.jit
    def _mean_step(m, w, a, x):
        """One step of a weighted running mean: ``x`` with weight ``a``; ``w`` is the weight so far."""
        w = w + a
        return m + a / tl.where(w > 0, w, 1.0) * (x - m), w

    @triton.jit
    def _step(s0, s1, s2, s3, x_ptr, f_ptr, p_ptr, b, offs, mask, K: tl.constexpr, MODE: tl.constexpr):
        """Fold model ``K``, loaded from ``x_ptr``, into the state ``s0..s3``."""
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        return _fold(s0, s1, s2, s3, x, f_ptr, p_ptr, b, offs, mask, K, MODE)

    @triton.jit
    def _fold(s0, s1, s2, s3, x, f_ptr, p_ptr, b, offs, mask, K: tl.constexpr, MODE: tl.constexpr):
        """Fold model ``K``'s block ``x`` (its stored dtype) into the state ``s0..s3`` (its meaning
        depends on ``MODE``)."""
        acc = p_ptr.dtype.element_ty
        x = x.to(acc)
        lam = tl.load(p_ptr + K)
        if MODE == "mean":
            s0, s1 = _mean_step(s0, s1, lam, x)
        elif MODE == "fisher":
            f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(acc)
            norm, eps = tl.load(p_ptr + 8 + K), tl.load(p_ptr + 16)
            s0, s1 = _mean_step(s0, s1, tl.maximum(f / norm, eps) * lam, x)
            s2, s3 = _mean_step(s2, s3, lam, x)  # the fallback where Σ λF' is 0
        elif MODE == "task":
            s0 += lam * (x - b)
        else:  # ties
            tau = x - b
            tau = tl.where(tl.abs(tau) >= tl.load(p_ptr + 8 + K), tau, 0.0)  # trim below the threshold
            s0 += tl.where(tau > 0, lam * tau, 0.0)
            s1 += tl.where(tau > 0, lam, 0.0)
            s2 += tl.where(tau < 0, lam * tau, 0.0)
            s3 += tl.where(tau < 0, lam, 0.0)
        return s0, s1, s2, s3

    @triton.jit
    def _merge_kernel(out_ptr, base_ptr, x0, x1, x2, x3, x4, x5, x6, x7, f0, f1, f2, f3, f4, f5, f6, f7,
                      p_ptr, n, N: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
        """One block of the merge ``MODE`` of ``N`` models: each input element read once, fp32 (or
        fp64) accumulation, the result cast to ``out``'s dtype on store."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc = p_ptr.dtype.element_ty
        s0 = tl.zeros([BLOCK], acc)
        s1, s2, s3, b = s0, s0, s0, s0
        if MODE == "task" or MODE == "ties":
            b = tl.load(base_ptr + offs, mask=mask, other=0.0).to(acc)
        if MODE == "task":
            s0 = b
        s0, s1, s2, s3 = _step(s0, s1, s2, s3, x0, f0, p_ptr, b, offs, mask, 0, MODE)
        if N > 1:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x1, f1, p_ptr, b, offs, mask, 1, MODE)
        if N > 2:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x2, f2, p_ptr, b, offs, mask, 2, MODE)
        if N > 3:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x3, f3, p_ptr, b, offs, mask, 3, MODE)
        if N > 4:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x4, f4, p_ptr, b, offs, mask, 4, MODE)
        if N > 5:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x5, f5, p_ptr, b, offs, mask, 5, MODE)
        if N > 6:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x6, f6, p_ptr, b, offs, mask, 6, MODE)
        if N > 7:
            s0, s1, s2, s3 = _step(s0, s1, s2, s3, x7, f7, p_ptr, b, offs, mask, 7, MODE)
        if MODE == "fisher":
            s0 = tl.where(s1 > 0, s0, s2)
        elif MODE == "ties":
            up = s0 + s2 >= 0
            den = tl.where(up, s1, s3)
            s0 = b + tl.where(up, s0, s2) / tl.where(den > 0, den, 1.0)
        tl.store(out_ptr + offs, s0.to(out_ptr.dtype.element_ty), mask=mask)
