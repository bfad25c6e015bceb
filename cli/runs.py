"""``prov run``: record training runs and the data they consumed."""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Any

import click
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import Context, author_option, json_option, main, pass_ctx, read_keys
from provenance.files import process_alive
from provenance.plain import counted, dumps


@main.group("run")
def run_group() -> None:
    """Record training runs and the data they consumed."""


def _epochs(spec: str) -> tuple[str, float]:
    name, sep, epochs = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        value = float(epochs)
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected NAME[@VERSION][:EPOCHS]", param_hint="--dataset") from None
    if not (math.isfinite(value) and value >= 0):  # the library's refusal exited 4, naming no option
        raise click.BadParameter(f"{spec!r}: EPOCHS must be a finite number >= 0", param_hint="--dataset")
    return name, value + 0.0  # -0 as 0 (it was stored and printed as -0.0)


def _param(spec: str) -> tuple[str, Any]:
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{spec!r}: expected KEY=VALUE", param_hint="--param")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return name, value
    if isinstance(parsed, float) and not math.isfinite(parsed):  # NaN, Infinity: JSON would store null
        return name, value
    return name, parsed


@run_group.command("start")
@click.option("-m", "--message", required=True, help="What the run does.")
@click.option("--base", default=None, help="Version the run starts from (default: from scratch).")
@click.option("-d", "--dataset", "datasets", multiple=True, metavar="NAME[@VERSION][:EPOCHS]",
              help="A dataset the run trains on, with the epochs over it (default 1). Repeatable.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A hyper-parameter (VALUE parsed as JSON when it is JSON). Repeatable.")
@click.option("--owner", type=click.IntRange(0, 2**31 - 1), default=None, metavar="PID",
              help="The process the run belongs to: when it is gone and the run still open, the next run started on "
                   "this host marks it abandoned. Default: the one that ran this command; in a script's $(...), a "
                   "subshell that ends at once, so give --owner $$. 0: none (never marked abandoned).")
@author_option
@json_option
@pass_ctx
def run_start(obj: Context, message: str, base: str | None, datasets: tuple[str, ...], params: tuple[str, ...],
              owner: int | None, author: str | None, as_json: bool) -> None:
    """Start a run; prints its id. End it with `prov run finish` or `prov model commit --run`."""
    declared: dict[str, float] = {}
    for spec in datasets:
        name, epochs = _epochs(spec)
        if name in declared:
            raise click.BadParameter(f"dataset {name!r} is given twice; give each once, with its epochs",
                                     param_hint="--dataset")
        declared[name] = epochs
    settings: dict[str, Any] = {}
    for spec in params:
        key, value = _param(spec)
        if key in settings:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--param")
        settings[key] = value
    # the run belongs to the process that ran this command (a training script, a shell): when it
    # is gone and the run is still open, the next start on this host marks the run abandoned
    run = obj.ledger().start_run(base=base, datasets=declared, params=settings, message=message,
                                 author=author, detached=True, pid=os.getppid() if owner is None else owner)
    render.emit(run.record.model_dump(mode="json"), as_json, lambda d: d["run_id"])


@run_group.command("log")
@click.argument("ref", metavar="RUN")
@click.argument("keys_file", metavar="KEYS", type=click.File("rb"), default="-")
@click.option("--step", type=click.IntRange(0, 2**63 - 1), required=True, help="The training step these examples were seen at.")
@click.option("--dataset", default=None, help="Look the keys up in this dataset only.")
@json_option
@pass_ctx
def run_log(obj: Context, ref: str, keys_file, step: int, dataset: str | None, as_json: bool) -> None:
    """Log the document keys in KEYS (one per line; - for stdin) as seen at --step."""
    keys = read_keys(keys_file)
    run = obj.ledger().attach_run(ref)
    run.log_examples(keys, step=step, dataset=dataset)
    run.flush()  # written (and checked) when this returns
    render.emit({"run_id": run.run_id, "logged": len(keys), "step": step}, as_json,
                lambda d: f"logged {counted(d['logged'], 'example')}")


@run_group.command("finish")
@click.argument("ref", metavar="RUN")
@click.option("--failed", is_flag=True, help="Record the run as failed (it produces no version).")
@click.option("--error", default=None, help="Why it failed (implies --failed).")
@json_option
@pass_ctx
def run_finish(obj: Context, ref: str, failed: bool, error: str | None, as_json: bool) -> None:
    """End a running run without a version (use `prov model commit --run` to end it with one)."""
    run = obj.ledger().attach_run(ref)
    record = run.fail(error or "marked failed") if failed or error is not None else run.finish()
    render.emit(record.model_dump(mode="json"), as_json, lambda d: f"run {d['run_id'][:12]} {d['status']}")


@run_group.command("show")
@click.argument("ref", metavar="RUN")
@json_option
@pass_ctx
def run_show(obj: Context, ref: str, as_json: bool) -> None:
    """Show a run: its base, datasets, status, version, the checkpoints saved during it, and per
    shard what it consumed."""
    ledger = obj.ledger(read_only=True)
    record = ledger.run(ref)
    show_run(record, ledger.run_shards(record), as_json, ledger.checkpoints(record))


@run_group.command("list")
@json_option
@pass_ctx
def run_list(obj: Context, as_json: bool) -> None:
    """List runs, newest first."""
    show_runs(obj.ledger(read_only=True).runs(), as_json)


# -- rendering ------------------------------------------------------------------------------------

def _gone(record) -> bool:
    """Whether ``record`` is a run still open whose process, on this host, has exited without
    ending it (a SIGKILL): the next run started on the host marks it abandoned."""
    return (record.status == "running" and bool(record.pid) and record.host == socket.gethostname()
            and not process_alive(record.pid))


def show_runs(records, as_json: bool) -> None:
    if as_json:
        click.echo(dumps([r.model_dump(mode="json") for r in records]))
        return
    t = Table()
    for col in ("run", "status", "base", "version", "datasets", "logged", "message", "started"):
        t.add_column(col, no_wrap=col not in ("message", "datasets"))
    for r in records:
        status = f"{r.status} (process gone)" if _gone(r) else r.status
        t.add_row(r.run_id[:12], status, (r.base_version or "(scratch)")[:12], (r.version_id or "")[:12],
                  ", ".join(r.datasets), f"{r.n_logged:,}", r.message, r.started_at.strftime("%Y-%m-%d %H:%M"))
    render.console().print(t)


CHECKPOINTS_SHOWN = 10  # checkpoints `prov run show` names; --json lists every one


def show_run(record, shards: list, as_json: bool, checkpoints: list = ()) -> None:
    if as_json:
        out = record.model_dump(mode="json")
        out["shards"] = [s.model_dump(mode="json") for s in shards]
        out["checkpoints"] = [c.model_dump(mode="json") for c in checkpoints]
        click.echo(dumps(out))
        return
    status = f"status   {record.status}" + (f" ({record.error})" if record.error else "")
    if _gone(record):
        status += (f" (its process {record.pid} on this host exited without ending it: the next run started on this "
                   f"host marks it abandoned; `prov run finish {record.run_id[:12]} --failed` ends it now)")
    lines = [f"run      {record.run_id}", status,
             f"message  {record.message}", f"base     {record.base_version or '(from scratch)'}",
             f"version  {record.version_id or '(none)'}", f"params   {json.dumps(record.params)}",
             f"logged   {record.n_logged:,} examples"]
    if checkpoints:  # aligned with the fields above; a long run's hundreds of saves on one line were unreadable
        shown = [f"{c.version_id[:12]} ({'before any step' if c.step < 0 else f'step {c.step}'})"
                 for c in checkpoints[:CHECKPOINTS_SHOWN]]
        more = len(checkpoints) - len(shown)
        lines.append(f"saved    {len(checkpoints):,} checkpoint{'s' if len(checkpoints) != 1 else ''}: "
                     + ", ".join(shown) + (f" and {more:,} more (--json lists them)" if more else ""))
    render.echo("\n".join(lines))
    if not shards:
        declared = ", ".join(f"{d} x{e:g}" for d, e in record.datasets.items()) or "none"
        render.echo(f"datasets {declared} (consumption is counted when the run ends)")
        return
    t = Table()
    for col in ("dataset", "shard", "examples", "documents seen", "epochs", "counted from"):
        t.add_column(col, no_wrap=True)
    for s in shards:
        t.add_row(s.dataset_id, str(s.shard_index), f"{s.examples:,}", f"{s.distinct_documents:,}", f"{s.epochs:.3g}",
                  "logged keys" if s.logged else "declared epochs")
    render.console().print(t)
