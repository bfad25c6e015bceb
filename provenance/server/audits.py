"""Audits (tag ``audits``): dedup, the pre-merge gate and memorization, run and stored; stored
reports and their pairs (as Arrow IPC) read back; and, at admin scope, stored audits deleted.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import Field

from provenance.results import DedupReport, GateReport, MemorizationReport
from provenance.server.common import GATE_OPTIONS, Body, JsonRoute, audit_options, jsonable, service_of
from provenance.wire import ARROW_STREAM, table_to_ipc

router = APIRouter(route_class=JsonRoute)


class DedupBody(Body):
    targets: list[str] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict, description="threshold, verify, all_pairs, bucket_window, store")


class GateBody(Body):
    versions: list[str] = Field(min_length=2)
    options: dict[str, Any] = Field(default_factory=dict)


class MemorizationBody(Body):
    version: str
    samples: list[str] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict, description="threshold, span, store")


@router.post("/audits/dedup", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": DedupReport}})
def audit_dedup(request: Request, body: DedupBody) -> dict[str, Any]:
    s = service_of(request)
    options = audit_options(body.options, ("threshold", "verify", "all_pairs", "bucket_window", "store"))
    return s.call(s.ledger.audit_dedup, body.targets, **options).to_dict()


@router.post("/audits/merge", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": GateReport}})
def audit_merge(request: Request, body: GateBody) -> dict[str, Any]:
    s = service_of(request)
    options = audit_options(body.options, GATE_OPTIONS)
    return s.call(s.ledger.audit_merge, body.versions, **options).to_dict()


@router.post("/audits/memorization", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": MemorizationReport}})
def audit_memorization(request: Request, body: MemorizationBody) -> dict[str, Any]:
    s = service_of(request)
    options = audit_options(body.options, ("threshold", "span", "store"))
    return s.call(s.ledger.audit_memorization, body.version, body.samples, **options).to_dict()


@router.get("/audits", tags=["audits"])
def audits(request: Request, kind: str | None = None) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.audits, kind))


@router.get("/audits/{audit_id}", tags=["audits"])
def audit(request: Request, audit_id: str) -> dict[str, Any]:
    s = service_of(request)
    return s.read(s.ledger.audit, audit_id)


@router.get("/audits/{audit_id}/pairs", tags=["audits"], response_class=Response,
            responses={200: {"content": {ARROW_STREAM: {}}}})
def audit_pairs(request: Request, audit_id: str, limit: int | None = Query(None, ge=0)) -> Response:
    s = service_of(request)
    return Response(table_to_ipc(s.read(s.ledger.audit_pairs, audit_id, limit)), media_type=ARROW_STREAM)


class DeleteAuditsBody(Body):
    audit_ids: list[str] = Field(default_factory=list, description="audit ids or prefixes of at least 4 hex digits")
    kind: str | None = Field(None, description="only audits of this kind: dedup, merge or memorization")
    before: str | None = Field(None, description="only audits made before this ISO date or time (naive: UTC)")
    pairs_only: bool = Field(False, description="delete the stored pairs and keep the reports")
    dry_run: bool = False


@router.post("/audits/delete", tags=["audits"])
def delete_audits(request: Request, body: DeleteAuditsBody) -> dict[str, Any]:
    """Admin scope: stored audits deleted, or only their pairs (``Ledger.delete_audits``)."""
    s = service_of(request)
    return s.call(s.ledger.delete_audits, body.audit_ids, kind=body.kind, before=body.before,
                  pairs_only=body.pairs_only, dry_run=body.dry_run)
