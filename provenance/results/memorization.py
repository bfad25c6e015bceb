"""The memorization audit's report (:func:`provenance.memorization.audit_memorization`): per
generated sample, the training documents it reproduces and how often training saw them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from provenance.plain import UTCDateTime
from provenance.results.base import Banding, Result, Row


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
