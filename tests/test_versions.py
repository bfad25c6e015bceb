"""Versions: lossless commit and checkout through patch chains, and bad input refused."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import InvalidParameterError, NotFoundError, ObjectCorruptError, ObjectMissingError
from provenance.kernels.patch import apply_low_rank
from provenance.objects import ObjectStore
from provenance.patches import same_bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32]


@pytest.fixture()
def ledger(tmp_path):
    return Ledger.init(tmp_path)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(64, 32, generator=g),
        "layer.bias": torch.randn(64, generator=g).to(torch.bfloat16),
        "norm.weight": torch.randn(32, generator=g).to(torch.float16),
        "head.weight": torch.randn(10, 64, generator=g, dtype=torch.float64),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert same_bits(a[k], b[k]), k


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 1000), changed=st.floats(0.0, 1.0))
def test_round_trip_every_dtype(tmp_path_factory, dtype, shape, seed, changed):
    ledger = Ledger.init(tmp_path_factory.mktemp("l"))
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 50).to(dtype)
    v0 = ledger.commit({"p": base}, message="root")
    new = base.clone()
    mask = torch.rand(shape, generator=g) < changed
    new[mask] = (torch.randn(shape, generator=g) * 50).to(dtype)[mask]
    v1 = ledger.commit({"p": new}, parent=v0, message="step")
    _assert_same(ledger.checkout(v0), {"p": base})
    _assert_same(ledger.checkout(v1), {"p": new})


def test_sparse_then_low_rank_then_dense_chain(ledger):
    s0 = _state()
    v0 = ledger.commit(s0, message="root")
    assert {p.encoding for p in ledger.manifest(v0).values()} == {"full"}
    assert v0.stored_bytes == v0.full_bytes == sum(t.numel() * t.element_size() for t in s0.values())

    s1 = {k: v.clone() for k, v in s0.items()}
    idx = torch.randperm(64 * 32, generator=torch.Generator().manual_seed(1))[:10]  # a FISH-style 0.5% update
    s1["layer.weight"].view(-1)[idx] += 0.5
    v1 = ledger.commit(s1, parent=v0, message="fish")
    m1 = ledger.manifest(v1)
    assert m1["layer.weight"].encoding == "sparse" and m1["layer.weight"].nbytes == 10 * 8
    assert {m1[k].encoding for k in s0 if k != "layer.weight"} == {"unchanged"}
    assert v1.stored_bytes == 80 and v1.parents == [v0.version_id]

    g = torch.Generator().manual_seed(2)
    b, a = torch.randn(10, 2, generator=g, dtype=torch.float64), torch.randn(2, 64, generator=g, dtype=torch.float64)
    s2 = {k: v.clone() for k, v in s1.items()}
    s2["head.weight"] = apply_low_rank(s1["head.weight"], b, a, 2.0)
    v2 = ledger.commit(s2, parent=v1, message="lora", low_rank={"head.weight": (b, a, 2.0)})
    assert ledger.manifest(v2)["head.weight"].encoding == "low_rank"
    assert ledger.manifest(v2)["head.weight"].meta == {"scale": 2.0}

    s3 = {k: v.clone() for k, v in s2.items()}
    s3["layer.weight"] = torch.randn(64, 32, generator=g)
    v3 = ledger.commit(s3, parent=v2, message="dense")
    assert ledger.manifest(v3)["layer.weight"].encoding == "full"

    for v, s in ((v0, s0), (v1, s1), (v2, s2), (v3, s3)):
        _assert_same(ledger.checkout(v), s)


def test_first_parent_chain_reads_each_group_down_to_its_last_full_copy(ledger):
    s0 = _state()
    v0 = ledger.commit(s0, message="root")
    s1 = {k: v.clone() for k, v in s0.items()}
    s1["layer.weight"].view(-1)[:3] += 1.0
    v1 = ledger.commit(s1, parent=v0, message="sparse")
    v2 = ledger.commit({**s1, "extra": torch.ones(2)}, parent=v1, message="added")
    ledger.tag("tip", v2)
    chain = ledger.first_parent_chain("tip")
    assert [(v, parent) for v, parent, _ in chain] == [
        (v2.version_id, v1.version_id), (v1.version_id, v0.version_id), (v0.version_id, None)]
    assert chain[0][2] == ledger.manifest(v2)  # the version asked for: its whole manifest
    for depth, ((_, _, manifest), v) in enumerate(zip(chain, (v2, v1, v0))):  # below it: the rows with bytes
        assert manifest == {n: p for n, p in ledger.manifest(v).items() if depth == 0 or p.encoding != "unchanged"}
        assert list(manifest) == sorted(manifest)  # by name
    assert chain[0][2]["extra"].encoding == "full" and chain[1][2]["layer.weight"].encoding == "sparse"
    assert list(chain[1][2]) == ["layer.weight"]
    # a resolved id skips the lookup; a reference passed as resolved is still looked up
    assert ledger.first_parent_chain(v2.version_id, resolved=True) == chain
    assert ledger.first_parent_chain(v2.version_id[:8], resolved=True) == chain
    with pytest.raises(NotFoundError, match="no version"):
        ledger.first_parent_chain("f" * 32, resolved=True)
    # below the version asked for, only rows with bytes, down to each group's last full copy:
    # 'layer.weight' is full in v3 (v1's sparse patch is not read), 'extra' in v2, the others in v0
    v3 = ledger.commit({**s1, "extra": torch.ones(2), "layer.weight": s1["layer.weight"] + 1}, parent=v2, message="m")
    chain = ledger.first_parent_chain(v3)
    others = sorted(set(ledger.manifest(v0)) - {"layer.weight"})
    assert [(v, sorted(m)) for v, _, m in chain] == [
        (v3.version_id, sorted(ledger.manifest(v3))), (v2.version_id, ["extra"]), (v1.version_id, []),
        (v0.version_id, others)]
    assert ledger.manifest(v3)["layer.weight"].encoding == "full" and ledger.manifest(v3)["extra"].encoding == \
        "unchanged"
    assert torch.equal(ledger.checkout(v3)["extra"], torch.ones(2))
    last = ledger.commit({k: t + 2 for k, t in ledger.checkout(v3).items()}, parent=v3, message="all full")
    assert [v for v, _, _ in ledger.first_parent_chain(last)] == [last.version_id]


def test_sparse_commits_on_sparse_parents_do_not_materialise_them(ledger, monkeypatch):
    """A parent reached from its last full copy by sparse patches is not copied and patched to
    be compared with: the changed elements come from the copy, corrected where the patches wrote
    (provenance.patches.changed_mask_over). Overlapping patches and values put back are exact."""
    from provenance.versions import groups

    states, v = [_state()], ledger.commit(_state(), message="root")
    versions_made = [v]

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse chain was materialised for a commit")

    monkeypatch.setattr(groups, "materialize", refuse)
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        s = {k: t.clone() for k, t in states[-1].items()}
        flat = s["layer.weight"].view(-1)
        flat[torch.randint(0, flat.numel(), (12,), generator=g)] += 1.0
        flat[:4] = states[0]["layer.weight"].view(-1)[:4] if step % 2 else flat[:4] + 2.0  # rewritten, then put back
        s["layer.bias"].view(-1)[step] = float(step)
        if step == 3:
            s["norm.weight"] = states[-1]["norm.weight"].clone()  # unchanged
        v = ledger.commit(s, parent=v, message=f"sparse {step}")
        manifest = ledger.manifest(v)
        assert manifest["layer.weight"].encoding == "sparse" and manifest["norm.weight"].encoding == "unchanged"
        states.append(s)
        versions_made.append(v)
    again = ledger.commit({k: t.clone() for k, t in states[-1].items()}, parent=v, message="nothing changed")
    assert {p.encoding for p in ledger.manifest(again).values()} == {"unchanged"}
    monkeypatch.undo()
    for made, s in zip(versions_made, states):
        _assert_same(ledger.checkout(made), s)


def test_added_and_removed_parameters(ledger):
    v0 = ledger.commit(_state(), message="root")
    s1 = _state()
    del s1["steps"]
    s1["extra"] = torch.ones(3)
    v1 = ledger.commit(s1, parent=v0, message="reshape")
    m = ledger.manifest(v1)
    assert m["steps"].encoding == "removed" and m["extra"].encoding == "full"
    assert v1.n_params == 5
    _assert_same(ledger.checkout(v1), s1)


def test_a_state_of_no_tensors_is_refused_naming_it(ledger, tmp_path):
    """It was stored as a version of 0 parameter groups (an unbuilt module, a dict filled later);
    a child of {} removed every group of its parent."""
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    v0 = ledger.commit(_state(), message="root")
    for state, what in (({}, "the state given"), (torch.nn.Sequential(), "the state given"), (empty, str(empty))):
        with pytest.raises(InvalidParameterError, match=rf"^{what} holds no tensors: there is nothing to commit"):
            ledger.commit(state, message="nothing", parent=v0)
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "model", "commit", str(empty), "-m", "x"])
    assert result.exit_code == 4 and f"{empty} holds no tensors" in result.output.replace("\n", ""), result.output
    assert [v.version_id for v in ledger.versions()] == [v0.version_id]


def test_refs_prefix_tag_and_safetensors_input(ledger, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path))
    v0 = ledger.commit(path, message="from a file")
    _assert_same(ledger.checkout(v0.version_id[:8]), _state())
    ledger.tag("base", v0)
    assert ledger.version("base") == v0.model_copy(update={"tags": ["base"]})  # the record names its tags
    assert [v.version_id for v in ledger.versions()] == [v0.version_id]
    with pytest.raises(NotFoundError, match="no version or tag 'nope'"):
        ledger.version("nope")
    with pytest.raises(InvalidParameterError, match="looks like a version id"):
        ledger.tag("abcd", v0)


def test_identical_tensors_are_stored_once(ledger):
    ledger.commit(_state(), message="a")
    ledger.commit(_state(), message="b")  # another root with the same tensors
    assert len(list(ObjectStore(ledger.objects_path).addresses())) == len(_state())


def test_bad_input_is_refused_and_nothing_is_written(ledger):
    v0 = ledger.commit(_state(), message="root")
    objects = sorted(ObjectStore(ledger.objects_path).addresses())
    bad = _state()
    bad["layer.weight"] = torch.zeros(32, 64)
    with pytest.raises(InvalidParameterError, match=r"'layer.weight' is float32\[32, 64\] but float32\[64, 32\]"):
        ledger.commit(bad, parent=v0, message="wrong shape", encoding="sparse")  # auto would store it whole
    nan = _state()
    nan["norm.weight"][3] = float("nan")
    with pytest.raises(InvalidParameterError, match=r"'norm.weight' holds 1 NaN or Inf values \(first at flat index 3\)"):
        ledger.commit(nan, parent=v0, message="nan")
    assert ledger.versions() == [v0]
    assert sorted(ObjectStore(ledger.objects_path).addresses()) == objects
    v1 = ledger.commit(nan, parent=v0, message="nan on purpose", allow_nonfinite=True)
    assert torch.isnan(ledger.checkout(v1)["norm.weight"][3])
    with pytest.raises(NotFoundError):
        ledger.commit(_state(), parent="deadbeef", message="orphan")
    with pytest.raises(InvalidParameterError, match="needs a message"):
        ledger.commit(_state(), message=" ")


def test_corrupt_object_names_the_versions_using_it(ledger):
    v0 = ledger.commit({"w": torch.arange(100, dtype=torch.float32)}, message="root")
    address = ledger.manifest(v0)["w"].objects["full"]
    path = ObjectStore(ledger.objects_path).path(address)
    data = bytearray(path.read_bytes())
    data[-4] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ObjectCorruptError, match=f"object {address} .*used by version\\(s\\) {v0.version_id[:12]}"):
        ledger.checkout(v0)
    path.unlink()
    with pytest.raises(ObjectMissingError, match=f"used by version\\(s\\) {v0.version_id[:12]}"):
        ledger.checkout(v0)


def test_refused_commit_writes_no_object_even_after_good_parameters(ledger):
    good = {"a": torch.randn(100), "z": torch.randn(100)}
    good["z"][5] = float("inf")  # "a" sorts first: it would be written before "z" is refused
    with pytest.raises(InvalidParameterError, match="'z' holds 1 NaN or Inf"):
        ledger.commit(good, message="bad")
    assert list(ObjectStore(ledger.objects_path).addresses()) == []


def test_gc_lists_then_removes_only_unreferenced_objects(ledger):
    v0 = ledger.commit(_state(), message="root")
    store = ObjectStore(ledger.objects_path)
    orphan = store.put(torch.full((1000,), 3.0)).address  # as an interrupted commit leaves
    half = store.path(orphan).parent / ".abc.safetensors.x1.tmp"  # a write killed before its rename
    half.write_bytes(b"\0" * 100)
    report = ledger.gc()
    assert report["unreferenced"] == [orphan] and report["removed"] is False and report["bytes"] > 4100
    checked = ledger.verify()  # verify names them too (not damage), and what removes them
    assert checked.ok and checked.unreferenced_objects == 1 and checked.temporary_files == [str(half)]
    said = CliRunner().invoke(main, ["--ledger", str(ledger.root), "verify"])
    assert said.exit_code == 0 and ("1 object no version refers to (a killed commit or merge left them, or a commit "
                                    "is still writing; prov gc lists their bytes, prov gc --apply removes them)"
                                    ) in " ".join(said.output.split()), said.output
    assert report["temporary_files"] == [str(half)]
    assert orphan in store and half.exists()
    applied = ledger.gc(apply=True)
    assert applied["unreferenced"] == [orphan] and applied["freed"] == report["bytes"]
    assert orphan not in store and not half.exists()
    assert ledger.gc()["unreferenced"] == [] and ledger.gc()["temporary_files"] == []
    assert ledger.verify().unreferenced_objects == 0
    _assert_same(ledger.checkout(v0), _state())


def test_gc_goes_on_past_a_file_it_may_not_remove(ledger):
    """An unreferenced object `prov gc --apply` may not remove (an immutable file; one of another
    user's in a shared ledger) stopped it: `Error: FILE: Operation not permitted`, exit 4, the
    objects after it left and those removed before it not reported."""
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    v0 = ledger.commit(_state(), message="root")
    store = ObjectStore(ledger.objects_path)
    orphans = sorted(store.put(torch.full((1000,), float(i))).address for i in range(5))
    stuck = store.path(orphans[0])  # the first gc removes
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("the file system has no immutable files")
    try:
        said = CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc", "--apply"])
        assert said.exit_code == 0, said.output
        assert f"not removed: {stuck}: Operation not permitted" in said.output
        assert "(1 of the files not: below)" in said.output
        assert [a in store for a in orphans] == [True, False, False, False, False]
        assert ledger.gc()["unreferenced"] == [orphans[0]]  # listed again until it can be removed
        with pytest.warns(UserWarning, match=r"could not remove 1 file\(s\) .*prov gc lists them again"):
            assert ledger.gc(apply=True)["not_removed"] == [f"{stuck}: Operation not permitted"]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert ledger.gc(apply=True)["not_removed"] == [] and orphans[0] not in store
    _assert_same(ledger.checkout(v0), _state())


def test_verify_repair_reports_a_damaged_object_it_may_not_move(ledger):
    """`prov verify --repair` on a damaged object it may not move: `Error: cannot copy … to
    …/quarantine/…: Operation not permitted`, exit 4, and no report of what else is damaged."""
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    ledger.commit(_state(), message="root")
    path = ledger.object_store().path(ledger.object_references().column("address")[0].as_py())
    path.write_bytes(path.read_bytes() + b"xx")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("the file system has no immutable files")
    try:
        said = CliRunner().invoke(main, ["--ledger", str(ledger.root), "verify", "--repair"])
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert said.exit_code == 1, said.output  # damage found, and said
    text = " ".join(said.output.split())
    assert f"could not move damaged object {path} into {ledger.root / 'quarantine'}: Operation not permitted" in text
    assert "corrupt" in text and path.exists()


_SPILLER = """
import sys, time
from provenance import Ledger
ledger = Ledger.open(sys.argv[1])
with ledger.session():
    ledger._con.execute("SET memory_limit = '32MB'")  # a query larger than the memory spills to .prov/tmp
    ledger._con.execute("CREATE TEMP TABLE spill AS SELECT i, repeat('x', 200) AS s FROM range(2000000) t(i)")
    print("spilled", flush=True)
    time.sleep(120)
"""


def test_gc_removes_the_spill_files_of_a_killed_process_and_not_its_own(ledger):
    """A process SIGKILLed while DuckDB had spilled to ``.prov/tmp`` leaves its files there (a
    gigabyte after a killed 1M-document audit); gc lists and removes them, never its own."""
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _SPILLER, str(ledger.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "spilled"
    finally:
        child.kill()
        child.wait()
    tmp = ledger.root / "tmp"
    left = sorted(str(p) for p in tmp.iterdir() if p.name.startswith(f"duckdb_temp_{child.pid}_"))
    assert len(left) >= 2  # the owner file and at least one storage file
    mine = tmp / f"duckdb_temp_{os.getpid()}_0_storage_DEFAULT-0.tmp"  # as a live query of this process has
    mine.write_bytes(b"\0" * 10)
    report = ledger.gc()
    assert report["temporary_files"] == left and report["bytes"] == sum(os.path.getsize(p) for p in left) > 10**6
    applied = ledger.gc(apply=True)
    assert applied["freed"] == report["bytes"] and not any(os.path.exists(p) for p in left) and mine.exists()
    assert ledger.gc()["temporary_files"] == []


def test_gc_names_what_else_the_temporary_folder_holds_and_leaves_it(ledger):
    """A file provenance never writes in ``.prov/tmp`` (put there by hand, another tool's) was
    neither listed nor removed by gc, so its bytes went unmentioned (found by stranger pass 35);
    it is named with its bytes and left alone, and what provenance writes there is not named."""
    tmp = ledger.root / "tmp"
    (tmp / "junk.tmp").write_bytes(b"x" * 1000)
    (tmp / "notes").mkdir()
    (tmp / "notes" / "a.txt").write_bytes(b"y" * 24)
    (tmp / "uploads").mkdir(exist_ok=True)
    for apply in (False, True):
        report = ledger.gc(apply=apply)
        assert report["left_alone"] == [{"path": str(tmp / "junk.tmp"), "bytes": 1000},
                                        {"path": str(tmp / "notes"), "bytes": 24}]
        assert report["bytes"] == 0 and report["temporary_files"] == []
    assert (tmp / "junk.tmp").exists() and (tmp / "notes" / "a.txt").exists()
    from provenance.cli.admin import show_gc

    assert (f"  left alone: {tmp / 'junk.tmp'} (1,000 bytes): provenance does not write it there; remove it yourself "
            "if nothing needs it") in show_gc(report).splitlines()


def test_gc_removes_uploads_no_client_registered_within_a_day(ledger):
    """A client killed between `POST /uploads` and its registration left its document rows in
    ``.prov/tmp/uploads`` for good (57 MB for 100,000 documents; neither gc nor verify said so);
    after a day they are leftovers: listed by verify and gc, removed by ``--apply``; a younger
    upload (a registration on its way) is kept."""
    import os
    import time

    from provenance.verify import verify

    uploads = ledger.root / "tmp" / "uploads"
    uploads.mkdir(parents=True)
    old, spooled, fresh = uploads / ("a" * 32 + ".arrows"), uploads / "tmpk2j4.arrows", uploads / ("b" * 32 + ".arrows")
    for f, age in ((old, 2 * 86_400), (spooled, 90_000), (fresh, 60)):
        f.write_bytes(b"\0" * 1000)
        os.utime(f, (time.time() - age, time.time() - age))
    listed = ledger.gc()
    assert listed["temporary_files"] == [str(old), str(spooled)] and listed["bytes"] == 2000
    assert verify(ledger).temporary_files == [str(old), str(spooled)] and verify(ledger).ok
    assert ledger.gc(apply=True)["freed"] == 2000
    assert sorted(uploads.iterdir()) == [fresh]


_RAY_DRIVER = """
import os, pathlib, sys
folder = pathlib.Path(sys.argv[1]) / f"{sys.argv[2]}{sys.argv[3]}-{os.getpid()}-abcd1234"
folder.mkdir(parents=True)
(folder / "part-0.parquet").write_bytes(b"x" * int(sys.argv[4]))
print(folder, flush=True)
"""


def _stale_ray_folders(ledger) -> dict:
    """The folders two Ray drivers on this machine (a registration's, a dedup audit's) leave when
    they end before removing them, named by this host and their process ids, which have ended:
    their paths (as text, in name order) and bytes."""
    import subprocess
    import sys
    from pathlib import Path

    from provenance.files import host_label

    made = {}
    for prefix, size in (("prov-ray-", 1000), ("prov-ray-dedup-", 3000)):
        out = subprocess.run([sys.executable, "-c", _RAY_DRIVER, str(ledger.root / "tmp" / "ray"), prefix,
                              host_label(), str(size)], capture_output=True, text=True, check=True).stdout
        assert Path(out.strip()).is_dir()
        made[out.strip()] = size
    return dict(sorted(made.items()))


def test_gc_names_each_stale_ray_folder_in_its_table_and_json_output(ledger):
    """``prov gc`` names each folder a killed Ray driver left, with its bytes, in the text output
    as in ``--json`` (``ray_folders``): found in a dry run, removed with --apply; the folder of a
    process that runs (this one's) is neither listed nor removed."""
    import json
    import os

    from click.testing import CliRunner

    from provenance.cli.main import main
    from provenance.files import host_label

    stale = _stale_ray_folders(ledger)
    live = ledger.root / "tmp" / "ray" / f"prov-ray-{host_label()}-{os.getpid()}-live0000"
    live.mkdir()
    dry = CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc"])
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert lines[0] == ("would remove (dry run; --apply to remove) 0 objects, 2 temporary files (of them, 2 stale "
                        "Ray folders below) and 0 unlisted document folders, 4,000 bytes")
    assert lines[1:] == [f"  stale Ray folder {p} ({n:,} bytes): found" for p, n in stale.items()]
    listed = json.loads(CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc", "--json"]).output)
    assert listed["ray_folders"] == [{"path": p, "bytes": n, "removed": False} for p, n in stale.items()]
    assert sorted(listed["temporary_files"]) == list(stale) and all(os.path.isdir(p) for p in stale)
    applied = CliRunner().invoke(main, ["--ledger", str(ledger.root), "gc", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert applied.output.splitlines()[1:] == [f"  stale Ray folder {p} ({n:,} bytes): removed"
                                               for p, n in stale.items()]
    assert not any(os.path.exists(p) for p in stale) and live.is_dir()
    assert ledger.gc()["ray_folders"] == []


def test_verify_names_stale_ray_folders_as_leftovers_not_damage(ledger):
    """``prov verify`` names the folders killed Ray drivers left as leftovers that ``prov gc
    --apply`` removes; they are no damage (exit status 0, ``ok``), and --repair leaves them."""
    import json
    import os

    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger.commit(_state(), message="root")
    stale = list(_stale_ray_folders(ledger))
    report = ledger.verify()
    assert report.ray_folders == stale and report.ok and report.temporary_files == []
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "verify"])
    assert out.exit_code == 0, out.output
    for p in stale:
        assert (f"stale Ray folder {p} (a killed Ray registration or dedup audit left it; prov gc --apply "
                "removes it)") in out.output
    as_json = json.loads(CliRunner().invoke(main, ["--ledger", str(ledger.root), "verify", "--json"]).output)
    assert as_json["ray_folders"] == stale and as_json["ok"] is True
    assert ledger.verify(repair=True).ray_folders == stale and all(os.path.isdir(p) for p in stale)
    ledger.gc(apply=True)
    assert ledger.verify().ray_folders == []


_COMMITTER = """
import sys, torch
from provenance import Ledger
ledger = Ledger.open(sys.argv[1], lock_timeout=60)
parent = None
i = 0
while True:
    state = {f"p{j}": torch.full((500_000,), float(i * 10 + j)) for j in range(8)}
    parent = ledger.commit(state, parent=parent, message=f"step {i}")
    print("committed", i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_killed_commit_leaves_no_half_version(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    Ledger.init(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _COMMITTER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith("committed 0")
    time.sleep(0.7)  # somewhere inside a later commit
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    ledger = Ledger.open(tmp_path)
    versions = ledger.versions()
    assert versions, "no version was committed before the kill"
    steps = sorted(int(v.message.split()[1]) for v in versions)
    assert steps == list(range(len(steps)))  # whole versions only, none missing in between
    for v in versions:  # every visible version checks out whole
        state = ledger.checkout(v)
        i = int(v.message.split()[1])
        assert sorted(state) == [f"p{j}" for j in range(8)]
        assert all(float(state[f"p{j}"][0]) == i * 10 + j for j in range(8))
    report = ledger.gc(apply=True)  # objects of the killed commit, if any, are now removed
    assert set(report["unreferenced"]).isdisjoint(ledger.referenced_objects())
    newest = max(versions, key=lambda v: int(v.message.split()[1]))
    assert float(ledger.checkout(newest)["p7"][0]) == int(newest.message.split()[1]) * 10 + 7


def test_diff_between_any_two_versions(ledger):
    s0 = {"w": torch.zeros(100), "b": torch.ones(4), "old": torch.ones(2), "m": torch.zeros(20, 30)}
    v0 = ledger.commit(s0, message="root")
    s1 = {"w": s0["w"].clone(), "b": s0["b"].clone(), "new": torch.zeros(3),
          "m": torch.randn(20, 2, generator=torch.Generator().manual_seed(0)) @ torch.ones(2, 30)}
    s1["w"][:3] = 1.0
    v1 = ledger.commit(s1, parent=v0, message="edit")
    from provenance.versions import diff

    rows = {r["name"]: r for r in diff(ledger, v0, v1)}
    assert rows["w"] == {"name": "w", "status": "changed", "encoding": "sparse", "changed": 0.03, "rank": None,
                         "patch_bytes": 24, "full_bytes": 400}
    assert (rows["m"]["encoding"], rows["m"]["rank"], rows["m"]["changed"]) == ("full", 1, 1.0)
    assert rows["b"]["status"] == "unchanged" and rows["b"]["patch_bytes"] == 0
    assert rows["old"]["status"] == "removed" and rows["new"]["status"] == "added"
    assert rows["new"]["patch_bytes"] == 12


def test_a_diff_of_a_missing_version_is_refused_before_torch_is_imported(ledger):
    """`prov model diff` of a mistyped version imported torch (3 s) before saying it was missing."""
    import subprocess
    import sys

    code = ("import sys\nfrom provenance import Ledger\nledger = Ledger.open(sys.argv[1])\n"
            "try:\n    ledger.diff('nope1', 'nope2')\nexcept Exception as exc:\n"
            "    print(type(exc).__name__, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, str(ledger.root)], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["NotFoundError", "False"], done.stderr


@pytest.mark.parametrize("dtype", [d for d in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                                               "float8_e8m0fnu") if hasattr(torch, d)])
def test_diff_of_a_changed_fp8_group(ledger, dtype):
    """The rank took ``abs().max()`` of an FP8 group, which torch does not implement: a traceback."""
    from provenance.versions import diff

    x = torch.ones(6, 4).to(getattr(torch, dtype))
    y = x.clone()
    y[1, 2] = torch.tensor(4.0).to(y.dtype)
    v0 = ledger.commit({"q": x}, message="fp8")
    v1 = ledger.commit({"q": y}, parent=v0, message="one entry changed")
    (row,) = diff(ledger, v0, v1)
    assert (row["status"], row["encoding"], row["rank"], row["changed"]) == ("changed", "sparse", None, 1 / 24)


def test_diff_of_a_lora_child_shows_its_stored_patch_and_the_update_s_rank(ledger):
    """A LoRA version diffed against its parent was `full`, 100% of the bytes and rank 32: the
    float32 sum `W + B @ A` differs from the exact one by rounding noise of full rank, and the
    patch was recomputed from the values instead of read from how the child is stored."""
    from provenance.versions import diff

    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 96, generator=g)
    b, a = torch.randn(32, 4, generator=g), torch.randn(4, 96, generator=g)
    root = ledger.commit({"w": w}, message="root")
    child = ledger.commit({"w": w + 0.5 * (b @ a)}, parent=root, message="lora", low_rank={"w": (b, a, 0.5)})
    row = diff(ledger, root, child)[0]
    stored = ledger.manifest(child)["w"]
    assert stored.encoding == "low_rank" and (row["encoding"], row["patch_bytes"]) == ("low_rank", stored.nbytes)
    assert row["rank"] == 4 and row["patch_bytes"] == (32 * 4 + 4 * 96) * 4
    backwards = diff(ledger, child, root)[0]  # not a parent and child: what a commit would pick, same rank
    assert backwards["encoding"] == "full" and backwards["rank"] == 4
    dense = ledger.commit({"w": w + torch.randn(32, 2, generator=g) @ torch.randn(2, 96, generator=g)}, parent=root,
                          message="rank 2, stored dense")
    assert diff(ledger, root, dense)[0]["rank"] == 2
    from provenance.versions import _rank

    for dtype in (torch.bfloat16, torch.float16):  # rounding of half precision is not a change of rank
        x = (0.02 * torch.randn(256, 256, generator=g)).to(dtype)
        y = (x.float() + 0.01 * (torch.randn(256, 8, generator=g) @ torch.randn(8, 256, generator=g))).to(dtype)
        assert _rank(x, y) == 8, dtype


def test_two_processes_committing_at_once_both_land(tmp_path):
    import subprocess
    import sys

    Ledger.init(tmp_path)
    script = """
import sys, torch
from provenance import Ledger
ledger = Ledger.open(sys.argv[1], lock_timeout=120)
parent = None
for i in range(3):
    parent = ledger.commit({"w": torch.full((200_000,), float(i)), "tag": torch.tensor([int(sys.argv[2])])},
                           parent=parent, message=f"{sys.argv[2]}-{i}")
print("done", flush=True)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(k)], stdout=subprocess.PIPE, text=True)
             for k in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all(o.strip() == "done" for o in outs)
    ledger = Ledger.open(tmp_path)
    versions = ledger.versions()
    assert sorted(v.message for v in versions) == sorted(f"{k}-{i}" for k in (1, 2) for i in range(3))
    for v in versions:
        k, i = map(int, v.message.split("-"))
        state = ledger.checkout(v)
        assert float(state["w"][0]) == i and int(state["tag"][0]) == k


def test_diff_says_whether_a_parameter_changed_shape_or_dtype(ledger):
    a = ledger.commit({"w": torch.zeros(4), "m": torch.zeros(2, 3)}, message="a")
    b = ledger.commit({"w": torch.zeros(4, dtype=torch.float16), "m": torch.zeros(3, 2)}, message="b")
    status = {r["name"]: r["status"] for r in ledger.diff(a, b)}
    assert status == {"w": "retyped float32[4] -> float16[4]", "m": "reshaped [2, 3] -> [3, 2]"}


def test_a_child_may_change_a_parameters_shape_or_dtype_stored_whole(ledger):
    """A resized embedding or a cast to half precision is stored whole ('full'), as a new
    parameter is; patches after it build on it, and every version checks out bit-identical."""
    g = torch.Generator().manual_seed(0)
    first = {"emb": torch.randn(4, 8, generator=g), "w": torch.randn(16, generator=g)}
    a = ledger.commit(first, message="a")
    resized = {"emb": torch.cat([first["emb"], torch.randn(2, 8, generator=g)]), "w": first["w"].half()}
    b = ledger.commit(resized, parent=a, message="more tokens, half precision")
    assert {n: (p.encoding, p.dtype, p.shape) for n, p in ledger.manifest(b).items()} == {
        "emb": ("full", "float32", [6, 8]), "w": ("full", "float16", [16])}
    tuned = {k: v.clone() for k, v in resized.items()}
    tuned["emb"][5, 3] += 1.0
    c = ledger.commit(tuned, parent=b, message="one more step")
    assert {n: p.encoding for n, p in ledger.manifest(c).items()} == {"emb": "sparse", "w": "unchanged"}
    for version, state in ((a, first), (b, resized), (c, tuned)):
        got = ledger.checkout(version)
        assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in state.items())
    with pytest.raises(InvalidParameterError, match="a change of shape or dtype is stored whole"):
        ledger.commit({**first, "w": first["w"].double()}, parent=a, encoding="sparse", message="forced")


def test_what_a_commit_could_not_give_back_is_refused(ledger, tmp_path):
    """A 0-element tensor of shape [0, 2**40, 2**40] was committed and verified ok, but no
    checkout could make it (torch's strides overflow); a parameter named `__metadata__` could not
    be written to a file; low-rank factors that were lists gave an AttributeError; a tag given
    another ledger's version record pointed at nothing."""
    from provenance import Ledger
    from provenance.errors import NotFoundError

    with pytest.raises(InvalidParameterError, match=r"parameter 'a' is of shape \[0, 1099511627776, 1099511627776\], "
                                                    r"whose strides overflow"):
        ledger.commit({"a": torch.empty(0).reshape(0, 2**40, 2**40)}, message="huge and empty")
    with pytest.raises(InvalidParameterError, match="parameter name '__metadata__' is the key safetensors keeps"):
        ledger.commit({"__metadata__": torch.ones(2), "w": torch.zeros(2)}, message="reserved")
    save_file({"": torch.ones(2), "w": torch.zeros(2)}, tmp_path / "unnamed.safetensors")  # a dict's '' is refused
    with pytest.raises(InvalidParameterError, match=r"unnamed\.safetensors: holds a tensor whose name is empty"):
        ledger.commit(tmp_path / "unnamed.safetensors", message="unnamed")
    root = ledger.commit({"w": torch.zeros(8, 6)}, message="root")
    with pytest.raises(InvalidParameterError, match=r"low_rank\['w'\] must be \(B, A, scale\): two tensors and a "
                                                    r"number, got \(list, list, float\)"):
        ledger.commit({"w": torch.ones(8, 6)}, parent=root, message="m", low_rank={"w": ([1], [2], 1.0)})
    assert ledger.versions() == [root]  # nothing else was made
    other = Ledger.init(tmp_path / "other")
    with pytest.raises(NotFoundError, match="no version"):
        ledger.tag("x", other.commit({"w": torch.ones(3)}, message="elsewhere"))
    assert ledger.tags() == [] and ledger.verify().ok
    empty = ledger.commit({"a": torch.empty(0, 5)}, message="empty, and fine")
    assert ledger.checkout(empty)["a"].shape == (0, 5)


def test_texts_and_factors_are_refused_by_name(ledger):
    """Stranger pass 18: a parameter name or message with an unpaired surrogate failed in
    pydantic's serialiser or the database; low-rank factors of the wrong shape did not name their
    parameter."""
    base = ledger.commit({"w": torch.zeros(6, 4)}, message="base")
    with pytest.raises(InvalidParameterError, match=r"parameter name 'w\\ud800' holds an unpaired surrogate at "
                                                    "character 1: it is not valid UTF-8"):
        ledger.commit({"w\ud800": torch.zeros(2)}, message="m")
    with pytest.raises(InvalidParameterError, match="the commit's message holds an unpaired surrogate at character 3"):
        ledger.commit({"w": torch.ones(6, 4)}, parent=base, message="bad\udcff")
    with pytest.raises(InvalidParameterError, match="the merge's message holds an unpaired surrogate"):
        ledger.merge([base], method="average", message="\ud800")
    b, a = torch.ones(5, 2), torch.ones(2, 4)
    with pytest.raises(InvalidParameterError, match=r"^parameter 'w': low-rank factors B \(5, 2\) and A \(2, 4\) do "
                                                    r"not make the base's shape \(6, 4\)"):
        ledger.commit({"w": torch.ones(6, 4)}, parent=base, message="m", low_rank={"w": (b, a, 1.0)})
    assert [v.version_id for v in ledger.versions()] == [base.version_id]


def test_patch_of_run_names_an_ended_run_only(ledger):
    base = ledger.commit({"w": torch.zeros(3)}, message="base")
    with ledger.start_run(base=base, message="r") as run:
        with pytest.raises(InvalidParameterError, match=r"is running: its own commit ends it \(run=\)"):
            ledger.commit({"w": torch.ones(3)}, parent=base, message="m", patch_of_run=run.run_id)
        with pytest.raises(InvalidParameterError, match="give run .* or patch_of_run, not both"):
            ledger.commit({"w": torch.ones(3)}, parent=base, message="m", run=run.run_id, patch_of_run=run.run_id)
        made = run.commit({"w": torch.ones(3)})
    carried = ledger.commit({"w": torch.full((3,), 2.0)}, parent=base, message="m", patch_of_run=made.run_id)
    assert carried.run_id == made.run_id and ledger.run(made.run_id).version_id == made.version_id


def test_one_history_replays_any_versions_in_any_order(ledger):
    """A History reads each version's rows with bytes down to their full copies; replays from
    versions read by different queries (a diff, a merge of a version with its ancestor) share
    them: every order gives what a History of its own gives."""
    import itertools

    from provenance.history import History, materialize

    g = torch.Generator().manual_seed(7)
    state = {n: torch.randn(32, generator=g) for n in ("a", "b", "c")}
    root = ledger.commit(state, message="root")
    versions, tip = [root], root
    for i in range(8):  # sparse edits of one group at a time, a full copy of 'b' at step 4, a branch at step 6
        state = {n: t.clone() for n, t in state.items()}
        if i == 4:
            state["b"] = torch.randn(32, generator=g)
        else:
            state["abc"[i % 3]][i] += 1.0
        tip = ledger.commit(state, parent=versions[3] if i == 6 else tip, message=f"step {i}")
        versions.append(tip)
    store = ledger.object_store()
    want = {v.version_id: {n: materialize(History(ledger), store, v.version_id, n)[0] for n in "abc"} for v in versions}
    for first, second in itertools.permutations(versions[::2], 2):
        shared = History(ledger)
        for v in (first, second):
            for n in "abc":
                assert torch.equal(materialize(shared, store, v.version_id, n)[0], want[v.version_id][n])
    assert torch.equal(want[versions[-1].version_id]["a"], ledger.checkout(versions[-1])["a"])


def test_an_encoding_asked_for_that_cannot_reproduce_a_group_names_it(ledger):
    """Stranger pass 49: `commit(..., encoding="low_rank", low_rank={"w": factors})` with another,
    1-D group in the state said only "encoding 'low_rank' cannot reproduce this target exactly", the
    group unnamed (and the factors' own group was fine); likewise "unchanged" for a changed group.
    The refusal names the group, and nothing is committed."""
    g = torch.Generator().manual_seed(0)
    w, bias = torch.randn(6, 4, generator=g), torch.randn(4, generator=g)
    v0 = ledger.commit({"w": w, "bias": bias}, message="base")
    b, a = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    state = {"w": apply_low_rank(w, b, a, 0.5), "bias": bias + 1}
    for encoding, hints, name in (("low_rank", {"low_rank": {"w": (b, a, 0.5)}}, "bias"), ("unchanged", {}, "bias")):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.commit(state, parent=v0, message="forced", encoding=encoding, **hints)
        assert str(refused.value) == f"parameter {name!r}: encoding {encoding!r} cannot reproduce this target exactly"
    assert [v.version_id for v in ledger.versions()] == [v0.version_id] and ledger.gc()["unreferenced"] == []
    lora = ledger.commit({"w": state["w"], "bias": bias}, parent=v0, message="LoRA", encoding="auto",
                         low_rank={"w": (b, a, 0.5)})
    assert ledger.manifest(lora)["w"].encoding == "low_rank" and same_bits(ledger.checkout(lora)["w"], state["w"])


def test_low_rank_factors_for_a_group_they_cannot_patch_are_refused_by_name(ledger):
    """Stranger pass 60: factors given for a 1-D or 0-D group, for a group new in the version (a
    root commit's among them) or for one whose shape changed were dropped without a word (the
    group stored whole), while factors of the wrong shape for a 2-D group were refused. Each is
    refused, naming the group, and nothing is committed."""
    g = torch.Generator().manual_seed(60)
    w, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    b, a = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    with pytest.raises(InvalidParameterError) as refused:
        ledger.commit({"w": w}, message="root", low_rank={"w": (b, a, 1.0)})
    assert str(refused.value) == ("low_rank factors given for parameter 'w', in a root commit: factors patch the "
                                  "parent's value, and a new parameter is stored whole")
    root = ledger.commit({"w": w, "bias": bias, "step": torch.tensor(1.0)}, message="root")
    lora = apply_low_rank(w, b, a, 0.5)
    cases = [
        ({"w": lora, "bias": bias + 1, "step": torch.tensor(1.0)}, {"bias": (torch.ones(6, 1), torch.ones(1, 1), 1.0)},
         "parameter 'bias': a low-rank patch needs a 2-D base, got shape (6,)"),
        ({"w": lora, "bias": bias, "step": torch.tensor(2.0)}, {"step": (torch.ones(1, 1), torch.ones(1, 1), 1.0)},
         "parameter 'step': a low-rank patch needs a 2-D base, got shape ()"),
        ({"w": lora, "bias": bias, "step": torch.tensor(1.0), "new": lora}, {"new": (b, a, 0.5)},
         f"low_rank factors given for parameter 'new', which the parent {root.version_id[:12]} does not have: "
         "factors patch the parent's value, and a new parameter is stored whole"),
        ({"w": torch.randn(7, 4, generator=g), "bias": bias, "step": torch.tensor(1.0)},
         {"w": (torch.ones(7, 2), torch.ones(2, 4), 1.0)},
         f"parameter 'w' is float32[7, 4] but float32[6, 4] in the parent {root.version_id[:12]}: a change of shape or "
         "dtype is stored whole (encoding auto or full), not as low-rank factors"),
    ]
    for state, factors, message in cases:
        with pytest.raises(InvalidParameterError) as refused:
            ledger.commit(state, parent=root, message="m", low_rank=factors)
        assert str(refused.value) == message
    assert [v.version_id for v in ledger.versions()] == [root.version_id] and ledger.gc()["unreferenced"] == []
    fine = ledger.commit({"w": lora, "bias": bias, "step": torch.tensor(1.0)}, parent=root, message="LoRA",
                         low_rank={"w": (b, a, 0.5)})
    assert ledger.manifest(fine)["w"].encoding == "low_rank" and same_bits(ledger.checkout(fine)["w"], lora)
