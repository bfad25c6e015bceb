"""``prov init``, ``prov sql``, ``prov gc``, ``prov verify`` and ``prov demo``: the ledger as a whole."""

from __future__ import annotations

import itertools
import re
import shlex
import sys
import tempfile
from typing import Any

import click
import pyarrow as pa
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import EXIT_POLICY, Context, PathType, json_option, main, pass_ctx
from provenance.cli.audit_reports import show_gate
from provenance.cli.datasets import show_datasets
from provenance.cli.lineage import show_lineage
from provenance.ledger._common import LEDGER_DIR
from provenance.plain import counted, dumps


@main.command("init")
@click.argument("path", default=None, required=False, type=PathType(file_okay=False))
@click.option("--objects", "objects", metavar="URL", default=None,
              help="Keep the tensor objects in a bucket prefix (s3://bucket/prefix: empty, this ledger's alone) "
                   "instead of PATH/.prov/objects/; S3 settings come from the standard AWS variables.")
@click.option("--documents", "documents", metavar="URL", default=None,
              help="Keep the Parquet document files of large datasets in a bucket prefix (s3://bucket/prefix: "
                   "empty, this ledger's alone) instead of PATH/.prov/documents/.")
@json_option
@pass_ctx
def init_cmd(obj: Context, path: str | None, objects: str | None, documents: str | None, as_json: bool) -> None:
    """Create a ledger (PATH/.prov: a DuckDB database and an object folder; --objects and
    --documents put the tensor objects and the Parquet document files in a bucket). PATH defaults
    to --ledger's folder when it is given, else the current folder."""
    path = _init_path(path, obj.ledger_path)
    from provenance.api import Ledger

    above = _ledger_above(path)
    ledger = Ledger.init(path, objects=objects, documents=documents)
    if above is not None:  # it said nothing, and the new ledger took the place of the one above for every command below
        import warnings

        from provenance.errors import ProvenanceWarning

        warnings.warn(ProvenanceWarning(
            f"{ledger.root.parent} is inside the project of the ledger {above}: commands run in it or below now "
            f"use the new ledger, not that one (--ledger {above.parent} names that one)"), stacklevel=1)
    render.emit({"ledger": str(ledger.root), "schema_version": ledger.schema_version(),
                 "objects": ledger.objects_url or str(ledger.objects_path),
                 "documents": ledger.documents_url or str(ledger.documents_path)}, as_json,
                lambda d: f"created ledger {d['ledger']} (schema version {d['schema_version']}); objects in "
                          f"{d['objects']}, Parquet document files in {d['documents']}")


def _init_path(path: str | None, ledger: str | None) -> str:
    """The folder ``prov init`` makes its ledger in: PATH, else ``--ledger`` (or $PROV_LEDGER),
    else the current folder. ``prov --ledger l init`` made the ledger in the current folder
    without a word, and every later ``--ledger l`` found none; a PATH and a ``--ledger`` typed on
    the command line that name two folders are refused ($PROV_LEDGER gives way to a PATH)."""
    from provenance.remote import is_url

    typed = click.get_current_context().find_root().get_parameter_source("ledger") is click.core.ParameterSource.COMMANDLINE
    if path is None:
        if ledger is None:
            return "."
        if is_url(ledger):
            raise click.UsageError(f"{'--ledger' if typed else '$PROV_LEDGER'} {ledger} is a ledger server: prov init "
                                   "makes a ledger in a folder; give it one (a server's ledger is made by prov serve)")
        return ledger
    if ledger is not None and typed and (is_url(ledger) or _project(ledger) != _project(path)):
        raise click.UsageError(f"--ledger {ledger} and PATH {path} name two ledgers: give one of them")
    return path


def _ledger_above(path: str) -> Any:
    """The ledger folder (``.prov``) that commands run in ``path`` find before ``prov init`` makes
    one there, or None."""
    from provenance.errors import LedgerNotFoundError
    from provenance.ledger import LedgerStore

    try:
        return LedgerStore.find(_project(path).parent)
    except (LedgerNotFoundError, OSError):
        return None


def _project(path: str) -> Any:
    from pathlib import Path

    p = Path(path).absolute()
    return p.parent if p.name == ".prov" else p


class _SqlCommand(click.Command):
    """``prov sql``, whose QUERY may open with a SQL comment: ``prov sql "$(cat q.sql)"`` of a file
    that starts with ``-- what it counts`` got click's ``No such option '-- what it counts …'``.
    An argument that starts with ``-`` and holds white space before any ``=`` is no option's
    name: it goes after ``--``, as the query."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:
            queries = [a for a in args if a.startswith("-") and re.search(r"\s", a.split("=", 1)[0])]
            args = [a for a in args if a not in queries] + (["--", *queries] if queries else [])
        return super().parse_args(ctx, args)


@main.command("sql", cls=_SqlCommand)
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
@json_option
@pass_ctx
def sql_cmd(obj: Context, query: str, fmt: str, as_json: bool) -> None:
    """Run one read-only SELECT over the ledger (writes are refused).

    Tables: datasets, shards, documents, versions, version_params, tags, runs,
    run_datasets, run_shards, run_examples, version_fishers, merge_receipts, audits,
    audit_pairs, retractions and more: docs/schema.md lists every table and column.
    CSV lines end with a newline alone (for shell pipes).
    """
    given = click.get_current_context().get_parameter_source("fmt") is click.core.ParameterSource.COMMANDLINE
    if as_json and fmt != "json" and given:
        raise click.UsageError(f"--json and --format {fmt} ask for two formats: give one of them")  # --json won silently
    fmt = "json" if as_json else fmt
    batches = obj.ledger(read_only=True).sql_batches(query)
    first = next(batches)  # the query checked, and the result's schema
    if fmt == "table":  # read at once, then shown: the first rows kept, the rest counted
        render.arrow(first.schema, itertools.chain([first], batches), fmt)
        return
    # The result goes to a temporary file first, a batch at a time, and the database is closed before
    # it is printed: memory holds one batch (a million documents' CSV held 1.4 GB), and output piped
    # into a pager does not keep the database open, and other processes from writing, while it waits.
    with tempfile.TemporaryFile(prefix="prov-sql-") as spill:
        with pa.ipc.new_stream(spill, first.schema) as writer:
            for batch in itertools.chain([first], batches):
                writer.write_batch(batch)
        spill.seek(0)
        with pa.ipc.open_stream(spill) as reader:
            render.arrow(reader.schema, reader, fmt)


@main.command("gc")
@click.option("--apply", is_flag=True, help="Remove the objects (default: only list them).")
@json_option
@pass_ctx
def gc_cmd(obj: Context, apply: bool, as_json: bool) -> None:
    """List (or with --apply remove) objects that no version uses, temporary files of
    interrupted writes and of killed processes' queries, the folders of killed Ray registrations
    and audits, and Parquet document folders that no dataset lists."""
    report = obj.ledger(read_only=not apply).gc(apply=apply)
    render.emit(report, as_json, show_gc)


@main.command("backup")
@click.argument("destination", type=PathType(file_okay=False))
@click.option("--link", is_flag=True, help="Hard-link the objects instead of copying them (fast; shares the disk).")
@json_option
@pass_ctx
def backup_cmd(obj: Context, destination: str, link: bool, as_json: bool) -> None:
    """Copy the ledger, consistently, into DESTINATION (a new or empty folder), also while a server
    serves it: with --ledger http://..., DESTINATION is a folder on the server's machine. The copy
    is made in DESTINATION/.prov.partial and renamed to .prov when whole (one that fails, e.g. on a
    full disk, is removed), then verified."""
    from provenance.backup import backup_destination
    from provenance.remote import is_url

    ledger = obj.ledger()
    copy = None if is_url(obj.ledger_path) else backup_destination(destination) / LEDGER_DIR  # a server's: its own
    there = copy is None or copy.exists()
    try:
        with render.progress(obj.quiet) as bar:  # an 18 s backup of a 1M-document ledger said nothing until done
            report = ledger.backup(destination, link=link, progress=bar)
    except BaseException:  # Ctrl-C in the check of the copy (also as DuckDB's error): the copy is whole, and
        if not there and copy.is_dir():
            obj.kept = f"the copy {copy}, whole; its check was stopped"  # "Aborted!" alone read as no copy
            obj.resume = f"check it with `prov --ledger {shlex.quote(str(copy.parent))} verify --objects`"
        raise
    render.emit(report, as_json, lambda d: f"backed up to {d['destination']}: database {d['database_bytes']:,} bytes, "
                                          f"{d['objects_copied'] + d['objects_linked']:,} objects "
                                          f"({d['object_bytes']:,} bytes), Parquet document files "
                                          f"{d.get('document_bytes', 0):,} bytes; "
                                          f"verified (every object re-hashed): {'ok' if d['verified'] else 'DAMAGED'}"
                                          + "".join(f"\n  ✗ {p}" for p in d.get("problems", [])))
    if not report["verified"]:
        sys.exit(EXIT_POLICY)


@main.command("verify")
@click.option("--objects", "rehash", is_flag=True,
              help="Also re-read and re-hash every stored object, and read every row of the database (slow: reads "
                   "the whole object store and database).")
@click.option("--repair", is_flag=True,
              help="Move damaged objects into .prov/quarantine/ (the next commit of the same tensor writes it "
                   "again) and remove temporary files of interrupted writes.")
@json_option
@pass_ctx
def verify_cmd(obj: Context, rehash: bool, repair: bool, as_json: bool) -> None:
    """Check the ledger: every object the versions need is there and whole (--objects: re-hashed),
    every version's parents, manifest and tags resolve, every dataset agrees with its shards and
    documents. Exit status 1 when anything is damaged, naming the versions it affects."""
    ledger = obj.ledger(read_only=not repair)
    with render.progress(obj.quiet) as bar:
        report = ledger.verify(objects=rehash, repair=repair, progress=bar)
    show_verify(report, as_json)
    if not report.ok:
        sys.exit(EXIT_POLICY)


@main.command("demo")
@click.argument("path", default="prov-demo", type=PathType(file_okay=False))
@click.option("--docs", "n_docs", type=click.IntRange(20, 1_000_000), default=2000, show_default=True,
              help="Documents in the main corpus.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the generated corpus.")
@click.option("--server", "served", is_flag=True,
              help="Tell the story through a ledger server: PATH/.prov gets tokens, `prov serve` runs as a "
                   "subprocess on a free loopback port, and everything goes over HTTP.")
@json_option
@pass_ctx
def demo_cmd(obj: Context, path: str, n_docs: int, seed: int, served: bool, as_json: bool) -> None:
    """Register a generated corpus with planted near-duplicates in PATH/.prov and show the ledger.
    A ledger already in PATH is used only if an earlier demo made it (running it again adds
    nothing); any other is refused."""
    from provenance.demo import check_options, demo_folder, demo_ledger, run_demo, run_served_demo

    obj.resume = f"run `prov demo {shlex.quote(path)}{' --server' if served else ''}` again to go on where it stopped"
    with render.progress(obj.quiet) as bar:
        if served:  # the writes are the server's: Ctrl-C stops it and names where they are (it said only Aborted!)
            obj.kept = f"what the demo's server wrote, in {demo_folder(path) / LEDGER_DIR}"
            report = run_served_demo(path, n_docs=n_docs, seed=seed, progress=bar)
        else:  # opened here, so that Ctrl-C names what it had registered and trained (it said only Aborted!)
            check_options(n_docs, seed)
            ledger = demo_ledger(demo_folder(path))
            obj.opened.append(ledger)
            report = run_demo(path, n_docs=n_docs, seed=seed, progress=bar, ledger=ledger)
    show_demo(report, as_json)


# -- rendering ------------------------------------------------------------------------------------

def show_demo(report, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(report.to_json()))
        return
    for r in report.registrations:
        render.echo(r.message)
    s = report.summary
    render.echo(f"\nledger {s['path']}: {counted(s['datasets'], 'dataset')}, {counted(s['shards'], 'shard')}, "
                f"{counted(s['documents'], 'document')}")
    if report.server:
        render.echo(f"(through the ledger server {report.server['url']} with token {report.server['token']}: "
                    f"{report.server['writes']} writes in its access log; the server has stopped)")
    show_datasets(report.datasets, False)
    render.echo(
        f"near-duplicates (LSH band collisions, estimated Jaccard >= 0.6): {len(report.pairs)} pairs; "
        f"planted {report.planted}, found {report.found}; "
        f"evaluation leaks planted {report.contaminated}, found {report.contamination_found}"
    )
    t = Table(title="closest pairs")
    for col in ("a", "b", "datasets", "jaccard"):
        t.add_column(col)
    for p in report.pairs[:8]:
        t.add_row(p["key_a"], p["key_b"], f"{p['dataset_a']} / {p['dataset_b']}", f"{p['jaccard']:.3f}")
    render.console().print(t)
    if report.models:
        show_models(report.models)
    if report.gate:
        render.echo("\nBefore merging, the pre-merge gate on the two contributors (prov audit merge):")
        show_gate(report.gate, False)
        if not report.gate["passed"]:
            render.echo("The demo merges anyway, to show the rest; the merge's receipt cites this failed audit. "
                        "`prov merge --gate` would have refused (exit status 1).")
    if report.lineage is not None:
        render.echo("\nThe merged version's lineage (prov lineage demo-merge):")
        show_lineage(report.lineage, False)


def show_models(story: list[dict]) -> None:
    """The demo's versions: the DAG, what each patch costs against a full copy, what data it saw."""
    tags = {m["version_id"]: m["tag"] for m in story}
    t = Table(title="model versions (prov model log shows them all)")
    for col in ("version", "parents", "stored as", "bytes (of a full copy)", "trained on"):
        t.add_column(col, no_wrap=col in ("version", "bytes (of a full copy)"))
    for m in story:
        stored_as = ", ".join(f"{n} {e}" for e, n in sorted(m["encodings"].items()))
        seen = "; ".join(f"{d} {c['examples']:,} examples ({c['epochs']:.2f} epochs)" for d, c in m["consumed"].items())
        parents = " + ".join(tags.get(p, p[:12]) for p in m["parents"]) or "(root)"
        t.add_row(f"{m['tag']} {m['version_id'][:8]}", parents, stored_as,
                  f"{m['stored_bytes']:,} ({m['stored_bytes'] / max(1, m['full_bytes']):.2%})",
                  seen or ("(a merge: its parents' data)" if len(m["parents"]) > 1 else ""))
    render.console().print(t)


def show_gc(d: dict) -> str:
    """The counts, then each stale Ray folder (a killed Ray registration's or dedup audit's) by
    name, and what else is in ``.prov/tmp``, which gc leaves alone."""
    verb = "removed" if d["removed"] else "would remove (dry run; --apply to remove)"
    rays = d.get("ray_folders", [])
    of_them = f" (of them, {counted(len(rays), 'stale Ray folder')} below)" if rays else ""  # temporary_files lists them too
    lines = [f"{verb} {counted(len(d['unreferenced']), 'object')}, "
             f"{counted(len(d['temporary_files']), 'temporary file')}{of_them} and "
             f"{counted(len(d.get('document_folders', [])), 'unlisted document folder')}, {d['bytes']:,} bytes"
             + (f" ({len(d['not_removed'])} of the files not: below)" if d.get("not_removed") else "")]
    for f in rays:
        state = ("removed" if f["removed"] else "not removed: a file in it could not be removed (permissions, or an "
                 "immutable file)") if d["removed"] else "found"
        lines.append(f"  stale Ray folder {f['path']} ({f['bytes']:,} bytes): {state}")
    for f in d.get("not_removed", []):
        lines.append(f"  not removed: {f}")
    for f in d.get("left_alone", []):
        lines.append(f"  left alone: {f['path']} ({f['bytes']:,} bytes): provenance does not write it there; remove it "
                     "yourself if nothing needs it")
    return "\n".join(lines)


def show_verify(report, as_json: bool) -> None:
    if as_json:
        return render.dump(report.model_dump(mode="json"))
    console = render.console()
    console.print(f"checked {counted(report.objects_checked, 'object')}"
                  f"{' (re-hashed)' if report.objects_rehashed else ' (presence and size; --objects re-hashes)'}, "
                  f"{counted(report.versions_checked, 'version')}, {counted(report.datasets_checked, 'dataset version')}",
                  highlight=False)
    for d in report.damaged_objects:
        where = f"; moved to {d.quarantined}" if d.quarantined else ""
        needed = ", ".join(v[:12] for v in d.versions) or "no version"
        detail = d.detail.removeprefix(f"object {d.address} ")  # said once: `object X corrupt: object X (PATH) is …`
        detail = re.sub(rf"^\((.*)\) is {re.escape(d.problem)}: ", r"\1: ", detail) if detail != d.detail else d.detail
        render.say((f"✗ object {d.address} {d.problem}", "red"), f": {detail}; needed by {needed}{where}")
    for p in report.version_problems:
        render.say((f"✗ version {p['version_id'][:12]}", "red"), f": {p['problem']}")
    for p in report.dataset_problems:
        shard = f" shard {p['shard_index']}" if p["shard_index"] is not None else ""
        render.say((f"✗ dataset {p['dataset_id']}{shard}", "red"), f": {p['problem']}")
    for p in report.database_problems:
        render.say((f"✗ table {p['table']}", "red"), f": {p['problem']}")
    if report.temporary_files:
        verb = "removed" if report.repaired else "found (prov gc --apply or verify --repair removes them)"
        render.echo(f"{len(report.temporary_files)} temporary file(s) of interrupted writes {verb}")
    if report.unreferenced_objects:
        render.echo(f"{counted(report.unreferenced_objects, 'object')} no version refers to (a killed commit or merge "
                    "left them, or a commit is still writing; prov gc lists their bytes, prov gc --apply removes them)")
    for folder in report.ray_folders:
        render.echo(f"stale Ray folder {folder} (a killed Ray registration or dedup audit left it; "
                    "prov gc --apply removes it)")
    for folder in report.unlisted_document_folders:
        render.echo(f"document folder {folder} no dataset lists (a killed registration left it; prov gc lists its "
                    "bytes, prov gc --apply removes it)")
    if report.ok:
        render.say(("ok", "green"), ": nothing damaged")
    elif report.damaged_objects and not report.repaired:
        render.echo("To restore a damaged object, commit again a checkpoint that holds the tensor (the object is "
                    "written afresh); --repair first moves the damaged files aside.")
