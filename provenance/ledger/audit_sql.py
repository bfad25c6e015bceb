"""The SQL of the audits, run inside one ledger transaction: the staged documents, connected
components by label propagation, the exports for an engine outside the database, the report's
aggregates and the stored audits. The near-duplicate pairs from an LSH band self-join are
:mod:`provenance.ledger.audit_pairs`, compared across classes of documents by
:mod:`provenance.ledger.audit_classes`; :class:`AuditWrites` mixes them in. Everything stays in
DuckDB (spilling to the ledger's temp folder when it must); Python sees only counts and the rows
a report shows. Mixed into :class:`provenance.ledger.writer.LedgerWriter`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from provenance import columns
from provenance.errors import ProvenanceError
from provenance.ledger._common import EXACT_UNIT, register, unregister
from provenance.ledger.audit_classes import ClassWrites
from provenance.ledger.audit_pairs import PairWrites

if TYPE_CHECKING:
    import duckdb

#: How the exports for an engine outside the database are written: a file per database thread,
#: uncompressed (signatures and band keys are random numbers; compressing them only costs time).
_PARQUET_FILES = "(FORMAT parquet, PER_THREAD_OUTPUT true, ROW_GROUP_SIZE 65536, COMPRESSION uncompressed)"
#: The staged documents of ``aud_scope`` when no document matches two of its rows (``where``:
#: :func:`_in_datasets`), as a table or as a view (:meth:`AuditWrites.stage_documents`).
_STAGED = """SELECT d.doc_id, d.dataset_id, d.shard_index, d.row_index, d.key, d.exact_hash, d.signature,
                    d.band_keys, [s.side] AS sides, d.token_count
             FROM documents d JOIN aud_scope s
               ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
             WHERE {where}"""


class AuditWrites(PairWrites, ClassWrites):
    """Audit steps over the temporary table ``aud_docs`` (``self._con``: the transaction's connection):
    the pairs (:class:`~provenance.ledger.audit_pairs.PairWrites`, across classes
    :class:`~provenance.ledger.audit_classes.ClassWrites`) and everything asked of them."""

    scratch = False  # an audit that stores nothing: see Ledger.transaction(scratch=True)
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
            con.execute(f"CREATE OR REPLACE TEMP VIEW aud_docs AS {_STAGED.format(where=_in_datasets(scope))}")
            self._staged_view = True
            return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])
        register(con, "aud_scope", scope)
        try:
            if disjoint:
                con.execute(f"CREATE OR REPLACE TEMP TABLE aud_docs AS {_STAGED.format(where=_in_datasets(scope))}")
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
                   WHERE {_in_datasets(scope)}
                   GROUP BY d.doc_id"""
            )
        finally:
            unregister(con, "aud_scope")
        return int(con.execute("SELECT count(*) FROM aud_docs").fetchall()[0][0])

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

    # -- an engine outside the database (provenance.integrations.ray_dedup) --------------------

    def export_documents(self, scope: pa.Table, folder: str, *, band_keys: bool) -> int:
        """The documents of ``scope`` (as :meth:`stage_documents` takes it) as Parquet files of
        ``doc_id, signature`` (and ``band_keys``) in ``folder``, one per database thread, for an
        engine that finds the pairs elsewhere; returns how many. Nothing is staged: a semi-join
        reads each document once however many scope rows name it."""
        con = self._con
        columns = "doc_id, signature" + (", band_keys" if band_keys else "")
        register(con, "aud_scope", scope.select(["dataset_id", "shard_index"]))
        try:
            return int(con.execute(
                f"""COPY (SELECT {columns} FROM documents d WHERE {_in_datasets(scope)} AND EXISTS (
                        SELECT 1 FROM aud_scope s WHERE d.dataset_id = s.dataset_id
                        AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)))
                    TO {_literal(folder)} {_PARQUET_FILES}"""
            ).fetchall()[0][0])
        finally:
            unregister(con, "aud_scope")

    def add_found_pairs(self, audit_id: str, pairs: list[str], groups: list[str], *, all_pairs: bool) -> None:
        """Pairs found outside the database: ``pairs`` (Parquet files of the groups' first
        documents' pairs: ``doc_a < doc_b, matches, jaccard``) and ``groups`` (``doc_id, rep,
        size``: the groups of identical signatures) become the audit's pairs, as
        :meth:`near_pairs` with ``collapse`` makes them."""
        con = self._con
        con.execute("CREATE OR REPLACE TEMP TABLE aud_groups (doc_id BIGINT, rep BIGINT, size BIGINT)")
        if groups:
            con.execute(f"INSERT INTO aud_groups SELECT doc_id, rep, size FROM read_parquet({_literal(groups)})")
        if pairs:
            con.execute(
                f"""INSERT INTO audit_pairs SELECT $1, doc_a, doc_b, matches, jaccard, NULL, doc_a
                    FROM read_parquet({_literal(pairs)})""", [audit_id])
        self._group_pairs(audit_id, all_pairs, docs="documents")

    def export_edges(self, audit_id: str, folder: str) -> int:
        """The audit's pairs as edges ``u < v`` in Parquet files in ``folder``; returns how many."""
        n = int(self._con.execute("SELECT count(*) FROM audit_pairs WHERE audit_id = $1", [audit_id]).fetchall()[0][0])
        if n:
            self._con.execute(
                f"""COPY (SELECT doc_a AS u, doc_b AS v FROM audit_pairs WHERE audit_id = {_literal(audit_id)})
                    TO {_literal(folder)} {_PARQUET_FILES}""")
        return n

    def set_clusters(self, audit_id: str, labels: list[str]) -> None:
        """Each pair's ``cluster`` from ``labels`` (Parquet files of ``doc, label``: a component's
        smallest doc_id for each of its documents but that one)."""
        con = self._con
        con.execute("UPDATE audit_pairs SET cluster = doc_a WHERE audit_id = $1", [audit_id])
        if labels:
            con.execute(
                f"""UPDATE audit_pairs SET cluster = l.label FROM read_parquet({_literal(labels)}) l
                    WHERE audit_pairs.audit_id = $1 AND l.doc = audit_pairs.doc_a""", [audit_id])

    def set_exact(self, audit_id: str, exact: pa.Table) -> None:
        """Record exact Jaccards (``doc_a, doc_b, exact``) of verified pairs."""
        con = self._con
        register(con, "aud_exact", exact)
        try:
            con.execute(
                """UPDATE audit_pairs SET exact = e.exact FROM aud_exact e
                   WHERE audit_pairs.audit_id = $1 AND audit_pairs.doc_a = e.doc_a AND audit_pairs.doc_b = e.doc_b""",
                [audit_id],
            )
        finally:
            unregister(con, "aud_exact")

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

    # -- the dedup report -----------------------------------------------------------------------

    def cluster_sizes(self, audit_id: str) -> list[dict[str, int]]:
        """Clusters by size (``size, n``), from the pairs' cluster labels; keeps the temporary
        table ``aud_clusters`` (cluster, size) for :meth:`largest_clusters`."""
        self._con.execute(
            """CREATE OR REPLACE TEMP TABLE aud_clusters AS
               SELECT cluster, count(DISTINCT doc) AS size FROM (
                   SELECT cluster, doc_a AS doc FROM audit_pairs WHERE audit_id = $1
                   UNION ALL SELECT cluster, doc_b FROM audit_pairs WHERE audit_id = $1)
               GROUP BY cluster""", [audit_id])
        return self._rows("SELECT size, count(*) AS n FROM aud_clusters GROUP BY size ORDER BY size")

    def pair_counts(self, audit_id: str) -> tuple[int, int]:
        """The audit's pairs, and those whose two documents have the same exact hash."""
        return tuple(int(x) for x in self._con.execute(
            """SELECT count(*), count(*) FILTER (WHERE a.exact_hash = b.exact_hash)
               FROM audit_pairs p JOIN documents a ON a.doc_id = p.doc_a JOIN documents b ON b.doc_id = p.doc_b
               WHERE p.audit_id = $1""", [audit_id]).fetchall()[0])

    def largest_clusters(self, audit_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The ``limit`` largest clusters: ``cluster, size, sample_keys`` (up to 5), ``datasets``."""
        return self._rows(
            """WITH top AS (SELECT cluster, size FROM aud_clusters ORDER BY size DESC, cluster LIMIT $2),
               docs AS (SELECT DISTINCT t.cluster, t.size, unnest([p.doc_a, p.doc_b]) AS doc_id
                    FROM top t JOIN audit_pairs p ON p.audit_id = $1 AND p.cluster = t.cluster),
               members AS (SELECT m.cluster, m.size, d.key, d.dataset_id, d.doc_id
                    FROM docs m JOIN documents d USING (doc_id))
               SELECT cluster, size, list(key ORDER BY doc_id)[1:5] AS sample_keys,
                      list(DISTINCT dataset_id ORDER BY dataset_id) AS datasets
               FROM members GROUP BY cluster, size ORDER BY size DESC, cluster""", [audit_id, int(limit)])

    def near_copy_counts(self, audit_id: str) -> list[dict[str, Any]]:
        """Per document with near-copies: ``key, dataset_id, near_copies``, most first. A
        document's near-copies are the other copies of its signature, and every document of each
        group its group's first document is paired with (identical signatures, identical estimates)."""
        return self._rows(
            """WITH reps AS (SELECT p.doc_a AS r, p.doc_b AS o FROM audit_pairs p
                             JOIN aud_groups ga ON ga.doc_id = p.doc_a AND ga.rep = p.doc_a
                             JOIN aud_groups gb ON gb.doc_id = p.doc_b AND gb.rep = p.doc_b
                             WHERE p.audit_id = $1),
                    links AS (SELECT r, o FROM reps UNION ALL SELECT o, r FROM reps),
                    per_rep AS (SELECT l.r, sum(g.size)::BIGINT AS linked FROM links l
                                JOIN (SELECT DISTINCT rep, size FROM aud_groups) g ON g.rep = l.o GROUP BY l.r),
                    counts AS (SELECT g.doc_id, g.size - 1 + coalesce(pr.linked, 0) AS near_copies
                               FROM aud_groups g LEFT JOIN per_rep pr ON pr.r = g.rep)
               SELECT d.key, d.dataset_id, c.near_copies FROM counts c JOIN documents d USING (doc_id)
               WHERE c.near_copies > 0 ORDER BY c.near_copies DESC, d.key""", [audit_id])

    def similarity_histogram(self, audit_id: str, bins: int = 20) -> list[dict[str, Any]]:
        """Pairs counted by estimated Jaccard in ``bins`` bins over [0, 1]: ``lo, n``."""
        return self._rows(
            """SELECT floor(jaccard * $2) / $2 AS lo, count(*) AS n FROM audit_pairs WHERE audit_id = $1
               GROUP BY lo ORDER BY lo""", [audit_id, int(bins)])

    # -- verification ----------------------------------------------------------------------------

    def pairs_near(self, audit_id: str, threshold: float, margin: float) -> list[dict[str, Any]]:
        """Pairs whose estimate is within ``margin`` of ``threshold``, with where each document is:
        ``doc_a, doc_b, da, sa, ra, db, sb, rb`` (dataset, shard, row)."""
        return self._rows(
            """SELECT p.doc_a, p.doc_b, a.dataset_id AS da, a.shard_index AS sa, a.row_index AS ra,
                      b.dataset_id AS db, b.shard_index AS sb, b.row_index AS rb
               FROM audit_pairs p JOIN documents a ON a.doc_id = p.doc_a JOIN documents b ON b.doc_id = p.doc_b
               WHERE p.audit_id = $1 AND abs(p.jaccard - $2) <= $3""", [audit_id, float(threshold), float(margin)])

    def drop_pairs_below(self, audit_id: str, exact: float) -> None:
        """Remove the pairs whose verified exact Jaccard is below ``exact``."""
        self._con.execute("DELETE FROM audit_pairs WHERE audit_id = $1 AND exact < $2", [audit_id, float(exact)])

    def drop_wordless_pairs(self, audit_id: str, scope: pa.Table) -> int:
        """Remove the audit's pairs of documents of ``scope`` that have no words (``""``,
        ``"..."``: every such text has one signature and one exact hash, so they all pair with each
        other, though none copies another) and their groups of identical signatures; returns how
        many such documents ``scope`` holds."""
        con = self._con
        register(con, "aud_wscope", scope.select(["dataset_id", "shard_index"]))
        try:
            con.execute(f"""CREATE OR REPLACE TEMP TABLE aud_wordless AS
                            SELECT DISTINCT d.doc_id FROM documents d JOIN aud_wscope s
                              ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
                            WHERE {_in_datasets(scope)} AND d.token_count = 0""")
        finally:
            unregister(con, "aud_wscope")
        n = int(con.execute("SELECT count(*) FROM aud_wordless").fetchall()[0][0])
        if n:
            con.execute("""DELETE FROM audit_pairs WHERE audit_id = $1
                           AND (doc_a IN (SELECT doc_id FROM aud_wordless) OR doc_b IN (SELECT doc_id FROM aud_wordless))""",
                        [audit_id])
            con.execute("DELETE FROM aud_groups WHERE doc_id IN (SELECT doc_id FROM aud_wordless)")  # near-copy counts
        con.execute("DROP TABLE aud_wordless")
        return n

    # -- the pre-merge gate: sides of the staged documents --------------------------------------

    def side_size(self, labels: list[str]) -> int:
        """Staged documents on any of the sides ``labels``."""
        return int(self._con.execute(f"SELECT count(*) FROM ({_side('$1')})", [labels]).fetchall()[0][0])

    def side_overlap(self, audit_id: str, a: list[str], b: list[str]) -> list[dict[str, Any]]:
        """Documents of sides ``a`` with an exact (same hash) or else near (an audit pair) match on
        sides ``b``: ``kind`` (exact, near), ``dataset_id``, ``other`` (a dataset of ``b`` it
        matches), ``key``; near matches are counted through the groups of identical signatures.
        Documents with no words match nothing (their texts are all equal, and say nothing)."""
        return self._rows(
            f"""WITH a AS ({_side('$2')} AND token_count > 0), b AS ({_side('$3')} AND token_count > 0),
                bh AS (SELECT exact_hash, min(dataset_id) AS other FROM b GROUP BY exact_hash),
                ex AS (SELECT a.doc_id, a.dataset_id, bh.other FROM a JOIN bh USING (exact_hash)),
                reps AS (SELECT doc_id FROM aud_groups WHERE doc_id = rep),
                rel AS (SELECT p.doc_a AS r, p.doc_b AS o FROM audit_pairs p
                        WHERE p.audit_id = $1 AND p.doc_b IN (SELECT doc_id FROM reps)
                        UNION ALL SELECT p.doc_b, p.doc_a FROM audit_pairs p
                        WHERE p.audit_id = $1 AND p.doc_b IN (SELECT doc_id FROM reps)
                        UNION ALL SELECT doc_id, doc_id FROM reps),
                ga AS (SELECT a.doc_id, a.dataset_id, g.rep FROM a JOIN aud_groups g USING (doc_id)),
                gbr AS (SELECT g.rep, count(*) AS n, min(b.doc_id) AS any_doc, min(b.dataset_id) AS other
                        FROM b JOIN aud_groups g USING (doc_id) GROUP BY g.rep),
                nr AS (SELECT ga.doc_id, any_value(ga.dataset_id) AS dataset_id, min(gbr.other) AS other
                       FROM ga JOIN rel ON rel.r = ga.rep JOIN gbr ON gbr.rep = rel.o
                       WHERE (gbr.n > 1 OR gbr.any_doc <> ga.doc_id) AND ga.doc_id NOT IN (SELECT doc_id FROM ex)
                       GROUP BY ga.doc_id),
                hits AS (SELECT 'exact' AS kind, * FROM ex UNION ALL SELECT 'near', * FROM nr)
                SELECT h.kind, h.dataset_id, h.other, d.key FROM hits h JOIN aud_docs d USING (doc_id)
                ORDER BY h.dataset_id, d.key""", [audit_id, a, b])

    def staged_locations(self, *, train_sides: list[str] | None = None, documents_only: bool = False
                         ) -> list[dict[str, Any]]:
        """Where each staged document is (``doc_id, dataset_id, shard_index, row_index, key``);
        with ``train_sides``, also ``is_eval`` (on side ``e``) and ``is_train`` (on any of them);
        ``documents_only`` leaves out staged samples (negative ids)."""
        sides = (", list_contains(sides, 'e') AS is_eval, list_has_any(sides, $1::VARCHAR[]) AS is_train"
                 if train_sides is not None else "")
        where = " WHERE doc_id >= 0" if documents_only else ""
        return self._rows(f"SELECT doc_id, dataset_id, shard_index, row_index, key{sides} FROM aud_docs{where}",
                          [train_sides] if train_sides is not None else [])

    # -- memorization: staged samples against the staged documents ----------------------------

    def sample_groups(self) -> dict[int, int]:
        """Each staged sample (a negative id) -> the first member of its group of identical signatures."""
        return {doc: rep for doc, rep in self._con.execute(
            "SELECT doc_id, rep FROM aud_groups WHERE doc_id < 0").fetchall()}

    def group_pairs(self, audit_id: str) -> list[tuple[int, int, float]]:
        """The audit's pairs between groups' first members: ``(doc_a, doc_b, jaccard)``."""
        return [tuple(r) for r in self._con.execute(
            """SELECT doc_a, doc_b, jaccard FROM audit_pairs WHERE audit_id = $1
               AND doc_b IN (SELECT doc_id FROM aud_groups WHERE doc_id = rep)""", [audit_id]).fetchall()]

    def near_members(self, audit_id: str, doc_ids: list[int]) -> np.ndarray:
        """Stage, for the group of each of the staged documents ``doc_ids``, its near-copies among
        the staged documents (not samples) with itself: the members of the group and of every
        group it is paired with, once each, as ``aud_near`` (``rep``: the group's first member,
        ``doc_id``); return their ids, sorted. A document's near-copies are its group's members
        but itself, and not a row per document and copy (14.5M rows at 20,000 variants)."""
        con = self._con
        register(con, "aud_asked", pa.Table.from_arrays([columns.from_numpy(np.asarray(doc_ids, np.int64))],
                                                        names=["doc_id"]))
        try:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE aud_near AS
                   WITH m AS (SELECT DISTINCT rep FROM aud_groups SEMI JOIN aud_asked USING (doc_id)),
                        reps AS (SELECT doc_id FROM aud_groups WHERE doc_id = rep),
                        rel AS (SELECT doc_a AS r, doc_b AS o FROM audit_pairs
                                WHERE audit_id = $1 AND doc_b IN (SELECT doc_id FROM reps)
                                UNION ALL SELECT doc_b, doc_a FROM audit_pairs
                                WHERE audit_id = $1 AND doc_b IN (SELECT doc_id FROM reps)
                                UNION ALL SELECT doc_id, doc_id FROM reps)
                   SELECT DISTINCT m.rep, g.doc_id
                   FROM m JOIN rel ON rel.r = m.rep JOIN aud_groups g ON g.rep = rel.o
                   WHERE g.doc_id >= 0""", [audit_id])
        finally:
            unregister(con, "aud_asked")
        return columns.to_numpy(con.sql("SELECT DISTINCT doc_id FROM aud_near ORDER BY doc_id").to_arrow_table()
                                .column("doc_id"))

    def near_sums(self, seen: pa.Table) -> dict[int, tuple[int, float]]:
        """Per group of :meth:`near_members`: how many documents it and its near-copies are, and
        how often training saw them (``seen``: ``doc_id, seen``; a document not in it, never),
        summed exactly as integers in units of 2⁻⁶⁰ and rounded to a double once (as the
        lineage's sums: the same in any row order). Drops ``aud_near``."""
        con = self._con
        register(con, "aud_seen", seen.select(["doc_id", "seen"]))
        try:
            rows = con.execute(
                f"""SELECT n.rep, count(*), sum((coalesce(s.seen, 0) * {EXACT_UNIT})::HUGEINT)
                    FROM aud_near n LEFT JOIN aud_seen s USING (doc_id) GROUP BY n.rep""").fetchall()
        finally:
            unregister(con, "aud_seen")
        con.execute("DROP TABLE aud_near")
        return {int(rep): (int(n), math.ldexp(float(int(total)), -60)) for rep, n, total in rows}

    def group_members(self, reps: list[int]) -> list[tuple[int, int]]:
        """The staged documents (not samples) of the groups whose first members are ``reps``:
        ``(doc_id, rep)``."""
        return [tuple(r) for r in self._con.execute(
            "SELECT doc_id, rep FROM aud_groups WHERE list_contains($1, rep) AND doc_id >= 0", [reps]).fetchall()]

    def groups_of(self, doc_ids: list[int]) -> dict[int, int]:
        """Each of ``doc_ids`` -> the first member of its group."""
        return {doc: rep for doc, rep in self._con.execute(
            "SELECT doc_id, rep FROM aud_groups WHERE list_contains($1, doc_id)", [doc_ids]).fetchall()}

    def staged_documents(self, doc_ids: list[int]) -> list[dict[str, Any]]:
        """``doc_id, dataset_id, key, signature`` of the staged documents ``doc_ids``."""
        return self._rows("SELECT doc_id, dataset_id, key, signature FROM aud_docs WHERE list_contains($1, doc_id)",
                          [doc_ids])

    def drop_sample_pairs(self, audit_id: str) -> None:
        """Remove the pairs that involve staged samples (they are not documents of the ledger)."""
        self._con.execute("DELETE FROM audit_pairs WHERE audit_id = $1 AND doc_a < 0", [audit_id])

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self._con.sql(sql, params=params or []).to_arrow_table().to_pylist()

    def copy_pairs(self, audit_id: str, path: str, *, csv: bool = False) -> None:
        """The audit's pairs with their keys, as a Parquet file at ``path`` (``csv``: a CSV file
        with a header), written batch by batch as the query streams them."""
        import pyarrow.csv as pcsv

        reader = self._con.sql(PAIRS_SQL, params=[audit_id]).to_arrow_reader()
        with (pcsv.CSVWriter(path, reader.schema) if csv else pq.ParquetWriter(path, reader.schema)) as writer:
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
            """INSERT INTO audits (audit_id, kind, target, params_json, passed, report_json, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [row["audit_id"], row["kind"], row["target"], json.dumps(row["params"], sort_keys=True),
             row["passed"], json.dumps(row["report"], default=str), row["created_at"]],
        )

    def select_audits(self, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        """:func:`select_audits` inside the transaction."""
        return select_audits(self._con, ids)

    def has_audit(self, audit_id: str) -> bool:
        return bool(self._con.execute("SELECT count(*) FROM audits WHERE audit_id = ?", [audit_id]).fetchall()[0][0])

    def delete_audit(self, audit_id: str, *, pairs_only: bool, when: datetime) -> None:
        """Remove the audit's stored pairs, and its record unless ``pairs_only`` (which marks the
        record as having had its pairs deleted at ``when``)."""
        self._con.execute("DELETE FROM audit_pairs WHERE audit_id = ?", [audit_id]).fetchall()
        if pairs_only:
            self._con.execute("UPDATE audits SET pairs_deleted_at = coalesce(pairs_deleted_at, ?) WHERE audit_id = ?",
                              [when, audit_id]).fetchall()
        else:
            self._con.execute("DELETE FROM audits WHERE audit_id = ?", [audit_id]).fetchall()

    def drop_audit_tables(self) -> None:
        if self._staged_view:
            self._con.execute("DROP VIEW IF EXISTS aud_docs")
            self._con.execute("DROP TABLE IF EXISTS aud_scope")
            self._staged_view = False
        else:
            self._con.execute("DROP TABLE IF EXISTS aud_docs")
        self._con.execute("DROP TABLE IF EXISTS aud_groups")
        self._con.execute("DROP TABLE IF EXISTS aud_clusters")


def select_audits(con: duckdb.DuckDBPyConnection, ids: Sequence[str] | None) -> list[dict[str, Any]]:
    """The stored audits among ``ids`` (all when None), newest first as ``prov audit list`` shows
    them: ``audit_id, kind, target, created_at, pairs_deleted_at``, the ``pairs`` they store and
    the merge versions whose receipts cite them (``cited_by``)."""
    return con.sql(
        """SELECT a.audit_id, a.kind, a.target, a.created_at, a.pairs_deleted_at, coalesce(p.n, 0) AS pairs,
                  coalesce(m.versions, []) AS cited_by
           FROM audits a
           LEFT JOIN (SELECT audit_id, count(*) AS n FROM audit_pairs GROUP BY ALL) p USING (audit_id)
           LEFT JOIN (SELECT audit_id, list(version_id ORDER BY version_id) AS versions FROM merge_receipts
                      WHERE audit_id IS NOT NULL GROUP BY ALL) m USING (audit_id)
           WHERE $1::VARCHAR[] IS NULL OR list_contains($1::VARCHAR[], a.audit_id)
           ORDER BY a.created_at DESC, a.audit_id""",
        params=[None if ids is None else list(ids)],
    ).to_arrow_table().to_pylist()


def _side(param: str) -> str:
    """The staged documents on any of the sides bound to ``param``."""
    return f"SELECT doc_id, exact_hash, dataset_id FROM aud_docs WHERE list_has_any(sides, {param}::VARCHAR[])"


# The pairs of an audit with both documents' keys and datasets, best first.
PAIRS_SQL = """
    SELECT da.key AS a, db.key AS b, da.dataset_id AS dataset_a, db.dataset_id AS dataset_b, p.jaccard,
           sqrt(p.jaccard * (1 - p.jaccard) / json_extract(c.config_json, '$.num_perm')::INTEGER) AS stderr,
           p.matches, p.exact, p.cluster, p.doc_a, p.doc_b
    FROM audit_pairs p JOIN documents da ON da.doc_id = p.doc_a JOIN documents db ON db.doc_id = p.doc_b
         JOIN datasets c ON c.dataset_id = da.dataset_id  -- num_perm: the signatures' length, without reading them
    WHERE p.audit_id = $1
    ORDER BY p.jaccard DESC, p.doc_a, p.doc_b"""


def _disjoint(scope: pa.Table) -> bool:
    """Whether no document can match two rows of ``scope``: no (dataset, shard) twice (with two
    sides, say), and no dataset both whole and by shard."""
    rows = list(zip(scope.column("dataset_id").to_pylist(), scope.column("shard_index").to_pylist()))
    whole = {d for d, shard in rows if shard is None}
    return len(set(rows)) == len(rows) and not any(d in whole for d, shard in rows if shard is not None)


def _in_datasets(scope: pa.Table) -> str:
    """``d.dataset_id IN ('a@1', ...)``: the scope's datasets as constants, so that the documents
    view skips the Parquet files (and the damaged ones' stand-in rows) of every other dataset
    before the join with the scope (which it cannot see through)."""
    names = sorted(set(scope.column("dataset_id").to_pylist()))
    return f"d.dataset_id IN ({', '.join(_literal(n) for n in names)})" if names else "false"


def _literal(value: str | list[str]) -> str:
    """A string, or a list of strings, as an SQL literal (for COPY and table functions, which
    take no parameters)."""
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return "'" + str(value).replace("'", "''") + "'"
