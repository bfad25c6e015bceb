"""A ledger whose tensor objects are in a bucket (``prov init --objects s3://...``), against a real
S3 API server (moto's server mode) on 127.0.0.1, started once for the module; one ``prov serve``
on such a ledger for the service test.

The same commits go into a ledger with a local object folder and one with a bucket: the versions,
manifests and checked-out tensors must be identical. Then what a bucket does to objects: one
truncated, replaced or deleted under the ledger, an upload killed half-way (a real SIGKILL of a
committing process), a prefix another ledger owns, a bucket that does not exist.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("moto")

from provenance import Ledger  # noqa: E402
from provenance.backup import backup  # noqa: E402
from provenance.cli.main import main  # noqa: E402
from provenance.errors import (  # noqa: E402
    InvalidParameterError,
    LedgerDamagedError,
    NonFiniteError,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectWriteError,
    SourceError,
    StorageUnreachableError,
)
from provenance.object_buckets import MARKER, BucketObjectStore  # noqa: E402
from provenance.objects import address_of  # noqa: E402
from provenance.versions import gc  # noqa: E402
from tests import s3server, serving  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3server.running(tmp_path_factory.mktemp("moto")) as server:
        server.bucket("models")
        yield server


_PREFIXES = iter(range(10_000))


@pytest.fixture
def bucket_ledger(s3, tmp_path):
    """A new ledger whose objects are under a prefix of its own in the bucket ``models``."""
    return Ledger.init(tmp_path / "bucketed", objects=f"s3://models/t{next(_PREFIXES)}/objects")


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"embed.weight": torch.randn(64, 32, generator=g), "head.weight": torch.randn(32, 16, generator=g),
            "head.bias": torch.zeros(16), "tail.bias": torch.zeros(16),  # one object, read twice
            "norm.weight": torch.randn(32, generator=g).to(torch.bfloat16)}


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _history(ledger: Ledger) -> list:
    base = _state(0)
    v0 = ledger.commit(base, message="base", author="ann")
    sparse = {k: v.clone() for k, v in base.items()}
    sparse["embed.weight"][3, :5] += 1.0
    v1 = ledger.commit(sparse, parent=v0, message="sparse", author="ann")
    low = {k: v.clone() for k, v in base.items()}
    b, a = torch.linspace(0, 1, 32).reshape(32, 1), torch.linspace(1, 2, 16).reshape(1, 16)
    low["head.weight"] = low["head.weight"] + 0.5 * (b @ a)
    v2 = ledger.commit(low, parent=v0, message="low rank", author="bo", low_rank={"head.weight": (b, a, 0.5)})
    merged = ledger.merge([v1, v2], method="average", message="average")
    return [v0, v1, v2, merged]


def _objects(s3, prefix: str) -> dict[str, int]:
    infos = s3.fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
    return {i.path.removeprefix(prefix + "/"): i.size for i in infos if i.type == pafs.FileType.File}


def test_a_bucket_ledger_stores_and_checks_out_exactly_what_a_local_one_does(s3, tmp_path, bucket_ledger):
    local = Ledger.init(tmp_path / "local")
    ours, theirs = _history(bucket_ledger), _history(local)
    assert [v.version_id for v in ours] != []  # versions carry their time: compare content, not ids
    for a, b in zip(ours, theirs, strict=True):
        assert {n: (p.encoding, p.objects) for n, p in bucket_ledger.manifest(a).items()} == \
               {n: (p.encoding, p.objects) for n, p in local.manifest(b).items()}
        got, want = bucket_ledger.checkout(a), local.checkout(b)
        assert {n: (t.dtype, _bytes(t)) for n, t in got.items()} == {n: (t.dtype, _bytes(t)) for n, t in want.items()}
    assert bucket_ledger.manifest(ours[1])["embed.weight"].encoding == "sparse"
    assert bucket_ledger.manifest(ours[2])["head.weight"].encoding == "low_rank"
    # the objects are in the bucket, laid out as the local folder is, and not in the ledger folder
    prefix = bucket_ledger.objects_url.removeprefix("s3://")
    in_bucket = _objects(s3, prefix)
    local_files = {f"{p.parent.name}/{p.name}": p.stat().st_size for p in local.objects_path.rglob("*.safetensors")}
    assert {k: v for k, v in in_bucket.items() if k != MARKER} == local_files
    assert json.loads(s3.fs.open_input_stream(f"{prefix}/{MARKER}").read())["ledger"] == str(bucket_ledger.root)
    assert list(bucket_ledger.objects_path.iterdir()) == []
    report = bucket_ledger.verify(objects=True)
    assert report.ok and report.objects_checked == len(local_files)
    # opened again (a new process would), the ledger still finds its bucket
    again = Ledger.open(bucket_ledger.root.parent)
    assert again.objects_url == bucket_ledger.objects_url
    assert _bytes(again.checkout(ours[-1])["head.weight"]) == _bytes(local.checkout(theirs[-1])["head.weight"])


def test_prov_init_objects_on_the_command_line(s3, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(tmp_path / "p"), "--objects", "s3://models/cli/objects/", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["objects"] == "s3://models/cli/objects"
    # a second ledger on the same prefix is refused, and nothing is created for it
    result = runner.invoke(main, ["init", str(tmp_path / "q"), "--objects", "s3://models/cli/objects"])
    assert result.exit_code != 0
    assert "already holds the files of ledger" in result.output and str(tmp_path / "p") in result.output
    assert not (tmp_path / "q" / ".prov").exists()


def test_init_refuses_what_cannot_be_a_ledger_s_bucket(s3, tmp_path):
    with pytest.raises(ObjectWriteError, match=r"s3://no-such-bucket/x.*is the bucket there"):
        Ledger.init(tmp_path / "a", objects="s3://no-such-bucket/x")
    assert not (tmp_path / "a" / ".prov").exists()
    s3.put("models/used/objects/ab/cdef.safetensors", b"something")
    with pytest.raises(InvalidParameterError, match="already holds objects"):
        Ledger.init(tmp_path / "b", objects="s3://models/used/objects")
    # (it said: credentials in a source URL are refused (the URL is stored with the shard))
    with pytest.raises(SourceError, match=r"^s3://models/x: credentials in an object store URL are refused \(the URL "
                                          r"is stored in the ledger\)"):
        Ledger.init(tmp_path / "c", objects="s3://key:secret@models/x")
    with pytest.raises(SourceError, match=r"^s3://models/d\?x=1: a document store URL takes no query"):
        Ledger.init(tmp_path / "c", documents="s3://models/d?x=1")
    assert not (tmp_path / "c").exists()
    with pytest.raises(InvalidParameterError, match="not a URL"):
        Ledger.init(tmp_path / "d", objects="models/x")
    # a failed init keeps no claim: the objects prefix it marked is free again (it named a ledger never made)
    s3.put("models/taken/ab/cdef.safetensors", b"something")
    with pytest.raises(InvalidParameterError, match=r"s3://models/taken already holds objects"):
        Ledger.init(tmp_path / "f", objects="s3://models/free/objs", documents="s3://models/taken")
    assert not (tmp_path / "f").exists() and MARKER not in _objects(s3, "models/free/objs")
    Ledger.init(tmp_path / "g", objects="s3://models/free/objs")  # not refused for the ledger never made
    with pytest.raises(InvalidParameterError, match=r"--objects s3://models/n2 and --documents s3://models/n2/docs "
                                                    r"are nested"):
        Ledger.init(tmp_path / "h", objects="s3://models/n2", documents="s3://models/n2/docs")
    # the same ledger folder made again takes its prefix back (an init that failed, a ledger removed)
    first = Ledger.init(tmp_path / "e", objects="s3://models/again")
    first.commit({"w": torch.ones(3)}, message="before")
    import shutil

    shutil.rmtree(first.root)
    second = Ledger.init(tmp_path / "e", objects="s3://models/again")
    v = second.commit({"w": torch.ones(3)}, message="after")
    assert second.manifest(v)["w"].objects == first.manifest(first.versions()[0])["w"].objects


def test_damaged_objects_in_the_bucket_are_named_found_and_repaired(s3, bucket_ledger):
    w = torch.randn(200, 30)
    v0 = bucket_ledger.commit({"w": w, "b": torch.zeros(30)}, message="first")
    store = bucket_ledger.object_store()
    address = bucket_ledger.manifest(v0)["w"].objects["full"]
    key = store.location(address).removeprefix("s3://")
    whole = s3.fs.open_input_stream(key).read()

    s3.put(key, whole[:-5])  # cut short
    with pytest.raises(ObjectCorruptError, match=f"object {address} .*s3://{key}.*used by version"):
        bucket_ledger.checkout(v0)
    report = bucket_ledger.verify()
    assert [(d.address, d.problem) for d in report.damaged_objects] == [(address, "truncated")]

    flipped = bytearray(whole)
    flipped[-3] ^= 0x10  # same size, same header: only the hash tells
    s3.put(key, bytes(flipped))
    assert bucket_ledger.verify().ok  # the cheap check reads the header and the size
    report = bucket_ledger.verify(objects=True)
    assert [(d.address, d.problem) for d in report.damaged_objects] == [(address, "corrupt")]
    with pytest.raises(ObjectCorruptError, match="its content hashes to"):
        bucket_ledger.checkout(v0)
    report = bucket_ledger.verify(objects=True, repair=True)
    moved = report.damaged_objects[0].quarantined
    assert moved == f"{store.url}/quarantine/{address}.safetensors"
    assert s3.fs.open_input_stream(moved.removeprefix("s3://")).read() == bytes(flipped)  # kept, not deleted
    assert address not in store and address not in set(store.addresses())
    bucket_ledger.commit({"w": w.clone()}, message="the same tensor again")  # writes it afresh
    assert bucket_ledger.verify(objects=True).ok
    assert _bytes(bucket_ledger.checkout(v0)["w"]) == _bytes(w)
    s3.put(key, bytes(flipped))  # damaged again: the second repair keeps the first copy (it replaced it)
    again = bucket_ledger.verify(objects=True, repair=True).damaged_objects[0].quarantined
    assert again == f"{store.url}/quarantine/{address}.1.safetensors"
    assert s3.fs.open_input_stream(moved.removeprefix("s3://")).read() == bytes(flipped)
    bucket_ledger.commit({"w": w.clone()}, message="and again")

    s3.delete(key)
    with pytest.raises(ObjectMissingError, match=f"object {address} is missing from s3://"):
        bucket_ledger.checkout(v0)
    report = bucket_ledger.verify()
    assert [(d.address, d.problem, d.versions) for d in report.damaged_objects] == \
           [(address, "missing", sorted(v.version_id for v in bucket_ledger.versions()))]


def test_an_unreachable_bucket_is_an_error_not_damage(s3, bucket_ledger, monkeypatch):
    """With the bucket unreachable, `verify` listed every object as missing (exit 1: damage) and
    `--repair` could move a sound object aside after one failed request. It is now an error that
    names the bucket (exit 4), and nothing is moved."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    v0 = bucket_ledger.commit({"w": torch.randn(50, 10)}, message="first")
    before = _objects(s3, bucket_ledger.object_store().url.removeprefix("s3://"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with pytest.raises(StorageUnreachableError, match=r"s3://models/.* could not be read \(.*\): is the bucket "
                                                      r"reachable with these credentials\? Nothing was judged damaged"):
        Ledger.open(bucket_ledger.root).verify()
    with pytest.raises(StorageUnreachableError, match=r"^cannot list s3://models/.*: is the bucket reachable with these "
                                                      r"credentials\? Nothing was judged damaged$"):
        Ledger.open(bucket_ledger.root).verify(objects=True)  # its listing fails first: no answer, not damage
    for args in (["verify"], ["verify", "--repair"]):
        result = CliRunner().invoke(main, ["--ledger", str(bucket_ledger.root), *args])
        assert result.exit_code == 4, result.output
        assert "Nothing was judged damaged" in result.output and "missing" not in result.output
    monkeypatch.undo()
    assert _objects(s3, bucket_ledger.object_store().url.removeprefix("s3://")) == before  # nothing quarantined
    assert Ledger.open(bucket_ledger.root).verify().ok and Ledger.open(bucket_ledger.root).checkout(v0)


def test_a_checkout_from_an_unreachable_bucket_says_to_check_it_not_to_restore(s3, bucket_ledger, monkeypatch):
    """A checkout with the bucket unreachable (or the credentials refused) ended with the advice
    for a damaged object: commit the tensor again or restore it from a backup. It now says the
    bucket did not answer and what to check; the ledger and the bucket are as they were."""
    v0 = bucket_ledger.commit({"w": torch.randn(50, 10)}, message="first")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with pytest.raises(StorageUnreachableError) as caught:
        Ledger.open(bucket_ledger.root).checkout(v0)
    said = str(caught.value)
    assert f"version {v0.version_id[:12]}" in said and "builds its parameter 'w' on it" in said
    assert said.endswith("; the bucket did not answer, so nothing is known to be damaged: check its endpoint "
                         "(AWS_ENDPOINT_URL_S3), the network and the credentials, then try again"), said
    assert "restore" not in said and "prov verify" not in said
    monkeypatch.undo()
    assert torch.equal(Ledger.open(bucket_ledger.root).checkout(v0)["w"], bucket_ledger.checkout(v0)["w"])


def test_gc_lists_and_removes_unreferenced_objects_in_the_bucket(s3, bucket_ledger):
    v0 = bucket_ledger.commit({"w": torch.arange(10)}, message="kept")
    store = bucket_ledger.object_store()
    stray = store.put(torch.arange(5.0))  # sent by a commit that then failed, say
    assert stray.address in store
    report = gc(bucket_ledger)
    assert report["unreferenced"] == [stray.address] and report["bytes"] == store.size(stray.address) > 20
    assert report["temporary_files"] == []
    report = gc(bucket_ledger, apply=True)
    assert report["freed"] == report["bytes"]
    assert stray.address not in store
    assert set(store.addresses()) == bucket_ledger.referenced_objects()
    assert bucket_ledger.checkout(v0)["w"].tolist() == list(range(10))


def test_gc_with_the_bucket_unreachable_asks_about_the_bucket_and_removes_nothing(s3, bucket_ledger, monkeypatch):
    """`prov gc` with the objects' bucket unreachable (or the credentials refused) printed
    `cannot list s3://...: <Arrow's message>` as an ObjectMissingError, with nothing to check; it
    is now the unreachable-bucket error that asks about the bucket and the credentials (exit 4),
    and every object is still there."""
    bucket_ledger.commit({"w": torch.arange(10)}, message="kept")
    stray = bucket_ledger.object_store().put(torch.arange(5.0))
    before = _objects(s3, bucket_ledger.object_store().url.removeprefix("s3://"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with pytest.raises(StorageUnreachableError, match=r"^cannot list s3://models/.*: is the bucket reachable with these "
                                                      r"credentials\?$"):
        gc(Ledger.open(bucket_ledger.root), apply=True)
    result = CliRunner().invoke(main, ["--ledger", str(bucket_ledger.root), "gc", "--apply"])
    assert result.exit_code == 4 and result.output.rstrip().endswith("is the bucket reachable with these credentials?")
    monkeypatch.undo()
    assert _objects(s3, bucket_ledger.object_store().url.removeprefix("s3://")) == before
    assert stray.address in bucket_ledger.object_store()


def test_a_refused_commit_removes_the_large_objects_it_uploaded(s3, bucket_ledger):
    v0 = bucket_ledger.commit({"w": torch.ones(4)}, message="first")
    store = bucket_ledger.object_store()
    before = set(store.addresses())
    big = torch.randn(400_000)
    with pytest.raises(NonFiniteError, match="'z'"):
        bucket_ledger.commit({"a": big, "z": torch.tensor([float("nan")])}, message="refused")
    assert bucket_ledger.versions() == [v0]
    assert address_of(big) not in store  # uploaded on a writer thread, then removed
    assert set(store.addresses()) == before


def test_a_put_keeps_an_intact_object_and_rewrites_a_cut_one(s3, bucket_ledger):
    store = bucket_ledger.object_store()
    t = torch.randn(300_000)  # 1.2 MB: looked up before it is sent
    first = store.put(t)
    assert first.created and not first.repaired
    kept = store.put(t)
    assert not kept.created and not kept.repaired  # size and header checked, not sent again
    key = store.location(first.address).removeprefix("s3://")
    s3.put(key, s3.fs.open_input_stream(key).read()[:100])
    again = store.put(t)
    assert again.repaired and not again.created
    head = int.from_bytes(s3.fs.open_input_stream(key).read()[:8], "little")
    assert store.size(first.address) == 8 + head + t.numel() * 4
    assert _bytes(store.get(first.address)) == _bytes(t)
    small = torch.arange(10.0)  # under 1 MiB: sent whatever is there, and never counted as created
    assert [store.put(small).created for _ in range(2)] == [False, False]
    assert _bytes(store.get(address_of(small))) == _bytes(small)


def test_an_upload_interrupted_by_an_exception_leaves_no_object(s3, bucket_ledger, monkeypatch):
    store = bucket_ledger.object_store()
    t = torch.randn(4 << 20)  # 16 MiB: more than one part

    real = __import__("provenance.object_buckets", fromlist=["file_bytes"]).file_bytes

    def interrupted(*args, **kwargs):
        size, pieces = real(*args, **kwargs)

        def cut():
            for i, piece in enumerate(pieces):
                if i == 6:
                    raise KeyboardInterrupt
                yield piece

        return size, cut()

    monkeypatch.setattr("provenance.object_buckets.file_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put(t)
    assert list(store.addresses()) == []  # Arrow completed the cut upload; the store deleted it


_COMMITTER = """
import sys, torch
from provenance import Ledger
ledger = Ledger.open(sys.argv[1])
print("committing", flush=True)
ledger.commit({"big": torch.randn(24 << 20, generator=torch.Generator().manual_seed(1))}, message="killed")
print("committed", flush=True)
"""


@pytest.mark.slow
def test_a_commit_killed_mid_upload_leaves_no_object_and_no_version(s3, bucket_ledger, tmp_path):
    """A real SIGKILL while a 96 MiB object is being uploaded in parts: the parts already sent
    stay in an incomplete multipart upload that nothing lists or reads."""
    before = s3.output().count("partNumber=")
    proc = subprocess.Popen([sys.executable, "-c", _COMMITTER, str(bucket_ledger.root)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while s3.output().count("partNumber=") <= before:  # a part has arrived: the upload is under way
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no part was uploaded in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    ledger = Ledger.open(bucket_ledger.root)
    assert ledger.versions() == []
    assert list(ledger.object_store().addresses()) == []
    report = ledger.verify(objects=True)
    assert report.ok and report.objects_checked == 0
    v = ledger.commit({"big": torch.randn(24 << 20, generator=torch.Generator().manual_seed(1))}, message="again")
    assert ledger.verify(objects=True).ok
    assert len(list(ledger.object_store().addresses())) == 1 and ledger.manifest(v)["big"].encoding == "full"


def test_a_backup_of_a_bucket_ledger_stands_alone(s3, bucket_ledger, tmp_path):
    versions = _history(bucket_ledger)
    bucket_ledger.object_store().put(torch.arange(3.0))  # unreferenced: not copied
    result = backup(bucket_ledger, tmp_path / "backup")
    referenced = bucket_ledger.referenced_objects()
    assert result["verified"] and result["objects_copied"] == len(referenced)
    copy = Ledger.open(tmp_path / "backup")
    assert copy.objects_url is None
    assert {f"{p.parent.name}{p.stem}" for p in copy.objects_path.rglob("*.safetensors")} == referenced
    assert result["object_bytes"] == sum(bucket_ledger.object_store().size(a) for a in referenced)
    for v in versions:
        got, want = copy.checkout(v), bucket_ledger.checkout(v)
        assert {n: _bytes(t) for n, t in got.items()} == {n: _bytes(t) for n, t in want.items()}


def test_a_backup_with_the_bucket_unreachable_or_an_object_gone_names_the_object(s3, bucket_ledger, tmp_path,
                                                                                 monkeypatch):
    """`prov backup` of a bucket ledger with the bucket unreachable (or the credentials refused)
    printed Arrow's bare `When getting information for key '...' in bucket 'models': AWS Error
    ...`, and with an object gone `Path does not exist ...`: neither said which URL, nor what to
    check. Each now names the object's URL (unreachable: ask about the bucket and credentials),
    and no copy is left."""
    v0 = bucket_ledger.commit({"w": torch.randn(50, 10)}, message="first")
    (address,) = bucket_ledger.referenced_objects()
    url = f"{bucket_ledger.object_store().url}/{address[:2]}/{address[2:]}.safetensors"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with pytest.raises(StorageUnreachableError) as caught:
        backup(Ledger.open(bucket_ledger.root), tmp_path / "copy")
    assert str(caught.value).startswith(f"{url} could not be downloaded (When getting information for key ")
    assert str(caught.value).endswith("): is the bucket reachable with these credentials?")
    assert not (tmp_path / "copy").exists()
    monkeypatch.undo()
    s3.delete(url.removeprefix("s3://"))
    with pytest.raises(ObjectMissingError, match=rf"^{re.escape(url)} is missing from the bucket$"):
        backup(bucket_ledger, tmp_path / "copy")
    assert not (tmp_path / "copy").exists() and bucket_ledger.version(v0.version_id)


def test_a_server_on_a_bucket_ledger_takes_commits_into_the_bucket(s3, tmp_path):
    root = tmp_path / "served"
    ledger = Ledger.init(root, objects="s3://models/served/objects")
    _, token = ledger.issue_token("admin", "admin")
    with serving.running(root, token=token) as server:  # inherits the AWS settings the fixture set
        remote = server.ledger()
        state = _state(3)
        v = remote.commit(state, message="through the server")
        got = remote.checkout(v)
        assert {n: _bytes(t) for n, t in got.items()} == {n: _bytes(t) for n, t in state.items()}
        assert remote.verify(objects=True).ok
    addresses = set(BucketObjectStore("s3://models/served/objects").addresses())
    assert addresses == Ledger.open(root).referenced_objects() and len(addresses) == len(state) - 1  # two zeros: one
    assert list((root / ".prov" / "objects").iterdir()) == []


def test_a_bucket_that_fails_a_servers_upload_is_a_retried_502_not_a_full_disk(s3, tmp_path, monkeypatch):
    """A server whose bucket did not answer a commit's upload said 507 Insufficient Storage (its
    disk full, "not retried: it will not pass until there is room"), so a bucket that was away for
    a moment failed the commit at once. It is now 502 Bad Gateway naming the object's URL
    (``BucketWriteError``), which the client retries, and nothing is applied."""
    import httpx
    from safetensors.torch import save

    from provenance.errors import BucketWriteError
    from provenance.remote import RemoteLedger

    root, prefix = tmp_path / "served", f"s3://models/t{next(_PREFIXES)}/objects"
    _, token = Ledger.init(root, objects=prefix).issue_token("admin", "admin")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with serving.running(root, token=token) as server:
        monkeypatch.undo()
        state = {"w": torch.randn(512, 1024, generator=torch.Generator().manual_seed(5))}  # 2 MiB: looked up first
        answer = httpx.post(f"{server.url}/api/v1/versions", params={"message": "raw"}, content=save(state),
                            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k1"}, timeout=60)
        assert answer.status_code == 502, answer.text
        assert answer.json()["kind"] == "BucketWriteError"
        assert answer.json()["error"].startswith(f"cannot write object {address_of(state['w'])} into {prefix}: ")
        remote = RemoteLedger(server.url, token=token, retries=2)
        with pytest.raises(BucketWriteError, match=f"cannot write object {address_of(state['w'])} into {prefix}"):
            remote.commit(state, message="through the server")
        tries = remote.sql("SELECT status, count(*) AS n FROM access_log WHERE path = '/api/v1/versions' "
                           "GROUP BY status").to_pylist()
        assert tries == [{"status": 502, "n": 4}]  # the raw request, then the client's three tries
        assert remote.versions() == []


# -- Parquet document files in a bucket (prov init --documents s3://...) ----------------------------

def _corpus_files(folder, corpus) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    docs = [{"id": f"d{i}", "text": d["text"]} for i, d in enumerate(corpus.docs)]
    paths = []
    for name, part in (("a.jsonl", docs[:25]), ("b.jsonl", docs[25:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
        paths.append(folder / name)
    return paths


@pytest.fixture
def docs_ledger(s3, tmp_path):
    """A new ledger whose Parquet document files go under a prefix of its own in ``models``."""
    return Ledger.init(tmp_path / "docs", documents=f"s3://models/d{next(_PREFIXES)}/documents")


def _pairs(report) -> list[tuple]:
    return sorted((p.a, p.b, p.dataset_a, p.dataset_b, p.matches) for p in report.pairs)


def test_datasets_kept_as_parquet_in_a_bucket_read_as_the_local_ones(s3, tmp_path, docs_ledger, corpus):
    shards = _corpus_files(tmp_path / "data", corpus)
    local = Ledger.init(tmp_path / "local")
    for ledger in (docs_ledger, local):
        ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
        ledger.register_dataset("t", shards, id_field="id", documents_as="table")
    (f,) = docs_ledger.document_files()
    assert f["path"].startswith(docs_ledger.documents_url + "/p/v1-") and f["path"].endswith("/data_0.parquet")
    assert s3.fs.get_file_info(f["path"].removeprefix("s3://")).size == f["n_bytes"]
    assert not docs_ledger.documents_path.exists() or not any(docs_ledger.documents_path.rglob("*.parquet"))
    assert list((docs_ledger.root / "tmp").rglob("*.parquet")) == []  # the staged copy is gone
    opened = Ledger.open(docs_ledger.root)  # a new process: the view reads the bucket
    assert opened.documents("p@1").drop(["doc_id"]).to_pylist() == local.documents("p@1").drop(["doc_id"]).to_pylist()
    assert len(opened.documents("p@1")) == 40
    ours = opened.audit_dedup(["p@1", "t@1"], store=False, threshold=0.5)
    theirs = local.audit_dedup(["p@1", "t@1"], store=False, threshold=0.5)
    assert _pairs(ours) == _pairs(theirs) and ours.summary.exact_duplicate_pairs == 40
    report = opened.verify(objects=True)
    assert report.ok, report
    # prov sql reads the bucket's files through the view, and nothing else in the bucket
    s3.put("models/elsewhere.parquet", b"PAR1")
    runner = CliRunner()
    result = runner.invoke(main, ["--ledger", str(opened.root), "sql", "SELECT count(*) AS n FROM documents", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == [{"n": 80}], result.output
    result = runner.invoke(main, ["--ledger", str(opened.root), "sql",
                                  "SELECT * FROM read_parquet('s3://models/elsewhere.parquet')"])
    assert result.exit_code != 0 and "elsewhere.parquet" in result.output


def test_a_damaged_file_in_the_bucket_is_named_and_verify_finds_it(s3, tmp_path, docs_ledger, corpus):
    shards = _corpus_files(tmp_path / "data", corpus)
    docs_ledger.register_dataset("t", shards, id_field="id", documents_as="table")
    docs_ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    (f,) = docs_ledger.document_files()
    key = f["path"].removeprefix("s3://")
    whole = s3.fs.open_input_stream(key).read()

    s3.put(key, whole[: len(whole) // 2])
    cut = Ledger.open(docs_ledger.root)
    assert len(cut.documents("t@1")) == 40  # the other dataset still reads
    with pytest.raises(LedgerDamagedError, match=f"{f['path']} of dataset p@1 is .* bytes instead of"):
        cut.documents("p@1")
    assert [p["path"] for p in cut.verify().dataset_problems if p["shard_index"] is None] == [f["path"]]

    changed = bytearray(whole)
    changed[len(changed) // 2] ^= 0xFF  # same size: only a re-hash tells
    s3.put(key, bytes(changed))
    report = Ledger.open(docs_ledger.root).verify(objects=True)
    assert any("does not hash to its recorded xxh3-128" in p["problem"] for p in report.dataset_problems)

    s3.delete(key)
    with pytest.raises(LedgerDamagedError, match=f"{f['path']} of dataset p@1 is missing"):
        Ledger.open(docs_ledger.root).documents("p@1")
    s3.put(key, whole)  # restored from a backup
    assert Ledger.open(docs_ledger.root).verify(objects=True).ok


def test_an_unreachable_documents_bucket_is_an_error_not_damage(s3, tmp_path, docs_ledger, corpus, monkeypatch):
    """With no Parquet document file listed yet (a dataset kept in the table), `verify` and `gc`
    list the documents bucket for folders no dataset lists: a bucket that did not answer was a
    bare `OSError: When listing objects under key ...` (exit 4 naming neither the bucket's role
    nor what to check)."""
    docs_ledger.register_dataset("t", _corpus_files(tmp_path / "data", corpus), id_field="id", documents_as="table")
    assert docs_ledger.document_files() == [] and docs_ledger.verify().ok
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    expected = (rf"^cannot list the ledger's documents bucket {docs_ledger.documents_url} \(.*\): is the bucket "
                r"reachable with these credentials\? Nothing was judged damaged$")
    with pytest.raises(StorageUnreachableError, match=expected):
        Ledger.open(docs_ledger.root).verify()
    for args in (["verify"], ["gc"]):
        result = CliRunner().invoke(main, ["--ledger", str(docs_ledger.root), *args])
        assert result.exit_code == 4, result.output
        assert f"cannot list the ledger's documents bucket {docs_ledger.documents_url}" in result.output, result.output
    monkeypatch.undo()
    assert Ledger.open(docs_ledger.root).verify().ok


def test_a_query_of_documents_in_an_unreachable_bucket_asks_about_the_bucket(s3, tmp_path, docs_ledger, corpus,
                                                                             monkeypatch):
    """`prov sql` of the documents with the bucket unreachable said the file 'is unreadable (...);
    restore it from a backup' (LedgerDamagedError): advice for damage that nobody saw."""
    docs_ledger.register_dataset("p", _corpus_files(tmp_path / "data", corpus), id_field="id", documents_as="parquet")
    (f,) = docs_ledger.document_files()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    with pytest.raises(StorageUnreachableError, match=rf"^the Parquet document file {f['path']} of dataset p@1 could "
                                                      r"not be looked at \(.*\): is the bucket reachable with these "
                                                      r"credentials\? Nothing is known to be damaged$"):
        Ledger.open(docs_ledger.root).sql("SELECT count(*) AS n FROM documents")
    result = CliRunner().invoke(main, ["--ledger", str(docs_ledger.root), "sql", "SELECT count(*) FROM documents"])
    assert result.exit_code == 4 and "Nothing is known to be damaged" in result.output, result.output
    assert "restore it" not in result.output
    with pytest.raises(StorageUnreachableError, match=r"could not be looked at \((?!unreadable)") as caught:
        Ledger.open(docs_ledger.root).verify()  # the reason once ("(unreadable (...))" said it twice)
    assert "Nothing was judged damaged" in str(caught.value)
    monkeypatch.undo()
    assert Ledger.open(docs_ledger.root).sql("SELECT count(*) AS n FROM documents").to_pylist() == [{"n": 40}]


def test_a_failed_registration_leaves_nothing_in_the_bucket(s3, tmp_path, docs_ledger, corpus):
    shards = _corpus_files(tmp_path / "data", corpus)
    docs_ledger.register_dataset("keep", shards, id_field="id", documents_as="parquet")
    prefix = docs_ledger.documents_url.removeprefix("s3://")
    before = _objects(s3, prefix)
    bad = tmp_path / "data" / "dup.jsonl"
    bad.write_text('{"id": "x", "text": "one"}\n{"id": "x", "text": "two"}\n')
    with pytest.raises(SourceError, match="duplicate document id"):
        docs_ledger.register_dataset("dup", bad, id_field="id", documents_as="parquet")
    assert _objects(s3, prefix) == before
    assert [f["dataset_id"] for f in docs_ledger.document_files()] == ["keep@1"]


_KILLED_UPLOAD = """
import sys, time
from provenance import Ledger
from provenance.ledger import document_store

def stop(self, tmp):  # the files are uploaded; the commit has not run
    print("uploaded", flush=True)
    time.sleep(120)

document_store.DocumentStore.finish = stop
Ledger.open(sys.argv[1]).register_dataset("late", sys.argv[2], id_field="id", documents_as="parquet")
"""


def test_a_registration_killed_after_its_upload_leaves_a_folder_gc_removes(s3, tmp_path, docs_ledger, corpus):
    shards = _corpus_files(tmp_path / "data", corpus)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOAD, str(docs_ledger.root), str(shards[0])],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "uploaded"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    ledger = Ledger.open(docs_ledger.root)
    assert ledger.document_files() == [] and ledger.datasets() == []
    prefix = ledger.documents_url.removeprefix("s3://")
    (orphan_file, size), = [(k, v) for k, v in _objects(s3, prefix).items() if k != MARKER]
    assert orphan_file.startswith("late/v1-") and orphan_file.endswith("/data_0.parquet")
    listed = ledger.gc()
    orphan = f"{ledger.documents_url}/{orphan_file.rsplit('/', 1)[0]}"
    staged = sum(f.stat().st_size for p in listed["temporary_files"] for f in Path(p).rglob("*") if f.is_file())
    assert listed["document_folders"] == [orphan] and listed["bytes"] == size + staged  # and the upload's local copy
    assert all(Path(p).is_relative_to(ledger.root / "tmp" / "staging") for p in listed["temporary_files"])
    removed = ledger.gc(apply=True)
    assert removed["freed"] == listed["bytes"] and list(_objects(s3, prefix)) == [MARKER]
    assert not any(Path(p).exists() for p in listed["temporary_files"])
    assert ledger.register_dataset("late", shards[0], id_field="id", documents_as="parquet").dataset.n_documents == 25


def test_a_backup_of_a_ledger_with_documents_in_a_bucket_stands_alone(s3, tmp_path, corpus):
    ledger = Ledger.init(tmp_path / "both", objects="s3://models/both/objects", documents="s3://models/both/documents")
    shards = _corpus_files(tmp_path / "data", corpus)
    ledger.register_dataset("p", shards, id_field="id", documents_as="parquet")
    v = ledger.commit({"w": torch.randn(300_000)}, message="weights")
    result = backup(ledger, tmp_path / "copy")
    assert result["verified"] and result["document_bytes"] == ledger.document_files()[0]["n_bytes"]
    copy = Ledger.open(tmp_path / "copy")
    assert copy.documents_url is None and copy.objects_url is None
    (f,) = copy.document_files()
    assert f["path"].startswith("documents/p/v1-") and (copy.root / f["path"]).stat().st_size == f["n_bytes"]
    assert copy.documents("p@1").to_pylist() == ledger.documents("p@1").to_pylist()
    assert _bytes(copy.checkout(v)["w"]) == _bytes(ledger.checkout(v)["w"])
    assert copy.verify(objects=True).ok


def test_init_documents_on_the_command_line_and_its_refusals(s3, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(tmp_path / "p"), "--documents", "s3://models/cli-docs", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["documents"] == "s3://models/cli-docs" and out["objects"] == str(tmp_path / "p" / ".prov" / "objects")
    with pytest.raises(InvalidParameterError, match="already holds the files of ledger"):
        Ledger.init(tmp_path / "q", documents="s3://models/cli-docs")
    with pytest.raises(InvalidParameterError, match="the same prefix"):
        Ledger.init(tmp_path / "r", objects="s3://models/same", documents="s3://models/same/")
    assert not (tmp_path / "q" / ".prov").exists() and not (tmp_path / "r" / ".prov").exists()


def test_init_on_an_unreachable_bucket_says_what_to_check(s3, tmp_path, monkeypatch):
    """`prov init --objects` (or `--documents`) with the bucket unreachable or the credentials
    refused printed Arrow's bare error (`AWS Error ACCESS_DENIED during HeadObject operation: No
    response body.`) with nothing to check; it now asks about the endpoint, the network and the
    credentials, as the other refusals of a bucket do, and makes no ledger."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{serving.free_port()}")  # nothing listens there
    for option in ("--objects", "--documents"):
        result = CliRunner().invoke(main, ["init", str(tmp_path / "p"), option, "s3://models/unreachable"])
        assert result.exit_code == 4, result.output
        assert result.output.startswith("Error: cannot read s3://models/unreachable/.provenance-ledger: ")
        assert result.output.rstrip().endswith("; is the bucket reachable (its endpoint, the network) and readable "
                                               "with these credentials?"), result.output
        assert not (tmp_path / "p").exists()


def test_duckdb_s_threads_read_a_shared_bucket_file_at_their_own_positions(s3):
    """DuckDB's threads share one handle per file and read it as seek, then read (two calls);
    on a plain file object those interleave and hand one thread another's bytes (seen as
    "TProtocolException: Invalid data" on a 37 MB file). The handle the ledger gives DuckDB keeps
    a position per thread and reads at it."""
    import threading

    from provenance.ledger.document_store import _read_at_wrapper

    data = bytes(range(256)) * 4096  # 1 MiB: the byte at i is i % 256
    s3.put("models/positional.bin", data)
    handle = _read_at_wrapper()(s3.fs).open("models/positional.bin", "rb")
    barrier = threading.Barrier(2)
    got: dict[int, bytes] = {}

    def reader(offset: int) -> None:
        handle.seek(offset)
        barrier.wait()  # both have sought before either reads
        got[offset] = handle.read(16)

    threads = [threading.Thread(target=reader, args=(o,)) for o in (1000, 500_001)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {1000: data[1000:1016], 500_001: data[500_001:500_017]}
    handle.seek(-4, 2)
    assert handle.read() == data[-4:] and handle.tell() == len(data)
    handle.close()


def test_a_documents_prefix_named_with_glob_characters_reads_its_files(s3, tmp_path, corpus):
    """A prefix such as ``s3://models/d [1]/docs *`` is a literal key, not a pattern: the files
    written under it read back (DuckDB expanded it, matched nothing and raised a traceback)."""
    url = f"s3://models/d [{next(_PREFIXES)}]/docs *"
    ledger = Ledger.init(tmp_path / "globbed", documents=url)
    shards = _corpus_files(tmp_path / "data", corpus)
    assert ledger.register_dataset("p", shards, id_field="id", documents_as="parquet").dataset.n_documents == 40
    (f,) = ledger.document_files()
    assert f["path"].startswith(url + "/p/v1-")
    opened = Ledger.open(ledger.root)
    assert len(opened.documents("p@1")) == 40
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "sql", "SELECT count(*) AS n FROM documents",
                                       "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == [{"n": 40}], result.output
    assert opened.verify(objects=True).ok


def test_verify_of_a_ledger_whose_bucket_is_gone_says_so_once(s3, tmp_path):
    """A deleted bucket made verify list every object as missing, one row each, with no word of
    the bucket: it is named once, and verify exits as for an unreachable store."""
    s3.bucket("short-lived")
    ledger = Ledger.init(tmp_path / "gone", objects="s3://short-lived/objects")
    ledger.commit(_state(3), message="stored")
    s3.fs.delete_dir("short-lived")
    with pytest.raises(StorageUnreachableError, match=r"^object store s3://short-lived/objects: the bucket "
                                                      r"'short-lived' does not exist"):
        ledger.verify()
    assert ledger.versions()[0].message == "stored"  # nothing else changed
