"""Safetensors files written one tensor at a time and read without extra copies.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON (``name -> {dtype, shape, data_offsets}`` plus optional ``__metadata__``), then
the tensors' bytes. Because the header only needs dtypes and shapes, a writer that knows them in
advance (a version's manifest does) can stream each tensor's bytes as it is produced: checkout of
a model larger than memory holds one tensor at a time. Files are written to a temporary name,
synced and renamed, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import secrets
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from provenance.files import fsync_folder, host_label, naming, process_alive

# Every dtype that both torch and safetensors hold, by its safetensors name; the FP8 ones are
# stored as their bits like any other. Complex64 ("C64") is left out: the object store refuses
# complex tensors (provenance.versions), and float4_e2m1fn_x2 ("F4") counts packed elements in
# its header, which this writer does not.
DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
if hasattr(torch, "float8_e8m0fnu"):  # torch 2.7 and later
    DTYPES[torch.float8_e8m0fnu] = "F8_E8M0"
_BY_NAME = {v: k for k, v in DTYPES.items()}
_MAP_FROM = 1 << 16  # files from this size are memory-mapped (their pages come from the page cache; a
# read buffer of fresh memory costs a page fault and zeroing per 4 KiB: 0.5 s per GB), smaller ones read


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype of a manifest dtype name such as ``"float32"`` or ``"bfloat16"``."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}")
    return dtype


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major order, without a copy when it is contiguous on the CPU."""
    t = tensor.detach().contiguous().cpu()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def header(entries: Sequence[tuple[str, torch.dtype, Sequence[int]]], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and JSON header for tensors laid out in ``entries`` order."""
    body: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if name in body:
            raise ValueError(f"tensor name {name!r} appears twice")
        n = 1
        for d in shape:
            n *= int(d)
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype}, which provenance does not write to safetensors files")
        size = n * dtype.itemsize
        body[name] = {"dtype": DTYPES[dtype], "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(body, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


PIECE = 1 << 20  # bytes a streamed file is cut into: one socket write of a huge view is slow (httpcore
# re-slices what a write did not take, copying the rest each time)


def file_bytes(entries: Sequence[tuple[str, torch.dtype, Sequence[int]]], tensors: Iterable[tuple[str, torch.Tensor]],
               metadata: dict[str, str] | None = None) -> tuple[int, Iterator[memoryview | bytes]]:
    """A safetensors file's bytes, made one tensor at a time from ``tensors`` (``(name, tensor)``
    in ``entries`` order), without the file: its size (known up front) and the bytes, in pieces
    of at most :data:`PIECE`. A tensor that does not match its entry raises ValueError."""
    head = header(entries, metadata)
    size = len(head) + sum(math.prod(int(d) for d in shape) * dtype.itemsize for _, dtype, shape in entries)

    def pieces() -> Iterator[memoryview | bytes]:
        yield head
        for (name, dtype, shape), (got, tensor) in zip(entries, tensors, strict=True):
            if got != name or tensor.dtype != dtype or tuple(tensor.shape) != tuple(int(d) for d in shape):
                raise ValueError(f"tensor {got!r} does not match its header entry {name!r} ({dtype}, {list(shape)})")
            data = raw_bytes(tensor)  # a view of the tensor: no copy
            for at in range(0, len(data), PIECE):
                yield data[at:at + PIECE]

    return size, pieces()


class TensorFileWriter:
    """Write a safetensors file whose tensors are given, in order, one :meth:`write` at a time.

    ``with TensorFileWriter(path, entries) as w: w.write(name, tensor) ...``; the file appears at
    ``path`` only when every entry was written and the block exits without an exception.
    """

    def __init__(self, path: str | os.PathLike, entries: Sequence[tuple[str, torch.dtype, Sequence[int]]],
                 metadata: dict[str, str] | None = None, *, sync: bool = True):
        self.path = Path(path)
        self.sync = sync  # False: atomic (renamed whole) but not synced to the disk
        self.entries = [(n, d, tuple(int(x) for x in s)) for n, d, s in entries]
        self._header = header(self.entries, metadata)
        self._next = 0
        self._fh = None
        self._tmp: str | None = None

    def __enter__(self) -> TensorFileWriter:
        # A new temporary name beside the file, created exclusively with mode 0o666 (the process's
        # umask applies, as to any new file); the folder is made when the first try finds it absent.
        # Named by this machine and process: the next write of the file removes what a writer that
        # was killed left (a checkout SIGKILLed half-way left gigabytes there, hidden, for good).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        folder, made = self.path.parent, False
        mine = f".{self.path.name}.{host_label()}-"
        remove_stale_temporaries(folder, mine)
        while True:
            tmp = os.path.join(folder, f"{mine}{os.getpid()}-{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(tmp, flags, 0o666)
                break
            except FileExistsError:  # (a name left by a writer that was killed)
                continue
            except FileNotFoundError:
                if made:
                    raise
                folder.mkdir(parents=True, exist_ok=True)
                made = True
        self._tmp = tmp
        self._fh = os.fdopen(fd, "wb")
        with naming(self.path):  # a full disk names the file being written
            self._fh.write(self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.entries):
            raise ValueError(f"{self.path}: tensor {name!r} is beyond the {len(self.entries)} declared")
        want, dtype, shape = self.entries[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{self.path}: expected {want!r} {dtype}{list(shape)} next, got {name!r} {tensor.dtype}{list(tensor.shape)}"
            )
        data = raw_bytes(tensor)  # (a read that fails here is not this file's)
        with naming(self.path):
            self._fh.write(data)
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            if exc_type is None and self._next != len(self.entries):
                raise ValueError(f"{self.path}: {len(self.entries) - self._next} declared tensors were not written")
            if exc_type is None:
                with naming(self.path):
                    self._fh.flush()
                    if self.sync:
                        os.fsync(self._fh.fileno())
                    self._fh.close()
                os.replace(self._tmp, self.path)
                self._tmp = None
                if self.sync:
                    fsync_folder(self.path.parent)
        finally:
            if not self._fh.closed:
                with contextlib.suppress(OSError):  # its buffer could not be written: the error above says why
                    self._fh.close()
            if self._tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp)


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str) -> None:
    """Remove the temporary files ``PREFIX{pid}-{hex}.tmp`` in ``folder`` whose process is gone
    (``prefix`` names this machine: another machine's, on a shared file system, are left alone)."""
    try:
        entries = os.scandir(folder)
    except OSError:  # no folder yet (the write makes it), or one that cannot be listed: the write says
        return
    with entries:
        for entry in entries:
            pid = entry.name[len(prefix):].split("-", 1)[0]
            if (entry.name.startswith(prefix) and entry.name.endswith(".tmp") and pid.isdigit()
                    and not process_alive(int(pid))):
                with contextlib.suppress(OSError):  # removed meanwhile, or not ours to remove
                    os.unlink(entry.path)


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                  *, sync: bool = True) -> None:
    """Write ``tensors`` to a safetensors file atomically (and synced to the disk unless ``sync`` is False)."""
    with TensorFileWriter(path, [(n, t.dtype, t.shape) for n, t in tensors.items()], metadata, sync=sync) as w:
        for name, t in tensors.items():
            w.write(name, t)


Entry = tuple[str, torch.dtype, list[int], int, int]  # name, dtype, shape, data offsets (start, end)


def parse_header(head: bytes, data_size: int, where: Any) -> tuple[list[Entry], dict[str, str]]:
    """The entries of a safetensors header (the JSON after its 8-byte length), in the header's
    order, and its metadata. ``data_size``: the bytes after the header. Raises ValueError
    naming ``where`` and the entry that does not fit its shape or the data."""
    try:
        parsed = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: header is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{where}: header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    entries: list[Entry] = []
    for name, info in parsed.items():
        try:
            dtype = _BY_NAME[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            lo, hi = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: bad header entry for {name!r}: {info!r}") from None
        if hi - lo != math.prod(shape) * dtype.itemsize or lo < 0 or hi > data_size or min(shape, default=0) < 0:
            raise ValueError(f"{where}: tensor {name!r} offsets {lo}..{hi} do not fit its shape or the file")
        entries.append((name, dtype, shape, lo, hi))
    return entries, metadata


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata, as views of one private memory map of
    the file. Raises ValueError naming what is wrong with a malformed file."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            raise ValueError(f"{path}: truncated ({size} bytes)")
        if size < _MAP_FROM:
            buf = _read_whole(fh, size)
        else:
            # A private, writable mapping: reading maps the page cache without a copy, and a
            # caller that patches a tensor in place gets its own copy of the pages it writes.
            try:
                buf = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError:  # no mapping left (vm.max_map_count: tens of thousands of tensors held at once): read it
                buf = _read_whole(fh, size)
    return tensors_in(buf, path)


def _read_whole(fh: Any, size: int) -> bytearray:
    """The file's ``size`` bytes read into one buffer (``bytearray(fh.read())`` copies them twice);
    a file shorter than that by now gives what was read, which the parser finds truncated."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size and (n := fh.readinto(view[got:])):
        got += n
    del view
    if got < size:
        del buf[got:]
    return buf


def tensors_in(buf: bytearray | mmap.mmap, where: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the safetensors bytes ``buf`` (writable: the tensors are views of it) and
    its metadata. Raises ValueError naming ``where`` and what is wrong with malformed bytes."""
    size = len(buf)
    if size < 8:
        raise ValueError(f"{where}: truncated ({size} bytes)")
    data = torch.frombuffer(buf, dtype=torch.uint8)
    (n,) = struct.unpack_from("<Q", buf, 0)
    if 8 + n > size:
        raise ValueError(f"{where}: header of {n} bytes runs past the end of the file ({size} bytes)")
    entries, metadata = parse_header(bytes(buf[8 : 8 + n]), size - 8 - n, where)
    start, out = 8 + n, {}
    for name, dtype, shape, lo, hi in entries:
        raw = data[start + lo : start + hi]
        if hi == lo:
            out[name] = torch.empty(shape, dtype=dtype)
        elif (start + lo) % dtype.itemsize:  # misaligned for its dtype (not written by safetensors): copy
            out[name] = raw.clone().view(dtype).reshape(shape)
        else:
            out[name] = raw.view(dtype).reshape(shape)
    return out, metadata


class TensorSequence:
    """Named tensors that arrive one after another (a safetensors file being received): a commit
    given one stores each tensor as it comes. ``names`` in arrival order; ``get(name)`` for each
    name in that order (it may wait for the tensor to arrive); ``close()`` at the end, whatever
    happened."""

    names: list[str]

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass
