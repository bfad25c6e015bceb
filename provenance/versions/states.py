"""The state a commit stores, read one parameter group at a time: a state dict or module, a
``.safetensors`` file, a sharded checkpoint read tensor by tensor, or a PEFT LoRA adapter whose
groups are updates of the parent's (:class:`AdapterUpdate`); a group the state leaves as the parent
has it is :data:`SAME`, and is not read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from provenance.errors import InvalidParameterError, warn
from provenance.records import ParamRecord, check_utf8
from provenance.tensorfile import TensorSequence, dtype_from_name

SAME = object()  # a group the incoming state leaves as the parent has it (no need to read it)


@dataclass(frozen=True)
class AdapterUpdate:
    """A LoRA-patched group: ``start`` (or the parent's value) plus ``scale * b @ a``."""

    b: torch.Tensor
    a: torch.Tensor
    scale: float
    start: torch.Tensor | None = None


class _Incoming:
    """The state a commit stores, one group at a time: ``get(name)`` gives a tensor, an
    :class:`AdapterUpdate`, or ``SAME``; ``check()`` refuses a file written to while it was read."""

    def __init__(self, names: list[str], get, close=lambda: None, check=lambda: None):
        self.names, self.get, self.close, self.check = names, get, close, check


def incoming_state(state: Any, parent_manifest: dict[str, ParamRecord], parent_id: str | None) -> _Incoming:
    from provenance import checkpoints

    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if checkpoints.is_lora_adapter(path):
            if parent_id is None:
                raise InvalidParameterError(f"{path} is a LoRA adapter: commit it with parent= the base version "
                                            "(prov model commit --parent)")
            live = {n: p for n, p in parent_manifest.items() if p.encoding != "removed"}
            adapter = checkpoints.read_lora_adapter(
                path, {n: (dtype_from_name(p.dtype), tuple(p.shape)) for n, p in live.items()}
            )

            def get(name: str) -> Any:
                update = adapter.updates.get(name)
                if update is not None:
                    return AdapterUpdate(update.b, update.a, update.scale, adapter.replaced.get(name))
                return adapter.replaced.get(name, SAME)

            return _Incoming(sorted(live), get)
        if not path.exists():
            raise InvalidParameterError(f"{path}: no such file or folder")
        refused = checkpoints.pickle_refusal(path)
        if refused:
            raise InvalidParameterError(refused)
        if path.is_file() and not (path.name.endswith(".safetensors") or path.name.endswith(checkpoints.INDEX_SUFFIX)):
            raise InvalidParameterError(f"{path}: expected a .safetensors file, a *.safetensors.index.json, a folder or a state dict")
        reader = checkpoints.open_state(path)
        left_out = reader.metadata_left_out()
        if left_out:
            warn(left_out)
        return _Incoming(list(reader.names), reader.get, reader.close, reader.check_unchanged)
    if isinstance(state, TensorSequence):
        return _Incoming(list(state.names), state.get, state.close)
    if hasattr(state, "state_dict") and not isinstance(state, Mapping):
        state = state.state_dict()
    if isinstance(state, Mapping):
        for name in state:
            if not isinstance(name, str) or not name:
                raise InvalidParameterError(f"parameter names must be non-empty strings, got {name!r}")
            if name == "__metadata__":  # the safetensors header's own key: the version could not be written out
                raise InvalidParameterError("parameter name '__metadata__' is the key safetensors keeps its metadata "
                                            "under; rename the parameter")
            check_utf8(name, f"parameter name {name!r}")
        return _Incoming(sorted(state), state.__getitem__)
    raise InvalidParameterError(
        f"cannot commit a {type(state).__name__}: give a state dict, a module, a .safetensors file, "
        "a sharded checkpoint or a LoRA adapter folder"
    )
