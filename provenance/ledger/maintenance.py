"""What ``prov gc``, ``prov verify`` and ``prov backup`` ask of the ledger folder besides its
queries: the leftovers of killed processes in ``.prov/tmp`` (DuckDB's spill files, the Ray
engines' folders, a registration's staged files) and a checkpointed copy of the database file.
Mixed into :class:`~provenance.ledger.LedgerStore`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

from provenance.errors import LedgerDamagedError, ProvenanceError
from provenance.files import copy_apart, host_label, process_alive
from provenance.ledger._common import TMP_DIR, quote_identifier, tree_bytes
from provenance.ledger.staging import clean_staging, staging_entries

_SPILL = re.compile(r"duckdb_temp_\d+_")  # DuckDB's temporary files, named by the process that made them
#: ``.prov/tmp/ray``: the Ray engines' folders (``prov-ray-HOST-PID-…``, ``prov-ray-dedup-HOST-PID-…``), by default.
RAY_DIR = "ray"
_RAY = re.compile(r"prov-ray-(?:dedup-)?(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")


#: ``.prov/tmp/uploads``: the bodies ``prov serve`` received (document rows kept until registered,
#: states and examples while a write reads them).
UPLOADS_DIR = "uploads"
#: Seconds after which an upload is a leftover: a client that died between sending its rows and
#: registering them, or a server killed while it received a body (a client's retry takes seconds).
UPLOAD_MAX_AGE = 86_400
#: What provenance keeps in ``.prov/tmp``: DuckDB's spill files and the folders of uploads, Ray engines and staged rows.
_OURS = re.compile(rf"duckdb_temp_.*|{UPLOADS_DIR}|{RAY_DIR}|staging")


class Maintenance:
    """Leftovers in ``.prov/tmp`` and database snapshots (``self`` is a
    :class:`~provenance.ledger.LedgerStore`)."""

    def stale_spill_files(self) -> list[Path]:
        """DuckDB's spill files in ``.prov/tmp`` (``duckdb_temp_PID_…``) of processes other than
        this one: a process killed during a query larger than the memory limit leaves them (a
        gigabyte after a 1M-document audit). A connection spills there only while it holds the
        database's lock (shared for reading, exclusive for writing): while this process holds the
        lock for writing, no other one is spilling."""
        folder = self.root / TMP_DIR
        if not folder.is_dir():
            return []
        mine = f"duckdb_temp_{os.getpid()}_"
        return sorted(p for p in folder.iterdir()
                      if _SPILL.match(p.name) and not p.name.startswith(mine) and p.is_file())

    def stale_uploads(self, max_age: float = UPLOAD_MAX_AGE) -> list[Path]:
        """The files in ``.prov/tmp/uploads`` not touched for ``max_age`` seconds: document rows a
        client uploaded and never registered (it died in between), and bodies a server killed
        mid-request left. A younger one may be a registration about to be sent: left alone."""
        folder = self.root / TMP_DIR / UPLOADS_DIR
        if not folder.is_dir():
            return []
        now, found = time.time(), []
        for p in sorted(folder.iterdir()):
            with contextlib.suppress(OSError):  # gone meanwhile: registered
                if p.is_file() and not p.is_symlink() and now - p.stat().st_mtime > max_age:
                    found.append(p)
        return found

    def foreign_temporaries(self) -> list[tuple[Path, int]]:
        """What ``.prov/tmp`` holds that provenance does not write there (a file put there by hand,
        another tool's), with its bytes: ``prov gc`` names it and leaves it alone."""
        folder = self.root / TMP_DIR
        if not folder.is_dir():
            return []
        found = []
        for entry in sorted(folder.iterdir()):
            if not _OURS.fullmatch(entry.name):
                with contextlib.suppress(OSError):  # gone meanwhile
                    found.append((entry, tree_bytes(entry) if entry.is_dir() and not entry.is_symlink()
                                  else entry.lstat().st_size))
        return found

    def ray_folder(self) -> Path:
        """``.prov/tmp/ray``, made if missing: where the Ray engines write their files unless
        given a staging folder (:func:`provenance.integrations.ray_data.work_folder`)."""
        folder = self.root / TMP_DIR / RAY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def stale_ray_folders(self) -> list[tuple[Path, int]]:
        """The Ray engines' folders in ``.prov/tmp/ray`` whose process is no longer running (a
        Ray registration or dedup audit killed before it removed its folder), with their bytes.
        Each folder is named by its machine and process id: one made on another machine (a
        ledger on a shared file system) is never taken for stale, nor one whose process runs."""
        folder = self.root / TMP_DIR / RAY_DIR
        if not folder.is_dir():
            return []
        found, here = [], host_label()
        for entry in sorted(folder.iterdir()):
            m = _RAY.fullmatch(entry.name)
            if (m and m["host"] == here and entry.is_dir() and not entry.is_symlink()
                    and not process_alive(int(m["pid"]))):
                with contextlib.suppress(OSError):  # gone meanwhile
                    found.append((entry, tree_bytes(entry)))
        return found

    def stale_staging(self, *, remove: bool = False) -> list[tuple[str, int]]:
        """The files and folders a registration killed mid-write left in ``.prov/tmp/staging``,
        with their bytes; with ``remove``, removed. They stay until then, or until the next write
        transaction clears the folder before it stages anything. Call it holding the ledger's
        lock (no registration is staging meanwhile)."""
        found = [(str(p), n) for p, n in staging_entries(self.root)]
        if remove:
            clean_staging(self.root)
        return found

    def unlisted_document_folders(self) -> dict[str, int]:
        """The folders of Parquet document files (``NAME/TAG`` in ``.prov/documents/`` or the
        ledger's documents bucket) that hold no file a dataset lists, with their bytes: what a
        registration killed between writing them and its commit left. Call it holding the
        ledger's lock (no registration is renaming its folder into place meanwhile)."""
        store = self.document_store
        listed = {store.folder_of(f["path"]) for f in self.document_files()}
        return store.folders(skip=listed)

    def unreadable_tables(self) -> dict[str, str]:
        """Every row of every table of the database read (each column's blocks, whose checksums
        DuckDB checks as it reads them): the tables that cannot be read, each with its damage. A
        corrupt block is found only when a query reads it, so without this ``prov verify`` and a
        backup's check said ``ok`` of a database whose documents could not be queried."""
        with self._cursor() as con:
            tables = con.execute("SELECT database_name, schema_name, table_name FROM duckdb_tables() "
                                 "WHERE NOT temporary AND database_name = current_database() ORDER BY 3").fetchall()
        found = {}
        for database, schema, table in tables:
            name = ".".join(map(quote_identifier, (database, schema, table)))
            try:
                with self._cursor() as con:
                    con.execute(f"SELECT bit_xor(hash(t)) FROM {name} AS t").fetchall()  # hash(t): the whole row
            except LedgerDamagedError as exc:
                found[table] = str(exc)
        return found

    def snapshot_database(self, dest: Path) -> int:
        """Copy the database file, checkpointed first (so the copy needs no write-ahead log), to
        ``dest``; returns its bytes. Holds the ledger meanwhile: no write lands half in the copy."""
        if self._in_transaction:
            raise ProvenanceError("a snapshot cannot be taken inside a transaction")
        with self._cursor() as con:
            if not self.read_only:
                con.execute("CHECKPOINT")
            copy_apart(self.db_path, dest)  # never opened here: closing it would drop the ledger's lock
            wal = self.db_path.with_name(self.db_path.name + ".wal")
            if wal.exists() and wal.stat().st_size:
                shutil.copyfile(wal, dest.with_name(dest.name + ".wal"))
        return dest.stat().st_size
