"""Audit reports (dedup, pre-merge gate, memorization, a retraction's plan and its proof) as the pages of :mod:`provenance.reports`:
the summary, the alerts, the tables people look for first, and the plots where a picture reads
faster than a table (similarity distribution, cluster sizes, the LSH S-curve, exposure versus
similarity), with the audit's threshold and the gate's limits drawn on them.

The gate's page opens with what broke, in red, in the order the gate checked it (contamination
first), before any table or plot; its badge is green only when nothing broke and no evaluation
document leaked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.gate import LICENSE_CONDITIONS
from provenance.reports import write_html

_CLUSTER_BINS = [(2, 2), (3, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 10**18)]
#: The gate's policies as its flags name them, in the order it checks them.
_POLICIES = {"max_contamination": "max-contamination", "max_overlap": "max-overlap", "deny_license": "deny-licence"}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` (as an audit function returned it) as one self-contained HTML page."""
    kind = report.get("kind")
    pages = {"dedup": _dedup, "merge": _gate, "memorization": _memorization, "retraction": _retraction,
             "retraction-audit": _retraction_audit}
    if kind not in pages:
        raise InvalidParameterError(f"no HTML page for an audit of kind {kind!r}")
    page = pages[kind](report)
    page["subtitle"] = f"{'audit ' + report['audit_id'] if 'audit_id' in report else 'retraction ' + report['retraction_id']}" \
                       f" · {report['created_at']} UTC"
    if report.get("pairs_deleted_at"):  # prov audit show of an audit whose pairs were deleted
        page["subtitle"] += f" · its stored pairs were deleted on {str(report['pairs_deleted_at'])[:16]} UTC"
    page["json"] = {k: v for k, v in report.items() if k != "pairs"}
    return write_html(page, path)


def _threshold(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"x": r["threshold"], "label": f"threshold {r['threshold']:g}"}]


def _dedup(r: dict[str, Any]) -> dict[str, Any]:
    s, b = r["summary"], r["banding"]
    sizes = r["cluster_sizes"]
    bars = []
    for lo, hi in _CLUSTER_BINS:
        n = sum(count for size, count in sizes if lo <= size <= hi)
        if n or lo == 2:
            bars.append([str(lo) if lo == hi else f"{lo}+" if hi > 10**9 else f"{lo}-{hi}", n])
    v = r.get("verify")
    tables = [{"title": "Largest clusters", "columns": ["cluster", "size", "datasets", "sample keys"],
               "rows": [[c["cluster"], c["size"], ", ".join(c["datasets"]), ", ".join(c["sample_keys"])]
                        for c in r["largest_clusters"]]},
              {"title": "Documents with the most near-copies", "columns": ["dataset", "key", "near-copies"],
               "rows": [[n["dataset_id"], n["key"], n["near_copies"]] for n in r["near_copies"]]}]
    pairs = r.get("pairs") or []
    if pairs:
        tables.append({"title": "Pairs, most similar first",
                       "columns": ["a", "b", "Jaccard (est.)", "± s.e.", "exact Jaccard (verified)"],
                       "rows": [[p["a"], p["b"], p["jaccard"], p["stderr"], p["exact"]] for p in pairs]})
    return {
        "title": f"Deduplication audit of {', '.join(r['datasets'])}",
        "summary": {"audited": ", ".join(t.get("label") or t["id"] for t in r.get("targets", [])),
                    "documents": s["documents"], "threshold (Jaccard)": r["threshold"],
                    "pairs": s["pairs"] if r.get("pairs_mode", "spanning") == "all"
                    else f"{s['pairs']:,} (a spanning set of each cluster: m copies, m-1 pairs)",
                    "exact duplicate pairs": s["exact_duplicate_pairs"], "clusters": s["clusters"],
                    "largest cluster": s["largest_cluster"], "redundant documents": s["redundant_documents"],
                    "duplicate rate": f"{s['duplicate_rate']:.2%}",
                    **({"documents with no words (compared with nothing)": s["without_words"]}
                       if s.get("without_words") else {}),
                    **({"band buckets windowed": f"{s['windowed_buckets']:,} of more than {2 * r['bucket_window']:,} "
                                                 f"documents: each compared with {r['bucket_window']:,} neighbours "
                                                 "there, not with every other"}
                       if s.get("windowed_buckets") else {}),
                    "banding": f"{b['bands']} bands × {b['rows']} rows", "P(candidate) at threshold": b["p_at_threshold"],
                    **({"verified pairs": v["checked"], "rejected by exact Jaccard": v["rejected"]} if v else {})},
        "alerts": [f"not verified: {u}" for u in (v or {}).get("unreadable", [])],
        "tables": tables,
        "plots": [
            {"kind": "histogram", "title": "Similarity of the pairs found", "x_label": "estimated Jaccard",
             "bins": [[round(lo, 9), round(hi, 9), n] for lo, hi, n in r["similarity_histogram"]],
             "y_label": "pairs", "vlines": _threshold(r)},
            {"kind": "bar", "title": "Cluster sizes", "x_label": "documents in the cluster", "y_label": "clusters",
             "bars": bars},
            {"kind": "line", "title": "LSH S-curve: probability that a pair becomes a candidate",
             "x_label": "Jaccard similarity", "y_label": "P(candidate)",
             "series": [{"name": f"{b['bands']} bands × {b['rows']} rows", "points": b["s_curve"]}],
             "vlines": _threshold(r)},
        ],
    }


def _violations(r: dict[str, Any]) -> list[dict[str, str]]:
    """What broke, in the order the gate checked it; a report stored before ``violations`` has
    only its ``alerts``, each named by the flag its message starts with."""
    if "violations" in r:
        return r["violations"]
    return [{"policy": next((p for p, flag in _POLICIES.items() if a.startswith(flag)), ""), "message": a}
            for a in r.get("alerts", [])]


def _gate(r: dict[str, Any]) -> dict[str, Any]:
    c, policy, lic = r["contamination"], r["policy"], r.get("license")
    labels = r.get("labels") or {}  # reports stored before labels show short ids

    def label(vid: str) -> str:
        return labels.get(vid, vid[:12])

    broken = _violations(r)
    names = list(dict.fromkeys(_POLICIES.get(v["policy"]) or "a limit" for v in broken))
    leaked = c["contaminated_eval_documents"] if c else 0
    status = "failed" if broken or not r["passed"] else "passed" if not leaked else "passed, no contamination limit"
    deny = policy.get("deny_license") or []
    largest = max((o[f"{s}_fraction"] for o in r["overlap"] for s in "ab"), default=0.0)
    denied = {d: (lic or {}).get(LICENSE_CONDITIONS[d], []) for d in deny}

    def result(name: str, limit: Any) -> str:
        return "broken" if any(v["policy"] == name for v in broken) else "held" if limit else "no limit"

    limits = [
        ["max-contamination", "no limit" if policy["max_contamination"] is None else
         f"{policy['max_contamination']} evaluation documents",
         f"{leaked} of {c['eval_documents']} evaluation documents" if c else "no evaluation data",
         result("max_contamination", policy["max_contamination"] is not None and c)],
        ["max-overlap", "no limit" if policy["max_overlap"] is None else f"{policy['max_overlap']:.2%}",
         f"{largest:.2%} (the largest side)", result("max_overlap", policy["max_overlap"] is not None)],
        ["deny-licence", ", ".join(deny) or "none",
         "; ".join(f"{d}: {', '.join(ds)}" for d, ds in denied.items() if ds) or "none", result("deny_license", deny)],
    ]
    tables = [{"title": "Policy", "columns": ["policy", "limit", "found", "result"], "rows": limits}]
    if lic is not None:
        conditions = [("non-commercial", "non_commercial"), ("share-alike", "share_alike"),
                      ("attribution", "attribution"), ("unknown", "unknown_license"),
                      ("model-generated", "model_generated")]
        tables.append({"title": "Licences of the merged lineage", "columns": ["condition", "datasets", "denied"],
                       "rows": [["licences", ", ".join(lic["licenses"]) or "none recorded", ""]]
                       + [[name, ", ".join(lic[key]) or "none", name in deny] for name, key in conditions],
                       "note": "The union over the inputs' whole lineages: what the merged model would carry."})
    if c:
        tables.append({"title": "Contaminated evaluation documents", "columns": ["document"],
                       "rows": [[k] for k in c["contaminated_eval_keys"]]})
    tables += [{"title": "Training-data overlap", "columns": ["A", "B", "A documents", "A overlap", "B documents",
                                                           "B overlap"],
                "rows": [[label(o["a"]), label(o["b"]), o["a_documents"],
                          f"{o['a_fraction']:.2%} ({o['a_exact']} exact, {o['a_near']} near)", o["b_documents"],
                          f"{o['b_fraction']:.2%} ({o['b_exact']} exact, {o['b_near']} near)"] for o in r["overlap"]]},
               {"title": "Overlapping datasets", "columns": ["documents of", "dataset", "found in", "in dataset",
                                                           "exact", "near"],
                "rows": [[label(o[x]), d["dataset"], label(o[y]), d["other"], d["exact"], d["near"]]
                         for o in r["overlap"] for x, y, key in (("a", "b", "datasets"), ("b", "a", "b_datasets"))
                         for d in o.get(key, [])]}]
    summary: dict[str, Any] = {"status": status, "versions": ", ".join(label(v) for v in r["versions"]),
                               "threshold (Jaccard)": r["threshold"]}
    if c:
        summary.update({"evaluation datasets": ", ".join(c["eval_datasets"]),
                        "contaminated evaluation documents": leaked})
    summary["largest overlap"] = f"{largest:.2%}"
    limit = policy["max_overlap"]
    return {"title": "Pre-merge gate", "summary": summary, "tables": tables,
            "alerts": [v["message"] for v in broken],
            "alerts_title": f"The gate failed: {', '.join(names)} broken" if broken else None,
            "plots": [{"kind": "bar", "title": "Share of each side's training documents that overlap the other",
                       "x_label": "side", "y_label": "fraction of the side's training documents",
                       "bars": [[f"{o[s][:8]} vs {o[t][:8]}", o[f"{s}_fraction"]] for o in r["overlap"]
                                for s, t in (("a", "b"), ("b", "a"))],
                       "hlines": [] if limit is None else [{"y": limit, "label": f"max-overlap {limit:.2%}"}]}]}


def _memorization(r: dict[str, Any]) -> dict[str, Any]:
    # one dot per distinct (Jaccard, exposure): a dot per match made 10 samples of a template reaching
    # 5,000 variants a page of 50,000 circles (9.5 MB); estimates take k + 1 values, so this stays small
    points = sorted({(m["jaccard"], m["exposure"]) for s in r["samples"] for m in s["matches"]})
    return {
        "title": f"Memorization audit of {r.get('label') or r['version'][:12]}",
        "summary": {"threshold (Jaccard)": r["threshold"], "span (words)": r["span"],
                    **{k.replace("_", " "): v for k, v in r["summary"].items()}},
        "alerts": [f"not checked for shared spans: {u}" for u in r.get("unreadable", [])],
        "tables": [{"title": "Samples that match training documents",
                    "columns": ["sample", "document", "Jaccard (est.)", "shared words", "exposure",
                                "the shared span"],
                    "rows": [[s["index"], f"{m['dataset_id']}:{m['key']}", m["jaccard"], m["span_words"],
                              m["exposure"], m.get("span_text", "")] for s in r["samples"] for m in s["matches"]],
                    "note": "The shared span is the sample's longest run of words found in the document, "
                            "normalised (lower case, punctuation dropped)."}],
        "plots": [{"kind": "scatter", "title": "Exposure versus similarity (a dot per distinct pair of values)",
                   "x_label": "estimated Jaccard",
                   "y_label": "exposure (times training saw the document and its near-copies)", "points": points,
                   "log_y": True, "vlines": _threshold(r)}],
    }


def _retraction(r: dict[str, Any]) -> dict[str, Any]:
    """A retraction's plan (``kind: retraction``: :meth:`LedgerStore.retraction`'s record with
    ``steps``): what was retracted and why, then a row per tainted version: the action, why, the
    release tags it carries, and the version made for it when applied."""
    made = {x["version_id"]: x for x in r.get("results") or []}
    docs = r.get("documents") or []
    whole = sum(d.get("doc_id") is None for d in docs)  # a whole dataset or shard: one row, "documents: 1" said
    return {
        "title": f"Retraction {r['retraction_id']} of {r['target']}",
        "summary": {"reason": r["reason"], "author": r.get("author") or "", "near": r.get("near") or "",
                    "documents": len(docs) - whole, **({"whole datasets and shards": whole} if whole else {}),
                    "tainted versions": len(r["steps"]), "applied": len(made),
                    "releases touched": ", ".join(sorted({t for s in r["steps"] for t in s["tags"]})) or "none"},
        "alerts": [f"{s['version_id'][:12]} ({', '.join(s['tags'])}) needs retraining: {s['why']}"
                   for s in r["steps"] if s["action"] == "retrain" and s["tags"]],
        "tables": [
            {"title": "Plan: one step per tainted version, parents first",
             "columns": ["version", "tags", "action", "why", "made", "exact"],
             "rows": [[s["version_id"][:12], ", ".join(s["tags"]), s["action"], s["why"],
                       (made[s["version_id"]]["new_version_id"] or "")[:12] if s["version_id"] in made else "",
                       made[s["version_id"]]["exact"] if s["version_id"] in made else ""] for s in r["steps"]],
             "note": "A re-merge is exact (the stored receipt, without the tainted inputs); a rebase re-applies "
                     "the version's own patch onto a clean version: exact for the patch, approximate for the model."},
            {"title": "What is retracted",
             "columns": ["dataset", "shard", "document", "key", "Jaccard (est.)"],
             "rows": [[d["dataset_id"], "" if d.get("shard_index") is None else d["shard_index"],
                       "whole" if d.get("doc_id") is None else d["doc_id"], d.get("key") or "",
                       "" if d.get("jaccard") is None else d["jaccard"]] for d in docs]},
        ],
        "plots": [],
    }


def _retraction_audit(r: dict[str, Any]) -> dict[str, Any]:
    """The proof of a retraction: what broke first, then every version checked and whether its
    lineage is clean, the steps still to do, and the samples that reproduce retracted documents."""
    mem = r.get("memorization") or {}
    return {
        "title": f"Proof of retraction {r['retraction_id']} of {r['target']}",
        "summary": {"passed": r["passed"], "reason": r["reason"], "documents": r["documents"],
                    **({"whole datasets and shards": r["whole"]} if r.get("whole") else {}),  # were 1 document each
                    "copies found now": len(r["copies_found_now"]), "versions checked": len(r["checked"]),
                    "steps still to do": len(r["pending"]),
                    "samples": mem.get("samples", "none given"), "samples reproducing": len(
                        {m["sample"] for m in mem.get("matches", [])})},
        "alerts": list(r["problems"]) + [f"not checked for shared spans: {u}" for u in mem.get("unreadable", [])],
        "tables": [
            {"title": "Versions checked", "columns": ["version", "as", "tags", "clean", "tainted through", "exact"],
             "rows": [[c["version_id"][:12], c["as"], ", ".join(c["tags"]), c["clean"], (c["via"] or "")[:12],
                       "" if c["exact"] is None else c["exact"]] for c in r["checked"]]},
            {"title": "Steps still to do", "columns": ["version", "action", "why"],
             "rows": [[p["version_id"][:12], p["action"], p["why"]] for p in r["pending"]]},
            {"title": "Samples that reproduce retracted documents",
             "columns": ["sample", "document", "Jaccard (est.)", "shared words", "the shared span"],
             "rows": [[m["sample"], f"{m['dataset_id']}:{m['key']}", m["jaccard"], m["span_words"], m["span_text"]]
                      for m in mem.get("matches", [])]},
        ],
        "plots": [],
    }
