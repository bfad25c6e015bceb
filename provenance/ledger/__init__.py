"""The ledger: a ``.prov/`` folder holding the DuckDB database and the object store.

This package is the one place that imports ``duckdb``. It takes and returns records and Arrow tables,
never cursors; values are bound parameters; identifiers go through :func:`quote_identifier`.

A connection is opened per operation (or per :meth:`Ledger.session`) so that other processes can
use the ledger between operations. DuckDB lets one process write a database file at a time: a
second writer waits up to ``lock_timeout`` seconds, then gets :class:`LedgerLockedError`.

:class:`LedgerStore` is defined here (its state, finding, creating and opening a ledger, its
object store) and mixes in the rest, one module each: :mod:`.connections` (connections, sessions,
DuckDB errors), :mod:`.transactions`, :mod:`.commits` (the record of the writes committed),
:mod:`.documents_view`, :mod:`.schema` (migrations), :mod:`.maintenance` (leftovers, snapshots),
:mod:`.outputs` (output-path checks) and the queries (:mod:`.data`, :mod:`.models`,
:mod:`.lineage`, :mod:`.service`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from provenance.errors import (
    InvalidParameterError,
    LedgerExistsError,
    LedgerNotFoundError,
    LedgerReadOnlyError,
)
from provenance.files import non_utf8
from provenance.ledger._common import (
    DB_FILE,
    DOCUMENTS_DIR,
    LEDGER_DIR,
    OBJECTS_DIR,
    TMP_DIR,
    _now,
    quote_identifier,
)
from provenance.ledger.commits import CommitRecord
from provenance.ledger.connections import SERVING_FILE, Connections
from provenance.ledger.data import DataQueries
from provenance.ledger.document_store import DocumentStore
from provenance.ledger.documents_view import DOCUMENT_COLUMNS, DocumentsView
from provenance.ledger.lineage import LineageQueries
from provenance.ledger.maintenance import RAY_DIR, Maintenance
from provenance.ledger.models import ModelQueries
from provenance.ledger.object_writers import ObjectWriters
from provenance.ledger.outputs import OutputChecks
from provenance.ledger.schema import SCHEMA_VERSION, SchemaMigrations, migrations
from provenance.ledger.service import ServiceQueries
from provenance.ledger.transactions import WRITE_KEY, Transactions, preliminary
from provenance.ledger.writer import (
    DOCUMENTS_AS,
    PARQUET_THRESHOLD,
    DocumentStage,
    LedgerWriter,
    check_documents_as,
)

if TYPE_CHECKING:
    from provenance.object_buckets import BucketObjectStore
    from provenance.objects import ObjectStore


def _on_read_only_mount(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (root may write files whose mode
    forbids it, but not there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _unfinished_init(db: Path) -> bool:
    """Whether ``db`` is what an init stopped before its one transaction committed leaves: a
    database file with no tables (which that init's next run completes)."""
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:  # not a database, damaged, or held by a process (an init still running)
        return False
    try:
        return con.execute("SELECT count(*) FROM information_schema.tables").fetchall()[0][0] == 0
    finally:
        con.close()


class LedgerStore(Connections, Transactions, CommitRecord, DocumentsView, SchemaMigrations, Maintenance, OutputChecks,
                  DataQueries, ModelQueries, LineageQueries, ServiceQueries):
    """The storage gateway: a ledger folder's database and object store, its connections,
    transactions, migrations and every query. Users hold the facade, :class:`provenance.Ledger`,
    which adds one verb per use case; create one with :meth:`init`, open one with :meth:`open`."""

    def __init__(self, root: Path, *, lock_timeout: float = 10.0, memory_limit: str = "512MB",
                 read_only: bool = False):
        self.root = Path(root).resolve()
        self.read_only = read_only  # connect read-only: reads work on a read-only file or mount, writes are refused
        self.lock_timeout = lock_timeout
        self.memory_limit = memory_limit
        self._con: duckdb.DuckDBPyConnection | None = None
        self._owner: int | None = None  # the thread that opened the session's connection
        #: What each transaction committed through this object made (``dataset_id``, ``version_id``,
        #: ``run_id``), in order: a command interrupted after its write landed says what it kept.
        self.committed: list[dict[str, str]] = []
        self._depth = 0
        self._local = threading.local()  # per thread: its cursor (concurrent sessions), its transaction
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursor_lock = threading.Lock()
        self._session_lock = threading.Lock()
        # A server sets this while it holds a session: each thread then queries on a cursor of its
        # own (DuckDB's MVCC lets reads run beside the one write transaction), instead of sharing
        # the session's connection.
        self.concurrent = False
        # Write transactions of this process's threads, one at a time (a server's writes take it
        # around the whole call; a commit only around its transaction, not while its tensors arrive).
        self.write_lock = threading.RLock()
        self.object_writers = ObjectWriters()
        # Bumped when a transaction adds or drops Parquet document files: a connection whose
        # ``documents`` view was made for an older count makes it again (see _documents_view).
        self._documents_generation = 0
        self._view_generations: dict[int, int] = {}
        self._creating = False  # only init makes the database file (a mistyped path must not)
        self._created_at: str | None = None  # names the database in .prov/writes.json (ledger.commits)

    @property
    def _in_transaction(self) -> bool:
        return getattr(self._local, "in_transaction", False)

    @_in_transaction.setter
    def _in_transaction(self, value: bool) -> None:
        self._local.in_transaction = value

    # -- finding, creating, opening ---------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    @property
    def objects_path(self) -> Path:
        return self.root / OBJECTS_DIR

    @property
    def documents_path(self) -> Path:
        """The folder of the datasets whose document rows are kept as Parquet files."""
        return self.root / DOCUMENTS_DIR

    @property
    def objects_url(self) -> str | None:
        """The bucket prefix that holds this ledger's objects (``prov init --objects URL``), None
        when they are in the ledger folder (``objects_path``)."""
        if not hasattr(self, "_objects_url"):
            self._objects_url = self._meta("objects_url")
        return self._objects_url

    def _meta(self, key: str, con: duckdb.DuckDBPyConnection | None = None) -> str | None:
        """A setting of ``ledger_meta`` (read on ``con``, or on a cursor of this ledger)."""
        if con is None:
            with self._cursor() as con:
                return self._meta(key, con)
        rows = con.execute("SELECT value FROM ledger_meta WHERE key = ?", [key]).fetchall()  # no result left open
        return rows[0][0] if rows else None

    def _objects_where(self) -> str:
        """Where the objects are, for a message (no query: the database may be the damage)."""
        return getattr(self, "_objects_url", None) or str(self.objects_path)

    def object_store(self, *, sync: bool = True) -> ObjectStore | BucketObjectStore:
        """The ledger's object store (``sync``: sync each object to the disk before its rename):
        the folder ``objects_path``, or the bucket ``objects_url``. Imported here, not at the top:
        the object store needs torch, which commands that only read datasets should not pay for
        at start-up."""
        if self.objects_url is not None:
            from provenance.object_buckets import BucketObjectStore

            return BucketObjectStore(self.objects_url, sync=sync)
        from provenance.objects import ObjectStore

        return ObjectStore(self.objects_path, sync=sync)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    @staticmethod
    def find(start: str | os.PathLike | None = None) -> Path:
        """The ``.prov`` folder at ``start`` or in the nearest folder above it, like git does."""
        here = Path(start or os.getcwd()).resolve()
        for folder in (here, *here.parents):
            if folder.name == LEDGER_DIR and (folder / DB_FILE).exists():
                return folder
            if (folder / LEDGER_DIR / DB_FILE).exists():
                return folder / LEDGER_DIR
        raise LedgerNotFoundError(f"no ledger in {here} or any folder above it; create one with `prov init`")

    @classmethod
    def init(cls, path: str | os.PathLike = ".", *, lock_timeout: float = 10.0, objects: str | None = None,
             documents: str | None = None) -> LedgerStore:
        """Create a ledger in ``path/.prov`` and return it. ``objects``: a bucket prefix
        (``s3://bucket/prefix``, empty and this ledger's alone) to keep the tensor objects in,
        instead of ``.prov/objects/`` (:mod:`provenance.object_buckets`); ``documents``: one for
        the Parquet document files of large datasets, instead of ``.prov/documents/``
        (:mod:`provenance.ledger.document_store`)."""
        if isinstance(path, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):  # `s3://b` made the folder s3:/b
            raise InvalidParameterError(f"cannot create a ledger at {path!r}: a ledger's database is in a local folder "
                                        "(objects=/--objects and documents=/--documents keep its files in a bucket)")
        base = Path(path)
        root = base if base.name == LEDGER_DIR else base / LEDGER_DIR
        check_utf8_folder(root, "cannot create a ledger at")  # before any folder is made
        if (root / DB_FILE).exists() and not _unfinished_init(root / DB_FILE):
            raise LedgerExistsError(f"a ledger already exists at {root}")
        for folder in (root, *root.parents):  # the nearest that exists must be a folder ("Not a directory" said not which)
            if folder.exists():
                if not folder.is_dir():
                    raise InvalidParameterError(f"cannot create a ledger in {base}: {folder} is a file, not a folder")
                break
        bucket = docs = None
        owner = {"ledger": str(root.resolve()), "created_at": _now().isoformat()}
        if objects is not None and documents is not None:
            a, b = objects.rstrip("/") + "/", documents.rstrip("/") + "/"
            if a == b:
                raise InvalidParameterError(f"--objects and --documents are the same prefix {objects}; give each its own")
            if a.startswith(b) or b.startswith(a):  # gc of one would take the other's files for its own
                raise InvalidParameterError(f"--objects {objects} and --documents {documents} are nested; give each a "
                                            "prefix of its own, neither inside the other")
        claimed: list[tuple[Any, str]] = []  # markers this init wrote: taken back when it fails
        try:  # checked (and claimed) before anything is created here
            if objects is not None:
                from provenance.object_buckets import BucketObjectStore

                bucket = BucketObjectStore(objects)
                if (marker := bucket.claim(owner)) is not None:
                    claimed.append((bucket.fs, marker))
            if documents is not None:
                from provenance.object_buckets import claim_prefix

                docs = DocumentStore(root, documents)
                if (marker := claim_prefix(docs.fs, docs.scheme, docs.prefix, owner)) is not None:
                    claimed.append((docs.fs, marker))
        except BaseException:
            for fs, key in claimed:  # a ledger that was never made holds no prefix
                with contextlib.suppress(Exception):
                    fs.delete_file(key)
            raise
        root.mkdir(parents=True, exist_ok=True)
        (root / OBJECTS_DIR).mkdir(exist_ok=True)
        (root / TMP_DIR).mkdir(exist_ok=True)
        ledger = cls(root, lock_timeout=lock_timeout)
        ledger._creating = True
        meta = {"objects_url": bucket.url} if bucket is not None else {}
        if docs is not None:
            meta["documents_url"] = docs.url
        try:
            ledger._migrate(create=True, meta=meta)  # one transaction: the whole schema, or no table
        finally:
            ledger._creating = False
        ledger._document_store = None
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, lock_timeout: float = 10.0,
             read_only: bool = False) -> LedgerStore:
        """Open the ledger at ``path`` (a project folder or its ``.prov``), or find one upwards
        from the current folder. An older schema is migrated; a newer one is refused.

        ``read_only`` opens the database read-only, so that a ledger on a read-only file or mount
        can be queried (and a reader does not take the write lock); writes then raise
        :class:`LedgerReadOnlyError`. A ledger whose database file cannot be written is opened
        read-only whatever ``read_only`` says."""
        if path is None:
            root = cls.find()
        else:
            base = Path(path)
            if (base / DB_FILE).exists():
                root = base
            elif (base / LEDGER_DIR / DB_FILE).exists():
                root = base / LEDGER_DIR
            elif (base / f"{LEDGER_DIR}.partial").is_dir():  # what a backup stopped half-way leaves
                raise LedgerNotFoundError(
                    f"no ledger at {base}: it holds {LEDGER_DIR}.partial, the copy of a backup that was stopped "
                    "before it finished; take the backup again (remove the folder first)")
            else:
                raise LedgerNotFoundError(f"no ledger at {base} (looked for {base / LEDGER_DIR / DB_FILE})")
        check_utf8_folder(root, "cannot open the ledger at")
        db = root / DB_FILE
        writable = os.access(db, os.W_OK) and os.access(root, os.W_OK) and not _on_read_only_mount(root)
        ledger = cls(root, lock_timeout=lock_timeout, read_only=read_only or not writable)
        try:
            ledger._migrate(create=False)
        except LedgerReadOnlyError:
            if not writable:
                raise
            cls(root, lock_timeout=lock_timeout)._migrate(create=False)  # an older schema: migrate, then read
            ledger._migrate(create=False)
        return ledger


def check_utf8_folder(root: Path, doing: str) -> None:
    """Refuse a ledger folder whose absolute path is not valid UTF-8 (a folder a Latin-1 system
    named): DuckDB cannot open a database there (``RuntimeError: std::bad_cast``, after ``init``
    had made the folders and ``backup`` had copied the whole ledger), or that holds a ``?``, which
    DuckDB reads as the start of the database's options (``init`` failed with a traceback about
    ``q.wal?x``, leaving a half-made ``.prov``)."""
    path = Path(root).absolute()
    if (shown := non_utf8(path)) is not None:
        raise InvalidParameterError(f"{doing} {shown}: the path is not valid UTF-8, and DuckDB opens a database only "
                                    "at a UTF-8 path; rename the folder")
    if "?" in str(path):
        raise InvalidParameterError(f"{doing} {path}: the path holds a '?', which DuckDB takes for the start of a "
                                    "database's options; rename the folder")


__all__ = [
    "DB_FILE", "DOCUMENTS_AS", "LEDGER_DIR", "PARQUET_THRESHOLD", "check_documents_as", "check_utf8_folder", "OBJECTS_DIR", "SCHEMA_VERSION", "TMP_DIR", "DocumentStage", "LedgerStore", "LedgerWriter",
    "migrations", "quote_identifier",
    # homes elsewhere in the package, imported from here by the server, the facade and the domain
    "DOCUMENT_COLUMNS", "RAY_DIR", "SERVING_FILE", "WRITE_KEY", "ObjectWriters", "preliminary",
]
