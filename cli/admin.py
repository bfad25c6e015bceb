"""``prov init``, ``prov sql``, ``prov gc``, ``prov verify`` and ``prov demo``: the ledger as a whole."""

from __future__ import annotations

import sys

import click

from provenance.cli import render
from provenance.cli.app import EXIT_POLICY, Context, json_option, main, pass_ctx


@main.command("init")
@click.argument("path", default=".", type=click.Path(file_okay=False))
@json_option
def init_cmd(path: str, as_json: bool) -> None:
    """Create a ledger (PATH/.prov: a DuckDB database and an object folder)."""
    from provenance.ledger import Ledger

    ledger = Ledger.init(path)
    render.emit({"ledger": str(ledger.root), "schema_version": ledger.schema_version()}, as_json,
                lambda d: f"created ledger {d['ledger']} (schema version {d['schema_version']})")


@main.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
@json_option
@pass_ctx
def sql_cmd(obj: Context, query: str, fmt: str, as_json: bool) -> None:
    """Run one read-only SELECT over the ledger (writes are refused).

    Tables: datasets, shards, documents, fingerprint_configs, schema_migrations,
    ledger_meta (see docs/schema.md).
    """
    table = obj.ledger(read_only=True).sql(query)
    render.arrow(table, "json" if as_json else fmt)


@main.command("gc")
@click.option("--apply", is_flag=True, help="Remove the objects (default: only list them).")
@json_option
@pass_ctx
def gc_cmd(obj: Context, apply: bool, as_json: bool) -> None:
    """List (or with --apply remove) objects that no version uses and temporary files of
    interrupted writes."""
    report = obj.ledger(read_only=not apply).gc(apply=apply)
    verb = "removed" if apply else "would remove (dry run; --apply to remove)"
    render.emit(report, as_json, lambda d: f"{verb} {len(d['unreferenced'])} objects and "
                                          f"{len(d['temporary_files'])} temporary files, {d['bytes']:,} bytes")


@main.command("verify")
@click.option("--objects", "rehash", is_flag=True,
              help="Also re-read and re-hash every stored object (slow: reads the whole object store).")
@click.option("--repair", is_flag=True,
              help="Move damaged objects into .prov/quarantine/ (the next commit of the same tensor writes it "
                   "again) and remove temporary files of interrupted writes.")
@json_option
@pass_ctx
def verify_cmd(obj: Context, rehash: bool, repair: bool, as_json: bool) -> None:
    """Check the ledger: every object the versions need is there and whole (--objects: re-hashed),
    every version's parents, manifest and tags resolve, every dataset agrees with its shards and
    documents. Exit status 1 when anything is damaged, naming the versions it affects."""
    from provenance.verify import verify

    ledger = obj.ledger(read_only=not repair)
    with render.progress(obj.quiet) as bar:
        report = verify(ledger, objects=rehash, repair=repair, progress=bar)
    render.verify(report, as_json)
    if not report.ok:
        sys.exit(EXIT_POLICY)


@main.command("demo")
@click.argument("path", default="prov-demo", type=click.Path(file_okay=False))
@click.option("--docs", "n_docs", type=int, default=2000, show_default=True, help="Documents in the main corpus.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated corpus.")
@json_option
@pass_ctx
def demo_cmd(obj: Context, path: str, n_docs: int, seed: int, as_json: bool) -> None:
    """Register a generated corpus with planted near-duplicates in PATH/.prov and show the ledger."""
    from provenance.demo import run_demo

    with render.progress(obj.quiet) as bar:
        report = run_demo(path, n_docs=n_docs, seed=seed, progress=bar)
    render.demo(report, as_json)
