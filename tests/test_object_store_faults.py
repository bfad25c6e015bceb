"""Faults of the object store's disk: a damaged object is repaired by the next put of its tensor
(not silently shared), and a folder that cannot be written gives an error naming it and leaves no
version, object or temporary file behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from provenance.errors import NonFiniteError, ObjectCorruptError, ObjectMissingError, ObjectWriteError
from provenance.objects import BackgroundWriter, ObjectStore, address_of


def _bytes(t: torch.Tensor) -> list[int]:
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "bit flip in the data":
        data[-3] ^= 0x10
    elif how == "bit flip in the header":
        data[data.index(b'"shape":[') + 9] ^= 0x01  # another first dimension, same size
    elif how == "truncated":
        del data[-5:]
    elif how == "trailing bytes":
        data += b"\0" * 8
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


DAMAGE = ["bit flip in the data", "bit flip in the header", "truncated", "trailing bytes", "empty"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_object_is_repaired_by_the_next_commit_of_its_tensor(ledger, how):
    w = torch.randn(300, 20)
    v0 = ledger.commit({"w": w, "b": torch.zeros(20)}, message="first")
    store = ObjectStore(ledger.objects_path)
    address = ledger.manifest(v0)["w"].objects["full"]
    _damage(store.path(address), how)
    if how != "trailing bytes":  # which still reads as the tensor, but is not the file a put writes
        with pytest.raises(ObjectCorruptError, match=f"object {address} "):
            ledger.checkout(v0)
    v1 = ledger.commit({"w": w.clone()}, message="the same tensor again")  # a new root: stores "w" whole
    assert ledger.manifest(v1)["w"].objects["full"] == address
    for version in (v0, v1):
        assert _bytes(ledger.checkout(version)["w"]) == _bytes(w)
    assert _bytes(store.get(address)) == _bytes(w)
    assert list(store.temporaries()) == []


def test_an_object_damaged_twice_keeps_both_quarantined_copies(ledger):
    """A second repair of the same object replaced the copy the first put in the quarantine
    (found by stranger pass 53): a repair deletes nothing."""
    w = torch.randn(64)
    v0 = ledger.commit({"w": w}, message="first")
    store = ObjectStore(ledger.objects_path)
    address = ledger.manifest(v0)["w"].objects["full"]
    moved = []
    for round_ in range(3):
        data = bytearray(store.path(address).read_bytes())
        data[-1 - round_] ^= 0x01
        store.path(address).write_bytes(bytes(data))
        moved.append((ledger.verify(objects=True, repair=True).damaged_objects[0].quarantined, bytes(data)))
        ledger.commit({"w": w.clone()}, message=f"again {round_}")  # written afresh
    folder = ledger.root / "quarantine"
    assert [m for m, _ in moved] == [str(folder / f"{address}.safetensors"), str(folder / f"{address}.1.safetensors"),
                                     str(folder / f"{address}.2.safetensors")]
    assert [Path(m).read_bytes() for m, _ in moved] == [data for _, data in moved]
    assert _bytes(ledger.checkout(v0)["w"]) == _bytes(w)


def test_a_child_of_a_damaged_parent_is_refused_until_the_object_is_repaired(ledger):
    w = torch.randn(1000)
    v0 = ledger.commit({"w": w}, message="root")
    address = ledger.manifest(v0)["w"].objects["full"]
    _flip_last_byte(ObjectStore(ledger.objects_path).path(address))
    child = w.clone()
    child[7] = 1.0
    with pytest.raises(ObjectCorruptError, match=f"object {address} .*used by version\\(s\\) {v0.version_id[:12]}"):
        ledger.commit({"w": child}, parent=v0, message="on a damaged parent")
    assert ledger.versions() == [v0]
    ledger.commit({"w": w}, message="the parent's tensor, committed again")  # repairs the object
    v2 = ledger.commit({"w": child}, parent=v0, message="on the repaired parent")
    assert ledger.manifest(v2)["w"].encoding == "sparse"
    assert _bytes(ledger.checkout(v2)["w"]) == _bytes(child)
    assert _bytes(ledger.checkout(v0)["w"]) == _bytes(w)


@pytest.mark.parametrize("with_writer", [False, True], ids=["direct", "background writer"])
def test_put_repairs_a_damaged_object_and_keeps_an_intact_one(tmp_path, with_writer):
    store = ObjectStore(tmp_path / "objects")
    t = torch.arange(5000, dtype=torch.float32)

    def put(tensor) -> tuple[str, list[str], tuple[bool, bool] | None]:
        """The address, the objects the put created, and (direct puts) its created/repaired flags."""
        if not with_writer:
            ref = store.put(tensor)
            return ref.address, [ref.address] if ref.created else [], (ref.created, ref.repaired)
        with BackgroundWriter() as writer:  # the lookup runs on the writer's thread: what it wrote is in writer.created
            ref = store.put(tensor, writer)
            pending = store.put(tensor, writer)  # already submitted: not looked up or written again
            assert pending.address == ref.address
        return ref.address, writer.created, None

    address, created, flags = put(t)
    assert created == [address] and flags in (None, (True, False))
    path = store.path(address)
    inode = path.stat().st_ino
    again, created, flags = put(t.clone())
    assert (again, created, flags in (None, (False, False))) == (address, [], True)
    assert path.stat().st_ino == inode  # intact: not written again
    _flip_last_byte(path)
    repaired, created, flags = put(t.clone())
    assert (repaired, created, flags in (None, (False, True))) == (address, [], True)  # repaired, not created
    assert path.stat().st_ino != inode  # a new file renamed into place
    assert _bytes(store.get(address)) == _bytes(t)
    assert list(store.temporaries()) == []


def test_a_refused_commit_keeps_the_object_it_repaired(ledger):
    w = torch.randn(200)
    v0 = ledger.commit({"a": w}, message="root")
    store = ObjectStore(ledger.objects_path)
    address = ledger.manifest(v0)["a"].objects["full"]
    _flip_last_byte(store.path(address))
    bad = torch.ones(3)
    bad[1] = float("nan")
    with pytest.raises(NonFiniteError, match="'z' holds 1 NaN"):  # "a" is put (and repaired) before "z" is refused
        ledger.commit({"a": w, "z": bad}, message="refused")
    assert ledger.versions() == [v0]
    assert _bytes(ledger.checkout(v0)["a"]) == _bytes(w)  # repaired, and not removed with the refused commit
    assert list(store.addresses()) == [address]


def _temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def _assert_nothing_written(ledger, before: list[str]) -> None:
    store = ObjectStore(ledger.objects_path)
    assert sorted(store.addresses()) == before
    assert _temporaries(ledger.root) == []


def test_a_file_where_an_object_folder_should_be_is_named(ledger):
    v0 = ledger.commit({"keep": torch.zeros(10)}, message="root")
    before = sorted(ObjectStore(ledger.objects_path).addresses())
    blocked = torch.full((64,), 2.5)
    address = address_of(blocked)
    others = {f"p{i}": torch.full((64,), float(i)) for i in range(6)}  # most of them in other folders, written
    folder = ledger.objects_path / address[:2]
    assert not folder.exists()
    folder.write_bytes(b"not a folder")
    with pytest.raises(ObjectWriteError) as caught:
        ledger.commit({**others, "x": blocked}, parent=v0, message="blocked")
    assert str(caught.value) == f"cannot write object {address} into {folder}: it is a file, not a folder"
    assert caught.value.folder == str(folder)
    assert isinstance(caught.value, OSError)
    assert ledger.versions() == [v0]
    _assert_nothing_written(ledger, before)
    folder.unlink()
    v1 = ledger.commit({**others, "x": blocked}, parent=v0, message="unblocked")
    assert _bytes(ledger.checkout(v1)["x"]) == _bytes(blocked)


def test_an_objects_root_that_is_a_file_is_named(ledger):
    v0 = ledger.commit({"keep": torch.zeros(10)}, message="root")
    moved = ledger.root / "objects.moved"
    ledger.objects_path.rename(moved)
    ledger.objects_path.write_bytes(b"")
    t = torch.randn(10)
    with pytest.raises(ObjectWriteError, match=f"^cannot write object {address_of(t)} into {ledger.objects_path}: "
                                               "it is a file, not a folder$"):
        ledger.commit({"keep": t}, message="no store")
    with pytest.raises(ObjectMissingError, match=f"is missing from {ledger.objects_path} \\(it is a file, not a "
                                                 "folder\\); used by version"):
        ledger.checkout(v0)
    assert ledger.versions() == [v0]
    assert _temporaries(ledger.root) == []
    ledger.objects_path.unlink()
    moved.rename(ledger.objects_path)
    assert _bytes(ledger.checkout(v0)["keep"]) == _bytes(torch.zeros(10))


def test_a_store_under_a_file_is_named_without_a_ledger(tmp_path):
    (tmp_path / "plain").write_bytes(b"")
    store = ObjectStore(tmp_path / "plain" / "objects")  # ENOTDIR, whoever runs it
    t = torch.ones(4)
    with pytest.raises(ObjectWriteError, match=f"cannot write object {address_of(t)} into {tmp_path / 'plain'}: "
                                               "it is a file, not a folder"):
        store.put(t)
    with pytest.raises(ObjectWriteError, match="it is a file, not a folder"):
        with BackgroundWriter() as writer:
            store.put(t, writer)


def _writes_into_read_only_folders(tmp_path: Path) -> bool:
    """Whether this process ignores folder permissions (root, with CAP_DAC_OVERRIDE)."""
    probe = tmp_path / "read-only probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "f").touch()
    except PermissionError:
        return False
    finally:
        probe.chmod(0o755)
    return True


def test_a_read_only_objects_folder_is_named(ledger, tmp_path):
    if _writes_into_read_only_folders(tmp_path):
        pytest.skip("running as root (uid 0 with CAP_DAC_OVERRIDE), which writes into read-only folders; the tests "
                    "above make the same failure with a file where a folder should be")
    v0 = ledger.commit({"keep": torch.zeros(10)}, message="root")
    before = sorted(ObjectStore(ledger.objects_path).addresses())
    folders = [ledger.objects_path, *(p for p in ledger.objects_path.iterdir() if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        with pytest.raises(ObjectWriteError, match=r"cannot write object [0-9a-f]{32} into .*objects.*: Permission denied"):
            ledger.commit({f"p{i}": torch.full((16,), float(i)) for i in range(8)}, parent=v0, message="read-only")
        assert ledger.versions() == [v0]
        _assert_nothing_written(ledger, before)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    v1 = ledger.commit({f"p{i}": torch.full((16,), float(i)) for i in range(8)}, parent=v0, message="writable")
    assert _bytes(ledger.checkout(v1)["p3"]) == _bytes(torch.full((16,), 3.0))


def test_a_read_only_objects_folder_is_named_without_root_powers():
    """As root the test above skips; here it runs again in a child process with every capability
    dropped (``setpriv``), where folder permissions hold for root too."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (the test above runs for real without root)")
    test = f"{Path(__file__).resolve()}::test_a_read_only_objects_folder_is_named"
    done = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "pytest", "-q",
                           "-p", "no:cacheprovider", test], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_a_checkout_through_a_damaged_ancestor_names_the_version_asked_for(ledger):
    """A child stored as a sparse patch is built on its parent's full copy: damage there names
    the parent as the object's user, and now also the child asked for, and the parameter."""
    w = torch.randn(1000)
    v0 = ledger.commit({"w": w}, message="root")
    child = w.clone()
    child[7] = 1.0
    v1 = ledger.commit({"w": child}, parent=v0, message="sparse child")
    assert ledger.manifest(v1)["w"].encoding == "sparse"
    address = ledger.manifest(v0)["w"].objects["full"]
    _flip_last_byte(ObjectStore(ledger.objects_path).path(address))
    with pytest.raises(ObjectCorruptError, match=f"object {address} .*used by version\\(s\\) {v0.version_id[:12]}; "
                                                 f"version {v1.version_id[:12]}.*, asked for, builds its parameter 'w' on it"):
        ledger.checkout(v1)


def test_a_damaged_object_s_error_says_what_to_do(ledger, tmp_path):
    """Read by a checkout, a merge and a child's commit, a corrupt or missing object is named with
    its file, the versions that need it and what to do (it said only what was wrong)."""
    w = torch.randn(1000)
    v0 = ledger.commit({"w": w}, message="root")
    v1 = ledger.commit({"w": w + 1}, parent=v0, message="other")
    path = ObjectStore(ledger.objects_path).path(ledger.manifest(v0)["w"].objects["full"])
    todo = "`prov verify` lists every damaged object with the versions that need it: commit a checkpoint"
    _flip_last_byte(path)
    for read in (lambda: ledger.checkout(v0), lambda: ledger.merge([v0, v1], method="average", message="m"),
                 lambda: ledger.commit({"w": w * 2}, parent=v0, message="child")):
        with pytest.raises(ObjectCorruptError, match=f"{path}.*used by version\\(s\\) {v0.version_id[:12]}.*{todo}"):
            read()
    path.unlink()
    with pytest.raises(ObjectMissingError, match=f"is missing from {ledger.objects_path}; used by version.*{todo}"):
        ledger.checkout(v0)
    ledger.commit({"w": w}, message="again")  # doing what it says: the object is written afresh
    assert torch.equal(ledger.checkout(v0)["w"], w)


def test_an_objects_folder_that_is_gone_is_said_to_be_gone(ledger):
    """`.prov/objects` moved or deleted: each missing object's error says that the folder itself
    is gone (it read as if objects had gone one by one), for a checkout and for `prov verify`."""
    import shutil

    from provenance.verify import verify

    v0 = ledger.commit({"w": torch.randn(100)}, message="root")
    shutil.rmtree(ledger.objects_path)
    with pytest.raises(ObjectMissingError, match=f"is missing from {ledger.objects_path} \\(the folder itself does not "
                                                 "exist: moved or deleted\\?\\); used by version"):
        ledger.checkout(v0)
    (damaged,) = verify(ledger).damaged_objects
    assert damaged.problem == "missing" and f"(nor does {ledger.objects_path} itself: moved or deleted?)" in damaged.detail


_COMMIT_WRITING = """
import os, sys, time
from provenance import Ledger

ledger = Ledger.open(sys.argv[1])
with ledger.session():  # a commit holds the ledger's lock from its first object written to its row
    with open(sys.argv[2], "wb") as fh:
        fh.write(b"the first bytes of an object")
    print("writing", flush=True)
    time.sleep(3)
    os.replace(sys.argv[2], sys.argv[3])
"""


def test_verify_repair_leaves_what_commits_write_while_it_checks(ledger):
    """`verify(repair=True)` checks the objects without the ledger's lock (a large store takes
    minutes; commits go on meanwhile), then quarantined what it had found damaged and removed
    every temporary file without taking the lock again: an object a commit had written afresh
    meanwhile was moved from under the new version, and the temporary file of a commit writing
    in another process was removed, failing that commit."""
    import subprocess
    import sys

    from provenance.files import host_label
    from provenance.verify import verify

    tensor = torch.arange(16.0)
    ledger.commit({"w": tensor}, message="base")
    store = ledger.object_store()
    path = store.path(address_of(tensor))
    _damage(path, "bit flip in the data")
    tmp = path.parent / f".other.safetensors.{host_label()}-1-abc.tmp"
    writer: list[subprocess.Popen] = []
    again: list = []

    class Meanwhile:  # what other processes do while verify checks the objects
        def start(self, description, total):
            pass

        def advance(self, amount):
            if again:
                return
            again.append(ledger.commit({"w": tensor, "b": torch.ones(2)}, message="again"))  # writes `w` afresh
            proc = subprocess.Popen([sys.executable, "-c", _COMMIT_WRITING, str(ledger.root), str(tmp),
                                     str(path.parent / "other.safetensors")], stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline() == "writing\n"
            writer.append(proc)

    report = verify(ledger, objects=True, repair=True, progress=Meanwhile())

    assert writer[0].wait(60) == 0  # its write finished: verify waited for the lock before removing temporaries
    assert (path.parent / "other.safetensors").read_bytes() == b"the first bytes of an object"
    assert report.damaged_objects == [] and report.ok  # sound again when it came to move it
    assert not (ledger.root / "quarantine").exists()
    assert torch.equal(ledger.checkout(again[0])["w"], tensor)
