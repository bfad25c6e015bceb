"""The byte streams under a file shard's reading (:mod:`provenance.sources.files`): a raw reader
that hashes every byte it reads (one pass takes a shard's id and its SHA-256 while the documents
are parsed), and a zstd decompressor that refuses a frame cut short.
"""

from __future__ import annotations

import io

from provenance.sources.base import _CHUNK


class HashingReader(io.RawIOBase):
    """A raw reader that feeds every byte it reads to its hashers (None: none)."""

    def __init__(self, fh, *hashers):
        self._fh = fh
        self._hashers = [h for h in hashers if h is not None]
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._fh.readinto(b)
        if n:
            view = memoryview(b)[:n]
            for h in self._hashers:
                h.update(view)
            self.count += n
        return n or 0

    def drain(self) -> None:
        """Read (and hash) the rest of the stream: what a parser left after its last line, or all
        of it."""
        buf = bytearray(1 << 16)  # grown to _CHUNK as the stream goes on: a file of a few bytes was
        while self.readinto(buf):  # given 8 MiB of zeros (0.6 ms), a folder of small files as long again
            if len(buf) < _CHUNK:
                buf = bytearray(min(_CHUNK, 4 * len(buf)))


class ZstdReader(io.RawIOBase):
    """Decompress a stream of zstd frames; a frame cut short raises ``EOFError``.

    (zstandard's own stream reader ends quietly at a truncated frame when the cut falls on a
    block boundary.)
    """

    def __init__(self, raw: io.RawIOBase):
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._fed = False  # the current frame has received input
        self._pending = b""
        self._failed: Exception | None = None  # raised once what was decompressed before it is read
        self._zstd_error = zstandard.ZstdError

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._pending:
            if self._failed is not None:
                raise self._failed
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._fed and not self._obj.eof:
                    raise EOFError("zstd frame is truncated: the file ends inside it")
                return 0
            while chunk:
                if self._obj.eof:
                    self._obj, self._fed = self._new(), False
                self._fed = True
                try:
                    self._pending += self._obj.decompress(chunk)
                except self._zstd_error as exc:  # bytes after good frames: raised once those are read, so
                    if not self._pending:  # the error names the line it follows (it said "damaged at its start")
                        raise
                    self._failed = exc
                    break
                chunk = self._obj.unused_data if self._obj.eof else b""
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n
