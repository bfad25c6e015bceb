"""Near-duplicate pairs of the staged documents (``aud_docs``), inside one ledger transaction:
the LSH band keys, the candidate pairs of each band bucket (every two documents, or a window of
neighbours in a shuffled order where a bucket is wide) made distinct in passes, and their
signatures compared, in SQL or in compiled code (:mod:`provenance.kernels.signature_match`), into
``audit_pairs``. Comparing only across classes of documents (the pre-merge gate's sides, the
memorization audit's samples) is :mod:`provenance.ledger.audit_classes`; both are mixed into
:class:`provenance.ledger.audit_sql.AuditWrites`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from provenance import columns
from provenance.errors import ProvenanceError
from provenance.ledger._common import register, unregister

#: How many positions two signatures ``x`` and ``y`` agree in, in SQL (:meth:`PairWrites._compare_sql`).
_MATCHES = "len(list_filter(list_zip(x.signature, y.signature), lambda p: p[1] = p[2]))"

#: The shuffled order of a wide band bucket (:meth:`PairWrites.near_pairs` ``window``): a
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
ORDER_SQL = f"(({_H2} * {_H2} + 12345) % {_P})"
#: Candidate rows (before they are made distinct) per pass of :meth:`PairWrites._candidates`.
CANDIDATE_ROWS = 4_000_000
#: Candidates per slice that :meth:`PairWrites._compare` reads and compares (about 60 MB of arrays).
COMPARE_ROWS = 1_000_000
#: The fewest candidates :meth:`PairWrites._compare` compares in compiled code (fewer: in SQL).
COMPILED_FROM = 100_000
#: The largest matrix of signatures :meth:`PairWrites._compare` reads into memory (524,288
#: documents at 128 positions); past it the candidates are compared in SQL.
SIGNATURE_BYTES = 256 * 2**20


def pairs_with_none(none: str, every: str) -> str:
    """SQL: the pairs a bucket of ``every`` documents forms for those of ``none`` of them that
    have no class (each with every other document, two of them once)."""
    return f"{none} * ({every} - {none}) + {none} * ({none} - 1) // 2"


def window_order(doc_id: np.ndarray, band: np.ndarray) -> np.ndarray:
    """The shuffled order of documents in a wide band bucket (:data:`ORDER_SQL`), as int64."""
    b = band.astype(np.int64) + 1
    h = (doc_id.astype(np.int64) % _P) * (b * _A % _P) % _P
    h = (h * h + b * 1000003) % _P
    return (h * h + 12345) % _P


class PairWrites:
    """The pairs of the staged documents ``aud_docs`` into ``audit_pairs`` (``self._con``: the
    transaction's connection); comparing across classes is
    :class:`provenance.ledger.audit_classes.ClassWrites`, whose methods these call on ``self``."""

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

        ``classes`` (with ``collapse``): ``"sides"`` or ``"samples"``
        (:data:`provenance.ledger.audit_classes.CLASSES`). Two groups of identical signatures are
        compared only if their classes can say something to each other: the gate asks only which
        documents have a near copy on another side (and in which datasets), the memorization
        audit first only which documents a sample nearly copies (then :meth:`partner_pairs`). A
        large near-duplicate cluster on one side then costs its band buckets' counts, not its
        pairs (buckets without two such classes are left out before the join). With a
        ``window``, a class of more than ``2 × window`` documents in a bucket is paired with each
        document of another class through ``window`` of its documents only, in the shuffled
        order; then every document not yet matched with that class is compared with all of it
        (:meth:`~provenance.ledger.audit_classes.ClassWrites._resolve_open`): which classes each
        group matches is then exactly what comparing every pair gives, and a cluster on both
        sides whose members match one another costs ``m × window × bands`` candidates, not ``m²``."""
        con = self._con
        classes = self._classes(classes, collapse=collapse) if classes is not None else None
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
            source, cls, one = self._classed_source(*classes), "cls", "one"
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
        estimate = con.execute(
            f"""SELECT coalesce(sum({pairs_with_none("f", "m")}), 0)
                FROM (SELECT count(*)::HUGEINT AS m, count(*) FILTER (WHERE cls IS NULL) AS f
                      FROM aud_bands SEMI JOIN aud_fb USING (band, bk) GROUP BY band, bk)""").fetchall()[0][0]
        read = (self._signatures_within("SELECT DISTINCT doc_id FROM aud_bands SEMI JOIN aud_fb USING (band, bk)")
                if estimate >= COMPILED_FROM else None)
        if read is None:
            con.execute("DROP TABLE aud_fb")
            return False
        doc_ids, matrix = read
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

    def _signatures_within(self, ids_sql: str) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_signatures` of the documents ``ids_sql`` selects, or None where their matrix
        would pass ``SIGNATURE_BYTES`` (the caller then compares in SQL); counted before it is read.
        No documents: an empty matrix."""
        ids, k = self._con.execute(f"""SELECT count(*), max(len(x.signature)) FROM aud_docs x
                                       SEMI JOIN ({ids_sql}) d USING (doc_id)""").fetchall()[0]
        if ids * (k or 0) * 4 > SIGNATURE_BYTES:
            return None
        if not ids:
            return np.empty(0, np.int64), np.empty((0, 0), np.uint32)
        return self._signatures(ids_sql, k)

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
        read = self._signatures_within("SELECT doc_id FROM aud_cand_docs")
        con.execute("DROP TABLE aud_cand_docs")
        if read is None:
            self._compare_sql(audit_id, min_matches)
            return
        from provenance.kernels.signature_match import count_matches  # numba: imported when an audit compares

        doc_ids, matrix = read
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
            self._insert_found(audit_id, a[keep], b[keep], m[keep], matrix.shape[1])
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
        (:data:`ORDER_SQL`; an equality join on the rank, linear in the bucket). Returns the buckets
        windowed. The pairs of all bands are made distinct in passes of at most
        ``CANDIDATE_ROWS`` rows (a slice of the pairs by hash each): one DISTINCT over 27M rows
        ran out of the ledger's 512 MB where four passes took 2.9 s.

        ``classed`` (``aud_bands`` has a ``cls`` and its ``one`` side):
        :meth:`~provenance.ledger.audit_classes.ClassWrites._classed_candidates`, the pairs of
        classes that can tell each other something (:meth:`near_pairs`), each class joined to
        each such other by equality, so the pairs within a class are never formed."""
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
                           row_number() OVER (PARTITION BY band, bk ORDER BY {ORDER_SQL}, doc_id) AS r
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
