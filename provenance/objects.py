"""The object store: tensors content-addressed under ``.prov/objects/``, one safetensors file each.

An object's address is the xxh3-128 of its dtype, its shape and its bytes, so identical tensors
are stored once whatever version or model they belong to. Writes go to a temporary name in the
same folder, are synced, then renamed (with the folder synced too); a reader never sees half an
object. Every read checks the address against the bytes and refuses a mismatch.

This module knows nothing of versions; the ledger names the versions that use an object when it
reports a corrupt or missing one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from provenance.errors import ObjectCorruptError, ObjectMissingError
from provenance.tensorfile import raw_bytes, read_tensors, write_tensors

_KEY = "tensor"


@dataclass(frozen=True)
class ObjectRef:
    """Where a tensor lives in the store and what it is."""

    address: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    created: bool = False  # whether this put wrote the object (False: it was already stored)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def address_of(tensor: torch.Tensor) -> str:
    """xxh3-128 (hex) over ``dtype``, ``shape`` and the bytes: the tensor's address."""
    h = xxhash.xxh3_128(f"{_dtype_name(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
    h.update(raw_bytes(tensor))
    return h.hexdigest()


class ObjectStore:
    """Content-addressed tensors in ``root`` (the ledger's ``objects`` folder)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, address: str) -> Path:
        return self.root / address[:2] / f"{address[2:]}.safetensors"

    def __contains__(self, address: str) -> bool:
        return self.path(address).exists()

    def put(self, tensor: torch.Tensor) -> ObjectRef:
        """Store ``tensor`` (once: an existing object with the same address is kept)."""
        tensor = tensor.detach().contiguous().cpu()
        address = address_of(tensor)
        path = self.path(address)
        created = not path.exists()
        if created:
            write_tensors(path, {_KEY: tensor}, metadata={"address": address})
        nbytes = tensor.numel() * tensor.element_size()
        return ObjectRef(address, _dtype_name(tensor.dtype), tuple(tensor.shape), nbytes, created)

    def get(self, address: str) -> torch.Tensor:
        """The tensor at ``address``; raises when it is missing or its bytes do not match."""
        path = self.path(address)
        try:
            tensors, _ = read_tensors(path)
            tensor = tensors[_KEY]
        except FileNotFoundError:
            raise ObjectMissingError(f"object {address} is missing from {self.root}") from None
        except (ValueError, KeyError) as exc:
            raise ObjectCorruptError(f"object {address} ({path}) is not a readable safetensors file: {exc}") from None
        actual = address_of(tensor)
        if actual != address:
            raise ObjectCorruptError(f"object {address} ({path}) is corrupt: its content hashes to {actual}")
        return tensor

    def addresses(self) -> Iterator[str]:
        """Every stored address (temporary files excluded)."""
        if not self.root.exists():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2):
            for f in sorted(folder.glob("*.safetensors")):
                yield folder.name + f.name.removesuffix(".safetensors")

    def delete(self, address: str) -> int:
        """Remove an object; returns the bytes freed (0 when it was not there)."""
        path = self.path(address)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

