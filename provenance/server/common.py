"""What the route modules of ``prov serve`` share: the service a request is served by, records
as JSON, the base of every request body (unknown fields refused), a request body streamed to a
file under the ledger's uploads folder or read whole, and the options an audit accepts (the
audit routes, a retraction's proof and a merge's gate check them alike).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from provenance import errors
from provenance.files import naming
from provenance.plain import utc_text
from provenance.server import LedgerService, body_chunks

MAX_JSON = 64 << 20  # bytes of a JSON request (uploads have their own limit, --max-upload)


def too_large(message: str) -> JSONResponse:
    """413 Content Too Large, saying which limit."""
    return JSONResponse({"error": message, "kind": "InvalidParameterError"}, status_code=413)


class JsonRoute(APIRoute):
    """A route whose JSON body is read whole (into its pydantic model): at most :data:`MAX_JSON`
    bytes are read, whatever the request says of its length (413 past them). A body sent without
    a Content-Length (chunked), or with another Content-Type, was read whole into memory first,
    however large: the limit held only for a JSON body that declared its length."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def read_at_most(request: Request) -> Any:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_JSON:
                    return too_large(f"a JSON body may have at most {MAX_JSON:,} bytes, this one has more")
                chunks.append(chunk)
            request._body = b"".join(chunks)  # what Request.body() then gives the route's handler
            return await handler(request)

        return read_at_most


def service_of(request: Request) -> LedgerService:
    return request.app.state.service


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: records dumped, and a time in a plain answer (a retraction's, an
    audit's) as RFC 3339 with ``Z``, as the records give theirs (it went out without a zone)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return utc_text(value)
    return value


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def receive_file(request: Request, service: LedgerService, suffix: str) -> Path:
    """Stream the request body to a file under the ledger's uploads folder (at most
    ``service.max_upload`` bytes)."""
    fd, name = tempfile.mkstemp(dir=service.uploads, suffix=suffix)
    path = Path(name)
    size, refused = 0, None
    try:
        with naming(path), os.fdopen(fd, "wb") as out:  # a full disk: "PATH: No space left on device", HTTP 507
            async for chunk in body_chunks(request, service.max_upload):
                size += len(chunk)
                if refused is None:
                    try:
                        out.write(chunk)
                    except OSError as exc:  # the rest is read and dropped: the client gets this answer
                        refused = exc
            if refused is not None:
                raise refused
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise errors.InvalidParameterError("the request body is empty")
    return path


async def receive_bytes(request: Request, service: LedgerService, limit: int = 256 << 20) -> bytes:
    """A body that is read whole anyway (logged examples), in memory: at most ``limit`` bytes."""
    data = b"".join([chunk async for chunk in body_chunks(request, min(limit, service.max_upload))])
    if not data:
        raise errors.InvalidParameterError("the request body is empty")
    return data


GATE_OPTIONS = ("eval_datasets", "threshold", "max_overlap", "max_contamination", "deny_license", "full_lineage",
                "deny_retracted", "store", "ngram")


def audit_options(options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise errors.InvalidParameterError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return options
