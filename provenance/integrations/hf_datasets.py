"""Hugging Face ``datasets`` and the document keys the ledger gives their rows.

A ``datasets.Dataset``, ``IterableDataset`` or ``DatasetDict`` registers directly
(``ledger.register_dataset("name", ds, id_field=...)``): its rows are read as Arrow batches and
the shard is identified by a hash of its texts and ids. A row's key is its id (``id_field``) or
else ``SHARD:ROW``: the shard is ``hf-00000`` for a ``Dataset`` or ``IterableDataset`` and the
split's name for each split of a ``DatasetDict`` (``train:17``). :func:`with_keys` adds those keys
as a column, so that training code can log what it reads (:func:`provenance.torch.track`, or the
Trainer and Lightning callbacks)::

    ledger.register_dataset("wiki", ds)
    ds = with_keys(ds)          # a "key" column: "hf-00000:0", "hf-00000:1", ...

Rows that registration drops (text that is not valid UTF-8, with ``on_invalid="skip"``) keep their
key here but have no document in the ledger: logging them is refused. An empty text is a document.
An id column that registration refuses (floats, a None id) is refused here too.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from provenance.errors import InvalidParameterError
from provenance.sources.memory import _hf_kind, hf_shard_name

__all__ = ["with_keys"]


def with_keys(data: Any, *, id_field: str | None = None, column: str = "key") -> Any:
    """``data`` (a ``Dataset``, ``IterableDataset``, ``DatasetDict`` or ``IterableDatasetDict``)
    with a ``column`` holding each row's document key, as registering it with ``id_field`` keys it."""
    kind = _hf_kind(data)
    if not isinstance(column, str) or not column:
        raise InvalidParameterError(f"column must name the column to add, got {column!r}")
    if id_field is not None and (not isinstance(id_field, str) or not id_field):
        raise InvalidParameterError(f"id_field must name a column, got {id_field!r}")
    if kind is None:
        raise InvalidParameterError(f"with_keys takes a Hugging Face datasets object, got {type(data).__name__}")
    if kind.endswith("Dict"):
        return type(data)({split: _keyed(part, hf_shard_name(split), id_field, column) for split, part in data.items()})
    return _keyed(data, hf_shard_name(None), id_field, column)


def _keyed(data: Any, shard: str, id_field: str | None, column: str) -> Any:
    names = data.column_names
    if names is not None and column in names:
        raise InvalidParameterError(f"the dataset already has a {column!r} column; pass column= another name")
    if id_field is not None and names is not None and id_field not in names:
        raise InvalidParameterError(f"no id column {id_field!r} (columns: {', '.join(names)})")
    if _hf_kind(data) == "IterableDataset":  # keyed as its rows stream
        if id_field is None:
            _check_positions(data)
            return data.map(lambda row, i: {column: f"{shard}:{i}"}, with_indices=True)
        return data.map(lambda row, i: {column: _id_of(row, id_field, i)}, with_indices=True)
    if id_field is None:
        keys = [f"{shard}:{i}" for i in range(len(data))]
    else:  # as registration reads them: strings, or integers written in decimal
        ids = data.select_columns([id_field]).with_format("arrow")[:].column(id_field)
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type) or pa.types.is_integer(ids.type)):
            raise InvalidParameterError(  # registration refuses it: keys made of it would name no document
                f"id column {id_field!r} has type {ids.type}; ids must be strings or integers, as registration reads them")
        if ids.null_count:
            raise InvalidParameterError(f"id column {id_field!r}: row {_first_null(ids)} has no id (None); every "
                                        "document needs a key, as registration says")
        keys = ids.cast(pa.string())
    return data.add_column(column, keys)


def _first_null(ids: pa.ChunkedArray) -> int:
    return next(i for i, value in enumerate(ids.is_null().to_pylist()) if value)


def _id_of(row: dict, id_field: str, position: int) -> str:
    """The key of a streamed row (the ``position``-th), its id as registration reads it; a stream
    whose columns are known only as it streams (after ``map``) is checked here, row by row (it
    raised a bare ``KeyError``). An id registration refuses is refused here too, as for a
    ``Dataset`` (None, a float or a bool was keyed ``'None'``, ``'1.0'``, ``'True'``: no document)."""
    if id_field not in row:
        raise InvalidParameterError(f"no id column {id_field!r} (columns: {', '.join(row)})")
    value = row[id_field]
    if value is None:
        raise InvalidParameterError(f"id column {id_field!r}: row {position} of the stream has no id (None); every "
                                    "document needs a key, as registration says")
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):  # an int, or a NumPy one a map() made
        raise InvalidParameterError(f"id column {id_field!r}: row {position} of the stream has id {value!r} "
                                    f"({type(value).__name__}); ids must be strings or integers, as registration reads them")
    return str(value.__index__())


#: Steps of a streamed dataset's pipeline after which a row's position in the stream is no longer
#: its row number at registration (``datasets``' ``*ExamplesIterable`` classes, by name).
_REORDERING = ("Shuffl", "Filter", "Skip", "Repeat", "Interleav", "Step", "Cycl", "Concatenat", "Horizontally")


def _check_positions(data: Any) -> None:
    """Refuse to key a streamed dataset by position where a row's position is not its row
    number: several shards (DataLoader workers, shuffling and ``split_dataset_by_node`` deal
    out whole shards, and each counts from 0), or a pipeline that already shuffles, filters,
    skips, repeats, splits or interleaves rows. Keys by ``id_field`` hold whatever the order. Not
    seen here: a stream cut down by ``.shard()`` before ``with_keys`` (it counts its own rows from
    0); apply ``with_keys`` first (docs/hugging-face.md)."""
    shards = getattr(data, "num_shards", None) or getattr(data, "n_shards", None) or 1
    why = f"it streams {shards} shards, which DataLoader workers, shuffle() and split_dataset_by_node deal out " \
          "whole, each counted from 0" if shards > 1 else None
    if why is None and getattr(data, "_distributed", None) is not None:
        why = "it is already split between processes (split_dataset_by_node)"
    step = getattr(data, "_ex_iterable", None)
    while why is None and step is not None:
        name = type(step).__name__
        if any(word in name for word in _REORDERING) or (name.startswith("Mapped") and getattr(step, "batched", False)):
            why = f"its rows already pass through {name} (shuffled, filtered, skipped, repeated, split or batch-mapped)"
        step = getattr(step, "ex_iterable", None)
    if why is not None:
        raise InvalidParameterError(
            f"with_keys cannot key this IterableDataset by row position: {why}, so a row's position in the stream is "
            "not its row number at registration (the keys would name other documents). Register it and key it with "
            "id_field= (a column of unique ids), or call with_keys on the one-shard stream before shuffling or "
            "splitting it")
