"""Each parameter group of a commit checked (a dense, storable tensor, finite unless allowed) and
encoded as the smallest exact patch against the parent's group, stored whole where the
:class:`~provenance.versions.SnapshotPolicy` says its chain of patches is long enough; the patches'
tensors handed to the object store's writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from provenance.errors import InvalidParameterError, NonFiniteError
from provenance.history import materialize, sparse_chain
from provenance.kernels.finite import float_chunks, is_finite
from provenance.kernels.patch import apply_low_rank
from provenance.objects import check_storable
from provenance.patches import changed_mask_over, encode
from provenance.records import ParamRecord
from provenance.versions.states import SAME, AdapterUpdate


def _check_tensor(name: str, tensor: Any, allow_nonfinite: bool) -> torch.Tensor:
    """``tensor`` as it is stored (on the CPU, a negative view made plain), or a refusal naming
    ``name``: not a tensor, no data (meta), not dense (sparse layouts), quantized, complex, of a
    dtype without a safetensors name, or holding NaN or Inf without ``allow_nonfinite``."""
    check_storable(name, tensor)
    tensor = tensor.detach().resolve_neg()  # a torch._neg_view has the negated values, not its memory's
    if tensor.is_floating_point() and not allow_nonfinite and tensor.numel():
        flat = tensor.reshape(-1)
        if not is_finite(flat):
            count, first = 0, -1
            for start, part in float_chunks(flat):
                bad = ~torch.isfinite(part)
                if first < 0 and bool(bad.any()):
                    first = start + int(torch.nonzero(bad)[0])
                count += int(bad.sum())
            raise NonFiniteError(
                f"parameter {name!r} holds {count} NaN or Inf values (first at flat index {first}); "
                "pass allow_nonfinite=True to store them",
                name,
            )
    return tensor.cpu()


def encode_all(history, store, writer, parent_id, parent_manifest, incoming, encoding, low_rank, allow_nonfinite,
               policy, params, created, progress=None) -> None:
    """Encode every incoming group and hand its patch's tensors to ``writer``; appends to
    ``params`` and to ``created`` (the objects this commit adds) as it goes."""
    if progress is not None:
        progress.start("commit", None)
    for name in incoming.names:
        previous = parent_manifest.get(name)
        if previous is not None and previous.encoding == "removed":
            previous = None
        value = incoming.get(name)
        if value is SAME:
            params.append(ParamRecord(name=name, dtype=previous.dtype, shape=previous.shape, encoding="unchanged"))
            continue
        patch, target = _encode_group(history, store, parent_id, name, previous, value, encoding, low_rank,
                                      allow_nonfinite, policy)
        objects = {}
        for role, t in patch.tensors.items():
            ref = store.put(t, writer)
            objects[role] = ref.address
            if ref.created:
                created.append(ref.address)
        params.append(ParamRecord(name=name, dtype=dtype_of(target), shape=list(target.shape), encoding=patch.encoding,
                                  objects=objects, meta=patch.meta, nbytes=patch.nbytes))
        if progress is not None:
            progress.advance(target.numel() * target.element_size())


def _encode_group(history, store, parent_id, name, previous, value, encoding, low_rank, allow_nonfinite, policy):
    """The patch of one group against the parent's, and the group's new value."""
    if previous is None:  # a new parameter: stored whole
        if isinstance(value, AdapterUpdate):
            raise InvalidParameterError(f"LoRA update for {name!r}, which the parent does not have")
        if name in low_rank:  # (the factors were dropped without a word)
            why = f"which the parent {parent_id[:12]} does not have" if parent_id else "in a root commit"
            raise InvalidParameterError(f"low_rank factors given for parameter {name!r}, {why}: factors patch the "
                                        "parent's value, and a new parameter is stored whole")
        target = _check_tensor(name, value, allow_nonfinite)
        return encode(target, target, encoding="full"), target
    hints = {}
    if isinstance(value, AdapterUpdate):
        base, depth, chain_bytes = materialize(history, store, parent_id, name)
        start = base if value.start is None else value.start
        with _naming(name):
            updated = apply_low_rank(start, value.b, value.a, value.scale)
        target = _check_tensor(name, updated, allow_nonfinite)
        if _reshaped(name, target, previous, parent_id, encoding, low_rank):  # a resized embedding's saved base layer
            return encode(target, target, encoding="full"), target
        if value.start is None:
            hints["low_rank"] = (value.b, value.a, value.scale)
    else:
        target = _check_tensor(name, value, allow_nonfinite)
        if _reshaped(name, target, previous, parent_id, encoding, low_rank):
            return encode(target, target, encoding="full"), target
        # A parent reached by sparse patches from its last full copy is not materialised (a copy
        # of the whole group): the changed elements are found against that copy, corrected where
        # the patches wrote. Only the mask is needed, unless low-rank factors are to be checked.
        lazy = sparse_chain(history, store, parent_id, name) if name not in low_rank else None
        if lazy is not None:
            base, steps, depth, chain_bytes = lazy
            hints["changed"] = changed_mask_over(base, steps, target)
        else:
            base, depth, chain_bytes = materialize(history, store, parent_id, name)
        if name in low_rank:
            hints["low_rank"] = low_rank[name]
    with _naming(name):  # the factors' shapes, an encoding asked for that cannot reproduce the group
        patch = encode(base, target, encoding=encoding, **hints)
    if encoding == "auto" and patch.encoding not in ("unchanged", "full"):
        full_size = target.numel() * target.element_size()
        if depth + 1 > policy.every or chain_bytes + patch.nbytes > policy.max_chain_ratio * full_size:
            patch = encode(base, target, encoding="full")
    return patch, target


def _reshaped(name, target, previous, parent_id, encoding, low_rank) -> bool:
    """Whether ``target`` has another shape or dtype than the parent's group (a resized embedding,
    a cast to half precision): no patch relates the two, so the new value is stored whole, as a
    new parameter is (and later patches build on it); refused when another encoding or low-rank
    factors were asked for."""
    if list(target.shape) == previous.shape and dtype_of(target) == previous.dtype:
        return False
    if encoding not in ("auto", "full") or name in low_rank:
        raise InvalidParameterError(
            f"parameter {name!r} is {dtype_of(target)}{list(target.shape)} but {previous.dtype}{previous.shape} "
            f"in the parent {parent_id[:12]}: a change of shape or dtype is stored whole (encoding auto or "
            f"full), not as {'low-rank factors' if name in low_rank else repr(encoding)}")
    return True


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """A refusal of ``name``'s low-rank factors, prefixed with the parameter's name."""
    try:
        yield
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"parameter {name!r}: {exc}") from None


def dtype_of(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")
