"""File sources: JSONL (plain, gzip, zstd), Parquet and plain text files, one shard each.

:class:`FileShard` reads a file (its JSONL reading is :mod:`provenance.sources.jsonl`, the byte
streams under it :mod:`provenance.sources.streams`), :class:`ObjectShard` an object in object
storage; which files a dataset's paths, folders, globs or URLs name is
:mod:`provenance.sources.discovery`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from provenance.errors import SourceError
from provenance.sources.base import (
    UTF16_BOMS,
    Batch,
    Counters,
    ReadOptions,
    Shard,
    _invalid,
    arrow_documents,
    document_columns,
    utf16_error,
)
from provenance.sources.jsonl import JsonlReading
from provenance.sources.streams import HashingReader


class FileShard(JsonlReading, Shard):
    def __init__(self, path: Path, name: str, fmt: str):
        self.path = path
        self.name = name
        self.uri = str(path.resolve())
        self.format = fmt
        self.display = str(path)

    def _open(self) -> Any:
        """The shard's bytes as a binary stream, from the start (raises ``OSError``)."""
        return open(self.path, "rb")

    def _parquet_file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.path)

    def size(self) -> int:
        """The shard's size in bytes as its folder lists it (0 when it cannot be read)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def identify(self) -> None:
        """The shard's id (the xxh3-128 of its bytes) and size. Its SHA-256 is taken later, by the
        pass that reads the file (:meth:`batches`), which reads every byte anyway: a file that
        turns out to be unchanged is hashed by xxh3 alone (about ten times faster), and a new one
        is not read twice by SHA-256 before its documents."""
        x = xxhash.xxh3_128()
        try:
            n = self._hash_whole(x)
        except OSError as exc:
            raise self._read_error(exc, "before it could be read") from exc
        if n == 0:
            raise SourceError(f"{self.display}: file is empty")
        self.shard_id, self.sha256, self.n_bytes = x.hexdigest(), None, n

    def _hash_whole(self, *hashers) -> int:
        """Feed the whole file to ``hashers`` (None: none); returns its bytes (raises ``OSError``)."""
        with self._open() as fh:
            raw = HashingReader(fh, *hashers)
            raw.drain()
        return raw.count

    def _sha256(self) -> Any:
        """A SHA-256 hasher for the pass that reads the file, or None when the digest is known."""
        return hashlib.sha256() if self.sha256 is None else None

    #: What bytes that no longer hash as :attr:`shard_id` at the end of a read mean (a shard read
    #: back says it changed since it was registered).
    changed = "file changed while it was being registered; register it again"

    def _check_unchanged(self, digest: str) -> None:
        if digest != self.shard_id:
            raise _Changed(f"{self.display}: {self.changed}")

    def _changed_underfoot(self) -> bool:
        """Whether the file no longer hashes as :attr:`shard_id` (False when that is not known, or
        the file cannot be read: the error that reading it raised says so)."""
        if self.shard_id is None:
            return False
        x = xxhash.xxh3_128()
        try:
            self._hash_whole(x)
        except OSError:
            return False
        return x.hexdigest() != self.shard_id

    def _rehash(self) -> str:
        """The file's xxh3-128 as it is now (and its SHA-256, kept, when not yet known)."""
        x, sha = xxhash.xxh3_128(), self._sha256()
        try:
            self._hash_whole(x, sha)
        except OSError as exc:
            raise self._read_error(exc, "while it was being registered") from exc
        if sha is not None:
            self.sha256 = sha.hexdigest()
        return x.hexdigest()

    def _compressed_error(self, kind: str, lineno: int, exc: BaseException) -> str:
        """A compressed file that could not be read: cut short or corrupt after a line, or (no line
        read) not that kind of file at all (a .gz that holds zstd or plain text)."""
        if lineno == 0 and isinstance(exc, EOFError):  # a stream that starts well and ends too soon (lines
            # are parsed from a block read ahead: the cut may be many lines in)
            return f"{self.display}: {kind} data is cut short: the file ends inside its compressed stream (copied in part?): {exc}"
        if lineno == 0:
            return f"{self.display}: not {kind} data, or damaged at its start ({exc}); is the file name's suffix right?"
        return f"{self.display}: {kind} data is truncated or corrupt after line {lineno}: {exc}"

    def _open_error(self, exc: OSError) -> SourceError:
        return self._read_error(exc, "before it could be read")

    def _read_error(self, exc: OSError, when: str) -> SourceError:
        """Reading the source failed ``when`` ("before it could be read"): a local file is gone
        (deleted since it was listed) or unreadable; for an object, the bucket may not have
        answered, which is not the object's absence."""
        from provenance.sources.urls import is_url, object_error

        if is_url(str(self.display)):
            return object_error(str(self.display), exc, "reading it")
        if isinstance(exc, FileNotFoundError):
            return SourceError(f"{self.display}: disappeared {when} ({exc.strerror or exc})")
        return SourceError(f"{self.display}: cannot read: {exc.strerror or exc}")

    def batches(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        try:
            if self.format.startswith("jsonl"):
                yield from self._jsonl(opts, counters)
            elif self.format == "parquet":
                yield from self._parquet(opts, counters)
            else:
                yield from self._text(opts, counters)
        except _Changed:
            raise
        except SourceError as exc:  # a file cut short, appended to or replaced since it was hashed reads as
            if self._changed_underfoot():  # malformed JSON or a damaged stream: said as the change it is
                raise _Changed(f"{self.display}: {self.changed} (reading it then failed: {exc})") from exc
            raise

    # -- Parquet ----------------------------------------------------------------------------

    def _parquet(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        try:
            pf = self._parquet_file()
        except OSError as exc:  # (Arrow's file errors are OSErrors; a file that is not Parquet is ArrowInvalid)
            raise self._read_error(exc, "before it could be read") from exc
        except pa.ArrowException as exc:
            raise SourceError(f"{self.display}: not a readable Parquet file (truncated or corrupt?): {exc}") from exc
        names = pf.schema_arrow.names
        columns = document_columns(self.display, names, opts)
        row = 0
        rows_per_batch = _parquet_rows_per_batch(pf, names.index(opts.text_field), opts.batch_bytes)
        try:
            for rb in pf.iter_batches(batch_size=rows_per_batch, columns=columns):
                ids = rb.column(opts.id_field) if opts.id_field else None  # (by name: the text's column may be the id's)
                texts, ids, rows = arrow_documents(rb.column(opts.text_field), ids, row, self.display, "row", opts,
                                                   counters)
                row += len(rb)
                if len(texts):
                    consumed = self.n_bytes * row // max(1, pf.metadata.num_rows)
                    yield Batch(texts=texts, ids=ids, rows=rows, lines=None, consumed=consumed)
        except SourceError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{self.display}: Parquet data is truncated or corrupt near row {row}: {exc}") from exc
        self._check_unchanged(self._rehash())
        if row == 0:
            raise SourceError(f"{self.display}: no documents (the Parquet file has no rows)")

    # -- plain text -------------------------------------------------------------------------

    def _text(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        try:
            with self._open() as fh:
                data = fh.read()
        except OSError as exc:
            raise self._open_error(exc) from exc
        self._check_unchanged(xxhash.xxh3_128_hexdigest(data))
        if self.sha256 is None:
            self.sha256 = hashlib.sha256(data).hexdigest()
        if data.startswith(UTF16_BOMS):
            raise utf16_error(self.display)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            if not _invalid(f"{self.display}:{line}: invalid UTF-8 at byte {exc.start}", opts, counters):
                return
            text = data.decode("utf-8", errors="replace")
        text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark is not text (the JSONL reader drops it too)
        yield Batch(
            texts=pa.array([text], type=pa.large_string()),
            ids=pa.array([self.name], type=pa.string()) if opts.id_field else None,
            rows=np.zeros(1, dtype=np.int64),
            lines=None,
        )


class _Changed(SourceError):
    """A shard's file no longer hashes as it did when it was identified."""


def _parquet_rows_per_batch(pf: pq.ParquetFile, column: int, batch_bytes: int) -> int:
    """Rows per batch so that a batch holds about ``batch_bytes`` of text."""
    meta = pf.metadata
    if meta.num_rows == 0 or meta.num_row_groups == 0:
        return 1024
    total = sum(meta.row_group(i).column(column).total_uncompressed_size for i in range(meta.num_row_groups))
    per_row = max(1, total // meta.num_rows)
    return int(max(1, min(65_536, batch_bytes // per_row)))


class ObjectShard(FileShard):
    """A shard that is an object in object storage (``s3://...``; see :mod:`provenance.sources.urls`)."""

    def __init__(self, url: str, name: str, fmt: str, fs: Any, path: str, size: int | None = None):
        self.path = path  # the object's path in its file system: "bucket/key"
        self.fs = fs
        self.name = name
        self.uri = url
        self.format = fmt
        self.display = url
        self._listed_size = size

    @classmethod
    def at(cls, url: str, name: str, fmt: str) -> ObjectShard:
        """The object at ``url`` (a registered shard's ``uri``), through this machine's settings."""
        from provenance.sources.urls import filesystem, split_url

        scheme, path = split_url(url)
        return cls(url, name, fmt, filesystem(scheme), path)

    def _open(self) -> Any:
        return self.fs.open_input_stream(self.path, compression=None)  # a .gz is hashed as stored

    def _changed_underfoot(self) -> bool:
        return False  # (not downloaded again to word an error: the end-of-read check still catches a change)

    def _parquet_file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self.path))

    def size(self) -> int:
        if self._listed_size is None:
            try:
                self._listed_size = self.fs.get_file_info(self.path).size or 0
            except OSError:
                return 0
        return self._listed_size
