"""``prov lineage``, ``prov taint`` and ``prov audit``: which data shaped a version, which versions
a document shaped, and the dedup, pre-merge and memorization audits."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from provenance.cli import render
from provenance.cli.app import (
    CliError,
    Context,
    _gate_limits,
    _gate_options,
    _write_html,
    json_option,
    main,
    no_store_option,
    pass_ctx,
)


@main.command("lineage")
@click.argument("ref", metavar="VERSION")
@click.option("--format", "fmt", type=click.Choice(["table", "mermaid", "dot"]), default="table", show_default=True,
              help="A table of the data, or the version DAG with its datasets as Mermaid or Graphviz.")
@json_option
@pass_ctx
def lineage_cmd(obj: Context, ref: str, fmt: str, as_json: bool) -> None:
    """Every dataset and shard that shaped VERSION, through all its ancestors, runs and merges:
    examples seen, epochs, the effective contribution through merge weights, the path, and the
    union of the licence conditions."""
    from provenance.lineage import graph_text

    lin = obj.ledger(read_only=True).lineage(ref)
    if fmt != "table" and not as_json:
        click.echo(graph_text(lin, fmt), nl=False)
        return
    render.lineage(lin, as_json)


@main.command("taint")
@click.argument("target", required=False, metavar="[DATASET]")
@click.option("--shard", default=None, help="A shard of the dataset (index or name).")
@click.option("--key", default=None, help="A document key of the dataset.")
@click.option("--text", "text_file", type=click.File("rb"), default=None,
              help="A file with the text of a document ('-': stdin); found by exact hash, or with --near by similarity.")
@click.option("--near", type=float, default=None, help="Also versions whose lineage holds a near-duplicate "
              "(estimated Jaccard >= NEAR) of the target document in any dataset.")
@json_option
@pass_ctx
def taint_cmd(obj: Context, target: str | None, shard: str | None, key: str | None, text_file, near: float | None,
              as_json: bool) -> None:
    """Every version whose lineage contains TARGET: the versions to re-train or re-merge without it."""
    from provenance.audits import taint_report

    text = None
    if text_file is not None:
        raw = text_file.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{getattr(text_file, 'name', 'stdin')}: not UTF-8 (byte {exc.start})", kind="source") from exc
    report = taint_report(obj.ledger(read_only=True), dataset=target, shard=shard, key=key, text=text, near=near)
    render.taint(report, as_json)


@main.group("audit")
def audit_group() -> None:
    """Deduplication, pre-merge and memorization audits, stored in the ledger."""


@audit_group.command("dedup")
@click.argument("targets", nargs=-1, required=True, metavar="DATASET|VERSION...")
@click.option("--threshold", type=float, default=0.8, show_default=True,
              help="Estimated Jaccard at or above which two documents are near-duplicates, in (0, 1].")
@click.option("--verify", is_flag=True, help="Re-check pairs near the threshold by exact Jaccard on the source text.")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False), default=None,
              help="Write the pairs to this Parquet file instead of the report.")
@click.option("--all-pairs", is_flag=True,
              help="List every pair of near-duplicates (m copies: m(m-1)/2 pairs) instead of a spanning set of "
                   "each cluster (m copies: m-1 pairs, each with the first copy).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_dedup_cmd(obj: Context, targets: tuple[str, ...], threshold: float, verify: bool, pairs_file: str | None,
                    all_pairs: bool, html_file: str | None, no_store: bool, as_json: bool) -> None:
    """Near-duplicate documents in datasets, or in everything in a version's lineage: the
    duplicate rate, clusters, each document's near-copies and the pairs."""
    from provenance.audits import audit_dedup

    ledger = obj.ledger(read_only=no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    with render.progress(obj.quiet) as bar:
        report = audit_dedup(ledger, list(targets), threshold=threshold, verify=verify, pairs_file=pairs_file,
                             all_pairs=all_pairs, store=not no_store, progress=bar)
    _write_html(report, html_path)
    render.dedup(report, as_json)


@audit_group.command("list")
@click.option("--kind", type=click.Choice(["dedup", "merge", "memorization"]), default=None, help="Only audits of this kind.")
@json_option
@pass_ctx
def audit_list(obj: Context, kind: str | None, as_json: bool) -> None:
    """Stored audits, newest first."""
    rows = obj.ledger(read_only=True).audits(kind)
    render.emit(rows, as_json, lambda rs: "\n".join(
        f"{r['audit_id'][:12]}  {r['kind']:<12} {r['created_at']:%Y-%m-%d %H:%M}  "
        f"{'' if r['passed'] is None else 'passed ' if r['passed'] else 'FAILED '}{r['target']}" for r in rs) or "no audits")


@audit_group.command("show")
@click.argument("audit_id")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Write the HTML report.")
@json_option
@pass_ctx
def audit_show(obj: Context, audit_id: str, html_file: str | None, as_json: bool) -> None:
    """A stored audit's report."""
    ledger = obj.ledger(read_only=True)
    html_path = ledger.output_path(html_file) if html_file else None
    report = ledger.audit(audit_id)["report"]
    _write_html(report, html_path)
    if report.get("kind") == "dedup":
        render.dedup(report, as_json)
    elif report.get("kind") == "merge":
        render.gate(report, as_json)
    elif report.get("kind") == "memorization":
        render.memorization(report, as_json)
    else:
        render.emit(report, as_json, lambda r: json.dumps(r, indent=2, default=str))


@audit_group.command("merge")
@click.argument("versions", nargs=-1, required=True, metavar="V1 V2 [V3...]")
@click.option("--threshold", type=float, default=0.8, show_default=True,
              help="Estimated Jaccard at or above which two documents are near-duplicates, in (0, 1].")
@click.option("--ngram", type=int, default=13, show_default=True,
              help="Words in the exact-span contamination check (0: skip it; it reads the source text).")
@_gate_options
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_merge_cmd(obj: Context, versions: tuple[str, ...], threshold: float, ngram: int, eval_datasets: tuple[str, ...],
                    max_overlap: float | None, max_contamination: Any, deny_license: str | None, full_lineage: bool,
                    html_file: str | None, no_store: bool, as_json: bool) -> None:
    """The pre-merge gate: training-data overlap between the versions and contamination with
    evaluation data. Exit status 1 when a policy limit is broken, so it can gate a merge in CI."""
    from provenance.gate import audit_merge

    ledger = obj.ledger(read_only=no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    with render.progress(obj.quiet) as bar:
        report = audit_merge(ledger, list(versions), eval_datasets=list(eval_datasets) or None,
                             threshold=threshold, max_overlap=max_overlap, deny_license=deny_license,
                             full_lineage=full_lineage, ngram=ngram, store=not no_store, progress=bar,
                             **_gate_limits(max_contamination))
    _write_html(report, html_path)
    render.gate(report, as_json)
    if not report["passed"]:
        sys.exit(1)


@audit_group.command("memorization")
@click.argument("ref", metavar="VERSION")
@click.option("--samples", "samples_file", required=True, type=click.Path(dir_okay=False),
              help="Generated texts: JSONL (objects with a text field, or strings) or plain text, one per line.")
@click.option("--threshold", type=float, default=0.8, show_default=True,
              help="Estimated Jaccard at or above which a sample near-duplicates a training document, in (0, 1].")
@click.option("--span", type=int, default=50, show_default=True,
              help="Words of an exact shared span that count as memorized (0: skip; it reads the source text).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_memorization_cmd(obj: Context, ref: str, samples_file: str, threshold: float, span: int,
                           html_file: str | None, no_store: bool, as_json: bool) -> None:
    """Which training documents in VERSION's lineage its generated samples reproduce (near-duplicate
    or a long exact span), with how many times training saw each and its near-copies."""
    from provenance.memorization import audit_memorization

    ledger = obj.ledger(read_only=no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    with render.progress(obj.quiet) as bar:
        report = audit_memorization(ledger, ref, samples_file, threshold=threshold, span=span, store=not no_store,
                                    progress=bar)
    _write_html(report, html_path)
    render.memorization(report, as_json)
