"""Writes inside one ledger transaction: :class:`LedgerWriter`, with the rows of datasets,
shards, removals and retractions, and the one Arrow insert every write goes through. It mixes in,
one module each: :mod:`.document_writes` (document rows in the table or as Parquet files),
:mod:`.version_writes` (versions, Fishers, receipts, tags), :mod:`.run_writes` (runs, logged
examples, the OpenLineage intake) and :mod:`.audit_sql` (the audits). The Parquet staging of
document rows that a registration bulk-inserts is :mod:`.staging`."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from provenance.fingerprints import FingerprintConfig
from provenance.ledger._common import _dataset_from_row, _now, quote_identifier, register, unregister
from provenance.ledger.audit_sql import AuditWrites
from provenance.ledger.document_writes import (
    DOCUMENT_SCHEMA,
    DOCUMENTS_AS,
    PARQUET_THRESHOLD,
    DocumentWrites,
    check_documents_as,
)
from provenance.ledger.run_writes import RunWrites
from provenance.ledger.staging import DocumentStage, staging_entries
from provenance.ledger.version_writes import VersionWrites
from provenance.records import DatasetRecord, ShardRecord


class LedgerWriter(DocumentWrites, VersionWrites, RunWrites, AuditWrites):
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

    def has_removals(self, dataset_id: str) -> bool:
        """Whether ``dataset_id`` was made by removing documents (its shards' files hold more)."""
        return bool(self._con.execute("SELECT count(*) FROM dataset_removals WHERE dataset_id = ?",
                                      [dataset_id]).fetchall()[0][0])

    def shards_of(self, dataset_id: str) -> list[ShardRecord]:
        rows = self._con.sql(
            "SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index", params=[dataset_id]
        ).to_arrow_table()
        return [ShardRecord(**r) for r in rows.to_pylist()]

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

    def insert_removals(self, rows: Sequence[Mapping[str, Any]]) -> None:
        schema = pa.schema([("dataset_id", pa.string()), ("from_dataset_id", pa.string()), ("doc_id", pa.int64()),
                            ("key", pa.string()), ("retraction_id", pa.string()), ("reason", pa.string()),
                            ("created_at", pa.timestamp("us"))])
        self._insert("dataset_removals", pa.Table.from_pylist([dict(r) for r in rows], schema=schema))

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
        shards = {i: (name, fmt) for i, name, fmt in self._con.execute(
            "SELECT shard_index, name, format FROM shards WHERE dataset_id = ?", [dataset_id]).fetchall()}

        def place(p: dict) -> str:  # in the words a null id of the same file is refused in
            name, fmt = shards.get(p["shard"], (f"shard {p['shard']}", None))
            if p["line"] is not None:
                return f"{name} line {p['line']}"
            return f"{name} {'row' if fmt == 'parquet' else 'record'} {p['row']}"

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


__all__ = ["DOCUMENTS_AS", "DOCUMENT_SCHEMA", "PARQUET_THRESHOLD", "DocumentStage", "LedgerWriter",
           "check_documents_as", "staging_entries"]
