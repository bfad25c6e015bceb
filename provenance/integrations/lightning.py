"""A PyTorch Lightning callback that records a training run in a provenance ledger: the weights it
started from, the key of every example of every batch it trained on, each checkpoint, and the
final weights as the run's version. Works with ``lightning`` and with ``pytorch-lightning``.

::

    callback = ProvenanceCallback(ledger, datasets=["wiki"], message="fine-tune on wiki")
    trainer = L.Trainer(max_steps=100, callbacks=[callback])
    trainer.fit(module, DataLoader(data, batch_size=8))   # each item carries its "key"
    callback.version                                      # the version the run produced

**Which keys, and how.** Lightning hands every batch to ``training_step`` as the DataLoader made
it, so the keys travel in the batch: items that are dicts with a ``key`` field (a
:class:`provenance.torch.RegisteredDataset`'s items are) collate into a batch whose ``key`` is
the list of the batch's keys, and ``training_step`` ignores what it does not use. ``key`` names
another field, or is a function from a batch to its keys (a tuple batch, say; any iterable of
strings). A batch of several train dataloaders (a ``CombinedLoader``'s, ``{"a": batch, "b": batch}``)
holds the keys of each of its parts. The keys of a
batch are logged when Lightning has trained on it (``on_train_batch_end``), at the step of the
optimizer update it goes into, ``trainer.global_step`` when the batch began (counted from 0 as
:func:`provenance.torch.track` counts): with ``accumulate_grad_batches``, several batches share a
step, and a checkpoint saved at ``global_step`` S was trained on the examples of steps 0 to S-1.
Because the keys come with the batches, an ``IterableDataset``, any sampler, worker processes and
Lightning's prefetching all work; a batch without its keys stops training at the first such batch
with an error that says so. A batch whose ``training_step`` returns None (Lightning skips it) is not
logged.

**Versions.** The run starts when training starts (``on_train_start``: the train DataLoader
exists, so a ``RegisteredDataset`` names its dataset when ``datasets`` is not given). Without
``base`` the module's weights at that moment (after ``ckpt_path`` was restored) are committed and
become the run's base; with one process this and the run's start happen on the callback's
commit thread while the first steps train (their keys wait in memory until the run exists, and an
error in starting the run stops training at the first batch after it); fitting again from the
weights the callback's last run ended with starts on that run's version instead. Each checkpoint
Lightning saves (``on_save_checkpoint``, with ``commit_on_save``) is committed as a version of its
own on the run's base, its message naming the run and the step
(:attr:`ProvenanceCallback.checkpoints`), on a thread of its own while training goes on
(:class:`provenance.integrations.BackgroundCommits`: the save copies the weights to CPU memory, one
copy at most waits; a second save at the same step, ``last.ckpt``, is the same version); the final weights are committed through the run when training ends, after
the last checkpoint is stored, which ends it ``finished`` (a save at ``max_steps`` is not
committed twice: its checkpoint is the run's version). Logged keys are written every
``flush_every`` examples and when training ends.

**Failure.** An exception in ``fit`` ends the run ``failed``, with the error (Lightning's
``on_exception``); the callback is also a context manager, for an exception raised around it.

**Several processes.** Every process logs the batches it trains on; the global process zero
starts the run, commits and ends it, and the others attach to it (its id sent with the strategy's
``broadcast``); every process's examples are written before process zero commits (the strategy's
``barrier``). A process whose training raises writes the examples it trained on before it stops
(process zero ends the run). Tested with two CPU processes writing one local ledger
(``tests/test_integration_distributed.py``); untested: sharded strategies (FSDP, DeepSpeed), whose
``state_dict`` on process zero is not the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from provenance.errors import InvalidParameterError, ProvenanceError
from provenance.integrations import RunRecorder, failure, registered_datasets, snapshot
from provenance.torch import _field_getter

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError(
            "provenance.integrations.lightning needs lightning (or pytorch-lightning): pip install 'provenance[lightning]'"
        ) from exc

__all__ = ["ProvenanceCallback"]


class ProvenanceCallback(RunRecorder, pl.Callback):
    """Records a Lightning ``Trainer.fit`` as a run in ``ledger`` (a local ``Ledger`` or a remote one).

    ``datasets`` are the registered datasets the training data holds (names, ``NAME@VERSION``, or
    a mapping to epochs), inferred when the train DataLoader's dataset is a
    :class:`provenance.torch.RegisteredDataset`. ``key`` is the field of a batch that holds its
    document keys, or a function returning a batch's keys. ``base`` is the version the model
    starts from (default: its weights when training starts, committed). ``message`` describes the
    run; ``params`` are stored with it beside the trainer settings that shape it.
    ``commit_on_save`` commits each checkpoint Lightning saves; ``flush_every`` is the run's buffer
    of logged keys (default: the ledger's).

    After training, :attr:`run` is the run, :attr:`version` the version it produced and
    :attr:`checkpoints` the version of each save, by step.
    """

    def __init__(
        self,
        ledger: Any,
        *,
        datasets: Sequence[str] | Mapping[str, float] | None = None,
        key: str | Callable[[Any], Sequence[str]] = "key",
        message: str | None = None,
        base: Any = None,
        params: Mapping[str, Any] | None = None,
        commit_on_save: bool = True,
        flush_every: int | None = None,
    ):
        if not callable(key) and (not isinstance(key, str) or not key):
            raise InvalidParameterError(f"key must name a batch field or be a function, got {key!r}")
        self._setup(ledger, datasets=datasets, message=message, base=base, params=params,
                    commit_on_save=commit_on_save, flush_every=flush_every)
        self.key = key
        self._keys_of = key if callable(key) else _batch_field(key)
        self._step = 0  # the optimizer step the batch in training goes into
        self._parts: dict[Any, str] = {}  # a batch part's dataset, by its loader's name or position

    # -- Lightning's events -----------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self._fail("training started again before this run ended")
        datasets = self.datasets if self.datasets is not None else _train_datasets(trainer.train_dataloader)
        # each part of a batch of several loaders logged as its loader's dataset's: the datasets of two
        # loaders that share keys (row numbers) failed the run ("a document of several of the run's datasets")
        self._parts = _part_datasets(trainer.train_dataloader) if self.datasets is None and not callable(self.key) else {}
        self._start_run(
            owner=bool(trainer.is_global_zero), alone=trainer.world_size == 1, datasets=datasets,
            params=_training_params(trainer), message=self.message or f"{type(pl_module).__name__} trained with Lightning",
            starting=lambda: (snapshot(pl_module.state_dict()), {}, lambda: None),
            broadcast=lambda run_id: trainer.strategy.broadcast(run_id, src=0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the updates made so far: this batch goes into the next

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._running or (pl_module.automatic_optimization and not outputs):
            return  # (``training_step`` returned None: Lightning skipped the batch, which changed no weight)
        by_part = self._keys_by_dataset(batch)
        keys = self._keys_of(batch) if by_part is None else [key for part in by_part.values() for key in part]
        if isinstance(keys, (str, torch.Tensor)):  # a tensor raised "Boolean value of Tensor ... is ambiguous"
            raise InvalidParameterError(
                f"ProvenanceCallback: the document keys of batch {batch_idx} at step {self._step} are a "
                f"{type(keys).__name__} ({keys!r:.60}), not a list of strings: give one key per example")
        if keys is not None and not isinstance(keys, (list, tuple)):  # a generator, a map, a numpy array: a TypeError
            try:                                                          # ("has no len()") or a ValueError ("truth
                keys = list(keys)                                         # value of an array ... is ambiguous")
            except TypeError:
                raise InvalidParameterError(
                    f"ProvenanceCallback: the document keys of batch {batch_idx} at step {self._step} are a "
                    f"{type(keys).__name__} ({keys!r:.60}), not a list of strings: give one key per example") from None
        if not keys:
            raise ProvenanceError(f"ProvenanceCallback: batch {batch_idx} at step {self._step} has no document keys")
        sizes = _leading_sizes(batch)
        if sizes and len(keys) not in sizes:  # a key function that drops keys would undercount silently
            raise InvalidParameterError(
                f"ProvenanceCallback: batch {batch_idx} at step {self._step} gave {len(keys)} document keys, but its "
                f"tensors hold {' or '.join(map(str, sorted(sizes)))} examples: give one key per example")
        self._log(keys if by_part is None else by_part, self._step)

    def _keys_by_dataset(self, batch: Any) -> dict[str | None, list[str]] | None:
        """A batch of several loaders' keys by the dataset of each part's loader (None: a part whose
        loader holds several datasets, looked up in all of the run's), or None for another batch."""
        if not self._parts or not isinstance(batch, (dict, list, tuple)) or (isinstance(batch, dict) and self.key in batch):
            return None
        parts = batch.items() if isinstance(batch, dict) else enumerate(batch)
        found: dict[str | None, list[str]] = {}
        for name, part in parts:
            if part is not None:  # its loader is exhausted
                found.setdefault(self._parts.get(name), []).extend(self._keys_of(part))
        return found

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._save(trainer.global_step, last=trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps,
                   trained=lambda: (snapshot(pl_module.state_dict()), {}, lambda: None))

    def on_train_end(self, trainer, pl_module) -> None:
        self._end_run(barrier=lambda: trainer.strategy.barrier("provenance: examples written"),
                      trained=lambda: (pl_module.state_dict(), {}, lambda: None))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._fail(failure(type(exception), exception))


def _leading_sizes(batch: Any, depth: int = 0) -> set[int]:
    """The first dimensions of the tensors in a batch (nested in dicts, lists and tuples), and the
    sum of those of its parts when it holds several (a batch of several train dataloaders, a
    ``CombinedLoader``'s, holds the examples of all of them: 4 and 2 rows, 6 keys)."""
    if isinstance(batch, torch.Tensor):
        return {int(batch.shape[0])} if batch.dim() else set()
    if depth > 4:
        return set()
    items = list(batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ())
    sizes = set().union(*(_leading_sizes(b, depth + 1) for b in items)) if items else set()
    parts = [part for b in items if isinstance(b, (dict, list, tuple)) and (part := _leading_sizes(b, depth + 1))]
    if len(parts) > 1 and all(len(part) == 1 for part in parts):
        sizes.add(sum(next(iter(part)) for part in parts))
    return sizes


def _train_datasets(loaders: Any) -> list[str]:
    """The registered datasets of the train dataloader, or of each of several (a dict or a list of
    them, a ``CombinedLoader``'s): a ``RegisteredDataset``, or a ``random_split`` part of one."""
    parts = loaders.values() if isinstance(loaders, Mapping) else loaders if isinstance(loaders, (list, tuple)) else [loaders]
    names = [name for loader in parts
             for name in registered_datasets(getattr(loader, "dataset", loader), "ProvenanceCallback")]
    return list(dict.fromkeys(names))


def _part_datasets(loaders: Any) -> dict[Any, str]:
    """For several train dataloaders (a dict or a list of them), the registered dataset of each
    one that holds one, by its name or position in a batch of their batches."""
    if not isinstance(loaders, (Mapping, list, tuple)) or len(loaders) < 2:
        return {}
    found = {}
    for name, loader in (loaders.items() if isinstance(loaders, Mapping) else enumerate(loaders)):
        names = registered_datasets(getattr(loader, "dataset", loader), "ProvenanceCallback")
        if len(names) == 1:
            found[name] = names[0]
    return found


def _batch_field(field: str) -> Callable[[Any], Sequence[str]]:
    keys_of = _field_getter(field)

    def keys(batch: Any) -> Sequence[str]:
        if isinstance(batch, (dict, list, tuple)) and not (isinstance(batch, dict) and field in batch):
            parts = [part for part in (batch.values() if isinstance(batch, dict) else batch) if part is not None]
            if parts and all(isinstance(part, dict) and field in part for part in parts):  # several train dataloaders
                return [key for part in parts for key in keys(part)]
        try:
            return keys_of(batch)
        except InvalidParameterError as exc:
            raise InvalidParameterError(
                str(exc).replace("track: a yielded item", "ProvenanceCallback: a training batch")
                + " (Lightning passes batches as the DataLoader makes them: let each item carry its key)") from None

    return keys


def _training_params(trainer: Any) -> dict[str, Any]:
    """The trainer settings that shape what the run produces, stored with the run."""
    return {
        "trainer": f"lightning {pl.__version__}",
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "start_step": trainer.global_step,
    }
