"""The object store: tensors content-addressed under ``.prov/objects/``, one safetensors file each.

An object's address is the xxh3-128 of its dtype, its shape and its bytes, so identical tensors
are stored once whatever version or model they belong to. Writes go to a temporary name in the
same folder, are synced, then renamed (with the folder synced too); a reader never sees half an
object. Every read checks the address against the bytes and refuses a mismatch.

The store holds dense tensors of every dtype that both torch and safetensors have (FP8 included),
as their bits; :func:`unstorable` says why it cannot hold a tensor: a meta, sparse or quantized
one, or a complex one (not stored: its ``torch.view_as_real`` form is, exactly).

A put whose object already exists checks it first (its size, its header and the hash of its
bytes: one read, a few milliseconds per 100 MB, far less than the write it saves) and writes it
again, atomically, when it is damaged: a bit flipped on disk is repaired by the next commit of the
same tensor instead of being silently shared by it. A folder that cannot be written (read-only,
a file where a folder should be, a full disk) raises :class:`ObjectWriteError` naming it.

This module knows nothing of versions; the ledger names the versions that use an object when it
reports a corrupt or missing one.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import xxhash

from provenance.errors import (
    InvalidParameterError,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectWriteError,
    StorageUnreachableError,
)
from provenance.files import fsync_folder
from provenance.tensorfile import DTYPES, header, raw_bytes, read_tensors, write_tensors

_KEY = "tensor"
_CHUNK = 1 << 18  # bytes read at a time when an existing object is checked (they stay in the CPU cache)


@dataclass(frozen=True)
class ObjectRef:
    """Where a tensor lives in the store and what it is."""

    address: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    created: bool = False  # whether this put wrote a new object (False: it was already stored)
    repaired: bool = False  # whether this put rewrote a stored object that was damaged


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_storable(name: str, value: Any) -> None:
    """Refuse ``value`` as parameter ``name`` unless it is a tensor the store can hold
    (:func:`unstorable`), in the words a commit uses locally and through a server's client."""
    if not isinstance(value, torch.Tensor):
        raise InvalidParameterError(f"parameter {name!r} is a {type(value).__name__}, not a tensor")
    refusal = unstorable(value)
    if refusal is not None:
        raise InvalidParameterError(f"parameter {name!r} is {refusal}")


def check_low_rank(low_rank: Mapping[str, Any] | None) -> dict[str, Any]:
    """``low_rank`` checked: per parameter, ``(B, A, scale)`` with B and A tensors the store can
    hold and a number; in the same words for a local commit and a server's client."""
    if low_rank is not None and not isinstance(low_rank, Mapping):
        raise InvalidParameterError(f"low_rank must map parameter names to (B, A, scale), got {type(low_rank).__name__}")
    out = dict(low_rank or {})
    for name, given in out.items():
        ok = isinstance(given, (tuple, list)) and len(given) == 3 and all(
            isinstance(t, torch.Tensor) for t in given[:2]) and isinstance(given[2], numbers.Real)
        if not ok:
            kinds = (f"({', '.join(type(x).__name__ for x in given)})" if isinstance(given, (tuple, list))
                     else type(given).__name__)
            raise InvalidParameterError(f"low_rank[{name!r}] must be (B, A, scale): two tensors and a number, "
                                        f"got {kinds}")
        for factor, t in zip("BA", given[:2]):
            refusal = unstorable(t)
            if refusal is not None:  # a meta factor failed inside the kernel ("Cannot copy out of meta tensor")
                raise InvalidParameterError(f"low_rank[{name!r}] factor {factor} is {refusal}")
    return out


def unstorable(tensor: torch.Tensor) -> str | None:
    """Why the store cannot hold ``tensor`` bit for bit as a dense array of a safetensors dtype
    (a phrase completing "the tensor is ..."), or None when it can."""
    if tensor.is_meta:
        return f"a meta tensor (shape {list(tensor.shape)}, no data): load its values before committing"
    if tensor.is_nested:  # (its shape raises "NestedTensorImpl doesn't support sizes")
        return ("a nested tensor (tensors of different shapes): commit each as a parameter of its own "
                "(tensor.unbind())")
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor: commit its dense form (tensor.to_dense())"
    if tensor.is_quantized:
        scheme = str(tensor.qscheme()).removeprefix("torch.")
        return (f"a quantized {_dtype_name(tensor.dtype)} tensor ({scheme}): its scales and zero points would be "
                "lost; commit tensor.dequantize(), or tensor.int_repr() and the quantisation parameters as tensors")
    if tensor.is_complex():
        return (f"{_dtype_name(tensor.dtype)}, and complex tensors are not stored: commit "
                "torch.view_as_real(tensor) (real and imaginary parts, exact) instead")
    if tensor.dtype not in DTYPES:
        held = ", ".join(sorted(_dtype_name(d) for d in DTYPES))
        return f"{_dtype_name(tensor.dtype)}, which the object store cannot hold (it holds {held})"
    if math.prod(max(d, 1) for d in tensor.shape) > 2**62:  # even with no element: its strides overflow
        return (f"of shape {list(tensor.shape)}, whose strides overflow (over 2**62 positions): it could not be made "
                "again on checkout")
    return None


def _hasher(dtype: torch.dtype, shape: tuple[int, ...]) -> xxhash.xxh3_128:
    return xxhash.xxh3_128(f"{_dtype_name(dtype)}|{tuple(shape)}|".encode())


def address_of(tensor: torch.Tensor) -> str:
    """xxh3-128 (hex) over ``dtype``, ``shape`` and the bytes: the tensor's address."""
    h = _hasher(tensor.dtype, tuple(tensor.shape))
    h.update(raw_bytes(tensor))
    return h.hexdigest()


def _write(path: Path, tensor: torch.Tensor, address: str, sync: bool) -> None:
    """Write one object (temporary name, sync, rename); an OS refusal becomes an
    :class:`ObjectWriteError` naming the folder that refused it."""
    try:
        write_tensors(path, {_KEY: tensor}, metadata={"address": address}, sync=sync)
    except OSError as exc:
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # a folder that could not be made: its parent refused
            folder = folder.parent
        why = (exc.strerror or str(exc)) if folder.is_dir() else "it is a file, not a folder"
        raise ObjectWriteError(f"cannot write object {address} into {folder}: {why}", str(folder)) from exc


class ObjectStore:
    """Content-addressed tensors in ``root`` (the ledger's ``objects`` folder)."""

    def __init__(self, root: str | os.PathLike, *, sync: bool = True):
        self.root = Path(root)
        self.sync = sync  # sync each object to the disk before it is renamed into place
        self._root = str(self.root)
        self.writer_threads = 2  # threads a BackgroundWriter gives this store's writes

    def path(self, address: str) -> Path:
        return Path(self._file(address))

    def _file(self, address: str) -> str:
        return os.path.join(self._root, address[:2], address[2:] + ".safetensors")

    def __contains__(self, address: str) -> bool:
        return self.path(address).exists()

    def put(self, tensor: torch.Tensor, writer: BackgroundWriter | None = None) -> ObjectRef:
        """Store ``tensor`` (once: an intact object with the same address is kept, a damaged one
        is written again). With a ``writer``, the lookup, the check and the write run on its
        threads and the call returns at once (the ref's ``created`` and ``repaired`` are then
        False: the addresses it wrote afresh are in ``writer.created``); the object exists when the
        writer is closed. Raises
        :class:`ObjectWriteError` when the store's folder cannot be written, and
        :class:`InvalidParameterError` for a tensor it cannot hold (:func:`unstorable`)."""
        refusal = unstorable(tensor)
        if refusal is not None:
            raise InvalidParameterError(f"cannot store a tensor that is {refusal}")
        tensor = tensor.detach().contiguous().cpu()
        address = address_of(tensor)
        path = self.path(address)
        nbytes = tensor.numel() * tensor.element_size()
        ref = ObjectRef(address, _dtype_name(tensor.dtype), tuple(tensor.shape), nbytes)
        if writer is not None:  # the lookup too runs on the writer's threads, which need it anyway
            if address not in writer.pending:
                writer.submit(address, tensor, self._ensure, path, tensor, address, writer.created)
            return ref
        created, repaired = self._ensure(path, tensor, address)
        return replace(ref, created=created, repaired=repaired)

    def _ensure(self, path: Path, tensor: torch.Tensor, address: str, created: list[str] | None = None
                ) -> tuple[bool, bool]:
        """Write the object unless an intact one is at ``path``: ``(created, repaired)``; a new
        object's address is appended to ``created``."""
        exists = os.path.lexists(path)
        if exists and self._intact(path, tensor, address):
            return False, False
        _write(path, tensor, address, self.sync)
        if not exists and created is not None:
            created.append(address)
        return not exists, exists

    @staticmethod
    def _intact(path: Path, tensor: torch.Tensor, address: str) -> bool:
        """Whether the file at ``path`` is the object ``put`` writes for ``tensor``: its size, its
        header byte for byte, and bytes that hash to ``address``."""
        head = header([(_KEY, tensor.dtype, tuple(tensor.shape))], {"address": address})
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size != len(head) + tensor.numel() * tensor.element_size():
                    return False
                if fh.read(len(head)) != head:
                    return False
                h = _hasher(tensor.dtype, tuple(tensor.shape))
                buf = bytearray(_CHUNK)
                view = memoryview(buf)
                while n := fh.readinto(buf):
                    h.update(view[:n])
        except OSError:  # unreadable (a folder, no permission): written again, or the write says why
            return False
        return h.hexdigest() == address

    def get(self, address: str) -> torch.Tensor:
        """The tensor at ``address``; raises when it is missing or its bytes do not match."""
        path = self._file(address)
        try:
            return checked_tensor(address, path, lambda: read_tensors(path)[0])
        except (FileNotFoundError, NotADirectoryError):
            gone = ("" if self.root.is_dir() else " (it is a file, not a folder)" if self.root.exists()
                    else " (the folder itself does not exist: moved or deleted?)")
            raise ObjectMissingError(f"object {address} is missing from {self.root}{gone}") from None

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
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return size

    def location(self, address: str) -> str:
        """Where the object at ``address`` is (for messages)."""
        return self._file(address)

    def size(self, address: str) -> int | None:
        """The stored object's bytes, None when it is not there."""
        try:
            return os.stat(self._file(address)).st_size
        except OSError:
            return None

    def check(self, address: str, *, rehash: bool) -> tuple[str, str] | None:
        """``(problem, detail)`` for a damaged object ("missing", "truncated" or "corrupt"), None
        for a sound one. Without ``rehash`` only the file's presence, header and size are checked
        (cheap); with it, the bytes' hash too."""
        path = self.path(address)
        if not path.is_file():
            gone = ("" if self.root.is_dir() else f" ({self.root} is a file, not a folder)" if self.root.exists()
                    else f" (nor does {self.root} itself: moved or deleted?)")
            return ("missing", f"{path} does not exist{gone}") if not os.path.lexists(path) else (
                "corrupt", f"{path} is not a regular file")
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                problem = header_problem(str(path), size, fh.read(8), fh.read)
        except OSError as exc:
            return "corrupt", f"{path}: unreadable ({exc})"
        return problem or (read_problem(self, address) if rehash else None)

    def quarantine(self, address: str, folder: Path) -> str | None:
        """Move a damaged object into ``folder`` (the ledger's quarantine); where it went, None
        when there was nothing to move."""
        path = self.path(address)
        if not os.path.lexists(path):
            return None
        folder.mkdir(exist_ok=True)
        target = folder / quarantine_name(address, lambda name: os.path.lexists(folder / name))
        os.replace(path, target)
        fsync_folder(folder)
        fsync_folder(path.parent)
        return str(target)


def quarantine_name(address: str, taken: Callable[[str], bool]) -> str:
    """The file name a damaged object takes in a quarantine: ``ADDRESS.safetensors``, or where an
    earlier repair put one there (the same object damaged again), ``ADDRESS.N.safetensors`` with
    the first free ``N``: it replaced the earlier copy, and a repair deletes nothing."""
    name, n = f"{address}.safetensors", 1
    while taken(name):
        name, n = f"{address}.{n}.safetensors", n + 1
    return name


def checked_tensor(address: str, where: Any, read: Callable[[], dict[str, torch.Tensor]]) -> torch.Tensor:
    """The object's tensor from ``read()`` (its safetensors file parsed), refused unless it
    parses and hashes to ``address``; ``where`` names the file in the errors."""
    try:
        tensor = read()[_KEY]
    except (ValueError, KeyError) as exc:
        raise ObjectCorruptError(f"object {address} ({where}) is not a readable safetensors file: {exc}") from None
    actual = address_of(tensor)
    if actual != address:
        raise ObjectCorruptError(f"object {address} ({where}) is corrupt: its content hashes to {actual}")
    return tensor


def read_problem(store: Any, address: str) -> tuple[str, str] | None:
    """``(problem, detail)`` when ``store.get(address)`` (which re-hashes) refuses the object."""
    try:
        store.get(address)
    except StorageUnreachableError:  # no answer about the object: not damage
        raise
    except ObjectMissingError as exc:
        return "missing", str(exc)
    except ObjectCorruptError as exc:
        return "corrupt", str(exc)
    return None


def header_problem(where: str, size: int, head: bytes, read: Callable[[int], bytes]) -> tuple[str, str] | None:
    """``(problem, detail)`` when a stored object of ``size`` bytes, whose first 8 bytes are
    ``head`` and whose next bytes ``read(n)`` gives, is not a whole safetensors file (header
    unreadable, or a size other than its header says); None when it is."""
    if len(head) < 8:
        return "truncated", f"{where} holds {size} bytes, less than a safetensors header"
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        return "truncated", f"{where} holds {size} bytes; its header alone claims {n + 8}"
    try:
        meta = json.loads(read(n))
        ends = [e["data_offsets"][1] for k, e in meta.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return "corrupt", f"{where}: unreadable header ({exc})"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return "truncated" if size < expected else "corrupt", f"{where} holds {size:,} bytes; its header says {expected:,}"
    return None


class NewObjects:
    """The objects one write (a commit, a merge, a stored Fisher) adds to a store, to be removed
    again if the write fails: ``created`` (addresses; :meth:`put` adds to it) and what the
    background writers made by :meth:`background` found absent and wrote."""

    def __init__(self, store: Any):
        self.store = store
        self.created: list[str] = []
        self._writers: list[BackgroundWriter] = []

    def background(self) -> BackgroundWriter:
        writer = BackgroundWriter(threads=self.store.writer_threads)
        self._writers.append(writer)
        return writer

    def put(self, tensor: torch.Tensor, writer: BackgroundWriter | None = None) -> ObjectRef:
        ref = self.store.put(tensor, writer)
        if ref.created:
            self.created.append(ref.address)
        return ref

    def remove(self) -> None:
        for address in [*self.created, *(a for w in self._writers for a in w.created)]:
            with contextlib.suppress(OSError):  # the error that stopped the write is the one to report
                self.store.delete(address)


@contextlib.contextmanager
def new_objects(store: Any, writers: Any) -> Iterator[NewObjects]:
    """A write's new objects in ``store``, removed again when the block raises, if no other write
    of the process ran beside it (``writers``: the ledger's ``object_writers``; another write may
    have found one of them there and kept a version that uses it, and ``gc`` removes what stays
    unreferenced). The block counts as a write for ``gc``, which waits for it."""
    added = NewObjects(store)
    with writers.writing() as started:
        try:
            yield added
        except BaseException:
            writers.if_alone(added.remove, started)
            raise


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
        self.created: list[str] = []  # objects a store's writes on these threads found absent and wrote

    def submit(self, address: str, tensor: torch.Tensor, write: Callable[..., None], *args: Any) -> None:
        """Run ``write(*args)`` (which stores ``tensor`` at ``address``) on a writer thread."""
        nbytes = tensor.numel() * tensor.element_size()
        while self._futures and self._bytes + nbytes > self.max_pending:
            future, size = self._futures.pop(0)
            future.result()
            self._bytes -= size
        self.pending.add(address)
        future = self._pool.submit(write, *args)
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
