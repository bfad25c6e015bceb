"""HTML audit reports: escaping, number formatting, truncation, plot marks, bad input refused, atomic writes."""

from __future__ import annotations

import html
import json
import math
import os
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.errors import InvalidParameterError
from provenance.reports import MAX_JSON_BYTES, MAX_ROWS, render_html, write_html

NAN, INF = float("nan"), float("inf")
S_CURVE = [[j / 20, 1 - (1 - (j / 20) ** 5) ** 20] for j in range(21)]


def _full_report() -> dict:
    """A report using every key and every plot kind."""
    return {
        "title": "Deduplication audit of wiki@1",
        "subtitle": "audit 3f2a · 2026-11-29 10:00 UTC",
        "summary": {"documents": 1000, "duplicate rate": 0.031, "passed": False},
        "alerts": ["max-overlap 0.05 broken: overlap 0.12 (0.07 over)"],
        "tables": [
            {
                "title": "Largest clusters",
                "columns": ["cluster", "size", "sample keys"],
                "rows": [[1, 12, "a.jsonl:3, b.jsonl:9"], [2, 3, "c.jsonl:1"]],
                "note": "sizes count documents",
            }
        ],
        "plots": [
            {"kind": "histogram", "title": "Similarity", "x_label": "J", "y_label": "pairs", "bins": [[0.8, 0.9, 3]]},
            {"kind": "bar", "title": "Cluster sizes", "bars": [["2", 120], ["3", 14], ["4-7", 3]]},
            {"kind": "scatter", "title": "Exposure", "points": [[0.93, 4], [0.81, 1]], "log_y": True},
            {
                "kind": "line",
                "title": "S-curve",
                "series": [{"name": "b=20, r=5", "points": S_CURVE}],
                "vlines": [{"x": 0.8, "label": "threshold"}],
            },
        ],
        "json": {"dataset": "wiki@1", "pairs": [[1, 2, 0.93]]},
    }


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, re.S)


def _one_svg(plot: dict) -> str:
    [svg] = _svgs(render_html({"title": "t", "plots": [plot]}))
    return svg


def _attrs(svg: str, tag: str, name: str) -> list[float]:
    """The numeric attribute ``name`` of every ``tag`` element in ``svg``, in order."""
    return [float(m) for m in re.findall(rf'<{tag}\b[^>]*?\b{name}="([^"]+)"', svg)]


def _y_ticks(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end">([^<]*)</text>', svg)


def _x_ticks(svg: str) -> list[str]:
    return re.findall(r'<text x="[\d.]+" y="\d+" text-anchor="middle">([^<]*)</text>', svg)[:-1]  # last: the x label


class _TagBalance(HTMLParser):
    """Records every close tag that does not match the innermost open one."""

    VOID = {"meta", "br", "hr", "img", "input", "link"}

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.errors.append(f"</{tag}> closes {self.open[-1:]} at {self.getpos()}")


def _assert_well_formed(page: str) -> None:
    parser = _TagBalance()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.open == []


# ------------------------------------------------------------------------------- page and text


def test_every_text_value_is_escaped():
    evil = "<script>alert(1)</script>"
    report = {
        "title": evil,
        "subtitle": evil,
        "summary": {evil: evil, "status": evil},
        "alerts": [evil],
        "tables": [{"title": evil, "columns": [evil], "rows": [[evil]], "note": evil}],
        "plots": [
            {"kind": "bar", "title": evil, "x_label": evil, "y_label": evil, "bars": [[evil, 1]], "note": evil},
            {
                "kind": "line",
                "series": [{"name": evil, "points": [[0, 1], [1, 2]]}],
                "vlines": [{"x": 0.5, "label": evil}],
            },
        ],
        "json": {evil: "</pre>" + evil},
    }
    page = render_html(report)
    assert "<script" not in page and "&lt;/pre&gt;&lt;script&gt;" in page
    assert page.count("&lt;script&gt;") >= 18
    _assert_well_formed(page)


def test_bidirectional_controls_are_shown_not_obeyed():
    """A key holding U+202E (right-to-left override) showed as another name ('reportexe.png' for
    'report\u202egnp.exe'); pages show such controls as their code points, and the embedded JSON
    escapes them, so it reads back as the report was. Right-to-left text and its marks are kept.
    A NUL or another C0 control, which HTML does not take, is shown so too."""
    key = "report\u202egnp.exe"
    rtl = "\u05e9\u05dc\u05d5\u05dd\u200f 42"
    report = {"title": "t", "tables": [{"columns": ["key", "text"], "rows": [[key, rtl]]}],
              "plots": [{"kind": "bar", "title": key, "bars": [[key, 1]]}], "json": {"key": key, "text": rtl}}
    page = render_html(report)
    assert "\u202e" not in page and "\u2066" not in page
    assert page.count("report[U+202E]gnp.exe") >= 3  # the cell, the bar's label and its tooltip
    assert f"<td>{rtl}</td>" in page
    [text] = re.findall(r"<details><summary>Full report \(JSON\)</summary><pre>(.*?)</pre></details>", page, re.S)
    assert "\\u202e" in text and json.loads(html.unescape(text)) == report["json"]
    page = render_html({"title": "t", "tables": [{"columns": ["key"], "rows": [["n\x00ul\x1b"]]}], "json": {"k": "n\x00"}})
    assert "<td>n[U+0000]ul[U+001B]</td>" in page and "\x00" not in page  # a NUL was written raw
    [text] = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    assert json.loads(html.unescape(text)) == {"k": "n\x00"}


def test_summary_values_are_formatted():
    summary = {
        "documents": 1000,
        "duplicate rate": 0.0312345,
        "tokens": 12345.678,
        "tiny": 1.23456e-7,
        "deduplicated": True,
        "cut": None,
        "passed": False,
        "status": "ok",
    }
    page = render_html({"title": "t", "summary": summary})
    cells = dict(re.findall(r"<tr><th>([^<]*)</th><td[^>]*>(.*?)</td></tr>", page))
    assert cells == {
        "documents": "1000",
        "duplicate rate": "0.03123",
        "tokens": "12,350",
        "tiny": "1.235e-07",
        "deduplicated": "yes",
        "cut": "",
        "passed": '<span class="badge bad">no</span>',
        "status": '<span class="badge ok">ok</span>',
    }
    assert '<td class="num">0.03123</td>' in page


def test_alerts_come_first_and_only_when_present():
    page = render_html(_full_report())
    assert page.index('class="alerts"') < page.index("<h2>Summary</h2>")
    assert "<li>max-overlap 0.05 broken: overlap 0.12 (0.07 over)</li>" in page
    assert 'class="alerts"' not in render_html({"title": "t", "alerts": []})


def test_long_tables_show_the_first_rows_and_say_how_many_were_left_out():
    rows = [[f"row-{i}", i] for i in range(350)]
    page = render_html({"title": "t", "tables": [{"title": "big", "columns": ["k", "v"], "rows": rows}]})
    assert page.count("<td>row-") == MAX_ROWS == 200
    assert "<td>row-199</td>" in page and "row-200" not in page
    assert "Showing the first 200 of 350 rows; 150 left out." in page
    exact = render_html({"title": "t", "tables": [{"rows": rows[:200]}]})
    assert exact.count("<td>row-") == 200 and "left out" not in exact


def test_json_is_embedded_and_round_trips():
    page = render_html(_full_report())
    [text] = re.findall(r"<details><summary>Full report \(JSON\)</summary><pre>(.*?)</pre></details>", page, re.S)
    assert json.loads(html.unescape(text)) == _full_report()["json"]


def test_long_json_is_truncated_with_a_note():
    big = {"keys": [f"doc-{i:08d}.jsonl" for i in range(20_000)]}
    page = render_html({"title": "t", "json": big})
    size = len(json.dumps(big, indent=2).encode())
    assert size > MAX_JSON_BYTES
    assert f"Truncated: showing the first 200,000 of {size:,} bytes." in page
    [text] = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    assert len(html.unescape(text).encode()) == MAX_JSON_BYTES


def test_page_is_self_contained_deterministic_and_well_formed():
    page = render_html(_full_report())
    for outside in ("http://", "https://", "<script", "<link", "src=", "@import", "url("):
        assert outside not in page
    assert page == render_html(_full_report())
    assert len(_svgs(page)) == 4
    _assert_well_formed(page)


@pytest.mark.parametrize(
    "report, message",
    [
        ({}, "'title'"),
        ([], "'title'"),
        ({"title": "t", "summary": [1]}, "'summary'"),
        ({"title": "t", "tables": [{"rows": [1, 2]}]}, "table 0 key 'rows': row 0"),
        ({"title": "t", "alerts": "one"}, "'alerts' must be a list"),
    ],
)
def test_malformed_reports_are_refused(report, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_html(report)


# --------------------------------------------------------------------------------------- plots


def test_histogram_draws_one_bar_per_bin_with_exact_tooltips():
    svg = _one_svg(
        {
            "kind": "histogram",
            "title": "Similarity",
            "y_label": "pairs",
            "bins": [[0.8, 0.85, 12], [0.85, 0.9, 30], [0.9, 0.95, 0], [0.95, 1.0, 7]],
        }
    )
    assert svg.count("<rect ") == 4
    assert "<title>[0.85, 0.9): 30 pairs</title>" in svg
    heights = _attrs(svg, "rect", "height")
    assert heights[2] == 0.0  # the empty bin
    assert heights[0] / heights[1] == pytest.approx(12 / 30, rel=0.01)
    assert _y_ticks(svg) == ["0", "10", "20", "30"]
    assert _x_ticks(svg) == ["0.8", "0.85", "0.9", "0.95", "1"]
    assert svg.startswith('<svg viewBox="0 0 720 320" width="720" height="320" role="img"><title>Similarity</title>')


def test_bar_chart_draws_one_bar_per_category():
    svg = _one_svg({"kind": "bar", "y_label": "clusters", "bars": [["2", 120], ["3", 14], ["4-7", 3]]})
    assert svg.count("<rect ") == 3
    heights = _attrs(svg, "rect", "height")
    assert heights[0] / heights[1] == pytest.approx(120 / 14, rel=0.01)
    assert "<title>4-7: 3 clusters</title>" in svg
    assert _x_ticks(svg) == ["2", "3", "4-7"]
    assert _y_ticks(svg) == ["0", "25", "50", "75", "100", "125"]


def test_scatter_skips_nan_and_inf_points_and_says_so():
    page = render_html(
        {
            "title": "t",
            "plots": [{"kind": "scatter", "points": [[0.9, 4], [NAN, 1], [0.8, INF], [0.7, None], [0.5, 2]]}],
        }
    )
    [svg] = _svgs(page)
    assert svg.count("<circle ") == 2
    assert "<title>x = 0.9, y = 4</title>" in svg and "<title>x = 0.5, y = 2</title>" in svg
    assert "3 points with NaN or infinite values skipped" in page
    assert "nan" not in svg.lower().replace("nan or", "")


def test_scatter_on_a_log_scale_leaves_out_zeros_in_the_tooltip():
    svg = _one_svg(
        {
            "kind": "scatter",
            "title": "Exposure",
            "points": [[0.93, 4], [0.81, 1], [0.85, 0], [0.99, 250]],
            "log_y": True,
        }
    )
    assert svg.count("<circle ") == 3
    assert "<title>Exposure (1 point with y ≤ 0 left out of the log scale)</title>" in svg
    assert _y_ticks(svg) == ["1", "10", "100", "1000"]


def test_bars_on_a_log_scale_flatten_zeros_and_say_so():
    svg = _one_svg({"kind": "histogram", "bins": [[0, 1, 1000], [1, 2, 0], [2, 3, 10]], "log_y": True})
    assert svg.count("<rect ") == 3
    assert _attrs(svg, "rect", "height")[1] == 0.0
    assert "[1, 2): 0 (≤ 0: not drawn on the log scale)" in svg
    assert _y_ticks(svg) == ["10", "100", "1000"]


def test_line_plot_draws_a_polyline_per_series_and_the_vlines():
    plot = {
        "kind": "line",
        "title": "LSH S-curve",
        "series": [
            {"name": "b=20, r=5", "points": S_CURVE},
            {"name": "b=10, r=10", "points": [[0, 0], [0.5, NAN], [1, 1]]},
            {"name": "empty", "points": []},
        ],
        "vlines": [{"x": 0.8, "label": "threshold"}],
    }
    page = render_html({"title": "t", "plots": [plot]})
    [svg] = _svgs(page)
    assert svg.count("<polyline ") == 2
    coords = re.findall(r'<polyline [^>]*points="([^"]*)"', svg)
    assert [len(c.split()) for c in coords] == [21, 2]
    assert svg.count("<circle ") == 23  # hover targets on every vertex
    assert svg.count('class="vline"') == 1 and "threshold x = 0.8" in svg
    assert "b=20, r=5" in page and "b=10, r=10" in page
    assert "1 point with NaN or infinite values skipped" in page


@pytest.mark.parametrize(
    "plot",
    [
        {"kind": "histogram", "bins": []},
        {"kind": "histogram", "bins": [[NAN, 1, 2]]},
        {"kind": "bar"},
        {"kind": "bar", "bars": [["a", INF]]},
        {"kind": "scatter", "points": []},
        {"kind": "scatter", "points": [[1, 0]], "log_y": True},
        {"kind": "line", "series": []},
        {"kind": "line", "series": [{"name": "s", "points": [[NAN, NAN]]}]},
    ],
)
def test_plots_without_data_say_no_data(plot):
    svg = _one_svg(plot)
    assert ">no data</text>" in svg
    assert re.search(r"<title>Plot 1 \(no data[;)]", svg)
    assert not re.search(r"<(rect|circle|polyline) ", svg)


@pytest.mark.parametrize(
    "plot, tag",
    [
        ({"kind": "histogram", "bins": [[0.5, 0.5, 3]]}, "rect"),
        ({"kind": "bar", "bars": [["only", 0]]}, "rect"),
        ({"kind": "scatter", "points": [[3, 3]]}, "circle"),
        ({"kind": "scatter", "points": [[1e-9, 1e-9], [1e-9 + 1e-24, 1e-9]]}, "circle"),
        ({"kind": "scatter", "points": [[0, 0], [5e-324, 5e-324]]}, "circle"),
        ({"kind": "scatter", "points": [[-1e299, 1], [1e299, 2]]}, "circle"),
        ({"kind": "line", "series": [{"points": [[0, 0]]}]}, "circle"),
    ],
)
def test_a_single_value_still_gets_an_axis(plot, tag):
    svg = _one_svg(plot)
    assert f"<{tag} " in svg
    assert "nan" not in svg.lower() and "inf" not in svg.lower()
    assert len(_y_ticks(svg)) >= 2


@pytest.mark.parametrize(
    "plots, message",
    [
        (
            [{"kind": "bar", "bars": []}, {"kind": "pie"}],
            "plot 1 key 'kind' must be one of histogram, bar, scatter, line, got 'pie'",
        ),
        (["histogram"], "plot 0 must be a dict"),
        (
            [{"kind": "histogram", "bins": [[0, 1, 2], [1, 2]]}],
            "plot 0 (histogram) key 'bins': item 1 must be [lo, hi, count]",
        ),
        ([{"kind": "histogram", "bins": [[2, 1, 5]]}], "plot 0 (histogram) key 'bins': item 0 has hi 1.0 below lo 2.0"),
        ([{"kind": "histogram", "bins": {"lo": 0}}], "plot 0 (histogram) key 'bins' must be a list"),
        (
            [{"kind": "bar", "bars": [["a", "many"]]}],
            "plot 0 (bar) key 'bars': item 0 value must be a number, got 'many'",
        ),
        ([{"kind": "scatter", "points": [[1, True]]}], "plot 0 (scatter) key 'points': item 0 y must be a number"),
        ([{"kind": "line", "series": [[[0, 1]]]}], "plot 0 (line) key 'series': item 0 must be a dict"),
        (
            [{"kind": "line", "series": [{"points": [[0, 1, 2]]}]}],
            "plot 0 (line) series 0 key 'points': item 0 must be [x, y]",
        ),
        (
            [{"kind": "scatter", "points": [], "vlines": [{"label": "t"}]}],
            "plot 0 (scatter) key 'vlines': item 0 must be a dict with 'x'",
        ),
        (
            [{"kind": "bar", "bars": [], "hlines": [{"label": "limit"}]}],
            "plot 0 (bar) key 'hlines': item 0 must be a dict with 'y'",
        ),
    ],
)
def test_malformed_plots_are_refused_naming_index_and_key(plots, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)) as caught:
        render_html({"title": "t", "plots": plots})
    assert isinstance(caught.value, ValueError)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(), st.floats()), max_size=12),
    st.booleans(),
)
def test_any_points_render_one_mark_per_drawable_point(points, log_y):
    drawable = [p for p in points if all(math.isfinite(v) and abs(v) < 1e300 for v in p) and (p[1] > 0 or not log_y)]
    page = render_html({"title": "t", "plots": [{"kind": "scatter", "points": points, "log_y": log_y}]})
    [svg] = _svgs(page)
    assert svg.count("<circle ") == len(drawable)
    assert ("no data" in svg) == (not drawable)
    assert not re.search(r'="[^"]*(nan|inf)', svg)
    _assert_well_formed(page)


def test_a_bin_of_one_value_is_drawn_one_bin_wide():
    """Similarity histograms end with the bin [1, 1] of identical pairs: as wide as the others."""
    svg = _one_svg({"kind": "histogram", "y_label": "pairs", "bins": [[0.9, 0.95, 3], [0.95, 1.0, 1], [1.0, 1.0, 2]]})
    widths = _attrs(svg, "rect", "width")
    assert len(widths) == 3 and widths[0] == pytest.approx(widths[2], abs=0.1) and widths[2] > 100
    assert "<title>[1, 1]: 2 pairs</title>" in svg and "the bar at 1 counts the pairs at exactly that value" in svg
    assert _x_ticks(svg) == ["0.9", "0.95", "1", "1.05"]
    alone = _one_svg({"kind": "histogram", "bins": [[0.5, 0.5, 3]]})
    assert _attrs(alone, "rect", "width") == [8.0]


def test_a_vline_on_the_axis_end_gets_room_and_its_label_stays_inside():
    plot = {"kind": "histogram", "bins": [[0.8, 0.85, 1], [0.85, 0.9, 2]], "vlines": [{"x": 0.8, "label": "threshold"}]}
    svg = _one_svg(plot)
    assert _x_ticks(svg)[:2] == ["0.78", "0.8"]  # one tick step (0.02) added on the left
    [x] = re.findall(r'<line class="vline" x1="([^"]+)"', svg)
    assert float(x) > 64 + 50  # one tick step right of the y axis, not under it
    right = _one_svg({**plot, "vlines": [{"x": 0.9, "label": "a rather long label for the right end"}]})
    [(at, text)] = re.findall(r'<text class="vlabel" x="([^"]+)"[^>]*>([^<]*)</text>', right)
    assert float(at) + len(text) * 6.6 / 2 <= 720


def test_hlines_are_red_limits_inside_the_value_axis():
    svg = _one_svg({"kind": "bar", "bars": [["a", 0.2], ["b", 0.05]], "hlines": [{"y": 0.5, "label": "max 50%"}]})
    assert _y_ticks(svg)[-1] == "0.5"  # the axis reaches the limit above every bar
    assert svg.count('<line class="limit"') == 1 and "<title>max 50% y = 0.5</title>" in svg
    assert re.search(r'<text class="limit-label" text-anchor="end" x="[\d.]+" y="[\d.]+">max 50%</text>', svg)
    log = _one_svg({"kind": "scatter", "points": [[1, 10]], "log_y": True, "hlines": [{"y": 0, "label": "zero"}]})
    assert 'class="limit"' not in log


def test_labels_are_shortened_to_their_room_never_cut_by_the_picture():
    long = "exposure (times training saw the document and its near-copies) " * 3
    svg = _one_svg({"kind": "bar", "y_label": long, "bars": [[f"version-{i:02d}-" + "x" * 30, i] for i in range(24)]})
    assert "rotate(" not in svg
    [shown] = re.findall(r'<text class="ylabel" x="4" y="13">([^<]*)<title>', svg)
    assert shown.startswith("↑ exposure") and shown.endswith("…") and len(shown) * 6.6 <= 720
    names = re.findall(r'<text x="[\d.]+" y="\d+" text-anchor="middle">([^<]*)', svg)[:-1]
    assert len(names) == 12 and all(len(n) * 6.6 <= 2 * 656 / 24 for n in names)
    whole = _one_svg({"kind": "bar", "bars": [["71b862066ca6 vs 1d8758fa58a1", 1], ["1d8758fa58a1 vs 71b862066ca6", 2]]})
    assert _x_ticks(whole) == ["71b862066ca6 vs 1d8758fa58a1", "1d8758fa58a1 vs 71b862066ca6"]


def test_percentages_align_as_numbers_and_alerts_take_a_title():
    page = render_html({"title": "t", "summary": {"rate": "19.23%", "name": "50% off"},
                        "alerts": ["max-overlap broken"], "alerts_title": "The gate failed: max-overlap broken"})
    assert '<td class="num">19.23%</td>' in page and "<td>50% off</td>" in page
    assert '<div class="alerts"><p>The gate failed: max-overlap broken</p><ul><li>max-overlap broken</li>' in page


def _gate_report(**changes) -> dict:
    """A gate report as stored before ``violations`` and ``license`` were recorded."""
    return {"kind": "merge", "audit_id": "a1", "created_at": "2026-01-01T00:00:00", "versions": ["v" * 40, "w" * 40],
            "threshold": 0.8, "policy": {"max_overlap": 0.1, "max_contamination": None}, "contamination": None,
            "overlap": [{"a": "v" * 40, "b": "w" * 40, "a_documents": 10, "b_documents": 10, "a_exact": 3,
                         "a_near": 0, "b_exact": 1, "b_near": 0, "a_fraction": 0.3, "b_fraction": 0.1, "datasets": []}],
            "alerts": ["max-overlap 10.00% broken: 30.00% of vvvvvvvvvvvv's 10 training documents overlap"],
            "passed": False, **changes}


def test_gate_page_of_an_old_report_names_the_broken_policy(tmp_path):
    from provenance.audit_html import write_report

    page = write_report(_gate_report(), tmp_path / "gate.html").read_text()
    assert "<p>The gate failed: max-overlap broken</p>" in page
    assert page.index('class="alerts"') < page.index("<table") and '<span class="badge bad">failed</span>' in page
    assert "<td>max-overlap</td><td class=\"num\">10.00%</td><td>30.00% (the largest side)</td><td>broken</td>" in page
    assert '<line class="limit"' in page


def test_gate_badge_is_green_only_when_nothing_broke_or_leaked(tmp_path):
    from provenance.audit_html import write_report

    leaked = {"eval_datasets": ["ev@1"], "eval_documents": 12, "contaminated_eval_documents": 10,
              "contaminated_eval_keys": [f"ev@1:e{i}" for i in range(10)]}
    clean = _gate_report(alerts=[], violations=[], passed=True, policy={"max_overlap": None, "max_contamination": None})
    page = write_report(clean, tmp_path / "clean.html").read_text()
    assert '<span class="badge ok">passed</span>' in page and 'class="alerts"' not in page
    page = write_report({**clean, "contamination": leaked}, tmp_path / "leaked.html").read_text()
    assert '<span class="badge neutral">passed, no contamination limit</span>' in page
    assert "<td>10 of 12 evaluation documents</td><td>no limit</td>" in page


# -------------------------------------------------------------------------------------- writing


def test_write_html_writes_the_page_atomically(tmp_path):
    report = _full_report()
    target = tmp_path / "reports" / "audit.html"
    assert write_html(report, target) == target
    assert target.read_text(encoding="utf-8") == render_html(report)
    report["title"] = "second run"
    write_html(report, str(target))
    assert "<h1>second run</h1>" in target.read_text(encoding="utf-8")
    assert os.listdir(target.parent) == ["audit.html"]


def test_a_failed_write_keeps_the_old_page_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "audit.html"
    write_html({"title": "old"}, target)

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_html({"title": "new"}, target)
    assert "<h1>old</h1>" in target.read_text(encoding="utf-8")
    assert os.listdir(tmp_path) == ["audit.html"]


def test_a_cell_with_a_very_long_word_may_break_it_anywhere():
    """A cell holding one 10,000-character word (a document key) set the table's width, and the
    page scrolled sideways by 115,000 pixels: such a cell, and only such, may break anywhere
    (stranger pass 65; Chromium measures it in test_report_pages)."""
    long = "k" * 10_000
    page = render_html({"title": "t", "tables": [{"columns": ["key", "n"], "rows": [[long, 3], ["short key", 4],
                                                                                  ["x" * 41, 5], ["x" * 40, 6]]}]})
    cells = re.findall(r"<td([^>]*)>([^<]*)</td>", page)
    assert cells == [(' class="long"', long), (' class="num"', "3"), ("", "short key"), (' class="num"', "4"),
                     (' class="long"', "x" * 41), (' class="num"', "5"), ("", "x" * 40), (' class="num"', "6")]
    assert "td.long{overflow-wrap:anywhere" in page and "h1,h2,.subtitle,.alerts,.note,.legend{overflow-wrap:anywhere}" in page


def test_memorization_page_draws_a_dot_per_distinct_point_not_per_match(tmp_path):
    """Ten samples of a template reaching 5,000 variants drew 50,000 circles, a 9.5 MB page (it
    grows with samples times matches, where the table stops at 200 rows); estimates take k + 1
    values, so distinct points stay few (stranger pass 65)."""
    from provenance.audit_html import write_report

    matches = [{"dataset_id": "t@1", "key": f"k{i}", "jaccard": 1.0 if i % 2 else 0.96875, "span_words": 0,
                "span_text": "", "exposure": 2.0} for i in range(500)]
    report = {"kind": "memorization", "audit_id": "a" * 32, "created_at": "2026-01-01T00:00:00Z", "version": "b" * 32,
              "threshold": 0.8, "span": 50, "summary": {"samples": 10, "samples_matching_training": 10},
              "samples": [{"index": i, "matches": matches} for i in range(10)]}
    page = write_report(report, tmp_path / "m.html").read_text(encoding="utf-8")
    dots = re.findall(r'<circle class="dot"[^>]*><title>([^<]*)</title>', page)
    assert dots == ["estimated Jaccard = 0.96875, exposure (times training saw the document and its near-copies) = 2",
                    "estimated Jaccard = 1, exposure (times training saw the document and its near-copies) = 2"]
    assert "Showing the first 200 of 5000 rows" in page
