"""``prov retract``, ``prov retractions`` and ``prov audit retraction``: remove a document from
every version it shaped, and prove it."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import (
    Context,
    FloatRange,
    PathType,
    _write_html,
    audit_ledger,
    author_option,
    json_option,
    main,
    no_store_option,
    once,
    pass_ctx,
    read_text,
)
from provenance.cli.audits import audit_group, refuse_html_over
from provenance.errors import ProvenanceError
from provenance.ngrams import MAX_SPAN


@main.command("retract")
@click.argument("target", required=False, metavar="[DATASET | RETRACTION-ID]")
@click.option("--shard", multiple=True, callback=once, help="A shard of the dataset (index or name; not with --key).")
@click.option("--key", multiple=True, callback=once, help="A document key of the dataset.")
@click.option("--text", "text_file", type=click.File("rb"), default=None,
              help="A file with the text of a document ('-': stdin), looked for in every dataset (so without DATASET, "
                   "--shard or --key); the text itself is not kept.")
@click.option("--near", type=FloatRange(0, 1, min_open=True), default=None,
              help="Also its near-duplicates (estimated Jaccard >= NEAR) in any dataset.")
@click.option("--reason", default=None, help="Why (a removal request, a licence audit); required to record one.")
@author_option
@click.option("--apply", "apply_", is_flag=True, help="Carry out the plan of the retraction RETRACTION-ID.")
@click.option("--rebase", is_flag=True,
              help="With --apply: also re-apply later patches onto clean versions (approximate for the model).")
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None,
              help="Also write the plan (and what was applied) as an HTML page.")
@json_option
@pass_ctx
def retract_cmd(obj: Context, target: str | None, shard: str | None, key: str | None, text_file: Any,
                near: float | None, reason: str | None, author: str | None, apply_: bool, rebase: bool,
                html_file: str | None, as_json: bool) -> None:
    """Retract a document (--key, --text; --near for its near-copies), a shard or a dataset from
    every version it shaped: record why and print the plan, one step per tainted version
    (re-merge without it, retrain, rebase; the release tags it touches). DATASET as NAME means
    every version of the dataset, NAME@N that version only. With RETRACTION-ID
    --apply, carry out the re-merges (and with --rebase the rebases): each new version is tagged
    TAG+retracted-ID, atomic per version; running it again continues."""
    ledger = obj.ledger()
    html_path = ledger.output_path(html_file) if html_file else None
    refuse_html_over(html_path, getattr(text_file, "name", None), "--text", "the document's text")
    if apply_:
        if not target:
            raise click.UsageError("--apply needs the retraction id: prov retract ID --apply")
        if reason or key or shard or text_file or near is not None:
            raise click.UsageError("--apply takes only the retraction id (and --rebase)")
        with render.progress(obj.quiet) as bar:
            results = ledger.apply_retraction(target, rebase=rebase, progress=bar)
        if html_path is not None:
            _write_html(_plan_page(ledger.retraction(target)), html_path)
        render.emit(results, as_json, lambda rs: "\n".join(
            [f"{r['action']} {r['version_id'][:12]} -> {r['new_version_id'][:12]}"
             f"{'' if r['exact'] else ' (approximate)'}{'' if r['made_now'] else ' (made before)'}" for r in rs]
            + _left(ledger.retraction(target), rebase)))
        return
    if rebase:
        raise click.UsageError("--rebase goes with --apply")
    if target and not (key or shard or text_file) and _is_retraction(ledger, target):  # not a dataset's name
        raise click.UsageError(f"{target} is a retraction: prov retract {target} --apply carries out its plan "
                               f"(prov retractions {target} shows it)")
    if not (target or shard or key or text_file):  # a usage error (it exited 4, as if the input were bad)
        raise click.UsageError("give what to retract: DATASET (with --shard or --key for a part of it), or --text FILE")
    if not reason:
        raise click.UsageError("a retraction needs --reason (why: a removal request, a licence audit)")
    text = None if text_file is None else read_text(text_file)
    record = ledger.retract(reason=reason, dataset=target, shard=shard, key=key, text=text, near=near, author=author)
    if html_path is not None:
        _write_html(_plan_page(record), html_path)
    if as_json:
        return render.dump(record)
    show_plan(record)
    for e in record.get("earlier") or []:
        made = len(e["results"] or [])
        render.echo(f"note: retraction {e['retraction_id']} ({e['reason']}) already retracts "
                    f"{'this document' if len(record.get('documents') or []) == 1 else 'some of these documents'}"
                    f"{f'; its steps made {made} version(s)' if made else ''}. This records another retraction: its "
                    f"--apply makes new versions again (`prov retractions {e['retraction_id']}` shows it)")
    render.echo(f"carry out what can be done with: prov retract {record['retraction_id']} --apply [--rebase]")


def _is_retraction(ledger: Any, target: str) -> bool:
    """Whether ``target`` names a recorded retraction and no dataset."""
    try:
        ledger.dataset(target)
        return False
    except ProvenanceError:
        try:
            ledger.retraction(target)
            return True
        except ProvenanceError:  # none, or a prefix of several: the dataset's error says more
            return False


def _left(record: dict[str, Any], rebase: bool) -> list[str]:
    """What an --apply left to do: retrains, rebases without --rebase, re-merges waiting on one."""
    import json

    made = {r["version_id"] for r in record.get("results") or []}
    left = [s for s in json.loads(record["plan_json"]) if s["version_id"] not in made]
    if not left:
        return ["every step is done"]
    retrain = sum(s["action"] == "retrain" for s in left)
    rebases = sum(s["action"] == "rebase" for s in left)
    waiting = sum(s["action"] == "remerge" for s in left)
    parts = [f"{retrain} retrain (train again without the retracted data: see the plan)"] if retrain else []
    if rebases:
        parts.append(f"{rebases} rebase{'' if rebase else ' (with --rebase)'}")
    if waiting:
        parts.append(f"{waiting} re-merge waiting for {'an input' if waiting == 1 else 'inputs'} made clean by a "
                     f"rebase{'' if rebase else ' (with --rebase)'}")
    return [f"left to do: {', '.join(parts)}"]


def _plan_page(record: dict[str, Any]) -> dict[str, Any]:
    import json

    steps = record.get("steps") or json.loads(record["plan_json"])
    return {**record, "kind": "retraction", "steps": steps}


def show_plan(record: dict[str, Any]) -> None:
    import json

    steps = record.get("steps") or json.loads(record["plan_json"])
    made = {r["version_id"]: r for r in record.get("results") or []}
    docs = record.get("documents") or []
    render.echo(f"retraction {record['retraction_id']} of {record['target']}: {record['reason']} "
                f"({len(docs)} document row(s))")
    t = Table(title=f"plan for {len(steps)} tainted version(s)")
    for col in ("version", "tags", "action", "why", "made"):
        t.add_column(col)
    shown = steps if len(steps) <= 60 else steps[:60]
    for s in shown:
        r = made.get(s["version_id"])
        t.add_row(s["version_id"][:12], ", ".join(s["tags"]), s["action"], s["why"],
                  (r["new_version_id"][:12] + ("" if r["exact"] else " (approx.)")) if r else "")
    render.console().print(t)
    if len(shown) < len(steps):
        counts = {a: sum(s["action"] == a for s in steps) for a in ("remerge", "retrain", "rebase")}
        render.echo(f"... and {len(steps) - len(shown):,} more steps (in all: {counts['remerge']:,} re-merge, "
                    f"{counts['retrain']:,} retrain, {counts['rebase']:,} rebase; --json or --html lists every one)")


@main.command("retractions")
@click.argument("retraction_id", required=False, metavar="[RETRACTION-ID]")
@json_option
@pass_ctx
def retractions_cmd(obj: Context, retraction_id: str | None, as_json: bool) -> None:
    """List the retractions, or show one: what it retracts, its plan, and what was applied."""
    if retraction_id is not None and not retraction_id.strip():  # '' listed every retraction
        raise click.BadParameter("is empty: give a retraction id (or none, to list them all)",
                                 param_hint="'RETRACTION-ID'")
    ledger = obj.ledger(read_only=True)
    if retraction_id:
        record = ledger.retraction(retraction_id)
        if as_json:
            return render.dump(record)
        return show_plan(record)
    rows = ledger.retractions()
    if as_json:
        return render.dump(rows)
    t = Table(title=f"{len(rows)} retraction(s)")
    for col in ("id", "created", "target", "reason", "documents", "applied"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["retraction_id"], str(r["created_at"])[:19], render.cell(r["target"]), render.cell(r["reason"]),
                  f"{r['documents']:,}" + (f" (+{r['whole']} whole)" if r["whole"] else ""), str(r["results"]))
    render.console().print(t)


@audit_group.command("retraction")
@click.argument("retraction_id", metavar="RETRACTION-ID")
@click.option("--samples", "samples_file", type=PathType(dir_okay=False), default=None,
              help="Texts generated by the new versions (JSONL or plain text, one per line): none may reproduce a "
                   "retracted document.")
@click.option("--releases", default=None, metavar="PATTERN",
              help="Also check every version tagged with a name matching this glob (e.g. 'release-*'); one that "
                   "matches no tag fails the audit.")
@click.option("--threshold", type=FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Estimated Jaccard at or above which a sample reproduces a retracted document, in (0, 1].")
@click.option("--span", type=click.IntRange(0, MAX_SPAN), default=50, show_default=True,
              help="Words of an exact shared span that count as reproduced (0: skip; it reads the source text).")
@click.option("--html", "html_file", type=PathType(dir_okay=False), default=None, help="Also write an HTML report.")
@no_store_option
@json_option
@pass_ctx
def audit_retraction_cmd(obj: Context, retraction_id: str, samples_file: str | None, releases: str | None,
                         threshold: float, span: int, html_file: str | None, no_store: bool, as_json: bool) -> None:
    """The proof of a retraction: no version it made (and, with --releases, no release) has the
    retracted documents or copies of them found now in its lineage, and no sample reproduces
    them. Exit status 1 when something is not clean."""
    ledger = audit_ledger(obj, no_store)
    html_path = ledger.output_path(html_file) if html_file else None
    refuse_html_over(html_path, samples_file, "--samples", "the samples")
    report = ledger.audit_retraction(retraction_id, samples=samples_file, releases=releases, threshold=threshold,
                                     span=span, store=not no_store)
    _write_html({**report, "kind": "retraction-audit"}, html_path)
    if as_json:
        render.dump(report)
    else:
        console = render.console()
        render.say(f"retraction {report['retraction_id']} of {report['target']}: ",
                   render.PASSED if report["passed"] else render.FAILED)
        for p in report["problems"]:
            render.say((f"  ✗ {p}", "red"))
        t = Table(title=f"{len(report['checked'])} version(s) checked")
        for col in ("version", "as", "tags", "lineage"):
            t.add_column(col)
        for c in report["checked"]:
            t.add_row(c["version_id"][:12], c["as"], ", ".join(c["tags"]),
                      "clean" if c["clean"] else f"tainted through {c['via'][:12]}")
        console.print(t)
        copies = report["copies_found_now"]
        if copies:
            named = ", ".join(f"{c['dataset_id']} {c['key']}" for c in copies[:8])
            render.echo(f"copies of the retracted documents found now: {len(copies)} ({named}"
                        f"{f' and {len(copies) - 8} more' if len(copies) > 8 else ''}; in no version checked while "
                        "the rows above are clean, but a run that trains on them brings them back)")
        for p in report["pending"]:
            render.echo(f"still to do: {p['action']} {p['version_id'][:12]}")
        mem = report.get("memorization")
        if mem:
            render.echo(f"samples: {mem['samples']}, reproducing a retracted document: "
                        f"{len({m['sample'] for m in mem['matches']})}")
    if not report["passed"]:
        sys.exit(1)
