"""The data side of the ledger as queries: datasets, shards, documents, read-only SQL, near
duplicates. Mixed into :class:`provenance.ledger.Ledger`."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from provenance.errors import (
    AccessDeniedError,
    InvalidParameterError,
    NotFoundError,
    ReadOnlyQueryError,
    shown,
)
from provenance.ledger._common import ARROW_TABLES, _dataset_from_row, quote_identifier
from provenance.records import (
    DatasetRecord,
    DocumentRecord,
    RegistrationResult,
    ShardRecord,
    check_batch_rows,
    check_name,
    check_utf8,
    query_params,
)

#: A JSON number as written (a key that one was stored as).
_NUMBER = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"
#: Scalar functions that write to the database from inside a SELECT (a session's connection can).
_SEQUENCE_WRITES = frozenset({"nextval", "setval"})


#: The query of :meth:`DataQueries.withheld` (a ledger server's client sends it as read-only SQL):
#: ``$1`` the dataset version's id, ``$2`` its name, ``$3`` its version number.
WITHHELD = """SELECT s.name, any_value(s.n_documents), max(o.n_documents) FROM shards s
   JOIN shards o ON o.shard_id = s.shard_id JOIN datasets od ON od.dataset_id = o.dataset_id
   WHERE s.dataset_id = $1 AND od.name = $2 AND od.version <= $3
     AND EXISTS (SELECT 1 FROM dataset_removals r JOIN datasets rd ON rd.dataset_id = r.dataset_id
                 WHERE rd.name = $2 AND rd.version <= $3)
   GROUP BY s.shard_index, s.name HAVING max(o.n_documents) > any_value(s.n_documents)
   ORDER BY s.shard_index"""


class DataQueries:
    """Reads of datasets, shards and documents (``self`` is a :class:`~provenance.ledger.Ledger`)."""

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

    def dataset(self, ref: str | DatasetRecord | RegistrationResult) -> DatasetRecord:
        """A dataset by ``NAME`` (latest version) or ``NAME@VERSION``, or the record (or the
        registration result) the library returned for it."""
        if isinstance(ref, RegistrationResult):
            ref = ref.dataset
        if isinstance(ref, DatasetRecord):
            return ref
        name, at, version = str(ref).partition("@")
        check_name(name)
        with self._cursor() as con:
            if at:  # 'x@' is no version, not the latest
                if not re.fullmatch(r"[0-9]{1,9}", version):
                    raise InvalidParameterError(f"dataset version in {shown(ref)} must be a number (1 to 999999999)")
                rows = con.sql("SELECT * FROM datasets WHERE name = ? AND version = ?", params=[name, int(version)])
            else:
                rows = con.sql("SELECT * FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1", params=[name])
            found = rows.to_arrow_table().to_pylist()
            if not found and version:  # the dataset is there, that version is not: say which there are
                have = con.execute("SELECT min(version), max(version) FROM datasets WHERE name = ?", [name]).fetchall()[0]
                if have[0] is not None:
                    span = f"version {have[0]}" if have[0] == have[1] else f"versions {have[0]} to {have[1]}"
                    raise NotFoundError(f"no dataset {shown(ref)} in the ledger: {name} has {span}")
            if not found:
                known = [r[0] for r in con.execute("SELECT DISTINCT name FROM datasets ORDER BY 1 LIMIT 21").fetchall()]
                more = ", ..." if len(known) > 20 else ""  # prov dataset list names them all
                hint = f"; registered: {', '.join(known[:20])}{more}" if known else "; none is registered"
                raise NotFoundError(f"no dataset {shown(ref)} in the ledger{hint}")
        return _dataset_from_row(found[0])

    def shard_at(self, uri: str) -> tuple[str, str] | None:
        """``(dataset_id, name)`` of a registered shard whose file is ``uri`` (an absolute path),
        the first by dataset id, or None."""
        with self._cursor() as con:
            row = con.execute("SELECT dataset_id, name FROM shards WHERE uri = ? ORDER BY dataset_id, shard_index LIMIT 1",
                              [uri]).fetchone()
        return None if row is None else (row[0], row[1])

    def shards(self, dataset: str | DatasetRecord) -> list[ShardRecord]:
        ds = self.dataset(dataset)
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index", params=[ds.dataset_id]
            ).to_arrow_table()
        return [ShardRecord(**r) for r in rows.to_pylist()]

    def withheld(self, dataset: str | DatasetRecord) -> list[tuple[str, int, int]]:
        """The shards of ``dataset`` whose file holds documents that ``prov dataset remove`` left
        out of it (it keeps the files): ``(name, documents here, documents the file holds)``, the
        latter the most an earlier version of the dataset with that file counted. Empty unless a
        version up to this one was made by a removal (a file registered elsewhere with other
        options counts its rows otherwise)."""
        ds = self.dataset(dataset)
        with self._cursor() as con:
            return [tuple(r) for r in con.execute(WITHHELD, [ds.dataset_id, ds.name, ds.version]).fetchall()]

    def key_kinds(self, dataset: str | DatasetRecord) -> set[str]:
        """What the keys of ``dataset``'s documents look like: a subset of ``{"integer",
        "number", "text"}`` (the ledger keeps every key as text)."""
        ds = self.dataset(dataset)
        with self._cursor() as con:
            row = con.execute(
                r"""SELECT bool_or(regexp_full_match(key, '-?[0-9]+')),
                           bool_or(regexp_full_match(key, $2) AND NOT regexp_full_match(key, '-?[0-9]+')),
                           bool_or(NOT regexp_full_match(key, $2))
                    FROM documents WHERE dataset_id = $1""", [ds.dataset_id, _NUMBER]).fetchall()[0]
        return {kind for kind, there in zip(("integer", "number", "text"), row) if there}

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
            found = self.documents_by_key([ds.dataset_id], key)
            removed = [] if found else con.execute(
                "SELECT from_dataset_id FROM dataset_removals WHERE dataset_id = ? AND key = ?",
                [ds.dataset_id, key]).fetchall()
        if not found:
            hint = f" (removed from {removed[0][0]}, which holds it)" if removed else ""
            raise NotFoundError(f"no document {key!r} in dataset {ds.dataset_id}{hint}")
        return found[0]

    def documents_by_key(self, dataset_ids: Sequence[str], key: str) -> list[DocumentRecord]:
        """The document ``key`` in each of the dataset versions ``dataset_ids`` that holds it, in
        their order. A version without ``key`` itself but with one key that differs from it only in
        its Unicode normalisation form (``café.jsonl:0`` typed as NFC, the shard of a file from
        macOS named in NFD) gives that document."""
        found = []
        with self._cursor() as con:
            for dataset_id in dataset_ids:  # one query each: equality on dataset_id reaches the Parquet files' filters
                rows = con.sql("SELECT * FROM documents WHERE dataset_id = ? AND key = ?",
                               params=[dataset_id, key]).to_arrow_table().to_pylist()
                if not rows and not (unicodedata.is_normalized("NFC", key) and unicodedata.is_normalized("NFD", key)):
                    rows = con.sql("SELECT * FROM documents WHERE dataset_id = ? AND nfc_normalize(key) = ? LIMIT 2",
                                   params=[dataset_id, unicodedata.normalize("NFC", key)]).to_arrow_table().to_pylist()
                    rows = rows if len(rows) == 1 else []  # (two such keys: which one is meant is unclear)
                found += rows
        return [DocumentRecord(**r) for r in found]

    def keys_in(self, dataset_id: str, keys: Sequence[str]) -> list[str]:
        """Which of ``keys`` the dataset version ``dataset_id`` holds."""
        with self._cursor() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT key FROM documents WHERE dataset_id = ? "
                                              "AND list_contains(?, key) ORDER BY key", [dataset_id, list(keys)]).fetchall()]

    def summary(self) -> dict[str, Any]:
        """Counts of what the ledger holds."""
        with self.session(), self._cursor() as con:
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

    def sql(self, query: str, params: Sequence[Any] | None = None, *, hidden: Collection[str] = ()) -> pa.Table:
        """Run one read-only statement (SELECT, or EXPLAIN of one) and return an Arrow table.

        Writes, ATTACH, COPY, SET and access to files outside the ledger are refused, and so is
        reading a table named in ``hidden`` (a server hides its tokens, stored answers and access
        log from tokens below admin).
        """
        con, values = self._sql_connection(query, params, hidden)
        try:
            return con.sql(query, params=values).to_arrow_table()
        except duckdb.Error as exc:
            raise self._sql_error(exc) from exc
        finally:
            with ARROW_TABLES:
                con.close()

    def sql_batches(self, query: str, params: Sequence[Any] | None = None, *,
                    rows: int = 10_000) -> Iterator[pa.RecordBatch]:
        """:meth:`sql`'s result as record batches of at most ``rows`` rows, read as they are
        consumed: memory holds one batch, whatever the size of the result (``prov sql`` of a
        million documents held the whole table: 1.4 GB). The first batch may have no rows; it
        carries the result's schema. The query is checked when the first batch is asked for."""
        check_batch_rows(rows)
        con, values = self._sql_connection(query, params, ())
        try:
            reader = con.sql(query, params=values).to_arrow_reader(rows)
            empty = True
            for batch in reader:
                empty = False
                yield batch
            if empty:  # no rows: one empty batch, which names the columns
                yield pa.RecordBatch.from_pylist([], schema=reader.schema)
        except duckdb.Error as exc:
            raise self._sql_error(exc) from exc
        except pa.ArrowException as exc:  # DuckDB's error while it filled a batch, as Arrow reports it
            raise self._sql_error(duckdb.Error(str(exc))) from exc
        finally:
            with ARROW_TABLES:
                con.close()

    def _sql_connection(self, query: str, params: Sequence[Any] | None,
                        hidden: Collection[str]) -> tuple[Any, list[Any] | None]:
        """The checks of :meth:`sql` (one read-only statement), and a connection to run it on."""
        check_utf8(query, "the query")  # a shell argument of bytes that are not UTF-8: a TypeError from DuckDB
        values = query_params(params)
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:  # DuckDB's advice to SET a deeper limit: a query may not SET
            said = re.sub(r'\.\s*Use "SET max_expression_depth TO x" to increase the maximum expression depth\.',
                          ": a query cannot raise the limit; write it with fewer nested levels", str(exc))
            raise ReadOnlyQueryError(f"cannot parse query: {said}") from exc
        if len(statements) != 1:
            raise ReadOnlyQueryError(f"give exactly one statement, got {len(statements)}")
        kind, text = statements[0].type.name, statements[0].query
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: that one must be a SELECT too
            inner = re.sub(r"^\s*explain\s*(\((?:[^()]|\([^()]*\))*\)\s*)?(analy[sz]e\s+)?", "", statements[0].query,
                           flags=re.IGNORECASE)  # EXPLAIN [(FORMAT json, ANALYZE)] [ANALYZE] statement
            try:
                inner_types = [st.type.name for st in duckdb.extract_statements(inner)] if inner.strip() else []
            except duckdb.Error as exc:
                raise ReadOnlyQueryError(f"cannot check the statement EXPLAIN explains: {exc}") from None
            kind = inner_types[0] if len(inner_types) == 1 else "EXPLAIN"
            text = inner if len(inner_types) == 1 else text
        if kind != "SELECT":
            verb = (text.split() or [kind])[0].upper()
            said = kind if verb == kind else f"{verb} (a {kind} statement)"  # INSTALL is a LOAD to DuckDB
            raise ReadOnlyQueryError(f"only SELECT queries are allowed on the ledger, got {said}")
        if self._con is not None or hidden:  # a held session (a server): no second connection, so check the tree
            self._check_ledger_only(text, hidden)  # an EXPLAIN's statement (EXPLAIN has no syntax tree)
        if self._con is not None:
            with self._cursor_lock, ARROW_TABLES:
                con = self._con.cursor()
            self._documents_view(con)
        else:
            con = self._connect(read_only=True, external=False)
        return con, values

    def _sql_error(self, exc: Exception) -> Exception:
        """The error a query's DuckDB error is raised as: the ledger's damage where it is that."""
        if isinstance(exc, duckdb.PermissionException):
            return ReadOnlyQueryError(f"query refused: {exc}")
        return self._damaged(exc) or ReadOnlyQueryError(f"query failed: {exc}")

    # Table functions that make rows without reading anything outside the ledger.
    _PURE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "duckdb_tables", "duckdb_columns",
                                       "duckdb_views", "duckdb_types", "duckdb_functions", "duckdb_constraints",
                                       "duckdb_indexes", "duckdb_schemas", "pragma_table_info"})

    def _check_ledger_only(self, query: str, hidden: Collection[str] = ()) -> None:
        """Refuse a SELECT that could read outside the ledger when it runs on the session's own
        connection (which can read files): its syntax tree may name only the ledger's tables and
        views, its own CTEs, and table functions that read nothing; and none of ``hidden``, even
        where a CTE of that name would shadow it."""
        with self._cursor() as con:
            raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()[0][0]
            known = {r[0].lower() for r in con.execute(
                "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()").fetchall()}
        too_deep = ReadOnlyQueryError("cannot check the query: it nests its expressions too deeply for the check of "
                                      "what it reads (a server's, or a session's); write it with fewer levels")
        try:  # a RecursionError (HTTP 500 on a server) from 400 nested calls, which DuckDB itself accepts
            tree = json.loads(raw)
        except RecursionError:
            raise too_deep from None
        if tree.get("error"):
            raise ReadOnlyQueryError(f"cannot check the query: {tree.get('error_message', 'not a plain SELECT')}")
        ctes: set[str] = set()
        refs: list[dict] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for entry in (node.get("cte_map") or {}).get("map", []) if isinstance(node.get("cte_map"), dict) else []:
                    if isinstance(entry, dict) and "key" in entry:
                        ctes.add(str(entry["key"]).lower())
                if node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION") or (node.get("type") == "SHOW_REF"
                                                                           and node.get("table_name")):
                    refs.append(node)  # SHOW t: t's columns
                if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() == "getenv":
                    raise ReadOnlyQueryError("query refused: getenv() reads the server's environment")
                if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in _SEQUENCE_WRITES:
                    raise ReadOnlyQueryError(  # setval('committed_writes', 1) made every command refuse the ledger
                        f"query refused: {node['function_name']}() changes a sequence of the ledger, which a query "
                        "may not write")
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        try:
            walk(tree)
        except RecursionError:
            raise too_deep from None
        for ref in refs:
            if ref["type"] == "TABLE_FUNCTION":
                fn = (ref.get("function") or {}).get("function_name", "?")
                if fn.lower() not in self._PURE_TABLE_FUNCTIONS:
                    raise ReadOnlyQueryError(f"query refused: table function {fn}() may read outside the ledger")
                if fn.lower() == "duckdb_tables" and hidden:  # its estimated_size counts their rows
                    raise _counts_rows(hidden)
            elif ref.get("table_name", "").lower() == "duckdb_tables" and hidden:  # DuckDB's view of it
                raise _counts_rows(hidden)
            elif ref.get("table_name", "").lower() in {h.lower() for h in hidden}:
                raise AccessDeniedError(f"query refused: table {ref.get('table_name')!r} is readable with an admin "
                                        "token only")
            elif ref["type"] == "SHOW_REF":
                continue  # SHOW of no table (SHOW TABLES): the schema, which docs/schema.md publishes
            elif ref.get("table_name", "").lower() not in known | ctes or ref.get("catalog_name") not in ("", None):
                raise ReadOnlyQueryError(f"query refused: {ref.get('table_name')!r} is not a table of the ledger")

    def document_files(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """The Parquet document files (of ``dataset``, a dataset id, or all): ``path`` (relative
        to the ledger folder), ``dataset_id``, ``n_rows``, ``n_bytes``, ``xxh3_128``,
        ``first_doc_id``, ``last_doc_id``, ``created_at``; in path order."""
        where, params = ("WHERE dataset_id = ?", [dataset]) if dataset is not None else ("", [])
        with self._cursor() as con:
            return con.sql(f"SELECT * FROM document_files {where} ORDER BY path", params=params).to_arrow_table().to_pylist()

    def dataset_problems(self) -> list[dict[str, Any]]:
        """Dataset rows that disagree with their shards and documents (what ``prov verify``
        checks): ``{"dataset_id", "shard_index" (or None), "problem"}``, empty when consistent."""
        with self._cursor() as con:
            rows = con.execute(
                """WITH sh AS (SELECT dataset_id, count(*) AS n, min(shard_index) AS lo, max(shard_index) AS hi,
                                      sum(n_documents)::BIGINT AS docs, sum(n_bytes)::BIGINT AS bytes
                               FROM shards GROUP BY dataset_id),
                        dc AS (SELECT dataset_id, shard_index, count(*) AS n,
                                      count(*) FILTER (WHERE len(signature) <> c.num_perm) AS bad_sig
                               FROM documents JOIN datasets d USING (dataset_id)
                               JOIN fingerprint_configs c ON c.config_id = d.config_id
                               GROUP BY dataset_id, shard_index)
                   SELECT d.dataset_id, NULL::INTEGER, 'the dataset row says ' || d.n_shards || ' shards, '
                          || coalesce(sh.n, 0) || ' shard rows exist'
                   FROM datasets d LEFT JOIN sh USING (dataset_id) WHERE d.n_shards <> coalesce(sh.n, 0)
                   UNION ALL
                   SELECT d.dataset_id, NULL, 'shard indices run ' || sh.lo || '..' || sh.hi || ', not 0..'
                          || (sh.n - 1)
                   FROM datasets d JOIN sh USING (dataset_id) WHERE sh.lo <> 0 OR sh.hi <> sh.n - 1
                   UNION ALL
                   SELECT d.dataset_id, NULL, 'the dataset row says ' || d.n_documents || ' documents, its shards '
                          || coalesce(sh.docs, 0)
                   FROM datasets d LEFT JOIN sh USING (dataset_id) WHERE d.n_documents <> coalesce(sh.docs, 0)
                   UNION ALL
                   SELECT s.dataset_id, s.shard_index, 'the shard row says ' || s.n_documents || ' documents, '
                          || coalesce(dc.n, 0) || ' document rows exist'
                   FROM shards s LEFT JOIN dc USING (dataset_id, shard_index) WHERE s.n_documents <> coalesce(dc.n, 0)
                   UNION ALL
                   SELECT dataset_id, shard_index, bad_sig || ' documents have a signature of the wrong length'
                   FROM dc WHERE bad_sig > 0
                   UNION ALL
                   SELECT dc.dataset_id, dc.shard_index, dc.n || ' document rows belong to no shard'
                   FROM dc ANTI JOIN shards s USING (dataset_id, shard_index)
                   ORDER BY 1, 2 NULLS FIRST, 3"""
            ).fetchall()
        return [{"dataset_id": d, "shard_index": s, "problem": p} for d, s, p in rows]

    # -- datasets as queries --------------------------------------------------------------------

    def near_duplicates(self, datasets: Sequence[str | DatasetRecord], threshold: float = 0.8) -> pa.Table:
        """Pairs of documents in ``datasets`` whose stored LSH bands collide and whose estimated
        Jaccard similarity is at least ``threshold``: ``key_a, key_b, dataset_a, dataset_b, jaccard``.

        The datasets must share a fingerprint config and banding; the bands were chosen for the
        config's ``lsh_threshold``, so pairs below it may be missed.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise InvalidParameterError(f"threshold must be in (0, 1], got {threshold!r}")  # NaN gave no pairs, 0 every candidate
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


def _counts_rows(hidden: Collection[str]) -> AccessDeniedError:
    return AccessDeniedError("query refused: duckdb_tables counts the rows of tables readable with an admin token "
                             f"only ({', '.join(hidden)}); SHOW TABLES or information_schema.tables list the tables")
