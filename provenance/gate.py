"""The pre-merge gate: before versions are merged, how much training data they share and whether
any of it is evaluation data.

**Overlap.** Each input's training documents are the documents of the shards its own runs
trained on: the versions in its lineage that are not ancestors of another input (two
contributors fine-tuned from one base both inherit the base's data; that is not evidence counted
twice by their merge). With ``full_lineage`` the whole lineage counts. For every pair of inputs,
a document of one side overlaps the other when the other side has a document with the same exact
hash (``exact``) or, failing that, one whose estimated Jaccard is at least the threshold
(``near``: candidates from an LSH band join, as in the dedup audit, documents with identical
signatures grouped first so that boilerplate repeated thousands of times stays cheap). Reported
as counts, as the fraction of each side, and per pair of datasets. Only pairs that can say
something are formed: across sides, and not between two groups holding the same sides and
datasets. A group's class is the set of sides and datasets of its documents (identical signatures
are one group, so copies count once). Where a band bucket holds more than ``2 × SIDE_WINDOW``
groups of one class, each group of another class is first compared with ``SIDE_WINDOW`` of them,
and only those that match none of them then with all of them: the answer is the one comparing
every pair gives, and a near-duplicate cluster on both sides whose members match across costs its
size times the window, not its size squared (one whose members match almost nothing across, yet
crowd the same buckets, still costs every pair, a little more than before: docs/benchmarks.md).

**Contamination.** Training documents of any input that are exact or near duplicates of documents
of the evaluation datasets (``eval``, or every dataset registered with role ``eval``), and
evaluation documents that share a 13-word span with any training document (lm-eval-harness's
decontamination test; :mod:`provenance.ngrams`), read from the source files. The contamination
figure a limit applies to is the number of evaluation documents found by any of the three.

**Policy.** ``max_contamination`` (a count; **0 by default**: any contaminated evaluation
document fails the gate; ``None`` turns the limit off; with no evaluation dataset the default
checks nothing and the report's policy says ``None``, and a limit given is refused) is broken when more evaluation documents
than that are contaminated, and when the span check could not read a shard (a moved or changed
source: a check that could not look shows nothing; ``ngram=0`` leaves the span check out); ``max_overlap`` (a fraction; no limit by default) when any side's
overlap fraction exceeds it; ``deny_license`` (any of ``non-commercial``, ``share-alike``,
``unknown``, ``model-generated``) when the merged model's lineage (the union of the inputs' whole
lineages) holds a dataset with that condition. ``report.violations`` lists what broke, in that
order, each with its policy and a message saying by how much. The audit is stored with whether it
passed; ``prov audit merge`` exits 1 when it did not, and ``ledger.merge(..., audit=ID)`` cites it.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from provenance.audits import AuditRun, check_threshold, iter_texts
from provenance.errors import FingerprintMismatchError, InvalidParameterError, warn
from provenance.ledger import LedgerStore
from provenance.lineage import ancestry, license_summary, lineage
from provenance.ngrams import check_span, ngram_hashes
from provenance.progress import step
from provenance.records import DatasetRecord, check_flags, check_gate_versions, check_list
from provenance.results import GateReport, LicenseSummary

#: The licence conditions a gate can deny, and the key of each in a lineage's licence summary.
LICENSE_CONDITIONS = {"non-commercial": "non_commercial", "share-alike": "share_alike",
                      "unknown": "unknown_license", "model-generated": "model_generated"}
#: Documents of one side and dataset in a band bucket that each document of another side is
#: compared with first, where the bucket holds more than twice as many (module doc).
SIDE_WINDOW = 4


class _DefaultLimit(int):
    """``max_contamination``'s default, 0, told apart from a 0 given: with no evaluation dataset a
    limit given cannot be checked and is refused, while the default applies to nothing."""


DEFAULT_MAX_CONTAMINATION = _DefaultLimit(0)


def check_deny_license(deny: Sequence[str] | str | None) -> list[str]:
    """The licence conditions to deny, validated (a comma-separated string or a sequence)."""
    if deny is None:
        return []
    given = deny.split(",") if isinstance(deny, str) else list(deny)
    if any(not isinstance(x, str) for x in given):
        raise InvalidParameterError(f"deny-licence {deny!r}: conditions are names; choose from {', '.join(LICENSE_CONDITIONS)}")
    given = [x.strip().lower() for x in given]  # NON-COMMERCIAL is non-commercial
    items = [x for x in given if x]
    if not items and (isinstance(deny, str) or given):  # "", "," or [" "]: a condition meant, none named ([] is none)
        raise InvalidParameterError(f"deny-licence {deny!r} names no condition; choose from {', '.join(LICENSE_CONDITIONS)}")
    unknown = [x for x in items if x not in LICENSE_CONDITIONS]
    if unknown:
        raise InvalidParameterError(
            f"deny-licence: unknown condition(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(LICENSE_CONDITIONS)}")
    return sorted(set(items), key=list(LICENSE_CONDITIONS).index)


def audit_merge(
    ledger: LedgerStore,
    versions: Sequence[str],
    *,
    eval_datasets: Sequence[str] | None = None,
    threshold: float = 0.8,
    max_overlap: float | None = None,
    max_contamination: int | None = DEFAULT_MAX_CONTAMINATION,
    deny_license: Sequence[str] | str | None = None,
    full_lineage: bool = False,
    deny_retracted: bool = False,
    store: bool = True,
    ngram: int = 13,
    progress: Any = None,
) -> GateReport:
    """Run the gate over ``versions`` (module doc), store it as an audit (unless ``store=False``,
    which also works on a read-only ledger), return the report (``report.passed``;
    ``report.violations`` says which policy broke and by how much). ``deny_retracted``: fail when
    an input's lineage holds data a retraction retracts (``prov retract``); it is reported either way."""
    threshold = check_threshold(threshold)
    check_flags(full_lineage=full_lineage, deny_retracted=deny_retracted, store=store)
    deny = check_deny_license(deny_license)
    max_overlap = _check_limits(max_overlap, max_contamination, ngram)
    versions = check_gate_versions(versions)
    if eval_datasets is not None:  # a string was looked up a character at a time: "no dataset 'q'"
        eval_datasets = check_list(eval_datasets, "eval_datasets", "of evaluation dataset names: eval_datasets=['qa']")
    with ledger.session():
        inputs = [ledger.version(v) for v in versions]  # at least two: check_gate_versions
        seen: dict[str, str] = {}
        for given, v in zip(versions, inputs):
            name = given if isinstance(given, str) else v.version_id[:12]  # a record given in Python
            if v.version_id in seen:  # name both: 'ca' and a prefix of its id read as two versions
                raise InvalidParameterError(
                    f"the gate needs at least two different versions, each given once: {seen[v.version_id]!r} "
                    f"and {name!r} are both version {v.label()}")
            seen[v.version_id] = name
        scope_rows, sides, inherited = _sides(ledger, [v.version_id for v in inputs], full_lineage)
        evals = [ledger.dataset(d) for d in eval_datasets] if eval_datasets else [
            d for d in ledger.datasets() if d.role == "eval"]
        evals = list({d.dataset_id: d for d in evals}.values())  # --eval qa --eval qa@1: one dataset, listed once
        if max_contamination is None and not eval_datasets:  # no limit asked: found ones that cannot compare stay out
            evals = _comparable_evals(ledger, evals, {r[0] for r in scope_rows})
        for d in evals:
            if d.role != "eval":  # given by name: compared as asked, and said, since it may be a slip
                warn(f"{d.dataset_id} is registered as training data (role {d.role}) and is compared here "
                     "as evaluation data; an evaluation set is registered with role eval (--role eval)")
        if max_contamination is not None and not evals:
            if not isinstance(max_contamination, _DefaultLimit):
                raise InvalidParameterError(
                    f"--max-contamination {max_contamination} needs evaluation datasets: none given (--eval) and "
                    "none registered with role eval (--max-contamination none: no limit)")
            max_contamination = None  # nothing to check: the report's policy says so
        if max_contamination is not None:
            max_contamination = int(max_contamination)  # the default stored as a plain count
        scope_rows += [(d.dataset_id, None, "e") for d in evals]
        lineages = {v.version_id: lineage(ledger, v.version_id) for v in inputs}
        merged_license = _merged_license(lineages.values())
        retracted = [{"input": vid, **r} for vid, lin in lineages.items() for r in lin.retracted]
        datasets = [ledger.dataset(d) for d in sorted({r[0] for r in scope_rows})]
    if not datasets:
        shared = not full_lineage and any(lin.datasets for lin in lineages.values())
        raise InvalidParameterError(
            "the inputs share all the data of their lineages (the gate compares what each added since their "
            "shared ancestor; --full-lineage compares whole lineages), and there is no evaluation dataset"
            if shared else "the inputs' lineages are empty: no run recorded any data, and there is no evaluation "
            "dataset")
    try:
        run = AuditRun(ledger, "merge", datasets, threshold, store=store, progress=progress)
    except FingerprintMismatchError as exc:
        if eval_datasets or not evals:
            raise
        found = ", ".join(d.dataset_id for d in evals)  # the user named none of them: say where they came from
        raise FingerprintMismatchError(
            f"{exc} (the evaluation datasets {found} are compared because every dataset of role eval is, when none "
            "is named: name those to compare with --eval (eval_datasets=), or give --max-contamination none)") from None
    audit_id, cfg = run.audit_id, run.config
    scope = pa.table({"dataset_id": pa.array([r[0] for r in scope_rows], pa.string()),
                      "shard_index": pa.array([r[1] for r in scope_rows], pa.int32()),
                      "side": pa.array([r[2] for r in scope_rows], pa.string())})
    labels = [f"s{i}" for i in range(len(inputs))]
    with run.pairs(scope, classes="sides", window=SIDE_WINDOW) as tx:  # only pairs across sides say anything here
        sizes = {lab: _count(tx, [lab]) for lab in [*labels, "e"]}
        overlap = _pairwise_overlap(tx, audit_id, inputs, labels, sizes)
        contamination = _contamination(ledger, tx, audit_id, evals, labels, sizes, ngram, inherited) if evals else None
        step(progress)
        violations = _violations(overlap, contamination, merged_license, max_overlap, max_contamination, deny,
                                 retracted if deny_retracted else [])
        alerts = [v["message"] for v in violations]
        report = {
            "audit_id": audit_id, "kind": "merge", "created_at": run.created.isoformat(),
            "versions": [v.version_id for v in inputs], "labels": {v.version_id: v.label() for v in inputs},
            "threshold": threshold, "full_lineage": full_lineage,
            "sides": sides, "config_id": cfg.identity,
            "banding": run.banding_report(),
            "policy": {"max_overlap": max_overlap, "max_contamination": max_contamination, "deny_license": deny,
                       "deny_retracted": deny_retracted},
            "license": merged_license, "retracted": retracted,
            "overlap": overlap, "contamination": contamination, "violations": violations, "alerts": alerts,
            "passed": not alerts, "stored": store,
            "seconds": run.seconds(),
        }
        result = GateReport.model_validate(report)
        run.record(tx, target=" ".join(v.version_id for v in inputs), passed=not alerts, report=result.to_dict(),
                   params={"threshold": threshold, "eval": [d.dataset_id for d in evals],
                           "max_overlap": max_overlap, "max_contamination": max_contamination,
                           "deny_license": deny, "deny_retracted": deny_retracted, "full_lineage": full_lineage,
                           "ngram": ngram})
    return result


def _check_limits(max_overlap: float | None, max_contamination: int | None, ngram: int) -> float | None:
    """Refuse limits of the wrong kind or range; returns ``max_overlap`` as a float (or None). A
    string is not the number it spells (``"0.1"`` failed later, comparing a float with a str)."""
    if max_overlap is not None:
        if isinstance(max_overlap, bool) or not isinstance(max_overlap, numbers.Real):
            raise InvalidParameterError(f"max-overlap must be a fraction in [0, 1] (or None: no limit), got "
                                        f"{type(max_overlap).__name__} {max_overlap!r}")
        if not 0.0 <= float(max_overlap) <= 1.0:
            raise InvalidParameterError(f"max-overlap must be a fraction in [0, 1], got {max_overlap}")
        max_overlap = float(max_overlap)
    if max_contamination is not None:
        whole = isinstance(max_contamination, numbers.Integral) and not isinstance(max_contamination, bool) or (
            isinstance(max_contamination, float) and max_contamination.is_integer())  # 1.5 was cut to 1, NaN a ValueError
        if not whole or max_contamination < 0:
            raise InvalidParameterError(f"max-contamination must be a whole count >= 0 (or None: no limit), "
                                        f"got {max_contamination!r}")
    check_span(ngram, "ngram")
    return max_overlap


def _digits(value: float, limit: float) -> int:
    """Decimal places of a percentage that tell ``value`` from ``limit`` (2, or more where 2
    would print both alike: 15 of 62 over a limit of 0.2419)."""
    d = 2
    while d < 9 and f"{value:.{d}%}" == f"{limit:.{d}%}":
        d += 1
    return d


def _pairwise_overlap(tx, audit_id: str, inputs: list, labels: list[str], sizes: dict[str, int]) -> list[dict]:
    """For every pair of inputs, each side's documents found (exactly or nearly) on the other."""
    overlap = []
    for i in range(len(inputs)):
        for j in range(i + 1, len(inputs)):
            ij, ji = _overlap(tx, audit_id, [labels[i]], [labels[j]]), _overlap(tx, audit_id, [labels[j]], [labels[i]])
            overlap.append({
                "a": inputs[i].version_id, "b": inputs[j].version_id,
                "a_documents": sizes[labels[i]], "b_documents": sizes[labels[j]],
                "a_exact": ij["exact"], "a_near": ij["near"], "b_exact": ji["exact"], "b_near": ji["near"],
                "a_fraction": _frac(ij["exact"] + ij["near"], sizes[labels[i]]),
                "b_fraction": _frac(ji["exact"] + ji["near"], sizes[labels[j]]),
                "datasets": ij["datasets"], "b_datasets": ji["datasets"]})
    return overlap


def _contamination(ledger: LedgerStore, tx, audit_id: str, evals: list, labels: list[str], sizes: dict[str, int],
                   ngram: int, inherited: set[tuple[str, int]]) -> dict[str, Any]:
    """Training documents that copy evaluation documents, and evaluation documents found in
    training exactly, nearly or by an ``ngram``-word span (module doc); and evaluation documents
    whose own shard a shared ancestor trained on (``inherited``: not compared by content)."""
    train_hit = _overlap(tx, audit_id, labels, ["e"], keys=True)
    eval_hit = _overlap(tx, audit_id, ["e"], labels, keys=True)
    eval_ids = {d.dataset_id for d in evals}
    inherited_eval = any(d in eval_ids for d, _ in inherited)
    locs = tx.staged_locations(train_sides=labels) if ngram or inherited_eval else []
    spans = _span_check(ledger, locs, ngram) if ngram else None
    trained = [f"{r['dataset_id']}:{r['key']}" for r in locs
               if r["is_eval"] and (r["dataset_id"], r["shard_index"]) in inherited]
    contaminated = set(eval_hit["keys"]) | (set(spans["eval_keys"]) if spans else set()) | set(trained)
    return {
        "eval_datasets": [d.dataset_id for d in evals], "eval_documents": sizes["e"],
        "training_documents": _count(tx, labels),  # each document once, on however many inputs' sides
        "training_exact": train_hit["exact"], "training_near": train_hit["near"],
        "training_keys": train_hit["keys"][:200],
        "eval_exact": eval_hit["exact"], "eval_near": eval_hit["near"],
        "ngram": spans, "inherited_shards": len(inherited), "inherited_eval_documents": len(trained),
        "contaminated_eval_documents": len(contaminated),
        "contaminated_eval_keys": sorted(contaminated)[:200], "datasets": train_hit["datasets"]}


def _comparable_evals(ledger: LedgerStore, evals: list[DatasetRecord], training: set[str]) -> list[DatasetRecord]:
    """The evaluation sets found by their role whose fingerprint config is the training data's;
    the others are named in a warning and left out. With no contamination limit they made every
    gate fail ("datasets fingerprinted under different configs cannot be compared"); with a
    limit they still do, since leaving them out would pass a gate unchecked."""
    configs = {ledger.dataset(d).config_id for d in training}
    if len(configs) != 1:
        return evals
    other = [d for d in evals if d.config_id not in configs]
    if other:
        warn(f"evaluation set{'s' if len(other) > 1 else ''} {', '.join(d.dataset_id for d in other)} left out: "
             f"fingerprinted under {other[0].config_id}, not the training data's {next(iter(configs))}, so its "
             "contamination cannot be measured (re-register it under the training data's config to check it)")
    return [d for d in evals if d.config_id in configs]


def _sides(ledger: LedgerStore, ids: list[str], full_lineage: bool
           ) -> tuple[list[tuple[str, int, str]], list[dict], set[tuple[str, int]]]:
    """Per input, the shards of its own runs (module doc): scope rows ``(dataset, shard, side)``
    and a description of each side; and the shards the inputs inherit from shared ancestors that
    no input's own runs trained on (none with ``full_lineage``)."""
    ancestries = [dict(zip(t.column("version_id").to_pylist(), t.column("run_id").to_pylist()))
                  for t in (ancestry(ledger, vid)[1] for vid in ids)]
    rows, sides, shared = [], [], {}
    for i, anc in enumerate(ancestries):
        others = set().union(*(set(a) for j, a in enumerate(ancestries) if j != i))
        own = {v: run for v, run in anc.items() if full_lineage or v not in others}
        shared.update({v: run for v, run in anc.items() if v not in own and run})
        shards = _shards_of(ledger, own)
        rows += [(d, s, f"s{i}") for d, s in shards]
        sides.append({"version_id": ids[i], "versions": sorted(own), "shards": len(shards),
                      "datasets": sorted({d for d, _ in shards})})
    inherited = set(_shards_of(ledger, shared)) - {(d, s) for d, s, _ in rows}
    return rows, sides, inherited


def _shards_of(ledger: LedgerStore, runs_of: dict[str, str | None]) -> list[tuple[str, int]]:
    """The shards the runs of the versions ``runs_of`` (version -> run) trained on, sorted."""
    runs = [(run, v) for v, run in runs_of.items() if run]
    if not runs:
        return []
    table = pa.table({"run_id": pa.array([r[0] for r in runs], pa.string()),
                      "version_id": pa.array([r[1] for r in runs], pa.string()),
                      "weight": pa.array([1.0] * len(runs), pa.float64())})
    return sorted({(r["dataset_id"], r["shard_index"]) for r in ledger.trained_shards(table).to_pylist()})


def _count(tx, labels: list[str]) -> int:
    return tx.side_size(labels)


def _overlap(tx, audit_id: str, a: list[str], b: list[str], *, keys: bool = False) -> dict[str, Any]:
    """Documents of sides ``a`` with an exact (same hash) or else near (an audit pair) match on
    sides ``b``: counts, per pair of datasets, and (``keys``) the documents' keys."""
    rows = tx.side_overlap(audit_id, a, b)
    by_pair: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"exact": 0, "near": 0})
    for r in rows:
        by_pair[(r["dataset_id"], r["other"])][r["kind"]] += 1
    return {"exact": sum(r["kind"] == "exact" for r in rows), "near": sum(r["kind"] == "near" for r in rows),
            "datasets": [{"dataset": d, "other": o, **n} for (d, o), n in sorted(by_pair.items())],
            "keys": [f"{r['dataset_id']}:{r['key']}" for r in rows] if keys else []}


def _span_check(ledger: LedgerStore, locs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Evaluation documents sharing an ``n``-word span with a training document, from the text of
    the staged documents ``locs`` (:meth:`staged_locations` with the training sides)."""
    eval_rows = [r for r in locs if r["is_eval"]]
    unreadable: list[str] = []
    hashes, owners = [], []
    for i, (r, text) in enumerate(iter_texts(ledger, eval_rows, unreadable)):
        h = np.unique(ngram_hashes(text, n))
        hashes.append(h)
        owners.append(np.full(len(h), i, np.int64))
        r["index"] = i
    keys = {r["index"]: f"{r['dataset_id']}:{r['key']}" for r in eval_rows if "index" in r}
    eval_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    eval_owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.argsort(eval_hashes, kind="stable")
    eval_hashes, eval_owner = eval_hashes[order], eval_owner[order]
    hit_eval, hit_train, read = set(), [], 0
    train_rows = [r for r in locs if r["is_train"]] if len(eval_hashes) else []
    for r, text in iter_texts(ledger, train_rows, unreadable):  # streamed: one shard's texts at a time
        read += 1
        h = np.unique(ngram_hashes(text, n))
        pos = np.searchsorted(eval_hashes, h)
        pos[pos == len(eval_hashes)] = 0
        found = eval_hashes[pos] == h
        if found.any():
            hit_train.append(f"{r['dataset_id']}:{r['key']}")
            for p in pos[found].tolist():  # every evaluation document owning that span
                lo = p
                while lo < len(eval_hashes) and eval_hashes[lo] == eval_hashes[p]:
                    hit_eval.add(int(eval_owner[lo]))
                    lo += 1
    return {"n": n, "training_documents_read": read, "eval_documents_read": len(hashes),
            "training_documents_with_span": len(hit_train), "training_keys": hit_train[:200],
            "eval_keys": sorted(keys[i] for i in hit_eval),
            "unreadable": unreadable}


def _frac(n: int, total: int) -> float:
    return n / total if total else 0.0


def _merged_license(lineages: Any) -> LicenseSummary:
    """The licence union of the inputs' whole lineages: what the merged model would carry."""
    rows: dict[str, dict[str, Any]] = {}
    for lin in lineages:
        for d in lin.datasets:
            rows[d["dataset_id"]] = d
    return license_summary(rows.values())


def _violations(overlap: list[dict], contamination: dict | None, license: dict[str, Any],
                max_overlap: float | None, max_contamination: int | None, deny: list[str],
                retracted: list[dict[str, Any]] = ()) -> list[dict[str, str]]:
    """What broke, in policy order (contamination, overlap, licence, retraction): ``{"policy",
    "message"}``, the message saying by how much."""
    found = []
    if max_contamination is not None and contamination is not None:
        n = contamination["contaminated_eval_documents"]
        if n > max_contamination:
            found.append({"policy": "max_contamination", "message":
                          f"max-contamination {max_contamination} broken: {n} evaluation document{'s' * (n != 1)} of "
                          f"{', '.join(contamination['eval_datasets'])} {'are' if n != 1 else 'is'} in the training data "
                          f"({n - max_contamination} over)"})
        spans = contamination["ngram"]
        if spans and spans["unreadable"]:  # a check that could not look is no evidence of absence: fail closed
            k = len(spans["unreadable"])
            found.append({"policy": "max_contamination", "message":
                          f"max-contamination {max_contamination} not shown: the {spans['n']}-word span check could "
                          f"not read {k} shard{'s' * (k != 1)} ({spans['unreadable'][0]}{', …' if k > 1 else ''}); "
                          "restore the source files it reads, or leave the span check out with --ngram 0"})
    if max_overlap is not None:
        for o in overlap:
            for side, other in (("a", "b"), ("b", "a")):
                frac = o[f"{side}_fraction"]
                if frac > max_overlap:
                    d = _digits(frac, max_overlap)
                    found.append({"policy": "max_overlap", "message":
                                  f"max-overlap {max_overlap:.{d}%} broken: {frac:.{d}%} of {o[side][:12]}'s "
                                  f"{o[f'{side}_documents']:,} training documents overlap {o[other][:12]} "
                                  f"({o[f'{side}_exact']:,} exact, {o[f'{side}_near']:,} near; "
                                  f"{(frac - max_overlap) * 100:.{d}f} points over)"})
    for condition in deny:
        datasets = license[LICENSE_CONDITIONS[condition]]
        if datasets:
            found.append({"policy": "deny_license", "message":
                          f"deny-licence {condition} broken: the merged lineage holds {condition} data "
                          f"({', '.join(datasets)})"})
    by_input: dict[str, list[dict[str, Any]]] = {}
    for r in retracted:
        by_input.setdefault(r["input"], []).append(r)
    for vid, rows in by_input.items():
        found.append({"policy": "deny_retracted", "message":
                      f"deny-retracted broken: {vid[:12]}'s lineage holds retracted data: " + "; ".join(
                          f"retraction {r['retraction_id']} ({r['target']}: {r['reason']}) trained on by run "
                          f"{r['run_id'][:12]} of {r['version_id'][:12]}" for r in rows)})
    return found
