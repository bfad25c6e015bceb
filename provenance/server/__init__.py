"""``prov serve``: one process owns the ledger and serves it over HTTP (FastAPI on uvicorn).

DuckDB lets one process write a database file; the server is that process, so training jobs on
many machines log into one ledger through it. It opens the ledger once (refusing one another
process holds) and runs the library's own verbs, one at a time under a lock: the typed records
and results go out as their JSON, document rows and examples come in as Arrow IPC streams, and
tensors as safetensors files. See :mod:`provenance.server.app` for the HTTP side (auth,
idempotency, the access log) and :mod:`provenance.server.routes` for the resources.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from provenance.api import Ledger

T = TypeVar("T")


class LedgerService:
    """The ledger a server holds open, and the lock its calls run under."""

    def __init__(self, path: str | Path, *, auth: bool = True, max_upload: int = 64 << 30, lock_timeout: float = 2.0):
        self.ledger = Ledger.open(path, lock_timeout=lock_timeout)
        if self.ledger.read_only:
            from provenance.errors import LedgerReadOnlyError

            raise LedgerReadOnlyError(f"ledger {self.ledger.root} cannot be written by this process; a server writes")
        self.auth = auth
        self.max_upload = max_upload  # bytes of one uploaded body (document rows, examples, a model state)
        self.lock = threading.RLock()  # writes, one at a time
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.ledger.session())  # held for the server's life: no other writer
        self.ledger.concurrent = True  # reads run on their threads' own cursors, beside the write
        self.uploads = self.ledger.root / "tmp" / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one library call that writes (one at a time)."""
        with self.lock:
            return fn(*args, **kwargs)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one library call that only reads: beside the others and the write in progress."""
        return fn(*args, **kwargs)

    @contextlib.contextmanager
    def held(self) -> Iterator[Ledger]:
        with self.lock:
            yield self.ledger

    def close(self) -> None:
        with self.lock:
            self._stack.close()
