"""``prov audit``: the dedup, pre-merge and memorization audits, and the stored audits listed,
shown and deleted. The reports are rendered by :mod:`provenance.cli.audit_reports`; ``prov
lineage`` and ``prov taint`` are :mod:`provenance.cli.lineage`."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import click

from provenance.cli import render
from provenance.cli.app import (
    Context,
    FloatRange,
    PathType,
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
from provenance.cli.audit_reports import show_dedup, show_gate, show_memorization
from provenance.cli.lineage import lineage_cmd, show_lineage, show_taint, taint_cmd
from provenance.ngrams import MAX_SPAN
from provenance.plain import counted, utc_text

_VERSION_ID = re.compile(r"[0-9a-f]{32}")  # a whole version id in an audit's target


@main.group("audit")
def audit_group() -> None:
    """Deduplication, pre-merge and memorization audits, stored in the ledger."""


@audit_group.command("dedup")
@click.argument("targets", nargs=-1, required=True, metavar="DATASET|VERSION...")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which two documents are near-duplicates, in (0, 1].")
@click.option("--verify", is_flag=True, help="Re-check pairs near the threshold by exact Jaccard on the source text.")
@click.option("--pairs", "pairs_file", type=PathType(dir_okay=False), default=None,
              help="Write the pairs to this file instead of the report: Parquet, or CSV for a name ending in .csv.")
@click.option("--all-pairs", is_flag=True,
              help="List every pair of near-duplicates (m copies: m(m-1)/2 pairs) instead of a spanning set of "
                   "each cluster (m copies: m-1 pairs, each with the first copy).")
@click.option("--bucket-window", type=click.IntRange(min=0), default=64, show_default=True,
              help="Compare each document of a band bucket of more than twice this many documents (many near-copies "
                   "of one text) with this many neighbours instead of with every other; 0 compares every two.")
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None, help="Also write an HTML report.")
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
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None, help="Write the HTML report.")
@json_option
@pass_ctx
def audit_show(obj: Context, audit_id: str, html_file: str | None, as_json: bool) -> None:
    """A stored audit's report."""
    ledger = obj.ledger(read_only=True)
    html_path = ledger.output_path(html_file) if html_file else None
    row = ledger.audit(audit_id)
    report = row["report"]
    if row.get("pairs_deleted_at"):  # the report stays whole; its pairs are gone (prov audit delete --pairs-only)
        report = {**report, "pairs_deleted_at": utc_text(row["pairs_deleted_at"])}  # the page says so too
        if not as_json:
            render.echo(f"(its stored pairs were deleted on {row['pairs_deleted_at']:%Y-%m-%d %H:%M} UTC)", err=True)
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
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None, help="Also write an HTML report.")
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
@click.option("--samples", "samples_file", required=True, type=PathType(dir_okay=False, allow_dash=True),
              help="Generated texts: JSONL (.jsonl, .ndjson, .json: objects with a text field, or strings), "
                   "else plain text, one per line; - reads standard input (JSONL when it starts with {).")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which a sample near-duplicates a training document, in (0, 1].")
@click.option("--span", type=click.IntRange(0, MAX_SPAN), default=50, show_default=True,
              help="Words of an exact shared span that count as memorized (0: skip; it reads the source text).")
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_memorization_cmd(obj: Context, ref: str, samples_file: str, threshold: float, span: int,
                           html_file: str | None, no_store: bool, as_json: bool) -> None:
    """Which training documents in VERSION's lineage its generated samples reproduce (near-duplicate
    or a long exact span), with how many times training saw each and its near-copies."""
    from provenance.audits.texts import read_stdin_samples

    ledger = audit_ledger(obj, no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    if samples_file != "-":
        refuse_html_over(html_path, samples_file, "--samples", "the samples")
    samples = read_stdin_samples(sys.stdin.buffer) if samples_file == "-" else samples_file
    with render.progress(obj.quiet) as bar:
        report = ledger.audit_memorization(ref, samples, threshold=threshold, span=span, store=not no_store,
                                           progress=bar)
    _write_html(report, html_path)
    show_memorization(report, as_json)
    _not_stored(no_store, as_json)


def refuse_html_over(html_path: Any, given: Any, option: str, what: str) -> None:
    """Refuse an ``--html`` page that would be written over the file ``option`` read (``what``),
    through a link or another spelling of its path too: the page replaced the user's input."""
    if html_path is None or given is None:
        return
    try:
        same = os.path.samefile(html_path, given)
    except OSError:  # one is not there: not the same
        return
    if same:
        raise click.UsageError(f"--html and {option} name the same file {str(given)!r}: the page would replace {what}")


def _not_stored(no_store: bool, as_json: bool) -> None:
    """Say that an audit run with --no-store kept nothing: its id names no stored audit."""
    if no_store and not as_json:
        render.echo("  not stored (--no-store): `prov audit show` does not know this id")


__all__ = ["audit_group", "lineage_cmd", "show_dedup", "show_gate", "show_lineage", "show_memorization", "show_taint",
           "taint_cmd"]
