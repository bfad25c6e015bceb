"""A ledger served by ``prov serve``, with the facade's interface: ``Ledger.open("http://host:8765",
token=...)`` (or ``PROV_LEDGER`` and ``PROV_TOKEN``) returns a :class:`RemoteLedger`.

Each verb is one or a few HTTP calls (httpx: pooled connections, timeouts). Connection errors and
502/503/504 answers are retried with exponential backoff; every write carries an
``Idempotency-Key``, so a retry of a write the server already applied gets its stored answer and
is not applied twice. Errors come back as the library's own exception classes. Heavy work stays
where the data is: :meth:`register_dataset` reads and fingerprints the shards here and uploads
the document rows (Arrow IPC); :meth:`commit` uploads the state as a safetensors file;
:meth:`checkout` streams it back, written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from provenance import errors
from provenance.files import naming
from provenance.plain import utc_time
from provenance.records import (
    DatasetRecord,
    DocumentRecord,
    ParamRecord,
    RegistrationResult,
    RunRecord,
    RunShardRecord,
    ShardRecord,
    TagRecord,
    TokenRecord,
    VersionRecord,
    check_name,
)
from provenance.results import DedupReport, GateReport, Lineage, MemorizationReport, MergeReceipt, TaintReport
from provenance.runs import Run
from provenance.wire import (
    API,
    ARROW_STREAM,
    BUNDLE,
    LOW_RANK_PREFIX,
    READ_POSTS,
    WARNINGS_HEADER,
    ipc_to_table,
    raise_error,
    table_to_ipc,
    unpack,
    warnings_of,
)

#: Examples a remote run buffers before sending them: each batch is a round trip and a transaction
#: on the server, so a bigger one than a local run's 65,536 (about 3 MiB of keys; 4 processes
#: logging into one server on two cores: 0.75M examples/s with 65,536, 1.5M/s with this).
REMOTE_FLUSH = 262_144


RETRY_STATUS = (502, 503, 504)


def is_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


def _warning_class(name: str) -> type[Warning]:
    """The class of a warning the server passed on, by its name: the library's own (so that a
    filter on it works as with a local ledger), else a built-in warning, else ``UserWarning``."""
    import builtins

    from provenance.audits import UnsearchedWarning
    from provenance.croissant import ReadsOtherwiseWarning
    from provenance.records import UnknownLicenseWarning
    from provenance.runs import EpochsDisagreeWarning

    own = {c.__name__: c for c in (UnsearchedWarning, ReadsOtherwiseWarning, UnknownLicenseWarning, EpochsDisagreeWarning)}
    found = own.get(name, getattr(builtins, name, None))
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


class RemoteLedger:
    """The facade over HTTP (see the module doc)."""

    read_only = False

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 300.0, retries: int = 6,
                 verify: bool | str = True):
        self.url = url.rstrip("/")
        self.root = self.url
        token = token or os.environ.get("PROV_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify,
                                  timeout=httpx.Timeout(timeout, connect=10.0),
                                  limits=httpx.Limits(max_connections=16, max_keepalive_connections=8))
        weakref.finalize(self, self._http.close)  # the pooled connections close with the ledger

    def __repr__(self) -> str:
        return f"RemoteLedger({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[RemoteLedger]:
        """Nothing to hold: the server keeps the ledger open (for code written against a local one)."""
        yield self

    # -- transport --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
              content: Callable[[], Any] | None = None, content_type: str | None = None,
              stream_to: Path | None = None, accept: str | None = None, length: int | None = None) -> Any:
        """One API call, retried on connection errors and 502/503/504 (writes with one
        Idempotency-Key throughout); returns the decoded JSON (or bytes, or ``stream_to``)."""
        url = path if path.startswith("/") else f"{API}/{path}"
        headers = {}
        if method != "GET" and url not in READ_POSTS:  # writes only
            headers["Idempotency-Key"] = uuid.uuid4().hex
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        if length is not None:
            headers["Content-Length"] = str(length)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                body = content() if content is not None else None
                try:
                    request = self._http.build_request(method, url, json=json_body, params=params, headers=headers,
                                                       content=body)
                    response = self._http.send(request, stream=True)
                finally:
                    if hasattr(body, "close"):
                        body.close()
                try:
                    if response.status_code in RETRY_STATUS and attempt < self.retries:
                        response.read()
                        raise _Retry
                    if response.status_code >= 400:
                        response.read()
                        try:
                            detail = response.json()
                        except ValueError:
                            detail = response.text
                        raise_error(response.status_code, detail, f"{method} {self.url}{url}")
                    for category, message in warnings_of(response.headers.get(WARNINGS_HEADER)):
                        warnings.warn(message, _warning_class(category), stacklevel=3)  # as a local ledger warns
                    if stream_to is not None:
                        _save(response, stream_to)
                        return stream_to
                    data = response.read()
                finally:
                    response.close()
            except (httpx.TransportError, _Retry) as exc:
                if attempt >= self.retries:
                    raise errors.ProvenanceError(f"ledger server {self.url}: {method} {url} failed after "
                                                 f"{self.retries + 1} tries: {exc or 'server unavailable'}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            kind = response.headers.get("content-type", "")
            if kind.startswith("application/json"):
                return json.loads(data)
            return data
        raise AssertionError("unreachable")

    def _made(self, what: str, where: str, write: Callable[[], Any]) -> Any:
        """``write()``'s answer; when the server applied it and then stopped before answering (a
        retry gets :class:`~provenance.errors.AlreadyAppliedError` naming what it made), what it
        made, read back from ``where/ID``: the write happened once, and its caller goes on."""
        try:
            return write()
        except errors.AlreadyAppliedError as exc:
            if what not in exc.made:
                raise
            return self._call("GET", f"{where}/{exc.made[what]}")

    # -- the ledger -----------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return self._call("GET", "summary")

    def schema_version(self) -> int:
        return self._call("GET", "/healthz")["schema_version"]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        data = self._call("POST", "sql", json_body={"query": query, "params": list(params) if params else None})
        return ipc_to_table(data, "the server's answer")

    def output_path(self, path: str | os.PathLike, *, parents: bool | None = None) -> Path:
        """Check a file this client is about to write (a local path: the ledger is elsewhere), as
        a local ledger checks one; see :func:`provenance.files.check_output`."""
        from provenance.files import check_output

        given = Path(path).expanduser()
        return check_output(given, given.resolve(), parents=parents)

    # -- datasets -------------------------------------------------------------------------------------

    def datasets(self, name: str | None = None, *, all_versions: bool = False) -> list[DatasetRecord]:
        rows = self._call("GET", "datasets", params={"name": name, "all_versions": str(all_versions).lower()})
        return [DatasetRecord.model_validate(r) for r in rows]

    def dataset(self, ref: str | DatasetRecord | RegistrationResult) -> DatasetRecord:
        return DatasetRecord.model_validate(self._call("GET", f"datasets/{_ref(ref)}"))

    def shards(self, dataset: str | DatasetRecord) -> list[ShardRecord]:
        return [ShardRecord.model_validate(r) for r in self._call("GET", f"datasets/{_ref(dataset)}/shards")]

    def document(self, dataset: str | DatasetRecord, key: str) -> DocumentRecord:
        return DocumentRecord.model_validate(self._call("GET", f"datasets/{_ref(dataset)}/documents/{key}"))

    def export_croissant(self, dataset: str | DatasetRecord, base: Any = None) -> dict[str, Any]:
        from provenance.croissant import warn_invalid_records

        ds = self.dataset(dataset)
        document = self._call("GET", f"datasets/{_ref(ds)}/croissant")
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
            warnings.warn(f"{ds.dataset_id} was registered before the server stopped, and its answer was lost: "
                          "whether it holds retracted or removed documents again was not checked (prov "
                          "retractions lists what was taken out)", stacklevel=3)
            return RegistrationResult(dataset=ds, created=True, message=f"registered {ds.dataset_id} (read back: the "
                                      "server stopped before it answered)")
        result.warn_retracted()
        return result

    # -- versions -------------------------------------------------------------------------------------

    def versions(self) -> list[VersionRecord]:
        return [VersionRecord.model_validate(r) for r in self._call("GET", "versions")]

    def version(self, ref: str | VersionRecord) -> VersionRecord:
        return VersionRecord.model_validate(self._call("GET", f"versions/{_ref(ref)}"))

    def manifest(self, version: str | VersionRecord) -> dict[str, ParamRecord]:
        return {k: ParamRecord.model_validate(v) for k, v in self._call("GET", f"versions/{_ref(version)}/manifest").items()}

    def receipt(self, version: str | VersionRecord) -> MergeReceipt | None:
        data = self._call("GET", f"versions/{_ref(version)}/receipt")
        return MergeReceipt.model_validate(data) if data is not None else None

    def tags(self) -> list[TagRecord]:
        return [TagRecord.model_validate(r) for r in self._call("GET", "tags")]

    def tag(self, name: str, version: str | VersionRecord) -> VersionRecord:
        try:
            return VersionRecord.model_validate(self._call("PUT", f"tags/{name}", json_body={"version": _ref(version)}))
        except errors.AlreadyAppliedError:  # the tag was set before the server stopped: the version it was set to
            return self.version(_ref(version))

    def commit(self, state: Any, *, parent: str | VersionRecord | None = None, message: str, author: str | None = None,
               run: str | None = None, encoding: str = "auto", allow_nonfinite: bool = False, progress: Any = None,
               sync: bool = True, low_rank: Mapping[str, tuple[Any, Any, float]] | None = None,
               **options: Any) -> VersionRecord:
        """Upload ``state`` (a state dict, a module, a safetensors file or a sharded checkpoint)
        and store it on the server as a new version (the server syncs its objects whatever ``sync``
        says: durability is the server's). ``low_rank`` factors travel in the same upload."""
        if options:
            raise errors.InvalidParameterError(
                f"{', '.join(sorted(options))}: not available through a ledger server (commit on the ledger's host)")
        params = {"message": message, "parent": _ref(parent) if parent is not None else None, "author": author,
                  "run": run, "encoding": encoding, "allow_nonfinite": str(allow_nonfinite).lower()}
        if low_rank:
            state = _as_tensors(state)
            for name, (b, a, _scale) in low_rank.items():
                state[f"{LOW_RANK_PREFIX}B:{name}"], state[f"{LOW_RANK_PREFIX}A:{name}"] = b, a
            params["low_rank_scales"] = json.dumps({name: float(f[2]) for name, f in low_rank.items()})
        body = _state_body(state)
        data = self._made("version_id", "versions", lambda: self._call(
            "POST", "versions", params=params, content=body, content_type="application/octet-stream",
            length=getattr(body, "size", None)))
        return VersionRecord.model_validate(data)

    def store_fisher(self, version: str | VersionRecord, fisher: Mapping[str, Any], *, keep: float | None = None,
                     meta: Mapping[str, Any] | None = None, update: bool = False) -> int:
        """Upload the diagonal Fisher of ``version`` (parameter name -> tensor) to the server; see
        :func:`provenance.merges.store_fisher`."""
        body = _state_body(dict(fisher))
        params = {"meta": json.dumps(dict(meta or {})), "keep": keep, "update": update}
        return self._call("POST", f"versions/{_ref(version)}/fisher", params=params, content=body,
                          content_type="application/octet-stream", length=body.size)["bytes"]

    def near_duplicates(self, datasets: Sequence[str | DatasetRecord], threshold: float = 0.8) -> pa.Table:
        data = self._call("POST", "near-duplicates", json_body={"datasets": [_ref(d) for d in datasets],
                                                                "threshold": threshold})
        return ipc_to_table(data, "the pairs")

    def checkout(self, version: str | VersionRecord, output: str | os.PathLike | None = None, *,
                 parents: bool = False, progress: Any = None) -> Any:
        """The version's tensors, bit-identical: a dict, or the safetensors file ``output``."""
        ref = _ref(version)
        if output is not None:
            out = self.output_path(output, parents=parents)
            return self._call("GET", f"versions/{ref}/tensors", stream_to=out)
        from provenance.tensorfile import read_tensors

        with tempfile.TemporaryDirectory(prefix="prov-checkout-") as tmp:
            path = self._call("GET", f"versions/{ref}/tensors", stream_to=Path(tmp) / "state.safetensors")
            tensors, _ = read_tensors(path)
            return tensors

    def checkout_hf(self, version: str | VersionRecord, folder: str | os.PathLike, **options: Any) -> Path:
        """Refused: a ledger server does not serve a version's stored files (config, tokenizer)."""
        raise errors.InvalidParameterError(
            "checkout as a Hugging Face folder is not available through a ledger server: it does not serve a "
            "version's stored files (config, tokenizer); check out on the ledger's host, or check out the tensors "
            "to a .safetensors file")

    def model_files(self, version: str | VersionRecord) -> list[Any]:
        """Refused: a ledger server does not serve a version's stored files."""
        raise errors.InvalidParameterError(
            "a version's checkpoint-folder files are not available through a ledger server; list them on the "
            "ledger's host")

    def ancestors(self, version: str | VersionRecord) -> list[VersionRecord]:
        return [VersionRecord.model_validate(r) for r in self._call("GET", f"versions/{_ref(version)}/ancestors")]

    def diff(self, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]:
        return self._call("GET", f"versions/{_ref(old)}/diff/{_ref(new)}")

    def data_diff(self, a: str | VersionRecord, b: str | VersionRecord) -> dict[str, Any]:
        return self._call("GET", f"versions/{_ref(a)}/diff/{_ref(b)}", params={"data": "true"})

    def merge(self, versions: Sequence[str | VersionRecord], *, gate: Mapping[str, Any] | None = None,
              progress: Any = None, device: Any = None, **options: Any) -> VersionRecord:
        if device is not None:
            raise errors.InvalidParameterError("device: the server merges on its own device")
        if "base" in options and options["base"] is not None:
            options["base"] = _ref(options["base"])
        body = {"versions": [_ref(v) for v in versions], **options, "gate": dict(gate) if gate is not None else None}
        data = self._made("version_id", "versions", lambda: self._call("POST", "merges", json_body=body)["version"])
        return VersionRecord.model_validate(data)

    def backup(self, destination: str | os.PathLike, *, link: bool = False) -> dict[str, Any]:
        """A consistent copy of the served ledger in ``destination``, a folder on the server's machine."""
        return self._call("POST", "backup", json_body={"destination": str(destination), "link": link})

    def gc(self, *, apply: bool = False) -> dict[str, Any]:
        return self._call("POST", "gc", json_body={"apply": apply})

    def verify(self, *, objects: bool = False, repair: bool = False, progress: Any = None) -> Any:
        from provenance.verify import VerifyReport

        return VerifyReport.model_validate(self._call("POST", "verify", json_body={"objects": objects, "repair": repair}))

    # -- runs -----------------------------------------------------------------------------------------

    def runs(self) -> list[RunRecord]:
        return [RunRecord.model_validate(r) for r in self._call("GET", "runs")]

    def run(self, ref: str | RunRecord) -> RunRecord:
        return RunRecord.model_validate(self._call("GET", f"runs/{_ref(ref)}"))

    def run_shards(self, run: str | RunRecord) -> list[RunShardRecord]:
        return [RunShardRecord.model_validate(r) for r in self._call("GET", f"runs/{_ref(run)}/shards")]

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
        if isinstance(datasets, (str, DatasetRecord, RegistrationResult)):
            datasets = [datasets]
        declared = ({_ref(k): float(v) for k, v in datasets.items()} if isinstance(datasets, Mapping)
                    else {_ref(d): 1.0 for d in datasets})
        body = {"message": message, "base": _ref(base) if base is not None else None, "datasets": declared,
                "params": openlineage_out.with_job(params, emitter, message), "author": author, "host": socket.gethostname(),
                "pid": os.getpid() if pid is None else int(pid)}
        record = RunRecord.model_validate(self._made("run_id", "runs", lambda: self._call("POST", "runs",
                                                                                          json_body=body)))
        run = RemoteRun(self, record, flush_every, owned=not detached, openlineage=emitter)
        if emitter is not None:
            emitter.start(self, record, wait=detached)
        return run

    # -- questions ----------------------------------------------------------------------------------

    def lineage(self, version: str | VersionRecord) -> Lineage:
        data = self._call("GET", f"lineage/{_ref(version)}", accept=BUNDLE)
        meta, tables = unpack(data)
        return Lineage.model_validate({**meta, **tables})

    def model_card(self, version: str | VersionRecord, *, base_model: str | None = None) -> Any:
        """The version's Hugging Face model card, made here from the server's lineage and audits
        (:func:`provenance.model_card.model_card`); a base model is named only when given."""
        from provenance.model_card import model_card

        return model_card(self, version, base_model=base_model)

    def taint(self, *, dataset: Any = None, shard: str | int | None = None, key: str | None = None,
              text: str | None = None, near: float | None = None) -> TaintReport:
        body = {"dataset": _ref(dataset) if dataset is not None else None,
                "shard": str(shard) if shard is not None else None, "key": key, "text": text, "near": near}
        return TaintReport.model_validate(self._call("POST", "taint", json_body=body))

    def retract(self, *, reason: str, dataset: Any = None, shard: str | int | None = None, key: str | None = None,
                text: str | None = None, near: float | None = None, author: str | None = None) -> dict[str, Any]:
        body = {"reason": reason, "dataset": _ref(dataset) if dataset is not None else None,
                "shard": str(shard) if shard is not None else None, "key": key, "text": text, "near": near,
                "author": author}
        return self._call("POST", "retractions", json_body=body)

    def retractions(self) -> list[dict[str, Any]]:
        return self._call("GET", "retractions")

    def retraction(self, retraction_id: str) -> dict[str, Any]:
        return self._call("GET", f"retractions/{retraction_id}")

    def apply_retraction(self, retraction: str, *, rebase: bool = False, progress: Any = None) -> list[dict[str, Any]]:
        return self._call("POST", f"retractions/{retraction}/apply", json_body={"rebase": rebase})

    def audit_retraction(self, retraction: str, *, samples: Any = None, **options: Any) -> dict[str, Any]:
        from provenance.audits import read_samples

        texts = None if samples is None else read_samples(samples) if isinstance(samples, (str, os.PathLike)) \
            else [str(t) for t in samples]
        return self._call("POST", f"retractions/{retraction}/audit",
                          json_body={"samples": texts, "options": options})

    def remove_documents(self, name: str, keys: Sequence[str], *, reason: str | None = None,
                         retraction: str | None = None) -> RegistrationResult:
        data = self._call("POST", f"datasets/{name}/remove",
                          json_body={"keys": list(keys), "reason": reason, "retraction": retraction})
        return RegistrationResult.model_validate(data)

    def audit_dedup(self, targets: Sequence[Any], *, progress: Any = None, pairs_file: Any = None,
                    **options: Any) -> DedupReport:
        """The dedup audit, run on the server; with ``pairs_file`` the pairs are written here as
        Parquet (read from the stored audit, or from the report when it stores nothing)."""
        out = self.output_path(pairs_file) if pairs_file is not None else None
        body = {"targets": [_ref(t) for t in targets], "options": options}
        report = DedupReport.model_validate(self._call("POST", "audits/dedup", json_body=body))
        if out is None:
            return report
        import pyarrow.parquet as pq

        if report.stored:
            table = self.audit_pairs(report.audit_id)
        else:
            table = pa.Table.from_pylist([p.model_dump() for p in report.pairs or []])
        tmp = out.with_name(f".{out.name}.{report.audit_id[:8]}.tmp")
        try:
            with naming(out):  # a full disk names the file asked for
                pq.write_table(table, tmp)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return report.model_copy(update={"pairs": None, "pairs_file": str(pairs_file)})

    def audit_merge(self, versions: Sequence[str | VersionRecord], *, progress: Any = None,
                    **options: Any) -> GateReport:
        body = {"versions": [_ref(v) for v in versions], "options": options}
        return GateReport.model_validate(self._call("POST", "audits/merge", json_body=body))

    def audit_memorization(self, version: str | VersionRecord, samples: Any, *, progress: Any = None,
                           **options: Any) -> MemorizationReport:
        from provenance.audits import read_samples

        texts = read_samples(samples) if isinstance(samples, (str, os.PathLike)) else list(samples)
        body = {"version": _ref(version), "samples": texts, "options": options}
        return MemorizationReport.model_validate(self._call("POST", "audits/memorization", json_body=body))

    def audits(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [_datetimes(r, "created_at", "pairs_deleted_at") for r in self._call("GET", "audits", params={"kind": kind})]

    def audit(self, audit_id: str) -> dict[str, Any]:
        return _datetimes(self._call("GET", f"audits/{audit_id}"), "created_at", "pairs_deleted_at")

    def audit_pairs(self, audit_id: str, limit: int | None = None) -> pa.Table:
        return ipc_to_table(self._call("GET", f"audits/{audit_id}/pairs", params={"limit": limit}), "the pairs")

    def delete_audits(self, audit_ids: Sequence[str] = (), *, kind: str | None = None, before: Any = None,
                      pairs_only: bool = False, dry_run: bool = False) -> dict[str, Any]:
        before = utc_time(before, "before")  # refused here as the ledger refuses it, naming the parameter
        result = self._call("POST", "audits/delete", json_body={
            "audit_ids": [audit_ids] if isinstance(audit_ids, str) else list(audit_ids), "kind": kind,
            "before": None if before is None else before.isoformat(), "pairs_only": pairs_only, "dry_run": dry_run})
        for row in result["deleted"]:
            _datetimes(row, "created_at")
        return result

    # -- tokens (admin) ---------------------------------------------------------------------------

    def issue_token(self, name: str, scope: str, *, expires_days: float | None = None) -> tuple[TokenRecord, str]:
        check_name(name, "token name")  # the ledger's words, not the request model's pattern
        data = self._call("POST", "tokens", json_body={"name": name, "scope": scope, "expires_days": expires_days})
        secret = data.pop("token")
        return TokenRecord.model_validate(data), secret

    def tokens(self) -> list[TokenRecord]:
        return [TokenRecord.model_validate(r) for r in self._call("GET", "tokens")]

    def revoke_token(self, name: str) -> TokenRecord:
        return TokenRecord.model_validate(self._call("DELETE", f"tokens/{name}"))


class RemoteRun(Run):
    """A run on a ledger server: examples are buffered here and sent in batches; the end is sent."""

    def _write(self, log: pa.Table) -> None:
        with _applied():  # the batch landed before the server stopped: sending it again would log it twice
            self.ledger._call("POST", f"runs/{self.run_id}/examples", content=lambda: table_to_ipc(log),
                              content_type=ARROW_STREAM)

    def _commit(self, state: Any, **options: Any) -> VersionRecord:
        return self.ledger.commit(state, **options)

    def _send_end(self, status: str, error: str | None) -> None:
        with _applied():
            self.ledger._call("POST", f"runs/{self.run_id}/end", json_body={"status": status, "error": error})


@contextlib.contextmanager
def _applied() -> Iterator[None]:
    """A write whose retry the server answers :class:`~provenance.errors.AlreadyAppliedError`
    (applied once, its answer lost when the server stopped) is done: its caller goes on."""
    try:
        yield
    except errors.AlreadyAppliedError:
        pass


class _Retry(Exception):
    def __str__(self) -> str:
        return "the server answered 502/503/504"


def _ref(value: Any) -> str:
    """A record's id, or the reference string as given."""
    if isinstance(value, RegistrationResult):
        return value.dataset.dataset_id
    if isinstance(value, DatasetRecord):
        return value.dataset_id
    if isinstance(value, VersionRecord):
        return value.version_id
    if isinstance(value, RunRecord):
        return value.run_id
    if not isinstance(value, str):
        raise errors.InvalidParameterError(f"expected a name, id or record, got {type(value).__name__}")
    return value


def _save(response: httpx.Response, path: Path) -> None:
    """Stream a response body to ``path`` atomically (a temporary name, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming(path), os.fdopen(fd, "wb") as out:  # a full disk names the file asked for
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _warn_files_left(folder: Path) -> None:
    """A ledger server takes a folder's tensors only: say which of its files are not kept."""
    from provenance import model_files

    kept = [path.name for path, reason in model_files.scan(folder, max_file_bytes=1 << 62) if reason is None]
    if kept:
        warnings.warn(
            f"{folder}: {', '.join(kept[:6])}{' and more' if len(kept) > 6 else ''} not stored: a ledger server takes "
            "a folder's tensors only (commit on the ledger's host to keep the files `prov model checkout --hf` writes)",
            stacklevel=4)


def _state_body(state: Any) -> Callable[[], Any]:
    """``state`` (tensors, a module, a safetensors file, a checkpoint folder) as the body of a
    safetensors upload, made one tensor at a time with no copy on disk, in name order: the order
    a commit stores them in, so that the server stores each as it arrives. A callable: each retry
    sends it again from the start."""
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        from provenance import checkpoints

        if checkpoints.is_lora_adapter(path):
            raise errors.InvalidParameterError(
                f"{path} is a LoRA adapter folder: through a ledger server, commit the state it makes (base + "
                "adapter), or commit the adapter on the ledger's host")
        if not path.exists():
            raise errors.InvalidParameterError(f"{path}: no such file or folder")
        if path.is_dir():
            _warn_files_left(path)
        reader = checkpoints.open_state(path)
        entries = [(n, *reader.info(n)) for n in reader.names]
        return _TensorStream(entries, reader.get)
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise errors.InvalidParameterError(
            f"expected a state dict, a module, a .safetensors file or a checkpoint folder, got {type(state).__name__}")
    for name in state:
        if not isinstance(name, str) or not name:
            raise errors.InvalidParameterError(f"parameter names must be non-empty strings, got {name!r}")
    tensors = {k: state[k].detach() for k in sorted(state)}
    return _TensorStream([(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], tensors.__getitem__)


def _as_tensors(state: Any) -> dict[str, Any]:
    """``state`` as a dict of tensors (a file is mapped, not read)."""
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if path.is_file() and path.name.endswith(".safetensors"):
            from provenance.tensorfile import read_tensors

            return dict(read_tensors(path)[0])
        from provenance import checkpoints

        with checkpoints.open_state(path) as reader:
            return {n: reader.get(n) for n in reader.names}
    if hasattr(state, "state_dict") and callable(state.state_dict):
        return dict(state.state_dict())
    return dict(state)


class _TensorStream:
    """A safetensors file's bytes made from tensors (:func:`provenance.tensorfile.file_bytes`);
    its length is known up front (sent as Content-Length, not chunked). Called, it starts again
    (for a retry)."""

    def __init__(self, entries: list, get: Callable[[str], Any]):
        self.entries, self.get = entries, get
        self.size = self._bytes()[0]

    def __call__(self) -> Iterator[Any]:
        return self._bytes()[1]

    def _bytes(self) -> tuple[int, Iterator[Any]]:
        from provenance.tensorfile import file_bytes

        return file_bytes(self.entries, ((name, self.get(name)) for name, _, _ in self.entries))


def _datetimes(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``row`` with its ISO strings at ``keys`` as datetimes, as a local ledger gives them."""
    for key in keys:
        if row.get(key):
            row[key] = datetime.fromisoformat(row[key])
    return row
