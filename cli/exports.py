"""``prov export``: a version's lineage in other tools' formats."""

from __future__ import annotations

import json

import click

from provenance.cli import render
from provenance.cli.app import Context, PathType, main, pass_ctx


@main.group("export")
def export_group() -> None:
    """Export a version's lineage in other tools' formats."""


@export_group.command("openlineage")
@click.argument("version")
@click.option("-o", "--output", type=PathType(dir_okay=False), default=None,
              help="Write to a file (default: stdout).")
@click.option("--namespace", default=None,
              help="Namespace of the jobs (default: $OPENLINEAGE_NAMESPACE, else provenance); a run that sent its "
                   "own events, or came in through the intake, keeps the job namespace it had there.")
@pass_ctx
def export_openlineage(obj: Context, version: str, output: str | None, namespace: str | None) -> None:
    """Write the OpenLineage RunEvents of VERSION's whole lineage as JSON lines: START and
    COMPLETE (or FAIL) of every run and merge that made a version in it, in time order."""
    ledger = obj.ledger(read_only=True)
    target = ledger.output_path(output) if output else None
    events = ledger.export_openlineage(version, namespace=namespace)
    text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in events)
    if target:
        from provenance.files import atomic_write_text

        atomic_write_text(target, text)
        render.echo(f"wrote {len(events)} events to {output}", err=True)
    else:
        click.echo(text, nl=False)
    if not events:  # an empty file or nothing printed reads as a failed export
        render.echo(f"no events: no run or merge made a version in {version}'s lineage (a version committed "
                    "without a run, such as an imported base, has none)", err=True)
