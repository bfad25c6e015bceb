"""The pre-merge gate's report (:func:`provenance.gate.audit_merge`): the inputs' sides, the
policy, the overlap between them, contamination with evaluation data and the violations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from provenance.plain import UTCDateTime
from provenance.results.base import Banding, LicenseSummary, Result, Row


class GateSide(Row):
    version_id: str
    versions: list[str] = Field(description="the versions whose runs count for this input")
    shards: int
    datasets: list[str]


class GatePolicy(Result):
    max_overlap: float | None
    max_contamination: int | None
    deny_license: list[str]
    deny_retracted: bool = False


class DatasetOverlap(Row):
    dataset: str
    other: str
    exact: int
    near: int


class Overlap(Row):
    a: str
    b: str
    a_documents: int
    b_documents: int
    a_exact: int
    a_near: int
    b_exact: int
    b_near: int
    a_fraction: float
    b_fraction: float
    datasets: list[DatasetOverlap] = Field(description="A's documents found on B, per pair of datasets")
    b_datasets: list[DatasetOverlap] = Field([], description="B's documents found on A, per pair of datasets")


class SpanCheck(Result):
    n: int = Field(description="words in a shared span")
    training_documents_read: int
    eval_documents_read: int
    training_documents_with_span: int
    training_keys: list[str]
    eval_keys: list[str]
    unreadable: list[str]


class Contamination(Result):
    eval_datasets: list[str]
    eval_documents: int
    training_documents: int = Field(description="documents on any input's side, each counted once")
    training_exact: int
    training_near: int
    training_keys: list[str]
    eval_exact: int
    eval_near: int
    ngram: SpanCheck | None
    inherited_shards: int = Field(0, description="shards the inputs inherit from shared ancestors and none trained "
                                                 "on itself: not compared with the evaluation documents by content "
                                                 "(full_lineage compares them)")
    inherited_eval_documents: int = Field(0, description="evaluation documents in a shard that a shared ancestor "
                                                         "trained on: contaminated, found by the shard itself")
    contaminated_eval_documents: int
    contaminated_eval_keys: list[str]
    datasets: list[DatasetOverlap]


class Violation(Row):
    policy: Literal["max_contamination", "max_overlap", "deny_license", "deny_retracted"]
    message: str


class GateReport(Result):
    """The pre-merge gate (:func:`provenance.gate.audit_merge`)."""

    audit_id: str
    kind: Literal["merge"]
    created_at: UTCDateTime
    versions: list[str]
    labels: dict[str, str]
    threshold: float
    full_lineage: bool
    sides: list[GateSide]
    config_id: str
    banding: Banding
    policy: GatePolicy
    license: LicenseSummary
    retracted: list[dict[str, Any]] = Field(
        default_factory=list, description="retracted data in the inputs' lineages: input, retraction_id, reason, "
                                          "target, run_id, version_id")
    overlap: list[Overlap]
    contamination: Contamination | None
    violations: list[Violation]
    alerts: list[str]
    passed: bool
    stored: bool = Field(True, description="whether the audit was stored (false: run with store=False, "
                                          "its id names no stored audit)")
    seconds: float
