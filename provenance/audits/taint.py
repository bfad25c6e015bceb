"""Taint by text: the versions that trained on a document, a text, or anything near either, and
the documents equal or near to a text in every dataset, each searched under its own fingerprint
config."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from provenance.audits.banding import MIN_RECALL, check_threshold
from provenance.audits.texts import read_texts
from provenance.errors import InvalidParameterError, ProvenanceWarning, warn
from provenance.fingerprints import Banding, normalize
from provenance.ledger import LedgerStore
from provenance.lineage import taint
from provenance.results import TaintReport


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
                retractions = ledger.retractions_of([r["doc_id"] for r in rows],
                                                    places=[(r["dataset_id"], r["shard_index"]) for r in rows])
            else:
                retractions = ledger.retractions_of([], [(r["dataset_id"], r["shard_index"]) for r in rows])
        return TaintReport(target=target, near=None, matches=[], versions=versions, retractions=retractions)
    if text is not None and not text.strip():
        raise InvalidParameterError("the text to look for is empty")
    if text is not None and not normalize(text):  # it would match every registered document without words
        raise InvalidParameterError(f"the text to look for has no words (only spaces and punctuation: {text[:40]!r})")
    matches = find_similar(ledger, text=text, dataset=dataset, key=key, near=near)
    with ledger.session():
        runs = ledger.runs_seeing([m["doc_id"] for m in matches], [m["dataset_id"] for m in matches]).to_pylist() \
            if matches else []
        graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
        retractions = ledger.retractions_of([m["doc_id"] for m in matches], places=[
            (m["dataset_id"], m["shard_index"]) for m in matches]) if matches else []
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
    ``near`` with probability ≥ 0.99, else every signature of the config is compared. A target
    document with no words (``""``, ``"..."``) matches itself only: every such text has one exact
    hash and one signature, yet none copies another (as in the dedup audit and the gate)."""
    found: dict[int, dict[str, Any]] = {}
    with ledger.session():
        if text is None:  # the document in each version of the dataset that holds it
            from provenance.lineage import target_documents

            probes = []
            targets = []
            for doc in target_documents(ledger, dataset, key):
                ds = ledger.dataset(doc.dataset_id)
                if doc.token_count == 0:
                    found[doc.doc_id] = {"doc_id": doc.doc_id, "dataset_id": doc.dataset_id,
                                         "shard_index": doc.shard_index, "key": doc.key,
                                         "matches": len(doc.signature), "jaccard": 1.0, "config_id": ds.config_id}
                    continue
                targets.append(doc)
                probes.append((ds.config_id, doc.exact_hash, doc.signature, doc.band_keys, ds.config,
                               (ds.bands, ds.rows)))
            probes += _other_configs(ledger, targets, {p[0] for p in probes})
        else:
            probes = _text_probes(ledger, text)
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
