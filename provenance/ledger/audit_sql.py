"""The SQL of the audits, run inside one ledger transaction: :class:`AuditWrites`, mixed into
:class:`provenance.ledger.writer.LedgerWriter`, with connected components by label propagation, the
audit's pairs read back and written out, and the stored audits (:func:`select_audits`). It mixes
in one module per part of an audit: the staged documents (:mod:`.audit_staging`), the exports for
an engine outside the database (:mod:`.audit_exports`), the reports' aggregates, the verification
and the gate's sides (:mod:`.audit_reports`), the memorization audit's samples
(:mod:`.audit_samples`), the near-duplicate pairs from an LSH band self-join
(:mod:`.audit_pairs`) and those pairs across classes of documents (:mod:`.audit_classes`).
Everything stays in DuckDB (spilling to the ledger's temp folder when it must); Python sees only
counts and the rows a report shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from provenance.ledger.audit_classes import ClassWrites
from provenance.ledger.audit_exports import ExportWrites
from provenance.ledger.audit_pairs import PairWrites
from provenance.ledger.audit_reports import ReportWrites
from provenance.ledger.audit_samples import SampleWrites
from provenance.ledger.audit_staging import StagingWrites

if TYPE_CHECKING:
    import duckdb


class AuditWrites(StagingWrites, ExportWrites, ReportWrites, SampleWrites, PairWrites, ClassWrites):
    """Audit steps over the temporary table ``aud_docs`` (``self._con``: the transaction's connection):
    the pairs (:class:`~provenance.ledger.audit_pairs.PairWrites`, across classes
    :class:`~provenance.ledger.audit_classes.ClassWrites`) and everything asked of them."""

    scratch = False  # an audit that stores nothing: see Ledger.transaction(scratch=True)

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


# The pairs of an audit with both documents' keys and datasets, best first.
PAIRS_SQL = """
    SELECT da.key AS a, db.key AS b, da.dataset_id AS dataset_a, db.dataset_id AS dataset_b, p.jaccard,
           sqrt(p.jaccard * (1 - p.jaccard) / json_extract(c.config_json, '$.num_perm')::INTEGER) AS stderr,
           p.matches, p.exact, p.cluster, p.doc_a, p.doc_b
    FROM audit_pairs p JOIN documents da ON da.doc_id = p.doc_a JOIN documents db ON db.doc_id = p.doc_b
         JOIN datasets c ON c.dataset_id = da.dataset_id  -- num_perm: the signatures' length, without reading them
    WHERE p.audit_id = $1
    ORDER BY p.jaccard DESC, p.doc_a, p.doc_b"""
