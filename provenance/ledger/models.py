"""The model side of the ledger as queries: versions, manifests, tags, training runs. Mixed into
:class:`provenance.ledger.Ledger`; the logic of commits and runs is in :mod:`provenance.versions`
and :mod:`provenance.runs`."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from provenance.errors import (
    InvalidParameterError,
    NotFoundError,
    shown,
)
from provenance.ledger._common import _param_from_row, register, row_dicts, unregister
from provenance.records import (
    A_VERSION,
    CheckpointRecord,
    ParamRecord,
    RunRecord,
    RunShardRecord,
    TagRecord,
    VersionRecord,
    check_ref,
    check_tag,
    looks_like_id,
)
from provenance.results import MergeReceipt

# A version row with the names that tag it (``tags`` is not a column of ``versions``).
_WITH_TAGS = """v.*, coalesce((SELECT list(t.name ORDER BY t.name) FROM tags t WHERE t.version_id = v.version_id),
                         []::VARCHAR[]) AS tags FROM versions v"""


class ModelQueries:
    """Reads of versions and runs (``self`` is a :class:`~provenance.ledger.Ledger`)."""

    # -- model versions (the logic is in provenance.versions) ----------------------------------

    def version(self, ref: str | VersionRecord) -> VersionRecord:
        """A version by record, tag, full id or unambiguous id prefix (at least 4 hex digits)."""
        if isinstance(ref, VersionRecord):
            return ref
        ref = check_ref(ref, A_VERSION, (str,))
        with self._cursor() as con:
            tagged = con.execute("SELECT version_id FROM tags WHERE name = ?", [ref]).fetchall()
            if tagged:
                ref = tagged[0][0]
            elif not looks_like_id(ref):
                raise NotFoundError(f"no version or tag {shown(ref)} (a version id is 4 to 32 hex digits)")
            ref = ref.lower()
            match = "version_id = ?" if len(ref) == 32 else "starts_with(version_id, ?)"  # a full id: the key
            rows = row_dicts(con.execute(f"SELECT * FROM versions WHERE {match} ORDER BY version_id LIMIT 6", [ref]))
            if len(rows) == 1:  # its tags by the key (a correlated subquery costs more than the lookup)
                rows[0]["tags"] = [r[0] for r in con.execute(
                    "SELECT name FROM tags WHERE version_id = ? ORDER BY name", [rows[0]["version_id"]]).fetchall()]
        if not rows:
            raise NotFoundError(f"no version {shown(ref)} in the ledger")
        if len(rows) > 1:
            listed = ", ".join(r["version_id"][:12] for r in rows[:5])
            raise InvalidParameterError(f"version prefix {ref!r} is ambiguous: {listed}{', ...' if len(rows) > 5 else ''}")
        return VersionRecord(**rows[0])

    def versions(self) -> list[VersionRecord]:
        """Every version, newest first."""
        with self._cursor() as con:
            rows = con.sql(f"SELECT {_WITH_TAGS} ORDER BY v.created_at DESC, v.version_id").to_arrow_table()
        return [VersionRecord(**r) for r in rows.to_pylist()]

    def ancestors(self, version: str | VersionRecord) -> list[VersionRecord]:
        """``version`` and every version it descends from (through all parents), newest first."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql(
                f"""WITH RECURSIVE up(version_id) AS (
                       SELECT ?::VARCHAR
                       UNION SELECT unnest(v.parents) FROM versions v JOIN up USING (version_id))
                   SELECT {_WITH_TAGS} JOIN up USING (version_id)
                   ORDER BY v.created_at DESC, v.version_id""",
                params=[vid],
            ).to_arrow_table()
        return [VersionRecord(**r) for r in rows.to_pylist()]

    def manifest(self, version: str | VersionRecord) -> dict[str, ParamRecord]:
        """Parameter name -> how it is stored in ``version`` (removed parameters included)."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM version_params WHERE version_id = ? ORDER BY name", params=[vid]
            ).to_arrow_table().to_pylist()
        return {r["name"]: _param_from_row(r) for r in rows}

    def first_parent_chain(self, version: str | VersionRecord, *, resolved: bool = False
                           ) -> list[tuple[str, str | None, dict[str, ParamRecord]]]:
        """``(version_id, first parent, manifest)`` from ``version`` down its first parents, in one
        query (what a checkout replays): ``version``'s whole manifest, and below it, for each
        group, the rows that hold bytes (not ``unchanged``) down to its last full copy (or its
        removal), where replaying it stops; the versions below the last such row are left out.
        (Every row to the root made each commit and checkout cost the history's depth times its
        groups: 2.3 s at depth 286 with 300 groups.) ``resolved``: ``version`` is a full version
        id read from the ledger (a commit's or checkout's own), so it is not looked up as a tag or
        prefix first; an id that is not there is then looked up as a reference."""
        vid = version.version_id if isinstance(version, VersionRecord) else str(version)
        if not (resolved or isinstance(version, VersionRecord)):
            vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.execute(
                """WITH RECURSIVE up(version_id, parent, depth) AS (
                       SELECT version_id, parents[1], 0 FROM versions WHERE version_id = ?
                       UNION ALL
                       SELECT v.version_id, v.parents[1], up.depth + 1 FROM versions v JOIN up ON v.version_id = up.parent),
                   params AS (SELECT up.depth, p.* FROM up JOIN version_params p USING (version_id)
                              WHERE up.depth = 0 OR p.encoding <> 'unchanged'),
                   stops AS (SELECT name, min(depth) AS stop FROM params WHERE encoding IN ('full', 'removed')
                             GROUP BY name),
                   kept AS (SELECT p.* FROM params p LEFT JOIN stops s USING (name)
                            WHERE p.depth = 0 OR s.stop IS NULL OR p.depth <= s.stop)
                   SELECT up.version_id, up.parent, k.name, k.dtype, k.shape, k.encoding, k.objects, k.meta_json,
                          k.nbytes
                   FROM up LEFT JOIN kept k USING (version_id)
                   WHERE up.depth <= (SELECT coalesce(max(depth), 0) FROM kept)
                   ORDER BY up.depth, k.name""",
                [vid],
            ).fetchall()
        if not rows and resolved and not isinstance(version, VersionRecord):
            # not a version id after all: a tag or prefix, or the error naming it
            return self.first_parent_chain(self.version(version))
        chain: list[tuple[str, str | None, dict[str, ParamRecord]]] = []
        for version_id, parent, name, dtype, shape, encoding, objects, meta_json, nbytes in rows:
            if not chain or chain[-1][0] != version_id:
                chain.append((version_id, parent, {}))
            if name is not None:  # a version without parameters has one row of NULLs
                chain[-1][2][name] = _param_from_row({
                    "name": name, "dtype": dtype, "shape": shape, "encoding": encoding, "objects": objects,
                    "meta_json": meta_json, "nbytes": nbytes})
        return chain

    def version_files(self, version_id: str) -> pa.Table:
        """The checkpoint-folder files of ``version_id``: its own, else those of its nearest first
        parent that stored any (:mod:`provenance.model_files`): ``name, size, object, skipped,
        version_id`` (the version that recorded them), by name."""
        with self._cursor() as con:
            return con.sql(
                """WITH RECURSIVE up(version_id, parent, depth) AS (
                       SELECT version_id, parents[1], 0 FROM versions WHERE version_id = $1
                       UNION ALL
                       SELECT v.version_id, v.parents[1], up.depth + 1 FROM versions v JOIN up ON v.version_id = up.parent),
                   owner AS (SELECT version_id FROM up WHERE version_id IN (
                                 SELECT version_id FROM version_files WHERE object IS NOT NULL)
                             ORDER BY depth LIMIT 1)
                   SELECT f.name, f.size, f.object, f.skipped, f.version_id FROM version_files f
                   JOIN owner USING (version_id) ORDER BY f.name""",
                params=[version_id],
            ).to_arrow_table()

    def versions_using(self, address: str) -> list[str]:
        """Ids of the versions whose manifest, stored Fisher, stored file or merge receipt refers to
        object ``address``."""
        with self._cursor() as con:
            rows = con.execute(
                """SELECT DISTINCT version_id FROM (
                       SELECT version_id, objects FROM version_params UNION ALL
                       SELECT version_id, objects FROM version_fishers)
                   WHERE list_contains(map_values(objects), $1)
                   UNION SELECT version_id FROM version_files WHERE object = $1 ORDER BY 1""",
                [address],
            ).fetchall()
        found = {r[0] for r in rows} | {v for a, v, _ in self.receipt_fishers() if a == address}
        return sorted(found)

    def receipt_fishers(self) -> list[tuple[str, str, str]]:
        """The Fisher objects Fisher merges read, as their receipts record them: ``(address,
        merge version, parameter)``. A receipt keeps them (``gc`` leaves them, ``verify`` checks
        them): a Fisher given to the merge was stored for it alone, and one stored with an input may
        be replaced later, while the receipt must still re-run."""
        with self._cursor() as con:
            rows = con.execute("SELECT version_id, params_json FROM merge_receipts ORDER BY version_id").fetchall()
        out = []
        for vid, params_json in rows:
            for name, group in json.loads(params_json or "{}").items():
                for objects in group.get("fishers") or ():
                    out.extend((address, vid, name) for address in (objects or {}).values())
        return out

    def object_references(self) -> pa.Table:
        """Every object a version refers to: ``address, version_id, name, kind`` (``param`` for a
        manifest entry, ``fisher`` for a stored Fisher or one a merge's receipt records, ``file`` for
        a checkpoint folder's file), one row per use."""
        fishers = self.receipt_fishers()
        receipt_fishers = pa.table({"address": pa.array([a for a, _, _ in fishers], pa.string()),
                                    "version_id": pa.array([v for _, v, _ in fishers], pa.string()),
                                    "name": pa.array([n for _, _, n in fishers], pa.string()),
                                    "kind": pa.array(["fisher"] * len(fishers), pa.string())})
        with self._cursor() as con:
            register(con, "receipt_fishers", receipt_fishers)
            try:
                return con.sql(
                    """SELECT unnest(map_values(objects)) AS address, version_id, name, 'param' AS kind
                       FROM version_params WHERE objects IS NOT NULL AND cardinality(objects) > 0
                       UNION ALL
                       SELECT unnest(map_values(objects)), version_id, name, 'fisher' FROM version_fishers
                       UNION ALL
                       SELECT object, version_id, name, 'file' FROM version_files WHERE object IS NOT NULL
                       UNION ALL
                       SELECT address, version_id, name, kind FROM receipt_fishers
                       ORDER BY address, version_id, name"""
                ).to_arrow_table()
            finally:
                unregister(con, "receipt_fishers")

    def param_encodings(self) -> pa.Table:
        """Every manifest entry's encoding with its version's first parent: ``version_id,
        first_parent, name, encoding`` (what decides which versions a patch chain reaches)."""
        with self._cursor() as con:
            return con.sql(
                """SELECT p.version_id, v.parents[1] AS first_parent, p.name, p.encoding
                   FROM version_params p JOIN versions v USING (version_id) ORDER BY 1, 3"""
            ).to_arrow_table()

    def version_problems(self) -> list[dict[str, Any]]:
        """Versions whose records do not hold together: a parent, run, tag or cited audit that
        points at nothing, or a manifest whose size disagrees with the version row."""
        with self._cursor() as con:
            rows = con.execute(
                """SELECT v.version_id, 'parent ' || p.parent || ' is not in the ledger'
                   FROM (SELECT version_id, unnest(parents) AS parent FROM versions) p
                   JOIN versions v USING (version_id) ANTI JOIN versions w ON w.version_id = p.parent
                   UNION ALL
                   SELECT v.version_id, 'the version row says ' || v.n_params || ' parameter groups, its manifest has '
                          || coalesce(m.n, 0)
                   FROM versions v LEFT JOIN (SELECT version_id, count(*) FILTER (WHERE encoding <> 'removed') AS n
                                              FROM version_params GROUP BY version_id) m USING (version_id)
                   WHERE v.n_params <> coalesce(m.n, 0)
                   UNION ALL
                   SELECT t.version_id, 'tag ' || t.name || ' points at a version that is not in the ledger'
                   FROM tags t ANTI JOIN versions v USING (version_id)
                   UNION ALL
                   SELECT m.version_id, 'its merge receipt cites audit ' || m.audit_id || ', which is not in the ledger'
                   FROM merge_receipts m ANTI JOIN audits a USING (audit_id) WHERE m.audit_id IS NOT NULL
                   ORDER BY 1, 2"""
            ).fetchall()
        return [{"version_id": v, "problem": p} for v, p in rows]

    def referenced_objects(self) -> set[str]:
        """Every object address some version's manifest, stored Fisher, stored file or merge receipt
        (:meth:`receipt_fishers`) refers to."""
        with self._cursor() as con:
            rows = con.execute(
                """SELECT DISTINCT unnest(map_values(objects)) FROM version_params WHERE objects IS NOT NULL
                   UNION SELECT DISTINCT unnest(map_values(objects)) FROM version_fishers
                   UNION SELECT object FROM version_files WHERE object IS NOT NULL"""
            ).fetchall()
        return {r[0] for r in rows} | {a for a, _, _ in self.receipt_fishers()}

    def fishers(self, version: str | VersionRecord) -> dict[str, dict[str, Any]]:
        """The stored Fisher of ``version``: parameter name -> ``{"kind", "objects", "meta"}``."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql(
                "SELECT name, kind, objects, meta_json FROM version_fishers WHERE version_id = ? ORDER BY name",
                params=[vid],
            ).to_arrow_table().to_pylist()
        return {r["name"]: {"kind": r["kind"], "objects": dict(r["objects"]),
                            "meta": json.loads(r["meta_json"]) if r["meta_json"] else {}} for r in rows}

    def receipt(self, version: str | VersionRecord) -> MergeReceipt | None:
        """The merge receipt of ``version`` (None when it is not a merge)."""
        vid = self.version(version).version_id
        with self._cursor() as con:
            rows = con.sql("SELECT * FROM merge_receipts WHERE version_id = ?", params=[vid]).to_arrow_table().to_pylist()
        if not rows:
            return None
        row = rows[0]
        row["groups"] = json.loads(row.pop("params_json") or "{}")
        return MergeReceipt.model_validate(row)

    def tags(self) -> list[TagRecord]:
        """Every tag with the version it names, by name."""
        with self._cursor() as con:
            rows = con.sql(
                """SELECT t.name, t.version_id, t.created_at, v.message FROM tags t
                   JOIN versions v USING (version_id) ORDER BY t.name"""
            ).to_arrow_table().to_pylist()
        return [TagRecord(**r) for r in rows]

    def tag(self, name: str, version: str | VersionRecord) -> VersionRecord:
        """Name ``version`` (a tag can be moved to another version by tagging again)."""
        check_tag(name)
        # a record is looked up by its id: one from another ledger must not leave a tag pointing at nothing
        with self.session():  # one connection for the lookup and the write
            ver = self.version(version.version_id if isinstance(version, VersionRecord) else version)
            with self.transaction() as tx:
                tx.set_tag(name, ver.version_id)
            return self.version(ver.version_id)  # read again: the record names its tags, this one too

    def find_tag(self, name: str) -> TagRecord:
        """The tag ``name`` and the version it names; a missing one is refused naming the tags there are."""
        tags = self.tags()
        found = next((t for t in tags if t.name == name), None)
        if found is None:
            raise no_tag(name, tags)
        return found

    def delete_tag(self, name: str) -> TagRecord:
        """Remove the tag ``name`` (the version it names is kept, as are merges and retractions that
        name it); returns the tag as it was."""
        with self.session():
            found = self.find_tag(name)
            with self.transaction() as tx:
                removed = tx.delete_tag(name)
            if not removed:  # taken by another process between the two
                raise no_tag(name, self.tags())
            return found

    def run(self, ref: str | RunRecord) -> RunRecord:
        """A run by record, full id or unambiguous id prefix (at least 4 hex digits)."""
        rid = ref.run_id if isinstance(ref, RunRecord) or hasattr(ref, "run_id") else str(ref)  # a Run too
        if not looks_like_id(rid):
            raise NotFoundError(f"no run {rid!r} (a run id is 4 to 32 hex digits)")
        rid = rid.lower()
        rows = self._runs("WHERE starts_with(r.run_id, ?) ORDER BY r.run_id LIMIT 6", [rid])
        if not rows:
            raise NotFoundError(f"no run {shown(rid)} in the ledger")
        if len(rows) > 1:
            listed = ", ".join(r.run_id[:12] for r in rows[:5])
            raise InvalidParameterError(f"run prefix {rid!r} is ambiguous: {listed}{', ...' if len(rows) > 5 else ''}")
        return rows[0]

    def runs(self) -> list[RunRecord]:
        """Every run, newest first."""
        return self._runs("ORDER BY r.started_at DESC, r.run_id", [])

    def _runs(self, where: str, params: list[Any]) -> list[RunRecord]:
        with self._cursor() as con:
            rows = con.sql(
                f"""SELECT r.*,
                       (SELECT map(list(dataset_id ORDER BY dataset_id), list(epochs ORDER BY dataset_id))
                        FROM run_datasets d WHERE d.run_id = r.run_id) AS datasets
                    FROM runs r {where}""",
                params=params,
            ).to_arrow_table().to_pylist()
        out = []
        for r in rows:
            r["params"] = json.loads(r.pop("params_json"))
            r["datasets"] = dict(r["datasets"]) if r["datasets"] else {}
            out.append(RunRecord(**r))
        return out

    def run_shards(self, run: str | RunRecord) -> list[RunShardRecord]:
        """Per shard of the run's datasets: examples seen and epochs (once the run has ended)."""
        rid = self.run(run).run_id
        with self._cursor() as con:
            rows = con.sql(
                "SELECT * FROM run_shards WHERE run_id = ? ORDER BY dataset_id, shard_index", params=[rid]
            ).to_arrow_table().to_pylist()
        return [RunShardRecord(**r) for r in rows]

    def checkpoints(self, run: str | RunRecord) -> list[CheckpointRecord]:
        """The versions saved as checkpoints of the run (:meth:`provenance.runs.Run.checkpoint`),
        by step; the version the run committed is its record's ``version_id``, not one of them."""
        rid = self.run(run).run_id
        with self._cursor() as con:
            rows = con.sql(
                """SELECT c.version_id, c.run_id, c.step, v.created_at FROM checkpoints c
                   JOIN versions v USING (version_id) WHERE c.run_id = ? ORDER BY c.step, v.created_at, c.version_id""",
                params=[rid]).to_arrow_table().to_pylist()
        return [CheckpointRecord(**r) for r in rows]

    def run_examples(self, run: str | RunRecord) -> pa.Table:
        """The run's logged examples in order: step, dataset, document key and doc_id."""
        rid = self.run(run).run_id
        with self._cursor() as con:
            return con.sql(
                """SELECT e.step, d.dataset_id, d.key, e.doc_id FROM run_examples e
                   JOIN documents d USING (doc_id) WHERE e.run_id = ? ORDER BY e.step, e.rowid""",
                params=[rid],
            ).to_arrow_table()


def no_tag(name: str, tags: list[TagRecord]) -> NotFoundError:
    """The refusal of a tag ``name`` that is not among ``tags``, naming the first few there are."""
    if not tags:
        return NotFoundError(f"no tag {shown(name)} (the ledger has no tags)")
    names = ", ".join(shown(t.name) for t in tags[:5])
    return NotFoundError(f"no tag {shown(name)} (tags: {names}{', ...' if len(tags) > 5 else ''})")

