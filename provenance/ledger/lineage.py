"""Lineage and audits as queries: the version graph, the shards runs trained on, and the stored
audit records. Mixed into :class:`provenance.ledger.Ledger`; the logic is in
:mod:`provenance.lineage` and :mod:`provenance.audits`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from provenance import columns
from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger._common import EXACT_UNIT, register, unregister
from provenance.ledger.run_writes import counted_shards
from provenance.records import check_retraction_id, looks_like_id


def _capped(runs: pa.Table) -> bool:
    """Whether ``runs`` (the rows of a lineage) holds a checkpoint: a ``step`` that is not null."""
    return "step" in runs.column_names and runs.column("step").null_count < runs.num_rows


#: The running runs that saved checkpoints (``run_id, cap``): what taint counts of them is what
#: their end will write to ``run_shards`` (:func:`~provenance.ledger.run_writes.counted_shards`).
_RUNNING_WITH_CHECKPOINTS = ("(SELECT run_id, NULL::BIGINT AS cap FROM runs WHERE status = 'running' "
                             "AND run_id IN (SELECT run_id FROM checkpoints))")

#: Per run with checkpoints, the first step it logged a document of the targets ``t`` (of the
#: datasets ``{datasets}``, a list bound while planning: other datasets' documents are not read) at.
_FIRST_STEPS = """SELECT e.run_id, min(e.step) AS first_step FROM run_examples e JOIN documents d USING (doc_id)
                  WHERE e.run_id IN (SELECT run_id FROM checkpoints) AND list_contains({datasets}, d.dataset_id)
                    AND EXISTS (SELECT 1 FROM t WHERE t.dataset_id = d.dataset_id
                                AND (t.shard_index IS NULL OR t.shard_index = d.shard_index))
                  GROUP BY ALL"""
#: Per shard of the datasets ``{datasets}`` a run with checkpoints logged, the first step it did.
_SHARD_FIRST_STEPS = """SELECT e.run_id, d.dataset_id, d.shard_index, min(e.step) AS first_step
                        FROM run_examples e JOIN documents d USING (doc_id)
                        WHERE e.run_id IN (SELECT run_id FROM checkpoints) AND list_contains({datasets}, d.dataset_id)
                        GROUP BY ALL"""

#: The kinds of stored audit.
AUDIT_KINDS = ("dedup", "merge", "memorization")


def check_audit_kind(kind: str | None) -> None:
    """Refuse a ``kind`` that is no audit's (listing by it found nothing, silently)."""
    if kind is not None and kind not in AUDIT_KINDS:
        raise InvalidParameterError(f"kind {kind!r}: one of {', '.join(AUDIT_KINDS)}")


class LineageQueries:
    """Reads behind lineage, taint and the audits (``self`` is a :class:`~provenance.ledger.Ledger`)."""

    def version_graph(self) -> pa.Table:
        """Every version with its parents, run, and, for merges, the method and weights of its
        receipt: ``version_id, parents, run_id, message, created_at, method, weights``, its
        ``tags``, and for a checkpoint of a run the last ``step`` it was trained on (else null)."""
        with self._cursor() as con:
            return con.sql(
                """SELECT v.version_id, v.parents, v.run_id, v.message, v.created_at, m.method, m.weights,
                          coalesce(t.tags, []) AS tags, c.step
                   FROM versions v LEFT JOIN merge_receipts m USING (version_id)
                   LEFT JOIN checkpoints c USING (version_id)
                   LEFT JOIN (SELECT version_id, list(name ORDER BY name) AS tags FROM tags GROUP BY ALL) t
                       USING (version_id)"""
            ).to_arrow_table()

    def trained_shards(self, runs: pa.Table) -> pa.Table:
        """Per shard trained on by the runs of ``runs`` (``run_id, version_id, weight, depth``: the
        run's weight in the version asked about, and how far from it; with ``step``, a checkpoint's:
        the run's examples up to that step only, NULL for the whole run), aggregated over those runs:
        ``dataset_id, shard_index, shard, examples, distinct_documents (the most any run saw),
        epochs, effective_examples (Σ weight × examples), runs (how many trained on it)``."""
        with self._cursor() as con:
            register(con, "lineage_runs", runs)
            try:
                return self._trained(con, capped=_capped(runs))
            finally:
                unregister(con, "lineage_runs")

    def trained_datasets(self, runs: pa.Table) -> tuple[pa.Table, pa.Table]:
        """:meth:`trained_shards`, and per dataset: ``dataset_id, examples, shards, epochs (the
        most of any shard), effective_examples, n_versions`` (that trained on it) and ``via`` (the
        ten of them nearest the version asked about, nearest first)."""
        with self._cursor() as con:
            register(con, "lineage_runs", runs)
            try:
                shards = self._trained(con, capped=_capped(runs))
                via = con.sql(
                    """SELECT rd.dataset_id, count(DISTINCT r.version_id) AS n_versions,
                              arg_min(r.version_id, (r.depth, r.version_id), 10) AS via  -- ties: by id
                       FROM lineage_runs r JOIN run_datasets rd USING (run_id) GROUP BY rd.dataset_id"""
                ).to_arrow_table()
            finally:
                unregister(con, "lineage_runs")
        sums = shards.group_by("dataset_id", use_threads=False).aggregate([  # in row order: the same sums each time
            ("examples", "sum"), ("shard_index", "count"), ("epochs", "max"), ("effective_examples", "sum")])
        sums = pa.table({"dataset_id": sums["dataset_id"], "examples": sums["examples_sum"],
                         "shards": sums["shard_index_count"], "epochs": sums["epochs_max"],
                         "effective_examples": sums["effective_examples_sum"]})
        sums = sums.sort_by("dataset_id")
        found = {r["dataset_id"]: r for r in via.to_pylist()}  # one row per dataset: small
        rows = [found.get(d, {"n_versions": 0, "via": []}) for d in sums["dataset_id"].to_pylist()]
        sums = sums.append_column("n_versions", pa.array([r["n_versions"] for r in rows], pa.int64()))
        return shards, sums.append_column("via", pa.array([r["via"] for r in rows], pa.list_(pa.string())))

    @staticmethod
    def _trained(con, *, capped: bool = False) -> pa.Table:
        """The aggregation behind :meth:`trained_shards` (``lineage_runs`` registered on ``con``;
        ``capped``: some of its rows are checkpoints, whose ``step`` caps the examples counted, by
        the rules of :func:`~provenance.ledger.run_writes.counted_shards`, which the end of a run
        wrote to ``run_shards`` for the whole run).

        The fractional sums are taken exactly, as integers in units of 2⁻⁶⁰, and rounded to a
        double once: summed as doubles by DuckDB's threads, their last bits depended on which
        thread finished first (8 calls of 10 differed on 300,000 rows), and a lineage asked twice
        must give the same answer. Scaling a double by 2⁶⁰ is exact, so a term is rounded only
        where it has bits below 2⁻⁶⁰ (merge shares such as 2⁻⁴⁰ are dyadic and stay exact); sums
        up to about 1.4·10²⁰ fit. (Decimals of 18 places did the same job a fifth slower: the
        cast of each double to a decimal costs more than a multiplication.)"""
        params = []
        if capped:  # $1: the checkpoints' runs' datasets, so that other datasets' documents are not read
            params = [con.execute("SELECT list(DISTINCT dataset_id ORDER BY dataset_id) FROM run_datasets WHERE "
                                  "run_id IN (SELECT run_id FROM lineage_runs WHERE step IS NOT NULL)").fetchall()[0][0] or []]
            caps = "(SELECT run_id, step AS cap FROM lineage_runs WHERE step IS NOT NULL)"
            # A run reached as several of its checkpoints (an average of its last ones) trained once: per shard its
            # most examples count, not their sum; its weights still add up.
            source = f"""WITH {counted_shards(caps, "$1::VARCHAR[]")},
                         entries AS (
                             SELECT r.run_id, r.weight, rs.dataset_id, rs.shard_index, rs.examples, rs.distinct_documents,
                                    rs.epochs
                             FROM lineage_runs r JOIN run_shards rs USING (run_id) WHERE r.step IS NULL
                             UNION ALL
                             SELECT r.run_id, r.weight, c.dataset_id, c.shard_index, c.examples, c.distinct_documents,
                                    c.epochs
                             FROM lineage_runs r JOIN counted_shards c ON c.run_id = r.run_id AND c.cap = r.step),
                         trained AS (
                             SELECT dataset_id, shard_index, max(examples) AS examples,
                                    max(distinct_documents) AS distinct_documents,
                                    max((epochs * {EXACT_UNIT})::HUGEINT) AS epoch_units,
                                    sum((weight * examples * {EXACT_UNIT})::HUGEINT) AS effective_units
                             FROM entries GROUP BY run_id, dataset_id, shard_index),"""
        else:
            source = f"""WITH trained AS (
                             SELECT rs.dataset_id, rs.shard_index, rs.examples, rs.distinct_documents,
                                    (rs.epochs * {EXACT_UNIT})::HUGEINT AS epoch_units,
                                    (r.weight * rs.examples * {EXACT_UNIT})::HUGEINT AS effective_units
                             FROM lineage_runs r JOIN run_shards rs USING (run_id)),"""
        return con.sql(
            f"""{source}
               agg AS (
                   SELECT rs.dataset_id, rs.shard_index, sum(rs.examples)::BIGINT AS examples,
                          max(rs.distinct_documents)::BIGINT AS distinct_documents,
                          sum(rs.epoch_units)::DOUBLE / {EXACT_UNIT} AS epochs,
                          sum(rs.effective_units)::DOUBLE / {EXACT_UNIT} AS effective_examples,
                          count(*) AS runs
                   FROM trained rs
                   GROUP BY rs.dataset_id, rs.shard_index)
               SELECT a.dataset_id, a.shard_index, s.name AS shard, a.examples, a.distinct_documents, a.epochs,
                      a.effective_examples, a.runs
               FROM agg a JOIN shards s ON s.dataset_id = a.dataset_id AND s.shard_index = a.shard_index""",
            params=params,
        ).to_arrow_table().sort_by([("dataset_id", "ascending"), ("shard_index", "ascending")])  # Arrow sorts faster

    def dataset_table(self, dataset_ids: list[str]) -> pa.Table:
        """Licence and role columns of the datasets named, one row each."""
        with self._cursor() as con:
            return con.sql(
                """SELECT dataset_id, name, role, license, non_commercial, share_alike, attribution, model_generated,
                          config_id, n_documents
                   FROM datasets WHERE list_contains(?, dataset_id) ORDER BY dataset_id""",
                params=[dataset_ids],
            ).to_arrow_table()

    def runs_using(self, parts: Sequence[tuple[str, int | None]]) -> pa.Table:
        """The runs that trained on any of ``parts`` (``(dataset_id, shard_index)``: a shard of a
        dataset version, or with ``None`` the version as a whole), with the version each produced:
        ``run_id, version_id, examples``, and ``first_step``: for a run with checkpoints, the first
        step at which it logged a document of them (null where it only declared one: every step;
        a running run with checkpoints is counted as its end would count it)."""
        ids, indices = [p[0] for p in parts], [p[1] for p in parts]
        with self._cursor() as con:
            return con.sql(
                f"""WITH t AS (SELECT unnest($1::VARCHAR[]) AS dataset_id, unnest($2::INTEGER[]) AS shard_index),
                   {counted_shards(_RUNNING_WITH_CHECKPOINTS, "$1::VARCHAR[]")},
                   used AS (SELECT run_id, dataset_id, shard_index, examples, logged FROM run_shards
                            UNION ALL
                            SELECT run_id, dataset_id, shard_index, examples, logged FROM counted_shards),
                   hit AS (SELECT u.* FROM used u WHERE EXISTS (SELECT 1 FROM t WHERE t.dataset_id = u.dataset_id
                           AND (t.shard_index IS NULL OR t.shard_index = u.shard_index))),
                   first AS ({_FIRST_STEPS.format(datasets="$1::VARCHAR[]")})
                   SELECT h.run_id, r.version_id, sum(h.examples)::BIGINT AS examples,
                          CASE WHEN bool_or(NOT h.logged) THEN NULL ELSE any_value(f.first_step) END AS first_step
                   FROM hit h JOIN runs r USING (run_id) LEFT JOIN first f USING (run_id)
                   GROUP BY h.run_id, r.version_id ORDER BY h.run_id""",
                params=[ids, indices],
            ).to_arrow_table()

    def runs_seeing(self, doc_ids: list[int], dataset_ids: Sequence[str] | None = None) -> pa.Table:
        """The runs that saw any of the documents ``doc_ids`` (of the dataset versions
        ``dataset_ids``, when the caller knows them: the documents of other datasets, a damaged
        Parquet file among them, are then not read): their logged examples where the run logged
        the document's dataset, else the epochs it declared for the document's shard; with the
        version each produced: ``run_id, version_id, examples``, and ``first_step``, the first step
        at which it logged one of them (null where it only declared one: every step; a running run
        with checkpoints is counted as its end would count it)."""
        with self._cursor() as con:
            return con.sql(
                f"""WITH docs AS (SELECT doc_id, dataset_id, shard_index FROM documents
                                 WHERE ($2 IS NULL OR list_contains($2, dataset_id)) AND list_contains($1, doc_id)),
                   {counted_shards(_RUNNING_WITH_CHECKPOINTS, "$2::VARCHAR[]")},
                   logged AS (
                       SELECT e.run_id, count(*) AS examples, min(e.step) AS first_step
                       FROM run_examples e JOIN docs USING (doc_id) GROUP BY ALL),
                   declared AS (
                       SELECT rs.run_id, sum(rs.epochs)::BIGINT AS examples, NULL::BIGINT AS first_step
                       FROM (SELECT run_id, dataset_id, shard_index, epochs, logged FROM run_shards
                             UNION ALL
                             SELECT run_id, dataset_id, shard_index, epochs, logged FROM counted_shards) rs
                       JOIN docs d ON d.dataset_id = rs.dataset_id AND d.shard_index = rs.shard_index
                       WHERE NOT rs.logged GROUP BY ALL)
                   SELECT u.run_id, r.version_id, sum(u.examples)::BIGINT AS examples,
                          CASE WHEN bool_or(u.first_step IS NULL) THEN NULL ELSE min(u.first_step) END AS first_step
                   FROM (SELECT * FROM logged UNION ALL SELECT * FROM declared) u JOIN runs r USING (run_id)
                   GROUP BY ALL ORDER BY u.run_id""",
                params=[[int(d) for d in doc_ids], None if dataset_ids is None else sorted(set(dataset_ids))],
            ).to_arrow_table()

    def retraction_runs(self, retraction_ids: list[str] | None = None) -> pa.Table:
        """The runs that trained on what retractions retract (all, or ``retraction_ids``), with
        the version each produced and the retraction's reason and target: ``retraction_id,
        run_id, version_id, reason, target``, and ``first_step`` as :meth:`runs_seeing` gives it. A document counts as
        :meth:`runs_seeing` counts it (logged examples, else the declared shard); a retracted
        shard or dataset version counts for every run that declared it (its ``first_step``: the first
        step the run logged a document of it at, null where it only declared it)."""
        with self._cursor() as con:
            datasets = con.execute("SELECT list(DISTINCT dataset_id ORDER BY dataset_id) FROM retraction_documents "
                                   "WHERE $1 IS NULL OR list_contains($1, retraction_id)",
                                   [retraction_ids]).fetchall()[0][0]
            if not datasets:  # lineage asks on every call
                return pa.table({"retraction_id": pa.array([], pa.string()), "run_id": pa.array([], pa.string()),
                                 "version_id": pa.array([], pa.string()), "reason": pa.array([], pa.string()),
                                 "target": pa.array([], pa.string()), "first_step": pa.array([], pa.int64())})
            return con.sql(  # $2: the retracted datasets, so that other datasets' documents are not read
                f"""WITH rd AS (SELECT * FROM retraction_documents WHERE $1 IS NULL OR list_contains($1, retraction_id)),
                   docs AS (SELECT rd.retraction_id, d.doc_id, d.dataset_id, d.shard_index
                            FROM rd JOIN documents d ON d.doc_id = rd.doc_id AND d.dataset_id = rd.dataset_id
                            WHERE list_contains($2, d.dataset_id)
                              AND d.doc_id IN (SELECT doc_id FROM rd WHERE doc_id IS NOT NULL)),
                   {counted_shards(_RUNNING_WITH_CHECKPOINTS, "$2::VARCHAR[]")},
                   shards_used AS (SELECT run_id, dataset_id, shard_index, logged FROM run_shards
                                   UNION ALL
                                   SELECT run_id, dataset_id, shard_index, logged FROM counted_shards),
                   shard_first AS ({_SHARD_FIRST_STEPS.format(datasets="$2::VARCHAR[]")}),
                   hit AS (
                       SELECT docs.retraction_id, e.run_id, min(e.step) AS first_step
                       FROM run_examples e JOIN docs USING (doc_id) GROUP BY ALL
                       UNION ALL
                       SELECT docs.retraction_id, rs.run_id, NULL FROM shards_used rs
                       JOIN docs ON docs.dataset_id = rs.dataset_id AND docs.shard_index = rs.shard_index
                       WHERE NOT rs.logged
                       UNION ALL
                       SELECT rd.retraction_id, rs.run_id, CASE WHEN rs.logged THEN sf.first_step END
                       FROM rd JOIN shards_used rs
                       ON rs.dataset_id = rd.dataset_id AND (rd.shard_index IS NULL OR rs.shard_index = rd.shard_index)
                       LEFT JOIN shard_first sf ON sf.run_id = rs.run_id AND sf.dataset_id = rs.dataset_id
                            AND sf.shard_index = rs.shard_index
                       WHERE rd.doc_id IS NULL),
                   per_run AS (
                       SELECT retraction_id, run_id,
                              CASE WHEN bool_or(first_step IS NULL) THEN NULL ELSE min(first_step) END AS first_step
                       FROM hit GROUP BY ALL)
                   SELECT h.retraction_id, h.run_id, r.version_id, x.reason, x.target, h.first_step
                   FROM per_run h JOIN runs r USING (run_id) JOIN retractions x USING (retraction_id)
                   ORDER BY h.retraction_id, h.run_id""",
                params=[retraction_ids, datasets],
            ).to_arrow_table()

    def retraction(self, retraction_id: str) -> dict[str, Any]:
        """A recorded retraction (its id or an unambiguous prefix of at least 4 hex digits): its
        row, what it retracts (``documents``) and the versions its steps made (``results``)."""
        check_retraction_id(retraction_id)
        with self._cursor() as con:
            rows = con.sql("SELECT * FROM retractions WHERE starts_with(retraction_id, ?) ORDER BY retraction_id "
                           "LIMIT 6", params=[str(retraction_id).lower()]).to_arrow_table().to_pylist()
            if not rows:
                raise NotFoundError(f"no retraction {retraction_id!r} in the ledger (`prov retractions` lists them)")
            if len(rows) > 1:
                shown = ", ".join(r["retraction_id"] for r in rows[:5])
                raise InvalidParameterError(f"retraction prefix {retraction_id!r} is ambiguous: {shown}"
                                            f"{', ...' if len(rows) > 5 else ''}")
            row = rows[0]
            row["documents"] = con.sql(
                "SELECT dataset_id, shard_index, doc_id, key, jaccard FROM retraction_documents "
                "WHERE retraction_id = ? ORDER BY dataset_id, doc_id NULLS FIRST",
                params=[row["retraction_id"]]).to_arrow_table().to_pylist()
            row["results"] = con.sql(
                "SELECT version_id, action, new_version_id, exact, applied_at FROM retraction_results "
                "WHERE retraction_id = ? ORDER BY applied_at, version_id",
                params=[row["retraction_id"]]).to_arrow_table().to_pylist()
        return row

    def retractions(self) -> list[dict[str, Any]]:
        """Every retraction, newest first: ``retraction_id, created_at, author, reason, target,
        near, documents, whole, results`` (counts; ``whole``: datasets and shards retracted as a
        whole, which ``documents`` does not count)."""
        with self._cursor() as con:
            return con.sql(
                """SELECT r.retraction_id, r.created_at, r.author, r.reason, r.target, r.near,
                          (SELECT count(*) FILTER (WHERE d.doc_id IS NOT NULL) FROM retraction_documents d
                           WHERE d.retraction_id = r.retraction_id) AS documents,
                          (SELECT count(*) FILTER (WHERE d.doc_id IS NULL) FROM retraction_documents d
                           WHERE d.retraction_id = r.retraction_id) AS whole,
                          (SELECT count(*) FROM retraction_results x WHERE x.retraction_id = r.retraction_id)
                              AS results
                   FROM retractions r ORDER BY r.created_at DESC, r.retraction_id""").to_arrow_table().to_pylist()

    def retraction_made(self, version_ids: list[str]) -> dict[str, dict[str, Any]]:
        """For each of ``version_ids`` that a retraction's step made: the retraction, the
        version it replaces, the action and whether it is exact."""
        with self._cursor() as con:
            rows = con.sql(
                """SELECT new_version_id, retraction_id, version_id AS replaces, action, exact
                   FROM retraction_results WHERE list_contains(?, new_version_id)""",
                params=[list(version_ids)]).to_arrow_table().to_pylist()
        return {r.pop("new_version_id"): r for r in rows}

    def retracted_in(self, dataset_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """What was taken out that ``dataset_id`` holds again: its documents with the text (exact
        hash) of a retracted document, or of one ``prov dataset remove`` removed from an earlier
        version of the same dataset, and its shards with the bytes of a shard retracted whole;
        ``key`` (a shard's name for a shard), ``retractions``, ``removed_from`` (the versions a
        removal took it from); at most ``limit`` rows."""
        with self._cursor() as con:
            if not con.execute("SELECT (SELECT count(*) FROM retraction_documents) + (SELECT count(*) FROM "
                               "dataset_removals)").fetchall()[0][0]:
                return []
            return con.sql(
                """WITH gone AS (SELECT DISTINCT d.exact_hash, r.retraction_id FROM retraction_documents r
                                 JOIN documents d ON d.doc_id = r.doc_id AND d.dataset_id = r.dataset_id
                                 WHERE r.doc_id IS NOT NULL AND d.token_count > 0),
                        dropped AS (SELECT DISTINCT d.exact_hash, x.from_dataset_id FROM dataset_removals x
                                    JOIN documents d ON d.doc_id = x.doc_id AND d.dataset_id = x.from_dataset_id
                                    WHERE x.retraction_id IS NULL AND d.token_count > 0
                                      AND split_part(x.dataset_id, '@', 1) = split_part($1, '@', 1)),
                        hits AS (SELECT n.key, g.retraction_id, NULL::VARCHAR AS removed_from
                                 FROM documents n JOIN gone g ON n.exact_hash = g.exact_hash WHERE n.dataset_id = $1
                                 UNION ALL
                                 SELECT n.key, NULL, r.from_dataset_id
                                 FROM documents n JOIN dropped r ON n.exact_hash = r.exact_hash WHERE n.dataset_id = $1
                                 UNION ALL
                                 SELECT s.name, r.retraction_id, NULL FROM shards s JOIN shards o ON o.shard_id = s.shard_id
                                 JOIN retraction_documents r ON r.doc_id IS NULL AND r.dataset_id = o.dataset_id
                                      AND (r.shard_index IS NULL OR r.shard_index = o.shard_index)
                                 WHERE s.dataset_id = $1)
                   SELECT key,
                          coalesce(list(DISTINCT retraction_id ORDER BY retraction_id)
                                   FILTER (WHERE retraction_id IS NOT NULL), []) AS retractions,
                          coalesce(list(DISTINCT removed_from ORDER BY removed_from)
                                   FILTER (WHERE removed_from IS NOT NULL), []) AS removed_from
                   FROM hits GROUP BY key ORDER BY key LIMIT $2""",
                params=[dataset_id, int(limit)]).to_arrow_table().to_pylist()

    def retractions_of(self, doc_ids: list[int], parts: Sequence[tuple[str, int | None]] = (),
                       places: Sequence[tuple[str, int]] = ()) -> list[dict[str, Any]]:
        """The retractions that retract any of ``doc_ids``, or any of ``parts`` (``(dataset_id,
        shard_index)``: a dataset version, or its shard, as a whole or in part), each with the
        versions made for it. ``places``: the ``(dataset_id, shard_index)`` of each document of
        ``doc_ids``; a retraction of that dataset version or shard as a whole retracts it too."""
        ids, indices = [p[0] for p in parts], [p[1] for p in parts]
        in_ids, in_indices = [p[0] for p in places], [p[1] for p in places]
        with self._cursor() as con:
            return con.sql(
                """WITH t AS (SELECT unnest($2::VARCHAR[]) AS dataset_id, unnest($3::INTEGER[]) AS shard_index),
                        w AS (SELECT unnest($4::VARCHAR[]) AS dataset_id, unnest($5::INTEGER[]) AS shard_index)
                   SELECT x.retraction_id, x.created_at, x.reason, x.target,
                          coalesce((SELECT list(new_version_id ORDER BY new_version_id) FROM retraction_results r
                                    WHERE r.retraction_id = x.retraction_id), []) AS results  -- none yet: [], not null
                   FROM retractions x WHERE x.retraction_id IN (
                       SELECT retraction_id FROM retraction_documents d
                       WHERE list_contains($1, d.doc_id)
                          OR EXISTS (SELECT 1 FROM t WHERE t.dataset_id = d.dataset_id AND (t.shard_index IS NULL
                                     OR d.shard_index IS NULL OR d.shard_index = t.shard_index))
                          OR (d.doc_id IS NULL AND EXISTS (SELECT 1 FROM w WHERE w.dataset_id = d.dataset_id
                                     AND (d.shard_index IS NULL OR d.shard_index = w.shard_index))))
                   ORDER BY x.created_at, x.retraction_id""",
                params=[[int(d) for d in doc_ids], ids, indices, in_ids, in_indices]).to_arrow_table().to_pylist()

    def removals(self, dataset_ids: list[str]) -> list[dict[str, Any]]:
        """The documents each of ``dataset_ids`` was made without (``prov dataset remove``)."""
        with self._cursor() as con:
            return con.sql(
                """SELECT dataset_id, from_dataset_id, doc_id, key, retraction_id, reason, created_at
                   FROM dataset_removals WHERE list_contains(?, dataset_id) ORDER BY dataset_id, doc_id""",
                params=[list(dataset_ids)]).to_arrow_table().to_pylist()

    def similar_documents(self, config_id: str, exact_hash: int, signature: Any, min_matches: int | None,
                          band_keys: Any = None, banding: tuple[int, int] | None = None) -> pa.Table:
        """Documents of every dataset fingerprinted under ``config_id`` that have ``exact_hash``,
        or (``min_matches`` given) whose signatures agree with ``signature`` in at least
        ``min_matches`` positions: ``doc_id, dataset_id, shard_index, key, matches``. With
        ``band_keys`` of ``banding`` (bands, rows), datasets stored under that banding are searched
        by band collisions only; the others are scanned whole."""
        sig = [int(x) for x in signature]
        matches = "len(list_filter(list_zip(d.signature, $3::UINTEGER[]), lambda p: p[1] = p[2]))"
        with self._cursor() as con:
            if min_matches is None:
                return con.sql(
                    f"""SELECT d.doc_id, d.dataset_id, d.shard_index, d.key, {matches} AS matches
                        FROM documents d JOIN datasets s USING (dataset_id)
                        WHERE s.config_id = $1 AND d.exact_hash = $2 ORDER BY d.doc_id""",
                    params=[config_id, int(exact_hash), sig],
                ).to_arrow_table()
            if band_keys is None or banding is None:
                keys, bands, rows = [], -1, -1
            else:
                keys, (bands, rows) = [int(x) for x in band_keys], banding
            return con.sql(
                f"""WITH ds AS (SELECT dataset_id, bands = $5 AND rows = $6 AS banded FROM datasets WHERE config_id = $1),
                    q AS (SELECT unnest($4::UBIGINT[]) AS bk, generate_subscripts($4::UBIGINT[], 1) AS band),
                    hit AS (
                        SELECT DISTINCT b.doc_id FROM (
                            SELECT doc_id, unnest(band_keys) AS bk, generate_subscripts(band_keys, 1) AS band
                            FROM documents WHERE dataset_id IN (SELECT dataset_id FROM ds WHERE banded)) b
                        JOIN q USING (band, bk)),
                    cand AS (
                        SELECT d.* FROM documents d JOIN hit USING (doc_id)
                        UNION ALL
                        SELECT d.* FROM documents d WHERE d.dataset_id IN (SELECT dataset_id FROM ds WHERE NOT banded))
                    SELECT d.doc_id, d.dataset_id, d.shard_index, d.key, {matches} AS matches
                    FROM cand d WHERE {matches} >= $7 OR d.exact_hash = $2 ORDER BY d.doc_id""",
                params=[config_id, int(exact_hash), sig, keys, bands, rows, int(min_matches)],
            ).to_arrow_table()

    def exposure(self, run_ids: list[str], doc_ids: Sequence[int] | np.ndarray) -> pa.Table:
        """How many times the runs ``run_ids`` saw each of ``doc_ids``: its logged examples where
        a run logged the document's dataset, else the epochs the run declared for its shard:
        ``doc_id, seen``."""
        ids = doc_ids if isinstance(doc_ids, np.ndarray) else np.asarray([int(d) for d in doc_ids], np.int64)
        with self._cursor() as con:  # the ids as a registered column: a memorization audit asks for thousands
            register(con, "exposure_ids", pa.Table.from_arrays([columns.from_numpy(ids.astype(np.int64))],
                                                                 names=["doc_id"]))
            try:
                return con.sql(
                    """WITH docs AS (SELECT doc_id, dataset_id, shard_index FROM documents
                                     SEMI JOIN exposure_ids USING (doc_id)),
                       logged AS (SELECT e.doc_id, count(*)::DOUBLE AS seen FROM run_examples e SEMI JOIN docs USING (doc_id)
                                  WHERE list_contains($1, e.run_id) GROUP BY ALL),
                       declared AS (SELECT d.doc_id, sum(rs.epochs) AS seen FROM run_shards rs
                                    JOIN docs d ON d.dataset_id = rs.dataset_id AND d.shard_index = rs.shard_index
                                    WHERE list_contains($1, rs.run_id) AND NOT rs.logged GROUP BY ALL)
                       SELECT doc_id, sum(seen) AS seen FROM (SELECT * FROM logged UNION ALL SELECT * FROM declared)
                       GROUP BY doc_id ORDER BY doc_id""",
                    params=[run_ids],
                ).to_arrow_table()
            finally:
                unregister(con, "exposure_ids")

    # -- the logic, in provenance.lineage -------------------------------------------------------

    def unregistered_inputs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """Inputs the runs named (by OpenLineage namespace and name) that match no registered
        dataset: ``run_id, namespace, name``."""
        if not run_ids:
            return []
        with self._cursor() as con:  # the ids as a registered column, not a list parameter: a lineage names thousands
            register(con, "lineage_run_ids", pa.table({"run_id": pa.array(run_ids, pa.string())}))
            try:
                return con.sql("""SELECT run_id, namespace, name FROM run_inputs
                                  WHERE dataset_id IS NULL AND run_id IN (SELECT run_id FROM lineage_run_ids)
                                  ORDER BY namespace, name, run_id""").to_arrow_table().to_pylist()
            finally:
                unregister(con, "lineage_run_ids")

    def audit(self, audit_id: str) -> dict[str, Any]:
        """The stored audit ``audit_id`` (or an unambiguous prefix of at least 4 hex digits):
        its kind, target, parameters, whether it passed, and its report."""
        if not looks_like_id(str(audit_id)):
            raise NotFoundError(f"no audit {audit_id!r} (an audit id is 4 to 32 hex digits)")
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM audits WHERE starts_with(audit_id, ?) ORDER BY audit_id LIMIT 6",
                params=[str(audit_id).lower()],
            ).to_arrow_table().to_pylist()
            proof = [] if rows else con.execute(
                "SELECT retraction_id FROM retraction_audits WHERE starts_with(audit_id, ?) LIMIT 1",
                [str(audit_id).lower()]).fetchall()
        if not rows:
            raise NotFoundError(f"no audit {audit_id!r} in the ledger" + (
                f" (it is a proof audit of retraction {proof[0][0]}: prov retractions {proof[0][0]})" if proof else ""))
        if len(rows) > 1:
            shown = ", ".join(r["audit_id"][:12] for r in rows[:5])
            raise InvalidParameterError(f"audit prefix {audit_id!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}")
        row = rows[0]
        for key in ("params_json", "report_json"):
            row[key.removesuffix("_json")] = json.loads(row.pop(key))
        return row

    def audit_pairs(self, audit_id: str, limit: int | None = None) -> pa.Table:
        """The pairs a dedup audit found, best first, with both documents' keys and datasets:
        ``a, b, dataset_a, dataset_b, jaccard, stderr, matches, exact, cluster, doc_a, doc_b``."""
        from provenance.ledger.audit_sql import PAIRS_SQL

        row = self.audit(audit_id)
        if row["pairs_deleted_at"] is not None:
            raise NotFoundError(f"audit {row['audit_id'][:12]}'s pairs were deleted on "
                                f"{row['pairs_deleted_at']:%Y-%m-%d %H:%M} UTC (prov audit delete --pairs-only); "
                                "its report is kept: prov audit show")
        audit_id = row["audit_id"]
        with self._cursor() as con:
            sql = PAIRS_SQL + (f" LIMIT {int(limit)}" if limit is not None else "")
            return con.sql(sql, params=[audit_id]).to_arrow_table()

    def select_audits(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """See :func:`provenance.ledger.audit_sql.select_audits`."""
        from provenance.ledger.audit_sql import select_audits

        with self._cursor() as con:
            return select_audits(con, ids)

    def audits(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored audits, newest first, without their reports: ``audit_id, kind, target, passed,
        created_at``, the number of ``pairs`` stored, and ``pairs_deleted_at``; ``kind``: of that
        kind only (one of :data:`AUDIT_KINDS`)."""
        check_audit_kind(kind)
        with self._cursor() as con:
            return con.sql(
                """SELECT audit_id, kind, target, passed, created_at, coalesce(p.n, 0) AS pairs, pairs_deleted_at
                   FROM audits LEFT JOIN (SELECT audit_id, count(*) AS n FROM audit_pairs GROUP BY ALL) p USING (audit_id)
                   WHERE $1 IS NULL OR kind = $1 ORDER BY created_at DESC, audit_id""",
                params=[kind],
            ).to_arrow_table().to_pylist()
