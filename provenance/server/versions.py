"""Model versions (tag ``versions``): their records, manifests, receipts, ancestors and diffs;
their tensors out (``GET /versions/{ref}/tensors``, a safetensors file made one tensor at a time)
and in (``POST /versions``: committed while the body arrives, or read whole when it carries
low-rank factors); stored Fishers; tags, which name versions; and merges, which make them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from provenance import errors
from provenance.records import TagRecord, VersionRecord
from provenance.results import MergeReceipt
from provenance.server import LedgerService
from provenance.server.common import GATE_OPTIONS, Body, JsonRoute, audit_options, jsonable, receive_file, service_of

router = APIRouter(route_class=JsonRoute)


@router.get("/versions", tags=["versions"], response_model=None,
            responses={200: {"model": list[VersionRecord]}})
def versions(request: Request) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.versions))


@router.get("/versions/{ref}", tags=["versions"], response_model=None,
            responses={200: {"model": VersionRecord}})
def version(request: Request, ref: str) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.version, ref))


@router.get("/versions/{ref}/manifest", tags=["versions"])
def manifest(request: Request, ref: str) -> dict[str, Any]:
    s = service_of(request)
    return {k: jsonable(v) for k, v in s.read(s.ledger.manifest, ref).items()}


@router.get("/versions/{ref}/receipt", tags=["versions"], response_model=None,
            responses={200: {"model": MergeReceipt}})
def receipt(request: Request, ref: str) -> dict[str, Any] | None:
    s = service_of(request)
    return jsonable(s.read(s.ledger.receipt, ref))


@router.get("/versions/{ref}/ancestors", tags=["versions"], response_model=None,
            responses={200: {"model": list[VersionRecord]}})
def ancestors(request: Request, ref: str) -> list[dict[str, Any]]:
    """The version and every version it descends from, newest first."""
    s = service_of(request)
    return jsonable(s.read(s.ledger.ancestors, ref))


@router.get("/versions/{old}/diff/{new}", tags=["versions"])
def diff(request: Request, old: str, new: str, data: bool = False) -> Any:
    """How ``new`` differs from ``old``: per parameter group, or with ``data`` their lineages' data."""
    s = service_of(request)
    return s.read(s.ledger.data_diff if data else s.ledger.diff, old, new)


@router.get("/versions/{ref}/tensors", tags=["versions"], response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "a safetensors file"}})
def checkout(request: Request, ref: str) -> StreamingResponse:
    """The version's tensors, bit-identical to what was committed, as a safetensors file made one
    tensor at a time (its length is known up front: a cut stream is seen as one)."""
    s = service_of(request)
    from provenance.versions import checkout_stream

    size, chunks = s.read(checkout_stream, s.ledger, ref)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)})


_COMMIT_OPTIONS = ("parent", "message", "author", "run", "encoding", "allow_nonfinite", "checkpoint_of", "step")


@router.post("/versions", tags=["versions"], status_code=201,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def commit(request: Request, message: str, parent: str | None = None, author: str | None = None,
                 run: str | None = None, encoding: str = "auto", allow_nonfinite: bool = False,
                 low_rank_scales: str | None = None, checkpoint_of: str | None = None,
                 step: int | None = None) -> dict[str, Any]:
    """Store a model state (a safetensors file in the body) as a new version; low-rank factors of
    an update come in the same file (``prov.low_rank.B:NAME``, ``prov.low_rank.A:NAME``) with
    their scales in ``low_rank_scales`` (JSON: name -> scale). ``checkpoint_of`` (a running run)
    and ``step``: a checkpoint of that run, trained on its examples up to ``step`` (default: the
    last step logged), which goes on."""
    s = service_of(request)
    scales = _json_object(low_rank_scales, "low_rank_scales") if low_rank_scales else None
    options = {"parent": parent, "message": message, "author": author, "run": run, "encoding": encoding,
               "allow_nonfinite": allow_nonfinite, "checkpoint_of": checkpoint_of, "step": step}
    if scales is None:  # stored as it arrives; the write lock is taken for the transaction only
        from provenance.server.streams import BodyReader

        length = request.headers.get("content-length")
        length = int(length) if length and length.isdigit() else None
        if length is not None and length > s.max_upload:
            raise errors.InvalidParameterError(
                f"the body is larger than this server's upload limit ({s.max_upload:,} bytes)")
        if length == 0:
            raise errors.InvalidParameterError("the request body is empty")
        reader = BodyReader(request, s.max_upload)
        pump = asyncio.create_task(reader.pump())
        try:
            return jsonable(await run_in_threadpool(_commit_received, s, reader, length, options))
        finally:
            await pump  # the worker read the body to its end, or drained it
    path = await receive_file(request, s, ".safetensors")  # the factors are needed beside their parameters: whole
    try:
        state, low_rank = _split_low_rank(path, scales)
        record = await run_in_threadpool(s.ledger.commit, state, low_rank=low_rank, **options)
    finally:
        path.unlink(missing_ok=True)
    return jsonable(record)


def _commit_received(s: LedgerService, reader: Any, length: int | None, options: dict[str, Any]) -> VersionRecord:
    """Commit the safetensors body ``reader`` receives (in a worker thread) while it arrives, or,
    when its tensors are not in the commit's order, from a file it is spooled to."""
    from provenance.server.streams import receive_state, spool

    path = None
    try:
        tensors, head = receive_state(reader, length)
        if tensors is None:
            path = spool(reader, head, s.uploads)
        return s.ledger.commit(tensors if path is None else path, **options)
    except BaseException:
        reader.drain()  # the client gets this error, not a connection closed under its upload
        raise
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


@router.post("/versions/{ref}/fisher", tags=["versions"], status_code=201,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def store_fisher(request: Request, ref: str, meta: str = "{}", keep: float | None = None,
                       update: bool = False) -> dict[str, Any]:
    """Store the diagonal Fisher of a version (a safetensors file in the body: parameter name ->
    tensor); it replaces the one stored before, or with ``update`` only its parameters given."""
    s = service_of(request)
    info = _json_object(meta, "meta")
    path = await receive_file(request, s, ".safetensors")
    from provenance.tensorfile import read_tensors

    try:
        try:
            fisher, _ = read_tensors(path)
        except ValueError as exc:
            raise errors.InvalidParameterError(f"the body is not a safetensors file ({exc})") from None
        stored = await run_in_threadpool(s.call, s.ledger.store_fisher, ref, fisher, keep=keep, meta=info,
                                       update=update)
    finally:
        path.unlink(missing_ok=True)
    return {"bytes": stored}


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.InvalidParameterError(f"{what}: not JSON ({exc})") from None
    except RecursionError:
        raise errors.InvalidParameterError(f"{what}: JSON nested too deeply to be read") from None
    if not isinstance(value, dict):
        raise errors.InvalidParameterError(f"{what}: a JSON object")
    return value


def _split_low_rank(path: Path, scales: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The uploaded tensors: the state, and the low-rank factors named for ``scales``."""
    from provenance.tensorfile import read_tensors
    from provenance.wire import LOW_RANK_PREFIX

    try:
        tensors, _ = read_tensors(path)
    except ValueError as exc:
        raise errors.InvalidParameterError(f"the body is not a safetensors file ({exc})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith(LOW_RANK_PREFIX)}
    low_rank = {}
    for name, scale in scales.items():
        b, a = tensors.get(f"{LOW_RANK_PREFIX}B:{name}"), tensors.get(f"{LOW_RANK_PREFIX}A:{name}")
        if b is None or a is None or not isinstance(scale, (int, float)):
            raise errors.InvalidParameterError(f"low_rank_scales names {name!r}: its B and A factors and a numeric "
                                               "scale must all be given")
        low_rank[name] = (b, a, float(scale))
    return state, low_rank


class TagBody(Body):
    version: str


@router.get("/tags", tags=["versions"], response_model=None,
            responses={200: {"model": list[TagRecord]}})
def tags(request: Request) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.tags))


@router.get("/tags/{name:path}", tags=["versions"], response_model=None,
            responses={200: {"model": TagRecord}})
def tag_of(request: Request, name: str) -> dict[str, Any]:
    """One tag and the version it names. A tag holding `/` (`release/1.0`) is read here: the
    version routes take one path part, and an encoded `/` reaches them as a `/`."""
    s = service_of(request)
    return jsonable(s.read(s.ledger.find_tag, name))


@router.put("/tags/{name:path}", tags=["versions"], response_model=None,
            responses={200: {"model": VersionRecord}})
def tag(request: Request, name: str, body: TagBody) -> dict[str, Any]:
    """Name a version (tagging again moves the tag)."""
    s = service_of(request)
    return jsonable(s.call(s.ledger.tag, name, body.version))


@router.delete("/tags/{name:path}", tags=["versions"], response_model=None,
               responses={200: {"model": TagRecord}})
def delete_tag(request: Request, name: str) -> dict[str, Any]:
    """Remove a tag (the version it names is kept); answers the tag as it was."""
    s = service_of(request)
    return jsonable(s.call(s.ledger.delete_tag, name))


class MergeBody(Body):
    versions: list[str] = Field(min_length=1)
    message: str = Field(min_length=1)
    method: str = "fisher"
    weights: list[float] | None = None
    base: str | None = None
    eps: float | None = Field(None, ge=0, description="fisher: the floor on the Fisher (default 1e-6)")
    normalize: bool | None = Field(None, description="fisher: normalise each Fisher (default false)")
    density: float | None = Field(None, gt=0, le=1, description="ties: fraction of each task vector kept (default 0.2)")
    author: str | None = None
    audit: str | None = Field(None, description="cite a stored pre-merge gate")
    gate: dict[str, Any] | None = Field(None, description="run the pre-merge gate with these options first")


@router.post("/merges", tags=["versions"], status_code=201)
def merge(request: Request, body: MergeBody) -> dict[str, Any]:
    """Merge versions into a new version (after the gate, when one is given); the new version and its receipt."""
    s = service_of(request)
    options = body.model_dump(exclude={"versions", "gate"})
    if body.gate is not None:
        audit_options(body.gate, GATE_OPTIONS)

    def run() -> dict[str, Any]:
        ver = s.ledger.merge(body.versions, gate=body.gate, **options)
        return {"version": jsonable(ver), "receipt": jsonable(s.ledger.receipt(ver))}

    return s.call(run)
