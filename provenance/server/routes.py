"""The resources of ``prov serve`` under ``/api/v1``, named after the ledger's nouns: datasets,
documents, uploads, versions, tags, runs, merges, lineage, taint, audits, SQL, tokens.

Each route is one call of the library on the served ledger (under the service's lock) and
returns its record or typed result as JSON; uploads arrive as Arrow IPC streams (document rows,
logged examples) or safetensors files (model states), streamed to a file under the ledger's
``tmp/uploads`` first so that no body is held in memory whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from provenance import errors
from provenance.files import naming
from provenance.records import (
    DatasetRecord,
    DocumentRecord,
    RegistrationResult,
    RunRecord,
    RunShardRecord,
    ShardRecord,
    TagRecord,
    TokenRecord,
    VersionRecord,
)
from provenance.results import DedupReport, GateReport, Lineage, MemorizationReport, MergeReceipt, TaintReport
from provenance.server import LedgerService, body_chunks
from provenance.verify import VerifyReport
from provenance.wire import ADMIN_TABLES, ARROW_STREAM, BUNDLE, pack, table_to_ipc

router = APIRouter()


def _service(request: Request) -> LedgerService:
    return request.app.state.service


def _json(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _fast_json(data: Any) -> Response:
    """Large JSON answers (a lineage, a report) serialised by orjson, without FastAPI's encoder."""
    import orjson

    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def _receive(request: Request, service: LedgerService, suffix: str) -> Path:
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


async def _receive_bytes(request: Request, service: LedgerService, limit: int = 256 << 20) -> bytes:
    """A body that is read whole anyway (logged examples), in memory: at most ``limit`` bytes."""
    data = b"".join([chunk async for chunk in body_chunks(request, min(limit, service.max_upload))])
    if not data:
        raise errors.InvalidParameterError("the request body is empty")
    return data


# -- the ledger -------------------------------------------------------------------------------------

@router.get("/summary", tags=["ledger"])
def summary(request: Request) -> dict[str, Any]:
    """Counts of what the ledger holds."""
    s = _service(request)
    return s.read(s.ledger.summary)


class SqlBody(Body):
    query: str = Field(description="one read-only statement (SELECT, or EXPLAIN of one)")
    params: list[Any] | None = None


@router.post("/sql", tags=["ledger"], response_class=Response,
             responses={200: {"content": {ARROW_STREAM: {}}, "description": "the rows, as an Arrow IPC stream"}})
def sql(request: Request, body: SqlBody) -> Response:
    """One read-only SQL statement over the ledger; the rows come back as an Arrow IPC stream."""
    s = _service(request)
    hidden = () if getattr(request.state, "token_scope", None) == "admin" else ADMIN_TABLES
    table = s.read(s.ledger.sql, body.query, body.params, hidden=hidden)
    return Response(table_to_ipc(table), media_type=ARROW_STREAM)


# -- datasets -------------------------------------------------------------------------------------

@router.get("/datasets", tags=["datasets"], response_model=None,
            responses={200: {"model": list[DatasetRecord]}})
def datasets(request: Request, name: str | None = None, all_versions: bool = False) -> list[dict[str, Any]]:
    """The latest version of every dataset (or every version, or those of ``name``)."""
    s = _service(request)
    return _json(s.read(s.ledger.datasets, name, all_versions=all_versions))


@router.get("/datasets/{ref}", tags=["datasets"], response_model=None,
            responses={200: {"model": DatasetRecord}})
def dataset(request: Request, ref: str) -> dict[str, Any]:
    s = _service(request)
    return _json(s.read(s.ledger.dataset, ref))


@router.get("/datasets/{ref}/shards", tags=["datasets"], response_model=None,
            responses={200: {"model": list[ShardRecord]}})
def shards(request: Request, ref: str) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.shards, ref))


@router.get("/datasets/{ref}/documents/{key:path}", tags=["datasets"], response_model=None,
            responses={200: {"model": DocumentRecord}})
def document(request: Request, ref: str, key: str) -> dict[str, Any]:
    s = _service(request)
    return _json(s.read(s.ledger.document, ref, key))


@router.get("/datasets/{ref}/croissant", tags=["datasets"])
def croissant(request: Request, ref: str) -> dict[str, Any]:
    """The dataset version as Croissant 1.1 JSON-LD."""
    s = _service(request)
    return s.read(s.ledger.export_croissant, ref)


@router.post("/uploads", tags=["datasets"], status_code=201,
             openapi_extra={"requestBody": {"content": {ARROW_STREAM: {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
async def upload(request: Request) -> dict[str, Any]:
    """Document rows a client fingerprinted, as an Arrow IPC stream, kept for one registration."""
    s = _service(request)
    path = await _receive(request, s, ".arrows")
    from provenance.uploads import check_upload

    try:
        rows = await run_in_threadpool(check_upload, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    upload_id = uuid.uuid4().hex
    path.rename(s.uploads / f"{upload_id}.arrows")
    return {"upload_id": upload_id, "rows": rows}


class RegisterBody(Body):
    name: str
    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the document rows, from POST /uploads")
    shards: list[dict[str, Any]] = Field(description="the shards read, in order (ShardRecord fields but dataset_id)")
    options: dict[str, Any] = Field(default_factory=dict, description="register_dataset's options")
    counters: dict[str, int] = Field(default_factory=dict, description="invalid records replaced and skipped")


@router.post("/datasets", tags=["datasets"], status_code=201, response_model=None,
             responses={201: {"model": RegistrationResult}})
def register(request: Request, body: RegisterBody) -> dict[str, Any]:
    """Register uploaded document rows as (a new version of) a dataset, in one transaction."""
    s = _service(request)
    path = s.uploads / f"{body.upload_id}.arrows"
    if not path.exists():
        raise errors.NotFoundError(f"no upload {body.upload_id} (uploads are kept until registered)")
    from provenance.uploads import register_uploaded

    result = s.call(register_uploaded, s.ledger, body.name, path, body.shards, body.options, body.counters)
    path.unlink(missing_ok=True)
    return _json(result)


# -- versions -------------------------------------------------------------------------------------

@router.get("/versions", tags=["versions"], response_model=None,
            responses={200: {"model": list[VersionRecord]}})
def versions(request: Request) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.versions))


@router.get("/versions/{ref}", tags=["versions"], response_model=None,
            responses={200: {"model": VersionRecord}})
def version(request: Request, ref: str) -> dict[str, Any]:
    s = _service(request)
    return _json(s.read(s.ledger.version, ref))


@router.get("/versions/{ref}/manifest", tags=["versions"])
def manifest(request: Request, ref: str) -> dict[str, Any]:
    s = _service(request)
    return {k: _json(v) for k, v in s.read(s.ledger.manifest, ref).items()}


@router.get("/versions/{ref}/receipt", tags=["versions"], response_model=None,
            responses={200: {"model": MergeReceipt}})
def receipt(request: Request, ref: str) -> dict[str, Any] | None:
    s = _service(request)
    return _json(s.read(s.ledger.receipt, ref))


@router.get("/versions/{ref}/ancestors", tags=["versions"], response_model=None,
            responses={200: {"model": list[VersionRecord]}})
def ancestors(request: Request, ref: str) -> list[dict[str, Any]]:
    """The version and every version it descends from, newest first."""
    s = _service(request)
    return _json(s.read(s.ledger.ancestors, ref))


@router.get("/versions/{old}/diff/{new}", tags=["versions"])
def diff(request: Request, old: str, new: str, data: bool = False) -> Any:
    """How ``new`` differs from ``old``: per parameter group, or with ``data`` their lineages' data."""
    s = _service(request)
    return s.read(s.ledger.data_diff if data else s.ledger.diff, old, new)


@router.get("/versions/{ref}/tensors", tags=["versions"], response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "a safetensors file"}})
def checkout(request: Request, ref: str) -> StreamingResponse:
    """The version's tensors, bit-identical to what was committed, as a safetensors file made one
    tensor at a time (its length is known up front: a cut stream is seen as one)."""
    s = _service(request)
    from provenance.versions import checkout_stream

    size, chunks = s.read(checkout_stream, s.ledger, ref)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)})


_COMMIT_OPTIONS = ("parent", "message", "author", "run", "encoding", "allow_nonfinite")


@router.post("/versions", tags=["versions"], status_code=201,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def commit(request: Request, message: str, parent: str | None = None, author: str | None = None,
                 run: str | None = None, encoding: str = "auto", allow_nonfinite: bool = False,
                 low_rank_scales: str | None = None) -> dict[str, Any]:
    """Store a model state (a safetensors file in the body) as a new version; low-rank factors of
    an update come in the same file (``prov.low_rank.B:NAME``, ``prov.low_rank.A:NAME``) with
    their scales in ``low_rank_scales`` (JSON: name -> scale)."""
    s = _service(request)
    scales = _json_object(low_rank_scales, "low_rank_scales") if low_rank_scales else None
    options = {"parent": parent, "message": message, "author": author, "run": run, "encoding": encoding,
               "allow_nonfinite": allow_nonfinite}
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
            return _json(await run_in_threadpool(_commit_received, s, reader, length, options))
        finally:
            await pump  # the worker read the body to its end, or drained it
    path = await _receive(request, s, ".safetensors")  # the factors are needed beside their parameters: whole
    try:
        state, low_rank = _split_low_rank(path, scales)
        record = await run_in_threadpool(s.ledger.commit, state, low_rank=low_rank, **options)
    finally:
        path.unlink(missing_ok=True)
    return _json(record)


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
    s = _service(request)
    info = _json_object(meta, "meta")
    path = await _receive(request, s, ".safetensors")
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


class NearBody(Body):
    datasets: list[str] = Field(min_length=1)
    threshold: float = Field(0.8, gt=0, le=1)


@router.post("/near-duplicates", tags=["datasets"], response_class=Response,
             responses={200: {"content": {ARROW_STREAM: {}}, "description": "key_a, key_b, dataset_a, dataset_b, "
                                                                            "jaccard, as an Arrow IPC stream"}})
def near_duplicates(request: Request, body: NearBody) -> Response:
    """Pairs of documents whose stored LSH bands collide, at estimated Jaccard >= threshold."""
    s = _service(request)
    return Response(table_to_ipc(s.read(s.ledger.near_duplicates, body.datasets, body.threshold)),
                    media_type=ARROW_STREAM)


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
    s = _service(request)
    return _json(s.read(s.ledger.tags))


@router.put("/tags/{name:path}", tags=["versions"], response_model=None,
            responses={200: {"model": VersionRecord}})
def tag(request: Request, name: str, body: TagBody) -> dict[str, Any]:
    """Name a version (tagging again moves the tag)."""
    s = _service(request)
    return _json(s.call(s.ledger.tag, name, body.version))


class MergeBody(Body):
    versions: list[str] = Field(min_length=2)
    message: str = Field(min_length=1)
    method: str = "fisher"
    weights: list[float] | None = None
    base: str | None = None
    eps: float = Field(1e-6, gt=0)
    normalize: bool = False
    density: float = Field(0.2, gt=0, le=1)
    author: str | None = None
    audit: str | None = Field(None, description="cite a stored pre-merge gate")
    gate: dict[str, Any] | None = Field(None, description="run the pre-merge gate with these options first")


@router.post("/merges", tags=["versions"], status_code=201)
def merge(request: Request, body: MergeBody) -> dict[str, Any]:
    """Merge versions into a new version (after the gate, when one is given); the new version and its receipt."""
    s = _service(request)
    options = body.model_dump(exclude={"versions", "gate"})
    if body.gate is not None:
        _audit_options(body.gate, _GATE_OPTIONS)

    def run() -> dict[str, Any]:
        ver = s.ledger.merge(body.versions, gate=body.gate, **options)
        return {"version": _json(ver), "receipt": _json(s.ledger.receipt(ver))}

    return s.call(run)


# -- runs -----------------------------------------------------------------------------------------

class StartRunBody(Body):
    message: str
    base: str | None = None
    datasets: dict[str, float] = Field(default_factory=dict, description="dataset ref -> epochs")
    params: dict[str, Any] = Field(default_factory=dict)
    author: str | None = None
    host: str | None = Field(None, description="the host the training process runs on")
    pid: int | None = Field(None, description="the training process, watched for abandonment on its host")


@router.get("/runs", tags=["runs"], response_model=None,
            responses={200: {"model": list[RunRecord]}})
def runs(request: Request) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.runs))


@router.post("/runs", tags=["runs"], status_code=201, response_model=None,
             responses={201: {"model": RunRecord}})
def start_run(request: Request, body: StartRunBody) -> dict[str, Any]:
    """Record the start of a training run (detached: the client ends it)."""
    s = _service(request)
    from provenance.runs import start_run as start

    run = s.call(start, s.ledger, base=body.base, datasets=body.datasets, params=body.params, message=body.message,
                 author=body.author, detached=True, pid=body.pid, host=body.host)
    return _json(run.record)


@router.get("/runs/{ref}", tags=["runs"], response_model=None,
            responses={200: {"model": RunRecord}})
def run_record(request: Request, ref: str) -> dict[str, Any]:
    s = _service(request)
    return _json(s.read(s.ledger.run, ref))


@router.get("/runs/{ref}/shards", tags=["runs"], response_model=None,
            responses={200: {"model": list[RunShardRecord]}})
def run_shards(request: Request, ref: str) -> list[dict[str, Any]]:
    """Per shard of the run's datasets: examples seen and epochs (once the run has ended)."""
    s = _service(request)
    return _json(s.read(s.ledger.run_shards, ref))


@router.post("/runs/{ref}/examples", tags=["runs"],
             openapi_extra={"requestBody": {"content": {ARROW_STREAM: {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
async def log_examples(request: Request, ref: str) -> dict[str, Any]:
    """Logged examples (an Arrow IPC stream of ``seq, step, key, dataset``), written in one transaction."""
    s = _service(request)
    data = await _receive_bytes(request, s)
    from provenance.runs import write_examples
    from provenance.wire import ipc_to_table

    table = ipc_to_table(data, "the examples")
    # checked beside the other calls; the write lock is taken for the transaction alone
    return {"written": await run_in_threadpool(write_examples, s.ledger, ref, table)}


class EndRunBody(Body):
    status: Literal["finished", "failed"]
    error: str | None = None


@router.post("/runs/{ref}/end", tags=["runs"], response_model=None,
             responses={200: {"model": RunRecord}})
def end_run(request: Request, ref: str, body: EndRunBody) -> dict[str, Any]:
    s = _service(request)
    from provenance.runs import end_run as end

    return _json(s.call(end, s.ledger, ref, body.status, body.error))


# -- lineage, taint, audits ------------------------------------------------------------------------

@router.get("/lineage/{ref}", tags=["lineage"], response_model=None,
            responses={200: {"model": Lineage}})
def lineage(request: Request, ref: str) -> Response:
    """Every dataset and shard that shaped the version (as JSON; with ``Accept:
    application/vnd.provenance.bundle``, its tables as Arrow IPC, as the remote ledger asks)."""
    s = _service(request)
    lin = s.read(s.ledger.lineage, ref)
    if BUNDLE in request.headers.get("accept", ""):
        meta = lin.model_dump(mode="json", exclude={"versions", "shards"})
        return Response(pack(meta, {"versions": lin.versions, "shards": lin.shards}), media_type=BUNDLE)
    return _fast_json(lin.to_dict())


MAX_EVENT = 16 << 20  # an OpenLineage event's bytes, as sent and once decompressed


def _too_large(message: str) -> JSONResponse:
    return JSONResponse({"error": message, "kind": "InvalidParameterError"}, status_code=413)


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
    s = _service(request)
    raw = await request.body()
    if len(raw) > MAX_EVENT:
        return _too_large(f"the event is larger than {MAX_EVENT >> 20} MiB ({len(raw):,} bytes)")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        raw = _gunzip(raw, MAX_EVENT)
        if raw is None:  # a small body that inflates without end must not take the server's memory
            return _too_large(f"the event is larger than {MAX_EVENT >> 20} MiB once decompressed")
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
    near: float | None = None


@router.post("/taint", tags=["lineage"], response_model=None,
             responses={200: {"model": TaintReport}})
def taint(request: Request, body: TaintBody) -> dict[str, Any]:
    """Every version whose lineage holds a dataset, shard, document or text (a question: POST for the text)."""
    s = _service(request)
    return s.read(s.ledger.taint, **body.model_dump()).to_dict()


class RetractBody(Body):
    reason: str
    dataset: str | None = None
    shard: str | None = None
    key: str | None = None
    text: str | None = None
    near: float | None = None
    author: str | None = None


class ApplyRetractionBody(Body):
    rebase: bool = False


class RetractionAuditBody(Body):
    samples: list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="releases, threshold, span, store")


class RemoveDocumentsBody(Body):
    keys: list[str] = Field(min_length=1)
    reason: str | None = None
    retraction: str | None = None


@router.post("/retractions", tags=["retractions"], status_code=201)
def retract(request: Request, body: RetractBody) -> dict[str, Any]:
    """Record a retraction (a document, a text and its near-copies, a shard, a dataset) and its plan;
    its author is the token's name unless the body names one."""
    s = _service(request)
    options = body.model_dump()
    if options["author"] is None:
        options["author"] = getattr(request.state, "token", None)
    return _json(s.call(s.ledger.retract, **options))


@router.get("/retractions", tags=["retractions"])
def retractions(request: Request) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.retractions))


@router.get("/retractions/{retraction_id}", tags=["retractions"])
def retraction(request: Request, retraction_id: str) -> dict[str, Any]:
    s = _service(request)
    return _json(s.read(s.ledger.retraction, retraction_id))


@router.post("/retractions/{retraction_id}/apply", tags=["retractions"])
def apply_retraction(request: Request, retraction_id: str, body: ApplyRetractionBody) -> list[dict[str, Any]]:
    """Carry out the retraction's re-merges (and rebases): idempotent, atomic per version."""
    s = _service(request)
    return _json(s.call(s.ledger.apply_retraction, retraction_id, rebase=body.rebase))


@router.post("/retractions/{retraction_id}/audit", tags=["retractions"], status_code=201)
def audit_retraction(request: Request, retraction_id: str, body: RetractionAuditBody) -> dict[str, Any]:
    """The proof of a retraction (stored unless ``store`` is false)."""
    s = _service(request)
    options = _audit_options(body.options, ("releases", "threshold", "span", "store"))
    return _json(s.call(s.ledger.audit_retraction, retraction_id, samples=body.samples, **options))


@router.post("/datasets/{name}/remove", tags=["datasets"], status_code=201)
def remove_documents(request: Request, name: str, body: RemoveDocumentsBody) -> dict[str, Any]:
    """A new version of the dataset without the documents ``keys`` (their rows copied, no source read)."""
    s = _service(request)
    return _json(s.call(s.ledger.remove_documents, name, body.keys, reason=body.reason,
                        retraction=body.retraction))


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


_GATE_OPTIONS = ("eval_datasets", "threshold", "max_overlap", "max_contamination", "deny_license", "full_lineage",
                 "deny_retracted", "store", "ngram")


def _audit_options(options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise errors.InvalidParameterError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return options


@router.post("/audits/dedup", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": DedupReport}})
def audit_dedup(request: Request, body: DedupBody) -> dict[str, Any]:
    s = _service(request)
    options = _audit_options(body.options, ("threshold", "verify", "all_pairs", "bucket_window", "store"))
    return s.call(s.ledger.audit_dedup, body.targets, **options).to_dict()


@router.post("/audits/merge", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": GateReport}})
def audit_merge(request: Request, body: GateBody) -> dict[str, Any]:
    s = _service(request)
    options = _audit_options(body.options, _GATE_OPTIONS)
    return s.call(s.ledger.audit_merge, body.versions, **options).to_dict()


@router.post("/audits/memorization", tags=["audits"], status_code=201, response_model=None,
             responses={201: {"model": MemorizationReport}})
def audit_memorization(request: Request, body: MemorizationBody) -> dict[str, Any]:
    s = _service(request)
    options = _audit_options(body.options, ("threshold", "span", "store"))
    return s.call(s.ledger.audit_memorization, body.version, body.samples, **options).to_dict()


@router.get("/audits", tags=["audits"])
def audits(request: Request, kind: str | None = None) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.audits, kind))


@router.get("/audits/{audit_id}", tags=["audits"])
def audit(request: Request, audit_id: str) -> dict[str, Any]:
    s = _service(request)
    return s.read(s.ledger.audit, audit_id)


@router.get("/audits/{audit_id}/pairs", tags=["audits"], response_class=Response,
            responses={200: {"content": {ARROW_STREAM: {}}}})
def audit_pairs(request: Request, audit_id: str, limit: int | None = Query(None, ge=0)) -> Response:
    s = _service(request)
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
    s = _service(request)
    return s.call(s.ledger.delete_audits, body.audit_ids, kind=body.kind, before=body.before,
                  pairs_only=body.pairs_only, dry_run=body.dry_run)


# -- admin ----------------------------------------------------------------------------------------

class GcBody(Body):
    apply: bool = False


@router.post("/gc", tags=["admin"])
def gc(request: Request, body: GcBody) -> dict[str, Any]:
    s = _service(request)
    return s.call(s.ledger.gc, apply=body.apply)


class BackupBody(Body):
    destination: str = Field(description="a new or empty folder on the server's machine")
    link: bool = Field(False, description="hard-link the objects instead of copying them")


@router.post("/backup", tags=["admin"])
def backup(request: Request, body: BackupBody) -> dict[str, Any]:
    """A consistent copy of the served ledger, on the server's machine (writes wait meanwhile)."""
    s = _service(request)
    return s.call(s.ledger.backup, body.destination, link=body.link)


class VerifyBody(Body):
    objects: bool = False
    repair: bool = False


@router.post("/verify", tags=["admin"], response_model=None,
             responses={200: {"model": VerifyReport}})
def verify(request: Request, body: VerifyBody) -> dict[str, Any]:
    s = _service(request)
    return _json(s.call(s.ledger.verify, objects=body.objects, repair=body.repair))


class TokenBody(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    scope: Literal["read", "write", "admin"]
    expires_days: float | None = Field(None, gt=0, le=36_500, description="days until it stops working")


@router.get("/tokens", tags=["admin"], response_model=None,
            responses={200: {"model": list[TokenRecord]}})
def tokens(request: Request) -> list[dict[str, Any]]:
    s = _service(request)
    return _json(s.read(s.ledger.tokens))


@router.post("/tokens", tags=["admin"], status_code=201)
def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
    """A new token; the response is the only place the token itself appears."""
    s = _service(request)
    record, secret = s.call(s.ledger.issue_token, body.name, body.scope, expires_days=body.expires_days)
    s.forget_tokens()
    return {**_json(record), "token": secret}


@router.delete("/tokens/{name}", tags=["admin"], response_model=None,
               responses={200: {"model": TokenRecord}})
def revoke_token(request: Request, name: str) -> dict[str, Any]:
    s = _service(request)
    record = s.call(s.ledger.revoke_token, name)
    s.forget_tokens()
    return _json(record)

