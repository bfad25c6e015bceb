"""What every source shares: read options, batches, counters, the shard interface, and the
on_invalid policy for text that is not valid UTF-8."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from provenance.errors import SourceError
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


def field_error(where: str, record: dict, fieldname: str, what: str) -> SourceError:
    """The error for a record whose ``what`` ("text" or "id") field is missing or of a wrong type."""
    if fieldname not in record:
        fields = ", ".join(sorted(map(str, record))[:12]) or "none"
        return SourceError(f"{where}: no {what} field {fieldname!r} (fields: {fields})")
    value = record[fieldname]
    kind = "null" if value is None else type(value).__name__
    expected = "a string" if what == "text" else "a string or number"
    return SourceError(f"{where}: {what} field {fieldname!r} is {kind}, expected {expected}")


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
