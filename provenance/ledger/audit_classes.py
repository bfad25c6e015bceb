"""Near-duplicate pairs compared only across classes of documents, inside one ledger
transaction: the pre-merge gate's sides (does a document have a near copy on another side, and in
which datasets) and the memorization audit's samples (which documents does a sample nearly copy).
A large near-duplicate cluster within one class then costs its band buckets' counts, not its
pairs; a wide class is reached through a window of its documents, then the documents a window
left open are compared with all of it, so that which classes each document matches is what
comparing every pair gives. Mixed, with :class:`provenance.ledger.audit_pairs.PairWrites`, into
:class:`provenance.ledger.audit_sql.AuditWrites`.
"""

from __future__ import annotations

import numpy as np

from provenance import columns
from provenance.errors import ProvenanceError
from provenance.ledger import audit_pairs

#: The classes :meth:`provenance.ledger.audit_pairs.PairWrites.near_pairs` can compare across,
#: each two SQL expressions over a row of ``aud_docs``: its labels (a list; NULL: no class,
#: compared with every other document) and its sides (a list; NULL where the classes have none). A
#: group of identical signatures has the union of its documents' labels as its class (none if one
#: has none), and its side if all its labels are of one side. The pre-merge gate's labels are ``side:dataset``:
#: two groups of one class, or of classes of one and the same side, say nothing to each other
#: (each group already holds on every other side what the other could show it, in the datasets
#: it would show). The memorization audit's samples (negative ids) have no class, the
#: documents one.
CLASSES = {"sides": ("list_transform(sides, lambda s: s || ':' || dataset_id)", "sides"),
           "samples": ("CASE WHEN doc_id >= 0 THEN ['d'] END", "NULL::VARCHAR[]")}


class ClassWrites:
    """The candidates of classes that can tell each other something, and the documents a window
    left open (``self._con``: the transaction's connection). The passes and the comparison are
    :class:`provenance.ledger.audit_pairs.PairWrites`' methods, called on ``self``."""

    def _classes(self, name: str, *, collapse: bool) -> tuple[str, str]:
        """The labels and sides of the classes ``name`` (:data:`CLASSES`), compared across groups
        of identical signatures (``collapse``)."""
        if not collapse or name not in CLASSES:
            raise ProvenanceError(f"classes {name!r}: one of {', '.join(CLASSES)}, over groups of identical "
                                  f"signatures (collapse)")
        return CLASSES[name]

    def _classed_source(self, labels: str, sides: str) -> str:
        """The first documents of the groups of identical signatures (``aud_groups``) with their
        class ``cls`` and its ``one`` side, as a subquery for
        :meth:`provenance.ledger.audit_pairs.PairWrites._band`; leaves ``aud_group_classes``."""
        # a group's class: the union of its documents' labels; a lone document's read in place.
        # (A text with no words has the signature of every such text, so a group is all of them
        # or none: the gate, which leaves them out, loses nothing to classes that mix them.)
        con = self._con
        con.execute(f"""CREATE OR REPLACE TEMP TABLE aud_group_classes AS
                        SELECT g.rep, CASE WHEN count(d.c) = count(*) THEN {_class_name("flatten(list(d.c))")} END AS c,
                               {_one_side("flatten(list(d.s))")} AS one
                        FROM aud_groups g JOIN (SELECT doc_id, {labels} AS c, {sides} AS s FROM aud_docs) d
                          USING (doc_id)
                        WHERE g.size > 1 GROUP BY g.rep""")
        return f"""(SELECT d.*, CASE WHEN g.size > 1 THEN m.c WHEN ({labels}) IS NOT NULL
                                     THEN {_class_name(labels)} END AS cls,
                           CASE WHEN g.size > 1 THEN m.one ELSE {_one_side(sides)} END AS one
                    FROM aud_docs d JOIN aud_groups g USING (doc_id) LEFT JOIN aud_group_classes m ON m.rep = g.rep
                    WHERE g.doc_id = g.rep)"""

    def _classed_candidates(self, window: int | None) -> int:
        """:meth:`~provenance.ledger.audit_pairs.PairWrites._candidates` of ``aud_bands`` with
        classes (:meth:`~provenance.ledger.audit_pairs.PairWrites.near_pairs`): the pairs of a
        document of no class with every other document of its bucket, and of each class with
        each other class it is compared with: with all of it, or, where it has more than ``2 ×
        window`` documents in the bucket, with ``window`` of them from a place of the shuffled
        order that the document picks. Buckets without such a pair are left out first. Leaves
        ``aud_kept`` (the documents of the buckets kept, ranked in the shuffled order where their
        class is windowed) and ``aud_dir`` (each class of a bucket, each class it is compared
        with, and their counts) for :meth:`_resolve_open`; returns the bucket classes windowed."""
        con = self._con
        wide = 2 * int(window) if window else 2**62
        # the classes numbered (joins on their names took twice as long)
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_numbered AS
                       WITH c AS (SELECT cls, any_value(one) AS one, row_number() OVER (ORDER BY cls) AS cid
                                  FROM aud_bands WHERE cls IS NOT NULL GROUP BY cls)
                       SELECT b.doc_id, c.cid AS cls, c.one, b.band, b.bk FROM aud_bands b LEFT JOIN c USING (cls)""")
        con.execute("DROP TABLE aud_bands")
        con.execute("ALTER TABLE aud_numbered RENAME TO aud_bands")
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_bc AS
                       SELECT band, bk, cls, any_value(one) AS one, count(*) AS n
                       FROM aud_bands GROUP BY band, bk, cls""")
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_dir AS
                       SELECT x.band, x.bk, x.cls AS c1, y.cls AS c2, x.n AS n1, y.n AS n2
                       FROM aud_bc x JOIN aud_bc y ON x.band = y.band AND x.bk = y.bk AND x.cls <> y.cls
                       WHERE NOT coalesce(x.one = y.one, false)""")
        # each pair counted once: a windowed class through the window, two classes compared whole
        # from the first's side (from each side where one of them is windowed)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE aud_buckets AS
                        WITH u AS (SELECT band, bk, coalesce(sum(n) FILTER (WHERE cls IS NULL), 0)::HUGEINT AS m0,
                                          sum(n)::HUGEINT AS m
                                   FROM aud_bc GROUP BY band, bk),
                             d AS (SELECT band, bk, sum(CASE WHEN n2 > {wide} THEN n1::HUGEINT * {int(window or 0)}
                                                             WHEN n1 > {wide} OR c1 < c2 THEN n1::HUGEINT * n2 ELSE 0 END) AS r
                                   FROM aud_dir GROUP BY band, bk),
                             p AS (SELECT band, bk, {audit_pairs.pairs_with_none("m0", "m")} + coalesce(d.r, 0) AS pairs
                                   FROM u LEFT JOIN d USING (band, bk))
                        SELECT band, bk, pairs FROM p WHERE pairs > 0""")
        rows = int(con.execute("SELECT coalesce(sum(pairs), 0) FROM aud_buckets").fetchall()[0][0])
        windowed = int(con.execute(f"SELECT count(*) FROM aud_bc WHERE cls IS NOT NULL AND n > {wide}").fetchall()[0][0])
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_kept AS
                       SELECT doc_id, cls, band, bk, NULL::BIGINT AS r FROM aud_bands SEMI JOIN aud_buckets USING (band, bk)""")
        if windowed:  # ranked in the shuffled order where the class is windowed
            con.execute(f"""UPDATE aud_kept SET r = w.r FROM (
                                SELECT k.doc_id, k.band, row_number() OVER (PARTITION BY k.band, k.bk, k.cls
                                                                            ORDER BY {audit_pairs.ORDER_SQL}, k.doc_id) - 1 AS r
                                FROM aud_kept k SEMI JOIN aud_bc c
                                  ON c.band = k.band AND c.bk = k.bk AND c.cls = k.cls AND c.n > {wide}) w
                            WHERE aud_kept.doc_id = w.doc_id AND aud_kept.band = w.band""")
        con.execute("DROP TABLE aud_bands")
        # a pair with a document of no class is formed from that document's side alone (the first
        # of two such), so its pass is chosen before the join; a pair of two classes may come from
        # either side (a window each way), so its pass is chosen by its first document after it
        self._distinct_in_passes(rows, lambda part: f"""
            SELECT least(p.doc_id, q.doc_id) AS a, greatest(p.doc_id, q.doc_id) AS b
            FROM (SELECT * FROM aud_kept WHERE cls IS NULL AND {part("doc_id")}) p JOIN aud_kept q
              ON p.band = q.band AND p.bk = q.bk AND (q.cls IS NOT NULL OR p.doc_id < q.doc_id)
            UNION ALL
            SELECT * FROM (
                SELECT least(p.doc_id, q.doc_id) AS a, greatest(p.doc_id, q.doc_id) AS b
                FROM aud_kept p JOIN aud_dir d ON d.band = p.band AND d.bk = p.bk AND d.c1 = p.cls
                  JOIN aud_kept q ON q.band = p.band AND q.bk = p.bk AND q.cls = d.c2
                WHERE d.n2 <= {wide} AND (d.n1 > {wide} OR d.c1 < d.c2)
                UNION ALL
                SELECT least(p.doc_id, q.doc_id), greatest(p.doc_id, q.doc_id)
                FROM (SELECT p.doc_id, p.band, p.bk, d.c2, ((hash(p.doc_id) % d.n2::UBIGINT)::BIGINT + t.i) % d.n2 AS r
                      FROM aud_kept p JOIN aud_dir d ON d.band = p.band AND d.bk = p.bk AND d.c1 = p.cls,
                           range({int(window or 0)}) t(i)
                      WHERE d.n2 > {wide}) p
                  JOIN aud_kept q ON q.band = p.band AND q.bk = p.bk AND q.cls = p.c2 AND q.r = p.r)
            WHERE {part("a")}""")
        con.execute("DROP TABLE aud_bc")
        con.execute("DROP TABLE aud_buckets")
        return windowed

    def _resolve_open(self, audit_id: str, min_matches: int) -> int:
        """After :meth:`_classed_candidates` and :meth:`~provenance.ledger.audit_pairs.PairWrites._compare`: each
        document that a window paired with some of a class and that matches none of that class
        yet is compared with every document of it in the buckets so windowed (the pairs not
        compared already), so that which classes each document matches is what comparing every
        pair gives. Then the tables of :meth:`_classed_candidates` are dropped. Returns the
        candidates so added."""
        con = self._con
        added = 0
        windowed = con.execute("SELECT count(*) FROM aud_kept WHERE r IS NOT NULL").fetchall()[0][0]
        if windowed:
            con.execute("""CREATE OR REPLACE TEMP TABLE aud_hit AS
                           WITH c AS (SELECT DISTINCT doc_id, cls FROM aud_kept WHERE cls IS NOT NULL),
                                p AS (SELECT doc_a, doc_b FROM audit_pairs WHERE audit_id = $1)
                           SELECT p.doc_a AS x, c.cls FROM p JOIN c ON c.doc_id = p.doc_b
                           UNION SELECT p.doc_b, c.cls FROM p JOIN c ON c.doc_id = p.doc_a""", [audit_id])
            con.execute("""CREATE OR REPLACE TEMP TABLE aud_open AS
                           SELECT p.doc_id, p.cls AS c1, p.band, p.bk, d.c2, d.n2
                           FROM aud_kept p JOIN aud_dir d ON d.band = p.band AND d.bk = p.bk AND d.c1 = p.cls
                           SEMI JOIN (SELECT DISTINCT band, bk, cls FROM aud_kept WHERE r IS NOT NULL) w
                             ON w.band = d.band AND w.bk = d.bk AND w.cls = d.c2
                           ANTI JOIN aud_hit h ON h.x = p.doc_id AND h.cls = d.c2""")
            rows = int(con.execute("SELECT coalesce(sum(n2), 0) FROM aud_open").fetchall()[0][0])
            con.execute("CREATE OR REPLACE TEMP TABLE aud_open_classes AS SELECT DISTINCT doc_id, c2 FROM aud_open")
            compiled = self._open_compiled(audit_id, min_matches) if rows >= audit_pairs.COMPILED_FROM else None
            if compiled is not None:
                added = compiled
            else:
                added = self._open_sql(audit_id, min_matches, rows)
        for table in ("aud_open", "aud_open_classes", "aud_hit", "aud_kept", "aud_dir"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        return added

    def _open_sql(self, audit_id: str, min_matches: int, rows: int) -> int:
        """:meth:`_resolve_open`'s pairs in SQL: ``rows`` is the count of rows the join forms.
        Returns the candidates compared."""
        con = self._con
        con.execute("ALTER TABLE aud_cand RENAME TO aud_done")
        # a pair is formed by one of its documents in every band (so its pass is chosen before
        # the join): the one open to the other's class, the first if both are (a pair of a
        # bucket where either class is whole was compared already)
        self._distinct_in_passes(rows, lambda part: f"""
            SELECT * FROM (
                SELECT least(o.doc_id, q.doc_id) AS a, greatest(o.doc_id, q.doc_id) AS b
                FROM (SELECT * FROM aud_open WHERE {part("doc_id")}) o
                  JOIN aud_kept q ON q.band = o.band AND q.bk = o.bk AND q.cls = o.c2
                  LEFT JOIN aud_open_classes s ON s.doc_id = q.doc_id AND s.c2 = o.c1
                WHERE s.doc_id IS NULL OR o.doc_id < q.doc_id)
            ANTI JOIN aud_done USING (a, b)""")  # the pairs compared already left out in each pass
        added = int(con.execute("SELECT count(*) FROM aud_cand").fetchall()[0][0])
        self._compare(audit_id, min_matches)
        con.execute("DROP TABLE aud_cand")
        con.execute("ALTER TABLE aud_done RENAME TO aud_cand")
        return added

    def _open_compiled(self, audit_id: str, min_matches: int) -> int | None:
        """:meth:`_resolve_open`'s pairs found and compared in compiled code
        (:meth:`~provenance.ledger.audit_pairs.PairWrites._walk_and_compare`): each open document
        (``aud_open``) meets every document of each class it looks for in those buckets once,
        where the SQL join forms a row per band they share (75M rows for 31M pairs, 8,000
        variants a side in the same buckets) and makes them distinct in passes. Two documents
        open to each other's class meet once, from the smaller id, or not at all where the first
        round compared them already (a bucket they share holds one of the two classes whole), as
        in the SQL round. The pairs compared already are compared again (no anti join): none of
        them matched, or neither document would be open to the other's class, so nothing is found
        twice. Returns the candidates, or None, with nothing done, where the signatures would pass
        :data:`provenance.ledger.audit_pairs.SIGNATURE_BYTES`."""
        con = self._con
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_sub AS
                       SELECT band, bk, c2 AS cls, row_number() OVER (ORDER BY band, bk, c2) - 1 AS i
                       FROM (SELECT DISTINCT band, bk, c2 FROM aud_open)""")
        read = self._signatures_within("""SELECT k.doc_id FROM aud_kept k SEMI JOIN aud_sub s USING (band, bk, cls)
                                          UNION SELECT doc_id FROM aud_open""")
        if read is None or not len(read[0]):
            con.execute("DROP TABLE aud_sub")
            return None if read is None else 0
        doc_ids, matrix = read
        kept = con.sql("""SELECT s.i AS bucket, k.doc_id FROM aud_kept k JOIN aud_sub s USING (band, bk, cls)
                          ORDER BY bucket""").to_arrow_table()
        focus = con.sql("""SELECT o.doc_id, o.c1, s.i AS bucket FROM aud_open o
                           JOIN aud_sub s ON s.band = o.band AND s.bk = o.bk AND s.cls = o.c2""").to_arrow_table()
        looks = con.sql("SELECT doc_id, c2 FROM aud_open_classes ORDER BY doc_id").to_arrow_table()
        con.execute("DROP TABLE aud_sub")
        f_row = np.searchsorted(doc_ids, columns.to_numpy(focus.column("doc_id")))
        classes = np.full(len(doc_ids), -1, np.int64)
        classes[f_row] = columns.to_numpy(focus.column("c1"))
        open_starts = np.concatenate([[0], np.cumsum(np.bincount(np.searchsorted(doc_ids, columns.to_numpy(
            looks.column("doc_id"))), minlength=len(doc_ids)))])
        return self._walk_and_compare(audit_id, min_matches, doc_ids, matrix,
                                      columns.to_numpy(kept.column("bucket")).astype(np.int64),
                                      np.searchsorted(doc_ids, columns.to_numpy(kept.column("doc_id"))),
                                      f_row, columns.to_numpy(focus.column("bucket")).astype(np.int64), classes,
                                      open_starts, columns.to_numpy(looks.column("c2")))


def _class_name(labels: str) -> str:
    """A class's name: the distinct ``labels`` (a SQL list) sorted, as one string."""
    return f"array_to_string(list_sort(list_distinct({labels})), chr(31))"


def _one_side(sides: str) -> str:
    """The one side of ``sides`` (a SQL list), or NULL when it has several or none."""
    return f"CASE WHEN len(list_distinct({sides})) = 1 THEN list_distinct({sides})[1] END"
