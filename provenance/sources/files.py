"""File sources: JSONL (plain, gzip, zstd), Parquet and plain text files, one shard each."""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import io
import json
import math
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from provenance.errors import SourceError, warn
from provenance.files import json_reason
from provenance.fingerprints import strings_to_arrow
from provenance.sources.base import (
    _CHUNK,
    Batch,
    Counters,
    ReadOptions,
    Shard,
    _invalid,
    _unknown_type,
    arrow_documents,
    checked_record,
    field_error,
    file_format,
)


class _HashingReader(io.RawIOBase):
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
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass


class _ZstdReader(io.RawIOBase):
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

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._fed and not self._obj.eof:
                    raise EOFError("zstd frame is truncated: the file ends inside it")
                return 0
            while chunk:
                if self._obj.eof:
                    self._obj, self._fed = self._new(), False
                self._fed = True
                self._pending += self._obj.decompress(chunk)
                chunk = self._obj.unused_data if self._obj.eof else b""
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class FileShard(Shard):
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
            raise SourceError(f"{self.display}: cannot read: {exc.strerror or exc}") from exc
        if n == 0:
            raise SourceError(f"{self.display}: file is empty")
        self.shard_id, self.sha256, self.n_bytes = x.hexdigest(), None, n

    def _hash_whole(self, *hashers) -> int:
        """Feed the whole file to ``hashers`` (None: none); returns its bytes (raises ``OSError``)."""
        with self._open() as fh:
            raw = _HashingReader(fh, *hashers)
            raw.drain()
        return raw.count

    def _sha256(self) -> Any:
        """A SHA-256 hasher for the pass that reads the file, or None when the digest is known."""
        return hashlib.sha256() if self.sha256 is None else None

    def _check_unchanged(self, digest: str) -> None:
        if digest != self.shard_id:
            raise SourceError(f"{self.display}: file changed while it was being registered; register it again")

    def _rehash(self) -> str:
        """The file's xxh3-128 as it is now (and its SHA-256, kept, when not yet known)."""
        x, sha = xxhash.xxh3_128(), self._sha256()
        try:
            self._hash_whole(x, sha)
        except OSError as exc:
            raise SourceError(f"{self.display}: disappeared while it was being registered ({exc.strerror or exc})") from exc
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
        """Opening the source failed: it is gone (deleted since it was hashed), or, for an object in
        a bucket, the bucket did not answer (which is not the object's absence)."""
        from provenance.sources.urls import is_url, object_error

        if isinstance(exc, FileNotFoundError) or not is_url(str(self.display)):
            return SourceError(f"{self.display}: disappeared before it could be read ({exc.strerror or exc})")
        return object_error(str(self.display), exc, "reading it")

    def batches(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        if self.format.startswith("jsonl"):
            yield from self._jsonl(opts, counters)
        elif self.format == "parquet":
            yield from self._parquet(opts, counters)
        else:
            yield from self._text(opts, counters)

    # -- JSONL ------------------------------------------------------------------------------

    def _open_lines(self, *hashers):
        try:
            fh = self._open()
        except OSError as exc:
            raise self._open_error(exc) from exc
        raw = _HashingReader(fh, *hashers)
        if self.format == "jsonl.gz":
            stream = gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb")
        elif self.format == "jsonl.zst":
            stream = io.BufferedReader(_ZstdReader(raw), _CHUNK)
        else:
            stream = io.BufferedReader(raw, _CHUNK)
        return fh, raw, stream

    def _jsonl(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        hasher, sha = xxhash.xxh3_128(), self._sha256()
        fh, raw, stream = self._open_lines(hasher, sha)
        tf, idf = opts.text_field, opts.id_field
        loads = orjson.loads
        texts: list[str] = []
        ids: list[str] = []
        lines: list[int] = []
        rows: list[int] = []
        size = 0
        record = -1  # index of the record among the file's non-blank lines, skipped ones included
        lineno = 0
        try:
            with fh:
                for lineno, line in enumerate(stream, 1):  # noqa: B007 (lineno is read after the loop)
                    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                        line = line[3:]  # a UTF-8 byte order mark, as some editors write
                    if line.isspace() or not line:
                        continue
                    record += 1
                    try:
                        obj = loads(line)
                        slow = False
                    except orjson.JSONDecodeError:
                        # Invalid UTF-8, unpaired surrogate escapes, or malformed JSON.
                        obj = self._parse_slow(line, lineno, opts, counters)
                        if obj is None:
                            continue
                        slow = True
                    text = obj.get(tf) if type(obj) is dict else None
                    if type(text) is not str:
                        self._field_error(obj, tf, lineno, "text")
                    ident = None
                    if idf is not None:
                        ident = obj.get(idf)
                        if ident is None or isinstance(ident, (dict, list, bool)):
                            self._field_error(obj, idf, lineno, "id")
                        if type(ident) is float:  # orjson reads an integer past 64 bits as a float
                            ident = self._float_id(line, lineno, idf, ident)
                        ident = str(ident)
                        if not ident:
                            raise SourceError(f"{self.display}:{lineno}: id field {idf!r} is empty: every document "
                                              "needs a key")
                    if slow:  # the line held escapes orjson refuses: unpaired surrogates, maybe
                        checked = checked_record(text, ident, f"{self.display}:{lineno}", opts, counters)
                        if checked is None:
                            continue
                        text, ident = checked
                    if ident is not None:
                        ids.append(ident)
                    texts.append(text)
                    lines.append(lineno)
                    rows.append(record)
                    size += len(text)
                    if size >= opts.batch_bytes:
                        yield self._batch(texts, ids if idf else None, rows, lines, raw.count)
                        texts, ids, lines, rows, size = [], [], [], [], 0
                raw.drain()
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut-short zstd frame is an EOFError too
            kind = "zstd" if self.format == "jsonl.zst" else "gzip"  # (it was called gzip data)
            raise SourceError(self._compressed_error(kind, lineno, exc)) from exc
        except SourceError:
            raise
        except OSError as exc:
            if type(exc).__module__.startswith("zstd") or "zstd" in type(exc).__name__.lower():
                raise SourceError(self._compressed_error("zstd", lineno, exc)) from exc
            raise SourceError(f"{self.display}: read failed after line {lineno}: {exc.strerror or exc}") from exc
        except Exception as exc:  # zstandard raises its own ZstdError
            if "zstd" in type(exc).__name__.lower():
                raise SourceError(self._compressed_error("zstd", lineno, exc)) from exc
            raise
        if texts:
            yield self._batch(texts, ids if idf else None, rows, lines, raw.count)
        self._check_unchanged(hasher.hexdigest())
        if sha is not None:
            self.sha256 = sha.hexdigest()
        if record < 0:
            raise SourceError(f"{self.display}: no documents (the file holds only blank lines)")

    def _parse_slow(self, line: bytes, lineno: int, opts: ReadOptions, counters: Counters) -> Any:
        """Parse a line orjson refused: say exactly what is wrong, or repair it as asked."""
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not _invalid(f"{self.display}:{lineno}: invalid UTF-8 at byte {exc.start} of the line", opts, counters):
                return None
            decoded = line.decode("utf-8", errors="replace")
        try:
            return json.loads(decoded.rstrip("\r\n"))  # accepts unpaired surrogate escapes; _check_text handles them
        except json.JSONDecodeError as exc:
            raise SourceError(f"{self.display}:{lineno}: malformed JSON at column {exc.colno}: {json_reason(exc)}") \
                from None
        except RecursionError:  # thousands of nested brackets: json's parser recurses once per level
            raise SourceError(f"{self.display}:{lineno}: the record nests its JSON too deeply to be read") from None

    def _float_id(self, line: bytes, lineno: int, idf: str, value: float) -> Any:
        """The id as the line writes it: an integer of any size stays exact (orjson gave a float
        past 64 bits, so two ids 2**64 and 2**64 + 1 were one key); NaN and infinities are refused."""
        if not math.isfinite(value):
            raise SourceError(f"{self.display}:{lineno}: id field {idf!r} is {value}: not a value a key can be")
        exact = json.loads(line.decode("utf-8", errors="replace"))[idf]
        return exact if isinstance(exact, int) else value

    def _field_error(self, obj: Any, fieldname: str, lineno: int, what: str) -> None:
        if type(obj) is not dict:
            raise SourceError(f"{self.display}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        raise field_error(f"{self.display}:{lineno}", obj, fieldname, what)

    def _batch(self, texts: list[str], ids: list[str] | None, rows: list[int], lines: list[int], consumed: int) -> Batch:
        return Batch(
            texts=strings_to_arrow(texts),
            ids=pa.array(ids, type=pa.string()) if ids is not None else None,
            rows=np.asarray(rows, dtype=np.int64),
            lines=np.asarray(lines, dtype=np.int64),
            consumed=consumed,
        )

    # -- Parquet ----------------------------------------------------------------------------

    def _parquet(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        try:
            pf = self._parquet_file()
        except FileNotFoundError as exc:
            raise SourceError(f"{self.display}: disappeared before it could be read") from exc
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{self.display}: not a readable Parquet file (truncated or corrupt?): {exc}") from exc
        names = pf.schema_arrow.names
        columns = [opts.text_field] + ([opts.id_field] if opts.id_field else [])
        for col, what in zip(columns, ("text", "id")):
            if col not in names:
                raise SourceError(f"{self.display}: no {what} column {col!r} (columns: {', '.join(names[:12])})")
        row = 0
        rows_per_batch = _parquet_rows_per_batch(pf, names.index(opts.text_field), opts.batch_bytes)
        try:
            for rb in pf.iter_batches(batch_size=rows_per_batch, columns=columns):
                ids = rb.column(1) if opts.id_field else None
                texts, ids, rows = arrow_documents(rb.column(0), ids, row, self.display, "row", opts, counters)
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


def _parquet_rows_per_batch(pf: pq.ParquetFile, column: int, batch_bytes: int) -> int:
    """Rows per batch so that a batch holds about ``batch_bytes`` of text."""
    meta = pf.metadata
    if meta.num_rows == 0 or meta.num_row_groups == 0:
        return 1024
    total = sum(meta.row_group(i).column(column).total_uncompressed_size for i in range(meta.num_row_groups))
    per_row = max(1, total // meta.num_rows)
    return int(max(1, min(65_536, batch_bytes // per_row)))


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _walk(folder: str) -> list[str]:
    """The files under ``folder``, recursively and in sorted order, leaving out hidden files and
    folders and Croissant exports. A symlink to a folder is followed (as a glob follows it), but
    not one that leads back into a folder already walked (a loop, `up -> ..`): that one is left
    out with a warning naming it."""
    found: list[str] = []
    walked = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if any(real == w or w.startswith(real + os.sep) for w in walked):
                warn(f"{os.path.join(dirpath, d)}: a symlink back into a folder already read ({real}); left out")
                continue
            walked.add(real)
            kept.append(d)
        dirnames[:] = kept
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)  # hidden files, and a Croissant
                     if not f.startswith(".") and not f.endswith(CROISSANT_SUFFIX))  # export beside its data
    return found


#: A Croissant export written beside the data it describes (as mlcroissant wants a multi-file
#: dataset's): a folder registered again leaves it out, as it leaves out hidden files.
CROISSANT_SUFFIX = ".croissant.json"


def _regular_file(path: str) -> Path:
    """``path`` if it is (a symlink that ends at) a regular file; else an error that says what it
    is. Nothing is opened: reading a FIFO or a device would block or never end."""
    link = f" (a symlink to {os.readlink(path)})" if os.path.islink(path) else ""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(f"{path}: symlink loop: the link never reaches a file") from None
        if link and exc.errno == errno.ENOENT:
            raise SourceError(f"{path}: broken symlink{link}: its target does not exist") from None
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), f"of file type {stat.S_IFMT(mode):o}")
        raise SourceError(f"{path}: not a regular file: it is {kind}{link}; only regular files can be registered")
    return Path(path)


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

    def _parquet_file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self.path))

    def size(self) -> int:
        if self._listed_size is None:
            try:
                self._listed_size = self.fs.get_file_info(self.path).size or 0
            except OSError:
                return 0
        return self._listed_size


def _object_shards(specs: list[str]) -> list[FileShard]:
    from provenance.sources.urls import object_shards, relative_names

    objects, seen = [], set()
    for spec in specs:
        for found in object_shards(spec):
            if found[0] not in seen:
                seen.add(found[0])
                objects.append(found)
    names = relative_names([path for _url, _fs, path, _size in objects])
    return [ObjectShard(url, name, file_format(path), fs, path, size)
            for (url, fs, path, size), name in zip(objects, names)]


def _utf8_name(path: Path) -> None:
    """Refuse a file whose path is not UTF-8 (bytes a Latin-1 system wrote: Python holds them as
    surrogates): the ledger keeps shard names and paths as text, and could not name it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise SourceError(f"{shown}: the file's name is not valid UTF-8; rename it (the ledger keeps shard names "
                          "and paths as UTF-8 text)") from None


def _file_shards(specs: list[str]) -> list[FileShard]:
    from provenance.sources.urls import is_url

    urls = [s for s in specs if is_url(s)]
    if urls:
        if len(urls) != len(specs):
            raise SourceError(f"{urls[0]}: local files and URLs cannot be registered together as one dataset's "
                              "shards; register them as two datasets (or copy the files to the same storage)")
        return _object_shards(urls)
    files: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?[") and not os.path.lexists(spec):  # `[1].jsonl` that exists is a file
            matched = [m for m in sorted(glob.glob(spec, recursive=True)) if not os.path.isdir(m)]
            if not matched:
                raise SourceError(f"{spec}: pattern matched no files")
            files.extend(_regular_file(m) for m in matched)
        elif os.path.isdir(spec):
            found = _walk(spec)
            if not found:
                raise SourceError(f"{spec}: folder holds no files")
            files.extend(sorted(_regular_file(f) for f in found))
        elif os.path.lexists(spec):
            files.append(_regular_file(spec))
        else:
            raise SourceError(f"{spec}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    for f in unique:
        _utf8_name(f)
        if file_format(f) is None:
            raise _unknown_type(str(f))
    # names from the paths as given (a symlink keeps its own name; a link leading out of the folder
    # does not rename every other shard), made absolute without resolving links
    given = [Path(os.path.abspath(f)) for f in unique]
    root = given[0].parent if len(given) == 1 else Path(os.path.commonpath([str(g.parent) for g in given]))
    return [FileShard(f, g.relative_to(root).as_posix(), file_format(f)) for f, g in zip(unique, given)]
