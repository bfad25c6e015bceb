"""Glue between provenance and training frameworks, one module per framework.

Each module imports its framework when it is itself imported (``provenance.integrations.transformers``
needs ``transformers``), so ``import provenance`` never does. They use the ledger only through the
facade's verbs (:class:`provenance.api.LedgerAPI`), so a local ledger and a ledger server serve alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from provenance.errors import InvalidParameterError

__all__ = ["BackgroundCommits", "one_session", "registered_datasets", "snapshot"]


def one_session(ledger: Any) -> contextlib.AbstractContextManager:
    """One connection for the few ledger calls a training event makes (a flush and a commit): a
    local ledger opens its database once for them, not once per call. The lock is held only
    for the event, so other processes (other ranks) write between events."""
    session = getattr(ledger, "session", None)
    return session() if callable(session) else contextlib.nullcontext()


def registered_datasets(dataset: Any, who: str) -> list[str]:
    """The registered dataset a training set is, when it is a :class:`provenance.torch.RegisteredDataset`;
    else an error asking ``who``'s user to name the datasets."""
    from provenance.torch import RegisteredDataset

    if isinstance(dataset, RegisteredDataset):
        return [dataset.dataset.dataset_id]
    raise InvalidParameterError(
        f"{who}: pass datasets= (the registered datasets the training set holds); they are inferred only "
        f"from a provenance.torch.RegisteredDataset, and the training set is a {type(dataset).__name__}")


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


def snapshot(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` in CPU memory that training can no longer change."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
