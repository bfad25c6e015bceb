"""Registering datasets: read sources, fingerprint every document, write one dataset version.

A registration is one ledger transaction: it lands whole or not at all, also when the process is
killed in the middle. Registering content identical to the latest version of the name changes
nothing and says so; changed content makes a new version.
"""

from __future__ import annotations

import contextlib
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from pyarrow.fs import FileType

from provenance.errors import InvalidParameterError, NotFoundError, SourceError
from provenance.fingerprints import FingerprintBatch, FingerprintConfig, fingerprint_read
from provenance.ledger import DocumentStage, LedgerStore, LedgerWriter, _now, check_documents_as
from provenance.plain import counted
from provenance.progress import NoProgress, Progress
from provenance.records import DatasetRecord, License, RegistrationResult, ShardRecord, check_name
from provenance.sources import Batch, Counters, FileShard, ObjectShard, ReadOptions, Shard, resolve
from provenance.sources.urls import is_url, object_error


class _Unchanged(Exception):
    """Raised inside the transaction to roll it back when the content matches the latest version."""


def register_dataset(
    ledger: LedgerStore,
    name: str,
    sources: Any,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    role: str | None = None,
    license: str | License | None = None,
    source: str | None = None,
    creator: str | None = None,
    description: str | None = None,
    model_generated: bool | None = None,
    config: FingerprintConfig | dict | None = None,
    on_invalid: str = "error",
    shard_records: int = 100_000,
    documents_as: str = "auto",
    parquet_threshold: int | None = None,
    progress: Progress | None = None,
) -> RegistrationResult:
    """Register ``sources`` as (a new version of) dataset ``name`` and return what was done.

    ``sources``: a path, glob or folder (JSONL plain/.gz/.zst, Parquet, text files), a list of
    them, an iterable of dicts, Arrow tables or record batches, or a ``datasets.Dataset``.
    Documents are keyed by ``id_field`` when given, else by ``SHARD:ROW``. ``role``: ``train``
    or ``eval``; content equal to the latest version's registers nothing, and the message says
    when a ``role`` or ``license`` given differs from the registered one. A new version keeps the
    latest version's metadata (role, licence, source, creator, description, model_generated)
    where the call gives none (an evaluation set re-ingested stays one); the first version's
    defaults are ``train`` and an unknown licence.

    ``documents_as``: where the document rows are kept: ``table`` (inside the database),
    ``parquet`` (Parquet files under ``.prov/documents/``, which every query reads as if they were
    in the table), or ``auto``: Parquet from ``parquet_threshold`` documents
    (:data:`provenance.ledger.PARQUET_THRESHOLD` by default), or when the latest version of
    ``name`` keeps its rows as Parquet. See docs/scaling.md.
    """
    _check_options(name, role or "train", on_invalid, text_field, shard_records)
    check_documents_as(documents_as, parquet_threshold)
    lic = license if isinstance(license, License) else License.from_spdx(license)
    cfg = config if isinstance(config, FingerprintConfig) else FingerprintConfig(**(config or {}))
    opts = ReadOptions(text_field=text_field, id_field=id_field, on_invalid=on_invalid, shard_records=shard_records)
    progress = progress or NoProgress()

    shards = resolve(sources, opts)
    total = _identify(shards, id_field, progress) if isinstance(shards, list) else None

    counters = Counters()
    planned = _content_hash([(s.name, s.shard_id) for s in shards], opts, cfg) if isinstance(shards, list) else None

    def write(tx: LedgerWriter, dataset_id: str, latest: DatasetRecord | None) -> list[ShardRecord]:
        if isinstance(shards, list):
            _warm_up(cfg)  # (not before: an unchanged dataset needs no kernel)
        progress.start(f"registering {dataset_id}", total)
        reusable = _reusable_shards(tx, latest, cfg, opts)
        return _write_shards(tx, dataset_id, shards, cfg, opts, counters, progress, reusable)

    meta = {"role": role or "train", "license": lic, "source": source, "creator": creator, "description": description,
            "model_generated": model_generated}
    return _register(ledger, name, cfg, opts, meta, planned, write, counters, (documents_as, parquet_threshold),
                     asked=(role, lic if license is not None else None))


def register_parts(ledger: LedgerStore, name: str, parts: list[str], shards: list[dict[str, Any]], *, opts: ReadOptions,
                   cfg: FingerprintConfig, meta: dict[str, Any], counters: Counters,
                   storage: tuple[str, int | None] = ("auto", None),
                   asked: tuple[str | None, License | None] | None = None) -> RegistrationResult:
    """Register rows that this project's own readers and kernels fingerprinted elsewhere (Ray
    actors, :mod:`provenance.integrations.ray_data`) as (a new version of) dataset ``name``, in
    one transaction.

    ``parts``: Parquet files with the columns :func:`_documents_table` makes but ``dataset_id``,
    ``doc_id`` counted from 0 within each shard; ``shards``: each shard's record (no
    ``dataset_id``) in shard order; ``meta``: role, license (a :class:`License`), source,
    creator, description, model_generated; ``storage``: ``(documents_as, parquet_threshold)``
    (see :func:`register_dataset`). Each shard's rows are counted against its record."""
    records = planned_shards(shards)
    planned = _content_hash([(s.name, s.shard_id) for s in records], opts, cfg)

    def write(tx: LedgerWriter, dataset_id: str, latest: DatasetRecord | None) -> list[ShardRecord]:
        next_id, first_ids = tx.next_doc_id(), {}
        for s in records:
            first_ids[s.shard_index] = next_id
            next_id += s.n_documents
        found = tx.insert_document_parts(dataset_id, parts, first_ids)
        for s in records:
            if found.get(s.shard_index, 0) != s.n_documents:
                raise SourceError(f"{s.uri}: shard {s.shard_index} holds {s.n_documents} documents, but its rows "
                                  f"number {found.get(s.shard_index, 0)} (a part file lost or cut?)")
        return [s.model_copy(update={"dataset_id": dataset_id}) for s in records]

    return _register(ledger, name, cfg, opts, meta, planned, write, counters, storage, asked=asked)


def remove_documents(ledger: LedgerStore, name: str, keys: Sequence[str], *, reason: str | None = None,
                     retraction: str | None = None) -> RegistrationResult:
    """A new version of dataset ``name`` holding every document of its latest version but those
    keyed ``keys`` (``prov dataset remove``): the kept rows are copied with their fingerprints, no
    source is read again, and the removed documents are listed in ``dataset_removals`` (with the
    retraction they serve, if any). Its shards are the same files, with fewer documents; its
    content hash differs from any registration's, so registering the files again makes a new
    version that holds the documents again. A key the latest version lacks is refused, naming it."""
    keys = list(dict.fromkeys(str(k) for k in keys))
    if not keys:
        raise InvalidParameterError("give the keys of the documents to remove")
    if "@" in name:
        raise InvalidParameterError(f"give the dataset's name, not a version ({name!r}): documents are removed from "
                                    "its latest version, and the result is its next")
    if retraction is not None:  # the retraction it serves must exist (raises NotFoundError naming it)
        retraction = ledger.retraction(retraction)["retraction_id"]
    latest = ledger.dataset(name)
    with ledger._cursor() as con:
        found = con.sql("SELECT doc_id, key, shard_index, token_count FROM documents "
                        "WHERE dataset_id = ? AND list_contains(?, key)",
                        params=[latest.dataset_id, keys]).to_arrow_table().to_pylist()
    missing = sorted(set(keys) - {r["key"] for r in found})
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5])
        raise NotFoundError(f"dataset {latest.dataset_id} has no document {shown}{', ...' if len(missing) > 5 else ''} "
                            f"({len(missing)} of the {len(keys)} keys given)")
    if len(found) >= latest.n_documents:
        raise InvalidParameterError(f"removing {len(found)} documents would leave {latest.dataset_id} empty")
    per_shard: dict[int, list[dict[str, Any]]] = {}
    for r in found:
        per_shard.setdefault(r["shard_index"], []).append(r)
    removed_ids = [r["doc_id"] for r in found]
    tail = ", ".join(f"{r['key']}" for r in found[:3]) + (", ..." if len(found) > 3 else "")
    h = xxhash.xxh3_128(f"{latest.content_hash}\nwithout\n".encode())
    for doc in sorted(removed_ids):
        h.update(f"{doc}\n".encode())
    with ledger.transaction() as tx:
        now = tx.latest_dataset(name)
        if now is None or now.dataset_id != latest.dataset_id:
            raise InvalidParameterError(f"dataset {name} changed while its documents were being removed "
                                        f"(now {now.dataset_id if now else 'gone'}); run it again")
        tx.follow_storage(latest)
        dataset_id = f"{name}@{latest.version + 1}"
        shards = []
        for s in tx.shards_of(latest.dataset_id):
            out = per_shard.get(s.shard_index, [])
            shards.append(s.model_copy(update={
                "dataset_id": dataset_id, "n_documents": s.n_documents - len(out),
                "n_tokens": s.n_tokens - sum(r["token_count"] for r in out)}))
        n_docs = latest.n_documents - len(found)
        tx.copy_documents_except(latest.dataset_id, dataset_id, removed_ids, n_docs)
        tx.insert_shards(shards)
        created = _now()
        record = latest.model_copy(update={
            "dataset_id": dataset_id, "version": latest.version + 1, "content_hash": h.hexdigest(),
            "n_documents": n_docs, "n_tokens": sum(s.n_tokens for s in shards), "created_at": created,
            "description": ((latest.description + " ") if latest.description else "")
            + f"[{latest.dataset_id} without {len(found)} document(s)"
            + (f", retraction {retraction}" if retraction else "") + "]"})
        tx.insert_dataset(record)
        tx.insert_removals([{"dataset_id": dataset_id, "from_dataset_id": latest.dataset_id, "doc_id": r["doc_id"],
                             "key": r["key"], "retraction_id": retraction, "reason": reason, "created_at": created}
                            for r in found])
    return RegistrationResult(dataset=record, created=True,
                              message=f"registered {dataset_id}: {latest.dataset_id} without {counted(len(found), 'document')} "
                                      f"({tail}); {counted(n_docs, 'document')} kept, no source read again")


def planned_shards(shards: list[dict[str, Any]]) -> list[ShardRecord]:
    """The shard records of rows fingerprinted elsewhere (an upload, Ray actors), checked: valid
    records (without a dataset yet), numbered 0, 1, 2, ... in order."""
    try:
        records = [ShardRecord(dataset_id="-", **s) for s in shards]
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"shards: {exc}") from None
    if [s.shard_index for s in records] != list(range(len(records))):
        raise InvalidParameterError("shards: shard_index must run 0, 1, 2, ... in order")
    return records


def _register(ledger: LedgerStore, name: str, cfg: FingerprintConfig, opts: ReadOptions, meta: dict[str, Any],
              planned: str | None, write: Any, counters: Counters,
              storage: tuple[str, int | None] = ("auto", None),
              asked: tuple[str | None, License | None] | None = None) -> RegistrationResult:
    """The registration's one transaction: the next version of ``name`` unless the content (known
    beforehand as ``planned``, else once ``write`` has staged the rows) equals the latest's; the
    rows are kept as ``storage`` (``documents_as, parquet_threshold``) says. ``asked``: the role
    and licence the caller gave (None: not given), which an unchanged registration compares
    with the registered ones (default: ``meta``'s)."""
    role, lic = asked if asked is not None else (meta["role"], meta["license"])
    try:
        with ledger.transaction() as tx:
            tx.set_documents_as(*storage)
            latest = tx.latest_dataset(name)
            tx.follow_storage(latest)
            if planned is not None and latest is not None and planned == latest.content_hash:
                raise _Unchanged
            version = latest.version + 1 if latest else 1
            dataset_id = f"{name}@{version}"
            tx.ensure_config(cfg)
            shard_rows = write(tx, dataset_id, latest)
            if not shard_rows:
                raise SourceError("the sources hold no shards")
            n_docs = sum(s.n_documents for s in shard_rows)
            if n_docs == 0:
                where = ", ".join(s.name for s in shard_rows)
                if not counters.skipped:
                    raise SourceError(f"no documents to register: {where} hold no records")
                skipped = ("the one record", "was") if counters.skipped == 1 else (
                    f"all {counted(counters.skipped, 'record')}", "were")
                raise SourceError(f"no documents to register: {skipped[0]} of {where} {skipped[1]} skipped as invalid")
            tx.insert_shards(shard_rows)
            _check_unique_keys(tx, dataset_id, opts.id_field)
            content = _content_hash([(s.name, s.shard_id) for s in shard_rows], opts, cfg)
            if latest is not None and content == latest.content_hash:
                raise _Unchanged
            banding = cfg.banding
            meta, kept = _carried(meta, latest, role, lic)
            record = DatasetRecord(
                dataset_id=dataset_id, name=name, version=version, **meta,
                text_field=opts.text_field, id_field=opts.id_field, config=cfg, config_id=cfg.identity,
                unicode_version=unicodedata.unidata_version, bands=banding.bands, rows=banding.rows,
                content_hash=content, n_shards=len(shard_rows), n_documents=n_docs,
                n_bytes=sum(s.n_bytes for s in shard_rows), n_tokens=sum(s.n_tokens for s in shard_rows),
                n_invalid_replaced=counters.replaced, n_invalid_skipped=counters.skipped, created_at=_now(),
            )
            tx.insert_dataset(record)
    except _Unchanged:
        assert latest is not None
        return RegistrationResult(dataset=latest, created=False, message=_unchanged_message(latest, role, lic))
    message = _created_message(record) + (f"; from {latest.dataset_id}: {', '.join(kept)}" if kept else "")
    result = RegistrationResult(dataset=record, created=True, message=message,
                                retracted=ledger.retracted_in(record.dataset_id))
    result.warn_retracted()
    return result


def _carried(meta: dict[str, Any], latest: DatasetRecord | None, role: str | None,
             lic: License | None) -> tuple[dict[str, Any], list[str]]:
    """A new version's metadata: what the caller gave, and for what it did not give (``role``,
    ``lic``: None; the other fields: None in ``meta``), the latest version's: a re-ingest of an
    evaluation set stays one, and keeps its licence. Returns the metadata and what was kept (the
    parts worth saying: a role other than train, a known licence, and a role or licence changed)."""
    if latest is None:
        return meta, []
    out, kept = dict(meta), []
    if role is None:
        out["role"] = latest.role
        if latest.role != "train":
            kept.append(f"role {latest.role}")
    elif role != latest.role:  # a change the caller asked for: said, as the kept ones are
        kept.append(f"role changed: {latest.role} -> {role}")
    if lic is None:
        out["license"] = latest.license
        if latest.license.spdx:
            kept.append(f"licence {latest.license.spdx}")
    elif lic != latest.license:
        kept.append(f"licence changed: {latest.license.spdx or 'unknown'} -> {lic.spdx or 'unknown'}")
    for field in ("source", "creator", "description", "model_generated"):
        if out.get(field) is None and getattr(latest, field) is not None:
            out[field] = getattr(latest, field)
    return out, kept


def _check_options(name: str, role: str, on_invalid: str, text_field: str, shard_records: int) -> None:
    check_name(name)
    if role not in ("train", "eval"):
        raise InvalidParameterError(f"role must be 'train' or 'eval', got {role!r}")
    if on_invalid not in ("error", "replace", "skip"):
        raise InvalidParameterError(f"on_invalid must be 'error', 'replace' or 'skip', got {on_invalid!r}")
    if not text_field:
        raise InvalidParameterError("text_field must be a non-empty field name")
    if isinstance(shard_records, bool) or not isinstance(shard_records, (int, np.integer)) or shard_records < 1:
        raise InvalidParameterError(f"shard_records must be a whole number of records, at least 1; got {shard_records!r}")


def _warm_up(cfg: FingerprintConfig) -> None:
    """Load the fingerprint kernels (numba with its cached machine code, about 0.6 s once per process)
    on a thread while the registration begins (its transaction, the reader's first batch); the
    first batch waits for it if it is not done. An error here is left for the real call to raise."""

    def load() -> None:
        with contextlib.suppress(Exception):
            cfg.warm_up()

    threading.Thread(target=load, name="prov-warm-up", daemon=True).start()


def _identify(shards: list[Shard], id_field: str | None, progress: Progress) -> int:
    """Hash every file shard (before the transaction: the ledger is not held meanwhile); returns
    their bytes."""
    check_text_ids(shards, id_field)
    progress.start("hashing", sum(_size(s) for s in shards))
    for shard in shards:
        shard.identify()
        progress.advance(shard.n_bytes)
    return sum(s.n_bytes for s in shards)


def check_text_ids(shards: list[Shard], id_field: str | None) -> None:
    """Refuse ``id_field`` when a shard is a plain text file (one document, named by its file)."""
    for shard in shards:
        if shard.format == "text" and id_field:
            raise InvalidParameterError(f"{shard.display}: id_field does not apply to plain text files")


def _size(shard: Shard) -> int:
    return shard.size() if isinstance(shard, FileShard) else 0


def _write_shards(
    tx: LedgerWriter,
    dataset_id: str,
    shards,
    cfg: FingerprintConfig,
    opts: ReadOptions,
    counters: Counters,
    progress: Progress,
    reusable: dict[tuple[str, str], ShardRecord],
) -> list[ShardRecord]:
    next_id = tx.next_doc_id()
    rows: list[ShardRecord] = []
    with tx.document_stage() as stage:
        for index, shard in enumerate(shards):
            earlier = reusable.get((shard.name, shard.shard_id)) if isinstance(shard, FileShard) else None
            if earlier is not None:  # same bytes, same config: copy the rows, do not read the file
                tx.copy_documents(earlier, dataset_id, index, next_id)
                rows.append(earlier.model_copy(update={"dataset_id": dataset_id, "shard_index": index, "uri": shard.uri}))
                progress.advance(shard.n_bytes)
            else:
                rows.append(_write_shard(stage, dataset_id, index, shard, cfg, opts, counters, progress, next_id))
            next_id += rows[-1].n_documents
    return rows


def _reusable_shards(
    tx: LedgerWriter, latest: DatasetRecord | None, cfg: FingerprintConfig, opts: ReadOptions
) -> dict[tuple[str, str], ShardRecord]:
    """Shards of the latest version whose rows a new version can copy: same fields, config and
    banding, and no invalid record in it (so the on_invalid policy made no difference)."""
    if latest is None or (latest.n_invalid_replaced or latest.n_invalid_skipped) or tx.has_removals(latest.dataset_id):
        return {}  # a version made by removing documents holds fewer rows than its files
    same = (latest.config_id, latest.bands, latest.rows, latest.text_field, latest.id_field) == (
        cfg.identity, cfg.banding.bands, cfg.banding.rows, opts.text_field, opts.id_field
    )
    if not same:
        return {}
    return {(s.name, s.shard_id): s for s in tx.shards_of(latest.dataset_id) if s.uri is not None}


def _write_shard(
    stage: DocumentStage,
    dataset_id: str,
    index: int,
    shard: Shard,
    cfg: FingerprintConfig,
    opts: ReadOptions,
    counters: Counters,
    progress: Progress,
    first_id: int,
    device: Any = None,
) -> ShardRecord:
    """Read one shard batch by batch, fingerprint it (the MinHash on the torch ``device`` when
    given, see :meth:`FingerprintConfig.fingerprint_batch`) and stage its document rows."""
    n_docs = n_tokens = reported = 0
    for batch in _prefetch(shard.batches(opts, counters)):
        fp = fingerprint_read(cfg, batch.texts, device)
        stage.write(_documents_table(dataset_id, index, shard.name, batch, fp, first_id + n_docs))
        n_docs += len(fp)
        n_tokens += int(fp.token_count.sum())
        progress.advance(batch.consumed - reported)
        reported = batch.consumed
    return ShardRecord(
        dataset_id=dataset_id,
        shard_index=index,
        shard_id=shard.shard_id,
        name=shard.name,
        uri=shard.uri,
        format=shard.format,
        sha256=shard.sha256,
        n_bytes=shard.n_bytes,
        n_documents=n_docs,
        n_tokens=n_tokens,
    )


def _prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Read the next batches in a thread while the caller fingerprints this one.

    Parsing holds the GIL; the numba kernels release it, so the two overlap. Errors raised while
    reading reach the caller at the batch where they happened; if the caller stops early, the
    reader stops after the batch it is on.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        queue.put(batch, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:  # handed to the consumer
            queue.put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="provenance-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        reader.join()


def _documents_table(
    dataset_id: str, shard_index: int, shard_name: str, batch: Batch, fp: FingerprintBatch, first_id: int
) -> pa.Table:
    n = len(fp)
    k = fp.signatures.shape[1]
    b = fp.band_keys.shape[1]
    text_offsets = np.frombuffer(batch.texts.buffers()[1], dtype=np.int64)[batch.texts.offset : batch.texts.offset + n + 1]
    keys = batch.ids if batch.ids is not None else pa.array([f"{shard_name}:{r}" for r in batch.rows.tolist()], pa.string())
    return pa.table(
        {
            "doc_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            "dataset_id": pa.array([dataset_id] * n, pa.string()),
            "shard_index": pa.array(np.full(n, shard_index, dtype=np.int32)),
            "row_index": pa.array(batch.rows),
            "line": pa.array(batch.lines) if batch.lines is not None else pa.nulls(n, pa.int64()),
            "key": keys,
            "exact_hash": pa.array(fp.exact_hash),
            "token_count": pa.array(fp.token_count.astype(np.int32)),
            "n_bytes": pa.array(np.diff(text_offsets).astype(np.int32)),
            "signature": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)), pa.array(fp.signatures.reshape(-1))
            ),
            "band_keys": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * b, b, dtype=np.int32)), pa.array(fp.band_keys.reshape(-1))
            ),
        }
    )


def _check_unique_keys(tx: LedgerWriter, dataset_id: str, id_field: str | None) -> None:
    total, dups = tx.duplicate_keys(dataset_id)
    if not total:
        return
    first = dups[0]
    more = f" (and {total - 1} more duplicated ids)" if total > 1 else ""
    what = f"id field {id_field!r} holds {first['key']!r}" if id_field else f"key {first['key']!r} occurs"
    raise SourceError(
        f"duplicate document id: {what} twice, at {first['first']} and at {first['second']}{more}; "
        "ids must be unique within a dataset"
    )


def _content_hash(shards: list[tuple[str, str | None]], opts: ReadOptions, cfg: FingerprintConfig) -> str:
    h = xxhash.xxh3_128(b"provenance-dataset-v1\n")
    h.update(f"{opts.text_field}\n{opts.id_field or ''}\n{cfg.identity}\n{cfg.banding.tag}\n".encode())
    if opts.on_invalid != "error":  # what lands differs by policy when a source holds invalid text
        h.update(f"on_invalid={opts.on_invalid}\n".encode())
    for name, shard_id in shards:
        h.update(f"{name}\0{shard_id}\n".encode())
    return h.hexdigest()


def _created_message(ds: DatasetRecord) -> str:
    extra = []
    if ds.n_invalid_replaced:
        extra.append(f"{counted(ds.n_invalid_replaced, 'invalid record')} repaired")
    if ds.n_invalid_skipped:
        extra.append(f"{counted(ds.n_invalid_skipped, 'invalid record')} skipped")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return (
        f"registered {ds.dataset_id}: {counted(ds.n_shards, 'shard')}, {counted(ds.n_documents, 'document')}, "
        f"{ds.n_bytes / 1e6:,.1f} MB{tail}"
    )


def _unchanged_message(latest: DatasetRecord, role: str | None, lic: License | None) -> str:
    """What an unchanged registration says; a ``role`` or ``lic`` given (not None) that differs
    from the registered one is named as not applied."""
    notes = []
    if role is not None and latest.role != role:
        notes.append(f"role {role!r} differs from the registered {latest.role!r}")
    if lic is not None and latest.license != lic:
        given, kept = (repr(x) if x else "none (unknown)" for x in (lic.spdx, latest.license.spdx))
        notes.append(f"license {given} differs from the registered {kept}")
    tail = f"; metadata not applied: {', '.join(notes)}" if notes else ""
    return (
        f"unchanged: the content matches {latest.dataset_id} ({counted(latest.n_shards, 'shard')}, "
        f"{counted(latest.n_documents, 'document')}); nothing registered{tail}"
    )


def read_back(ds: DatasetRecord, shard: ShardRecord) -> Iterator[Batch]:
    """The batches of a registered shard, read again from its file after checking the file still
    hashes as registered (xxh3; the readers check again at the end of the file, so a change while
    reading is caught too). Errors name the file, the shard and the dataset."""
    if shard.uri is None:
        raise SourceError(f"shard {shard.name} of {ds.dataset_id} was registered from memory: no file to read")
    if is_url(shard.uri):
        reader: FileShard = ObjectShard.at(shard.uri, shard.name, shard.format)
        try:
            kind = reader.fs.get_file_info(reader.path).type
        except OSError as exc:
            raise object_error(shard.uri, exc, f"reading shard {shard.name} of {ds.dataset_id}") from None
        if kind != FileType.File:
            raise SourceError(f"{shard.uri}: shard {shard.name} of {ds.dataset_id} is no longer there")
    else:
        path = Path(shard.uri)
        if not path.is_file():
            raise SourceError(f"{path}: shard {shard.name} of {ds.dataset_id} is no longer there")
        reader = FileShard(path, shard.name, shard.format)
    reader.shard_id, reader.sha256 = shard.shard_id, shard.sha256  # (its SHA-256 is not taken again)
    if reader._rehash() != shard.shard_id:
        raise SourceError(f"{reader.display} changed since it was registered as shard {shard.name} of {ds.dataset_id}")
    opts = ReadOptions(text_field=ds.text_field, id_field=ds.id_field, on_invalid="replace")
    yield from reader.batches(opts, Counters())
