"""The datasets of a served ledger: their records, Croissant and OpenLineage exports, and
registration, where the shards are read and fingerprinted here (where the data is) and their
document rows uploaded as an Arrow IPC stream while the next are fingerprinted, then registered
on the server. Mixed into :class:`~provenance.remote.RemoteLedger`.
"""

from __future__ import annotations

import contextlib
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provenance import errors
from provenance.records import DatasetRecord, DocumentRecord, RegistrationResult, ShardRecord, VersionRecord
from provenance.remote.transport import segment
from provenance.wire import ARROW_STREAM


class RemoteDatasets:
    """Datasets over HTTP (``self`` is a :class:`~provenance.remote.RemoteLedger`)."""

    def datasets(self, name: str | None = None, *, all_versions: bool = False) -> list[DatasetRecord]:
        rows = self._call("GET", "datasets", params={"name": name, "all_versions": str(all_versions).lower()})
        return [DatasetRecord.model_validate(r) for r in rows]

    def dataset(self, ref: str | DatasetRecord | RegistrationResult) -> DatasetRecord:
        return DatasetRecord.model_validate(self._call("GET", f"datasets/{segment(ref)}"))

    def shards(self, dataset: str | DatasetRecord) -> list[ShardRecord]:
        return [ShardRecord.model_validate(r) for r in self._call("GET", f"datasets/{segment(dataset)}/shards")]

    def withheld(self, dataset: str | DatasetRecord) -> list[tuple[str, int, int]]:
        """As :meth:`provenance.Ledger.withheld` answers (read through the server's read-only SQL):
        a ``RegisteredDataset`` of a version ``remove_documents`` made reads its files back through it."""
        from provenance.ledger.data import WITHHELD

        ds = self.dataset(dataset)
        return [tuple(r.values()) for r in self.sql(WITHHELD, [ds.dataset_id, ds.name, ds.version]).to_pylist()]

    def documents(self, dataset: str | DatasetRecord, *, columns: Any = None, limit: int | None = None) -> Any:
        """The documents of a dataset version as an Arrow table, in shard and row order, as
        :meth:`provenance.Ledger.documents` answers."""
        from provenance.ledger._common import quote_identifier

        ds = self.dataset(dataset)
        cols = "*" if not columns else ", ".join(quote_identifier(c) for c in columns)
        query = f"SELECT {cols} FROM documents WHERE dataset_id = ? ORDER BY shard_index, row_index"
        return self.sql(query + (f" LIMIT {int(limit)}" if limit is not None else ""), [ds.dataset_id])

    def document(self, dataset: str | DatasetRecord, key: str) -> DocumentRecord:
        return DocumentRecord.model_validate(self._call("GET", f"datasets/{segment(dataset)}/documents/{segment(str(key))}"))

    def export_croissant(self, dataset: str | DatasetRecord, base: Any = None) -> dict[str, Any]:
        from provenance.croissant import warn_invalid_records

        ds = self.dataset(dataset)  # file paths relative to base as locally (it was dropped): right where the
        # server's files are at the same paths here (one machine, or shared storage)
        where = None if base is None else str(Path(base).resolve())
        document = self._call("GET", f"datasets/{segment(ds)}/croissant", params={"base": where})
        warn_invalid_records(ds)
        return document

    def export_openlineage(self, version: str | VersionRecord, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """The OpenLineage RunEvents of ``version``'s lineage, made here from the served lineage,
        runs and datasets; see :func:`provenance.openlineage_out.export_events`."""
        from provenance import openlineage_out

        return openlineage_out.export_events(self, version, namespace=namespace)

    def register_dataset(self, name: str, sources: Any, *, progress: Any = None, **options: Any) -> RegistrationResult:
        """Read and fingerprint ``sources`` here, upload the rows, register them on the server."""
        from provenance.uploads import asked_meta, fingerprint_to_file

        asked_meta(options)  # the licence checked here: refused before any reading, its warning said here
        with tempfile.TemporaryDirectory(prefix="prov-upload-") as tmp:
            path = Path(tmp) / "documents.arrows"
            pieces: queue.Queue = queue.Queue(maxsize=64)  # the rows go out while the next are fingerprinted
            done: dict[str, Any] = {}

            def fingerprint() -> None:
                try:
                    done["result"] = fingerprint_to_file(name, sources, path, progress=progress, tee=pieces.put,
                                                         **options)
                except BaseException as exc:  # raised again in this thread
                    done["error"] = exc
                finally:
                    pieces.put(None)

            def finished() -> tuple:
                worker.join()
                if "error" in done:
                    raise done["error"]
                return done["result"]

            def streamed() -> Iterator[bytes]:
                while (piece := pieces.get()) is not None:
                    yield piece
                finished()  # a source that fails stops the upload here, before its end is sent

            sent_once: list[bool] = []

            def content() -> Any:
                if not sent_once:
                    sent_once.append(True)
                    return streamed()
                finished()  # a retry sends the file, once it is whole
                return path.open("rb")

            worker = threading.Thread(target=fingerprint, name="provenance-fingerprint", daemon=True)
            worker.start()
            try:
                upload = self._call("POST", "uploads", content=content, content_type=ARROW_STREAM)
            except BaseException:
                while worker.is_alive():  # unblock and end the fingerprinting before the folder goes
                    with contextlib.suppress(queue.Empty):
                        pieces.get(timeout=0.1)
                if "error" in done:
                    raise done["error"] from None
                raise
            shards, counters, sent = finished()
        return self._register_upload(name, upload["upload_id"], shards, counters, sent)

    def register_upload_file(self, name: str, path: Path, shards: list[dict[str, Any]], counters: dict[str, int],
                             options: dict[str, Any]) -> RegistrationResult:
        """Upload the rows in the upload file at ``path`` (fingerprinted elsewhere: Ray actors) and
        register them on the server as ``name`` with their ``shards`` (records without a dataset,
        in shard order), ``counters`` and ``options`` (as the server takes them)."""
        upload = self._call("POST", "uploads", content=lambda: path.open("rb"), content_type=ARROW_STREAM,
                            length=path.stat().st_size)
        return self._register_upload(name, upload["upload_id"], shards, counters, options)

    def _register_upload(self, name: str, upload_id: str, shards: list[dict[str, Any]], counters: dict[str, int],
                         options: dict[str, Any]) -> RegistrationResult:
        body = {"name": name, "upload_id": upload_id, "shards": shards, "options": options, "counters": counters}
        try:
            result = RegistrationResult.model_validate(self._call("POST", "datasets", json_body=body))
        except errors.AlreadyAppliedError as exc:  # registered before the server stopped: read it back
            if "dataset_id" not in exc.made:
                raise
            ds = self.dataset(exc.made["dataset_id"])
            errors.warn(f"{ds.dataset_id} was registered before the server stopped, and its answer was lost: "
                        "whether it holds retracted or removed documents again was not checked (prov "
                        "retractions lists what was taken out)")
            return RegistrationResult(dataset=ds, created=True, message=f"registered {ds.dataset_id} (read back: the "
                                      "server stopped before it answered)")
        result.warn_retracted()
        return result

