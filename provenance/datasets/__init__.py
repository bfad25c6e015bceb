"""Registering datasets: read sources, fingerprint every document, write one dataset version.

A registration is one ledger transaction: it lands whole or not at all, also when the process is
killed in the middle. Registering content identical to the latest version of the name changes
nothing and says so; changed content makes a new version.

:func:`register_dataset`, :func:`register_parts` and their one transaction are here; the rest is
one module each: :mod:`.shards` (each shard read, fingerprinted and staged as document rows, or
its rows copied from the latest version), :mod:`.removals` (:func:`remove_documents`) and
:mod:`.readback` (:func:`read_back`: a registered shard read again from its file).
"""

from __future__ import annotations

import contextlib
import threading
import unicodedata
from typing import Any

import numpy as np
import xxhash

from provenance.datasets.readback import read_back
from provenance.datasets.removals import remove_documents, without_removal_notes
from provenance.datasets.shards import _write_shard, reusable_shards, write_shards
from provenance.errors import InvalidParameterError, SourceError
from provenance.fingerprints import FingerprintConfig
from provenance.ledger import LedgerStore, LedgerWriter, _now, check_documents_as
from provenance.plain import counted
from provenance.progress import NoProgress, Progress
from provenance.records import DatasetRecord, License, RegistrationResult, ShardRecord, check_name, check_utf8
from provenance.sources import Counters, FileShard, ReadOptions, Shard, resolve


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
    _check_options(name, role or "train", on_invalid, text_field, shard_records,
                   {"id_field": id_field, "source": source, "creator": creator, "description": description})
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
        reusable = reusable_shards(tx, latest, cfg, opts)
        return write_shards(tx, dataset_id, shards, cfg, opts, counters, progress, reusable)

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
    with ledger.session():  # one connection for the transaction and the reads after it (each opening costs 10-30 ms)
        return _register_in_session(ledger, name, cfg, opts, meta, planned, write, counters, storage, asked)


def _register_in_session(ledger: LedgerStore, name: str, cfg: FingerprintConfig, opts: ReadOptions,
                         meta: dict[str, Any], planned: str | None, write: Any, counters: Counters,
                         storage: tuple[str, int | None], asked: tuple[str | None, License | None] | None,
                         ) -> RegistrationResult:
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
                    raise SourceError(f"no documents to register: {where} hold{'s' if len(shard_rows) == 1 else ''} "
                                      "no records")
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
        return RegistrationResult(dataset=latest, created=False, message=_unchanged_message(latest, role, lic, meta))
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
    if meta.get("description") is None:  # the files again hold what a removal took out: not its notes
        out["description"] = without_removal_notes(out.get("description"))
    return out, kept


def _check_options(name: str, role: str, on_invalid: str, text_field: str, shard_records: int,
                   texts: dict[str, Any] | None = None) -> None:
    """Refuse a registration's bad options before anything is read. ``texts``: the options that
    must be text or None (``id_field``, ``source``, ``creator``, ``description``), by name."""
    check_name(name)
    if role not in ("train", "eval"):
        raise InvalidParameterError(f"role must be 'train' or 'eval', got {role!r}")
    if on_invalid not in ("error", "replace", "skip"):
        raise InvalidParameterError(f"on_invalid must be 'error', 'replace' or 'skip', got {on_invalid!r}")
    if not text_field:
        raise InvalidParameterError("text_field must be a non-empty field name")
    if (texts or {}).get("id_field") == "":  # `--id-field ""`: said no id field '' at the first record
        raise InvalidParameterError("id_field must be a non-empty field name (None: SHARD:ROW keys)")
    for what, value in {"text_field": text_field, **(texts or {})}.items():
        if value is not None:  # text (a command-line argument of bytes that are not UTF-8 holds surrogates)
            check_utf8(value, what)
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


def _check_unique_keys(tx: LedgerWriter, dataset_id: str, id_field: str | None) -> None:
    total, dups = tx.duplicate_keys(dataset_id)
    if not total:
        return
    first = dups[0]
    more = f" (and {total - 1} more duplicated ids)" if total > 1 else ""
    what = f"id field {id_field!r} holds {first['key']!r}" if id_field else f"key {first['key']!r} occurs"
    where = (f"twice, at {first['first']} and at {first['second']}" if first["count"] == 2 else
             f"{first['count']} times, first at {first['first']} and last at {first['second']}")
    raise SourceError(
        f"duplicate document id: {what} {where}{more}; ids must be unique within a dataset"
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


def _unchanged_message(latest: DatasetRecord, role: str | None, lic: License | None,
                       meta: dict[str, Any] | None = None) -> str:
    """What an unchanged registration says; a ``role`` or ``lic`` given (not None) that differs
    from the registered one is named as not applied, as is a source, creator, description or
    model_generated of ``meta`` given (not None) that differs."""
    notes = []
    if role is not None and latest.role != role:
        notes.append(f"role {role!r} differs from the registered {latest.role!r}")
    if lic is not None and latest.license != lic:
        given, kept = (repr(x) if x else "none (unknown)" for x in (lic.spdx, latest.license.spdx))
        notes.append(f"license {given} differs from the registered {kept}")
    for field in ("source", "creator", "description", "model_generated"):
        value, registered = (meta or {}).get(field), getattr(latest, field)
        if value is not None and value != registered:
            notes.append(f"{field} {value!r} differs from the registered "
                         f"{'none' if registered is None else repr(registered)}")
    tail = f"; metadata not applied: {', '.join(notes)}" if notes else ""
    return (
        f"unchanged: the content matches {latest.dataset_id} ({counted(latest.n_shards, 'shard')}, "
        f"{counted(latest.n_documents, 'document')}); nothing registered{tail}"
    )


__all__ = ["_check_options", "_content_hash", "_identify", "_register", "_unchanged_message", "_write_shard",
           "check_text_ids", "planned_shards", "read_back", "register_dataset", "register_parts", "remove_documents"]
