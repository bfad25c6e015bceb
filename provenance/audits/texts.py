"""Texts an audit reads: documents' texts read back from their shards' files (checked against
their registered hashes), the exact Jaccard of two texts, and the samples files of the
memorization audit and of taint by text."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from provenance.errors import ProvenanceError, SourceError
from provenance.files import json_reason
from provenance.fingerprints import FingerprintConfig
from provenance.ledger import LedgerStore
from provenance.records import check_list


def exact_jaccard(cfg: FingerprintConfig, a: str, b: str) -> float:
    """Jaccard similarity of the two texts' shingle sets under ``cfg`` (1 for two empty texts)."""
    sa, sb = set(cfg.shingles(a)), set(cfg.shingles(b))
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def read_texts(ledger: LedgerStore, wanted: dict[tuple[str, int], set[int] | None]) -> tuple[dict[tuple[str, int, int], str], list[str]]:
    """The texts of the rows ``wanted`` per ``(dataset_id, shard_index)`` (None: every row), read
    from the shards' files after checking each still hashes as registered. Shards that cannot be
    read are listed with the reason instead."""
    from provenance.datasets import read_back

    texts: dict[tuple[str, int, int], str] = {}
    unreadable: list[str] = []
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for dataset_id, shard_index in wanted:
        by_dataset[dataset_id].append(shard_index)
    for dataset_id, indexes in sorted(by_dataset.items()):
        ds = ledger.dataset(dataset_id)
        shards = {s.shard_index: s for s in ledger.shards(ds)}
        for index in sorted(indexes):
            rows = wanted[(dataset_id, index)]
            wanted_rows = None if rows is None else np.fromiter(rows, np.int64)
            read: dict[tuple[str, int, int], str] = {}  # kept once the whole shard read as registered: the
            try:  # hash is checked again at the end of the file (it may change while it is read)
                for batch in read_back(ds, shards[index]):
                    hit = np.ones(len(batch.rows), bool) if wanted_rows is None else np.isin(batch.rows, wanted_rows)
                    for i in np.flatnonzero(hit).tolist():
                        read[(dataset_id, index, int(batch.rows[i]))] = batch.texts[i].as_py()
            except (OSError, ProvenanceError) as exc:
                unreadable.append(f"{dataset_id} shard {shards[index].name}: {exc}")
            else:
                texts.update(read)
    return texts, unreadable


def iter_texts(ledger: LedgerStore, rows: Sequence[dict[str, Any]], unreadable: list[str]) -> Iterator[tuple[dict, str]]:
    """``(row, text)`` for the documents ``rows`` (``dataset_id, shard_index, row_index``, and
    whatever else the caller keeps in them), read one shard at a time so that memory holds one
    shard's texts; shards that cannot be read are added to ``unreadable`` with the reason."""
    by_shard: dict[tuple[str, int], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_shard[(r["dataset_id"], r["shard_index"])][r["row_index"]].append(r)
    for (dataset_id, shard_index), wanted in sorted(by_shard.items()):
        texts, bad = read_texts(ledger, {(dataset_id, shard_index): set(wanted)})
        unreadable += bad
        for (_, _, row), text in texts.items():
            for r in wanted[row]:
                yield r, text


def sample_texts(samples: Any) -> list[Any]:
    """The samples a memorization audit is given, locally or through a server: a file of them
    (:func:`read_samples`), or the texts (a list or any iterable; a string or a mapping is
    refused, naming what goes there)."""
    if isinstance(samples, (str, os.PathLike)):
        return read_samples(samples)
    return check_list(samples, "samples", "of texts, or a file of them: audit_memorization(v, ['a generated text'])")


def read_samples(path: str | os.PathLike) -> list[str]:
    """The samples of ``path``: JSONL (``.jsonl``, ``.ndjson``, ``.json``: objects with a ``text``
    field, or strings), else plain text, one sample per non-empty line. Errors name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the samples file ({exc.strerror or exc})") from None
    return parse_samples(raw, str(path), path.suffix.lower() in (".jsonl", ".ndjson", ".json"))


def read_stdin_samples(stream: Any) -> list[str]:
    """The samples of a byte stream (``--samples -``: standard input): JSONL when its first
    character that is not blank is ``{`` (objects with a ``text`` field), else plain text, one
    sample per non-empty line."""
    raw = stream.read()
    return parse_samples(raw, "stdin", raw.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"))


_LINE_END = re.compile(r"\r\n|\r|\n")
_ONE_PER_LINE = "samples are JSONL: one sample per line, an object with a \"text\" string or a string"


def _is_json_array(content: str) -> bool:
    """Whether ``content`` is one JSON array (``["a", "b"]``, written over several lines)."""
    try:
        return isinstance(json.loads(content), list)
    except json.JSONDecodeError:
        return False


def parse_samples(raw: bytes, path: str, jsonl: bool) -> list[str]:
    """The samples in ``raw``, read from ``path`` (named in errors, with the line)."""
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if raw.startswith(magic):
            raise SourceError(f"{path}: the samples file is {kind}-compressed; decompress it first "
                              "(samples are read as JSONL or plain text)")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(f"{path}: line {line} is not UTF-8 (byte {exc.start})") from None
    samples = []
    content = content.removeprefix("\ufeff")  # a UTF-8 byte order mark, as some editors write
    # lines end at \n, \r\n or \r only: str.splitlines() also splits at U+2028, U+0085, form
    # feeds and more, which a JSON string may hold raw and a generated text may contain
    for number, line in enumerate(_LINE_END.split(content), 1):
        if not line.strip():
            continue
        if not jsonl:
            samples.append(line)
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if _is_json_array(content):  # a valid JSON file, "line 1 is not JSON" misled
                raise SourceError(f"{path}: the file is one JSON array over several lines; {_ONE_PER_LINE}") from None
            raise SourceError(f"{path}: line {number} is not JSON ({json_reason(exc)} at column {exc.colno})") from None
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str):
            raise SourceError(f"{path}: line {number} has no text (a string, or an object with a \"text\" string)"
                              + (f": it is a JSON array; {_ONE_PER_LINE}" if isinstance(value, list) else ""))
        try:
            text.encode("utf-8")  # json reads "\\ud800" as an unpaired surrogate, which is no text
        except UnicodeEncodeError as exc:
            raise SourceError(f"{path}: line {number}: the text holds an unpaired surrogate at character {exc.start}, "
                              "which is not valid Unicode") from None
        samples.append(text)
    if not samples:
        raise SourceError(f"{path}: the samples file is empty")
    return samples
