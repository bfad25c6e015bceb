"""Write transactions: everything a :class:`~provenance.ledger.writer.LedgerWriter` does lands
whole or not at all, one transaction of this process at a time; an idempotent write a server
handles records its key in the same commit (:data:`WRITE_KEY`); each write takes a number that
lands with it, recorded after the commit (:mod:`provenance.ledger.commits`); an interrupt that
comes as the COMMIT returns undoes nothing. A scratch transaction (an audit that stores nothing)
is always rolled back. Mixed into :class:`~provenance.ledger.LedgerStore`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator

import duckdb

from provenance.errors import LedgerDamagedError, LedgerReadOnlyError, ProvenanceError
from provenance.ledger._common import TMP_DIR, _now
from provenance.ledger.staging import clean_staging
from provenance.ledger.writer import LedgerWriter

#: Set by a ledger server while it handles a write sent with an Idempotency-Key: ``(key, token,
#: method, path)``. Each transaction committed meanwhile records the key (status 0: applied, answer
#: not yet stored) in the same commit, so a retry after a crash is never applied a second time.
WRITE_KEY: contextvars.ContextVar[tuple[str, str | None, str, str] | None] = contextvars.ContextVar(
    "provenance_write_key", default=None)


@contextlib.contextmanager
def preliminary() -> Iterator[None]:
    """Transactions inside are a step before the write a request's Idempotency-Key names (the
    pre-merge gate's stored audit before the merge): they do not record the key, so a retry after
    a crash between the step and the write does the write instead of reporting it applied."""
    mark = WRITE_KEY.set(None)
    try:
        yield
    finally:
        WRITE_KEY.reset(mark)


def _rolled_back(con) -> bool:
    """Roll back the transaction open on ``con``: True, or False when none is open because its
    COMMIT landed (an interrupt raised as the COMMIT returned must not undo what it wrote: the
    files of its Parquet document folders). Any other failure to roll back counts as rolled back,
    as before (the database is damaged or closed; the error is the caller's to report)."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        return "no transaction is active" not in str(exc)
    except Exception:
        return True
    return True


class Transactions:
    """Write and scratch transactions (``self`` is a :class:`~provenance.ledger.LedgerStore`)."""

    @contextlib.contextmanager
    def transaction(self, *, scratch: bool = False) -> Iterator[LedgerWriter]:
        """A write transaction: everything done through the writer lands whole or not at all.

        ``scratch``: an audit that stores nothing. Its pairs go to a temporary ``audit_pairs``
        that shadows the ledger's, ``insert_audit`` does nothing, and the transaction is always
        rolled back; it works on a read-only ledger."""
        if self._in_transaction:
            raise ProvenanceError("transactions do not nest")
        if scratch:
            with self._scratch() as writer:
                yield writer
            return
        if self.read_only:
            raise LedgerReadOnlyError(
                f"ledger {self.root} is open read-only (opened with read_only=True, or its database file or folder "
                "cannot be written); this command writes to it"
            )
        tmp = self.root / TMP_DIR
        if tmp.exists() and not tmp.is_dir():  # a write stages its files there
            raise LedgerDamagedError(
                f"{tmp} is a file, not the ledger's temporary folder: move it aside (mv {tmp} {tmp}.moved); "
                "the ledger keeps the files of writes in progress there and makes the folder again")
        with self.write_lock, self._cursor() as con:
            staging = clean_staging(self.root)
            con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            writer = LedgerWriter(con, staging, store=self)
            refused = False  # DuckDB's COMMIT failed (a log the disk refuses): nothing landed, none is open
            try:
                yield writer
                pending = WRITE_KEY.get()
                if pending is not None:  # a server's idempotent write: its key lands with what it wrote
                    key, token, method, path = pending  # with what it made, for a retry that lost its answer
                    con.execute("INSERT INTO idempotency (idempotency_key, token, method, path, status, content_type, "
                                "body, created_at) VALUES (?, ?, ?, ?, 0, 'application/json', ?, ?) "
                                "ON CONFLICT (idempotency_key) DO UPDATE SET body = encode(json_merge_patch("
                                "decode(idempotency.body), decode(excluded.body))::VARCHAR) WHERE idempotency.status = 0",
                                [key, token, method, path, json.dumps(writer.made, sort_keys=True).encode(), _now()])
                number = self._next_write(con)  # lands with the write, or is lost with it (ledger.commits)
                try:
                    con.execute("COMMIT")  # a log the disk refuses fails here, and is rolled back below
                except duckdb.Error:
                    refused = True
                    raise
            except BaseException:  # rolled back; _cursor then reports a damaged database or a full disk as such
                if refused:
                    with contextlib.suppress(Exception):
                        con.execute("ROLLBACK")
                elif not _rolled_back(con):  # an interrupt (Ctrl-C) as the COMMIT returned: the write landed
                    self._landed(writer, number)
                    raise
                with contextlib.suppress(Exception):
                    writer.restore_after_rollback()
                for folder in writer.new_folders:  # Parquet document files the rollback dropped
                    with contextlib.suppress(Exception):
                        self.document_store.remove_folder(folder)
                raise
            else:  # committed: nothing here may undo it
                self._landed(writer, number)
            finally:
                self._in_transaction = False
                if writer.new_folders:
                    self.documents_changed()

    def _landed(self, writer: LedgerWriter, number: int) -> None:
        """After a commit: what it made is told first (a Ctrl-C meanwhile says what was kept),
        then its number recorded (:mod:`provenance.ledger.commits`)."""
        if writer.made:
            self.committed.append(dict(writer.made))
        self._record_write(number)

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[LedgerWriter]:
        with self._cursor() as con:
            con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                con.execute("CREATE TEMP TABLE audit_pairs AS SELECT * FROM audit_pairs LIMIT 0")
                yield LedgerWriter(con, self.root / TMP_DIR / "staging", scratch=True, store=self)
            finally:
                self._in_transaction = False
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                with contextlib.suppress(Exception):
                    con.execute("DROP TABLE IF EXISTS temp.audit_pairs")
