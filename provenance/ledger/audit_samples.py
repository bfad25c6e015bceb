"""The memorization audit's questions (:class:`SampleWrites`, mixed into
:class:`provenance.ledger.audit_sql.AuditWrites`): staged samples (negative ids) against the staged
documents, through the groups of identical signatures: which documents each sample's group is
paired with, their near-copies, and how often training saw them, summed exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from provenance import columns
from provenance.ledger._common import EXACT_UNIT, register, unregister


class SampleWrites:
    """Staged samples against the staged documents (``self._con``: the transaction's connection)."""

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

    def keep_document_pairs(self, audit_id: str, near: np.ndarray) -> None:
        """Leave the audit the pairs of the documents ``near`` only (the matched documents and their
        near-copies, :meth:`near_members`): a group of identical signatures whose first member is a
        sample (samples are not documents of the ledger) has its pairs moved to its first document,
        then the pairs of samples, and of documents that no sample reached, are removed."""
        con = self._con
        con.execute(
            """INSERT INTO audit_pairs
               WITH anchor AS (SELECT rep, min(doc_id) AS first FROM aud_groups
                               WHERE rep < 0 AND doc_id >= 0 GROUP BY rep)
               SELECT p.audit_id, least(a.first, p.doc_b), greatest(a.first, p.doc_b), p.matches, p.jaccard,
                      p.exact, least(a.first, p.doc_b)
               FROM audit_pairs p JOIN anchor a ON p.doc_a = a.rep
               WHERE p.audit_id = $1 AND p.doc_b >= 0 AND p.doc_b <> a.first""", [audit_id])
        register(con, "aud_keep", pa.Table.from_arrays([columns.from_numpy(np.asarray(near, np.int64))],
                                                       names=["doc_id"]))
        try:
            con.execute(
                """DELETE FROM audit_pairs WHERE audit_id = $1 AND (doc_a < 0
                   OR NOT (doc_a IN (SELECT doc_id FROM aud_keep) OR doc_b IN (SELECT doc_id FROM aud_keep)))""",
                [audit_id])
        finally:
            unregister(con, "aud_keep")
