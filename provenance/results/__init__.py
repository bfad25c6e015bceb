"""Typed results: what lineage, taint, merges and the audits return, as frozen pydantic models.

Each is the JSON that ``--json`` prints and that a stored audit keeps, with a JSON Schema in
``schemas/records/`` (:mod:`provenance.schema_export`, under the drift test). A result reads as
its fields (``report.passed``, ``report.summary.pairs``) and, like the JSON it prints, by key
(``report["passed"]``, ``report["summary"]["pairs"]``, ``dict(report)``); ``to_dict()`` is its
JSON form and ``Model.model_validate(json)`` reads one back (how a remote ledger returns them).

A lineage's versions and shards stay Arrow tables (a lineage can hold 100,000 shards): they are
validated from and printed as lists of rows, whose schema is their row model.

Here are :data:`REPORTS` and :func:`iter_models`; the models are one module per question:
:mod:`.base` (:class:`Result`, :class:`Row`, Arrow tables as fields, and the parts several results
share: the licence summary, the banding, an audit's target), :mod:`.lineage` (lineage and taint),
:mod:`.receipts` (a merge's receipt), :mod:`.dedup`, :mod:`.gate` and :mod:`.memorization` (the
three audits' reports).
"""

from __future__ import annotations

from collections.abc import Iterator

from provenance.results.base import (
    ArrowRows,
    AuditTarget,
    Banding,
    LicenseSummary,
    Result,
    Row,
    arrow_schema,
)
from provenance.results.dedup import Cluster, DedupPair, DedupReport, DedupSummary, DedupVerify, NearCopies
from provenance.results.gate import (
    Contamination,
    DatasetOverlap,
    GatePolicy,
    GateReport,
    GateSide,
    Overlap,
    SpanCheck,
    Violation,
)
from provenance.results.lineage import (
    Lineage,
    LineageDataset,
    LineageShard,
    LineageVersion,
    SimilarDocument,
    TaintedVersion,
    TaintReport,
    TaintRetraction,
    UnregisteredInput,
)
from provenance.results.memorization import MemorizationReport, MemorizationSummary, MemorizedDocument, Sample
from provenance.results.receipts import MergeReceipt, ReceiptGroup

REPORTS: dict[str, type[Result]] = {"dedup": DedupReport, "merge": GateReport, "memorization": MemorizationReport}


def iter_models() -> Iterator[tuple[str, type[Result]]]:
    """The result models with a schema of their own, by file stem."""
    yield from {"lineage": Lineage, "taint_report": TaintReport, "merge_receipt": MergeReceipt,
                "dedup_report": DedupReport, "gate_report": GateReport,
                "memorization_report": MemorizationReport}.items()


__all__ = [
    "REPORTS", "ArrowRows", "AuditTarget", "Banding", "Cluster", "Contamination", "DatasetOverlap", "DedupPair",
    "DedupReport", "DedupSummary", "DedupVerify", "GatePolicy", "GateReport", "GateSide", "LicenseSummary",
    "Lineage", "LineageDataset", "LineageShard", "LineageVersion", "MemorizationReport", "MemorizationSummary",
    "MemorizedDocument", "MergeReceipt", "NearCopies", "Overlap", "ReceiptGroup", "Result", "Row", "Sample",
    "SimilarDocument", "SpanCheck", "TaintedVersion", "TaintReport", "TaintRetraction", "UnregisteredInput", "Violation",
    "arrow_schema", "iter_models",
]
