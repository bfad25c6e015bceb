"""In-memory sources: Arrow tables and record batches, iterables of dicts, Hugging Face datasets
(``Dataset``, ``IterableDataset``, ``DatasetDict``: one shard per split, named after it)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from provenance.errors import InvalidParameterError, SourceError
from provenance.fingerprints import strings_to_arrow
from provenance.sources.base import (
    Batch,
    Counters,
    ReadOptions,
    Shard,
    arrow_documents,
    checked_record,
    document_columns,
    field_error,
)


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

    def __init__(self, name: str, parts: Iterable, fmt: str, label: str):
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
        document_columns(self._label, table.column_names, opts)
        ids = table.column(opts.id_field).combine_chunks() if opts.id_field else None
        texts, ids, rows = arrow_documents(
            table.column(opts.text_field).combine_chunks(), ids, row, self._label, "record", opts, counters
        )
        return Batch(texts=texts, ids=ids, rows=rows, lines=None) if len(texts) else None

    def _dicts(self, records: list, row: int, opts: ReadOptions, counters: Counters) -> Batch | None:
        texts, ids, rows = [], [], []
        tf, idf = opts.text_field, opts.id_field
        for i, rec in enumerate(records, row):
            if not isinstance(rec, dict):
                got = "None" if rec is None else f"a {type(rec).__name__}"  # (it said "a NoneType")
                raise SourceError(f"{self._label}: record {i} is {got}, expected a dict")
            text = rec.get(tf)
            if not isinstance(text, str):
                raise field_error(f"{self._label}: record {i}", rec, tf, "text")
            text = str(text)  # a subclass (numpy's str_, from iterating an array of strings) as the plain str it holds
            ident = None
            if idf is not None:
                ident = rec.get(idf)
                if ident is None or isinstance(ident, (dict, list, bool, np.bool_)):
                    raise field_error(f"{self._label}: record {i}", rec, idf, "id")
                if isinstance(ident, float) and not math.isfinite(ident):  # as a JSONL file's NaN is refused
                    raise SourceError(f"{self._label}: record {i}: id field {idf!r} is {ident}: not a value a key can be")
                ident = str(ident)
                if not ident:
                    raise SourceError(f"{self._label}: record {i}: id field {idf!r} is empty: every document needs a key")
            checked = checked_record(text, ident, f"{self._label}: record {i}", opts, counters)
            if checked is None:
                continue
            text, ident = checked
            if ident is not None:
                ids.append(ident)
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


def _hf_kind(obj: Any) -> str | None:
    """Which Hugging Face ``datasets`` container ``obj`` is (by class name, so that ``datasets``
    is imported only by whoever made one): ``Dataset``, ``IterableDataset``, ``DatasetDict``,
    ``IterableDatasetDict``, or None."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("datasets.") and cls.__name__ in HF_KINDS:
            return cls.__name__
    return None


def foreign_frame(obj: Any) -> str | None:
    """What to do instead, when ``obj`` is a pandas ``DataFrame`` or a Ray ``Dataset`` (by class
    name, so that neither is imported here): neither is read as records; else None."""
    for cls in type(obj).__mro__:
        if f"{cls.__module__}.".startswith("pandas.") and cls.__name__ == "DataFrame":
            return ("a pandas DataFrame, which is not read as records: pass pyarrow.Table.from_pandas(df) "
                    "or df.to_dict('records')")
        if f"{cls.__module__}.".startswith("ray.data.") and cls.__name__ == "Dataset":
            return ("a Ray Dataset, which is not read as records: write it as Parquet (ds.write_parquet(folder)) "
                    "and register the folder, on Ray or not, or pass ds.iter_rows() to register its rows in this process")
    return None


HF_KINDS = ("Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict")
HF_BATCH = 10_000  # rows per Arrow batch read from a Hugging Face dataset


def hf_shard_name(split: str | None) -> str:
    """The shard a Hugging Face dataset's rows are registered in: its split's name when it came
    in a ``DatasetDict``, else ``hf-00000``. A row's key is ``SHARD:ROW`` without an id field."""
    return "hf-00000" if split is None else split


def _hf_arrow(dataset: Any, label: str) -> Iterator[pa.Table]:
    """The rows of a ``Dataset`` or ``IterableDataset`` as Arrow tables, in order, read lazily
    (a ``Dataset`` is memory-mapped; an ``IterableDataset`` streams). A stream without features
    whose rows' types differ (a None text, ids that are numbers and strings) cannot be read as
    Arrow batches, features given or not (``datasets`` makes a table of each row, then joins
    them): that is said naming the dataset, not as pyarrow's bare ``ArrowInvalid``."""
    tables = iter(dataset.with_format("arrow").iter(batch_size=HF_BATCH))
    while True:
        try:
            table = next(tables)
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            said = " ".join(str(exc).split())
            raise SourceError(
                f"{label}: its rows cannot be read as Arrow batches ({said}): a column's type differs from row to row "
                "(a None text, ids that are numbers in some rows and strings in others); drop or fill such rows "
                "(stream.filter(lambda row: row['text'] is not None)), or give every row values of one type "
                "(stream.map(lambda row: {'id': str(row['id'])}))") from None
        yield table


def _hf_shards(sources: Any, kind: str) -> Iterator[MemoryShard]:
    if kind.endswith("Dict"):
        if not sources:
            raise InvalidParameterError(f"the {kind} has no splits")
        for split, dataset in sources.items():
            label = f"datasets.{kind}[{split!r}]"
            yield MemoryShard(hf_shard_name(split), _hf_arrow(dataset, label), "hf-dataset", label)
        return
    name = getattr(getattr(sources, "info", None), "dataset_name", None)
    label = f"datasets.{kind} {name or ''}".strip()
    yield MemoryShard(hf_shard_name(None), _hf_arrow(sources, label), "hf-dataset", label)


def _memory_shards(sources: Any, opts: ReadOptions) -> Iterator[MemoryShard]:
    if isinstance(sources, (pa.Table, pa.RecordBatch)):
        yield MemoryShard("table-00000", [sources], "arrow", "arrow table")
        return
    if isinstance(sources, pa.RecordBatchReader):
        yield MemoryShard("table-00000", list(sources), "arrow", "arrow stream")
        return
    if (kind := _hf_kind(sources)) is not None:
        yield from _hf_shards(sources, kind)
        return
    if isinstance(sources, dict):
        raise InvalidParameterError("sources is one dict; pass a list of records, paths or Arrow tables")
    if (foreign := foreign_frame(sources)) is not None:  # iterating one gives column names, not records
        raise InvalidParameterError(f"sources is {foreign}")
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
