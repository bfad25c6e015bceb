"""A record of the writes committed, kept beside the database, so that a database that lost some
is told from one that did not.

DuckDB keeps the writes committed since its last checkpoint in the write-ahead log
``ledger.duckdb.wal``. A log cut short or with its header damaged is not an error to DuckDB: it
replays what it can read and drops the rest, so the ledger opened without the writes at its end,
and nothing said so (a run's 20,000 logged examples, a tag). Each write transaction now takes the
next number of the sequence ``committed_writes`` (in the transaction, so the number lands or is
lost with the write; numbers of transactions rolled back are skipped), and after its commit the
highest number committed is written to ``.prov/writes.json``. Opening a ledger whose database ends
below that number raises :class:`~provenance.errors.LedgerDamagedError` naming both, before
anything else is read or written. The file is written by rename and not synced: the log is synced
at each commit first, so after a power cut the file may be older than the database (which the
check allows), never newer. It names the ledger by its ``created_at``, so a file left by another
database (one moved aside, then ``prov init``) is not compared. Mixed into
:class:`~provenance.ledger.LedgerStore`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from provenance.errors import LedgerDamagedError

if TYPE_CHECKING:
    from provenance.ledger import LedgerStore

#: The file in the ledger folder that holds the highest write number committed.
WRITES_FILE = "writes.json"

#: The sequence whose numbers the write transactions take (migration 0014).
SEQUENCE = "committed_writes"

_RECORDING = threading.Lock()  # one process's threads (and ledgers) writing the file in turn


class CommitRecord:
    """Numbering the write transactions and checking the database against the record (``self``
    is a :class:`~provenance.ledger.LedgerStore`)."""

    def _ledger_key(self: LedgerStore, con: duckdb.DuckDBPyConnection) -> str | None:
        """What names this database in the record: its ``created_at`` setting."""
        if self._created_at is None:
            self._created_at = self._meta("created_at", con)
        return self._created_at

    def _next_write(self: LedgerStore, con: duckdb.DuckDBPyConnection) -> int:
        """The number of the write transaction open on ``con`` (taken just before it commits;
        the ledger's key is read then too, so that recording it after the commit reads nothing)."""
        self._ledger_key(con)
        return int(con.execute(f"SELECT nextval('{SEQUENCE}')").fetchall()[0][0])

    def _record_write(self: LedgerStore, number: int) -> None:
        """Record write ``number`` as committed (after its commit, still holding the ledger).
        A record that cannot be written (a full disk) is left as it was: the check is then only
        weaker, and the write that landed is not reported as failed."""
        key = self._created_at
        path = self.root / WRITES_FILE
        with _RECORDING:
            recorded = _read(path)
            if recorded is not None and recorded[0] == key and recorded[1] >= number:
                return  # another thread of this process committed a later write first
            tmp = path.with_name(f".{WRITES_FILE}.tmp")  # one writer at a time: the ledger's lock, then this one
            try:
                tmp.write_text(json.dumps({"ledger": key, "committed": number}) + "\n", encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _check_writes(self: LedgerStore, con: duckdb.DuckDBPyConnection) -> None:
        """Raise :class:`LedgerDamagedError` when the database ends below the highest write
        number recorded as committed."""
        path = self.root / WRITES_FILE
        recorded = _read(path)
        if recorded is None or recorded[0] != self._ledger_key(con):
            return
        held = _held(con)
        if held >= recorded[1]:
            return
        wal = self.db_path.with_name(self.db_path.name + ".wal")
        raise LedgerDamagedError(
            f"ledger {self.root} lost committed writes: its database ends at write number {held}, but write number "
            f"{recorded[1]} was committed ({path} records the last after each commit). The writes after number "
            f"{held} were in the write-ahead log {wal}, which is cut short, damaged or gone. Restore the ledger from "
            f"a backup copy; or, to go on with the ledger as it is, without them, move the record aside (mv {path} "
            f"{path}.lost); `prov gc` then lists the objects those writes stored. If you put back an older database "
            "file on purpose, move the record aside the same way")

    def _record_held(self: LedgerStore) -> None:
        """Record the database's last write number as committed (a backup's copy: its record
        starts at what it holds)."""
        with self._cursor() as con:
            self._ledger_key(con)
            if held := _held(con):
                self._record_write(held)


def _held(con: duckdb.DuckDBPyConnection) -> int:
    """The last write number the database holds (0: none yet, or a ledger older than the sequence)."""
    row = con.execute("SELECT last_value FROM duckdb_sequences() WHERE sequence_name = ?", [SEQUENCE]).fetchall()
    return int((row[0][0] if row else None) or 0)


def _read(path: Path) -> tuple[str | None, int] | None:
    """The record at ``path``: ``(ledger, committed)``; None when there is none, or it cannot be
    read (a record cut short by a crash names nothing, so nothing is compared)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("committed"), int):
        return None
    return data.get("ledger"), data["committed"]
