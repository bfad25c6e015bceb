"""Writes of training runs inside one ledger transaction: a run, its end and the examples it saw
per shard, logged examples resolved to documents, and the OpenLineage intake (runs mapped,
inputs matched to datasets, a version's run). Mixed into
:class:`~provenance.ledger.writer.LedgerWriter`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from provenance.errors import InvalidParameterError
from provenance.ledger._common import _now, register, unregister
from provenance.records import RunRecord


def counted_shards(caps: str, datasets: str = "NULL") -> str:
    """The common table expressions that count, per shard, the examples each run of ``caps`` (a
    relation ``run_id, cap``) saw up to step ``cap`` (NULL: the whole run), of the datasets
    ``datasets`` (an SQL list of dataset ids, bound while planning so that the documents of other
    datasets, a damaged Parquet file among them, are not read; NULL: every dataset), ending in
    ``counted_shards(run_id, cap, dataset_id, shard_index, examples, distinct_documents, epochs,
    logged)``: for a dataset whose examples the run logged (at any step), the shards it saw a
    document of by then, counted from the log; for one it only declared, every shard,
    ``n_documents × epochs`` rounded (no more distinct documents than that; none for 0 epochs).
    One text for the end of a run (:meth:`RunWrites.count_run_shards`) and the lineage of a
    checkpoint, so that both count alike. Its other expressions are named ``cs_*``."""
    return f"""cs_caps AS (SELECT DISTINCT run_id, cap FROM {caps}),
               cs_logged AS (
                   SELECT c.run_id, c.cap, d.dataset_id, d.shard_index, count(*) AS examples,
                          count(DISTINCT e.doc_id) AS docs
                   FROM cs_caps c JOIN run_examples e ON e.run_id = c.run_id AND (c.cap IS NULL OR e.step <= c.cap)
                   JOIN documents d ON d.doc_id = e.doc_id
                   WHERE {datasets} IS NULL OR list_contains({datasets}, d.dataset_id) GROUP BY ALL),
               cs_logged_datasets AS (
                   SELECT DISTINCT run_id, dataset_id FROM cs_logged WHERE cap IS NULL
                   UNION
                   SELECT DISTINCT e.run_id, d.dataset_id FROM run_examples e JOIN documents d ON d.doc_id = e.doc_id
                   WHERE e.run_id IN (SELECT run_id FROM cs_caps WHERE cap IS NOT NULL)
                     AND ({datasets} IS NULL OR list_contains({datasets}, d.dataset_id))),
               cs_counted AS (
                   SELECT c.run_id, c.cap, s.dataset_id, s.shard_index, s.n_documents, rd.epochs, l.examples, l.docs,
                          CAST(round(s.n_documents * rd.epochs) AS BIGINT) AS declared,
                          ld.dataset_id IS NOT NULL AS is_logged
                   FROM cs_caps c JOIN run_datasets rd ON rd.run_id = c.run_id
                   JOIN shards s ON s.dataset_id = rd.dataset_id
                        AND ({datasets} IS NULL OR list_contains({datasets}, rd.dataset_id))
                   LEFT JOIN cs_logged_datasets ld ON ld.run_id = c.run_id AND ld.dataset_id = rd.dataset_id
                   LEFT JOIN cs_logged l ON l.run_id = c.run_id AND l.cap IS NOT DISTINCT FROM c.cap
                        AND l.dataset_id = s.dataset_id AND l.shard_index = s.shard_index
                   WHERE (ld.dataset_id IS NULL OR l.examples IS NOT NULL)
                     AND (ld.dataset_id IS NOT NULL OR rd.epochs > 0)),  -- declared for 0 epochs: not trained on
               counted_shards AS (
                   SELECT run_id, cap, dataset_id, shard_index,
                          CASE WHEN is_logged THEN examples ELSE declared END AS examples,
                          CASE WHEN is_logged THEN docs ELSE least(n_documents, declared) END AS distinct_documents,
                          CASE WHEN is_logged THEN examples / n_documents ELSE epochs END AS epochs,
                          is_logged AS logged
                   FROM cs_counted)"""


class RunWrites:
    """Writes of runs (``self`` is a :class:`~provenance.ledger.writer.LedgerWriter`)."""

    def insert_run(self, run: RunRecord) -> None:
        row = run.model_dump(exclude={"datasets", "n_logged", "params"})
        row["params_json"] = json.dumps(run.params, sort_keys=True, default=str)
        self._insert("runs", pa.Table.from_pylist([row]))
        self.made["run_id"] = run.run_id
        if run.datasets:
            self._insert("run_datasets", pa.table({
                "run_id": [run.run_id] * len(run.datasets), "dataset_id": list(run.datasets),
                "epochs": [float(e) for e in run.datasets.values()],
            }))

    def run_status(self, run_id: str) -> str | None:
        rows = self._con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
        return rows[0][0] if rows else None

    def end_run(self, run_id: str, status: str, *, error: str | None = None, version_id: str | None = None,
                ended_at: datetime | None = None) -> None:
        """Close a running run (``ended_at``: when it ended, default now; never before its start)
        and count, per shard of its datasets, the examples it saw."""
        self._con.execute(
            "UPDATE runs SET status = ?, error = ?, version_id = ?, ended_at = greatest(?, started_at) WHERE run_id = ?",
            [status, error, version_id, ended_at or _now(), run_id],
        )
        self.count_run_shards(run_id)

    def insert_checkpoint(self, version_id: str, run_id: str, step: int | None) -> int:
        """Record ``version_id`` as a checkpoint of the running run ``run_id`` trained on its logged
        examples up to ``step`` (None: the last step logged so far, -1 when none is: trained on no
        logged example; 0 counted those then logged at step 0); returns the step."""
        if step is None:
            step = self._con.execute("SELECT coalesce(max(step), -1) FROM run_examples WHERE run_id = ?",
                                     [run_id]).fetchall()[0][0]
        self._con.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", [version_id, run_id, int(step)])
        return int(step)

    def run_started_earlier(self, run_id: str, started_at: datetime) -> None:
        """Move a run's start back to ``started_at`` when that is earlier (an OpenLineage START that
        arrived after a later event)."""
        self._con.execute("UPDATE runs SET started_at = $1 WHERE run_id = $2 AND started_at > $1", [started_at, run_id])

    def count_run_shards(self, run_id: str) -> None:
        """Per shard of the run's datasets, the examples it saw, for the datasets not counted yet
        (at the end of the run, and for datasets an ended run's late OpenLineage event names): for
        a dataset whose examples it logged, the shards it saw a document of, counted from the log;
        for one it only declared, every shard, ``n_documents × epochs`` rounded (no more distinct
        documents than that; none for 0 epochs)."""
        self._con.execute(
            f"""INSERT OR IGNORE INTO run_shards
                WITH {counted_shards("(SELECT $run AS run_id, NULL::BIGINT AS cap)")}
                SELECT run_id, dataset_id, shard_index, examples, distinct_documents, epochs, logged
                FROM counted_shards""",
            {"run": run_id},
        )

    def running_runs(self) -> list[tuple[str, str, int]]:
        """(run_id, host, pid) of every run still marked running."""
        return [tuple(r) for r in self._con.execute("SELECT run_id, host, pid FROM runs WHERE status = 'running'").fetchall()]

    def log_examples(self, run_id: str, datasets: Sequence[str], log: pa.Table) -> int:
        """Resolve the document keys of ``log`` (columns seq, step, key, dataset) within
        ``datasets`` and append them to run_examples. Unknown or ambiguous keys raise
        :class:`InvalidParameterError` naming the first of them; nothing is written then."""
        register(self._con, "_prov_log", log)
        try:
            self._con.execute(
                """CREATE OR REPLACE TEMP TABLE _prov_resolved AS
                   SELECT l.seq, l.step, l.key, d.doc_id, d.dataset_id
                   FROM _prov_log l LEFT JOIN (SELECT doc_id, dataset_id, key FROM documents
                                               WHERE list_contains($datasets, dataset_id)) d
                     ON d.key = l.key AND (l.dataset IS NULL OR d.dataset_id = l.dataset)""",
                {"datasets": list(datasets)},
            )
        finally:
            unregister(self._con, "_prov_log")
        try:
            missing = self._con.execute(
                "SELECT key, step, count(*) OVER () FROM _prov_resolved WHERE doc_id IS NULL ORDER BY seq LIMIT 1"
            ).fetchall()
            if missing:
                key, step, n = missing[0]
                more = f" (and {n - 1} more unknown keys)" if n > 1 else ""
                raise InvalidParameterError(
                    f"logged example {key!r} at step {step} is not a document of the run's datasets "
                    f"({', '.join(datasets) or 'none declared'}){more}"
                )
            ambiguous = self._con.execute(
                """SELECT key, list(dataset_id ORDER BY dataset_id) FROM _prov_resolved
                   GROUP BY seq, key HAVING count(*) > 1 ORDER BY seq LIMIT 1"""
            ).fetchall()
            if ambiguous:
                key, where = ambiguous[0]
                raise InvalidParameterError(
                    f"logged example {key!r} is a document of several of the run's datasets ({', '.join(where)}); "
                    "log it with dataset=... to say which"
                )
            n = self._con.execute(
                "INSERT INTO run_examples SELECT ?, step, doc_id FROM _prov_resolved ORDER BY seq", [run_id]
            ).fetchall()[0][0]
            self._con.execute("UPDATE runs SET n_logged = n_logged + ? WHERE run_id = ?", [n, run_id])
            return n
        finally:
            self._con.execute("DROP TABLE IF EXISTS _prov_resolved")

    # -- OpenLineage intake ----------------------------------------------------------------------

    def openlineage_run(self, ol_run_id: str) -> dict | None:
        rows = self._con.sql("SELECT * FROM openlineage_runs WHERE ol_run_id = ?", params=[ol_run_id]
                             ).to_arrow_table().to_pylist()
        return rows[0] if rows else None

    def map_openlineage_run(self, ol_run_id: str, run_id: str, namespace: str, name: str, event: str,
                            when: object) -> None:
        self._con.execute(
            """INSERT INTO openlineage_runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (ol_run_id)
               DO UPDATE SET last_event = excluded.last_event, last_event_time = excluded.last_event_time
               WHERE openlineage_runs.last_event_time IS NULL
                  OR excluded.last_event_time >= openlineage_runs.last_event_time""",  # by eventTime, not arrival
            [ol_run_id, run_id, namespace, name, event, when])

    def run_input_matches(self, run_id: str) -> dict[tuple[str, str], str]:
        """The dataset each matched input of a run was matched to, by ``(namespace, name)``."""
        return {(n, m): d for n, m, d in self._con.execute(
            "SELECT namespace, name, dataset_id FROM run_inputs WHERE run_id = ? AND dataset_id IS NOT NULL",
            [run_id]).fetchall()}

    def add_run_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str | None]]) -> tuple[int, list[str]]:
        """Record inputs ``(namespace, name, dataset_id or None)`` of a run, and declare the
        matched datasets (one epoch each) unless the run declared them already; returns how many
        inputs are new to the run (or matched now, unmatched before) and the datasets declared now."""
        rows = {(namespace, name): dataset_id for namespace, name, dataset_id in inputs}  # an input once
        if not rows:
            return 0, []
        # One statement each, whatever the number of inputs (an event may name thousands: a statement
        # per input held the ledger for seconds).
        added = self._con.execute(
            "INSERT INTO run_inputs SELECT $1, unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), unnest($4::VARCHAR[]) "
            "ON CONFLICT DO UPDATE SET dataset_id = excluded.dataset_id "  # an input unmatched before takes its match
            "WHERE run_inputs.dataset_id IS NULL AND excluded.dataset_id IS NOT NULL",
            [run_id, [n for n, _ in rows], [m for _, m in rows], list(rows.values())]).fetchone()[0]
        matched = sorted({d for d in rows.values() if d is not None})
        if not matched:
            return added, []
        return added, [r[0] for r in self._con.execute(
            "INSERT INTO run_datasets SELECT $1, unnest($2::VARCHAR[]), 1.0 ON CONFLICT DO NOTHING RETURNING dataset_id",
            [run_id, matched]).fetchall()]

    def attach_version_run(self, version_id: str, run_id: str) -> None:
        """Say that ``run_id`` produced ``version_id``, a version committed without a run."""
        current = self._con.execute("SELECT run_id FROM versions WHERE version_id = ?", [version_id]).fetchall()
        if current and current[0][0] not in (None, run_id):
            raise InvalidParameterError(f"version {version_id[:12]} was produced by run {current[0][0][:12]} already")
        self._con.execute("UPDATE versions SET run_id = ? WHERE version_id = ?", [run_id, version_id])
