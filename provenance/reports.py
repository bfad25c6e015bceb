"""Audit reports as one self-contained HTML page: summary, alerts, tables and inline SVG plots.

A report is a JSON-able dict (see :func:`render_html`). The page needs nothing outside itself:
no scripts, no external styles or fonts, no network. Every text value is HTML-escaped, a word too
long for its table cell (a document key) breaks there instead of widening the page, and the
same report always renders to the same bytes. Plots are inline SVG drawn by
:mod:`provenance.plots`.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from pathlib import Path
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.files import atomic_write_text
from provenance.plots import BIDI_CONTROLS
from provenance.plots import as_list as _list
from provenance.plots import display_text as _text
from provenance.plots import escape as _e
from provenance.plots import svg_figure as _plot

_JSON_BIDI = str.maketrans({c: f"\\u{ord(c):04x}" for c in BIDI_CONTROLS})
MAX_ROWS = 200  # rows shown per table
MAX_JSON_BYTES = 200_000  # bytes of the embedded JSON report shown
LONG_WORD = 40  # characters of a word in a table cell beyond which the cell may break it anywhere

_GOOD = {"pass", "passed", "ok", "success", "succeeded", "yes", "true"}
_BAD = {"fail", "failed", "error", "broken", "no", "false"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;background:#fff;margin:0;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px}
.subtitle,.note{color:#57606a}.note{font-size:13px;margin:4px 0}
.alerts{border:1px solid #cf222e;background:#ffebe9;color:#a40e26;border-radius:6px;
 padding:8px 16px;margin:16px 0;font-weight:600}.alerts p{margin:4px 0;font-size:1.1em}
table{border-collapse:collapse;font-size:14px}
th,td{padding:4px 10px;text-align:left;border-bottom:1px solid #d0d7de;vertical-align:top}
thead th{border-bottom:2px solid #8c959f}tbody tr:nth-child(even){background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.long{overflow-wrap:anywhere;min-width:12em}
h1,h2,.subtitle,.alerts,.note,.legend{overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#1a7f37}.bad{background:#cf222e}.neutral{background:#6e7781}
svg{max-width:100%;height:auto;font-size:11px;fill:#1f2328}
.axis{stroke:#57606a}.grid{stroke:#eaeef2}.bar{fill:#0969da;stroke:#fff;stroke-width:.5}
.dot{fill:#0969da;fill-opacity:.6}.series{fill:none;stroke-width:2}
.vertex{fill-opacity:0}.vertex:hover,.vertex.lone{fill-opacity:1}
.vline{stroke:#57606a;stroke-dasharray:4 3}.nodata{fill:#57606a;font-size:16px}
.limit{stroke:#cf222e;stroke-width:1.5;stroke-dasharray:6 3}
.limit-label{fill:#cf222e;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.legend{font-size:13px;margin:4px 0}.key{display:inline-block;width:18px;border-top:3px solid;
 margin:0 6px 3px 12px;vertical-align:middle}
pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12px}
"""


def render_html(report: dict) -> str:
    """The report as one HTML page.

    Keys (all but ``title`` optional, unknown ones ignored): ``title``, ``subtitle``;
    ``summary``, a dict of scalars (floats to 4 significant digits, booleans as yes/no, a
    ``passed`` or ``status`` key as a green or red badge); ``alerts``, a list of strings shown in
    red at the top, under ``alerts_title`` in bold where given; ``tables``, dicts of ``title``,
    ``columns``, ``rows`` and ``note`` (the first :data:`MAX_ROWS` rows shown); ``plots``, dicts
    of ``kind`` (histogram, bar, scatter or line), ``title``, ``x_label``, ``y_label``, ``log_y``
    and the kind's data (``bins`` of ``[lo, hi, count]``, a bin with ``lo == hi`` holding one
    value; ``bars`` of ``[label, value]``, ``points`` of ``[x, y]``, ``series`` of
    ``{"name", "points"}``; ``vlines`` of ``{"x", "label"}`` on a numeric x axis, ``hlines`` of
    ``{"y", "label"}``, limits drawn in red); ``json``, the machine-readable report, embedded
    folded (up to :data:`MAX_JSON_BYTES`).

    Raises :class:`~provenance.errors.InvalidParameterError` (a ``ValueError``) naming the
    offending key, and the plot's index for a malformed plot."""
    if not isinstance(report, dict) or not report.get("title"):
        raise InvalidParameterError("a report must be a dict with a non-empty 'title'")
    title = _text(report["title"])
    body = [f"<h1>{_e(title)}</h1>"]
    if report.get("subtitle"):
        body.append(f'<p class="subtitle">{_e(_text(report["subtitle"]))}</p>')
    alerts = _list(report, "alerts", "report")
    if alerts:
        head = f"<p>{_e(_text(report['alerts_title']))}</p>" if report.get("alerts_title") else ""
        items = "".join(f"<li>{_e(_text(a))}</li>" for a in alerts)
        body.append(f'<div class="alerts">{head}<ul>{items}</ul></div>')
    summary = report.get("summary") or {}
    if not isinstance(summary, dict):
        raise InvalidParameterError(f"report key 'summary' must be a dict, got {type(summary).__name__}")
    if summary:
        rows = "".join(f"<tr><th>{_e(_text(k))}</th>{_summary_cell(k, v)}</tr>" for k, v in summary.items())
        body.append(f'<h2>Summary</h2><table class="summary"><tbody>{rows}</tbody></table>')
    body += [_table(i, t) for i, t in enumerate(_list(report, "tables", "report"))]
    body += [_plot(i, p) for i, p in enumerate(_list(report, "plots", "report"))]
    if report.get("json") is not None:
        body.append(_json_block(report["json"]))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body></html>\n"
    )


def write_html(report: dict, path: str | os.PathLike) -> Path:
    """Render the report and write it to ``path`` atomically (temporary file, fsync, rename)."""
    return atomic_write_text(path, render_html(report))


# ---------------------------------------------------------------------------------------- text


def _summary_cell(key: Any, value: Any) -> str:
    if str(key).lower() in ("passed", "status"):
        word = _text(value)
        state = "ok" if word.lower() in _GOOD else "bad" if word.lower() in _BAD else "neutral"
        return f'<td><span class="badge {state}">{_e(word)}</span></td>'
    return _cell(value)


def _cell(value: Any) -> str:
    """A table cell; numbers (and percentages written as text) right-aligned; a text with a word
    longer than :data:`LONG_WORD` characters may break anywhere (a document key of one 10,000-character
    word made the page scroll sideways by 115,000 pixels)."""
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool) or (
        isinstance(value, str) and re.fullmatch(r"-?[\d,]*\.?\d+%", value) is not None)
    text = _text(value)
    if numeric:
        return f'<td class="num">{_e(text)}</td>'
    long = any(len(word) > LONG_WORD for word in text.split())
    return f'<td class="long">{_e(text)}</td>' if long else f"<td>{_e(text)}</td>"


def _table(index: int, table: Any) -> str:
    if not isinstance(table, dict):
        raise InvalidParameterError(f"table {index} must be a dict, got {type(table).__name__}")
    where = f"table {index}"
    columns, rows = _list(table, "columns", where), _list(table, "rows", where)
    for r, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise InvalidParameterError(f"{where} key 'rows': row {r} must be a list, got {row!r}")
    out = [f"<h2>{_e(_text(table.get('title') or f'Table {index + 1}'))}</h2><table>"]
    if columns:
        out.append("<thead><tr>" + "".join(f"<th>{_e(_text(c))}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>" + "".join("<tr>" + "".join(map(_cell, row)) + "</tr>" for row in rows[:MAX_ROWS]))
    out.append("</tbody></table>")
    if len(rows) > MAX_ROWS:
        left = len(rows) - MAX_ROWS
        out.append(f'<p class="note">Showing the first {MAX_ROWS} of {len(rows)} rows; {left} left out.</p>')
    if table.get("note"):
        out.append(f'<p class="note">{_e(_text(table["note"]))}</p>')
    return "".join(out)


def _json_block(data: Any) -> str:
    raw = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    raw = raw.translate(_JSON_BIDI).encode("utf-8")  # written as JSON escapes: it still reads back as it was
    note = ""
    if len(raw) > MAX_JSON_BYTES:
        note = f'<p class="note">Truncated: showing the first {MAX_JSON_BYTES:,} of {len(raw):,} bytes.</p>'
        raw = raw[:MAX_JSON_BYTES]
    text = raw.decode("utf-8", errors="ignore")  # a character cut in half is dropped
    return f"<details><summary>Full report (JSON)</summary>{note}<pre>{_e(text)}</pre></details>"

