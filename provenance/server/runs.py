"""Training runs (tag ``runs``): started detached by a client, which logs their examples (Arrow
IPC streams of ``seq, step, key, dataset``, each written in one transaction) and ends them; their
records and per-shard counts.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from provenance.records import CheckpointRecord, RunRecord, RunShardRecord
from provenance.server.common import Body, JsonRoute, jsonable, receive_bytes, service_of
from provenance.wire import ARROW_STREAM

router = APIRouter(route_class=JsonRoute)


class StartRunBody(Body):
    message: str
    base: str | None = None
    datasets: dict[str, float] = Field(default_factory=dict, description="dataset ref -> epochs")
    params: dict[str, Any] = Field(default_factory=dict)
    author: str | None = None
    host: str | None = Field(None, description="the host the training process runs on")
    pid: int | None = Field(None, description="the training process, watched for abandonment on its host "
                                                "(left out: none; the client ends the run)")


@router.get("/runs", tags=["runs"], response_model=None,
            responses={200: {"model": list[RunRecord]}})
def runs(request: Request) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.runs))


@router.post("/runs", tags=["runs"], status_code=201, response_model=None,
             responses={201: {"model": RunRecord}})
def start_run(request: Request, body: StartRunBody) -> dict[str, Any]:
    """Record the start of a training run (detached: the client ends it)."""
    s = service_of(request)
    from provenance.runs import start_run as start

    run = s.call(start, s.ledger, base=body.base, datasets=body.datasets, params=body.params, message=body.message,
                 author=body.author, detached=True, pid=0 if body.pid is None else body.pid, host=body.host)
    # no pid: no owner (0), not the server's process, which a restart ends: the next run on its host then
    # marked this one abandoned while its job still ran
    return jsonable(run.record)


@router.get("/runs/{ref}", tags=["runs"], response_model=None,
            responses={200: {"model": RunRecord}})
def run_record(request: Request, ref: str) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.run, ref))


@router.get("/runs/{ref}/shards", tags=["runs"], response_model=None,
            responses={200: {"model": list[RunShardRecord]}})
def run_shards(request: Request, ref: str) -> list[dict[str, Any]]:
    """Per shard of the run's datasets: examples seen and epochs (once the run has ended)."""
    s = service_of(request)
    return jsonable(s.read(s.ledger.run_shards, ref))


@router.get("/runs/{ref}/checkpoints", tags=["runs"], response_model=None,
            responses={200: {"model": list[CheckpointRecord]}})
def run_checkpoints(request: Request, ref: str) -> list[dict[str, Any]]:
    """The versions saved as checkpoints of the run, by step (``POST /versions?checkpoint_of=``)."""
    s = service_of(request)
    return jsonable(s.read(s.ledger.checkpoints, ref))


@router.post("/runs/{ref}/examples", tags=["runs"],
             openapi_extra={"requestBody": {"content": {ARROW_STREAM: {"schema": {"type": "string",
                                                                                 "format": "binary"}}}}})
async def log_examples(request: Request, ref: str) -> dict[str, Any]:
    """Logged examples (an Arrow IPC stream of ``seq, step, key, dataset``), written in one transaction."""
    s = service_of(request)
    data = await receive_bytes(request, s)
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
    s = service_of(request)
    from provenance.runs import end_run as end

    return jsonable(s.call(end, s.ledger, ref, body.status, body.error))
