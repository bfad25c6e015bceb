"""SVG plots for the audit pages: histograms, bars, scatters and lines drawn as inline SVG, each
mark with a tooltip giving its exact values, and the text helpers the pages share.

A plot is a dict (``kind``, ``title``, axis labels, data, ``vlines``/``hlines`` marker lines; see
:func:`svg_figure`). Labels stay inside their plot: the y axis's label is written across the top,
long labels and bar names are shortened to the room they have (whole in their tooltip). A value
that cannot be drawn (NaN, infinite, non-positive on a log scale) is left out and said so.
"""

from __future__ import annotations

import html
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

from provenance.errors import InvalidParameterError

_W, _H = 720, 320  # SVG size; the plot area sits inside the margins below
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 28, 34, 48  # the top margin holds the y label and marker labels
_CHAR = 6.6  # the widest average character of an 11px sans-serif label, in px: room is measured with it
_PW, _PH = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83")


#: Characters that reorder the text after them (bidirectional embeddings, overrides and isolates;
#: the marks, which right-to-left text uses, are left as they are): a document key
#: ``report\u202egnp.exe`` showed as ``reportexe.png``. Pages show each as its code point instead.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
#: The control characters HTML does not take (a NUL was written raw, and browsers showed U+FFFD).
_C0 = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r")
_SHOWN = str.maketrans({c: f"[U+{ord(c):04X}]" for c in BIDI_CONTROLS + _C0})


def escape(text: str) -> str:
    """``text`` for HTML: escaped, and its bidirectional and C0 controls shown as ``[U+202E]``."""
    return html.escape(text, quote=True).translate(_SHOWN)


def display_text(value: Any) -> str:
    """A value as display text: floats to 4 significant digits, booleans as yes/no, None as
    nothing, lists and dicts as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):  # numpy's too
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value) and 1e4 <= abs(value) < 1e15:  # 12345.6 -> 12,350, not 1.235e+04
            return f"{round(value, 3 - math.floor(math.log10(abs(value)))):,.0f}"
        return f"{value:.4g}"
    return json.dumps(value, default=str, ensure_ascii=False)


def exact_number(v: float) -> str:
    """A number as exactly as it was given: 4 not 4.0, 0.1 not 0.1000."""
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def as_list(d: dict, key: str, where: str) -> list:
    """``d[key]``, which must be a list if present; missing or empty is ``[]``."""
    value = d.get(key) or []
    if not isinstance(value, (list, tuple)):
        raise InvalidParameterError(f"{where} key {key!r} must be a list, got {type(value).__name__}")
    return list(value)


# ---------------------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class _Axis:
    """A numeric axis from ``lo`` to ``hi`` (both > 0 when ``log``), with tick positions."""

    lo: float
    hi: float
    ticks: tuple[float, ...]
    log: bool = False

    def frac(self, v: float) -> float:
        """Where ``v`` falls between ``lo`` (0) and ``hi`` (1)."""
        if self.log:
            return (math.log10(max(v, self.lo)) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)


def _linear_axis(values: list[float], include_zero: bool = False) -> _Axis:
    """An axis covering ``values`` with about five ticks at steps of 1, 2, 2.5 or 5 times 10^k."""
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo == hi:  # one value: a range around it (up from zero where zero is included, so both are)
        half = abs(lo) / 2 if abs(lo) > 1e-300 else 1.0
        lo, hi = (0.0, 1.0) if include_zero else (lo - half, hi + half)
    raw = (hi - lo) / 5
    if not raw > 0:  # a range too small to divide (subnormal floats): its two ends only
        return _Axis(lo, hi, (lo, hi))
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    ticks = tuple(float(f"{k * step:.12g}") for k in range(first, last + 1))
    if ticks[0] >= ticks[-1]:  # a range too narrow for its magnitude to round: no ticks between
        return _Axis(lo, hi, (lo, hi))
    return _Axis(ticks[0], ticks[-1], ticks)


def _log_axis(values: list[float]) -> _Axis:
    """A base-10 axis over whole decades covering ``values`` (all > 0), at most 7 ticks. It starts
    no lower than 1e-300; smaller values sit on its bottom."""
    a, b = max(math.floor(math.log10(min(values))), -300), math.ceil(math.log10(max(values)))
    b = max(b, a + 1)
    every = max(1, math.ceil((b - a) / 6))
    return _Axis(10.0**a, 10.0**b, tuple(10.0**k for k in range(a, b + 1, every)), log=True)


def _tick(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e7 else f"{v:.3g}"


def _px(x: _Axis, v: float) -> float:
    return _LEFT + x.frac(v) * _PW


def _py(y: _Axis, v: float) -> float:
    return _TOP + (1 - y.frac(v)) * _PH


def _axes(x: _Axis | list[str], y: _Axis, x_label: str, y_label: str) -> list[str]:
    """Grid lines, tick labels, the two axis lines and their labels; ``x`` as names is a bar chart's."""
    bottom = _TOP + _PH
    out = []
    for t in y.ticks:
        p = _py(y, t)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{p:.1f}" y2="{p:.1f}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{p + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    if isinstance(x, _Axis):
        ticks, room = [(_px(x, t), _tick(t)) for t in x.ticks], float(_W)
    else:  # one band per bar; at most about 12 names, each shortened to the room it has
        band, every = _PW / len(x), math.ceil(len(x) / 12)
        ticks, room = [(_LEFT + (k + 0.5) * band, name) for k, name in enumerate(x) if k % every == 0], band * every - 8
    out += [_label(t, room, f'x="{p:.1f}" y="{bottom + 16}" text-anchor="middle"') for p, t in ticks]
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{bottom}"/>')
    centre = _LEFT + _PW / 2
    out.append(_label(x_label, 2 * min(centre, _W - centre) - 8, f'x="{centre:.1f}" y="{_H - 8}" text-anchor="middle"'))
    if y_label:  # across the top, above its axis: a rotated label longer than the axis would be cut
        out.append(_label(f"↑ {y_label}", _W - 8, 'class="ylabel" x="4" y="13"'))
    return out


def _label(text: str, room: float, attrs: str) -> str:
    """A ``<text>`` with ``attrs``, shortened with an ellipsis to ``room`` px; a shortened one
    keeps the whole text as its tooltip."""
    most = max(int(room / _CHAR), 2)
    if len(text) <= most:
        return f"<text {attrs}>{escape(text)}</text>"
    return f"<text {attrs}>{escape(text[: most - 1])}…<title>{escape(text)}</title></text>"


def _markers(spec: _Spec, x: _Axis | list[str], y: _Axis) -> list[str]:
    """The plot's marker lines: ``vlines`` (on a numeric x axis) grey, labelled in the top margin;
    ``hlines`` (limits) red, labelled at their right end."""
    out = []
    for v, label in spec.vlines if isinstance(x, _Axis) else []:
        p, tip = _px(x, v), f"{label} x = {exact_number(v)}".strip()
        out.append(f'<line class="vline" x1="{p:.1f}" x2="{p:.1f}" y1="{_TOP}" y2="{_TOP + _PH}">')
        out.append(f"<title>{escape(tip)}</title></line>")
        if label:
            half = min(len(label) * _CHAR, _W) / 2  # centred on its line, kept inside the picture
            at = min(max(p, half + 2), _W - half - 2)
            out.append(_label(label, _W, f'class="vlabel" x="{at:.1f}" y="{_TOP - 6}" text-anchor="middle"'))
    for v, label in spec.hlines:
        if y.log and v <= 0:
            continue
        p, tip = _py(y, v), f"{label} y = {exact_number(v)}".strip()
        out.append(f'<line class="limit" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{p:.1f}" y2="{p:.1f}">')
        out.append(f"<title>{escape(tip)}</title></line>")
        if label:
            below = p - 16 < _TOP  # too near the top for a label above it
            attrs = f'class="limit-label" text-anchor="end" x="{_W - _RIGHT - 4}" y="{p + 14 if below else p - 5:.1f}"'
            out.append(_label(label, _PW, attrs))
    return out


# --------------------------------------------------------------------------------------- plots


@dataclass
class _Spec:
    """One plot being drawn: its data, its name in errors, its labels, and notes for the reader."""

    data: dict
    where: str
    log_y: bool
    labels: tuple[str, str]  # x, y
    vlines: list[tuple[float, str]]  # x, label
    hlines: list[tuple[float, str]]  # y, label
    notes: list[str]
    legend: list[tuple[str, str]]  # colour, name

    def skipped(self, what: str, nonfinite: int, nonpositive: int = 0) -> None:
        """Note how many bins, bars or points were not drawn, and why."""
        if nonfinite:
            self.notes.append(f"{nonfinite} {what if nonfinite > 1 else what[:-1]} with NaN or infinite values skipped")
        if nonpositive:
            self.notes.append(
                f"{nonpositive} {what if nonpositive > 1 else what[:-1]} with y ≤ 0 left out of the log scale"
            )


def svg_figure(index: int, plot: Any) -> str:
    """One plot: a heading and an SVG chart, or the words "no data" where no finite value is left."""
    if not isinstance(plot, dict):
        raise InvalidParameterError(f"plot {index} must be a dict, got {type(plot).__name__}")
    kind = plot.get("kind")
    if kind not in _KINDS:
        raise InvalidParameterError(f"plot {index} key 'kind' must be one of {', '.join(_KINDS)}, got {kind!r}")
    where = f"plot {index} ({kind})"
    title = display_text(plot.get("title") or f"Plot {index + 1}")
    labels = display_text(plot.get("x_label") or ""), display_text(plot.get("y_label") or "")
    lines = _lines(plot, "vlines", "x", where), _lines(plot, "hlines", "y", where)
    spec = _Spec(plot, where, bool(plot.get("log_y")), labels, *lines, [], [])
    chart = _KINDS[kind](spec)
    if chart is None:
        inner = [f'<text class="nodata" x="{_W / 2}" y="{_H / 2}" text-anchor="middle">no data</text>']
    else:
        x, y, marks = chart
        inner = _axes(x, y, *labels) + marks + _markers(spec, x, y)
    tip = "; ".join((["no data"] if chart is None else []) + spec.notes)
    tip = f"{title} ({tip})" if tip else title
    svg = f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img"><title>{escape(tip)}</title>'
    notes = spec.notes + ([display_text(plot["note"])] if plot.get("note") else [])
    captions = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    if spec.legend:
        keys = (f'<span class="key" style="border-color:{c}"></span>{escape(name)}' for c, name in spec.legend)
        captions = f'<p class="legend">{" ".join(keys)}</p>{captions}'
    return f"<h2>{escape(title)}</h2><figure>{svg}{''.join(inner)}</svg>{captions}</figure>"


def _finite(*values: float) -> bool:
    """Whether all ``values`` can be drawn: finite, and far enough from overflow (|v| < 1e300)
    for axis arithmetic; others are skipped like NaN."""
    return all(math.isfinite(v) and abs(v) < 1e300 for v in values)


def _num(v: Any, where: str) -> float:
    """A number as a float; None (how some JSON writers spell NaN) is NaN."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InvalidParameterError(f"{where} must be a number, got {v!r}")
    return float(v)


def _items(d: dict, key: str, where: str, shape: tuple[str, ...]) -> list[list]:
    """``d[key]`` as a list of items of ``len(shape)``, numbers as floats (a ``label`` kept as is)."""
    out = []
    for i, item in enumerate(as_list(d, key, where)):
        at = f"{where} key {key!r}: item {i}"
        if not isinstance(item, (list, tuple)) or len(item) != len(shape):
            raise InvalidParameterError(f"{at} must be [{', '.join(shape)}], got {item!r}")
        out.append([v if name == "label" else _num(v, f"{at} {name}") for name, v in zip(shape, item)])
    return out


def _lines(plot: dict, key: str, at: str, where: str) -> list[tuple[float, str]]:
    """The plot's marker lines ``key`` (``vlines`` at ``x``, ``hlines`` at ``y``) as ``(at, label)``."""
    out = []
    for k, line in enumerate(as_list(plot, key, where)):
        if not isinstance(line, dict) or at not in line:
            raise InvalidParameterError(f"{where} key {key!r}: item {k} must be a dict with {at!r}, got {line!r}")
        v = _num(line[at], f"{where} key {key!r}: item {k} {at}")
        if _finite(v):
            out.append((v, display_text(line.get("label") or "")))
    return out


def _x_axis(values: list[float], spec: _Spec) -> _Axis:
    """A numeric x axis over ``values`` and the vlines, a tick step wider on the left where a
    vline would sit on the y axis line and be hidden by it."""
    x = _linear_axis(values + [v for v, _ in spec.vlines])
    if len(x.ticks) < 2 or not any(x.frac(v) < 0.02 for v, _ in spec.vlines):
        return x
    ticks = (float(f"{2 * x.ticks[0] - x.ticks[1]:.12g}"), *x.ticks)
    return _Axis(ticks[0], ticks[-1], ticks)


def _value_axis(values: list[float], spec: _Spec) -> _Axis:
    """The y axis of bars, with room for the hlines: from zero, or over the positive values on a
    log scale."""
    values = values + [v for v, _ in spec.hlines]
    positive = [v for v in values if v > 0]
    if spec.log_y and positive:
        return _log_axis(positive)
    if spec.log_y:
        spec.notes.append("no value above zero: linear scale instead of log")
    return _linear_axis(values, include_zero=True)


def _bar(x0: float, x1: float, y: _Axis, v: float, tip: str) -> str:
    """A bar from zero (the axis bottom on a log scale) to ``v``; on a log scale ``v`` ≤ 0 is flat."""
    flat = y.log and v <= 0
    base = _py(y, y.lo if y.log else 0.0)
    top = base if flat else _py(y, v)
    tip += " (≤ 0: not drawn on the log scale)" if flat else ""
    return (
        f'<rect class="bar" x="{x0:.1f}" y="{min(base, top):.1f}" width="{max(x1 - x0, 0.5):.1f}" '
        f'height="{abs(base - top):.1f}"><title>{escape(tip)}</title></rect>'
    )


def _histogram(spec: _Spec) -> tuple[_Axis, _Axis, list[str]] | None:
    """One bar per ``[lo, hi, count]`` bin, on a numeric x axis."""
    bins, nonfinite = [], 0
    for i, (lo, hi, count) in enumerate(_items(spec.data, "bins", spec.where, ("lo", "hi", "count"))):
        if not _finite(lo, hi, count):
            nonfinite += 1
        elif hi < lo:
            raise InvalidParameterError(f"{spec.where} key 'bins': item {i} has hi {hi!r} below lo {lo!r}")
        else:
            bins.append((lo, hi, count))
    spec.skipped("bins", nonfinite)
    if not bins:
        return None
    widths = [hi - lo for lo, hi, _ in bins if hi > lo]
    step = min(widths, default=0.0)  # a bin of one value (lo = hi) is drawn this wide, from lo up
    points = [lo for lo, hi, _ in bins if hi == lo]
    if points and step:
        what = spec.labels[1] or "values"
        spec.notes.append(f"the bar{'s' if len(points) > 1 else ''} at {', '.join(map(exact_number, points))} "
                          f"count{'' if len(points) > 1 else 's'} the {what} at exactly that value, drawn one bin wide")
    x = _x_axis([v for lo, hi, _ in bins for v in (lo, hi if hi > lo else lo + step)], spec)
    y = _value_axis([c for _, _, c in bins], spec)
    unit = f" {spec.labels[1]}".rstrip()
    marks = []
    for lo, hi, c in bins:
        if hi > lo:
            x0, x1, tip = _px(x, lo), _px(x, hi), f"[{exact_number(lo)}, {exact_number(hi)}): {exact_number(c)}{unit}"
        else:  # one value: one bin wide from it, or a narrow bar on it where every bin is one value
            x0, x1 = (_px(x, lo), _px(x, lo + step)) if step else (_px(x, lo) - 4, _px(x, lo) + 4)
            tip = f"[{exact_number(lo)}, {exact_number(hi)}]: {exact_number(c)}{unit}"
        marks.append(_bar(x0, x1, y, c, tip))
    return x, y, marks


def _bar_chart(spec: _Spec) -> tuple[list[str], _Axis, list[str]] | None:
    """One bar per ``[label, value]``, in the order given."""
    bars = [(display_text(name), v) for name, v in _items(spec.data, "bars", spec.where, ("label", "value"))]
    finite = [(name, v) for name, v in bars if _finite(v)]
    spec.skipped("bars", len(bars) - len(finite))
    if not finite:
        return None
    y = _value_axis([v for _, v in finite], spec)
    band, unit = _PW / len(finite), f" {spec.labels[1]}".rstrip()
    marks = [
        _bar(_LEFT + (k + 0.1) * band, _LEFT + (k + 0.9) * band, y, v, f"{name}: {exact_number(v)}{unit}")
        for k, (name, v) in enumerate(finite)
    ]
    return [name for name, _ in finite], y, marks


def _xy(spec: _Spec) -> tuple[_Axis, _Axis, list[str]] | None:
    """A scatter (one dot per point) or a line plot (a polyline per series, its points shown on hover)."""
    lines = spec.data["kind"] == "line"
    series, nonfinite, nonpositive = [], 0, 0
    for j, s in enumerate(as_list(spec.data, "series", spec.where) if lines else [spec.data]):
        if not isinstance(s, dict):
            raise InvalidParameterError(f"{spec.where} key 'series': item {j} must be a dict with 'points', got {s!r}")
        points = []
        for a, b in _items(s, "points", f"{spec.where} series {j}" if lines else spec.where, ("x", "y")):
            if not _finite(a, b):
                nonfinite += 1
            elif spec.log_y and b <= 0:
                nonpositive += 1
            else:
                points.append((a, b))
        series.append((display_text(s.get("name") or ""), points))
    spec.skipped("points", nonfinite, nonpositive)
    every = [p for _, points in series for p in points]
    if not every:
        return None
    x = _x_axis([a for a, _ in every], spec)
    limits = [v for v, _ in spec.hlines if v > 0 or not spec.log_y]
    y = (_log_axis if spec.log_y else _linear_axis)([b for _, b in every] + limits)
    names = spec.labels[0] or "x", spec.labels[1] or "y"
    marks = []
    for j, (name, points) in enumerate(series):
        colour = _COLOURS[j % len(_COLOURS)]
        if lines and points:
            coords = " ".join(f"{_px(x, a):.1f},{_py(y, b):.1f}" for a, b in points)
            marks.append(f'<polyline class="series" stroke="{colour}" points="{coords}">')
            marks.append(f"<title>{escape(name or f'series {j + 1}')}</title></polyline>")
        cls = "dot" if not lines else "vertex lone" if len(points) == 1 else "vertex"  # a lone vertex is no line
        for a, b in points:
            tip = escape(f"{names[0]} = {exact_number(a)}, {names[1]} = {exact_number(b)}")
            marks.append(f'<circle class="{cls}" fill="{colour}" cx="{_px(x, a):.1f}" cy="{_py(y, b):.1f}" r="3.5">')
            marks.append(f"<title>{tip}</title></circle>")
        if lines and name:
            spec.legend.append((colour, name))
    return x, y, marks


_KINDS = {"histogram": _histogram, "bar": _bar_chart, "scatter": _xy, "line": _xy}
