"""Model states on disk: safetensors files, sharded checkpoints and PEFT LoRA adapter folders.

`open_state` gives a `StateReader` that reads one tensor at a time, so memory holds one parameter and
not the model. `read_lora_adapter` turns a PEFT LoRA folder into exact low-rank patches (and full
replacements) of a base model's parameters, without materialising any delta.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from provenance.errors import InvalidParameterError
from provenance.files import PICKLE_SUFFIXES, non_utf8, not_a_regular_file
from provenance.tensorfile import DTYPES

SINGLE_FILE = "model.safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

_WRITTEN_BACK = {"format", "prov_version", "prov_message"}  # metadata keys a checkout writes (versions.checkouts)
BaseShapes = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]  # parameter name -> (dtype, shape)

# The dtype names of the safetensors header (safetensors/torch.py keeps the same table privately):
# those the object store holds, and complex64, which a file may hold and a commit refuses by name.
_DTYPES = {name: dtype for dtype, name in DTYPES.items()} | {"C64": torch.complex64}


class StateReader:
    """Parameter tensors on disk, read one at a time."""

    def __init__(self, path: Path, owner: dict[str, Path], handles: dict[Path, object], stack: ExitStack,
                 stamps: dict[Path, tuple[int, int, int]]):
        self.path = path
        self.names = sorted(owner)
        self._owner = owner  # parameter name -> the file that holds it
        self._handles = handles  # file -> open safe_open handle
        self._stack = stack
        self._stamps = stamps  # file -> its inode, size and mtime before it was opened

    def check_unchanged(self) -> None:
        """Refuse a file written to since it was opened: its tensors are mapped, so those read after
        the write hold the new bytes and those before the old, a state neither file ever held. A
        file replaced by another (renamed over it, as an atomic save does) or removed is not
        refused: the open file, read whole, is the one that was there when the commit began."""
        for file, stamp in self._stamps.items():
            now = _stamp(file)
            if now[0] == stamp[0] and now != stamp:
                raise InvalidParameterError(
                    f"{file} changed while it was read (another process wrote to it): the tensors read would mix "
                    "its old and new contents; commit it once nothing writes to it (or commit a copy)")

    def _handle(self, name: str):
        if name not in self._owner:
            raise InvalidParameterError(f"{self.path}: no parameter named {name!r}")
        return self._handles[self._owner[name]]

    def info(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """The dtype and shape of a parameter, from the file header alone."""
        tensor = self._handle(name).get_slice(name)
        dtype = _DTYPES.get(tensor.get_dtype())
        if dtype is None:
            raise InvalidParameterError(
                f"{self._owner[name]}: parameter {name!r} has dtype {tensor.get_dtype()}, which torch cannot hold"
            )
        return dtype, tuple(tensor.get_shape())

    def metadata_left_out(self) -> str | None:
        """A warning naming the file's safetensors metadata (``__metadata__``) that a version does
        not keep, or None: a version holds tensors, and a checkout writes metadata of its own.
        Those a checkout writes (``format``, as ``save_pretrained`` does, and the version's id and
        message) are not named."""
        keys = sorted({key for handle in self._handles.values() for key in (handle.metadata() or {})} - _WRITTEN_BACK)
        if not keys:
            return None
        shown = ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        return (f"{self.path}: its safetensors metadata ({shown}) is not kept with the version: a version holds the "
                "tensors, and a checkout writes metadata of its own")

    def get(self, name: str) -> torch.Tensor:
        """Read one parameter; the CPU tensor owns its memory and stays valid after `close`."""
        return self._handle(name).get_tensor(name)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def close(self) -> None:
        """Release the open files."""
        self._stack.close()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _stamp(file: Path) -> tuple[int, int, int]:
    """What changes when a file is written to or replaced: its inode, size and modification time."""
    try:
        st = file.stat()
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _open_file(stack: ExitStack, file: Path, stamps: dict[Path, tuple[int, int, int]]):
    stamps[file] = _stamp(file)
    if not file.is_file():  # a FIFO is never opened: reading it would block
        odd = not_a_regular_file(file) if os.path.lexists(file) else None
        raise InvalidParameterError(f"{file}: not a regular file: {odd}" if odd else f"{file}: no such safetensors file")
    if (shown := non_utf8(file)) is not None:  # safetensors opens a path given as UTF-8 text only
        raise InvalidParameterError(f"{shown}: the path is not valid UTF-8; rename it (safetensors opens only UTF-8 "
                                    "paths)")
    try:
        return stack.enter_context(safe_open(str(file), framework="pt"))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise InvalidParameterError(f"{file}: not a readable safetensors file ({exc})") from exc


def pickle_refusal(path: Path) -> str | None:
    """Why `path` is not read, when it is a pickle by its name (``pytorch_model.bin``, ``model.pt``)
    or a folder whose only weights are pickles; else None."""
    if path.is_dir():
        pickles = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES) and p.is_file())
        if not pickles or any(path.glob("*.safetensors")):
            return None
        what = f"holds only pickles ({', '.join(pickles[:3])}{' and more' if len(pickles) > 3 else ''})"
    elif path.name.lower().endswith(PICKLE_SUFFIXES):
        what = "is a pickle"
    else:
        return None
    return (f"{path} {what}: provenance never reads one (loading a pickle runs its code): save the weights as "
            "safetensors (save_pretrained(folder, safe_serialization=True), or safetensors.torch.save_file(state, "
            "'model.safetensors') of a state loaded with torch.load(..., weights_only=True)) and commit that")


def _resolve(path: Path) -> Path:
    """The file to open for `path`: itself, or the single checkpoint a folder holds."""
    refused = pickle_refusal(path)
    if refused:
        raise InvalidParameterError(refused)
    if not path.is_dir():
        return path
    if (path / SINGLE_FILE).is_file():
        return path / SINGLE_FILE
    for pattern in (f"*{INDEX_SUFFIX}", "*.safetensors"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if found:
            raise InvalidParameterError(f"{path}: several checkpoints, name one: {[f.name for f in found]}")
    raise InvalidParameterError(f"{path}: no {SINGLE_FILE}, *{INDEX_SUFFIX} or *.safetensors file in the folder")


def _read_index(index: Path) -> dict[str, Path]:
    """Parameter name -> shard file, as a Hugging Face `*.safetensors.index.json` lists them."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except FileNotFoundError as exc:
        raise InvalidParameterError(f"{index}: no such index file") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidParameterError(f"{index}: not a checkpoint index with a 'weight_map' ({exc!r})") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise InvalidParameterError(f"{index}: 'weight_map' does not map names to shard file names")
    outside = sorted({shard for shard in weight_map.values()
                      if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard})
    if outside:  # the version would hold tensors of files that are not the checkpoint's
        raise InvalidParameterError(f"{index}: 'weight_map' names shard files outside its folder ({', '.join(outside[:3])}); "
                                    "a checkpoint's shards sit beside its index")
    return {name: index.parent / shard for name, shard in weight_map.items()}


def _open_sharded(index: Path, stack: ExitStack, stamps: dict[Path, tuple[int, int, int]]
                  ) -> tuple[dict[str, Path], dict[Path, object]]:
    listed = _read_index(index)
    handles = {shard: _open_file(stack, shard, stamps) for shard in sorted(set(listed.values()))}
    owner: dict[str, Path] = {}
    for shard, handle in handles.items():
        for name in handle.keys():
            if name in owner:
                raise InvalidParameterError(f"{index}: parameter {name!r} is in both {owner[name]} and {shard}")
            owner[name] = shard
    for name, shard in sorted(listed.items()):
        if name not in owner:
            raise InvalidParameterError(f"{index}: parameter {name!r} is listed for {shard} but absent from it")
        if owner[name] != shard:
            raise InvalidParameterError(f"{index}: parameter {name!r} is listed for {shard} but is in {owner[name]}")
    extra = sorted(set(owner) - set(listed))
    if extra:
        raise InvalidParameterError(f"{owner[extra[0]]}: parameter {extra[0]!r} is in the shard but not in {index}")
    return owner, handles


def files_read(folder: str | Path) -> set[Path]:
    """The tensor files :func:`open_state` reads for a checkpoint folder: its one ``.safetensors``
    file, or its index and every shard the index names."""
    file = _resolve(Path(folder))
    return {file, *_read_index(file).values()} if file.name.endswith(INDEX_SUFFIX) else {file}


def open_state(path: str | Path) -> StateReader:
    """Open a `.safetensors` file, a sharded `*.safetensors.index.json`, or a folder holding one of them."""
    file = _resolve(Path(path))
    stack = ExitStack()
    stamps: dict[Path, tuple[int, int, int]] = {}
    try:
        if file.name.endswith(INDEX_SUFFIX):
            owner, handles = _open_sharded(file, stack, stamps)
        else:
            handle = _open_file(stack, file, stamps)
            owner, handles = dict.fromkeys(handle.keys(), file), {file: handle}
        if "" in owner:  # a state dict's '' is refused; from a file it was stored as a parameter without a name
            raise InvalidParameterError(f"{owner['']}: holds a tensor whose name is empty; parameters need names "
                                        "(rename it and save the file again)")
    except BaseException:
        stack.close()
        raise
    return StateReader(file, owner, handles, stack, stamps)


@dataclass(frozen=True)
class LowRankUpdate:
    """delta W = scale * b @ a, with exactly the shape of the base parameter."""

    b: torch.Tensor  # (out, r)
    a: torch.Tensor  # (r, in)
    scale: float


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter as patches of a base model: a parameter's new value is `replaced[name]` if
    given, else the base tensor, plus `updates[name]` (scale * b @ a) if given."""

    path: Path
    config: dict
    base_model: str | None
    updates: dict[str, LowRankUpdate]
    replaced: dict[str, torch.Tensor]


# Saved key suffixes of LoRA factors, with whether the layer is an embedding. peft/tuners/lora/layer.py:
# Linear keeps `lora_A`/`lora_B` as nn.Linear modules (weights (r, in) and (out, r)); Embedding keeps
# `lora_embedding_A` (r, num_embeddings) and `lora_embedding_B` (embedding_dim, r) as bare Parameters.
# peft/utils/save_and_load.py (`_remove_adapter_name_from_state_dict_key`) drops the adapter name, so
# `<module>.lora_A.default.weight` is saved as `<module>.lora_A.weight` and `<module>.lora_embedding_A.default`
# as `<module>.lora_embedding_A`. PeftModel prefixes every module with `base_model.model.`.
_FACTOR_SUFFIXES = {
    ".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
    ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True),
}
# init_lora_weights values whose initialisation rewrites the base weights (PiSSA, OLoRA, CorDA, LoRA-GA,
# LoftQ; peft/tuners/lora/config.py): such an adapter only makes sense on the rewritten base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")


def is_lora_adapter(path: str | Path) -> bool:
    """Whether `path` is a folder with a PEFT `adapter_config.json`."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's `get_pattern_key` (peft/utils/other.py): the first key that matches the end of the module name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParameterError(f"{folder / ADAPTER_CONFIG}: not a readable adapter config ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidParameterError(f"{folder / ADAPTER_CONFIG}: not an adapter config (a JSON object), but a JSON "
                                    f"{type(config).__name__}")
    for field in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(field) or {}, dict):
            raise InvalidParameterError(f"{folder / ADAPTER_CONFIG}: {field} must map module names to numbers, got "
                                        f"{config[field]!r:.60}")
    refused = adapter_refusal(config)
    if refused:
        raise InvalidParameterError(f"{folder}: {refused}")
    return config


def adapter_refusal(config: Mapping[str, Any]) -> str | None:
    """Why a PEFT adapter with this config (``adapter_config.json``, or a ``PeftConfig``'s
    ``to_dict()``) cannot be read as low-rank patches of its base model, or None."""
    peft_type = config.get("peft_type", "LORA")
    refusals = {
        "peft_type": str(getattr(peft_type, "value", peft_type)) not in ("LORA", "None"),
        "use_dora": config.get("use_dora"),
        "lora_bias": config.get("lora_bias"),
        "target_parameters": config.get("target_parameters"),
        "init_lora_weights": str(config.get("init_lora_weights")).lower().startswith(_BASE_REWRITING_INITS),
    }
    for field, refused in refusals.items():
        if refused:
            value = config.get(field)
            return f"{field}={getattr(value, 'value', value)!r} cannot be read as low-rank patches of the base model"
    return None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if not (folder / ADAPTER_WEIGHTS).is_file() and (folder / "adapter_model.bin").is_file():
        raise InvalidParameterError(
            f"{folder}: only adapter_model.bin, a pickle file, which is not read; save with safe_serialization=True"
        )
    with open_state(folder / ADAPTER_WEIGHTS) as state:
        if not len(state):  # (committed, it made a version equal to its parent)
            raise InvalidParameterError(f"{folder / ADAPTER_WEIGHTS} holds no tensors: there is no LoRA factor or "
                                        "saved module to patch the base with")
        return {name: state.get(name) for name in state}


def _base_name(module: str, suffix: str, base: BaseShapes) -> str | None:
    """The base parameter `module + suffix` names, first without PeftModel's prefix, then with it."""
    for candidate in (module.removeprefix(PEFT_PREFIX), module):
        if candidate + suffix in base:
            return candidate + suffix
    return None


def _tied_hint(module: str, param: str, base: BaseShapes) -> str:
    """Why a saved module's parameter may be missing from a base that holds the module: a
    checkpoint ``save_pretrained`` wrote keeps one name of each set of tied weights (a decoder's
    bias tied to the head's), while PEFT's ``modules_to_save`` saves every name of the module."""
    for candidate in (module.removeprefix(PEFT_PREFIX), module):
        held = sorted(n.removeprefix(f"{candidate}.") for n in base if n.startswith(f"{candidate}.")
                      and "." not in n.removeprefix(f"{candidate}."))
        if held:
            return (f" (the base model's module {candidate!r} holds {', '.join(map(repr, held[:4]))}, not {param!r}: "
                    "a checkpoint save_pretrained wrote keeps one name of weights tied to each other; commit the base "
                    "from the model's state_dict(), which holds every name)")
    return ""


def read_lora_adapter(path: str | Path, base: BaseShapes) -> LoraAdapter:
    """Read a PEFT LoRA folder as patches of the base model whose parameters `base` describes."""
    folder = Path(path)
    config = _read_config(folder)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    embedding: dict[str, bool] = {}
    replaced: dict[str, torch.Tensor] = {}
    for key, tensor in _read_weights(folder).items():
        suffix = next((s for s in _FACTOR_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            module = key.removesuffix(suffix)
            side, is_embedding = _FACTOR_SUFFIXES[suffix]
            factors.setdefault(module, {})[side] = tensor
            if embedding.setdefault(module, is_embedding) != is_embedding:
                raise InvalidParameterError(f"{folder}: module {module!r} mixes Linear and Embedding LoRA factors")
            continue
        # modules_to_save, `bias` = "all"/"lora_only" and saved embedding layers are stored under the wrapped
        # module's own parameter name (save_and_load.py: `{name}.{k}` of ModulesToSaveWrapper.adapter_state_dict;
        # older PEFT: key.replace("modules_to_save.", "")); a LoRA layer's own weight sits under `base_layer.`.
        module, _, param = key.replace(".base_layer.", ".").rpartition(".")
        name = _base_name(module, f".{param}", base) if module else None
        if name is not None:
            replaced[name] = tensor
        elif key.endswith("lora_magnitude_vector"):
            raise InvalidParameterError(f"{folder}: {key!r} is a DoRA magnitude, not a low-rank patch")
        elif key.endswith((".lora_A.bias", ".lora_B.bias")):
            raise InvalidParameterError(f"{folder}: {key!r} is a LoRA bias (lora_bias), not a low-rank patch")
        else:
            raise InvalidParameterError(
                f"{folder}: {key!r} is neither a LoRA factor nor a base model parameter{_tied_hint(module, param, base)}")
    updates: dict[str, LowRankUpdate] = {}
    missing: list[str] = []
    for module, pair in sorted(factors.items()):
        name = _base_name(module, ".weight", base)
        if name is None:
            missing.append(module.removeprefix(PEFT_PREFIX))
            continue
        shape = tuple(replaced[name].shape) if name in replaced else tuple(base[name][1])
        updates[name] = _update(folder, config, module, pair, embedding[module], name, shape)
    if missing:
        raise InvalidParameterError(f"{folder}: target modules absent from the base model: {', '.join(missing)}")
    return LoraAdapter(folder, config, config.get("base_model_name_or_path"), updates, replaced)


def _update(
    folder: Path, config: dict, module: str, pair: dict[str, torch.Tensor], is_embedding: bool, name: str,
    expected: tuple[int, ...],
) -> LowRankUpdate:
    """One module's factors as an exact patch of parameter `name`, of shape `expected` (PEFT's get_delta_weight)."""
    if set(pair) != {"A", "B"}:
        raise InvalidParameterError(f"{folder}: module {module!r} has lora_{''.join(pair)} without its partner")
    lora_a, lora_b = pair["A"], pair["B"]
    if lora_a.dim() != 2 or lora_b.dim() != 2:
        raise InvalidParameterError(
            f"{folder}: module {module!r} has {lora_a.dim()}-D LoRA factors (a Conv layer), not a low-rank matrix patch"
        )
    # LoraModel._create_and_replace (peft/tuners/lora/model.py) matches rank_pattern / alpha_pattern
    # against the module name inside the base model; LoraLayer.update_layer (layer.py) sets the scaling.
    inner = module.removeprefix(PEFT_PREFIX)
    rank = _pattern_value(config.get("rank_pattern") or {}, inner, config.get("r", 8))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, inner, config.get("lora_alpha", 8))
    # (PEFT's LoraConfig refuses r <= 0; a hand-written config divided by zero, or compared "2" with 2)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidParameterError(f"{folder / ADAPTER_CONFIG}: module {module!r} has rank {rank!r} (r or "
                                    "rank_pattern): a LoRA rank is a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InvalidParameterError(f"{folder / ADAPTER_CONFIG}: module {module!r} has lora_alpha {alpha!r} "
                                    "(lora_alpha or alpha_pattern): a finite number is needed")
    if lora_a.shape[0] != rank or lora_b.shape[1] != rank:
        raise InvalidParameterError(
            f"{folder}: module {module!r} has factors {tuple(lora_b.shape)} @ {tuple(lora_a.shape)} "
            f"but the config gives rank {rank}"
        )
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    # Embedding.get_delta_weight is transpose(B @ A, True); Linear's is transpose(B @ A, fan_in_fan_out),
    # True for GPT-2's Conv1D, which stores (in, out). PEFT's dispatch_default sets that flag from each
    # layer's type, overwriting the shared config, so the saved flag tells only the last layer's type:
    # a non-square parameter's shape decides, the flag only a square one's. (B @ A)^T = A^T @ B^T.
    out, inp = lora_b.shape[0], lora_a.shape[1]
    flagged = bool(config.get("fan_in_fan_out"))
    if is_embedding or (expected == (inp, out) if out != inp else flagged):
        b, a = lora_a.T.contiguous(), lora_b.T.contiguous()
    else:
        b, a = lora_b, lora_a
    if (b.shape[0], a.shape[1]) != expected:
        raise InvalidParameterError(
            f"{folder}: update of {name!r} has shape {(b.shape[0], a.shape[1])}, the parameter has {expected}"
        )
    return LowRankUpdate(b=b, a=a, scale=float(scale))
