"""The documents an audit works on, staged as the temporary ``aud_docs`` (:class:`StagingWrites`,
mixed into :class:`provenance.ledger.audit_sql.AuditWrites`): a copy of the scope's documents with
the sides each is on, or a view over them when no document matches two scope rows; generated
samples added as probes; the temporary tables dropped at the end. The scope's datasets are
named as constants (:func:`in_datasets`) so that the documents view skips every other dataset's
files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from provenance import columns
from provenance.errors import ProvenanceError
from provenance.ledger._common import register, unregister

#: The staged documents of ``aud_scope`` when no document matches two of its rows (``where``:
#: :func:`in_datasets`), as a table or as a view (:meth:`AuditWrites.stage_documents`).
_STAGED = """SELECT d.doc_id, d.dataset_id, d.shard_index, d.row_index, d.key, d.exact_hash, d.signature,
                    d.band_keys, [s.side] AS sides, d.token_count
             FROM documents d JOIN aud_scope s
               ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
             WHERE {where}"""


class StagingWrites:
    """The staged documents of an audit (``self._con``: the transaction's connection)."""

    _staged_view = False  # aud_docs is a view over the documents (stage_documents(in_place=True))

    def stage_documents(self, scope: pa.Table, *, in_place: bool = False) -> int:
        """The documents of ``scope`` (``dataset_id``, ``shard_index`` or null for the whole
        dataset, and optionally ``side``, a label) as ``aud_docs``, one row per document with the
        list of its ``sides``; returns how many.

        ``in_place``: where no document can match two scope rows, ``aud_docs`` is a temporary
        view over the documents instead of a copy of them (no probes can then be added, see
        :meth:`stage_probes`). Copying 100,000 signatures and band keys took 160–220 ms in a fresh
        process, against 50 ms to read them once; an audit reads the lists two or three times."""
        con = self._con
        if "side" not in scope.column_names:
            scope = scope.append_column("side", columns.strings(["x"] * scope.num_rows))
        disjoint = _disjoint(scope)  # each document matches one scope row: no grouping (7× faster at 100K documents)
        if disjoint and in_place:
            register(con, "aud_scope_rows", scope)
            try:
                con.execute("CREATE OR REPLACE TEMP TABLE aud_scope AS SELECT * FROM aud_scope_rows")
            finally:
                unregister(con, "aud_scope_rows")
            con.execute(f"CREATE OR REPLACE TEMP VIEW aud_docs AS {_STAGED.format(where=in_datasets(scope))}")
            self._staged_view = True
            return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])
        register(con, "aud_scope", scope)
        try:
            if disjoint:
                con.execute(f"CREATE OR REPLACE TEMP TABLE aud_docs AS {_STAGED.format(where=in_datasets(scope))}")
                return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE aud_docs AS
                   SELECT d.doc_id, any_value(d.dataset_id) AS dataset_id, any_value(d.shard_index) AS shard_index,
                          any_value(d.row_index) AS row_index, any_value(d.key) AS key,
                          any_value(d.exact_hash) AS exact_hash, any_value(d.signature) AS signature,
                          any_value(d.band_keys) AS band_keys, list(DISTINCT s.side ORDER BY s.side) AS sides,
                          any_value(d.token_count) AS token_count
                   FROM documents d JOIN aud_scope s
                     ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
                   WHERE {in_datasets(scope)}
                   GROUP BY d.doc_id"""
            )
        finally:
            unregister(con, "aud_scope")
        return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])

    def stage_probes(self, signatures: np.ndarray) -> None:
        """Add ``signatures`` (``uint32[n, k]``, e.g. generated samples) to ``aud_docs`` as
        documents ``-1, -2, …, -n`` on the side ``q``, so that one band join pairs them with the
        staged documents and the documents with each other."""
        if self._staged_view:
            raise ProvenanceError("probes go into staged documents copied to a table: stage_documents(in_place=False)")
        con = self._con
        probes = pa.table({"doc_id": pa.array([-1 - i for i in range(len(signatures))], pa.int64()),
                           "signature": pa.array([row.tolist() for row in signatures], pa.list_(pa.uint32()))})
        register(con, "aud_probes", probes)
        try:
            con.execute(
                """INSERT INTO aud_docs (doc_id, dataset_id, shard_index, row_index, key, exact_hash, signature,
                                         band_keys, sides)
                   SELECT doc_id, NULL, NULL, NULL, NULL, NULL, signature, []::UBIGINT[], ['q'] FROM aud_probes"""
            )
        finally:
            unregister(con, "aud_probes")

    def drop_audit_tables(self) -> None:
        if self._staged_view:
            self._con.execute("DROP VIEW IF EXISTS aud_docs")
            self._con.execute("DROP TABLE IF EXISTS aud_scope")
            self._staged_view = False
        else:
            self._con.execute("DROP TABLE IF EXISTS aud_docs")
        self._con.execute("DROP TABLE IF EXISTS aud_groups")
        self._con.execute("DROP TABLE IF EXISTS aud_clusters")


def _disjoint(scope: pa.Table) -> bool:
    """Whether no document can match two rows of ``scope``: no (dataset, shard) twice (with two
    sides, say), and no dataset both whole and by shard."""
    rows = list(zip(scope.column("dataset_id").to_pylist(), scope.column("shard_index").to_pylist()))
    whole = {d for d, shard in rows if shard is None}
    return len(set(rows)) == len(rows) and not any(d in whole for d, shard in rows if shard is not None)


def in_datasets(scope: pa.Table) -> str:
    """``d.dataset_id IN ('a@1', ...)``: the scope's datasets as constants, so that the documents
    view skips the Parquet files (and the damaged ones' stand-in rows) of every other dataset
    before the join with the scope (which it cannot see through)."""
    names = sorted(set(scope.column("dataset_id").to_pylist()))
    return f"d.dataset_id IN ({', '.join(literal(n) for n in names)})" if names else "false"


def literal(value: str | list[str]) -> str:
    """A string, or a list of strings, as an SQL literal (for COPY and table functions, which
    take no parameters)."""
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"
