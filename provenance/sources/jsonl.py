"""JSONL shards (plain, gzip or zstd), read line by line: :class:`JsonlReading`, mixed into
:class:`provenance.sources.files.FileShard`. orjson parses each line; a line it refuses is parsed
again to say exactly what is wrong (invalid UTF-8, malformed JSON, nesting too deep) or repaired
as asked; ids past 64 bits stay exact; a compressed stream cut short or corrupt is named with the
line it broke after."""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import xxhash

from provenance.errors import SourceError
from provenance.files import json_reason
from provenance.fingerprints import strings_to_arrow
from provenance.sources.base import (
    _CHUNK,
    UTF16_BOMS,
    Batch,
    Counters,
    ReadOptions,
    _invalid,
    checked_record,
    field_error,
    utf16_error,
)
from provenance.sources.streams import HashingReader, ZstdReader


class JsonlReading:
    """The JSONL reading of a :class:`~provenance.sources.files.FileShard` (``self.format``
    ``jsonl``, ``jsonl.gz`` or ``jsonl.zst``): its documents in batches of about
    ``opts.batch_bytes`` of text, the file's bytes hashed as they are read."""

    def _open_lines(self, *hashers):
        try:
            fh = self._open()
        except OSError as exc:
            raise self._open_error(exc) from exc
        raw = HashingReader(fh, *hashers)
        if self.format == "jsonl.gz":
            stream = gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb")
        elif self.format == "jsonl.zst":
            stream = io.BufferedReader(ZstdReader(raw), _CHUNK)
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
                    elif lineno == 1 and line.startswith(UTF16_BOMS):  # every line would be invalid UTF-8
                        raise SourceError(utf16_error(self.display))
                    if line.isspace() or not line:
                        continue
                    record += 1
                    try:
                        obj = loads(line)
                        slow = False
                    except orjson.JSONDecodeError:
                        # Invalid UTF-8, unpaired surrogate escapes, or malformed JSON.
                        repaired = counters.replaced
                        obj = self._parse_slow(line, lineno, opts, counters)
                        if obj is None:
                            continue
                        slow = True
                        repaired = counters.replaced > repaired  # (a record counts once, however many its faults)
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
                        checked = checked_record(text, ident, f"{self.display}:{lineno}", opts,
                                                 Counters() if repaired else counters)
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
            if lineno == 0:  # (an empty file is refused before it is read: this one is compressed)
                raise SourceError(f"{self.display}: no documents (the file's compressed data decompresses to nothing)")
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
            cr = b"\r" in line.rstrip(b"\r\n")  # lines ended by CR alone (old Mac files) read as one line
            hint = "; the line holds a carriage return (\\r): are the lines ended by \\r alone? JSONL ends them by \\n" \
                if cr else ""
            raise SourceError(f"{self.display}:{lineno}: malformed JSON at column {exc.colno}: {json_reason(exc)}{hint}") \
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
            got = "null" if obj is None else type(obj).__name__  # (a line `null` said NoneType)
            raise SourceError(f"{self.display}:{lineno}: expected a JSON object, got {got}")
        raise field_error(f"{self.display}:{lineno}", obj, fieldname, what)

    def _batch(self, texts: list[str], ids: list[str] | None, rows: list[int], lines: list[int], consumed: int) -> Batch:
        return Batch(
            texts=strings_to_arrow(texts),
            ids=pa.array(ids, type=pa.string()) if ids is not None else None,
            rows=np.asarray(rows, dtype=np.int64),
            lines=np.asarray(lines, dtype=np.int64),
            consumed=consumed,
        )
