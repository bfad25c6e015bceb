"""The ledger: a ``.prov/`` folder holding the DuckDB database and the object store.

This package is the one place that imports ``duckdb``. It takes and returns records and Arrow tables,
never cursors; values are bound parameters; identifiers go through :func:`quote_identifier`.

A connection is opened per operation (or per :meth:`Ledger.session`) so that other processes can
use the ledger between operations. DuckDB lets one process write a database file at a time: a
second writer waits up to ``lock_timeout`` seconds, then gets :class:`LedgerLockedError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from provenance.errors import (
    InvalidParameterError,
    LedgerDamagedError,
    LedgerExistsError,
    LedgerLockedError,
    LedgerNotFoundError,
    LedgerReadOnlyError,
    ProvenanceError,
    SchemaVersionError,
    StorageFullError,
    UnsafeOutputError,
)
from provenance.files import check_output
from provenance.ledger._common import (
    ARROW_TABLES,
    DB_FILE,
    DOCUMENTS_DIR,
    LEDGER_DIR,
    OBJECTS_DIR,
    TMP_DIR,
    _now,
    host_label,
    process_alive,
    quote_identifier,
    tree_bytes,
)
from provenance.ledger.data import DataQueries
from provenance.ledger.document_store import DocumentStore
from provenance.ledger.lineage import LineageQueries
from provenance.ledger.models import ModelQueries
from provenance.ledger.service import ServiceQueries
from provenance.ledger.writer import (
    DOCUMENTS_AS,
    PARQUET_THRESHOLD,
    DocumentStage,
    LedgerWriter,
    _clean_staging,
    check_documents_as,
    staging_entries,
)

if TYPE_CHECKING:
    from provenance.object_buckets import BucketObjectStore
    from provenance.objects import ObjectStore

#: Written by ``prov serve`` in the ledger folder while it serves it: its process id and URL, so
#: that a process the ledger's lock refuses is told to use the server instead of retrying.
SERVING_FILE = "serving.json"

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


_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with this code: ``(version, name, sql)`` in order."""
    folder = resources.files("provenance.schemas").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise ProvenanceError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


SCHEMA_VERSION = len(migrations())



#: Up to this many datasets kept as Parquet, the documents view reads each in a branch of its own
#: whose dataset_id is a constant, so a query that names another dataset opens none of its files
#: (a large dataset has many); above, one scan of every file. Each branch costs about 1.5 ms to
#: bind per query (60 one-file datasets: a lookup by key 150 ms in branches, 78 ms in one scan;
#: 2,000: 2.7 s against 0.7 s; measured on the 2-vCPU machine).
_DATASET_BRANCHES = 8

#: The columns of ``documents`` after ``doc_id, dataset_id``, and all of them in order (the Parquet
#: document files hold exactly these).
_OTHER_COLUMNS = "shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys"
DOCUMENT_COLUMNS = "doc_id, dataset_id, " + _OTHER_COLUMNS

#: The types of the other columns of the stand-in row of a damaged Parquet document file: its
#: dataset's rows cannot be read, and the row raises the error that says so whenever a query
#: reads it (any query of its dataset, or of all datasets; one that names another dataset prunes
#: it). Each column is the error itself, not NULL: a filter on a constant NULL column (``key =
#: 'k5'``, ``exact_hash = …``) let DuckDB prune the row unread, and the query found nothing.
_BROKEN_TYPES = ("INTEGER", "BIGINT", "BIGINT", "VARCHAR", "UBIGINT", "INTEGER", "INTEGER", "UINTEGER[]", "UBIGINT[]")


def _file_problem(found: int | str | None, size: int) -> str | None:
    """Why a file found with ``found`` bytes (None: missing; a string: why it cannot be looked
    at) cannot be the one recorded with ``size`` bytes (None: it may be)."""
    if found is None:
        return "missing"
    if isinstance(found, str):
        return found
    return None if found == size else f"{found:,} bytes instead of {size:,} (truncated or replaced)"


def _sql_string(value: str) -> str:
    """A string literal for DDL, which takes no bound parameters."""
    return "'" + value.replace("'", "''") + "'"


def _on_read_only_mount(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (root may write files whose mode
    forbids it, but not there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
    def collecting(self) -> Iterator[None]:
        with self._cond:
            if self._writing:
                raise LedgerLockedError(f"{self._writing} commit(s) are writing objects; collect garbage when they "
                                        "finish")
            self._collecting = True
        try:
            yield
        finally:
            with self._cond:
                self._collecting = False
                self._cond.notify_all()


_SPILL = re.compile(r"duckdb_temp_\d+_")  # DuckDB's temporary files, named by the process that made them
#: ``.prov/tmp/ray``: the Ray engines' folders (``prov-ray-HOST-PID-…``, ``prov-ray-dedup-HOST-PID-…``), by default.
RAY_DIR = "ray"
_RAY = re.compile(r"prov-ray-(?:dedup-)?(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")


class LedgerStore(DataQueries, ModelQueries, LineageQueries, ServiceQueries):
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
        row = con.execute("SELECT value FROM ledger_meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    @property
    def documents_url(self) -> str | None:
        """The bucket prefix new Parquet document files go to (``prov init --documents URL``),
        None when they go to ``documents_path``."""
        return self.document_store.url

    @property
    def document_store(self) -> DocumentStore:
        """Where the Parquet document files are (:mod:`provenance.ledger.document_store`)."""
        if getattr(self, "_document_store", None) is None:
            with self._cursor() as con:
                return self._document_store_on(con)
        return self._document_store

    def _document_store_on(self, con: duckdb.DuckDBPyConnection) -> DocumentStore:
        """:attr:`document_store`, its setting read on ``con`` the first time."""
        if getattr(self, "_document_store", None) is None:
            self._document_store = DocumentStore(self.root, self._meta("documents_url", con))
        return self._document_store

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
        base = Path(path)
        root = base if base.name == LEDGER_DIR else base / LEDGER_DIR
        if (root / DB_FILE).exists():
            raise LedgerExistsError(f"a ledger already exists at {root}")
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
        try:
            ledger._migrate(create=True)
        finally:
            ledger._creating = False
        with ledger._cursor() as con:
            if bucket is not None:
                con.execute("INSERT INTO ledger_meta VALUES ('objects_url', ?)", [bucket.url])
            if docs is not None:
                con.execute("INSERT INTO ledger_meta VALUES ('documents_url', ?)", [docs.url])
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

    def output_path(self, path: str | os.PathLike, *, parents: bool | None = None) -> Path:
        """Check a file that a command is about to write: refuse one that resolves (after
        symlinks) inside the ledger folder, or that is a folder; its parent folder must exist
        unless ``parents``, which creates it. Returns the resolved path."""
        given = Path(path)
        resolved = given.resolve()
        if resolved == self.root or self.root in resolved.parents:
            raise UnsafeOutputError(
                f"refusing to write {str(given)!r}: it resolves to {resolved}, inside the ledger folder {self.root}"
            )
        return check_output(given, resolved, parents=parents)

    def output_folder(self, path: str | os.PathLike, *, parents: bool = False) -> Path:
        """Check a folder that a command is about to create: refuse one that resolves inside the
        ledger folder, a file, or a folder that is not empty; its parent folder must exist unless
        ``parents``, which creates it. Returns the resolved path."""
        given = Path(path)
        resolved = given.resolve()
        if resolved == self.root or self.root in resolved.parents:
            raise UnsafeOutputError(
                f"refusing to write {str(given)!r}: it resolves to {resolved}, inside the ledger folder {self.root}")
        if not resolved.exists():
            return check_output(given, resolved, parents=parents)
        if not resolved.is_dir():
            raise UnsafeOutputError(f"refusing to write folder {str(given)!r}: it is a file")
        if any(resolved.iterdir()):
            raise UnsafeOutputError(f"refusing to write folder {str(given)!r}: it is not empty")
        return resolved

    # -- connections ------------------------------------------------------------------------

    def _connect(self, *, read_only: bool = False, external: bool = True) -> duckdb.DuckDBPyConnection:
        # The memory limit holds for reading too (verify, taint, backup read every signature: without
        # it their memory grew with the database, 3 GB for a 3.3 GB ledger); what does not fit spills
        # to the ledger's temporary folder, or the system's where the ledger cannot be written.
        config: dict[str, Any] = {"threads": max(1, os.cpu_count() or 1), "memory_limit": self.memory_limit}
        spill = self.root / TMP_DIR
        if not read_only or (spill.is_dir() and os.access(spill, os.W_OK)):
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
                        "Retry when it finishes, or wait longer (--wait SECONDS)."
                    ) from exc
                time.sleep(0.1)
                continue
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

    def confine(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make ``con``'s ``documents`` view, then refuse it every file but the Parquet document
        files (so a query can read the view, and nothing else on the disk)."""
        self._documents_view(con)
        places = {str(self.documents_path) + os.sep, self._document_store_on(con).where}
        con.execute(f"SET allowed_directories = [{', '.join(_sql_string(p) for p in sorted(places))}]")
        con.execute("SET enable_external_access = false")

    @contextlib.contextmanager
    def session(self) -> Iterator[LedgerStore]:
        """Keep one connection open for several operations (and the lock held meanwhile)."""
        with self._session_lock:  # a server's threads open and close sessions beside each other
            if self._con is None:
                self._con = self._connect(read_only=self.read_only)
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
                con = self._thread_cursor() if self.concurrent else self._con
                if self._view_generations.get(id(con)) != self._documents_generation:
                    self._view_generations[id(con)] = self._documents_view(con)
                yield con
            except duckdb.Error as exc:
                self._raise_if_known(exc)
                raise

    def _documents_view(self, con: duckdb.DuckDBPyConnection, skip: frozenset[str] = frozenset()) -> int:
        """Make ``documents``, on ``con``, the union of the table and the Parquet document files
        (a temporary view that shadows the table; none when there are no files). Each connection
        has its own temporary objects, so each makes it, once per change of the files; returns
        the generation of the files it saw.

        A file that is missing, whose size is not the one recorded, or whose footer does not
        decode, is left out of the view and stands in it as one row of its dataset that raises an
        error naming the file when a query reads it: the ledger still opens, and queries that name
        other datasets as constants still run (a join by doc_id reads the row, and fails).
        ``skip``: files to leave out without that row (``prov verify`` reports them itself)."""
        generation = self._documents_generation
        try:
            files = con.execute("SELECT path, dataset_id, n_bytes FROM document_files ORDER BY path").fetchall()
        except duckdb.CatalogException:  # a schema older than 0008, being migrated
            return -1
        good: dict[str, list[str]] = {}
        broken: dict[str, str] = {}  # path -> problem
        store = self._document_store_on(con)
        files = [f for f in files if f[0] not in skip]
        found = store.sizes([path for path, _, _ in files])
        store.register(con, [path for path, _, _ in files])
        for path, dataset_id, size in files:
            problem = _file_problem(found[path], size)
            if problem is None:
                good.setdefault(dataset_id, []).append(path)
            else:
                broken[path] = problem
        if not good and not broken:
            con.execute("DROP VIEW IF EXISTS temp.main.documents")
            return generation
        try:
            con.execute(self._view_sql(con, good, broken, files))
        except duckdb.Error:  # a file of the right size whose footer does not read: find which
            for paths in good.values():
                for path in list(paths):
                    try:
                        con.execute(f"SELECT 1 FROM read_parquet({_sql_string(store.location(path))}) LIMIT 0")
                    except duckdb.Error as exc:
                        paths.remove(path)
                        broken[path] = f"unreadable as Parquet ({str(exc).splitlines()[0]})"
            con.execute(self._view_sql(con, {d: p for d, p in good.items() if p}, broken, files))
        return generation

    def _view_sql(self, con: duckdb.DuckDBPyConnection, good: dict[str, list[str]], broken: dict[str, str],
                  files: list[tuple[str, str, int]]) -> str:
        """The statement that makes the documents view of the files ``good`` (per dataset), with a
        stand-in row that raises for each of ``broken`` (path -> problem)."""
        parts = [f"SELECT * FROM {self.documents_table(con)}"]
        store = self._document_store_on(con)
        quoted = {d: [_sql_string(store.location(p)) for p in paths] for d, paths in good.items()}
        if len(quoted) <= _DATASET_BRANCHES:  # the dataset as a constant: a query of another skips its files
            for dataset_id, paths in quoted.items():
                parts.append(f"SELECT doc_id, {_sql_string(dataset_id)} AS dataset_id, {_OTHER_COLUMNS} "
                             f"FROM read_parquet([{', '.join(paths)}])")
        elif quoted:  # binding a branch per dataset would cost more than reading every file's footer
            paths = [p for ps in quoted.values() for p in ps]
            parts.append(f"SELECT {DOCUMENT_COLUMNS} FROM read_parquet([{', '.join(paths)}])")
        owner = {path: dataset_id for path, dataset_id, _ in files}
        for path, problem in broken.items():
            message = (f"the Parquet document file {store.location(path)} of dataset {owner[path]} is {problem}; restore "
                       "it from a backup of the ledger (`prov verify` lists every damaged file)")
            # raised per row (range is a column), not folded while planning: a query of another dataset,
            # whose filter on the constant dataset_id prunes this branch, never reaches it
            raised = f"error(CASE WHEN range >= 0 THEN {_sql_string(message)} END)"
            parts.append(f"SELECT {raised}::BIGINT, {_sql_string(owner[path])}, "
                         f"{', '.join(f'{raised}::{t}' for t in _BROKEN_TYPES)} FROM range(1) WHERE {raised} IS NULL")
        return "CREATE OR REPLACE TEMP VIEW documents AS " + " UNION ALL ".join(parts)

    @contextlib.contextmanager
    def documents_without(self, paths: set[str]) -> Iterator[None]:
        """Inside a session: queries of ``documents`` leave out the Parquet files ``paths``
        (damaged ones, which ``prov verify`` reports while it checks the rest)."""
        with self._cursor() as con:
            self._view_generations[id(con)] = self._documents_view(con, frozenset(paths))
            try:
                yield
            finally:
                self._view_generations.pop(id(con), None)

    @staticmethod
    def documents_table(con: duckdb.DuckDBPyConnection) -> str:
        """The ``documents`` table itself, named so that the view of the same name does not
        shadow it (inserts go there)."""
        catalog = con.execute("SELECT current_database()").fetchall()[0][0]
        return f"{quote_identifier(catalog)}.main.documents"

    def documents_changed(self) -> None:
        """A transaction that added or removed Parquet document files ended (committed or not):
        every connection remakes its view before its next query."""
        self._documents_generation += 1

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

    def _damaged(self, exc: Exception) -> LedgerDamagedError | None:
        """A :class:`LedgerDamagedError` naming the file and the recovery step when ``exc`` says
        the database file is truncated or corrupt (else None: some other failure)."""
        message = str(exc)
        docs = getattr(self, "_document_store", None)
        if str(self.documents_path) in message or (docs is not None and docs.url and docs.url in message):
            # a Parquet document file: missing, cut or not Parquet
            first = message.splitlines()[0]
            return LedgerDamagedError(re.sub(r"^[A-Za-z ]*Error: ", "", first) if "restore it" in first else
                                      f"a Parquet document file of the ledger cannot be read ({first}); restore it "
                                      "from a backup of the ledger (`prov verify` lists every damaged file)")
        lowered = message.lower()
        if (any(sign in lowered for sign in self._PARQUET_SIGNS) and ".parquet" not in lowered
                and (self.documents_path.is_dir() or (docs is not None and docs.url))):
            return LedgerDamagedError(
                f"a Parquet document file of the ledger cannot be read ({message.splitlines()[0]}); "
                "`prov verify --objects` finds which, then restore it from a backup of the ledger")
        names_db = str(self.db_path) in message
        if not (any(sign in lowered for sign in self._DAMAGE_SIGNS)
                or (names_db and any(sign in lowered for sign in self._READ_SIGNS))):
            return None
        return LedgerDamagedError(
            f"the ledger database {self.db_path} is damaged ({message.splitlines()[0]}). Restore it from a backup "
            f"copy; without one, move it aside, run `prov init {self.root.parent}` and register the data and commit "
            f"the models again (objects already in {self._objects_where()} are reused, not rewritten)"
        )

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
        with self.write_lock, self._cursor() as con:
            staging = _clean_staging(self.root)
            con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            writer = LedgerWriter(con, staging, store=self)
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
                con.execute("COMMIT")  # a log the disk refuses fails here, and is rolled back below
                if writer.made:
                    self.committed.append(dict(writer.made))
            except BaseException:  # rolled back; _cursor then reports a damaged database or a full disk as such
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                with contextlib.suppress(Exception):
                    writer.restore_after_rollback()
                for folder in writer.new_folders:  # Parquet document files the rollback dropped
                    with contextlib.suppress(Exception):
                        self.document_store.remove_folder(folder)
                raise
            finally:
                self._in_transaction = False
                if writer.new_folders:
                    self.documents_changed()

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
            _clean_staging(self.root)
        return found

    def snapshot_database(self, dest: Path) -> int:
        """Copy the database file, checkpointed first (so the copy needs no write-ahead log), to
        ``dest``; returns its bytes. Holds the ledger meanwhile: no write lands half in the copy."""
        if self._in_transaction:
            raise ProvenanceError("a snapshot cannot be taken inside a transaction")
        with self._cursor() as con:
            if not self.read_only:
                con.execute("CHECKPOINT")
            shutil.copyfile(self.db_path, dest)
            wal = self.db_path.with_name(self.db_path.name + ".wal")
            if wal.exists() and wal.stat().st_size:
                shutil.copyfile(wal, dest.with_name(dest.name + ".wal"))
        return dest.stat().st_size

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self, *, create: bool) -> None:
        shipped = migrations()
        with self._cursor() as con:
            exists = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
            ).fetchall()[0][0]
            if not exists and not create:
                raise LedgerNotFoundError(f"{self.db_path} is not a provenance ledger (no schema_migrations table)")
            current = con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] if exists else 0
            current = current or 0
            if current > len(shipped):
                raise SchemaVersionError(
                    f"ledger {self.root} has schema version {current}, but this provenance understands up to "
                    f"{len(shipped)}; upgrade provenance to open it"
                )
            if self.read_only and current < len(shipped):
                raise LedgerReadOnlyError(
                    f"ledger {self.root} has schema version {current} and needs migrating to {len(shipped)}, "
                    "which writes to it; open it once writable"
                )
            for version, name, sql in shipped[current:]:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(sql)
                    con.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()]
                    )
                    if version == 1:
                        con.execute(
                            "INSERT INTO ledger_meta VALUES ('created_at', ?), ('created_by', ?)",
                            [_now().isoformat(), "provenance"],
                        )
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
        if 0 < current < len(shipped):  # for good: an older provenance refuses the ledger from now on
            import warnings

            warnings.warn(f"ledger {self.root}: migrated from schema version {current} to {len(shipped)}; a "
                          f"provenance that understands only version {current} can no longer open it", stacklevel=3)

    def schema_version(self) -> int:
        with self._cursor() as con:
            return int(con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])



__all__ = [
    "DB_FILE", "DOCUMENTS_AS", "LEDGER_DIR", "PARQUET_THRESHOLD", "check_documents_as", "OBJECTS_DIR", "SCHEMA_VERSION", "TMP_DIR", "DocumentStage", "LedgerStore", "LedgerWriter",
    "migrations", "quote_identifier",
]
