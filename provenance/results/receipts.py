"""The receipt of a merge (:mod:`provenance.merges`): how a merged version was made, per
parameter group the inputs' tensors, the Fishers read and the merged tensor."""

from __future__ import annotations

from pydantic import Field

from provenance.plain import UTCDateTime
from provenance.results.base import Result, Row


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
