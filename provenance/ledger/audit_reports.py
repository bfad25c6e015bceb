"""What the dedup report and the pre-merge gate ask of an audit's pairs (:class:`ReportWrites`,
mixed into :class:`provenance.ledger.audit_sql.AuditWrites`): clusters by size, the largest
clusters, near-copy counts and the similarity histogram; the verification of pairs near the
threshold by exact Jaccard, and the pairs of documents with no words dropped; the gate's sides of
the staged documents, their overlap, and where each staged document is."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from provenance.ledger._common import register, unregister
from provenance.ledger.audit_staging import in_datasets


class ReportWrites:
    """The reports' queries of the audit's pairs and staged documents (``self._con``: the
    transaction's connection)."""

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
                            WHERE {in_datasets(scope)} AND d.token_count = 0""")
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


def _side(param: str) -> str:
    """The staged documents on any of the sides bound to ``param``."""
    return f"SELECT doc_id, exact_hash, dataset_id FROM aud_docs WHERE list_has_any(sides, {param}::VARCHAR[])"
