"""The ``prov`` group and what its commands share: the error funnel (exit statuses, JSON errors),
the ledger a command works on, and the options several commands take.

Commands live in one module per group (``datasets``, ``models``, ``runs``, ``audits``, ``admin``);
:mod:`provenance.cli.main` imports them all, so every command is registered before ``prov`` runs."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from provenance import __version__
from provenance.errors import LedgerNotFoundError, NotFoundError, ProvenanceError
from provenance.files import describe
from provenance.plain import printable

# Exit statuses (documented in docs/cli.md): 0 success or gate passed; 1 a policy broke (the gate
# failed, `prov verify` found damage); 2 a usage error (click's own); 3 a named thing was not found;
# 4 any other error (bad input, a damaged or unreadable ledger); 130 interrupted (Ctrl-C); 141 the
# reader of the output went away (the shell's 128 + the signal, never 1, which a CI step reads as
# a failed gate).
EXIT_POLICY, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_ERROR = 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


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
        else:  # as click shows it, with a key's or a name's control characters made visible
            click.echo(f"Error: {printable(self.format_message())}", err=True)


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

        root = ctx.find_root().meta
        root.setdefault("prov.args", [*getattr(ctx, "_protected_args", ()), *ctx.args])  # before click takes them
        with warnings.catch_warnings(record=True) as caught:  # library warnings: one line each on stderr
            warnings.simplefilter("always")
            # Python's own note of a file the garbage collector closed (in a process that ran commands
            # before, one a test left) is for developers: it landed in a command's --json output
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                return self._invoke(ctx)
            except CliError as exc:
                exc.as_json = bool(ctx.meta.get("prov.json")) or _asked_json(ctx)
                raise
            finally:
                for w in caught:
                    click.echo(printable(f"warning: {w.message}"), err=True)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return self._errors_named(ctx)
        except BaseException as exc:  # Ctrl-C, also as numba's or DuckDB's own error
            if _interrupted(exc):
                _aborted(ctx.find_root().obj)
            raise

    def _errors_named(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # what the command printed, written while its errors are still named
            return result
        except CliError:
            raise
        except (NotFoundError, LedgerNotFoundError) as exc:
            raise CliError(str(exc), kind=_kind(exc), exit_code=EXIT_NOT_FOUND) from exc
        except ProvenanceError as exc:
            raise CliError(str(exc), kind=_kind(exc)) from exc
        except ValidationError as exc:
            raise CliError(f"invalid parameter: {validation_problems(exc)}", kind="invalid_parameter") from exc
        except click.UsageError as exc:
            if ctx.meta.get("prov.json") or _asked_json(ctx):  # also when parsing stopped before --json
                raise CliError(exc.format_message(), kind="usage", exit_code=EXIT_USAGE) from exc
            raise
        except click.ClickException as exc:
            raise CliError(exc.format_message(), kind="error", exit_code=exc.exit_code) from exc
        except BrokenPipeError:  # the reader went away (`prov ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_PIPE)
        except OSError as exc:  # a file the command reads or writes: name it, no traceback
            if _stdout_refused():
                raise CliError(f"cannot write the output to stdout: {exc.strerror or exc} (what the command "
                               "recorded in the ledger is kept)", kind="os") from exc
            raise CliError(describe(exc), kind="os") from exc


def _stdout_refused() -> bool:
    """Whether stdout refuses what the command printed (``> /dev/full``: it said only "No space
    left on device", then Python's ``Exception ignored ... OSError`` at exit, status 120); if so,
    stdout is pointed at /dev/null, so that the exit's own flush succeeds."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        return True
    return False


def _asked_json(ctx: click.Context) -> bool:
    """Whether the command line holds ``--json`` (before any ``--``): an unknown option stops
    click's parsing before ``--json`` is seen, and its error should still be JSON."""
    args = ctx.find_root().meta.get("prov.args", [])
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` happened because of Ctrl-C: a KeyboardInterrupt in its chain (numba turns
    one into ``SystemError: ... returned a result with an exception set``; DuckDB stops its query
    and raises ``RuntimeError: Query interrupted``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        # DuckDB takes the signal itself during a query and raises RuntimeError("Query interrupted")
        if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, RuntimeError) and str(exc) == "Query interrupted"):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _aborted(obj: Any = None) -> None:
    """Ctrl-C: click would say Aborted! and exit 1, which a CI step reads as a failed gate. A
    write the ledger had committed before the interrupt is kept: it is named."""
    made = [m for ledger in getattr(obj, "opened", ()) for m in getattr(ledger, "committed", ())]
    kept = "; ".join(", ".join(f"{kind.removesuffix('_id')} {value}" for kind, value in m.items()) for m in made)
    if not kept and getattr(obj, "kept", None):  # written by another process: it can only be said where
        kept, made = obj.kept, True
    resume = getattr(obj, "resume", None) if made else None
    click.echo(printable("\nAborted!" + (f" What the ledger recorded before the interrupt is kept: {kept}" if kept else "")
                         + (f"; {resume}" if resume else "")), err=True)
    sys.exit(EXIT_INTERRUPTED)


#: Fields of the library's models that commands set from options of another name.
OPTION_OF_FIELD = {"lsh_threshold": "--threshold", "num_perm": "--num-perm", "ngram": "--ngram", "seed": "--seed"}


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: each problem after the option (or field) it is about,
    without pydantic's own prefixes."""
    problems = []
    for e in exc.errors():
        loc = ".".join(map(str, e["loc"]))
        msg = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{OPTION_OF_FIELD.get(loc, loc)}: {msg}" if loc else msg)
    return "; ".join(problems)


class Context:
    def __init__(self, ledger: str | None, wait: float, quiet: bool):
        self.ledger_path = ledger
        self.wait = wait
        self.quiet = quiet
        self.opened: list[Any] = []  # the ledgers the command opened (an interrupt names what they committed)
        self.resume: str | None = None  # what to run to go on after an interrupt, said when something was kept
        self.kept: str | None = None  # what an interrupt keeps that no ledger opened here committed (a server's writes)

    def ledger(self, *, read_only: bool = False):
        """The ledger the command works on; commands that only read open it read-only, so they
        work on a read-only file or mount."""
        from provenance.api import Ledger

        ledger = Ledger.open(self.ledger_path, lock_timeout=self.wait, read_only=read_only)
        self.opened.append(ledger)
        return ledger


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


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_mode, is_eager=True,
                           help="Print JSON instead of a table (errors too: JSON on stderr).")


def once(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> str | None:
    """The one value of an option that names one thing (``multiple=True``, so that a second is
    seen): click kept the last of ``--key L7 --key L1`` silently, and L7 was never looked at."""
    if len(values) > 1:
        raise click.BadParameter(f"given {len(values)} times ({', '.join(map(repr, values))}); it names one: run the "
                                 "command once for each", ctx=ctx, param=param)
    return values[0] if values else None


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


class FloatRange(click.FloatRange):
    """click's ``FloatRange`` that refuses NaN, which passes every bound's comparison."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        rv = super().convert(value, param, ctx)
        if rv != rv:
            self.fail(f"{value!r} is not a number.", param, ctx)
        return rv


class PathType(click.Path):
    """click's ``Path`` that refuses an empty value: ``-o "$UNSET"`` is a slip, not the current
    folder (``prov init ''`` made a ledger there, ``prov model commit ''`` committed it, ``--html ''``
    wrote no page without a word)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value == "":
            what = "a folder" if not self.file_okay else "a file" if not self.dir_okay else "a file or folder"
            self.fail(f"is empty: give {what} name", param, ctx)
        return super().convert(value, param, ctx)


def _gate_options(f):
    """The policy options the pre-merge gate shares between ``prov audit merge`` and ``prov merge --gate``."""
    f = click.option("--eval", "eval_datasets", multiple=True,
                     help="An evaluation dataset (repeat; default: every dataset registered with role eval).")(f)
    f = click.option("--max-overlap", type=FloatRange(0, 1), default=None,
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
    f = click.option("--deny-retracted", is_flag=True,
                     help="Fail when an input's lineage holds data a retraction retracts (prov retract).")(f)
    return f


def _ray_options(actors: str, *, gpus: bool = False):
    """``--engine local|ray`` and the Ray options, for the commands that run on Ray Data;
    ``actors``: what ``--num-cpus`` counts. The command gets ``engine`` and ``ray_options`` (a
    dict; a Ray option given with ``--engine local`` is a usage error)."""

    def decorate(f):
        def wrapper(*args: Any, engine: str, address: str | None, num_cpus: int | None, staging: str | None,
                    num_gpus: float | None = None, **kwargs: Any) -> Any:
            given = {"address": address, "num_cpus": num_cpus, "staging": staging}
            if gpus:
                given["num_gpus"] = num_gpus
            if engine == "local" and any(v is not None for v in given.values()):
                name = next(k for k, v in given.items() if v is not None).replace("_", "-")
                raise click.UsageError(f"--{name} applies to --engine ray")
            return f(*args, engine=engine, ray_options=given, **kwargs)

        wrapper = functools.update_wrapper(wrapper, f)
        del wrapper.__wrapped__  # click reads the parameters from the options below, not the signature
        options = [
            click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                         help="Run in this process, or on Ray Data (pip install 'provenance[ray]')."),
            click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
                         help="--engine ray: the Ray cluster (default: start a local one)."),
            click.option("--num-cpus", type=click.IntRange(min=1), default=None,
                         help=f"--engine ray: {actors} (default: the cluster's CPUs)."),
        ]
        if gpus:
            options.append(click.option("--num-gpus", type=FloatRange(min=0, min_open=True), default=None,
                                        help="--engine ray: GPUs per actor."))
        options.append(click.option(
            "--staging", type=PathType(file_okay=False), default=None,
            help="--engine ray: folder for the files Ray workers exchange, reachable from every node "
                 "(default: the ledger's .prov/tmp/ray, where prov gc removes what a killed run left)."))
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _ray_engine(module: str) -> Any:
    """``provenance.integrations.<module>``, or a usage error saying how to install Ray."""
    import importlib

    try:
        return importlib.import_module(f"provenance.integrations.{module}")
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(cls=ProvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prov")
@click.option(
    "--ledger",
    envvar="PROV_LEDGER",
    type=click.Path(file_okay=False),
    help="Ledger folder (a project folder or its .prov), or a ledger server's URL (http://HOST:PORT; token in "
         "$PROV_TOKEN). Default: $PROV_LEDGER, else the nearest .prov above.",
)
@click.option("--wait", type=FloatRange(0, 86400), default=10.0, show_default=True, help="Seconds to wait for a ledger another process holds.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx: click.Context, ledger: str | None, wait: float, quiet: bool) -> None:
    """Training-data provenance: which data shaped which model version."""
    if ledger is not None and not ledger.strip():  # `--ledger "$UNSET_VAR"`: not the current folder
        raise click.BadParameter("is empty: give a ledger folder or a ledger server's URL", param_hint="'--ledger'")
    ctx.obj = Context(ledger, wait, quiet)


def audit_ledger(obj: Context, no_store: bool):
    """The ledger an audit command runs on: opened read-only with ``--no-store``; one that cannot
    be written refused before the audit runs (it failed at the end, after the audit's work),
    saying the way round."""
    ledger = obj.ledger(read_only=no_store)
    if not no_store and ledger.read_only:
        from provenance.errors import LedgerReadOnlyError

        raise LedgerReadOnlyError(f"ledger {ledger.root} cannot be written (its database file or folder is read-only), "
                                  "and the audit is stored in it: --no-store runs the audit without storing it")
    return ledger


no_store_option = click.option(
    "--no-store", is_flag=True,
    help="Keep nothing in the ledger (the report is printed, not stored); opens the ledger read-only.")


def _write_html(report: Any, path: Path | None) -> None:
    """Write an audit's HTML page (from its report, typed or as stored) to ``path`` (checked
    beforehand with ``Ledger.output_path``)."""
    if path is not None:
        from provenance.audit_html import write_report
        from provenance.cli.render import as_data

        write_report(as_data(report), path)


def read_keys(file: Any) -> list[str]:
    """The document keys in ``file`` (opened with ``click.File("rb")``), one per line: each line as
    it is but its line ending (spaces are part of a key), blank lines skipped. A file that is not
    UTF-8 is an error naming the file and the line (it was a traceback and exit status 1)."""
    import io

    raw = file.read()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        name = getattr(file, "name", "-")
        raise CliError(f"{'stdin' if name in ('-', '<stdin>') else name}: line {line} is not UTF-8 "
                       f"(byte {exc.start})", kind="source") from None
    content = content.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write, is no key
    return [k for k in (line.rstrip("\r\n") for line in io.StringIO(content, newline=None)) if k]


def read_text(file: Any) -> str:
    """The text of a document in ``file`` (opened with ``click.File("rb")``) as registration reads
    a text file: UTF-8, a leading byte order mark dropped (it was kept, so a file saved with one
    matched no registered copy of itself). A file that is not UTF-8 is an error naming it."""
    raw = file.read()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise CliError(f"{getattr(file, 'name', 'stdin')}: not UTF-8 (byte {exc.start})", kind="source") from exc
    if not text.strip():  # "the text to look for is empty" did not say which file
        raise CliError(f"{getattr(file, 'name', 'stdin')}: empty (no text to look for)", kind="source")
    return text
