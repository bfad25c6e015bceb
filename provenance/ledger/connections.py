"""Connections to a ledger's database: opening one (waiting up to ``lock_timeout`` for another
process's lock, then :class:`~provenance.errors.LedgerLockedError`, naming ``prov serve`` when it
holds the ledger), sessions that keep one open for several operations, per-thread cursors for a
server, and what a DuckDB error means for the ledger (a full disk, a damaged database or Parquet
document file). Mixed into :class:`~provenance.ledger.LedgerStore`; every query goes through
:meth:`Connections._cursor`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from provenance.errors import (
    LedgerDamagedError,
    LedgerLockedError,
    LedgerNotFoundError,
    ProvenanceError,
    StorageFullError,
    StorageUnreachableError,
)
from provenance.ledger._common import ARROW_TABLES, LEDGER_DIR, TMP_DIR
from provenance.ledger.documents_view import UNREACHABLE

if TYPE_CHECKING:
    from provenance.ledger import LedgerStore

#: Written by ``prov serve`` in the ledger folder while it serves it: its process id and URL, so
#: that a process the ledger's lock refuses is told to use the server instead of retrying.
SERVING_FILE = "serving.json"


class Connections:
    """Connections, sessions and cursors, and the errors DuckDB raises through them (``self`` is
    a :class:`~provenance.ledger.LedgerStore`)."""

    def _connect(self, *, read_only: bool = False, external: bool = True) -> duckdb.DuckDBPyConnection:
        # The memory limit holds for reading too (verify, taint, backup read every signature: without
        # it their memory grew with the database, 3 GB for a 3.3 GB ledger); what does not fit spills
        # to the ledger's temporary folder, or the system's where the ledger cannot be written.
        config: dict[str, Any] = {"threads": max(1, os.cpu_count() or 1), "memory_limit": self.memory_limit}
        spill = self.root / TMP_DIR
        if read_only:
            usable = spill.is_dir() and os.access(spill, os.W_OK)
        else:  # a file there is named by the next write (LedgerStore.transaction); reads go on meanwhile
            usable = spill.is_dir() or not spill.exists()
        if usable:
            config["temp_directory"] = str(spill)
        else:
            config["temp_directory"] = str(Path(tempfile.gettempdir()) / f"prov-duckdb-{os.getpid()}")
        if not self._creating and not self.db_path.exists():  # DuckDB would make an empty database there
            raise LedgerNotFoundError(
                f"no ledger at {self.root} ({self.db_path} does not exist): open a project folder or its {LEDGER_DIR} "
                "with Ledger.open(path), or make a ledger with Ledger.init(path)")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                with ARROW_TABLES:  # a new connection sets up the Python scans a registration uses
                    con = duckdb.connect(str(self.db_path), read_only=read_only, config=config)
            except duckdb.IOException as exc:
                message = str(exc)
                if "lock" not in message.lower():
                    raise self._damaged(exc) or ProvenanceError(f"cannot open ledger {self.db_path}: {message}") from exc
                if time.monotonic() >= deadline:
                    holder = re.search(r"\(PID (\d+)\)", message)
                    who = f"process {holder.group(1)}" if holder else "another process"
                    served = self._served_by(int(holder.group(1))) if holder else None
                    if served is not None:
                        raise LedgerLockedError(
                            f"ledger {self.root} is served by `prov serve` ({who}){served}: while it runs, "
                            "use the ledger through it (--ledger URL, or Ledger.open(URL, token=...), with a token in "
                            "PROV_TOKEN), or stop it first") from exc
                    raise LedgerLockedError(
                        f"ledger {self.root} is in use by {who}; waited {self.lock_timeout:g}s. "
                        "Retry when it finishes, or wait longer (--wait SECONDS; in Python, Ledger.open(..., lock_timeout=SECONDS))."
                    ) from exc
                time.sleep(0.1)
                continue
            except duckdb.Error as exc:  # replaying a damaged write-ahead log raises a plain duckdb.Error
                raise self._damaged(exc) or ProvenanceError(f"cannot open ledger {self.db_path}: {exc}") from exc
            # DuckDB's own progress bar drew on the process's stdout for a query of over 2 s (a
            # registration copying many shards, a long `prov sql --json`): into output meant as JSON
            con.execute("SET enable_progress_bar = false")  # (a session setting: its cursors inherit it)
            if not external:  # user SQL: only the ledger's own files, through the documents view
                self.confine(con)
            return con

    def _served_by(self, pid: int) -> str | None:
        """When process ``pid`` is the ``prov serve`` serving this ledger: `` at URL`` (or an
        empty string when its URL is not known), else None."""
        try:
            serving = json.loads((self.root / SERVING_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(serving, dict) or serving.get("pid") != pid:
            return None
        return f" at {serving['url']}" if isinstance(serving.get("url"), str) else ""

    @contextlib.contextmanager
    def session(self) -> Iterator[LedgerStore]:
        """Keep one connection open for several operations (and the lock held meanwhile)."""
        with self._session_lock:  # a server's threads open and close sessions beside each other
            if self._con is None:
                self._con = self._connect(read_only=self.read_only)
                self._owner = threading.get_ident()  # the thread that queries on the connection itself
                self._view_generations.clear()
            self._depth += 1
        try:
            yield self
        finally:
            with self._session_lock:
                self._depth -= 1
                last = self._depth == 0
            if last:
                con, self._con = self._con, None
                self._view_generations.clear()
                with self._cursor_lock:
                    cursors, self._cursors = self._cursors, []
                with ARROW_TABLES:  # closing drops the connection's Python scans
                    for c in cursors:
                        with contextlib.suppress(Exception):
                            c.close()
                    con.close()

    def _thread_cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the session's database (made on first use)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None or getattr(self._local, "parent", None) is not self._con:
            with self._cursor_lock, ARROW_TABLES:
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cursor, self._local.parent = cur, self._con
        return cur

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.session():
            assert self._con is not None
            try:
                # another thread of this process (a server's, or a caller's own) queries on a cursor of its
                # own: two threads on one DuckDB connection failed ("connection is busy") or read each
                # other's rows
                mine = not self.concurrent and self._owner == threading.get_ident()
                con = self._con if mine else self._thread_cursor()
                if self._view_generations.get(id(con)) != self._documents_generation:
                    self._view_generations[id(con)] = self._documents_view(con)
                yield con
            except duckdb.Error as exc:
                self._raise_if_known(exc)
                raise

    # What DuckDB says of a truncated or corrupt database file; a read error counts only when it
    # names the database file itself (not, say, a staging Parquet file).
    _DAMAGE_SIGNS = ("not a valid duckdb database", "corrupt", "checksum", "invalid block")
    _READ_SIGNS = ("could not read enough bytes", "failed to read", "serialization")
    # What DuckDB says of a Parquet file whose bytes are damaged, without naming the file (a
    # message that names a file outside .prov/documents/ is about that file: a staged part).
    _PARQUET_SIGNS = ("tprotocolexception", "decompress", "zstd")

    #: What DuckDB says when the disk refuses a write (the database, its log, a spill or COPY file).
    _FULL_SIGNS = ("no space left on device", "file too large", "disk quota exceeded")

    def _raise_if_known(self, exc: Exception) -> None:
        """Raise a DuckDB error the ledger can say more of: a full disk (:class:`StorageFullError`)
        or a damaged file (:meth:`_damaged`); anything else is left to the caller."""
        lowered = str(exc).lower()
        if any(sign in lowered for sign in self._FULL_SIGNS):
            raise StorageFullError(
                f"the disk refused a write ({str(exc).splitlines()[0]}); nothing of this command was kept: free "
                "space (or raise the quota) and run it again") from exc
        damaged = self._damaged(exc)
        if damaged is not None:
            raise damaged from exc

    def _damaged(self, exc: Exception) -> LedgerDamagedError | StorageUnreachableError | None:
        """A :class:`LedgerDamagedError` naming the file and the recovery step when ``exc`` says
        the database file is truncated or corrupt (else None: some other failure)."""
        message = str(exc)
        docs = getattr(self, "_document_store", None)
        if str(self.documents_path) in message or (docs is not None and docs.url and docs.url in message):
            # a Parquet document file: missing, cut or not Parquet
            first = message.splitlines()[0]
            if UNREACHABLE in first:  # a bucket that did not answer (documents_view): no damage to tell
                return StorageUnreachableError(re.sub(r"^[A-Za-z ]*Error: ", "", first))
            return LedgerDamagedError(re.sub(r"^[A-Za-z ]*Error: ", "", first) if "restore it" in first else
                                      f"a Parquet document file of the ledger cannot be read ({first}); restore it "
                                      "from a backup of the ledger (`prov verify` lists every damaged file)")
        lowered = message.lower()
        if (any(sign in lowered for sign in self._PARQUET_SIGNS) and ".parquet" not in lowered
                and (self.documents_path.is_dir() or (docs is not None and docs.url))):
            return LedgerDamagedError(
                f"a Parquet document file of the ledger cannot be read ({message.splitlines()[0]}); "
                "`prov verify --objects` finds which, then restore it from a backup of the ledger")
        wal = self.db_path.with_name(self.db_path.name + ".wal")
        if str(wal) in message and "corrupt" in message.lower():
            return LedgerDamagedError(
                f"the ledger's write-ahead log {wal} is damaged ({message.splitlines()[0]}); it holds the writes "
                f"committed since {self.db_path.name} was last checkpointed. Restore the ledger from a backup copy; or "
                f"move the log aside (mv {wal} {wal}.damaged) to open the ledger as it was at that checkpoint, "
                "without those writes: the next command then says which writes that loses, and how to go on")
        # a log beside a database it was not written for (DuckDB names the log in some of these messages only)
        if "checkpoint iteration does not match" in lowered or "wal does not match database file" in lowered:
            return LedgerDamagedError(self._foreign_log(wal, message))
        names_db = str(self.db_path) in message
        if not (any(sign in lowered for sign in self._DAMAGE_SIGNS)
                or (names_db and any(sign in lowered for sign in self._READ_SIGNS))):
            return None
        return LedgerDamagedError(
            f"the ledger database {self.db_path} is damaged ({message.splitlines()[0]}). Restore it from a backup "
            f"copy; without one, move it aside, run `prov init {self.root.parent}` and register the data and commit "
            f"the models again (objects already in {self._objects_where()} are reused, not rewritten)"
        )

    def _foreign_log(self, wal: Path, message: str) -> str:
        """What to say of a write-ahead log DuckDB refuses to replay because it was written for
        another state of the database file (``File checkpoint iteration: N, WAL checkpoint
        iteration: M``) or for another database: a ledger folder copied (``cp -r``) while a
        process wrote to it, or one of its two files put back from elsewhere."""
        db = self.db_path.name
        aside = f"mv {wal} {wal}.stale"
        found = re.search(r"File checkpoint iteration: (\d+), WAL checkpoint iteration: (\d+)", message)
        if found and int(found[1]) > int(found[2]):  # the file was checkpointed after the log: it holds its writes
            return (f"the ledger's write-ahead log {wal} was written before {db} was last checkpointed (the file is at "
                    f"checkpoint {found[1]}, the log at {found[2]}), so its writes are in the file already: a ledger "
                    "folder copied while a process wrote to it (cp -r) or a log put back from elsewhere leaves this. "
                    f"Move the log aside ({aside}) and run the command again; the ledger's record of committed writes "
                    "then says whether any write is missing")
        if found:  # the log holds writes made after the state the file holds
            what = (f"{self.db_path} is older than its write-ahead log {wal} (the file is at checkpoint {found[1]}, the log at "
                    f"{found[2]}): the database file was replaced by an older copy (a backup's, or one copied while a "
                    "process wrote to the ledger) and the log holds writes made after it, which cannot be applied to it")
        else:
            what = (f"the ledger's write-ahead log {wal} was written for another database than {db} (a log put back "
                    "from another ledger, or a folder copied while a process wrote to it)")
        return (f"{what}. Put back the database file the log belongs to; or restore the whole ledger folder from a "
                f"backup copy; or move the log aside ({aside}) to open {db} as it is: the next command then says "
                "which writes that loses, and how to go on")
