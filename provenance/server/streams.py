"""Model states received as they arrive: a commit stores each tensor of the uploaded safetensors
file while the rest of the file is still on its way, instead of writing the whole body to a file
first and reading it back.

The route runs in a worker thread; :class:`BodyReader` pulls the request's body from the event
loop in pieces of a few MiB (:func:`anyio.from_thread.run`), and :class:`ReceivedTensors` cuts it
into tensors in the order of their data. That order must be the commit's (names sorted, which is
how :class:`provenance.remote.RemoteLedger` sends them); a file in another order is spooled to a
file under ``tmp/uploads`` and committed from there, as before.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import anyio.from_thread
import torch
from starlette.requests import ClientDisconnect, Request

from provenance import errors
from provenance.tensorfile import Entry, TensorSequence, parse_header

_PULL = 8 << 20  # bytes the event loop hands over at a time
_MAX_HEADER = 100 << 20  # safetensors' own limit on a header


class BodyReader:
    """A request's body, read from a worker thread of the request (not the event loop's)."""

    def __init__(self, request: Request, limit: int):
        self._stream = request.stream()
        self._chunks: deque[memoryview] = deque()
        self._done = False
        self.received = 0
        self.limit = limit  # bytes the body may have

    async def _pull(self, want: int) -> list[bytes]:
        got, size = [], 0
        while size < want:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                break
            if chunk:
                got.append(chunk)
                size += len(chunk)
        return got

    def _more(self, want: int = 1) -> bool:
        """Take at least ``want`` more bytes (at most :data:`_PULL` at a time) from the event loop,
        or what is left; False at the end of the body."""
        if self._done:
            return False
        try:
            got = anyio.from_thread.run(self._pull, max(1, min(want, _PULL)))
        except ClientDisconnect:
            raise errors.InvalidParameterError(
                f"the upload stopped after {self.received:,} bytes: the client went away") from None
        for chunk in got:
            self.received += len(chunk)
            self._chunks.append(memoryview(chunk))
        if self.received > self.limit:
            raise errors.InvalidParameterError(f"the body is larger than this server's upload limit ({self.limit:,} bytes)")
        return bool(got)

    def read_into(self, out: memoryview, what: str) -> None:
        """Fill ``out`` from the body; the body ending first is an error naming ``what``."""
        at = 0
        while at < len(out):
            if not self._chunks and not self._more(len(out) - at):
                raise errors.InvalidParameterError(
                    f"the body ends after {self.received:,} bytes, inside {what}: the file is truncated")
            chunk = self._chunks[0]
            n = min(len(chunk), len(out) - at)
            out[at:at + n] = chunk[:n]
            at += n
            if n == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[n:]

    def read(self, n: int, what: str) -> bytearray:
        buf = bytearray(n)
        self.read_into(memoryview(buf), what)
        return buf

    def at_end(self) -> bool:
        """Whether nothing is left of the body."""
        while not self._chunks:
            if not self._more():
                return True
        return False

    def copy_to(self, out: Any) -> None:
        """Write the rest of the body to the file ``out``."""
        while self._chunks or self._more(_PULL):
            out.write(self._chunks.popleft())

    def drain(self) -> None:
        """Read and drop the rest of the body (so that a client still sending it gets the answer,
        not a broken connection); a client that went away ends it."""
        try:
            while self._chunks or self._more(_PULL):
                self._chunks.clear()
        except errors.InvalidParameterError:
            pass


class ReceivedTensors(TensorSequence):
    """The tensors of a safetensors body, each made when the commit asks for it (in data order)."""

    def __init__(self, reader: BodyReader, entries: list[Entry]):
        self.reader = reader
        self.entries = entries
        self.names = [e[0] for e in entries]
        self._next = 0

    def get(self, name: str) -> torch.Tensor:
        if self._next >= len(self.entries) or self.entries[self._next][0] != name:
            raise errors.InvalidParameterError(f"tensor {name!r} asked for out of the body's order")
        _, dtype, shape, lo, hi = self.entries[self._next]
        self._next += 1
        if hi == lo:
            tensor = torch.empty(shape, dtype=dtype)
        else:
            buf = self.reader.read(hi - lo, f"tensor {name!r}")
            tensor = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
        if self._next == len(self.entries) and not self.reader.at_end():
            raise errors.InvalidParameterError("the body goes on after the last tensor of its header")
        return tensor


def receive_state(reader: BodyReader, length: int | None) -> tuple[ReceivedTensors | None, bytes]:
    """Read the header of a safetensors body: the tensors to commit as they arrive when their data
    is in the commit's order (names sorted, packed from offset 0), else None; and the header's
    bytes (length included), for a caller that spools the body instead."""
    prefix = bytes(reader.read(8, "the header's length"))
    (n,) = struct.unpack("<Q", prefix)
    if n > _MAX_HEADER:
        raise errors.InvalidParameterError(f"the body is not a safetensors file (a header of {n:,} bytes)")
    head = bytes(reader.read(n, "the header"))
    try:
        entries, _ = parse_header(head, length - 8 - n if length is not None else reader.limit, "the body")
    except ValueError as exc:
        raise errors.InvalidParameterError(f"the body is not a safetensors file ({exc})") from None
    entries.sort(key=lambda e: (e[3], e[4]))
    end = 0
    for e in entries:
        if e[3] != end:
            return None, prefix + head
        end = e[4]
    if [e[0] for e in entries] != sorted(e[0] for e in entries):
        return None, prefix + head
    if not entries and not reader.at_end():
        raise errors.InvalidParameterError("the body goes on after a header with no tensors")
    if length is not None and 8 + n + end != length:
        raise errors.InvalidParameterError(
            f"the body has {length:,} bytes; its header accounts for {8 + n + end:,}")
    return ReceivedTensors(reader, entries), prefix + head


def spool(reader: BodyReader, head: bytes, folder: Path) -> Path:
    """The body (its header already read, as ``head``) written to a file in ``folder``."""
    fd, name = tempfile.mkstemp(dir=folder, suffix=".safetensors")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            reader.copy_to(out)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
