"""What the ledger's modules share: layout names, identifier quoting, timestamps, row converters."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from provenance.files import DB_FILE as DB_FILE  # the layout's names live with the file helpers, below the ledger
from provenance.files import LEDGER_DIR as LEDGER_DIR
from provenance.fingerprints import FingerprintConfig
from provenance.records import (
    DatasetRecord,
    License,
    ParamRecord,
)

OBJECTS_DIR = "objects"
DOCUMENTS_DIR = "documents"  # datasets whose document rows are kept as Parquet
TMP_DIR = "tmp"

#: 2⁶⁰ as a DuckDB DOUBLE: exact sums of doubles count in units of its inverse, as HUGEINT, and
#: are rounded to a double once (the lineage's epochs and effective examples, the memorization
#: audit's exposure): the same in any row order, where DuckDB's threads summing doubles gave other
#: last bits from call to call. Scaling by 2⁶⁰ is exact, so a term is rounded only where it has
#: bits below 2⁻⁶⁰; sums up to about 1.4·10²⁰ fit.
EXACT_UNIT = "1152921504606846976::DOUBLE"


def glob_literal(path: str) -> str:
    """``path`` as a pattern of DuckDB's file readers (``read_parquet``) that matches only itself:
    they expand ``*``, ``?`` and ``[...]`` everywhere in a path, so a ledger folder or a documents
    prefix named ``runs [1]`` matched nothing (``No files found``) and ``a*`` matched ``ab`` too.
    Each such character becomes a class of itself (``[[]``), read as that character by DuckDB's
    local glob and by fsspec's (bucket files)."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in path)


#: DuckDB's Python module registers an Arrow table through a scan function of the database's
#: catalog, which opening and closing a connection or a cursor sets up and drops: a connection
#: opened or closed in one thread while another registers a table (a training loop logging keys
#: while the callback's thread commits a checkpoint through its own ``Ledger``; a server's threads)
#: failed it one time in three with "Table Function with name python_arrow_scan does not exist".
#: Every registration and drop, and every connection or cursor opened or closed, takes this lock.
ARROW_TABLES = threading.RLock()


def register(con: duckdb.DuckDBPyConnection, name: str, table: Any) -> None:
    """Register the Arrow ``table`` on ``con`` as ``name`` (one registration at a time in the process)."""
    with ARROW_TABLES:
        con.register(name, table)


def unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the Arrow table registered on ``con`` as ``name``. After a failed statement the
    transaction is aborted and DuckDB refuses even this; the rollback drops it then, and the
    statement's own error is the one to report."""
    with ARROW_TABLES, contextlib.suppress(duckdb.TransactionException):
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


def tree_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (a folder) or of ``path`` (a file)."""
    if path.is_dir() and not path.is_symlink():  # a link inside counts as the link, not what it points at
        return sum(f.lstat().st_size for f in path.rglob("*") if f.is_symlink() or f.is_file())
    return path.lstat().st_size


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
