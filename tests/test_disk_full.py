"""A disk that refuses a write, for real: each ``prov`` command runs in a subprocess whose file size
limit (``RLIMIT_FSIZE``) is below what it must write, so the kernel fails the write that crosses it
with ``EFBIG`` ("File too large") at the same calls a full disk fails with ``ENOSPC``. The error
must name the file, and the ledger (and the user's folder) must be left as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance import Ledger
from provenance.errors import ObjectWriteError, ProvenanceError
from tests import serving

resource = pytest.importorskip("resource")  # POSIX only

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file size limit on this system")


def prov(root: Path, *args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    """``prov --ledger ROOT ARGS`` in a fresh process, its files held under ``limit`` bytes each."""

    def hold() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "provenance.cli.main", "-q", "--ledger", str(root), *args],
                          capture_output=True, text=True, preexec_fn=hold, env=env, timeout=300)


def _corpus(path: Path, n: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, 20_000, (n, 60), generator=g).tolist()
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(f"w{w}" for w in row)}) + "\n"
                            for i, row in enumerate(words)))
    return path


def _state(root: Path) -> tuple:
    ledger = Ledger.open(root, read_only=True)
    counts = ledger.sql("SELECT (SELECT count(*) FROM documents) AS d, (SELECT count(*) FROM datasets) AS s, "
                        "(SELECT count(*) FROM versions) AS v").to_pylist()[0]
    staging = root / ".prov" / "tmp" / "staging"
    return counts, sorted(p.name for p in staging.iterdir()) if staging.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    Ledger.init(folder)
    return folder


def test_a_registration_past_the_limit_names_the_staged_file_and_registers_nothing(root, tmp_path):
    corpus = _corpus(tmp_path / "corpus.jsonl", 12_000, seed=1)
    before = _state(root)
    done = prov(root, "dataset", "add", "web", str(corpus), limit=2_000_000)
    assert done.returncode == 4, done.stderr
    found = re.fullmatch(r"Error: (\S+): File too large\n", done.stderr)
    assert found, done.stderr
    staged = Path(found.group(1))
    assert staged.parent == root / ".prov" / "tmp" / "staging" and staged.name.startswith("documents-")
    assert not staged.exists()
    assert _state(root) == before
    assert prov(root, "verify").returncode == 0

    done = prov(root, "dataset", "add", "web", str(corpus))  # the limit lifted: the same command registers
    assert done.returncode == 0, done.stderr
    assert _state(root) == ({"d": 12_000, "s": 1, "v": 0}, [])


def test_a_registration_whose_checkpoint_is_refused_is_kept_in_the_log(root, tmp_path):
    first, second = _corpus(tmp_path / "a.jsonl", 3_000, seed=2), _corpus(tmp_path / "b.jsonl", 3_000, seed=3)
    assert prov(root, "dataset", "add", "a", str(first)).returncode == 0
    db = root / ".prov" / "ledger.duckdb"
    # The staged rows (about 2 MB) and the write-ahead log fit; the database file may not grow by more than
    # 100 kB, so the checkpoint DuckDB makes when the command closes the ledger fails.
    done = prov(root, "dataset", "add", "b", str(second), limit=db.stat().st_size + 100_000)
    assert done.returncode == 0, done.stderr
    assert "registered b@1" in done.stdout
    wal = db.with_name(db.name + ".wal")
    assert wal.exists() and wal.stat().st_size > 0  # the commit is in the log, not yet in the file
    assert _state(root) == ({"d": 6_000, "s": 2, "v": 0}, [])  # opening replays it
    assert prov(root, "verify").returncode == 0
    again = prov(root, "dataset", "add", "b", str(second))  # the limit lifted: a writer's close folds the log in
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    assert not wal.exists() or wal.stat().st_size == 0
    assert _state(root) == ({"d": 6_000, "s": 2, "v": 0}, [])


def test_a_checkout_past_the_limit_names_the_output_and_leaves_nothing(root, tmp_path):
    state = {"w": torch.randn(1024, 1024), "b": torch.randn(1024)}  # 4 MB
    version = Ledger.open(root).commit(state, message="base").version_id
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    done = prov(root, "model", "checkout", version, "-o", str(out), limit=1_000_000)
    assert done.returncode == 4, done.stderr
    assert done.stderr == f"Error: {out}: File too large\n"
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary

    assert prov(root, "model", "checkout", version, "-o", str(out)).returncode == 0
    got = load_file(out)
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_commit_past_the_limit_names_the_objects_folder_and_stores_nothing(root, tmp_path):
    ledger = Ledger.open(root)
    base = ledger.commit({"keep": torch.zeros(10)}, message="root").version_id
    model = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(1024, 1024)}, model)
    before = sorted(p.relative_to(root) for p in (root / ".prov" / "objects").rglob("*"))
    done = prov(root, "model", "commit", str(model), "--parent", base, "-m", "too big", limit=1_000_000)
    assert done.returncode == 4, done.stderr
    assert re.fullmatch(rf"Error: cannot write object [0-9a-f]{{32}} into {re.escape(str(root / '.prov' / 'objects'))}"
                        r"/[0-9a-f]{2}: File too large\n", done.stderr), done.stderr
    after = sorted(p.relative_to(root) for p in (root / ".prov" / "objects").rglob("*") if p.is_file())
    assert after == [p for p in before if (root / p).is_file()]  # no object, no temporary
    assert [v.version_id for v in Ledger.open(root, read_only=True).versions()] == [base]


def test_a_backup_past_the_limit_names_both_files_and_is_removed(root, tmp_path, write_jsonl):
    ledger = Ledger.open(root)
    ledger.commit({"w": torch.randn(512, 1024)}, message="2 MB")
    new, empty, nested = tmp_path / "new-backup", tmp_path / "empty-backup", tmp_path / "made" / "by" / "backup"
    empty.mkdir()
    for dest, left in ((new, False), (empty, True), (nested, False)):
        done = prov(root, "backup", str(dest), limit=1_000_000)
        assert done.returncode == 4, done.stderr
        found = re.fullmatch(r"Error: cannot copy (\S+) to (\S+): File too large\n", done.stderr)
        assert found, done.stderr
        assert Path(found.group(1)).is_relative_to(root / ".prov")
        assert Path(found.group(2)).is_relative_to(dest / ".prov.partial")
        assert dest.exists() is left  # a folder the backup made is removed; one given empty stays, empty
        assert not left or list(dest.iterdir()) == []
    assert not (tmp_path / "made").exists()  # the parents it made too (made/by was left behind)

    done = prov(root, "backup", str(new), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verified"] is True
    assert sorted(p.name for p in new.iterdir()) == [".prov"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, whose process may write no file past 3 MB."""
    with serving.running(tmp_path_factory.mktemp("served"), file_size_limit=3_000_000) as srv:
        yield srv


def test_a_servers_full_disk_is_a_507_naming_its_file_and_applies_nothing(server, tmp_path):
    client = server.ledger()
    base = client.commit({"keep": torch.zeros(10)}, message="root")
    with pytest.raises(ObjectWriteError, match=rf"^cannot write object [0-9a-f]{{32}} into "
                                               rf"{re.escape(str(server.root / '.prov' / 'objects'))}/[0-9a-f]{{2}}: "
                                               "File too large$"):
        client.commit({"w": torch.randn(1024, 1024)}, parent=base, message="4 MB")  # the object is past the limit
    assert [v.version_id for v in client.versions()] == [base.version_id]

    corpus = _corpus(tmp_path / "corpus.jsonl", 12_000, seed=4)  # an upload of about 9 MB
    with pytest.raises(ProvenanceError, match=r"server error 507: \S+/\.prov/tmp/uploads/\S+\.arrows: File too large$"):
        client.register_dataset("web", corpus)
    assert client.datasets() == []
    assert list((server.root / ".prov" / "tmp" / "uploads").iterdir()) == []

    small = _corpus(tmp_path / "small.jsonl", 200, seed=5)  # the server still serves what fits
    assert client.register_dataset("small", small).dataset.n_documents == 200
    assert server.proc.poll() is None


_ACTOR = """
import json, sys
from pathlib import Path

import pyarrow as pa

from provenance.fingerprints import FingerprintConfig
from provenance.integrations.ray_data import _Fingerprinter
from provenance.sources import ReadOptions

actor = object.__new__(_Fingerprinter)  # the actor's call, without a Ray to start it
actor.cfg, actor.opts, actor.staging, actor.device = FingerprintConfig(), ReadOptions(), Path(sys.argv[2]), None
actor.threads = 1
spec = {"index": 3, "uri": sys.argv[1], "name": "c.jsonl", "format": "jsonl", "display": sys.argv[1]}
print(json.dumps(actor(pa.Table.from_pylist([spec]))))
"""


def test_a_ray_actors_part_past_the_limit_comes_back_as_an_error_naming_it(tmp_path):
    pytest.importorskip("ray")
    from provenance.integrations.ray_data import _raise_error

    corpus = _corpus(tmp_path / "c.jsonl", 12_000, seed=6)
    staging = tmp_path / "staging"
    staging.mkdir()
    done = subprocess.run([sys.executable, "-c", _ACTOR, str(corpus), str(staging)], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000)),
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    part = staging / "part-000003.parquet"
    assert out["error"] == [json.dumps(["OSError", [27, "File too large", str(part)]])]
    assert out["shard"] == [None]
    with pytest.raises(OSError) as caught:  # what the driver raises from the row
        _raise_error({"error": out["error"][0]})
    assert (caught.value.errno, caught.value.filename, str(caught.value)) == (
        27, str(part), f"[Errno 27] File too large: '{part}'")


_STALLED_BACKUP = """
import sys, time

import provenance.backup as backup
from provenance import Ledger

copy_objects = backup._copy_objects


def stalled(*args, **kwargs):  # the objects copied, then held there until the parent kills this process
    done = copy_objects(*args, **kwargs)
    print("copied", flush=True)
    time.sleep(120)
    return done


backup._copy_objects = stalled
Ledger.open(sys.argv[1]).backup(sys.argv[2])
"""


def test_a_backup_killed_half_way_is_not_taken_for_a_ledger(root, tmp_path):
    from provenance.errors import LedgerNotFoundError

    Ledger.open(root).commit({"w": torch.randn(256, 256)}, message="base")
    dest = tmp_path / "killed-backup"
    child = subprocess.Popen([sys.executable, "-c", _STALLED_BACKUP, str(root), str(dest)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline() == "copied\n"
    finally:
        child.kill()
        child.wait(30)
    assert sorted(p.name for p in dest.iterdir()) == [".prov.partial"]
    with pytest.raises(LedgerNotFoundError, match="holds .prov.partial, the copy of a backup that was stopped before "
                                                  "it finished; take the backup again"):
        Ledger.open(dest)
    done = prov(root, "backup", str(dest))
    assert done.returncode == 4
    assert done.stderr == (f"Error: backup destination {dest} holds .prov.partial, the copy of a backup that was "
                           "stopped before it finished; remove it, or give another folder\n")
    shutil.rmtree(dest / ".prov.partial")
    assert prov(root, "backup", str(dest)).returncode == 0
    assert [v.message for v in Ledger.open(dest, read_only=True).versions()] == ["base"]


def test_an_audit_whose_log_write_is_refused_keeps_nothing_and_says_so(root, tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", 2_000, seed=7)
    lines = corpus.read_text().splitlines(keepends=True)
    corpus.write_text("".join(lines) + "".join(line.replace('"id": "d', '"id": "copy-d') for line in lines))
    assert prov(root, "dataset", "add", "dups", str(corpus)).returncode == 0
    # The audit reads, then commits its report and 2,000 pairs: its write-ahead log passes 50 kB.
    done = prov(root, "audit", "dedup", "dups", limit=50_000)
    assert done.returncode == 4, done.stderr
    wal = root / ".prov" / "ledger.duckdb.wal"
    assert done.stderr == (f'Error: the disk refused a write (TransactionContext Error: Failed to commit: Could not '
                           f'write file "{wal}": File too large); nothing of this command was kept: free space (or '
                           "raise the quota) and run it again\n")
    ledger = Ledger.open(root, read_only=True)
    assert ledger.audits() == []
    assert ledger.sql("SELECT count(*) AS n FROM audit_pairs").to_pylist() == [{"n": 0}]

    done = prov(root, "audit", "dedup", "dups", "--json")  # with room: the same audit, stored
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["pairs"] == 2_000
    assert len(Ledger.open(root, read_only=True).audits()) == 1


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir()
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def _fill(folder: Path, leave: int) -> Path:
    """A file that takes all of ``folder``'s file system but ``leave`` bytes."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def test_a_server_on_a_full_disk_answers_507_and_serves_again_when_there_is_room(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 48):
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        with serving.running(disk / "ledger") as server:
            client = server.ledger()
            base = client.commit({"keep": torch.zeros(10)}, message="root")
            filler = _fill(disk, leave=0)  # full: the object, the upload and the access log row are all refused
            with pytest.raises(ObjectWriteError, match=r"cannot write object [0-9a-f]{32} into .*/objects/[0-9a-f]{2}: "
                                                       "No space left on device$"):
                client.commit({"w": torch.randn(256, 1024)}, parent=base, message="1 MB")
            corpus = _corpus(tmp_path / "corpus.jsonl", 2_000, seed=8)
            with pytest.raises(ProvenanceError, match=r"server error 507: \S+/tmp/uploads/\S+\.arrows: "
                                                      "No space left on device$"):
                client.register_dataset("web", corpus)
            # The access-log rows of those refusals fit in the log's last page; more refusals fill it, and
            # then the row of each is refused too, while its answer is still the 507.
            for _ in range(200):
                if "could not keep the access log row" in server.output():
                    break
                with pytest.raises(ObjectWriteError, match="No space left on device$"):
                    client.commit({"w": torch.randn(256, 1024)}, parent=base, message="1 MB")
            assert "could not keep the access log row: the disk refused a write" in server.output()
            filler.unlink()  # room again: the same writes go through
            v1 = client.commit({"w": torch.randn(256, 1024)}, parent=base, message="1 MB")
            assert client.register_dataset("web", corpus).dataset.n_documents == 2_000
            assert [v.version_id for v in client.versions()][:2] == [v1.version_id, base.version_id]
            assert list((server.root / ".prov" / "tmp" / "uploads").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_pairs_file_on_a_full_disk_is_named_and_the_audit_not_kept(root, tmp_path):
    corpus = _corpus(tmp_path / "c.jsonl", 2_000, seed=9)
    lines = corpus.read_text().splitlines(keepends=True)
    corpus.write_text("".join(lines) + "".join(line.replace('"id": "d', '"id": "copy-d') for line in lines))
    assert prov(root, "dataset", "add", "dups", str(corpus)).returncode == 0
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 2):
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        _fill(disk, leave=16 << 10)  # the ledger has room; the folder of the pairs file has 16 kB
        out = disk / "pairs.parquet"
        done = prov(root, "audit", "dedup", "dups", "--pairs", str(out))
        assert done.returncode == 4, done.stderr
        assert done.stderr == f"Error: {out}: No space left on device\n"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no pairs file, no temporary
        assert Ledger.open(root, read_only=True).audits() == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
