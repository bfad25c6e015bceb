"""Rendering for the CLI: rich tables for people, JSON for programs, progress bars on stderr."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from provenance.plain import dumps, plain
from provenance.records import DatasetRecord, ShardRecord

_MAX_CELL = 60


class _Fitting(Console):
    """A console that lays tables out itself so that no column is ever squeezed to nothing,
    cut or dropped (Rich collapses wrappable columns to zero width when a table is too wide):
    no-wrap columns (ids, numbers, dates) keep their full width, text columns wrap down to their
    longest word, and a table that still does not fit is printed wider than the console. Piped to
    a file or a CI log (no terminal, no $COLUMNS) the console is 100 columns wide."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        tables = [o for o in objects if isinstance(o, Table)]
        base = self.width
        try:
            for t in tables:
                self.width = max(self.width, _fit(t, base, self))
            super().print(*objects, **kwargs)
        finally:
            self.width = base


def _fit(table: Table, width: int, console: Console) -> int:
    """Give every column of ``table`` a fixed width (module doc of :class:`_Fitting`); returns
    the table's total width."""
    if table.box is None or not table.columns:
        return width
    pad = 2  # Rich's default cell padding, one space each side
    overhead = len(table.columns) + 1 + pad * len(table.columns)
    lo, hi = [], []
    for col in table.columns:
        m = table._measure_column(console, console.options.update_width(100_000), col)
        header = max((len(w) for w in str(col.header).split()), default=1)
        hi.append(max(m.maximum - pad, len(str(col.header)) if col.no_wrap else header, 1))
        lo.append(hi[-1] if col.no_wrap else max(min(m.minimum - pad, hi[-1]), header, 1))
    widths = list(hi)
    excess = sum(widths) + overhead - width
    while excess > 0:
        room = [i for i, c in enumerate(table.columns) if widths[i] > lo[i]]
        if not room:
            break
        widest = max(room, key=lambda i: widths[i] - lo[i])
        cut = min(excess, widths[widest] - lo[widest], max(1, (widths[widest] - lo[widest]) // 2))
        widths[widest] -= cut
        excess -= cut
    for col, w in zip(table.columns, widths):
        col.width = w
        if not col.no_wrap:
            col.overflow = "fold"
    return sum(widths) + overhead


def _console() -> Console:
    return _Fitting(soft_wrap=False, width=max(100, Console().width))


def _dump(data: Any) -> None:
    """``data`` as indented JSON on stdout (dates and other objects as their text)."""
    click.echo(dumps(data))


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(dumps(data))
    else:
        click.echo(human(data))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        text = "[" + ", ".join(map(str, value[:4])) + (f", … ({len(value)})]" if len(value) > 4 else "]")
    else:
        text = str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _csv_cell(value: Any) -> Any:
    """A CSV field: nested values as JSON, everything else as its plain text (dates ISO 8601,
    decimals as numbers, blobs as hex)."""
    value = plain(value)
    if isinstance(value, (list, dict)):
        return dumps(value, indent=None)
    return "" if value is None else value


def arrow(table: pa.Table, fmt: str) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        click.echo(dumps(rows))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(table.column_names)
        for r in rows:
            writer.writerow([_csv_cell(v) for v in r.values()])
        click.echo(buf.getvalue(), nl=False)
    else:
        t = Table(show_lines=False)
        for name in table.column_names:
            t.add_column(name, overflow="fold")
        for r in rows:
            t.add_row(*(_cell(v) for v in r.values()))
        _console().print(t)
        click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def datasets(records: list[DatasetRecord], as_json: bool) -> None:
    if as_json:
        click.echo(dumps([r.model_dump(mode="json") for r in records]))
        return
    t = Table()
    for col in ("dataset", "role", "license", "shards", "documents", "MB", "created"):
        t.add_column(col, no_wrap=True)
    for r in records:
        t.add_row(r.dataset_id, r.role, r.license.spdx or "unknown", f"{r.n_shards:,}", f"{r.n_documents:,}",
                  f"{r.n_bytes / 1e6:,.1f}", r.created_at.strftime("%Y-%m-%d %H:%M"))
    _console().print(t)
    if not records:
        click.echo("no datasets registered; add one with `prov dataset add NAME FILES...`")


def dataset(ds: DatasetRecord, shards: list[ShardRecord], as_json: bool) -> None:
    if as_json:
        out = ds.model_dump(mode="json")
        out["shards"] = [s.model_dump(mode="json") for s in shards]
        click.echo(dumps(out))
        return
    lic = ds.license
    conditions = ", ".join(
        name for name, flag in (("non-commercial", lic.non_commercial), ("share-alike", lic.share_alike),
                                ("attribution", lic.attribution)) if flag
    ) or ("none" if lic.known else "unknown")
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for k, v in [
        ("dataset", ds.dataset_id), ("role", ds.role), ("license", f"{lic.spdx or 'unknown'} ({conditions})"),
        ("model-generated", {True: "yes", False: "no", None: "unknown"}[ds.model_generated]),
        ("source", ds.source or ""), ("creator", ds.creator or ""), ("description", ds.description or ""),
        ("fields", f"text={ds.text_field!r} id={ds.id_field!r}"), ("fingerprint", ds.config_id),
        ("LSH bands", f"{ds.bands} x {ds.rows} rows (threshold {ds.config.lsh_threshold})"),
        ("documents", f"{ds.n_documents:,} ({ds.n_tokens:,} words, {ds.n_bytes / 1e6:,.2f} MB)"),
        ("invalid", f"{ds.n_invalid_replaced:,} repaired, {ds.n_invalid_skipped:,} skipped"),
        ("content hash", ds.content_hash), ("created", ds.created_at.isoformat(sep=" ", timespec="seconds")),
    ]:
        info.add_row(k, v)
    console = _console()
    console.print(info)
    t = Table(title="shards")
    for col in ("#", "name", "format", "documents", "bytes", "xxh3-128"):
        t.add_column(col)
    for s in shards:
        t.add_row(str(s.shard_index), s.name, s.format, f"{s.n_documents:,}", f"{s.n_bytes:,}", s.shard_id)
    console.print(t)


def versions(records, as_json: bool) -> None:
    if as_json:
        click.echo(dumps([r.model_dump(mode="json") for r in records]))
        return
    if not records:
        click.echo("no versions; commit one with `prov model commit PATH -m MESSAGE`")
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
    _console().print(t)


def tags(records, as_json: bool) -> None:
    if as_json:
        return _dump([r.model_dump(mode="json") for r in records])
    if not records:
        click.echo("no tags; name a version with `prov tag NAME VERSION`")
        return
    t = Table()
    for col in ("tag", "version", "message", "tagged"):
        t.add_column(col, no_wrap=col != "message")
    for r in records:
        t.add_row(r.name, r.version_id[:12], r.message, r.created_at.strftime("%Y-%m-%d %H:%M"))
    _console().print(t)


def version(record, manifest: dict, as_json: bool, receipt: dict | None = None) -> None:
    if as_json:
        out = record.model_dump(mode="json")
        out["manifest"] = [p.model_dump(mode="json") for p in manifest.values()]
        if receipt is not None:
            out["receipt"] = {k: v for k, v in receipt.items() if k != "params_json"}
        click.echo(dumps(out))
        return
    click.echo(f"version {record.version_id}" + (f"\ntags    {', '.join(record.tags)}" if record.tags else "")
               + f"\nparents {', '.join(record.parents) or '(root)'}\nauthor  {record.author or '(unknown)'}\n"
               f"message {record.message}\nstored  {record.stored_bytes:,} of {record.full_bytes:,} bytes")
    if receipt is not None:
        extra = {"eps": receipt["eps"], "normalize": receipt["normalize"], "density": receipt["density"],
                 "base": receipt["base_version"], "audit": receipt["audit_id"]}
        settings = ", ".join(f"{k} {v}" for k, v in extra.items() if v is not None)
        click.echo(f"merge   {receipt['method']}, weights {receipt['weights']}" + (f", {settings}" if settings else "")
                   + f"; kernel {receipt['kernel']}")
    t = Table()
    for col in ("parameter", "dtype", "shape", "encoding", "bytes"):
        t.add_column(col, no_wrap=True)
    for p in manifest.values():
        t.add_row(p.name, p.dtype, "x".join(map(str, p.shape)) or "()", p.encoding, f"{p.nbytes:,}")
    _console().print(t)


def diff(rows: list[dict], as_json: bool) -> None:
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
    _console().print(t)


def runs(records, as_json: bool) -> None:
    if as_json:
        click.echo(dumps([r.model_dump(mode="json") for r in records]))
        return
    t = Table()
    for col in ("run", "status", "base", "version", "datasets", "logged", "message", "started"):
        t.add_column(col, no_wrap=col not in ("message", "datasets"))
    for r in records:
        t.add_row(r.run_id[:12], r.status, (r.base_version or "(scratch)")[:12], (r.version_id or "")[:12],
                  ", ".join(r.datasets), f"{r.n_logged:,}", r.message, r.started_at.strftime("%Y-%m-%d %H:%M"))
    _console().print(t)


def run(record, shards: list, as_json: bool) -> None:
    if as_json:
        out = record.model_dump(mode="json")
        out["shards"] = [s.model_dump(mode="json") for s in shards]
        click.echo(dumps(out))
        return
    lines = [f"run      {record.run_id}", f"status   {record.status}" + (f" ({record.error})" if record.error else ""),
             f"message  {record.message}", f"base     {record.base_version or '(from scratch)'}",
             f"version  {record.version_id or '(none)'}", f"params   {json.dumps(record.params)}",
             f"logged   {record.n_logged:,} examples"]
    click.echo("\n".join(lines))
    if not shards:
        declared = ", ".join(f"{d} x{e:g}" for d, e in record.datasets.items()) or "none"
        click.echo(f"datasets {declared} (consumption is counted when the run ends)")
        return
    t = Table()
    for col in ("dataset", "shard", "examples", "documents seen", "epochs", "counted from"):
        t.add_column(col, no_wrap=True)
    for s in shards:
        t.add_row(s.dataset_id, str(s.shard_index), f"{s.examples:,}", f"{s.distinct_documents:,}", f"{s.epochs:.3g}",
                  "logged keys" if s.logged else "declared epochs")
    _console().print(t)


def demo(report, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(report.to_json()))
        return
    for r in report.registrations:
        click.echo(r.message)
    s = report.summary
    click.echo(f"\nledger {s['path']}: {s['datasets']} datasets, {s['shards']} shards, {s['documents']:,} documents")
    from provenance.ledger import Ledger

    datasets(Ledger.open(report.ledger).datasets(), False)
    click.echo(
        f"near-duplicates (LSH band collisions, estimated Jaccard >= 0.6): {len(report.pairs)} pairs; "
        f"planted {report.planted}, found {report.found}; "
        f"evaluation leaks planted {report.contaminated}, found {report.contamination_found}"
    )
    t = Table(title="closest pairs")
    for col in ("a", "b", "datasets", "jaccard"):
        t.add_column(col)
    for p in report.pairs[:8]:
        t.add_row(p["key_a"], p["key_b"], f"{p['dataset_a']} / {p['dataset_b']}", f"{p['jaccard']:.3f}")
    _console().print(t)
    if report.models:
        models(report.models)
    if report.gate:
        click.echo("\nBefore merging, the pre-merge gate on the two contributors (prov audit merge):")
        gate(report.gate, False)
        if not report.gate["passed"]:
            click.echo("The demo merges anyway, to show the rest; the merge's receipt cites this failed audit. "
                       "`prov merge --gate` would have refused (exit status 1).")
    if report.lineage is not None:
        click.echo("\nThe merged version's lineage (prov lineage demo-merge):")
        lineage(report.lineage, False)


def models(story: list[dict]) -> None:
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
    _console().print(t)

class _RichProgress:
    """A rich progress display that appears only once the work has taken ``delay`` seconds:
    quick commands print no bar at all."""

    def __init__(self, progress: Progress, delay: float = 1.0):
        self._p = progress
        self._task = None
        self._since = time.monotonic()
        self._delay = delay
        self.shown = False

    def start(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._p.remove_task(self._task)
        self._task = self._p.add_task(description, total=total)
        self._show_when_slow()

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, amount)
        self._show_when_slow()

    def _show_when_slow(self) -> None:
        if not self.shown and time.monotonic() - self._since >= self._delay:
            self._p.start()
            self.shown = True


class _Silent:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@contextlib.contextmanager
def progress(quiet: bool) -> Iterator[Any]:
    """A progress bar on stderr once the work takes over a second, or nothing when quiet or when
    stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield _Silent()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    p = Progress(*columns, console=Console(stderr=True), transient=True)
    bar = _RichProgress(p)
    try:
        yield bar
    finally:
        if bar.shown:
            p.stop()


def data_diff(d: dict, as_json: bool) -> None:
    if as_json:
        click.echo(dumps(d))
        return
    click.echo(f"A {d['a'][:12]}  B {d['b'][:12]}")
    for side, label in (("a", "only in A"), ("b", "only in B")):
        click.echo(f"datasets {label}: {', '.join(d[f'datasets_only_in_{side}']) or 'none'}")
        shards = d[f"shards_only_in_{side}"]
        for s in shards[:50]:
            click.echo(f"  shard {s['dataset_id']} #{s['shard_index']} {s['shard']}")
        if len(shards) > 50:
            click.echo(f"  … {len(shards) - 50} more shards")
    click.echo(f"datasets in both: {', '.join(d['datasets_in_both']) or 'none'}")


def lineage(lin, as_json: bool) -> None:
    if as_json:
        return _dump(lin.to_dict())
    console = _console()
    t = Table(title=f"Data that shaped {lin.version[:12]}")
    for col in ("dataset", "role", "license", "shards", "examples", "effective share", "via (nearest first)"):
        t.add_column(col)
    for d in lin.datasets:
        t.add_row(d["dataset_id"], d["role"] or "", d["license"] or "unknown", str(d["shards"]), f"{d['examples']:,}",
                  f"{d['effective_share']:.1%}", " → ".join(v[:8] for v in d["path"]))
    console.print(t)
    v = Table(title="Versions in the lineage")
    for col in ("version", "message", "weight", "how"):
        v.add_column(col)
    for row in lin.version_rows():
        how = (f"{row['merge']} merge" if row["merge"] else f"run {row['run_id'][:8]}" if row["run_id"]
               else "no run recorded: data unknown")
        v.add_row(row["version_id"][:12] + (f" ({', '.join(row['tags'])})" if row["tags"] else ""),
                  _cell(row["message"]), f"{row['weight']:.3g}", how)
    console.print(v)
    lic = lin.license
    flags = [f"{k.replace('_', '-')}: {', '.join(lic[k])}" for k in
             ("non_commercial", "share_alike", "unknown_license", "model_generated") if lic[k]]
    click.echo(f"licenses: {', '.join(lic['licenses']) or 'none'}" + ("".join(f"\n  {f}" for f in flags)))
    if lin.unrecorded:
        click.echo(f"no training data recorded for {len(lin.unrecorded)} version(s): "
                   f"{', '.join(v[:12] for v in lin.unrecorded)}")


def taint(report: dict, as_json: bool) -> None:
    if as_json:
        return _dump(report)
    click.echo(f"target: {report['target']}")
    if report.get("near") is not None:
        click.echo(f"near-duplicates (Jaccard >= {report['near']}): {len(report['matches'])} document(s)")
        for m in report["matches"][:20]:
            click.echo(f"  {m['dataset_id']} {m['key']}  J≈{m['jaccard']:.3f}")
    t = Table(title=f"{len(report['versions'])} tainted version(s)")
    for col in ("version", "tags", "message", "how", "examples"):
        t.add_column(col)
    for v in report["versions"]:
        t.add_row(v["version_id"][:12], ", ".join(v.get("tags", [])), _cell(v["message"]),
                  "trained on it" if v["direct"] else f"descends from {v['via'][:8]}",
                  f"{v['examples']:,}" if v["direct"] else "")
    _console().print(t)


def dedup(report: dict, as_json: bool) -> None:
    if as_json:
        return _dump(report)
    s, b = report["summary"], report["banding"]
    click.echo(f"dedup audit {report['audit_id'][:12]} of {', '.join(report['datasets'])} at Jaccard >= {report['threshold']}")
    spanning = report.get("pairs_mode", "spanning") == "spanning"
    click.echo(f"  {s['documents']:,} documents, {s['pairs']:,} pairs ({s['exact_duplicate_pairs']:,} exact), "
               f"{s['clusters']:,} clusters (largest {s['largest_cluster']})"
               + ("; the pairs span each cluster (m identical copies: m-1 pairs), --all-pairs lists every pair"
                  if spanning else "; every pair listed"))
    click.echo(f"  duplicate rate {s['duplicate_rate']:.2%} ({s['redundant_documents']:,} redundant documents)")
    click.echo(f"  banding {b['bands']} bands x {b['rows']} rows of {b['num_perm']}: P(candidate | J={report['threshold']}) "
               f"= {b['p_at_threshold']:.4f}")
    v = report.get("verify")
    if v:
        click.echo(f"  verified {v['checked']} of {v['near_threshold']} pairs within ±{v['margin']:.3f} of the threshold "
                   f"by exact Jaccard: {v['rejected']} below it, dropped" + (f"; {v['not_checked']} unreadable" if v["not_checked"] else ""))
        for why in v["unreadable"][:5]:
            click.echo(f"    {why}")
    if report["largest_clusters"]:
        t = Table(title="Largest clusters")
        for col in ("size", "datasets", "sample keys"):
            t.add_column(col)
        for c in report["largest_clusters"]:
            t.add_row(str(c["size"]), ", ".join(c["datasets"]), _cell(", ".join(c["sample_keys"])))
        _console().print(t)
    pairs = report.get("pairs")
    if pairs:
        t = Table(title=f"Pairs (best {min(20, len(pairs))} of {len(pairs):,})")
        for col in ("a", "b", "jaccard", "±"):
            t.add_column(col)
        for p in pairs[:20]:
            t.add_row(_cell(p["a"]), _cell(p["b"]), f"{p['jaccard']:.3f}", f"{p['stderr']:.3f}")
        _console().print(t)
    elif report.get("pairs_file"):
        click.echo(f"  pairs written to {report['pairs_file']}")


def gate(report: dict, as_json: bool) -> None:
    if as_json:
        return _dump(report)
    policy = report["policy"]
    limits = [f"max-overlap {policy['max_overlap']:.1%}" if policy["max_overlap"] is not None else "",
              f"max-contamination {policy['max_contamination']}" if policy["max_contamination"] is not None else "",
              f"deny-licence {','.join(policy['deny_license'])}" if policy.get("deny_license") else ""]
    limits = [x for x in limits if x]
    console = _console()
    verdict = "[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]"
    console.print(f"pre-merge gate {report['audit_id'][:12]}: {verdict} "
                  f"({'limits: ' + ', '.join(limits) if limits else 'no limits set: a report only'})", highlight=False)
    for v in report.get("violations") or [{"policy": "", "message": a} for a in report["alerts"]]:
        console.print(f"  [red]✗ {escape(v['message'])}[/]", highlight=False)
    labels = report.get("labels") or {}
    for side in report["sides"]:
        click.echo(f"  {labels.get(side['version_id'], side['version_id'][:12])}: {side['shards']} shard(s) of "
                   f"{', '.join(side['datasets']) or 'no data'}")
    t = Table(title=f"Training-data overlap (Jaccard >= {report['threshold']})")
    for col in ("A", "B", "A docs", "A overlap", "B docs", "B overlap", "datasets"):
        t.add_column(col)
    for o in report["overlap"]:
        t.add_row(o["a"][:12], o["b"][:12], f"{o['a_documents']:,}",
                  f"{o['a_fraction']:.2%} ({o['a_exact']} exact, {o['a_near']} near)", f"{o['b_documents']:,}",
                  f"{o['b_fraction']:.2%} ({o['b_exact']} exact, {o['b_near']} near)",
                  _cell(", ".join(f"{d['dataset']}~{d['other']}" for d in o["datasets"])))
    _console().print(t)
    c = report["contamination"]
    if c is None:
        click.echo("contamination: no evaluation datasets registered (role eval) or given (--eval)")
    else:
        span = c["ngram"]
        click.echo(f"contamination with {', '.join(c['eval_datasets'])}: {c['contaminated_eval_documents']} of "
                   f"{c['eval_documents']:,} evaluation documents found in training "
                   f"(exact {c['eval_exact']}, near {c['eval_near']}"
                   + (f", shared {span['n']}-word spans {len(span['eval_keys'])}" if span else "") + ")")
        if c["contaminated_eval_keys"]:
            click.echo(f"  {_cell(', '.join(c['contaminated_eval_keys']))}")
        if span and span["unreadable"]:
            click.echo(f"  span check skipped {len(span['unreadable'])} unreadable shard(s): {span['unreadable'][0]}")


def memorization(report: dict, as_json: bool) -> None:
    if as_json:
        return _dump(report)
    s = report["summary"]
    click.echo(f"memorization audit {report['audit_id'][:12]} of {report['version'][:12]}: "
               f"{s['samples_matching_training']} of {s['samples']} samples match training documents "
               f"({s['training_documents_matched']} documents; highest exposure {s['max_exposure']:g})")
    t = Table()
    for col in ("sample", "document", "Jaccard", "span (words)", "near-copies", "exposure"):
        t.add_column(col)
    for sample in report["samples"]:
        for m in sample["matches"][:5]:
            t.add_row(str(sample["index"]), _cell(f"{m['dataset_id']}:{m['key']}"), f"{m['jaccard']:.2f}",
                      str(m["span_words"] or ""), str(m["near_copies"]), f"{m['exposure']:g}")
    if t.row_count:
        _console().print(t)
    for why in report["unreadable"][:5]:
        click.echo(f"  span check skipped: {why}")


def verify(report, as_json: bool) -> None:
    if as_json:
        return _dump(report.model_dump(mode="json"))
    console = _console()
    console.print(f"checked {report.objects_checked:,} objects"
                  f"{' (re-hashed)' if report.objects_rehashed else ' (presence and size; --objects re-hashes)'}, "
                  f"{report.versions_checked:,} versions, {report.datasets_checked:,} dataset versions", highlight=False)
    for d in report.damaged_objects:
        where = f"; moved to {d.quarantined}" if d.quarantined else ""
        needed = ", ".join(v[:12] for v in d.versions) or "no version"
        console.print(f"[red]✗ object {d.address} {d.problem}[/]: {escape(d.detail)}; needed by {needed}{where}",
                      highlight=False)
    for p in report.version_problems:
        console.print(f"[red]✗ version {p['version_id'][:12]}[/]: {escape(p['problem'])}", highlight=False)
    for p in report.dataset_problems:
        shard = f" shard {p['shard_index']}" if p["shard_index"] is not None else ""
        console.print(f"[red]✗ dataset {p['dataset_id']}{shard}[/]: {escape(p['problem'])}", highlight=False)
    if report.temporary_files:
        verb = "removed" if report.repaired else "found (prov gc --apply or verify --repair removes them)"
        click.echo(f"{len(report.temporary_files)} temporary file(s) of interrupted writes {verb}")
    if report.ok:
        console.print("[green]ok[/]: nothing damaged", highlight=False)
    elif report.damaged_objects and not report.repaired:
        click.echo("To restore a damaged object, commit again a checkpoint that holds the tensor (the object is "
                   "written afresh); --repair first moves the damaged files aside.")
