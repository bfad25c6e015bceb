"""The Python examples of the docs run as written.

Every ```python block of a page runs in order, in one namespace per page, in an empty temporary
folder, as a reader would run them. A block that raises fails the test and names the block.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["quickstart.md", "concepts.md", "fingerprints.md", "training-runs.md", "merging.md", "lineage.md",
         "audit-dedup.md", "pre-merge-gate.md", "memorization.md"]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(page: str) -> list[tuple[int, str]]:
    """The ```python blocks of ``docs/page`` as ``(line number of the fence, code)``."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run_in_order(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for line, code in blocks:
        exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)


def test_blocks_are_found_and_closed() -> None:
    """Guard the extractor: every opening ```python fence yields one block."""
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        assert len(python_blocks(page)) == len(re.findall(r"^```python", text, re.MULTILINE))


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    blocks = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for line, code in blocks:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
