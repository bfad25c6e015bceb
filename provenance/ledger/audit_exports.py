"""An engine outside the database (:mod:`provenance.integrations.ray_dedup`):
:class:`ExportWrites`, mixed into :class:`provenance.ledger.audit_sql.AuditWrites`, writes the
scope's documents and the audit's pairs as Parquet files, one per database thread, and takes back
the pairs and the cluster labels found there."""

from __future__ import annotations

import pyarrow as pa

from provenance.ledger._common import glob_literal, register, unregister
from provenance.ledger.audit_staging import in_datasets, literal

#: How the exports for an engine outside the database are written: a file per database thread,
#: uncompressed (signatures and band keys are random numbers; compressing them only costs time).
_PARQUET_FILES = "(FORMAT parquet, PER_THREAD_OUTPUT true, ROW_GROUP_SIZE 65536, COMPRESSION uncompressed)"


class ExportWrites:
    """The exports and imports of an audit whose pairs are found elsewhere (``self._con``: the
    transaction's connection)."""

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
                f"""COPY (SELECT {columns} FROM documents d WHERE {in_datasets(scope)} AND EXISTS (
                        SELECT 1 FROM aud_scope s WHERE d.dataset_id = s.dataset_id
                        AND (s.shard_index IS NULL OR d.shard_index = s.shard_index)))
                    TO {literal(folder)} {_PARQUET_FILES}"""
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
            con.execute(f"INSERT INTO aud_groups SELECT doc_id, rep, size FROM read_parquet({_files(groups)})")
        if pairs:
            con.execute(
                f"""INSERT INTO audit_pairs SELECT $1, doc_a, doc_b, matches, jaccard, NULL, doc_a
                    FROM read_parquet({_files(pairs)})""", [audit_id])
        self._group_pairs(audit_id, all_pairs, docs="documents")

    def export_edges(self, audit_id: str, folder: str) -> int:
        """The audit's pairs as edges ``u < v`` in Parquet files in ``folder``; returns how many."""
        n = int(self._con.execute("SELECT count(*) FROM audit_pairs WHERE audit_id = $1", [audit_id]).fetchall()[0][0])
        if n:
            self._con.execute(
                f"""COPY (SELECT doc_a AS u, doc_b AS v FROM audit_pairs WHERE audit_id = {literal(audit_id)})
                    TO {literal(folder)} {_PARQUET_FILES}""")
        return n

    def set_clusters(self, audit_id: str, labels: list[str]) -> None:
        """Each pair's ``cluster`` from ``labels`` (Parquet files of ``doc, label``: a component's
        smallest doc_id for each of its documents but that one)."""
        con = self._con
        con.execute("UPDATE audit_pairs SET cluster = doc_a WHERE audit_id = $1", [audit_id])
        if labels:
            con.execute(
                f"""UPDATE audit_pairs SET cluster = l.label FROM read_parquet({_files(labels)}) l
                    WHERE audit_pairs.audit_id = $1 AND l.doc = audit_pairs.doc_a""", [audit_id])


def _files(paths: list) -> str:
    """``paths`` as the SQL list ``read_parquet`` reads each of, as named (:func:`glob_literal`)."""
    return literal([glob_literal(str(p)) for p in paths])
