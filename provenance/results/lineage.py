"""The results of lineage and taint (:mod:`provenance.lineage`): every dataset and shard that
shaped a version, its versions and shards kept as Arrow tables; every version whose lineage
contains a dataset, shard, document or text."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from provenance.plain import UTCDateTime
from provenance.results.base import ArrowRows, LicenseSummary, Result, Row


class LineageVersion(Row):
    """An ancestor of the version a lineage is about (itself included)."""

    version_id: str
    parents: list[str] | None
    run_id: str | None = Field(description="the run that produced it (of a checkpoint: the run it was saved in)")
    step: int | None = Field(None, description="of a checkpoint of its run: the last step whose examples it was "
                                               "trained on (its lineage counts the run's examples up to it)")
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
    attribution: bool | None = Field(None, description="its licence requires attribution (CC BY and the like)")
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


class TaintRetraction(Row):
    """A recorded retraction of a taint's target (or of one of its matches)."""

    retraction_id: str
    created_at: UTCDateTime
    reason: str
    target: str
    results: list[str] = Field(description="the versions its steps made (none yet: empty)")


class TaintReport(Result):
    """Every version whose lineage contains a dataset, shard, document or text."""

    target: str
    near: float | None = Field(description="the Jaccard threshold for near-copies of the target")
    matches: list[SimilarDocument] = Field(description="documents found for a text or with near")
    versions: list[TaintedVersion] = Field(description="newest first")
    retractions: list[TaintRetraction] = Field(
        default_factory=list, description="retractions of the target (or of its matches), oldest first")
