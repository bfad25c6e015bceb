"""The three audit pages (dedup, pre-merge gate, memorization) rendered in headless Chromium: every
plot draws marks, no label leaves its plot or covers another, marker lines are not hidden by the
axes, the page does not scroll sideways, and the gate says what broke first, in red. A screenshot
of each page is kept under the test's tmp_path for people to look at.

Needs a Chromium binary (Debian: ``apt-get install chromium``; ``.ci/run`` installs it) and skips
without one. The measuring is done by a test-only script added to a copy of the page (the pages
themselves have no script), which writes its figures as JSON into ``<pre id="layout-check">``;
Chromium's ``--dump-dom`` hands the page back with it."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from provenance import Ledger
from provenance.audit_html import write_report
from provenance.audits import audit_dedup
from provenance.gate import audit_merge
from provenance.memorization import audit_memorization

pytestmark = pytest.mark.slow

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 90  # one page; a cold start on a busy two-core machine takes a few seconds

# For each <svg>: its drawn marks (bars, dots and lines of non-zero size), the widths of its bars,
# its non-empty texts, those not inside the svg's box, pairs of texts that overlap, marker lines
# drawn on an axis line (hidden by it); for the page: its widths and where and how the alerts show.
MEASURE = """<script>
(() => {
  const rect = e => e.getBoundingClientRect();
  const svgs = [...document.querySelectorAll("svg")].map(svg => {
    const box = rect(svg), marks = [...svg.querySelectorAll("rect, circle, polyline")];
    const drawn = marks.filter(m => { const b = m.getBBox();
      return m.tagName === "polyline" ? b.width + b.height > 0 : b.width > 0 && b.height > 0; });
    const texts = [...svg.querySelectorAll("text")].filter(t => t.textContent.trim()).map(rect);
    const out = texts.filter(r => r.left < box.left - 0.5 || r.right > box.right + 0.5
                                  || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5);
    let overlaps = 0;
    texts.forEach((a, i) => texts.slice(i + 1).forEach(b => {
      if (Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1
          && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1) overlaps++; }));
    const axes = [...svg.querySelectorAll("line.axis")].map(l => l.getBBox());
    const markers = [...svg.querySelectorAll("line.vline, line.limit")].map(l => l.getBBox());
    const hidden = markers.filter(m => axes.some(a => (m.width === 0 && a.width === 0 && Math.abs(m.x - a.x) < 1)
                                                   || (m.height === 0 && a.height === 0 && Math.abs(m.y - a.y) < 1)));
    return {title: svg.querySelector("title").textContent, marks: drawn.length,
            bar_widths: drawn.filter(m => m.tagName === "rect").map(m => m.getBBox().width),
            texts: texts.length, outside: out.length, overlaps, markers: markers.length, hidden: hidden.length,
            width: box.width, height: box.height};
  });
  const alerts = document.querySelector(".alerts"), first = document.querySelector("table, svg");
  const badge = document.querySelector(".badge");
  const check = {scroll_width: document.documentElement.scrollWidth, client_width: document.documentElement.clientWidth,
    svgs, alert_colour: alerts && getComputedStyle(alerts).color,
    alerts_first: !!alerts && !!(alerts.compareDocumentPosition(first) & Node.DOCUMENT_POSITION_FOLLOWING),
    badge: badge && [badge.textContent, getComputedStyle(badge).backgroundColor]};
  const pre = document.createElement("pre");
  pre.id = "layout-check"; pre.hidden = true; pre.textContent = JSON.stringify(check);
  document.body.append(pre);
})();
</script>"""

RED = "rgb(164, 14, 38)"  # .alerts text
BADGE_RED = "rgb(207, 34, 46)"


def words(i: int, n: int = 40) -> str:
    return " ".join(f"w{i}x{j}" for j in range(n))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next(filter(None, map(shutil.which, CHROMIUM)), None)
    if found is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM)}; Debian: apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """One of each audit: a dedup with near-copies and identical pairs (Jaccard 1.0), a gate that
    breaks all three policies, a memorization audit with matched spans."""
    root = tmp_path_factory.mktemp("pages")
    ledger = Ledger.init(root)
    a = [{"id": f"a{i}", "text": words(i)} for i in range(20)]
    a += [{"id": f"copy{i}", "text": words(1)} for i in range(2)]  # identical to a1
    a += [{"id": f"near{i}", "text": words(2).replace(f"w2x{39 - i}", "changed")} for i in range(4)]
    b = [{"id": f"b{i}", "text": words(i) if i < 3 else words(100 + i)} for i in range(20)]
    b[4]["text"] = words(700)  # = eval e0
    sources = {"base": [{"id": f"z{i}", "text": words(900 + i)} for i in range(10)], "a": a, "b": b,
               "ev": [{"id": "e0", "text": words(700)}, {"id": "e1", "text": words(800)}]}
    for name, docs in sources.items():
        ledger.register_dataset(name, write_jsonl(root / f"{name}.jsonl", docs), id_field="id",
                                role="eval" if name == "ev" else "train")
    with ledger.start_run(datasets=["base"], message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    with ledger.start_run(base=base, datasets={"a": 3}, message="a") as run:
        va = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["b"], message="b") as run:
        vb = run.commit({"w": 2 * torch.ones(4)})
    samples = [words(3), "nothing like the training data", "so " + " ".join(words(7).split()[:25]) + " and more"]
    return {
        "dedup": audit_dedup(ledger, ["a"], threshold=0.8),
        "merge": audit_merge(ledger, [va.version_id, vb.version_id], max_overlap=0.1, deny_license=["unknown"]),
        "memorization": audit_memorization(ledger, va.version_id, samples, span=20),
    }


def _render(chromium: str, page: Path, folder: Path) -> tuple[dict, Path]:
    """The layout figures of ``page`` and its screenshot, from one headless Chromium run."""
    measured = folder / f"{page.stem}.measured.html"
    measured.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    shot = folder / f"{page.stem}.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={folder / f'profile-{page.stem}'}", "--window-size=1280,2000",
               f"--screenshot={shot}", "--dump-dom", measured.as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish {page.name} within {TIMEOUT_S} s")
    found = re.search(r'<pre id="layout-check" hidden="">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no layout figures from chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), shot


@pytest.fixture(scope="module")
def pages(chromium, reports, tmp_path_factory) -> dict[str, tuple[str, dict, Path]]:
    """Per kind: the page's HTML, its layout figures and its screenshot."""
    folder = tmp_path_factory.mktemp("screenshots")
    out = {}
    for kind, report in reports.items():
        page = write_report(report, folder / f"{kind}.html")
        check, shot = _render(chromium, page, folder)
        print(kind, json.dumps(check), shot)  # the figures, for the record (pytest -s)
        out[kind] = page.read_text(encoding="utf-8"), check, shot
    return out


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("kind, markers", [
    ("dedup", [1, 0, 1]),       # the threshold on the histogram and the S-curve
    ("merge", [1]),             # the max-overlap limit
    ("memorization", [1]),      # the threshold on the scatter
])
def test_audit_page_lays_out_in_chromium(pages, kind, markers):
    _, check, shot = pages[kind]
    assert check["scroll_width"] <= check["client_width"]
    assert len(check["svgs"]) == len(markers)
    for svg, lines in zip(check["svgs"], markers):
        assert svg["marks"] > 0, svg
        assert svg["outside"] == 0 and svg["overlaps"] == 0, svg
        assert svg["markers"] == lines and svg["hidden"] == 0, svg
        assert svg["width"] >= 700 and svg["height"] >= 300, svg
    assert _png_size(shot) == (1280, 2000) and shot.stat().st_size > 30_000


def test_identical_pairs_get_a_full_width_bar(pages, reports):
    assert reports["dedup"]["similarity_histogram"][-1] == [1.0, 1.0, 2]  # the pairs at Jaccard 1.0
    text, check, _ = pages["dedup"]
    widths = check["svgs"][0]["bar_widths"]
    assert len(widths) == 5 and max(widths) - min(widths) < 0.5, widths
    assert "<th>duplicate rate</th><td class=\"num\">19.23%</td>" in text  # 5 redundant of 26


def test_gate_says_what_broke_first_in_red(pages, reports):
    report = reports["merge"]
    assert [v["policy"] for v in report["violations"]] == ["max_contamination", "max_overlap", "max_overlap",
                                                           "deny_license"]
    text, check, _ = pages["merge"]
    assert check["alerts_first"] and check["alert_colour"] == RED
    assert check["badge"] == ["failed", BADGE_RED]
    assert "The gate failed: max-contamination, max-overlap, deny-licence broken" in text
    assert text.index(html.escape(report["violations"][0]["message"])) < text.index("<table")
    assert "<td>deny-licence</td><td>unknown</td>" in text and "Licences of the merged lineage" in text


def test_memorization_page_shows_the_shared_span(reports, tmp_path):
    by = {s["index"]: s["matches"] for s in reports["memorization"]["samples"]}
    assert by[2][0]["span_words"] == 25 and by[2][0]["span_text"] == " ".join(words(7).split()[:25])
    text = write_report(reports["memorization"], tmp_path / "m.html").read_text()
    assert f"<td>{by[2][0]['span_text']}</td>" in text and f"<td>{words(3)}</td>" in text


def test_a_word_of_ten_thousand_characters_does_not_make_the_page_scroll_sideways(chromium, tmp_path):
    """A document key (or a title, an alert, a plot's title or series) of one 10,000-character word made the dedup,
    memorization and retraction pages scroll sideways by 115,000 pixels (stranger pass 65)."""
    from provenance.reports import write_html

    long = "k" * 10_000
    page = write_html({"title": f"Retraction of a@1 {long}", "subtitle": long, "alerts": [f"not verified: {long}"],
                       "summary": {"documents": 3, "reason": long},
                       "tables": [{"columns": ["dataset", "key", "near-copies"], "rows": [["a@1", long, 3], ["a@1", "k1", 2]],
                                   "note": long}],
                       "plots": [{"kind": "line", "title": long, "series": [{"name": long, "points": [[0, 1], [1, 2]]},
                                                                            {"name": "b", "points": [[0, 2]]}]}]},
                      tmp_path / "long.html")
    check, _ = _render(chromium, page, tmp_path)
    assert check["scroll_width"] <= check["client_width"] and check["client_width"] > 1200
