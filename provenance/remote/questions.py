"""The questions asked of a served ledger, answered on the server: lineage, taint, retractions
and documents removed, the dedup, merge-gate and memorization audits and the stored audits (the
model card and a dedup audit's pairs file are made here from its answers). Mixed into
:class:`~provenance.remote.RemoteLedger`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from provenance.files import naming, table_format
from provenance.plain import utc_time
from provenance.records import (
    A_VERSION,
    RegistrationResult,
    VersionRecord,
    check_document_key,
    check_document_keys,
    check_gate_versions,
    check_retraction_id,
    check_target_names,
    check_targets,
    check_utf8,
)
from provenance.remote.transport import ref_of, segment
from provenance.results import DedupReport, GateReport, Lineage, MemorizationReport, TaintReport
from provenance.results.dedup import PAIR_SCHEMA
from provenance.wire import BUNDLE, ipc_to_table, unpack


def _near(near: Any) -> float | None:
    """``near`` checked as a local ledger checks it: the server's request model took ``"0.5"``
    and ``True`` for numbers (a local call refuses both)."""
    from provenance.audits.banding import check_threshold

    return None if near is None else check_threshold(near, "near")


def _utf8(**values: tuple[Any, str]) -> None:
    """Each text of ``values`` (name: (value, what it is)) given checked as a local ledger checks
    it: one that is not UTF-8 was a UnicodeEncodeError from the request's JSON, one that is not a
    string the request model's words ("body.key: Input should be a valid string")."""
    for value, what in values.values():
        if value is not None:
            check_utf8(value, what)


class RemoteQuestions:
    """Lineage, taint, retractions and audits over HTTP (``self`` is a
    :class:`~provenance.remote.RemoteLedger`)."""

    def lineage(self, version: str | VersionRecord) -> Lineage:
        data = self._call("GET", f"lineage/{self._version_part(version)}", accept=BUNDLE)
        meta, tables = unpack(data)
        return Lineage.model_validate({**meta, **tables})

    def model_card(self, version: str | VersionRecord, *, base_model: str | None = None) -> Any:
        """The version's Hugging Face model card, made here from the server's lineage and audits
        (:func:`provenance.model_card.model_card`); a base model is named only when given."""
        from provenance.model_card import model_card

        return model_card(self, version, base_model=base_model)

    def taint(self, *, dataset: Any = None, shard: str | int | None = None, key: str | None = None,
              text: str | None = None, near: float | None = None) -> TaintReport:
        near = _near(near)
        if key is not None:
            check_document_key(key)
        _utf8(text=(text, "the text"))
        check_target_names(dataset, shard)
        body = {"dataset": ref_of(dataset) if dataset is not None else None,
                "shard": str(shard) if shard is not None else None, "key": key, "text": text, "near": near}
        return TaintReport.model_validate(self._call("POST", "taint", json_body=body))

    def retract(self, *, reason: str, dataset: Any = None, shard: str | int | None = None, key: str | None = None,
                text: str | None = None, near: float | None = None, author: str | None = None) -> dict[str, Any]:
        near = _near(near)
        _utf8(reason=(reason, "the retraction's reason"), author=(author, "the retraction's author"),
              text=(text, "the text"))
        if key is not None:
            check_document_key(key)
        check_target_names(dataset, shard)
        body = {"reason": reason, "dataset": ref_of(dataset) if dataset is not None else None,
                "shard": str(shard) if shard is not None else None, "key": key, "text": text, "near": near,
                "author": author}
        return self._call("POST", "retractions", json_body=body)

    def retractions(self) -> list[dict[str, Any]]:
        return [_datetimes(r, "created_at") for r in self._call("GET", "retractions")]

    def retraction(self, retraction_id: str) -> dict[str, Any]:
        record = _datetimes(self._call("GET", f"retractions/{segment(check_retraction_id(retraction_id))}"), "created_at")
        record["results"] = [_datetimes(r, "applied_at") for r in record.get("results") or []]
        return record

    def apply_retraction(self, retraction: str, *, rebase: bool = False, progress: Any = None) -> list[dict[str, Any]]:
        return self._call("POST", f"retractions/{segment(check_retraction_id(retraction))}/apply", json_body={"rebase": rebase})

    def audit_retraction(self, retraction: str, *, samples: Any = None, **options: Any) -> dict[str, Any]:
        from provenance.audits import read_samples

        texts = None if samples is None else read_samples(samples) if isinstance(samples, (str, os.PathLike)) \
            else [str(t) for t in samples]
        return self._call("POST", f"retractions/{segment(check_retraction_id(retraction))}/audit",
                          json_body={"samples": texts, "options": options})

    def remove_documents(self, name: str, keys: Sequence[str], *, reason: str | None = None,
                         retraction: str | None = None) -> RegistrationResult:
        keys = check_document_keys(keys)
        _utf8(reason=(reason, "the removal's reason"))
        data = self._call("POST", f"datasets/{segment(name)}/remove",
                          json_body={"keys": keys, "reason": reason, "retraction": retraction})
        return RegistrationResult.model_validate(data)

    def audit_dedup(self, targets: Sequence[Any], *, progress: Any = None, pairs_file: Any = None,
                    **options: Any) -> DedupReport:
        """The dedup audit, run on the server; with ``pairs_file`` the pairs are written here as
        Parquet, or CSV for a name ending in ``.csv`` (read from the stored audit, or from the
        report when it stores nothing)."""
        out = self.output_path(pairs_file) if pairs_file is not None else None
        targets = check_targets(targets)
        body = {"targets": [ref_of(t) for t in targets], "options": options}
        report = DedupReport.model_validate(self._call("POST", "audits/dedup", json_body=body))
        if out is None:
            return report
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        if report.stored:
            table = self.audit_pairs(report.audit_id)
        else:
            table = pa.Table.from_pylist([p.model_dump() for p in report.pairs or []], schema=PAIR_SCHEMA)
        tmp = out.with_name(f".{out.name}.{report.audit_id[:8]}.tmp")
        try:
            with naming(out):  # a full disk names the file asked for
                pcsv.write_csv(table, tmp) if table_format(out) == "csv" else pq.write_table(table, tmp)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return report.model_copy(update={"pairs": None, "pairs_file": str(pairs_file)})

    def audit_merge(self, versions: Sequence[str | VersionRecord], *, progress: Any = None,
                    **options: Any) -> GateReport:
        versions = check_gate_versions(versions)
        body = {"versions": [ref_of(v) for v in versions], "options": options}
        return GateReport.model_validate(self._call("POST", "audits/merge", json_body=body))

    def audit_memorization(self, version: str | VersionRecord, samples: Any, *, progress: Any = None,
                           **options: Any) -> MemorizationReport:
        from provenance.audits import sample_texts

        body = {"version": ref_of(version, A_VERSION), "samples": sample_texts(samples), "options": options}
        return MemorizationReport.model_validate(self._call("POST", "audits/memorization", json_body=body))

    def audits(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [_datetimes(r, "created_at", "pairs_deleted_at") for r in self._call("GET", "audits", params={"kind": kind})]

    def audit(self, audit_id: str) -> dict[str, Any]:
        return _datetimes(self._call("GET", f"audits/{segment(audit_id)}"), "created_at", "pairs_deleted_at")

    def audit_pairs(self, audit_id: str, limit: int | None = None) -> pa.Table:
        return ipc_to_table(self._call("GET", f"audits/{segment(audit_id)}/pairs", params={"limit": limit}), "the pairs")

    def delete_audits(self, audit_ids: Sequence[str] = (), *, kind: str | None = None, before: Any = None,
                      pairs_only: bool = False, dry_run: bool = False) -> dict[str, Any]:
        before = utc_time(before, "before")  # refused here as the ledger refuses it, naming the parameter
        result = self._call("POST", "audits/delete", json_body={
            "audit_ids": [audit_ids] if isinstance(audit_ids, str) else list(audit_ids), "kind": kind,
            "before": None if before is None else before.isoformat(), "pairs_only": pairs_only, "dry_run": dry_run})
        for row in result["deleted"]:
            _datetimes(row, "created_at")
        return result


def _datetimes(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``row`` with its ISO strings at ``keys`` as naive UTC datetimes, as a local ledger gives them."""
    for key in keys:
        if row.get(key):
            row[key] = utc_time(row[key], key)
    return row
