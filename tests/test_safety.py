"""Safety and truthful defaults: outputs never land inside the ledger, names are matched whole,
ambiguous refs are refused, exit statuses are documented, a damaged or read-only ledger gets a
clear answer, `prov verify` finds damage, and no DuckDB Decimal leaks into a report."""

from __future__ import annotations

import csv
import decimal
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from provenance import Ledger
from provenance.audits import audit_dedup
from provenance.cli.main import main
from provenance.errors import (
    InvalidParameterError,
    LedgerDamagedError,
    LedgerReadOnlyError,
    NotFoundError,
    UnsafeOutputError,
)
from provenance.gate import audit_merge
from provenance.verify import verify


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def words(i: int, n: int = 30) -> str:
    return " ".join(f"w{i}x{j}" for j in range(n))


@pytest.fixture
def project(tmp_path, write_jsonl, monkeypatch):
    """A ledger with a dataset ``news`` (10 documents, two of them copies of others), a base
    version and a child version trained on ``news``; the current folder is the project."""
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    ledger = Ledger.init(tmp_path)
    docs = [{"id": f"n{i}", "text": words(i % 8)} for i in range(10)]
    write_jsonl(tmp_path / "news.jsonl", docs)
    ledger.register_dataset("news", tmp_path / "news.jsonl", id_field="id", license="CC-BY-NC-4.0")
    base = ledger.commit({"w": torch.zeros(8, 8), "b": torch.zeros(8)}, message="base")
    with ledger.start_run(base=base, datasets=["news"], message="tune") as run:
        child = run.commit({"w": torch.eye(8), "b": torch.zeros(8)})
    return ledger, base, child


def run_cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


# -- outputs never overwrite the ledger ---------------------------------------------------------

def test_outputs_inside_the_ledger_are_refused(project, tmp_path):
    ledger, base, child = project
    db = ledger.db_path
    before = _digest(db)
    objects = sorted(p.name for p in ledger.objects_path.rglob("*"))
    (tmp_path / "link").symlink_to(ledger.objects_path)  # a symlink that leads inside
    (tmp_path / "db-link.safetensors").symlink_to(db)
    for out in [".prov/ledger.duckdb", ".prov", "link/x.safetensors", "db-link.safetensors",
                str(db), ".prov/objects/new.safetensors"]:
        with pytest.raises(UnsafeOutputError, match="inside the ledger folder|it is a folder"):
            ledger.checkout(child, output=out)
        result = run_cli("model", "checkout", child.version_id, "-o", out)
        if out == ".prov":  # click refuses a folder itself: a usage error
            assert result.exit_code == 2 and "is a directory" in result.output
            continue
        assert result.exit_code == 4, (out, result.output)
        assert "refusing to write" in result.output
    for args in (["dataset", "export", "news", "-o", ".prov/ledger.duckdb"],
                 ["audit", "dedup", "news", "--html", "link/report.html"],
                 ["audit", "dedup", "news", "--pairs", ".prov/ledger.duckdb"],
                 ["audit", "memorization", child.version_id, "--samples", "news.jsonl", "--html", ".prov/x.html"]):
        result = run_cli(*args)
        assert result.exit_code == 4 and "inside the ledger folder" in result.output, (args, result.output)
    with pytest.raises(UnsafeOutputError):
        audit_dedup(ledger, ["news"], pairs_file=db)
    assert _digest(db) == before
    assert sorted(p.name for p in ledger.objects_path.rglob("*")) == objects
    assert ledger.audits() == []  # refused before any audit ran


def test_outputs_never_replace_devices_or_fifos(project, tmp_path):
    ledger, base, child = project
    os.mkfifo(tmp_path / "pipe.safetensors")
    (tmp_path / "null.html").symlink_to("/dev/null")
    for out, args in (("pipe.safetensors", ["model", "checkout", child.version_id, "-o", "pipe.safetensors"]),
                      ("null.html", ["audit", "dedup", "news", "--html", "null.html"])):
        with pytest.raises(UnsafeOutputError, match="is not a regular file"):
            ledger.output_path(out)
        result = run_cli(*args)
        assert result.exit_code == 4 and "is not a regular file" in result.output, result.output
    assert (tmp_path / "pipe.safetensors").is_fifo() and Path("/dev/null").is_char_device()
    read, write = os.pipe()  # `-o /dev/stdout | cat`: the path resolves to a pipe with no path of its own
    try:
        with pytest.raises(UnsafeOutputError, match="is not a regular file"):
            ledger.output_path(f"/proc/self/fd/{write}")
    finally:
        os.close(read)
        os.close(write)
    result = run_cli("model", "checkout", child.version_id, "-o", "-")
    assert result.exit_code == 4 and "refusing to write '-': give a file name" in result.output
    assert not (tmp_path / "-").exists()


def test_checkout_needs_parents_for_missing_folders(project, tmp_path):
    ledger, base, child = project
    result = run_cli("model", "checkout", child.version_id, "-o", "new/dir/m.safetensors")
    assert result.exit_code == 4 and "does not exist (create it, or pass parents=True / --parents)" in result.output
    assert not (tmp_path / "new").exists()
    result = run_cli("audit", "dedup", "news", "--html", "new/dir/x.html")  # no --parents there: not offered
    assert result.exit_code == 4 and "folder" in result.output and "does not exist (create it first)" in result.output
    (tmp_path / "page.html").write_text("a file, not a folder")  # said so, not "does not exist" (stranger pass 37)
    result = run_cli("audit", "dedup", "news", "--html", "page.html/x.html")
    assert result.exit_code == 4 and f"cannot write 'page.html/x.html': {tmp_path / 'page.html'} is a file, not a folder" \
        in result.output, result.output
    result = run_cli("model", "checkout", child.version_id, "-o", "page.html/sub/m.safetensors", "--parents")
    assert result.exit_code == 4 and f"{tmp_path / 'page.html'} is a file, not a folder" in result.output, result.output
    assert ledger.audits() == []
    result = run_cli("model", "checkout", child.version_id, "-o", "new/dir/m.safetensors", "--parents")
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    assert torch.equal(load_file(tmp_path / "new/dir/m.safetensors")["w"], torch.eye(8))


def test_outputs_in_folders_that_cannot_be_written_are_refused_before_the_audit(project, tmp_path, monkeypatch):
    """An --html page into a folder the process cannot write was found out only after the audit
    had stored its report: the command failed (naming a temporary file) and the audit stayed."""
    ledger, base, child = project
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access  # the tests run as root, whom permissions do not stop: a read-only mount would
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    for args in (["audit", "dedup", "news", "--html", "locked/x.html"],
                 ["audit", "dedup", "news", "--pairs", "locked/p.parquet"],
                 ["audit", "memorization", child.version_id, "--samples", "news.jsonl", "--html", "locked/m.html"]):
        result = run_cli(*args)
        assert result.exit_code == 4, (args, result.output)
        assert f"cannot write 'locked/{args[-1].split('/')[-1]}': folder {locked} is not writable" in result.output
    assert ledger.audits() == [] and list(locked.iterdir()) == []


def test_a_failed_atomic_write_names_the_file_asked_for(tmp_path, monkeypatch):
    import errno
    import tempfile

    from provenance.files import atomic_write_bytes

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".x.html.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "x.html", b"page")
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(tmp_path / "x.html")


def test_dedup_refuses_one_file_for_the_pairs_and_the_page(project, tmp_path):
    ledger = project[0]
    result = run_cli("audit", "dedup", "news", "--pairs", "p.parquet", "--html", "./p.parquet")
    assert result.exit_code == 2 and "--html and --pairs name the same file 'p.parquet'" in result.output
    assert ledger.audits() == [] and not (tmp_path / "p.parquet").exists()


# -- names, tags and refs ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["news\n", "news\r", " news", "news ", "\n", "", "a" * 129, "news/x", "new\ts"])
def test_dataset_names_are_matched_whole(project, tmp_path, name):
    ledger = project[0]
    with pytest.raises(InvalidParameterError, match="at most 128 characters"):
        ledger.register_dataset(name, tmp_path / "news.jsonl")
    result = run_cli("dataset", "add", name, "news.jsonl")
    assert result.exit_code == 4 and "at most 128 characters" in result.output
    assert [d.dataset_id for d in ledger.datasets(all_versions=True)] == ["news@1"]


def test_tags_follow_name_rules_and_never_look_like_ids(project):
    ledger, base, child = project
    for bad in ["v1\n", "   ", "", "\n", "x" * 129, "has space", "ABCD", "dead", "DeadBeef01", base.version_id]:
        with pytest.raises(InvalidParameterError):
            ledger.tag(bad, child)
        assert run_cli("tag", bad, child.version_id).exit_code == 4
    assert ledger.tag("release/v1.0+retracted-1", child).version_id == child.version_id
    assert ledger.version("release/v1.0+retracted-1").version_id == child.version_id
    assert ledger.version(child.version_id[:8].upper()).version_id == child.version_id  # ids in any case


def test_a_ref_that_is_both_a_dataset_and_a_tag_is_ambiguous(project):
    ledger, base, child = project
    ledger.tag("news", child)
    result = run_cli("audit", "dedup", "news")
    assert result.exit_code == 4
    assert "'news' is ambiguous: it names dataset news@1 and version " + child.version_id[:12] in result.output
    assert "dataset:news or version:news" in result.output
    by_dataset = json.loads(run_cli("audit", "dedup", "dataset:news", "--json").output)
    by_version = json.loads(run_cli("audit", "dedup", "version:news", "--json").output)
    assert by_dataset["targets"] == [{"target": "dataset:news", "kind": "dataset", "id": "news@1", "label": None}]
    assert by_version["targets"] == [{"target": "version:news", "kind": "version", "id": child.version_id,
                                      "label": f"{child.version_id[:12]} (news)"}]


# -- exit statuses and JSON errors -------------------------------------------------------------------

def test_exit_statuses_and_json_errors(project):
    ledger, base, child = project
    cases = [
        (["model", "show", "ffff"], 3, "not_found"),
        (["dataset", "show", "nope"], 3, "not_found"),
        (["audit", "show", "abcd"], 3, "not_found"),
        (["lineage", "no-such-tag"], 3, "not_found"),
        (["dataset", "add", "x", "missing.jsonl"], 4, None),
        (["audit", "merge", base.version_id, base.version_id[:8]], 4, "invalid_parameter"),  # one version twice
        (["sql", "DELETE FROM documents"], 4, "read_only_query"),
    ]
    for args, code, kind in cases:
        plain = run_cli(*args)
        assert plain.exit_code == code, (args, plain.output)
        assert plain.output.startswith("Error: "), plain.output
        as_json = CliRunner().invoke(main, [*args, "--json"])
        assert as_json.exit_code == code, (args, as_json.output)
        err = json.loads(as_json.stderr)
        assert set(err) == {"error", "kind"} and err["error"] and as_json.stdout == ""
        if kind:
            assert err["kind"] == kind
    usage = run_cli("model", "show")
    assert usage.exit_code == 2 and "Missing argument" in usage.output
    out_of_range = run_cli("audit", "dedup", "news", "--threshold", "1.5")
    assert out_of_range.exit_code == 2 and "'--threshold': 1.5 is not in the range 0<x<=1" in out_of_range.output
    negative = run_cli("audit", "merge", base.version_id, child.version_id, "--ngram", "-1")  # exited 4
    assert negative.exit_code == 2 and "'--ngram': -1 is not in the range 0<=x<=1000" in negative.output
    not_a_number = run_cli("audit", "dedup", "news", "--threshold", "nan")  # passes every bound's comparison
    assert not_a_number.exit_code == 2 and "'--threshold': 'nan' is not a number" in not_a_number.output
    for args in (["audit", "dedup", "news", "--json", "--bogus"], ["audit", "dedup", "news", "--bogus", "--json"]):
        unknown = run_cli(*args)  # click stops parsing at --bogus: --json is still seen
        assert unknown.exit_code == 2 and json.loads(unknown.stderr) == {"error": "No such option '--bogus'.",
                                                                         "kind": "usage"}
    missing_ledger = CliRunner().invoke(main, ["--ledger", "/nonexistent/place", "dataset", "list"])
    assert missing_ledger.exit_code == 3 and "no ledger" in missing_ledger.output


def test_gate_fails_on_contamination_by_default_and_denies_licences(project, tmp_path, write_jsonl):
    ledger, base, child = project
    write_jsonl(tmp_path / "other.jsonl", [{"id": f"o{i}", "text": words(100 + i)} for i in range(6)])
    write_jsonl(tmp_path / "eval.jsonl", [{"id": "e0", "text": words(3)}, {"id": "e1", "text": words(200)}])
    ledger.register_dataset("other", tmp_path / "other.jsonl", id_field="id", license="MIT")
    ledger.register_dataset("ev", tmp_path / "eval.jsonl", id_field="id", role="eval", license="MIT")
    with ledger.start_run(base=base, datasets=["other"], message="other") as run:
        other = run.commit({"w": 2 * torch.eye(8), "b": torch.ones(8)})
    report = audit_merge(ledger, [child.version_id, other.version_id], ngram=0)
    assert not report["passed"] and report["policy"]["max_contamination"] == 0
    assert report["contamination"]["contaminated_eval_documents"] == 1  # e0 is news' n3 and n11
    denied = audit_merge(ledger, [child.version_id, other.version_id], ngram=0, max_contamination=None,
                         deny_license="non-commercial,unknown,share-alike")
    assert [v["policy"] for v in denied["violations"]] == ["deny_license"]
    assert denied["violations"][0]["message"] == (
        "deny-licence non-commercial broken: the merged lineage holds non-commercial data (news@1)")
    assert denied["license"]["licenses"] == ["CC-BY-NC-4.0", "MIT"]
    with pytest.raises(InvalidParameterError, match="unknown condition"):
        audit_merge(ledger, [child.version_id, other.version_id], deny_license="gpl")
    out = run_cli("audit", "merge", child.version_id, other.version_id, "--ngram", "0", "--max-contamination", "none",
                  "--deny-licence", "non-commercial")
    assert out.exit_code == 1 and "FAILED" in out.output and "deny-licence non-commercial broken" in out.output
    out = run_cli("audit", "merge", child.version_id, other.version_id, "--ngram", "0", "--max-contamination", "none",
                  "--deny-license", "model-generated")
    assert out.exit_code == 0 and "PASSED" in out.output, out.output


def test_gate_names_a_version_given_twice_and_counts_an_evaluation_set_once(project, tmp_path, write_jsonl):
    ledger, base, child = project
    write_jsonl(tmp_path / "other.jsonl", [{"id": f"o{i}", "text": words(100 + i if i else 0)} for i in range(6)])
    write_jsonl(tmp_path / "eval.jsonl", [{"id": "e0", "text": words(3)}, {"id": "e1", "text": words(200)}])
    ledger.register_dataset("other", tmp_path / "other.jsonl", id_field="id")
    ledger.register_dataset("ev", tmp_path / "eval.jsonl", id_field="id", role="eval")
    with ledger.start_run(base=base, datasets=["other"], message="other") as run:
        other = run.commit({"w": 2 * torch.eye(8), "b": torch.ones(8)})
    ledger.tag("tuned", child)
    # three names, two versions: the error said "at least two different versions" and named neither
    with pytest.raises(InvalidParameterError, match="at least two different versions, each given once: 'tuned' and "
                       f"'{child.version_id[:8]}' are both version {child.version_id[:12]} \\(tuned\\)"):
        audit_merge(ledger, ["tuned", other.version_id, child.version_id[:8]])
    out = run_cli("audit", "merge", "tuned", other.version_id, "tuned")
    assert out.exit_code == 4 and "'tuned' and 'tuned' are both version" in out.output
    report = audit_merge(ledger, [child.version_id, other.version_id], eval_datasets=["ev", "ev@1"], ngram=0,
                         max_overlap=0.0)
    assert report.contamination.eval_datasets == ["ev@1"]  # was ['ev@1', 'ev@1'], and so in the messages
    assert report.violations[0].message.startswith("max-contamination 0 broken: 1 evaluation document of ev@1 is")
    out = run_cli("audit", "merge", child.version_id, other.version_id, "--ngram", "0", "--eval", "ev",
                  "--eval", "ev", "--max-overlap", "0")
    long = [v.message for v in report.violations if len(v.message) > 100]
    assert out.exit_code == 1 and long and all(f"✗ {m}\n" in out.output for m in long), out.output  # one line each


# -- a damaged or read-only ledger ---------------------------------------------------------------

def test_truncated_database_is_reported_as_damaged(project, tmp_path):
    ledger = project[0]
    db = ledger.db_path
    whole = db.read_bytes()
    for length in sorted({0, 1, 100, 4096, 8192, 12288, len(whole) // 2, len(whole) - 4096}):
        db.write_bytes(whole[:length])
        result = run_cli("dataset", "list")
        if result.exit_code == 0:  # a cut past the blocks this query reads: a deeper read must say so
            result = run_cli("sql", "SELECT sum(len(signature)) FROM documents")
        if result.exit_code == 0:
            result = run_cli("model", "checkout", project[2].version_id, "-o", str(tmp_path / "out.safetensors"))
        if result.exit_code == 0:
            continue
        assert result.exit_code == 4, (length, result.output)
        assert f"the ledger database {db} is damaged" in result.output, (length, result.output)
        assert "Restore it from a backup" in result.output and "Traceback" not in result.output
    db.write_bytes(whole[:100])
    with pytest.raises(LedgerDamagedError, match="is damaged"):
        Ledger.open(tmp_path)


def test_a_corrupt_block_of_the_documents_is_found_by_verify_and_named_by_sql(project, tmp_path):
    """A flipped byte in a block of the documents' band keys: every query that reads them says the
    database is damaged (it said `query failed: Corrupt database file`), and `prov verify --objects`
    and a backup's check, which read every row of every table, name the table (they said ok)."""
    import duckdb

    ledger = project[0]
    db = ledger.db_path
    (tmp_path / "many.jsonl").write_text("".join(json.dumps({"id": f"m{i}", "text": f"text number {i} of many"}) + "\n"
                                                 for i in range(3000)))
    ledger.register_dataset("many", tmp_path / "many.jsonl", id_field="id")  # band keys that fill blocks of their own
    con = duckdb.connect(str(db))
    con.execute("CHECKPOINT")  # the rows in ledger.duckdb itself, not in its write-ahead log
    block, offset = con.execute("SELECT block_id, block_offset FROM pragma_storage_info('documents') "
                                "WHERE column_name = 'band_keys' AND segment_type = 'UBIGINT' AND block_id >= 0 "
                                "ORDER BY count DESC LIMIT 1").fetchall()[0]
    con.close()
    with open(db, "r+b") as f:  # 3 headers of 4 KiB, then blocks of 256 KiB, each after its 8-byte checksum
        f.seek(12288 + block * 262144 + 8 + offset + 4)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli("sql", "SELECT sum(list_sum(band_keys)) FROM documents")
    assert result.exit_code == 4, result.output
    assert f"the ledger database {db} is damaged (Corrupt database file" in result.output
    assert "Restore it from a backup" in result.output and "query failed" not in result.output
    assert run_cli("verify").exit_code == 0  # presence and size: the band keys are not read
    result = run_cli("verify", "--objects")
    assert result.exit_code == 1, result.output
    assert "✗ table documents: the ledger database" in result.output and "ok: nothing damaged" not in result.output
    report = json.loads(run_cli("verify", "--objects", "--json").output)
    assert [p["table"] for p in report["database_problems"]] == ["documents"] and report["ok"] is False
    result = run_cli("backup", str(tmp_path / "bk"))
    assert result.exit_code == 1, result.output
    assert "verified (every object re-hashed): DAMAGED" in result.output and "✗ table documents: " in result.output


# A process that commits a tag and is killed before it closes the ledger: the tag is only in the
# write-ahead log, which the next open replays.
_KILLED_AFTER_A_COMMIT = """
import os, signal, sys
from provenance import Ledger

ledger = Ledger.open(sys.argv[1])
with ledger.session():
    ledger.tag("in-the-log", sys.argv[2])
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_damaged_write_ahead_log_is_named_with_how_to_open_the_ledger(project, tmp_path):
    ledger, base, child = project
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_A_COMMIT, str(tmp_path), child.version_id],
                          capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    wal = ledger.db_path.with_name("ledger.duckdb.wal")
    log = bytearray(wal.read_bytes())
    log[len(log) // 2] ^= 0x40  # a flipped bit inside the tag's entry
    wal.write_bytes(bytes(log))
    for args in (["dataset", "list"], ["verify"], ["tag", "list"]):
        result = run_cli(*args)
        assert result.exit_code == 4, (args, result.output)
        assert f"the ledger's write-ahead log {wal} is damaged" in result.output, result.output
        assert f"move the log aside (mv {wal} {wal}.damaged)" in result.output and "Traceback" not in result.output
    with pytest.raises(LedgerDamagedError, match="write-ahead log"):
        Ledger.open(tmp_path, read_only=True)
    wal.rename(f"{wal}.damaged")  # as the message says: the ledger as it was before the lost write,
    result = run_cli("tag", "list", "--json")  # which the next command names (tests/test_lost_writes.py)
    assert result.exit_code == 4 and "lost committed writes" in result.output, result.output
    record = ledger.root / "writes.json"
    record.rename(f"{record}.lost")
    result = run_cli("tag", "list", "--json")
    assert result.exit_code == 0 and "in-the-log" not in result.output
    assert verify(Ledger.open(tmp_path)).ok

def test_read_only_ledger_can_be_read(project, tmp_path):
    ledger, base, child = project
    ro = Ledger.open(tmp_path, read_only=True)
    assert [d.dataset_id for d in ro.datasets()] == ["news@1"]
    assert torch.equal(ro.checkout(child)["w"], torch.eye(8))
    assert [d["dataset_id"] for d in ro.lineage(child).datasets] == ["news@1"]
    assert ro.sql("SELECT count(*) AS n FROM documents").to_pylist() == [{"n": 10}]
    for write in (lambda: ro.tag("x", child), lambda: ro.register_dataset("y", tmp_path / "news.jsonl"),
                  lambda: audit_dedup(ro, ["news"])):
        with pytest.raises(LedgerReadOnlyError, match="open read-only"):
            write()
    # audits that store nothing run on a read-only ledger, with the same answers
    stored = audit_dedup(ledger, ["news"])
    dry = audit_dedup(ro, ["news"], store=False)
    assert dry["stored"] is False and stored["stored"] is True
    assert dry["pairs"] == stored["pairs"] and len(dry["pairs"]) == 2 and dry["summary"] == {
        **stored["summary"], "seconds": dry["summary"]["seconds"]}
    assert [a["audit_id"] for a in ro.audits()] == [stored["audit_id"]]  # the dry run left nothing
    gate = audit_merge(ro, [base.version_id, child.version_id], store=False, ngram=0)
    assert "overlap" in gate and [a["audit_id"] for a in ro.audits()] == [stored["audit_id"]]


def _mount_read_only(source: Path, target: Path) -> bool:
    target.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], capture_output=True)
    return done.returncode == 0 and not os.access(target, os.W_OK)


def test_read_only_mount_serves_every_read_command(project, tmp_path):
    ledger, base, child = project
    mount = tmp_path.parent / f"{tmp_path.name}-ro"
    if shutil.which("mount") is None or not _mount_read_only(tmp_path, mount):
        shutil.rmtree(mount, ignore_errors=True)
        pytest.skip("cannot make a read-only bind mount here (needs root and mount)")
    try:
        cli = ["--ledger", str(mount)]
        out = tmp_path.parent / f"{tmp_path.name}-out.safetensors"
        for args in (["dataset", "list"], ["dataset", "show", "news"], ["model", "log"],
                     ["model", "show", child.version_id], ["lineage", child.version_id], ["sql", "SELECT 1"],
                     ["model", "checkout", child.version_id, "-o", str(out)], ["run", "list"], ["audit", "list"],
                     ["taint", "news"], ["verify"], ["gc"], ["audit", "dedup", "news", "--no-store"],
                     ["audit", "memorization", child.version_id, "--samples", str(tmp_path / "news.jsonl"),
                      "--no-store"]):
            result = CliRunner().invoke(main, [*cli, *args])
            assert result.exit_code == 0, (args, result.output)
        for args in (["tag", "x", child.version_id], ["verify", "--repair"]):
            result = CliRunner().invoke(main, [*cli, *args])
            assert result.exit_code == 4 and "open read-only" in result.output, (args, result.output)
        for args in (["audit", "dedup", "news"], ["audit", "merge", base.version_id, child.version_id],
                     ["audit", "memorization", child.version_id, "--samples", str(tmp_path / "news.jsonl")]):
            result = CliRunner().invoke(main, [*cli, *args])  # refused before the audit's work, with the way round
            assert result.exit_code == 4 and result.output == (
                f"Error: ledger {mount / '.prov'} cannot be written (its database file or folder is read-only), and "
                "the audit is stored in it: --no-store runs the audit without storing it\n"), (args, result.output)
        served = CliRunner().invoke(main, [*cli, "serve", "--port", "0"])  # refused, with the ways round it
        assert served.exit_code == 4 and " ".join(served.output.split()) == (
            f"Error: ledger {mount / '.prov'} cannot be written by this process (its database file or folder is "
            "read-only), and a server writes to it: its clients' registrations, runs and tokens; serve a writable "
            "copy (prov backup), or read this one with --ledger PATH"), served.output
        copy = tmp_path.parent / f"{tmp_path.name}-copy"
        backed = CliRunner().invoke(main, [*cli, "backup", str(copy)])  # the way round it works
        assert backed.exit_code == 0 and Ledger.open(copy, read_only=True).datasets()[0].dataset_id == "news@1", (
            backed.output)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


# -- output of values DuckDB returns ------------------------------------------------------------------

def test_sql_csv_and_json_serialise_nested_dates_decimals_blobs(project):
    query = ("SELECT [DATE '2024-01-02'] AS dates, {'when': TIMESTAMP '2024-01-02 03:04:05', 'n': 1.50::DECIMAL(4,2)} "
             "AS s, [sum(x)] AS sums, '\\xAA\\xBB'::BLOB AS blob, [ '\\x01'::BLOB ] AS blobs "
             "FROM (SELECT 5::BIGINT AS x)")
    result = run_cli("sql", query, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert "\r" not in result.output and result.output.count("\n") == 2  # `$(prov sql ...)` gets no stray CR
    assert rows[0] == ["dates", "s", "sums", "blob", "blobs"]
    assert rows[1] == ['["2024-01-02"]', '{"when": "2024-01-02T03:04:05", "n": 1.5}', "[5]", "aabb", '["01"]']
    as_json = json.loads(run_cli("sql", query, "--json").output)
    assert as_json == [{"dates": ["2024-01-02"], "s": {"when": "2024-01-02T03:04:05", "n": 1.5}, "sums": [5],
                        "blob": "aabb", "blobs": ["01"]}]


def _decimals(value, path="") -> list[str]:
    if isinstance(value, decimal.Decimal):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _decimals(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _decimals(v, f"{path}[{i}]")]
    return []


def test_no_decimal_leaks_into_reports(project, tmp_path):
    ledger, base, child = project
    report = audit_dedup(ledger, ["news"], threshold=0.8)
    assert _decimals(report) == [] and _decimals(ledger.audit(report["audit_id"])) == []
    assert report["near_copies"][0]["near_copies"] == 1 and type(report["near_copies"][0]["near_copies"]) is int
    out = json.loads(run_cli("audit", "dedup", "news", "--json").output)
    assert all(type(r["near_copies"]) is int for r in out["near_copies"])
    assert _decimals(ledger.lineage(child).to_dict()) == []


# -- prov verify ------------------------------------------------------------------------------------

def test_verify_finds_damage_names_versions_and_repairs(project, tmp_path):
    ledger, base, child = project
    result = run_cli("verify", "--objects")
    assert result.exit_code == 0 and "ok: nothing damaged" in result.output, result.output
    manifest = ledger.manifest(base)
    w_object = ledger.objects_path / manifest["w"].objects["full"][:2] / (manifest["w"].objects["full"][2:] + ".safetensors")
    raw = bytearray(w_object.read_bytes())
    raw[-1] ^= 0x01  # a flipped bit: same size, found only by re-hashing
    w_object.write_bytes(bytes(raw))
    assert run_cli("verify").exit_code == 0
    report = verify(ledger, objects=True)
    assert not report.ok and [d.problem for d in report.damaged_objects] == ["corrupt"]
    # the child's sparse patch of w is replayed on the base's w: both versions need the object
    assert report.damaged_objects[0].versions == sorted([base.version_id, child.version_id])
    result = run_cli("verify", "--objects", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["damaged_objects"][0]["problem"] == "corrupt"
    address = manifest["w"].objects["full"]
    said = " ".join(run_cli("verify", "--objects").output.split())  # it said `corrupt: object X (PATH) is corrupt: …`
    assert f"✗ object {address} corrupt:" in said and "its content hashes to" in said and "is corrupt" not in said
    result = run_cli("verify", "--objects", "--repair")
    assert result.exit_code == 1 and "moved to" in result.output
    assert not w_object.exists() and len(list((ledger.root / "quarantine").iterdir())) == 1
    assert [d.problem for d in verify(ledger).damaged_objects] == ["missing"]
    # committing the same tensor again restores the object; then everything checks out
    ledger.commit({"w": torch.zeros(8, 8), "b": torch.ones(8)}, message="again")
    assert verify(ledger, objects=True).ok
    assert torch.equal(ledger.checkout(child)["w"], torch.eye(8))
    # a truncated object is found without --objects
    b_object = ledger.objects_path / manifest["b"].objects["full"][:2] / (manifest["b"].objects["full"][2:] + ".safetensors")
    b_object.write_bytes(b_object.read_bytes()[:-3])
    result = run_cli("verify")
    assert result.exit_code == 1 and "truncated" in result.output and base.version_id[:12] in result.output


def test_verify_reports_inconsistent_dataset_rows(project, tmp_path):
    ledger = project[0]
    import duckdb  # damage the rows as another program would

    con = duckdb.connect(str(ledger.db_path))
    con.execute("DELETE FROM documents WHERE key = 'n3'")
    con.close()
    problems = verify(ledger).dataset_problems
    assert problems == [{"dataset_id": "news@1", "shard_index": 0,
                         "problem": "the shard row says 10 documents, 9 document rows exist"}]
    result = run_cli("verify")
    assert result.exit_code == 1 and "dataset news@1 shard 0" in result.output


def test_nan_from_the_cli_names_the_flag(project, tmp_path):
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path / "nan.safetensors"))
    result = run_cli("model", "commit", "nan.safetensors", "-m", "nan")
    assert result.exit_code == 4 and "--allow-nonfinite" in result.output and "allow_nonfinite=True" not in result.output
    with pytest.raises(InvalidParameterError, match="allow_nonfinite=True"):
        project[0].commit({"w": torch.tensor([float("inf")])}, message="inf")
    assert run_cli("model", "commit", "nan.safetensors", "-m", "nan", "--allow-nonfinite").exit_code == 0


def test_not_found_is_a_key_error_and_says_what(project):
    with pytest.raises(NotFoundError, match="no dataset 'zzz'"):
        project[0].dataset("zzz")


# -- runs from the CLI ------------------------------------------------------------------------------

def test_cli_run_belongs_to_the_process_that_started_it(project, tmp_path):
    ledger = project[0]
    prov = Path(sys.executable).parent / "prov"  # the console script installed beside this Python
    # the shell runs `prov run start` and exits: the run's owner is gone
    script = f'"{prov}" --ledger "{tmp_path}" run start -m "from a script" -d news --json; true'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr
    started = json.loads(done.stdout)
    assert started["pid"] > 0 and started["pid"] != os.getpid()
    with ledger.start_run(datasets=["news"], message="next") as run:
        run.finish()
    record = ledger.run(started["run_id"])
    assert record.status == "failed" and record.error == (
        f"abandoned: process {started['pid']} exited without ending the run")


def test_declared_epochs_and_logged_keys_disagreeing_warns_and_logged_wins(project):
    from provenance.runs import EpochsDisagreeWarning

    ledger = project[0]
    run = ledger.start_run(datasets={"news": 2}, message="declared 2, logged 1")
    run.log_examples([f"n{i}" for i in range(10)], step=0)
    with pytest.warns(EpochsDisagreeWarning, match="news@1 was declared for 2 epochs but its logged keys make 1") as w:
        run.finish()
    assert [(x.filename, x.lineno) for x in w] == [(__file__, sys._getframe().f_lineno - 1)]  # run.finish(), the user's line
    assert sum(s.examples for s in ledger.run_shards(run.run_id)) == 10  # the logged count
    result = run_cli("run", "start", "-m", "cli", "-d", "news:3", "--json")
    run_id = json.loads(result.output)["run_id"]
    assert run_cli("run", "log", run_id, "--step", "0", input="n1\nn2\n").exit_code == 0
    finished = CliRunner().invoke(main, ["run", "finish", run_id])
    assert finished.exit_code == 0
    assert "warning: run " in finished.stderr and "news@1 was declared for 3 epochs but its logged keys make 0.2" in (
        finished.stderr)


def test_a_warning_raised_under_a_trainer_points_at_the_users_line(project):
    """A callback's warning passes over the trainer's frames too (Lightning, Transformers), to the
    user's ``trainer.fit(...)``; before, it pointed into the trainer's package."""
    from provenance.runs import EpochsDisagreeWarning

    ledger = project[0]
    run = ledger.start_run(datasets={"news": 2}, message="declared 2, logged 1")
    run.log_examples([f"n{i}" for i in range(10)], step=0)
    trainer = {"__name__": "lightning.pytorch.trainer.trainer"}  # code in the trainer's package, as it runs hooks
    exec(compile("def fit(on_train_end):\n    on_train_end()\n", "lightning/pytorch/trainer/trainer.py", "exec"), trainer)
    with pytest.warns(EpochsDisagreeWarning, match="declared for 2 epochs") as w:
        trainer["fit"](run.finish)
    assert [(x.filename, x.lineno) for x in w] == [(__file__, sys._getframe().f_lineno - 1)]


def test_dedup_pairs_span_clusters_unless_all_pairs(project):
    ledger = project[0]  # news: n0..n7 distinct, n8 = n0 and n9 = n1 (two groups of two identical copies)
    ledger.register_dataset("copies", [{"id": f"c{i}", "text": words(50)} for i in range(5)], id_field="id")
    spanning = audit_dedup(ledger, ["copies"])
    assert spanning["pairs_mode"] == "spanning" and len(spanning["pairs"]) == 4  # m - 1 for m = 5 copies
    assert {(p["a"], p["b"]) for p in spanning["pairs"]} == {("c0", f"c{i}") for i in range(1, 5)}
    every = audit_dedup(ledger, ["copies"], all_pairs=True)
    assert every["pairs_mode"] == "all" and len(every["pairs"]) == 10  # m(m - 1) / 2
    assert {(p["a"], p["b"]) for p in every["pairs"]} == {
        (f"c{i}", f"c{j}") for i in range(5) for j in range(i + 1, 5)}
    assert every["summary"]["clusters"] == spanning["summary"]["clusters"] == 1
    assert every["near_copies"] == spanning["near_copies"]  # each copy has 4 near-copies either way
    out = run_cli("audit", "dedup", "copies")
    assert "the pairs span each cluster (m identical copies: m-1 pairs)" in out.output
    out = json.loads(run_cli("audit", "dedup", "copies", "--all-pairs", "--json").output)
    assert len(out["pairs"]) == 10


def test_progress_appears_only_after_a_second(project, tmp_path):
    import io as _io
    import time as _time

    from rich.console import Console
    from rich.progress import Progress

    from provenance.cli.render import _RichProgress

    out = _io.StringIO()
    p = Progress(console=Console(file=out, force_terminal=True), transient=True, auto_refresh=False)
    bar = _RichProgress(p, delay=0.3)
    ledger, base, child = project
    ledger.checkout(child, output=tmp_path / "quick.safetensors", progress=bar)  # well under the delay
    assert not bar.shown
    _time.sleep(0.35)
    bar.advance(1)
    assert bar.shown
    p.stop()
    # the library reports bytes: a checkout's total is the version's full size
    seen = []

    class Recorder:
        def start(self, description, total):
            seen.append(("start", description, total))

        def advance(self, amount):
            seen.append(("advance", amount))

    ledger.checkout(child, output=tmp_path / "m.safetensors", progress=Recorder())
    assert seen[0] == ("start", "checkout", child.full_bytes)
    assert sum(a for kind, *rest in seen if kind == "advance" for a in rest) == child.full_bytes
    seen.clear()
    v = ledger.commit({"w": torch.ones(8, 8), "b": torch.ones(8)}, parent=child, message="p", progress=Recorder())
    assert seen[0] == ("start", "commit", None) and sum(x[1] for x in seen[1:]) == v.full_bytes



def test_progress_appears_during_a_long_stage_that_does_not_advance():
    """The bar appeared only when the work advanced: a stage that started at once and ran long in
    one call (a backup copying its database, verify checking a 1M-document dataset) showed
    nothing for its whole length. It now appears on a timer, and never after the work ended."""
    import io as _io
    import time as _time

    from rich.console import Console
    from rich.progress import Progress

    from provenance.cli.render import _RichProgress

    p = Progress(console=Console(file=_io.StringIO(), force_terminal=True), transient=True, auto_refresh=False)
    bar = _RichProgress(p, delay=0.2)
    bar.start("backup: database", None)
    assert not bar.shown
    _time.sleep(0.6)  # one long call: no advance
    assert bar.shown and p.live.is_started
    bar.close()
    assert not p.live.is_started
    quick = _RichProgress(Progress(console=Console(file=_io.StringIO(), force_terminal=True), transient=True), delay=0.2)
    quick.start("verify: objects", 3)
    quick.close()  # the work ended before the delay: no bar later either
    _time.sleep(0.4)
    assert not quick.shown

def test_tables_piped_keep_every_column_and_whole_ids(project):
    ledger, base, child = project
    ledger.tag("a-rather-long-release-tag-name", child)
    ledger.commit({"w": torch.ones(8, 8), "b": torch.ones(8)}, parent=child,
                  message="a long message that has to wrap over several lines of the table " * 3)
    out = run_cli("model", "log").output  # CliRunner is no terminal: as in a CI log
    header = next(line for line in out.splitlines() if "version" in line)
    for col in ("version", "tags", "parents", "run", "message", "params", "stored", "of full", "created"):
        assert f" {col} " in header, (col, header)  # no column squeezed away or cut
    for v in ledger.versions():
        assert v.version_id[:12] in out  # ids keep their 12 digits
    assert "…" not in out and "a-rather-long-release-tag-name" in out
    with pytest.raises(InvalidParameterError, match="must be a number"):
        ledger.dataset("news@²")


def test_a_closed_pipe_stops_quietly(project, tmp_path):
    prov = Path(sys.executable).parent / "prov"  # 100,000 rows: far more than a pipe holds
    query = "SELECT range AS n FROM range(100000)"
    done = subprocess.run(["bash", "-c", f'"{prov}" --ledger "{tmp_path}" sql "{query}" --format csv | head -n 1'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    # a table of 1,000 rows of about 110 bytes, more than a pipe holds (64 KiB), so a write after the
    # reader left fails whatever the timing: 141 (128 + SIGPIPE, as the shell has it), not 1, which a
    # CI step with pipefail reads as a failed gate (a table that fits in the pipe may be written whole
    # before the reader leaves: exit 0, as for any program)
    wide = "SELECT range AS n, repeat('x', 40) AS a, repeat('y', 40) AS b FROM range(100000)"
    table = subprocess.run(["bash", "-c", f'"{prov}" --ledger "{tmp_path}" sql "{wide}" | head -n 1; '
                                    'exit "${PIPESTATUS[0]}"'], capture_output=True, text=True, timeout=120)
    assert table.returncode == 141 and len(table.stdout.splitlines()) == 1
    assert "Traceback" not in table.stderr and "Error" not in table.stderr, table.stderr
    # a rich table printed whole (model log): Rich's own broken-pipe handling exited 1
    for i in range(3):
        Ledger.open(tmp_path).commit({"w": torch.full((4,), float(i))}, message=f"version {i}")
    logged = subprocess.run(["bash", "-c", f'"{prov}" --ledger "{tmp_path}" model log | true; exit "${{PIPESTATUS[0]}}"'],
                            capture_output=True, text=True, timeout=120)
    assert logged.returncode == 141 and "Traceback" not in logged.stderr, logged.stderr
    # one large write (CSV, JSON) with stdout unbuffered, as PYTHONUNBUFFERED (set in many containers)
    # makes it: CPython dropped the part the closed pipe did not take, and prov exited 0
    for fmt in ("csv", "json"):
        whole = subprocess.run(["bash", "-c", f'"{prov}" --ledger "{tmp_path}" sql "{query}" --format {fmt} | head -c 10; '
                                'exit "${PIPESTATUS[0]}"'], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert whole.returncode == 141 and len(whole.stdout) == 10, (fmt, whole.returncode, whole.stderr)
        assert "Traceback" not in whole.stderr and "Error" not in whole.stderr, whole.stderr


def _reading(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open and has read some of it (Linux's /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            if os.readlink(fd) == str(path.resolve()):
                pos = int((Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().split()[1])
                return pos > 0
    except OSError:
        return False
    return False


def test_ctrl_c_exits_130_and_leaves_the_ledger_as_it_was(project, tmp_path):
    """SIGINT during a registration: `Aborted!`, exit status 130 (click's 1 read as a failed gate),
    no traceback, and the ledger as it was."""
    import signal
    import time

    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as f:
        for i in range(400_000):
            f.write(json.dumps({"id": f"b{i}", "text": f"row {i} " + " ".join(f"w{(i * 7 + j) % 991}" for j in range(40))})
                    + "\n")
    before = Ledger.open(tmp_path).datasets(all_versions=True)
    prov = Path(sys.executable).parent / "prov"
    # A test run started in the background (`make test &`) ignores SIGINT, and a child inherits that: Python
    # then installs no handler and the Ctrl-C is lost. The child starts with SIGINT as at a terminal.
    child = subprocess.Popen([str(prov), "--ledger", str(tmp_path), "-q", "dataset", "add", "big", str(big),
                              "--id-field", "id"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300  # a loaded machine can take a minute to import
    while time.monotonic() < deadline and child.poll() is None and not _reading(child.pid, big):  # mid-read
        time.sleep(0.01)
    assert child.poll() is None, ("the registration ended before it was interrupted", child.communicate())
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, (out, err)
    assert "Aborted!" in err and "Traceback" not in err
    after = Ledger.open(tmp_path)
    assert after.datasets(all_versions=True) == before and after.verify().ok


def test_ctrl_c_after_the_write_landed_says_it_was_kept(project, tmp_path, monkeypatch):
    """A Ctrl-C that came after the registration had committed (the ledger's close, the last
    queries) printed `Aborted!` alone, and the user took the dataset for not registered. The
    message now names what was kept."""
    from click.testing import CliRunner

    from provenance.cli.main import main
    from provenance.ledger import LedgerStore

    (tmp_path / "late.jsonl").write_text('{"id": "a", "text": "registered before the interrupt"}\n')

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LedgerStore, "retracted_in", interrupted)  # runs after the registration's commit
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path), "dataset", "add", "late", str(tmp_path / "late.jsonl"),
                                       "--id-field", "id"])
    assert result.exit_code == 130
    assert "Aborted! What the ledger recorded before the interrupt is kept: dataset late@1" in result.output
    assert Ledger.open(tmp_path).dataset("late").n_documents == 1


def test_records_the_library_returns_are_accepted_back(ledger, write_jsonl, tmp_path):
    from provenance import Ledger as Exported
    from provenance.records import RegistrationResult

    assert Exported is Ledger
    write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": words(i)} for i in range(4)] +
                [{"id": "r4", "text": words(0)}])
    registered = ledger.register_dataset("recs", tmp_path / "r.jsonl", id_field="id")
    assert isinstance(registered, RegistrationResult)
    assert ledger.dataset(registered) == registered.dataset == ledger.dataset(registered.dataset)
    base = ledger.commit({"w": torch.zeros(2)}, message="base")
    with ledger.start_run(base=base, datasets=[registered], message="from the result") as run:
        assert ledger.run(run).run_id == run.run_id  # the Run object itself is a ref
        v = run.commit({"w": torch.ones(2)})
    assert ledger.run(run.record).datasets == {"recs@1": 1.0}
    with ledger.start_run(base=v, datasets={registered.dataset: 2}, message="a record with epochs") as run2:
        run2.finish()
    assert ledger.run(run2.run_id).datasets == {"recs@1": 2.0}
    report = audit_dedup(ledger, [registered, v])
    assert [t["target"] for t in report["targets"]] == ["recs@1", v.version_id]
    assert report["summary"]["pairs"] == 1  # r4 copies r0


def test_an_error_names_a_huge_value_shortened_with_its_length(project):
    ledger = project[0]
    for i in range(25):
        ledger.register_dataset(f"d{i:02d}", [{"id": "a", "text": "a b c d e"}], id_field="id")
    huge = "x" * 5000
    with pytest.raises(NotFoundError) as missing:
        ledger.dataset("nosuch")  # the registered names are hinted, the first 20
    assert str(missing.value) == ("no dataset 'nosuch' in the ledger; registered: "
                                  f"{', '.join(f'd{i:02d}' for i in range(20))}, ...")
    for args, start in ((["dataset", "show", huge], "Error: dataset name 'xxx"),
                        (["model", "show", "z" * 5000], "Error: no version or tag 'zzz"),
                        (["tag", "q" * 5000, project[2].version_id], "Error: tag 'qqq")):
        result = run_cli(*args)
        assert result.exit_code in (3, 4) and result.output.startswith(start), result.output[:300]
        assert "…' (5,000 characters)" in result.output and len(result.output) < 400, result.output[:300]


def test_an_empty_ledger_option_is_a_usage_error_not_the_current_folder(project):
    for given in ("", "  "):  # `--ledger "$UNSET"` opened the ledger of the folder the command ran in
        result = run_cli("--ledger", given, "dataset", "list")
        assert result.exit_code == 2 and "Invalid value for '--ledger': is empty: give a ledger folder or a ledger " \
            "server's URL" in result.output, result.output
    assert run_cli("dataset", "list").exit_code == 0  # the project's ledger, found from the current folder


def test_a_malformed_server_url_is_refused_naming_it(project):
    """`prov --ledger 'http://[::1' tag list` ended in httpx's InvalidURL traceback (exit 1, a failed
    gate's status), and `--ledger http://` tried 7 times to reach no host (stranger pass 31)."""
    for given, said in (("http://[::1", "is not a valid URL: Invalid port: ':1'"),
                        ("http://x:notaport", "is not a valid URL: Invalid port: 'notaport'"),
                        ("http://", "names no host: give http://HOST:PORT"),
                        ("https://:8765", "names no host: give http://HOST:PORT")):
        result = run_cli("--ledger", given, "tag", "list")
        assert result.exit_code == 4, result.output
        assert result.output == f"Error: ledger server URL {given!r} {said}\n"
        with pytest.raises(InvalidParameterError, match="^ledger server URL"):
            Ledger.open(given, token="t")


def test_init_under_a_file_names_the_file(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(InvalidParameterError) as refused:
        Ledger.init(tmp_path / "afile" / "sub")
    assert str(refused.value) == (f"cannot create a ledger in {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a "
                                  "file, not a folder")  # it said "afile/sub/.prov: Not a directory"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".prov").write_text("")
    result = run_cli("init", str(tmp_path / "p"))
    assert result.exit_code == 4 and f"{tmp_path / 'p' / '.prov'} is a file, not a folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "p"]  # nothing made beside them


def test_listing_audits_of_no_kind_is_refused_as_deleting_them_is(project):
    ledger = project[0]
    audit_dedup(ledger, ["news"])
    assert [a["kind"] for a in ledger.audits("dedup")] == ["dedup"] and ledger.audits("merge") == []
    for call in (lambda: ledger.audits("bogus"), lambda: ledger.delete_audits(kind="bogus", before="2100-01-01")):
        with pytest.raises(InvalidParameterError, match="^kind 'bogus': one of dedup, merge, memorization$"):
            call()  # the list found nothing, silently


def test_licence_conditions_to_deny_are_named_in_any_case():
    from provenance.gate import check_deny_license

    assert check_deny_license("unknown,UNKNOWN") == ["unknown"]  # 'UNKNOWN' was an unknown condition
    assert check_deny_license(["Non-Commercial", " share-alike "]) == ["non-commercial", "share-alike"]
    with pytest.raises(InvalidParameterError, match=r"^deny-licence \[1\]: conditions are names; choose from "):
        check_deny_license([1])  # was an AttributeError


def test_a_memorization_audit_names_its_samples_and_a_version_by_its_tags(project):
    from provenance.memorization import audit_memorization

    ledger, base, child = project
    with pytest.raises(InvalidParameterError, match=r"^sample 1 is null; every sample is a str$"):
        audit_memorization(ledger, child, ["a text", None])  # it said "text 1 is null; every document needs a str"
    ledger.tag("ft", base)
    with pytest.raises(InvalidParameterError) as empty:
        audit_memorization(ledger, ledger.version("ft"), ["a text"])  # a record: its tags, not its id twice
    assert str(empty.value).startswith(f"version {base.version_id[:12]} (ft) has an empty lineage: no run in its "
                                       "history recorded any data")
    with pytest.raises(InvalidParameterError, match=rf"^version {base.version_id[:12]} \(ft\) has an empty lineage"):
        audit_memorization(ledger, "ft", ["a text"])
