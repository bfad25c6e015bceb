"""Diagonal Fisher information of a model on data, and the FISH mask chosen from it.

A contributor computes the empirical Fisher of the base model on their data and keeps its top
fraction as the FISH mask (Sung, Nair & Raffel 2021): the pre-declared support of their sparse
patch. A maintainer weighs contributions by their exact Fisher when merging (Matena & Raffel 2022).

::

    scores = diagonal_fisher(model, loader, n_examples=1024)            # empirical, at the true labels
    mask = fish_mask(scores, 0.005, always=["classifier."])             # {name: bool tensor}
    weights = diagonal_fisher(model, loader, mode="exact", n_examples=4096)

Batches are ``(inputs, labels)`` (logits = ``model(inputs)``) or a dict with ``"labels"`` (logits =
``model(**rest)``), or anything ``forward(model, batch)`` turns into logits; a ``.logits`` attribute
of the output (Hugging Face) is used when present. Every tensor in a batch holds the examples along
dimension 0. Classification: logits (B, C), labels (B,). ``causal_lm``: logits (B, T, V), labels
(B, T), -100 ignored, ``logits[:, :-1]`` predicting ``labels[:, 1:]``; an example is one sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, jacrev, vmap

from provenance.errors import InvalidParameterError, ProvenanceError

log = logging.getLogger(__name__)

MODES = ("empirical", "exact")
TASKS = ("classification", "causal_lm")
IGNORE_INDEX = -100


def diagonal_fisher(
    model: torch.nn.Module,
    data: Iterable,
    *,
    mode: str = "empirical",
    n_examples: int | None = None,
    task: str = "classification",
    forward: Callable[[torch.nn.Module, Any], Any] | None = None,
    params: Iterable[str] | None = None,
    chunk: int = 16,
    progress: Any = None,
    samples: int = 1,
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of ``model`` on the batches of ``data``, averaged over the examples used.

    ``mode="empirical"``: (1/N) Σₙ (∂ log p(yₙ|xₙ)/∂θ)² at the true labels (FISH).
    ``mode="exact"``: (1/N) Σₙ Σ_y p(y|xₙ) (∂ log p(y|xₙ)/∂θ)² (Fisher merging). For classification
    the sum over the C classes is computed exactly (a Jacobian of C rows per example: memory grows as
    chunk × C × parameters). For ``causal_lm`` it is an unbiased Monte-Carlo estimate: each target
    position gets ``samples`` tokens drawn from the model's own prediction (torch's global generator,
    so ``torch.manual_seed`` makes it reproducible), each draw's squared gradient weighted 1/samples.

    Returns ``{name: float32 tensor of the parameter's shape}`` for every parameter that requires
    grad, or for the names in ``params``. Per-example gradients come from ``torch.func``
    (``vmap(grad(...))`` over ``chunk`` examples at a time) and are squared into float32
    accumulators; a model ``vmap`` cannot run (``.item()``, data-dependent branches, random ops) falls
    back, with a log message, to one autograd pass per example. The model runs in eval mode and gets
    its modes back; its parameters, buffers and ``.grad`` are left as they were. ``n_examples`` stops
    after that many examples; ``progress`` gets ``start(description, total)`` and ``advance(n)``.

    (One function over 80 lines on purpose: the chunk loop shares the accumulators, the seen
    label range and the switch from ``vmap`` to the per-example fallback with the closure that
    computes the log-likelihood; split, they would travel as a bag of state.)
    """
    named = dict(model.named_parameters())
    names = _fisher_names(model, named, params, mode, task, n_examples=n_examples, chunk=chunk, samples=samples)

    fixed = {f"model.{n}": t.detach() for n, t in (*model.named_parameters(), *model.named_buffers())}
    theta = {n: named[n].detach() for n in names}
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in theta.items()}
    call = _Call(model, forward)
    seen: dict[str, int] = {}
    sampled = mode == "exact" and task == "causal_lm"
    vector = mode == "exact" and task == "classification"  # per-example log-probabilities of every class

    def log_likelihood(theta: dict, leaves: list, structure: Any) -> Any:
        batch = _rebuild(structure, [t.unsqueeze(0) for t in leaves])  # one example, batch dim restored
        logits = functional_call(call, {**fixed, **{f"model.{n}": t for n, t in theta.items()}}, (batch,))
        value = _log_probs(logits, _split(batch)[1], task, vector, seen)
        return (value, value.detach()) if vector else value

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    use_vmap, total = True, 0
    try:
        if progress is not None:
            progress.start(f"Fisher ({mode})", n_examples)
        for batch in data:
            labels = _split(batch)[1]
            take = labels.shape[0] if n_examples is None else min(labels.shape[0], n_examples - total)
            for start in range(0, take, chunk):
                part = _rebuild(batch, [t[start : min(start + chunk, take)] for t in _leaves(batch)])
                size, weight = _split(part)[1].shape[0], 1.0
                if sampled:
                    part, weight = _sample_labels(call, part, samples), 1.0 / samples
                leaves = _leaves(part)
                if use_vmap:
                    try:
                        fn = jacrev(log_likelihood, has_aux=True) if vector else grad(log_likelihood)
                        with torch.no_grad():  # torch.func differentiates inside; nothing recorded outside
                            out = vmap(fn, in_dims=(None, 0, None))(theta, leaves, part)
                    except ProvenanceError:
                        raise
                    except Exception as exc:
                        log.info("vmap cannot run %s (%s); one autograd pass per example", type(model).__name__, exc)
                        use_vmap = False
                    else:
                        _accumulate(acc, *((out[0], out[1].exp()) if vector else (out, None)), weight)
                if not use_vmap:
                    _loop(log_likelihood, theta, leaves, part, acc, weight, vector)
                _check_labels(_split(part)[1], task, seen["classes"])
                total += size
                if progress is not None:
                    progress.advance(size)
            if n_examples is not None and total >= n_examples:
                break
    finally:
        for module, training in modes:
            module.training = training
    if total == 0:
        raise InvalidParameterError(f"data {type(data).__name__} holds no examples to compute a Fisher on")
    return {n: a / total for n, a in acc.items()}


def _fisher_names(model: torch.nn.Module, named: dict, params: Any, mode: str, task: str, **counts: Any) -> list[str]:
    """The parameters a Fisher is computed for, after checking the arguments."""
    if mode not in MODES:
        raise InvalidParameterError(f"unknown Fisher mode {mode!r}; expected one of {', '.join(MODES)}")
    if task not in TASKS:
        raise InvalidParameterError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    for label, value in counts.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidParameterError(f"{label} must be a positive integer, got {value!r}")
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    names = [params] if isinstance(params, str) else names
    unknown = [n for n in names if n not in named]
    if unknown:
        raise InvalidParameterError(f"no parameter named {unknown} in {type(model).__name__}")
    if not names:
        raise InvalidParameterError(f"{type(model).__name__} has no trainable parameters to compute a Fisher for")
    return names


def fish_mask(
    fisher: Mapping[str, torch.Tensor], keep_ratio: float, *, always: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """The FISH mask: the k largest Fisher entries over all tensors together, plus ``always``.

    k = round(keep_ratio × all elements of ``fisher``), at least 1, chosen among the tensors not in
    ``always`` (so exactly k of them are kept, or all when fewer remain); every element of the tensors
    in ``always`` (exact names, or prefixes ending in ".", such as "classifier.") is kept besides.
    Ties at the threshold go to the earlier tensor in ``fisher``'s order, then the earlier element in
    row-major order. Returns ``{name: bool tensor of that shape}``. Only one concatenated float32 copy
    of the scores is made.
    """
    if not fisher:
        raise InvalidParameterError("fish_mask needs at least one Fisher tensor, got none")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise InvalidParameterError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    kept: set[str] = set()
    unknown = []
    for pattern in [always] if isinstance(always, str) else always:
        hits = [n for n in fisher if n == pattern or (pattern.endswith(".") and n.startswith(pattern))]
        unknown += [] if hits else [pattern]
        kept.update(hits)
    if unknown:
        raise InvalidParameterError(f"always names {unknown}, matching none of the Fisher's {sorted(fisher)[:8]}")
    nan = [n for n, t in fisher.items() if torch.isnan(t).any()]
    if nan:
        raise InvalidParameterError(f"the Fisher tensors {nan} contain NaN")

    masks = {n: torch.full(t.shape, n in kept, dtype=torch.bool, device=t.device) for n, t in fisher.items()}
    ranked = [n for n in fisher if n not in kept]
    size = sum(fisher[n].numel() for n in ranked)
    k = min(size, max(1, round(keep_ratio * sum(t.numel() for t in fisher.values()))))
    if k == size:
        for n in ranked:
            masks[n].fill_(True)
    if k in (0, size):
        return masks
    device = fisher[ranked[0]].device
    flat = torch.cat([fisher[n].detach().reshape(-1).to(device, torch.float32) for n in ranked])
    if k <= size - k + 1:  # the k-th largest, from whichever end needs fewer values
        threshold = flat.topk(k, sorted=False).values.min().item()
    else:
        threshold = flat.topk(size - k + 1, largest=False, sorted=False).values.max().item()
    del flat
    remaining = k
    for n in ranked:
        masks[n] = fisher[n].detach().float() > threshold
        remaining -= int(masks[n].sum())
    for n in ranked:  # ties at the threshold, in order, until k are kept
        if remaining == 0:
            break
        ties = (fisher[n].detach().float() == threshold).reshape(-1).nonzero().squeeze(1)[:remaining]
        masks[n].view(-1)[ties] = True
        remaining -= ties.numel()
    return masks


class _Call(torch.nn.Module):
    """The model behind ``forward``, as one module that ``functional_call`` can swap parameters in."""

    def __init__(self, model: torch.nn.Module, forward: Callable | None) -> None:
        super().__init__()
        self.model = model
        self.custom = forward

    def forward(self, batch: Any) -> torch.Tensor:
        if self.custom is not None:
            out = self.custom(self.model, batch)
        elif isinstance(batch, Mapping):
            out = self.model(**{k: v for k, v in batch.items() if k != "labels"})
        else:
            out = self.model(batch[0])
        return out if isinstance(out, torch.Tensor) else out.logits  # Hugging Face outputs


def _split(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, Mapping) and "labels" in batch:
        inputs, labels = {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
    else:
        kind = f"a dict with keys {sorted(batch)}" if isinstance(batch, Mapping) else type(batch).__name__
        raise InvalidParameterError(f"a batch is (inputs, labels) or a dict with 'labels', got {kind}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise InvalidParameterError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    return inputs, labels


def _leaves(obj: Any) -> list[torch.Tensor]:
    """The tensors in a batch (nested dicts, lists, tuples), in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _leaves(v)]
    return []


def _rebuild(obj: Any, tensors: list[torch.Tensor] | Iterator[torch.Tensor]) -> Any:
    """``obj`` with its tensors replaced, in ``_leaves`` order; anything else is kept as it is."""
    tensors = iter(tensors)
    if isinstance(obj, torch.Tensor):
        return next(tensors)
    if isinstance(obj, Mapping):
        return {k: _rebuild(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(v, tensors) for v in obj)
    return obj


def _log_probs(logits: torch.Tensor, labels: torch.Tensor, task: str, vector: bool, seen: dict) -> torch.Tensor:
    """log p(labels | x) of one example (a batch of one); for ``vector``, log p of every class."""
    rank = 2 if task == "classification" else 3
    if logits.dim() != rank:
        raise InvalidParameterError(f"task {task!r} needs logits of rank {rank}, got shape {tuple(logits.shape)}")
    seen["classes"] = classes = logits.shape[-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    if task == "classification":
        if vector:
            return logp[0]
        return logp.gather(1, labels.clamp(0, classes - 1).view(1, 1)).sum()
    if labels.shape != logits.shape[:2]:
        raise InvalidParameterError(f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    targets = labels[0, 1:]
    picked = logp[0, :-1].gather(1, targets.clamp(0, classes - 1).unsqueeze(1)).squeeze(1)
    return (picked * (targets != IGNORE_INDEX)).sum()


def _check_labels(labels: torch.Tensor, task: str, classes: int) -> None:
    ok = (labels >= 0) & (labels < classes)
    if task == "causal_lm":
        ok |= labels == IGNORE_INDEX
    if not bool(ok.all()):
        bad = labels[~ok].unique()[:5].tolist()
        raise InvalidParameterError(f"labels {bad} are out of range for logits of {classes} classes")


def _sample_labels(call: _Call, part: Any, samples: int) -> Any:
    """``part`` repeated ``samples`` times, its target tokens drawn from the model's prediction."""
    part = _rebuild(part, [t.repeat(samples, *[1] * (t.dim() - 1)) for t in _leaves(part)])
    inputs, labels = _split(part)
    with torch.no_grad():
        logits = call(part)
    if logits.dim() != 3:
        raise InvalidParameterError(f"task 'causal_lm' needs logits of rank 3, got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits[:, :-1].float(), dim=-1)
    drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(probs.shape[:2]).to(labels.dtype)
    _check_labels(labels, "causal_lm", logits.shape[-1])
    labels = labels.clone()
    labels[:, 1:] = torch.where(labels[:, 1:] == IGNORE_INDEX, labels[:, 1:], drawn)
    return {**inputs, "labels": labels} if isinstance(part, Mapping) else type(part)((inputs, labels))


def _loop(log_likelihood: Callable, theta: dict, leaves: list, part: Any, acc: dict, weight: float, vector: bool):
    """The fallback: one autograd pass per example (C passes for the exact classification Fisher)."""
    params = {n: t.detach().requires_grad_() for n, t in theta.items()}  # fresh leaves: no .grad on the model
    for i in range(leaves[0].shape[0]):
        with torch.enable_grad():
            out = log_likelihood(params, [t[i] for t in leaves], part)
            values = out[0] if vector else out.unsqueeze(0)
            rows = [torch.autograd.grad(v, list(params.values()), retain_graph=True, allow_unused=True) for v in values]
        grads = {
            n: torch.stack([torch.zeros_like(p) if row[j] is None else row[j] for row in rows])  # (values, *shape)
            for j, (n, p) in enumerate(params.items())
        }
        if vector:  # (1, C, *shape) weighted by p (1, C)
            _accumulate(acc, {n: g.unsqueeze(0) for n, g in grads.items()}, out[1].exp().unsqueeze(0), weight)
        else:
            _accumulate(acc, grads, None, weight)


def _accumulate(acc: dict, grads: dict, probs: torch.Tensor | None, weight: float) -> None:
    """Add Σ squared gradients × weight: grads (n, *shape), or (n, C, *shape) weighted by probs (n, C)."""
    for name, g in grads.items():
        square = g.float().square()
        if probs is None:
            acc[name] += square.sum(0) * weight
        else:
            p = probs.float().view(*probs.shape, *[1] * (square.dim() - 2))
            acc[name] += (square * p).sum((0, 1)) * weight
