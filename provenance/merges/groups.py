"""Each parameter group of a merge merged and stored as a patch on the first input, one group at a
time: whole tensors by the method, or the patch-direct path (:mod:`.direct`) where every input
is a patch on one parent; groups a merge does not average (integers, booleans, FP8) kept when
the inputs agree; NaN and Inf in a result settled to the value that does not depend on the
inputs' order, and an overflow of finite inputs refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from provenance import merge as methods
from provenance.errors import InvalidParameterError
from provenance.history import History, materialize
from provenance.kernels.dispatch import pick
from provenance.kernels.finite import is_finite
from provenance.kernels.merge import FLOAT_DTYPES, settle_nonfinite
from provenance.merges.direct import merge_direct, mover, patch_direct
from provenance.merges.fishers import check_fisher_range, group_fishers
from provenance.objects import address_of
from provenance.patches import encode
from provenance.records import ParamRecord


def merge_groups(history, store, ids, names, kept, method, fishers, lam, eps, norms, density, base_id, device,
                 progress, added):
    """Every group merged and its patch against the first input stored: the manifest rows, the
    receipt's per-group record (inputs, Fishers read, result) and the kernel that ran."""
    params, receipt_params, kernel = [], {}, None
    if progress is not None:
        progress.start("merge", None)
    with added.background() as writer:
        for name in names:
            direct = patch_direct(history, store, ids, name, method, base_id) if name not in kept else None
            if name in kept:  # integers, booleans, FP8: not averaged, kept when every input agrees
                thetas = [materialize(history, store, vid, name)[0] for vid in ids]
                merged, fisher_objects = kept_value(name, thetas, ids), None
                first, input_addresses = thetas[0], [address_of(t) for t in thetas]
            elif direct is not None:  # patches of one parent: never materialise the inputs
                merged, fisher_objects, first = merge_direct(direct, method, name, fishers, lam, eps, norms, device)
                input_addresses = None
            else:
                thetas = [materialize(history, store, vid, name)[0] for vid in ids]
                merged, fisher_objects = merge_group(
                    method, name, thetas, fishers, lam, eps, norms, density, history, store, base_id, device, ids
                )
                first, input_addresses = thetas[0], [address_of(t) for t in thetas]
            kernel = kernel or pick(torch.empty(0, device=device))
            merged, inputs = settle(merged, method, name, history, store, ids, fishers, lam, eps, norms) \
                if name not in kept else (merged, None)
            if inputs is not None:
                base = [materialize(history, store, base_id, name)[0]] if base_id else []
                if not is_finite(merged) and all(is_finite(t) for t in [*inputs, *base]):  # (a base's NaN is carried)
                    raise InvalidParameterError(
                        f"the merge of parameter {name!r} overflows {str(merged.dtype).removeprefix('torch.')}: its "
                        "inputs are finite and its result is not; merge with smaller weights, or inputs of a wider dtype")
            patch = encode(first, merged)
            objects = {role: store.put(t, writer).address for role, t in patch.tensors.items()}
            params.append(ParamRecord(name=name, dtype=str(merged.dtype).removeprefix("torch."),
                                      shape=list(merged.shape), encoding=patch.encoding, objects=objects,
                                      meta=patch.meta, nbytes=patch.nbytes))
            receipt_params[name] = {"inputs": input_addresses, "fishers": fisher_objects, "merged": address_of(merged)}
            if progress is not None:
                progress.advance(merged.numel() * merged.element_size())
    return params, receipt_params, kernel


def settle(merged, method, name, history, store, ids, fishers, lam, eps, norms):
    """``merged``, and the inputs' values when it holds NaN or Inf (else None): an average's or a
    Fisher merge's elements that the running mean left NaN or Inf are then set to the value that
    does not depend on the inputs' order (:func:`settle_nonfinite`), on the merge and its re-run."""
    if is_finite(merged):
        return merged, None
    inputs = [materialize(history, store, vid, name)[0] for vid in ids]
    how = methods.get(method)
    if how.weighted_mean:
        fs = group_fishers(fishers, name, lambda t: t.contiguous())[0] if how.needs_fisher else None
        merged = merged.contiguous()
        settle_nonfinite(merged, [t.contiguous() for t in inputs], lam, fishers=fs, eps=eps, norms=norms)
    return merged, inputs


def kept_groups(history: History, vid: str, names: list[str]) -> set[str]:
    """The groups whose dtype a merge does not average (integers, booleans, FP8): position ids,
    step counters, masks. They are kept as they are when every input holds the same value."""
    manifest = history.manifest(vid)
    return {n for n in names if getattr(torch, manifest[n].dtype) not in FLOAT_DTYPES}


def kept_value(name: str, thetas: list[torch.Tensor], ids: list[str]) -> torch.Tensor:
    """The value of a group that is not averaged: the inputs' one value, bit for bit; refused,
    naming the group and two inputs that differ, when they do not agree."""
    first = _bytes(thetas[0])
    for vid, t in zip(ids[1:], thetas[1:]):
        if not torch.equal(first, _bytes(t)):
            raise InvalidParameterError(
                f"parameter {name!r} is {str(t.dtype).removeprefix('torch.')}, which a merge does not average, and "
                f"it differs between {ids[0][:12]} and {vid[:12]}: make the inputs agree on it (it is kept as it is "
                "when they do)")
    return thetas[0]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes (a 0-d tensor, such as BatchNorm's ``num_batches_tracked``, as one element)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def merge_group(method, name, thetas, fishers, lam, eps, norms, density, history, store, base_id,
                device: torch.device | None = None, ids: Sequence[str] | None = None):
    """One parameter group merged (on ``device``, returned on the CPU), and the Fisher objects it
    read (``ids``: the inputs' version ids, to name one that holds NaN or Inf)."""
    how, on = methods.get(method), mover(device)
    thetas = [on(t) for t in thetas]
    fs, addresses = group_fishers(fishers, name, on) if how.needs_fisher else (None, None)
    if fs is not None:
        check_fisher_range(name, fs, lam, eps, norms, thetas[0].dtype)
    theta0 = on(materialize(history, store, base_id, name)[0]) if how.needs_base else None
    if how.finite_only:
        labels = [f"version {v[:12]}" for v in ids] if ids else [f"input {i + 1}" for i in range(len(thetas))]
        for label, t in zip([*labels, "the base"], [*thetas, theta0]):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise InvalidParameterError(
                    f"parameter {name!r} of {label} holds NaN or Inf: a {method} merge keeps each input's largest "
                    "magnitudes, which NaN and Inf make meaningless; merge by average, fisher or task_arithmetic "
                    "(which carry them into the result), or commit the inputs without them")
    merged = how.merge(thetas, lam=lam, theta0=theta0, fishers=fs, eps=eps, norms=norms, density=density)
    return merged.cpu(), addresses
