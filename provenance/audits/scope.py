"""What an audit reads: each target, a dataset or a version (everything in its lineage), resolved
to datasets and a scope of ``(dataset_id, shard_index)``, all under one fingerprint config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from provenance import columns
from provenance.errors import FingerprintMismatchError, InvalidParameterError, NotFoundError
from provenance.fingerprints import FingerprintConfig
from provenance.ledger import LedgerStore
from provenance.lineage import lineage
from provenance.records import A_TARGET, DatasetRecord, RegistrationResult, VersionRecord, check_ref, check_targets


def resolve_scope(ledger: LedgerStore, targets: Sequence[str]) -> tuple[list[dict[str, Any]], list[DatasetRecord], pa.Table]:
    """Each target, a dataset (``NAME`` or ``NAME@VERSION``) or a version (id, prefix or tag:
    everything in its lineage), as ``(what it was, datasets, scope table)``. The scope table has
    ``dataset_id, shard_index`` (null: the whole dataset). All datasets must share one
    fingerprint config: signatures made under different configs do not compare."""
    targets = check_targets(targets)
    described, rows = [], []
    for target in targets:
        kind, found = resolve_target(ledger, target)
        if not isinstance(target, str):  # a record the library returned: described by its id
            target = found.dataset_id if kind == "dataset" else found.version_id
        if kind == "dataset":
            described.append({"target": target, "kind": "dataset", "id": found.dataset_id})
            rows.append((found.dataset_id, None))
            continue
        lin = lineage(ledger, found)
        if not lin.shards.num_rows:
            named = found.label() if target == lin.version else f"{lin.version[:12]} ({target})"  # its tags, not its id twice
            raise InvalidParameterError(
                f"version {named} has an empty lineage: no run in its history recorded any data"
                + (f"; versions without a run: {', '.join(v[:12] for v in lin.unrecorded)}" if lin.unrecorded else "")
            )
        described.append({"target": target, "kind": "version", "id": lin.version, "label": found.label()})
        rows += [(s["dataset_id"], s["shard_index"]) for s in lin.shards.to_pylist()]
    whole = {d for d, s in rows if s is None}
    rows = sorted({(d, s) for d, s in rows if s is None or d not in whole}, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    datasets = [ledger.dataset(d) for d in sorted({d for d, _ in rows})]
    check_same_config(datasets)
    scope = pa.table({"dataset_id": columns.strings([r[0] for r in rows]),
                      "shard_index": columns.ints([r[1] for r in rows], pa.int32())})
    return described, datasets, scope


def resolve_target(ledger: LedgerStore, target: Any) -> tuple[str, Any]:
    """``("dataset", DatasetRecord)`` or ``("version", VersionRecord)`` for a target that may be
    either. ``dataset:NAME[@VERSION]`` and ``version:REF`` say which; a bare name that is both a
    dataset and a tag (or version id) is ambiguous and refused, naming both."""
    if isinstance(target, (DatasetRecord, RegistrationResult)):
        return "dataset", ledger.dataset(target)
    if isinstance(target, VersionRecord):
        return "version", ledger.version(target)
    check_ref(target, A_TARGET, (str,))  # a record of another kind included
    kind, sep, rest = target.partition(":")
    if sep and kind == "dataset":
        return "dataset", ledger.dataset(rest)
    if sep and kind == "version":
        return "version", ledger.version(rest)
    try:
        ds = ledger.dataset(target)
    except (NotFoundError, InvalidParameterError) as exc:
        if "@" in target and isinstance(exc, NotFoundError):  # no tag holds '@': NAME@N names a dataset's
            raise  # version, and its error says which versions NAME has
        ds = None
    try:
        ver = ledger.version(target)
    except NotFoundError as exc:
        if ds is None:
            raise NotFoundError(f"{target!r} is neither a dataset nor a version in the ledger ({exc})") from None
        return "dataset", ds
    if ds is not None:
        raise InvalidParameterError(
            f"{target!r} is ambiguous: it names dataset {ds.dataset_id} and version {ver.version_id[:12]}; "
            f"write dataset:{target} or version:{target}"
        )
    return "version", ver


def check_same_config(datasets: Sequence[DatasetRecord]) -> FingerprintConfig:
    """The one fingerprint config of ``datasets``, or an error naming two that differ."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.config_id != first.config_id:
            raise FingerprintMismatchError(
                f"datasets fingerprinted under different configs cannot be compared: {first.dataset_id} uses "
                f"{first.config_id} but {ds.dataset_id} uses {ds.config_id}; re-register one with the other's config"
            )
    return first.config
