"""The audits' reports for people: the dedup audit, the pre-merge gate and the memorization
audit, as lines and tables (``--json`` prints the report as it is), for ``prov audit`` and for
``prov demo`` (:mod:`provenance.cli.admin`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from provenance.cli import render
from provenance.plain import counted


def show_dedup(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    s, b = report["summary"], report["banding"]
    render.echo(f"dedup audit {report['audit_id'][:12]} of {', '.join(report['datasets'])} at Jaccard >= {report['threshold']}")
    spanning = report.get("pairs_mode", "spanning") == "spanning"
    render.echo(f"  {counted(s['documents'], 'document')}, {counted(s['pairs'], 'pair')} ({s['exact_duplicate_pairs']:,} exact), "
                f"{counted(s['clusters'], 'cluster')} (largest {s['largest_cluster']:,})"
                + ("; the pairs span each cluster (m identical copies: m-1 pairs), --all-pairs lists every pair"
                  if spanning else "; every pair listed"))
    render.echo(f"  duplicate rate {s['duplicate_rate']:.2%} ({counted(s['redundant_documents'], 'redundant document')})")
    if s.get("windowed_buckets"):
        render.echo(f"  {counted(s['windowed_buckets'], 'band bucket')} of more than {2 * report['bucket_window']:,} "
                    f"documents: each compared with {report['bucket_window']:,} neighbours there (--bucket-window), not "
                    "with every other; pairs and near-copy counts are of those compared")
    if s.get("without_words"):
        render.echo(f"  {counted(s['without_words'], 'document')} with no words (empty, or only punctuation): "
                    "compared with nothing")
    render.echo(f"  banding {b['bands']} bands x {b['rows']} rows of {b['num_perm']}: P(candidate | J={report['threshold']}) "
                f"= {b['p_at_threshold']:.4f}")
    v = report.get("verify")
    if v:
        render.echo(f"  verified {v['checked']} of {v['near_threshold']} pairs within ±{v['margin']:.3f} of the threshold "
                    f"by exact Jaccard: {v['rejected']} below it, dropped" + (f"; {v['not_checked']} unreadable" if v["not_checked"] else ""))
        for why in v["unreadable"][:5]:
            render.echo(f"    {why}")
    if report["largest_clusters"]:
        t = Table(title="Largest clusters")
        for col in ("size", "datasets", "sample keys"):
            t.add_column(col)
        for c in report["largest_clusters"]:
            t.add_row(str(c["size"]), ", ".join(c["datasets"]), render.cell(", ".join(c["sample_keys"])))
        render.console().print(t)
    pairs = report.get("pairs")
    if pairs:
        t = Table(title=f"Pairs (best {min(20, len(pairs))} of {len(pairs):,})")
        for col in ("a", "b", "jaccard", "±"):
            t.add_column(col)
        for p in pairs[:20]:
            t.add_row(render.cell(p["a"]), render.cell(p["b"]), f"{p['jaccard']:.3f}", f"{p['stderr']:.3f}")
        render.console().print(t)
    elif report.get("pairs_file"):
        render.echo(f"  pairs written to {report['pairs_file']}")


def show_gate(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    policy = report["policy"]
    limits = [f"max-overlap {policy['max_overlap']:.1%}" if policy["max_overlap"] is not None else "",
              f"max-contamination {policy['max_contamination']}" if policy["max_contamination"] is not None else "",
              f"deny-licence {','.join(policy['deny_license'])}" if policy.get("deny_license") else "",
              "deny-retracted" if policy.get("deny_retracted") else ""]
    limits = [x for x in limits if x]
    render.say(f"pre-merge gate {report['audit_id'][:12]}: ", render.PASSED if report["passed"] else render.FAILED,
               f" ({'limits: ' + ', '.join(limits) if limits else 'no limits set: a report only'})")
    for v in report.get("violations") or [{"policy": "", "message": a} for a in report["alerts"]]:
        # one line each, as wide as it is: a CI log greps it, and Rich would wrap it at the console's width
        render.say(("  ✗ " + v["message"], "red"), soft_wrap=True)
    if report.get("retracted") and not policy.get("deny_retracted"):
        # one entry per input and retraction: a row per run that trained on the data named an input twice
        named = dict.fromkeys(f"{r['input'][:12]}: retraction {r['retraction_id']}" for r in report["retracted"])
        render.say((f"  ! retracted data in the lineage of {len({r['input'] for r in report['retracted']})} input(s) "
                    "(--deny-retracted fails on it): " + "; ".join(named), "yellow"), soft_wrap=True)
    labels = report.get("labels") or {}
    for side in report["sides"]:
        data = (f"{side['shards']} shard(s) of {', '.join(side['datasets'])}" if side["datasets"] else
                "no data" + ("" if report["full_lineage"] else " added since the shared ancestor"))
        render.echo(f"  {labels.get(side['version_id'], side['version_id'][:12])}: {data}")
    t = Table(title=f"Training-data overlap (Jaccard >= {report['threshold']})")
    for col in ("A", "B", "A docs", "A overlap", "B docs", "B overlap", "datasets"):
        t.add_column(col)
    for o in report["overlap"]:
        t.add_row(o["a"][:12], o["b"][:12], f"{o['a_documents']:,}",
                  f"{o['a_fraction']:.2%} ({o['a_exact']} exact, {o['a_near']} near)", f"{o['b_documents']:,}",
                  f"{o['b_fraction']:.2%} ({o['b_exact']} exact, {o['b_near']} near)",
                  render.cell(", ".join(sorted({f"{d['dataset']}~{d['other']}" for d in o["datasets"]}
                                               | {f"{d['other']}~{d['dataset']}" for d in o.get("b_datasets", [])}))))
    render.console().print(t)
    c = report["contamination"]
    if c is None:
        render.echo("contamination: no evaluation datasets registered (role eval) or given (--eval)")
    else:
        span = c["ngram"]
        render.echo(f"contamination with {', '.join(c['eval_datasets'])}: {c['contaminated_eval_documents']} of "
                    f"{c['eval_documents']:,} evaluation documents found in training "
                    f"(exact {c['eval_exact']}, near {c['eval_near']}"
                    + (f", shared {span['n']}-word spans {len(span['eval_keys'])}" if span else "")
                    + (f", trained on by a shared ancestor {c['inherited_eval_documents']}"
                      if c.get("inherited_eval_documents") else "") + ")")
        if c.get("inherited_shards"):
            render.echo(f"  {c['inherited_shards']:,} shard(s) inherited from shared ancestors were not compared with "
                        f"the evaluation data by content (--full-lineage compares them)")
        if c["contaminated_eval_keys"]:
            render.echo(f"  {render.cell(', '.join(c['contaminated_eval_keys']))}")
        if span and span["unreadable"]:
            render.echo(f"  span check skipped {len(span['unreadable'])} unreadable shard(s): {span['unreadable'][0]}")


def show_memorization(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    s = report["summary"]
    render.echo(f"memorization audit {report['audit_id'][:12]} of {report.get('label') or report['version'][:12]}: "
                f"{s['samples_matching_training']} of {counted(s['samples'], 'sample')} match training documents "
                f"({counted(s['training_documents_matched'], 'document')}; highest exposure {s['max_exposure']:g})")
    t = Table()
    for col in ("sample", "document", "Jaccard", "span (words)", "near-copies", "exposure"):
        t.add_column(col)
    more = 0
    for sample in report["samples"]:
        for m in sample["matches"][:5]:
            t.add_row(str(sample["index"]), render.cell(f"{m['dataset_id']}:{m['key']}"), f"{m['jaccard']:.2f}",
                      str(m["span_words"] or ""), str(m["near_copies"]), f"{m['exposure']:g}")
        more += max(len(sample["matches"]) - 5, 0)
    if t.row_count:
        render.console().print(t)
    if more:
        render.echo(f"  the first 5 matches of each sample are shown; {more:,} more in --json and --html")
    for why in report["unreadable"][:5]:
        render.echo(f"  span check skipped: {why}")
