"""Typed results: what lineage, taint, merges and the audits return, as frozen pydantic models.

Each is the JSON that ``--json`` prints and that a stored audit keeps, with a JSON Schema in
``schemas/records/`` (:mod:`provenance.schema_export`, under the drift test). A result reads as
its fields (``report.passed``, ``report.summary.pairs``) and, like the JSON it prints, by key
(``report["passed"]``, ``report["summary"]["pairs"]``, ``dict(report)``); ``to_dict()`` is its
JSON form and ``Model.model_validate(json)`` reads one back (how a remote ledger returns them).

A lineage's versions and shards stay Arrow tables (a lineage can hold 100,000 shards): they are
validated from and printed as lists of rows, whose schema is their row model.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from provenance.plain import UTCDateTime, utc_text

# ---- the base ----------------------------------------------------------------------------------


class Result(BaseModel):
    """A frozen result that also reads by key, as the JSON it prints."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in type(self).model_fields]

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def __eq__(self, other: object) -> bool:
        """Equal to the same result, or to a mapping of its data (as ``model_dump()`` gives it)."""
        if isinstance(other, Mapping) and not isinstance(other, Result):
            return self.model_dump() == dict(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # results hold lists: not hashable

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``--json`` prints)."""
        return self.model_dump(mode="json")


class Row(Result):
    """One row of a result's list; extra fields are refused like everywhere else."""


# ---- Arrow tables as fields ---------------------------------------------------------------------

_ARROW_TYPES: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
                                        dt.datetime: pa.timestamp("us")}


def _arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a row field's annotation (scalars, optionals, lists of scalars)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _arrow_type(args[0])
    if origin in (typing.Union, types.UnionType):
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    return _ARROW_TYPES[annotation]


def arrow_schema(row: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a table whose rows are ``row``."""
    hints = typing.get_type_hints(row)
    return pa.schema([(name, _arrow_type(hints[name])) for name in row.model_fields])


def _rows(table: pa.Table, info: Any) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    if info.mode == "json":  # times as RFC 3339, like every record's
        for r in rows:
            for k, v in r.items():
                if isinstance(v, dt.datetime):
                    r[k] = utc_text(v)
    return rows


def ArrowRows(row: type[BaseModel]) -> Any:  # noqa: N802 (a type constructor)
    """An Arrow table field whose rows are ``row``: kept as a table, read from a table or a list
    of rows, printed as a list of rows (dates as ISO text)."""
    schema = arrow_schema(row)

    def validate(value: Any) -> pa.Table:
        if isinstance(value, pa.Table):
            return value
        if isinstance(value, list):
            return pa.Table.from_pylist([row.model_validate(r).model_dump() for r in value], schema=schema)
        raise ValueError(f"expected an Arrow table or a list of {row.__name__} rows, got {type(value).__name__}")

    return Annotated[
        pa.Table,
        PlainValidator(validate),
        PlainSerializer(_rows, return_type=list[dict[str, Any]]),
        WithJsonSchema({"type": "array", "items": row.model_json_schema()}),
    ]


# ---- shared parts -------------------------------------------------------------------------------


class LicenseSummary(Result):
    """The union of the licence conditions of a set of datasets."""

    licenses: list[str] = Field(description="the licences seen (SPDX expressions)")
    non_commercial: list[str] = Field(description="datasets whose licence forbids commercial use")
    share_alike: list[str] = Field(description="datasets whose licence requires share-alike")
    attribution: list[str] = Field(default_factory=list, description="datasets whose licence requires attribution")
    unknown_license: list[str] = Field(description="datasets of no or unknown licence")
    model_generated: list[str] = Field(description="datasets of model-generated text")


class Banding(Result):
    """How an audit's candidate pairs were found: LSH bands of rows of the MinHash signature."""

    bands: int
    rows: int
    num_perm: int
    min_matches: int = Field(description="signature positions that must agree for the threshold")
    p_at_threshold: float = Field(description="chance a pair at the threshold becomes a candidate")
    stored_band_keys: bool = Field(description="whether the registered band keys were used")
    s_curve: list[list[float]] | None = Field(None, description="[similarity, P(candidate)] over [0, 1]")


class AuditTarget(Row):
    target: str = Field(description="as given")
    kind: Literal["dataset", "version"]
    id: str = Field(description="the dataset id or the version id")
    label: str | None = Field(None, description="a version's short id and tags")


# ---- lineage and taint --------------------------------------------------------------------------


class LineageVersion(Row):
    """An ancestor of the version a lineage is about (itself included)."""

    version_id: str
    parents: list[str] | None
    run_id: str | None = Field(description="the run that produced it")
    message: str
    created_at: UTCDateTime
    tags: list[str] | None
    merge: str | None = Field(description="the merge method that produced it")
    merge_weights: list[float] | None
    weight: float = Field(description="its share of the version asked about")
    depth: int = Field(description="fewest steps from the version asked about")
    child: str | None = Field(description="the version it was first reached from")


class LineageShard(Row):
    """A shard that shaped the version, summed over the runs in its lineage."""

    dataset_id: str
    shard_index: int
    shard: str
    examples: int = Field(description="examples the runs logged from it")
    distinct_documents: int | None
    epochs: float | None
    effective_examples: float = Field(description="examples weighted by each run's version's share")
    runs: int


class LineageDataset(Row):
    """A dataset that shaped the version."""

    dataset_id: str
    examples: int
    shards: int
    epochs: float | None
    effective_examples: float
    n_versions: int = Field(description="versions in the lineage whose runs trained on it")
    via: list[str] = Field(description="those versions, the nearest first (ten at most)")
    effective_share: float = Field(description="its share of the lineage's effective examples")
    role: str | None
    license: str | None
    non_commercial: bool | None
    share_alike: bool | None
    model_generated: bool | None
    path: list[str] = Field(description="versions from the one asked about down to the nearest that trained on it")


class UnregisteredInput(Row):
    """An input a run named (an OpenLineage dataset) that matches no registered dataset: data that
    shaped the version which the ledger holds no fingerprints of."""

    namespace: str
    name: str
    run_id: str
    version_id: str | None = Field(description="the version whose run named it")


class Lineage(Result):
    """Every dataset and shard that shaped a version (:func:`provenance.lineage.lineage`)."""

    version: str
    versions: ArrowRows(LineageVersion) = Field(description="every ancestor, nearest first")  # type: ignore[valid-type]
    datasets: list[LineageDataset]
    shards: ArrowRows(LineageShard)  # type: ignore[valid-type]
    license: LicenseSummary
    unrecorded: list[str] = Field(default_factory=list, description="ancestors with no run and no merge: data unknown")
    unregistered_inputs: list[UnregisteredInput] = Field(
        default_factory=list, description="inputs the runs named that match no registered dataset")
    retracted: list[dict[str, Any]] = Field(
        default_factory=list, description="retracted data in the lineage: per retraction and run that trained on it, "
                                          "retraction_id, reason, target, run_id, version_id")
    made_by_retraction: dict[str, Any] | None = Field(
        None, description="when a retraction made this version: retraction_id, replaces, action, exact")

    def version_rows(self) -> list[dict[str, Any]]:
        """:attr:`versions` as rows."""
        return self.versions.to_pylist()


class TaintedVersion(Row):
    version_id: str
    direct: bool = Field(description="its own run trained on the target (else an ancestor's did)")
    via: str = Field(description="the tainted version it descends from (itself when direct)")
    runs: list[str]
    examples: int = Field(description="examples of the target its runs saw")
    message: str
    tags: list[str]
    created_at: UTCDateTime


class SimilarDocument(Row):
    doc_id: int
    dataset_id: str
    shard_index: int
    key: str
    matches: int = Field(description="signature positions equal to the target's")
    jaccard: float = Field(description="estimated Jaccard similarity")
    config_id: str


class TaintReport(Result):
    """Every version whose lineage contains a dataset, shard, document or text."""

    target: str
    near: float | None = Field(description="the Jaccard threshold for near-copies of the target")
    matches: list[SimilarDocument] = Field(description="documents found for a text or with near")
    versions: list[TaintedVersion] = Field(description="newest first")
    retractions: list[dict[str, Any]] = Field(
        default_factory=list, description="retractions of the target (or of its matches): retraction_id, created_at, "
                                          "reason, target, results (the versions made for it)")


# ---- merges -------------------------------------------------------------------------------------


class ReceiptGroup(Row):
    inputs: list[str] | None = Field(description="each input's tensor address (None: merged from the inputs' "
                                                 "patches, never materialised)")
    fishers: list[dict[str, str]] | None = Field(None, description="per input, the objects of the Fisher read")
    merged: str = Field(description="the merged tensor's address")


class MergeReceipt(Result):
    """How a merged version was made, enough to make it again (``prov model check``)."""

    version_id: str
    method: str
    inputs: list[str]
    weights: list[float]
    base_version: str | None
    eps: float | None
    normalize: bool | None
    density: float | None
    kernel: str
    audit_id: str | None = Field(description="the pre-merge gate it cites")
    created_at: UTCDateTime
    groups: dict[str, ReceiptGroup] = Field(default_factory=dict, description="per parameter group")


# ---- the dedup audit -----------------------------------------------------------------------------


class DedupSummary(Result):
    documents: int
    pairs: int
    exact_duplicate_pairs: int
    clusters: int
    documents_in_clusters: int
    redundant_documents: int = Field(description="documents beyond the first of each cluster")
    duplicate_rate: float
    largest_cluster: int
    without_words: int = Field(0, description="documents with no words (empty, or only punctuation): compared with "
                                              "nothing, as in the pre-merge gate")
    windowed_buckets: int = Field(0, description="band buckets of more than 2 × bucket_window documents, whose "
                                                 "documents were each compared with bucket_window neighbours "
                                                 "instead of with every other")
    seconds: float


class Cluster(Row):
    cluster: int
    size: int
    sample_keys: list[str]
    datasets: list[str]


class NearCopies(Row):
    key: str
    dataset_id: str
    near_copies: int


class DedupVerify(Result):
    """The exact-Jaccard check of pairs near the threshold (``verify=True``)."""

    margin: float
    near_threshold: int
    checked: int
    rejected: int
    not_checked: int
    unreadable: list[str]


class DedupPair(Row):
    a: str
    b: str
    dataset_a: str
    dataset_b: str
    jaccard: float
    stderr: float
    matches: int
    exact: float | None = Field(description="the exact Jaccard, when verified")
    cluster: int


class DedupReport(Result):
    """Near-duplicates among datasets or lineages (:func:`provenance.audits.audit_dedup`)."""

    audit_id: str
    kind: Literal["dedup"]
    created_at: UTCDateTime
    targets: list[AuditTarget]
    datasets: list[str]
    config_id: str
    threshold: float
    banding: Banding
    summary: DedupSummary
    cluster_sizes: list[list[int]] = Field(description="[size, clusters of that size]")
    largest_clusters: list[Cluster]
    near_copies: list[NearCopies]
    similarity_histogram: list[list[float]] = Field(description="[from, to, pairs]")
    verify: DedupVerify | None
    cluster_rounds: int
    pairs_mode: Literal["spanning", "all"]
    bucket_window: int = Field(0, description="neighbours each document of a wide band bucket was compared with "
                                              "(0: every two documents of every bucket)")
    stored: bool
    pairs: list[DedupPair] | None = Field(None, description="the pairs, unless written to pairs_file")
    pairs_file: str | None = None


# ---- the pre-merge gate --------------------------------------------------------------------------


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


# ---- the memorization audit ----------------------------------------------------------------------


class MemorizationSummary(Result):
    samples: int
    samples_matching_training: int
    samples_with_span: int | None
    training_documents_matched: int
    max_exposure: float


class MemorizedDocument(Row):
    doc_id: int
    dataset_id: str
    key: str
    jaccard: float
    stderr: float
    span_words: int
    span_text: str
    near_copies: int
    seen: float = Field(description="times training saw the document")
    exposure: float = Field(description="times training saw it and its near-copies")


class Sample(Row):
    index: int
    text: str = Field(description="the first 300 characters")
    matches: list[MemorizedDocument]


class MemorizationReport(Result):
    """Which training documents generated samples reproduce
    (:func:`provenance.memorization.audit_memorization`)."""

    audit_id: str
    kind: Literal["memorization"]
    created_at: UTCDateTime
    version: str
    label: str
    datasets: list[str]
    threshold: float
    span: int
    config_id: str
    banding: Banding
    summary: MemorizationSummary
    samples: list[Sample]
    unreadable: list[str]
    stored: bool = Field(True, description="whether the audit was stored (false: run with store=False, "
                                          "its id names no stored audit)")
    seconds: float


REPORTS: dict[str, type[Result]] = {"dedup": DedupReport, "merge": GateReport, "memorization": MemorizationReport}


def iter_models() -> Iterator[tuple[str, type[Result]]]:
    """The result models with a schema of their own, by file stem."""
    yield from {"lineage": Lineage, "taint_report": TaintReport, "merge_receipt": MergeReceipt,
                "dedup_report": DedupReport, "gate_report": GateReport,
                "memorization_report": MemorizationReport}.items()
