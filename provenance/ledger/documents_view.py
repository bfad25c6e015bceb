"""The ``documents`` view: on each connection, a temporary view that is the union of the
``documents`` table and the Parquet document files of large datasets (read from where the
:class:`~provenance.ledger.document_store.DocumentStore` says they are), made again when a
transaction adds or drops files. A missing or damaged file stands in the view as a row that raises
the error naming it, so the ledger still opens and queries of other datasets still run. Also the
confinement of user SQL to those files. Mixed into :class:`~provenance.ledger.LedgerStore`; kept
apart from the connections because how the view is built (branches per dataset, stand-in rows) is
a subject of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import duckdb

from provenance.ledger._common import glob_literal, quote_identifier
from provenance.ledger.document_store import DocumentStore, Unreadable

#: Up to this many datasets kept as Parquet, the documents view reads each in a branch of its own
#: whose dataset_id is a constant, so a query that names another dataset opens none of its files
#: (a large dataset has many); above, one scan of every file. Each branch costs about 1.5 ms to
#: bind per query (60 one-file datasets: a lookup by key 150 ms in branches, 78 ms in one scan;
#: 2,000: 2.7 s against 0.7 s; measured on the 2-vCPU machine).
_DATASET_BRANCHES = 8

#: The columns of ``documents`` after ``doc_id, dataset_id``, and all of them in order (the Parquet
#: document files hold exactly these).
_OTHER_COLUMNS = "shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys"
DOCUMENT_COLUMNS = "doc_id, dataset_id, " + _OTHER_COLUMNS

#: The types of the other columns of the stand-in row of a damaged Parquet document file: its
#: dataset's rows cannot be read, and the row raises the error that says so whenever a query
#: reads it (any query of its dataset, or of all datasets; one that names another dataset prunes
#: it). Each column is the error itself, not NULL: a filter on a constant NULL column (``key =
#: 'k5'``, ``exact_hash = …``) let DuckDB prune the row unread, and the query found nothing.
_BROKEN_TYPES = ("INTEGER", "BIGINT", "BIGINT", "VARCHAR", "UBIGINT", "INTEGER", "INTEGER", "UINTEGER[]", "UBIGINT[]")


def _file_problem(found: int | str | None, size: int) -> str | None:
    """Why a file found with ``found`` bytes (None: missing; a string: why it cannot be looked
    at) cannot be the one recorded with ``size`` bytes (None: it may be)."""
    if found is None:
        return "missing"
    if isinstance(found, str):
        return found
    return None if found == size else f"{found:,} bytes instead of {size:,} (truncated or replaced)"


#: What a query reading a bucket's document file that did not answer says to do (it is no damage).
UNREACHABLE = "is the bucket reachable with these credentials? Nothing is known to be damaged"


def _sql_string(value: str) -> str:
    """A string literal for DDL, which takes no bound parameters."""
    return "'" + value.replace("'", "''") + "'"


class DocumentsView:
    """Where the Parquet document files are, and each connection's ``documents`` view of them
    (``self`` is a :class:`~provenance.ledger.LedgerStore`)."""

    @property
    def documents_url(self) -> str | None:
        """The bucket prefix new Parquet document files go to (``prov init --documents URL``),
        None when they go to ``documents_path``."""
        return self.document_store.url

    @property
    def document_store(self) -> DocumentStore:
        """Where the Parquet document files are (:mod:`provenance.ledger.document_store`)."""
        if getattr(self, "_document_store", None) is None:
            with self._cursor() as con:
                return self._document_store_on(con)
        return self._document_store

    def _document_store_on(self, con: duckdb.DuckDBPyConnection) -> DocumentStore:
        """:attr:`document_store`, its setting read on ``con`` the first time."""
        if getattr(self, "_document_store", None) is None:
            self._document_store = DocumentStore(self.root, self._meta("documents_url", con))
        return self._document_store

    def confine(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make ``con``'s ``documents`` view, then refuse it every file but the Parquet document
        files (so a query can read the view, and nothing else on the disk)."""
        self._documents_view(con)
        places = {str(self.documents_path) + os.sep, self._document_store_on(con).where}
        places |= {glob_literal(p) for p in places}  # the view reads them as such patterns (and then as found)
        con.execute(f"SET allowed_directories = [{', '.join(_sql_string(p) for p in sorted(places))}]")
        con.execute("SET enable_external_access = false")

    def _documents_view(self, con: duckdb.DuckDBPyConnection, skip: frozenset[str] = frozenset()) -> int:
        """Make ``documents``, on ``con``, the union of the table and the Parquet document files
        (a temporary view that shadows the table; none when there are no files). Each connection
        has its own temporary objects, so each makes it, once per change of the files; returns
        the generation of the files it saw.

        A file that is missing, whose size is not the one recorded, or whose footer does not
        decode, is left out of the view and stands in it as one row of its dataset that raises an
        error naming the file when a query reads it: the ledger still opens, and queries that name
        other datasets as constants still run (a join by doc_id reads the row, and fails).
        ``skip``: files to leave out without that row (``prov verify`` reports them itself)."""
        generation = self._documents_generation
        try:
            files = con.execute("SELECT path, dataset_id, n_bytes FROM document_files ORDER BY path").fetchall()
        except duckdb.CatalogException:  # a schema older than 0008, being migrated
            return -1
        good: dict[str, list[str]] = {}
        broken: dict[str, str] = {}  # path -> problem
        store = self._document_store_on(con)
        files = [f for f in files if f[0] not in skip]
        found = store.sizes([path for path, _, _ in files])
        store.register(con, [path for path, _, _ in files])
        for path, dataset_id, size in files:
            problem = _file_problem(found[path], size)
            if problem is None:
                good.setdefault(dataset_id, []).append(path)
            else:
                broken[path] = problem
        if not good and not broken:
            con.execute("DROP VIEW IF EXISTS temp.main.documents")
            return generation
        try:
            con.execute(self._view_sql(con, good, broken, files))
        except duckdb.Error:  # a file of the right size whose footer does not read: find which
            for paths in good.values():
                for path in list(paths):
                    try:
                        con.execute(f"SELECT 1 FROM read_parquet({_sql_string(glob_literal(store.location(path)))}) LIMIT 0")
                    except duckdb.Error as exc:
                        paths.remove(path)
                        broken[path] = f"unreadable as Parquet ({str(exc).splitlines()[0]})"
            con.execute(self._view_sql(con, {d: p for d, p in good.items() if p}, broken, files))
        return generation

    def _view_sql(self, con: duckdb.DuckDBPyConnection, good: dict[str, list[str]], broken: dict[str, str],
                  files: list[tuple[str, str, int]]) -> str:
        """The statement that makes the documents view of the files ``good`` (per dataset), with a
        stand-in row that raises for each of ``broken`` (path -> problem)."""
        parts = [f"SELECT * FROM {self.documents_table(con)}"]
        store = self._document_store_on(con)
        quoted = {d: [_sql_string(glob_literal(store.location(p))) for p in paths] for d, paths in good.items()}
        if len(quoted) <= _DATASET_BRANCHES:  # the dataset as a constant: a query of another skips its files
            for dataset_id, paths in quoted.items():
                parts.append(f"SELECT doc_id, {_sql_string(dataset_id)} AS dataset_id, {_OTHER_COLUMNS} "
                             f"FROM read_parquet([{', '.join(paths)}])")
        elif quoted:  # binding a branch per dataset would cost more than reading every file's footer
            paths = [p for ps in quoted.values() for p in ps]
            parts.append(f"SELECT {DOCUMENT_COLUMNS} FROM read_parquet([{', '.join(paths)}])")
        owner = {path: dataset_id for path, dataset_id, _ in files}
        for path, problem in broken.items():
            if store.is_url(path) and isinstance(problem, Unreadable):  # the bucket did not answer: no damage known
                message = (f"the Parquet document file {store.location(path)} of dataset {owner[path]} could not be "
                           f"looked at ({problem.why}): {UNREACHABLE}")
            else:
                message = (f"the Parquet document file {store.location(path)} of dataset {owner[path]} is {problem}; "
                           "restore it from a backup of the ledger (`prov verify` lists every damaged file)")
            # raised per row (range is a column), not folded while planning: a query of another dataset,
            # whose filter on the constant dataset_id prunes this branch, never reaches it
            raised = f"error(CASE WHEN range >= 0 THEN {_sql_string(message)} END)"
            parts.append(f"SELECT {raised}::BIGINT, {_sql_string(owner[path])}, "
                         f"{', '.join(f'{raised}::{t}' for t in _BROKEN_TYPES)} FROM range(1) WHERE {raised} IS NULL")
        return "CREATE OR REPLACE TEMP VIEW documents AS " + " UNION ALL ".join(parts)

    @contextlib.contextmanager
    def documents_without(self, paths: set[str]) -> Iterator[None]:
        """Inside a session: queries of ``documents`` leave out the Parquet files ``paths``
        (damaged ones, which ``prov verify`` reports while it checks the rest)."""
        with self._cursor() as con:
            self._view_generations[id(con)] = self._documents_view(con, frozenset(paths))
            try:
                yield
            finally:
                self._view_generations.pop(id(con), None)

    @staticmethod
    def documents_table(con: duckdb.DuckDBPyConnection) -> str:
        """The ``documents`` table itself, named so that the view of the same name does not
        shadow it (inserts go there)."""
        catalog = con.execute("SELECT current_database()").fetchall()[0][0]
        return f"{quote_identifier(catalog)}.main.documents"

    def documents_changed(self) -> None:
        """A transaction that added or removed Parquet document files ended (committed or not):
        every connection remakes its view before its next query."""
        self._documents_generation += 1
