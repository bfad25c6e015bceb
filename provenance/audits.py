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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from provenance import columns
from provenance.errors import (
    FingerprintMismatchError,
    InvalidParameterError,
    NotFoundError,
    ProvenanceError,
    ProvenanceWarning,
    SourceError,
    warn,
)
from provenance.files import json_reason, naming
from provenance.fingerprints import Banding, FingerprintConfig
from provenance.ledger import LedgerStore
from provenance.ledger._common import _now
from provenance.ledger.lineage import check_audit_kind
from provenance.lineage import lineage, taint
from provenance.plain import utc_time
from provenance.progress import stage, step
from provenance.records import DatasetRecord, RegistrationResult, VersionRecord
from provenance.results import DedupReport, TaintReport

MIN_RECALL = 0.99  # probability that a pair at the threshold becomes a candidate
BUCKET_WINDOW = 64  # neighbours of each document of a large band bucket (module doc)


def check_threshold(value: float, name: str = "threshold") -> float:
    """``value`` as a float in (0, 1], or an error naming ``name``."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < t <= 1.0 or math.isnan(t):
        raise InvalidParameterError(f"{name} must be in (0, 1], got {value!r}")
    return t


def banding_for(num_perm: int, threshold: float) -> Banding:
    """The banding an audit at ``threshold`` uses (module doc); one band of every position at 1."""
    if threshold >= 1.0:
        return Banding(bands=1, rows=num_perm)
    return Banding.for_threshold(num_perm, threshold, MIN_RECALL)


def s_curve(banding: Banding, steps: int = 40) -> list[list[float]]:
    """``[similarity, P(candidate)]`` over [0, 1]: the S-curve of ``banding``."""
    return [[i / steps, banding.probability(i / steps)] for i in range(steps + 1)]


# ---- what is audited --------------------------------------------------------------------------


def resolve_scope(ledger: LedgerStore, targets: Sequence[str]) -> tuple[list[dict[str, Any]], list[DatasetRecord], pa.Table]:
    """Each target, a dataset (``NAME`` or ``NAME@VERSION``) or a version (id, prefix or tag:
    everything in its lineage), as ``(what it was, datasets, scope table)``. The scope table has
    ``dataset_id, shard_index`` (null: the whole dataset). All datasets must share one
    fingerprint config: signatures made under different configs do not compare."""
    if not targets:
        raise InvalidParameterError("give at least one dataset or version to audit")
    described, rows = [], []
    for target in targets:
        kind, found = resolve_target(ledger, target)
        if not isinstance(target, str):  # a record the library returned: described by its id
            target = found.dataset_id if kind == "dataset" else found.version_id
        if kind == "dataset":
            described.append({"target": target, "kind": "dataset", "id": found.dataset_id})
            rows.append((found.dataset_id, None))
            continue
        lin = lineage(ledger, found)
        if not lin.shards.num_rows:
            named = found.label() if target == lin.version else f"{lin.version[:12]} ({target})"  # its tags, not its id twice
            raise InvalidParameterError(
                f"version {named} has an empty lineage: no run in its history recorded any data"
                + (f"; versions without a run: {', '.join(v[:12] for v in lin.unrecorded)}" if lin.unrecorded else "")
            )
        described.append({"target": target, "kind": "version", "id": lin.version, "label": found.label()})
        rows += [(s["dataset_id"], s["shard_index"]) for s in lin.shards.to_pylist()]
    whole = {d for d, s in rows if s is None}
    rows = sorted({(d, s) for d, s in rows if s is None or d not in whole}, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    datasets = [ledger.dataset(d) for d in sorted({d for d, _ in rows})]
    check_same_config(datasets)
    scope = pa.table({"dataset_id": columns.strings([r[0] for r in rows]),
                      "shard_index": columns.ints([r[1] for r in rows], pa.int32())})
    return described, datasets, scope


def resolve_target(ledger: LedgerStore, target: Any) -> tuple[str, Any]:
    """``("dataset", DatasetRecord)`` or ``("version", VersionRecord)`` for a target that may be
    either. ``dataset:NAME[@VERSION]`` and ``version:REF`` say which; a bare name that is both a
    dataset and a tag (or version id) is ambiguous and refused, naming both."""
    if isinstance(target, (DatasetRecord, RegistrationResult)):
        return "dataset", ledger.dataset(target)
    if isinstance(target, VersionRecord):
        return "version", ledger.version(target)
    kind, sep, rest = target.partition(":")
    if sep and kind == "dataset":
        return "dataset", ledger.dataset(rest)
    if sep and kind == "version":
        return "version", ledger.version(rest)
    try:
        ds = ledger.dataset(target)
    except (NotFoundError, InvalidParameterError):
        ds = None
    try:
        ver = ledger.version(target)
    except NotFoundError as exc:
        if ds is None:
            raise NotFoundError(f"{target!r} is neither a dataset nor a version in the ledger ({exc})") from None
        return "dataset", ds
    if ds is not None:
        raise InvalidParameterError(
            f"{target!r} is ambiguous: it names dataset {ds.dataset_id} and version {ver.version_id[:12]}; "
            f"write dataset:{target} or version:{target}"
        )
    return "version", ver


class AuditRun:
    """What every audit shares: the banding its threshold asks for over its datasets' one
    fingerprint config, an id and a time, and one transaction (a scratch one when the audit stores
    nothing) in which the audited documents, and any probes, are staged and joined by LSH bands
    into ``audit_pairs``. The dedup audit, the pre-merge gate and the memorization audit are each
    this skeleton plus their own questions to the pairs."""

    def __init__(self, ledger: LedgerStore, kind: str, datasets: Sequence[DatasetRecord], threshold: float, *,
                 store: bool = True, progress: Any = None):
        self.ledger, self.kind, self.store, self.progress = ledger, kind, store, progress
        self.started = time.perf_counter()
        self.threshold = check_threshold(threshold)
        self.config = check_same_config(datasets)
        self.k = self.config.num_perm
        self.banding = banding_for(self.k, self.threshold)
        self.min_matches = math.ceil(self.threshold * self.k - 1e-9)
        self.stored_bands = all((d.bands, d.rows) == (self.banding.bands, self.banding.rows) for d in datasets)
        self.audit_id = uuid.uuid4().hex
        self.n_docs = 0
        self.window = self.windowed = 0  # the bucket window asked for, and the buckets it windowed (pairs())
        self.created = _now()

    @contextlib.contextmanager
    def pairs(self, scope: pa.Table, *, probes: np.ndarray | None = None, all_pairs: bool = False,
              stage_label: str = "documents", engine: Any = None, window: int = 0,
              classes: str | None = None) -> Iterator[Any]:
        """The transaction, once ``scope``'s documents (and ``probes``, signatures of texts that
        are not in the ledger) are staged and their near pairs found, by the database or by
        ``engine`` (:func:`audit_dedup`); the audit's temporary tables are dropped when the block
        ends. ``self.n_docs``: the documents staged. ``window``: the bucket window (module doc;
        0: every two documents of a bucket), ``self.windowed``: the buckets it windowed.
        ``classes``: ``"sides"`` or ``"samples"``, the pairs to find are only those across them
        (:meth:`provenance.ledger.audit_pairs.PairWrites.near_pairs`)."""
        self.window = window
        stage(self.progress, f"{self.kind}: {stage_label}", 4)
        with self.ledger.transaction(scratch=not self.store) as tx:
            if engine is not None:  # it reads the documents itself: nothing is staged
                if probes is not None:
                    raise InvalidParameterError("an audit engine takes no probes")
                self.windowed = engine.near_pairs(tx, self, scope, all_pairs=all_pairs) or 0
                step(self.progress, 2)
            else:
                self.n_docs = tx.stage_documents(scope, in_place=probes is None)
                if probes is not None:
                    tx.stage_probes(probes)
                step(self.progress)
                self.windowed = tx.near_pairs(self.audit_id, self.banding.bands, self.banding.rows, self.min_matches,
                                              stored=self.stored_bands and probes is None, collapse=True,
                                              all_pairs=all_pairs, window=window, classes=classes)
                step(self.progress)
            yield tx
            tx.drop_audit_tables()
            step(self.progress)

    def banding_report(self) -> dict[str, Any]:
        """How the pairs were found: bands, rows, the chance to find a pair at the threshold."""
        return {"bands": self.banding.bands, "rows": self.banding.rows, "num_perm": self.k,
                "min_matches": self.min_matches, "p_at_threshold": self.banding.probability(self.threshold),
                "stored_band_keys": self.stored_bands}

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def record(self, tx: Any, *, target: str, params: dict[str, Any], passed: bool | None,
               report: dict[str, Any]) -> None:
        """Store the audit's row (nothing when the audit stores nothing)."""
        tx.insert_audit({"audit_id": self.audit_id, "kind": self.kind, "target": target, "params": params,
                         "passed": passed, "report": report, "created_at": self.created})


def check_same_config(datasets: Sequence[DatasetRecord]) -> FingerprintConfig:
    """The one fingerprint config of ``datasets``, or an error naming two that differ."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.config_id != first.config_id:
            raise FingerprintMismatchError(
                f"datasets fingerprinted under different configs cannot be compared: {first.dataset_id} uses "
                f"{first.config_id} but {ds.dataset_id} uses {ds.config_id}; re-register one with the other's config"
            )
    return first.config


# ---- dedup ------------------------------------------------------------------------------------


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
                    tx.copy_pairs(audit_id, str(tmp), csv=pairs_path.suffix.lower() == ".csv")
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


def exact_jaccard(cfg: FingerprintConfig, a: str, b: str) -> float:
    """Jaccard similarity of the two texts' shingle sets under ``cfg`` (1 for two empty texts)."""
    sa, sb = set(cfg.shingles(a)), set(cfg.shingles(b))
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def read_texts(ledger: LedgerStore, wanted: dict[tuple[str, int], set[int] | None]) -> tuple[dict[tuple[str, int, int], str], list[str]]:
    """The texts of the rows ``wanted`` per ``(dataset_id, shard_index)`` (None: every row), read
    from the shards' files after checking each still hashes as registered. Shards that cannot be
    read are listed with the reason instead."""
    from provenance.datasets import read_back

    texts: dict[tuple[str, int, int], str] = {}
    unreadable: list[str] = []
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for dataset_id, shard_index in wanted:
        by_dataset[dataset_id].append(shard_index)
    for dataset_id, indexes in sorted(by_dataset.items()):
        ds = ledger.dataset(dataset_id)
        shards = {s.shard_index: s for s in ledger.shards(ds)}
        for index in sorted(indexes):
            rows = wanted[(dataset_id, index)]
            wanted_rows = None if rows is None else np.fromiter(rows, np.int64)
            try:
                for batch in read_back(ds, shards[index]):
                    hit = np.ones(len(batch.rows), bool) if wanted_rows is None else np.isin(batch.rows, wanted_rows)
                    for i in np.flatnonzero(hit).tolist():
                        texts[(dataset_id, index, int(batch.rows[i]))] = batch.texts[i].as_py()
            except (OSError, ProvenanceError) as exc:
                unreadable.append(f"{dataset_id} shard {shards[index].name}: {exc}")
    return texts, unreadable


def iter_texts(ledger: LedgerStore, rows: Sequence[dict[str, Any]], unreadable: list[str]) -> Iterator[tuple[dict, str]]:
    """``(row, text)`` for the documents ``rows`` (``dataset_id, shard_index, row_index``, and
    whatever else the caller keeps in them), read one shard at a time so that memory holds one
    shard's texts; shards that cannot be read are added to ``unreadable`` with the reason."""
    by_shard: dict[tuple[str, int], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_shard[(r["dataset_id"], r["shard_index"])][r["row_index"]].append(r)
    for (dataset_id, shard_index), wanted in sorted(by_shard.items()):
        texts, bad = read_texts(ledger, {(dataset_id, shard_index): set(wanted)})
        unreadable += bad
        for (_, _, row), text in texts.items():
            for r in wanted[row]:
                yield r, text


def read_samples(path: str | os.PathLike) -> list[str]:
    """The samples of ``path``: JSONL (``.jsonl``/``.json``: objects with a ``text`` field, or
    strings), else plain text, one sample per non-empty line. Errors name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the samples file ({exc.strerror or exc})") from None
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if raw.startswith(magic):
            raise SourceError(f"{path}: the samples file is {kind}-compressed; decompress it first "
                              "(samples are read as JSONL or plain text)")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{path}: line {line} is not UTF-8 (byte {exc.start})") from None
    samples = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    content = content.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            samples.append(line)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: line {number} is not JSON ({json_reason(exc)} at column {exc.colno})") from None
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str):
            raise SourceError(f"{path}: line {number} has no text (a string, or an object with a \"text\" string)")
        try:
            text.encode("utf-8")  # json reads "\\ud800" as an unpaired surrogate, which is no text
        except UnicodeEncodeError as exc:
            raise SourceError(f"{path}: line {number}: the text holds an unpaired surrogate at character {exc.start}, "
                              "which is not valid Unicode") from None
        samples.append(text)
    if not samples:
        raise SourceError(f"{path}: the samples file is empty")
    return samples



# ---- taint by text ----------------------------------------------------------------------------


def describe_target(dataset: str | None, shard: str | None, key: str | None) -> str:
    """A taint target as reports name it: ``NAME``, ``NAME shard S`` or ``NAME KEY``."""
    return dataset if shard is None and key is None else f"{dataset} shard {shard}" if key is None else f"{dataset} {key}"


def taint_report(ledger: LedgerStore, *, dataset: str | None = None, shard: str | None = None, key: str | None = None,
                 text: str | None = None, near: float | None = None) -> TaintReport:
    """:func:`provenance.lineage.taint` with a readable target, and by text: ``text`` is found by
    exact hash among all documents (of every fingerprint config), and with ``near`` every
    document of estimated Jaccard ≥ ``near`` to the target (the text, or the document ``key``)
    taints the versions that trained on it."""
    from provenance.lineage import check_target, tainted_versions, target_rows

    check_target(dataset, shard, key, text)
    if near is not None:
        near = check_threshold(near, "near")
    if text is None and (near is None or key is None):
        if near is not None and key is None:
            raise InvalidParameterError("--near needs a document: a key (with its dataset) or a text")
        target = describe_target(dataset, shard, key)
        with ledger.session():
            rows = target_rows(ledger, dataset, shard=shard, key=key)  # raises without a dataset
            versions = taint(ledger, targets=rows)
            if key is not None:
                retractions = ledger.retractions_of([r["doc_id"] for r in rows])
            else:
                retractions = ledger.retractions_of([], [(r["dataset_id"], r["shard_index"]) for r in rows])
        return TaintReport(target=target, near=None, matches=[], versions=versions, retractions=retractions)
    if text is not None and not text.strip():
        raise InvalidParameterError("the text to look for is empty")
    matches = find_similar(ledger, text=text, dataset=dataset, key=key, near=near)
    with ledger.session():
        runs = ledger.runs_seeing([m["doc_id"] for m in matches], [m["dataset_id"] for m in matches]).to_pylist() \
            if matches else []
        graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
        retractions = ledger.retractions_of([m["doc_id"] for m in matches]) if matches else []
    target = f"text ({len(text)} characters)" if text is not None else f"{dataset} {key}"
    return TaintReport(target=target, near=near, matches=matches, versions=tainted_versions(graph, runs),
                       retractions=retractions)


class UnsearchedWarning(ProvenanceWarning):
    """Datasets of another fingerprint config were not searched for copies of a document, because
    its text could not be read back (a retraction's audit does not pass over it)."""


def _text_probes(ledger: LedgerStore, text: str, probed: set[str] = frozenset()) -> list[tuple]:
    """``text`` fingerprinted under each config of the ledger's datasets but ``probed``: one
    probe per config (a signature compares only with signatures of its own config)."""
    configs: dict[str, Any] = {}
    for ds in ledger.datasets(all_versions=True):
        if ds.config_id not in probed:
            configs.setdefault(ds.config_id, ds.config)
    probes = []
    for cid, cfg in configs.items():
        fp = cfg.fingerprint_batch([text])
        probes.append((cid, int(fp.exact_hash[0]), fp.signatures[0], fp.band_keys[0], cfg,
                       (cfg.banding.bands, cfg.banding.rows)))
    return probes


def _other_configs(ledger: LedgerStore, targets: Sequence[Any], probed: set[str]) -> list[tuple]:
    """Probes for the datasets fingerprinted under configs other than ``probed``: the target
    document's text, read back from its shard, fingerprinted under each. A text that cannot be
    read is warned about (:class:`UnsearchedWarning`): copies there, exact ones too, are then not
    looked for."""
    others = sorted({ds.config_id for ds in ledger.datasets(all_versions=True)} - probed)
    if not others or not targets:
        return []
    text, unreadable, seen = None, [], set()
    for doc in targets:  # each version's copy of the document, newest first, until one reads back
        shard = ledger.shards(doc.dataset_id)[doc.shard_index]
        if (shard.shard_id, doc.row_index) in seen:  # the same file as a version already tried
            continue
        seen.add((shard.shard_id, doc.row_index))
        texts, failed = read_texts(ledger, {(doc.dataset_id, doc.shard_index): {doc.row_index}})
        text, unreadable = texts.get((doc.dataset_id, doc.shard_index, doc.row_index)), unreadable + failed
        if text is not None:
            break
    if text is None:
        doc = targets[0]
        warn(f"{doc.dataset_id} {doc.key}: its text could not be read ({'; '.join(unreadable) or 'not found'}), "
             f"so datasets fingerprinted under another config ({', '.join(others)}) were not "
             "searched for copies of it; search them by text (--text FILE)", UnsearchedWarning)
        return []
    return _text_probes(ledger, text, probed)


def find_similar(ledger: LedgerStore, *, text: str | None = None, dataset: str | None = None, key: str | None = None,
                 near: float | None = None) -> list[dict[str, Any]]:
    """Documents equal to the target (same exact hash) or, with ``near``, of estimated Jaccard at
    least ``near``, in every dataset: each fingerprinted under its own config is searched with the
    target's text fingerprinted under that config (a key's text is read back from its shard; the
    target's own config uses its stored fingerprint). Candidates come from the stored band keys when they find a pair at
    ``near`` with probability ≥ 0.99, else every signature of the config is compared."""
    with ledger.session():
        if text is None:  # the document in each version of the dataset that holds it
            from provenance.lineage import target_documents

            probes = []
            targets = target_documents(ledger, dataset, key)
            for doc in targets:
                ds = ledger.dataset(doc.dataset_id)
                probes.append((ds.config_id, doc.exact_hash, doc.signature, doc.band_keys, ds.config,
                               (ds.bands, ds.rows)))
            probes += _other_configs(ledger, targets, {p[0] for p in probes})
        else:
            probes = _text_probes(ledger, text)
        found: dict[int, dict[str, Any]] = {}
        for cid, exact, sig, band_keys, _cfg, banding in probes:
            k = len(sig)
            min_matches = None if near is None else math.ceil(near * k - 1e-9)
            use_bands = near is not None and Banding(*banding).probability(near) >= MIN_RECALL
            rows = ledger.similar_documents(cid, exact, sig, min_matches, band_keys if use_bands else None,
                                            banding if use_bands else None)
            for r in rows.to_pylist():
                r["jaccard"] = r["matches"] / k
                r["config_id"] = cid
                found.setdefault(r["doc_id"], r)
    return sorted(found.values(), key=lambda r: (-r["jaccard"], r["dataset_id"], r["key"]))


# ---- stored audits ------------------------------------------------------------------------------

def delete_audits(ledger: LedgerStore, audit_ids: Sequence[str] = (), *, kind: str | None = None,
                  before: datetime | str | None = None, pairs_only: bool = False,
                  dry_run: bool = False) -> dict[str, Any]:
    """Delete stored audits, their reports and their pairs; with ``pairs_only``, their pairs
    only (the report stays readable with :meth:`Ledger.audit`; :meth:`Ledger.audit_pairs` then
    says the pairs were deleted). The pairs are what grows: one gate or memorization audit of a
    large lineage stores millions.

    The audits are those named by ``audit_ids`` (ids or prefixes of at least 4 hex digits), else
    every stored one, narrowed to ``kind`` and to those made before ``before`` (a datetime or ISO
    string; naive means UTC). Naming none and giving no ``before`` is refused: that would be all.
    An audit that a merge receipt cites keeps its report: named, it is refused unless
    ``pairs_only``; selected by ``before``, it is left whole and listed in ``kept``. The deletion
    is one transaction. ``dry_run``: only say what would go.

    Returns ``deleted`` (``audit_id, kind, target, created_at, pairs``), ``pairs`` (how many
    pairs go), ``kept`` (``audit_id, cited_by``), ``skipped`` (named audits that ``kind`` or
    ``before`` leave out, or whose pairs were deleted before: ``audit_id, why``), ``pairs_only``
    and ``dry_run``. The space the
    rows held is reused by later writes, and given back where it ends the database file."""
    check_audit_kind(kind)
    before = utc_time(before, "before")
    names = [audit_ids] if isinstance(audit_ids, str) else list(audit_ids)
    if not names and before is None:
        raise InvalidParameterError("name the audits to delete, or give before= (a date: the audits made before it)")
    ids = sorted({ledger.audit(a)["audit_id"] for a in names}) if names else None  # not found: says which
    if dry_run:
        return _deletion(ledger.select_audits(ids), ids, kind, before, pairs_only, dry_run=True)
    with ledger.transaction() as tx:
        result = _deletion(tx.select_audits(ids), ids, kind, before, pairs_only, dry_run=False)
        when = _now()
        for row in result["deleted"]:
            tx.delete_audit(row["audit_id"], pairs_only=pairs_only, when=when)
    return result


def _deletion(rows: list[dict[str, Any]], named: list[str] | None, kind: str | None, before: datetime | None,
              pairs_only: bool, *, dry_run: bool) -> dict[str, Any]:
    """What goes (module function :func:`delete_audits`): ``rows`` are every stored audit, or
    the named ones; those that ``kind``, ``before`` or (``pairs_only``) pairs deleted before
    leave out are listed in ``skipped`` with why."""
    skipped = []
    for r in rows:
        why = (f"a {r['kind']} audit, not {kind}" if kind is not None and r["kind"] != kind else
               f"made {r['created_at']:%Y-%m-%d %H:%M} UTC, not before {before:%Y-%m-%d %H:%M}"
               if before is not None and r["created_at"] >= before else
               "its pairs were deleted before" if pairs_only and r["pairs_deleted_at"] is not None else None)
        if why is not None:
            skipped.append({"audit_id": r["audit_id"], "why": why})
    present = {r["audit_id"] for r in rows}
    skipped += [{"audit_id": a, "why": "no longer in the ledger (deleted meanwhile)"} for a in named or () if a not in present]
    out = {s["audit_id"] for s in skipped}
    rows = [r for r in rows if r["audit_id"] not in out]
    cited = [r for r in rows if r["cited_by"] and not pairs_only]
    if cited and named is not None:
        r = cited[0]
        more = f" and {len(r['cited_by']) - 1} more" if len(r["cited_by"]) > 1 else ""
        raise InvalidParameterError(
            f"audit {r['audit_id'][:12]} is cited by the merge receipt of version {r['cited_by'][0][:12]}{more}: "
            "its report stays; delete its pairs only (--pairs-only; pairs_only=True)")
    deleted = [{k: r[k] for k in ("audit_id", "kind", "target", "created_at", "pairs")} for r in rows
               if pairs_only or not r["cited_by"]]
    return {"deleted": deleted, "pairs": sum(r["pairs"] for r in deleted),
            "kept": [{"audit_id": r["audit_id"], "cited_by": r["cited_by"]} for r in cited],
            "skipped": skipped if named is not None else [], "pairs_only": pairs_only, "dry_run": dry_run}
