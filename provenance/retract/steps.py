"""Carrying out one step of a plan: a ``remerge`` from the stored receipt, a ``rebase`` of the
tainted version's patch onto a clean version; each new version committed with its
``<tag>+retracted-<id>`` tags and the caller's rows in its own transaction.
"""

from __future__ import annotations

from typing import Any

from provenance import merge as methods
from provenance.errors import InvalidParameterError
from provenance.merges import RecordedFisher
from provenance.records import NAME_MAX
from provenance.retract.plans import Step


def retracted_tag(tag: str, retraction: str) -> str:
    """The tag of the version that replaces one tagged ``tag``: ``<tag>+retracted-<id>``, ``tag``
    cut short where the whole would pass the 128 characters of a tag (a longer one was set, and
    then refused by ``prov tag`` as invalid: it could not be moved)."""
    suffix = f"+retracted-{retraction}"
    return tag[:NAME_MAX - len(suffix)] + suffix


def _tags_in(tx: Any, step: Step, retraction: str, version: Any) -> None:
    for tag in step.tags:
        tx.set_tag(retracted_tag(tag, retraction), version.version_id)


def _recording(step: Step, retraction: str, also: Any) -> Any:
    """What a step's new version writes in its own transaction: its tags, then ``also``'s rows."""
    def record(tx: Any, version: Any) -> None:
        _tags_in(tx, step, retraction, version)
        if also is not None:
            also(tx, version)

    return record


def remerge(ledger: Any, step: Step, retraction: str, *, also: Any = None, progress: Any = None,
            replaced: dict[str, str] | None = None) -> Any:
    """Carry out a ``remerge`` step: merge its clean inputs again from the stored receipt (same
    method, the Fishers the receipt records for each input, the same base, eps, normalisation and density;
    the step's weights), and tag the result ``<tag>+retracted-<retraction>`` for each tag of the
    tainted version, in the merge's own transaction with ``also(tx, version)``. Each of the step's
    ``stand_ins`` is replaced by its step's result, from ``replaced`` (tainted version -> the
    version its step made). Returns the new version. A version with no receipt is refused: it
    cannot be made again, only retrained."""
    if step.action != "remerge":
        raise InvalidParameterError(f"step for {step.version_id[:12]} is a {step.action}, not a remerge")
    missing = [v for v in step.stand_ins if v not in (replaced or {})]
    if missing:
        raise InvalidParameterError(f"the re-merge of {step.version_id[:12]} takes the clean replacement of "
                                    f"{missing[0][:12]}, which its own step has not made yet: apply that step first")
    inputs = [(replaced or {}).get(v, v) if v in step.stand_ins else v for v in step.inputs]
    receipt = ledger.receipt(step.version_id)
    if receipt is None:
        raise InvalidParameterError(f"version {step.version_id[:12]} has no merge receipt: it cannot be re-merged "
                                    "without its tainted inputs; retrain it")
    options: dict[str, Any] = {"method": receipt.method, "weights": step.weights}
    if receipt.base_version is not None:
        options["base"] = receipt.base_version
    for name in ("eps", "normalize", "density"):
        if getattr(receipt, name) is not None:
            options[name] = getattr(receipt, name)
    if methods.get(receipt.method).needs_fisher:  # the Fishers the merge read, whatever is stored now
        options["fisher"] = {new: RecordedFisher(ledger, step.version_id, v) for new, v in zip(inputs, step.inputs)}
    old = ledger.version(step.version_id)
    dropped = ", ".join(d[:12] for d in step.dropped)
    swapped = ", ".join(f"{v[:12]} -> {(replaced or {})[v][:12]}" for v in step.stand_ins)
    return ledger.merge(inputs, message=f"{old.message} (retraction {retraction}: "
                        f"{'without ' + dropped if dropped else ''}{'; ' if dropped and swapped else ''}"
                        f"{'clean ' + swapped if swapped else ''})", also=_recording(step, retraction, also),
                        progress=progress, **options)


def rebase(ledger: Any, step: Step, onto: Any, retraction: str, *, also: Any = None) -> tuple[Any, list[str]]:
    """Carry out a ``rebase`` step: the tainted version's own stored patch, group by group,
    re-applied onto ``onto`` (the clean replacement of its parent, or its nearest clean
    ancestor) and committed as a child of it: an ``unchanged`` group takes ``onto``'s value, a
    ``sparse`` one its replacement values at its positions, a ``low_rank`` one its factors
    (stored again as low-rank). A group the version stored ``full`` (a dense update) is re-applied
    as its difference from the tainted parent: ``onto + (value - parent)`` for floating point
    (the task vector moved onto the clean version); an integer, boolean or FP8 group keeps
    ``onto``'s value where the version left the parent's unchanged, else it is carried over as it
    is and returned by name. Exact for the patch, approximate for the model. Tags and ``also(tx,
    version)`` land in the commit's transaction. Returns the new version and the names carried."""
    import torch

    from provenance.history import History, get_object, materialize
    from provenance.kernels.patch import apply_chain

    if step.action != "rebase":
        raise InvalidParameterError(f"step for {step.version_id[:12]} is a {step.action}, not a rebase")
    old = ledger.version(step.version_id)
    target = ledger.version(onto)
    history, store = History(ledger), ledger.object_store()
    onto_names = set(ledger.manifest(target))
    state, low_rank, carried = {}, {}, []
    for name, row in ledger.manifest(old).items():
        if row.encoding == "removed":
            continue
        if row.encoding != "full" and name not in onto_names:
            raise InvalidParameterError(f"cannot rebase {old.version_id[:12]} onto {target.version_id[:12]}: its "
                                        f"patch of {name!r} needs a value there, and {target.version_id[:12]} has none")
        t = {role: get_object(ledger, store, addr) for role, addr in row.objects.items()}
        if row.encoding == "unchanged":
            state[name] = materialize(history, store, target.version_id, name)[0]
        elif row.encoding == "sparse":
            base = materialize(history, store, target.version_id, name)[0]
            state[name] = apply_chain(base, [("sparse", t["indices"], t["values"])])
        elif row.encoding == "low_rank":
            base = materialize(history, store, target.version_id, name)[0]
            state[name] = apply_chain(base, [("low_rank", t["B"], t["A"], row.meta["scale"])])
            low_rank[name] = (t["B"], t["A"], row.meta["scale"])
        else:
            full = t["full"]
            parent = materialize(history, store, old.parents[0], name)[0] if old.parents and name in \
                history.manifest(old.parents[0]) else None
            base = materialize(history, store, target.version_id, name)[0] if name in onto_names else None
            if (parent is None or base is None or parent.shape != full.shape or base.shape != full.shape
                    or parent.dtype != full.dtype or base.dtype != full.dtype):  # resized or cast: carried whole
                state[name] = full
                carried.append(name)
            elif full.dtype.is_floating_point and full.element_size() >= 2 and full.dtype == base.dtype:
                state[name] = (base.double() + (full.double() - parent.double())).to(full.dtype)
            elif torch.equal(full, parent):
                state[name] = base
            else:
                state[name] = full
                carried.append(name)

    carried_note = f"; {len(carried)} dense group(s) carried from the tainted version" if carried else ""
    new = ledger.commit(state, parent=target, low_rank=low_rank, author=old.author, also=_recording(step, retraction, also),
                        patch_of_run=old.run_id,  # its patch's data: lineage and taint follow the run
                        message=f"{old.message} (retraction {retraction}: its patch rebased onto "
                                f"{target.version_id[:12]}; approximate{carried_note})")
    return new, carried
