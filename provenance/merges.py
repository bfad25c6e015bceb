"""Merges as versions: Fisher merging, weighted averaging, task arithmetic and TIES over whole
versions, one parameter group at a time, with a receipt that makes the merge again.

A merge reads, per parameter group, the group's value in every input version (replaying each
one's patches), the Fisher of each input where the method needs it, and writes the merged value
as a patch on the first input. Peak memory is a small multiple of the largest group: the inputs
and their Fishers for that group, and the output. The new version's parents are all the inputs;
its receipt (``merge_receipts``) holds the method, the weights, eps, normalisation, density, the
kernel that ran, and every input and Fisher object address, so :func:`remerge` can recompute the
tensors and compare them bit for bit.

Merging versions stored as LoRA (low-rank) patches merges their values ``base + scale · B @ A``,
never the factors A and B separately. Where every input stores a group as a patch on one shared
parent (sparse, low-rank or unchanged: contributors' patches on one base), an elementwise merge
never materialises the inputs: sparse patches are merged on the union of the positions they
change, and low-rank ones block of rows by block, each input's rows made from the parent's rows
and its factors just before they are merged; either way bit for bit the whole-tensor merge.

The Fisher of a version is stored beside its patch by :func:`store_fisher`: the full diagonal, or
with ``keep`` a top-k sketch (the largest ``keep`` fraction of entries; the others read as 0,
which the merge's floor ``eps`` then covers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
import xxhash

from provenance import __version__
from provenance import merge as methods
from provenance.errors import InvalidParameterError, NotFoundError
from provenance.history import History, materialize, numel
from provenance.kernels.dispatch import pick
from provenance.kernels.finite import is_finite
from provenance.kernels.merge import FLOAT_DTYPES, settle_nonfinite
from provenance.kernels.merge_patches import merge_patches
from provenance.kernels.patch import apply_chain
from provenance.ledger import LedgerStore
from provenance.objects import NewObjects, ObjectStore, address_of, new_objects
from provenance.patches import encode
from provenance.records import ParamRecord, VersionRecord, check_utf8

KERNEL_VERSION = f"provenance {__version__} kernels.merge"


def store_fisher(
    ledger: LedgerStore, version: str | VersionRecord, fisher: Mapping[str, torch.Tensor], *, keep: float | None = None,
    meta: Mapping[str, Any] | None = None, update: bool = False,
) -> int:
    """Store the diagonal Fisher of ``version`` (parameter name -> tensor of the parameter's shape);
    returns the bytes of the tensors stored. With ``keep`` in (0, 1], only the largest ``keep``
    fraction of each tensor's entries is kept (a top-k sketch).

    It replaces the Fisher stored for the version before, every parameter of it (one estimate,
    never a mix of two); with ``update=True`` only the parameters given are replaced, the others
    kept (a Fisher stored a few parameters at a time). Merges made with the Fisher replaced keep
    theirs: their receipts hold the objects they read."""
    ver = ledger.version(version)
    with ledger.session(), new_objects(ledger.object_store(), ledger.object_writers) as added:
        rows, stored = _fisher_rows(ledger, ver, fisher, added, keep=keep, meta=meta)
        with ledger.transaction() as tx:
            tx.set_fishers(ver.version_id, rows, replace_all=not update)
    return stored


def _fisher_rows(ledger: LedgerStore, ver: VersionRecord, fisher: Mapping[str, torch.Tensor], added: NewObjects, *,
                 keep: float | None = None, meta: Mapping[str, Any] | None = None, where: str = ""
                 ) -> tuple[list[dict], int]:
    """``fisher`` checked against ``ver``'s manifest and written to the object store (through
    ``added``, the write's new objects): the rows ``name, kind, objects, meta`` that record it,
    and the bytes of the tensors. ``where`` begins a refusal's message (which Fisher it is)."""
    manifest = {n: p for n, p in ledger.manifest(ver).items() if p.encoding != "removed"}
    unknown = sorted(set(fisher) - set(manifest))
    if unknown:
        raise InvalidParameterError(f"Fisher given for parameters not in version {ver.version_id[:12]}: {', '.join(unknown)}")
    if keep is not None and not 0 < keep <= 1:
        raise InvalidParameterError(f"keep must be in (0, 1], got {keep!r}")
    rows, stored = [], 0
    for name in sorted(fisher):
        f = fisher[name]
        if not isinstance(f, torch.Tensor) or list(f.shape) != manifest[name].shape:
            shape = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise InvalidParameterError(f"{where}Fisher of {name!r} is {shape}, the parameter is {manifest[name].shape}")
        if f.is_complex():
            raise InvalidParameterError(f"{where}Fisher of {name!r} is {str(f.dtype).removeprefix('torch.')}: a "
                                        "Fisher holds real, non-negative values")
        f = f.detach().to("cpu")
        wide = f.dtype == torch.float64  # its values may lie beyond float32's range: checked as given
        if not wide:
            f = f.to(torch.float32).contiguous()  # (FP8 has no isfinite or comparisons of its own)
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise InvalidParameterError(f"{where}Fisher of {name!r} holds negative, NaN or Inf values")
        f = f.to(torch.float32).contiguous()
        if wide and not bool(torch.isfinite(f).all()):
            raise InvalidParameterError(f"{where}Fisher of {name!r} holds values beyond float32's range (it is stored "
                                        "as float32): scale it down; a merge uses only its ratios")
        if keep is None or keep == 1 or f.numel() == 0:
            tensors, kind = {"full": f}, "full"
        else:
            k = max(1, math.ceil(keep * f.numel()))
            values, indices = torch.topk(f.reshape(-1), k, sorted=False)
            order = torch.argsort(indices)
            tensors, kind = {"indices": indices[order].to(torch.int64), "values": values[order]}, "topk"
        objects = {role: added.put(t).address for role, t in tensors.items()}
        stored += sum(t.numel() * t.element_size() for t in tensors.values())
        rows.append({"name": name, "kind": kind, "objects": objects, "meta": dict(meta or {}, keep=keep)})
    return rows, stored


def load_fisher(ledger: LedgerStore, version: str | VersionRecord, name: str) -> torch.Tensor | None:
    """The stored Fisher of one parameter of ``version`` (a top-k sketch filled with 0), or None."""
    ver = ledger.version(version)
    row = ledger.fishers(ver).get(name)
    if row is None:
        return None
    return _fisher_tensor(ledger.object_store(), row, ledger.manifest(ver)[name].shape)


def _fisher_tensor(store: ObjectStore, row: dict, shape: list[int]) -> torch.Tensor:
    if row["kind"] == "full":
        return store.get(row["objects"]["full"])
    out = torch.zeros(numel(shape), dtype=torch.float32)
    out[store.get(row["objects"]["indices"])] = store.get(row["objects"]["values"])
    return out.reshape(shape)


def merge(
    ledger: LedgerStore,
    versions: Sequence[str | VersionRecord],
    *,
    method: str = "fisher",
    weights: Sequence[float] | None = None,
    base: str | VersionRecord | None = None,
    fisher: Mapping[str, Mapping[str, torch.Tensor]] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    eps: float = 1e-6,
    normalize: bool = False,
    density: float = 0.2,
    message: str,
    author: str | None = None,
    audit: str | None = None,
    device: str | torch.device | None = None,
    progress: Any = None,
    also: Callable[[Any, VersionRecord], None] | None = None,
) -> VersionRecord:
    """Merge ``versions`` into a new version whose parents are all of them; see the module doc.
    ``progress`` (``start(description, total)``, ``advance(bytes)``) is told the bytes merged;
    ``also(tx, version)`` writes rows that must land in the version's own transaction.

    ``device``: where the kernels run (default the CPU). With a CUDA device each group's inputs
    and Fishers are moved there and merged by the Triton kernels (the dispatcher picks them for
    CUDA tensors), the result is brought back to be stored; inputs that are sparse or low-rank
    patches of one parent are merged there by the fused kernel of
    :func:`provenance.kernels.merge_patches.merge_patches`, which makes them in registers.

    ``fisher`` gives, per input (a sequence in input order, or a mapping from version ref), the
    diagonal Fisher per parameter name; when omitted the Fisher stored with each version is used.
    ``base`` is the version task vectors start from (task_arithmetic, ties; default: the first
    parent the inputs share).
    """
    how = methods.get(method)
    if base is not None and not how.needs_base:  # it was ignored, a ref that names nothing included
        using = ", ".join(n for n in methods.names() if methods.get(n).needs_base)
        raise InvalidParameterError(f"base= is the version task vectors start from ({using}); the {method} method "
                                    "does not use one")
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a merge needs a message")
    check_utf8(message, "the merge's message")
    if author is not None:
        check_utf8(author, "the merge's author")
    with ledger.session():
        inputs = [ledger.version(v) for v in versions]
        if not inputs:
            raise InvalidParameterError("merge needs at least one version")
        ids = [v.version_id for v in inputs]
        if len(set(ids)) != len(ids):
            raise InvalidParameterError("a version is given twice; give it a larger weight instead")
        lam = _weights(weights, len(inputs))
        audit = _cited_audit(ledger, audit, ids) if audit is not None else None
        device = _device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidParameterError(f"device {device} asked for, but torch sees no CUDA device")
        base_id = _base(ledger, inputs, base) if how.needs_base else None
        history, store = History(ledger), ledger.object_store()
        names = _common_names(history, inputs)
        if base_id is not None:
            _base_has(history, base_id, names, method)
        kept = _kept_groups(history, ids[0], names)  # once (a comprehension called it once per name)
        averaged = [n for n in names if n not in kept]
        with new_objects(store, ledger.object_writers) as added:  # removed again if the merge is refused
            if how.needs_fisher and fisher is not None:  # for this merge only: its receipt keeps the objects
                given = [_fisher_rows(ledger, v, {n: f[n] for n in averaged}, added,
                                      where=f"the Fisher given for input {i} ({v.version_id[:12]}): ")[0]
                         for i, (v, f) in enumerate(zip(inputs, _given_fishers(ledger, inputs, fisher, averaged)), 1)]
                fishers = _fisher_sources(ledger, inputs, averaged, rows=[{r["name"]: r for r in g} for g in given])
            else:
                fishers = _fisher_sources(ledger, inputs, averaged) if how.needs_fisher else None
            norms = _norms(fishers, averaged) if how.needs_fisher and normalize else None
            params, receipt_params, kernel = _merge_groups(history, store, ids, names, kept, method, fishers, lam, eps,
                                                           norms, density, base_id, device, progress, added)
            created = datetime.now(timezone.utc).replace(tzinfo=None)
            h = xxhash.xxh3_128(f"merge|{ids}|{method}|{lam}|{message}|{created.isoformat()}|".encode())
            for p in params:
                h.update(p.model_dump_json().encode())
            version = VersionRecord(
                version_id=h.hexdigest(), parents=ids, message=message, author=author, created_at=created,
                n_params=len(params), n_elements=sum(numel(p.shape) for p in params),
                full_bytes=sum(numel(p.shape) * torch.empty((), dtype=getattr(torch, p.dtype)).element_size()
                               for p in params),
                stored_bytes=sum(p.nbytes for p in params),
            )
            receipt = {
                "version_id": version.version_id, "method": method, "inputs": ids, "weights": lam,
                "base_version": base_id,
                **how.receipt_options(eps=eps, normalize=normalize, density=density),
                "kernel": f"{kernel or 'torch'} ({KERNEL_VERSION})",
                "params_json": json.dumps(receipt_params, sort_keys=True), "audit_id": audit, "created_at": created,
            }
            with ledger.transaction() as tx:
                if audit is not None and not tx.has_audit(audit):  # deleted meanwhile
                    raise NotFoundError(f"audit {audit[:12]}, cited, was deleted while the merge ran; nothing merged")
                tx.insert_version(version, params)
                tx.insert_receipt(receipt)
                if also is not None:  # rows that must land with the version or not at all (a retraction's result)
                    also(tx, version)
    return version


def _cited_audit(ledger: LedgerStore, audit: str, ids: list[str]) -> str:
    """The full id of the pre-merge gate ``audit`` (an id or prefix) that a merge of ``ids``
    cites: a stored gate of exactly these versions (a failed one may be cited: the receipt says
    which it was), else an error. The receipt keeps the full id, so that the audit's report stays
    (``prov audit delete`` refuses to delete what a receipt cites)."""
    row = ledger.audit(audit)
    name = row["audit_id"][:12]
    if row["kind"] != "merge":
        raise InvalidParameterError(f"audit {name} is a {row['kind']} audit; a merge cites a pre-merge gate "
                                    "(prov audit merge) of its inputs")
    audited = row["report"].get("versions") or []
    if sorted(audited) != sorted(ids):
        raise InvalidParameterError(
            f"audit {name} is the pre-merge gate of {', '.join(v[:12] for v in audited)}, not of this merge's inputs "
            f"{', '.join(v[:12] for v in ids)}; run the gate on them (--gate) or cite theirs")
    return row["audit_id"]


def _device(device: str | torch.device | None) -> torch.device:
    """Where a merge runs: the CPU (default) or a CUDA device."""
    if device is None:
        return torch.device("cpu")
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidParameterError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if found.type not in ("cpu", "cuda"):
        raise InvalidParameterError(f"device {device!r}: merges run on the CPU or a CUDA device")
    return found


def _merge_groups(history, store, ids, names, kept, method, fishers, lam, eps, norms, density, base_id, device,
                  progress, added):
    """Every group merged and its patch against the first input stored: the manifest rows, the
    receipt's per-group record (inputs, Fishers read, result) and the kernel that ran."""
    params, receipt_params, kernel = [], {}, None
    if progress is not None:
        progress.start("merge", None)
    with added.background() as writer:
        for name in names:
            direct = _patch_direct(history, store, ids, name, method, base_id) if name not in kept else None
            if name in kept:  # integers, booleans, FP8: not averaged, kept when every input agrees
                thetas = [materialize(history, store, vid, name)[0] for vid in ids]
                merged, fisher_objects = _kept_value(name, thetas, ids), None
                first, input_addresses = thetas[0], [address_of(t) for t in thetas]
            elif direct is not None:  # patches of one parent: never materialise the inputs
                merged, fisher_objects, first = _merge_direct(direct, method, name, fishers, lam, eps, norms, device)
                input_addresses = None
            else:
                thetas = [materialize(history, store, vid, name)[0] for vid in ids]
                merged, fisher_objects = _merge_group(
                    method, name, thetas, fishers, lam, eps, norms, density, history, store, base_id, device, ids
                )
                first, input_addresses = thetas[0], [address_of(t) for t in thetas]
            kernel = kernel or pick(torch.empty(0, device=device))
            merged, inputs = _settled(merged, method, name, history, store, ids, fishers, lam, eps, norms) \
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


def _settled(merged, method, name, history, store, ids, fishers, lam, eps, norms):
    """``merged``, and the inputs' values when it holds NaN or Inf (else None): an average's or a
    Fisher merge's elements that the running mean left NaN or Inf are then set to the value that
    does not depend on the inputs' order (:func:`settle_nonfinite`), on the merge and its re-run."""
    if is_finite(merged):
        return merged, None
    inputs = [materialize(history, store, vid, name)[0] for vid in ids]
    how = methods.get(method)
    if how.weighted_mean:
        fs = _group_fishers(fishers, name, lambda t: t.contiguous())[0] if how.needs_fisher else None
        merged = merged.contiguous()
        settle_nonfinite(merged, [t.contiguous() for t in inputs], lam, fishers=fs, eps=eps, norms=norms)
    return merged, inputs


def _kept_groups(history: History, vid: str, names: list[str]) -> set[str]:
    """The groups whose dtype a merge does not average (integers, booleans, FP8): position ids,
    step counters, masks. They are kept as they are when every input holds the same value."""
    manifest = history.manifest(vid)
    return {n for n in names if getattr(torch, manifest[n].dtype) not in FLOAT_DTYPES}


def _kept_value(name: str, thetas: list[torch.Tensor], ids: list[str]) -> torch.Tensor:
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


def _merge_group(method, name, thetas, fishers, lam, eps, norms, density, history, store, base_id,
                 device: torch.device | None = None, ids: Sequence[str] | None = None):
    """One parameter group merged (on ``device``, returned on the CPU), and the Fisher objects it
    read (``ids``: the inputs' version ids, to name one that holds NaN or Inf)."""
    how, on = methods.get(method), _mover(device)
    thetas = [on(t) for t in thetas]
    fs, addresses = _group_fishers(fishers, name, on) if how.needs_fisher else (None, None)
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


def _patch_direct(history, store, ids, name, method, base_id):
    """When every input stores ``name`` as a sparse or low-rank patch (or unchanged) on one shared
    parent, that parent's value and each input's patch, ``("sparse", indices, values)`` or
    ``("low_rank", B, A, scale)``: an elementwise merge can then make each input's value from the
    parent and its patch as it goes, never holding the inputs whole. None otherwise."""
    if not methods.get(method).direct or len(ids) < 2:
        return None
    parents = {history.parent(v) for v in ids}
    rows = [history.manifest(v)[name] for v in ids]
    if len(parents) != 1 or None in parents or any(r.encoding not in ("sparse", "low_rank", "unchanged") for r in rows):
        return None
    parent = parents.pop()
    if methods.get(method).needs_base and parent != base_id:
        return None
    theta0 = materialize(history, store, parent, name)[0]
    patches = []
    for r in rows:
        if r.encoding == "unchanged":
            patches.append(("sparse", torch.zeros(0, dtype=torch.int64), theta0.new_empty(0)))
        elif r.encoding == "sparse":
            patches.append(("sparse", store.get(r.objects["indices"]).long(), store.get(r.objects["values"])))
        else:
            patches.append(("low_rank", store.get(r.objects["B"]), store.get(r.objects["A"]), r.meta["scale"]))
    return theta0, patches


def _merge_direct(direct, method, name, fishers, lam, eps, norms, device: torch.device):
    """A group whose inputs are all patches on one parent, merged without materialising them:
    on the union of the changed positions when every patch is sparse, else by
    :func:`provenance.kernels.merge_patches.merge_patches`, on ``device``. Returns the merged
    value, the Fisher objects read, and the first input (on the CPU; the new patch is encoded
    against it)."""
    if all(p[0] == "sparse" for p in direct[1]):
        return _merge_sparse(direct, method, name, fishers, lam, eps, norms, device)
    return _merge_patched(direct, method, name, fishers, lam, eps, norms, device)


def _merge_sparse(direct, method, name, fishers, lam, eps, norms, device=None):
    """The elementwise merge on the union of the inputs' changed positions, the parent elsewhere
    (bit for bit what merging the whole tensors gives: every input equals the parent there, and a
    merge of equal values returns that value exactly). Also returns the first input's value."""
    theta0, patches = direct
    flat0 = theta0.reshape(-1)
    union = torch.unique(torch.cat([idx for _, idx, _ in patches]))
    thetas_u = []
    for _, idx, values in patches:
        t = flat0[union].clone()
        t[torch.searchsorted(union, idx)] = values
        thetas_u.append(t)
    how, on = methods.get(method), _mover(device)
    thetas_u = [on(t) for t in thetas_u]
    fs, fisher_objects = (_group_fishers(fishers, name, lambda f: on(f.reshape(-1)[union].contiguous()))
                          if how.needs_fisher else (None, None))
    theta0_u = on(flat0[union].clone()) if how.needs_base else None
    merged_u = how.merge(thetas_u, lam=lam, theta0=theta0_u, fishers=fs, eps=eps, norms=norms)
    merged = flat0.clone()
    merged[union] = merged_u.cpu()
    first = flat0.clone()
    first[patches[0][1]] = patches[0][2]
    return merged.reshape(theta0.shape), fisher_objects, first.reshape(theta0.shape)


def _merge_patched(direct, method, name, fishers, lam, eps, norms, device=None):
    """The elementwise merge of a group whose inputs are low-rank or sparse patches on one parent,
    by :func:`provenance.kernels.merge_patches.merge_patches`. On the CPU each input's rows are
    made from the parent's rows and its patch, block by block (bit for bit the merge of the
    materialised inputs); on a CUDA device the fused Triton kernel makes them in registers from
    the factors (``exact=False``: ``B @ A`` is never made; within float32 rounding of the CPU
    result, and bit for bit the same on a re-run there). Also returns the first input (the new
    patch is encoded against it) and the Fisher objects read."""
    theta0, patches = direct
    on = _mover(device)
    fs, fisher_objects = None, None
    if methods.get(method).needs_fisher:
        fs, fisher_objects = _group_fishers(fishers, name, lambda f: on(f.reshape(theta0.shape)))
    given = [None if p[0] == "sparse" and not p[1].numel() else p for p in patches]
    moved = [None if p is None else tuple(on(t) if isinstance(t, torch.Tensor) else t for t in p) for p in given]
    merged = merge_patches(on(theta0), moved, lam, method=method, fishers=fs, eps=eps, norms=norms,
                           exact=device is None or device.type == "cpu").cpu()
    first = theta0.clone() if given[0] is None else apply_chain(theta0, [given[0]])
    return merged, fisher_objects, first


def _group_fishers(fishers, name: str, prepare) -> tuple[list[torch.Tensor], list]:
    """Each input's Fisher of group ``name`` passed through ``prepare`` (a slice, a reshape, a move
    to the merge's device), and the object addresses they were read from."""
    fs, addresses = [], []
    for source in fishers:
        f, address = source(name)
        fs.append(prepare(f))
        addresses.append(address)
    return fs, addresses


def _mover(device: torch.device | None):
    """A function that puts a tensor on ``device`` (the identity for the CPU)."""
    return (lambda t: t) if device is None or device.type == "cpu" else (lambda t: t.to(device))


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    lam = [float(w) for w in weights]
    if len(lam) != n:
        raise InvalidParameterError(f"{len(lam)} weights for {n} versions")
    if not all(math.isfinite(w) and 0 <= w <= MAX_WEIGHT for w in lam) or sum(lam) <= 0:
        # the kernels weigh in float32 and sum the weights as they go: 1e308 twice overflowed to inf
        # and silently gave the first input back
        raise InvalidParameterError(f"weights must be finite, >= 0, at most {MAX_WEIGHT:g} and not all 0, got {lam}")
    return lam


#: The largest merge weight taken (averaging and Fisher merging use only the weights' ratios).
MAX_WEIGHT = 1e12


def _base(ledger: LedgerStore, inputs: list[VersionRecord], base) -> str:
    """The version task vectors start from: ``base``, which must be an ancestor of every input
    (the merge is made of its values, and lineage, taint and the licences reach it only through
    the inputs), else the inputs' shared first parent."""
    if base is not None:
        base_id = ledger.version(base).version_id
        for v in inputs:
            if base_id not in {a.version_id for a in ledger.ancestors(v)}:
                raise InvalidParameterError(
                    f"base {base_id[:12]} is not an ancestor of input {v.version_id[:12]}: the merge would be made of "
                    "its values while its data stayed out of the merge's lineage; give a version the inputs were "
                    "trained from")
        return base_id
    firsts = {v.parents[0] if v.parents else None for v in inputs}
    if len(firsts) != 1 or None in firsts:
        raise InvalidParameterError("the inputs do not share a first parent: give base= (the version their task vectors start from)")
    return firsts.pop()


def _base_has(history: History, base_id: str, names: list[str], method: str) -> None:
    """Refuse a base that lacks a parameter of the inputs: its task vector has nothing to start from."""
    have = {n for n, p in history.manifest(base_id).items() if p.encoding != "removed"}
    missing = [n for n in names if n not in have]
    if missing:
        raise InvalidParameterError(
            f"{len(missing)} parameter(s) of the inputs are not in the base {base_id[:12]} ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}): {method} needs each one's value there to make task vectors. A "
            "parameter the inputs added, or a tied weight (lm_head.weight) that save_pretrained stored once in the "
            "base while the inputs were committed from state_dict(), does this; merge with average or fisher, or "
            "commit the base with it")


def _common_names(history: History, inputs: list[VersionRecord]) -> list[str]:
    live = [{n: p for n, p in history.manifest(v.version_id).items() if p.encoding != "removed"} for v in inputs]
    first = live[0]
    for v, other in zip(inputs[1:], live[1:]):
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))
            raise InvalidParameterError(
                f"versions {inputs[0].version_id[:12]} and {v.version_id[:12]} have different parameters: {', '.join(diff[:5])}"
            )
        for n, p in other.items():
            if (p.shape, p.dtype) != (first[n].shape, first[n].dtype):
                raise InvalidParameterError(
                    f"parameter {n!r} is {p.dtype}{p.shape} in {v.version_id[:12]} but "
                    f"{first[n].dtype}{first[n].shape} in {inputs[0].version_id[:12]}"
                )
    return sorted(first)


def _given_fishers(ledger, inputs, fisher, names) -> list[Mapping[str, torch.Tensor]]:
    """The Fishers passed to a merge, in input order, checked to cover every parameter."""
    if isinstance(fisher, Mapping):
        keyed = {ledger.version(k).version_id: v for k, v in fisher.items()}
        missing = [v.version_id[:12] for v in inputs if v.version_id not in keyed]
        if missing:
            raise InvalidParameterError(f"no Fisher given for version(s) {', '.join(missing)}")
        given = [keyed[v.version_id] for v in inputs]
    else:
        given = list(fisher)
    if len(given) != len(inputs):
        raise InvalidParameterError(f"{len(given)} Fishers for {len(inputs)} versions")
    for v, f in zip(inputs, given):
        absent = [n for n in names if n not in f]
        if absent:
            raise InvalidParameterError(f"the Fisher of {v.version_id[:12]} lacks {', '.join(absent[:5])}")
    return given


def _fisher_sources(ledger, inputs, names, rows=None):
    """Per input, a function name -> (its stored Fisher tensor, the object addresses); ``rows``:
    per input, name -> ``{"kind", "objects"}`` to read instead of the Fishers stored with them."""
    store = ledger.object_store()
    stored = [ledger.fishers(v) for v in inputs] if rows is None else rows
    lacking = [v.version_id[:12] for v, rows in zip(inputs, stored) if not set(names) <= set(rows)]
    if lacking:
        raise InvalidParameterError(
            f"version(s) {', '.join(lacking)} have no stored Fisher for every parameter: store one with "
            "ledger.store_fisher(version, fisher) (docs/merging.md) or pass fisher=..., or merge by another method "
            "(--method average, task_arithmetic or ties)"
        )
    manifests = [ledger.manifest(v) for v in inputs]

    def source(rows, manifest):
        return lambda name: (_fisher_tensor(store, rows[name], manifest[name].shape), rows[name]["objects"])

    return [source(rows, m) for rows, m in zip(stored, manifests)]


def _norms(fishers, names) -> list[float]:
    """Per input, the L2 norm of its whole Fisher (all parameter groups)."""
    return [math.sqrt(sum(float(source(n)[0].double().square().sum()) for n in names)) or 1.0 for source in fishers]


def receipt_check(ledger: LedgerStore, version: str | VersionRecord) -> dict[str, bool]:
    """Re-run the merge a receipt records, group by group, from the recorded inputs, Fishers and
    settings, on the device type it ran on (a Triton merge needs a CUDA device); per parameter,
    whether the inputs still hash as recorded and the result is bit-identical to the merged tensor."""
    ver = ledger.version(version)
    receipt = ledger.receipt(ver)
    if receipt is None:
        raise InvalidParameterError(f"version {ver.version_id[:12]} is not a merge")
    device = torch.device("cuda") if receipt.kernel.startswith("triton") else None
    if device is not None and not torch.cuda.is_available():
        raise InvalidParameterError(f"the merge {ver.version_id[:12]} ran on a CUDA device ({receipt.kernel}); "
                                    "re-running it bit for bit needs one")
    recorded = receipt.groups
    inputs = [ledger.version(v) for v in receipt.inputs]
    ids, lam, method = receipt.inputs, list(receipt.weights), receipt.method
    history, store = History(ledger), ledger.object_store()
    names = sorted(recorded)
    how = methods.get(method)
    kept = _kept_groups(history, ids[0], names)
    averaged = [n for n in names if n not in kept]
    fishers = _fisher_sources(ledger, inputs, averaged, rows=_recorded_fishers(recorded, averaged, len(ids))) \
        if how.needs_fisher else None
    norms = _norms(fishers, averaged) if how.needs_fisher and receipt.normalize else None
    out = {}
    for name in names:
        recorded_inputs = recorded[name].inputs  # None: merged directly from the inputs' patches
        direct = _patch_direct(history, store, ids, name, method, receipt.base_version) \
            if recorded_inputs is None and device is not None and name not in kept else None
        if name in kept:
            thetas = [materialize(history, store, vid, name)[0] for vid in ids]
            same_inputs = [address_of(t) for t in thetas] == recorded_inputs
            merged, fisher_objects = _kept_value(name, thetas, ids), None
        elif direct is not None:  # on CUDA the direct path is the fused kernel's own rounding: re-run it
            merged, fisher_objects, _ = _merge_direct(direct, method, name, fishers, lam, receipt.eps, norms,
                                                      device)
            same_inputs = True
        else:  # on the CPU the direct paths are bit for bit the merge of the whole inputs: check that
            thetas = [materialize(history, store, vid, name)[0] for vid in ids]
            same_inputs = recorded_inputs is None or [address_of(t) for t in thetas] == recorded_inputs
            merged, fisher_objects = _merge_group(method, name, thetas, fishers, lam, receipt.eps, norms,
                                                  receipt.density, history, store, receipt.base_version,
                                                  device)
        results = {address_of(merged)}  # a merge made before non-finite elements were settled stored this
        if name not in kept:
            settled, inputs = _settled(merged, method, name, history, store, ids, fishers, lam, receipt.eps, norms)
            if inputs is not None:  # it held NaN or Inf: the settled result too (a finite one is hashed once)
                results.add(address_of(settled))
        same_fishers = fisher_objects == recorded[name].fishers
        out[name] = same_inputs and same_fishers and recorded[name].merged in results
    return out


class RecordedFisher(Mapping):
    """The Fisher of one input of a merge as its receipt records it (parameter name -> tensor,
    each read from the object store when asked for): what a re-merge without some inputs passes
    as ``fisher=``, so it merges with the same Fishers whatever is stored with the input now."""

    def __init__(self, ledger: LedgerStore, version: str | VersionRecord, input_version: str):
        receipt = ledger.receipt(version)
        if receipt is None:
            raise InvalidParameterError(f"version {ledger.version(version).version_id[:12]} is not a merge")
        index = receipt.inputs.index(ledger.version(input_version).version_id)
        manifest = ledger.manifest(input_version)
        self._store, self._shapes = ledger.object_store(), {n: manifest[n].shape for n in receipt.groups}
        self._rows = _recorded_fishers(receipt.groups, sorted(receipt.groups), len(receipt.inputs))[index]

    def __getitem__(self, name: str) -> torch.Tensor:
        return _fisher_tensor(self._store, self._rows[name], self._shapes[name])

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _recorded_fishers(recorded, names: list[str], n: int) -> list[dict[str, dict]]:
    """Per input, name -> ``{"kind", "objects"}`` of the Fisher objects a receipt records (read
    whatever Fisher is stored with the input now: a later one may have replaced it)."""
    rows: list[dict[str, dict]] = [{} for _ in range(n)]
    for name in names:
        for i, objects in enumerate(recorded[name].fishers or []):
            if objects:
                rows[i][name] = {"kind": "full" if "full" in objects else "topk", "objects": dict(objects)}
    return rows
