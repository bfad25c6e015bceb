"""Writes inside one ledger transaction: :class:`LedgerWriter`, and the Parquet staging of
document rows that a registration bulk-inserts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import unicodedata
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from provenance.errors import (
    InvalidParameterError,
)
from provenance.files import naming, xxh3_file
from provenance.fingerprints import FingerprintConfig
from provenance.ledger._common import (
    TMP_DIR,
    _dataset_from_row,
    _now,
    quote_identifier,
    register,
    tree_bytes,
    unregister,
)
from provenance.ledger.audit_sql import AuditWrites
from provenance.records import (
    DatasetRecord,
    ParamRecord,
    RunRecord,
    ShardRecord,
    VersionRecord,
)

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


class LedgerWriter(AuditWrites):
    """Writes inside one transaction of :meth:`Ledger.transaction`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, staging: Path, *, scratch: bool = False,
                 store: Any = None):
        self._con = con
        self._staging = staging
        #: What this transaction made (``run_id``, ``version_id``, ``dataset_id``): a server's
        #: Idempotency-Key mark keeps it, so a retry whose answer was lost learns what it made.
        self.made: dict[str, str] = {}
        self.settings_after_rollback: tuple[int, str] | None = None  # see _bulk
        self.scratch = scratch  # an audit that stores nothing (Ledger.transaction(scratch=True))
        self._store = store  # the LedgerStore: its root and its connections' documents views
        self._table = store.documents_table(con) if store is not None else "documents"
        self.documents_as = "auto"  # where a registration keeps its rows (DOCUMENTS_AS)
        self.parquet_threshold = PARQUET_THRESHOLD
        self.new_folders: list[str] = []  # Parquet document folders this transaction made (paths or URLs)
        self._copies: list[tuple[ShardRecord, str, int, int]] | None = None  # copies waiting for the stage

    def latest_dataset(self, name: str) -> DatasetRecord | None:
        rows = self._con.sql(
            "SELECT * FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", params=[name]
        ).to_arrow_table().to_pylist()
        return _dataset_from_row(rows[0]) if rows else None

    def ensure_config(self, cfg: FingerprintConfig) -> None:
        self._con.execute(
            """INSERT INTO fingerprint_configs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (config_id) DO NOTHING""",
            [cfg.identity, cfg.unit, cfg.ngram, cfg.normalization, cfg.hash, cfg.scheme, cfg.num_perm, cfg.seed,
             unicodedata.unidata_version, _now()],
        )

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
        pattern = (tmp / "*.parquet").as_posix()
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
        self._copies = []
        try:
            yield stage
            copies, self._copies = self._copies, None
            parts, params = [], []
            if stage.close():
                cols = ", ".join(quote_identifier(c) for c in stage.columns)
                parts.append(f"SELECT {cols} FROM read_parquet(?)")
                params.append(str(stage.path))
            for source, dataset_id, shard_index, first_id in copies:
                parts.append(_COPY_SELECT)
                params += [first_id, dataset_id, shard_index, source.dataset_id, source.shard_index]
            if parts:
                dataset_id = copies[0][1] if copies else stage.dataset_id
                whole = stage.path if not copies and stage.schema == DOCUMENT_SCHEMA else None
                self._put_documents(" UNION ALL BY NAME ".join(f"({p})" for p in parts), params, dataset_id,
                                    stage.rows + sum(c[0].n_documents for c in copies), stage=whole)
        finally:
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

    def has_removals(self, dataset_id: str) -> bool:
        """Whether ``dataset_id`` was made by removing documents (its shards' files hold more)."""
        return bool(self._con.execute("SELECT count(*) FROM dataset_removals WHERE dataset_id = ?",
                                      [dataset_id]).fetchall()[0][0])

    def shards_of(self, dataset_id: str) -> list[ShardRecord]:
        rows = self._con.sql(
            "SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index", params=[dataset_id]
        ).to_arrow_table()
        return [ShardRecord(**r) for r in rows.to_pylist()]

    def insert_document_parts(self, dataset_id: str, parts: Sequence[str], first_ids: Mapping[int, int]) -> dict[int, int]:
        """Insert the document rows of Parquet ``parts`` (the columns of ``documents`` but
        ``dataset_id``, with ``doc_id`` counted from 0 within each shard) into ``dataset_id``, each
        shard's ids moved to start at ``first_ids[shard_index]``; the rows found per shard."""
        if not parts:
            return {}
        offsets = pa.table({"shard_index": pa.array(list(first_ids), pa.int32()),
                            "first_id": pa.array(list(first_ids.values()), pa.int64())})
        register(self._con, "provenance_part_offsets", offsets)
        try:
            found = dict(self._con.execute(
                "SELECT shard_index, count(*) FROM read_parquet(?) GROUP BY shard_index", [list(parts)]).fetchall())
            self._put_documents(
                """SELECT p.doc_id + o.first_id AS doc_id, ? AS dataset_id, p.shard_index, p.row_index, p.line, p.key,
                          p.exact_hash, p.token_count, p.n_bytes, p.signature, p.band_keys
                   FROM read_parquet(?) p JOIN provenance_part_offsets o ON p.shard_index = o.shard_index""",
                [dataset_id, list(parts)], dataset_id, sum(found.values()))
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

    def insert_version(self, version: VersionRecord, params: Sequence[ParamRecord],
                       files: Sequence[Mapping[str, Any]] = ()) -> None:
        """The version, its manifest, and the files of the folder it was committed from (rows
        ``name, size, object, skipped``)."""
        self._insert("versions", pa.Table.from_pylist([version.model_dump(exclude={"tags"})]))
        self.made["version_id"] = version.version_id
        if files:
            schema = pa.schema([("version_id", pa.string()), ("name", pa.string()), ("size", pa.int64()),
                                ("object", pa.string()), ("skipped", pa.string())])
            self._insert("version_files", pa.Table.from_pylist(
                [{"version_id": version.version_id, "name": f["name"], "size": f["size"], "object": f["object"],
                  "skipped": f["skipped"]} for f in files], schema=schema))
        if params:
            rows = [
                {"version_id": version.version_id, "name": p.name, "dtype": p.dtype, "shape": p.shape,
                 "encoding": p.encoding, "objects": list(p.objects.items()),
                 "meta_json": json.dumps(p.meta) if p.meta else None, "nbytes": p.nbytes}
                for p in params
            ]
            schema = pa.schema([
                ("version_id", pa.string()), ("name", pa.string()), ("dtype", pa.string()),
                ("shape", pa.list_(pa.int64())), ("encoding", pa.string()),
                ("objects", pa.map_(pa.string(), pa.string())), ("meta_json", pa.string()), ("nbytes", pa.int64()),
            ])
            self._insert("version_params", pa.Table.from_pylist(rows, schema=schema))

    # -- runs ---------------------------------------------------------------------------------

    def insert_run(self, run: RunRecord) -> None:
        row = run.model_dump(exclude={"datasets", "n_logged", "params"})
        row["params_json"] = json.dumps(run.params, sort_keys=True, default=str)
        self._insert("runs", pa.Table.from_pylist([row]))
        self.made["run_id"] = run.run_id
        if run.datasets:
            self._insert("run_datasets", pa.table({
                "run_id": [run.run_id] * len(run.datasets), "dataset_id": list(run.datasets),
                "epochs": [float(e) for e in run.datasets.values()],
            }))

    def run_status(self, run_id: str) -> str | None:
        rows = self._con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        return rows[0][0] if rows else None

    def end_run(self, run_id: str, status: str, *, error: str | None = None, version_id: str | None = None,
                ended_at: datetime | None = None) -> None:
        """Close a running run (``ended_at``: when it ended, default now; never before its start)
        and count, per shard of its datasets, the examples it saw."""
        self._con.execute(
            "UPDATE runs SET status = ?, error = ?, version_id = ?, ended_at = greatest(?, started_at) WHERE run_id = ?",
            [status, error, version_id, ended_at or _now(), run_id],
        )
        self.count_run_shards(run_id)

    def run_started_earlier(self, run_id: str, started_at: datetime) -> None:
        """Move a run's start back to ``started_at`` when that is earlier (an OpenLineage START that
        arrived after a later event)."""
        self._con.execute("UPDATE runs SET started_at = $1 WHERE run_id = $2 AND started_at > $1", [started_at, run_id])

    def count_run_shards(self, run_id: str) -> None:
        """Per shard of the run's datasets, the examples it saw, for the datasets not counted yet
        (at the end of the run, and for datasets an ended run's late OpenLineage event names): for
        a dataset whose examples it logged, the shards it saw a document of, counted from the log;
        for one it only declared, every shard, ``n_documents × epochs`` rounded (no more distinct
        documents than that)."""
        self._con.execute(
            """INSERT OR IGNORE INTO run_shards
               WITH logged AS (
                   SELECT d.dataset_id, d.shard_index, count(*) AS examples, count(DISTINCT e.doc_id) AS docs
                   FROM run_examples e JOIN documents d USING (doc_id)
                   WHERE e.run_id = $run GROUP BY ALL),
               logged_datasets AS (SELECT DISTINCT dataset_id FROM logged),
               counted AS (
                   SELECT s.dataset_id, s.shard_index, s.n_documents, rd.epochs, l.examples, l.docs,
                          CAST(round(s.n_documents * rd.epochs) AS BIGINT) AS declared,
                          ld.dataset_id IS NOT NULL AS is_logged
                   FROM run_datasets rd JOIN shards s USING (dataset_id)
                   LEFT JOIN logged_datasets ld USING (dataset_id)
                   LEFT JOIN logged l USING (dataset_id, shard_index)
                   WHERE rd.run_id = $run AND (ld.dataset_id IS NULL OR l.examples IS NOT NULL))
               SELECT $run, dataset_id, shard_index,
                      CASE WHEN is_logged THEN examples ELSE declared END,
                      CASE WHEN is_logged THEN docs ELSE least(n_documents, declared) END,
                      CASE WHEN is_logged THEN examples / n_documents ELSE epochs END,
                      is_logged
               FROM counted""",
            {"run": run_id},
        )

    # -- OpenLineage intake ----------------------------------------------------------------------

    def openlineage_run(self, ol_run_id: str) -> dict | None:
        rows = self._con.sql("SELECT * FROM openlineage_runs WHERE ol_run_id = ?", params=[ol_run_id]
                             ).to_arrow_table().to_pylist()
        return rows[0] if rows else None

    def map_openlineage_run(self, ol_run_id: str, run_id: str, namespace: str, name: str, event: str,
                            when: object) -> None:
        self._con.execute(
            """INSERT INTO openlineage_runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (ol_run_id)
               DO UPDATE SET last_event = excluded.last_event, last_event_time = excluded.last_event_time""",
            [ol_run_id, run_id, namespace, name, event, when])

    def add_run_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str | None]]) -> list[str]:
        """Record inputs ``(namespace, name, dataset_id or None)`` of a run, and declare the
        matched datasets (one epoch each) unless the run declared them already; returns the
        datasets declared now."""
        rows = {(namespace, name): dataset_id for namespace, name, dataset_id in inputs}  # an input once
        if not rows:
            return []
        # One statement each, whatever the number of inputs (an event may name thousands: a statement
        # per input held the ledger for seconds).
        self._con.execute("INSERT INTO run_inputs SELECT $1, unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), "
                          "unnest($4::VARCHAR[]) ON CONFLICT DO NOTHING",
                          [run_id, [n for n, _ in rows], [m for _, m in rows], list(rows.values())])
        matched = sorted({d for d in rows.values() if d is not None})
        if not matched:
            return []
        return [r[0] for r in self._con.execute(
            "INSERT INTO run_datasets SELECT $1, unnest($2::VARCHAR[]), 1.0 ON CONFLICT DO NOTHING RETURNING dataset_id",
            [run_id, matched]).fetchall()]

    def attach_version_run(self, version_id: str, run_id: str) -> None:
        """Say that ``run_id`` produced ``version_id``, a version committed without a run."""
        current = self._con.execute("SELECT run_id FROM versions WHERE version_id = ?", [version_id]).fetchall()
        if current and current[0][0] not in (None, run_id):
            raise InvalidParameterError(f"version {version_id[:12]} was produced by run {current[0][0][:12]} already")
        self._con.execute("UPDATE versions SET run_id = ? WHERE version_id = ?", [run_id, version_id])

    def running_runs(self) -> list[tuple[str, str, int]]:
        """(run_id, host, pid) of every run still marked running."""
        return [tuple(r) for r in self._con.execute("SELECT run_id, host, pid FROM runs WHERE status = 'running'").fetchall()]

    def log_examples(self, run_id: str, datasets: Sequence[str], log: pa.Table) -> int:
        """Resolve the document keys of ``log`` (columns seq, step, key, dataset) within
        ``datasets`` and append them to run_examples. Unknown or ambiguous keys raise
        :class:`InvalidParameterError` naming the first of them; nothing is written then."""
        register(self._con, "_prov_log", log)
        try:
            self._con.execute(
                """CREATE OR REPLACE TEMP TABLE _prov_resolved AS
                   SELECT l.seq, l.step, l.key, d.doc_id, d.dataset_id
                   FROM _prov_log l LEFT JOIN (SELECT doc_id, dataset_id, key FROM documents
                                               WHERE list_contains($datasets, dataset_id)) d
                     ON d.key = l.key AND (l.dataset IS NULL OR d.dataset_id = l.dataset)""",
                {"datasets": list(datasets)},
            )
        finally:
            unregister(self._con, "_prov_log")
        try:
            missing = self._con.execute(
                "SELECT key, step, count(*) OVER () FROM _prov_resolved WHERE doc_id IS NULL ORDER BY seq LIMIT 1"
            ).fetchall()
            if missing:
                key, step, n = missing[0]
                more = f" (and {n - 1} more unknown keys)" if n > 1 else ""
                raise InvalidParameterError(
                    f"logged example {key!r} at step {step} is not a document of the run's datasets "
                    f"({', '.join(datasets) or 'none declared'}){more}"
                )
            ambiguous = self._con.execute(
                """SELECT key, list(dataset_id ORDER BY dataset_id) FROM _prov_resolved
                   GROUP BY seq, key HAVING count(*) > 1 ORDER BY seq LIMIT 1"""
            ).fetchall()
            if ambiguous:
                key, where = ambiguous[0]
                raise InvalidParameterError(
                    f"logged example {key!r} is a document of several of the run's datasets ({', '.join(where)}); "
                    "log it with dataset=... to say which"
                )
            n = self._con.execute(
                "INSERT INTO run_examples SELECT ?, step, doc_id FROM _prov_resolved ORDER BY seq", [run_id]
            ).fetchall()[0][0]
            self._con.execute("UPDATE runs SET n_logged = n_logged + ? WHERE run_id = ?", [n, run_id])
            return n
        finally:
            self._con.execute("DROP TABLE IF EXISTS _prov_resolved")

    def set_fishers(self, version_id: str, rows: Sequence[dict], *, replace_all: bool = False) -> None:
        """Store (or replace) the Fisher of ``version_id``'s parameters named in ``rows``; with
        ``replace_all`` the Fisher stored for its other parameters goes too."""
        if replace_all:
            self._con.execute("DELETE FROM version_fishers WHERE version_id = ?", [version_id])
        if not rows:
            return
        self._con.execute(
            "DELETE FROM version_fishers WHERE version_id = ? AND list_contains(?, name)",
            [version_id, [r["name"] for r in rows]],
        )
        schema = pa.schema([("version_id", pa.string()), ("name", pa.string()), ("kind", pa.string()),
                            ("objects", pa.map_(pa.string(), pa.string())), ("meta_json", pa.string())])
        self._insert("version_fishers", pa.Table.from_pylist([
            {"version_id": version_id, "name": r["name"], "kind": r["kind"], "objects": list(r["objects"].items()),
             "meta_json": json.dumps(r["meta"], sort_keys=True)} for r in rows
        ], schema=schema))

    def insert_receipt(self, receipt: dict) -> None:
        schema = pa.schema([
            ("version_id", pa.string()), ("method", pa.string()), ("inputs", pa.list_(pa.string())),
            ("weights", pa.list_(pa.float64())), ("base_version", pa.string()), ("eps", pa.float64()),
            ("normalize", pa.bool_()), ("density", pa.float64()), ("kernel", pa.string()), ("params_json", pa.string()),
            ("audit_id", pa.string()), ("created_at", pa.timestamp("us")),
        ])
        self._insert("merge_receipts", pa.Table.from_pylist([receipt], schema=schema))

    def insert_retraction(self, row: Mapping[str, Any], documents: Sequence[Mapping[str, Any]]) -> None:
        """A retraction and what it retracts (rows ``dataset_id, shard_index, doc_id, key, jaccard``)."""
        self._con.execute("INSERT INTO retractions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          [row[k] for k in ("retraction_id", "created_at", "author", "reason", "target", "target_json",
                                            "near", "plan_json")]).fetchall()
        if documents:
            schema = pa.schema([("retraction_id", pa.string()), ("dataset_id", pa.string()),
                                ("shard_index", pa.int32()), ("doc_id", pa.int64()), ("key", pa.string()),
                                ("jaccard", pa.float64())])
            self._insert("retraction_documents", pa.Table.from_pylist(
                [{"retraction_id": row["retraction_id"], **{k: d.get(k) for k in schema.names[1:]}}
                 for d in documents], schema=schema))

    def insert_retraction_audit(self, row: Mapping[str, Any]) -> None:
        self._con.execute("INSERT INTO retraction_audits VALUES (?, ?, ?, ?, ?)",
                          [row["audit_id"], row["retraction_id"], row["passed"], json.dumps(row["report"], default=str),
                           row["created_at"]]).fetchall()

    def insert_retraction_result(self, row: Mapping[str, Any]) -> None:
        self._con.execute("INSERT INTO retraction_results VALUES (?, ?, ?, ?, ?, ?)",
                          [row[k] for k in ("retraction_id", "version_id", "action", "new_version_id", "exact",
                                            "applied_at")]).fetchall()

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

    def insert_removals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        schema = pa.schema([("dataset_id", pa.string()), ("from_dataset_id", pa.string()), ("doc_id", pa.int64()),
                            ("key", pa.string()), ("retraction_id", pa.string()), ("reason", pa.string()),
                            ("created_at", pa.timestamp("us"))])
        self._insert("dataset_removals", pa.Table.from_pylist([dict(r) for r in rows], schema=schema))

    def set_tag(self, name: str, version_id: str) -> None:
        self._con.execute(
            "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", [name, version_id, _now()]
        ).fetchall()

    def insert_shards(self, shards: Sequence[ShardRecord]) -> None:
        if shards:
            self._insert("shards", pa.Table.from_pylist([s.model_dump() for s in shards]))

    def insert_dataset(self, ds: DatasetRecord) -> None:
        self.made["dataset_id"] = ds.dataset_id
        row = ds.model_dump(exclude={"license", "config"})
        row.update(
            license=ds.license.spdx,
            non_commercial=ds.license.non_commercial,
            share_alike=ds.license.share_alike,
            attribution=ds.license.attribution,
            config_json=ds.config.model_dump_json(),
        )
        self._insert("datasets", pa.Table.from_pylist([row]))

    def duplicate_keys(self, dataset_id: str, limit: int = 5) -> tuple[int, list[dict]]:
        """How many keys occur more than once, and the first ``limit`` of them with two places."""
        dup = """SELECT key, count(*) AS n,
                        min({'shard': shard_index, 'row': row_index, 'line': line}) AS first,
                        max({'shard': shard_index, 'row': row_index, 'line': line}) AS second
                 FROM documents WHERE dataset_id = ? GROUP BY key HAVING count(*) > 1"""
        total = int(self._con.execute(f"SELECT count(*) FROM ({dup})", [dataset_id]).fetchall()[0][0])
        if not total:
            return 0, []
        rows = self._con.sql(f"{dup} ORDER BY key LIMIT {int(limit)}", params=[dataset_id]).to_arrow_table()
        names = dict(
            self._con.execute("SELECT shard_index, name FROM shards WHERE dataset_id = ?", [dataset_id]).fetchall()
        )

        def place(p: dict) -> str:
            name = names.get(p["shard"], f"shard {p['shard']}")
            return f"{name} line {p['line']}" if p["line"] is not None else f"{name} record {p['row']}"

        return total, [
            {"key": r["key"], "count": r["n"], "first": place(r["first"]), "second": place(r["second"])}
            for r in rows.to_pylist()
        ]

    def _insert(self, table: str, data: pa.Table) -> None:
        cols = ", ".join(quote_identifier(c) for c in data.column_names)
        register(self._con, "_prov_insert", data)
        try:
            self._con.execute(f"INSERT INTO {quote_identifier(table)} ({cols}) SELECT {cols} FROM _prov_insert")
        finally:
            unregister(self._con, "_prov_insert")


#: The rows of one shard of an earlier version, renumbered for a new one (parameters: first id,
#: new dataset, new shard index, old dataset, old shard index).
_COPY_SELECT = """SELECT ? + row_number() OVER (ORDER BY row_index) - 1 AS doc_id, ? AS dataset_id,
                         ? AS shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys
                  FROM documents WHERE dataset_id = ? AND shard_index = ?"""


def staging_entries(root: Path) -> list[tuple[Path, int]]:
    """What the staging folder holds, each file or folder with its bytes: outside a
    registration, what a process that died in one left there."""
    staging = root / TMP_DIR / "staging"
    if not staging.is_dir():
        return []
    found = []
    for entry in sorted(staging.iterdir()):
        with contextlib.suppress(OSError):  # gone meanwhile: nothing to report
            found.append((entry, tree_bytes(entry)))
    return found


def _clean_staging(root: Path) -> Path:
    """Remove staging files and folders: called holding the ledger's lock, when no registration
    is running, so anything there was left by a process that died and was never part of the ledger."""
    staging = root / TMP_DIR / "staging"
    if staging.exists():
        for stale in staging.iterdir():
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return staging


class DocumentStage:
    """A Parquet file of document rows, written batch by batch (see ``document_stage``)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self.rows = 0
        self.dataset_id = ""
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._written = False

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if not self.dataset_id and table.num_rows:
            self.dataset_id = table.column("dataset_id")[0].as_py()
        with naming(self.path):  # a full disk: "PATH: No space left on device", and nothing registered
            if self._writer is None:
                self.columns, self.schema = table.column_names, table.schema
                # Statistics of the columns queries filter on: the file may become a dataset's own.
                self._writer = pq.ParquetWriter(
                    self.path, table.schema, compression="none", use_dictionary=False,
                    write_statistics=[c for c in ("doc_id", "dataset_id", "shard_index") if c in table.column_names],
                )
            self._writer.write_table(table, row_group_size=16_384)
        self._written = True

    def close(self) -> bool:
        """Finish the file; True when it holds rows."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with naming(self.path):
                writer.close()
        return self._written

    def discard(self) -> None:
        """Close the file, quietly (a write that failed may fail again here), and remove it."""
        with contextlib.suppress(OSError):
            self.close()
        self.path.unlink(missing_ok=True)

