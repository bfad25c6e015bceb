"""Committed writes a damaged write-ahead log dropped are named, not lost without a word: each
write transaction takes a number, the highest committed is recorded in ``.prov/writes.json``, and
a database that ends below it is refused (:mod:`provenance.ledger.commits`). The failures are
real: a process SIGKILLed after its commits leaves them in the log, which is then cut or zeroed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from click.testing import CliRunner

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import LedgerDamagedError
from provenance.verify import verify

# Three tags committed, then the process is killed before it closes the ledger: the three are only
# in the write-ahead log, which the next open replays.
_KILLED_AFTER_THREE_COMMITS = """
import os, signal, sys
from provenance import Ledger

ledger = Ledger.open(sys.argv[1])
with ledger.session():
    for name in ("one", "two", "three"):
        ledger.tag(name, sys.argv[2])
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _record(root) -> dict:
    return json.loads((root / ".prov" / "writes.json").read_text(encoding="utf-8"))


@pytest.fixture
def killed(tmp_path, write_jsonl, monkeypatch):
    """A ledger with a dataset and a version, then three tags left in the write-ahead log by a
    process killed after committing them. Returns the project folder, the log's bytes, and the
    record's committed number."""
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    ledger = Ledger.init(tmp_path)
    write_jsonl(tmp_path / "news.jsonl", [{"text": f"story {i} about the weather in town"} for i in range(10)])
    ledger.register_dataset("news", tmp_path / "news.jsonl")
    version = ledger.commit({"w": torch.ones(4, 4)}, message="base")
    with ledger.session() as store:  # what the kill below leaves in the log: only the three tags
        with store._cursor() as con:
            con.execute("CHECKPOINT")
    before = _record(tmp_path)["committed"]
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_THREE_COMMITS, str(tmp_path), version.version_id],
                          capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    record = _record(tmp_path)
    assert record["committed"] == before + 3  # one number per write transaction
    wal = tmp_path / ".prov" / "ledger.duckdb.wal"
    return tmp_path, wal.read_bytes(), record["committed"]


def _tags(root) -> set[str]:
    return {t.name for t in Ledger.open(root, read_only=True).tags()}


def test_a_log_cut_anywhere_either_keeps_every_write_or_is_refused(killed):
    root, log, committed = killed
    wal = root / ".prov" / "ledger.duckdb.wal"
    database = (root / ".prov" / "ledger.duckdb").read_bytes()
    refused = kept = 0
    for cut in (*range(0, len(log), max(1, len(log) // 40)), len(log)):
        (root / ".prov" / "ledger.duckdb").write_bytes(database)  # a replay rewrites the database: start afresh
        wal.write_bytes(log[:cut])
        try:
            tags = _tags(root)
        except LedgerDamagedError as exc:
            refused += 1
            assert "lost committed writes" in str(exc) or "write-ahead log" in str(exc), (cut, str(exc))
            continue
        assert {"one", "two", "three"} <= tags, (cut, tags)  # never fewer, without a word
        kept += 1
    assert kept >= 1 and refused >= 10, (kept, refused)  # the whole log replays; most cuts lose a write


def test_a_zeroed_log_header_is_refused_naming_both_numbers_and_what_to_do(killed):
    root, log, committed = killed
    wal = root / ".prov" / "ledger.duckdb.wal"
    wal.write_bytes(bytes(64) + log[64:])  # DuckDB reads no entry of it, and opened without the three tags
    record = root / ".prov" / "writes.json"
    for args in (["tag", "list"], ["verify"], ["dataset", "list"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 4, (args, result.output)
        assert "lost committed writes" in result.output and "Traceback" not in result.output, result.output
        assert f"ends at write number {committed - 3}, but write number {committed} was committed" in result.output
        assert f"mv {record} {record}.lost" in result.output and "backup" in result.output
    with pytest.raises(LedgerDamagedError, match="lost committed writes"):
        Ledger.open(root, read_only=True)
    # As the message says: the record moved aside, the ledger opens as it is, without the three tags.
    record.rename(f"{record}.lost")
    assert not {"one", "two", "three"} & _tags(root)
    ledger = Ledger.open(root)
    assert verify(ledger).ok
    ledger.tag("again", ledger.versions()[0].version_id)
    assert _record(root)["committed"] == committed - 2  # the numbers go on from what the database holds
    assert _tags(root) >= {"again"}


def test_a_damaged_log_moved_aside_then_names_the_writes_it_lost(killed):
    root, log, committed = killed
    wal = root / ".prov" / "ledger.duckdb.wal"
    damaged = bytearray(log)
    damaged[len(damaged) // 2] ^= 0x40
    wal.write_bytes(bytes(damaged))
    result = CliRunner().invoke(main, ["tag", "list"])
    assert result.exit_code == 4 and "write-ahead log" in result.output and "is damaged" in result.output
    assert "the next command then says which writes that loses" in result.output, result.output
    wal.rename(f"{wal}.damaged")
    result = CliRunner().invoke(main, ["tag", "list"])
    assert result.exit_code == 4, result.output
    assert f"but write number {committed} was committed" in result.output


def test_the_whole_log_replays_and_opens(killed):
    root, log, committed = killed
    assert _tags(root) >= {"one", "two", "three"}
    assert verify(Ledger.open(root)).ok


def test_a_record_left_by_another_database_is_not_compared(tmp_path, monkeypatch):
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    ledger = Ledger.init(tmp_path)
    version = ledger.commit({"w": torch.ones(2)}, message="first")
    for name in "abc":
        ledger.tag(name, version.version_id)
    assert _record(tmp_path)["committed"] == 4
    # the damaged database moved aside and a new ledger made in its place, as its error says
    (tmp_path / ".prov" / "ledger.duckdb").rename(tmp_path / "ledger.duckdb.damaged")
    fresh = Ledger.init(tmp_path)
    assert fresh.versions() == [] and Ledger.open(tmp_path).versions() == []  # the old record (4) is another ledger's
    fresh.commit({"w": torch.zeros(2)}, message="again")
    assert _record(tmp_path)["committed"] == 1


def test_two_ledgers_of_one_process_commit_side_by_side_and_the_record_keeps_the_highest(tmp_path):
    Ledger.init(tmp_path)
    version = Ledger.open(tmp_path).commit({"w": torch.ones(2)}, message="base")
    errors: list[BaseException] = []

    def tag_many(prefix: str) -> None:
        ledger = Ledger.open(tmp_path)  # its own store, as a training loop's and its callback's
        try:
            with ledger.session():
                for i in range(15):
                    ledger.tag(f"{prefix}{i}", version.version_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=tag_many, args=(p,)) for p in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # the numbers never conflict, as a counter row updated by both would
    assert _record(tmp_path)["committed"] == 31
    assert len(_tags(tmp_path)) == 30


def test_a_backup_copy_starts_its_record_at_what_it_holds(tmp_path):
    ledger = Ledger.init(tmp_path / "p")
    version = ledger.commit({"w": torch.ones(2)}, message="base")
    ledger.tag("t", version.version_id)
    report = ledger.backup(tmp_path / "copy")
    assert report["verified"] is True
    assert _record(tmp_path / "copy") == _record(tmp_path / "p") == {
        "ledger": _record(tmp_path / "p")["ledger"], "committed": 2}
    shutil.rmtree(tmp_path / "p")
    assert [t.name for t in Ledger.open(tmp_path / "copy").tags()] == ["t"]


def test_ctrl_c_while_the_number_is_recorded_says_what_was_kept(tmp_path, write_jsonl, monkeypatch):
    """The number is recorded after the commit: an interrupt there printed `Aborted!` alone while
    the dataset was registered (what was made is now told first). Found by stranger pass 31."""
    from provenance.ledger import LedgerStore

    Ledger.init(tmp_path)
    write_jsonl(tmp_path / "late.jsonl", [{"id": "a", "text": "registered before the interrupt"}])

    def interrupted(self, number):
        raise KeyboardInterrupt

    monkeypatch.setattr(LedgerStore, "_record_write", interrupted)
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path), "dataset", "add", "late", str(tmp_path / "late.jsonl"),
                                       "--id-field", "id"])
    assert result.exit_code == 130
    assert "Aborted! What the ledger recorded before the interrupt is kept: dataset late@1" in result.output
    monkeypatch.undo()
    assert Ledger.open(tmp_path).dataset("late").n_documents == 1


def test_a_commit_that_landed_is_not_rolled_back_after_it():
    """An interrupt raised as the COMMIT returns reaches the transaction's cleanup, which rolled
    back and removed the write's Parquet document folders: a rollback now tells a transaction
    still open (rolled back) from one whose COMMIT landed (nothing to undo)."""
    import duckdb

    from provenance.ledger.transactions import _rolled_back

    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (1)")
    assert _rolled_back(con) is True and con.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO t VALUES (2)")
    con.execute("COMMIT")
    assert _rolled_back(con) is False and con.execute("SELECT a FROM t").fetchall() == [(2,)]
    con.execute("BEGIN TRANSACTION")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM no_such_table")  # a failed statement: the transaction is aborted, still open
    assert _rolled_back(con) is True


_KILLED_AFTER_TWO_LATER_COMMITS = _KILLED_AFTER_THREE_COMMITS.replace('("one", "two", "three")', '("four", "five")')


def test_a_log_written_for_another_state_of_the_database_says_which_and_what_to_do(killed, tmp_path):
    """A ledger folder copied (cp -r) while a process wrote to it pairs the database file with a
    log of an earlier or a later checkpoint, and a log can be put back beside another ledger's
    file. DuckDB refuses to replay such a log; every command said only `cannot open ledger …: IO
    Error: Failure while replaying WAL file …` (exit 4), with no step to take."""
    root, log, committed = killed
    prov = root / ".prov"
    wal, db = prov / "ledger.duckdb.wal", prov / "ledger.duckdb"
    written_for = db.read_bytes()  # the file the log was written for
    assert {t.name for t in Ledger.open(root).tags()} >= {"one", "two", "three"}  # replayed, checkpointed into the file
    assert not wal.exists()

    wal.write_bytes(log)  # 1. a log of an earlier checkpoint: its writes are in the file already
    result = CliRunner().invoke(main, ["tag", "list"])
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    assert f"write-ahead log {wal} was written before ledger.duckdb was last checkpointed" in result.output
    assert "so its writes are in the file already" in result.output and f"mv {wal} {wal}.stale" in result.output
    wal.rename(f"{wal}.stale")  # as it says: nothing is lost
    assert _tags(root) >= {"one", "two", "three"}

    version = Ledger.open(root, read_only=True).versions()[0].version_id
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_TWO_LATER_COMMITS, str(root), version],
                          capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    later = wal.read_bytes()
    db.write_bytes(written_for)  # 2. an older database file put back beside a later log
    with pytest.raises(LedgerDamagedError, match=rf"{db} is older than its write-ahead log .*the log holds writes "
                                                 r"made after it.*Put back the database file the log belongs to"):
        Ledger.open(root)

    other = Ledger.init(tmp_path / "other")  # 3. a log beside another ledger's database
    other.commit({"w": torch.zeros(2)}, message="other")
    other_wal = other.root / "ledger.duckdb.wal"
    other_wal.write_bytes(later)
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / "other"), "model", "log"])
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    assert f"write-ahead log {other_wal} was written for another database than ledger.duckdb" in result.output
    assert f"mv {other_wal} {other_wal}.stale" in result.output
