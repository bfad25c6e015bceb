"""A Hugging Face ``Trainer`` callback that records a training run in a provenance ledger: the
weights it started from, the key of every example of every batch it trained on, each checkpoint,
and the final weights as the run's version.

::

    callback = ProvenanceCallback(ledger, datasets=["wiki"], message="fine-tune on wiki")
    trainer = Trainer(model, args, train_dataset=data, callbacks=[callback])   # data rows carry "key"
    with callback:                     # an exception in train() ends the run failed
        trainer.train()
    callback.version                   # the version the run produced

**Which keys, and how.** ``remove_unused_columns=True`` (the default) strips the ``key`` column
before the collator builds a batch, and the model must not receive it anyway, so the keys cannot
be read from batches. Instead, when training begins, the callback wraps the *batch sampler* of the
Trainer's train DataLoader (for accelerate's ``DataLoaderShard``, that of the DataLoader it
wraps): every list of dataset indices the sampler yields is queued, in order. The sampler runs in
the main process, also with ``dataloader_num_workers > 0``, and an in-order DataLoader delivers
batches in the order their indices were drawn, so the queue's head is always the next batch the
Trainer trains on, however far workers or accelerate's one-batch look-ahead have read ahead.
Every micro-batch the Trainer trains ends in ``on_substep_end`` (accumulating) or
``on_step_end`` (the optimizer stepped): each pops one entry, maps its indices to keys (the
``key_column`` of the DataLoader's dataset, the Trainer's ``train_dataset``; or ``keys=``) and
logs them at the step of the optimizer update they went into, counted from 0 as
:func:`provenance.torch.track` counts: with gradient accumulation, several micro-batches share a
step, and a checkpoint saved at ``global_step`` S was trained on the examples of steps 0 to S-1.
Indices drawn but never trained on (training stopped, an epoch cut short) are dropped when the
sampler starts its next pass or training ends. Resuming from a checkpoint is followed: the
batches accelerate skips (``skip_first_batches``, which draws them through the wrapped sampler)
are not logged. The key of a row of a plain torch ``Dataset`` (or list) is read by indexing it
again, so its ``__getitem__`` runs twice per example; a ``RegisteredDataset`` or ``keys=`` avoids
that.

Not supported, and refused when training begins with an error that says so: an
``IterableDataset`` (no indices; log keys with :func:`provenance.torch.track` in a custom loop, or
use a map-style dataset), accelerate's ``dispatch_batches`` (one process draws every batch and
slices it) and workers with ``dataloader_in_order=False`` (batches out of the order drawn). A sampler that yields anything but lists of integer indices is refused at the first
batch. A ``datasets.Dataset`` loses its unused columns before the Trainer builds its DataLoader,
so with one give ``keys=train_dataset["key"]``.

**Versions.** Without ``base`` the starting weights are committed first (unchanged tensors cost
nothing new: objects are content-addressed) and become the run's base. In a single process this
and the run's start happen on the callback's commit thread while the first steps train (their
keys wait in memory until the run exists): ``on_train_begin`` only copies the weights to CPU
memory, and an error in starting the run (an unknown dataset, a server that cannot be reached)
stops training at the first batch after it. :attr:`ProvenanceCallback.run` waits for a run still
starting. A run ends with its
commit, so each save (``on_save``, with ``commit_on_save``) is committed as a version of its own
on the run's base, ``ledger.commit(state, parent=base)``, its message naming the run and the
step (:attr:`ProvenanceCallback.checkpoints`); the final weights are committed through the run at
``on_train_end``, which ends it ``finished`` (a save at the last step is not committed twice: its
checkpoint is the run's version, unless ``load_best_model_at_end`` loaded another checkpoint
back, or training fails before the final commit, when it is committed as a checkpoint). A checkpoint is committed on a thread of its own while training goes on
(:class:`provenance.integrations.BackgroundCommits`): the save copies the weights to CPU memory
(one copy at most waits), and ``on_train_end`` waits for the last one before the final commit; a
checkpoint that fails to commit raises at the next save or at the end.
Logged keys are written every ``flush_every`` examples and when training ends.

**LoRA.** A PEFT ``PeftModel`` with one LoRA adapter is committed as low-rank patches: the
starting weights are its base model's, under the base model's own names, and each save and the
end commit the folder ``save_pretrained`` writes (the adapter's factors) on that base. A ledger
server does not take adapter folders: for one, the callback applies the adapter to the base
weights and sends the state with the factors (``low_rank=``), so the server stores the same
low-rank patches (the upload is the whole state, not the factors alone). Other PEFT methods are
refused when training begins: merge the adapter and commit the weights instead. A checkpoint version has no run of its own, so its
lineage reaches the data only through its message. A chain of runs, one per save, each based on
the version the previous save committed, would give every checkpoint its own lineage; it was not
chosen because a run that logs nothing counts as a whole declared epoch (the segment after a
save on the last step would), and one ``train()`` would become several runs to follow.

**Failure.** ``Trainer`` has no exception hook. Use the callback as a context manager around
``trainer.train()``: an exception ends the run ``failed``, with the error. Without it, a run left
open is marked failed when the process exits (:mod:`provenance.runs` does this for every open
run), or when the callback's next ``on_train_begin`` finds it still open (as after an
``auto_find_batch_size`` retry).

**Several processes.** Only the world's process zero commits and starts the run; the others
attach to it (its id sent with ``torch.distributed``) and log the batches their own sampler
shard yields. Every process writes its examples before process zero commits, and before it stops
when its training raises (inside the callback's ``with``). Tested with two CPU processes writing one
local ledger (each write waits for the ledger's lock; ``tests/test_integration_distributed.py``);
untested: sharded states (FSDP, DeepSpeed ZeRO-3), whose ``state_dict`` on process zero alone is
not the whole model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import IterableDataset

from provenance.errors import InvalidParameterError, ProvenanceError, warn
from provenance.integrations import RunRecorder, _holds, failure, registered_datasets, snapshot
from provenance.torch import RegisteredDataset

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "provenance.integrations.transformers needs transformers and accelerate: pip install 'provenance[hf]'"
    ) from exc

__all__ = ["ProvenanceCallback"]


class ProvenanceCallback(RunRecorder, TrainerCallback):
    """Records a ``Trainer``'s training as a run in ``ledger`` (a local ``Ledger`` or a remote one).

    ``datasets`` are the registered datasets the training set holds (names, ``NAME@VERSION``, or
    a mapping to epochs), inferred when the training set is a
    :class:`provenance.torch.RegisteredDataset`. ``key_column`` is the field of a training row
    that holds its document key; ``keys`` instead gives the key of each row by index. ``base`` is
    the version the model starts from (default: its weights when training begins, committed).
    ``message`` describes the run; ``params`` are stored with it beside the training arguments
    that shape it. ``commit_on_save`` commits each checkpoint the Trainer saves;
    ``flush_every`` is the run's buffer of logged keys (default: the ledger's).

    After training, :attr:`run` is the run, :attr:`version` the version it produced and
    :attr:`checkpoints` the version of each save, by step.
    """

    def __init__(
        self,
        ledger: Any,
        *,
        datasets: Sequence[str] | Mapping[str, float] | None = None,
        key_column: str = "key",
        keys: Sequence[str] | None = None,
        message: str | None = None,
        base: Any = None,
        params: Mapping[str, Any] | None = None,
        commit_on_save: bool = True,
        flush_every: int | None = None,
    ):
        if not isinstance(key_column, str) or not key_column:
            raise InvalidParameterError(f"key_column must name a field, got {key_column!r}")
        self._setup(ledger, datasets=datasets, message=message, base=base, params=params,
                    commit_on_save=commit_on_save, flush_every=flush_every)
        self.key_column = key_column
        self.keys = keys
        self._tap: _SamplerTap | None = None
        self._key_of: Callable[[int], str] | None = None
        self._remote = False  # whether the ledger is a ledger server's

    def _fail(self, reason: str) -> None:
        self._tap = None
        super()._fail(reason)

    # -- the Trainer's events ---------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._fail("training began again before this run ended (did trainer.train() raise?)")
        _check_adapter(model)
        from provenance.remote import RemoteLedger

        self._remote = isinstance(self.ledger, RemoteLedger)
        tap, dataset = _tap_loader(train_dataloader, self)
        key_of = _key_lookup(dataset, self.key_column, self.keys)
        datasets = self.datasets if self.datasets is not None else registered_datasets(dataset, "ProvenanceCallback")
        if state.global_step and not args.ignore_data_skip:  # resumed: accelerate skips the steps done
            batches = len(train_dataloader)
            per_epoch = max(batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0), 1)
            tap.skip = (state.global_step % per_epoch) * args.gradient_accumulation_steps
        if _is_peft(model) and self.version is not None and state.is_world_process_zero and \
                _holds_adapter(self.ledger, self.version, model):
            warn(f"ProvenanceCallback: the LoRA adapter trains on from the weights of version "
                 f"{self.version.version_id[:12]} (run {str(self.version.run_id)[:12]}), but an adapter's version is "
                 "committed as low-rank patches of the base model's weights, so this run starts from those: its "
                 "version's lineage does not hold the data of that run (docs/hugging-face.md, 'What is followed'); "
                 "train the adapter in one trainer.train() to keep its data in one lineage")
        processing_class = kwargs.get("processing_class", kwargs.get("tokenizer"))
        self._start_run(
            owner=bool(state.is_world_process_zero), alone=_world() is None, datasets=datasets,
            params=_training_params(args, state), message=self.message or f"{type(model).__name__} trained with transformers' Trainer",
            starting=lambda: self._starting(model, processing_class), broadcast=_from_process_zero)
        self._tap, self._key_of = tap, key_of

    def _starting(self, model: Any, processing_class: Any) -> tuple[Any, dict[str, Any], Callable[[], None]]:
        """The starting weights to commit (a copy); into a local ledger with the files
        ``from_pretrained`` needs beside them (the model's config and generation config, the
        Trainer's tokenizer or processor), which every version of the run then has
        (``prov model checkout --hf``)."""
        state = snapshot(_starting_state(model))
        if self._remote:  # a ledger server takes tensors only
            return state, {}, lambda: None
        folder = tempfile.mkdtemp(prefix="provenance-model-files-")
        try:
            files = _save_model_files(model, processing_class, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return state, {"files": folder} if files else {}, lambda: shutil.rmtree(folder, ignore_errors=True)

    def on_substep_end(self, args, state, control, **kwargs):
        self._log_batch(state.global_step)  # a micro-batch accumulated into the coming update

    def on_step_end(self, args, state, control, **kwargs):
        self._log_batch(state.global_step - 1)  # the last micro-batch of the update just made

    def on_save(self, args, state, control, model=None, **kwargs):
        last = control.should_training_stop or (state.max_steps > 0 and state.global_step >= state.max_steps)
        # with load_best_model_at_end the weights at the end may be another checkpoint's: this save
        # is copied now, and committed at the end unless it is the best (on_train_end)
        last = last and not args.load_best_model_at_end
        self._save(state.global_step, last=last, trained=lambda: _snapshot(model, remote=self._remote))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._tap = None  # batches drawn but not trained on are dropped with it
        best = _best_reloaded(args, state)
        if best is not None and self._running and self._owner and self._trained:
            warn(f"ProvenanceCallback: the Trainer loaded its best checkpoint back when training ended "
                 f"(load_best_model_at_end, {os.path.basename(os.path.normpath(best))}): the run's version holds "
                 f"those weights, and its lineage counts the data of every step the run trained (to step "
                 f"{state.global_step - 1}), also of those after that checkpoint")
        self._end_run(barrier=_barrier, trained=lambda: _snapshot(model, copy=False, remote=self._remote),
                      last_save_is_final=best is None)

    def _log_batch(self, step: int) -> None:
        if not self._running:
            return
        try:
            indices = self._tap.take()
            if indices is None:
                raise ProvenanceError(
                    f"ProvenanceCallback: the Trainer trained a batch at step {step} that its train sampler did not "
                    "draw; was the train DataLoader replaced after training began?")
            keys = [self._key_of(i) for i in indices]
        except ProvenanceError as exc:  # a row without a key: the run fails before the error stops training, as
            self._fail(failure(type(exc), exc))  # for a key the run refuses (_logged); else it was left running
            raise
        self._log(keys, step)


class _SamplerTap:
    """A batch sampler that queues the index lists the sampler it wraps yields, for the callback
    to take one per batch trained. Every other attribute is the wrapped sampler's: the Trainer
    and accelerate reach through it for ``set_epoch``, ``batch_size``, its ``sampler`` (whose
    epoch sets the shuffle) and the like, so the wrapped one is kept under a name of its own."""

    def __init__(self, sampler: Any, owner: Any):
        self.tapped = sampler
        self.owner = owner  # the callback that takes the batches
        self.drawn: deque[list] = deque()
        self.skip = 0  # batches of the next pass that accelerate skips when resuming

    def __iter__(self) -> Iterator[Any]:
        self.drawn.clear()  # a new pass: whatever the last one drew and nobody trained on is dropped
        skip, self.skip = self.skip, 0
        for n, batch in enumerate(self.tapped):
            if n >= skip:
                self.drawn.append(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.tapped)

    def __getattr__(self, name: str) -> Any:
        if name == "tapped":  # not yet set (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.tapped, name)

    def take(self) -> list[int] | None:
        if not self.drawn:
            return None
        batch = self.drawn.popleft()
        try:
            return [_index(i) for i in batch]
        except TypeError:
            raise InvalidParameterError(
                f"ProvenanceCallback: the train sampler ({type(self.tapped).__name__}) yielded {batch!r:.80}, "
                "not a list of dataset indices") from None


def _best_reloaded(args: Any, state: Any) -> str | None:
    """The checkpoint folder whose weights the Trainer loaded back when training ended
    (``load_best_model_at_end``), when it is not the one saved at the last step; else None."""
    best = getattr(state, "best_model_checkpoint", None)
    if not (args.load_best_model_at_end and best):
        return None
    return None if os.path.basename(os.path.normpath(best)) == f"checkpoint-{state.global_step}" else best


def _index(value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(value)
    return value.__index__()


def _tap_loader(loader: Any, owner: Any) -> tuple[_SamplerTap, Any]:
    """Wrap the batch sampler the train DataLoader draws indices from for ``owner`` (a callback);
    return it and the dataset."""
    if loader is None:
        raise ProvenanceError("ProvenanceCallback: the Trainer began training without a train DataLoader")
    base = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard wraps a torch DataLoader
    if isinstance(base.dataset, IterableDataset):
        raise InvalidParameterError(
            "ProvenanceCallback: an IterableDataset has no indices to map to keys; use a map-style train_dataset, "
            "or log keys with provenance.torch.track in your own loop")
    if type(loader).__name__ == "DataLoaderDispatcher":  # accelerate's adapters fake __class__: type() is true
        raise InvalidParameterError(
            "ProvenanceCallback: accelerate's dispatch_batches is not supported (one process draws every batch "
            "and slices it); set TrainingArguments(accelerator_config={'dispatch_batches': False})")
    if getattr(base, "num_workers", 0) and not getattr(base, "in_order", True):
        raise InvalidParameterError(
            "ProvenanceCallback: with dataloader_in_order=False, workers deliver batches in another order than "
            "they were drawn, so a batch's keys are not known; leave dataloader_in_order=True")
    sampler = getattr(base, "batch_sampler", None)
    if sampler is None:
        raise InvalidParameterError(
            f"ProvenanceCallback: the train DataLoader ({type(loader).__name__}) has no batch sampler to follow")
    tap = sampler  # this callback's own tap, when the loader has one; another callback's (two ledgers) is wrapped
    while isinstance(tap, _SamplerTap) and tap.owner is not owner:  # in one of its own: each takes every batch
        tap = tap.tapped
    if not isinstance(tap, _SamplerTap):
        tap = _SamplerTap(sampler, owner)
        # A DataLoader refuses a new batch_sampler once built; its iterators read it when they are
        # made, which is after on_train_begin.
        object.__setattr__(base, "batch_sampler", tap)
    return tap, base.dataset


def _key_lookup(dataset: Any, column: str, keys: Sequence[str] | None) -> Callable[[int], str]:
    """The document key of row ``i`` of the training set."""
    if keys is not None:
        if isinstance(keys, str):
            raise InvalidParameterError("ProvenanceCallback: keys is one string; give one document key per row")
        keys = _string_keys(list(keys), "keys[{}]")
        if len(keys) != len(dataset):
            raise InvalidParameterError(f"ProvenanceCallback: keys has {len(keys)} entries, the training set {len(dataset)} rows")
        return keys.__getitem__
    if isinstance(dataset, RegisteredDataset):
        return dataset.keys.__getitem__
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list):  # a datasets.Dataset, which loses unused columns before the loader is built
        if column not in columns:
            raise InvalidParameterError(
                f"ProvenanceCallback: the training set has no {column!r} column (it has {', '.join(columns)}); the "
                f"Trainer drops the columns the model does not take from a datasets.Dataset: pass "
                f"keys=train_dataset[{column!r}]")
        return _string_keys(list(dataset[column]), f"row {{}} of the training set's {column!r} column").__getitem__

    def item_key(i: int) -> str:
        item = dataset[i]
        value = item.get(column) if isinstance(item, Mapping) else None
        if not isinstance(value, str):
            what = f"fields {', '.join(sorted(map(str, item)))}" if isinstance(item, Mapping) else f"a {type(item).__name__}"
            raise InvalidParameterError(
                f"ProvenanceCallback: row {i} of the training set has no string {column!r} field ({what}); give each "
                "row its document key, or pass key_column= or keys=")
        return value

    if len(dataset):
        item_key(0)  # refuse before anything is written
    return item_key


def _string_keys(keys: list, where: str) -> list:
    """``keys``, refused here, before anything is written (not by the run at its first batch,
    once the starting weights are committed), when one is not a string; ``where`` names the
    entry (``{}`` for its index)."""
    bad = next((i for i, key in enumerate(keys) if not isinstance(key, str)), None)
    if bad is not None:
        raise InvalidParameterError(
            f"ProvenanceCallback: {where.format(bad)} is {keys[bad]!r} ({type(keys[bad]).__name__}); document keys are "
            "strings (a numeric id 7 is the key '7')")
    return keys


def _is_peft(model: Any) -> bool:
    """Whether ``model`` is a PEFT ``PeftModel`` (known by its class, so peft is not imported)."""
    return any(cls.__name__ == "PeftModel" and cls.__module__.startswith("peft.") for cls in type(model).__mro__)


def _check_adapter(model: Any) -> None:
    """Refuse, before training, a PEFT model whose adapters cannot be committed as low-rank patches."""
    if not _is_peft(model):
        return
    kinds = {name: str(getattr(config.peft_type, "value", config.peft_type)) for name, config in model.peft_config.items()}
    if set(kinds.values()) != {"LORA"} or len(kinds) != 1:
        raise InvalidParameterError(
            f"ProvenanceCallback: the PEFT model has adapters {kinds}; one LoRA adapter is committed as low-rank "
            "patches, other PEFT methods are not (merge the adapter and commit the model's weights)")
    from provenance.checkpoints import adapter_refusal

    (name, config), = model.peft_config.items()
    refused = adapter_refusal(config.to_dict())
    if refused:  # found now, not when the adapter is committed after the whole of training
        raise InvalidParameterError(f"ProvenanceCallback: adapter {name!r}: {refused} (merge the adapter and commit "
                                    "the model's weights, or train a plain LoRA)")


def _starting_state(model: Any) -> Any:
    """The weights training starts from: a PEFT model's base model's, under their own names (without
    the adapter's factors and the ``base_layer`` PEFT wraps a targeted module's weights in)."""
    if not _is_peft(model):
        return model.state_dict()
    return {name.replace(".base_layer.", "."): tensor for name, tensor in model.get_base_model().state_dict().items()
            if ".lora_" not in name}


def _save_model_files(model: Any, processing_class: Any, folder: str) -> bool:
    """Write into ``folder`` the files a checkpoint folder has beside the weights, as
    ``save_pretrained`` writes them: the config, the generation config and the tokenizer (or
    processor); whether there is any."""
    inner = model.get_base_model() if _is_peft(model) else model
    for part in (getattr(inner, "config", None), getattr(inner, "generation_config", None), processing_class):
        if part is not None and callable(getattr(part, "save_pretrained", None)):
            try:
                part.save_pretrained(folder)
            except ValueError as exc:  # transformers refuses to save a generation config it finds invalid
                warn(f"ProvenanceCallback: {type(part).__name__} not stored with the starting weights: {exc}")
    return any(os.scandir(folder))


def _snapshot(model: Any, *, copy: bool = True, remote: bool = False) -> tuple[Any, dict[str, Any], Callable[[], None]]:
    """What to commit for the model as trained (the state and the commit's options), and what
    removes it once committed: a copy of its weights (``copy``: training goes on meanwhile), or for
    a PEFT model the adapter folder ``save_pretrained`` writes (its LoRA factors, which the ledger
    stores as low-rank patches of the run's base). A ledger server does not take adapter folders:
    for one, the adapter is applied to the base weights here and the factors go with the state
    (``low_rank=``), so that the server stores the same low-rank patches."""
    if not _is_peft(model):
        return (snapshot(model.state_dict()) if copy else model.state_dict()), {}, lambda: None
    folder = tempfile.mkdtemp(prefix="provenance-adapter-")
    try:
        model.save_pretrained(folder, safe_serialization=True)
        if not remote:
            return folder, {}, lambda: shutil.rmtree(folder, ignore_errors=True)
        return (*_applied_adapter(folder, _starting_state(model)), lambda: None)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if remote:
            shutil.rmtree(folder, ignore_errors=True)


def _holds_adapter(ledger: Any, version: Any, model: Any) -> bool:
    """Whether ``version`` holds the weights of the PEFT ``model`` with its adapter applied (its
    adapter goes on from where the run that committed ``version`` left it)."""
    folder = tempfile.mkdtemp(prefix="provenance-adapter-")
    try:
        model.save_pretrained(folder, safe_serialization=True)
        return _holds(ledger, version, _applied_adapter(folder, _starting_state(model))[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _applied_adapter(folder: str, base: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state an adapter folder makes of ``base``, and the commit options that store its
    targeted weights as the adapter's low-rank factors (as a local commit of the folder does)."""
    from provenance.checkpoints import read_lora_adapter
    from provenance.kernels.patch import apply_low_rank

    adapter = read_lora_adapter(folder, {name: (t.dtype, tuple(t.shape)) for name, t in base.items()})
    state = {name: adapter.replaced.get(name, tensor).detach().to("cpu", copy=True) for name, tensor in base.items()}
    low_rank = {}
    for name, update in adapter.updates.items():
        state[name] = apply_low_rank(state[name], update.b, update.a, update.scale)
        if name not in adapter.replaced:
            low_rank[name] = (update.b, update.a, update.scale)
    return state, {"low_rank": low_rank}


def _training_params(args: Any, state: Any) -> dict[str, Any]:
    """The arguments that shape what the run produces, stored with the run."""
    return {
        "trainer": f"transformers {transformers.__version__}",
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "max_steps": state.max_steps,
        "num_train_epochs": state.num_train_epochs,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "start_step": state.global_step,
    }


def _world() -> Any:
    """``torch.distributed`` when several processes train together, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _from_process_zero(value: Any) -> Any:
    dist = _world()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    dist = _world()
    if dist is not None:
        dist.barrier()
