"""Registration on Ray Data: shards read and fingerprinted by a pool of Ray actors, registered into
the ledger in one transaction.

::

    from provenance.integrations.ray_data import register_dataset

    register_dataset(ledger, "crawl", "s3://corpus/crawl/2026/", id_field="url", num_cpus=8)

**How.** The shards are listed on the driver (files, folders, globs or ``s3://`` URLs, as a local
registration lists them) and become a Ray ``Dataset`` of one row per shard. ``map_batches`` hands
them, one shard at a time, to a pool of stateful actors (:class:`_Fingerprinter`): each actor
compiles the fingerprint kernel once, when it starts, then hashes its shard, reads it with the
project's own readers (so an error names the file and line, as locally) and fingerprints it
batch by batch with the same kernel and configuration as a local registration, writing the rows to
a Parquet part file in the staging folder. The driver collects one small row per shard (its hash,
counts and part), then registers every part in one transaction
(:func:`provenance.datasets.register_parts`: DuckDB reads the parts in place, and every shard's
rows are counted against its record): signatures, band keys, exact hashes, keys and the content
hash are the ones a local registration of the same files gives.

**Unchanged content.** When the dataset has a version already, Ray tasks first hash the shards
(reading their bytes, without fingerprinting); when the content hash is that version's, nothing
is fingerprinted and the version is returned unchanged, as a local registration does.

**Granularity.** A shard is the unit of work: a corpus of many files spreads over the actors, one
huge file does not. **Staging.** Parts are written under ``staging`` (default: the ledger's
``.prov/tmp/ray``; for a server's ledger, the system's temporary folder), which every actor and
the driver must reach: on one machine (Ray's local mode, or a one-node cluster) any folder; across
nodes, a shared file system. They are removed when the registration ends, whether it succeeded or
not; a driver killed first leaves its folder, which ``prov gc`` removes from the default place.

**Settings.** The actors get the driver's object-storage settings (``AWS_*``, see
:mod:`provenance.sources.urls`) in their runtime environment; what the driver does not set, a
node's own environment or role provides.

**Failure.** Bad input in any shard (malformed JSON, invalid UTF-8, a truncated object) fails the
registration with the error the local path gives, naming the file and line; nothing is registered.
An actor that dies is restarted by Ray and its shard read again into the same part (tested with
SIGKILL). A driver that dies leaves the ledger as it was and its parts in ``staging``.

**A ledger server** (``Ledger.open("http://...")``): the parts are joined, in shard order, into
one upload (the stream a local-engine client sends), and the server registers it in one
transaction, checking the rows against the shards as it checks any upload.

**GPUs.** An actor given a GPU (``num_gpus``) that torch can use computes the MinHash signatures
there (:func:`provenance.kernels.minhash_gpu.signatures`, the Triton kernel) from the shingle
hashes its CPU makes; the results are the same, bit for bit. Given GPUs but none usable, the
actors run the CPU kernel and the driver warns; so they do when the cluster has fewer GPUs than
one actor asks for (Ray would wait for them forever). Not yet measured on a GPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from provenance.datasets import _content_hash, _unchanged_message, _write_shard, check_text_ids, register_parts
from provenance.errors import InvalidParameterError, NotFoundError, ProvenanceError, SourceError, warn
from provenance.files import naming
from provenance.fingerprints import FingerprintConfig, strings_to_arrow
from provenance.progress import NoProgress, Progress
from provenance.records import RegistrationResult
from provenance.sources import Counters, FileShard, ObjectShard, ReadOptions, resolve
from provenance.sources.memory import foreign_frame
from provenance.sources.urls import is_url
from provenance.uploads import (
    _read_options,
    asked_meta,
    parts_to_upload,
    registration_meta,
    storage_options,
    upload_options,
)

try:
    import ray
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("provenance.integrations.ray_data needs Ray Data: pip install 'provenance[ray]'") from exc

__all__ = ["register_dataset"]

log = logging.getLogger(__name__)


def register_dataset(ledger: Any, name: str, sources: Any, *, address: str | None = None, num_cpus: int | None = None,
                     num_gpus: float | None = None, staging: str | os.PathLike | None = None,
                     progress: Progress | None = None, **options: Any) -> RegistrationResult:
    """Register ``sources`` (paths, folders, globs or object-storage URLs) as dataset ``name``
    with the fingerprinting done on Ray (module doc). ``options`` are
    :meth:`provenance.Ledger.register_dataset`'s.

    ``address``: the Ray cluster to use when Ray is not initialised in this process yet (``auto``,
    ``ray://host:10001``; default: start a local one with ``num_cpus`` CPUs). ``num_cpus``: the
    actors (one CPU each; default: the cluster's CPUs). ``num_gpus``: GPUs per actor."""
    from provenance.ledger import LedgerStore
    from provenance.remote import RemoteLedger

    if not isinstance(ledger, (LedgerStore, RemoteLedger)):
        raise InvalidParameterError(f"ledger must be a Ledger (local or a server's), got {type(ledger).__name__}")
    opts, cfg = _read_options(name, options)
    shards = resolve(sources, opts)
    if not isinstance(shards, list):
        if (foreign := foreign_frame(sources)) is not None:
            raise InvalidParameterError(f"sources is {foreign}")
        raise InvalidParameterError("the Ray engine reads files and object-storage URLs; register in-memory data "
                                    "with the local engine")
    check_text_ids(shards, opts.id_field)
    check_address(address)
    check_count("num_cpus", num_cpus)
    if num_gpus is not None and not (isinstance(num_gpus, (int, float)) and not isinstance(num_gpus, bool)
                                     and 0 < num_gpus < math.inf):
        raise InvalidParameterError(f"num_gpus must be a positive, finite number, got {num_gpus!r}")
    check_staging(staging)
    progress = progress or NoProgress()
    _connect(address, num_cpus)
    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus and gpus < num_gpus:  # an actor asking for more than the cluster has waits forever
        warn(f"the Ray cluster has {gpus:g} GPU(s), so an actor asking for {num_gpus:g} could never start: "
             "the actors run the CPU kernel instead")
        num_gpus = None

    specs = [{"index": i, "uri": s.uri, "name": s.name, "format": s.format, "display": s.display}
             for i, s in enumerate(shards)]
    unchanged = _unchanged(ledger, name, specs, opts, cfg, options, progress)
    if unchanged is not None:
        return unchanged
    actors = max(1, min(len(specs), num_cpus or int(ray.cluster_resources().get("CPU", 1))))
    with work_folder(ledger, staging) as folder:
        data = ray.data.from_items(specs, override_num_blocks=len(specs)).map_batches(
            _Fingerprinter, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
            num_gpus=num_gpus or None, zero_copy_batch=True, runtime_env={"env_vars": _storage_settings()},
            fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), "opts": opts.__dict__, "staging": str(folder)})
        progress.start("fingerprinting on Ray", sum(s.size() for s in shards))
        done = []
        for row in data.iter_rows():  # stopping at an error stops the actors
            _raise_error(row, specs)
            done.append({**row, "shard": json.loads(row["shard"])})
            progress.advance(done[-1]["shard"]["n_bytes"])
        done.sort(key=lambda r: r["index"])
        log.info("fingerprinted %d shards on %d actors; kernel threads per call: %s; device: %s", len(done), actors,
                 "/".join(str(t) for t in sorted({r["threads"] for r in done})),
                 "/".join(sorted({r["device"] for r in done})))
        if num_gpus and not any(r["device"] == "cuda" for r in done):
            warn(f"the actors were given {num_gpus:g} GPU(s) each, but none of them could use a CUDA device "
                 "(no GPU visible to torch, or torch not installed there): the CPU kernel ran")
        counters = Counters(replaced=sum(r["replaced"] for r in done), skipped=sum(r["skipped"] for r in done))
        parts = [r["part"] for r in done if r["part"] is not None]  # a shard of no documents has none
        records = [r["shard"] for r in done]
        if isinstance(ledger, RemoteLedger):  # the rows go up as one upload, in shard order
            upload = folder / "documents.arrows"
            parts_to_upload(parts, upload)
            return ledger.register_upload_file(name, upload, records, {"replaced": counters.replaced,
                                                                       "skipped": counters.skipped},
                                               upload_options(options, cfg))
        return register_parts(ledger, name, parts, records, opts=opts, cfg=cfg, meta=registration_meta(options),
                              asked=asked_meta(options),
                              counters=counters, storage=storage_options(options))


@contextlib.contextmanager
def work_folder(ledger: Any, staging: str | os.PathLike | None, prefix: str = "prov-ray-") -> Iterator[Path]:
    """A folder for one Ray job's files in ``staging``, removed after it. By default it is in a
    local ledger's ``.prov/tmp/ray`` (for a server's ledger, or a ledger folder that cannot be
    written, in the system's temporary folder). Its name holds this machine's name and this
    process's id, so that ``prov gc`` on this machine removes the folder of a process killed
    before it could (:meth:`LedgerStore.stale_ray_folders`)."""
    if staging is None:
        from provenance.ledger import LedgerStore

        if isinstance(ledger, LedgerStore):
            with contextlib.suppress(OSError):
                staging = ledger.ray_folder()
    from provenance.files import host_label

    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{host_label()}-{os.getpid()}-", dir=staging))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unchanged(ledger: Any, name: str, specs: list[dict[str, Any]], opts: ReadOptions, cfg: FingerprintConfig,
               options: dict[str, Any], progress: Progress) -> RegistrationResult | None:
    """When ``name`` has a version, hash the shards on Ray (tasks that read the bytes and do not
    fingerprint: a few percent of the fingerprinting's cost) and, when their content hash is that
    version's, return it unchanged, as the local path does before it fingerprints anything."""
    try:
        latest = ledger.dataset(name)
    except NotFoundError:
        return None
    hashed = ray.data.from_items(specs, override_num_blocks=len(specs)).map_batches(
        _identify, batch_size=1, batch_format="pyarrow", num_cpus=1, zero_copy_batch=True,
        runtime_env={"env_vars": _storage_settings()})
    progress.start("hashing on Ray", len(specs))
    ids = {}
    for row in hashed.iter_rows():
        _raise_error(row, specs)
        ids[row["index"]] = row["shard_id"]
        progress.advance(1)
    if _content_hash([(s["name"], ids[s["index"]]) for s in specs], opts, cfg) != latest.content_hash:
        return None
    return RegistrationResult(dataset=latest, created=False, message=_unchanged_message(
        latest, *asked_meta(options), registration_meta(options)))


def _identify(batch: pa.Table) -> dict[str, list]:
    """A Ray task: each shard's xxh3-128 (its shard id), or the project's error reading it."""
    out: dict[str, list] = {"index": [], "shard_id": [], "error": []}
    for spec in batch.to_pylist():
        shard_id, error = None, None
        try:
            reader = _shard(spec)
            reader.identify()
            shard_id = reader.shard_id
        except ProvenanceError as exc:
            error = _error_row(exc)
        out["index"].append(spec["index"])
        out["shard_id"].append(shard_id)
        out["error"].append(error)
    return out


def _error_row(exc: ProvenanceError) -> str:
    """The project's error as data for the driver (see :func:`_raise_error`)."""
    kind = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS)
    return json.dumps([kind, str(exc)])


def check_count(name: str, value: Any, *, most: int | None = None) -> None:
    """Refuse an option ``name`` that is given and is not a positive integer (CPUs, partitions),
    or is above ``most``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")
    if value is not None and most is not None and value > most:
        raise InvalidParameterError(f"{name} must be at most {most:,}, got {value:,}")


def check_address(address: Any) -> None:
    """Refuse an ``address`` that cannot name a Ray cluster (no host, a port that is not one, a
    dashboard's ``http://``): Ray printed a traceback for some, waited 30 s for ``ray://``, and a
    look-up of the host ``http`` said "Name or service not known". Another ``scheme://`` (a Ray
    client builder's) and ``ray://HOST`` are left to Ray."""
    if address is None:
        return
    forms = "give auto, HOST:PORT (the head node's GCS, port 6379 by default) or ray://HOST:PORT (Ray Client, port 10001)"
    if not isinstance(address, str):
        raise InvalidParameterError(f"address must be a string ({forms}), got {type(address).__name__}")
    scheme, sep, rest = address.rpartition("://")
    if scheme in ("http", "https"):
        raise InvalidParameterError(f"address {address!r} is a dashboard's (for Ray job submission), not a cluster's "
                                    f"address: {forms}")
    if (sep and scheme != "ray") or (not sep and rest in ("auto", "local")) or (sep and rest and ":" not in rest):
        return
    host, colon, port = rest.rpartition(":")
    if not colon:
        problem = "no port" if rest else "no host"
    elif not host.strip("[]"):
        problem = "no host"
    elif not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        problem = f"port {port!r} is not a number from 1 to 65535"
    else:
        return
    raise InvalidParameterError(f"address {address!r} names no Ray cluster ({problem}): {forms}")


def check_staging(staging: str | os.PathLike | None) -> None:
    """Refuse a staging folder that is not there (the Ray engines make their folders inside it)."""
    if staging is not None and not Path(staging).is_dir():
        raise InvalidParameterError(f"staging folder {os.fspath(staging)!r} does not exist")


def _connect(address: str | None, num_cpus: int | None) -> None:
    """Use the Ray this process is connected to, else connect to ``address`` or start a local one."""
    # Ray Data's context warns of its own deprecated settings each time a dataset copies it.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the registration's own progress bar counts the shards' bytes
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # each dataset's plan, at INFO, on stdout
    # "progress bars disabled; to enable, set ...": the registration's own bar replaces them
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        if address not in (None, "auto") and not _same_cluster(address):  # it was used without a word
            warn(f"address {address!r} is not used: this process is already connected to Ray "
                 f"({ray.get_runtime_context().gcs_address}); call ray.shutdown() first to use another cluster")
        return
    # Starting a local Ray, Ray warns that it turned token authentication on (as it should): noise on
    # each command. Its warning that authentication is off is kept.
    _quiet(logging.getLogger("ray._private.authentication.authentication_token_setup"),
           "Token authentication is enabled for this Ray cluster")
    if address is not None:
        _check_reachable(address)
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address is not None else "a local Ray"
        raise ProvenanceError(f"cannot start or reach {where}: {exc}") from None


def _same_cluster(address: str) -> bool:
    """Whether ``address`` names the cluster this process is connected to (by its GCS address)."""
    try:
        return address.removeprefix("ray://") == ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a Ray Client connection has no GCS address here: do not warn
        return True


def _check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` or ``ray://HOST:PORT`` address where nothing listens: Ray retries
    such an address without end, logging a line every few seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # auto, local: Ray finds the cluster itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ProvenanceError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class _Drop(logging.Filter):
    """Drops the records whose message starts with ``start``."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _quiet(logger: logging.Logger, start: str) -> None:
    """Drop ``logger``'s records whose message starts with ``start`` (one filter per logger)."""
    if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
        logger.addFilter(_Drop(start))


#: The settings of the object-storage clients (provenance.sources.urls) that actors get from the driver.
_SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


def _storage_settings() -> dict[str, str]:
    """The driver's object-storage settings, for the actors' environment: they read what the
    driver would (a node's own settings are used for what the driver does not set)."""
    return {k: os.environ[k] for k in _SETTINGS if k in os.environ}


def _raise_error(row: dict[str, Any], specs: Sequence[dict[str, Any]] = ()) -> None:
    """Raise the project's error an actor met (it sends it as data: Ray's own wrapping of an
    exception keeps its text in a traceback, not the error), as the local path would raise it."""
    if row.get("error"):
        kind, message = json.loads(row["error"])
        if kind == "OSError":  # [errno, text, file]
            raise OSError(*message) if message[0] is not None else OSError(message[1])
        spec = specs[row["index"]] if specs else None  # the shard the row is about, on the driver
        if (spec is not None and message.endswith(_NOT_ON_WORKER) and not is_url(spec["uri"])
                and not os.path.exists(spec["uri"])):
            message = f"{spec['display']}: disappeared before it could be read (No such file or directory)"
        raise _ERRORS.get(kind, SourceError)(message)


_ERRORS = {cls.__name__: cls for cls in (SourceError, InvalidParameterError, ProvenanceError)}


class _Fingerprinter:
    """A Ray actor that fingerprints whole shards into Parquet parts in the staging folder."""

    def __init__(self, config: dict[str, Any], opts: dict[str, Any], staging: str):
        self.cfg = FingerprintConfig(**config)
        self.opts = ReadOptions(**opts)
        self.staging = Path(staging)
        import numba

        # The kernels are parallel loops over numba's threads, one per core of the machine by
        # default: an actor keeps to the CPUs Ray gave it, so that actors do not oversubscribe.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.threads = max(1, min(numba.config.NUMBA_NUM_THREADS, int(cpus)))
        numba.set_num_threads(self.threads)
        self.device = _actor_device()
        self.cfg.fingerprint_batch(strings_to_arrow(["the kernel compiles once per actor, here"]), device=self.device)

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        import numba

        # numba's thread count is the calling thread's own, and Ray Data calls an actor from a
        # thread of its own, not the one that built it: without this, each actor's kernels ran on
        # every core of the machine (two actors on two cores: 1.3x the CPU time per byte).
        numba.set_num_threads(self.threads)
        out: dict[str, list] = {"index": [], "shard": [], "part": [], "replaced": [], "skipped": [], "error": [],
                                "device": [], "threads": []}
        for spec in batch.to_pylist():
            counters = Counters()
            part = self.staging / f"part-{spec['index']:06d}.parquet"
            shard, error = None, None
            try:
                reader = _shard(spec)
                reader.identify()
                with _Part(part) as sink:
                    record = _write_shard(sink, "", spec["index"], reader, self.cfg, self.opts, counters,
                                          NoProgress(), 0, device=self.device)
                shard = json.dumps(record.model_dump(mode="json", exclude={"dataset_id"}))
            except ProvenanceError as exc:  # bad input: the driver raises it
                error = _error_row(exc)
            except OSError as exc:  # the part could not be written (a full disk on this node): the driver raises it
                error = json.dumps(["OSError", [exc.errno, exc.strerror or str(exc), exc.filename]])
            out["index"].append(spec["index"])
            out["shard"].append(shard)
            out["part"].append(str(part) if part.exists() else None)
            out["replaced"].append(counters.replaced)
            out["skipped"].append(counters.skipped)
            out["error"].append(error)
            out["device"].append(self.device or "cpu")
            out["threads"].append(numba.get_num_threads())
        return out


def _actor_device() -> str | None:
    """``"cuda"`` when Ray gave this actor a GPU that torch can use (the MinHash then runs on it,
    the Triton kernel), else None (the CPU kernel)."""
    if not ray.get_gpu_ids():
        return None
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


class _Part:
    """Where :func:`provenance.datasets._write_shard` puts a shard's rows on an actor: a Parquet
    file with the columns of ``documents`` but ``dataset_id`` (ids counted from 0 in the shard),
    made at the first rows: a shard of no documents (all skipped as invalid) has no part."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> _Part:
        return self

    def write(self, table: pa.Table) -> None:
        table = table.drop_columns(["dataset_id"])
        with naming(self.path):  # a full disk names the part
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="none", use_dictionary=False,
                                               write_statistics=False)
            self.writer.write_table(table, row_group_size=16_384)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.writer is None:
            return
        if exc_type is not None:  # a write failed: closing may fail the same way, and the error in flight says why
            with contextlib.suppress(OSError):
                self.writer.close()
            return
        with naming(self.path):
            self.writer.close()


#: A worker that cannot see a source the driver listed: the driver says "disappeared" instead
#: when the file is gone for it too (deleted mid-run, not a node without the shared storage).
_NOT_ON_WORKER = ("not found on this Ray worker (the staging and the sources must be reachable from every node: "
                  "a shared file system or object storage)")


def _shard(spec: dict[str, Any]) -> FileShard:
    if is_url(spec["uri"]):
        return ObjectShard.at(spec["uri"], spec["name"], spec["format"])
    if not os.path.isfile(spec["uri"]):
        raise SourceError(f"{spec['uri']}: {_NOT_ON_WORKER}")
    shard = FileShard(Path(spec["uri"]), spec["name"], spec["format"])
    shard.display = spec["display"]  # as the user named it, for errors
    return shard
