"""Versions from and to files: sharded checkpoints, LoRA adapter folders, streaming checkout, and
the snapshot policy that bounds patch chains."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from provenance.errors import InvalidParameterError, UnsafeOutputError
from provenance.kernels.patch import apply_low_rank
from provenance.patches import same_bits
from provenance.versions import SnapshotPolicy, iter_checkout


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(50, 16, generator=g),
        "layers.0.proj.weight": torch.randn(24, 16, generator=g),
        "layers.0.proj.bias": torch.randn(24, generator=g),
        "layers.1.proj.weight": torch.randn(16, 24, generator=g).bfloat16(),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert same_bits(actual[name], expected[name]), name


def test_sharded_checkpoint_commits_like_its_tensors(ledger, tmp_path):
    state = _state()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    for file, part in shards.items():
        save_file({n: state[n] for n in part}, str(folder / file))
    index = {"metadata": {"total_size": 0}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    from_index = ledger.commit(folder / "model.safetensors.index.json", message="from the index")
    from_folder = ledger.commit(folder, parent=from_index, message="same, from the folder")
    _assert_same(ledger.checkout(from_index), state)
    assert {p.encoding for p in ledger.manifest(from_folder).values()} == {"unchanged"}
    assert from_folder.stored_bytes == 0 and from_index.full_bytes == sum(t.numel() * t.element_size() for t in state.values())


def test_streaming_checkout_writes_a_safetensors_file(ledger, tmp_path):
    v0 = ledger.commit(_state(), message="root")
    edited = _state()
    edited["layers.0.proj.weight"][0, :3] = 0.5
    v1 = ledger.commit(edited, parent=v0, message="edit")
    with pytest.raises(UnsafeOutputError, match="does not exist"):  # no folder made unless asked
        ledger.checkout(v1, output=tmp_path / "out" / "model.safetensors")
    out = ledger.checkout(v1, output=tmp_path / "out" / "model.safetensors", parents=True)
    assert out == tmp_path / "out" / "model.safetensors"
    _assert_same(load_file(str(out)), edited)
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata() == {"prov_version": v1.version_id, "prov_message": "edit"}
    stream = iter_checkout(ledger, v1)
    name, first = next(stream)  # one group at a time, in name order
    assert name == "embed.weight" and same_bits(first, edited["embed.weight"])
    assert [n for n, _ in stream] == sorted(edited)[1:]
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_interrupted_checkout_leaves_no_file(ledger, tmp_path, monkeypatch):
    version = ledger.commit(_state(), message="root")
    import provenance.versions.checkouts as checkouts

    def broken(*args, **kwargs):
        yield "embed.weight", _state()["embed.weight"]
        raise OSError("disk gone")

    monkeypatch.setattr(checkouts, "iter_checkout", broken)
    with pytest.raises(OSError, match="disk gone"):
        ledger.checkout(version, output=tmp_path / "model.safetensors")
    assert list(tmp_path.glob("*model.safetensors*")) == []


# A checkout SIGKILLed after its first tensor: the child kills itself inside the second write.
_CHECKOUT_KILLED = """
import os, signal, sys
import provenance.tensorfile as tensorfile
from provenance import Ledger

write, written = tensorfile.TensorFileWriter.write, []

def write_then_die(self, name, tensor):
    if written:
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(name)
    write(self, name, tensor)

tensorfile.TensorFileWriter.write = write_then_die
Ledger.open(sys.argv[1]).checkout(sys.argv[2], output=sys.argv[3])
"""


def test_a_killed_checkout_s_temporary_is_removed_by_the_next_write_of_the_file(ledger, tmp_path):
    """A checkout SIGKILLed half-way leaves its hidden temporary beside the output (gigabytes for
    a large model, which nothing removed); the next write of that file removes it, not the
    temporary of a writer that still runs."""
    import signal
    import subprocess
    import sys

    version = ledger.commit(_state(), message="root")
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", _CHECKOUT_KILLED, str(ledger.root), version.version_id, str(out)],
                          capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = list(out.parent.glob(".model.safetensors.*.tmp"))
    assert len(left) == 1 and not out.exists()
    from provenance.files import host_label

    running = out.parent / f".model.safetensors.{host_label()}-{os.getpid()}-000000000000.tmp"
    running.write_bytes(b"a write of a process that runs")
    ledger.checkout(version, output=out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, running.name])
    assert all(torch.equal(load_file(out)[k], v) for k, v in _state().items())

def test_snapshot_policy_bounds_the_chain(ledger):
    state = {"w": torch.zeros(1000), "b": torch.zeros(10)}
    policy = SnapshotPolicy(every=3, max_chain_ratio=10.0)
    version = ledger.commit(state, message="root", snapshot=policy)
    encodings = []
    for step in range(1, 8):
        state = {"w": state["w"].clone(), "b": state["b"]}
        state["w"][step] = float(step)
        version = ledger.commit(state, parent=version, message=f"step {step}", snapshot=policy)
        encodings.append(ledger.manifest(version)["w"].encoding)
    assert encodings == ["sparse", "sparse", "sparse", "full", "sparse", "sparse", "sparse"]
    _assert_same(ledger.checkout(version), state)
    # by bytes: each patch is 8 bytes of 4,000; a ratio of 0.005 (20 bytes) allows two
    by_bytes = SnapshotPolicy(every=100, max_chain_ratio=0.005)
    encodings = []
    for step in range(3):
        state = {"w": state["w"].clone(), "b": state["b"]}
        state["w"][100 + step] = 1.0
        version = ledger.commit(state, parent=version, message=f"bytes {step}", snapshot=by_bytes)
        encodings.append(ledger.manifest(version)["w"].encoding)
    assert encodings == ["full", "sparse", "sparse"]  # the chain from the last full copy held 3 patches
    with pytest.raises(InvalidParameterError, match="positive integer"):
        SnapshotPolicy(every=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"max_chain_ratio": "2"}, "snapshot max_chain_ratio must be a number > 0, got '2'"),
    ({"max_chain_ratio": None}, "snapshot max_chain_ratio must be a number > 0, got None"),
    ({"max_chain_ratio": float("nan")}, "snapshot max_chain_ratio must be a number > 0, got nan"),
    ({"every": True}, "snapshot every must be a positive integer, got True"),
])
def test_a_snapshot_policy_of_the_wrong_type_is_refused_by_name(options, message):
    """Stranger pass 60: a max_chain_ratio of "2" or None raised TypeError ('>' not supported),
    and every=True was taken as every=1."""
    with pytest.raises(InvalidParameterError) as refused:
        SnapshotPolicy(**options)
    assert str(refused.value) == message
    assert SnapshotPolicy(every=2, max_chain_ratio=float("inf")).max_chain_ratio == float("inf")


def _write_adapter(folder: Path, r: int, alpha: float, rslora: bool, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    folder.mkdir()
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "use_dora": False,
              "target_modules": sorted({n.rsplit(".", 1)[0] for n in factors}), "fan_in_fan_out": False,
              "bias": "none", "base_model_name_or_path": "tiny"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for name, (b, a) in factors.items():
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_adapter_folder_is_stored_as_low_rank_patches(ledger, tmp_path, rslora):
    base_state = _state()
    base = ledger.commit(base_state, message="base")
    g = torch.Generator().manual_seed(1)
    b, a = torch.randn(24, 4, generator=g), torch.randn(4, 16, generator=g)
    adapter = _write_adapter(tmp_path / "adapter", 4, 8, rslora, {"layers.0.proj.weight": (b, a)})
    version = ledger.commit(adapter, parent=base, message="lora")

    manifest = ledger.manifest(version)
    assert manifest["layers.0.proj.weight"].encoding == "low_rank"
    scale = 8 / math.sqrt(4) if rslora else 8 / 4
    assert manifest["layers.0.proj.weight"].meta == {"scale": scale}
    assert {n: p.encoding for n, p in manifest.items() if n != "layers.0.proj.weight"} == dict.fromkeys(
        ["embed.weight", "layers.0.proj.bias", "layers.1.proj.weight", "steps"], "unchanged")
    assert version.stored_bytes == (24 * 4 + 4 * 16) * 4  # the factors, not the matrix
    out = ledger.checkout(version)
    expected = base_state["layers.0.proj.weight"].double() + scale * (b.double() @ a.double())
    torch.testing.assert_close(out["layers.0.proj.weight"].double(), expected, rtol=1e-6, atol=1e-5)
    assert same_bits(out["layers.0.proj.weight"], apply_low_rank(base_state["layers.0.proj.weight"], b, a, scale))
    _assert_same({n: t for n, t in out.items() if n != "layers.0.proj.weight"},
                 {n: t for n, t in base_state.items() if n != "layers.0.proj.weight"})


def test_lora_adapter_errors_leave_the_ledger_as_it_was(ledger, tmp_path):
    base = ledger.commit(_state(), message="base")
    g = torch.Generator().manual_seed(2)
    missing = _write_adapter(tmp_path / "missing", 2, 4, False,
                             {"layers.9.attn.weight": (torch.randn(24, 2, generator=g), torch.randn(2, 16, generator=g))})
    before = (ledger.versions(), sorted(p.name for p in ledger.objects_path.rglob("*.safetensors")))
    with pytest.raises(InvalidParameterError, match=r"layers\.9\.attn"):
        ledger.commit(missing, parent=base, message="bad")
    with pytest.raises(InvalidParameterError) as refused:  # the command line's option named too (said only parent=)
        ledger.commit(missing, message="no parent")
    assert str(refused.value).endswith("is a LoRA adapter: commit it with parent= the base version "
                                       "(prov model commit --parent)")
    wrong = _write_adapter(tmp_path / "wrong", 2, 4, False,
                           {"layers.0.proj.weight": (torch.randn(16, 2, generator=g), torch.randn(2, 16, generator=g))})
    with pytest.raises(InvalidParameterError, match=r"layers\.0\.proj\.weight"):
        ledger.commit(wrong, parent=base, message="bad shape")
    assert (ledger.versions(), sorted(p.name for p in ledger.objects_path.rglob("*.safetensors"))) == before


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(12, 8)
        self.head = torch.nn.Linear(8, 3)


@pytest.mark.filterwarnings("ignore")
def test_a_real_peft_adapter_checks_out_as_peft_merges_it(ledger, tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = _Net()
    base = ledger.commit(model, message="base")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["proj"]))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.normal_()
    wrapped.save_pretrained(tmp_path / "adapter")
    version = ledger.commit(tmp_path / "adapter", parent=base, message="peft lora")
    merged = wrapped.merge_and_unload().state_dict()
    out = ledger.checkout(version)
    assert ledger.manifest(version)["proj.weight"].encoding == "low_rank"
    for name in merged:
        torch.testing.assert_close(out[name], merged[name], rtol=1e-6, atol=1e-6)


class _ResizedNet(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, 6)
        self.proj = torch.nn.Linear(6, 6)

    def get_input_embeddings(self) -> torch.nn.Module:  # what PEFT looks for to save the embedding layer
        return self.embed_tokens

    def get_output_embeddings(self) -> None:
        return None


@pytest.mark.filterwarnings("ignore")
def test_a_peft_adapter_of_a_resized_embedding_stores_the_embedding_whole(ledger, tmp_path):
    """Stranger pass 60: a vocabulary resized before LoRA training, the embedding a LoRA target,
    is saved by PEFT as the embedding's resized base layer and its factors; the commit refused it
    ("target torch.float32(12, 6) does not match the parent torch.float32(10, 6)") where the same
    resize in a state dict is stored whole."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = _ResizedNet(10)
    base = ledger.commit(model, message="base")
    old = model.embed_tokens.weight.data
    model.embed_tokens = torch.nn.Embedding(12, 6)
    model.embed_tokens.weight.data[:10] = old
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "proj"]))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.normal_()
    wrapped.save_pretrained(tmp_path / "adapter", save_embedding_layers=True)
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as saved:
        assert "base_model.model.embed_tokens.base_layer.weight" in saved.keys()
    version = ledger.commit(tmp_path / "adapter", parent=base, message="resized vocabulary, LoRA")
    manifest = ledger.manifest(version)
    assert {n: (p.encoding, p.shape) for n, p in manifest.items()} == {
        "embed_tokens.weight": ("full", [12, 6]), "proj.weight": ("low_rank", [6, 6]), "proj.bias": ("unchanged", [6])}
    merged, out = wrapped.merge_and_unload().state_dict(), ledger.checkout(version)
    assert sorted(out) == sorted(merged)
    for name in merged:
        torch.testing.assert_close(out[name], merged[name], rtol=1e-6, atol=1e-6)


_STREAMING_CHECKOUT = """
import resource, sys
import torch
from provenance import Ledger
ledger = Ledger.open(sys.argv[1])
version = ledger.version("big")
torch.zeros(1)  # imports and allocator warm before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ledger.checkout(version, output=sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - before) * 1024)
"""


@pytest.mark.slow
def test_streaming_checkout_holds_about_one_tensor(ledger, tmp_path):
    """32 tensors of 8 MiB (256 MiB, after a sparse patch on each): checking out to a file in a
    fresh process raises its peak memory by far less than the model."""
    import subprocess
    import sys

    state = {f"layer{i}": torch.full((2 << 20,), float(i)) for i in range(32)}
    root = ledger.commit(state, message="root")
    for t in state.values():
        t[::1000] += 1.0
    ledger.tag("big", ledger.commit(state, parent=root, message="sparse"))
    out = tmp_path / "big.safetensors"
    result = subprocess.run([sys.executable, "-c", _STREAMING_CHECKOUT, str(ledger.root), str(out)],
                            capture_output=True, text=True, check=True)
    grown = int(result.stdout.strip())
    assert grown < 96 << 20, f"peak memory grew by {grown >> 20} MiB for a 256 MiB model"
    with safe_open(str(out), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(state)
        assert same_bits(fh.get_tensor("layer7"), state["layer7"])


def test_sync_false_skips_fsync_but_stays_whole(ledger, monkeypatch):
    import provenance.tensorfile as tensorfile

    calls = []
    real = os.fsync
    monkeypatch.setattr(tensorfile.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    state = _state()
    v0 = ledger.commit(state, message="synced")
    synced_calls = len(calls)
    assert synced_calls >= 2 * len({t.data_ptr() for t in state.values()})  # each object's file and its folder
    calls.clear()
    state["embed.weight"] = state["embed.weight"] + 1
    v1 = ledger.commit(state, parent=v0, message="unsynced", sync=False)
    assert calls == []
    _assert_same(ledger.checkout(v1), state)
    assert list(ledger.objects_path.rglob("*.tmp")) == []


def test_objects_are_read_whole_when_no_memory_map_is_left(ledger, monkeypatch):
    """Objects from 64 KiB are memory-mapped; where the system refuses another mapping (its map
    count spent), the object is read into memory instead: the same bits either way."""
    import errno

    from provenance import tensorfile

    state = {"big": torch.randn(64, 1024), "small": torch.randn(16)}  # 256 KiB (mapped), 64 B (read)
    version = ledger.commit(state, message="two sizes")
    mapped = ledger.checkout(version)

    refused = []

    def refuse(*args, **kwargs):
        refused.append(args)
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(tensorfile.mmap, "mmap", refuse)
    read = ledger.checkout(version)
    assert all(torch.equal(read[k], state[k]) and torch.equal(mapped[k], state[k]) for k in state)
    assert len(refused) == 1  # the 256 KiB object asked for a mapping and was read instead


def test_an_output_name_ending_in_a_separator_or_not_a_path_is_refused(ledger, tmp_path):
    """`-o out/` asks for a folder: Path dropped the slash and a file named `out` was written, with
    success reported; an output that is not a path failed in pathlib with a TypeError that named
    no parameter. Both are refused before anything is written."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    version = ledger.commit(_state(), message="root")
    with pytest.raises(UnsafeOutputError, match=r"'.*/out/': it ends in '/', which names a folder; give a file name"):
        ledger.checkout(version, output=f"{tmp_path}/out/")
    for bad in (123, b"x.safetensors"):
        with pytest.raises(InvalidParameterError, match=f"the output must be a path .*got {type(bad).__name__}"):
            ledger.checkout(version, output=bad)
    refused = CliRunner().invoke(main, ["--ledger", str(tmp_path), "model", "checkout", version.version_id,
                                        "-o", f"{tmp_path}/new/"])
    assert refused.exit_code == 4 and "ends in '/', which names a folder" in refused.output
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))
    assert ledger.checkout(version, output=tmp_path / "new") == tmp_path / "new"  # the same name, without the slash
    assert all(torch.equal(load_file(tmp_path / "new")[k], v) for k, v in _state().items())


def test_model_log_of_an_empty_version_is_refused_not_the_whole_log(ledger, tmp_path):
    """`prov model log "$V"` with V unset printed every version, as if no VERSION were given."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger.commit(_state(), message="root")
    runner = CliRunner()
    refused = runner.invoke(main, ["--ledger", str(tmp_path), "model", "log", ""])
    assert refused.exit_code == 3 and "no version or tag ''" in refused.output
    listed = runner.invoke(main, ["--ledger", str(tmp_path), "model", "log", "--json"])
    assert [v["message"] for v in json.loads(listed.output)] == ["root"]
