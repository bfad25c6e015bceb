"""Lineage (tag ``lineage``): a version's lineage (JSON, or its tables as Arrow IPC for the
remote ledger); OpenLineage RunEvents received as runs (at most :data:`MAX_EVENT` bytes, gzip
accepted and bounded once inflated too); and taint: the versions whose lineage holds a dataset,
shard, document or text.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from provenance import errors
from provenance.results import Lineage, TaintReport
from provenance.server.common import Body, JsonRoute, service_of, too_large
from provenance.wire import BUNDLE, pack

router = APIRouter(route_class=JsonRoute)


def _fast_json(data: Any) -> Response:
    """Large JSON answers (a lineage, a report) serialised by orjson, without FastAPI's encoder."""
    import orjson

    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@router.get("/lineage/{ref}", tags=["lineage"], response_model=None,
            responses={200: {"model": Lineage}})
def lineage(request: Request, ref: str) -> Response:
    """Every dataset and shard that shaped the version (as JSON; with ``Accept:
    application/vnd.provenance.bundle``, its tables as Arrow IPC, as the remote ledger asks)."""
    s = service_of(request)
    lin = s.read(s.ledger.lineage, ref)
    if BUNDLE in request.headers.get("accept", ""):
        meta = lin.model_dump(mode="json", exclude={"versions", "shards"})
        return Response(pack(meta, {"versions": lin.versions, "shards": lin.shards}), media_type=BUNDLE)
    return _fast_json(lin.to_dict())


MAX_EVENT = 16 << 20  # an OpenLineage event's bytes, as sent and once decompressed


def _gunzip(raw: bytes, limit: int) -> bytes | None:
    """The gzip ``raw`` decompressed (every member), or None when that is over ``limit`` bytes:
    it stops there, so a small body that inflates without end never fills the memory."""
    import zlib

    out, rest = bytearray(), raw
    try:
        while rest:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += member.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                return None
            if not member.eof:
                raise errors.InvalidParameterError("the body says gzip but is not (it ends inside the compressed data)")
            rest = member.unused_data
    except zlib.error as exc:
        raise errors.InvalidParameterError(f"the body says gzip but is not ({exc})") from None
    return bytes(out)


@router.post("/lineage", tags=["lineage"],
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "object", "description": "an OpenLineage RunEvent (https://openlineage.io/spec/2-0-2/"
                                                  "OpenLineage.json#/$defs/RunEvent); gzip Content-Encoding accepted",
                 "required": ["eventTime", "run", "job"]}}}}})
async def openlineage_event(request: Request) -> dict[str, Any]:
    """Receive an OpenLineage RunEvent (as the openlineage-python client's HTTP transport sends it):
    its run becomes a provenance run, its inputs are matched to registered datasets."""
    s = service_of(request)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_EVENT:
        return too_large(f"the event is larger than {MAX_EVENT >> 20} MiB ({int(length):,} bytes)")
    raw = bytearray()  # read up to the limit: a body sent without a length (chunked) was read whole, however large
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_EVENT:
                return too_large(f"the event is larger than {MAX_EVENT >> 20} MiB (more than {MAX_EVENT:,} bytes "
                                  "sent)")
    except ClientDisconnect:  # a job killed mid-event: said so, not a traceback in the server's log
        raise errors.InvalidParameterError("the event stopped before its end: the client went away") from None
    raw = bytes(raw)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        raw = _gunzip(raw, MAX_EVENT)
        if raw is None:  # a small body that inflates without end must not take the server's memory
            return too_large(f"the event is larger than {MAX_EVENT >> 20} MiB once decompressed")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidParameterError(f"the event is not JSON ({exc})") from None
    except RecursionError:  # thousands of nested brackets: json's parser recurses once per level
        raise errors.InvalidParameterError("the event nests its JSON too deeply to be read") from None
    from provenance.openlineage import ingest

    return await run_in_threadpool(s.call, ingest, s.ledger, data)


class TaintBody(Body):
    dataset: str | None = None
    shard: str | None = None
    key: str | None = None
    text: str | None = None
    near: float | None = Field(None, strict=True)  # "0.5" and true are not numbers (a local call refuses them)


@router.post("/taint", tags=["lineage"], response_model=None,
             responses={200: {"model": TaintReport}})
def taint(request: Request, body: TaintBody) -> dict[str, Any]:
    """Every version whose lineage holds a dataset, shard, document or text (a question: POST for the text)."""
    s = service_of(request)
    return s.read(s.ledger.taint, **body.model_dump()).to_dict()
