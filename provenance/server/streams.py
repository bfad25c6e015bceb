"""Model states received as they arrive: a commit stores each tensor of the uploaded safetensors
file while the rest of the file is still on its way, instead of writing the whole body to a file
first and reading it back.

The event loop receives the body (:meth:`BodyReader.pump`, a task) a window ahead of a worker
thread that reads it, and :class:`ReceivedTensors` cuts it into tensors in the order of their data. That order must be the commit's (names sorted, which is
how :class:`provenance.remote.RemoteLedger` sends them); a file in another order is spooled to a
file under ``tmp/uploads`` and committed from there, as before.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

import torch
from starlette.requests import Request

from provenance import errors
from provenance.files import naming
from provenance.server import body_chunks
from provenance.tensorfile import Entry, TensorSequence, parse_header

WINDOW = 64 << 20  # bytes received ahead of the worker that reads them
_MAX_HEADER = 100 << 20  # safetensors' own limit on a header


class BodyReader:
    """A request's body, received by the event loop (:meth:`pump`, a task) into a window of at
    most :data:`WINDOW` bytes while a worker thread reads it (the other methods): receiving goes
    on while the worker stores what came before."""

    def __init__(self, request: Request, limit: int):
        self._stream = body_chunks(request, limit)
        self._cond = threading.Condition()
        self._chunks: deque[memoryview] = deque()  # received, not yet read
        self._buffered = 0
        self._done = False
        self._error: Exception | None = None
        self._paused = False
        self._room = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.received = 0
        self.limit = limit  # bytes the body may have

    async def pump(self) -> None:
        """Receive the body into the window (waiting while it is full) until it ends."""
        try:
            async for chunk in self._stream:
                with self._cond:
                    self.received += len(chunk)
                    self._chunks.append(memoryview(chunk))
                    self._buffered += len(chunk)
                    self._cond.notify()
                    wait = self._buffered >= WINDOW
                    if wait:
                        self._paused = True
                        self._room.clear()
                if wait:
                    await self._room.wait()
        except Exception as exc:  # too large, the client gone: the worker reading raises it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _more(self) -> bool:
        """Wait for more of the body (False: it has ended)."""
        with self._cond:
            while not self._chunks and not self._done:
                self._cond.wait()
            if self._chunks:
                return True
            if self._error is not None:
                raise self._error
            return False

    def _take(self, n: int) -> memoryview:
        """At most ``n`` bytes of the first chunk received (one is there: :meth:`_more`)."""
        with self._cond:
            chunk = self._chunks[0]
            if n >= len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0], chunk = chunk[n:], chunk[:n]
            self._buffered -= len(chunk)
            if self._paused and self._buffered <= WINDOW // 2:
                self._paused = False
                self._loop.call_soon_threadsafe(self._room.set)
        return chunk

    def read_into(self, out: memoryview, what: str) -> None:
        """Fill ``out`` from the body; the body ending first is an error naming ``what``."""
        at = 0
        while at < len(out):
            if not self._more():
                raise errors.InvalidParameterError(
                    f"the body ends after {self.received:,} bytes, inside {what}: the file is truncated")
            chunk = self._take(len(out) - at)
            out[at:at + len(chunk)] = chunk
            at += len(chunk)

    def read(self, n: int, what: str) -> bytearray:
        buf = bytearray(n)
        self.read_into(memoryview(buf), what)
        return buf

    def at_end(self) -> bool:
        """Whether nothing is left of the body."""
        return not self._more()

    def copy_to(self, out: Any) -> None:
        """Write the rest of the body to the file ``out``."""
        while self._more():
            out.write(self._take(WINDOW))

    def drain(self) -> None:
        """Read and drop the rest of the body (so that a client still sending it gets the answer,
        not a broken connection); a client that went away ends it."""
        try:
            while self._more():
                self._take(WINDOW)
        except Exception:
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
        with naming(path), os.fdopen(fd, "wb") as out:  # a full disk names the file (the caller drains the body)
            out.write(head)
            reader.copy_to(out)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
