"""The SQL of the audits, run inside one ledger transaction: near-duplicate pairs from an LSH band
self-join, connected components by label propagation, and the report's aggregates. Everything
stays in DuckDB (spilling to the ledger's temp folder when it must); Python sees only counts and
the rows a report shows. Mixed into :class:`provenance.ledger.writer.LedgerWriter`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_MATCHES = "len(list_filter(list_zip(x.signature, y.signature), lambda p: p[1] = p[2]))"


class AuditWrites:
    """Audit steps over the temporary table ``aud_docs`` (``self._con``: the transaction's connection)."""

    scratch = False  # an audit that stores nothing: see Ledger.transaction(scratch=True)

    def stage_documents(self, scope: pa.Table) -> int:
        """The documents of ``scope`` (``dataset_id``, ``shard_index`` or null for the whole
        dataset, and optionally ``side``, a label) into the temporary table ``aud_docs``, one row
        per document with the list of its ``sides``; returns how many."""
        con = self._con
        if "side" not in scope.column_names:
            scope = scope.append_column("side", pa.array(["x"] * scope.num_rows, pa.string()))
        con.register("aud_scope", scope)
        try:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE aud_docs AS
                   SELECT d.doc_id, any_value(d.dataset_id) AS dataset_id, any_value(d.shard_index) AS shard_index,
                          any_value(d.row_index) AS row_index, any_value(d.key) AS key,
                          any_value(d.exact_hash) AS exact_hash, any_value(d.signature) AS signature,
                          any_value(d.band_keys) AS band_keys, list(DISTINCT s.side ORDER BY s.side) AS sides
                   FROM documents d JOIN aud_scope s
                     ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
                   GROUP BY d.doc_id"""
            )
        finally:
            con.unregister("aud_scope")
        return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])

    def near_pairs(self, audit_id: str, bands: int, rows: int, min_matches: int, *, stored: bool,
                   collapse: bool = False, all_pairs: bool = False) -> None:
        """Every pair of ``aud_docs`` that shares an LSH band key and whose signatures agree in at
        least ``min_matches`` positions, into ``audit_pairs``. ``stored``: use
        the band keys stored at registration (same banding), else hash ``bands`` slices of ``rows``
        signature positions.

        ``collapse``: documents with identical signatures are grouped first (``aud_groups``: each
        document, its group's first document and the group's size); only the first of each group
        joins the bands, and the others are paired with it alone. ``m`` copies of one text then
        cost ``m − 1`` pairs instead of ``m(m − 1)/2`` in every band: boilerplate repeated
        thousands of times stays cheap. The pairs are then a spanning set of each cluster;
        ``all_pairs`` expands them into every pair (each copy with every other copy, and every
        member of two linked groups with each other, at the estimate of their first documents)."""
        con = self._con
        source = "aud_docs"
        if collapse:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE aud_groups AS
                   SELECT doc_id, min(doc_id) OVER (PARTITION BY signature) AS rep,
                          count(*) OVER (PARTITION BY signature) AS size FROM aud_docs"""
            )
            source = "(SELECT d.* FROM aud_docs d JOIN aud_groups g USING (doc_id) WHERE g.doc_id = g.rep)"
        if stored:
            keys = f"SELECT doc_id, generate_subscripts(band_keys, 1) AS band, unnest(band_keys) AS bk FROM {source}"
        else:
            keys = f"""SELECT doc_id, i AS band, hash(signature[i * {int(rows)} + 1 : (i + 1) * {int(rows)}]) AS bk
                       FROM {source}, range({int(bands)}) t(i)"""
        con.execute(f"CREATE OR REPLACE TEMP TABLE aud_bands AS {keys}")
        con.execute(
            """CREATE OR REPLACE TEMP TABLE aud_cand AS
               SELECT DISTINCT p.doc_id AS a, q.doc_id AS b
               FROM aud_bands p JOIN aud_bands q ON p.band = q.band AND p.bk = q.bk AND p.doc_id < q.doc_id"""
        )
        con.execute("DROP TABLE aud_bands")
        con.execute(
            f"""INSERT INTO audit_pairs
                SELECT $1, c.a, c.b, m, m / len(x.signature), NULL, c.a
                FROM aud_cand c JOIN aud_docs x ON x.doc_id = c.a JOIN aud_docs y ON y.doc_id = c.b,
                     LATERAL (SELECT {_MATCHES} AS m)
                WHERE m >= $2""",
            [audit_id, int(min_matches)],
        )
        if collapse and all_pairs:  # every member of two linked groups, then every two copies
            con.execute(
                """INSERT INTO audit_pairs
                   SELECT $1, least(x.doc_id, y.doc_id), greatest(x.doc_id, y.doc_id), p.matches, p.jaccard, NULL,
                          least(x.doc_id, y.doc_id)
                   FROM audit_pairs p JOIN aud_groups x ON x.rep = p.doc_a JOIN aud_groups y ON y.rep = p.doc_b
                   WHERE p.audit_id = $1 AND NOT (x.doc_id = p.doc_a AND y.doc_id = p.doc_b)""",
                [audit_id],
            )
            con.execute(
                """INSERT INTO audit_pairs
                   SELECT $1, x.doc_id, y.doc_id, len(d.signature), 1.0, NULL, x.doc_id
                   FROM aud_groups x JOIN aud_groups y ON x.rep = y.rep AND x.doc_id < y.doc_id
                   JOIN aud_docs d ON d.doc_id = x.doc_id""",
                [audit_id],
            )
        elif collapse:  # each copy with the first of its group
            con.execute(
                """INSERT INTO audit_pairs
                   SELECT $1, g.rep, g.doc_id, len(d.signature), 1.0, NULL, g.rep
                   FROM aud_groups g JOIN aud_docs d USING (doc_id) WHERE g.doc_id <> g.rep""",
                [audit_id],
            )
        con.execute("DROP TABLE aud_cand")

    def label_clusters(self, audit_id: str) -> int:
        """Connected components of the audit's pairs: each pair's ``cluster`` becomes the smallest
        doc_id of its component. Label propagation with pointer jumping, one SQL statement per
        round; returns the number of rounds."""
        con = self._con
        con.execute(
            """CREATE OR REPLACE TEMP TABLE aud_edges AS
               SELECT doc_a AS u, doc_b AS v FROM audit_pairs WHERE audit_id = $1
               UNION ALL SELECT doc_b, doc_a FROM audit_pairs WHERE audit_id = $1""",
            [audit_id],
        )
        con.execute("CREATE OR REPLACE TEMP TABLE aud_label AS SELECT u AS doc, least(u, min(v)) AS label FROM aud_edges GROUP BY u")
        rounds = 0
        while True:
            rounds += 1
            con.execute(
                """CREATE OR REPLACE TEMP TABLE aud_next AS
                   WITH hop AS (
                       SELECT l.doc, least(min(l.label), min(n.label)) AS label
                       FROM aud_label l JOIN aud_edges e ON e.u = l.doc JOIN aud_label n ON n.doc = e.v
                       GROUP BY l.doc)
                   SELECT h.doc, least(h.label, j.label) AS label FROM hop h JOIN aud_label j ON j.doc = h.label"""
            )
            changed = con.execute(
                "SELECT count(*) FROM aud_next n JOIN aud_label l USING (doc) WHERE n.label <> l.label"
            ).fetchall()[0][0]
            con.execute("CREATE OR REPLACE TEMP TABLE aud_label AS SELECT * FROM aud_next")
            if not changed:
                break
        con.execute(
            """UPDATE audit_pairs SET cluster = l.label FROM aud_label l
               WHERE audit_pairs.audit_id = $1 AND l.doc = audit_pairs.doc_a""",
            [audit_id],
        )
        for table in ("aud_edges", "aud_label", "aud_next"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        return rounds

    def set_exact(self, audit_id: str, exact: pa.Table) -> None:
        """Record exact Jaccards (``doc_a, doc_b, exact``) of verified pairs."""
        con = self._con
        con.register("aud_exact", exact)
        try:
            con.execute(
                """UPDATE audit_pairs SET exact = e.exact FROM aud_exact e
                   WHERE audit_pairs.audit_id = $1 AND audit_pairs.doc_a = e.doc_a AND audit_pairs.doc_b = e.doc_b""",
                [audit_id],
            )
        finally:
            con.unregister("aud_exact")

    def stage_probes(self, signatures: np.ndarray) -> None:
        """Add ``signatures`` (``uint32[n, k]``, e.g. generated samples) to ``aud_docs`` as
        documents ``-1, -2, …, -n`` on the side ``q``, so that one band join pairs them with the
        staged documents and the documents with each other."""
        con = self._con
        probes = pa.table({"doc_id": pa.array([-1 - i for i in range(len(signatures))], pa.int64()),
                           "signature": pa.array([row.tolist() for row in signatures], pa.list_(pa.uint32()))})
        con.register("aud_probes", probes)
        try:
            con.execute(
                """INSERT INTO aud_docs (doc_id, dataset_id, shard_index, row_index, key, exact_hash, signature,
                                         band_keys, sides)
                   SELECT doc_id, NULL, NULL, NULL, NULL, NULL, signature, []::UBIGINT[], ['q'] FROM aud_probes"""
            )
        finally:
            con.unregister("aud_probes")

    def audit_query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """A read inside the transaction (the audit's temporary tables and uncommitted pairs)."""
        return self._con.sql(sql, params=params or []).to_arrow_table()

    def audit_execute(self, sql: str, params: list[Any] | None = None) -> None:
        """A statement inside the transaction that returns nothing (a temporary table, a delete)."""
        self._con.execute(sql, params or [])

    def copy_pairs(self, audit_id: str, path: str) -> None:
        """The audit's pairs with their keys, as a Parquet file at ``path``, written batch by
        batch as the query streams them."""
        reader = self._con.sql(PAIRS_SQL, params=[audit_id]).to_arrow_reader()
        with pq.ParquetWriter(path, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)

    def pairs(self, audit_id: str) -> pa.Table:
        """The audit's pairs as :meth:`Ledger.audit_pairs` gives them, read inside the transaction
        (an audit that stores nothing has them only here)."""
        return self._con.sql(PAIRS_SQL, params=[audit_id]).to_arrow_table()

    def insert_audit(self, row: dict[str, Any]) -> None:
        if self.scratch:  # an audit that stores nothing
            return
        self._con.execute(
            "INSERT INTO audits VALUES (?, ?, ?, ?, ?, ?, ?)",
            [row["audit_id"], row["kind"], row["target"], json.dumps(row["params"], sort_keys=True),
             row["passed"], json.dumps(row["report"], default=str), row["created_at"]],
        )

    def drop_audit_tables(self) -> None:
        self._con.execute("DROP TABLE IF EXISTS aud_docs")
        self._con.execute("DROP TABLE IF EXISTS aud_groups")
        self._con.execute("DROP TABLE IF EXISTS aud_clusters")


# The pairs of an audit with both documents' keys and datasets, best first.
PAIRS_SQL = """
    SELECT da.key AS a, db.key AS b, da.dataset_id AS dataset_a, db.dataset_id AS dataset_b, p.jaccard,
           sqrt(p.jaccard * (1 - p.jaccard) / len(da.signature)) AS stderr, p.matches, p.exact, p.cluster,
           p.doc_a, p.doc_b
    FROM audit_pairs p JOIN documents da ON da.doc_id = p.doc_a JOIN documents db ON db.doc_id = p.doc_b
    WHERE p.audit_id = $1
    ORDER BY p.jaccard DESC, p.doc_a, p.doc_b"""
