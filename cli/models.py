"""``prov model``, ``prov merge`` and ``prov tag``: commit, inspect, check out, merge and name versions."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from provenance import merge as merge_methods
from provenance.cli import render
from provenance.cli.app import (
    CliError,
    Context,
    FloatRange,
    PathType,
    PolicyFailed,
    _gate_limits,
    _gate_options,
    _kind,
    author_option,
    json_option,
    main,
    pass_ctx,
)
from provenance.errors import GateFailedError, NonFiniteError, NotFoundError
from provenance.files import atomic_write_text
from provenance.plain import counted, dumps
from provenance.records import looks_like_id


@main.group("model")
def model_group() -> None:
    """Commit, inspect and check out model versions."""


@model_group.command("commit")
@click.argument("path", type=PathType())
@click.option("--parent", default=None, help="Version (id, prefix or tag) the new one patches.")
@click.option("-m", "--message", required=True, help="What changed.")
@author_option
@click.option("--encoding", type=click.Choice(["auto", "sparse", "full"]), default="auto", show_default=True,
              help="How to store each parameter group against the parent (auto: smallest exact).")
@click.option("--allow-nonfinite", is_flag=True, help="Store NaN and Inf values instead of refusing them.")
@click.option("--run", "run_id", default=None, help="The running run that produced it (ends the run).")
@click.option("--no-sync", is_flag=True,
              help="Do not sync objects to the disk (faster; a power cut soon after can corrupt them).")
@click.option("--max-file-mb", type=click.IntRange(min=0), default=None,
              help="Largest checkpoint-folder file (config, tokenizer) to store, in MiB  [default: 64].")
@json_option
@pass_ctx
def model_commit(obj: Context, path: str, parent: str | None, message: str, author: str | None, encoding: str,
                 allow_nonfinite: bool, run_id: str | None, no_sync: bool, max_file_mb: int | None,
                 as_json: bool) -> None:
    """Store PATH as a new version: a .safetensors file, a sharded checkpoint (*.safetensors.index.json
    or its folder), or a PEFT LoRA adapter folder (stored as low-rank patches on --parent). A
    checkpoint folder's other files (config, tokenizer) are kept with the version (prov model files)."""
    if not message.strip():  # a malformed option, as click's own are (it was exit 4, "bad input")
        raise click.BadParameter("a commit needs a message: say what changed", param_hint="'-m' / '--message'")
    try:
        with render.progress(obj.quiet) as bar:
            limit = {} if max_file_mb is None else {"max_file_bytes": max_file_mb << 20}
            version = obj.ledger().commit(path, parent=parent, message=message, author=author, encoding=encoding,
                                          allow_nonfinite=allow_nonfinite, run=run_id, sync=not no_sync, progress=bar,
                                          **limit)
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
    show_versions(ledger.ancestors(ref) if ref is not None else ledger.versions(), as_json)  # '': not found


@model_group.command("show")
@click.argument("ref", metavar="VERSION")
@json_option
@pass_ctx
def model_show(obj: Context, ref: str, as_json: bool) -> None:
    """Show a version and how each parameter group is stored."""
    ledger = obj.ledger(read_only=True)
    version = ledger.version(ref)
    show_version(version, ledger.manifest(version), as_json, receipt=ledger.receipt(version))


@model_group.command("diff")
@click.argument("old", metavar="V1")
@click.argument("new", metavar="V2")
@click.option("--data", is_flag=True, help="Compare the two lineages' datasets and shards instead of the tensors.")
@json_option
@pass_ctx
def model_diff(obj: Context, old: str, new: str, data: bool, as_json: bool) -> None:
    """Per parameter group: how V2 differs from V1 (encoding, elements changed, patch bytes).
    With --data: the datasets and shards in one lineage and not the other."""
    ledger = obj.ledger(read_only=True)
    if data:
        show_data_diff(ledger.data_diff(old, new), as_json)
        return
    show_diff(ledger.diff(old, new), as_json)


@model_group.command("checkout")
@click.argument("ref", metavar="VERSION")
@click.option("-o", "--output", type=PathType(dir_okay=False), default=None, help="The .safetensors file to write.")
@click.option("--hf", "hf_folder", type=PathType(file_okay=False), default=None,
              help="Write a Hugging Face checkpoint folder instead (absent or empty): the committed folder's files "
                   "and model.safetensors.")
@click.option("--parents", is_flag=True, help="Create the output's missing folders (default: refuse).")
@json_option
@pass_ctx
def model_checkout(obj: Context, ref: str, output: str | None, hf_folder: str | None, parents: bool,
                   as_json: bool) -> None:
    """Write a version's tensors, bit-identical to what was committed, to a safetensors file
    (one tensor at a time: the model need not fit in memory), or with --hf a folder that
    transformers' from_pretrained loads. Never inside the ledger folder."""
    if output is not None and hf_folder is not None:
        raise click.UsageError("give -o FILE or --hf DIR, not both (--hf writes the tensors into the folder too)")
    if output is None and hf_folder is None:
        raise click.UsageError("give -o FILE (the tensors) or --hf DIR (a Hugging Face folder)")
    ledger = obj.ledger(read_only=True)
    version = ledger.version(ref)
    with render.progress(obj.quiet) as bar:
        if hf_folder is None:
            ledger.checkout(version, output=output, parents=parents, progress=bar)
        else:
            ledger.checkout_hf(version, hf_folder, parents=parents, progress=bar)
    report = {"version_id": version.version_id, "output": output or hf_folder, "tensors": version.n_params,
              "bytes": version.full_bytes}
    if hf_folder is not None:
        report["files"] = sorted(p.name for p in Path(hf_folder).iterdir())
    render.emit(report, as_json, lambda d: f"wrote {d['output']} ({d['tensors']} tensors, {d['bytes']:,} bytes"
                                           + (f"; {', '.join(d['files'])}" if "files" in d else "") + ")")


@model_group.command("files")
@click.argument("ref", metavar="VERSION")
@json_option
@pass_ctx
def model_files(obj: Context, ref: str, as_json: bool) -> None:
    """The files of the checkpoint folder a version was committed from (config, tokenizer), or
    of its nearest first parent committed from one: stored, or left out and why."""
    files = obj.ledger(read_only=True).model_files(ref)
    if as_json:
        return render.dump([f.model_dump(mode="json") for f in files])
    if not files:
        render.echo("no files: no version up its first parents was committed from a checkpoint folder with files")
        return
    t = Table()
    for col in ("file", "bytes", "stored", "from version"):
        t.add_column(col, no_wrap=col != "stored")
    for f in files:
        t.add_row(f.name, f"{f.size:,}", f.object[:12] if f.object else f"no: {f.skipped}", (f.version_id or "")[:12])
    render.console().print(t)


@model_group.command("card")
@click.argument("ref", metavar="VERSION")
@click.option("-o", "--output", type=PathType(dir_okay=False), default=None,
              help="The file to write, e.g. README.md (default: print the card).")
@click.option("--base-model", default=None, help="The Hub name of the model the lineage starts from, if not recorded.")
@json_option
@pass_ctx
def model_card(obj: Context, ref: str, output: str | None, base_model: str | None, as_json: bool) -> None:
    """A version's Hugging Face model card: its lineage's datasets with their effective shares,
    the licence they imply, the base model, and the latest audits that concern it."""
    ledger = obj.ledger(read_only=True)
    card = ledger.model_card(ref, base_model=base_model)
    if output is not None:
        atomic_write_text(ledger.output_path(output), str(card))
    if as_json:
        return render.dump({"version_id": card.data.provenance["version"], "output": output,
                            "metadata": card.data.to_dict(), "text": card.text})
    render.echo(f"wrote {output}" if output is not None else str(card), nl=output is not None)


@main.command("merge")
@click.argument("versions", nargs=-1, required=True, metavar="V1 V2 [V3...]")
@click.option("--method", type=click.Choice(merge_methods.names()), default="fisher",
              show_default=True, help="How to merge (fisher uses the Fisher stored with each version).")
@click.option("--weights", default=None, help="Comma-separated weights, one per version (default: equal).")
@click.option("--base", default=None, help="task_arithmetic/ties: the version task vectors start from (default: the shared parent).")
@click.option("--eps", type=FloatRange(min=0), default=1e-6, show_default=True, help="fisher: floor on the Fisher.")
@click.option("--normalize", is_flag=True, help="fisher: divide each model's Fisher by its L2 norm.")
@click.option("--density", type=FloatRange(0, 1, min_open=True), default=0.2, show_default=True, help="ties: fraction of each task vector kept.")
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
              deny_license: str | None, full_lineage: bool, deny_retracted: bool, message: str, author: str | None,
              as_json: bool) -> None:
    """Merge versions into a new version whose parents are all of them, with a receipt."""
    if len(versions) < 2:  # one made a copy of it with one parent and a receipt: a second version forgotten
        raise click.UsageError("a merge takes at least two versions: prov merge V1 V2 [V3 ...]")
    try:
        lam = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise click.BadParameter(f"{weights!r}: expected numbers separated by commas", param_hint="--weights") from None
    if gate and audit:
        raise click.UsageError("give --gate (run the gate now) or --audit ID (cite one), not both")
    _check_method_options(method)
    if not gate and (eval_datasets or max_overlap is not None or max_contamination is not None or deny_license
                     or full_lineage or deny_retracted):
        raise click.UsageError("--eval, --max-overlap, --max-contamination, --deny-licence, --deny-retracted and "
                               "--full-lineage need --gate")
    policy = dict(eval_datasets=list(eval_datasets) or None, max_overlap=max_overlap, deny_license=deny_license,
                  full_lineage=full_lineage, deny_retracted=deny_retracted, **_gate_limits(max_contamination)) \
        if gate else None
    own = {o: v for o, v in (("eps", eps), ("normalize", normalize), ("density", density))
           if o in merge_methods.get(method).options}  # the method's own settings: the others it refuses
    try:
        ledger = obj.ledger()
        with render.progress(obj.quiet) as bar:
            version = ledger.merge(list(versions), method=method, weights=lam, base=base, audit=audit,
                                   message=message, author=author, device=device, progress=bar, gate=policy, **own)
    except GateFailedError as exc:
        render.echo("\n".join(exc.report.alerts), err=True)
        raise PolicyFailed(f"the pre-merge gate failed (audit {exc.report.audit_id[:12]}); nothing merged",
                           "gate") from exc
    receipt = ledger.receipt(version).to_dict()
    render.emit({**version.model_dump(mode="json"), "receipt": receipt,
                 "cited_gate": _cited_gate(ledger, receipt["audit_id"])}, as_json, _merged_text)


def _check_method_options(method: str) -> None:
    """Refuse an option given for a method that does not use it: `--density 0.3` without `--method
    ties` made a Fisher merge and dropped the density, and `--base` with averaging was ignored
    unread (a ref that named nothing included)."""
    ctx = click.get_current_context()
    given = [o for o in ("base", "eps", "normalize", "density")
             if ctx.get_parameter_source(o) is not click.core.ParameterSource.DEFAULT]
    unused = [o for o in given if not _uses(merge_methods.get(method), o)]
    if unused:
        users = [", ".join(n for n in merge_methods.names() if _uses(merge_methods.get(n), o)) for o in unused]
        raise click.UsageError(f"{'; '.join(f'--{o} is for {u}' for o, u in zip(unused, users))}: the {method} "
                               f"method does not use {'it' if len(unused) == 1 else 'them'}")


def _uses(method: Any, option: str) -> bool:
    return method.needs_base if option == "base" else option in method.options


def _cited_gate(ledger: Any, audit_id: str | None) -> dict[str, Any] | None:
    """The pre-merge gate a merge's receipt cites: its id, whether it passed, and why not (its
    alerts). A failed gate may be cited (the receipt and the model card say so), so the merge's
    own output says so too."""
    if audit_id is None:
        return None
    try:
        row = ledger.audit(audit_id)
    except NotFoundError:  # deleted since by another program: the merge is made, and says so
        return {"audit_id": audit_id, "passed": None, "alerts": ["the cited gate is no longer in the ledger"]}
    except Exception as exc:  # noqa: BLE001 - the merge is made: a failed read must not look like a failed merge
        return {"audit_id": audit_id, "passed": None, "alerts": [f"could not read the cited gate: {exc}"]}
    return {"audit_id": row["audit_id"], "passed": bool(row["passed"]), "alerts": row["report"].get("alerts", [])}


def _merged_text(d: dict[str, Any]) -> str:
    text = (f"merged {counted(len(d['parents']), 'version')} into {d['version_id'][:12]}: "
            f"{d['stored_bytes']:,} bytes stored of {d['full_bytes']:,}")
    gate = d["cited_gate"]
    if gate is not None:
        why = f" ({'; '.join(gate['alerts'])})" if gate["alerts"] else ""
        state = {True: "passed", False: f"FAILED{why}", None: f"not found{why}"}[gate["passed"]]
        text += f"\ncited gate {gate['audit_id'][:12]}: {state}"
    return text


class _TagGroup(click.Group):
    """``prov tag NAME VERSION`` is short for ``prov tag set NAME VERSION``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        positional = len([a for a in args if not a.startswith("-")])
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            close = difflib.get_close_matches(args[0], list(self.commands), n=1, cutoff=0.75)  # not release: delete
            if close and positional == 1:  # a typo of a command, not a tag
                raise click.UsageError(f"No such command {args[0]!r}. Did you mean {close[0]!r}? (`prov tag NAME "
                                       "VERSION` sets a tag: give both)")  # it said: Missing argument 'VERSION'
            args = ["set", *args]
        elif args and args[0] == "list" and positional == 2:
            raise click.UsageError("prov tag list takes no VERSION: a tag named 'list' is set with `prov tag set list "
                                   "VERSION`")  # it said: Got unexpected extra argument
        elif args and args[0] == "delete" and positional == 3:
            raise click.UsageError("prov tag delete takes one NAME: a tag named 'delete' is set with `prov tag set "
                                   "delete VERSION`")
        return super().parse_args(ctx, args)


@main.group("tag", cls=_TagGroup)
def tag_group() -> None:
    """Name versions: `prov tag NAME VERSION` (short for `tag set`), `prov tag list`, `prov tag delete NAME`."""


@tag_group.command("set")
@click.argument("name")
@click.argument("ref", metavar="VERSION")
@json_option
@pass_ctx
def tag_set(obj: Context, name: str, ref: str, as_json: bool) -> None:
    """Name a version (tagging again moves the tag). Tags hold letters, digits and . _ - + /
    and must not look like a version id."""
    ledger = obj.ledger()
    if looks_like_id(name):  # the arguments swapped: it said "pick another name"
        try:
            ledger.version(ref)
        except NotFoundError:
            raise click.UsageError(f"{name!r} looks like a version id and {ref!r} names no version: the tag's name "
                                   f"comes first (did you mean `prov tag {ref} {name}`?)") from None
    try:
        before = ledger.find_tag(name).version_id
    except NotFoundError:
        before = None
    version = ledger.tag(name, ref)
    moved = before if before not in (None, version.version_id) else None
    # --json: the tag as `prov tag list --json` lists it (name, not "tag"; its time and message), and where it was
    tag = ledger.find_tag(name)
    render.emit({**tag.model_dump(mode="json"), "moved_from": moved}, as_json,
                lambda d: f"{d['name']} -> {d['version_id']}" + (f" (moved from {moved[:12]})" if moved else ""))


@tag_group.command("delete")
@click.argument("name")
@json_option
@pass_ctx
def tag_delete(obj: Context, name: str, as_json: bool) -> None:
    """Remove the tag NAME; the version it names is kept (a tag named 'delete' is set with `prov
    tag set delete VERSION`)."""
    tag = obj.ledger().delete_tag(name)
    render.emit(tag.model_dump(mode="json"), as_json,
                lambda d: f"deleted tag {d['name']} (it named {d['version_id'][:12]}; the version is kept)")


@tag_group.command("list")
@json_option
@pass_ctx
def tag_list(obj: Context, as_json: bool) -> None:
    """Every tag and the version it names."""
    show_tags(obj.ledger(read_only=True).tags(), as_json)


# -- rendering ------------------------------------------------------------------------------------

def show_versions(records, as_json: bool) -> None:
    if as_json:
        click.echo(dumps([r.model_dump(mode="json") for r in records]))
        return
    if not records:
        render.echo("no versions; commit one with `prov model commit PATH -m MESSAGE`")
        return
    t = Table()
    for col in ("version", "tags", "parents", "run", "message", "params", "stored", "of full", "created"):
        t.add_column(col, no_wrap=col not in ("message", "tags", "parents"))
    for r in records:
        parents = ", ".join(p[:12] for p in r.parents) or "(root)"
        if len(r.parents) > 1:
            parents = f"merge of {parents}"
        t.add_row(r.version_id[:12], ", ".join(r.tags), parents, (r.run_id or "")[:12], r.message, str(r.n_params),
                  f"{r.stored_bytes:,}", f"{r.stored_bytes / max(1, r.full_bytes):.2%}",
                  r.created_at.strftime("%Y-%m-%d %H:%M"))
    render.console().print(t)


def show_tags(records, as_json: bool) -> None:
    if as_json:
        return render.dump([r.model_dump(mode="json") for r in records])
    if not records:
        render.echo("no tags; name a version with `prov tag NAME VERSION`")
        return
    t = Table()
    for col in ("tag", "version", "message", "tagged"):
        t.add_column(col, no_wrap=col != "message")
    for r in records:
        t.add_row(r.name, r.version_id[:12], r.message, r.created_at.strftime("%Y-%m-%d %H:%M"))
    render.console().print(t)


def show_version(record, manifest: dict, as_json: bool, receipt: Any = None) -> None:
    if as_json:
        out = record.model_dump(mode="json")
        out["manifest"] = [p.model_dump(mode="json") for p in manifest.values()]
        if receipt is not None:
            out["receipt"] = receipt.to_dict()
        click.echo(dumps(out))
        return
    render.echo(f"version {record.version_id}" + (f"\ntags    {', '.join(record.tags)}" if record.tags else "")
                + f"\nparents {', '.join(record.parents) or '(root)'}\nauthor  {record.author or '(unknown)'}\n"
                f"message {record.message}\nstored  {record.stored_bytes:,} of {record.full_bytes:,} bytes")
    if receipt is not None:
        extra = {"eps": receipt.eps, "normalize": receipt.normalize, "density": receipt.density,
                 "base": receipt.base_version, "audit": receipt.audit_id}
        settings = ", ".join(f"{k} {v}" for k, v in extra.items() if v is not None)
        render.echo(f"merge   {receipt.method}, weights {receipt.weights}" + (f", {settings}" if settings else "")
                    + f"; kernel {receipt.kernel}")
    t = Table()
    for col in ("parameter", "dtype", "shape", "encoding", "bytes"):
        t.add_column(col, no_wrap=True)
    for p in manifest.values():
        t.add_row(p.name, p.dtype, "x".join(map(str, p.shape)) or "()", p.encoding, f"{p.nbytes:,}")
    render.console().print(t)


def show_diff(rows: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(dumps(rows))
        return
    t = Table()
    for col in ("parameter", "status", "encoding", "changed", "rank", "patch bytes", "of full"):
        t.add_column(col, no_wrap=True)
    for r in rows:
        rank = "" if r["rank"] is None else str(r["rank"])
        t.add_row(r["name"], r["status"], r["encoding"] or "", f"{r['changed']:.2%}", rank, f"{r['patch_bytes']:,}",
                  f"{r['patch_bytes'] / max(1, r['full_bytes']):.2%}")
    render.console().print(t)


def show_data_diff(d: dict, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(d))
        return
    render.echo(f"A {d['a'][:12]}  B {d['b'][:12]}")
    for side, label in (("a", "only in A"), ("b", "only in B")):
        render.echo(f"datasets {label}: {', '.join(d[f'datasets_only_in_{side}']) or 'none'}")
        shards = d[f"shards_only_in_{side}"]
        if shards:
            render.echo(f"shards {label}: {len(shards):,}")
        for s in shards[:50]:
            render.echo(f"  shard {s['dataset_id']} #{s['shard_index']} {s['shard']}")
        if len(shards) > 50:
            render.echo(f"  … {len(shards) - 50} more shards")
    render.echo(f"datasets in both: {', '.join(d['datasets_in_both']) or 'none'}")
