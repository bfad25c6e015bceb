"""A registration lands whole or not at all, also when its process is killed; one writer at a time.

The kills are real: a child process registers a generated JSONL file of about 40 MB and gets
SIGKILL in the middle. The child reports its progress on stdout, so the test knows when it is
in the middle of its transaction.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provenance import Ledger
from provenance.errors import LedgerLockedError
from provenance.synthetic import iter_jsonl_lines

# A progress reporter for the children: prints each step, then sleeps for the seconds given as
# the child's last argument, so that the test can kill it between two steps.
PROGRESS = """
import sys, time

class Progress:
    def start(self, description, total):
        print("start", description, flush=True)

    def advance(self, amount):
        print("advance", amount, flush=True)
        time.sleep(float(sys.argv[-1]))
"""

REGISTER_CHILD = PROGRESS + """
from provenance import Ledger

result = Ledger.open(sys.argv[1]).register_dataset(sys.argv[2], sys.argv[3], progress=Progress())
print("done", result.message, flush=True)
"""

HOLD_CHILD = """
import os, sys
from provenance import Ledger

ledger = Ledger.open(sys.argv[1])
with ledger.session():
    print("holding", os.getpid(), flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


class Child:
    """A Python child process whose stdout lines are read by a thread, so waits can time out."""

    def __init__(self, code: str, *args: object):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} within {timeout}s; saw {self.seen}") from None
            if line is None:
                self.proc.wait()
                raise AssertionError(f"child exited before {prefix!r}; saw {self.seen}; stderr: {self.proc.stderr.read()}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def children():
    """Start children with ``children(code, *args)``; any still running at the end are killed."""
    started: list[Child] = []

    def start(code: str, *args: object) -> Child:
        child = Child(code, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()


@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory) -> tuple[Path, int]:
    """About 40 MB of generated JSONL (five reading batches) and its number of documents."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    count = 0
    with open(path, "wb") as fh:
        for line in iter_jsonl_lines(40_000_000, seed=1):
            fh.write(line)
            count += 1
    return path, count


def start_and_kill(children, ledger: Ledger, name: str, path: Path) -> Child:
    """Register ``path`` in a child and SIGKILL it after its first batch of documents is written."""
    child = children(REGISTER_CHILD, ledger.root, name, path, 1.0)
    child.wait_for(f"start registering {name}@")
    child.wait_for("advance")  # one batch staged; the child now sleeps a second before the next
    staged = list((ledger.root / "tmp" / "staging").glob("documents-*.parquet"))
    assert len(staged) == 1 and staged[0].stat().st_size > 0  # in the middle: rows are staged
    assert child.kill() == -signal.SIGKILL
    assert not any(line.startswith("done") for line in child.seen)
    assert staged[0].exists()  # left behind by the killed process, until gc or the next write clears it
    return child


# -- kills ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_registration_leaves_nothing(children, ledger, big_jsonl, ledger_state):
    path, n_docs = big_jsonl
    empty = ledger_state(ledger)

    start_and_kill(children, ledger, "big", path)

    reopened = Ledger.open(ledger.root)
    (staged,) = reopened.gc(apply=True)["temporary_files"]  # the killed process's staged rows: gc removes them
    assert "/tmp/staging/documents-" in staged
    assert ledger_state(reopened) == empty
    assert reopened.datasets(all_versions=True) == []
    assert reopened.sql("SELECT count(*) AS n FROM documents").to_pylist() == [{"n": 0}]
    # Still usable: the same registration now completes, as version 1.
    result = reopened.register_dataset("big", path)
    assert result.created and result.dataset.dataset_id == "big@1"
    assert result.dataset.n_documents == n_docs
    assert reopened.sql("SELECT count(*) AS n FROM documents").to_pylist() == [{"n": n_docs}]


@pytest.mark.slow
def test_gc_lists_and_removes_what_a_killed_registration_staged(children, ledger, big_jsonl):
    """The staged rows a killed registration left: a dry-run ``gc`` lists them with their bytes
    (opening the ledger, read-only or not, leaves them); ``gc(apply=True)`` removes them and says
    so."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    path, _ = big_jsonl
    start_and_kill(children, ledger, "big", path)
    (staged,) = (ledger.root / "tmp" / "staging").glob("documents-*.parquet")
    size = staged.stat().st_size
    listed = Ledger.open(ledger.root, read_only=True).gc()
    assert listed["temporary_files"] == [str(staged)] and listed["bytes"] == size and staged.exists()
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc"])
    assert out.exit_code == 0 and f"1 temporary file and 0 unlisted document folders, {size:,} bytes" in out.output
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc", "--apply", "--json"])
    removed = json.loads(out.output)
    assert (removed["temporary_files"], removed["freed"], removed["bytes"]) == ([str(staged)], size, size)
    assert not staged.exists()
    assert Ledger.open(ledger.root).gc(apply=True)["temporary_files"] == []  # reported once


@pytest.mark.slow
def test_killed_new_version_leaves_the_earlier_one_intact(children, ledger, corpus_jsonl, big_jsonl, ledger_state):
    path, n_docs = big_jsonl
    v1 = ledger.register_dataset("corpus", corpus_jsonl, id_field="id").dataset
    before = ledger_state(ledger)
    documents_before = ledger.documents("corpus@1")

    start_and_kill(children, ledger, "corpus", path)

    reopened = Ledger.open(ledger.root)
    assert len(reopened.gc(apply=True)["temporary_files"]) == 1  # the killed process's staged rows
    assert ledger_state(reopened) == before
    assert reopened.dataset("corpus") == v1
    assert reopened.documents("corpus@1").equals(documents_before)
    v2 = reopened.register_dataset("corpus", path).dataset
    assert (v2.dataset_id, v2.n_documents) == ("corpus@2", n_docs)
    assert reopened.dataset("corpus@1") == v1


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.5, 1.0, 1.5, 2.5, 5.0])
def test_kill_at_any_moment_is_all_or_nothing(children, ledger, big_jsonl, delay):
    """Killed at some moment without pauses: the ledger holds the whole dataset or none of it."""
    path, n_docs = big_jsonl
    child = children(REGISTER_CHILD, ledger.root, "big", path, 0.0)
    child.wait_for("start registering big@1")
    time.sleep(delay)
    child.kill()

    reopened = Ledger.open(ledger.root)
    counts = reopened.sql(
        "SELECT (SELECT count(*) FROM datasets) AS datasets, (SELECT count(*) FROM shards) AS shards, "
        "(SELECT count(*) FROM documents) AS documents"
    ).to_pylist()[0]
    assert counts in ({"datasets": 0, "shards": 0, "documents": 0}, {"datasets": 1, "shards": 1, "documents": n_docs})
    if counts["datasets"]:
        assert reopened.dataset("big@1").n_documents == n_docs
    result = reopened.register_dataset("big", path)
    assert result.dataset.n_documents == n_docs
    assert result.created == (counts["datasets"] == 0)


# -- two writers ---------------------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(children, ledger, ledger_state):
    before = ledger_state(ledger)
    holder = children(HOLD_CHILD, ledger.root)
    pid = int(holder.wait_for("holding").split()[1])
    assert pid == holder.proc.pid

    second = Ledger(ledger.root, lock_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LedgerLockedError) as info:
        second.register_dataset("docs", [{"text": "blocked"}])
    waited = time.monotonic() - started
    assert f"is in use by process {pid}" in str(info.value)
    assert "waited 0.5s" in str(info.value)
    assert 0.5 <= waited < 5
    with pytest.raises(LedgerLockedError, match=f"process {pid}"):
        Ledger.open(ledger.root, lock_timeout=0.2)

    holder.proc.stdin.write("\n")
    holder.proc.stdin.flush()
    holder.wait_for("released")
    assert holder.proc.wait(timeout=60) == 0
    assert ledger_state(ledger) == before  # the refused registration wrote nothing


def test_second_writer_waits_for_the_holder(children, ledger):
    holder = children(HOLD_CHILD, ledger.root)
    holder.wait_for("holding")
    outcome: dict = {}

    def register():
        try:
            outcome["result"] = Ledger(ledger.root, lock_timeout=60).register_dataset("docs", [{"text": "waited"}])
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    writer = threading.Thread(target=register)
    writer.start()
    time.sleep(1.0)
    assert writer.is_alive() and not outcome  # still waiting for the lock
    released_at = time.monotonic()
    holder.proc.stdin.write("\n")
    holder.proc.stdin.flush()
    writer.join(timeout=60)

    assert not writer.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["at"] >= released_at
    assert outcome["result"].created and outcome["result"].dataset.dataset_id == "docs@1"
    assert ledger.dataset("docs").n_documents == 1
    assert holder.proc.wait(timeout=60) == 0


def test_the_holder_can_be_killed(children, ledger):
    """A holder killed while holding the ledger leaves it usable (the OS releases the lock)."""
    holder = children(HOLD_CHILD, ledger.root)
    holder.wait_for("holding")
    assert holder.kill() == -signal.SIGKILL
    result = Ledger(ledger.root, lock_timeout=5).register_dataset("docs", [{"text": "after the kill"}])
    assert result.created
    assert os.path.exists(ledger.db_path)


AUDIT_CHILD = PROGRESS + """
from provenance.audits import audit_dedup
from provenance import Ledger

report = audit_dedup(Ledger.open(sys.argv[1]), [sys.argv[2]], threshold=0.8, progress=Progress())
print("done", report["audit_id"], flush=True)
"""


def test_a_killed_audit_leaves_no_audit_and_no_pairs(children, ledger, data_dir):
    """SIGKILL after the audit has inserted its pairs, before it commits: nothing of it remains,
    and the next audit runs normally."""
    from provenance.synthetic import generate_corpus

    generate_corpus(400, dup_fraction=0.2, mutation=0.01, seed=5).write_jsonl(data_dir / "c.jsonl")
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id")
    child = children(AUDIT_CHILD, ledger.root, "c", 30)
    child.wait_for("advance")  # documents staged
    child.wait_for("advance")  # pairs inserted into audit_pairs, not yet committed
    assert child.kill() == -signal.SIGKILL
    reopened = Ledger.open(ledger.root)
    assert reopened.audits() == []
    assert reopened.sql("SELECT count(*) AS n FROM audit_pairs").column("n")[0].as_py() == 0
    done = children(AUDIT_CHILD, ledger.root, "c", 0)
    audit_id = done.wait_for("done").split()[1]
    assert reopened.audit(audit_id)["report"]["summary"]["pairs"] > 0


DELETE_CHILD = """
import sys, time
from provenance import Ledger
from provenance.ledger.audit_sql import AuditWrites

deleting = AuditWrites.delete_audit

def slow(self, audit_id, **options):  # one audit's rows gone inside the transaction, then a pause to be killed in
    deleting(self, audit_id, **options)
    print("deleted", audit_id, flush=True)
    time.sleep(float(sys.argv[-1]))

AuditWrites.delete_audit = slow
result = Ledger.open(sys.argv[1]).delete_audits(sys.argv[2:4])
print("done", result["pairs"], flush=True)
"""


def test_a_killed_audit_deletion_deletes_nothing(children, ledger, data_dir):
    """SIGKILL after the first of two audits' rows are deleted, before the commit: both stay whole."""
    from provenance.synthetic import generate_corpus

    generate_corpus(400, dup_fraction=0.2, mutation=0.01, seed=5).write_jsonl(data_dir / "c.jsonl")
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id")
    reports = [ledger.audit_dedup(["c"], threshold=t) for t in (0.8, 0.9)]
    ids = [r.audit_id for r in reports]
    pairs = {a["audit_id"]: a["pairs"] for a in ledger.audits()}
    assert all(pairs[i] > 0 for i in ids)
    child = children(DELETE_CHILD, ledger.root, *ids, 30)
    child.wait_for("deleted")
    assert child.kill() == -signal.SIGKILL
    reopened = Ledger.open(ledger.root)
    assert {a["audit_id"]: a["pairs"] for a in reopened.audits()} == pairs
    assert [reopened.audit_pairs(i).num_rows for i in ids] == [pairs[i] for i in ids]
    assert reopened.verify().ok
    done = children(DELETE_CHILD, ledger.root, *ids, 0)
    assert done.wait_for("done") == f"done {sum(pairs.values())}"
    assert reopened.audits() == []
