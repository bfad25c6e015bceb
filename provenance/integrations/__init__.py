"""Glue between provenance and training frameworks, one module per framework.

Each module imports its framework when it is itself imported (``provenance.integrations.transformers``
needs ``transformers``), so ``import provenance`` never does. They use the ledger only through the
facade's verbs (:class:`provenance.api.LedgerAPI`), so a local ledger and a ledger server serve alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from provenance.errors import InvalidParameterError, warn

__all__ = ["BackgroundCommits", "RunRecorder", "failure", "one_session", "registered_datasets", "snapshot"]


def one_session(ledger: Any) -> contextlib.AbstractContextManager:
    """One connection for the few ledger calls a training event makes (a flush and a commit): a
    local ledger opens its database once for them, not once per call. The lock is held only
    for the event, so other processes (other ranks) write between events."""
    session = getattr(ledger, "session", None)
    return session() if callable(session) else contextlib.nullcontext()


def registered_datasets(dataset: Any, who: str) -> list[str]:
    """The registered datasets a training set is made of, when it is a
    :class:`provenance.torch.RegisteredDataset`, a part of one (as ``random_split`` makes) or a
    ``ConcatDataset`` of such; else an error asking ``who``'s user to name the datasets."""
    from torch.utils.data import ConcatDataset, Subset

    from provenance.torch import RegisteredDataset

    found: list[str] = []

    def walk(part: Any) -> None:
        while isinstance(part, Subset):  # random_split's parts (a LightningDataModule's train/val split)
            part = part.dataset
        if isinstance(part, ConcatDataset):  # several datasets trained on as one (it was refused)
            for each in part.datasets:
                walk(each)
        elif isinstance(part, RegisteredDataset):
            found.append(part.dataset.dataset_id)
        else:
            held = f" holding a {type(part).__name__}" if part is not dataset else ""
            raise InvalidParameterError(
                f"{who}: pass datasets= (the registered datasets the training set holds); they are inferred only "
                f"from a provenance.torch.RegisteredDataset, and the training set is a {type(dataset).__name__}{held}")

    walk(dataset)
    return list(dict.fromkeys(found))


class BackgroundCommits:
    """Commits a training callback's checkpoints on a thread of their own, one at a time, so that
    training goes on while the ledger stores them.

    A checkpoint is a snapshot (a copy of the weights in CPU memory, or a PEFT adapter folder)
    taken when the trainer saves; at most one waits to be stored, so memory holds one copy of the
    model at most and a save waits only when the previous checkpoint is not stored yet. A local
    ledger is written through an instance of its own (a ledger's connection is not shared between
    threads); a remote one through the same client. A failed commit is raised in the training
    thread at the next save or when training ends."""

    def __init__(self, ledger: Any):
        self.ledger = ledger
        self._writer: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-commit")
        self._pending: tuple[Future, Callable[[Any], None]] | None = None

    def submit(self, commit: Callable[[Any], Any], done: Callable[[Any], None]) -> None:
        """Run ``commit(ledger)`` in the background, then ``done(its result)`` in this thread."""
        self.wait()
        self._pending = (self._pool.submit(self._run, commit), done)

    def _run(self, commit: Callable[[Any], Any]) -> Any:
        if self._writer is None:
            self._writer = _own_instance(self.ledger)
        return commit(self._writer)

    def poll(self) -> None:
        """Finish what has been stored already (its ``done``, or its error raised); never waits."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Wait for the checkpoint being stored; raise its error if it failed."""
        if self._pending is not None:
            (future, done), self._pending = self._pending, None
            done(future.result())

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait for the last checkpoint and stop the thread; ``raise_errors=False`` when training
        already failed (the run's own error is what matters then: the checkpoint's is dropped)."""
        try:
            if raise_errors:
                self.wait()
            elif self._pending is not None:
                (future, done), self._pending = self._pending, None
                if future.exception() is None:  # waits; a stored checkpoint is still reported
                    with contextlib.suppress(Exception):  # the run's own error is the one to raise
                        done(future.result())
        finally:
            self._pool.shutdown(wait=True)


def _own_instance(ledger: Any) -> Any:
    """The ledger to write from another thread: a new instance of a local one, else ``ledger``."""
    from provenance.ledger import LedgerStore

    if isinstance(ledger, LedgerStore):
        writer = type(ledger).open(ledger.root, lock_timeout=ledger.lock_timeout)
        writer.memory_limit = ledger.memory_limit  # DuckDB refuses a second connection configured otherwise
        return writer
    return ledger


def _holds(ledger: Any, version: Any, state: Any) -> bool:
    """Whether ``version`` holds exactly the tensors of ``state`` (a mapping of names to tensors)."""
    import torch

    if not isinstance(state, Mapping) or not state:
        return False
    stored = ledger.checkout(version)
    return set(stored) == set(state) and all(
        stored[name].dtype == tensor.dtype and stored[name].shape == tensor.shape and torch.equal(stored[name], tensor)
        for name, tensor in state.items())


def snapshot(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` in CPU memory that training can no longer change; an entry that is not
    a tensor (a module's ``get_extra_state``) is refused by name, as a commit would refuse it."""
    import torch

    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidParameterError(
                f"the model's state_dict entry {name!r} is a {type(value).__name__}, not a tensor (a module's "
                "get_extra_state?): a version holds tensors only; keep such state out of state_dict()")
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def failure(exc_type: type, exc: BaseException | None) -> str:
    """How a run that failed with ``exc`` records its error."""
    return f"{exc_type.__name__}: {exc}" if exc is not None and str(exc) else exc_type.__name__


class RunRecorder:
    """What the training callbacks share: a run started by process zero (the others attach to
    it), checkpoints committed on :class:`BackgroundCommits`, the final weights committed through
    the run, and a run ended failed when training raises (also as a context manager). A callback
    calls :meth:`_start_run`, :meth:`_save` and :meth:`_end_run` from its framework's events."""

    def _setup(self, ledger: Any, *, datasets: Any, message: str | None, base: Any, params: Mapping[str, Any] | None,
               commit_on_save: bool, flush_every: int | None) -> None:
        if message is not None and (not isinstance(message, str) or not message.strip()):
            raise InvalidParameterError(f"message must be a non-empty string, got {message!r}")
        from provenance.ledger import LedgerStore
        from provenance.remote import RemoteLedger

        if not isinstance(ledger, (LedgerStore, RemoteLedger)):  # it failed when training began, an AttributeError
            raise InvalidParameterError(
                f"ledger must be a Ledger (Ledger.open(PATH) or Ledger.open('http://HOST:PORT')), got "
                f"{type(ledger).__name__} {ledger!r:.80}")
        if datasets is not None and not isinstance(datasets, Collection):
            raise InvalidParameterError(
                f"datasets must name registered datasets (a list of names, or a mapping of names to epochs), got "
                f"{type(datasets).__name__} {datasets!r:.80}")
        if datasets is not None and not isinstance(datasets, str) and not len(datasets):  # its keys could not be logged
            raise InvalidParameterError(
                f"datasets={datasets!r} names no dataset: name the registered datasets the training set holds (or leave "
                "it out for a provenance.torch.RegisteredDataset)")
        if flush_every is not None and (isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1):
            raise InvalidParameterError(f"flush_every must be a positive integer, got {flush_every!r}")
        from provenance.runs import stored_params

        stored_params(params, None, message or "")  # refused now: it was refused once the starting weights were committed
        self.ledger = ledger
        self.datasets = [datasets] if isinstance(datasets, str) else datasets
        self.message = message
        self.base = base
        self.params = dict(params or {})
        self.commit_on_save = commit_on_save
        self.flush_every = flush_every
        self._run: Any = None  # provenance.runs.Run, once training begins (see run)
        self._early: list[tuple[Any, int]] = []  # keys trained on while the run starts: (keys, step)
        self.version: Any = None  # the VersionRecord the run committed
        self.checkpoints: dict[int, Any] = {}  # global_step -> VersionRecord of each save
        self._running = False
        self._owner = False  # whether this process started the run (the world's process zero)
        self._commits: BackgroundCommits | None = None  # the process that commits: checkpoints stored meanwhile
        self._last_save: int | None = None  # a save at the last step: its version is the run's

    @property
    def run(self) -> Any:
        """The run (a :class:`provenance.runs.Run`), once training has begun; a run still
        starting on the commit thread is waited for (and its error raised, if it failed)."""
        if self._run is None and self._commits is not None:
            self._commits.wait()
        return self._run

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._fail(failure(exc_type, exc))

    def _fail(self, reason: str) -> None:
        running, self._running = self._running, False
        last, self._last_trained = getattr(self, "_last_trained", None), None
        if last is not None and self._commits is not None and self._held_save is None:  # saved at the last step, but
            with contextlib.suppress(Exception):  # the run failed before its final commit stored those weights (they
                self._hold(self._last_save, last)  # were lost); the error that stopped training is the one to raise
        if getattr(self, "_held_save", None) is not None and self._commits is not None:
            self._commit_held_save()  # the trainer saved it: it is kept, as every checkpoint before it
        commits, self._commits = self._commits, None
        if commits is not None:
            commits.close(raise_errors=False)  # a run still starting has started (or failed to) after this
        if not running or self._run is None or self._run.record.status != "running":
            return
        from provenance.errors import ProvenanceError, RunEndedError

        if self._owner:
            with contextlib.suppress(RunEndedError):  # ended by another process meanwhile: the error that
                self._run.fail(reason)                # stopped training is the one to raise, not this
        else:  # process zero ends the run; the examples this process trained on are written first (they were lost)
            with contextlib.suppress(ProvenanceError):
                self._run.flush()

    def _start_run(self, *, owner: bool, alone: bool, starting: Callable[[], tuple[Any, dict[str, Any], Callable[[], None]]],
                   datasets: Any, message: str, params: Mapping[str, Any], broadcast: Callable[[Any], Any]) -> None:
        """Process zero (``owner``) commits the starting weights (``starting()`` gives the state,
        the commit's options and what removes the state once committed; not when ``base`` was
        given) and starts the run; ``broadcast`` sends its id to the others, which attach to it.

        A process training ``alone`` does that on the commit thread while the first steps train
        (their keys wait in :attr:`_early` until the run exists): the run's start costs training
        the copy of the starting weights, not a commit."""
        self._owner = owner
        previous = self.version  # the weights a previous fit ended with
        self.version, self.checkpoints, self._last_save, self._early = None, {}, None, []
        self._last_trained: Callable[[], tuple[Any, dict[str, Any], Callable[[], None]]] | None = None  # (_save)
        self._trained = 0  # batches this process trained (logged) in this run
        self._held_save: tuple[int, Callable[[Any], Any], Callable[[], None]] | None = None  # committed when a batch follows
        self._run = None
        if owner:
            from provenance.runs import declared_datasets

            options = {} if self.flush_every is None else {"flush_every": self.flush_every}
            base = self.base
            # a dataset that is not there, or epochs refused, fail now: no starting weights left behind
            declared_datasets(self.ledger, datasets)
            # with base= too: a second fit from the weights the first ended with was based on base=, and its
            # lineage lost the first fit's data
            state, commit_options, cleanup = starting() if base is None or previous is not None else (None, {}, lambda: None)
            try:  # trained again from the weights the callback's last run ended with: that run's version is the
                continued = previous is not None and _holds(self.ledger, previous, state)  # base: the lineage goes on
            except BaseException:
                cleanup()
                raise
            if continued:
                base, state = previous, None
            elif base is not None and state is not None:  # other weights: base= names them, as the caller said
                cleanup()
                state, commit_options, cleanup = None, {}, lambda: None
            elif params.get("start_step"):  # resumed: the steps before are another run's
                warn(f"ProvenanceCallback: training resumed at step {params['start_step']}: this run records the data "
                     "of the steps from there on, and its starting weights (the checkpoint's) are a version of no run; "
                     "the data of the steps before, logged by the run that saved the checkpoint, is not in this run's "
                     "lineage (docs/hugging-face.md, 'What is followed')")

            def start(ledger: Any) -> Any:
                try:
                    with one_session(ledger):
                        start_from = base if base is not None else ledger.commit(
                            state, message=f"{message}: starting weights", **commit_options)
                        return ledger.start_run(base=start_from, datasets=datasets, message=message,
                                                params={**params, **self.params}, **options)
                finally:
                    cleanup()

            self._commits = BackgroundCommits(self.ledger)
            if alone:
                self._commits.submit(start, self._started)
            else:
                self._started(start(self.ledger))
        if not alone:
            run_id = broadcast(self._run.run_id if owner else None)
            if not owner:
                self._run = self.ledger.attach_run(run_id)
        self._running = True

    def _started(self, run: Any) -> None:
        """The run exists: it writes through this thread's ledger from now on, and the keys of the
        steps trained meanwhile go into it."""
        if getattr(run, "ledger", self.ledger) is not self.ledger and type(run.ledger) is type(self.ledger):
            run.ledger = self.ledger  # started by the commit thread's own instance of a local ledger
        self._run = run
        early, self._early = self._early, []
        for keys, step in early:
            self._logged(keys, step)

    def _log(self, keys: Any, step: int) -> None:
        """Log the keys of a batch trained at ``step`` (kept until the run exists, while it starts)."""
        self._trained += 1
        if self._held_save is not None:  # a batch trained after the last save: that save was not the last
            self._commit_held_save()
        if self._run is None:
            self._commits.poll()
            if self._run is None:
                self._early.append((keys, step))
                return
        self._logged(keys, step)

    def _commit_held_save(self) -> None:
        step, commit, _ = self._held_save
        self._held_save = None
        self._commits.submit(commit, lambda version: self.checkpoints.__setitem__(step, version))

    def _logged(self, keys: Any, step: int) -> None:
        """The keys into the run (a list, or a dict of each dataset's: None for any of the run's);
        keys it refuses fail the run before the error stops training (a trainer with no hook for
        its exceptions would leave the run running)."""
        try:
            if isinstance(keys, dict):  # {dataset: its keys}: the parts of a batch of several loaders
                for dataset, part in keys.items():
                    self._run.log_examples(part, step=step, dataset=dataset)
            else:
                self._run.log_examples(keys, step=step)
        except InvalidParameterError as exc:
            self._fail(failure(type(exc), exc))
            raise

    def _save(self, step: int, *, last: bool, trained: Callable[[], tuple[Any, dict[str, Any], Callable[[], None]]]) -> None:
        """Commit the checkpoint saved at ``step`` on the callback's thread: ``trained()`` gives the
        state, the commit's options and what removes the state once committed. A save at the
        ``last`` step is not committed: the final commit, a moment later, stores these weights. So
        that a save the trainer makes at the end of its last epoch (no ``max_steps`` says it is
        the last) is not committed twice either, the commit waits for the next batch: training
        that ends first commits these weights as the run's version instead. Every process writes
        the keys it has trained so far first: a run killed after the save keeps the record of the
        steps the checkpoint was trained on (they waited in memory, 4 of 56 kept). Training that
        fails after a save at the ``last`` step (a reporting callback raising as it logs the
        metrics) commits that save as a checkpoint: the final commit never comes."""
        if self._running:  # (a run still starting is waited for: the keys of the first steps wait for it)
            self.run.flush()
        if not (self._running and self.commit_on_save and self._owner):
            return
        if self._held_save is not None and self._held_save[0] == step:  # two saves with no batch between (save_last,
            return  # or two ModelCheckpoints) hold the same weights: one version (it was committed twice)
        if self._held_save is not None:
            self._commit_held_save()
        if last:  # its weights are committed if training fails before the final commit (_fail)
            self._last_save, self._last_trained = step, trained
            return
        self._hold(step, trained)

    def _hold(self, step: int, trained: Callable[[], tuple[Any, dict[str, Any], Callable[[], None]]]) -> None:
        """The checkpoint saved at ``step`` (the updates made: it was trained on the examples of steps
        0 to ``step`` - 1), ready to commit when a batch follows (or training fails), as a checkpoint
        of the run (:meth:`provenance.runs.Run.checkpoint`)."""
        run_id, base = self.run.run_id, self.run.base  # (a run still starting is waited for: its base is the parent)
        message = f"{self.run.record.message}: checkpoint at step {step} of run {run_id[:12]}"
        state, options, cleanup = trained()

        def commit(ledger: Any) -> Any:
            # a checkpoint of the run (Run.checkpoint, on the commit thread's ledger: the examples were written
            # by the save, in the training thread), trained on the steps before the one it was saved at
            try:
                return ledger.commit(state, parent=base, checkpoint_of=run_id, step=max(step - 1, 0), message=message,
                                     **options)
            finally:
                cleanup()

        self._held_save = (step, commit, cleanup)

    def _end_run(self, *, barrier: Callable[[], None],
                 trained: Callable[[], tuple[Any, dict[str, Any], Callable[[], None]]],
                 last_save_is_final: bool = True) -> None:
        """Every process's examples written (``barrier``), process zero waits for its last
        checkpoint and commits ``trained()`` through the run, which ends it. A save after the last
        batch is that commit, unless ``last_save_is_final`` is false (the trainer loaded other
        weights back since: its best checkpoint's), when it is committed as a checkpoint of its own."""
        if not self._running:
            return
        if not self._owner:
            self.run.flush()  # process zero's are written by its commit
        barrier()
        if self._owner:
            if self._held_save is not None and not last_save_is_final:  # the version holds other weights
                self._commit_held_save()
            if self._held_save is not None:  # saved after the last batch: the run's version holds these weights
                (self._last_save, _, cleanup), self._held_save = self._held_save, None
                cleanup()
            commits, self._commits = self._commits, None
            commits.close()  # the last checkpoint is stored (or its error raised) before the run ends
            if not self._trained:  # a run that logged nothing counts whole declared epochs: its version would claim them
                self._running = False
                self.run.finish()
                warn(f"ProvenanceCallback: training ended before a batch was trained (no steps, or an empty training "
                     f"set), so run {self.run.run_id[:12]} ended without a version: its lineage would have counted "
                     "a whole epoch of its datasets")
                return
            state, options, cleanup = trained()
            try:
                with one_session(self.ledger):
                    self.version = self.run.commit(state, **options)
            finally:
                cleanup()
            if self._last_save is not None:
                self.checkpoints[self._last_save] = self.version
        self._running = False
