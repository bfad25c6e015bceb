"""The SQL of the audits, run inside one ledger transaction: near-duplicate pairs from an LSH band
self-join, connected components by label propagation, and the report's aggregates. Everything
stays in DuckDB (spilling to the ledger's temp folder when it must); Python sees only counts and
the rows a report shows. Mixed into :class:`provenance.ledger.writer.LedgerWriter`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from provenance import columns
from provenance.errors import ProvenanceError
from provenance.ledger._common import register, unregister

if TYPE_CHECKING:
    import duckdb

#: How the exports for an engine outside the database are written: a file per database thread,
#: uncompressed (signatures and band keys are random numbers; compressing them only costs time).
_PARQUET_FILES = "(FORMAT parquet, PER_THREAD_OUTPUT true, ROW_GROUP_SIZE 65536, COMPRESSION uncompressed)"
_MATCHES = "len(list_filter(list_zip(x.signature, y.signature), lambda p: p[1] = p[2]))"

#: The staged documents of ``aud_scope`` when no document matches two of its rows (``where``:
#: :func:`_in_datasets`), as a table or as a view (:meth:`AuditWrites.stage_documents`).
_STAGED = """SELECT d.doc_id, d.dataset_id, d.shard_index, d.row_index, d.key, d.exact_hash, d.signature,
                    d.band_keys, [s.side] AS sides, d.token_count
             FROM documents d JOIN aud_scope s
               ON d.dataset_id = s.dataset_id AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)
             WHERE {where}"""


#: The shuffled order of a wide band bucket (:meth:`AuditWrites.near_pairs` ``window``): a
#: document's place is two quadratic steps mod P = 2³¹ − 1 (a prime) from ``doc_id × a_band``
#: (``a_band = 48271 × (band + 1)``, 48271 a primitive root mod P), all in 64-bit integers. The
#: product alone kept small doc ids in doc_id order in every band (ids below P / a_band never wrap),
#: so all 21 bands gave 2,000 documents the same neighbours; the quadratic steps give each band
#: other ones, as a random permutation per band does (the same share of distinct pairs over 21
#: bands, 0.563 at 2,000 documents and 0.939 at 20,000). :func:`window_order` is the same in numpy
#: (the Ray engine's), so that both engines compare the same candidates.
_P, _A = 2**31 - 1, 48271
_H1 = f"((((doc_id % {_P}) + {_P}) % {_P}) * ((band + 1) * {_A} % {_P}) % {_P})"
_H2 = f"(({_H1} * {_H1} + (band + 1) * 1000003) % {_P})"
_ORDER_SQL = f"(({_H2} * {_H2} + 12345) % {_P})"
#: The classes :meth:`AuditWrites.near_pairs` can compare across, each two SQL expressions over
#: a row of ``aud_docs``: its labels (a list; NULL: no class, compared with every other
#: document) and its sides (a list; NULL where the classes have none). A group of identical
#: signatures has the union of its documents' labels as its class (none if one has none), and
#: its side if all its labels are of one side. The pre-merge gate's labels are ``side:dataset``:
#: two groups of one class, or of classes of one and the same side, say nothing to each other
#: (each group already holds on every other side what the other could show it, in the datasets
#: it would show). The memorization audit's samples (negative ids) have no class, the
#: documents one.
CLASSES = {"sides": ("list_transform(sides, lambda s: s || ':' || dataset_id)", "sides"),
           "samples": ("CASE WHEN doc_id >= 0 THEN ['d'] END", "NULL::VARCHAR[]")}
#: Candidate rows (before they are made distinct) per pass of :meth:`AuditWrites._candidates`.
CANDIDATE_ROWS = 4_000_000
#: Candidates per slice that :meth:`AuditWrites._compare` reads and compares (about 60 MB of arrays).
COMPARE_ROWS = 1_000_000
#: The fewest candidates :meth:`AuditWrites._compare` compares in compiled code (fewer: in SQL).
COMPILED_FROM = 100_000
#: The largest matrix of signatures :meth:`AuditWrites._compare` reads into memory (524,288
#: documents at 128 positions); past it the candidates are compared in SQL.
SIGNATURE_BYTES = 256 * 2**20


def window_order(doc_id: np.ndarray, band: np.ndarray) -> np.ndarray:
    """The shuffled order of documents in a wide band bucket (``_ORDER_SQL``), as int64."""
    b = band.astype(np.int64) + 1
    h = (doc_id.astype(np.int64) % _P) * (b * _A % _P) % _P
    h = (h * h + b * 1000003) % _P
    return (h * h + 12345) % _P


class AuditWrites:
    """Audit steps over the temporary table ``aud_docs`` (``self._con``: the transaction's connection)."""

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

    def near_pairs(self, audit_id: str, bands: int, rows: int, min_matches: int, *, stored: bool,
                   collapse: bool = False, all_pairs: bool = False, window: int | None = None,
                   classes: str | None = None) -> int:
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
        member of two linked groups with each other, at the estimate of their first documents).

        ``window``: a band bucket (documents sharing a band and key) of more than ``2 × window``
        documents pairs each of them with the ``window`` after it in an order shuffled per band
        (:func:`window_order`), not with every other: the candidates of one near-duplicate
        cluster of ``m`` documents grow as ``m × window × bands``, not ``m² / 2`` (module
        :mod:`provenance.audits`, "bucket window"). Returns the buckets so windowed (with
        ``classes``: the classes of buckets so windowed).

        ``classes`` (with ``collapse``): ``"sides"`` or ``"samples"`` (:data:`CLASSES`). Two
        groups of identical signatures are compared only if their classes can say something to
        each other: the gate asks only which documents have a near copy on another side (and in
        which datasets), the memorization audit first only which documents a sample nearly
        copies (then :meth:`partner_pairs`). A large near-duplicate cluster on one side then
        costs its band buckets' counts, not its pairs (buckets without two such classes are left
        out before the join). With a ``window``, a class of more than ``2 × window`` documents in
        a bucket is paired with each document of another class through ``window`` of its
        documents only, in the shuffled order; then every document not yet matched with that
        class is compared with all of it (:meth:`_resolve_open`): which classes each group
        matches is then exactly what comparing every pair gives, and a cluster on both sides
        whose members match one another costs ``m × window × bands`` candidates, not ``m²``."""
        con = self._con
        if classes is not None and (not collapse or classes not in CLASSES):
            raise ProvenanceError(f"classes {classes!r}: one of {', '.join(CLASSES)}, over groups of identical "
                                  f"signatures (collapse)")
        classes = CLASSES[classes] if classes is not None else None
        source = "aud_docs"
        if collapse:
            # Signatures compared whole only where a hash collides (3× faster at 100K). Identical
            # signatures have identical band keys when every document has the audit's banding
            # (``stored``): their hash is the cheaper test (a sixth of the bytes at 128 × 0.8).
            # The signatures are then read only for the documents whose hash collides.
            hashed = "band_keys" if stored else "signature"
            con.execute(f"""CREATE OR REPLACE TEMP TABLE aud_hashes AS
                            WITH h AS (SELECT doc_id, hash({hashed}) AS h FROM aud_docs)
                            SELECT doc_id, h IN (SELECT h FROM h GROUP BY h HAVING count(*) > 1) AS collides FROM h""")
            con.execute(
                """CREATE OR REPLACE TEMP TABLE aud_groups AS
                   WITH s AS (SELECT d.doc_id, d.signature FROM aud_docs d SEMI JOIN aud_hashes x
                              ON x.doc_id = d.doc_id AND x.collides)
                   SELECT doc_id, min(doc_id) OVER (PARTITION BY signature) AS rep,
                          count(*) OVER (PARTITION BY signature) AS size FROM s
                   UNION ALL SELECT doc_id, doc_id, 1 FROM aud_hashes WHERE NOT collides"""
            )
            con.execute("DROP TABLE aud_hashes")
            source = "(SELECT d.* FROM aud_docs d JOIN aud_groups g USING (doc_id) WHERE g.doc_id = g.rep)"
        cls = one = "NULL::VARCHAR"
        if classes is not None:
            # a group's class: the union of its documents' labels; a lone document's read in place.
            # (A text with no words has the signature of every such text, so a group is all of them
            # or none: the gate, which leaves them out, loses nothing to classes that mix them.)
            labels, sides = classes
            con.execute(f"""CREATE OR REPLACE TEMP TABLE aud_group_classes AS
                            SELECT g.rep, CASE WHEN count(d.c) = count(*) THEN {_class_name("flatten(list(d.c))")} END AS c,
                                   {_one_side("flatten(list(d.s))")} AS one
                            FROM aud_groups g JOIN (SELECT doc_id, {labels} AS c, {sides} AS s FROM aud_docs) d
                              USING (doc_id)
                            WHERE g.size > 1 GROUP BY g.rep""")
            source = f"""(SELECT d.*, CASE WHEN g.size > 1 THEN m.c WHEN ({labels}) IS NOT NULL
                                           THEN {_class_name(labels)} END AS cls,
                                 CASE WHEN g.size > 1 THEN m.one ELSE {_one_side(sides)} END AS one
                          FROM aud_docs d JOIN aud_groups g USING (doc_id) LEFT JOIN aud_group_classes m ON m.rep = g.rep
                          WHERE g.doc_id = g.rep)"""
            cls, one = "cls", "one"
        self._band(source, stored, bands, rows, cls, one)
        con.execute("DROP TABLE IF EXISTS aud_group_classes")
        windowed = self._candidates(window, classed=classes is not None)
        self._compare(audit_id, min_matches)
        if classes is not None:
            self._resolve_open(audit_id, min_matches)
        if collapse:
            self._group_pairs(audit_id, all_pairs)
        con.execute("DROP TABLE aud_cand")
        return windowed

    def partner_pairs(self, audit_id: str, reps: list[int], bands: int, rows: int, min_matches: int, *,
                      stored: bool) -> None:
        """After :meth:`near_pairs` with the classes ``"samples"``: the pairs of the groups of documents
        whose first members are ``reps`` with every other group of documents (not samples'), into
        ``audit_pairs``: each of those documents' near copies in training."""
        con = self._con
        register(con, "aud_focus", pa.Table.from_arrays([columns.ints(reps)], names=["rep"]))
        try:
            source = """(SELECT d.*, CASE WHEN d.doc_id IN (SELECT rep FROM aud_focus) THEN NULL ELSE 'd' END AS cls
                         FROM aud_docs d JOIN aud_groups g USING (doc_id) WHERE g.doc_id = g.rep AND g.rep >= 0)"""
            self._band(source, stored, bands, rows, "cls")
        finally:
            unregister(con, "aud_focus")
        if self._partners_compiled(audit_id, min_matches):
            return
        self._candidates(0, classed=True)
        self._compare(audit_id, min_matches)
        self._resolve_open(audit_id, min_matches)
        con.execute("DROP TABLE aud_cand")

    def _partners_compiled(self, audit_id: str, min_matches: int) -> bool:
        """:meth:`partner_pairs`' candidates (each focus document, of no class in ``aud_bands``,
        with every other document of its band buckets) found and compared in compiled code
        (:func:`provenance.kernels.signature_match.bucket_partners`): the band buckets are read
        once, and each focus document meets each of its bucket-mates once, where the SQL join forms
        a row per band they share and then makes them distinct (1.5 billion rows for 61M
        candidates, 3,516 documents matched in a cluster of 20,000). False, with nothing done,
        where there are fewer than ``COMPILED_FROM`` candidate rows or the signatures would pass
        ``SIGNATURE_BYTES``."""
        con = self._con
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_fb AS
                       SELECT band, bk FROM aud_bands GROUP BY band, bk
                       HAVING count(*) > 1 AND count(*) FILTER (WHERE cls IS NULL) > 0""")
        estimate, ids, k = con.execute(
            """WITH c AS (SELECT count(*)::HUGEINT AS m, count(*) FILTER (WHERE cls IS NULL) AS f
                          FROM aud_bands SEMI JOIN aud_fb USING (band, bk) GROUP BY band, bk),
                    d AS (SELECT DISTINCT doc_id FROM aud_bands SEMI JOIN aud_fb USING (band, bk))
               SELECT (SELECT coalesce(sum(f * (m - f) + f * (f - 1) // 2), 0) FROM c), (SELECT count(*) FROM d),
                      (SELECT max(len(x.signature)) FROM aud_docs x SEMI JOIN d USING (doc_id))""").fetchall()[0]
        if estimate < COMPILED_FROM or ids * (k or 0) * 4 > SIGNATURE_BYTES:
            con.execute("DROP TABLE aud_fb")
            return False
        doc_ids, matrix = self._signatures("SELECT DISTINCT doc_id FROM aud_bands SEMI JOIN aud_fb USING (band, bk)", k)
        kept = con.sql("""SELECT dense_rank() OVER (ORDER BY band, bk) - 1 AS bucket, doc_id, cls IS NULL AS focus
                          FROM aud_bands SEMI JOIN aud_fb USING (band, bk) ORDER BY bucket""").to_arrow_table()
        con.execute("DROP TABLE aud_fb")
        con.execute("DROP TABLE aud_bands")
        bucket = columns.to_numpy(kept.column("bucket")).astype(np.int64)
        row = np.searchsorted(doc_ids, columns.to_numpy(kept.column("doc_id")))
        focus = kept.column("focus").to_numpy(zero_copy_only=False)
        # every focus document looks for class 0 (every document's), the others for none
        looks = np.zeros(len(doc_ids), np.int64)
        looks[row[focus]] = 1
        open_starts = np.concatenate([[0], np.cumsum(looks)])
        self._walk_and_compare(audit_id, min_matches, doc_ids, matrix, bucket, row, row[focus], bucket[focus],
                               np.zeros(len(doc_ids), np.int64), open_starts, np.zeros(open_starts[-1], np.int64))
        return True

    def _walk_and_compare(self, audit_id: str, min_matches: int, doc_ids: np.ndarray, matrix: np.ndarray,
                          bucket: np.ndarray, row: np.ndarray, f_row: np.ndarray, f_bucket: np.ndarray,
                          classes: np.ndarray, open_starts: np.ndarray, open_to: np.ndarray) -> int:
        """Candidates found by :func:`provenance.kernels.signature_match.bucket_partners` and
        compared by ``count_matches``, into ``audit_pairs``: the document of row ``f_row[t]`` (a
        row of ``doc_ids`` and ``matrix``) with each document of bucket ``f_bucket[t]`` once
        (``row[i]`` is in bucket ``bucket[i]``, sorted by bucket, numbered from 0); ``classes``,
        ``open_starts`` and ``open_to`` say which pairs two documents would both form (the
        kernel forms them from the smaller row). The focus documents go in runs of about 4 ×
        ``COMPARE_ROWS`` bucket-mates (their pairs are fewer: a mate met in several bands is one
        pair). Returns the candidates compared."""
        from provenance.kernels.signature_match import bucket_partners, count_matches

        starts = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=int(f_bucket.max(initial=-1)) + 1))]
                                ).astype(np.int64)
        order = np.lexsort((f_bucket, f_row))  # each focus document's buckets together
        f_row, f_bucket = f_row[order], f_bucket[order]
        focus_rows, first_at = np.unique(f_row, return_index=True)
        focus_starts = np.append(first_at, len(f_row)).astype(np.int64)
        step = 4 * COMPARE_ROWS
        mates = np.cumsum(np.add.reduceat(starts[f_bucket + 1] - starts[f_bucket], first_at)) if len(first_at) else []
        cuts = [0, *np.searchsorted(mates, np.arange(step, mates[-1] if len(mates) else 0, step)).tolist(), len(focus_rows)]
        stamp = np.full(len(doc_ids), -1, np.int64)
        found = 0
        members, f_bucket, focus_rows, classes, open_starts, open_to = (
            x.astype(np.int64, copy=False) for x in (row, f_bucket, focus_rows, classes, open_starts, open_to))
        for lo, hi in zip(cuts, cuts[1:]):
            if hi <= lo:
                continue
            a, b = bucket_partners(starts, members, focus_starts, f_bucket, focus_rows, lo, hi, stamp,
                                   classes=classes, open_starts=open_starts, open_to=open_to)
            found += len(a)
            m = count_matches(matrix, a, b, min_matches)
            keep = m >= min_matches
            x, y = doc_ids[a[keep]], doc_ids[b[keep]]
            self._insert_found(audit_id, np.minimum(x, y), np.maximum(x, y), m[keep], matrix.shape[1])
        return found

    def _signatures(self, ids_sql: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The doc ids ``ids_sql`` selects (sorted) and their signatures as one ``uint32[n, k]``
        matrix, read from ``aud_docs``."""
        docs = self._con.sql(f"""SELECT x.doc_id, x.signature FROM aud_docs x SEMI JOIN ({ids_sql}) i USING (doc_id)
                                 ORDER BY x.doc_id""").to_arrow_table()
        doc_ids = columns.to_numpy(docs.column("doc_id"))
        lists = docs.column("signature").combine_chunks()
        if (np.diff(columns.to_numpy(lists.offsets)) != k).any():  # one config per audit: never, unless the ledger is damaged
            raise ProvenanceError(f"the audit's signatures are not all {k} long")
        return doc_ids, columns.to_numpy(lists.flatten()).reshape(len(doc_ids), k)

    def _insert_found(self, audit_id: str, a: np.ndarray, b: np.ndarray, m: np.ndarray, k: int) -> None:
        """Pairs found (``a < b`` doc ids, ``m`` positions agreeing of ``k``) into ``audit_pairs``."""
        found = pa.Table.from_arrays([columns.from_numpy(x) for x in (a, b, m, m / np.float64(k))],
                                     names=["a", "b", "m", "j"])
        register(self._con, "aud_found", found)
        try:
            self._con.execute("INSERT INTO audit_pairs SELECT $1, a, b, m, j, NULL, a FROM aud_found", [audit_id])
        finally:
            unregister(self._con, "aud_found")

    def _band(self, source: str, stored: bool, bands: int, rows: int, cls: str, one: str = "NULL::VARCHAR") -> None:
        """``aud_bands`` (doc_id, cls, one, band, bk): the LSH band keys of the documents of
        ``source`` (stored at registration, or hashed from ``bands`` slices of ``rows`` signature
        positions), with their class and its one side (:meth:`near_pairs`)."""
        if stored:
            keys = f"""SELECT doc_id, {cls} AS cls, {one} AS one, generate_subscripts(band_keys, 1) - 1 AS band,
                              unnest(band_keys) AS bk FROM {source}"""
        else:
            keys = f"""SELECT doc_id, {cls} AS cls, {one} AS one, i AS band,
                              hash(signature[i * {int(rows)} + 1 : (i + 1) * {int(rows)}]) AS bk
                       FROM {source}, range({int(bands)}) t(i)"""
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE aud_bands AS {keys}")

    def _compare(self, audit_id: str, min_matches: int) -> None:
        """The candidates ``aud_cand`` whose signatures agree in at least ``min_matches``
        positions, into ``audit_pairs``: counted by :func:`provenance.kernels.signature_match.count_matches`
        over the signatures of the candidates' documents, read once as one matrix, the candidates
        read in slices of ``COMPARE_ROWS``; by SQL when there are fewer than ``COMPILED_FROM``
        candidates or that matrix would pass ``SIGNATURE_BYTES``."""
        con = self._con
        total = int(con.execute("SELECT count(*) FROM aud_cand").fetchall()[0][0])
        if not total:
            return
        if total < COMPILED_FROM:  # SQL's 1.4 µs a pair is less than importing numba and its kernel
            self._compare_sql(audit_id, min_matches)
            return
        con.execute("CREATE OR REPLACE TEMP TABLE aud_cand_docs AS SELECT a AS doc_id FROM aud_cand UNION SELECT b FROM aud_cand")
        ids, k = con.execute("""SELECT count(*), max(len(x.signature))
                                FROM aud_docs x SEMI JOIN aud_cand_docs USING (doc_id)""").fetchall()[0]
        if ids * k * 4 > SIGNATURE_BYTES:
            con.execute("DROP TABLE aud_cand_docs")
            self._compare_sql(audit_id, min_matches)
            return
        from provenance.kernels.signature_match import count_matches  # numba: imported when an audit compares

        doc_ids, matrix = self._signatures("SELECT doc_id FROM aud_cand_docs", k)
        con.execute("DROP TABLE aud_cand_docs")
        first, span = int(doc_ids[0]), int(doc_ids[-1]) - int(doc_ids[0]) + 1
        dense = span <= 4 * len(doc_ids) + 2**20  # ids close together: a row per id, looked up in the loop
        if dense:
            rows = np.full(span, -1, np.int32 if len(doc_ids) < 2**31 else np.int64)
            rows[doc_ids - first] = np.arange(len(doc_ids))
        # numbered for slicing (the row ids of rows added in an open transaction start at 2^62)
        con.execute("CREATE OR REPLACE TEMP TABLE aud_cand_rows AS SELECT row_number() OVER () - 1 AS i, a, b FROM aud_cand")
        for lo in range(0, total, COMPARE_ROWS):
            cand = con.sql("SELECT a, b FROM aud_cand_rows WHERE i >= $1 AND i < $2",
                           params=[lo, lo + COMPARE_ROWS]).to_arrow_table()
            a, b = (columns.to_numpy(cand.column(c)).astype(np.int64, copy=False) for c in ("a", "b"))
            if dense:
                m = count_matches(matrix, a, b, min_matches, rows=rows, first=first)
            else:
                m = count_matches(matrix, np.searchsorted(doc_ids, a), np.searchsorted(doc_ids, b), min_matches)
            keep = m >= min_matches
            self._insert_found(audit_id, a[keep], b[keep], m[keep], k)
        con.execute("DROP TABLE aud_cand_rows")

    def _compare_sql(self, audit_id: str, min_matches: int) -> None:
        """:meth:`_compare` in SQL: the positions counted by a lambda over the zipped lists."""
        # the count in a plain projection, filtered outside it (as a LATERAL subquery it took
        # 13× as long: 65 s against 4.9 s for 3.8M candidates), over the signatures of the
        # candidates' documents only (half the time for a thousand candidates among 100K)
        self._con.execute(
            f"""INSERT INTO audit_pairs
                WITH s AS (SELECT doc_id, signature FROM aud_docs
                           WHERE doc_id IN (SELECT a FROM aud_cand UNION SELECT b FROM aud_cand))
                SELECT $1, a, b, m, m / k, NULL, a FROM (
                    SELECT c.a, c.b, {_MATCHES} AS m, len(x.signature) AS k
                    FROM aud_cand c JOIN s x ON x.doc_id = c.a JOIN s y ON y.doc_id = c.b)
                WHERE m >= $2""",
            [audit_id, int(min_matches)],
        )

    def _candidates(self, window: int | None, *, classed: bool = False) -> int:
        """The candidate pairs of ``aud_bands`` (doc_id, band, bk) once each, as ``aud_cand``
        (a < b): every two documents of a band bucket, or, in a bucket of more than ``2 ×
        window`` documents, each with the ``window`` after it in the bucket's shuffled order
        (``_ORDER_SQL``; an equality join on the rank, linear in the bucket). Returns the buckets
        windowed. The pairs of all bands are made distinct in passes of at most
        ``CANDIDATE_ROWS`` rows (a slice of the pairs by hash each): one DISTINCT over 27M rows
        ran out of the ledger's 512 MB where four passes took 2.9 s.

        ``classed`` (``aud_bands`` has a ``cls`` and its ``one`` side): :meth:`_classed_candidates`,
        the pairs of classes that can tell each other something (:meth:`near_pairs`), each class
        joined to each such other by equality, so the pairs within a class are never formed."""
        if classed:
            return self._classed_candidates(window)
        con = self._con
        wide = 2 * int(window) if window else 2**62  # buckets of more documents are windowed: none without one
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_buckets AS
                       SELECT band, bk, count(*) AS n FROM aud_bands GROUP BY band, bk HAVING count(*) > 1""")
        windowed, rows = con.execute(
            "SELECT count(*) FILTER (WHERE n > $1::BIGINT), coalesce(sum(CASE WHEN n > $1::BIGINT "
            "THEN n * $2::HUGEINT - $2::HUGEINT * ($2::HUGEINT + 1) // 2 ELSE n::HUGEINT * (n - 1) // 2 END), 0) "
            "FROM aud_buckets",
            [wide, int(window or 0)]).fetchall()[0]
        if windowed:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE aud_ranked AS
                    SELECT band, bk, doc_id,
                           row_number() OVER (PARTITION BY band, bk ORDER BY {_ORDER_SQL}, doc_id) AS r
                    FROM aud_bands SEMI JOIN (SELECT band, bk FROM aud_buckets WHERE n > {wide}) USING (band, bk)""")
        small = f"""(SELECT x.* FROM aud_bands x
                     SEMI JOIN (SELECT band, bk FROM aud_buckets WHERE n <= {wide}) k USING (band, bk))"""

        def pairs(part) -> str:
            # filtered before the join where the pair's first document is known (every pair of a
            # small bucket), after it for the windowed ones
            every = f"""SELECT p.doc_id AS a, q.doc_id AS b FROM (SELECT * FROM {small} WHERE {part("doc_id")}) p
                        JOIN {small} q ON p.band = q.band AND p.bk = q.bk AND p.doc_id < q.doc_id"""
            if windowed:
                every += f"""
                    UNION ALL
                    SELECT * FROM (
                        SELECT least(p.doc_id, q.doc_id) AS a, greatest(p.doc_id, q.doc_id) AS b
                        FROM (SELECT band, bk, doc_id, r + d AS r FROM aud_ranked, range(1, {int(window) + 1}) t(d)) p
                        JOIN aud_ranked q USING (band, bk, r)) WHERE {part("a")}"""
            return every

        self._distinct_in_passes(int(rows), pairs)
        for table in ("aud_ranked", "aud_buckets", "aud_bands"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        return int(windowed)

    def _distinct_in_passes(self, rows: int, pairs) -> None:
        """``aud_cand``: the pairs ``pairs(part)`` selects (``a, b``), made distinct in passes of
        about ``CANDIDATE_ROWS`` of the ``rows`` it selects in all. ``part(column)`` is the
        condition that a pass takes the pairs whose ``column`` (the same document of a pair in
        every band) hashes into its slice."""
        passes = max(1, -(-rows // CANDIDATE_ROWS))
        self._con.execute("CREATE OR REPLACE TEMP TABLE aud_cand (a BIGINT, b BIGINT)")
        for k in range(passes):
            part = (lambda column, k=k: f"hash({column}) % {passes} = {k}") if passes > 1 else (lambda column: "true")
            self._con.execute(f"INSERT INTO aud_cand SELECT DISTINCT a, b FROM ({pairs(part)})")

    def _classed_candidates(self, window: int | None) -> int:
        """:meth:`_candidates` of ``aud_bands`` with classes (:meth:`near_pairs`): the pairs of a
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
                                   FROM aud_dir GROUP BY band, bk)
                        SELECT band, bk, m0 * (m - m0) + m0 * (m0 - 1) // 2 + coalesce(d.r, 0) AS pairs
                        FROM u LEFT JOIN d USING (band, bk) WHERE m0 * (m - m0) + m0 * (m0 - 1) // 2 + coalesce(d.r, 0) > 0""")
        rows = int(con.execute("SELECT coalesce(sum(pairs), 0) FROM aud_buckets").fetchall()[0][0])
        windowed = int(con.execute(f"SELECT count(*) FROM aud_bc WHERE cls IS NOT NULL AND n > {wide}").fetchall()[0][0])
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_kept AS
                       SELECT doc_id, cls, band, bk, NULL::BIGINT AS r FROM aud_bands SEMI JOIN aud_buckets USING (band, bk)""")
        if windowed:  # ranked in the shuffled order where the class is windowed
            con.execute(f"""UPDATE aud_kept SET r = w.r FROM (
                                SELECT k.doc_id, k.band, row_number() OVER (PARTITION BY k.band, k.bk, k.cls
                                                                            ORDER BY {_ORDER_SQL}, k.doc_id) - 1 AS r
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
        """After :meth:`_classed_candidates` and :meth:`_compare`: each document that a window
        paired with some of a class and that matches none of that class yet is compared with
        every document of it in the buckets so windowed (the pairs not compared already), so
        that which classes each document matches is what comparing every pair gives. Then the
        tables of :meth:`_classed_candidates` are dropped. Returns the candidates so added."""
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
            compiled = self._open_compiled(audit_id, min_matches) if rows >= COMPILED_FROM else None
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
        """:meth:`_resolve_open`'s pairs found and compared in compiled code (:meth:`_walk_and_compare`):
        each open document (``aud_open``) meets every document of each class it looks for in
        those buckets once, where the SQL join forms a row per band they share (75M rows for 31M
        pairs, 8,000 variants a side in the same buckets) and makes them distinct in passes. Two
        documents open to each other's class meet once, from the smaller id. The pairs compared
        already are compared again (no anti join): none of them matched, or neither document
        would be open to the other's class, so nothing is found twice. Returns the candidates, or
        None, with nothing done, where the signatures would pass ``SIGNATURE_BYTES``."""
        con = self._con
        con.execute("""CREATE OR REPLACE TEMP TABLE aud_sub AS
                       SELECT band, bk, c2 AS cls, row_number() OVER (ORDER BY band, bk, c2) - 1 AS i
                       FROM (SELECT DISTINCT band, bk, c2 FROM aud_open)""")
        docs = """SELECT k.doc_id FROM aud_kept k SEMI JOIN aud_sub s USING (band, bk, cls)
                  UNION SELECT doc_id FROM aud_open"""
        ids, k = con.execute(f"""SELECT count(*), max(len(x.signature)) FROM aud_docs x
                                 SEMI JOIN ({docs}) d USING (doc_id)""").fetchall()[0]
        if not ids or ids * k * 4 > SIGNATURE_BYTES:
            con.execute("DROP TABLE aud_sub")
            return 0 if not ids else None
        doc_ids, matrix = self._signatures(docs, k)
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

    def _group_pairs(self, audit_id: str, all_pairs: bool, docs: str = "aud_docs") -> None:
        """The pairs of the groups of identical signatures (``aud_groups``), once the groups' first
        documents are paired: each copy with its group's first document; with ``all_pairs``,
        every member of two linked groups with each other, then every two copies. ``docs``: the
        table with the documents' signatures (the staged ones, or all)."""
        con = self._con
        if all_pairs:  # every member of two linked groups, then every two copies
            con.execute(
                """INSERT INTO audit_pairs
                   SELECT $1, least(x.doc_id, y.doc_id), greatest(x.doc_id, y.doc_id), p.matches, p.jaccard, NULL,
                          least(x.doc_id, y.doc_id)
                   FROM audit_pairs p JOIN aud_groups x ON x.rep = p.doc_a JOIN aud_groups y ON y.rep = p.doc_b
                   WHERE p.audit_id = $1 AND NOT (x.doc_id = p.doc_a AND y.doc_id = p.doc_b)""",
                [audit_id],
            )
            con.execute(
                f"""INSERT INTO audit_pairs
                   SELECT $1, x.doc_id, y.doc_id, len(d.signature), 1.0, NULL, x.doc_id
                   FROM aud_groups x JOIN aud_groups y ON x.rep = y.rep AND x.doc_id < y.doc_id
                   JOIN {docs} d ON d.doc_id = x.doc_id""",
                [audit_id],
            )
        else:  # each copy with the first of its group
            con.execute(
                f"""INSERT INTO audit_pairs
                   SELECT $1, g.rep, g.doc_id, len(d.signature), 1.0, NULL, g.rep
                   FROM aud_groups g JOIN {docs} d USING (doc_id) WHERE g.doc_id <> g.rep""",
                [audit_id],
            )

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

    def neighbours(self, audit_id: str, doc_ids: list[int]) -> pa.Table:
        """Each of the staged documents ``doc_ids`` with each of its near-copies among the staged
        documents (not samples): the other members of its group of identical signatures, and the
        members of every group its group is paired with. ``doc, other``, sorted."""
        con = self._con
        register(con, "aud_asked", pa.Table.from_arrays([columns.from_numpy(np.asarray(doc_ids, np.int64))],
                                                        names=["doc_id"]))
        try:
            return con.sql(
                """WITH m AS (SELECT doc_id, rep FROM aud_groups SEMI JOIN aud_asked USING (doc_id)),
                        reps AS (SELECT doc_id FROM aud_groups WHERE doc_id = rep),
                        rel AS (SELECT doc_a AS r, doc_b AS o FROM audit_pairs
                                WHERE audit_id = $1 AND doc_b IN (SELECT doc_id FROM reps)
                                UNION ALL SELECT doc_b, doc_a FROM audit_pairs
                                WHERE audit_id = $1 AND doc_b IN (SELECT doc_id FROM reps)
                                UNION ALL SELECT doc_id, doc_id FROM reps)
                   SELECT DISTINCT m.doc_id AS doc, g.doc_id AS other
                   FROM m JOIN rel ON rel.r = m.rep JOIN aud_groups g ON g.rep = rel.o
                   WHERE g.doc_id >= 0 AND g.doc_id <> m.doc_id
                   ORDER BY doc, other""", params=[audit_id]).to_arrow_table()
        finally:
            unregister(con, "aud_asked")

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
    """The stored audits among ``ids`` (all when None), oldest first: ``audit_id, kind, target,
    created_at, pairs_deleted_at``, the ``pairs`` they store and the merge versions whose receipts
    cite them (``cited_by``)."""
    return con.sql(
        """SELECT a.audit_id, a.kind, a.target, a.created_at, a.pairs_deleted_at, coalesce(p.n, 0) AS pairs,
                  coalesce(m.versions, []) AS cited_by
           FROM audits a
           LEFT JOIN (SELECT audit_id, count(*) AS n FROM audit_pairs GROUP BY ALL) p USING (audit_id)
           LEFT JOIN (SELECT audit_id, list(version_id ORDER BY version_id) AS versions FROM merge_receipts
                      WHERE audit_id IS NOT NULL GROUP BY ALL) m USING (audit_id)
           WHERE $1::VARCHAR[] IS NULL OR list_contains($1::VARCHAR[], a.audit_id)
           ORDER BY a.created_at, a.audit_id""",
        params=[None if ids is None else list(ids)],
    ).to_arrow_table().to_pylist()


def _class_name(labels: str) -> str:
    """A class's name: the distinct ``labels`` (a SQL list) sorted, as one string."""
    return f"array_to_string(list_sort(list_distinct({labels})), chr(31))"


def _one_side(sides: str) -> str:
    """The one side of ``sides`` (a SQL list), or NULL when it has several or none."""
    return f"CASE WHEN len(list_distinct({sides})) = 1 THEN list_distinct({sides})[1] END"


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
