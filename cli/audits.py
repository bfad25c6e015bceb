"""``prov lineage``, ``prov taint`` and ``prov audit``: which data shaped a version, which versions
a document shaped, and the dedup, pre-merge and memorization audits."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import (
    CliError,
    Context,
    FloatRange,
    _gate_limits,
    _gate_options,
    _ray_engine,
    _ray_options,
    _write_html,
    audit_ledger,
    json_option,
    main,
    no_store_option,
    pass_ctx,
)
from provenance.ngrams import MAX_SPAN
from provenance.plain import counted

#: Versions the lineage table lists unless asked for all: a deep history has thousands (a rich
#: table of 6,341 took 3.6 s to draw and filled 570 KB of terminal).
LINEAGE_VERSIONS = 25

_VERSION_ID = re.compile(r"[0-9a-f]{32}")  # a whole version id in an audit's target


@main.command("lineage")
@click.argument("ref", metavar="VERSION")
@click.option("--format", "fmt", type=click.Choice(["table", "mermaid", "dot"]), default="table", show_default=True,
              help="A table of the data, or the version DAG with its datasets as Mermaid or Graphviz.")
@click.option("--all", "show_all", is_flag=True,
              help=f"List every version of the lineage (the table shows the {LINEAGE_VERSIONS} nearest; --json has all).")
@json_option
@pass_ctx
def lineage_cmd(obj: Context, ref: str, fmt: str, show_all: bool, as_json: bool) -> None:
    """Every dataset and shard that shaped VERSION, through all its ancestors, runs and merges:
    examples seen, epochs, the effective contribution through merge weights, the path, and the
    union of the licence conditions."""
    from provenance.lineage import graph_text

    lin = obj.ledger(read_only=True).lineage(ref)
    if fmt != "table" and not as_json:
        click.echo(graph_text(lin, fmt), nl=False)
        return
    show_lineage(lin, as_json, show_all=show_all)


@main.command("taint")
@click.argument("target", required=False, metavar="[DATASET]")
@click.option("--shard", default=None, help="A shard of the dataset (index or name; not with --key).")
@click.option("--key", default=None, help="A document key of the dataset.")
@click.option("--text", "text_file", type=click.File("rb"), default=None,
              help="A file with the text of a document ('-': stdin), looked for in every dataset (so without DATASET, "
                   "--shard or --key): by exact hash, or with --near by similarity.")
@click.option("--near", type=FloatRange(0, 1, min_open=True), default=None,
              help="Also versions whose lineage holds a near-duplicate "
              "(estimated Jaccard >= NEAR) of the target document in any dataset.")
@json_option
@pass_ctx
def taint_cmd(obj: Context, target: str | None, shard: str | None, key: str | None, text_file, near: float | None,
              as_json: bool) -> None:
    """Every version whose lineage contains TARGET: the versions to re-train or re-merge without it.
    DATASET as NAME means every version of the dataset (a document a later version removed still
    shaped what trained on an earlier one); NAME@N that version only."""
    text = None
    if text_file is not None:
        raw = text_file.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{getattr(text_file, 'name', 'stdin')}: not UTF-8 (byte {exc.start})", kind="source") from exc
    report = obj.ledger(read_only=True).taint(dataset=target, shard=shard, key=key, text=text, near=near)
    show_taint(report, as_json)


@main.group("audit")
def audit_group() -> None:
    """Deduplication, pre-merge and memorization audits, stored in the ledger."""


@audit_group.command("dedup")
@click.argument("targets", nargs=-1, required=True, metavar="DATASET|VERSION...")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which two documents are near-duplicates, in (0, 1].")
@click.option("--verify", is_flag=True, help="Re-check pairs near the threshold by exact Jaccard on the source text.")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False), default=None,
              help="Write the pairs to this file instead of the report: Parquet, or CSV for a name ending in .csv.")
@click.option("--all-pairs", is_flag=True,
              help="List every pair of near-duplicates (m copies: m(m-1)/2 pairs) instead of a spanning set of "
                   "each cluster (m copies: m-1 pairs, each with the first copy).")
@click.option("--bucket-window", type=click.IntRange(min=0), default=64, show_default=True,
              help="Compare each document of a band bucket of more than twice this many documents (many near-copies "
                   "of one text) with this many neighbours instead of with every other; 0 compares every two.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@_ray_options("CPUs for the shuffles and comparisons")
@no_store_option
@json_option
@pass_ctx
def audit_dedup_cmd(obj: Context, targets: tuple[str, ...], threshold: float, verify: bool, pairs_file: str | None,
                    all_pairs: bool, bucket_window: int, html_file: str | None, engine: str, ray_options: dict,
                    no_store: bool, as_json: bool) -> None:
    """Near-duplicate documents in datasets, or in everything in a version's lineage: the
    duplicate rate, clusters, each document's near-copies and the pairs."""
    ledger = audit_ledger(obj, no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    if html_path is not None and pairs_file is not None and html_path == ledger.output_path(pairs_file):
        raise click.UsageError(f"--html and --pairs name the same file {pairs_file!r}: the page would replace the pairs")
    options = dict(threshold=threshold, verify=verify, pairs_file=pairs_file, all_pairs=all_pairs,
                   bucket_window=bucket_window, store=not no_store)
    with render.progress(obj.quiet) as bar:
        if engine == "ray":
            report = _ray_engine("ray_dedup").audit_dedup(ledger, list(targets), progress=bar, **ray_options, **options)
        else:
            report = ledger.audit_dedup(list(targets), progress=bar, **options)
    _write_html(report, html_path)
    show_dedup(report, as_json)
    _not_stored(no_store, as_json)


@audit_group.command("list")
@click.option("--kind", type=click.Choice(["dedup", "merge", "memorization"]), default=None, help="Only audits of this kind.")
@json_option
@pass_ctx
def audit_list(obj: Context, kind: str | None, as_json: bool) -> None:
    """Stored audits, newest first, with the pairs each stores (prov audit delete removes them)."""
    ledger = obj.ledger(read_only=True)
    rows = ledger.audits(kind)
    tags = _version_tags(ledger) if rows and not as_json else {}
    render.emit(rows, as_json, lambda rs: "\n".join(
        f"{r['audit_id'][:12]}  {r['kind']:<12} {r['created_at']:%Y-%m-%d %H:%M}  {_stored_pairs(r):>18}  "
        f"{'' if r['passed'] is None else 'passed ' if r['passed'] else 'FAILED '}{_target_text(r['target'], tags)}"
        for r in rs) or "no audits")


def _version_tags(ledger: Any) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {}
    for t in ledger.tags():
        tags.setdefault(t.version_id, []).append(t.name)
    return tags


def _target_text(target: str, tags: dict[str, list[str]]) -> str:
    """An audit's target as people read it: each version id short, with the version's tags now
    (``0da4ab75d401 (demo-merge)``); dataset names as they are."""
    return " ".join(w[:12] + (f" ({', '.join(sorted(tags[w]))})" if w in tags else "") if _VERSION_ID.fullmatch(w)
                    else w for w in target.split(" "))


def _stored_pairs(row: dict[str, Any]) -> str:
    return "pairs deleted" if row.get("pairs_deleted_at") else counted(row.get("pairs", 0), "pair")


@audit_group.command("delete")
@click.argument("audit_ids", nargs=-1, metavar="[AUDIT_ID...]")
@click.option("--before", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S",
                                               "%Y-%m-%d %H:%M"]),
              default=None, help="The audits made before this date or time (UTC); with AUDIT_IDs, only those of them.")
@click.option("--kind", type=click.Choice(["dedup", "merge", "memorization"]), default=None,
              help="Only audits of this kind.")
@click.option("--pairs-only", is_flag=True,
              help="Delete the stored pairs and keep the reports (prov audit show still shows them).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@json_option
@pass_ctx
def audit_delete(obj: Context, audit_ids: tuple[str, ...], before, kind: str | None, pairs_only: bool, dry_run: bool,
                 as_json: bool) -> None:
    """Delete stored audits with their pairs, or with --pairs-only only their pairs: the pairs of
    one gate or memorization audit of a large lineage run to millions of rows. Name the audits,
    or select them with --before (and --kind). An audit that a merge receipt cites keeps its
    report: named, it is refused without --pairs-only; selected by --before, it is kept. The
    space is reused by later writes, and given back where it ends the ledger's file."""
    if not audit_ids and before is None:
        raise click.UsageError("name the audits to delete (prov audit list), or select them with --before DATE")
    ledger = obj.ledger(read_only=dry_run)
    result = ledger.delete_audits(audit_ids, kind=kind, before=before, pairs_only=pairs_only, dry_run=dry_run)
    tags = _version_tags(ledger) if result["deleted"] and not as_json else {}
    render.emit(result, as_json, lambda r: _deletion_text(r, tags))


def _deletion_text(result: dict[str, Any], tags: dict[str, list[str]]) -> str:
    verb = "would delete" if result["dry_run"] else "deleted"
    what = "the pairs of" if result["pairs_only"] else ""
    lines = [f"{r['audit_id'][:12]}  {r['kind']:<12} {r['created_at']:%Y-%m-%d %H:%M}  {counted(r['pairs'], 'pair'):>18}  "
             f"{_target_text(r['target'], tags)}" for r in result["deleted"]]
    lines += [f"kept {r['audit_id'][:12]}: cited by the merge receipt of {r['cited_by'][0][:12]}" for r in result["kept"]]
    lines += [f"not deleted {r['audit_id'][:12]}: {r['why']}" for r in result.get("skipped", [])]
    lines.append(f"{verb} {what + ' ' if what else ''}{counted(len(result['deleted']), 'audit')} "
                 f"({counted(result['pairs'], 'stored pair')})")
    return "\n".join(lines)


@audit_group.command("show")
@click.argument("audit_id")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Write the HTML report.")
@json_option
@pass_ctx
def audit_show(obj: Context, audit_id: str, html_file: str | None, as_json: bool) -> None:
    """A stored audit's report."""
    ledger = obj.ledger(read_only=True)
    html_path = ledger.output_path(html_file) if html_file else None
    row = ledger.audit(audit_id)
    report = row["report"]
    if row.get("pairs_deleted_at"):  # the report stays whole; its pairs are gone (prov audit delete --pairs-only)
        report = {**report, "pairs_deleted_at": str(row["pairs_deleted_at"])}  # the page says so too
        if not as_json:
            click.echo(f"(its stored pairs were deleted on {str(row['pairs_deleted_at'])[:16]} UTC)", err=True)
    _write_html(report, html_path)
    if report.get("kind") == "dedup":
        show_dedup(report, as_json)
    elif report.get("kind") == "merge":
        show_gate(report, as_json)
    elif report.get("kind") == "memorization":
        show_memorization(report, as_json)
    else:
        render.emit(report, as_json, lambda r: json.dumps(r, indent=2, default=str))


@audit_group.command("merge")
@click.argument("versions", nargs=-1, required=True, metavar="V1 V2 [V3...]")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which two documents are near-duplicates, in (0, 1].")
@click.option("--ngram", type=click.IntRange(0, MAX_SPAN), default=13, show_default=True,
              help="Words in the exact-span contamination check (0: skip it; it reads the source text).")
@_gate_options
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_merge_cmd(obj: Context, versions: tuple[str, ...], threshold: float, ngram: int, eval_datasets: tuple[str, ...],
                    max_overlap: float | None, max_contamination: Any, deny_license: str | None, full_lineage: bool,
                    deny_retracted: bool, html_file: str | None, no_store: bool, as_json: bool) -> None:
    """The pre-merge gate: training-data overlap between the versions and contamination with
    evaluation data. Exit status 1 when a policy limit is broken, so it can gate a merge in CI."""
    if len(versions) < 2:
        raise click.UsageError("the gate compares at least two versions: prov audit merge A B [C ...]")
    ledger = audit_ledger(obj, no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    with render.progress(obj.quiet) as bar:
        report = ledger.audit_merge(list(versions), eval_datasets=list(eval_datasets) or None,
                             threshold=threshold, max_overlap=max_overlap, deny_license=deny_license,
                             full_lineage=full_lineage, deny_retracted=deny_retracted, ngram=ngram,
                             store=not no_store, progress=bar,
                             **_gate_limits(max_contamination))
    _write_html(report, html_path)
    show_gate(report, as_json)
    _not_stored(no_store, as_json)
    if not report.passed:
        sys.exit(1)


@audit_group.command("memorization")
@click.argument("ref", metavar="VERSION")
@click.option("--samples", "samples_file", required=True, type=click.Path(dir_okay=False),
              help="Generated texts: JSONL (objects with a text field, or strings) or plain text, one per line.")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which a sample near-duplicates a training document, in (0, 1].")
@click.option("--span", type=click.IntRange(0, MAX_SPAN), default=50, show_default=True,
              help="Words of an exact shared span that count as memorized (0: skip; it reads the source text).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_memorization_cmd(obj: Context, ref: str, samples_file: str, threshold: float, span: int,
                           html_file: str | None, no_store: bool, as_json: bool) -> None:
    """Which training documents in VERSION's lineage its generated samples reproduce (near-duplicate
    or a long exact span), with how many times training saw each and its near-copies."""
    ledger = audit_ledger(obj, no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    with render.progress(obj.quiet) as bar:
        report = ledger.audit_memorization(ref, samples_file, threshold=threshold, span=span, store=not no_store,
                                    progress=bar)
    _write_html(report, html_path)
    show_memorization(report, as_json)
    _not_stored(no_store, as_json)


# -- rendering ------------------------------------------------------------------------------------

def _not_stored(no_store: bool, as_json: bool) -> None:
    """Say that an audit run with --no-store kept nothing: its id names no stored audit."""
    if no_store and not as_json:
        click.echo("  not stored (--no-store): `prov audit show` does not know this id")


def show_lineage(lin, as_json: bool, *, show_all: bool = False) -> None:
    if as_json:
        return render.dump(lin)
    console = render.console()
    t = Table(title=f"Data that shaped {lin.version[:12]}")
    for col in ("dataset", "role", "license", "shards", "examples", "effective share", "via (nearest first)"):
        t.add_column(col)
    for d in lin.datasets:
        t.add_row(d["dataset_id"], d["role"] or "", d["license"] or "unknown", str(d["shards"]), f"{d['examples']:,}",
                  f"{d['effective_share']:.1%}", " → ".join(v[:8] for v in d["path"]))
    console.print(t)
    unregistered = lin.unregistered_inputs
    if unregistered:  # data that shaped the version with no fingerprints and no licence in the ledger
        u = Table(title="Unregistered inputs")
        for col in ("namespace", "name", "run", "version"):
            u.add_column(col)
        shown = unregistered if show_all else unregistered[:LINEAGE_VERSIONS]
        for r in shown:
            u.add_row(render.cell(r["namespace"]), render.cell(r["name"]), r["run_id"][:8], (r["version_id"] or "")[:12])
        console.print(u)
        click.echo(f"{counted(len(unregistered), 'input')} of its runs {'matches' if len(unregistered) == 1 else 'match'}"
                   " no registered dataset: data that shaped the version, of which the ledger has no fingerprints "
                   "and no licence")
        if len(shown) < len(unregistered):
            click.echo(f"{len(unregistered) - len(shown):,} more input(s): --all lists them, --json gives everything")
    versions = lin.versions if show_all else lin.versions.slice(0, LINEAGE_VERSIONS)
    n = lin.versions.num_rows
    v = Table(title="Versions in the lineage" + ("" if versions.num_rows == n else
                                                 f" (the {versions.num_rows} nearest of {n:,})"))
    for col in ("version", "message", "weight", "how"):
        v.add_column(col)
    for row in versions.to_pylist():
        how = (f"{row['merge']} merge" if row["merge"] else f"run {row['run_id'][:8]}" if row["run_id"]
               else "no run recorded: data unknown")
        v.add_row(row["version_id"][:12] + (f" ({', '.join(row['tags'])})" if row["tags"] else ""),
                  render.cell(row["message"]), f"{row['weight']:.3g}", how)
    console.print(v)
    if versions.num_rows < n:
        click.echo(f"{n - versions.num_rows:,} more version(s): --all lists them, --json gives everything")
    lic = lin.license
    flags = [f"{k.replace('_', '-')}: {', '.join(lic[k])}" for k in
             ("non_commercial", "share_alike", "attribution", "unknown_license", "model_generated") if lic[k]]
    click.echo(f"licenses: {', '.join(lic['licenses']) or 'none'}" + ("".join(f"\n  {f}" for f in flags)))
    if lin.unrecorded:
        shown = ", ".join(v[:12] for v in lin.unrecorded[:10])
        more = len(lin.unrecorded) - 10
        click.echo(f"no training data recorded for {len(lin.unrecorded):,} version(s): {shown}"
                   + (f" and {more:,} more (--json lists them)" if more > 0 else ""))
    made = lin.made_by_retraction
    if made:
        click.echo(f"made by retraction {made['retraction_id']}: {made['action']} of {made['replaces'][:12]}"
                   + ("" if made["exact"] else " (approximate: a patch re-applied onto a clean version)"))
    for r in lin.retracted:
        console.print(f"[red]retracted data: retraction {r['retraction_id']} ({escape(r['target'])}: "
                      f"{escape(r['reason'])}) was trained on by run {r['run_id'][:8]} of {r['version_id'][:12]}[/]",
                      highlight=False, markup=True)


def show_taint(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    click.echo(f"target: {report['target']}")
    if report.get("near") is not None:
        click.echo(f"near-duplicates (Jaccard >= {report['near']}): {len(report['matches'])} document(s)")
        for m in report["matches"][:20]:
            click.echo(f"  {m['dataset_id']} {m['key']}  J≈{m['jaccard']:.3f}")
    elif report["matches"]:  # a text found by its exact hash: which documents hold it
        click.echo(f"the text, exactly: {counted(len(report['matches']), 'document')}")
        for m in report["matches"][:20]:
            click.echo(f"  {m['dataset_id']} {m['key']}")
    t = Table(title=f"{len(report['versions'])} tainted version(s)")
    for col in ("version", "tags", "message", "how", "examples"):
        t.add_column(col)
    for v in report["versions"]:
        t.add_row(v["version_id"][:12], ", ".join(v.get("tags", [])), render.cell(v["message"]),
                  "trained on it" if v["direct"] else f"descends from {v['via'][:8]}",
                  f"{v['examples']:,}" if v["direct"] else "")
    render.console().print(t)
    for r in report.get("retractions") or []:
        made = ", ".join(x[:12] for x in r.get("results") or []) or "nothing applied yet"
        click.echo(f"retracted: retraction {r['retraction_id']} ({r['target']}: {r['reason']}); made: {made}")


def show_dedup(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    s, b = report["summary"], report["banding"]
    click.echo(f"dedup audit {report['audit_id'][:12]} of {', '.join(report['datasets'])} at Jaccard >= {report['threshold']}")
    spanning = report.get("pairs_mode", "spanning") == "spanning"
    click.echo(f"  {counted(s['documents'], 'document')}, {counted(s['pairs'], 'pair')} ({s['exact_duplicate_pairs']:,} exact), "
               f"{counted(s['clusters'], 'cluster')} (largest {s['largest_cluster']:,})"
               + ("; the pairs span each cluster (m identical copies: m-1 pairs), --all-pairs lists every pair"
                  if spanning else "; every pair listed"))
    click.echo(f"  duplicate rate {s['duplicate_rate']:.2%} ({s['redundant_documents']:,} redundant documents)")
    if s.get("windowed_buckets"):
        click.echo(f"  {counted(s['windowed_buckets'], 'band bucket')} of more than {2 * report['bucket_window']:,} "
                   f"documents: each compared with {report['bucket_window']:,} neighbours there (--bucket-window), not "
                   "with every other; pairs and near-copy counts are of those compared")
    if s.get("without_words"):
        click.echo(f"  {counted(s['without_words'], 'document')} with no words (empty, or only punctuation): "
                   "compared with nothing")
    click.echo(f"  banding {b['bands']} bands x {b['rows']} rows of {b['num_perm']}: P(candidate | J={report['threshold']}) "
               f"= {b['p_at_threshold']:.4f}")
    v = report.get("verify")
    if v:
        click.echo(f"  verified {v['checked']} of {v['near_threshold']} pairs within ±{v['margin']:.3f} of the threshold "
                   f"by exact Jaccard: {v['rejected']} below it, dropped" + (f"; {v['not_checked']} unreadable" if v["not_checked"] else ""))
        for why in v["unreadable"][:5]:
            click.echo(f"    {why}")
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
        click.echo(f"  pairs written to {report['pairs_file']}")


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
    console = render.console()
    verdict = "[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]"
    console.print(f"pre-merge gate {report['audit_id'][:12]}: {verdict} "
                  f"({'limits: ' + ', '.join(limits) if limits else 'no limits set: a report only'})", highlight=False, markup=True)
    for v in report.get("violations") or [{"policy": "", "message": a} for a in report["alerts"]]:
        # one line each, as wide as it is: a CI log greps it, and Rich would wrap it at the console's width
        console.print(f"  [red]✗ {escape(v['message'])}[/]", highlight=False, markup=True, soft_wrap=True)
    if report.get("retracted") and not policy.get("deny_retracted"):
        console.print(f"  [yellow]! retracted data in the lineage of {len({r['input'] for r in report['retracted']})} "
                      "input(s) (--deny-retracted fails on it): "
                      + escape("; ".join(f"{r['input'][:12]}: retraction {r['retraction_id']}"
                                         for r in report["retracted"])) + "[/]", highlight=False, markup=True)
    labels = report.get("labels") or {}
    for side in report["sides"]:
        data = (f"{side['shards']} shard(s) of {', '.join(side['datasets'])}" if side["datasets"] else
                "no data" + ("" if report["full_lineage"] else " added since the shared ancestor"))
        click.echo(f"  {labels.get(side['version_id'], side['version_id'][:12])}: {data}")
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
        click.echo("contamination: no evaluation datasets registered (role eval) or given (--eval)")
    else:
        span = c["ngram"]
        click.echo(f"contamination with {', '.join(c['eval_datasets'])}: {c['contaminated_eval_documents']} of "
                   f"{c['eval_documents']:,} evaluation documents found in training "
                   f"(exact {c['eval_exact']}, near {c['eval_near']}"
                   + (f", shared {span['n']}-word spans {len(span['eval_keys'])}" if span else "")
                   + (f", trained on by a shared ancestor {c['inherited_eval_documents']}"
                      if c.get("inherited_eval_documents") else "") + ")")
        if c.get("inherited_shards"):
            click.echo(f"  {c['inherited_shards']:,} shard(s) inherited from shared ancestors were not compared with "
                       f"the evaluation data by content (--full-lineage compares them)")
        if c["contaminated_eval_keys"]:
            click.echo(f"  {render.cell(', '.join(c['contaminated_eval_keys']))}")
        if span and span["unreadable"]:
            click.echo(f"  span check skipped {len(span['unreadable'])} unreadable shard(s): {span['unreadable'][0]}")


def show_memorization(report: Any, as_json: bool) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    s = report["summary"]
    click.echo(f"memorization audit {report['audit_id'][:12]} of {report.get('label') or report['version'][:12]}: "
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
        click.echo(f"  the first 5 matches of each sample are shown; {more:,} more in --json and --html")
    for why in report["unreadable"][:5]:
        click.echo(f"  span check skipped: {why}")
