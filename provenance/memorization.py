"""The memorization audit: which training documents of a version's lineage its generated samples
reproduce, and how often training saw them.

For each sample (a JSONL file of ``{"text": ...}`` objects or strings, or a plain-text file with
one sample per non-empty line), the audit reports the training documents in the version's lineage
that it

- near-duplicates: estimated Jaccard of the MinHash signatures (under the lineage's fingerprint
  config) at least ``threshold``, candidates from an LSH band join in DuckDB; or
- shares an exact span of at least ``span`` words with (50 by default: Carlini et al.'s
  extractable memorization counts 50-token continuations), found from hashed word windows of the
  source text (:mod:`provenance.ngrams`); ``span_words`` is the longest such run and
  ``span_text`` its words (normalised: lower case, punctuation dropped; the first
  :data:`SPAN_TEXT_CHARS` characters), the text a reader checks.

Each match carries its **exposure**: how many times training saw that document and its
near-copies in the lineage (logged examples where the run logged them, else declared epochs),
the figure Kandpal et al. tie to memorization (a text seen ten times is regenerated far more often
than one seen once).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from provenance import columns
from provenance.audits import AuditRun, check_threshold, iter_texts, read_samples, resolve_scope, sample_texts
from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger import LedgerStore
from provenance.lineage import ancestry
from provenance.ngrams import SPAN_TEXT_CHARS, WindowIndex, check_span, ngram_hashes
from provenance.ngrams import words as normalised_words
from provenance.progress import step
from provenance.records import VersionRecord, check_flags
from provenance.results import MemorizationReport


def _version(ledger: LedgerStore, ref: Any) -> VersionRecord:
    """The audited version: a version only (its lineage's runs give the exposure), not a dataset."""
    try:
        return ledger.version(ref)
    except NotFoundError as exc:
        try:
            ds = ledger.dataset(ref)
        except (NotFoundError, InvalidParameterError):
            raise exc from None
        raise NotFoundError(f"{exc}; {ds.dataset_id} is a dataset: the memorization audit takes a model version and "
                            "searches its lineage's training data (prov audit dedup takes datasets)") from None


def audit_memorization(
    ledger: LedgerStore,
    version: str,
    samples: str | os.PathLike | Sequence[str],
    *,
    threshold: float = 0.8,
    span: int = 50,
    store: bool = True,
    progress: Any = None,
) -> MemorizationReport:
    """Match ``samples`` (a file, or texts) against the training documents of ``version``'s
    lineage (module doc); store the audit (unless ``store=False``, which also works on a
    read-only ledger) and return its report."""
    threshold = check_threshold(threshold)
    span = check_span(span, "span")
    check_flags(store=store)
    texts = sample_texts(samples)
    if not texts:
        raise InvalidParameterError("no samples given")
    for i, text in enumerate(texts):  # before the lineage is read; named as samples, not documents
        if not isinstance(text, str):
            raise InvalidParameterError(f"sample {i} is {'null' if text is None else type(text).__name__}; "
                                        "every sample is a str")
    described, datasets, scope = resolve_scope(ledger, [_version(ledger, version)])
    run = AuditRun(ledger, "memorization", datasets, threshold, store=store, progress=progress)
    vid, cfg, k, audit_id = described[0]["id"], run.config, run.k, run.audit_id
    sigs = cfg.signatures(texts)
    runs = [r for r in ancestry(ledger, vid)[1].column("run_id").to_pylist() if r]
    with run.pairs(scope, probes=sigs, stage_label="samples", classes="samples") as tx:
        # documents (and samples) with identical signatures share a group; pairs join groups'
        # first members: here only those with samples, then (below) those with matched documents
        sample_rep = {-1 - doc: rep for doc, rep in tx.sample_groups().items()}
        partners: dict[int, dict[int, float]] = defaultdict(dict)
        for a, b, jaccard in tx.group_pairs(audit_id):
            partners[a][b] = partners[b][a] = jaccard

        def members(reps: set[int]) -> dict[int, list[int]]:
            """The training documents of each group ``reps`` names."""
            out: dict[int, list[int]] = defaultdict(list)
            for doc, rep in tx.group_members(sorted(reps)):
                out[rep].append(doc)
            return out

        first = members(set(sample_rep.values()) | {p for r in sample_rep.values() for p in partners[r]})
        spans, unreadable = _spans(ledger, tx, texts, span) if span else ({}, [])
        step(progress)
        matches: dict[tuple[int, int], dict[str, Any]] = {}
        wordless = {i for i, t in enumerate(texts) if not normalised_words(t)}  # "..." copies nothing
        for sample, rep in sample_rep.items():
            if sample in wordless:
                continue
            for doc in first[rep]:  # the same signature as the sample
                matches[(sample, doc)] = {"jaccard": 1.0, "span_words": 0, "span_text": ""}
            for other, jaccard in partners[rep].items():
                for doc in first[other]:
                    matches[(sample, doc)] = {"jaccard": jaccard, "span_words": 0, "span_text": ""}
        for (sample, doc), (words, text) in spans.items():
            entry = matches.setdefault((sample, doc), {"jaccard": None})
            entry["span_words"], entry["span_text"] = words, text
        matched = sorted({d for _, d in matches})
        doc_rep = tx.groups_of(matched)
        focus = sorted({r for r in doc_rep.values() if r >= 0})  # the groups of samples were paired with all
        if focus:  # each matched document's near copies in training
            tx.partner_pairs(audit_id, focus, run.banding.bands, run.banding.rows, run.min_matches,
                             stored=run.stored_bands)
        exposure, near = _exposure(ledger, tx, audit_id, runs, matched, doc_rep)
        docs = {r["doc_id"]: r for r in tx.staged_documents(matched)}
        tx.keep_document_pairs(audit_id, near)
        tx.drop_audit_tables()
        report_samples = _sample_reports(texts, sigs, k, matches, docs, exposure)
        memorized = [s for s in report_samples if s["matches"]]
        summary = {"samples": len(texts), "samples_matching_training": len(memorized),
                   "samples_with_span": sum(any(m["span_words"] >= span for m in s["matches"]) for s in memorized)
                   if span else None,
                   "training_documents_matched": len({m["doc_id"] for s in memorized for m in s["matches"]}),
                   "max_exposure": max((m["exposure"] for s in memorized for m in s["matches"]), default=0.0)}
        report = {"audit_id": audit_id, "kind": "memorization", "created_at": run.created.isoformat(), "version": vid,
                  "label": described[0]["label"],
                  "datasets": [d.dataset_id for d in datasets], "threshold": threshold, "span": span,
                  "config_id": cfg.identity, "banding": run.banding_report(),
                  "summary": summary, "samples": report_samples, "unreadable": unreadable, "stored": store,
                  "seconds": run.seconds()}
        result = MemorizationReport.model_validate(report)
        run.record(tx, target=vid, passed=None, report=result.to_dict(),
                   params={"threshold": threshold, "span": span, "samples": len(texts)})
    return result


def _exposure(ledger: LedgerStore, tx: Any, audit_id: str, runs: list[str], matched: list[int],
              doc_rep: dict[int, int]) -> tuple[dict[int, tuple[int, float, float]], np.ndarray]:
    """Each matched document's near-copies, how often training saw it, and how often it saw it
    and them: ``doc -> (near_copies, seen, exposure)``. A document's near-copies are the other
    members of its group and of the groups it is paired with, so both figures are its group's
    (:meth:`~provenance.ledger.audit_sql.AuditWrites.near_sums`): the sums exact, so that they
    depend on neither the order of the rows nor the database's threads; and the ids of the
    matched documents and their near-copies."""
    if not matched:
        return {}, np.zeros(0, np.int64)
    ids = tx.near_members(audit_id, matched)  # the matched documents among them
    seen_table = ledger.exposure(runs, ids)
    sums = tx.near_sums(seen_table)
    seen = dict(zip(columns.to_numpy(seen_table.column("doc_id")).tolist(),
                    columns.to_numpy(seen_table.column("seen")).tolist()))
    return {d: (sums[doc_rep[d]][0] - 1, float(seen.get(d, 0.0)), sums[doc_rep[d]][1]) for d in matched}, ids


def _sample_reports(texts: list[str], sigs: np.ndarray, k: int, matches: dict[tuple[int, int], dict[str, Any]],
                    docs: dict[int, dict], exposure: dict[int, tuple[int, float, float]]) -> list[dict]:
    """Per sample, the training documents it matches, best first: estimate, shared span, the
    document's near-copies and how often training saw it and them (its exposure)."""
    by_sample: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (sample, doc), m in sorted(matches.items()):  # once: a pass per sample took minutes for thousands
        by_sample[sample].append((doc, m))
    out = []
    for i, text in enumerate(texts):
        found = []
        for doc, m in by_sample[i]:
            jaccard = m["jaccard"]
            if jaccard is None:  # found by span only: its estimate still says how much of it the sample is
                jaccard = float(np.mean(np.asarray(docs[doc]["signature"], np.uint32) == sigs[i]))
            near_copies, seen, exposed = exposure[doc]
            found.append({"doc_id": doc, "dataset_id": docs[doc]["dataset_id"], "key": docs[doc]["key"],
                          "jaccard": jaccard, "stderr": math.sqrt(jaccard * (1 - jaccard) / k),
                          "span_words": m["span_words"], "span_text": m["span_text"],
                          "near_copies": near_copies, "seen": seen, "exposure": exposed})
        found.sort(key=lambda f: (-f["span_words"], -f["jaccard"], f["key"]))
        out.append({"index": i, "text": text[:300], "matches": found})
    return out


def _spans(ledger: LedgerStore, tx, texts: list[str], n: int) -> tuple[dict[tuple[int, int], tuple[int, str]], list[str]]:
    """Per (sample, document) sharing a window of ``n`` words: the longest run of shared words,
    as its length and its text (the sample's normalised words). The samples' windows are held (a
    few per word of the samples); the training documents' text is streamed shard by shard, so
    memory does not grow with the lineage."""
    index = WindowIndex([ngram_hashes(t, n) for t in texts])
    if not len(index):
        return {}, []
    locs = tx.staged_locations(documents_only=True)
    out: dict[tuple[int, int], tuple[int, str]] = {}
    sample_words = [normalised_words(t) for t in texts]
    unreadable: list[str] = []
    for r, text in iter_texts(ledger, locs, unreadable):
        for i, start, run in index.shared(ngram_hashes(text, n)):
            span = sample_words[i][start : start + run + n - 1]
            out[(i, r["doc_id"])] = len(span), " ".join(span)[:SPAN_TEXT_CHARS]
    return out, unreadable


__all__ = ["audit_memorization", "read_samples"]
