"""The training runs of a served ledger: started, attached to and read here; a
:class:`RemoteRun` buffers its examples and sends them in batches, and sends its end. Mixed into
:class:`~provenance.remote.RemoteLedger`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from provenance import errors
from provenance.records import RunRecord, RunShardRecord, VersionRecord
from provenance.remote.transport import ref_of, segment
from provenance.runs import Run, declared_items, stored_params
from provenance.wire import ARROW_STREAM, table_to_ipc

#: Examples a remote run buffers before sending them: each batch is a round trip and a transaction
#: on the server, so a bigger one than a local run's 65,536 (about 3 MiB of keys; 4 processes
#: logging into one server on two cores: 0.75M examples/s with 65,536, 1.5M/s with this).
REMOTE_FLUSH = 262_144


class RemoteRuns:
    """Runs over HTTP (``self`` is a :class:`~provenance.remote.RemoteLedger`)."""

    def runs(self) -> list[RunRecord]:
        return [RunRecord.model_validate(r) for r in self._call("GET", "runs")]

    def run(self, ref: str | RunRecord) -> RunRecord:
        return RunRecord.model_validate(self._call("GET", f"runs/{segment(ref)}"))

    def run_shards(self, run: str | RunRecord) -> list[RunShardRecord]:
        return [RunShardRecord.model_validate(r) for r in self._call("GET", f"runs/{segment(run)}/shards")]

    def attach_run(self, run: str | RunRecord, *, openlineage: Any = None) -> RemoteRun:
        """A running run started elsewhere, to log into or end (its end is sent to OpenLineage
        from here, as :meth:`start_run` says)."""
        from provenance import openlineage_out

        record = self.run(run)
        if record.status != "running":
            raise errors.InvalidParameterError(f"run {record.run_id[:12]} is {record.status}, not running"
                                                 f"{f' ({record.error})' if record.error else ''}")
        return RemoteRun(self, record, REMOTE_FLUSH, owned=False, openlineage=openlineage_out.emitter(openlineage))

    def start_run(self, *, base: str | VersionRecord | None = None, datasets: Any = (),
                  params: Mapping[str, Any] | None = None, message: str, author: str | None = None,
                  flush_every: int = REMOTE_FLUSH, detached: bool = False, pid: int | None = None,
                  openlineage: Any = None) -> RemoteRun:
        """Start a training run on the server; the run buffers its examples here and sends them
        in batches (Arrow; :data:`REMOTE_FLUSH` keys by default), and ends when this process ends it
        (or fails it at exit). Its OpenLineage events are sent from here, where ``openlineage``
        says (:func:`provenance.openlineage_out.emitter`)."""
        from provenance import openlineage_out

        emitter = openlineage_out.emitter(openlineage)
        declared = {ref_of(ref): epochs for ref, epochs in declared_items(datasets)}
        body = {"message": message, "base": ref_of(base) if base is not None else None, "datasets": declared,
                "params": stored_params(params, emitter, message), "author": author, "host": socket.gethostname(),
                "pid": os.getpid() if pid is None else int(pid)}
        record = RunRecord.model_validate(self._made("run_id", "runs", lambda: self._call("POST", "runs",
                                                                                          json_body=body)))
        run = RemoteRun(self, record, flush_every, owned=not detached, openlineage=emitter)
        if emitter is not None:
            emitter.start(self, record, wait=detached)
        return run


class RemoteRun(Run):
    """A run on a ledger server: examples are buffered here and sent in batches; the end is sent."""

    def _write(self, log: pa.Table) -> None:
        with _applied():  # the batch landed before the server stopped: sending it again would log it twice
            self.ledger._call("POST", f"runs/{segment(self.run_id)}/examples", content=lambda: table_to_ipc(log),
                              content_type=ARROW_STREAM)

    def _commit(self, state: Any, **options: Any) -> VersionRecord:
        return self.ledger.commit(state, **options)

    def _send_end(self, status: str, error: str | None) -> None:
        with _applied():
            self.ledger._call("POST", f"runs/{segment(self.run_id)}/end", json_body={"status": status, "error": error})


@contextlib.contextmanager
def _applied() -> Iterator[None]:
    """A write whose retry the server answers :class:`~provenance.errors.AlreadyAppliedError`
    (applied once, its answer lost when the server stopped) is done: its caller goes on."""
    try:
        yield
    except errors.AlreadyAppliedError:
        pass
