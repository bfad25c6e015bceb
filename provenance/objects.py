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
from concurrent.futures import Future, ThreadPoolExecutor
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

    def __init__(self, root: str | os.PathLike, *, sync: bool = True):
        self.root = Path(root)
        self.sync = sync  # sync each object to the disk before it is renamed into place
        self._root = str(self.root)

    def path(self, address: str) -> Path:
        return Path(self._file(address))

    def _file(self, address: str) -> str:
        return os.path.join(self._root, address[:2], address[2:] + ".safetensors")

    def __contains__(self, address: str) -> bool:
        return self.path(address).exists()

    def put(self, tensor: torch.Tensor, writer: BackgroundWriter | None = None) -> ObjectRef:
        """Store ``tensor`` (once: an existing object with the same address is kept). With a
        ``writer``, the file is written and synced on its thread and the call returns at once;
        the object exists when the writer is closed."""
        tensor = tensor.detach().contiguous().cpu()
        address = address_of(tensor)
        path = self.path(address)
        created = not path.exists() and (writer is None or address not in writer.pending)
        if created:
            if writer is None:
                write_tensors(path, {_KEY: tensor}, metadata={"address": address}, sync=self.sync)
            else:
                writer.submit(address, path, tensor, self.sync)
        nbytes = tensor.numel() * tensor.element_size()
        return ObjectRef(address, _dtype_name(tensor.dtype), tuple(tensor.shape), nbytes, created)

    def get(self, address: str) -> torch.Tensor:
        """The tensor at ``address``; raises when it is missing or its bytes do not match."""
        path = self._file(address)
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

    def temporaries(self) -> Iterator[Path]:
        """Temporary files of writes that did not finish (a writer killed before its rename)."""
        if self.root.exists():
            yield from sorted(self.root.glob("??/.*.tmp"))

    def delete(self, address: str) -> int:
        """Remove an object; returns the bytes freed (0 when it was not there)."""
        path = self.path(address)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size


class BackgroundWriter:
    """Writes objects on a few threads while the caller computes the next ones (file writes and
    syncs release the GIL), holding at most ``max_pending`` bytes of tensors in flight.

    ``with BackgroundWriter() as writer: store.put(t, writer)``; leaving the block waits for every
    write and raises the first error.
    """

    def __init__(self, threads: int = 2, max_pending: int = 1 << 30):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prov-objects")
        self._futures: list[tuple[Future, int]] = []
        self._bytes = 0
        self.max_pending = max_pending
        self.pending: set[str] = set()

    def submit(self, address: str, path: Path, tensor: torch.Tensor, sync: bool = True) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        while self._futures and self._bytes + nbytes > self.max_pending:
            future, size = self._futures.pop(0)
            future.result()
            self._bytes -= size
        self.pending.add(address)
        future = self._pool.submit(write_tensors, path, {_KEY: tensor}, {"address": address}, sync=sync)
        self._futures.append((future, nbytes))
        self._bytes += nbytes

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            for future, _ in self._futures:
                if exc_type is None:
                    future.result()
                else:
                    future.exception()  # wait, so that the caller can clean up what was written
        finally:
            self._pool.shutdown(wait=True)
