"""Datasets (tag ``datasets``): their versions, shards, documents and Croissant export;
registration through a server (``POST /uploads`` keeps the document rows a client fingerprinted,
``POST /datasets`` registers them in one transaction); near-duplicate pairs from the stored LSH
bands; and a new version without some documents (``POST /datasets/{name}/remove``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from provenance import errors
from provenance.records import DatasetRecord, DocumentRecord, RegistrationResult, ShardRecord
from provenance.server.common import Body, JsonRoute, jsonable, receive_file, service_of
from provenance.wire import ARROW_STREAM, table_to_ipc

router = APIRouter(route_class=JsonRoute)


@router.get("/datasets", tags=["datasets"], response_model=None,
            responses={200: {"model": list[DatasetRecord]}})
def datasets(request: Request, name: str | None = None, all_versions: bool = False) -> list[dict[str, Any]]:
    """The latest version of every dataset (or every version, or those of ``name``)."""
    s = service_of(request)
    return jsonable(s.read(s.ledger.datasets, name, all_versions=all_versions))


@router.get("/datasets/{ref}", tags=["datasets"], response_model=None,
            responses={200: {"model": DatasetRecord}})
def dataset(request: Request, ref: str) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.dataset, ref))


@router.get("/datasets/{ref}/shards", tags=["datasets"], response_model=None,
            responses={200: {"model": list[ShardRecord]}})
def shards(request: Request, ref: str) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.shards, ref))


@router.get("/datasets/{ref}/documents/{key:path}", tags=["datasets"], response_model=None,
            responses={200: {"model": DocumentRecord}})
def document(request: Request, ref: str, key: str) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.document, ref, key))


@router.get("/datasets/{ref}/croissant", tags=["datasets"])
def croissant(request: Request, ref: str, base: str | None = None) -> dict[str, Any]:
    """The dataset version as Croissant 1.1 JSON-LD; its file paths relative to ``base`` (an
    absolute path: the folder the document will be written in), else to the shards' folder."""
    s = service_of(request)
    if base is not None and not os.path.isabs(base):
        raise errors.InvalidParameterError(f"base {base!r} must be an absolute path (the folder the document goes in)")
    return s.read(s.ledger.export_croissant, ref, base)


@router.post("/uploads", tags=["datasets"], status_code=201,
             openapi_extra={"requestBody": {"content": {ARROW_STREAM: {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
async def upload(request: Request) -> dict[str, Any]:
    """Document rows a client fingerprinted, as an Arrow IPC stream, kept for one registration."""
    s = service_of(request)
    path = await receive_file(request, s, ".arrows")
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
    s = service_of(request)
    path = s.uploads / f"{body.upload_id}.arrows"
    if not path.exists():
        raise errors.NotFoundError(f"no upload {body.upload_id} (uploads are kept until registered)")
    from provenance.uploads import register_uploaded

    result = s.call(register_uploaded, s.ledger, body.name, path, body.shards, body.options, body.counters)
    path.unlink(missing_ok=True)
    return jsonable(result)


class NearBody(Body):
    datasets: list[str] = Field(min_length=1)
    threshold: float = Field(0.8, gt=0, le=1)


@router.post("/near-duplicates", tags=["datasets"], response_class=Response,
             responses={200: {"content": {ARROW_STREAM: {}}, "description": "key_a, key_b, dataset_a, dataset_b, "
                                                                            "jaccard, as an Arrow IPC stream"}})
def near_duplicates(request: Request, body: NearBody) -> Response:
    """Pairs of documents whose stored LSH bands collide, at estimated Jaccard >= threshold."""
    s = service_of(request)
    return Response(table_to_ipc(s.read(s.ledger.near_duplicates, body.datasets, body.threshold)),
                    media_type=ARROW_STREAM)


class RemoveDocumentsBody(Body):
    keys: list[str] = Field(min_length=1)
    reason: str | None = None
    retraction: str | None = None


@router.post("/datasets/{name}/remove", tags=["datasets"], status_code=201)
def remove_documents(request: Request, name: str, body: RemoveDocumentsBody) -> dict[str, Any]:
    """A new version of the dataset without the documents ``keys`` (their rows copied, no source read)."""
    s = service_of(request)
    return jsonable(s.call(s.ledger.remove_documents, name, body.keys, reason=body.reason,
                           retraction=body.retraction))
