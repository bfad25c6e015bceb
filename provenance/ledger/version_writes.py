"""Writes of model versions inside one ledger transaction: a version with its manifest and the
files of its folder, the Fishers stored with it, a merge's receipt, tags. Mixed into
:class:`~provenance.ledger.writer.LedgerWriter`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from provenance.ledger._common import _now
from provenance.records import ParamRecord, VersionRecord


class VersionWrites:
    """Writes of versions (``self`` is a :class:`~provenance.ledger.writer.LedgerWriter`)."""

    def insert_version(self, version: VersionRecord, params: Sequence[ParamRecord],
                       files: Sequence[Mapping[str, Any]] = ()) -> None:
        """The version, its manifest, and the files of the folder it was committed from (rows
        ``name, size, object, skipped``)."""
        self._insert("versions", pa.Table.from_pylist([version.model_dump(exclude={"tags"})]))
        self.made["version_id"] = version.version_id
        if files:
            schema = pa.schema([("version_id", pa.string()), ("name", pa.string()), ("size", pa.int64()),
                                ("object", pa.string()), ("skipped", pa.string())])
            self._insert("version_files", pa.Table.from_pylist(
                [{"version_id": version.version_id, "name": f["name"], "size": f["size"], "object": f["object"],
                  "skipped": f["skipped"]} for f in files], schema=schema))
        if params:
            rows = [
                {"version_id": version.version_id, "name": p.name, "dtype": p.dtype, "shape": p.shape,
                 "encoding": p.encoding, "objects": list(p.objects.items()),
                 "meta_json": json.dumps(p.meta) if p.meta else None, "nbytes": p.nbytes}
                for p in params
            ]
            schema = pa.schema([
                ("version_id", pa.string()), ("name", pa.string()), ("dtype", pa.string()),
                ("shape", pa.list_(pa.int64())), ("encoding", pa.string()),
                ("objects", pa.map_(pa.string(), pa.string())), ("meta_json", pa.string()), ("nbytes", pa.int64()),
            ])
            self._insert("version_params", pa.Table.from_pylist(rows, schema=schema))

    def set_fishers(self, version_id: str, rows: Sequence[dict], *, replace_all: bool = False) -> None:
        """Store (or replace) the Fisher of ``version_id``'s parameters named in ``rows``; with
        ``replace_all`` the Fisher stored for its other parameters goes too."""
        if replace_all:
            self._con.execute("DELETE FROM version_fishers WHERE version_id = ?", [version_id])
        if not rows:
            return
        self._con.execute(
            "DELETE FROM version_fishers WHERE version_id = ? AND list_contains(?, name)",
            [version_id, [r["name"] for r in rows]],
        )
        schema = pa.schema([("version_id", pa.string()), ("name", pa.string()), ("kind", pa.string()),
                            ("objects", pa.map_(pa.string(), pa.string())), ("meta_json", pa.string())])
        self._insert("version_fishers", pa.Table.from_pylist([
            {"version_id": version_id, "name": r["name"], "kind": r["kind"], "objects": list(r["objects"].items()),
             "meta_json": json.dumps(r["meta"], sort_keys=True)} for r in rows
        ], schema=schema))

    def insert_receipt(self, receipt: dict) -> None:
        schema = pa.schema([
            ("version_id", pa.string()), ("method", pa.string()), ("inputs", pa.list_(pa.string())),
            ("weights", pa.list_(pa.float64())), ("base_version", pa.string()), ("eps", pa.float64()),
            ("normalize", pa.bool_()), ("density", pa.float64()), ("kernel", pa.string()), ("params_json", pa.string()),
            ("audit_id", pa.string()), ("created_at", pa.timestamp("us")),
        ])
        self._insert("merge_receipts", pa.Table.from_pylist([receipt], schema=schema))

    def delete_tag(self, name: str) -> bool:
        """Remove the tag ``name``; False when there was none."""
        return bool(self._con.execute("DELETE FROM tags WHERE name = ? RETURNING name", [name]).fetchall())

    def set_tag(self, name: str, version_id: str) -> None:
        self._con.execute(
            "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", [name, version_id, _now()]
        ).fetchall()
