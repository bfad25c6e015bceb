"""``prov lineage`` and ``prov taint``: which data shaped a version, and which versions a dataset,
shard, document or text shaped; with their tables for people (``--json`` for programs)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import Context, FloatRange, json_option, main, once, pass_ctx, read_text
from provenance.plain import counted

#: Versions the lineage table lists unless asked for all: a deep history has thousands (a rich
#: table of 6,341 took 3.6 s to draw and filled 570 KB of terminal).
LINEAGE_VERSIONS = 25
#: Documents ``prov taint`` lists unless asked for all (a near-duplicate search can match thousands).
TAINT_MATCHES = 20


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

    if fmt != "table" and as_json:  # the graph was dropped unsaid and the JSON printed instead
        raise click.UsageError(f"--format {fmt} draws the graph, --json gives the lineage's data: give one of them")
    lin = obj.ledger(read_only=True).lineage(ref)
    if fmt != "table":
        render.echo(graph_text(lin, fmt), nl=False)
        return
    show_lineage(lin, as_json, show_all=show_all)


@main.command("taint")
@click.argument("target", required=False, metavar="[DATASET]")
@click.option("--shard", multiple=True, callback=once, help="A shard of the dataset (index or name; not with --key).")
@click.option("--key", multiple=True, callback=once, help="A document key of the dataset.")
@click.option("--text", "text_file", type=click.File("rb"), default=None,
              help="A file with the text of a document ('-': stdin), looked for in every dataset (so without DATASET, "
                   "--shard or --key): by exact hash, or with --near by similarity.")
@click.option("--near", type=FloatRange(0, 1, min_open=True), default=None,
              help="Also versions whose lineage holds a near-duplicate "
              "(estimated Jaccard >= NEAR) of the target document in any dataset.")
@click.option("--all", "show_all", is_flag=True,
              help=f"List every tainted version and matching document (the table shows {LINEAGE_VERSIONS} versions "
                   f"and {TAINT_MATCHES} documents; --json has all).")
@json_option
@pass_ctx
def taint_cmd(obj: Context, target: str | None, shard: str | None, key: str | None, text_file, near: float | None,
              show_all: bool, as_json: bool) -> None:
    """Every version whose lineage contains a dataset, a shard of it (--shard), a document of it
    (--key) or a text (--text): the versions to re-train or re-merge without it. DATASET as NAME
    means every version of the dataset (a document a later version removed still shaped what
    trained on an earlier one); NAME@N that version only."""
    if not (target or shard or key or text_file):  # a usage error (it exited 4, as if the input were bad)
        raise click.UsageError("give what to look for: DATASET (with --shard or --key for a part of it), or --text FILE")
    text = None if text_file is None else read_text(text_file)
    report = obj.ledger(read_only=True).taint(dataset=target, shard=shard, key=key, text=text, near=near)
    show_taint(report, as_json, show_all=show_all)


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
        render.echo(f"{counted(len(unregistered), 'input')} of its runs {'matches' if len(unregistered) == 1 else 'match'}"
                    " no registered dataset: data that shaped the version, of which the ledger has no fingerprints "
                    "and no licence")
        if len(shown) < len(unregistered):
            render.echo(f"{len(unregistered) - len(shown):,} more input(s): --all lists them, --json gives everything")
    versions = lin.versions if show_all else lin.versions.slice(0, LINEAGE_VERSIONS)
    n = lin.versions.num_rows
    v = Table(title="Versions in the lineage" + ("" if versions.num_rows == n else
                                                 f" (the {versions.num_rows} nearest of {n:,})"))
    for col in ("version", "message", "weight", "how"):
        v.add_column(col)
    for row in versions.to_pylist():
        how = (f"{row['merge']} merge" if row["merge"] else "no run recorded: data unknown" if not row["run_id"]
               else f"run {row['run_id'][:8]}" if row.get("step") is None  # a checkpoint: its run's steps up to it
               else f"checkpoint of run {row['run_id'][:8]} "
               + ("before any step" if row["step"] < 0 else f"at step {row['step']}"))
        v.add_row(row["version_id"][:12] + (f" ({', '.join(row['tags'])})" if row["tags"] else ""),
                  render.cell(row["message"]), f"{row['weight']:.3g}", how)
    console.print(v)
    if versions.num_rows < n:
        render.echo(f"{n - versions.num_rows:,} more version(s): --all lists them, --json gives everything")
    lic = lin.license
    flags = [f"{k.replace('_', '-')}: {', '.join(lic[k])}" for k in
             ("non_commercial", "share_alike", "attribution", "unknown_license", "model_generated") if lic[k]]
    render.echo(f"licenses: {', '.join(lic['licenses']) or 'none'}" + ("".join(f"\n  {f}" for f in flags)))
    if lin.unrecorded:
        shown = ", ".join(v[:12] for v in lin.unrecorded[:10])
        more = len(lin.unrecorded) - 10
        render.echo(f"no training data recorded for {len(lin.unrecorded):,} version(s): {shown}"
                    + (f" and {more:,} more (--json lists them)" if more > 0 else ""))
    made = lin.made_by_retraction
    if made:
        render.echo(f"made by retraction {made['retraction_id']}: {made['action']} of {made['replaces'][:12]}"
                    + ("" if made["exact"] else " (approximate: a patch re-applied onto a clean version)"))
    for r in lin.retracted:
        render.say((f"retracted data: retraction {r['retraction_id']} ({r['target']}: {render.cell(r['reason'])}) "
                    f"was trained on by run {r['run_id'][:8]} of {r['version_id'][:12]}", "red"))


def show_taint(report: Any, as_json: bool, *, show_all: bool = False) -> None:
    report = render.as_data(report)
    if as_json:
        return render.dump(report)
    render.echo(f"target: {report['target']}")
    matches = report["matches"] if show_all else report["matches"][:TAINT_MATCHES]
    if report.get("near") is not None:
        render.echo(f"near-duplicates (Jaccard >= {report['near']}): {len(report['matches'])} document(s)")
        for m in matches:
            render.echo(f"  {m['dataset_id']} {m['key']}  J≈{m['jaccard']:.3f}")
    elif report["matches"] or report["target"].startswith("text ("):  # a text, by its exact hash: which documents
        render.echo(f"the text, exactly: {counted(len(report['matches']), 'document')}"  # hold it (none: say so)
                    + ("" if report["matches"] else " (no dataset holds it)"))
        for m in matches:
            render.echo(f"  {m['dataset_id']} {m['key']}")
    if len(matches) < len(report["matches"]):  # they were cut at 20 without a word
        render.echo(f"  {len(report['matches']) - len(matches):,} more document(s): --all lists them, --json gives "
                    "everything")
    versions = report["versions"] if show_all else report["versions"][:LINEAGE_VERSIONS]
    n = len(report["versions"])
    t = Table(title=f"{n:,} tainted version(s)" + ("" if len(versions) == n else f" (the first {len(versions)})"))
    for col in ("version", "tags", "message", "how", "examples"):
        t.add_column(col)
    for v in versions:
        t.add_row(v["version_id"][:12], ", ".join(v.get("tags", [])), render.cell(v["message"]),
                  "trained on it" if v["direct"] else f"descends from {v['via'][:8]}",
                  f"{v['examples']:,}" if v["direct"] else "")
    render.console().print(t)
    if len(versions) < n:
        render.echo(f"{n - len(versions):,} more version(s): --all lists them, --json gives everything")
    for r in report.get("retractions") or []:
        made = ", ".join(x[:12] for x in r.get("results") or []) or "nothing applied yet"
        render.echo(f"retracted: retraction {r['retraction_id']} ({r['target']}: {render.cell(r['reason'])}); "
                    f"made: {made}")  # a reason may run to pages: `prov retractions ID` shows it whole
