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

:func:`merge` and the checks of its inputs are here; the rest is one module each:
:mod:`.fishers` (Fishers stored with a version, given to a merge, read per group), :mod:`.groups`
(each parameter group merged and stored as a patch), :mod:`.direct` (the patch-direct path) and
:mod:`.receipts` (:func:`receipt_check`, :class:`RecordedFisher`).
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
from provenance.history import History, numel
from provenance.ledger import LedgerStore
from provenance.merges.fishers import (
    fisher_norms,
    fisher_rows,
    fisher_sources,
    given_fishers,
    load_fisher,
    store_fisher,
)
from provenance.merges.groups import kept_groups, merge_groups
from provenance.merges.receipts import RecordedFisher, receipt_check
from provenance.objects import new_objects
from provenance.records import VersionRecord, check_merge_options, check_utf8

KERNEL_VERSION = f"provenance {__version__} kernels.merge"


def merge(
    ledger: LedgerStore,
    versions: Sequence[str | VersionRecord],
    *,
    method: str = "fisher",
    weights: Sequence[float] | None = None,
    base: str | VersionRecord | None = None,
    fisher: Mapping[str, Mapping[str, torch.Tensor]] | Sequence[Mapping[str, torch.Tensor]] | None = None,
    eps: float | None = None,
    normalize: bool | None = None,
    density: float | None = None,
    message: str,
    author: str | None = None,
    audit: str | None = None,
    device: str | torch.device | None = None,
    progress: Any = None,
    also: Callable[[Any, VersionRecord], None] | None = None,
    run_gate: Callable[[], str] | None = None,
) -> VersionRecord:
    """Merge ``versions`` into a new version whose parents are all of them; see the module doc.
    ``progress`` (``start(description, total)``, ``advance(bytes)``) is told the bytes merged;
    ``also(tx, version)`` writes rows that must land in the version's own transaction.
    ``run_gate()`` runs the pre-merge gate once the options, inputs, base and Fishers have passed
    their checks, before any group is merged; it returns the id of the audit the merge cites (it
    raises when the gate fails). A merge refused for its options ran no gate: it stored an audit.

    ``device``: where the kernels run (default the CPU). With a CUDA device each group's inputs
    and Fishers are moved there and merged by the Triton kernels (the dispatcher picks them for
    CUDA tensors), the result is brought back to be stored; inputs that are sparse or low-rank
    patches of one parent are merged there by the fused kernel of
    :func:`provenance.kernels.merge_patches.merge_patches`, which makes them in registers.

    ``fisher`` gives, per input (a sequence in input order, or a mapping from version ref), the
    diagonal Fisher per parameter name; when omitted the Fisher stored with each version is used.
    ``base`` is the version task vectors start from (task_arithmetic, ties; default: the first
    parent the inputs share). ``eps`` (default 1e-6) and ``normalize`` (default False) are the
    Fisher merge's, ``density`` (default 0.2) is TIES's: a method that does not use one refuses it.
    """
    how = methods.get(method)
    weights = check_merge_options(versions, weights, eps, normalize, density)
    eps, normalize, density = _method_options(how, eps=eps, normalize=normalize, density=density)
    if base is not None and not how.needs_base:  # it was ignored, a ref that names nothing included
        using = ", ".join(n for n in methods.names() if methods.get(n).needs_base)
        raise InvalidParameterError(f"base= is the version task vectors start from ({using}); the {method} method "
                                    "does not use one")
    if fisher is not None and not how.needs_fisher:  # it was ignored: the merge was not the Fisher merge asked for
        using = ", ".join(n for n in methods.names() if methods.get(n).needs_fisher)
        raise InvalidParameterError(f"fisher= weighs each input's parameters ({using}); the {method} method does not "
                                    "use one")
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a merge needs a message")
    check_utf8(message, "the merge's message")
    if author is not None:
        check_utf8(author, "the merge's author")
    with ledger.session():
        inputs = [ledger.version(v) for v in versions]
        ids = [v.version_id for v in inputs]
        if len(set(ids)) != len(ids):
            first = {}
            for ref, vid in zip(versions, ids):
                if vid in first:
                    said, again = _given(first[vid]), _given(ref)
                    given = said if said == again else f"{said} and {again}"
                    raise InvalidParameterError(f"version {vid[:12]} is given twice ({given}); give it a larger weight "
                                                "instead")
                first[vid] = ref
        lam = _weights(weights, len(inputs))
        if audit is not None and run_gate is not None:
            raise InvalidParameterError("give gate=... (run the gate now) or audit=ID (cite one), not both")
        audit = _cited_audit(ledger, audit, ids) if audit is not None else None
        device = _device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidParameterError(f"device {device} asked for, but torch sees no CUDA device")
        base_id = _base(ledger, inputs, base) if how.needs_base else None
        history, store = History(ledger), ledger.object_store()
        names = _common_names(history, inputs)
        kept = kept_groups(history, ids[0], names)  # once (a comprehension called it once per name)
        averaged = [n for n in names if n not in kept]
        if base_id is not None:
            _base_has(history, base_id, method, history.manifest(ids[0]), averaged)
        with new_objects(store, ledger.object_writers) as added:  # removed again if the merge is refused
            if how.needs_fisher and fisher is not None:  # for this merge only: its receipt keeps the objects
                given = [fisher_rows(ledger, v, {n: f[n] for n in averaged}, added,
                                     where=f"the Fisher given for input {i} ({v.version_id[:12]}): ")[0]
                         for i, (v, f) in enumerate(zip(inputs, given_fishers(ledger, inputs, fisher, averaged)), 1)]
                fishers = fisher_sources(ledger, inputs, averaged, rows=[{r["name"]: r for r in g} for g in given])
            else:
                fishers = fisher_sources(ledger, inputs, averaged) if how.needs_fisher else None
            norms = fisher_norms(fishers, averaged) if how.needs_fisher and normalize else None
            if run_gate is not None:  # every check above passed: a refused merge stores no gate
                audit = _cited_audit(ledger, run_gate(), ids)
            params, receipt_params, kernel = merge_groups(history, store, ids, names, kept, method, fishers, lam, eps,
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


_OPTION_DEFAULTS = {"eps": 1e-6, "normalize": False, "density": 0.2}


def _method_options(how: Any, **given: Any) -> tuple[Any, ...]:
    """``given`` (eps, normalize, density) with the defaults where None, after refusing one given
    to a method that does not use it: ``density=0.5`` with a Fisher merge was dropped without a
    word, so the merge was not the one asked for. ``normalize=False`` is normalising nothing, and
    passes."""
    unused = [k for k, v in given.items() if v is not None and k not in how.options and not (k == "normalize" and v is False)]
    if unused:
        users = [", ".join(n for n in methods.names() if k in methods.get(n).options) for k in unused]
        raise InvalidParameterError(f"{'; '.join(f'{k}= is for {u}' for k, u in zip(unused, users))}: the {how.name} "
                                    f"method does not use {'it' if len(unused) == 1 else 'them'}")
    return tuple(_OPTION_DEFAULTS[k] if v is None else v for k, v in given.items())


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
    if found.type == "cpu" and found.index not in (None, 0):  # torch takes it, and runs on the one CPU
        raise InvalidParameterError(f"device {device!r}: the CPU has no numbered devices; give cpu")
    if found.type == "cuda" and found.index is not None and torch.cuda.is_available() \
            and found.index >= torch.cuda.device_count():
        raise InvalidParameterError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                                    f"numbered from 0")
    return found


def _given(ref: Any) -> str:
    """A version as the caller gave it: a record by its short id, a tag or an id as written."""
    return ref.version_id[:12] if isinstance(ref, VersionRecord) else repr(str(ref))


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    lam = [float(w) for w in weights]
    if len(lam) != n:
        raise InvalidParameterError(f"{len(lam)} weights for {n} versions: give one per version, in their order")
    if not all(math.isfinite(w) and 0 <= w <= MAX_WEIGHT for w in lam) or sum(lam) <= 0:
        # the kernels weigh in float32 and sum the weights as they go: 1e308 twice overflowed to inf
        # and silently gave the first input back
        raise InvalidParameterError(f"weights must be finite, >= 0, at most {MAX_WEIGHT:g} and not all 0, got {lam}")
    tiny = next((w for w in lam if 0 < w < MIN_WEIGHT), None)
    if tiny is not None:
        # in float32 it rounds to 0 (1e-300) or to a denormal (1e-40): weights of 1e-300 each made a TIES merge
        # the base and a Fisher merge the plain average, with the weights' ratios, all that counts, equal
        raise InvalidParameterError(f"weight {tiny:g} is below {MIN_WEIGHT:g}, the smallest a merge takes besides 0 "
                                    f"(the kernels weigh in float32); scale every weight up (averaging, Fisher "
                                    f"merging and TIES use only their ratios), or give 0 to leave an input out, got "
                                    f"{lam}")
    return lam


#: The largest merge weight taken (averaging and Fisher merging use only the weights' ratios).
MAX_WEIGHT = 1e12
#: The smallest positive merge weight taken: smaller ones underflow in the kernels' float32.
MIN_WEIGHT = 1e-12


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


def _base_has(history: History, base_id: str, method: str, inputs: Mapping[str, Any], averaged: list[str]) -> None:
    """Refuse a base that lacks one of the ``averaged`` groups of the inputs (``inputs``: the first
    input's manifest) or holds one in another shape or dtype: its task vector has nothing to start
    from. The groups kept as they are (integers, booleans, FP8) read no base: a step counter the
    inputs added was refused as if task vectors needed it, though a base holding it as int32 was
    taken. (A
    vocabulary the inputs resized, or a cast to half precision, failed in the kernel with "base has
    shape (4, 3), thetas[0] (5, 3)", naming no parameter; from the command line, a traceback.)"""
    manifest = history.manifest(base_id)
    have = {n for n, p in manifest.items() if p.encoding != "removed"}
    for n in averaged:
        if n in have and (manifest[n].shape, manifest[n].dtype) != (inputs[n].shape, inputs[n].dtype):
            raise InvalidParameterError(
                f"parameter {n!r} is {inputs[n].dtype}{inputs[n].shape} in the inputs but {manifest[n].dtype}"
                f"{manifest[n].shape} in the base {base_id[:12]}: {method} needs the base's value in the inputs' "
                "shape and dtype to make task vectors; merge with average or fisher, or give a base that has it so")
    missing = [n for n in averaged if n not in have]
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
        if set(other) != set(first):  # which side holds each: "different parameters: h" said neither
            sides = [(inputs[0], sorted(set(first) - set(other))), (v, sorted(set(other) - set(first)))]
            said = "; ".join(f"only {side.version_id[:12]} has {', '.join(map(repr, names[:5]))}"
                             f"{f' and {len(names) - 5} more' if len(names) > 5 else ''}" for side, names in sides if names)
            raise InvalidParameterError(
                f"versions {inputs[0].version_id[:12]} and {v.version_id[:12]} have different parameters: {said}"
            )
        for n, p in other.items():
            if (p.shape, p.dtype) != (first[n].shape, first[n].dtype):
                raise InvalidParameterError(
                    f"parameter {n!r} is {p.dtype}{p.shape} in {v.version_id[:12]} but "
                    f"{first[n].dtype}{first[n].shape} in {inputs[0].version_id[:12]}"
                )
    return sorted(first)


__all__ = ["KERNEL_VERSION", "MAX_WEIGHT", "MIN_WEIGHT", "RecordedFisher", "load_fisher", "merge", "receipt_check", "store_fisher"]
