"""The ledger: a ``.prov/`` folder holding the DuckDB database and the object store.

This is the one module that imports ``duckdb``. It takes and returns records and Arrow tables,
never cursors; values are bound parameters; identifiers go through :func:`quote_identifier`.

A connection is opened per operation (or per :meth:`Ledger.session`) so that other processes can
use the ledger between operations. DuckDB lets one process write a database file at a time: a
second writer waits up to ``lock_timeout`` seconds, then gets :class:`LedgerLockedError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from provenance.errors import (
    InvalidParameterError,
    LedgerExistsError,
    LedgerLockedError,
    LedgerNotFoundError,
    NotFoundError,
    ProvenanceError,
    ReadOnlyQueryError,
    SchemaVersionError,
)
from provenance.fingerprints import FingerprintConfig
from provenance.records import (
    DatasetRecord,
    DocumentRecord,
    License,
    ParamRecord,
    RunRecord,
    RunShardRecord,
    ShardRecord,
    VersionRecord,
    check_name,
)

LEDGER_DIR = ".prov"
DB_FILE = "ledger.duckdb"
OBJECTS_DIR = "objects"
TMP_DIR = "tmp"

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier for DuckDB (the one place identifiers are interpolated)."""
    return '"' + name.replace('"', '""') + '"'


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with this code: ``(version, name, sql)`` in order."""
    folder = resources.files("provenance.schemas").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise ProvenanceError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


SCHEMA_VERSION = len(migrations())


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Ledger:
    """A provenance ledger on disk. Create one with :meth:`init`, open one with :meth:`open`."""

    def __init__(self, root: Path, *, lock_timeout: float = 10.0, memory_limit: str = "512MB"):
        self.root = Path(root).resolve()
        self.lock_timeout = lock_timeout
        self.memory_limit = memory_limit
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._in_transaction = False

    # -- finding, creating, opening ---------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def objects_path(self) -> Path:
        return self.root / OBJECTS_DIR

    def __repr__(self) -> str:
        return f"Ledger({str(self.root)!r})"

    @staticmethod
    def find(start: str | os.PathLike | None = None) -> Path:
        """The ``.prov`` folder at ``start`` or in the nearest folder above it, like git does."""
        here = Path(start or os.getcwd()).resolve()
        for folder in (here, *here.parents):
            if folder.name == LEDGER_DIR and (folder / DB_FILE).exists():
                return folder
            if (folder / LEDGER_DIR / DB_FILE).exists():
                return folder / LEDGER_DIR
        raise LedgerNotFoundError(f"no ledger in {here} or any folder above it; create one with `prov init`")

    @classmethod
    def init(cls, path: str | os.PathLike = ".", *, lock_timeout: float = 10.0) -> Ledger:
        """Create a ledger in ``path/.prov`` and return it."""
        base = Path(path)
        root = base if base.name == LEDGER_DIR else base / LEDGER_DIR
        if (root / DB_FILE).exists():
            raise LedgerExistsError(f"a ledger already exists at {root}")
        root.mkdir(parents=True, exist_ok=True)
        (root / OBJECTS_DIR).mkdir(exist_ok=True)
        (root / TMP_DIR).mkdir(exist_ok=True)
        ledger = cls(root, lock_timeout=lock_timeout)
        ledger._migrate(create=True)
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, lock_timeout: float = 10.0) -> Ledger:
        """Open the ledger at ``path`` (a project folder or its ``.prov``), or find one upwards
        from the current folder. An older schema is migrated; a newer one is refused."""
        if path is None:
            root = cls.find()
        else:
            base = Path(path)
            if (base / DB_FILE).exists():
                root = base
            elif (base / LEDGER_DIR / DB_FILE).exists():
                root = base / LEDGER_DIR
            else:
                raise LedgerNotFoundError(f"no ledger at {base} (looked for {base / LEDGER_DIR / DB_FILE})")
        ledger = cls(root, lock_timeout=lock_timeout)
        ledger._migrate(create=False)
        return ledger

    # -- connections ------------------------------------------------------------------------

    def _connect(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        config: dict[str, Any] = {"threads": max(1, os.cpu_count() or 1)}
        if read_only:
            config["enable_external_access"] = False
        else:
            config["temp_directory"] = str(self.root / TMP_DIR)
            config["memory_limit"] = self.memory_limit
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only, config=config)
            except duckdb.IOException as exc:
                message = str(exc)
                if "lock" not in message.lower():
                    raise ProvenanceError(f"cannot open ledger {self.db_path}: {message}") from exc
                if time.monotonic() >= deadline:
                    holder = re.search(r"\(PID (\d+)\)", message)
                    who = f"process {holder.group(1)}" if holder else "another process"
                    raise LedgerLockedError(
                        f"ledger {self.root} is in use by {who}; waited {self.lock_timeout:g}s. "
                        "Retry when it finishes, or wait longer (--wait SECONDS)."
                    ) from exc
                time.sleep(0.1)

    @contextlib.contextmanager
    def session(self) -> Iterator[Ledger]:
        """Keep one connection open for several operations (and the lock held meanwhile)."""
        if self._con is None:
            self._con = self._connect()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                con, self._con = self._con, None
                con.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.session():
            assert self._con is not None
            yield self._con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LedgerWriter]:
        """A write transaction: everything done through the writer lands whole or not at all."""
        if self._in_transaction:
            raise ProvenanceError("transactions do not nest")
        with self._cursor() as con:
            staging = _clean_staging(self.root)
            con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield LedgerWriter(con, staging)
            except BaseException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")
            finally:
                self._in_transaction = False

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self, *, create: bool) -> None:
        shipped = migrations()
        with self._cursor() as con:
            _clean_staging(self.root)
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
            ).fetchall()[0][0]
            if not exists and not create:
                raise LedgerNotFoundError(f"{self.db_path} is not a provenance ledger (no schema_migrations table)")
            current = con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] if exists else 0
            current = current or 0
            if current > len(shipped):
                raise SchemaVersionError(
                    f"ledger {self.root} has schema version {current}, but this provenance understands up to "
                    f"{len(shipped)}; upgrade provenance to open it"
                )
            for version, name, sql in shipped[current:]:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(sql)
                    con.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()]
                    )
                    if version == 1:
                        con.execute(
                            "INSERT INTO ledger_meta VALUES ('created_at', ?), ('created_by', ?)",
                            [_now().isoformat(), "provenance"],
                        )
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")

    def schema_version(self) -> int:
        with self._cursor() as con:
            return int(con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])

    # -- reads ------------------------------------------------------------------------------

    def datasets(self, name: str | None = None, *, all_versions: bool = False) -> list[DatasetRecord]:
        """Registered datasets (the latest version of each, unless ``all_versions``)."""
        where, params = [], []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if not all_versions:
            where.append("version = (SELECT max(version) FROM datasets d2 WHERE d2.name = datasets.name)")
        sql = "SELECT * FROM datasets" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY name, version"
        with self._cursor() as con:
            rows = con.sql(sql, params=params).to_arrow_table().to_pylist()
        return [_dataset_from_row(r) for r in rows]

    def dataset(self, ref: str | DatasetRecord) -> DatasetRecord:
        """A dataset by ``NAME`` (latest version) or ``NAME@VERSION``."""
        if isinstance(ref, DatasetRecord):
            return ref
        name, _, version = str(ref).partition("@")
        check_name(name)
        with self._cursor() as con:
            if version:
                if not version.isdigit():
                    raise InvalidParameterError(f"dataset version in {ref!r} must be a number")
                rows = con.sql("SELECT * FROM datasets WHERE name = ? AND version = ?", params=[name, int(version)])
            else:
                rows = con.sql("SELECT * FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", params=[name])
            found = rows.to_arrow_table().to_pylist()
            if not found:
                known = [r[0] for r in con.execute("SELECT DISTINCT name FROM datasets ORDER BY 1").fetchall()]
                hint = f"; registered: {', '.join(known)}" if known else "; none is registered"
                raise NotFoundError(f"no dataset {ref!r} in the ledger{hint}")
        return _dataset_from_row(found[0])

    def shards(self, dataset: str | DatasetRecord) -> list[ShardRecord]:
        ds = self.dataset(dataset)
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index", params=[ds.dataset_id]
            ).to_arrow_table()
        return [ShardRecord(**r) for r in rows.to_pylist()]

    def documents(
        self, dataset: str | DatasetRecord, *, columns: Sequence[str] | None = None, limit: int | None = None
    ) -> pa.Table:
        """The documents of a dataset version as an Arrow table, in shard and row order."""
        ds = self.dataset(dataset)
        cols = "*" if not columns else ", ".join(quote_identifier(c) for c in columns)
        sql = f"SELECT {cols} FROM documents WHERE dataset_id = ? ORDER BY shard_index, row_index"
        params: list[Any] = [ds.dataset_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._cursor() as con:
            try:
                return con.sql(sql, params=params).to_arrow_table()
            except duckdb.BinderException as exc:
                raise InvalidParameterError(f"unknown document column: {exc}") from exc

    def document(self, dataset: str | DatasetRecord, key: str) -> DocumentRecord:
        ds = self.dataset(dataset)
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM documents WHERE dataset_id = ? AND key = ?", params=[ds.dataset_id, key]
            ).to_arrow_table().to_pylist()
        if not rows:
            raise NotFoundError(f"no document {key!r} in dataset {ds.dataset_id}")
        return DocumentRecord(**rows[0])

    def summary(self) -> dict[str, Any]:
        """Counts of what the ledger holds."""
        with self._cursor() as con:
            row = con.execute(
                """SELECT (SELECT count(DISTINCT name) FROM datasets),
                          (SELECT count(*) FROM datasets),
                          (SELECT count(*) FROM shards),
                          (SELECT count(*) FROM documents),
                          (SELECT coalesce(sum(n_bytes), 0) FROM shards),
                          (SELECT count(*) FROM fingerprint_configs)"""
            ).fetchall()[0]
        keys = ["datasets", "dataset_versions", "shards", "documents", "bytes", "fingerprint_configs"]
        return {"path": str(self.root), "schema_version": self.schema_version(), **dict(zip(keys, map(int, row)))}

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run one read-only statement (SELECT, or EXPLAIN of one) and return an Arrow table.

        Writes, ATTACH, COPY, SET and access to files outside the ledger are refused.
        """
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise ReadOnlyQueryError(f"cannot parse query: {exc}") from exc
        if len(statements) != 1:
            raise ReadOnlyQueryError(f"give exactly one statement, got {len(statements)}")
        kind = statements[0].type.name
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: that one must be a SELECT too
            inner = re.sub(r"^\s*explain\s+(analy[sz]e\s+)?", "", statements[0].query, flags=re.IGNORECASE)
            inner_types = [st.type.name for st in duckdb.extract_statements(inner)] if inner.strip() else []
            kind = inner_types[0] if len(inner_types) == 1 else "EXPLAIN"
        if kind != "SELECT":
            raise ReadOnlyQueryError(f"only SELECT queries are allowed on the ledger, got {kind}")
        if self._con is not None:
            raise ProvenanceError("sql() opens its own read-only connection; call it outside a session")
        con = self._connect(read_only=True)
        try:
            return con.sql(query, params=list(params) if params else None).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise ReadOnlyQueryError(f"query refused: {exc}") from exc
        except duckdb.Error as exc:
            raise ReadOnlyQueryError(f"query failed: {exc}") from exc
        finally:
            con.close()

    # -- model versions (the logic is in provenance.versions) ----------------------------------

    def version(self, ref: str | VersionRecord) -> VersionRecord:
        """A version by record, tag, full id or unambiguous id prefix (at least 4 hex digits)."""
        if isinstance(ref, VersionRecord):
            return ref
        ref = str(ref)
        with self._cursor() as con:
            tagged = con.execute("SELECT version_id FROM tags WHERE name = ?", [ref]).fetchall()
            if tagged:
                ref = tagged[0][0]
            elif not re.fullmatch(r"[0-9a-f]{4,32}", ref):
                raise NotFoundError(f"no version or tag {ref!r} (a version id is 4 to 32 hex digits)")
            rows = con.sql(
                "SELECT * FROM versions WHERE starts_with(version_id, ?) ORDER BY version_id LIMIT 6", params=[ref]
            ).to_arrow_table().to_pylist()
        if not rows:
            raise NotFoundError(f"no version {ref!r} in the ledger")
        if len(rows) > 1:
            shown = ", ".join(r["version_id"][:12] for r in rows[:5])
            raise InvalidParameterError(f"version prefix {ref!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}")
        return VersionRecord(**rows[0])

    def versions(self) -> list[VersionRecord]:
        """Every version, newest first."""
        with self._cursor() as con:
            rows = con.sql("SELECT * FROM versions ORDER BY created_at DESC, version_id").to_arrow_table()
        return [VersionRecord(**r) for r in rows.to_pylist()]

    def ancestors(self, version: str | VersionRecord) -> list[VersionRecord]:
        """``version`` and every version it descends from (through all parents), newest first."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql(
                """WITH RECURSIVE up(version_id) AS (
                       SELECT ?::VARCHAR
                       UNION SELECT unnest(v.parents) FROM versions v JOIN up USING (version_id))
                   SELECT v.* FROM versions v JOIN up USING (version_id)
                   ORDER BY v.created_at DESC, v.version_id""",
                params=[vid],
            ).to_arrow_table()
        return [VersionRecord(**r) for r in rows.to_pylist()]

    def manifest(self, version: str | VersionRecord) -> dict[str, ParamRecord]:
        """Parameter name -> how it is stored in ``version`` (removed parameters included)."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM version_params WHERE version_id = ? ORDER BY name", params=[vid]
            ).to_arrow_table().to_pylist()
        return {r["name"]: _param_from_row(r) for r in rows}

    def first_parent_chain(self, version: str | VersionRecord) -> list[tuple[str, str | None, dict[str, ParamRecord]]]:
        """``(version_id, first parent, manifest)`` from ``version`` down its first parents to the
        root, in one query (what a checkout replays)."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            chain = con.execute(
                """WITH RECURSIVE up(version_id, parent, depth) AS (
                       SELECT version_id, parents[1], 0 FROM versions WHERE version_id = ?
                       UNION ALL
                       SELECT v.version_id, v.parents[1], up.depth + 1 FROM versions v JOIN up ON v.version_id = up.parent)
                   SELECT version_id, parent FROM up ORDER BY depth""",
                [vid],
            ).fetchall()
            rows = con.sql(
                "SELECT * FROM version_params WHERE list_contains(?, version_id) ORDER BY name",
                params=[[c[0] for c in chain]],
            ).to_arrow_table().to_pylist()
        manifests: dict[str, dict[str, ParamRecord]] = {c[0]: {} for c in chain}
        for r in rows:
            manifests[r["version_id"]][r["name"]] = _param_from_row(r)
        return [(v, parent, manifests[v]) for v, parent in chain]

    def versions_using(self, address: str) -> list[str]:
        """Ids of the versions whose manifest refers to object ``address``."""
        with self._cursor() as con:
            rows = con.execute(
                """SELECT DISTINCT version_id FROM version_params
                   WHERE list_contains(map_values(objects), ?) ORDER BY 1""",
                [address],
            ).fetchall()
        return [r[0] for r in rows]

    def referenced_objects(self) -> set[str]:
        """Every object address some version's manifest refers to."""
        with self._cursor() as con:
            rows = con.execute(
                "SELECT DISTINCT unnest(map_values(objects)) FROM version_params WHERE objects IS NOT NULL"
            ).fetchall()
        return {r[0] for r in rows}

    def gc(self, *, apply: bool = False) -> dict[str, Any]:
        """Objects no version uses; see :func:`provenance.versions.gc`."""
        from provenance.versions import gc

        return gc(self, apply=apply)

    def tag(self, name: str, version: str | VersionRecord) -> VersionRecord:
        """Name ``version`` (a tag can be moved to another version by tagging again)."""
        if not name or re.fullmatch(r"[0-9a-f]{4,32}", name):
            raise InvalidParameterError(f"tag {name!r} must be non-empty and not look like a version id")
        ver = self.version(version)
        with self.transaction() as tx:
            tx.set_tag(name, ver.version_id)
        return ver

    def commit(self, state: Any, **options: Any) -> VersionRecord:
        """Store a model state as a new version; see :func:`provenance.versions.commit`."""
        from provenance.versions import commit

        return commit(self, state, **options)

    def checkout(self, version: str | VersionRecord, output: str | os.PathLike | None = None) -> Any:
        """The tensors of ``version``, bit-identical to what was committed, as a dict or streamed
        to the safetensors file ``output``; see :func:`provenance.versions.checkout`."""
        from provenance.versions import checkout

        return checkout(self, version, output)

    # -- training runs (the logic is in provenance.runs) ----------------------------------------

    def start_run(self, **options: Any):
        """Start a training run; see :func:`provenance.runs.start_run`."""
        from provenance.runs import start_run

        return start_run(self, **options)

    def run(self, ref: str | RunRecord) -> RunRecord:
        """A run by record, full id or unambiguous id prefix (at least 4 hex digits)."""
        rid = ref.run_id if isinstance(ref, RunRecord) else str(ref)
        if not re.fullmatch(r"[0-9a-f]{4,32}", rid):
            raise NotFoundError(f"no run {rid!r} (a run id is 4 to 32 hex digits)")
        rows = self._runs("WHERE starts_with(r.run_id, ?) ORDER BY r.run_id LIMIT 6", [rid])
        if not rows:
            raise NotFoundError(f"no run {rid!r} in the ledger")
        if len(rows) > 1:
            shown = ", ".join(r.run_id[:12] for r in rows[:5])
            raise InvalidParameterError(f"run prefix {rid!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}")
        return rows[0]

    def runs(self) -> list[RunRecord]:
        """Every run, newest first."""
        return self._runs("ORDER BY r.started_at DESC, r.run_id", [])

    def _runs(self, where: str, params: list[Any]) -> list[RunRecord]:
        with self._cursor() as con:
            rows = con.sql(
                f"""SELECT r.*,
                       (SELECT map(list(dataset_id ORDER BY dataset_id), list(epochs ORDER BY dataset_id))
                        FROM run_datasets d WHERE d.run_id = r.run_id) AS datasets,
                       (SELECT count(*) FROM run_examples e WHERE e.run_id = r.run_id) AS n_logged
                    FROM runs r {where}""",
                params=params,
            ).to_arrow_table().to_pylist()
        out = []
        for r in rows:
            r["params"] = json.loads(r.pop("params_json"))
            r["datasets"] = dict(r["datasets"]) if r["datasets"] else {}
            out.append(RunRecord(**r))
        return out

    def run_shards(self, run: str | RunRecord) -> list[RunShardRecord]:
        """Per shard of the run's datasets: examples seen and epochs (once the run has ended)."""
        rid = self.run(run).run_id
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM run_shards WHERE run_id = ? ORDER BY dataset_id, shard_index", params=[rid]
            ).to_arrow_table().to_pylist()
        return [RunShardRecord(**r) for r in rows]

    def run_examples(self, run: str | RunRecord) -> pa.Table:
        """The run's logged examples in order: step, dataset, document key and doc_id."""
        rid = self.run(run).run_id
        with self._cursor() as con:
            return con.sql(
                """SELECT e.step, d.dataset_id, d.key, e.doc_id FROM run_examples e
                   JOIN documents d USING (doc_id) WHERE e.run_id = ? ORDER BY e.step, e.rowid""",
                params=[rid],
            ).to_arrow_table()

    # -- datasets as queries --------------------------------------------------------------------

    def near_duplicates(self, datasets: Sequence[str | DatasetRecord], threshold: float = 0.8) -> pa.Table:
        """Pairs of documents in ``datasets`` whose stored LSH bands collide and whose estimated
        Jaccard similarity is at least ``threshold``: ``key_a, key_b, dataset_a, dataset_b, jaccard``.

        The datasets must share a fingerprint config and banding; the bands were chosen for the
        config's ``lsh_threshold``, so pairs below it may be missed.
        """
        records = [self.dataset(d) for d in datasets]
        if not records:
            raise InvalidParameterError("give at least one dataset")
        configs = {(r.config_id, r.bands, r.rows) for r in records}
        if len(configs) > 1:
            raise InvalidParameterError(f"datasets use different fingerprint configs or bandings: {sorted(configs)}")
        ids = [r.dataset_id for r in records]
        marks = ", ".join("?" for _ in ids)
        sql = f"""
            WITH b AS (
                SELECT doc_id, unnest(band_keys) AS bk, generate_subscripts(band_keys, 1) AS band
                FROM documents WHERE dataset_id IN ({marks})
            ),
            cand AS (
                SELECT DISTINCT b1.doc_id AS a, b2.doc_id AS b
                FROM b b1 JOIN b b2 ON b1.band = b2.band AND b1.bk = b2.bk AND b1.doc_id < b2.doc_id
            )
            SELECT da.key AS key_a, db.key AS key_b, da.dataset_id AS dataset_a, db.dataset_id AS dataset_b,
                   len(list_filter(list_zip(da.signature, db.signature), lambda x: x[1] = x[2]))
                       / len(da.signature) AS jaccard
            FROM cand JOIN documents da ON da.doc_id = cand.a JOIN documents db ON db.doc_id = cand.b
            WHERE len(list_filter(list_zip(da.signature, db.signature), lambda x: x[1] = x[2]))
                  >= ? * len(da.signature)
            ORDER BY jaccard DESC, key_a, key_b"""
        with self._cursor() as con:
            return con.sql(sql, params=[*ids, float(threshold)]).to_arrow_table()

    def export_croissant(self, dataset: str | DatasetRecord) -> dict[str, Any]:
        """The dataset version as Croissant 1.1 JSON-LD (see :mod:`provenance.croissant`)."""
        from provenance.croissant import to_croissant

        ds = self.dataset(dataset)
        return to_croissant(ds, self.shards(ds))

    # -- registration (implemented in provenance.datasets) ------------------------------------

    def register_dataset(self, name: str, sources: Any, **options: Any):
        """Register a dataset; see :func:`provenance.datasets.register_dataset`."""
        from provenance.datasets import register_dataset

        return register_dataset(self, name, sources, **options)


class LedgerWriter:
    """Writes inside one transaction of :meth:`Ledger.transaction`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, staging: Path):
        self._con = con
        self._staging = staging

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
        return int(self._con.execute("SELECT coalesce(max(doc_id) + 1, 0) FROM documents").fetchall()[0][0])

    @contextlib.contextmanager
    def document_stage(self) -> Iterator[DocumentStage]:
        """Collect document rows in a Parquet file, then insert them with one bulk statement.

        Many small appends from Arrow keep the whole uncommitted transaction in memory; one bulk
        INSERT from Parquet, run on one thread, writes row groups to the database file as they
        fill, so memory stays bounded whatever the size of the registration.
        """
        self._staging.mkdir(parents=True, exist_ok=True)
        stage = DocumentStage(self._staging / f"documents-{os.getpid()}-{time.time_ns()}.parquet")
        try:
            yield stage
            if stage.close():
                cols = ", ".join(quote_identifier(c) for c in stage.columns)
                with self._bulk():
                    self._con.execute(
                        f"INSERT INTO documents ({cols}) SELECT {cols} FROM read_parquet(?)", [str(stage.path)]
                    )
        finally:
            stage.close()
            stage.path.unlink(missing_ok=True)

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
            self._con.execute(f"SET threads = {int(threads)}")
            self._con.execute("SET memory_limit = ?", [memory])

    def shards_of(self, dataset_id: str) -> list[ShardRecord]:
        rows = self._con.sql(
            "SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index", params=[dataset_id]
        ).to_arrow_table()
        return [ShardRecord(**r) for r in rows.to_pylist()]

    def copy_documents(self, source: ShardRecord, dataset_id: str, shard_index: int, first_id: int) -> int:
        """Copy the document rows of ``source`` (a shard of an earlier version, same content and
        config) into shard ``shard_index`` of ``dataset_id``, numbered from ``first_id``."""
        with self._bulk():
            self._con.execute(
                """INSERT INTO documents
                   SELECT ? + row_number() OVER (ORDER BY row_index) - 1, ?, ?, row_index, line, key,
                          exact_hash, token_count, n_bytes, signature, band_keys
                   FROM documents WHERE dataset_id = ? AND shard_index = ?""",
                [first_id, dataset_id, shard_index, source.dataset_id, source.shard_index],
            ).fetchall()
        return source.n_documents

    def insert_version(self, version: VersionRecord, params: Sequence[ParamRecord]) -> None:
        self._insert("versions", pa.Table.from_pylist([version.model_dump()]))
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
        if run.datasets:
            self._insert("run_datasets", pa.table({
                "run_id": [run.run_id] * len(run.datasets), "dataset_id": list(run.datasets),
                "epochs": [float(e) for e in run.datasets.values()],
            }))

    def run_status(self, run_id: str) -> str | None:
        rows = self._con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        return rows[0][0] if rows else None

    def end_run(self, run_id: str, status: str, *, error: str | None = None, version_id: str | None = None) -> None:
        """Close a running run and count, per shard of its datasets, the examples it saw."""
        self._con.execute(
            "UPDATE runs SET status = ?, error = ?, version_id = ?, ended_at = ? WHERE run_id = ?",
            [status, error, version_id, _now(), run_id],
        )
        self._con.execute(
            """INSERT INTO run_shards
               WITH logged AS (
                   SELECT d.dataset_id, d.shard_index, count(*) AS examples, count(DISTINCT e.doc_id) AS docs
                   FROM run_examples e JOIN documents d USING (doc_id)
                   WHERE e.run_id = $run GROUP BY ALL),
               logged_datasets AS (SELECT DISTINCT dataset_id FROM logged)
               SELECT $run, s.dataset_id, s.shard_index,
                      CASE WHEN ld.dataset_id IS NOT NULL THEN coalesce(l.examples, 0)
                           ELSE CAST(round(s.n_documents * rd.epochs) AS BIGINT) END,
                      CASE WHEN ld.dataset_id IS NOT NULL THEN coalesce(l.docs, 0)
                           WHEN rd.epochs > 0 THEN s.n_documents ELSE 0 END,
                      CASE WHEN ld.dataset_id IS NULL THEN rd.epochs
                           WHEN s.n_documents = 0 THEN 0.0
                           ELSE coalesce(l.examples, 0) / s.n_documents END,
                      ld.dataset_id IS NOT NULL
               FROM run_datasets rd JOIN shards s USING (dataset_id)
               LEFT JOIN logged_datasets ld USING (dataset_id)
               LEFT JOIN logged l USING (dataset_id, shard_index)
               WHERE rd.run_id = $run""",
            {"run": run_id},
        )

    def running_runs(self) -> list[tuple[str, str, int]]:
        """(run_id, host, pid) of every run still marked running."""
        return [tuple(r) for r in self._con.execute("SELECT run_id, host, pid FROM runs WHERE status = 'running'").fetchall()]

    def log_examples(self, run_id: str, datasets: Sequence[str], log: pa.Table) -> int:
        """Resolve the document keys of ``log`` (columns seq, step, key, dataset) within
        ``datasets`` and append them to run_examples. Unknown or ambiguous keys raise
        :class:`InvalidParameterError` naming the first of them; nothing is written then."""
        self._con.register("_prov_log", log)
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
            self._con.unregister("_prov_log")
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
            return self._con.execute(
                "INSERT INTO run_examples SELECT ?, step, doc_id FROM _prov_resolved ORDER BY seq", [run_id]
            ).fetchall()[0][0]
        finally:
            self._con.execute("DROP TABLE IF EXISTS _prov_resolved")

    def set_tag(self, name: str, version_id: str) -> None:
        self._con.execute(
            "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", [name, version_id, _now()]
        ).fetchall()

    def insert_shards(self, shards: Sequence[ShardRecord]) -> None:
        if shards:
            self._insert("shards", pa.Table.from_pylist([s.model_dump() for s in shards]))

    def insert_dataset(self, ds: DatasetRecord) -> None:
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
        self._con.register("_prov_insert", data)
        try:
            self._con.execute(f"INSERT INTO {quote_identifier(table)} ({cols}) SELECT {cols} FROM _prov_insert")
        finally:
            self._con.unregister("_prov_insert")


def _clean_staging(root: Path) -> Path:
    """Remove staging files: called holding the ledger's lock, when no registration is running,
    so any file there was left by a process that died and was never part of the ledger."""
    staging = root / TMP_DIR / "staging"
    if staging.exists():
        for stale in staging.iterdir():
            stale.unlink(missing_ok=True)
    return staging


class DocumentStage:
    """A Parquet file of document rows, written batch by batch (see ``document_stage``)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._written = False

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.columns = table.column_names
            self._writer = pq.ParquetWriter(
                self.path, table.schema, compression="none", use_dictionary=False, write_statistics=False
            )
        self._writer.write_table(table, row_group_size=16_384)
        self._written = True

    def close(self) -> bool:
        """Finish the file; True when it holds rows."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self._written


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
