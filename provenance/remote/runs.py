"""The training runs of a served ledger: started, attached to and read here; a
:class:`RemoteRun` buffers its examples and sends them in batches, and sends its end. Mixed into
:class:`~provenance.remote.RemoteLedger`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from provenance import errors
from provenance.records import CheckpointRecord, RunRecord, RunShardRecord, VersionRecord
from provenance.remote.transport import ref_of, segment
from provenance.runs import Run, check_flush_every, declared_items, stored_params
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

    def checkpoints(self, run: str | RunRecord) -> list[CheckpointRecord]:
        return [CheckpointRecord.model_validate(r) for r in self._call("GET", f"runs/{segment(run)}/checkpoints")]

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

        check_flush_every(flush_every)  # before the run is started on the server
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

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # A batch whose sending failed (the server stayed down past the retries): how many examples at the
        # start of the buffer landed before it, its Idempotency-Key and the batch. It may have landed too:
        # it is sent again under its key (sent under a new one, a batch that had landed was logged twice).
        self._unsent: tuple[int, str, pa.Table] | None = None
        self._end_keys: dict[tuple[str, str | None], str] = {}  # each end sent, and its key: the same for a retry
        self._commit_sent = False  # a commit was sent: one whose answer never came may have landed

    def _write(self, log: pa.Table) -> None:
        landed = 0
        if self._unsent is not None:  # the buffer starts with what landed, then the batch that failed
            landed, key, sent = self._unsent
            self._unsent = None
            self._send(sent, key, landed)
            landed += sent.num_rows
            log = log.slice(landed)
            if not log.num_rows:
                return
            log = log.set_column(0, "seq", pa.array(np.arange(log.num_rows, dtype=np.int64)))
        self._send(log, uuid.uuid4().hex, landed)

    def _send(self, log: pa.Table, key: str, landed: int) -> None:
        try:
            with _applied():  # the batch landed before the server stopped: sending it again would log it twice
                self.ledger._call("POST", f"runs/{segment(self.run_id)}/examples", content=lambda: table_to_ipc(log),
                                  content_type=ARROW_STREAM, key=key)
        except (errors.InvalidParameterError, errors.RunEndedError):
            raise  # refused (the buffer is dropped), or the run has ended
        except errors.ProvenanceError:
            self._unsent = (landed, key, log)
            raise

    def _commit(self, state: Any, **options: Any) -> VersionRecord:
        if self._commit_sent:  # an earlier commit failed: when it landed (its answer lost), it is the run's
            landed = self.ledger.run(self.run_id).version_id  # version ('only a running run can commit')
            if landed is not None:
                return self.ledger.version(landed)
        self._commit_sent = True
        return self.ledger.commit(state, **options)

    def _store_checkpoint(self, state: Any, **options: Any) -> VersionRecord:
        return self.ledger.commit(state, **options)

    def _send_end(self, status: str, error: str | None) -> None:
        # an end sent again (its answer never came: the server stayed down past the retries) goes under its
        # first key: under a new one, an end that had landed was refused as 'finished already'
        with _applied():
            self.ledger._call("POST", f"runs/{segment(self.run_id)}/end", json_body={"status": status, "error": error},
                              key=self._end_keys.setdefault((status, error), uuid.uuid4().hex))


@contextlib.contextmanager
def _applied() -> Iterator[None]:
    """A write whose retry the server answers :class:`~provenance.errors.AlreadyAppliedError`
    (applied once, its answer lost when the server stopped) is done: its caller goes on."""
    try:
        yield
    except errors.AlreadyAppliedError:
        pass
