"""Model states on disk: safetensors files, sharded checkpoints and PEFT LoRA adapter folders."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from provenance.checkpoints import LoraAdapter, is_lora_adapter, open_state, read_lora_adapter
from provenance.errors import InvalidParameterError


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.weight": torch.randn(5, 3, generator=g),
        "layers.0.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "embed.weight": torch.randn(7, 3, generator=g).to(torch.float16),
        "step": torch.tensor(12, dtype=torch.int64),
        "mask": torch.randint(0, 2, (2, 2), generator=g).bool(),
        "empty": torch.zeros(0, 4),
    }


def _assert_round_trip(path: Path, expected: dict[str, torch.Tensor]) -> None:
    with open_state(path) as state:
        assert state.names == sorted(expected)
        assert list(state) == sorted(expected)
        assert len(state) == len(expected)
        assert "step" in state and "nope" not in state
        for name, tensor in expected.items():
            assert state.info(name) == (tensor.dtype, tuple(tensor.shape))
        kept = {name: state.get(name) for name in state}
    for name, tensor in expected.items():  # still valid after close
        assert kept[name].dtype == tensor.dtype
        assert torch.equal(kept[name], tensor)


def test_single_file_round_trip(tmp_path: Path) -> None:
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    _assert_round_trip(tmp_path / "model.safetensors", tensors)
    _assert_round_trip(tmp_path, tensors)
    assert open_state(tmp_path).path == tmp_path / "model.safetensors"


def test_single_file_of_another_name_in_folder(tmp_path: Path) -> None:
    tensors = _tensors(1)
    save_file(tensors, tmp_path / "weights.safetensors")
    _assert_round_trip(tmp_path, tensors)


def _write_sharded(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, members in shards.items():
        save_file({name: tensors[name] for name in members}, folder / shard)
    index = folder / "model.safetensors.index.json"
    weight_map = {name: shard for shard, members in shards.items() for name in members}
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index


def test_sharded_round_trip(tmp_path: Path) -> None:
    tensors = _tensors(2)
    index = _write_sharded(tmp_path, tensors)
    _assert_round_trip(index, tensors)
    _assert_round_trip(tmp_path, tensors)
    assert open_state(tmp_path).path == index


def test_unknown_parameter_names_file(tmp_path: Path) -> None:
    save_file(_tensors(), tmp_path / "model.safetensors")
    with open_state(tmp_path) as state, pytest.raises(InvalidParameterError, match="'nope'"):
        state.get("nope")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="absent.safetensors"):
        open_state(tmp_path / "absent.safetensors")
    with pytest.raises(InvalidParameterError, match="no model.safetensors"):
        open_state(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(InvalidParameterError, match="bad.safetensors: not a readable safetensors"):
        open_state(bad)


def test_a_fifo_named_as_a_checkpoint_is_said_to_be_one(tmp_path: Path) -> None:
    """A FIFO given as the .safetensors file (or as a folder's model.safetensors) was called "no
    such safetensors file"; it is now said to be a FIFO, and never opened."""
    os.mkfifo(tmp_path / "model.safetensors")
    for given in (tmp_path / "model.safetensors", tmp_path):
        with pytest.raises(InvalidParameterError, match="model.safetensors: not a regular file: a FIFO"):
            open_state(given)


def test_a_checkpoint_path_that_is_not_utf8_is_named_as_such(tmp_path: Path) -> None:
    """A file name in bytes a Latin-1 system wrote was "not a readable safetensors file (Path ...
    is not valid UTF-8)", as if its content were at fault (found by stranger pass 35)."""
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/m\xff.safetensors"))
    save_file({"w": torch.ones(2)}, str(tmp_path / "good.safetensors"))
    os.rename(tmp_path / "good.safetensors", path)
    with pytest.raises(InvalidParameterError) as info:
        open_state(path)
    assert str(info.value) == f"{tmp_path}/m\\xff.safetensors: the path is not valid UTF-8; rename it (safetensors opens only UTF-8 paths)"


def test_bad_index_json(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{ not json")
    with pytest.raises(InvalidParameterError, match="model.safetensors.index.json: not a checkpoint index"):
        open_state(index)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(InvalidParameterError, match="weight_map"):
        open_state(tmp_path)


def test_index_pointing_to_missing_shard(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _tensors())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InvalidParameterError, match="model-00002-of-00002.safetensors: no such"):
        open_state(index)


def test_index_naming_a_shard_outside_its_folder_is_refused(tmp_path: Path) -> None:
    """A weight_map entry ``../other/model-….safetensors`` made the version hold tensors of a file
    that is not the checkpoint's, silently."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    index = _write_sharded(folder, _tensors())
    for shard in ("../elsewhere/model-00002-of-00002.safetensors", str(tmp_path / "abs.safetensors")):
        data = json.loads(index.read_text())
        name = next(iter(data["weight_map"]))
        data["weight_map"][name] = shard
        index.write_text(json.dumps(data))
        with pytest.raises(InvalidParameterError, match="'weight_map' names shard files outside its folder"):
            open_state(folder)


def _edit_index(index: Path, edit) -> None:
    data = json.loads(index.read_text())
    edit(data["weight_map"])
    index.write_text(json.dumps(data))


def test_index_lists_parameter_absent_from_shard(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _tensors())
    _edit_index(index, lambda wm: wm.update(ghost="model-00001-of-00002.safetensors"))
    with pytest.raises(InvalidParameterError, match="'ghost' is listed for .*00001.* but absent"):
        open_state(index)


def test_shard_tensor_missing_from_index(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _tensors())
    _edit_index(index, lambda wm: wm.pop("step"))
    with pytest.raises(InvalidParameterError, match="'step' is in the shard but not in"):
        open_state(index)


def test_index_names_wrong_shard(tmp_path: Path) -> None:
    index = _write_sharded(tmp_path, _tensors())
    _edit_index(index, lambda wm: wm.update(step="model-00001-of-00002.safetensors"))
    with pytest.raises(InvalidParameterError, match="'step' is listed for .*00001.* but is in .*00002"):
        open_state(index)


def test_same_name_in_two_shards(tmp_path: Path) -> None:
    tensors = _tensors()
    index = _write_sharded(tmp_path, tensors)
    first = sorted(tensors)[0]
    save_file({"step": tensors["step"], first: tensors[first]}, tmp_path / "model-00002-of-00002.safetensors")
    _edit_index(index, lambda wm: wm.update(step="model-00002-of-00002.safetensors"))
    with pytest.raises(InvalidParameterError, match=f"'{first}' is in both .*00001.* and .*00002"):
        open_state(index)


# --- LoRA adapters -------------------------------------------------------------------------------------------

BASE = {
    "model.q.weight": (torch.float32, (6, 4)),
    "model.k.weight": (torch.float32, (6, 4)),
    "model.xq.weight": (torch.float32, (6, 4)),
    "model.c_attn.weight": (torch.float32, (4, 6)),  # GPT-2 Conv1D: (in, out)
    "model.embed.weight": (torch.float32, (10, 4)),
    "model.head.weight": (torch.float32, (3, 4)),
    "model.head.bias": (torch.float32, (3,)),
}
PREFIX = "base_model.model."


def _config(**overrides) -> dict:
    config = {
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": False, "use_dora": False,
        "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True,
        "base_model_name_or_path": "tiny/base", "target_modules": ["q"],
    }
    return config | overrides


def _write_adapter(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def _factors(module: str, out: int, inp: int, r: int, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{PREFIX}{module}.lora_A.weight": torch.randn(r, inp, generator=g).to(dtype),
        f"{PREFIX}{module}.lora_B.weight": torch.randn(out, r, generator=g).to(dtype),
    }


def _delta(adapter: LoraAdapter, name: str) -> torch.Tensor:
    update = adapter.updates[name]
    return update.scale * update.b.double() @ update.a.double()


def test_plain_lora(tmp_path: Path) -> None:
    tensors = _factors("model.q", 6, 4, 2, seed=0, dtype=torch.bfloat16)
    folder = _write_adapter(tmp_path / "a", _config(), tensors)
    assert is_lora_adapter(folder) and not is_lora_adapter(tmp_path)
    adapter = read_lora_adapter(folder, BASE)
    assert adapter.base_model == "tiny/base" and adapter.config["r"] == 2 and adapter.path == folder
    assert list(adapter.updates) == ["model.q.weight"] and adapter.replaced == {}
    update = adapter.updates["model.q.weight"]
    assert update.scale == 2.0 and update.b.dtype == torch.bfloat16
    lora_a, lora_b = tensors[f"{PREFIX}model.q.lora_A.weight"], tensors[f"{PREFIX}model.q.lora_B.weight"]
    assert torch.equal(update.b, lora_b) and torch.equal(update.a, lora_a)
    expected = 4 / 2 * (lora_b.double() @ lora_a.double())
    torch.testing.assert_close(_delta(adapter, "model.q.weight"), expected)


def test_rslora_scale(tmp_path: Path) -> None:
    tensors = _factors("model.q", 6, 4, 4, seed=1)
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(r=4, lora_alpha=8, use_rslora=True), tensors), BASE)
    assert adapter.updates["model.q.weight"].scale == 8 / math.sqrt(4)


def test_rank_and_alpha_patterns(tmp_path: Path) -> None:
    tensors = _factors("model.q", 6, 4, 2, seed=2) | _factors("model.k", 6, 4, 3, seed=3)
    tensors |= _factors("model.xq", 6, 4, 2, seed=4)
    config = _config(r=2, lora_alpha=4, rank_pattern={"k": 3}, alpha_pattern={"k": 9, "q": 6})
    adapter = read_lora_adapter(_write_adapter(tmp_path, config, tensors), BASE)
    scales = {name: update.scale for name, update in adapter.updates.items()}
    # "q" matches the whole last component of model.q only, as PEFT's get_pattern_key does: not model.xq.
    assert scales == {"model.q.weight": 3.0, "model.k.weight": 3.0, "model.xq.weight": 2.0}


def test_rank_disagreeing_with_config(tmp_path: Path) -> None:
    tensors = _factors("model.q", 6, 4, 3, seed=5)
    with pytest.raises(InvalidParameterError, match="'base_model.model.model.q'.*rank 2"):
        read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), BASE)


def test_fan_in_fan_out(tmp_path: Path) -> None:
    tensors = _factors("model.c_attn", 6, 4, 2, seed=6)  # lora_A (r, in), lora_B (out, r)
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(fan_in_fan_out=True), tensors), BASE)
    lora_a, lora_b = tensors[f"{PREFIX}model.c_attn.lora_A.weight"], tensors[f"{PREFIX}model.c_attn.lora_B.weight"]
    expected = 2.0 * (lora_b.double() @ lora_a.double()).T
    assert _delta(adapter, "model.c_attn.weight").shape == (4, 6)
    torch.testing.assert_close(_delta(adapter, "model.c_attn.weight"), expected)


def test_orientation_follows_shape_then_flag(tmp_path: Path) -> None:
    """PEFT decides fan_in_fan_out per layer type, so the saved flag is only trusted for square weights."""
    base = {"wide.weight": (torch.float32, (4, 6)), "square.weight": (torch.float32, (4, 4))}
    tensors = _factors("wide", 6, 4, 2, seed=14) | _factors("square", 4, 4, 2, seed=15)
    for flag in (False, True):
        adapter = read_lora_adapter(_write_adapter(tmp_path / str(flag), _config(fan_in_fan_out=flag), tensors), base)
        for module in ("wide", "square"):
            product = tensors[f"{PREFIX}{module}.lora_B.weight"] @ tensors[f"{PREFIX}{module}.lora_A.weight"]
            transposed = flag or module == "wide"
            expected = 2.0 * (product.T if transposed else product).double()
            torch.testing.assert_close(_delta(adapter, f"{module}.weight"), expected)


def test_saved_base_layer_is_a_replacement(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(16)
    saved = torch.randn(10, 4, generator=g)
    tensors = {
        f"{PREFIX}model.embed.base_layer.weight": saved,
        f"{PREFIX}model.embed.lora_embedding_A": torch.randn(2, 10, generator=g),
        f"{PREFIX}model.embed.lora_embedding_B": torch.randn(4, 2, generator=g),
    }
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), BASE)
    assert list(adapter.replaced) == ["model.embed.weight"] and list(adapter.updates) == ["model.embed.weight"]
    assert torch.equal(adapter.replaced["model.embed.weight"], saved)


def test_embedding(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    lora_a, lora_b = torch.randn(2, 10, generator=g), torch.randn(4, 2, generator=g)
    tensors = {f"{PREFIX}model.embed.lora_embedding_A": lora_a, f"{PREFIX}model.embed.lora_embedding_B": lora_b}
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), BASE)
    torch.testing.assert_close(_delta(adapter, "model.embed.weight"), 2.0 * (lora_b.double() @ lora_a.double()).T)


def test_modules_to_save_are_replacements(tmp_path: Path) -> None:
    head_weight, head_bias = torch.randn(3, 4), torch.randn(3)
    tensors = _factors("model.q", 6, 4, 2, seed=8)
    tensors |= {f"{PREFIX}model.head.weight": head_weight, f"{PREFIX}model.head.bias": head_bias}
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(modules_to_save=["head"]), tensors), BASE)
    assert sorted(adapter.replaced) == ["model.head.bias", "model.head.weight"]
    assert torch.equal(adapter.replaced["model.head.weight"], head_weight)
    assert torch.equal(adapter.replaced["model.head.bias"], head_bias)
    assert list(adapter.updates) == ["model.q.weight"]


def test_a_saved_module_parameter_the_base_lacks_says_why_it_may(tmp_path: Path) -> None:
    """A saved module's tied weight, left out of the base by save_pretrained, was "neither a LoRA
    factor nor a base model parameter", with no word of the tie (found by stranger pass 35)."""
    tensors = _factors("model.q", 6, 4, 2, seed=8) | {f"{PREFIX}model.head.weight": torch.randn(3, 4),
                                                      f"{PREFIX}model.head.decoder_bias": torch.randn(3)}
    with pytest.raises(InvalidParameterError) as info:
        read_lora_adapter(_write_adapter(tmp_path, _config(modules_to_save=["head"]), tensors), BASE)
    assert str(info.value) == (
        f"{tmp_path}: '{PREFIX}model.head.decoder_bias' is neither a LoRA factor nor a base model parameter (the base "
        "model's module 'model.head' holds 'bias', 'weight', not 'decoder_bias': a checkpoint save_pretrained wrote "
        "keeps one name of weights tied to each other; commit the base from the model's state_dict(), which holds "
        "every name)")


def test_base_names_with_peft_prefix(tmp_path: Path) -> None:
    base = {f"{PREFIX}q.weight": (torch.float32, (6, 4))}
    adapter = read_lora_adapter(_write_adapter(tmp_path, _config(), _factors("q", 6, 4, 2, seed=9)), base)
    assert list(adapter.updates) == [f"{PREFIX}q.weight"]


def test_missing_target_names_modules_and_folder(tmp_path: Path) -> None:
    tensors = _factors("model.v", 6, 4, 2, seed=10) | _factors("model.o", 6, 4, 2, seed=11)
    folder = _write_adapter(tmp_path / "adapter", _config(), tensors)
    with pytest.raises(InvalidParameterError, match=r"adapter: target modules absent .*: model\.o, model\.v"):
        read_lora_adapter(folder, BASE)


def test_shape_mismatch_names_parameter_and_shapes(tmp_path: Path) -> None:
    tensors = _factors("model.q", 5, 4, 2, seed=12)
    with pytest.raises(InvalidParameterError, match=r"'model.q.weight' has shape \(5, 4\), the parameter has \(6, 4\)"):
        read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), BASE)


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        ({"use_dora": True}, {}, "use_dora=True"),
        ({}, {f"{PREFIX}model.q.lora_magnitude_vector": torch.ones(6)}, "DoRA magnitude"),
        ({}, {f"{PREFIX}model.q.lora_B.bias": torch.ones(6)}, "LoRA bias"),
        ({"lora_bias": True}, {}, "lora_bias=True"),
        ({"init_lora_weights": "pissa_niter_4"}, {}, "init_lora_weights='pissa_niter_4'"),
        ({"peft_type": "IA3"}, {}, "peft_type='IA3'"),
        ({}, {f"{PREFIX}model.q.token_adapter.trainable_tokens_delta": torch.ones(2)}, "neither a LoRA factor"),
    ],
)
def test_refusals(tmp_path: Path, config: dict, extra: dict, message: str) -> None:
    tensors = _factors("model.q", 6, 4, 2, seed=13) | extra
    with pytest.raises(InvalidParameterError, match=message):
        read_lora_adapter(_write_adapter(tmp_path, _config(**config), tensors), BASE)


def test_conv_refused(tmp_path: Path) -> None:
    tensors = {f"{PREFIX}conv.lora_A.weight": torch.ones(2, 3, 3, 3), f"{PREFIX}conv.lora_B.weight": torch.ones(8, 2, 1, 1)}
    base = {"conv.weight": (torch.float32, (8, 3, 3, 3))}
    with pytest.raises(InvalidParameterError, match="'base_model.model.conv' has 4-D LoRA factors"):
        read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), base)


def test_half_pair_refused(tmp_path: Path) -> None:
    tensors = {f"{PREFIX}model.q.lora_A.weight": torch.ones(2, 4)}
    with pytest.raises(InvalidParameterError, match="lora_A without its partner"):
        read_lora_adapter(_write_adapter(tmp_path, _config(), tensors), BASE)


def test_pickle_adapter_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(_config()))
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidParameterError, match="adapter_model.bin, a pickle file"):
        read_lora_adapter(tmp_path, BASE)


# --- Cross-check against real PEFT ---------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    """Embedding, Linear and GPT-2's Conv1D (weight (in, out)), named as in transformers models."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.embed_tokens = torch.nn.Embedding(11, 6)
        self.proj = torch.nn.Linear(6, 5)
        self.c_fc = Conv1D(7, 5)
        self.head = torch.nn.Linear(7, 3)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed_tokens

    def get_output_embeddings(self) -> None:
        return None


@pytest.mark.parametrize(
    ("options", "replaced"),
    [
        # A targeted embed_tokens makes PEFT save the embedding's base layer as well.
        ({"target_modules": ["embed_tokens", "proj"], "use_rslora": True, "rank_pattern": {"proj": 2},
          "alpha_pattern": {"proj": 5}, "modules_to_save": ["head"]},
         {"embed_tokens.weight", "head.weight", "head.bias"}),
        ({"target_modules": ["c_fc"], "fan_in_fan_out": True}, set()),
        # Linear and Conv1D together: the saved fan_in_fan_out flag is right for one of them only.
        ({"target_modules": ["proj", "c_fc"], "bias": "all"}, {"proj.bias", "c_fc.bias", "head.bias"}),
    ],
)
@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`", "ignore:fan_in_fan_out is set")
def test_matches_peft_merge(tmp_path: Path, options: dict, replaced: set[str]) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = _Tiny()
    base_tensors = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, **options))
    trained = ("lora_", "modules_to_save", "bias") if options.get("bias") == "all" else ("lora_", "modules_to_save")
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if any(part in name for part in trained):  # PEFT starts with one factor at zero
                parameter.normal_()
    wrapped.save_pretrained(tmp_path)

    base = {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in base_tensors.items()}
    adapter = read_lora_adapter(tmp_path, base)
    merged = wrapped.merge_and_unload().state_dict()
    assert set(adapter.updates) == {f"{module}.weight" for module in options["target_modules"]}
    assert set(adapter.replaced) == replaced
    for name, tensor in base_tensors.items():
        expected = adapter.replaced.get(name, tensor).double()
        if name in adapter.updates:
            expected = expected + _delta(adapter, name)
        torch.testing.assert_close(merged[name].double(), expected, rtol=1e-6, atol=1e-6)
    for name in adapter.updates:  # the adapter did change what it targets
        assert not torch.allclose(merged[name], base_tensors[name])


def test_a_checkpoint_written_to_while_a_commit_reads_it_is_refused(tmp_path: Path, monkeypatch) -> None:
    from provenance import Ledger
    from provenance.checkpoints import StateReader

    ledger = Ledger.init(tmp_path / "ledger")
    index = _write_sharded(tmp_path, _tensors(0))
    shard = tmp_path / "model-00002-of-00002.safetensors"
    newer = tmp_path / "newer.safetensors"
    save_file({name: t for name, t in _tensors(1).items() if name in open_state(shard).names}, newer)
    get = StateReader.get

    def get_then_rewrite(self, name):  # another process rewrites the shard in place after the first read
        tensor = get(self, name)
        if not getattr(self, "rewritten", False):
            self.rewritten = True
            with open(shard, "r+b") as f:
                f.write(newer.read_bytes())
            os.utime(shard, ns=(1, 1))
        return tensor

    monkeypatch.setattr(StateReader, "get", get_then_rewrite)
    with pytest.raises(InvalidParameterError, match="model-00002-of-00002.safetensors changed while it was read"):
        ledger.commit(index, message="torn")
    assert ledger.versions() == []
    assert ledger.gc()["unreferenced"] == []  # the objects it wrote are removed again


    def get_then_replace(self, name):  # an atomic save renames a new file over it: the open one is read whole
        tensor = get(self, name)
        if not getattr(self, "replaced", False):
            self.replaced = True
            os.replace(newer, shard)
        return tensor

    with open_state(index) as state:
        before = {name: state.get(name) for name in state}  # the shard rewritten above, the other as written
    save_file({name: t + 1 for name, t in before.items() if name in open_state(shard).names}, newer)
    monkeypatch.setattr(StateReader, "get", get_then_replace)
    whole = ledger.commit(index, message="replaced meanwhile")
    assert all(torch.equal(ledger.checkout(whole)[n], t) for n, t in before.items())  # the files as they were
    monkeypatch.setattr(StateReader, "get", get)
    v = ledger.commit(index, message="calm")
    shard_names = open_state(shard).names
    assert all(torch.equal(ledger.checkout(v)[n], t + 1 if n in shard_names else t) for n, t in before.items())


_Q = "module 'base_model.model.model.q' has"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"r": 0}, f"{_Q} rank 0 (r or rank_pattern): a LoRA rank is a positive integer"),
        ({"r": 0, "use_rslora": True}, f"{_Q} rank 0 (r or rank_pattern)"),
        ({"rank_pattern": {"q": 0}}, f"{_Q} rank 0 (r or rank_pattern)"),
        ({"r": "2"}, f"{_Q} rank '2' (r or rank_pattern): a LoRA rank is a positive integer"),
        ({"lora_alpha": "4"}, f"{_Q} lora_alpha '4' (lora_alpha or alpha_pattern): a finite number is needed"),
        ({"lora_alpha": None}, f"{_Q} lora_alpha None (lora_alpha or alpha_pattern)"),
        ({"rank_pattern": ["q"]}, "rank_pattern must map module names to numbers, got ['q']"),
    ],
)
def test_a_config_rank_or_alpha_that_is_not_a_number_is_refused_by_name(tmp_path: Path, config: dict,
                                                                         message: str) -> None:
    """Stranger pass 60: r = 0 (or a rank_pattern of 0) raised ZeroDivisionError, lora_alpha "4" or
    null a TypeError, and r "2" said the factors disagreed with "rank 2"."""
    tensors = _factors("model.q", 6, 4, 0 if "rank 0" in message else 2, seed=14)
    folder = _write_adapter(tmp_path / "a", _config(**config), tensors)
    with pytest.raises(InvalidParameterError) as refused:
        read_lora_adapter(folder, BASE)
    assert str(refused.value).startswith(f"{folder / 'adapter_config.json'}: ") and message in str(refused.value)


def test_an_adapter_config_or_weights_without_content_is_refused(tmp_path: Path) -> None:
    """Stranger pass 60: a config that is a JSON list raised AttributeError; an adapter file with no
    tensors committed a version equal to its parent."""
    listed = _write_adapter(tmp_path / "list", [], _factors("model.q", 6, 4, 2, seed=15))
    with pytest.raises(InvalidParameterError, match=r"adapter_config.json: not an adapter config \(a JSON object\), "
                                                    "but a JSON list"):
        read_lora_adapter(listed, BASE)
    empty = _write_adapter(tmp_path / "empty", _config(), {})
    with pytest.raises(InvalidParameterError, match=r"adapter_model.safetensors holds no tensors: there is no LoRA "
                                                    "factor or saved module"):
        read_lora_adapter(empty, BASE)
