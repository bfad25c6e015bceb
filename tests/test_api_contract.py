"""The Ledger API, run twice: against a local ledger and against a live ``prov serve`` on
127.0.0.1 (one uvicorn subprocess for the module). Both must answer alike: the same records,
the same typed results, the same exception classes.

The server's ledger is shared by the module's tests, so every test names its own datasets and
tags (``name("web")``) and asserts on what it made.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import uuid
from datetime import date, datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch

from provenance import Ledger, __version__, errors
from provenance.errors import (
    AccessDeniedError,
    GateFailedError,
    InvalidParameterError,
    NotFoundError,
    ProvenanceError,
    ReadOnlyQueryError,
    RunEndedError,
)
from provenance.records import RegistrationResult, VersionRecord
from provenance.results import DedupReport, GateReport, Lineage, MemorizationReport, MergeReceipt, TaintReport
from provenance.synthetic import generate_corpus
from tests import serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("served")) as srv:
        yield srv


@pytest.fixture(params=["local", "remote"])
def api(request, tmp_path):
    if request.param == "local":
        return Ledger.init(tmp_path / "local")
    return request.getfixturevalue("server").ledger()


@pytest.fixture
def name(request):
    tag = uuid.uuid4().hex[:6]
    return lambda base: f"{base}-{tag}"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    corpus = generate_corpus(60, mean_words=50, dup_fraction=0.2, mutation=0.03, seed=7)
    web = _jsonl(tmp_path / "web.jsonl", corpus.docs)
    evals = _jsonl(tmp_path / "eval.jsonl", [{"id": f"q{i}", "text": corpus.docs[i]["text"] + " answer"}
                                             for i in range(3)] + [{"id": "q9", "text": "an unrelated question"}])
    return {"web": web, "eval": evals, "docs": corpus.docs}


def test_register_and_read_back(api, name, files):
    first = api.register_dataset(name("web"), str(files["web"]), id_field="id", license="CC-BY-4.0")
    assert isinstance(first, RegistrationResult) and first.created
    ds = first.dataset
    assert ds.dataset_id == f"{name('web')}@1" and ds.n_documents == 60 and ds.license.spdx == "CC-BY-4.0"
    assert api.dataset(name("web")) == ds == api.dataset(first)
    assert [s.n_documents for s in api.shards(ds)] == [60]
    doc = api.document(ds, files["docs"][5]["id"])
    assert doc.key == files["docs"][5]["id"] and len(doc.signature) == ds.config.num_perm
    again = api.register_dataset(name("web"), str(files["web"]), id_field="id", license="CC-BY-4.0")
    assert not again.created and again.dataset == ds
    assert ds in api.datasets(name("web"))


def test_croissant_file_paths_are_relative_to_the_folder_asked_for(api, name, files, tmp_path):
    """Through a server, `export_croissant(base=...)` dropped `base`: `prov dataset export -o
    elsewhere/x.json` wrote paths relative to the shards' folder, which the document did not sit in."""
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    beside = api.export_croissant(ds)
    assert [f["contentUrl"] for f in beside["distribution"]] == ["web.jsonl"]
    elsewhere = tmp_path / "exports" / "deep"
    moved = api.export_croissant(ds, base=elsewhere)
    assert [f["contentUrl"] for f in moved["distribution"]] == ["../../web.jsonl"]
    assert moved["url"] == elsewhere.resolve().as_uri()


def test_a_fisher_that_is_not_a_mapping_is_refused_alike(api):
    """Through a server `store_fisher(v, tensor)` was a TypeError from dict() (pass 49 named it
    locally only)."""
    v = api.commit({"w": torch.zeros(4)}, message="v")
    for given, said in ((torch.ones(4), "is a Tensor: give a mapping of parameter name -> tensor"),
                        ([("w", torch.ones(4))], "is a list: give a mapping"),
                        ({0: torch.ones(4)}, "has a key that is not a parameter name (text): 0")):
        with pytest.raises(InvalidParameterError) as refused:
            api.store_fisher(v, given)
        assert str(refused.value).startswith(f"the Fisher given for version {v.version_id[:12]} {said}")
    assert api.sql("SELECT count(*) AS n FROM version_fishers WHERE version_id = ?", [v.version_id]).to_pylist() == [
        {"n": 0}]


def test_stored_fishers_are_listed_alike(api):
    """`fishers(version)` was the local ledger's only (docs/merging.md uses it)."""
    v = api.commit({"w": torch.zeros(4), "b": torch.zeros(2)}, message="v")
    assert api.fishers(v) == {}
    api.store_fisher(v, {"w": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.ones(2)}, keep=0.5, meta={"samples": 64})
    found = api.fishers(v)
    assert sorted(found) == ["b", "w"]
    assert {n: (f["kind"], sorted(f["objects"]), f["meta"]) for n, f in found.items()} == {
        "b": ("topk", ["indices", "values"], {"samples": 64, "keep": 0.5}),
        "w": ("topk", ["indices", "values"], {"samples": 64, "keep": 0.5})}
    assert all(re.fullmatch(r"[0-9a-f]{32}", a) for f in found.values() for a in f["objects"].values())


def test_registration_fingerprints_agree_with_a_local_one(api, name, files, tmp_path):
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    local = Ledger.init(tmp_path / "reference").register_dataset("web", str(files["web"]), id_field="id").dataset
    assert ds.content_hash == local.content_hash
    key = files["docs"][11]["id"]
    theirs, ours = api.document(ds, key), Ledger.open(tmp_path / "reference").document(local, key)
    assert (theirs.signature, theirs.exact_hash, theirs.band_keys) == (ours.signature, ours.exact_hash, ours.band_keys)


def test_errors_are_the_library_classes(api, name):
    with pytest.raises(NotFoundError):
        api.dataset(name("missing"))
    with pytest.raises(NotFoundError):
        api.version("0123456789abcdef")
    with pytest.raises(InvalidParameterError, match="name"):
        api.register_dataset("bad name!", [{"text": "x"}])
    with pytest.raises(InvalidParameterError, match="message"):
        api.commit({"w": torch.zeros(2)}, message="")


def test_commit_checkout_tags_bit_identical(api, name, tmp_path):
    base_state = {"w": torch.randn(64, 32), "b": torch.arange(5, dtype=torch.int64), "h": torch.randn(8).half()}
    base = api.commit(base_state, message="base")
    tuned = {k: v.clone() for k, v in base_state.items()}
    tuned["w"][0, :3] += 1.0
    child = api.commit(tuned, parent=base, message="tuned")
    assert isinstance(child, VersionRecord) and child.parents == [base.version_id]
    assert child.stored_bytes < base.stored_bytes  # a sparse patch on the parent
    out = api.checkout(child)
    assert all(torch.equal(out[k], tuned[k]) and out[k].dtype == tuned[k].dtype for k in tuned)
    path = api.checkout(child, tmp_path / "child.safetensors")
    from safetensors.torch import load_file

    assert all(torch.equal(v, tuned[k]) for k, v in load_file(str(path)).items())
    tagged = api.tag(name("release"), child)
    assert tagged.tags == [name("release")]  # the record answered names the tag just set
    assert api.version(name("release")) == api.version(child.version_id[:8]) == tagged
    assert name("release") in [t.name for t in api.tags()]
    assert set(api.manifest(child)) == {"w", "b", "h"}
    file_commit = api.commit(str(path), parent=child, message="the same, from a file")
    assert file_commit.stored_bytes == 0 or all(p.encoding in ("unchanged",) for p in api.manifest(file_commit).values())


def test_references_with_url_characters_mean_what_they_say(api, name):
    """A remote ledger put tags, references and keys into its URLs as given: ``tag("rc?1", v)``
    set the tag ``rc``, a document key ``q?x`` was looked up as ``q`` and ``%41`` as ``A``, and
    ``a/../TAG`` set the tag ``TAG``. Now every call reads them as the local ledger does."""
    version = api.commit({"w": torch.randn(3)}, message="tagged")
    api.tag(name("rc"), version)
    for bad in (name("rc") + "?1", name("rc") + "#1", name("rc") + "%2F1"):
        with pytest.raises(InvalidParameterError, match="must start with an ASCII letter"):
            api.tag(bad, version)
    assert name("rc") + "?1" not in [t.name for t in api.tags()]
    assert [t.name for t in api.tags()].count(name("rc")) == 1
    for ref in (name("rc") + "?x=1", name("rc") + "#x"):
        with pytest.raises(NotFoundError, match="no version or tag"):
            api.version(ref)
    keys = ["q?x", "h#1", "%41", "a/b"]
    ds = api.register_dataset(name("keys"), [{"id": k, "text": f"text number {i} of the key test"}
                                             for i, k in enumerate(keys)], id_field="id").dataset
    assert [api.document(ds, k).key for k in keys] == keys


def test_a_checkout_under_a_pickle_s_name_is_warned_of(api, tmp_path):
    """`checkout -o out.bin` wrote a safetensors file under a pickle's name without a word (found
    by stranger pass 39): loaders choose the format by the name."""
    import warnings

    from provenance.errors import ProvenanceWarning

    v = api.commit({"w": torch.arange(4.0)}, message="one")
    with pytest.warns(ProvenanceWarning, match=r"out\.bin: a safetensors file is written under a pickle's name"):
        path = api.checkout(v, tmp_path / "out.bin")
    from safetensors.torch import load_file

    assert torch.equal(load_file(path)["w"], torch.arange(4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvenanceWarning)
        api.checkout(v, tmp_path / "out.safetensors")


def test_a_registered_dataset_of_a_version_made_by_removal_reads_alike(api, name, tmp_path):
    """Through a server a ``RegisteredDataset`` of the version ``remove_documents`` made read every
    row of the kept file back and refused: "read 6 documents back, the ledger has 4" (the client
    had no ``withheld`` or ``documents``): retraining without retracted data failed there."""
    from provenance.torch import RegisteredDataset

    data = _jsonl(tmp_path / "d.jsonl", [{"id": f"k{i}", "text": f"document number {i} of six"} for i in range(6)])
    api.register_dataset(name("d"), str(data), id_field="id")
    kept = api.remove_documents(name("d"), ["k1", "k4"], reason="pii").dataset
    assert api.withheld(kept) == [("d.jsonl", 4, 6)]
    assert api.documents(kept, columns=["key", "row_index"]).to_pylist() == [
        {"key": k, "row_index": r} for k, r in (("k0", 0), ("k2", 2), ("k3", 3), ("k5", 5))]
    read = RegisteredDataset(api, kept)
    assert (read.keys, read.texts[1]) == (["k0", "k2", "k3", "k5"], "document number 2 of six")
    assert api.withheld(name("d") + "@1") == []


def test_a_tag_is_deleted_alike_and_its_version_kept(api, name):
    """There was no way to remove a tag but `prov sql`, which is read-only: a mistaken
    `release/1.0` stayed for good."""
    v = api.commit({"w": torch.full((3,), 7.0)}, message="tagged by mistake")
    tag = name("release") + "/1.0"
    api.tag(tag, v)
    found = api.find_tag(tag)
    assert (found.name, found.version_id, found.message) == (tag, v.version_id, "tagged by mistake")
    gone = api.delete_tag(tag)
    assert (gone.name, gone.version_id, gone.message) == (tag, v.version_id, "tagged by mistake")
    assert tag not in [t.name for t in api.tags()] and api.version(v.version_id).tags == []
    assert torch.equal(api.checkout(v)["w"], torch.full((3,), 7.0))
    with pytest.raises(NotFoundError, match=rf"^no tag '{re.escape(tag)}' \("):
        api.delete_tag(tag)
    with pytest.raises(NotFoundError, match=rf"^no tag '{re.escape(tag)}' \("):
        api.find_tag(tag)
    with pytest.raises(NotFoundError, match=r"no version or tag"):
        api.version(tag)


def test_a_tag_with_a_slash_names_its_version_everywhere(api, name, tmp_path, request):
    """The docs tag `release/1.0`; a remote ledger set such a tag but could not use it: version(),
    lineage(), diff(), manifest() and checkout() of it all said `no such API route: GET
    /api/v1/versions/release/1.0...` (the server's version routes take one path part). Every
    call now names the tagged version, and a slashed name that is no tag is refused as locally."""
    base = api.commit({"w": torch.zeros(3)}, message="base")
    child = api.commit({"w": torch.ones(3)}, parent=base, message="child")
    tag = name("release") + "/1.0"
    api.tag(tag, child)
    assert api.version(tag).version_id == child.version_id
    assert [v.version_id for v in api.ancestors(tag)] == [child.version_id, base.version_id]
    assert api.lineage(tag).version == child.version_id
    assert [d["name"] for d in api.diff(base, tag)] == ["w"]
    assert set(api.manifest(tag)) == {"w"}
    assert torch.equal(api.checkout(tag)["w"], torch.ones(3))
    with pytest.raises(NotFoundError, match=r"no version or tag '.*/2\.0' \(a version id is 4 to 32 hex digits\)"):
        api.version(name("release") + "/2.0")
    if request.node.callspec.params["api"] == "local":
        return
    import httpx  # as curl asks for it: the tag's own route, the encoded '/' included

    server = request.getfixturevalue("server")
    for path in (tag, tag.replace("/", "%2F")):
        got = httpx.get(f"{server.url}/api/v1/tags/{path}", headers={"Authorization": f"Bearer {server.token}"})
        assert got.status_code == 200, got.text
        assert got.json()["version_id"] == child.version_id and got.json()["name"] == tag
    got = httpx.get(f"{server.url}/api/v1/tags/{name('release')}/2.0", headers={"Authorization": f"Bearer {server.token}"})
    assert got.status_code == 404 and got.json()["error"].startswith(f"no tag '{name('release')}/2.0' (tags: ")


def test_a_state_that_cannot_be_stored_is_refused_naming_the_parameter(api):
    """Locally each is refused naming the parameter; through a server the client failed inside
    torch or Python: a numpy array `AttributeError: ... has no attribute 'detach'`, a meta tensor
    `NotImplementedError: Cannot copy out of meta tensor`, a complex one a `ValueError`, a sparse
    one a `RuntimeError`, `low_rank="w"` `AttributeError: 'str' object has no attribute 'items'`.
    Nothing is written."""
    before = len(api.versions())
    cases = [(np.zeros(3, np.float32), "parameter 'w' is a ndarray, not a tensor"),
             (None, "parameter 'w' is a NoneType, not a tensor"),
             (torch.empty(3, device="meta"), "parameter 'w' is a meta tensor"),
             (torch.zeros(3, dtype=torch.complex64), "parameter 'w' is complex64, and complex tensors are not stored"),
             (torch.zeros(3, 3).to_sparse(), "parameter 'w' is a sparse_coo tensor")]
    for value, says in cases:
        with pytest.raises(InvalidParameterError, match=re.escape(says)):
            api.commit({"w": value}, message="bad")
    with pytest.raises(InvalidParameterError, match="low_rank must map parameter names to"):
        api.commit({"w": torch.zeros(3)}, message="bad", low_rank="w")
    assert len(api.versions()) == before


def test_merge_options_mean_the_same_locally_and_remotely(api, request):
    """Through a server a single-version average and eps=0 were refused by the request model (`body.versions:
    List should have at least 2 items`), weights given as a tensor or a numpy array and fisher=
    failed in the JSON encoder (`TypeError`), NaN weights with `Out of range float values are not
    JSON compliant`; on both, a version id given as a string was merged a character at a time
    (`no version or tag '3'`) and weights="1,1" was a `ValueError` from float()."""
    base = api.commit({"w": torch.zeros(4)}, message="base")
    x = api.commit({"w": torch.ones(4)}, parent=base, message="x")
    y = api.commit({"w": torch.full((4,), 3.0)}, parent=base, message="y")
    one = api.merge([x], method="average", message="one input")
    assert torch.equal(api.checkout(one)["w"], torch.ones(4))
    for weights in (torch.tensor([1.0, 3.0]), np.array([1.0, 3.0]), [1, 3]):
        merged = api.merge([x, y], method="average", weights=weights, message="weighted")
        assert torch.allclose(api.checkout(merged)["w"], torch.full((4,), 2.5))
    for bad, says in (({"weights": "1,1"}, "weights must be a list of numbers"),
                      ({"weights": [1.0, float("nan")]}, "finite"),
                      ({"eps": float("inf"), "method": "fisher"}, "eps"),
                      ({"normalize": "yes", "method": "fisher"}, "normalize")):
        with pytest.raises(InvalidParameterError, match=says):
            api.merge([x, y], message="bad", **{"method": "average", **bad})
    with pytest.raises(InvalidParameterError, match=r"versions must be a list \(of the versions to merge, .*\), got str"):
        api.merge(x.version_id, method="average", message="a string")
    if request.node.callspec.params["api"] == "remote":
        with pytest.raises(InvalidParameterError, match="store each input's with ledger.store_fisher"):
            api.merge([x, y], method="fisher", fisher=[{"w": torch.ones(4)}] * 2, message="fishers")
    before = len(api.versions())
    for method, bad, says in (("fisher", {"density": 0.5}, "density= is for ties: the fisher method does not use it"),
                              ("average", {"eps": 0.0, "density": 0.5},
                               "eps= is for fisher; density= is for ties: the average method does not use them"),
                              ("ties", {"normalize": True}, "normalize= is for fisher: the ties method"),
                              ("ties", {"density": 0.0}, r"density \(the fraction of each task vector TIES keeps\) must be "
                                                         r"a number in \(0, 1\], got 0.0"),
                              ("ties", {"density": "0.5"}, "got '0.5'")):
        with pytest.raises(InvalidParameterError, match=says):  # density=0.5 made a Fisher merge without a word
            api.merge([x, y], method=method, message="an option the method does not use", **bad)
    assert len(api.versions()) == before
    ties = api.merge([x, y], method="ties", density=1.0, normalize=False, message="ties, all kept")
    assert api.receipt(ties).density == 1.0 and api.receipt(ties).eps is None


def test_arguments_of_the_wrong_kind_are_refused_naming_them(api, name, files, request):
    """Found by stranger pass 33: a string where a list goes was taken a character at a time
    (`audit_dedup("news")`: `'n' is neither a dataset nor a version`; `audit_merge("7b98…")`:
    `no version or tag '7'`), `audit_dedup([5])` was an `AttributeError`, `audit_memorization(v,
    None)` a `TypeError`, `threshold="0.8"` was taken as 0.8, `tag(5, v)` set the tag '5' through a
    server (refused locally), `author=5` was stored as '5' through a server (an `AttributeError`
    locally), `encoding="zip"` was accepted on a root commit, `snapshot={...}` was an
    `AttributeError`, and a meta tensor as a low-rank factor or a Fisher failed inside torch."""
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    base = api.commit({"w": torch.zeros(4, 4)}, message="base")
    child = api.commit({"w": torch.ones(4, 4)}, parent=base, message="child")
    before = (len(api.versions()), len(api.audits()))
    refusals = [
        (lambda: api.audit_dedup(ds.name), "targets must be a list (of datasets or versions"),
        (lambda: api.audit_merge(child.version_id), "versions must be a list (of the versions to merge"),
        (lambda: api.audit_memorization(child, None), "samples must be a list (of texts, or a file of them"),
        (lambda: api.audit_dedup([ds.name], threshold="0.8"), "threshold must be a number in (0, 1], got '0.8'"),
        (lambda: api.tag(5, child), "tag 5 must start with an ASCII letter or digit"),
        (lambda: api.commit({"w": torch.ones(4, 4)}, parent=base, message="m", author=5),
         "the commit's author must be a string, got int 5"),
        (lambda: api.merge([base, child], method="average", message="m", author=5),
         "the merge's author must be a string, got int 5"),
        # through a server these had the request model's words ("body.versions: List should have
        # at least 1 item") or "expected a name, id or record, got int"; locally an int was
        # looked up as its digits ("no version or tag '5'")
        (lambda: api.audit_dedup([5]), "a target is a dataset or version name or record, got int 5"),
        (lambda: api.audit_dedup([]), "give at least one dataset or version to audit"),
        (lambda: api.merge([], message="m"), "merge needs at least one version"),
        (lambda: api.audit_merge([child]), "the gate needs at least two different versions"),
        (lambda: api.merge([5], message="m"), "a version is an id, an id prefix, a tag or a VersionRecord, got int 5"),
        (lambda: api.audit_memorization(5, ["x"]), "a version is an id, an id prefix, a tag or a VersionRecord, got int 5"),
        (lambda: api.version(5), "a version is an id, an id prefix, a tag or a VersionRecord, got int 5"),
        # through a server: "parameter 'prov.low_rank.B:w' is a int", or a ValueError of unpacking
        (lambda: api.commit({"w": torch.ones(4, 4)}, parent=base, message="m", low_rank={"w": (1, 2, 3)}),
         "low_rank['w'] must be (B, A, scale): two tensors and a number, got (int, int, int)"),
        (lambda: api.commit({"w": torch.ones(4, 4)}, parent=base, message="m", low_rank={"w": "BA"}),
         "low_rank['w'] must be (B, A, scale): two tensors and a number, got str"),
        (lambda: api.commit({"w": torch.ones(4, 4)}, parent=base, message="m",
                            low_rank={"w": (torch.ones(4, 1, device="meta"), torch.ones(1, 4), 1.0)}),
         "low_rank['w'] factor B is a meta tensor"),
    ]
    if request.node.callspec.params["api"] == "local":
        refusals += [
            (lambda: api.commit({"v": torch.ones(3)}, message="m", encoding="zip"), "unknown encoding 'zip'; known: "),
            (lambda: api.commit({"w": torch.ones(4, 4)}, parent=base, message="m", snapshot={"every": 2}),
             "snapshot must be a SnapshotPolicy"),
            (lambda: api.merge([base, child], method="fisher", message="m",
                               fisher=[{"w": torch.ones(4, 4)}, {"w": torch.ones(4, 4, device="meta")}]),
             "Fisher of 'w' is a meta tensor"),
        ]
    for call, says in refusals:
        with pytest.raises(InvalidParameterError, match=re.escape(says)):
            call()
    assert (len(api.versions()), len(api.audits())) == before


def test_a_run_logs_examples_and_commits_into_lineage(api, name, files):
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    base = api.commit({"w": torch.zeros(4, 4)}, message="base")
    keys = [d["id"] for d in files["docs"]]
    with api.start_run(base=base, datasets=[ds], message="fine-tune", flush_every=16) as run:
        for step in range(3):
            run.log_examples(keys[step * 20:(step + 1) * 20], step=step)
        version = run.commit({"w": torch.ones(4, 4)})
    assert version.run_id == run.run_id and api.run(run.run_id).status == "finished"
    lin = api.lineage(version)
    assert isinstance(lin, Lineage) and [d.dataset_id for d in lin.datasets] == [ds.dataset_id]
    assert lin.datasets[0].examples == 60 and lin.versions.num_rows == 2
    taint = api.taint(dataset=ds.dataset_id, key=keys[3])
    assert isinstance(taint, TaintReport) and [v.version_id for v in taint.versions] == [version.version_id]
    with pytest.raises(InvalidParameterError, match="no-such-key.* is not a document of the run.s datasets"):
        with api.start_run(datasets=[ds], message="bad keys") as bad:
            bad.log_examples(["no-such-key"])
            bad.flush()


def test_a_checkpoint_is_its_runs_and_counts_the_steps_up_to_its_own(api, name, files, tmp_path):
    """A checkpoint saved during a run is the run's (it was a version of no run: 'data unknown'):
    its lineage counts the examples logged at steps up to its step, while the run goes on and after
    it ends, and taint of a document the run first saw later leaves it out."""
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    side = api.register_dataset(name("side"), str(files["eval"]), id_field="id").dataset  # declared only: 4 documents
    base = api.commit({"w": torch.zeros(4)}, message="base")
    keys = [d["id"] for d in files["docs"]]
    run = api.start_run(base=base, datasets={web.dataset_id: 1, side.dataset_id: 1}, message="train", flush_every=4)
    for step in range(3):
        run.log_examples(keys[step * 5:(step + 1) * 5], step=step)
    at_two = run.checkpoint({"w": torch.ones(4)})  # the last step logged: 2
    at_one = run.checkpoint({"w": torch.full((4,), 0.5)}, step=1, message="early")
    assert (at_two.run_id, at_two.parents, at_one.message) == (run.run_id, [base.version_id], "early")
    assert api.run(run.run_id).status == "running"
    assert [(c.version_id, c.step) for c in api.checkpoints(run.run_id)] == [(at_one.version_id, 1),
                                                                             (at_two.version_id, 2)]

    def examples(version) -> dict[str, int]:
        return {d.dataset_id: d.examples for d in api.lineage(version).datasets}

    assert examples(at_two) == {web.dataset_id: 15, side.dataset_id: 4}
    assert examples(at_one) == {web.dataset_id: 10, side.dataset_id: 4}
    lin = api.lineage(at_two)
    assert lin.unrecorded == [base.version_id]  # the base only: the checkpoint's data is known
    assert [(v["version_id"], v["step"]) for v in lin.version_rows()] == [(at_two.version_id, 2), (base.version_id, None)]
    for step in range(3, 6):
        run.log_examples(keys[step * 5:(step + 1) * 5] + ([keys[0]] if step == 3 else []), step=step)
    run.flush()
    assert examples(at_two) == {web.dataset_id: 15, side.dataset_id: 4}  # still running: steps up to 2 only
    assert [v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[20]).versions] == []  # first seen at 4
    assert {v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[12]).versions} == {at_two.version_id}
    final = run.commit({"w": torch.full((4,), 2.0)})
    assert examples(final) == {web.dataset_id: 31, side.dataset_id: 4}
    assert examples(at_two) == {web.dataset_id: 15, side.dataset_id: 4}  # ended: the same
    assert examples(at_one) == {web.dataset_id: 10, side.dataset_id: 4}
    assert [v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[20]).versions] == [final.version_id]
    assert {v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[12]).versions} == {
        final.version_id, at_two.version_id}  # first seen at step 2: not by at_one (steps 0 and 1)
    assert {v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[0]).versions} == {
        final.version_id, at_two.version_id, at_one.version_id}
    assert {v.version_id for v in api.taint(dataset=side.dataset_id).versions} == {  # declared: every checkpoint
        final.version_id, at_two.version_id, at_one.version_id}
    # an average of the run's checkpoints trained on the run's data once: the later one's examples,
    # not their sum (25 and 8 were counted); each checkpoint's weight still counts in the effective examples
    soup = api.merge([at_one, at_two], method="average", message="checkpoint average")
    rows = {d.dataset_id: d for d in api.lineage(soup).datasets}
    assert {k: d.examples for k, d in rows.items()} == {web.dataset_id: 15, side.dataset_id: 4}
    assert rows[web.dataset_id].effective_examples == 0.5 * 10 + 0.5 * 15
    assert {k: d.examples for k, d in ((d.dataset_id, d) for d in api.lineage(api.merge(
        [at_two, final], method="average", message="with the run's own")).datasets)} == {
        web.dataset_id: 31, side.dataset_id: 4}
    with pytest.raises(ProvenanceError, match="has ended"):
        run.checkpoint({"w": torch.ones(4)})
    with pytest.raises(InvalidParameterError, match="only a running run saves checkpoints"):
        api.commit({"w": torch.ones(4)}, checkpoint_of=run.run_id, message="late")
    with pytest.raises(InvalidParameterError, match="step must be an integer from 0"):
        api.commit({"w": torch.ones(4)}, checkpoint_of=run.run_id, step=-1, message="late")


def test_non_finite_params_are_stored_alike_as_strict_json(api, name, files):
    """Locally `lr=nan` was stored as the bare token NaN (not JSON to strict readers); through a
    server the client failed with `ValueError: Out of range float values are not JSON compliant`.
    Both now store the strings JSON readers accept, and refuse params that are not a mapping."""
    params = {"lr": float("nan"), "max_grad_norm": float("inf"), "betas": (0.9, float("-inf")), "steps": 3}
    with api.start_run(datasets=[], params=params, message="non-finite") as run:
        pass
    stored = api.run(run.run_id).params
    assert stored == {"lr": "NaN", "max_grad_norm": "Infinity", "betas": [0.9, "-Infinity"], "steps": 3}
    raw = api.sql("SELECT params_json FROM runs WHERE run_id = ?", [run.run_id]).column(0)[0].as_py()
    assert json.loads(raw, parse_constant=lambda token: pytest.fail(f"{token} in {raw}")) == stored
    runs = len(api.runs())
    for wrong, says in (([("lr", 0.1)], r"run params must be a mapping of names to JSON values, got list"),
                        ({"lr": object()}, r"run params must be JSON values: Object of type object")):
        with pytest.raises(InvalidParameterError, match=says):
            api.start_run(datasets=[], params=wrong, message="m")
    assert len(api.runs()) == runs


def test_declared_datasets_of_the_wrong_kind_are_refused_alike(api, name, files):
    """Through a server `datasets=None` was a `TypeError` in the client, and `{"web": "2"}` was
    taken for 2 epochs; locally both are refused, naming what was given."""
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    runs = len(api.runs())
    for wrong, says in ((None, r"^datasets must be dataset names .* got NoneType$"),
                        ({ds.dataset_id: "2"}, r"must be a finite number >= 0, got '2'$"),
                        ({ds.dataset_id: float("nan")}, r"must be a finite number >= 0, got nan$")):
        with pytest.raises(InvalidParameterError, match=says):
            api.start_run(datasets=wrong, message="m")
    assert len(api.runs()) == runs


def test_a_run_ends_once(api, name, files):
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    run = api.start_run(datasets=[ds], message="evaluation only")
    run.log_examples([files["docs"][0]["id"]])
    record = run.finish()
    assert record.status == "finished" and record.run_id == run.run_id
    other = api.start_run(datasets=[ds], message="ended elsewhere")
    from provenance.runs import end_run

    if isinstance(api, Ledger):
        end_run(api, other.record, "failed", "elsewhere")
    else:
        api._call("POST", f"runs/{other.run_id}/end", json_body={"status": "failed", "error": "elsewhere"})
    with pytest.raises(RunEndedError):
        other.finish()


def test_merge_gate_and_receipt(api, name, files):
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    evals = api.register_dataset(name("eval"), str(files["eval"]), id_field="id", role="eval").dataset
    base = api.commit({"w": torch.zeros(8)}, message="base")
    heads = []
    for i, part in enumerate((files["docs"][:30], files["docs"][30:])):
        with api.start_run(base=base, datasets=[web], message=f"contributor {i}") as run:
            run.log_examples([d["id"] for d in part])
            heads.append(run.commit({"w": torch.full((8,), float(i + 1))}))
    gate = api.audit_merge(heads, eval_datasets=[evals.dataset_id])
    assert isinstance(gate, GateReport) and gate.passed is False
    assert gate.contamination.contaminated_eval_documents == 3
    # a warning reaches a server's client as it reaches a local caller (it stayed in the server's log),
    # each time it is raised (a server shows the same warning again to the next request)
    for _ in range(2):
        with pytest.warns(UserWarning, match=rf"^{web.dataset_id} is registered as training data \(role train\) and "
                                             "is compared here as evaluation data") as caught:
            api.audit_merge(heads, eval_datasets=[web.dataset_id], max_contamination=None)
        said = [w for w in caught if "registered as training data" in str(w.message)]
        assert len(said) == 1 and said[0].filename == __file__  # at the caller's line, local or remote
    with pytest.raises(GateFailedError) as failed:
        api.merge(heads, method="average", message="refused", gate={"eval_datasets": [evals.dataset_id]})
    assert isinstance(failed.value.report, GateReport) and not failed.value.report.passed
    merged = api.merge(heads, method="average", message="merged", gate={"eval_datasets": [evals.dataset_id],
                                                                          "max_contamination": None})
    receipt = api.receipt(merged)
    assert isinstance(receipt, MergeReceipt) and receipt.method == "average" and receipt.audit_id is not None
    assert torch.equal(api.checkout(merged)["w"], torch.full((8,), 1.5))
    assert api.receipt(base) is None
    # the audit the receipt cites keeps its report: refused whole, its pairs only may go
    with pytest.raises(InvalidParameterError, match=f"cited by the merge receipt of version {merged.version_id[:12]}"):
        api.delete_audits([receipt.audit_id])
    assert api.audit(receipt.audit_id)["report"]["passed"] is True
    pairs = api.audit_pairs(receipt.audit_id).num_rows
    gone = api.delete_audits([receipt.audit_id[:8]], pairs_only=True)
    assert [d["audit_id"] for d in gone["deleted"]] == [receipt.audit_id] and gone["pairs"] == pairs > 0
    with pytest.raises(NotFoundError, match="pairs were deleted on .* its report is kept"):
        api.audit_pairs(receipt.audit_id)
    assert api.audit(receipt.audit_id)["report"]["passed"] is True and api.receipt(merged).audit_id == receipt.audit_id
    listed = {a["audit_id"]: a for a in api.audits("merge")}[receipt.audit_id]
    assert listed["pairs"] == 0 and listed["pairs_deleted_at"] is not None


def test_retraction_arguments_of_the_wrong_kind_are_refused_alike(api, name, files, server):
    """Found by stranger pass 45: through a server `retract(..., near="0.5")` and `near=True` were
    recorded as retractions at 0.5 and 1.0 (the request model took them for numbers) and `taint`
    answered, while a local call refused both; a reason or key that is not UTF-8 was a
    UnicodeEncodeError in the client (a DuckDB traceback locally), `remove_documents(name, "x1")`
    removed the keys 'x' and '1', key=7 was a DuckDB ConversionException locally. Each is refused
    alike, naming what was given, and nothing is recorded. A raw request is refused too."""
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    key = files["docs"][0]["id"]
    before = len(api.retractions())
    refusals = []
    for near in ("0.5", True):
        said = f"near must be a number in (0, 1], got {near!r}"
        refusals += [(lambda near=near: api.retract(dataset=web, key=key, near=near, reason="asked"), said),
                     (lambda near=near: api.taint(dataset=web, key=key, near=near), said)]
    refusals += [
        (lambda: api.retract(dataset=web, key=7, reason="asked"), "a document key is text, as the ledger stores it: give '7', not int 7"),
        (lambda: api.retract(dataset=web, key=key, reason="bad \udcff"),
         "the retraction's reason holds an unpaired surrogate at character 4"),
        (lambda: api.retract(dataset=web, key=key, reason="asked", author=3),
         "the retraction's author must be a string, got int 3"),
        (lambda: api.remove_documents(name("web"), key), f"keys must be a list of document keys, got str {key!r}"),
        (lambda: api.remove_documents(name("web"), ["x\udcff"]), "a document key holds an unpaired surrogate"),
        (lambda: api.remove_documents(name("web"), [key], reason="bad \udcff"),
         "the removal's reason holds an unpaired surrogate at character 4"),
    ]
    for call, said in refusals:
        with pytest.raises(InvalidParameterError, match=re.escape(said)):
            call()
    assert len(api.retractions()) == before and len(api.datasets(name("web"), all_versions=True)) == 1
    for route, body in (("taint", {}), ("retractions", {"reason": "r"})):  # refused before anything is looked up
        answer = httpx.post(f"{server.url}/api/v1/{route}", json={**body, "dataset": "web", "key": "k", "near": "0.5"},
                            headers={"Authorization": f"Bearer {server.token}"})
        assert answer.status_code == 422 and "body.near: Input should be a valid number" in answer.text, answer.text


def test_a_retraction_plans_applies_and_proves_alike(api, name, files):
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    base = api.commit({"w": torch.zeros(8)}, message="base")
    heads = []
    for i, part in enumerate((files["docs"][:20], files["docs"][20:40], files["docs"][40:])):
        with api.start_run(base=base, datasets=[web], message=f"contributor {i}") as run:
            run.log_examples([d["id"] for d in part])
            heads.append(run.commit({"w": torch.full((8,), float(i + 1))}))
    merged = api.merge(heads, method="average", weights=[0.5, 0.25, 0.25], message="merged")
    api.tag(name("rel"), merged)
    key = files["docs"][3]["id"]  # logged by contributor 0 only
    with pytest.raises(InvalidParameterError, match="needs a reason"):
        api.retract(dataset=web, key=key, reason="")
    record = api.retract(dataset=web, key=key, reason="a removal request")
    rid = record["retraction_id"]
    steps = {s["version_id"]: s for s in record["steps"]}
    assert set(steps) == {heads[0].version_id, merged.version_id}
    assert steps[merged.version_id]["inputs"] == [heads[1].version_id, heads[2].version_id]
    assert steps[merged.version_id]["weights"] == [0.5, 0.5]
    results = api.apply_retraction(rid)
    assert [(r["version_id"], r["action"], r["exact"]) for r in results] == [(merged.version_id, "remerge", True)]
    assert api.apply_retraction(rid) == [{**r, "made_now": False} for r in results]  # nothing made twice
    assert torch.equal(api.checkout(results[0]["new_version_id"])["w"], torch.full((8,), 2.5))
    assert {t.name: t.version_id for t in api.tags()}[f"{name('rel')}+retracted-{rid}"] == results[0]["new_version_id"]
    proof = api.audit_retraction(rid, releases=f"{name('rel')}*")
    assert not proof["passed"] and {c["as"]: c["clean"] for c in proof["checked"]} == {
        f"remerge of {merged.version_id[:12]}": True, f"release {name('rel')}": False}  # the re-merge once
    assert api.audit_retraction(rid, samples=["nothing like the documents"], span=0)["passed"]
    assert api.retraction(rid)["results"][0]["new_version_id"] == results[0]["new_version_id"]
    assert rid in {r["retraction_id"] for r in api.retractions()}
    # through a server the times were ISO strings, and `prov retractions` printed them with a "T"
    assert isinstance(api.retraction(rid)["created_at"], datetime)
    assert isinstance(api.retraction(rid)["results"][0]["applied_at"], datetime)
    assert {type(r["created_at"]) for r in api.retractions()} == {datetime}
    assert {r["created_at"].tzinfo for r in api.retractions()} == {None}  # naive UTC, as the ledger's records
    if not isinstance(api, Ledger):  # on the wire RFC 3339 with Z, as records are: it went out with no zone
        for route in ("retractions", f"retractions/{rid}", "audits"):
            raw = api._http.get(f"/api/v1/{route}").json()
            for row in raw if isinstance(raw, list) else [raw, *raw["results"]]:
                assert all(row[k].endswith("Z") for k in ("created_at", "applied_at") if row.get(k)), (route, row)
    removed = api.remove_documents(name("web"), [key], retraction=rid)
    assert isinstance(removed, RegistrationResult) and removed.dataset.n_documents == 59
    assert {r["retraction_id"] for r in api.lineage(merged).retracted} == {rid}
    assert api.lineage(results[0]["new_version_id"]).made_by_retraction["replaces"] == merged.version_id
    with pytest.raises(NotFoundError, match="no retraction"):
        api.apply_retraction("0123456789ab")
    # through a server "" was "no such API route: POST /api/v1/retractions//apply", 12 "expected a
    # name, id or record, got int 12" (found by stranger pass 45)
    for bad, call in (("", api.apply_retraction), (12, api.apply_retraction), ("", api.audit_retraction),
                      ("zz", api.retraction)):
        with pytest.raises(NotFoundError, match=re.escape(f"no retraction {bad!r} (a retraction id is 4 to 12 hex")):
            call(bad)


def test_audits_return_typed_reports(api, name, files, tmp_path):
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    dedup = api.audit_dedup([ds.dataset_id])
    assert isinstance(dedup, DedupReport) and dedup.summary.documents == 60 and dedup.summary.pairs > 0
    stored = api.audit(dedup.audit_id)
    assert stored["kind"] == "dedup" and stored["report"]["summary"]["pairs"] == dedup.summary.pairs
    pairs = api.audit_pairs(dedup.audit_id)
    assert isinstance(pairs, pa.Table) and pairs.num_rows == dedup.summary.pairs
    dry = api.audit_dedup([ds.dataset_id], store=False)
    assert not dry.stored and dry.summary.pairs == dedup.summary.pairs
    every = api.audit_dedup([ds.dataset_id], store=False, bucket_window=0)  # an option the server passes on
    assert every.summary.pairs == dedup.summary.pairs and every.summary.windowed_buckets == 0
    with pytest.raises(InvalidParameterError, match="bucket_window must be a whole number"):
        api.audit_dedup([ds.dataset_id], bucket_window=-3)
    base = api.commit({"w": torch.zeros(2)}, message="base")
    with api.start_run(base=base, datasets=[ds], message="train") as run:
        v = run.commit({"w": torch.ones(2)})
    samples = [files["docs"][2]["text"], "nothing like it at all"]
    memo = api.audit_memorization(v, samples, span=8)
    assert isinstance(memo, MemorizationReport) and memo.summary.samples == 2
    assert memo.samples[0].matches[0].key == files["docs"][2]["id"] and memo.samples[1].matches == []
    stored = {a["audit_id"]: a for a in api.audits()}
    assert stored[dedup.audit_id]["pairs"] == dedup.summary.pairs and stored[dedup.audit_id]["pairs_deleted_at"] is None
    ids = [dedup.audit_id, memo.audit_id]
    dry = api.delete_audits(ids, dry_run=True)
    assert dry["dry_run"] and sorted(d["audit_id"] for d in dry["deleted"]) == sorted(ids) and dry["kept"] == []
    assert dry["pairs"] == dedup.summary.pairs + stored[memo.audit_id]["pairs"]
    assert api.audit(dedup.audit_id)["audit_id"] == dedup.audit_id  # a dry run deletes nothing
    kept = api.delete_audits(ids, kind="memorization")
    assert [d["audit_id"] for d in kept["deleted"]] == [memo.audit_id] and not kept["dry_run"]
    with pytest.raises(NotFoundError, match="no audit"):
        api.audit(memo.audit_id)
    assert api.delete_audits(ids[:1], before="2000-01-01")["deleted"] == []  # made after it: kept
    assert api.delete_audits(ids[:1], before=date(2000, 1, 1))["skipped"][0]["why"].startswith("made ")
    assert api.delete_audits(ids[:1], before="2999-01-01T00:00+02:00")["pairs"] == dedup.summary.pairs
    assert dedup.audit_id not in {a["audit_id"] for a in api.audits()}
    with pytest.raises(NotFoundError, match="no audit"):
        api.audit_pairs(dedup.audit_id)
    for bad, match in ((dict(), "name the audits to delete"), (dict(before="yesterday"), "not an ISO date"),
                       (dict(before="2999-01-01", kind="lint"), "kind 'lint'")):
        with pytest.raises(InvalidParameterError, match=match):
            api.delete_audits(**bad)


@pytest.mark.parametrize("bad", [5, 2.5, True, ["2026-01-01"]])
def test_delete_audits_refuses_a_before_that_is_no_time_naming_it(api, bad):
    """``before=5`` is refused with the library's error naming ``before`` and the value, the same
    through the server as locally (the server's own check would say only "Input should be a valid
    string")."""
    with pytest.raises(InvalidParameterError) as refused:
        api.delete_audits(before=bad)
    assert str(refused.value) == f"before {bad!r}: a date, a datetime or an ISO string (2026-12-01)"


def test_sql_returns_arrow_and_refuses_writes(api, name):
    api.commit({"w": torch.zeros(1)}, message=name("sql"))
    table = api.sql("SELECT message FROM versions WHERE message = ?", [name("sql")])
    assert isinstance(table, pa.Table) and table.to_pylist() == [{"message": name("sql")}]
    with pytest.raises(ReadOnlyQueryError, match="only SELECT"):
        api.sql("DELETE FROM versions")
    batches = list(api.sql_batches("SELECT range AS n FROM range(25)", rows=10))  # local: read as consumed
    assert [b.num_rows for b in batches] == [10, 10, 5] and batches[2].column("n").to_pylist() == list(range(20, 25))
    [empty] = api.sql_batches("SELECT message FROM versions WHERE false")
    assert (empty.num_rows, empty.schema.names) == (0, ["message"])
    with pytest.raises(ReadOnlyQueryError, match="only SELECT"):
        next(api.sql_batches("DELETE FROM versions"))
    for outside in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM '/etc/hostname'"):
        with pytest.raises(ReadOnlyQueryError, match="refused|disabled|not a table|does not exist"):
            api.sql(outside)


# -- the server only ---------------------------------------------------------------------------------

def test_tokens_scopes_and_the_access_log(server, name):
    admin = server.ledger()
    _, read = admin.issue_token(name("reader"), "read")
    _, write = admin.issue_token(name("writer"), "write")
    reader = server.ledger(token=read)
    assert isinstance(reader.versions(), list)
    with pytest.raises(AccessDeniedError, match="scope read"):
        reader.commit({"w": torch.zeros(1)}, message="not allowed")
    # queries sent as POST write nothing: a read token runs them, unlogged and kept for no key
    logged = admin.sql("SELECT count(*) AS n FROM access_log").to_pylist()[0]["n"]
    kept = admin.sql("SELECT count(*) AS n FROM idempotency").to_pylist()[0]["n"]
    assert reader.sql("SELECT 41 + 1 AS x").to_pylist() == [{"x": 42}]
    assert reader.taint(text="words nobody registered anywhere").versions == []
    assert admin.sql("SELECT count(*) AS n FROM access_log").to_pylist()[0]["n"] == logged
    assert admin.sql("SELECT count(*) AS n FROM idempotency").to_pylist()[0]["n"] == kept
    # the tokens, the kept answers and the access log are an admin's to read: a read token once
    # read a new admin token's secret from the kept answer to its creation
    for table in ("tokens", "idempotency", "access_log"):
        with pytest.raises(AccessDeniedError, match=f"table '{table}' is readable with an admin token only"):
            reader.sql(f"WITH x AS (SELECT * FROM {table}) SELECT count(*) FROM x")
    with pytest.raises(AccessDeniedError, match="admin token only"):  # a CTE of the name does not hide it
        reader.sql("WITH tokens AS (SELECT * FROM tokens) SELECT * FROM tokens")
    kept_answers = admin.sql("SELECT status, decode(body) AS body FROM idempotency "
                             "WHERE path = '/api/v1/tokens' AND method = 'POST'").to_pylist()
    assert {"status": 0, "body": json.dumps({"token": name("reader")})} in kept_answers
    assert not [a for a in kept_answers if read in a["body"] or write in a["body"]]
    writer = server.ledger(token=write)
    v = writer.commit({"w": torch.zeros(1)}, message=name("by the writer"))
    with pytest.raises(AccessDeniedError, match="needs admin"):
        writer.tokens()
    with pytest.raises(AccessDeniedError, match="needs admin"):  # deleting audits is an admin's
        writer.delete_audits(before="2000-01-01")
    with pytest.raises(AccessDeniedError) as unknown:  # which server refused it, where several are in use
        server.ledger(token="prov_not-a-token").versions()
    assert str(unknown.value) == f"GET {server.url}/api/v1/versions: unknown, revoked or expired token"
    assert httpx.get(f"{server.url}/api/v1/versions").status_code == 401
    admin.revoke_token(name("writer"))
    with pytest.raises(AccessDeniedError):
        writer.version(v)
    names = {t.name: t for t in admin.tokens()}
    assert names[name("writer")].revoked_at is not None and names[name("reader")].scope == "read"
    log = admin.sql("SELECT token, method, path, status FROM access_log WHERE token = ?", [name("writer")]).to_pylist()
    assert {"token": name("writer"), "method": "POST", "path": "/api/v1/versions", "status": 201} in log
    assert all(r["method"] != "GET" for r in admin.sql("SELECT method FROM access_log").to_pylist())


def test_a_retried_write_applies_once(server, name):
    body = {"message": name("once")}
    headers = {"Authorization": f"Bearer {server.token}", "Idempotency-Key": uuid.uuid4().hex}
    first = httpx.post(f"{server.url}/api/v1/runs", json=body, headers=headers)
    again = httpx.post(f"{server.url}/api/v1/runs", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    runs = [r for r in server.ledger().runs() if r.message == name("once")]
    assert len(runs) == 1
    other = httpx.post(f"{server.url}/api/v1/tags/x", json={"version": "nope"}, headers=headers)
    assert other.status_code == 422 and "was used for POST /api/v1/runs" in other.json()["error"]
    # the key is the first request's: another body, or another token, is refused, and nothing is dropped silently
    changed = httpx.post(f"{server.url}/api/v1/runs", json={"message": name("second")}, headers=headers)
    assert changed.status_code == 422 and "was used for a write with another body" in changed.json()["error"]
    _, write = server.ledger().issue_token(name("other-writer"), "write")
    stolen = httpx.post(f"{server.url}/api/v1/runs", json=body,
                        headers={**headers, "Authorization": f"Bearer {write}"})
    assert stolen.status_code == 422 and "was used by another token's write" in stolen.json()["error"]
    assert [r.message for r in server.ledger().runs() if r.message in (name("once"), name("second"))] == [name("once")]
    # a token's creation is applied once too; its secret is not kept, so a retry is told to start over
    create = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    made = httpx.post(f"{server.url}/api/v1/tokens", json={"name": name("made-once"), "scope": "read"}, headers=create)
    retried = httpx.post(f"{server.url}/api/v1/tokens", json={"name": name("made-once"), "scope": "read"},
                         headers=create)
    assert made.status_code == 201 and made.json()["token"].startswith("prov_")
    assert retried.status_code == 409 and retried.json()["made"] == {"token": name("made-once")}
    assert "its secret is shown once and is not kept: revoke the token" in retried.json()["error"]
    assert made.json()["token"] not in retried.text
    # an answer the app gave before reading the whole body is replayed for the same request
    bad = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    upload = b"x" * 3_000_000
    first = httpx.post(f"{server.url}/api/v1/uploads", content=upload, headers=bad)
    again = httpx.post(f"{server.url}/api/v1/uploads", content=upload, headers=bad)
    assert first.status_code == again.status_code and 400 <= first.status_code < 500
    assert again.headers.get("idempotent-replayed") == "true" and first.json() == again.json()
    # an empty key (a variable left unset) is no key: refused, not shared by every write that sends one
    empty = [httpx.post(f"{server.url}/api/v1/runs", json={"message": name(f"empty-key-{i}")},
                        headers={**headers, "Idempotency-Key": ""}) for i in range(2)]
    assert [r.status_code for r in empty] == [422, 422]
    assert empty[1].json()["error"] == "Idempotency-Key: empty (leave the header out, or send a new key per write)"
    assert not [r for r in server.ledger().runs() if r.message.startswith(name("empty-key"))]


def test_a_server_url_given_with_the_api_prefix_is_the_server(server):
    """`--ledger http://host:port/api/v1` asked for every route twice over: `no such API route: GET
    /api/v1/api/v1/datasets` (found by stranger pass 38)."""
    for suffix in ("/api/v1", "/api/v1/"):
        ledger = Ledger.open(server.url + suffix, token=server.token)
        assert ledger.url == server.url
        assert [d.dataset_id for d in ledger.datasets()] == [d.dataset_id for d in server.ledger().datasets()]


def test_bad_requests_get_4xx_naming_the_problem(server):
    h = {"Authorization": f"Bearer {server.token}"}
    cases = [
        httpx.post(f"{server.url}/api/v1/runs", content=b"{not json", headers={**h, "Content-Type": "application/json"}),
        httpx.post(f"{server.url}/api/v1/runs", json={"message": "x", "surprise": 1}, headers=h),
        httpx.post(f"{server.url}/api/v1/uploads", content=b"not arrow", headers=h),
        httpx.post(f"{server.url}/api/v1/datasets", json={"name": "x", "upload_id": "0" * 32, "shards": []}, headers=h),
        httpx.post(f"{server.url}/api/v1/versions", params={"message": "m"}, content=b"garbage", headers=h),
        httpx.post(f"{server.url}/api/v1/uploads", content=b"", headers=h),
    ]
    statuses = [r.status_code for r in cases]
    assert all(400 <= s < 500 for s in statuses), [(r.status_code, r.text) for r in cases]
    messages = [r.json()["error"] for r in cases]
    assert "surprise" in messages[1] and "Arrow" in messages[2] and "no upload" in messages[3]
    assert all("Traceback" not in r.text for r in cases)
    # a JSON body refused as a whole says why in plain words (curl -d sends a form's Content-Type)
    tag = f"{server.url}/api/v1/tags/some-tag"
    whole = [httpx.put(tag, content=b'{"version": "x"}', headers={**h, "Content-Type": "application/x-www-form-urlencoded"}),
             httpx.put(tag, content=b'{"version": "x"}', headers=h),
             httpx.put(tag, content=b"not json", headers={**h, "Content-Type": "application/json"}),
             httpx.put(tag, content=b"", headers={**h, "Content-Type": "application/json"})]
    assert [r.status_code for r in whole] == [422] * 4
    assert [r.json()["error"] for r in whole] == [
        "invalid request: the body must be a JSON object sent with Content-Type: application/json (this request's: "
        "application/x-www-form-urlencoded)",
        "invalid request: the body must be a JSON object sent with Content-Type: application/json (this request's: none)",
        "invalid request: the body is not JSON (Expecting value at character 0)",
        "invalid request: the body is empty: this route takes a JSON object"]
    assert "some-tag" not in [t.name for t in server.ledger().tags()]


def test_backup_is_a_verified_copy(api, name, files, tmp_path):
    api.register_dataset(name("web"), str(files["web"]), id_field="id")
    v = api.commit({"w": torch.randn(16)}, message=name("backed up"))
    dest = tmp_path / "backup"
    if not isinstance(api, Ledger):  # a folder on the server's machine (here: beside its ledger)
        assert "ledger" not in httpx.get(f"{api.url}/healthz").json()  # the server's paths: to token holders only
        dest = Path(api._http.get("/healthz").json()["ledger"]).parent.parent / f"backup-{name('b')}"
    report = api.backup(dest)
    assert report["verified"] and report["objects_copied"] > 0 and report["database_bytes"] > 0
    copy = Ledger.open(dest, read_only=True)
    assert copy.version(v.version_id) == api.version(v.version_id)
    assert torch.equal(copy.checkout(v)["w"], api.checkout(v)["w"])
    assert copy.dataset(name("web")).n_documents == 60
    with pytest.raises(InvalidParameterError, match="not an empty folder"):
        api.backup(dest)
    (tmp_path / "a-file").write_text("x")  # was '.../a-file/b/.prov.partial/objects: Not a directory', an OSError
    with pytest.raises(InvalidParameterError, match=r"^cannot make backup destination \S+/a-file/b: Not a directory$"):
        api.backup(tmp_path / "a-file" / "b")
    with pytest.raises(InvalidParameterError, match=r"^the folder must be a path \(str or os.PathLike\), got int 123$"):
        api.backup(123)  # a TypeError from pathlib; through a server, the folder '123' beside wherever it ran
    with pytest.raises(InvalidParameterError, match=r"^link must be True or False, got str 'no'$"):
        api.backup(tmp_path / "linked", link="no")
    assert not (tmp_path / "linked").exists()
    if not isinstance(api, Ledger):
        with pytest.raises(InvalidParameterError, match=r"^backup destination 'relative/b' is not an absolute path"):
            api.backup("relative/b")


def test_attach_diff_verify_and_gc(api, name, files):
    """The verbs the other tests leave out: a detached run attached to and ended from elsewhere,
    diff and data diff of two versions, verify, and gc, the same through both implementations."""
    ds = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    base = api.commit({"w": torch.zeros(8, 8), "b": torch.zeros(3)}, message="base")
    started = api.start_run(base=base, datasets=[ds], message="detached", detached=True)
    attached = api.attach_run(started.run_id)
    attached.log_examples([d["id"] for d in files["docs"][:10]], step=0)
    tuned = attached.commit({"w": torch.ones(8, 8), "b": torch.zeros(3)})
    assert api.run(started.run_id).status == "finished" and tuned.run_id == started.run_id
    changes = {row["name"]: row for row in api.diff(base, tuned)}
    assert (changes["w"]["status"], changes["w"]["changed"]) == ("changed", 1.0)
    assert (changes["b"]["status"], changes["b"]["patch_bytes"]) == ("unchanged", 0)
    data = api.data_diff(tuned, base)
    assert (data["a"], data["b"]) == (tuned.version_id, base.version_id)
    assert data["datasets_only_in_a"] == [ds.dataset_id] and data["datasets_only_in_b"] == []
    assert data["shards_only_in_a"] == [{"dataset_id": ds.dataset_id, "shard_index": 0,
                                         "shard": api.shards(ds)[0].name}]
    with pytest.raises(InvalidParameterError, match="not running|finished"):
        api.attach_run(started.run_id)
    report = api.verify()
    assert report.ok
    swept = api.gc()
    assert swept["removed"] is False and isinstance(swept["unreferenced"], list)


def test_a_gated_merge_records_its_idempotency_key_with_the_merge_only(tmp_path, monkeypatch):
    """The gate's stored audit is a step before the merge: a server that stopped between the two
    must do the merge on the retry, not answer that it was applied."""
    from provenance import merges
    from provenance.ledger import WRITE_KEY

    ledger = Ledger.init(tmp_path / "l")
    ds = ledger.register_dataset("d", [{"id": f"x{i}", "text": f"document {i} about subject {i * 7}"}
                                       for i in range(20)], id_field="id").dataset
    base = ledger.commit({"w": torch.zeros(4)}, message="base")
    heads = []
    for i in (1, 2):
        with ledger.start_run(base=base, datasets=[ds], message=f"h{i}") as run:
            run.log_examples([f"x{j}" for j in range(i * 5)])
            heads.append(run.commit({"w": torch.full((4,), float(i))}))

    def keys() -> list[str]:
        return [r["idempotency_key"] for r in ledger.sql("SELECT idempotency_key FROM idempotency").to_pylist()]

    real = merges.merge_groups  # the gate runs inside the merge, once its checks pass: stop right after it
    monkeypatch.setattr(merges, "merge_groups", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("server stopped")))
    mark = WRITE_KEY.set(("key-1", "admin", "POST", "/api/v1/merges"))
    try:
        with pytest.raises(RuntimeError, match="server stopped"):
            ledger.merge(heads, method="average", message="m", gate={})
        assert len(ledger.audits()) == 1 and keys() == []  # the gate's audit is stored, the key is not
        monkeypatch.setattr(merges, "merge_groups", real)
        merged = ledger.merge(heads, method="average", message="m", gate={})
    finally:
        WRITE_KEY.reset(mark)
    assert keys() == ["key-1"] and torch.equal(ledger.checkout(merged)["w"], torch.full((4,), 1.5))


def test_the_warnings_header_round_trips_and_a_malformed_one_is_ignored():
    from provenance.remote import _warning_class
    from provenance.runs import EpochsDisagreeWarning
    from provenance.wire import MAX_WARNINGS, WARNING_CHARS, warnings_header, warnings_of

    held = [("UserWarning", f"line one\nline two ü {i}") for i in range(25)] + [("UserWarning", "x" * 5000)]
    value = warnings_header(held).decode("ascii")  # a header: no newline, nothing outside ASCII
    assert "\n" not in value and warnings_of(value) == held[:MAX_WARNINGS]
    assert warnings_of(warnings_header([("UserWarning", "x" * 5000)]).decode()) == [("UserWarning", "x" * WARNING_CHARS)]
    for bad in (None, "", "not json", "{}", "[1, 2]", '[{"category": "UserWarning"}]'):
        assert warnings_of(bad) == []
    assert _warning_class("EpochsDisagreeWarning") is EpochsDisagreeWarning
    assert _warning_class("RuntimeWarning") is RuntimeWarning
    assert _warning_class("ValueError") is UserWarning and _warning_class("NoSuchThing") is UserWarning


def test_a_server_relays_the_same_warning_to_every_request():
    # provenance's warnings point at the caller's line; in a server that is a thread's frame shared by
    # every request, where Python's default filter shows a warning once: each request must see it
    script = """
import threading
from provenance.errors import warn
from provenance.server.app import _HELD, _relay_warnings

_relay_warnings()
held = []
def request():
    _HELD.set(held)
    warn("the same warning")
for _ in range(3):
    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
print(held)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str([("ProvenanceWarning", "the same warning")] * 3), (
        done.stdout, done.stderr)


def test_an_unknown_route_or_method_answers_in_the_ledgers_shape(server):
    h = {"Authorization": f"Bearer {server.token}"}
    missing = httpx.get(f"{server.url}/api/v1/nosuch", headers=h)
    wrong = httpx.delete(f"{server.url}/api/v1/runs", headers=h)
    assert missing.status_code == 404 and wrong.status_code == 405
    assert missing.json() == {"error": f"no such API route: GET /api/v1/nosuch (server {__version__})",
                              "kind": "ProvenanceError"}
    assert wrong.json()["error"].startswith("method not allowed: DELETE /api/v1/runs") and "allow" in wrong.headers
    with pytest.raises(errors.ProvenanceError, match="no such API route: GET /api/v1/nosuch") as caught:
        server.ledger()._call("GET", "nosuch")  # a client newer than its server: told what is missing
    assert "not a provenance ledger server" not in str(caught.value)


def test_head_is_answered_as_get_without_the_body(server):
    """HEAD got 405 on every route, ``HEAD /healthz`` (a load balancer's health check) too; it
    is answered as GET is, with the same status and headers, and no body."""
    h = {"Authorization": f"Bearer {server.token}"}
    for path, headers in (("/healthz", {}), ("/api/v1/datasets", h), ("/api/v1/summary", h)):
        got, head = httpx.get(f"{server.url}{path}", headers=headers), httpx.head(f"{server.url}{path}", headers=headers)
        assert (head.status_code, head.content) == (200, b""), (path, head.text)
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        assert head.headers["content-type"] == "application/json"
    assert httpx.head(f"{server.url}/api/v1/datasets").status_code == 401  # a token is needed as for GET
    admin = server.ledger()
    reader = admin.issue_token("head-reader", "read")[1]
    assert httpx.head(f"{server.url}/api/v1/tokens", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    admin.revoke_token("head-reader")
    assert httpx.head(f"{server.url}/api/v1/nosuch", headers=h).status_code == 404


def test_a_token_in_the_server_url_is_refused_without_printing_it(server, monkeypatch):
    """A token put in the URL (``http://me:TOKEN@host``, ``?token=``) was not read: the userinfo
    went as Basic auth and replaced PROV_TOKEN's Bearer header, so the answer was "this server
    needs a token ... prov reads it from PROV_TOKEN" with PROV_TOKEN set, and the secret was
    printed in every message naming the URL."""
    monkeypatch.setenv("PROV_TOKEN", server.token)
    host = server.url.removeprefix("http://")
    for url, said in ((f"http://me:s3cret@{host}", "a user name or password"), (f"{server.url}/?token=s3cret", "a query"),
                      (f"{server.url}/#s3cret", "a fragment")):
        with pytest.raises(errors.InvalidParameterError) as refused:
            Ledger.open(url)
        assert str(refused.value).startswith(f"ledger server URL {server.url} is given with {said}")
        assert "s3cret" not in str(refused.value) and "PROV_TOKEN" in str(refused.value)
    assert Ledger.open(server.url + "/").summary()["datasets"] >= 0  # PROV_TOKEN's Bearer header, as documented


def test_a_json_body_that_cannot_be_read_is_named_not_a_bare_400(server, name):
    """A body sent as JSON that Python cannot read (not UTF-8, gzip'ed, nested 100,000 deep, a
    number of 5,000 digits) got 400 ``There was an error parsing the body: PUT …``, of kind
    ``ProvenanceError``, a status the OpenAPI document did not list; it is 422 saying why."""
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    version = server.ledger().commit({"w": torch.zeros(2)}, message="unreadable bodies").version_id
    plain = json.dumps({"version": version}).encode()
    tag = f"{server.url}/api/v1/tags/{name('unreadable')}"
    sent = [httpx.put(tag, content=b'{"version": "\xff\xfe"}', headers=h),
            httpx.put(tag, content=gzip.compress(plain), headers={**h, "Content-Encoding": "gzip"}),
            httpx.put(tag, content=b'{"version": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=h),
            httpx.put(tag, content=b'{"version": 1' + b"0" * 5000 + b"}", headers=h)]
    assert [(r.status_code, r.json()["kind"]) for r in sent] == [(422, "InvalidParameterError")] * 4
    assert [r.json()["error"] for r in sent] == [
        "invalid request: the body is not JSON: it is not UTF-8 text (byte 0xff at offset 13)",
        "invalid request: the body is sent with Content-Encoding: gzip, which this route does not read: send the JSON "
        "as it is (OpenLineage events, POST /api/v1/lineage, may be gzip'ed)",
        "invalid request: the body nests its arrays or objects too deeply to be read",
        f"invalid request: the body holds a number of more than {sys.get_int_max_str_digits():,} digits"]
    assert name("unreadable") not in [t.name for t in server.ledger().tags()]
    assert httpx.put(tag, content=plain, headers=h).json()["version_id"] == version  # the same write, readable


def test_a_reference_that_is_not_utf8_is_refused_naming_it(api, server):
    """A version, dataset or shard given as a string holding an unpaired surrogate (JSON's
    ``"\\ud800"``, a command line's stray bytes) reached DuckDB, whose ``Python Conversion
    Failure`` was HTTP 500 (``Internal Server Error``, plain text) from a server and a traceback
    locally; it is refused naming it, and nothing is written."""
    said = r"the reference '\ud800' holds an unpaired surrogate at character 0: it is not valid UTF-8"
    with pytest.raises(InvalidParameterError) as refused:
        api.version("\ud800")
    assert str(refused.value) == said
    with pytest.raises(InvalidParameterError, match=r"the shard '\\ud800' holds an unpaired surrogate"):
        api.taint(dataset="anything", shard="\ud800")
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    before = server.ledger().sql("SELECT (SELECT count(*) FROM tags) AS t, (SELECT count(*) FROM runs) AS r").to_pylist()
    sent = {"tag": httpx.put(f"{server.url}/api/v1/tags/surrogate", content=b'{"version": "\\ud800"}', headers=h),
            "run": httpx.post(f"{server.url}/api/v1/runs", content=b'{"message": "m", "base": "\\ud800"}', headers=h),
            "dedup": httpx.post(f"{server.url}/api/v1/audits/dedup", content=b'{"targets": ["\\ud800"]}', headers=h),
            "taint": httpx.post(f"{server.url}/api/v1/taint", content=b'{"dataset": "\\ud800", "key": "k"}', headers=h)}
    assert {k: (r.status_code, r.json()["kind"]) for k, r in sent.items()} == {
        k: (422, "InvalidParameterError") for k in sent}
    assert [sent[k].json()["error"] for k in ("tag", "run", "dedup")] == [said] * 3
    assert sent["taint"].json()["error"] == (r"the dataset '\ud800' holds an unpaired surrogate at character 0: it is "
                                             "not valid UTF-8")
    assert server.ledger().sql("SELECT (SELECT count(*) FROM tags) AS t, (SELECT count(*) FROM runs) AS r").to_pylist() \
        == before
    assert "Traceback" not in server.output()


def test_a_method_the_path_lacks_is_answered_with_every_method_it_has(server):
    """``Allow`` named the methods of the first route whose path matched: ``DELETE
    /api/v1/datasets`` said ``Allow: GET`` (POST registers), ``PUT /api/v1/audits/delete`` (a
    POST route) said ``GET`` only. It lists every method the path answers, HEAD with GET."""
    h = {"Authorization": f"Bearer {server.token}"}
    for method, path, allow in (("DELETE", "/api/v1/datasets", "GET, HEAD, POST"),
                                ("PUT", "/api/v1/audits/delete", "GET, HEAD, POST"),
                                ("PATCH", "/api/v1/tags/release/1.0", "GET, HEAD, PUT, DELETE"),
                                ("GET", "/api/v1/uploads", "POST"), ("POST", "/healthz", "GET, HEAD")):
        answer = httpx.request(method, f"{server.url}{path}", headers=h)
        assert (answer.status_code, answer.headers["allow"]) == (405, allow), (method, path)
        assert answer.json()["error"] == f"method not allowed: {method} {path} (server {__version__})"
    # to a read token too: it was told "token 'r' has scope read; DELETE /api/v1/versions needs
    # write", and a POST to a route newer than the server that it "needs write", not 404
    admin = server.ledger()
    reader = {"Authorization": f"Bearer {admin.issue_token('allow-reader', 'read')[1]}"}
    lacking = httpx.delete(f"{server.url}/api/v1/versions", headers=reader)
    newer = httpx.post(f"{server.url}/api/v1/versions/abcd/newer-route", json={}, headers=reader)
    denied = httpx.put(f"{server.url}/api/v1/tags/allow-reader", json={"version": "abcd"}, headers=reader)
    admin.revoke_token("allow-reader")
    assert (lacking.status_code, lacking.headers["allow"]) == (405, "GET, HEAD, POST")
    assert (newer.status_code, newer.json()["error"]) == (
        404, f"no such API route: POST /api/v1/versions/abcd/newer-route (server {__version__})")
    assert (denied.status_code, denied.json()["error"]) == (
        403, "token 'allow-reader' has scope read; PUT /api/v1/tags/allow-reader needs write")


def test_the_openapi_document_lists_the_refusals_the_server_answers(server):
    """The served document listed 401, 403 and 422 only: the 404 of an unknown version, the 413
    of a body over its limit and the 409 of a write applied already were outside the contract
    (schemathesis' status-code check failed on 29 operations). Each answer checked here is of a
    status its operation lists, in the shape the document gives."""
    import jsonschema

    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc == json.loads((Path(__file__).parent.parent / "schemas" / "openapi.json").read_text())
    error = doc["components"]["schemas"]["Error"]
    h = {"Authorization": f"Bearer {server.token}"}
    big = b'{"message": "' + b"x" * (64 << 20) + b'"}'
    answers = [("get", "/api/v1/versions/{ref}", httpx.get(f"{server.url}/api/v1/versions/abcdef01", headers=h)),
               ("get", "/api/v1/datasets/{ref}", httpx.get(f"{server.url}/api/v1/datasets/no-such", headers=h)),
               ("post", "/api/v1/runs", httpx.post(f"{server.url}/api/v1/runs", content=big,
                                                   headers={**h, "Content-Type": "application/json"}))]
    assert [a.status_code for _, _, a in answers] == [404, 404, 413]
    for method, path, answer in answers:
        assert str(answer.status_code) in doc["paths"][path][method]["responses"], (method, path)
        jsonschema.validate(answer.json(), error)
    responses = doc["paths"]["/api/v1/runs/{ref}/end"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422"} <= set(responses)
    assert "409" not in doc["paths"]["/api/v1/sql"]["post"]["responses"]  # a query writes nothing
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) == {"200"}


def test_the_server_remembers_tokens_by_their_hash_not_as_sent(tmp_path):
    """The server remembered each token checked for a few seconds under the secret sent, unknown
    ones included: 200 requests with a 1 MB ``Authorization`` header kept 200 MB, up to 10,000
    of them (10 GB) before it forgot them. It keeps 32 bytes per token, whatever was sent."""
    from provenance.server import LedgerService

    ledger = Ledger.init(tmp_path / "ledger")
    _, secret = ledger.issue_token("admin", "admin")
    del ledger
    service = LedgerService(tmp_path / "ledger")
    try:
        for i in range(3):
            assert service.check_token(f"{i}" + "x" * 1_000_000) is None
        assert service.check_token(secret).name == "admin"
        assert service.cached_token(secret)[1].name == "admin" and service.cached_token("0" + "x" * 1_000_000) == (True, None)
        assert len(service._tokens) == 4 and sum(len(k) for k in service._tokens) == 4 * 32
        assert secret not in service._tokens
    finally:
        service.close()


def test_run_params_nested_too_deeply_are_refused_naming_them(api, server, name):
    """Run params nested 600 levels deep (or holding themselves) recursed past Python's limit in
    the walks over them: a ``RecursionError`` traceback locally, HTTP 500 from a server. They are
    refused naming the param; 100 levels are kept as they are."""
    base = api.commit({"w": torch.zeros(2)}, message=name("deep params"))
    cycle: dict = {}
    cycle["self"] = cycle
    deep = nested = {}
    for _ in range(149):
        nested["a"] = nested = {}
    for params in ({"cfg": cycle}, {"cfg": deep}):
        with pytest.raises(InvalidParameterError) as refused:
            api.start_run(base=base, params=params, message=name("deep params"))
        assert str(refused.value) == ("run param 'cfg' nests more than 100 levels of mappings or lists (or holds "
                                      "itself); flatten it")
    assert [r for r in api.runs() if r.message == name("deep params")] == []
    kept = nested = {}
    for _ in range(99):
        nested["a"] = nested = {}
    run = api.start_run(base=base, params={"cfg": kept}, message=name("kept params"))
    run.finish()
    assert api.run(run.run_id).params["cfg"] == kept
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    body = b'{"message": "m", "params": {"cfg": ' + b'{"a": ' * 600 + b"1" + b"}" * 600 + b"}}"
    sent = httpx.post(f"{server.url}/api/v1/runs", content=body, headers=h)
    assert (sent.status_code, sent.json()["error"]) == (422, "run param 'cfg' nests more than 100 levels of mappings "
                                                             "or lists (or holds itself); flatten it")


def test_logged_examples_whose_seq_repeats_or_is_null_are_refused(server, name):
    """A batch of examples sent by hand (``POST /runs/ID/examples``) with two rows of one seq was
    refused as ``logged example 'k' is a document of several of the run's datasets (web@1,
    web@1)``, a dataset named twice (its rows were grouped by seq); a null seq was logged. Each is
    refused naming the row, and nothing is logged."""
    import io

    ledger = server.ledger()
    ledger.register_dataset(name("seq"), [{"id": f"k{i}", "text": f"a text numbered {i}"} for i in range(4)],
                            id_field="id")
    run = ledger.start_run(datasets=[name("seq")], message=name("seq"))
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/vnd.apache.arrow.stream"}

    def sent(seq: list) -> httpx.Response:
        table = pa.table({"seq": pa.array(seq, pa.int64()), "step": [0] * len(seq), "key": [f"k{i}" for i in range(len(seq))],
                          "dataset": pa.array([None] * len(seq), pa.string())})
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return httpx.post(f"{server.url}/api/v1/runs/{run.run_id}/examples", content=sink.getvalue(), headers=h)

    answers = [sent([5, 3, 3, 5]), sent([0, None])]
    assert [(a.status_code, a.json()["error"]) for a in answers] == [
        (422, "examples: row 2: seq 3 is an earlier row's; each row's seq is its own (its place in the batch)"),
        (422, "examples: row 1: the seq is null")]
    assert ledger.run(run.run_id).n_logged == 0
    assert sent([1, 0]).json() == {"written": 2}
    run.finish()


@pytest.mark.parametrize("store", [True, False])
def test_a_pairs_file_has_the_pairs_columns_with_no_pair(api, name, tmp_path, store):
    """Through a server, an audit that stores nothing wrote its pairs file from the report's pairs
    with types guessed from them: with no pair, a CSV without its header and a Parquet file without
    a column; with no pair verified, ``exact`` a column of type null."""
    import pyarrow.parquet as pq

    columns = ["a", "b", "dataset_a", "dataset_b", "jaccard", "stderr", "matches", "exact", "cluster"]
    lone = _jsonl(tmp_path / "lone.jsonl", [{"text": "one alpha beta gamma delta"},
                                           {"text": "different words here entirely, nothing alike"}])
    ds = api.register_dataset(name("lone"), str(lone)).dataset
    api.audit_dedup([ds.dataset_id], store=store, pairs_file=tmp_path / "none.csv")
    header = (tmp_path / "none.csv").read_text().splitlines()
    assert header[0].split(",")[:9] == [f'"{c}"' for c in columns] and len(header) == 1
    api.audit_dedup([ds.dataset_id], store=store, pairs_file=tmp_path / "none.parquet")
    schema = pq.read_schema(tmp_path / "none.parquet")
    assert schema.names[:9] == columns and str(schema.field("exact").type) == "double"
    twins = _jsonl(tmp_path / "twins.jsonl", [{"text": "the same words in the same order, twice"}] * 2)
    ds = api.register_dataset(name("twins"), str(twins)).dataset
    api.audit_dedup([ds.dataset_id], store=store, pairs_file=tmp_path / "two.parquet")
    table = pq.read_table(tmp_path / "two.parquet")
    assert table.num_rows == 1 and str(table.schema.field("exact").type) == "double"
    assert table.select(columns).to_pylist()[0] == {
        "a": "twins.jsonl:0", "b": "twins.jsonl:1", "dataset_a": ds.dataset_id, "dataset_b": ds.dataset_id,
        "jaccard": 1.0, "stderr": 0.0, "matches": ds.config.num_perm, "exact": None,
        "cluster": table["cluster"][0].as_py()}


def test_a_checkpoints_retraction_leaves_out_the_checkpoints_saved_before_the_target(api, name, tmp_path):
    """A key first seen at step 3: the plan retrains the checkpoint at 3 and the run's version, and
    re-merges a merge of the checkpoints at 1 and 3 without the one at 3. The checkpoint at 1 is
    clean: the audit of the applied plan passes (it named the re-merge as tainted through it), and a
    merge of the two checkpoints, in either order, lists the retraction in its lineage."""
    rows = [{"id": f"d{i}", "text": f"document number {i} says {i * 7} things about topic {i % 3}"} for i in range(16)]
    web = api.register_dataset(name("web"), str(_jsonl(tmp_path / "ckpt-web.jsonl", rows)), id_field="id").dataset
    base = api.commit({"w": torch.zeros(4)}, message="base")
    run = api.start_run(base=base, datasets={web.dataset_id: 1}, message="train")
    for step in range(4):
        run.log_examples([f"d{step * 4 + j}" for j in range(4)], step=step)
    early = run.checkpoint({"w": torch.ones(4)}, step=1)
    late = run.checkpoint({"w": torch.full((4,), 3.0)})  # step 3
    final = run.commit({"w": torch.full((4,), 4.0)})
    late_first = api.merge([late, early], method="average", message="late first")
    early_first = api.merge([early, late], method="average", message="early first")
    rec = api.retract(dataset=web.dataset_id, key="d12", reason="withdrawn")
    assert {(s["version_id"], s["action"]) for s in rec["steps"]} == {
        (late.version_id, "retrain"), (final.version_id, "retrain"),
        (late_first.version_id, "remerge"), (early_first.version_id, "remerge")}
    for merged in (late_first, early_first):  # the run is in both through both checkpoints: the one at 3 carries it
        assert [(r["run_id"], r["version_id"]) for r in api.lineage(merged).retracted] == [(run.run_id, late.version_id)]
    assert api.lineage(early).retracted == []
    made = api.apply_retraction(rec["retraction_id"])
    assert sorted(m["version_id"] for m in made) == sorted([late_first.version_id, early_first.version_id])
    audit = api.audit_retraction(rec["retraction_id"])
    assert [c["clean"] for c in audit["checked"]] == [True, True]
    assert (audit["problems"], audit["passed"]) == ([], True)


def test_a_checkpoint_saved_before_any_example_was_logged_was_trained_on_none(api, name, files):
    """The starting weights saved as a checkpoint before the first batch: by default it was recorded
    at step 0, so the examples then logged at step 0 counted in its lineage and taint."""
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    side = api.register_dataset(name("side"), str(files["eval"]), id_field="id").dataset  # declared only: 4 documents
    keys = [d["id"] for d in files["docs"]]
    run = api.start_run(datasets={web.dataset_id: 1, side.dataset_id: 1}, message="train")
    start = run.checkpoint({"w": torch.zeros(4)})
    for step in range(2):
        run.log_examples(keys[step * 3:(step + 1) * 3], step=step)
    first = run.checkpoint({"w": torch.ones(4)})
    final = run.commit({"w": torch.full((4,), 2.0)})
    assert [(c.version_id, c.step) for c in api.checkpoints(run.run_id)] == [(start.version_id, -1),
                                                                             (first.version_id, 1)]
    assert {d.dataset_id: d.examples for d in api.lineage(start).datasets} == {side.dataset_id: 4}
    assert {d.dataset_id: d.examples for d in api.lineage(first).datasets} == {web.dataset_id: 6, side.dataset_id: 4}
    assert {v.version_id for v in api.taint(dataset=web.dataset_id, key=keys[0]).versions} == {
        first.version_id, final.version_id}


def test_a_runs_checkpoints_and_records_are_read_with_the_run_itself(api, name, files):
    """``ledger.checkpoints(run)`` with the ``Run`` that ``start_run`` gave, as the docs write it: a
    client refused it ("expected a name, id or record, got RemoteRun") where a local ledger took it."""
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    keys = [d["id"] for d in files["docs"]]
    run = api.start_run(datasets=[web.dataset_id], message="train")
    run.log_examples(keys[:3], step=0)
    saved = run.checkpoint({"w": torch.ones(4)})
    assert [(c.version_id, c.run_id, c.step) for c in api.checkpoints(run)] == [(saved.version_id, run.run_id, 0)]
    assert (api.run(run).run_id, api.run(run).status) == (run.run_id, "running")
    run.finish()
    assert [(s.dataset_id, s.examples) for s in api.run_shards(run)] == [(web.dataset_id, 3)]


def test_a_checkpoint_saved_before_its_run_logged_a_retracted_dataset_is_clean(api, name, files, tmp_path):
    """Retracting a whole dataset (or shard) the run logged from step 2 on: the checkpoint at step 1
    was left out of the plan, but its lineage listed the retraction and the audit of it as a
    release said it still held retracted data."""
    web = api.register_dataset(name("web"), str(files["web"]), id_field="id").dataset
    rows = [{"id": f"s{i}", "text": f"side note {i} on the weather of week {i * 5}"} for i in range(4)]
    side = api.register_dataset(name("side"), str(_jsonl(tmp_path / "side.jsonl", rows)), id_field="id").dataset
    keys = [d["id"] for d in files["docs"]]
    run = api.start_run(datasets={web.dataset_id: 1, side.dataset_id: 1}, message="train")
    run.log_examples(["s0", "s1"], step=0)
    run.log_examples(["s2", "s3"], step=1)
    early = run.checkpoint({"w": torch.ones(4)})  # step 1: side only
    run.log_examples(keys[:3], step=2)
    final = run.commit({"w": torch.full((4,), 2.0)})
    release = f"{name('release')}-1"
    api.tag(release, early)
    assert {d.dataset_id: d.examples for d in api.lineage(early).datasets} == {side.dataset_id: 4}
    for target in ({"dataset": web.dataset_id}, {"dataset": web.dataset_id, "shard": 0}):
        rec = api.retract(reason="withdrawn", **target)
        assert [(s["version_id"], s["action"]) for s in rec["steps"]] == [(final.version_id, "retrain")]
        assert (rec["retraction_id"], final.version_id) in {(r["retraction_id"], r["version_id"])
                                                            for r in api.lineage(final).retracted}
        assert api.lineage(early).retracted == []
        audit = api.audit_retraction(rec["retraction_id"], releases=release, store=False)
        assert [(c["version_id"], c["clean"]) for c in audit["checked"]] == [(early.version_id, True)]
