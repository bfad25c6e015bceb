"""What every source shares: read options, batches, counters, the shard interface, and the
on_invalid policy for text that is not valid UTF-8."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

#: Names a folder's walk and a prefix's listing leave out, as Arrow's datasets and Hadoop do:
#: hidden files, and the bookkeeping of Spark and Hadoop jobs (``_SUCCESS``, ``_metadata``, a
#: ``_temporary/`` folder still being written), which refused the folder (``_SUCCESS: unknown
#: file type``).
HIDDEN = (".", "_")


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
    """Documents of one shard: texts, optional ids, record index and (JSONL) line numbers.

    ``texts`` holds no nulls and only valid UTF-8: each reader makes it so (``strings_to_arrow``
    encodes ``str``; ``arrow_documents`` checks Arrow columns), and registration fingerprints it
    without checking again (:func:`provenance.fingerprints.fingerprint_read`)."""

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

#: The byte order marks of UTF-16 (and of UTF-32, which starts as UTF-16 little-endian's does).
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def utf16_error(label: str) -> SourceError:
    """A file that starts with a UTF-16 byte order mark: none of its text is UTF-8, so no
    on_invalid policy helps (replace made each character a U+FFFD and a NUL)."""
    return SourceError(f"{label}: the file is UTF-16 (or UTF-32) text, by the byte order mark it starts with; "
                       "sources are read as UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)")


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def checked_record(text: str, ident: str | None, where: str, opts: ReadOptions, counters: Counters
                   ) -> tuple[str, str | None] | None:
    """``(text, ident)`` if both encode as UTF-8; else repaired (every unpaired surrogate becomes
    U+FFFD), skipped (None) or refused, as ``opts.on_invalid`` says. One record counts once."""
    for what, value in (("text", text), ("id", ident)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            if not _invalid(f"{where}: {what} holds an unpaired surrogate at character {exc.start}", opts, counters):
                return None
            return _SURROGATE.sub("\ufffd", text), None if ident is None else _SURROGATE.sub("\ufffd", ident)
    return text, ident


def field_error(where: str, record: dict, fieldname: str, what: str) -> SourceError:
    """The error for a record whose ``what`` ("text" or "id") field is missing or of a wrong type."""
    if fieldname not in record:
        fields = ", ".join(sorted(map(str, record))[:12]) or "none"
        return SourceError(f"{where}: no {what} field {fieldname!r} (fields: {fields})")
    value = record[fieldname]
    kind = "null" if value is None else type(value).__name__
    expected = "a string" if what == "text" else "a string or number"
    return SourceError(f"{where}: {what} field {fieldname!r} is {kind}, expected {expected}")


def document_columns(label: str, names: list[str], opts: ReadOptions) -> list[str]:
    """The columns of a table (column ``names``) to read its documents from: the text column, then
    the id column unless it is the same one. A column missing, or named twice (which of the two
    holds the text?), is refused, naming ``label``."""
    for col, what in ((opts.text_field, "text"), (opts.id_field, "id")):
        if col is None:
            continue
        if col not in names:
            raise SourceError(f"{label}: no {what} column {col!r} (columns: {', '.join(names[:12])})")
        if names.count(col) > 1:
            raise SourceError(f"{label}: {names.count(col)} columns are named {col!r}: which holds the {what} is "
                              "unclear; rename or drop the others")
    return list(dict.fromkeys(c for c in (opts.text_field, opts.id_field) if c is not None))


def file_format(path: str | os.PathLike) -> str | None:
    name = os.fspath(path).lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def _unknown_type(path: str, hint: str = "") -> SourceError:
    known = ", ".join(sorted(FORMATS))
    return SourceError(f"{path}: unknown file type; supported: {known}{hint}")


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


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _decoded(col: pa.Array) -> pa.Array:
    """``col`` with dictionary encoding undone: the same values, stored plainly."""
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def _first_null(col: pa.Array, row: int) -> int:
    return row + int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))


def arrow_documents(texts: pa.Array, ids: pa.Array | None, row: int, label: str, unit: str, opts: ReadOptions,
                    counters: Counters) -> tuple[pa.Array, pa.Array | None, np.ndarray]:
    """The documents of Arrow columns whose first value is ``unit`` ``row`` of ``label``: texts
    as large strings, ids as strings, and their record indices. Columns may be dictionary-encoded;
    texts must be strings, ids strings or integers; a record whose text or id is not valid UTF-8
    is refused, repaired or dropped as ``opts.on_invalid`` says."""
    column = " column" if unit == "row" else ""
    texts = _decoded(texts)
    if not _is_text(texts.type):
        raise SourceError(f"{label}: text column {opts.text_field!r} has type {texts.type}, expected string")
    if texts.null_count:
        raise SourceError(f"{label}: {unit} {_first_null(texts, row)}: text{column} {opts.text_field!r} is null")
    texts = texts.cast(pa.large_string())
    if ids is not None:
        ids = _decoded(ids)
        if not (_is_text(ids.type) or pa.types.is_integer(ids.type)):
            raise SourceError(
                f"{label}: the id column has type {ids.type}; ids must be strings or integers (column {opts.id_field!r})"
            )
        if ids.null_count:
            raise SourceError(f"{label}: {unit} {_first_null(ids, row)}: id{column} {opts.id_field!r} is null")
        ids = ids.cast(pa.string())
        empty = pc.equal(pc.binary_length(ids), 0)
        if pc.any(empty).as_py():  # as a JSONL file's "" is refused: two records would have no key
            first = row + int(np.argmax(empty.to_numpy(zero_copy_only=False)))
            raise SourceError(f"{label}: {unit} {first}: id{column} {opts.id_field!r} is empty: every document needs a key")
    if _valid_utf8(texts) and (ids is None or _valid_utf8(ids)):
        return texts, ids, np.arange(row, row + len(texts), dtype=np.int64)
    return _repaired(texts, ids, row, label, unit, opts, counters)


def _valid_utf8(col: pa.Array) -> bool:
    try:
        col.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _repaired(texts: pa.Array, ids: pa.Array | None, row: int, label: str, unit: str, opts: ReadOptions,
              counters: Counters) -> tuple[pa.Array, pa.Array | None, np.ndarray]:
    """Records with invalid UTF-8 in the text or id: refuse, repair (U+FFFD) or drop them."""
    columns = {"text": texts.cast(pa.large_binary(), safe=False).to_pylist()}
    if ids is not None:
        columns["id"] = ids.cast(pa.large_binary(), safe=False).to_pylist()
    kept: dict[str, list[str]] = {what: [] for what in columns}
    keep = []
    for i in range(len(texts)):
        if (problem := _undecodable({what: values[i] for what, values in columns.items()})) is not None:
            if not _invalid(f"{label}: {unit} {row + i}: {problem}", opts, counters):
                continue
        for what, values in columns.items():
            kept[what].append(values[i].decode("utf-8", errors="replace"))
        keep.append(row + i)
    kept_ids = pa.array(kept["id"], type=pa.string()) if ids is not None else None
    return strings_to_arrow(kept["text"]), kept_ids, np.asarray(keep, dtype=np.int64)


def _undecodable(fields: dict[str, bytes]) -> str | None:
    """What is wrong with the first of ``fields`` that is not valid UTF-8, or None."""
    for what, value in fields.items():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 at byte {exc.start} of the {what}"
    return None
