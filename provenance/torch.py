"""PyTorch glue: registered data as a torch ``Dataset``, and :func:`track`, which logs the keys of
what a ``DataLoader`` (or ``Dataset``) yields into a run without the training loop doing more.

::

    data = RegisteredDataset(ledger, "wiki")            # items: {"key", "text", "dataset"}
    loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=...)
    with ledger.start_run(base="v1", datasets=["wiki"], message="fine-tune") as run:
        for batch in track(loader, run):                # logs batch["key"] at run.step, then step += 1
            ...
        run.commit(model.state_dict())
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from provenance.datasets import read_back
from provenance.errors import InvalidParameterError, SourceError
from provenance.ledger import LedgerStore
from provenance.records import DatasetRecord
from provenance.runs import Run

KeyGetter = Callable[[Any], Sequence[str]]


class RegisteredDataset(Dataset):
    """A registered dataset, read back from its source files, as a map-style torch ``Dataset``.

    Item ``i`` is ``{"key": ..., "text": ..., "dataset": ...}`` (after ``transform`` if given),
    in the ledger's document order. Every file is checked against the hash it was registered
    with, so the keys logged during training are the keys of the bytes that were fingerprinted.
    The texts are held in memory: meant for the datasets one fine-tune reads, not a pretraining
    corpus.
    """

    def __init__(self, ledger: LedgerStore, dataset: str | DatasetRecord, transform: Callable[[dict], Any] | None = None):
        if not callable(getattr(ledger, "shards", None)):  # a path: "'str' object has no attribute 'dataset'"
            raise InvalidParameterError(f"RegisteredDataset needs a ledger (Ledger.open(PATH)), got {ledger!r} "
                                        f"({type(ledger).__name__})")
        self.dataset = ledger.dataset(dataset)
        self.transform = transform
        self.keys: list[str] = []
        self.texts: list[str] = []
        kept = _kept_rows(ledger, self.dataset)
        for shard in ledger.shards(self.dataset):
            try:
                batches = list(read_back(self.dataset, shard))
            except SourceError as exc:
                if "changed since it was registered" in str(exc):
                    raise SourceError(f"{exc}; register the new content (a new dataset version) and train on that") from None
                raise
            for batch in batches:
                texts = batch.texts.to_pylist()
                ids = batch.ids.to_pylist() if batch.ids is not None else [f"{shard.name}:{r}" for r in batch.rows.tolist()]
                if kept is not None:  # a version `prov dataset remove` made: its files still hold what it removed
                    keep = np.isin(batch.rows, kept.get(shard.shard_index, [])).tolist()
                    texts = [t for t, k in zip(texts, keep) if k]
                    ids = [i for i, k in zip(ids, keep) if k]
                self.keys.extend(ids)
                self.texts.extend(texts)
        if len(self.keys) != self.dataset.n_documents:
            raise SourceError(
                f"{self.dataset.dataset_id}: read {len(self.keys)} documents back, the ledger has {self.dataset.n_documents}"
            )

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Any:
        item = {"key": self.keys[index], "text": self.texts[index], "dataset": self.dataset.dataset_id}
        if self.transform is None:
            return item
        try:
            return self.transform(item)
        except Exception as exc:  # raised from inside a DataLoader: which document it was is worth a line
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"in the transform of item {index} (key {item['key']!r}) of {self.dataset.dataset_id}")
            raise


def _kept_rows(ledger: LedgerStore, ds: DatasetRecord) -> dict[int, np.ndarray] | None:
    """The rows of each shard that ``ds`` keeps, when a removal left documents out of its files
    (it read them all back, and refused: ``read 30 documents back, the ledger has 28``); else None."""
    if not ledger.withheld(ds):  # (through a server too: it was refused, "read 6 documents back, the ledger has 4")
        return None
    rows = ledger.documents(ds, columns=["shard_index", "row_index"]).to_pydict()
    kept: dict[int, list[int]] = {}
    for shard, row in zip(rows["shard_index"], rows["row_index"]):
        kept.setdefault(shard, []).append(row)
    return {shard: np.array(r, dtype=np.int64) for shard, r in kept.items()}


def track(data: DataLoader | Dataset, run: Run, *, key: str | KeyGetter = "key", dataset: str | None = None):
    """Wrap ``data`` so that the keys of everything it yields are logged into ``run``.

    A ``DataLoader`` (or any iterable of batches) is wrapped so that each batch's keys are logged
    at ``run.step`` and the step then advances by one. A map-style ``Dataset`` is wrapped so that
    each ``__getitem__`` logs its item's key at ``run.step`` (the loop advances ``run.step``; use
    it with ``num_workers=0``, or wrap the DataLoader instead: worker processes cannot log, and a
    wrapped dataset read in one is refused).
    ``key`` is the field holding the key in a dict item or batch, or a function returning the
    keys of an item or batch. ``dataset`` is the run's dataset the keys are looked up in; a
    :class:`RegisteredDataset` (wrapped, a ``Subset`` of it, or the DataLoader's) names its own by
    default, so that its keys are not taken for those of another version the run declared.
    """
    if not isinstance(run, Run):
        raise InvalidParameterError(f"track needs a Run from ledger.start_run, got {type(run).__name__}")
    getter = key if callable(key) else _field_getter(key)
    if dataset is None:  # a loader over a@1 in a run that declared a (a@2): its keys were logged as a@2's, no word
        registered = data.dataset if isinstance(data, DataLoader) else data
        while isinstance(registered, Subset):  # random_split's parts
            registered = registered.dataset
        if isinstance(registered, RegisteredDataset):
            dataset = registered.dataset.dataset_id
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__getitem__"):
        return _TrackedDataset(data, run, getter, dataset)
    if not hasattr(data, "__iter__"):
        raise InvalidParameterError(f"track needs a DataLoader, a Dataset or an iterable of batches, got {type(data).__name__}")
    return _TrackedLoader(data, run, getter, dataset)


def _field_getter(field: str) -> KeyGetter:
    def keys(item: Any) -> Sequence[str]:
        if not isinstance(item, dict) or field not in item:
            what = f"keys {sorted(item)[:8]}" if isinstance(item, dict) else f"a {type(item).__name__}"
            raise InvalidParameterError(
                f"track: a yielded item has no {field!r} field ({what}); yield dicts with the document key, "
                "or pass key=FIELD or key=function"
            )
        value = item[field]
        if isinstance(value, str):
            return [value]
        if isinstance(value, torch.Tensor):
            raise InvalidParameterError(f"track: field {field!r} holds a tensor; document keys are strings")
        if isinstance(value, bytes) or not isinstance(value, Iterable):  # bytes: "got 107 (int)", its first byte
            raise InvalidParameterError(f"track: field {field!r} holds {value!r} ({type(value).__name__}), not the "
                                        "document keys (a string, or a list of them)")
        return list(value)

    return keys


class _TrackedLoader:
    def __init__(self, loader: Any, run: Run, keys: KeyGetter, dataset: str | None):
        self.loader, self.run, self.keys, self.dataset = loader, run, keys, dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self.run.log_examples(self.keys(batch), step=self.run.step, dataset=self.dataset)
            try:
                yield batch
            finally:  # a loop left with `break` trained on this batch too: the next one gets the next step
                self.run.step += 1


class _TrackedDataset(Dataset):
    def __init__(self, data: Dataset, run: Run, keys: KeyGetter, dataset: str | None):
        self.data, self.run, self.keys, self.dataset = data, run, keys, dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        worker = torch.utils.data.get_worker_info()
        if worker is not None:  # a copy of the run in another process: what it logged never reached the run
            raise InvalidParameterError(
                f"track(dataset) is read in DataLoader worker {worker.id} of {worker.num_workers}: a worker process "
                "cannot log into the run (its keys would be lost); wrap the DataLoader instead, "
                "track(DataLoader(dataset, num_workers=...), run), or use num_workers=0")
        item = self.data[index]
        self.run.log_examples(self.keys(item), step=self.run.step, dataset=self.dataset)
        return item

