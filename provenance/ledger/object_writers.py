"""The commits of this process that are writing objects, and the garbage collection that must not
run beside them: :class:`ObjectWriters`, held by each :class:`~provenance.ledger.LedgerStore` as
``object_writers``. Kept apart because it is process state (a condition variable), not storage.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from provenance.errors import LedgerLockedError


class ObjectWriters:
    """Commits writing objects in this process, and the garbage collection that must not run
    beside them (it would remove their objects before their version refers to them).

    A commit holds :meth:`writing` while it writes objects; several may. :meth:`collecting` is
    held by ``gc``, which also holds the write lock: a commit that starts meanwhile waits for it,
    and ``gc`` refuses to start while commits are writing (it cannot wait for them under the
    write lock: they need it for their transactions)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writing = 0
        self._started = 0  # writes started so far: a write that fails asks whether any began beside it
        self._collecting = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[int]:
        """Hold while writing objects; yields this write's number among those started (for
        :meth:`if_alone`)."""
        with self._cond:
            while self._collecting:
                self._cond.wait()
            self._writing += 1
            self._started += 1
            started = self._started
        try:
            yield started
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def if_alone(self, fn: Any, started: int | None = None) -> bool:
        """Call ``fn`` (a failed write removing the objects it added) when the caller is the one
        write of objects now and, given ``started`` (what its :meth:`writing` yielded), no other
        began since it did (one that began and ended meanwhile may have found an object there and
        kept a version that uses it); else leave them: ``gc`` removes what stays unreferenced."""
        with self._cond:
            if self._writing > 1 or (started is not None and self._started != started):
                return False
            fn()
            return True

    @contextlib.contextmanager
    def collecting(self, what: str = "collect garbage") -> Iterator[None]:
        """Held by ``gc`` (and ``verify`` repairing): ``what`` it does, for the refusal."""
        with self._cond:
            if self._writing:
                raise LedgerLockedError(f"{self._writing} commit(s) are writing objects; {what} when they finish")
            self._collecting = True
        try:
            yield
        finally:
            with self._cond:
                self._collecting = False
                self._cond.notify_all()
