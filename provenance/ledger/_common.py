"""What the ledger's modules share: layout names, identifier quoting, timestamps, row converters."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone

import duckdb

from provenance.fingerprints import FingerprintConfig
from provenance.records import (
    DatasetRecord,
    License,
    ParamRecord,
)

LEDGER_DIR = ".prov"
DB_FILE = "ledger.duckdb"
OBJECTS_DIR = "objects"
DOCUMENTS_DIR = "documents"  # datasets whose document rows are kept as Parquet
TMP_DIR = "tmp"


def unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the Arrow table registered on ``con`` as ``name``. After a failed statement the
    transaction is aborted and DuckDB refuses even this; the rollback drops it then, and the
    statement's own error is the one to report."""
    with contextlib.suppress(duckdb.TransactionException):
        con.unregister(name)


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier for DuckDB (the one place identifiers are interpolated)."""
    return '"' + name.replace('"', '""') + '"'



def row_dicts(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    """The rows of an executed query as dicts by column name (cheaper than an Arrow table for
    the few rows of a point lookup)."""
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _param_from_row(r: dict) -> ParamRecord:
    return ParamRecord(
        name=r["name"], dtype=r["dtype"], shape=r["shape"], encoding=r["encoding"],
        objects=dict(r["objects"]) if r["objects"] else {},
        meta=json.loads(r["meta_json"]) if r["meta_json"] else {}, nbytes=r["nbytes"],
    )


def _dataset_from_row(row: dict) -> DatasetRecord:
    row = dict(row)
    license = License(
        spdx=row.pop("license"),
        non_commercial=row.pop("non_commercial"),
        share_alike=row.pop("share_alike"),
        attribution=row.pop("attribution"),
    )
    config = FingerprintConfig.model_validate(json.loads(row.pop("config_json")))
    return DatasetRecord(license=license, config=config, **row)
