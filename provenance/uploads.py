"""Registration through a ledger server: the client reads and fingerprints its shards where they
are (the same code and kernels as a local registration) and uploads the document rows as an Arrow
IPC stream; the server checks them and registers them in one transaction.

The upload holds, per document, ``shard_index, row_index, line, key, exact_hash, token_count,
n_bytes, signature``; the server recomputes every band key from the signature under the dataset's
fingerprint config (a client cannot plant band keys that disagree with its signatures), checks
each signature's length against the config, each row's shard against the shards declared and each
shard's document count, and assigns the document ids. Shards keep the URIs the client read them
from: audits that read source text (``--verify``, the span checks) read them where the server
can (a shared file system), and name the shards they cannot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from provenance.datasets import (
    _check_options,
    _content_hash,
    _identify,
    _register,
    _write_shard,
    planned_shards,
)
from provenance.errors import InvalidParameterError
from provenance.files import naming
from provenance.fingerprints import FingerprintConfig
from provenance.ledger import LedgerStore, check_documents_as
from provenance.progress import NoProgress, Progress
from provenance.records import License, RegistrationResult, ShardRecord
from provenance.sources import Counters, ReadOptions, resolve

UPLOAD_SCHEMA = pa.schema([
    ("shard_index", pa.int32()), ("row_index", pa.int64()), ("line", pa.int64()), ("key", pa.string()),
    ("exact_hash", pa.uint64()), ("token_count", pa.int32()), ("n_bytes", pa.int32()),
    ("signature", pa.list_(pa.uint32())),
])
_OPTIONS = ("text_field", "id_field", "role", "license", "source", "creator", "description", "model_generated",
            "config", "on_invalid", "shard_records", "documents_as", "parquet_threshold")


class _UploadSink:
    """Where :func:`provenance.datasets._write_shard` puts a batch's rows: the upload stream."""

    def __init__(self, writer: pa.ipc.RecordBatchStreamWriter, path: Path | None):
        self.writer = writer
        self.path = path  # the file written, named in an error (None: the stream also goes elsewhere)

    def write(self, table: pa.Table) -> None:
        with naming(self.path) if self.path is not None else contextlib.nullcontext():  # a full disk names the file
            self.writer.write_table(table.select(UPLOAD_SCHEMA.names).cast(UPLOAD_SCHEMA))


def _read_options(name: str, options: dict[str, Any]) -> tuple[ReadOptions, FingerprintConfig]:
    """A registration's options, checked as a local registration checks them (on the client before
    anything is read, and again on the server): how to read, and the fingerprint config."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise InvalidParameterError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(_OPTIONS)}")
    opts = ReadOptions(text_field=options.get("text_field", "text"), id_field=options.get("id_field"),
                       on_invalid=options.get("on_invalid", "error"), shard_records=options.get("shard_records", 100_000))
    _check_options(name, options.get("role") or "train", opts.on_invalid, opts.text_field, opts.shard_records,
                   {k: options.get(k) for k in ("id_field", "source", "creator", "description")})
    check_documents_as(*storage_options(options))
    config = options.get("config")
    return opts, config if isinstance(config, FingerprintConfig) else FingerprintConfig(**(config or {}))


def storage_options(options: dict[str, Any]) -> tuple[str, int | None]:
    """Where a registration's options say to keep its rows: ``(documents_as, parquet_threshold)``."""
    return options.get("documents_as", "auto"), options.get("parquet_threshold")


def registration_meta(options: dict[str, Any]) -> dict[str, Any]:
    """A registration's dataset metadata from its options: role, licence (a :class:`License`, or
    an SPDX id), source, creator, description, model_generated."""
    role, lic = asked_meta(options)
    return {"role": role or "train", "license": lic if lic is not None else License.from_spdx(None),
            **{k: options.get(k) for k in ("source", "creator", "description", "model_generated")}}


def asked_meta(options: dict[str, Any]) -> tuple[str | None, License | None]:
    """The role and licence a registration's caller gave (None: not given, the default applies):
    what an unchanged registration compares with the registered ones."""
    lic = options.get("license")
    return options.get("role"), (None if lic is None else lic if isinstance(lic, License) else License.from_spdx(lic))


class _Tee:
    """A file that also hands every piece written to ``tee`` (an upload sending it meanwhile)."""

    def __init__(self, path: Path, tee: Callable[[bytes], None]):
        self.file, self.tee, self.closed = path.open("wb"), tee, False

    def write(self, data: Any) -> int:
        data = bytes(data)
        with naming(self.file.name):  # a full disk names the file
            self.file.write(data)
        self.tee(data)
        return len(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.closed = True
        self.file.close()


def fingerprint_to_file(name: str, sources: Any, path: Path, *, progress: Progress | None = None,
                        tee: Callable[[bytes], None] | None = None,
                        **options: Any) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, Any]]:
    """Read and fingerprint ``sources`` (to be registered as ``name``) into an upload file at
    ``path`` (each piece also given to ``tee`` as it is written): the shards read (records without
    a dataset), the invalid records replaced and skipped, and the options as the server takes them."""
    opts, cfg = _read_options(name, options)
    progress = progress or NoProgress()
    shards = resolve(sources, opts)
    total = _identify(shards, opts.id_field, progress) if isinstance(shards, list) else None
    progress.start("fingerprinting", total)
    counters = Counters()
    rows: list[dict[str, Any]] = []
    out = pa.OSFile(str(path), "wb") if tee is None else pa.PythonFile(_Tee(path, tee), mode="w")
    with out, pa.ipc.new_stream(out, UPLOAD_SCHEMA) as writer:
        sink = _UploadSink(writer, path if tee is None else None)
        for index, shard in enumerate(shards):
            record = _write_shard(sink, "", index, shard, cfg, opts, counters, progress, 0)
            rows.append(record.model_dump(mode="json", exclude={"dataset_id"}))
    return rows, {"replaced": counters.replaced, "skipped": counters.skipped}, upload_options(options, cfg)


def upload_options(options: dict[str, Any], cfg: FingerprintConfig) -> dict[str, Any]:
    """A registration's ``options`` as the server takes them with an upload (JSON)."""
    lic = options.get("license")
    sent = {**{k: v for k, v in options.items() if k != "config"}, "config": cfg.model_dump(mode="json")}
    if isinstance(lic, License):
        sent["license"] = lic.spdx
    return sent


def parts_to_upload(parts: list[str], path: Path) -> None:
    """Parquet parts of document rows (:mod:`provenance.integrations.ray_data`), in shard order,
    as an upload file at ``path``: the rows the server registers, in the order of their ids."""
    with naming(path), pa.OSFile(str(path), "wb") as out, pa.ipc.new_stream(out, UPLOAD_SCHEMA) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(columns=UPLOAD_SCHEMA.names):
                writer.write_table(pa.Table.from_batches([batch]).select(UPLOAD_SCHEMA.names).cast(UPLOAD_SCHEMA))


def check_upload(path: Path) -> int:
    """The rows of an uploaded stream, after checking it is one with the upload's columns."""
    try:
        with pa.OSFile(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            _check_schema(reader.schema)
            return sum(batch.num_rows for batch in reader)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InvalidParameterError(f"the upload is not a readable Arrow IPC stream ({exc})") from None


def _check_schema(schema: pa.Schema) -> None:
    if schema.names != UPLOAD_SCHEMA.names:
        raise InvalidParameterError(f"the upload's columns must be {', '.join(UPLOAD_SCHEMA.names)}; got "
                                    f"{', '.join(schema.names)}")
    for field, want in zip(schema, UPLOAD_SCHEMA):
        if field.type != want.type:
            raise InvalidParameterError(f"upload column {field.name}: expected {want.type}, got {field.type}")


def register_uploaded(ledger: LedgerStore, name: str, path: Path, shards: list[dict[str, Any]],
                      options: dict[str, Any], counters: dict[str, int]) -> RegistrationResult:
    """Register the uploaded rows at ``path`` as (a new version of) dataset ``name`` (module doc)."""
    opts, cfg = _read_options(name, options)
    declared = planned_shards(shards)
    planned = _content_hash([(s.name, s.shard_id) for s in declared], opts, cfg)
    tally = Counters()
    tally.replaced, tally.skipped = int(counters.get("replaced", 0)), int(counters.get("skipped", 0))

    def write(tx: Any, dataset_id: str, latest: Any) -> list[ShardRecord]:
        seen = np.zeros(len(declared), dtype=np.int64)
        next_id = tx.next_doc_id()
        banding = cfg.banding
        with tx.document_stage() as stage, pa.OSFile(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            _check_schema(reader.schema)
            for batch in reader:
                table = pa.Table.from_batches([batch])
                stage.write(_documents(table, dataset_id, next_id, cfg, banding, seen))
                next_id += table.num_rows
        for s, n in zip(declared, seen.tolist()):
            if n != s.n_documents:
                raise InvalidParameterError(f"shard {s.shard_index} ({s.name}) declares {s.n_documents} documents; "
                                            f"the upload holds {n}")
        return [s.model_copy(update={"dataset_id": dataset_id}) for s in declared]

    return _register(ledger, name, cfg, opts, registration_meta(options), planned, write, tally,
                     storage_options(options), asked=asked_meta(options))


def _documents(table: pa.Table, dataset_id: str, first_id: int, cfg: FingerprintConfig, banding: Any,
               seen: np.ndarray) -> pa.Table:
    """An uploaded batch as rows of ``documents``: ids assigned, band keys recomputed, checked."""
    n = table.num_rows
    shard = table.column("shard_index").to_numpy()
    if n and (shard.min() < 0 or shard.max() >= len(seen)):
        bad = int(shard[(shard < 0) | (shard >= len(seen))][0])
        raise InvalidParameterError(f"upload: a row names shard {bad}; the registration declares {len(seen)}")
    np.add.at(seen, shard, 1)
    sig = table.column("signature").combine_chunks()
    if sig.null_count or (n and not (pa.compute.list_value_length(sig).to_numpy() == cfg.num_perm).all()):
        raise InvalidParameterError(f"upload: every signature must have {cfg.num_perm} values (the config's num_perm)")
    matrix = sig.flatten().to_numpy().reshape(n, cfg.num_perm)
    from provenance.kernels.minhash import band_keys  # numba: only when band keys are computed

    keys = band_keys(matrix, banding.bands, banding.rows)
    b = banding.bands
    return pa.table({
        "doc_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "dataset_id": pa.array([dataset_id] * n, pa.string()),
        "shard_index": table.column("shard_index"),
        "row_index": table.column("row_index"),
        "line": table.column("line"),
        "key": table.column("key"),
        "exact_hash": table.column("exact_hash"),
        "token_count": table.column("token_count"),
        "n_bytes": table.column("n_bytes"),
        "signature": sig,
        "band_keys": pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * b, b, dtype=np.int32)),
                                              pa.array(keys.reshape(-1))),
    })
