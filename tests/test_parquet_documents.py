"""Datasets kept as Parquet: document rows in files under ``.prov/documents/`` that every query
reads through the ``documents`` view as if they were in the table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xxhash
from click.testing import CliRunner

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import InvalidParameterError, LedgerDamagedError, ReadOnlyQueryError, SourceError


def _shards(data_dir: Path, write_jsonl, corpus) -> list[Path]:
    """The test corpus in two shards, with ids."""
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(d["text"] for d in corpus.docs)]
    return [write_jsonl(data_dir / "a.jsonl", docs[:25]), write_jsonl(data_dir / "b.jsonl", docs[25:])]


def _rows(ledger: Ledger, dataset: str) -> list[dict]:
    """A dataset's document rows without the columns that differ between two registrations."""
    return ledger.documents(dataset).drop(["doc_id", "dataset_id"]).to_pylist()


def _files(ledger: Ledger) -> list[Path]:
    return sorted(p for p in ledger.documents_path.rglob("*") if p.is_file()) if ledger.documents_path.exists() else []


def test_parquet_rows_equal_the_table_rows(ledger, data_dir, write_jsonl, corpus):
    shards = _shards(data_dir, write_jsonl, corpus)
    table = ledger.register_dataset("t", shards, id_field="id", documents_as="table")
    kept = ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    assert kept.created and kept.dataset.n_documents == 40 and kept.dataset.n_shards == 2
    assert kept.dataset.content_hash == table.dataset.content_hash
    assert _rows(ledger, "p@1") == _rows(ledger, "t@1") and len(_rows(ledger, "p@1")) == 40
    # ids continue after the table's; the table holds none of p's rows
    ids = ledger.sql("SELECT min(doc_id) AS lo, max(doc_id) AS hi FROM documents WHERE dataset_id = 'p@1'").to_pylist()
    assert ids == [{"lo": 40, "hi": 79}]
    in_table = ledger.sql("SELECT count(*) AS n FROM ledger.main.documents WHERE dataset_id = 'p@1'").to_pylist()
    assert in_table == [{"n": 0}]
    files = ledger.document_files("p@1")
    assert len(files) == 1 and files[0]["n_rows"] == 40 and (files[0]["first_doc_id"], files[0]["last_doc_id"]) == (40, 79)
    path = ledger.root / files[0]["path"]
    assert files[0]["path"].startswith("documents/p/v1-") and path.name == "data_0.parquet"
    assert path.stat().st_size == files[0]["n_bytes"]
    assert xxhash.xxh3_128(path.read_bytes()).hexdigest() == files[0]["xxh3_128"]
    # the same content again is a no-op, whichever storage is asked for
    again = ledger.register_dataset("p", shards, id_field="id", documents_as="table")
    assert not again.created and again.dataset.dataset_id == "p@1"
    assert len(ledger.document_files()) == 1
    assert ledger.verify(objects=True).ok


def test_audits_taint_and_lineage_read_the_parquet_rows(ledger, data_dir, write_jsonl, corpus):
    shards = _shards(data_dir, write_jsonl, corpus)
    ledger.register_dataset("t", shards, id_field="id", documents_as="table")
    ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")

    def pairs(target: str) -> list[tuple]:
        report = ledger.audit_dedup([target], threshold=0.5)
        return sorted((p.a, p.b, p.jaccard) for p in report.pairs)

    assert pairs("p") == pairs("t") and len(pairs("p")) >= 8  # the corpus plants 8 near-copies
    across = ledger.audit_dedup(["t", "p"], threshold=0.5)
    assert across.summary.exact_duplicate_pairs == 40  # each document and its twin in the other dataset

    with ledger.start_run(datasets=["p"], message="on p") as run:
        run.log_examples(["d3", "d30", "d30"], step=0)
        on_p = run.commit({"w": torch.ones(2)})
    with ledger.start_run(datasets=["t"], message="on t") as run:
        on_t = run.commit({"w": torch.zeros(2)})
    taint = ledger.taint(dataset="p", key="d30")
    assert [v.version_id for v in taint.versions] == [on_p.version_id]
    near = ledger.taint(text=corpus.docs[30]["text"], near=0.9)
    assert {m.dataset_id for m in near.matches} == {"t@1", "p@1"}
    assert {v.version_id for v in near.versions} == {on_p.version_id, on_t.version_id}
    lineage = ledger.lineage(on_p)
    assert [(d["dataset_id"], d["examples"]) for d in lineage.datasets] == [("p@1", 3)]


def test_a_new_version_copies_unchanged_shards_from_parquet(ledger, data_dir, write_jsonl, corpus):
    a, b = _shards(data_dir, write_jsonl, corpus)
    ledger.register_dataset("p", [a, b], id_field="id", documents_as="parquet")
    write_jsonl(b, [{"id": f"n{i}", "text": f"a new document number {i} about rivers"} for i in range(7)])
    second = ledger.register_dataset("p", [a, b], id_field="id", documents_as="parquet")
    assert second.dataset.dataset_id == "p@2" and second.dataset.n_documents == 32
    first_rows = [r for r in _rows(ledger, "p@1") if r["shard_index"] == 0]
    assert [r for r in _rows(ledger, "p@2") if r["shard_index"] == 0] == first_rows
    assert sorted(f["dataset_id"] for f in ledger.document_files()) == ["p@1", "p@2"]
    # into the table from a Parquet version, too
    write_jsonl(b, [{"id": f"m{i}", "text": f"another document number {i} about hills"} for i in range(3)])
    third = ledger.register_dataset("p", [a, b], id_field="id", documents_as="table")
    assert [r for r in _rows(ledger, "p@3") if r["shard_index"] == 0] == first_rows
    assert ledger.document_files("p@3") == [] and third.dataset.n_documents == 28
    ids = ledger.sql("SELECT count(DISTINCT doc_id) AS n, count(*) AS m FROM documents").to_pylist()[0]
    assert ids["n"] == ids["m"] == 40 + 32 + 28
    assert ledger.verify(objects=True).ok


def test_many_small_shards_make_few_row_groups(ledger, data_dir, write_jsonl):
    """Each shard's rows were written as a row group of their own: a folder of 30,000 small files
    made a file of 30,000 row groups, whose metadata the writer held (22 KB a file: 1 GiB). The
    rows of small shards now share row groups of 16,384, in shard order, and read back whole."""
    folder = data_dir / "many"
    folder.mkdir()
    for i in range(300):
        write_jsonl(folder / f"f{i:03d}.jsonl", [{"id": f"{i}-{j}", "text": f"document {j} of file {i} says {i * j}"}
                                                 for j in range(3 + i % 3)])
    first = ledger.register_dataset("many", folder, id_field="id", documents_as="parquet").dataset
    assert (first.n_shards, first.n_documents) == (300, 1200)
    (path,) = [ledger.root / f["path"] for f in ledger.document_files("many@1")]
    assert pq.ParquetFile(path).metadata.num_row_groups <= 2  # was 300: one a shard (row groups hold up to 1 MiB)
    rows = ledger.sql("SELECT shard_index, key FROM documents WHERE dataset_id = 'many@1' ORDER BY doc_id").to_pylist()
    assert [r["shard_index"] for r in rows] == sorted(r["shard_index"] for r in rows)
    assert [r["key"] for r in rows if r["shard_index"] == 7] == [f"{7}-{j}" for j in range(4)]
    assert ledger.verify(objects=True).ok


def test_auto_keeps_parquet_from_the_threshold(ledger, data_dir, write_jsonl, corpus):
    shards = _shards(data_dir, write_jsonl, corpus)
    ledger.register_dataset("small", shards, id_field="id", parquet_threshold=41)
    ledger.register_dataset("large", shards, id_field="id", parquet_threshold=40)
    assert [f["dataset_id"] for f in ledger.document_files()] == ["large@1"]
    ledger.register_dataset("default", shards, id_field="id")  # 40 documents: far below 10 million
    assert len(ledger.document_files()) == 1


def test_later_versions_follow_a_parquet_dataset_under_auto(ledger, data_dir, write_jsonl, corpus):
    """A dataset kept as Parquet stays so in its later versions made with ``auto`` (the default):
    a re-registration of changed files, and ``remove_documents``; ``table`` asked still wins."""
    a, b = _shards(data_dir, write_jsonl, corpus)
    ledger.register_dataset("p", [a, b], id_field="id", documents_as="parquet")
    write_jsonl(b, [{"id": f"n{i}", "text": f"a new document number {i} about rivers"} for i in range(7)])
    assert ledger.register_dataset("p", [a, b], id_field="id").dataset.dataset_id == "p@2"
    removed = ledger.remove_documents("p", ["d0", "n3"])
    assert removed.dataset.dataset_id == "p@3" and removed.dataset.n_documents == 30
    assert sorted({f["dataset_id"] for f in ledger.document_files()}) == ["p@1", "p@2", "p@3"]
    assert {r["key"] for r in _rows(ledger, "p@3")} == {r["key"] for r in _rows(ledger, "p@2")} - {"d0", "n3"}
    ledger.remove_documents("p", ["d1"])  # p@4, Parquet too
    write_jsonl(b, [{"id": f"m{i}", "text": f"another document number {i} about hills"} for i in range(3)])
    ledger.register_dataset("p", [a, b], id_field="id", documents_as="table")
    assert ledger.document_files("p@5") == [] and ledger.document_files("p@4") != []
    assert ledger.remove_documents("p", ["d2"]).dataset.dataset_id == "p@6"
    assert ledger.document_files("p@6") == []  # follows the latest version: now the table
    ledger.register_dataset("t", [a], id_field="id")  # a small dataset under auto stays in the table
    ledger.remove_documents("t", ["d3"])
    assert ledger.document_files("t@1") == ledger.document_files("t@2") == []
    assert ledger.verify(objects=True).ok


@pytest.mark.parametrize(("option", "value", "message"), [
    ("documents_as", "duckdb", "documents_as must be one of auto, table, parquet; got 'duckdb'"),
    ("parquet_threshold", 0, "parquet_threshold must be a positive number of documents; got 0"),
    ("parquet_threshold", True, "parquet_threshold must be a positive number of documents; got True"),
])
def test_bad_storage_options_are_refused_before_reading(ledger, option, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        ledger.register_dataset("x", "/nonexistent/file.jsonl", **{option: value})


def test_a_failed_parquet_registration_leaves_nothing(ledger, data_dir, write_jsonl, corpus, ledger_state):
    ledger.register_dataset("keep", _shards(data_dir, write_jsonl, corpus), id_field="id", documents_as="parquet")
    before, files = ledger_state(ledger), _files(ledger)
    bad = write_jsonl(data_dir / "dup.jsonl", [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}])
    with pytest.raises(SourceError, match="duplicate document id"):
        ledger.register_dataset("dup", bad, id_field="id", documents_as="parquet")
    assert ledger_state(ledger) == before and _files(ledger) == files
    assert [f["dataset_id"] for f in ledger.document_files()] == ["keep@1"]


_KILLED = textwrap.dedent("""
    import sys, time
    import provenance.ledger.document_store as places
    from provenance import Ledger

    def stop(folder):  # the files are renamed into place; the commit has not run
        print("renamed", flush=True)
        time.sleep(120)

    places.fsync_folder = stop
    Ledger.open(sys.argv[1]).register_dataset("late", sys.argv[2], id_field="id", documents_as="parquet")
""")


def test_a_registration_killed_before_its_commit(ledger, data_dir, write_jsonl, corpus, ledger_state):
    """SIGKILL between the files' rename and the commit: the ledger is as it was, and ``gc``
    lists the folder no dataset lists, then removes it."""
    a, _ = _shards(data_dir, write_jsonl, corpus)
    before = ledger_state(ledger)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(ledger.root), str(a)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "renamed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ledger = Ledger.open(ledger.root)
    assert ledger_state(ledger) == before and ledger.document_files() == []
    (orphan,) = [p for p in ledger.documents_path.glob("late/*")]
    assert orphan.name.startswith("v1-") and (orphan / "data_0.parquet").is_file()
    from provenance.verify import verify

    report = verify(ledger)  # a leftover, not damage: said (it went unmentioned, as gc found it)
    assert report.ok and report.unlisted_document_folders == [str(orphan)]
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "verify"])
    assert out.exit_code == 0 and f"document folder {orphan} no dataset lists (a killed registration left it" in out.output
    listed = ledger.gc()
    assert listed["document_folders"] == [str(orphan)] and listed["bytes"] == (orphan / "data_0.parquet").stat().st_size
    assert orphan.exists()
    removed = ledger.gc(apply=True)
    assert removed["freed"] == listed["bytes"] and not orphan.exists()
    assert verify(ledger).unlisted_document_folders == []
    assert ledger.register_dataset("late", a, id_field="id", documents_as="parquet").dataset.n_documents == 25


def test_a_damaged_file_is_named_and_the_rest_still_reads(ledger, data_dir, write_jsonl, corpus):
    shards = _shards(data_dir, write_jsonl, corpus)
    ledger.register_dataset("t", shards, id_field="id")
    ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    path = ledger.root / ledger.document_files()[0]["path"]
    whole = path.read_bytes()

    path.write_bytes(whole[: len(whole) // 2])  # cut
    reopened = Ledger.open(ledger.root)  # the ledger still opens
    assert len(reopened.documents("t@1")) == 40
    with pytest.raises(LedgerDamagedError, match=rf"Parquet document file {path} of dataset p@1 is "
                                                  rf"{len(whole) // 2:,} bytes instead of {len(whole):,}"):
        reopened.documents("p@1")
    with pytest.raises(LedgerDamagedError, match="restore it from a backup"):
        reopened.sql("SELECT count(*) FROM documents")
    for targets in (["p"], ["t"]):  # inside a transaction too; an audit joins documents by id, so even one of t
        with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is"):
            reopened.audit_dedup(targets)
    # a filter on a column (a key, an exact hash) does not skip the damaged rows unread: it raises too
    # (the stand-in row was NULL there, so `taint --text` said "0 tainted versions" and a key "no document")
    with pytest.raises(LedgerDamagedError, match="restore it from a backup"):
        reopened.sql("SELECT * FROM documents WHERE dataset_id = 'p@1' AND key = 'd5'")
    with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is"):
        reopened.taint(dataset="p", key=corpus.docs[5]["id"])
    with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is"):
        reopened.taint(text=corpus.docs[5]["text"])
    # another dataset's documents still read, by key too (taint of t's key raised p's error)
    assert reopened.sql("SELECT count(*) AS n FROM documents WHERE dataset_id = 't@1'").to_pylist() == [{"n": 40}]
    key = reopened.sql("SELECT min(key) AS k FROM documents WHERE dataset_id = 't@1'").to_pylist()[0]["k"]
    assert reopened.taint(dataset="t", key=key).target == f"t {key}"
    report = reopened.verify()  # the file's damage once, not also as its shards' "0 document rows"
    assert not report.ok and [p["shard_index"] for p in report.dataset_problems] == [None]
    assert report.dataset_problems[0]["problem"].startswith(f"Parquet document file {path} holds")

    path.unlink()  # gone
    with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is missing"):
        Ledger.open(ledger.root).documents("p@1")

    path.write_bytes(whole[:4] + bytes(len(whole) - 12) + whole[-8:])  # same size, the footer's bytes zeroed
    reopened = Ledger.open(ledger.root)  # the ledger still opens: the view leaves the file out
    assert len(reopened.documents("t@1")) == 40
    with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is unreadable as Parquet"):
        reopened.documents("p@1")
    corrupt = f"Parquet document file {path} does not hash to its recorded xxh3-128 (corrupt); restore it from a backup"
    for rehash in (False, True):  # the rows check fails to read it, and verify then re-hashes to find it
        report = Ledger.open(ledger.root).verify(objects=rehash)
        assert [p["problem"] for p in report.dataset_problems][:1] == [corrupt]

    path.write_bytes(whole)  # restored from a backup
    assert Ledger.open(ledger.root).verify(objects=True).ok


def test_taint_and_retraction_of_checkpoints_read_only_their_datasets(ledger, data_dir, write_jsonl, corpus):
    """A ledger holding checkpoints (of a run that ended and of one still running) and a damaged
    Parquet file of another dataset: taint and retraction of the undamaged dataset count the
    checkpoints' steps without reading the damaged dataset's documents (they failed on its file)."""
    shards = _shards(data_dir, write_jsonl, corpus)
    t = ledger.register_dataset("t", shards, id_field="id").dataset
    ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    base = ledger.commit({"w": torch.zeros(4)}, message="base")
    ended = ledger.start_run(base=base, datasets={t.dataset_id: 1}, message="ended")
    for step in range(3):
        ended.log_examples([f"d{step * 3 + j}" for j in range(3)], step=step)
    at_one = ended.checkpoint({"w": torch.ones(4)}, step=1)
    final = ended.commit({"w": torch.full((4,), 2.0)})
    going = ledger.start_run(base=base, datasets={t.dataset_id: 1}, message="going")
    going.log_examples(["d20", "d21"], step=0)
    going_at_zero = going.checkpoint({"w": torch.full((4,), 3.0)})
    going.flush()
    path = ledger.root / ledger.document_files()[0]["path"]
    path.write_bytes(path.read_bytes()[:100])  # cut

    reopened = Ledger.open(ledger.root)
    with pytest.raises(LedgerDamagedError, match=f"{path} of dataset p@1 is"):
        reopened.documents("p@1")

    def tainted(**target) -> set[str]:
        return {v.version_id for v in reopened.taint(**target).versions}

    assert tainted(dataset="t", key="d7") == {final.version_id}  # first logged at step 2: after the checkpoint
    assert tainted(dataset="t", key="d4") == {final.version_id, at_one.version_id}
    assert tainted(dataset="t", key="d21") == {going_at_zero.version_id}
    assert tainted(dataset="t") == {final.version_id, at_one.version_id, going_at_zero.version_id}
    rec = reopened.retract(dataset="t", key="d4", reason="withdrawn")
    assert {(s["version_id"], s["action"]) for s in rec["steps"]} == {(at_one.version_id, "retrain"),
                                                                      (final.version_id, "retrain")}
    assert [r["run_id"] for r in reopened.lineage(at_one).retracted] == [ended.run_id]


def test_read_only_sql_reads_parquet_rows_and_no_other_file(ledger, data_dir, write_jsonl, corpus, tmp_path):
    ledger.register_dataset("p", _shards(data_dir, write_jsonl, corpus), id_field="id", documents_as="parquet")
    outside = tmp_path / "outside.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), outside)
    count = "SELECT count(*) AS n FROM documents WHERE dataset_id = 'p@1'"
    assert ledger.sql(count).to_pylist() == [{"n": 40}]
    with pytest.raises(ReadOnlyQueryError, match="refused|Permission"):
        ledger.sql(f"SELECT * FROM read_parquet('{outside}')")
    with ledger.session():  # a held session (a server): the query runs on a cursor of its connection
        assert ledger.sql(count).to_pylist() == [{"n": 40}]
        with pytest.raises(ReadOnlyQueryError):
            ledger.sql(f"SELECT * FROM read_parquet('{outside}')")
    read_only = Ledger.open(ledger.root, read_only=True)
    assert read_only.sql(count).to_pylist() == [{"n": 40}]
    assert len(read_only.documents("p@1")) == 40


def test_backup_copies_the_document_files(ledger, data_dir, write_jsonl, corpus, tmp_path):
    ledger.register_dataset("p", _shards(data_dir, write_jsonl, corpus), id_field="id", documents_as="parquet")
    report = ledger.backup(tmp_path / "copy")
    assert report["verified"] and report["document_bytes"] == ledger.document_files()[0]["n_bytes"]
    copy = Ledger.open(tmp_path / "copy")
    assert _rows(copy, "p@1") == _rows(ledger, "p@1")
    assert copy.verify(objects=True).ok


def test_a_backup_of_damaged_files_is_not_verified_ok(ledger, data_dir, write_jsonl, corpus, tmp_path):
    """The backup re-hashes what it copied: a document file and an object with a byte flipped
    (same size, so a presence-and-size check passes) make it DAMAGED, naming each; the file's
    own damage is reported once (not also as its shard's "0 document rows")."""
    import torch

    ledger.register_dataset("p", _shards(data_dir, write_jsonl, corpus), id_field="id", documents_as="parquet")
    version = ledger.commit({"w": torch.arange(4096, dtype=torch.float32)}, message="v")
    for path in (ledger.root / ledger.document_files()[0]["path"],
                 next(ledger.objects_path.glob(f"{ledger.manifest(version)['w'].objects['full'][:2]}/*"))):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    report = ledger.backup(tmp_path / "copy")
    assert not report["verified"]
    problems = report["problems"]
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"object {ledger.manifest(version)['w'].objects['full']} corrupt (needed by "
                                  f"{version.version_id[:12]})")
    assert problems[1].startswith("dataset p@1: Parquet document file") and "corrupt" in problems[1]


def test_cli_documents_as_parquet_and_gc(tmp_path, data_dir, write_jsonl, corpus):
    shards = _shards(data_dir, write_jsonl, corpus)
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path)]).exit_code == 0
    ledger_opt = ["--ledger", str(tmp_path / ".prov")]
    out = runner.invoke(main, [*ledger_opt, "dataset", "add", "p", *map(str, shards), "--id-field", "id",
                               "--documents-as", "parquet", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["dataset"]["n_documents"] == 40
    assert len(Ledger.open(tmp_path).document_files("p@1")) == 1
    out = runner.invoke(main, [*ledger_opt, "dataset", "add", "q", str(shards[0]), "--documents-as", "arrow"])
    assert out.exit_code == 2 and "'arrow' is not one of 'auto', 'table', 'parquet'" in out.output
    out = runner.invoke(main, [*ledger_opt, "dataset", "add", "q", str(shards[0]), "--parquet-threshold", "0"])
    assert out.exit_code == 2 and "0 is not in the range x>=1" in out.output
    out = runner.invoke(main, [*ledger_opt, "sql", "SELECT count(*) AS n FROM documents", "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == [{"n": 40}]
    out = runner.invoke(main, [*ledger_opt, "dataset", "show", "p"])
    assert out.exit_code == 0 and "as Parquet: 1 file, 0.0 MB under .prov/documents/p/" in out.output
    out = runner.invoke(main, [*ledger_opt, "dataset", "show", "p", "--json"])
    assert json.loads(out.output)["documents_as"] == "parquet"
    out = runner.invoke(main, [*ledger_opt, "gc"])
    assert out.exit_code == 0 and "0 unlisted document folders" in out.output


def test_a_ledger_folder_named_with_glob_characters_reads_its_parquet_rows(tmp_path, data_dir, write_jsonl, corpus):
    """DuckDB expands ``[...]`` and ``*`` in a path it reads: in a folder named ``runs [1]`` the
    registration's staged files matched nothing (a traceback, ``No files found``)."""
    folder = "runs [1] *"
    shards = _shards(data_dir, write_jsonl, corpus)
    ledger = Ledger.init(tmp_path / folder)
    ledger.register_dataset("t", shards, id_field="id", documents_as="table")
    kept = ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    assert kept.dataset.n_documents == 40
    again = ledger.register_dataset("p", [*shards, write_jsonl(data_dir / "c.jsonl", [{"id": "new", "text": "x y"}])],
                                    id_field="id", documents_as="parquet")  # copies the unchanged shards' rows
    assert again.dataset.n_documents == 41
    opened = Ledger.open(tmp_path / folder)
    assert _rows(opened, "p@1") == _rows(opened, "t@1") and len(_rows(opened, "p@2")) == 41
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / folder), "sql",
                                       "SELECT dataset_id, count(*) AS n FROM documents GROUP BY 1 ORDER BY 1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"dataset_id": "p@1", "n": 40}, {"dataset_id": "p@2", "n": 41},
                                         {"dataset_id": "t@1", "n": 40}]
    assert opened.verify(objects=True).ok
