"""Reading data sources as shards of Arrow record batches, with errors that name file and line.

A source is a file (JSONL, plain, ``.gz`` or ``.zst``; Parquet; plain text, one document per
file), a folder or glob of those, the same in object storage (``s3://bucket/prefix/``; see
:mod:`provenance.sources.urls`), or in-memory data (an iterable of dicts, Arrow tables or
record batches, a Hugging Face ``datasets.Dataset``). Each file is one shard, identified by the
xxh3-128 of its bytes; in-memory data is cut into shards of ``shard_records`` records,
identified by a hash of their keys and texts. Reading streams in batches of about
``batch_bytes`` of text, so memory does not grow with the size of a shard.
"""


from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.sources.base import FORMATS, Batch, Counters, ReadOptions, Shard, file_format
from provenance.sources.discovery import _file_shards
from provenance.sources.files import FileShard, ObjectShard
from provenance.sources.memory import MemoryShard, _memory_shards

__all__ = ["FORMATS", "Batch", "Counters", "FileShard", "MemoryShard", "ObjectShard", "ReadOptions", "Shard", "file_format", "resolve"]


def resolve(sources: Any, opts: ReadOptions) -> list[FileShard] | Iterator[MemoryShard]:
    """The shards of ``sources`` in a stable order: a list of files (sorted by path), or an
    iterator of in-memory shards (consumed as it is read, so a generator of records streams)."""
    if isinstance(sources, (str, os.PathLike)) or (
        isinstance(sources, (list, tuple)) and sources and all(isinstance(s, (str, os.PathLike)) for s in sources)
    ):
        return _file_shards([os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)])
    if isinstance(sources, (list, tuple)) and sources and isinstance(sources[0], (str, os.PathLike)):
        odd = next(i for i, s in enumerate(sources) if not isinstance(s, (str, os.PathLike)))  # (not all are paths)
        raise InvalidParameterError(  # it was read as records: "record 0 is a str, expected a dict"
            f"sources[{odd}] is of type {type(sources[odd]).__name__} ({sources[odd]!r:.60}), but sources[0] "
            f"is a path ({os.fspath(sources[0])[:60]!r}): give a list of paths (str or Path), or of records (dicts)")
    return _memory_shards(sources, opts)
