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
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from provenance.api import Ledger
from provenance.ledger._common import _now as _utcnow

T = TypeVar("T")


class LedgerService:
    """The ledger a server holds open, and the lock its calls run under."""

    def __init__(self, path: str | Path, *, auth: bool = True, max_upload: int = 64 << 30, lock_timeout: float = 2.0):
        self.ledger = Ledger.open(path, lock_timeout=lock_timeout)
        if self.ledger.read_only:
            from provenance.errors import LedgerReadOnlyError

            raise LedgerReadOnlyError(
                f"ledger {self.ledger.root} cannot be written by this process (its database file or folder is "
                "read-only), and a server writes to it: its clients' registrations, runs and tokens; serve a "
                "writable copy (prov backup), or read this one with --ledger PATH"
            )
        self.auth = auth
        self.max_upload = max_upload  # bytes of one uploaded body (document rows, examples, a model state)
        self.lock = self.ledger.write_lock  # writes, one at a time (a commit takes it for its transaction only)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.ledger.session())  # held for the server's life: no other writer
        self.ledger.concurrent = True  # reads run on their threads' own cursors, beside the write
        self._tokens: dict[str, tuple[float, Any]] = {}
        # Load the model and audit code (torch, the kernels) now, beside the start-up, so that the
        # first commit or merge a client sends does not wait for the imports.
        threading.Thread(target=_warm_up, name="provenance-warm-up", daemon=True).start()
        self.uploads = self.ledger.root / "tmp" / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one library call that writes (one at a time)."""
        with self.lock:
            return fn(*args, **kwargs)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one library call that only reads: beside the others and the write in progress."""
        return fn(*args, **kwargs)

    def check_token(self, secret: str) -> Any:
        """The live token for ``secret`` (None: unknown, revoked, expired), remembered for a few
        seconds: tokens change only through this server (it holds the ledger), which forgets them
        when they do. Each is remembered by its SHA-256, not as sent: the secrets of unknown tokens
        were kept whole, so 10,000 requests with a 1 MB header each held 10 GB of them."""
        hit, record = self.cached_token(secret)
        if hit:
            return record
        now = time.monotonic()
        record = self.read(self.ledger.check_token, secret)
        self._tokens[_digest(secret)] = (now + 5.0, record)
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        return record

    def cached_token(self, secret: str) -> tuple[bool, Any]:
        """``(True, record)`` when :meth:`check_token` knows ``secret`` without asking the ledger."""
        hit = self._tokens.get(_digest(secret))
        if hit is not None and hit[0] > time.monotonic():
            record = hit[1]
            if record is None or record.expires_at is None or record.expires_at > _utcnow():
                return True, record
        return False, None

    def forget_tokens(self) -> None:
        self._tokens.clear()

    def close(self) -> None:
        with self.lock:
            self._stack.close()
        import gc

        # What _warm_up froze is collected at exit again: left frozen, Triton's bindings printed
        # 30 lines of "nanobind: leaked ... instances ... a reference counting issue" at every stop.
        gc.unfreeze()


def _digest(secret: str) -> bytes:
    """What :class:`LedgerService` remembers a token by: 32 bytes, however long the secret sent."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


async def body_chunks(request: Any, limit: int) -> AsyncIterator[bytes]:
    """The pieces of a request's body as they arrive; more than ``limit`` bytes, or a client that
    goes away before the end, is an :class:`InvalidParameterError` saying so."""
    from starlette.requests import ClientDisconnect

    from provenance.errors import InvalidParameterError

    size = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            size += len(chunk)
            if size > limit:
                raise InvalidParameterError(f"the body is larger than this server's upload limit ({limit:,} bytes)")
            yield chunk
    except ClientDisconnect:
        raise InvalidParameterError(f"the upload stopped after {size:,} bytes: the client went away") from None


def _warm_up() -> None:
    import importlib

    for module in ("provenance.versions", "provenance.merges", "provenance.uploads", "provenance.audits",
                   "provenance.gate", "provenance.memorization"):
        try:
            importlib.import_module(module)
        except Exception:  # the request that needs it will say what is wrong
            pass
    import gc

    # What is loaded now lives as long as the server: the collector need not walk it again on
    # every full collection (torch alone is a few hundred thousand objects).
    gc.collect()
    gc.freeze()
