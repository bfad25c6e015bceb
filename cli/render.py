"""Rendering for the CLI: rich tables for people, JSON for programs, progress bars on stderr."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from provenance.errors import InvalidParameterError
from provenance.plain import dumps, plain, printable, utc_text

_MAX_CELL = 60
_ONE_LINE = str.maketrans({"\n": "\\n", "\t": "\\t"})  # shown as the two characters \n and \t


class _Fitting(Console):
    """A console that lays tables out itself so that no column is ever squeezed to nothing,
    cut or dropped (Rich collapses wrappable columns to zero width when a table is too wide):
    no-wrap columns (ids, numbers, dates) keep their full width, text columns wrap down to their
    longest word, and a table that still does not fit is printed wider than the console. Piped to
    a file or a CI log (no terminal, no $COLUMNS) the console is 100 columns wide."""

    def on_broken_pipe(self) -> None:
        """The reader went away (`prov model log | head`): Rich exits with status 1, which reads as
        a failed gate; the CLI's own handler exits 141 instead."""
        raise BrokenPipeError

    def print(self, *objects: Any, **kwargs: Any) -> None:
        objects = tuple(printable(o) if isinstance(o, str) else o for o in objects)
        tables = [o for o in objects if isinstance(o, Table)]
        for t in tables:  # a key or a message holding ESC [2J cleared the screen
            one = _ONE_LINE if t.box is not None else {}  # a row of a table is one line of text: a newline in
            for col in t.columns:                            # a shard or parameter name drew it as two rows
                col._cells = [printable(c).translate(one) if isinstance(c, str) else c for c in col._cells]
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


def console() -> Console:
    """The console tables go to. Markup is off: every value (a commit message, a file name, a
    document key) is printed as it is, so ``[/]`` in one neither breaks the command nor vanishes;
    the few lines written with colours go through :func:`say`, whose styles are not markup."""
    return _Fitting(soft_wrap=False, width=max(100, Console().width), markup=False)


def say(*parts: str | tuple[str, str], **options: Any) -> None:
    """Print one line of ``parts``: a string as written, a ``(text, style)`` pair styled. Text
    that comes from the ledger (a reason, a problem, a target) is never read as Rich markup:
    ``rich.markup.escape`` leaves a ``[`` that does not look like a tag, so the backslash of a
    reason ending in ``\\[`` was taken as its escape and dropped."""
    console().print(Text.assemble(*parts), highlight=False, **options)


#: The verdicts of an audit, styled.
PASSED, FAILED = ("PASSED", "bold green"), ("FAILED", "bold red")


def as_data(result: Any) -> Any:
    """A typed result (:mod:`provenance.results`) as its JSON data; anything else as it is."""
    to_dict = getattr(result, "to_dict", None)
    return to_dict() if callable(to_dict) else result


def _utc_times(value: Any) -> Any:
    """``value`` with every nested time of the ledger (naive UTC) as RFC 3339 text with ``Z``, as
    the typed records print theirs: ``prov audit list --json`` and ``prov retractions --json``
    printed ``2026-12-07T16:27:02.479260`` beside ``prov model log``'s ``...479260Z``."""
    if isinstance(value, dt.datetime):
        return utc_text(value)
    if isinstance(value, dict):
        return {k: _utc_times(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utc_times(v) for v in value]
    return value


def dump(data: Any) -> None:
    """``data`` (or a typed result's JSON) as indented JSON on stdout (times as RFC 3339 UTC,
    dates and other objects as their text)."""
    click.echo(dumps(_utc_times(as_data(data))))


def echo(message: Any = None, **options: Any) -> None:
    """``click.echo`` of a line for people, its control characters shown (:func:`printable`)."""
    click.echo(None if message is None else printable(str(message)), **options)


def emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(dumps(_utc_times(data)))
    else:
        echo(human(data))


def cell(value: Any) -> str:
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


TABLE_ROWS = 1000  # rows a table shows; csv and json give every row
SQL_BATCH = 10_000  # rows made Python objects at a time for csv and json


def arrow(schema: pa.Schema, batches: Iterable[pa.RecordBatch], fmt: str) -> None:
    """The record ``batches`` of a result of ``schema`` printed as ``fmt``: json, csv, or a table of
    its first :data:`TABLE_ROWS` rows and the count of the rest (laying out a million rows took
    Rich minutes and gigabytes). One batch at a time is held as Python objects."""
    names = schema.names
    if fmt == "json":
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # a JSON object keeps one value a name: `SELECT 1 AS a, 2 AS a` printed {"a": 2}
            raise InvalidParameterError(
                f"the query's columns share a name ({', '.join(map(repr, twice))}): a JSON row keeps one value per "
                "name; give each column its own (AS ...), or use --format csv or table")
        # Written SQL_BATCH rows at a time, as json.dumps(rows, indent=2) writes them: the whole result
        # as Python objects took 6 GB for the 510,000 signatures of `SELECT * FROM documents`.
        before = "[\n"
        for batch in _rebatched(batches):
            rows = (dict(zip(names, r)) for r in zip(*map(_values, batch.columns)))
            click.echo(before + ",\n".join("  " + dumps(row).replace("\n", "\n  ") for row in rows), nl=False)
            before = ",\n"
        click.echo("[]" if before == "[\n" else "\n]")
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")  # not CRLF: ids piped to another command stay clean
        writer.writerow(names)
        for batch in _rebatched(batches):  # a batch at a time, as for JSON
            # Rows as lists, not dicts: columns of one name each keep their value (a dict kept the last).
            for r in zip(*map(_values, batch.columns)):
                writer.writerow([_csv_cell(v) for v in r])
            click.echo(buf.getvalue(), nl=False, color=True)  # (color: values as they are; click strips
            buf.seek(0)  # an escape sequence when not writing to a terminal, `e\x1b[31mx` gave `ex`)
            buf.truncate()
        click.echo(buf.getvalue(), nl=False, color=True)
        return
    shown, n = [], 0
    for batch in batches:  # the first rows kept, the rest counted
        if n < TABLE_ROWS:
            shown.append(batch.slice(0, TABLE_ROWS - n))
        n += batch.num_rows
    rows = [r for b in shown for r in zip(*map(_values, b.columns))] if names else []
    t = Table(show_lines=False)
    for name in names:
        t.add_column(name, overflow="fold")
    for r in rows:
        t.add_row(*(cell(v) for v in r))
    console().print(t)
    click.echo(f"({n:,} row{'s' if n != 1 else ''})" + (
        f": the first {TABLE_ROWS:,} shown; --format csv or json gives every row" if n > TABLE_ROWS else ""))


def _values(column: pa.Array) -> list[Any]:
    """A column's values as printed: a time without a zone, as the ledger keeps them in UTC,
    written as RFC 3339 with ``Z`` (as every other command's JSON gives it; it had no zone)."""
    values = column.to_pylist()
    if pa.types.is_timestamp(column.type) and column.type.tz is None:
        return [None if v is None else utc_text(v) for v in values]
    return values


def _rebatched(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches`` with rows, each of at most :data:`SQL_BATCH` rows."""
    for batch in batches:
        for start in range(0, batch.num_rows, SQL_BATCH):
            yield batch.slice(start, SQL_BATCH)


class _RichProgress:
    """A rich progress display that appears only once the work has taken ``delay`` seconds:
    quick commands print no bar at all. It appears on a timer, not only when the work advances: a
    stage that starts at once and then runs long in one call (a backup's copy of the database,
    verify's checks of a 1M-document dataset) showed nothing for its whole length."""

    def __init__(self, progress: Progress, delay: float = 1.0):
        self._p = progress
        self._task = None
        self._since = time.monotonic()
        self._delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self.shown = False

    def start(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._p.remove_task(self._task)
        self._task = self._p.add_task(printable(description), total=total)
        self._show_when_slow()
        if not self.shown and self._timer is None:
            self._timer = threading.Timer(max(0.0, self._delay - (time.monotonic() - self._since)), self._show)
            self._timer.daemon = True
            self._timer.start()

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, amount)
        self._show_when_slow()

    def _show_when_slow(self) -> None:
        if not self.shown and time.monotonic() - self._since >= self._delay:
            self._show()

    def _show(self) -> None:
        with self._lock:
            if not (self.shown or self._closed):
                self._p.start()
                self.shown = True

    def close(self) -> None:
        """Stop the timer, and take the bar away if it is shown."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self.shown:
                self._p.stop()


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
        bar.close()
