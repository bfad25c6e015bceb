"""The dedup audit's report (:func:`provenance.audits.audit_dedup`): its summary, clusters,
near-copies, the exact-Jaccard check and the pairs."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from provenance.plain import UTCDateTime
from provenance.results.base import AuditTarget, Banding, Result, Row


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


#: The columns of :class:`DedupPair` as a pairs file holds them (typed as the stored pairs are read):
#: a file written from a report's pairs keeps its header and types with no pair, or none verified.
PAIR_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("dataset_a", pa.string()),
                         ("dataset_b", pa.string()), ("jaccard", pa.float64()), ("stderr", pa.float64()),
                         ("matches", pa.int32()), ("exact", pa.float64()), ("cluster", pa.int64())])


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
