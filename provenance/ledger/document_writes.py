"""Document rows where a registration keeps them (:data:`DOCUMENTS_AS`): inserted into the
``documents`` table with one bulk statement (one thread, a small memory limit), or written as
Parquet document files that ``document_files`` lists; the rows of an earlier version's shards
copied into a new one. Mixed into :class:`~provenance.ledger.writer.LedgerWriter`."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from provenance.errors import InvalidParameterError
from provenance.files import xxh3_file
from provenance.ledger._common import _now, glob_literal, quote_identifier, register, unregister
from provenance.ledger.staging import DocumentStage
from provenance.records import DatasetRecord, ShardRecord

#: Where a registration keeps its document rows: in the ``documents`` table, as Parquet files
#: under ``.prov/documents/``, or ``auto``: as Parquet from :data:`PARQUET_THRESHOLD` documents.
DOCUMENTS_AS = ("auto", "table", "parquet")

#: ``auto`` keeps a dataset of this many documents or more as Parquet files. At about 700 bytes a
#: row in the table (measured at 128 permutations), that is 7 GB of database file: below it the
#: insert costs seconds; above it, renaming the staged file is 12× faster than inserting it
#: (docs/benchmarks.md), and the database stays small enough to back up and checkpoint quickly.
PARQUET_THRESHOLD = 10_000_000

#: The columns of ``documents`` as Arrow types: a staged file of exactly these becomes a dataset's
#: Parquet document file as it is (renamed, not rewritten).
DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.int64()), ("dataset_id", pa.string()), ("shard_index", pa.int32()), ("row_index", pa.int64()),
    ("line", pa.int64()), ("key", pa.string()), ("exact_hash", pa.uint64()), ("token_count", pa.int32()),
    ("n_bytes", pa.int32()), ("signature", pa.list_(pa.uint32())), ("band_keys", pa.list_(pa.uint64())),
])

#: The columns of ``documents`` with their types, as a Parquet document file holds them.
_DOCUMENT_CASTS = ("doc_id::BIGINT AS doc_id, dataset_id::VARCHAR AS dataset_id, shard_index::INTEGER AS shard_index, "
                   "row_index::BIGINT AS row_index, line::BIGINT AS line, key::VARCHAR AS key, "
                   "exact_hash::UBIGINT AS exact_hash, token_count::INTEGER AS token_count, "
                   "n_bytes::INTEGER AS n_bytes, signature::UINTEGER[] AS signature, band_keys::UBIGINT[] AS band_keys")


def check_documents_as(documents_as: str, parquet_threshold: int | None = None) -> None:
    """Refuse a storage choice that is not one of :data:`DOCUMENTS_AS`, or a threshold that is
    not a positive number of documents."""
    if documents_as not in DOCUMENTS_AS:
        raise InvalidParameterError(f"documents_as must be one of {', '.join(DOCUMENTS_AS)}; got {documents_as!r}")
    if parquet_threshold is not None and (isinstance(parquet_threshold, bool) or not isinstance(parquet_threshold, int)
                                          or parquet_threshold < 1):
        raise InvalidParameterError(f"parquet_threshold must be a positive number of documents; got "
                                    f"{parquet_threshold!r}")


class DocumentWrites:
    """Writes of document rows (``self`` is a :class:`~provenance.ledger.writer.LedgerWriter`)."""

    def next_doc_id(self) -> int:
        return int(self._con.execute(
            f"""SELECT greatest((SELECT coalesce(max(doc_id) + 1, 0) FROM {self._table}),
                                (SELECT coalesce(max(last_doc_id) + 1, 0) FROM document_files))""").fetchall()[0][0])

    def set_documents_as(self, documents_as: str, parquet_threshold: int | None = None) -> None:
        """Where the registration in this transaction keeps its rows (see :data:`DOCUMENTS_AS`)."""
        check_documents_as(documents_as, parquet_threshold)
        self.documents_as = documents_as
        if parquet_threshold is not None:
            self.parquet_threshold = parquet_threshold

    def follow_storage(self, latest: DatasetRecord | None) -> None:
        """Under ``auto``, a new version of a dataset whose ``latest`` version keeps its rows as
        Parquet keeps them so too, whatever its size (``table`` or ``parquet`` asked stay)."""
        if latest is None or self.documents_as != "auto" or self._store is None:
            return
        if self._con.execute("SELECT count(*) FROM document_files WHERE dataset_id = ?",
                             [latest.dataset_id]).fetchall()[0][0]:
            self.documents_as = "parquet"

    def _as_parquet(self, n_rows: int) -> bool:
        if self._store is None or self.documents_as == "table":
            return False
        return self.documents_as == "parquet" or n_rows >= self.parquet_threshold

    def _put_documents(self, select: str, params: list[Any], dataset_id: str, n_rows: int,
                       stage: Path | None = None) -> None:
        """Keep the rows of ``select`` (a SELECT of every column of ``documents``, by name) where
        this registration keeps them: inserted into the table, or written as Parquet files.
        ``stage``: a staged Parquet file that holds exactly those rows, with the columns and
        types of ``documents``, which then becomes the dataset's file as it is."""
        if not self._as_parquet(n_rows):
            with self._bulk():
                self._con.execute(f"INSERT INTO {self._table} BY NAME {select}", params).fetchall()
            return
        name, version = dataset_id.rsplit("@", 1)
        self._staging.mkdir(parents=True, exist_ok=True)
        tmp = self._staging / f"parquet-{os.getpid()}-{time.time_ns()}"
        if stage is not None:
            tmp.mkdir()
            os.rename(stage, tmp / "data_0.parquet")
        else:
            target = tmp.as_posix().replace("'", "''")
            self._con.execute(
                f"COPY (SELECT {_DOCUMENT_CASTS} FROM ({select})) TO '{target}' "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 16384, FILE_SIZE_BYTES '256MB')", params).fetchall()
        self._list_document_files(tmp, dataset_id, name, f"v{version}-{uuid.uuid4().hex[:8]}")

    def _list_document_files(self, tmp: Path, dataset_id: str, name: str, tag: str) -> None:
        """Sync and hash the Parquet files in ``tmp``, put them in place as the folder
        ``NAME/TAG`` of the ledger's document store (renamed, or uploaded to its bucket) and list
        them in ``document_files``. The folder is removed if the transaction rolls back; one left
        by a process killed before its commit is listed by ``prov gc``."""
        pattern = glob_literal(tmp.as_posix()) + "/*.parquet"
        counts = {Path(f).name: (int(n), lo, hi) for f, n, lo, hi in self._con.execute(
            "SELECT filename, count(*), min(doc_id), max(doc_id) FROM read_parquet(?, filename = true) GROUP BY 1",
            [pattern]).fetchall()}
        store = self._store.document_store
        local = store.url is None
        files = {f.name: (f.stat().st_size, xxh3_file(f, sync=local)) for f in sorted(tmp.iterdir())}
        folder, published = store.publish(tmp, name, tag)
        self.new_folders.append(folder)
        store.finish(tmp)
        rows = []
        for f, path in published:
            n, lo, hi = counts.get(f.name, (0, None, None))
            size, digest = files[f.name]
            rows.append({"path": path, "dataset_id": dataset_id, "n_rows": n, "n_bytes": size, "xxh3_128": digest,
                         "first_doc_id": lo, "last_doc_id": hi, "created_at": _now()})
        self._insert("document_files", pa.Table.from_pylist(rows, schema=pa.schema([
            ("path", pa.string()), ("dataset_id", pa.string()), ("n_rows", pa.int64()), ("n_bytes", pa.int64()),
            ("xxh3_128", pa.string()), ("first_doc_id", pa.int64()), ("last_doc_id", pa.int64()),
            ("created_at", pa.timestamp("us"))])))
        self._store._documents_view(self._con)  # this transaction's later queries see the rows

    @contextlib.contextmanager
    def document_stage(self) -> Iterator[DocumentStage]:
        """Collect document rows in a Parquet file, then insert them with one bulk statement.

        Many small appends from Arrow keep the whole uncommitted transaction in memory; one bulk
        INSERT from Parquet, run on one thread, writes row groups to the database file as they
        fill, so memory stays bounded whatever the size of the registration.
        """
        self._staging.mkdir(parents=True, exist_ok=True)
        stage = DocumentStage(self._staging / f"documents-{os.getpid()}-{time.time_ns()}.parquet")
        self._copies, copies = [], []
        try:
            yield stage
            copies, self._copies = self._copies, None
            parts, params = [], []
            if stage.close():
                cols = ", ".join(quote_identifier(c) for c in stage.columns)
                parts.append(f"SELECT {cols} FROM read_parquet(?)")
                params.append(glob_literal(str(stage.path)))
            if copies:  # one statement for every copied shard (a union of one per shard, 800 of them, ran
                # out of memory: re-registering a folder of many files with one file added failed)
                register(self._con, "provenance_copied_shards", _copied_shards(copies))
                for source in sorted({c[0].dataset_id for c in copies}):
                    parts.append(_COPY_MANY_SELECT)
                    params += [copies[0][1], source, source]
            if parts:
                dataset_id = copies[0][1] if copies else stage.dataset_id
                whole = stage.path if not copies and stage.schema == DOCUMENT_SCHEMA else None
                self._put_documents(" UNION ALL BY NAME ".join(f"({p})" for p in parts), params, dataset_id,
                                    stage.rows + sum(c[0].n_documents for c in copies), stage=whole)
        finally:
            if copies:
                unregister(self._con, "provenance_copied_shards")
            self._copies = None
            stage.discard()

    @contextlib.contextmanager
    def _bulk(self) -> Iterator[None]:
        """Run a bulk insert on one thread with a small memory limit, so that DuckDB writes row
        groups to the file as they fill instead of holding the transaction in memory."""
        threads, memory = self._con.execute(
            "SELECT current_setting('threads'), current_setting('memory_limit')"
        ).fetchall()[0]
        self._con.execute("SET threads = 1")
        self._con.execute("SET memory_limit = '256MB'")
        try:
            yield
        finally:
            try:
                self._restore_settings(int(threads), memory)
            except duckdb.TransactionException:  # the insert failed (or was interrupted): after the rollback
                self.settings_after_rollback = (int(threads), memory)

    def _restore_settings(self, threads: int, memory: str) -> None:
        self._con.execute(f"SET threads = {threads}")
        self._con.execute("SET memory_limit = ?", [memory])

    def restore_after_rollback(self) -> None:
        """Put back the connection's settings a failed bulk insert changed (a server keeps it)."""
        if self.settings_after_rollback is not None:
            self._restore_settings(*self.settings_after_rollback)
            self.settings_after_rollback = None

    def insert_document_parts(self, dataset_id: str, parts: Sequence[str], first_ids: Mapping[int, int]) -> dict[int, int]:
        """Insert the document rows of Parquet ``parts`` (the columns of ``documents`` but
        ``dataset_id``, with ``doc_id`` counted from 0 within each shard) into ``dataset_id``, each
        shard's ids moved to start at ``first_ids[shard_index]``; the rows found per shard."""
        if not parts:
            return {}
        offsets = pa.table({"shard_index": pa.array(list(first_ids), pa.int32()),
                            "first_id": pa.array(list(first_ids.values()), pa.int64())})
        register(self._con, "provenance_part_offsets", offsets)
        patterns = [glob_literal(str(p)) for p in parts]
        try:
            found = dict(self._con.execute(
                "SELECT shard_index, count(*) FROM read_parquet(?) GROUP BY shard_index", [patterns]).fetchall())
            self._put_documents(
                """SELECT p.doc_id + o.first_id AS doc_id, ? AS dataset_id, p.shard_index, p.row_index, p.line, p.key,
                          p.exact_hash, p.token_count, p.n_bytes, p.signature, p.band_keys
                   FROM read_parquet(?) p JOIN provenance_part_offsets o ON p.shard_index = o.shard_index""",
                [dataset_id, patterns], dataset_id, sum(found.values()))
        finally:
            unregister(self._con, "provenance_part_offsets")
        return {int(k): int(v) for k, v in found.items()}

    def copy_documents(self, source: ShardRecord, dataset_id: str, shard_index: int, first_id: int) -> int:
        """Copy the document rows of ``source`` (a shard of an earlier version, same content and
        config) into shard ``shard_index`` of ``dataset_id``, numbered from ``first_id``: with the
        staged rows when a :meth:`document_stage` is open, else at once."""
        if self._copies is not None:
            self._copies.append((source, dataset_id, shard_index, first_id))
        else:
            self._put_documents(_COPY_SELECT, [first_id, dataset_id, shard_index, source.dataset_id,
                                               source.shard_index], dataset_id, source.n_documents)
        return source.n_documents

    def copy_documents_except(self, source: str, dataset_id: str, removed: Sequence[int], n_rows: int) -> None:
        """Copy the document rows of dataset version ``source`` but those with doc_id in
        ``removed`` into ``dataset_id``, numbered on from the ledger's next doc_id (``n_rows``:
        how many that leaves)."""
        first = self.next_doc_id()
        self._put_documents(
            """SELECT ? + row_number() OVER (ORDER BY shard_index, row_index) - 1 AS doc_id, ? AS dataset_id,
                      shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys
               FROM documents WHERE dataset_id = ? AND NOT list_contains(?, doc_id)""",
            [first, dataset_id, source, [int(d) for d in removed]], dataset_id, n_rows)


#: The rows of one shard of an earlier version, renumbered for a new one (parameters: first id,
#: new dataset, new shard index, old dataset, old shard index).
_COPY_SELECT = """SELECT ? + row_number() OVER (ORDER BY row_index) - 1 AS doc_id, ? AS dataset_id,
                         ? AS shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys
                  FROM documents WHERE dataset_id = ? AND shard_index = ?"""

#: The rows of the shards of an earlier version that ``provenance_copied_shards`` lists (its
#: ``source``, ``old_index``, ``new_index``, ``first_id``), renumbered for a new one (parameters:
#: new dataset, old dataset twice).
_COPY_MANY_SELECT = """SELECT m.first_id + row_number() OVER (PARTITION BY m.new_index ORDER BY d.row_index) - 1 AS doc_id,
                              ? AS dataset_id, m.new_index AS shard_index, d.row_index, d.line, d.key, d.exact_hash,
                              d.token_count, d.n_bytes, d.signature, d.band_keys
                       FROM documents d JOIN provenance_copied_shards m
                            ON m.source = d.dataset_id AND m.old_index = d.shard_index
                       WHERE d.dataset_id = ? AND m.source = ?"""


def _copied_shards(copies: list[tuple[ShardRecord, str, int, int]]) -> pa.Table:
    """The shards a registration copies from earlier versions, as ``_COPY_MANY_SELECT`` joins them."""
    return pa.table({"source": pa.array([c[0].dataset_id for c in copies], pa.string()),
                     "old_index": pa.array([c[0].shard_index for c in copies], pa.int32()),
                     "new_index": pa.array([c[2] for c in copies], pa.int32()),
                     "first_id": pa.array([c[3] for c in copies], pa.int64())})
