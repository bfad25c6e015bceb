"""``prov``: the command line of provenance.

Each command parses its arguments, calls one library function and renders the result: a table
for people, ``--json`` for programs. Library errors become one-line messages with documented
exit statuses in one place (:class:`ProvGroup`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from provenance import __version__
from provenance.cli import render
from provenance.errors import LedgerNotFoundError, NonFiniteError, NotFoundError, ProvenanceError

# Exit statuses (documented in docs/cli.md): 0 success or gate passed; 1 a policy broke (the gate
# failed, `prov verify` found damage); 2 a usage error (click's own); 3 a named thing was not found;
# 4 any other error (bad input, a damaged or unreadable ledger).
EXIT_POLICY, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_ERROR = 1, 2, 3, 4


class CliError(click.ClickException):
    """A one-line error with its exit status; printed as ``{"error", "kind"}`` JSON on stderr
    when the command was given ``--json``."""

    def __init__(self, message: str, *, kind: str = "error", exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code
        self.as_json = False  # set by ProvGroup when the command was given --json

    def show(self, file: Any = None) -> None:
        if self.as_json:
            click.echo(json.dumps({"error": self.format_message(), "kind": self.kind}, ensure_ascii=False), err=True)
        else:
            super().show(file)


class PolicyFailed(CliError):
    """A policy broke (a gate failed, damage found): exit status 1."""

    def __init__(self, message: str, kind: str = "policy"):
        super().__init__(message, kind=kind, exit_code=EXIT_POLICY)


def _kind(exc: BaseException) -> str:
    """``NotFoundError`` -> ``not_found``: the error's class as a stable machine-readable word."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower() or "error"


class ProvGroup(click.Group):
    """A click group that turns library errors into one-line messages with the documented exit
    statuses (3 for a missing dataset, version, tag or audit; 4 for every other error)."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        with warnings.catch_warnings(record=True) as caught:  # library warnings: one line each on stderr
            warnings.simplefilter("always")
            try:
                return self._invoke(ctx)
            except CliError as exc:
                exc.as_json = bool(ctx.meta.get("prov.json"))
                raise
            finally:
                for w in caught:
                    click.echo(f"warning: {w.message}", err=True)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError:
            raise
        except (NotFoundError, LedgerNotFoundError) as exc:
            raise CliError(str(exc), kind=_kind(exc), exit_code=EXIT_NOT_FOUND) from exc
        except ProvenanceError as exc:
            raise CliError(str(exc), kind=_kind(exc)) from exc
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise CliError(f"invalid parameter: {problems}", kind="invalid_parameter") from exc
        except click.UsageError as exc:
            if ctx.meta.get("prov.json"):
                raise CliError(exc.format_message(), kind="usage", exit_code=EXIT_USAGE) from exc
            raise
        except click.ClickException as exc:
            raise CliError(exc.format_message(), kind="error", exit_code=exc.exit_code) from exc
        except BrokenPipeError:  # the reader went away (`prov ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:  # a file the command reads or writes: name it, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}", kind="os") from exc


class Context:
    def __init__(self, ledger: str | None, wait: float, quiet: bool):
        self.ledger_path = ledger
        self.wait = wait
        self.quiet = quiet

    def ledger(self, *, read_only: bool = False):
        """The ledger the command works on; commands that only read open it read-only, so they
        work on a read-only file or mount."""
        from provenance.ledger import Ledger

        return Ledger.open(self.ledger_path, lock_timeout=self.wait, read_only=read_only)


pass_ctx = click.make_pass_decorator(Context)
def git_author() -> str | None:
    """``Name <email>`` from git's ``user.name`` and ``user.email``, or None without git or them."""
    import subprocess

    found = []
    for key in ("user.name", "user.email"):
        try:
            out = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        found.append(out.stdout.strip() if out.returncode == 0 else "")
    name, email = found
    if not (name or email):
        return None
    return f"{name} <{email}>" if name and email else name or email


def _default_author(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return value if value else git_author()


author_option = click.option(
    "--author", envvar="PROV_AUTHOR", callback=_default_author,
    help="Who did it (default: $PROV_AUTHOR, else git's user.name <user.email>).")


def _json_mode(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:  # errors of this command are then printed as JSON too (CliError.show)
        ctx.find_root().meta["prov.json"] = True
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_mode,
                           help="Print JSON instead of a table (errors too: JSON on stderr).")


class _CountOrNone(click.ParamType):
    """A count >= 0, or ``none`` for no limit."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() == "none":
            return "none"
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a count or 'none'", param, ctx)
        if n < 0:
            self.fail(f"{value!r} must be >= 0 (or 'none' for no limit)", param, ctx)
        return n


def _gate_limits(max_contamination: Any) -> dict[str, Any]:
    """The library arguments for ``--max-contamination``: not given keeps the library's default
    (0: any contamination fails), ``none`` turns the limit off."""
    if max_contamination is None:
        return {}
    return {"max_contamination": None if max_contamination == "none" else max_contamination}


def _gate_options(f):
    """The policy options the pre-merge gate shares between ``prov audit merge`` and ``prov merge --gate``."""
    f = click.option("--eval", "eval_datasets", multiple=True,
                     help="An evaluation dataset (repeat; default: every dataset registered with role eval).")(f)
    f = click.option("--max-overlap", type=float, default=None,
                     help="Fail when more than this fraction of either side's training documents overlap the other "
                          "(default: no limit, reported only).")(f)
    f = click.option("--max-contamination", type=_CountOrNone(), default=None,
                     help="Fail when more than this many evaluation documents are found in the training data "
                          "(default 0: any contamination fails; 'none': no limit).")(f)
    f = click.option("--deny-licence", "--deny-license", "deny_license", default=None,
                     metavar="CONDITION[,CONDITION...]",
                     help="Fail when the merged lineage holds data with any of these licence conditions: "
                          "non-commercial, share-alike, unknown, model-generated.")(f)
    f = click.option("--full-lineage", is_flag=True,
                     help="Compare whole lineages, including data the inputs inherit from shared ancestors.")(f)
    return f


@click.group(cls=ProvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prov")
@click.option(
    "--ledger",
    envvar="PROV_LEDGER",
    type=click.Path(file_okay=False),
    help="Ledger folder (a project folder or its .prov). Default: $PROV_LEDGER, else the nearest .prov above.",
)
@click.option("--wait", type=float, default=10.0, show_default=True, help="Seconds to wait for a ledger another process holds.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx: click.Context, ledger: str | None, wait: float, quiet: bool) -> None:
    """Training-data provenance: which data shaped which model version."""
    ctx.obj = Context(ledger, wait, quiet)


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


@main.group("dataset")
def dataset_group() -> None:
    """Register and inspect datasets."""


@dataset_group.command("add")
@click.argument("name")
@click.argument("sources", nargs=-1, required=True)
@click.option("--text-field", default="text", show_default=True, help="Field (or column) holding the text.")
@click.option("--id-field", default=None, help="Field holding a unique document id (default: SHARD:ROW keys).")
@click.option("--role", type=click.Choice(["train", "eval"]), default="train", show_default=True,
              help="Training data, or an evaluation set that contamination audits check against.")
@click.option("--license", "license_", default=None, help="SPDX licence id, e.g. CC-BY-4.0 (default: unknown).")
@click.option("--source", default=None, help="Where the data comes from (URL or words).")
@click.option("--creator", default=None, help="Who made the data.")
@click.option("--description", default=None, help="What the data is.")
@click.option("--model-generated/--human-written", "model_generated", default=None,
              help="Whether the text was generated by a model (default: unknown).")
@click.option("--num-perm", type=int, default=128, show_default=True, help="MinHash permutations.")
@click.option("--ngram", type=int, default=5, show_default=True, help="Words per shingle.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the MinHash permutations.")
@click.option("--threshold", type=float, default=0.8, show_default=True,
              help="Similarity the stored LSH bands target (found with probability >= 0.99).")
@click.option("--on-invalid", type=click.Choice(["error", "replace", "skip"]), default="error", show_default=True,
              help="What to do with invalid UTF-8 (or unpaired surrogates).")
@json_option
@pass_ctx
def dataset_add(obj: Context, name: str, sources: tuple[str, ...], text_field: str, id_field: str | None, role: str,
                license_: str | None, source: str | None, creator: str | None, description: str | None,
                model_generated: bool | None, num_perm: int, ngram: int, seed: int, threshold: float,
                on_invalid: str, as_json: bool) -> None:
    """Register SOURCES (files, folders, globs) as dataset NAME.

    JSONL (.jsonl, .gz, .zst), Parquet and plain text files (one document per file) are read.
    The same content again is a no-op; changed content makes a new version.
    """
    from provenance.fingerprints import FingerprintConfig

    config = FingerprintConfig(num_perm=num_perm, ngram=ngram, seed=seed, lsh_threshold=threshold)
    ledger = obj.ledger()
    with render.progress(obj.quiet) as bar:
        result = ledger.register_dataset(
            name, list(sources), text_field=text_field, id_field=id_field, role=role, license=license_,
            source=source, creator=creator, description=description, model_generated=model_generated,
            config=config, on_invalid=on_invalid, progress=bar,
        )
    render.emit(result.model_dump(mode="json"), as_json, lambda d: d["message"])


@dataset_group.command("list")
@click.option("--all-versions", is_flag=True, help="List every version, not only the latest.")
@json_option
@pass_ctx
def dataset_list(obj: Context, all_versions: bool, as_json: bool) -> None:
    """List registered datasets."""
    records = obj.ledger(read_only=True).datasets(all_versions=all_versions)
    render.datasets(records, as_json)


@dataset_group.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
@json_option
@pass_ctx
def dataset_show(obj: Context, ref: str, as_json: bool) -> None:
    """Show one dataset version and its shards."""
    ledger = obj.ledger(read_only=True)
    ds = ledger.dataset(ref)
    render.dataset(ds, ledger.shards(ds), as_json)


@dataset_group.command("export")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option("--format", "fmt", type=click.Choice(["croissant"]), default="croissant", show_default=True,
              help="Metadata format: Croissant 1.1 JSON-LD.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to a file (default: stdout).")
@pass_ctx
def dataset_export(obj: Context, ref: str, fmt: str, output: str | None) -> None:
    """Export a dataset version's metadata (Croissant 1.1 JSON-LD with per-file SHA-256)."""
    ledger = obj.ledger(read_only=True)
    target = ledger.output_path(output) if output else None
    doc = ledger.export_croissant(ref, base=target.parent if target else None)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if target:
        from provenance.files import atomic_write_text

        atomic_write_text(target, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@main.group("model")
def model_group() -> None:
    """Commit, inspect and check out model versions."""


@model_group.command("commit")
@click.argument("path", type=click.Path())
@click.option("--parent", default=None, help="Version (id, prefix or tag) the new one patches.")
@click.option("-m", "--message", required=True, help="What changed.")
@author_option
@click.option("--encoding", type=click.Choice(["auto", "sparse", "full"]), default="auto", show_default=True,
              help="How to store each parameter group against the parent (auto: smallest exact).")
@click.option("--allow-nonfinite", is_flag=True, help="Store NaN and Inf values instead of refusing them.")
@click.option("--run", "run_id", default=None, help="The running run that produced it (ends the run).")
@click.option("--no-sync", is_flag=True,
              help="Do not sync objects to the disk (faster; a power cut soon after can corrupt them).")
@json_option
@pass_ctx
def model_commit(obj: Context, path: str, parent: str | None, message: str, author: str | None, encoding: str,
                 allow_nonfinite: bool, run_id: str | None, no_sync: bool, as_json: bool) -> None:
    """Store PATH as a new version: a .safetensors file, a sharded checkpoint (*.safetensors.index.json
    or its folder), or a PEFT LoRA adapter folder (stored as low-rank patches on --parent)."""
    try:
        with render.progress(obj.quiet) as bar:
            version = obj.ledger().commit(path, parent=parent, message=message, author=author, encoding=encoding,
                                          allow_nonfinite=allow_nonfinite, run=run_id, sync=not no_sync, progress=bar)
    except NonFiniteError as exc:  # the library names its keyword; here the flag is what to pass
        raise CliError(str(exc).replace("allow_nonfinite=True", "--allow-nonfinite"), kind=_kind(exc)) from exc
    if run_id:
        from provenance.runs import warn_epoch_disagreements

        warn_epoch_disagreements(obj.ledger(read_only=True), run_id)
    render.emit(version.model_dump(mode="json"), as_json,
                lambda d: f"committed {d['version_id'][:12]}: {d['n_params']} parameter groups, "
                          f"{d['stored_bytes']:,} bytes stored of {d['full_bytes']:,}")


@model_group.command("log")
@click.argument("ref", metavar="[VERSION]", required=False)
@json_option
@pass_ctx
def model_log(obj: Context, ref: str | None, as_json: bool) -> None:
    """The version DAG, newest first: every version, or VERSION and its ancestors. Merges show
    all their parents."""
    ledger = obj.ledger(read_only=True)
    render.versions(ledger.ancestors(ref) if ref else ledger.versions(), as_json)


@model_group.command("show")
@click.argument("ref", metavar="VERSION")
@json_option
@pass_ctx
def model_show(obj: Context, ref: str, as_json: bool) -> None:
    """Show a version and how each parameter group is stored."""
    ledger = obj.ledger(read_only=True)
    version = ledger.version(ref)
    render.version(version, ledger.manifest(version), as_json, receipt=ledger.receipt(version))


@model_group.command("diff")
@click.argument("old", metavar="V1")
@click.argument("new", metavar="V2")
@click.option("--data", is_flag=True, help="Compare the two lineages' datasets and shards instead of the tensors.")
@json_option
@pass_ctx
def model_diff(obj: Context, old: str, new: str, data: bool, as_json: bool) -> None:
    """Per parameter group: how V2 differs from V1 (encoding, elements changed, patch bytes).
    With --data: the datasets and shards in one lineage and not the other."""
    if data:
        from provenance.lineage import data_diff

        render.data_diff(data_diff(obj.ledger(read_only=True), old, new), as_json)
        return
    from provenance.versions import diff

    render.diff(diff(obj.ledger(read_only=True), old, new), as_json)


@model_group.command("checkout")
@click.argument("ref", metavar="VERSION")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option("--parents", is_flag=True, help="Create the output's missing folders (default: refuse).")
@json_option
@pass_ctx
def model_checkout(obj: Context, ref: str, output: str, parents: bool, as_json: bool) -> None:
    """Write a version's tensors, bit-identical to what was committed, to a safetensors file
    (one tensor at a time: the model need not fit in memory). Never inside the ledger folder."""
    ledger = obj.ledger(read_only=True)
    version = ledger.version(ref)
    with render.progress(obj.quiet) as bar:
        ledger.checkout(version, output=output, parents=parents, progress=bar)
    report = {"version_id": version.version_id, "output": output, "tensors": version.n_params, "bytes": version.full_bytes}
    render.emit(report, as_json, lambda d: f"wrote {d['output']} ({d['tensors']} tensors, {d['bytes']:,} bytes)")


@main.group("run")
def run_group() -> None:
    """Record training runs and the data they consumed."""


def _epochs(spec: str) -> tuple[str, float]:
    name, sep, epochs = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        return name, float(epochs)
    except ValueError:
        raise click.BadParameter(f"{spec!r}: expected NAME[@VERSION][:EPOCHS]", param_hint="--dataset") from None


def _param(spec: str) -> tuple[str, Any]:
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{spec!r}: expected KEY=VALUE", param_hint="--param")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


@run_group.command("start")
@click.option("-m", "--message", required=True, help="What the run does.")
@click.option("--base", default=None, help="Version the run starts from (default: from scratch).")
@click.option("-d", "--dataset", "datasets", multiple=True, metavar="NAME[@VERSION][:EPOCHS]",
              help="A dataset the run trains on, with the epochs over it (default 1). Repeatable.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A hyper-parameter (VALUE parsed as JSON when it is JSON). Repeatable.")
@author_option
@json_option
@pass_ctx
def run_start(obj: Context, message: str, base: str | None, datasets: tuple[str, ...], params: tuple[str, ...],
              author: str | None, as_json: bool) -> None:
    """Start a run; prints its id. End it with `prov run finish` or `prov model commit --run`."""
    declared: dict[str, float] = {}
    for spec in datasets:
        name, epochs = _epochs(spec)
        declared[name] = epochs
    # the run belongs to the process that ran this command (a training script, a shell): when it
    # is gone and the run is still open, the next start on this host marks the run abandoned
    run = obj.ledger().start_run(base=base, datasets=declared, params=dict(map(_param, params)), message=message,
                                 author=author, detached=True, pid=os.getppid())
    render.emit(run.record.model_dump(mode="json"), as_json, lambda d: d["run_id"])


@run_group.command("log")
@click.argument("ref", metavar="RUN")
@click.argument("keys_file", metavar="KEYS", type=click.File("r", encoding="utf-8"), default="-")
@click.option("--step", type=click.IntRange(min=0), required=True, help="The training step these examples were seen at.")
@click.option("--dataset", default=None, help="Look the keys up in this dataset only.")
@json_option
@pass_ctx
def run_log(obj: Context, ref: str, keys_file, step: int, dataset: str | None, as_json: bool) -> None:
    """Log the document keys in KEYS (one per line; - for stdin) as seen at --step."""
    from provenance.runs import Run

    keys = [line.rstrip("\r\n") for line in keys_file]
    keys = [k for k in keys if k]
    run = Run.attach(obj.ledger(), ref)
    run.log_examples(keys, step=step, dataset=dataset)
    n = run.flush()
    render.emit({"run_id": run.run_id, "logged": n, "step": step}, as_json, lambda d: f"logged {d['logged']} examples")


@run_group.command("finish")
@click.argument("ref", metavar="RUN")
@click.option("--failed", is_flag=True, help="Record the run as failed (it produces no version).")
@click.option("--error", default=None, help="Why it failed.")
@json_option
@pass_ctx
def run_finish(obj: Context, ref: str, failed: bool, error: str | None, as_json: bool) -> None:
    """End a running run without a version (use `prov model commit --run` to end it with one)."""
    from provenance.runs import Run

    run = Run.attach(obj.ledger(), ref)
    record = run.fail(error or "marked failed") if failed else run.finish()
    render.emit(record.model_dump(mode="json"), as_json, lambda d: f"run {d['run_id'][:12]} {d['status']}")


@run_group.command("show")
@click.argument("ref", metavar="RUN")
@json_option
@pass_ctx
def run_show(obj: Context, ref: str, as_json: bool) -> None:
    """Show a run: its base, datasets, status, version, and per shard what it consumed."""
    ledger = obj.ledger(read_only=True)
    record = ledger.run(ref)
    render.run(record, ledger.run_shards(record), as_json)


@run_group.command("list")
@json_option
@pass_ctx
def run_list(obj: Context, as_json: bool) -> None:
    """List runs, newest first."""
    render.runs(obj.ledger(read_only=True).runs(), as_json)


@main.command("merge")
@click.argument("versions", nargs=-1, required=True, metavar="V1 V2 [V3...]")
@click.option("--method", type=click.Choice(["fisher", "average", "task_arithmetic", "ties"]), default="fisher",
              show_default=True, help="How to merge (fisher uses the Fisher stored with each version).")
@click.option("--weights", default=None, help="Comma-separated weights, one per version (default: equal).")
@click.option("--base", default=None, help="task_arithmetic/ties: the version task vectors start from (default: the shared parent).")
@click.option("--eps", type=float, default=1e-6, show_default=True, help="fisher: floor on the Fisher.")
@click.option("--normalize", is_flag=True, help="fisher: divide each model's Fisher by its L2 norm.")
@click.option("--density", type=float, default=0.2, show_default=True, help="ties: fraction of each task vector kept.")
@click.option("--audit", default=None, help="The id of the pre-merge audit this merge cites.")
@click.option("--gate", is_flag=True, help="Run the pre-merge gate first (prov audit merge) and merge only if it passes.")
@click.option("--device", default=None, help="Where the kernels run, e.g. cuda (default: the CPU).")
@_gate_options
@click.option("-m", "--message", required=True, help="What the merge is.")
@author_option
@json_option
@pass_ctx
def merge_cmd(obj: Context, versions: tuple[str, ...], method: str, weights: str | None, base: str | None, eps: float,
              normalize: bool, density: float, audit: str | None, gate: bool, device: str | None,
              eval_datasets: tuple[str, ...], max_overlap: float | None, max_contamination: Any,
              deny_license: str | None, full_lineage: bool, message: str, author: str | None, as_json: bool) -> None:
    """Merge versions into a new version whose parents are all of them, with a receipt."""
    try:
        lam = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise click.BadParameter(f"{weights!r}: expected numbers separated by commas", param_hint="--weights") from None
    if gate and audit:
        raise click.UsageError("give --gate (run the gate now) or --audit ID (cite one), not both")
    if not gate and (eval_datasets or max_overlap is not None or max_contamination is not None or deny_license
                     or full_lineage):
        raise click.UsageError("--eval, --max-overlap, --max-contamination, --deny-licence and --full-lineage need --gate")
    if gate:
        from provenance.gate import audit_merge

        report = audit_merge(obj.ledger(), list(versions), eval_datasets=list(eval_datasets) or None,
                             max_overlap=max_overlap, deny_license=deny_license, full_lineage=full_lineage,
                             **_gate_limits(max_contamination))
        if not report["passed"]:
            click.echo("\n".join(report["alerts"]), err=True)
            raise PolicyFailed(f"the pre-merge gate failed (audit {report['audit_id'][:12]}); nothing merged", "gate")
        audit = report["audit_id"]
    with render.progress(obj.quiet) as bar:
        version = obj.ledger().merge(list(versions), method=method, weights=lam, base=base, eps=eps,
                                     normalize=normalize, density=density, audit=audit, message=message, author=author,
                                     device=device, progress=bar)
    render.emit(version.model_dump(mode="json"), as_json,
                lambda d: f"merged {len(d['parents'])} versions into {d['version_id'][:12]}: "
                          f"{d['stored_bytes']:,} bytes stored of {d['full_bytes']:,}")


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


class _TagGroup(click.Group):
    """``prov tag NAME VERSION`` is short for ``prov tag set NAME VERSION``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["set", *args]
        return super().parse_args(ctx, args)


@main.group("tag", cls=_TagGroup)
def tag_group() -> None:
    """Name versions: `prov tag NAME VERSION` (short for `tag set`), `prov tag list`."""


@tag_group.command("set")
@click.argument("name")
@click.argument("ref", metavar="VERSION")
@json_option
@pass_ctx
def tag_set(obj: Context, name: str, ref: str, as_json: bool) -> None:
    """Name a version (tagging again moves the tag). Tags hold letters, digits and . _ - + /
    and must not look like a version id."""
    version = obj.ledger().tag(name, ref)
    render.emit({"tag": name, "version_id": version.version_id}, as_json, lambda d: f"{d['tag']} -> {d['version_id']}")


@tag_group.command("list")
@json_option
@pass_ctx
def tag_list(obj: Context, as_json: bool) -> None:
    """Every tag and the version it names."""
    render.tags(obj.ledger(read_only=True).tags(), as_json)


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


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="prov")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


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


no_store_option = click.option(
    "--no-store", is_flag=True,
    help="Keep nothing in the ledger (the report is printed, not stored); opens the ledger read-only.")


def _write_html(report: dict, path: Path | None) -> None:
    """Write an audit's HTML page to ``path`` (checked beforehand with ``Ledger.output_path``)."""
    if path is not None:
        from provenance.audit_html import write_report

        write_report(report, path)


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
