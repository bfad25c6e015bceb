"""Hugging Face checkpoint folders: a commit keeps the folder's files (config, tokenizer) as
objects, a checkout writes a folder that ``from_pretrained`` loads, bit for bit; what is left out
and why, what a version inherits, and how damage and bad output folders are reported."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from provenance.cli.main import main
from provenance.errors import InvalidParameterError, ObjectCorruptError, UnsafeOutputError
from provenance.patches import same_bits

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, object]:
    """A tiny config-built GPT-2 and a locally trained tokenizer, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("hf") / "ckpt"
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=tokenizer.vocab_size,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    """A fresh copy of the saved folder, to add files to."""
    return Path(shutil.copytree(saved[0], tmp_path / "ckpt"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "model.safetensors"}


def test_a_checked_out_folder_loads_and_answers_like_the_original(ledger, saved, ckpt, tmp_path):
    _, model = saved
    version = ledger.commit(ckpt, message="tiny gpt2")
    out = ledger.checkout_hf(version, tmp_path / "out")
    assert out == (tmp_path / "out").resolve()
    assert sorted(os.listdir(out)) == sorted(os.listdir(ckpt))
    assert _files(out) == _files(ckpt)  # config, generation config and tokenizer files byte for byte
    original, checked_out = load_file(ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(original) == sorted(checked_out)
    assert all(same_bits(checked_out[n], original[n]) for n in original)

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("the cat sat on the mat", return_tensors="pt").input_ids
    assert ids.tolist() == _tokenizer()("the cat sat on the mat", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert [(f.name, f.version_id) for f in ledger.model_files(version)] == [
        (n, version.version_id) for n in sorted(_files(ckpt))]


def test_a_version_without_files_has_its_first_parents(ledger, ckpt, tmp_path):
    base = ledger.commit(ckpt, message="from the folder")
    state = load_file(ckpt / "model.safetensors")
    state["transformer.wte.weight"] += 1.0  # a fine-tune, say
    tuned = ledger.commit(state, parent=base, message="a state dict: no files of its own")
    tensors_only = tmp_path / "tensors"
    tensors_only.mkdir()
    save_file(state, str(tensors_only / "model.safetensors"))
    again = ledger.commit(tensors_only, parent=tuned, message="a folder of tensors only")
    for v in (tuned, again):
        assert {f.version_id for f in ledger.model_files(v)} == {base.version_id}
    out = ledger.checkout_hf(again, tmp_path / "out")
    assert _files(out) == _files(ckpt)
    assert same_bits(load_file(out / "model.safetensors")["transformer.wte.weight"], state["transformer.wte.weight"])

    (ckpt / "config.json").write_text(json.dumps({**json.loads((ckpt / "config.json").read_text()), "n_ctx": 16}))
    own = ledger.commit(ckpt, parent=again, message="a folder with its own files replaces the parent's")
    assert {f.version_id for f in ledger.model_files(own)} == {own.version_id}
    assert json.loads(ledger.checkout_hf(own, tmp_path / "own").joinpath("config.json").read_text())["n_ctx"] == 16

    bare = ledger.commit({"w": torch.ones(2)}, message="no folder anywhere up its parents")
    assert ledger.model_files(bare) == []
    with pytest.raises(InvalidParameterError, match="no stored config.json"):
        ledger.checkout_hf(bare, tmp_path / "bare")
    assert not (tmp_path / "bare").exists()


def test_pickles_and_trainer_state_are_recorded_as_left_out_and_never_written(ledger, ckpt, tmp_path):
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin", "pytorch_model.bin"):
        (ckpt / name).write_bytes(b"\x80\x04pickle")
    (ckpt / "trainer_state.json").write_text('{"global_step": 3}')
    (ckpt / "tf_model.h5").write_bytes(b"weights")
    (ckpt / ".gitattributes").write_text("*.bin filter=lfs")
    (ckpt / "checkpoint-1").mkdir()
    (ckpt / "checkpoint-1" / "config.json").write_text("{}")
    version = ledger.commit(ckpt, message="a Trainer's output folder")
    rows = {f.name: f for f in ledger.model_files(version)}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin", "pytorch_model.bin"):
        assert rows[name].object is None and rows[name].skipped.startswith("a pickle") and rows[name].size == 8
    assert rows["trainer_state.json"].skipped == "the Trainer's bookkeeping: the run records the training"
    assert rows["tf_model.h5"].skipped.startswith("weights in another format")
    assert rows[".gitattributes"].object is None and rows[".gitattributes"].skipped.startswith("a hidden file")
    assert rows["checkpoint-1"].object is None and rows["checkpoint-1"].skipped.startswith("a folder")  # said, not kept
    assert rows["config.json"].object is not None and rows["config.json"].skipped is None
    out = ledger.checkout_hf(version, tmp_path / "out")
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]


def test_a_pickle_checkpoint_is_refused_saying_why_and_what_to_do(ledger, tmp_path):
    """A `.pt`/`.bin` file, or a folder whose only weights are `pytorch_model.bin`, was refused as
    `expected a .safetensors file, ...` / `no model.safetensors ... in the folder`, without saying
    that a pickle is never read, nor how to commit it; nothing is unpickled, nothing written."""
    torch.save({"w": torch.ones(3)}, tmp_path / "model.pt")
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    todo = "provenance never reads one \\(loading a pickle runs its code\\): save the weights as safetensors"
    with pytest.raises(InvalidParameterError, match=f"model.pt is a pickle: {todo}"):
        ledger.commit(tmp_path / "model.pt", message="pickle")
    with pytest.raises(InvalidParameterError, match=f"old holds only pickles \\(pytorch_model.bin\\): {todo}"):
        ledger.commit(folder, message="pickle folder")
    assert ledger.versions() == []


def test_a_file_over_the_limit_refuses_the_commit_and_leaves_nothing(ledger, ckpt):
    (ckpt / "vocab.txt").write_bytes(b"x" * 5000)
    with pytest.raises(InvalidParameterError, match=r"vocab\.txt: 5,000 bytes, over the 4,096-byte limit"):
        ledger.commit(ckpt, message="too big", max_file_bytes=4096)
    assert ledger.versions() == [] and list(ledger.object_store().addresses()) == []
    version = ledger.commit(ckpt, message="the limit raised", max_file_bytes=8192)
    assert {f.name: f.size for f in ledger.model_files(version)}["vocab.txt"] == 5000


def test_a_json_file_caught_mid_write_refuses_the_commit_naming_it(ledger, ckpt):
    """save_pretrained writes config.json in place: a commit that read it mid-write stored it
    empty, and the checkout failed in from_pretrained long after. A `.json` file that is not JSON
    now refuses the commit, naming it, and nothing is kept."""
    good = (ckpt / "config.json").read_bytes()
    for torn, says in ((b"", "config.json is empty"), (good[: len(good) // 2], "config.json is not valid JSON (")):
        (ckpt / "config.json").write_bytes(torn)
        with pytest.raises(InvalidParameterError, match=re.escape(says) + ".*was it being written"):
            ledger.commit(ckpt, message="torn config")
        assert ledger.versions() == [] and list(ledger.object_store().addresses()) == []
    (ckpt / "config.json").write_bytes(good)
    version = ledger.commit(ckpt, message="whole")
    assert {f.name: f.size for f in ledger.model_files(version)}["config.json"] == len(good)


def test_cli_commit_file_limit(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "."]).exit_code == 0
    (ckpt / "vocab.txt").write_bytes(b"x" * (1 << 20) + b"x")
    refused = runner.invoke(main, ["model", "commit", str(ckpt), "-m", "too big", "--max-file-mb", "1"])
    assert refused.exit_code == 4 and "vocab.txt: 1,048,577 bytes, over the 1,048,576-byte limit" in refused.output
    assert "--max-file-mb" in refused.output
    kept = runner.invoke(main, ["model", "commit", str(ckpt), "-m", "kept", "--max-file-mb", "2", "--json"])
    assert kept.exit_code == 0, kept.output


def test_a_corrupt_file_object_is_named_and_nothing_is_written(ledger, ckpt, tmp_path):
    version = ledger.commit(ckpt, message="tiny gpt2")
    config = next(f for f in ledger.model_files(version) if f.name == "config.json")
    path = ledger.object_store().path(config.object)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a flipped bit in the file's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ObjectCorruptError, match=rf"file 'config.json' of version {version.version_id[:12]}: "
                                                 rf"object {config.object} .* is corrupt"):
        ledger.checkout_hf(version, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if not p.startswith(".out."))
    assert not (tmp_path / "out").exists()
    report = ledger.verify(objects=True)
    assert [(d.address, d.problem, d.versions) for d in report.damaged_objects] == [
        (config.object, "corrupt", [version.version_id])]


def test_file_objects_are_referenced_so_gc_keeps_them(ledger, ckpt):
    version = ledger.commit(ckpt, message="tiny gpt2")
    stored = {f.object for f in ledger.model_files(version)}
    assert stored <= set(ledger.object_store().addresses())
    assert ledger.gc(apply=True)["unreferenced"] == []
    assert all(ledger.versions_using(a) == [version.version_id] for a in stored)


def test_output_folder_refusals(ledger, ckpt, tmp_path):
    version = ledger.commit(ckpt, message="tiny gpt2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.bin").write_bytes(b"")
    with pytest.raises(UnsafeOutputError, match="not empty"):
        ledger.checkout_hf(version, tmp_path / "full")
    with pytest.raises(UnsafeOutputError, match="inside the ledger folder"):
        ledger.checkout_hf(version, ledger.root / "hf")
    with pytest.raises(UnsafeOutputError, match="does not exist"):
        ledger.checkout_hf(version, tmp_path / "a" / "b")
    (tmp_path / "empty").mkdir()
    assert ledger.checkout_hf(version, tmp_path / "empty").joinpath("config.json").is_file()
    assert ledger.checkout_hf(version, tmp_path / "a" / "b", parents=True).joinpath("model.safetensors").is_file()


def test_cli_commit_files_and_checkout_hf(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "."]).exit_code == 0
    (ckpt / "optimizer.pt").write_bytes(b"\x80")
    committed = runner.invoke(main, ["model", "commit", str(ckpt), "-m", "tiny gpt2", "--json"])
    assert committed.exit_code == 0, committed.output
    vid = json.loads(committed.output)["version_id"]
    files = json.loads(runner.invoke(main, ["model", "files", vid, "--json"]).output)
    assert {f["name"]: f["skipped"] is None for f in files} == {
        "config.json": True, "generation_config.json": True, "optimizer.pt": False, "tokenizer.json": True,
        "tokenizer_config.json": True}
    out = runner.invoke(main, ["model", "checkout", vid, "--hf", "out", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["files"] == ["config.json", "generation_config.json", "model.safetensors",
                                               "tokenizer.json", "tokenizer_config.json"]
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").n_layer == 2
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    (tmp_path / "shared").mkdir(mode=0o775)
    os.chmod(tmp_path / "shared", 0o775)
    assert runner.invoke(main, ["model", "checkout", vid, "--hf", "shared"]).exit_code == 0
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o775  # an empty folder given keeps its mode
    for args, says in (([], "give -o FILE (the tensors) or --hf DIR"),
                       (["-o", "x.safetensors", "--hf", "dir"], "give -o FILE or --hf DIR, not both")):
        refused = runner.invoke(main, ["model", "checkout", vid, *args])
        assert refused.exit_code == 2 and says in refused.output


def test_a_state_dict_commits_with_the_files_of_a_folder_given_apart(ledger, saved, ckpt, tmp_path):
    folder, model = saved
    config_only = tmp_path / "files"
    config_only.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ckpt / name, config_only / name)
    version = ledger.commit(model.state_dict(), message="weights, and their files apart", files=config_only)
    assert sorted(f.name for f in ledger.model_files(version)) == sorted(_files(config_only))
    out = ledger.checkout_hf(version, tmp_path / "out")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert all(same_bits(loaded.state_dict()[k], v) for k, v in model.state_dict().items() if k in loaded.state_dict())
    with pytest.raises(InvalidParameterError, match="is a checkpoint folder.*do not pass files="):
        ledger.commit(ckpt, message="both", files=config_only)
    with pytest.raises(InvalidParameterError, match="files must be a folder"):
        ledger.commit(model.state_dict(), message="no folder", files=tmp_path / "missing")


def test_a_folder_committed_through_a_server_warns_that_its_files_stay_behind(ckpt):
    from tests import serving

    with serving.running(ckpt.parent / "served") as server:
        with pytest.warns(UserWarning, match=r"config\.json.*not stored: a ledger server takes a folder's tensors only"):
            version = server.ledger().commit(ckpt, message="over HTTP")
        assert version.n_params > 0


def test_subfolders_and_hidden_files_are_listed_as_left_out(ledger, ckpt):
    """A commit keeps the folder's own files, as save_pretrained writes them; a subfolder and a
    hidden file were dropped without a word, and are now rows of `model files` with the reason."""
    (ckpt / "tokenizer").mkdir()
    (ckpt / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (ckpt / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    version = ledger.commit(ckpt, message="with extras")
    left = {f.name: (f.size, f.skipped) for f in ledger.model_files(version) if f.skipped}
    assert left == {"tokenizer": (4, "a folder: only the folder's own files are kept, as save_pretrained writes them"),
                    ".gitattributes": (25, "a hidden file: not part of what save_pretrained writes")}


def test_fifos_and_broken_links_are_listed_as_left_out(ledger, ckpt):
    """A FIFO, a broken symlink and a symlink loop in a checkpoint folder were dropped without a
    word (neither stored nor in `model files`); they are now rows with the reason, never opened."""
    os.mkfifo(ckpt / "pipe.json")
    (ckpt / "broken.json").symlink_to(ckpt / "gone.json")
    (ckpt / "loop.json").symlink_to(ckpt / "loop.json")
    version = ledger.commit(ckpt, message="with odd entries")
    left = {f.name: (f.size, f.skipped) for f in ledger.model_files(version) if f.skipped}
    assert left == {
        "pipe.json": (0, "not a regular file: a FIFO (named pipe)"),
        "broken.json": (0, f"not a regular file: a broken symlink (a symlink to {ckpt / 'gone.json'}): "
                           "its target does not exist"),
        "loop.json": (0, "not a regular file: a symlink loop: the link never reaches a file"),
    }
    assert "config.json" in {f.name for f in ledger.model_files(version) if f.object}


def test_a_file_name_that_is_not_utf8_refuses_the_commit_naming_it(ledger, ckpt):
    """A file of the folder named in Latin-1 (``caf\\xe9.json``) failed the commit with a pydantic
    `UnicodeEncodeError` traceback; it is now refused naming the file, and nothing is kept."""
    (Path(os.fsdecode(os.fsencode(ckpt) + b"/caf\xe9.json"))).write_text("{}")
    with pytest.raises(InvalidParameterError, match=r"ckpt/caf\\xe9.json: the file's name is not valid UTF-8; rename it"):
        ledger.commit(ckpt, message="latin-1 name")
    assert ledger.versions() == [] and ledger.gc()["unreferenced"] == []


def test_safetensors_metadata_a_version_does_not_keep_is_named(ledger, ckpt, tmp_path, recwarn):
    """A file's own safetensors metadata (a trainer's ``ss_*`` keys, ``modelspec.*``) was lost on
    the round trip without a word; the commit now warns naming the keys. Those a checkout writes
    (``format``, as save_pretrained does, and the version's id and message) are not named."""
    from provenance.errors import ProvenanceWarning

    save_file({"w": torch.ones(3)}, str(tmp_path / "m.safetensors"),
              metadata={"format": "pt", "ss_base_model": "sd15", "modelspec.title": "tiny"})
    with pytest.warns(ProvenanceWarning, match=r"m.safetensors: its safetensors metadata \('modelspec.title', "
                                               r"'ss_base_model'\) is not kept with the version"):
        version = ledger.commit(tmp_path / "m.safetensors", message="with metadata")
    assert same_bits(ledger.checkout(version)["w"], torch.ones(3))
    recwarn.clear()
    ledger.commit(ckpt, message="save_pretrained's format only")
    ledger.checkout(version, output=tmp_path / "out.safetensors")
    ledger.commit(tmp_path / "out.safetensors", parent=version, message="what a checkout wrote")
    assert not [w for w in recwarn if issubclass(w.category, ProvenanceWarning)]


def test_tensor_files_the_commit_does_not_read_are_listed_as_left_out(ledger, ckpt, tmp_path):
    """A second .safetensors file beside model.safetensors (and a stray shard beside an index) was
    neither stored nor listed: `model files` now names it, with the file the commit read."""
    save_file({"extra": torch.ones(3)}, str(ckpt / "ema.safetensors"))
    version = ledger.commit(ckpt, message="with an EMA copy")
    left = {f.name: f.skipped for f in ledger.model_files(version) if f.skipped}
    assert left == {"ema.safetensors": "tensors the version does not hold: the commit reads model.safetensors"}
    assert "extra" not in ledger.checkout(version)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    state = load_file(str(ckpt / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    save_file({n: state[n] for n in names[:half]}, str(sharded / "model-00001-of-00002.safetensors"))
    save_file({n: state[n] for n in names[half:]}, str(sharded / "model-00002-of-00002.safetensors"))
    save_file({"stale": torch.zeros(2)}, str(sharded / "model-00001-of-00003.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        n: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, n in enumerate(names)}}))
    shutil.copy(ckpt / "config.json", sharded / "config.json")
    version = ledger.commit(sharded, message="sharded, with a stale shard")
    left = {f.name: f.skipped for f in ledger.model_files(version) if f.skipped}
    assert left == {"model-00001-of-00003.safetensors": (
        "tensors the version does not hold: the commit reads model.safetensors.index.json, "
        "model-00001-of-00002.safetensors, model-00002-of-00002.safetensors")}
    assert {f.name for f in ledger.model_files(version) if not f.skipped} == {"config.json"}


def test_a_folder_of_shards_the_index_names_is_not_called_left_out(ledger, ckpt, tmp_path):
    """An index whose weight_map names shards in a sub-folder (`sub/model-1.safetensors`) is read
    whole, but `model files` listed `sub` as 'a folder: only the folder's own files are kept', as
    if its tensors were not in the version (found by stranger pass 35)."""
    sharded = tmp_path / "sub-sharded"
    (sharded / "sub").mkdir(parents=True)
    state = load_file(str(ckpt / "model.safetensors"))
    save_file(state, str(sharded / "sub" / "model-1.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        n: "sub/model-1.safetensors" for n in state}}))
    (sharded / "stray").mkdir()
    shutil.copy(ckpt / "config.json", sharded / "config.json")
    version = ledger.commit(sharded, message="shards in a sub-folder")
    assert sorted(ledger.checkout(version)) == sorted(state)
    left = {f.name: f.skipped for f in ledger.model_files(version) if f.skipped}
    assert left == {"stray": "a folder: only the folder's own files are kept, as save_pretrained writes them",
                    "sub": "a folder of shards the index names: their tensors are in the version; its files are "
                           "not kept as files"}


def test_a_child_with_files_of_its_own_but_no_config_says_so(ledger, ckpt, tmp_path):
    """A child committed from a folder holding only generation_config.json takes its own files,
    not its parent's: the checkout says that, not that no parent has a config."""
    parent = ledger.commit(ckpt, message="tiny gpt2")
    child_folder = tmp_path / "child"
    child_folder.mkdir()
    shutil.copy(ckpt / "model.safetensors", child_folder / "model.safetensors")
    shutil.copy(ckpt / "generation_config.json", child_folder / "generation_config.json")
    child = ledger.commit(child_folder, parent=parent, message="re-saved without its config")
    with pytest.raises(InvalidParameterError, match=r"takes the files it stored \(generation_config.json\), and no "
                                                    r"config.json is among them"):
        ledger.checkout_hf(child, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_killed_hf_checkout_s_staging_folder_is_removed_by_the_next_checkout_there(ledger, ckpt, tmp_path):
    """A `checkout --hf` SIGKILLed half-way left its hidden staging folder (config, tokenizer and
    the model's bytes so far) beside the output, and nothing ever removed it; the next checkout to
    that folder removes it, not the staging folder of a checkout that still runs."""
    import subprocess
    import sys

    from provenance.files import host_label

    version = ledger.commit(ckpt, message="tiny gpt2")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".out.{host_label()}-{int(dead.stdout)}-abcd1234.tmp"
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    (killed / ".model.safetensors.tmp").write_bytes(b"\0" * 4096)
    running = tmp_path / f".out.{host_label()}-{os.getpid()}-efgh5678.tmp"
    running.mkdir()
    ledger.checkout_hf(version, tmp_path / "out")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert left == [running.name]
    assert _files(tmp_path / "out") == _files(ckpt)  # the checkout itself is whole
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(load_file(ckpt / "model.safetensors"))


def test_the_current_folder_is_refused_as_a_checkout_folder(ledger, ckpt, tmp_path, monkeypatch):
    """`prov model checkout V --hf .` from an empty folder renamed a new folder over it and
    reported success; the shell, still in the removed folder, saw no files (the report listed
    none). The current folder is refused, and nothing is written."""
    version = ledger.commit(ckpt, message="tiny gpt2")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for given in (".", tmp_path / "here", ""):
        with pytest.raises(UnsafeOutputError, match="it is the current folder"):
            ledger.checkout_hf(version, given)
    assert list(Path.cwd().iterdir()) == [] and Path.cwd() == tmp_path / "here"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".here.")]
    with pytest.raises(InvalidParameterError, match="the folder must be a path .* got int 5"):
        ledger.checkout_hf(version, 5)
    monkeypatch.chdir(tmp_path)
    assert ledger.checkout_hf(version, "here") == tmp_path / "here"
    assert _files(tmp_path / "here") == _files(ckpt)


def test_a_folder_filled_by_another_writer_during_the_checkout_is_named(ledger, ckpt, tmp_path, monkeypatch):
    """Two checkouts to one empty folder: the second to finish failed with `cannot copy
    .out.….tmp to out: Directory not empty`, a copy it never made; it says another writer filled
    the folder, and leaves that writer's files and no staging folder."""
    from provenance import model_files

    version = ledger.commit(ckpt, message="tiny gpt2")
    (tmp_path / "out").mkdir()
    real = model_files.write_files

    def racing(store, files, folder):
        (tmp_path / "out" / "theirs.txt").write_text("the other checkout's")
        return real(store, files, folder)

    monkeypatch.setattr(model_files, "write_files", racing)
    with pytest.raises(UnsafeOutputError, match=r"refusing to write folder .*out: another writer filled it while this "
                                                r"checkout ran \(it was empty at the start\); nothing of this checkout"):
        ledger.checkout_hf(version, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
