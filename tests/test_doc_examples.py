"""The examples of the docs and the README run as written.

Every page's ```python, ```bash, ```sh and ```console blocks run in page order, in one fresh
temporary folder, as a reader would run them:

- Python blocks ``exec`` in one namespace per page.
- Each shell block runs in ``bash`` with ``set -eo pipefail`` (and ``set -a``, so that plain
  assignments such as ``RUN=$(...)`` are exported). The working directory and the exported
  variables carry over from one shell block to the next, and Python blocks run in that same
  working directory. In a ```console block only the lines starting with ``$ `` are commands (a
  command goes on over the next lines while it ends in ``\\`` or leaves a quote open); the other
  lines are example output, not compared.
- ``PATH`` starts with the folder of ``sys.executable`` (so ``prov`` is this environment's),
  ``PROV_LEDGER`` is unset, ``.venv`` in the fresh folder links to ``sys.prefix`` (the README
  calls ``.venv/bin/prov`` as a clone would), and each shell block has a time limit.

A block that cannot run as a test is preceded by ``<!-- docs-test: skip: REASON -->``; one that
stands for a longer set-up by ``<!-- docs-test: instead: COMMAND -->``, and COMMAND runs in its
place. Skips are listed in ``SKIPPED`` below so that adding one is a visible decision. A failing
block fails the test with ``docs/PAGE:LINE`` and the block's output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Pages whose blocks are not run, and why.
EXCLUDED = {
    # Its blocks run the benchmarks themselves, minutes each on a large corpus: `make bench` and
    # benchmarks/*.py are how they run, and the page records what they measured.
    "benchmarks.md": "runs the benchmarks, which take minutes",
}

#: Pages whose whole run is slow (each runs `prov demo`: 15 s, or a minute while numba compiles its
#: kernels the first time); `make test` runs them, `make test-fast` leaves them out.
SLOW = {"README.md", "index.md", "schema.md"}

#: Per page, the first line of each block marked `docs-test: skip`. Keep this short: a skipped
#: block is a block nobody checks.
SKIPPED = {
    "README.md": ["make test"],  # the whole test suite, this test included: CI runs it
    "index.md": ["make demo   # create .venv, install provenance, register a generated corpus in prov-demo/.prov"],
    "concepts.md": ['prov --ledger newer sql "SELECT 1"'],  # needs a ledger from a newer provenance
    "service.md": ["prov init /srv/ledger"],  # a server that runs until stopped; the page's Python starts one
}

BLOCK_TIMEOUT = 300  # seconds per shell block
SHELLS = {"bash", "sh", "console"}
RUNNABLE = SHELLS | {"python"}

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(skip|instead):\s*((?:(?!-->).)*?)\s*-->\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the line of its opening fence, its text, and the
    ``docs-test`` directive before it (``("skip", reason)``, ``("instead", command)`` or None)."""

    lang: str
    line: int
    code: str
    directive: tuple[str, str] | None


def page_path(page: str) -> Path:
    return ROOT / page if page == "README.md" else DOCS / page


def blocks(page: str) -> list[Block]:
    """The runnable blocks of ``page`` (a docs page, or ``README.md``), in page order."""
    text = page_path(page).read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        if m.group(1) not in RUNNABLE:
            continue
        d = _DIRECTIVE.search(text, max(0, m.start() - 1000), m.start())
        found.append(Block(m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2),
                           (d.group(1), d.group(2)) if d else None))
    return found


def _continues(command: str) -> bool:
    """Whether a console command goes on over the next line: it ends in a backslash or leaves a
    quote open (comments and escapes outside quotes are skipped)."""
    quote, i = None, 0
    while i < len(command):
        c = command[i]
        if quote is None:
            if c == "\\":
                i += 1
            elif c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or command[i - 1].isspace()):
                i = command.find("\n", i)
                if i < 0:
                    break
        elif c == quote:
            quote = None
        elif quote == '"' and c == "\\":
            i += 1
        i += 1
    return quote is not None or command.endswith("\\")


def console_commands(code: str) -> list[str]:
    """The commands of a ```console block: each ``$ `` line and the lines it continues over."""
    commands, current = [], None
    for line in code.splitlines():
        if current is None:
            if not line.startswith("$ "):
                continue  # example output
            current = line[2:]
        else:
            current += "\n" + line
        if not _continues(current):
            commands.append(current)
            current = None
    if current is not None:
        raise ValueError(f"console command never ends: {current!r}")
    return commands


def shell_code(block: Block) -> str:
    """What a shell block runs."""
    if block.directive and block.directive[0] == "instead":
        return block.directive[1]
    return "\n".join(console_commands(block.code)) if block.lang == "console" else block.code


def first_line(block: Block) -> str:
    return (console_commands(block.code) if block.lang == "console" else block.code.splitlines() or [""])[0]


def pages() -> list[str]:
    """README.md and every docs page (but the excluded ones) with a runnable block."""
    found = [p.name for p in sorted(DOCS.glob("*.md")) if p.name not in EXCLUDED and blocks(p.name)]
    return ["README.md", *found]


class PageRunner:
    """Runs one page's blocks in ``work``, carrying the shell's folder and exports in ``state``;
    the first shell block starts from the current environment."""

    def __init__(self, page: str, work: Path, state: Path):
        self.page, self.work, self.state = page, work, state
        self.namespace: dict = {"__name__": f"docs_{page.removesuffix('.md').replace('-', '_')}"}
        (state / "pwd").write_text(str(work))
        self.env = dict(os.environ)

    def stop_processes(self) -> list[int]:
        """Kill what the page's Python started and left running (a page that failed before its own
        end stops its server, e.g. service.md's ``prov serve``); their ids."""
        stopped = []
        for value in list(self.namespace.values()):
            if isinstance(value, subprocess.Popen) and value.poll() is None:
                value.kill()
                value.wait(timeout=30)
                stopped.append(value.pid)
        return stopped

    @property
    def cwd(self) -> str:
        return (self.state / "pwd").read_text().rstrip("\n")

    def run(self, block: Block) -> None:
        where = f"{'README.md' if self.page == 'README.md' else 'docs/' + self.page}:{block.line}"
        if block.lang == "python":
            os.chdir(self.cwd)
            exec(compile(block.code, where, "exec"), self.namespace)
            (self.state / "pwd").write_text(os.getcwd())
            return
        state = self.state
        script = textwrap.dedent(f"""\
            set -a
            if [ -f '{state}/env' ]; then . '{state}/env'; fi
            cd "$(cat '{state}/pwd')"
            trap 'pwd > "{state}/pwd"; export -p > "{state}/env"' EXIT
            set -eo pipefail
            """) + shell_code(block) + "\n"
        # A session of its own, so that a timeout ends whatever the block started, not only bash.
        with subprocess.Popen(["bash", "-c", script], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) as proc:
            try:
                out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                pytest.fail(f"{where}: the block ran over {BLOCK_TIMEOUT}s\n--- stdout\n{out}\n--- stderr\n{err}",
                            pytrace=False)
        print(f"--- {where}\n{out}{err}")  # pytest shows it when a later block fails
        if proc.returncode != 0:
            pytest.fail(f"{where}: the block exited with status {proc.returncode}\n"
                        f"--- block\n{shell_code(block)}\n--- stdout\n{out}\n--- stderr\n{err}", pytrace=False)


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in pages()])
def test_page_runs_as_written(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    state.mkdir()
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    runner = PageRunner(page, work, state)
    try:
        for block in blocks(page):
            if not (block.directive and block.directive[0] == "skip"):
                runner.run(block)
    finally:
        runner.stop_processes()


def test_skips_are_few_and_listed() -> None:
    """Each skipped block is listed in ``SKIPPED`` (and gives a reason); no page has more than two."""
    for page in pages():
        skipped = [b for b in blocks(page) if b.directive and b.directive[0] == "skip"]
        assert all(b.directive[1] for b in skipped), f"{page}: a skip without a reason"
        assert [first_line(b) for b in skipped] == SKIPPED.get(page, []), page
        assert len(skipped) <= 2, page


def test_every_page_with_examples_runs() -> None:
    """The guides are all found, and only the pages named in EXCLUDED are left out."""
    found = set(pages())
    assert {"README.md", "index.md", "quickstart.md", "concepts.md", "training-runs.md", "merging.md",
            "lineage.md", "audit-dedup.md", "pre-merge-gate.md", "memorization.md", "fingerprints.md",
            "schema.md"} <= found
    for page in EXCLUDED:
        assert (DOCS / page).exists() and page not in found
    assert all(blocks(p) for p in found)


def test_blocks_are_found_and_closed() -> None:
    """Guard the extractor: every opening fence of a runnable language yields one block, every
    docs-test directive sits right before one, and every console command ends."""
    for page in [*pages(), *EXCLUDED]:
        text = page_path(page).read_text(encoding="utf-8")
        opening = re.findall(r"^```(\w+)", text, re.MULTILINE)
        fences = re.findall(r"^```", text, re.MULTILINE)
        assert len(fences) % 2 == 0, f"{page}: an unclosed fence"
        page_blocks = blocks(page)
        assert len(page_blocks) == sum(lang in RUNNABLE for lang in opening), page
        directives = len(re.findall(r"<!--\s*docs-test:", text))
        assert directives == sum(b.directive is not None for b in page_blocks), f"{page}: a stray docs-test comment"
        for b in page_blocks:
            if b.lang == "console":
                assert console_commands(b.code), f"{page}:{b.line}: a console block without a `$ ` command"


def test_console_commands_are_parsed_as_a_shell_reads_them() -> None:
    code = ('$ prov sql "SELECT a,\n       b FROM t"\n┏━━┓\n$ echo one \\\n  two\none two\n'
            "$ echo \"it's\"  # the reader's comment\nit's\n")
    assert console_commands(code) == ['prov sql "SELECT a,\n       b FROM t"', "echo one \\\n  two",
                                      "echo \"it's\"  # the reader's comment"]


def test_a_failing_page_leaves_no_process_its_python_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page whose block fails after starting a server in Python (service.md does) left it
    running: the runner stops what the page's namespace still holds."""
    monkeypatch.chdir(tmp_path)  # a Python block changes to the page's folder
    (tmp_path / "state").mkdir()
    runner = PageRunner("service.md", tmp_path, tmp_path / "state")
    code = "import subprocess, sys\nserver = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    runner.run(Block(line=1, lang="python", code=code, directive=None))
    server = runner.namespace["server"]
    with pytest.raises(ZeroDivisionError):
        runner.run(Block(line=5, lang="python", code="1 / 0\n", directive=None))
    assert runner.stop_processes() == [server.pid]
    assert server.returncode is not None and runner.stop_processes() == []
