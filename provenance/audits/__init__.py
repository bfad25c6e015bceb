"""Audits as queries: deduplication of a dataset or of everything in a version's lineage, and
taint by text similarity. The heavy work is SQL inside DuckDB (:mod:`provenance.ledger.audit_sql`):
Python holds the report, never the documents or the pair graph.

**Dedup.** Candidate pairs come from an LSH band self-join. The banding is chosen for the audit's
threshold ``t`` (the most rows per band such that a pair at ``t`` is a candidate with probability
at least 0.99; :meth:`provenance.fingerprints.Banding.for_threshold`), not taken from
registration: when it happens to equal the stored banding the stored band keys are used, else
the keys are hashed from signature slices in SQL. A candidate is a pair when its signatures agree
in at least ``ceil(t · k)`` of ``k`` positions (estimated Jaccard ≥ t, standard error
``sqrt(J(1−J)/k)``). ``verify`` re-reads the source text of the pairs within three standard errors
of ``t`` and drops those whose exact Jaccard of shingle sets is below ``t``. Pairs are grouped into
clusters (connected components, by label propagation in SQL). Documents with identical
signatures are grouped before the band join: a group of ``m`` copies is listed as ``m − 1`` pairs
(each copy with the group's first document) rather than all ``m(m − 1)/2``, so that boilerplate
repeated thousands of times stays cheap; ``near_copies`` still counts, for each document, every
document of the audit at or above the threshold. The **duplicate rate** is the
share of documents that are redundant: the documents in clusters, less one kept per cluster,
over all documents audited.

**Bucket window.** Many near-duplicates of one text (a template with a word changed, boilerplate
pages) share most band keys: comparing every two documents of such a band bucket costs ``m²/2``
candidates for ``m`` variants (8,000 variants of one template: 51 s and 3.0M pairs, against 10 s
and 1.4M pairs with the window; docs/audit-dedup.md). A bucket of more
than ``2 × bucket_window`` documents (default 64) instead pairs each of them with the
``bucket_window`` after it in an order shuffled per band, so that each band links every document
to other neighbours: the candidates grow as ``m × bucket_window × bands``. The pairs found are
exact pairs; a document with few near pairs among thousands can be left out of its cluster, and
a group linked to the rest by a few pairs could be a cluster of its own (measured against the
exact audit in docs/audit-dedup.md); ``pairs``, ``near_copies`` and the histogram count the pairs
compared. The order comes from the doc ids. ``summary.windowed_buckets`` says how many buckets
were windowed; ``bucket_window=0`` (or ``all_pairs``) compares every two.

:func:`audit_dedup` is here; the rest is one module each: :mod:`.banding` (the banding an
audit's threshold asks for, its S-curve), :mod:`.scope` (what is audited: datasets and the
lineages of versions, under one fingerprint config), :mod:`.skeleton` (:class:`AuditRun`, what
every audit shares), :mod:`.texts` (documents' texts read back from their shards, samples files
read), :mod:`.taint` (taint by text: documents equal or near to a text or a document) and
:mod:`.deletions` (:func:`delete_audits`).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from provenance.audits.banding import MIN_RECALL, banding_for, check_threshold, s_curve
from provenance.audits.deletions import delete_audits
from provenance.audits.scope import check_same_config, resolve_scope, resolve_target
from provenance.audits.skeleton import AuditRun
from provenance.audits.taint import UnsearchedWarning, describe_target, find_similar, taint_report
from provenance.audits.texts import exact_jaccard, iter_texts, read_samples, read_texts, sample_texts
from provenance.errors import InvalidParameterError
from provenance.files import naming, table_format
from provenance.fingerprints import FingerprintConfig
from provenance.ledger import LedgerStore
from provenance.progress import step
from provenance.records import check_flags
from provenance.results import DedupReport

BUCKET_WINDOW = 64  # neighbours of each document of a large band bucket (module doc)


def audit_dedup(
    ledger: LedgerStore,
    targets: Sequence[str],
    *,
    threshold: float = 0.8,
    verify: bool = False,
    pairs_file: str | os.PathLike | None = None,
    all_pairs: bool = False,
    bucket_window: int = BUCKET_WINDOW,
    store: bool = True,
    progress: Any = None,
    engine: Any = None,
) -> DedupReport:
    """Near-duplicates among the documents of ``targets`` (module doc), stored as an audit.
    Returns the report; ``report.pairs`` holds the pairs unless ``pairs_file`` is given, in
    which case they are written there as Parquet (CSV for a name ending in ``.csv``) and
    ``report.pairs`` is None (a stored audit's pairs stay readable with ``Ledger.audit_pairs``).
    The pairs span each cluster (``m`` identical copies give ``m − 1`` pairs: each with the first copy; ``report.pairs_mode == "spanning"``); ``all_pairs`` lists
    every pair instead (``m(m − 1)/2`` for ``m`` copies, and every near pair: no bucket window).
    ``bucket_window``: how many neighbours each document of a large band bucket is compared with
    (module doc; 0 compares every two). ``store=False`` keeps nothing in the
    ledger (and works on a read-only one). ``engine``: what finds the pairs and clusters instead of
    the database, with its ``near_pairs(tx, run, scope, all_pairs=)`` (which sets ``run.n_docs``,
    windows the band buckets wider than ``2 × run.window`` when ``run.window`` is not 0, and
    returns how many it windowed) and ``label_clusters(tx, audit_id)`` (Ray Data:
    :func:`provenance.integrations.ray_dedup.audit_dedup`); the report is the same."""
    threshold = check_threshold(threshold)
    check_flags(verify=verify, all_pairs=all_pairs, store=store)
    window = check_window(bucket_window)
    window = 0 if all_pairs else window
    pairs_path = ledger.output_path(pairs_file) if pairs_file is not None else None
    with ledger.session():  # the audit reads and writes several times: the database is opened once
        return _audit_dedup(ledger, targets, threshold, verify, pairs_file, pairs_path, all_pairs, window, store,
                            progress, engine)


def check_window(value: Any) -> int:
    """``bucket_window`` as a count of neighbours (0: none, every two compared), or an error. A
    window of 2³¹ or more windows no bucket a ledger can hold: it is taken as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidParameterError(f"bucket_window must be a whole number of documents, 0 or more; got {value!r}")
    return int(value) if value < 2**31 else 0


def _audit_dedup(ledger: LedgerStore, targets: Sequence[str], threshold: float, verify: bool,
                 pairs_file: str | os.PathLike | None, pairs_path: Any, all_pairs: bool, window: int, store: bool,
                 progress: Any, engine: Any) -> DedupReport:
    described, datasets, scope = resolve_scope(ledger, targets)
    run = AuditRun(ledger, "dedup", datasets, threshold, store=store, progress=progress)
    audit_id, cfg, k = run.audit_id, run.config, run.k
    with run.pairs(scope, all_pairs=all_pairs, engine=engine, window=window) as tx:
        wordless = tx.drop_wordless_pairs(audit_id, scope)  # nobody's copy, as in the gate
        verified = _verify(ledger, tx, audit_id, cfg, threshold, k) if verify else None
        rounds = engine.label_clusters(tx, audit_id) if engine is not None else tx.label_clusters(audit_id)
        step(progress)
        report = _dedup_report(tx, audit_id, run.n_docs, wordless)
        report["summary"]["windowed_buckets"] = run.windowed
        report.update({
            "audit_id": audit_id, "kind": "dedup", "created_at": run.created.isoformat(), "targets": described,
            "datasets": [d.dataset_id for d in datasets], "config_id": cfg.identity, "threshold": threshold,
            "banding": {**run.banding_report(), "s_curve": s_curve(run.banding)},
            "verify": verified, "cluster_rounds": rounds, "pairs_mode": "all" if all_pairs else "spanning",
            "bucket_window": window,
            "stored": store,
        })
        report["summary"]["seconds"] = run.seconds()
        report = DedupReport.model_validate(report).to_dict()
        run.record(tx, target=" ".join(t["target"] for t in described), passed=None, report=report,
                   params={"threshold": threshold, "verify": verify, "bands": run.banding.bands,
                           "rows": run.banding.rows, "all_pairs": all_pairs, "bucket_window": window})
        if pairs_path is not None:
            tmp = pairs_path.with_name(f".{pairs_path.name}.{audit_id[:8]}.tmp")
            try:
                with naming(pairs_path):  # a full disk names the file asked for; the audit is not stored
                    tx.copy_pairs(audit_id, str(tmp), csv=table_format(pairs_path) == "csv")
                os.replace(tmp, pairs_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        pairs = tx.pairs(audit_id) if pairs_file is None and not store else None
    if pairs_file is None:
        pairs = pairs if pairs is not None else ledger.audit_pairs(audit_id)
        report["pairs"] = pairs.drop_columns(["doc_a", "doc_b"]).to_pylist()
    else:
        report["pairs_file"] = str(pairs_file)
    return DedupReport.model_validate(report)


def _dedup_report(tx, audit_id: str, n_docs: int, wordless: int) -> dict[str, Any]:
    """Summary (``wordless``: the documents with no words, compared with nothing), clusters,
    near-copy counts and the similarity histogram, by queries."""
    size_counts = tx.cluster_sizes(audit_id)
    n_clusters = sum(r["n"] for r in size_counts)
    in_clusters = sum(r["size"] * r["n"] for r in size_counts)
    n_pairs, exact_pairs = tx.pair_counts(audit_id)
    largest = tx.largest_clusters(audit_id)
    near = tx.near_copy_counts(audit_id)
    hist = tx.similarity_histogram(audit_id)
    redundant = in_clusters - n_clusters
    return {
        "summary": {"documents": n_docs, "pairs": n_pairs, "exact_duplicate_pairs": exact_pairs,
                    "clusters": n_clusters, "documents_in_clusters": in_clusters, "redundant_documents": redundant,
                    "duplicate_rate": redundant / n_docs if n_docs else 0.0,
                    "largest_cluster": size_counts[-1]["size"] if size_counts else 0, "without_words": wordless},
        "cluster_sizes": [[r["size"], r["n"]] for r in size_counts],
        "largest_clusters": largest,
        "near_copies": near,
        "similarity_histogram": [[min(r["lo"], 1.0), min(r["lo"] + 0.05, 1.0), r["n"]] for r in hist],
    }


def _verify(ledger: LedgerStore, tx, audit_id: str, cfg: FingerprintConfig, threshold: float, k: int) -> dict[str, Any]:
    """Exact Jaccard for the pairs within three standard errors of ``threshold``, read from the
    source files where they are still readable and unchanged; pairs below ``threshold`` by the
    exact measure are dropped. Returns counts, and why some could not be checked."""
    margin = 3 * math.sqrt(max(threshold * (1 - threshold), 1e-12) / k)
    near = tx.pairs_near(audit_id, threshold, margin)
    wanted: dict[tuple[str, int], set[int]] = defaultdict(set)
    for r in near:
        wanted[(r["da"], r["sa"])].add(r["ra"])
        wanted[(r["db"], r["sb"])].add(r["rb"])
    texts, unreadable = read_texts(ledger, wanted)
    exact_rows, skipped = [], 0
    for r in near:
        ta, tb = texts.get((r["da"], r["sa"], r["ra"])), texts.get((r["db"], r["sb"], r["rb"]))
        if ta is None or tb is None:
            skipped += 1
            continue
        exact_rows.append((r["doc_a"], r["doc_b"], exact_jaccard(cfg, ta, tb)))
    table = pa.table({"doc_a": pa.array([r[0] for r in exact_rows], pa.int64()),
                      "doc_b": pa.array([r[1] for r in exact_rows], pa.int64()),
                      "exact": pa.array([r[2] for r in exact_rows], pa.float64())})
    tx.set_exact(audit_id, table)
    rejected = sum(1 for r in exact_rows if r[2] < threshold)
    tx.drop_pairs_below(audit_id, threshold)
    return {"margin": margin, "near_threshold": len(near), "checked": len(exact_rows), "rejected": rejected,
            "not_checked": skipped, "unreadable": unreadable}


__all__ = ["BUCKET_WINDOW", "MIN_RECALL", "AuditRun", "UnsearchedWarning", "audit_dedup", "banding_for",
           "check_same_config", "check_threshold", "check_window", "delete_audits", "describe_target", "exact_jaccard",
           "find_similar", "iter_texts", "read_samples", "read_texts", "resolve_scope", "resolve_target", "s_curve",
           "sample_texts", "taint_report"]
