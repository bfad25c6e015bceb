"""The ledger as a whole (tag ``ledger``): ``GET /summary``, its counts, and ``POST /sql``, one
read-only statement whose rows come back as an Arrow IPC stream (the admin tables hidden from a
token below admin scope).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from provenance.server.common import Body, JsonRoute, service_of
from provenance.wire import ADMIN_TABLES, ARROW_STREAM, table_to_ipc

router = APIRouter(route_class=JsonRoute)


@router.get("/summary", tags=["ledger"])
def summary(request: Request) -> dict[str, Any]:
    """Counts of what the ledger holds."""
    s = service_of(request)
    return s.read(s.ledger.summary)


class SqlBody(Body):
    query: str = Field(description="one read-only statement (SELECT, or EXPLAIN of one)")
    params: list[Any] | None = None


@router.post("/sql", tags=["ledger"], response_class=Response,
             responses={200: {"content": {ARROW_STREAM: {}}, "description": "the rows, as an Arrow IPC stream"}})
def sql(request: Request, body: SqlBody) -> Response:
    """One read-only SQL statement over the ledger; the rows come back as an Arrow IPC stream."""
    s = service_of(request)
    hidden = () if getattr(request.state, "token_scope", None) == "admin" else ADMIN_TABLES
    table = s.read(s.ledger.sql, body.query, body.params, hidden=hidden)
    return Response(table_to_ipc(table), media_type=ARROW_STREAM)
