"""Reading data sources as shards of Arrow record batches, with errors that name file and line.

A source is a file (JSONL, plain, ``.gz`` or ``.zst``; Parquet; plain text, one document per
file), a folder or glob of those, or in-memory data (an iterable of dicts, Arrow tables or
record batches, a Hugging Face ``datasets.Dataset``). Each file is one shard, identified by the
xxh3-128 of its bytes; in-memory data is cut into shards of ``shard_records`` records,
identified by a hash of their keys and texts. Reading streams in batches of about
``batch_bytes`` of text, so memory does not grow with the size of a shard.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from provenance.errors import InvalidParameterError, SourceError
from provenance.fingerprints import strings_to_arrow

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".ndjson.gz": "jsonl.gz",
    ".jsonl.zst": "jsonl.zst",
    ".ndjson.zst": "jsonl.zst",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ReadOptions:
    """How records become documents."""

    text_field: str = "text"
    id_field: str | None = None
    on_invalid: str = "error"  # invalid UTF-8 or unpaired surrogates: error | replace | skip
    batch_bytes: int = 8 << 20
    shard_records: int = 100_000


@dataclass
class Batch:
    """Documents of one shard: texts, optional ids, record index and (JSONL) line numbers."""

    texts: pa.Array
    ids: pa.Array | None
    rows: np.ndarray
    lines: np.ndarray | None
    consumed: int = 0  # bytes of the source read so far in this shard (for progress bars)


@dataclass
class Counters:
    replaced: int = 0
    skipped: int = 0


_GO_ON = "(on_invalid / --on-invalid replace or skip to go on)"


def _invalid(problem: str, opts: ReadOptions, counters: Counters) -> bool:
    """Apply the on_invalid policy to one invalid record: raise (naming ``problem``), or count it
    and return True to repair it, False to skip it."""
    if opts.on_invalid == "error":
        raise SourceError(f"{problem} {_GO_ON}")
    if opts.on_invalid == "skip":
        counters.skipped += 1
        return False
    counters.replaced += 1
    return True


def _checked_str(text: str, where: str, opts: ReadOptions, counters: Counters) -> str | None:
    """``text`` if it encodes as UTF-8; else repaired (U+FFFD), skipped (None) or refused."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as exc:
        if _invalid(f"{where}: text holds an unpaired surrogate at character {exc.start}", opts, counters):
            return text.encode("utf-8", errors="replace").decode("utf-8")
        return None


def file_format(path: str | os.PathLike) -> str | None:
    name = os.fspath(path).lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def _unknown_type(path: str) -> SourceError:
    known = ", ".join(sorted(FORMATS))
    return SourceError(f"{path}: unknown file type; supported: {known}")


class Shard:
    """One shard of a source. Subclasses read files or in-memory data."""

    name: str
    uri: str | None = None
    format: str
    shard_id: str | None = None
    sha256: str | None = None
    n_bytes: int = 0

    def identify(self) -> None:
        """Compute the shard's identity before reading it, where that is possible."""

    def batches(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Files


class _HashingReader(io.RawIOBase):
    """A raw reader that feeds every byte it reads to a hasher."""

    def __init__(self, fh, hasher):
        self._fh = fh
        self._hasher = hasher
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._fh.readinto(b)
        if n:
            self._hasher.update(memoryview(b)[:n])
            self.count += n
        return n or 0

    def drain(self) -> None:
        while self._fh.read(_CHUNK):
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

    def identify(self) -> None:
        x, s, n = xxhash.xxh3_128(), hashlib.sha256(), 0
        try:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    x.update(chunk)
                    s.update(chunk)
                    n += len(chunk)
        except OSError as exc:
            raise SourceError(f"{self.display}: cannot read: {exc.strerror or exc}") from exc
        if n == 0:
            raise SourceError(f"{self.display}: file is empty")
        self.shard_id, self.sha256, self.n_bytes = x.hexdigest(), s.hexdigest(), n

    def _check_unchanged(self, digest: str) -> None:
        if digest != self.shard_id:
            raise SourceError(f"{self.display}: file changed while it was being registered; register it again")

    def _rehash(self) -> str:
        x = xxhash.xxh3_128()
        try:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    x.update(chunk)
        except OSError as exc:
            raise SourceError(f"{self.display}: disappeared while it was being registered ({exc.strerror or exc})") from exc
        return x.hexdigest()

    def batches(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        if self.format.startswith("jsonl"):
            yield from self._jsonl(opts, counters)
        elif self.format == "parquet":
            yield from self._parquet(opts, counters)
        else:
            yield from self._text(opts, counters)

    # -- JSONL ------------------------------------------------------------------------------

    def _open_lines(self, hasher):
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            raise SourceError(f"{self.display}: disappeared before it could be read ({exc.strerror or exc})") from exc
        raw = _HashingReader(fh, hasher)
        if self.format == "jsonl.gz":
            stream = gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb")
        elif self.format == "jsonl.zst":
            stream = io.BufferedReader(_ZstdReader(raw), _CHUNK)
        else:
            stream = io.BufferedReader(raw, _CHUNK)
        return fh, raw, stream

    def _jsonl(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        hasher = xxhash.xxh3_128()
        fh, raw, stream = self._open_lines(hasher)
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
                    if slow:
                        text = _checked_str(text, f"{self.display}:{lineno}", opts, counters)
                        if text is None:
                            continue
                    if idf is not None:
                        ident = obj.get(idf)
                        if ident is None or isinstance(ident, (dict, list, bool)):
                            self._field_error(obj, idf, lineno, "id")
                        ids.append(str(ident))
                    texts.append(text)
                    lines.append(lineno)
                    rows.append(record)
                    size += len(text)
                    if size >= opts.batch_bytes:
                        yield self._batch(texts, ids if idf else None, rows, lines, raw.count)
                        texts, ids, lines, rows, size = [], [], [], [], 0
                raw.drain()
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise SourceError(f"{self.display}: compressed data is truncated or corrupt after line {lineno}: {exc}") from exc
        except SourceError:
            raise
        except OSError as exc:
            if type(exc).__module__.startswith("zstd") or "zstd" in type(exc).__name__.lower():
                raise SourceError(f"{self.display}: zstd data is corrupt after line {lineno}: {exc}") from exc
            raise SourceError(f"{self.display}: read failed after line {lineno}: {exc.strerror or exc}") from exc
        except Exception as exc:  # zstandard raises its own ZstdError
            if "zstd" in type(exc).__name__.lower():
                raise SourceError(f"{self.display}: zstd data is truncated or corrupt after line {lineno}: {exc}") from exc
            raise
        if texts:
            yield self._batch(texts, ids if idf else None, rows, lines, raw.count)
        self._check_unchanged(hasher.hexdigest())
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
            raise SourceError(f"{self.display}:{lineno}: malformed JSON at column {exc.colno}: {exc.msg}") from None

    def _field_error(self, obj: Any, fieldname: str, lineno: int, what: str) -> None:
        if type(obj) is not dict:
            raise SourceError(f"{self.display}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if fieldname not in obj:
            fields = ", ".join(sorted(obj)[:12]) or "none"
            raise SourceError(f"{self.display}:{lineno}: no {what} field {fieldname!r} (fields: {fields})")
        value = obj[fieldname]
        kind = "null" if value is None else type(value).__name__
        expected = "a string" if what == "text" else "a string or number"
        raise SourceError(f"{self.display}:{lineno}: {what} field {fieldname!r} is {kind}, expected {expected}")

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
            pf = pq.ParquetFile(self.path)
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
                texts = _valid_texts(rb.column(0), row, self.display, "row", opts, counters)
                ids = None
                if opts.id_field:
                    ids = rb.column(1)
                    if ids.null_count:
                        bad = row + int(np.argmax(ids.is_null().to_numpy(zero_copy_only=False)))
                        raise SourceError(f"{self.display}: row {bad}: id column {opts.id_field!r} is null")
                    ids = ids.cast(pa.string())
                keep = texts is not None and len(texts) == len(rb)
                if not keep:
                    texts, ids, rows = _repair_texts(
                        rb.column(0), rb.column(1) if opts.id_field else None, row, self.display, "row", opts, counters
                    )
                else:
                    rows = np.arange(row, row + len(rb), dtype=np.int64)
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
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.display}: disappeared before it could be read ({exc.strerror or exc})") from exc
        self._check_unchanged(xxhash.xxh3_128_hexdigest(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            if not _invalid(f"{self.display}:{line}: invalid UTF-8 at byte {exc.start}", opts, counters):
                return
            text = data.decode("utf-8", errors="replace")
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


def _valid_texts(col: pa.Array, row: int, label: str, unit: str, opts: ReadOptions, counters: Counters) -> pa.Array | None:
    """``col`` as large strings when every value is valid UTF-8; ``None`` when some are not."""
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type)):
        raise SourceError(f"{label}: text column {opts.text_field!r} has type {col.type}, expected string")
    if col.null_count:
        bad = row + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
        what = "text column" if unit == "row" else "text"
        raise SourceError(f"{label}: {unit} {bad}: {what} {opts.text_field!r} is null")
    col = col.cast(pa.large_string())
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        return None


def _repair_texts(col: pa.Array, ids: pa.Array | None, row: int, label: str, unit: str, opts: ReadOptions,
                  counters: Counters) -> tuple[pa.Array, pa.Array | None, np.ndarray]:
    """Texts with invalid UTF-8: refuse, repair or drop them as ``opts.on_invalid`` says."""
    raw = col.cast(pa.large_binary(), safe=False).to_pylist()
    texts, keep = [], []
    for i, b in enumerate(raw):
        try:
            texts.append(b.decode("utf-8"))
            keep.append(i)
        except UnicodeDecodeError as exc:
            if _invalid(f"{label}: {unit} {row + i}: invalid UTF-8 at byte {exc.start} of the text", opts, counters):
                texts.append(b.decode("utf-8", errors="replace"))
                keep.append(i)
    idx = pa.array(keep, type=pa.int64())
    kept_ids = ids.take(idx).cast(pa.string()) if ids is not None else None
    return strings_to_arrow(texts), kept_ids, row + np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# In-memory data


class _RecordsHasher:
    """xxh3-128 of records that does not depend on how they are cut into batches: the lengths
    and the bytes of the texts (and ids) are hashed as separate streams, then combined."""

    def __init__(self) -> None:
        self._streams = [xxhash.xxh3_128() for _ in range(4)]

    def update(self, texts: pa.Array, ids: pa.Array | None) -> None:
        for i, arr in enumerate((texts, ids)):
            if arr is None:
                continue
            arr = arr.cast(pa.large_string())
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
            self._streams[2 * i].update(np.diff(offsets).astype("<i8").tobytes())
            if arr.buffers()[2] is not None:
                self._streams[2 * i + 1].update(memoryview(arr.buffers()[2])[offsets[0] : offsets[-1]])

    def hexdigest(self) -> str:
        h = xxhash.xxh3_128(b"provenance-records-v1")
        for s in self._streams:
            h.update(s.digest())
        return h.hexdigest()


class MemoryShard(Shard):
    """In-memory records: Arrow tables or record batches, or lists of dicts."""

    def __init__(self, name: str, parts: list, fmt: str, label: str):
        self.name = name
        self.format = fmt
        self._parts = parts
        self._label = label

    def batches(self, opts: ReadOptions, counters: Counters) -> Iterator[Batch]:
        hasher = _RecordsHasher()
        row = 0
        n_bytes = 0
        for part in self._parts:
            batch = self._to_batch(part, row, opts, counters)
            if batch is None:
                continue
            hasher.update(batch.texts, batch.ids)
            n_bytes += _text_bytes(batch.texts)
            batch.consumed = n_bytes
            yield batch
            row = int(batch.rows[-1]) + 1 if len(batch.rows) else row
        self.shard_id = hasher.hexdigest()
        self.n_bytes = n_bytes

    def _to_batch(self, part, row: int, opts: ReadOptions, counters: Counters) -> Batch | None:
        if isinstance(part, list):  # dicts
            return self._dicts(part, row, opts, counters)
        table = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
        names = table.column_names
        for col, what in ((opts.text_field, "text"), (opts.id_field, "id")):
            if col is not None and col not in names:
                raise SourceError(f"{self._label}: no {what} column {col!r} (columns: {', '.join(names[:12])})")
        raw_texts = table.column(opts.text_field).combine_chunks()
        texts = _valid_texts(raw_texts, row, self._label, "record", opts, counters)
        ids = None
        if opts.id_field:
            ids = table.column(opts.id_field).combine_chunks()
            if ids.null_count:
                bad = row + int(np.argmax(ids.is_null().to_numpy(zero_copy_only=False)))
                raise SourceError(f"{self._label}: record {bad}: id {opts.id_field!r} is null")
            ids = ids.cast(pa.string())
        if texts is None:
            texts, ids, rows = _repair_texts(raw_texts, ids, row, self._label, "record", opts, counters)
            return Batch(texts=texts, ids=ids, rows=rows, lines=None) if len(texts) else None
        return Batch(texts=texts, ids=ids, rows=np.arange(row, row + len(texts), dtype=np.int64), lines=None)

    def _dicts(self, records: list, row: int, opts: ReadOptions, counters: Counters) -> Batch | None:
        texts, ids, rows = [], [], []
        tf, idf = opts.text_field, opts.id_field
        for i, rec in enumerate(records, row):
            if not isinstance(rec, dict):
                raise SourceError(f"{self._label}: record {i} is a {type(rec).__name__}, expected a dict")
            text = rec.get(tf)
            if type(text) is not str:
                if tf not in rec:
                    raise SourceError(f"{self._label}: record {i}: no text field {tf!r} (fields: {', '.join(sorted(map(str, rec))[:12])})")
                kind = "null" if text is None else type(text).__name__
                raise SourceError(f"{self._label}: record {i}: text field {tf!r} is {kind}, expected a string")
            text = _checked_str(text, f"{self._label}: record {i}", opts, counters)
            if text is None:
                continue
            if idf is not None:
                ident = rec.get(idf)
                if ident is None or isinstance(ident, (dict, list, bool)):
                    raise SourceError(f"{self._label}: record {i}: id field {idf!r} is missing or not a string/number")
                ids.append(str(ident))
            texts.append(text)
            rows.append(i)
        if not texts:
            return None
        return Batch(
            texts=strings_to_arrow(texts),
            ids=pa.array(ids, type=pa.string()) if idf else None,
            rows=np.asarray(rows, dtype=np.int64),
            lines=None,
        )


def _iter_dict_shards(records: Iterable, opts: ReadOptions) -> Iterator[MemoryShard]:
    it = iter(records)
    index = 0
    while True:
        parts: list[list] = []
        count = 0
        while count < opts.shard_records:
            chunk = []
            for rec in it:
                chunk.append(rec)
                if len(chunk) >= min(10_000, opts.shard_records - count):
                    break
            if not chunk:
                break
            parts.append(chunk)
            count += len(chunk)
        if not parts:
            return
        name = f"batch-{index:05d}"
        yield MemoryShard(name, parts, "records", f"records[{name}]")
        index += 1


def _text_bytes(texts: pa.Array) -> int:
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)
    return int(offsets[texts.offset + len(texts)] - offsets[texts.offset])


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "with_format")


# ---------------------------------------------------------------------------------------------
# Resolving what the caller gave


def resolve(sources: Any, opts: ReadOptions) -> list[FileShard] | Iterator[MemoryShard]:
    """The shards of ``sources`` in a stable order: a list of files (sorted by path), or an
    iterator of in-memory shards (consumed as it is read, so a generator of records streams)."""
    if isinstance(sources, (str, os.PathLike)) or (
        isinstance(sources, (list, tuple)) and sources and all(isinstance(s, (str, os.PathLike)) for s in sources)
    ):
        return _file_shards([os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)])
    return _memory_shards(sources, opts)


def _memory_shards(sources: Any, opts: ReadOptions) -> Iterator[MemoryShard]:
    if isinstance(sources, (pa.Table, pa.RecordBatch)):
        yield MemoryShard("table-00000", [sources], "arrow", "arrow table")
        return
    if isinstance(sources, pa.RecordBatchReader):
        yield MemoryShard("table-00000", list(sources), "arrow", "arrow stream")
        return
    if _is_hf_dataset(sources):
        parts = list(sources.with_format("arrow").iter(batch_size=10_000))
        yield MemoryShard("hf-00000", parts, "hf-dataset", f"datasets.Dataset {getattr(sources, 'info', None) and sources.info.dataset_name or ''}".strip())
        return
    if isinstance(sources, dict):
        raise InvalidParameterError("sources is one dict; pass a list of records, paths or Arrow tables")
    if isinstance(sources, (list, tuple)) and sources and all(isinstance(s, (pa.Table, pa.RecordBatch)) for s in sources):
        for i, t in enumerate(sources):
            yield MemoryShard(f"table-{i:05d}", [t], "arrow", f"arrow table {i}")
        return
    if isinstance(sources, (list, tuple)) and not sources:
        raise InvalidParameterError("no sources given")
    try:
        iterator = iter(sources)
    except TypeError:
        raise InvalidParameterError(
            f"cannot read sources of type {type(sources).__name__}: give paths, records (dicts) or Arrow tables"
        ) from None
    yield from _iter_dict_shards(iterator, opts)


def _file_shards(specs: list[str]) -> list[FileShard]:
    files: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?["):
            matched = sorted(glob.glob(spec, recursive=True))
            matched = [m for m in matched if os.path.isfile(m)]
            if not matched:
                raise SourceError(f"{spec}: pattern matched no files")
            files.extend(Path(m) for m in matched)
        elif os.path.isdir(spec):
            found = []
            for dirpath, dirnames, filenames in os.walk(spec):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
            if not found:
                raise SourceError(f"{spec}: folder holds no files")
            files.extend(sorted(found))
        elif os.path.isfile(spec):
            files.append(Path(spec))
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
        if file_format(f) is None:
            raise _unknown_type(str(f))
    if len(unique) == 1:
        root = unique[0].resolve().parent
    else:
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in unique]))
    return [FileShard(f, str(f.resolve().relative_to(root)), file_format(f)) for f in unique]
