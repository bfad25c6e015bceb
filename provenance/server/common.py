"""What the route modules of ``prov serve`` share: the service a request is served by, records
as JSON, the base of every request body (unknown fields refused), a request body streamed to a
file under the ledger's uploads folder or read whole, and the options an audit accepts (the
audit routes, a retraction's proof and a merge's gate check them alike).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict

from provenance import errors
from provenance.files import naming
from provenance.server import LedgerService, body_chunks


def service_of(request: Request) -> LedgerService:
    return request.app.state.service


def jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
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
