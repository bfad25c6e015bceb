"""Audit reports (dedup, pre-merge gate, memorization) as the pages of :mod:`provenance.reports`:
the summary, the alerts, the tables people look for first, and the plots where a picture reads
faster than a table (similarity distribution, cluster sizes, the LSH S-curve, exposure versus
similarity)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.reports import write_html

_CLUSTER_BINS = [(2, 2), (3, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 10**18)]


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` (as an audit function returned it) as one self-contained HTML page."""
    kind = report.get("kind")
    pages = {"dedup": _dedup, "merge": _gate, "memorization": _memorization}
    if kind not in pages:
        raise InvalidParameterError(f"no HTML page for an audit of kind {kind!r}")
    page = pages[kind](report)
    page["subtitle"] = f"audit {report['audit_id']} · {report['created_at']} UTC"
    page["json"] = {k: v for k, v in report.items() if k != "pairs"}
    return write_html(page, path)


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
        tables.append({"title": "Pairs, most similar first", "columns": ["a", "b", "Jaccard (est.)", "± s.e.", "exact"],
                       "rows": [[p["a"], p["b"], p["jaccard"], p["stderr"], p["exact"]] for p in pairs]})
    return {
        "title": f"Deduplication audit of {', '.join(r['datasets'])}",
        "summary": {"documents": s["documents"], "threshold (Jaccard)": r["threshold"], "pairs": s["pairs"],
                    "exact duplicate pairs": s["exact_duplicate_pairs"], "clusters": s["clusters"],
                    "largest cluster": s["largest_cluster"], "redundant documents": s["redundant_documents"],
                    "duplicate rate": s["duplicate_rate"], "banding": f"{b['bands']} bands × {b['rows']} rows",
                    "P(candidate) at threshold": b["p_at_threshold"],
                    **({"verified pairs": v["checked"], "rejected by exact Jaccard": v["rejected"]} if v else {})},
        "alerts": [f"not verified: {u}" for u in (v or {}).get("unreadable", [])],
        "tables": tables,
        "plots": [
            {"kind": "histogram", "title": "Similarity of the pairs found", "x_label": "estimated Jaccard",
             "y_label": "pairs", "bins": r["similarity_histogram"], "vlines": [{"x": r["threshold"], "label": "threshold"}]},
            {"kind": "bar", "title": "Cluster sizes", "x_label": "documents in the cluster", "y_label": "clusters",
             "bars": bars},
            {"kind": "line", "title": "LSH S-curve: probability that a pair becomes a candidate",
             "x_label": "Jaccard similarity", "y_label": "P(candidate)",
             "series": [{"name": f"{b['bands']} bands × {b['rows']} rows", "points": b["s_curve"]}],
             "vlines": [{"x": r["threshold"], "label": "threshold"}]},
        ],
    }


def _gate(r: dict[str, Any]) -> dict[str, Any]:
    c = r["contamination"]
    summary: dict[str, Any] = {"passed": r["passed"], "versions": ", ".join(v[:12] for v in r["versions"]),
                               "threshold (Jaccard)": r["threshold"],
                               "max overlap": r["policy"]["max_overlap"],
                               "max contamination": r["policy"]["max_contamination"]}
    if c:
        summary.update({"evaluation datasets": ", ".join(c["eval_datasets"]),
                        "contaminated evaluation documents": c["contaminated_eval_documents"]})
    tables = [{"title": "Training-data overlap", "columns": ["A", "B", "A documents", "A overlap", "B documents",
                                                          "B overlap"],
               "rows": [[o["a"][:12], o["b"][:12], o["a_documents"],
                         f"{o['a_fraction']:.2%} ({o['a_exact']} exact, {o['a_near']} near)", o["b_documents"],
                         f"{o['b_fraction']:.2%} ({o['b_exact']} exact, {o['b_near']} near)"] for o in r["overlap"]]},
              {"title": "Overlapping datasets", "columns": ["A", "B", "dataset", "overlaps", "exact", "near"],
               "rows": [[o["a"][:12], o["b"][:12], d["dataset"], d["other"], d["exact"], d["near"]]
                        for o in r["overlap"] for d in o["datasets"]]}]
    if c:
        tables.append({"title": "Contaminated evaluation documents", "columns": ["document"],
                       "rows": [[k] for k in c["contaminated_eval_keys"]]})
    return {"title": "Pre-merge gate", "summary": summary, "alerts": r["alerts"], "tables": tables,
            "plots": [{"kind": "bar", "title": "Share of each side's training documents that overlap the other",
                       "x_label": "side", "y_label": "fraction",
                       "bars": [[f"{o[s][:8]} vs {o[t][:8]}", o[f"{s}_fraction"]] for o in r["overlap"]
                                for s, t in (("a", "b"), ("b", "a"))]}]}


def _memorization(r: dict[str, Any]) -> dict[str, Any]:
    points = [[m["jaccard"], m["exposure"]] for s in r["samples"] for m in s["matches"]]
    return {
        "title": f"Memorization audit of {r['version'][:12]}",
        "summary": r["summary"],
        "tables": [{"title": "Samples that match training documents",
                    "columns": ["sample", "document", "Jaccard (est.)", "longest shared span (words)", "exposure"],
                    "rows": [[s["index"], f"{m['dataset_id']}:{m['key']}", m["jaccard"], m["span_words"], m["exposure"]]
                             for s in r["samples"] for m in s["matches"]]}],
        "plots": [{"kind": "scatter", "title": "Exposure versus similarity", "x_label": "estimated Jaccard",
                   "y_label": "exposure (times training saw the document and its near-copies)", "points": points,
                   "log_y": True}],
    }
