"""Retractions (tag ``retractions``): recorded with their plan, listed, applied (re-merges and
rebases, idempotent) and proven by an audit. Removing documents from a dataset, which a
retraction may cite, is :mod:`provenance.server.datasets`'.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from provenance.server.common import Body, JsonRoute, audit_options, jsonable, service_of

router = APIRouter(route_class=JsonRoute)


class RetractBody(Body):
    reason: str
    dataset: str | None = None
    shard: str | None = None
    key: str | None = None
    text: str | None = None
    near: float | None = Field(None, strict=True)  # "0.5" and true are not numbers (a local call refuses them)
    author: str | None = None


class ApplyRetractionBody(Body):
    rebase: bool = False


class RetractionAuditBody(Body):
    samples: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="releases, threshold, span, store")


@router.post("/retractions", tags=["retractions"], status_code=201)
def retract(request: Request, body: RetractBody) -> dict[str, Any]:
    """Record a retraction (a document, a text and its near-copies, a shard, a dataset) and its plan;
    its author is the token's name unless the body names one."""
    s = service_of(request)
    options = body.model_dump()
    if options["author"] is None:
        options["author"] = getattr(request.state, "token", None)
    return jsonable(s.call(s.ledger.retract, **options))


@router.get("/retractions", tags=["retractions"])
def retractions(request: Request) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.retractions))


@router.get("/retractions/{retraction_id}", tags=["retractions"])
def retraction(request: Request, retraction_id: str) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.retraction, retraction_id))


@router.post("/retractions/{retraction_id}/apply", tags=["retractions"])
def apply_retraction(request: Request, retraction_id: str, body: ApplyRetractionBody) -> list[dict[str, Any]]:
    """Carry out the retraction's re-merges (and rebases): idempotent, atomic per version."""
    s = service_of(request)
    return jsonable(s.call(s.ledger.apply_retraction, retraction_id, rebase=body.rebase))


@router.post("/retractions/{retraction_id}/audit", tags=["retractions"], status_code=201)
def audit_retraction(request: Request, retraction_id: str, body: RetractionAuditBody) -> dict[str, Any]:
    """The proof of a retraction (stored unless ``store`` is false)."""
    s = service_of(request)
    options = audit_options(body.options, ("releases", "threshold", "span", "store"))
    return jsonable(s.call(s.ledger.audit_retraction, retraction_id, samples=body.samples, **options))
