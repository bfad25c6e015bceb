"""``prov verify``: check that the ledger holds together (an fsck).

Three families of checks, each reporting what is damaged and what it affects:

- **objects**: every object a version refers to (a manifest's patch tensors, a stored Fisher)
  exists and is a whole safetensors file of the right size; with ``objects=True`` every stored
  object is also re-read and re-hashed against its address. A damaged object is reported with the
  versions that need it.
- **versions**: every parent, run and tag points at a version that exists; each manifest matches
  its version row.
- **the database** (with ``objects=True``): every row of every table is read, so a corrupt block
  (DuckDB checks each block's checksum as it reads it) is reported with its table.
- **datasets**: each dataset row agrees with its shard rows, and each shard with its documents;
  each Parquet document file (a dataset kept as Parquet) exists with its recorded size, and with
  ``objects=True`` its recorded xxh3-128. A damaged file is reported, and the rows check runs on
  the files that are sound (so its dataset's shards are reported short).

``repair=True`` moves damaged objects aside into ``.prov/quarantine/`` (nothing is deleted), so
that the next commit of the same tensor writes a fresh copy, and removes the temporary files of
interrupted writes. Nothing else is changed: a missing object or an inconsistent row needs its
source (re-commit the checkpoint, re-register the data), which the report names. The objects are
checked without the ledger's lock (other processes commit meanwhile); the repair takes it, and
checks each damaged object again first (a commit may have written it afresh meanwhile).

The folders that Ray registrations and dedup audits killed on this machine left in
``.prov/tmp/ray`` are named as leftovers too (``ray_folders``, not damage), and so are the objects
no version refers to (``unreferenced_objects``: a killed commit or merge wrote them); ``prov gc
--apply`` removes both.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from provenance.errors import LedgerDamagedError, LedgerReadOnlyError, StorageUnreachableError, warn
from provenance.ledger import LedgerStore
from provenance.ledger.document_store import Unreadable
from provenance.progress import stage

QUARANTINE_DIR = "quarantine"


class DamagedObject(BaseModel):
    """An object that is missing, truncated or corrupt, and the versions that need it."""

    address: str
    problem: Literal["missing", "truncated", "corrupt"]
    detail: str
    versions: list[str] = Field(description="versions whose manifest or stored Fisher refers to it")
    quarantined: str | None = Field(None, description="where --repair moved it")


class VerifyReport(BaseModel):
    """What ``prov verify`` checked and found."""

    ledger: str
    objects_checked: int = Field(description="distinct objects looked at")
    objects_rehashed: bool = Field(description="whether every object's bytes were re-hashed (--objects)")
    versions_checked: int
    datasets_checked: int
    damaged_objects: list[DamagedObject]
    version_problems: list[dict[str, Any]]
    dataset_problems: list[dict[str, Any]]
    database_problems: list[dict[str, str]] = Field(default_factory=list, description=(
        "tables of the database that cannot be read (a corrupt block), each with its damage; checked with --objects"))
    temporary_files: list[str] = Field(description="leftovers of interrupted object writes and registrations (harmless)")
    unreferenced_objects: int = Field(0, description=(
        "stored objects no version refers to (left by a killed commit or merge, or a commit still writing; "
        "harmless: prov gc --apply removes them)"))
    ray_folders: list[str] = Field(default_factory=list, description=(
        "folders in .prov/tmp/ray of Ray registrations and dedup audits killed on this machine (harmless; "
        "prov gc --apply removes them, --repair leaves them)"))
    unlisted_document_folders: list[str] = Field(default_factory=list, description=(
        "folders of Parquet document files no dataset lists (a registration killed between writing them and "
        "its commit left them; harmless: prov gc --apply removes them)"))
    repaired: bool = False
    ok: bool = Field(description="no damage found (temporary files do not count)")


def verify(ledger: LedgerStore, *, objects: bool = False, repair: bool = False, progress: Any = None) -> VerifyReport:
    """Check the ledger (module doc); ``objects`` re-hashes every object, ``repair`` quarantines
    damaged objects and removes temporary files."""
    if repair and ledger.read_only:
        raise LedgerReadOnlyError(f"ledger {ledger.root} is open read-only; --repair moves and removes files in it")
    store = ledger.object_store()
    stage(progress, "verify: versions and datasets", None)  # seconds on a 1M-document ledger, before the objects
    with ledger.session():
        refs = ledger.object_references()
        version_problems = ledger.version_problems()
        damaged_files = _document_file_problems(ledger, rehash=objects)
        try:
            with ledger.documents_without({f["path"] for f in damaged_files}):
                dataset_problems = ledger.dataset_problems()
        except LedgerDamagedError:  # a file of the right size whose bytes do not read: find it
            damaged_files = _document_file_problems(ledger, rehash=True)
            with ledger.documents_without({f["path"] for f in damaged_files}):
                dataset_problems = ledger.dataset_problems()
        # the rows a damaged file holds are left out of the counts: their shards' "0 rows" is that file's damage
        unread = {f["dataset_id"] for f in damaged_files}
        dataset_problems = [*damaged_files, *(p for p in dataset_problems
                                              if not (p["dataset_id"] in unread and "document rows" in p["problem"]))]
        database_problems = ([{"table": t, "problem": p} for t, p in ledger.unreadable_tables().items()]
                             if objects else [])
        n_versions = len(ledger.versions())
        n_datasets = len(ledger.datasets(all_versions=True))
        encodings = ledger.param_encodings()
        with ledger.write_lock:  # no registration of this process is staging meanwhile (a server's)
            staged = [p for p, _ in ledger.stale_staging(remove=repair)]
            uploads = ledger.stale_uploads()  # rows a client uploaded and never registered
            unlisted = sorted(ledger.unlisted_document_folders())
        rays = [str(p) for p, _ in ledger.stale_ray_folders()]
    users = _users(refs, encodings)  # its keys: every address a version refers to (what gc keeps)
    stored = _listed(store) if objects else None  # else listed after the checks: an unreachable bucket said by them
    addresses = sorted(set(users) | (stored or set()))
    # Checked on the store's threads (2 for a folder; 16 for a bucket, whose checks wait on requests;
    # at most 4 when each check downloads and re-hashes a whole object, which it holds meanwhile).
    threads = min(store.writer_threads, 4) if objects else store.writer_threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prov-verify") as pool:
        sizes = dict(zip(addresses, pool.map(store.size, addresses))) if objects else {}
        if progress is not None:
            progress.start("verify: objects", sum(n or 0 for n in sizes.values()) if objects else len(addresses))
        damaged = []
        for address, problem in zip(addresses, pool.map(lambda a: store.check(a, rehash=objects), addresses)):
            if problem is not None:
                kind, detail = problem
                damaged.append(DamagedObject(address=address, problem=kind, detail=detail,
                                             versions=sorted(users.get(address, ()))))
            if progress is not None:
                progress.advance((sizes[address] or 0) if objects else 1)
    if any(d.problem == "missing" for d in damaged) and hasattr(store, "check_bucket"):
        store.check_bucket()  # a bucket deleted: said once, not as each object missing
    if stored is None:
        stored = _listed(store)
    if repair:  # holding the ledger, as gc does: the objects were checked without it, while others could commit
        with ledger.session(), ledger.write_lock, ledger.object_writers.collecting("repair"):
            # An object a commit wrote afresh meanwhile is sound now: moving it aside would take it from
            # under the new version. A temporary file is now no commit's write in progress.
            damaged = [_quarantined(store, d, ledger.root / QUARANTINE_DIR)
                       for d in damaged if store.check(d.address, rehash=objects) is not None]
            temporaries = [str(t) for t in [*store.temporaries(), *uploads]]
            for t in temporaries:
                try:
                    Path(t).unlink(missing_ok=True)
                except OSError as exc:  # the report is still given
                    warn(f"could not remove {t}: {exc.strerror or exc}")
    else:
        temporaries = [str(t) for t in [*store.temporaries(), *uploads]]
    temporaries += staged  # a killed registration's staged rows (removed already with repair)
    return VerifyReport(
        ledger=str(ledger.root), objects_checked=len(addresses), objects_rehashed=objects,
        versions_checked=n_versions, datasets_checked=n_datasets, damaged_objects=damaged,
        version_problems=version_problems, dataset_problems=dataset_problems, database_problems=database_problems,
        temporary_files=temporaries,
        unreferenced_objects=len(stored - users.keys()), ray_folders=rays, unlisted_document_folders=unlisted, repaired=repair,
        ok=not (damaged or version_problems or dataset_problems or database_problems),
    )


def _quarantined(store: Any, damaged: DamagedObject, folder: Path) -> DamagedObject:
    """``damaged`` moved into the quarantine ``folder``; left in place, with a warning, where it
    cannot be moved (an immutable file): the report of the rest is still given."""
    try:
        return damaged.model_copy(update={"quarantined": store.quarantine(damaged.address, folder)})
    except OSError as exc:
        warn(f"could not move damaged object {store.location(damaged.address)} into {folder}: "
             f"{exc.strerror or exc}; it is left where it is")
        return damaged


def _listed(store: Any) -> set[str]:
    """Every address the store holds; a listing that fails (a bucket that does not answer) is no
    answer about any object, not damage."""
    try:
        return set(store.addresses())
    except StorageUnreachableError as exc:  # it says what to check
        raise StorageUnreachableError(f"{exc} Nothing was judged damaged") from None


def _document_file_problems(ledger: LedgerStore, *, rehash: bool) -> list[dict[str, Any]]:
    """The Parquet document files that are missing, of another size than recorded, or (with
    ``rehash``) of another xxh3-128: ``{"dataset_id", "shard_index": None, "problem", "path"}``."""
    problems = []
    store = ledger.document_store
    files = ledger.document_files()
    found = store.sizes([f["path"] for f in files])
    for f in files:
        where, size = store.location(f["path"]), found[f["path"]]
        problem = None
        if size is None:
            problem = "is missing"
        elif isinstance(size, Unreadable) and store.is_url(f["path"]):  # the bucket did not answer: no damage to tell
            raise StorageUnreachableError(f"Parquet document file {where} could not be looked at ({size.why}): is the "
                                          "bucket reachable with these credentials? Nothing was judged damaged")
        elif isinstance(size, str):
            problem = f"is {size}"
        elif size != f["n_bytes"]:
            problem = f"holds {size:,} bytes, not the {f['n_bytes']:,} recorded (truncated or replaced)"
        elif rehash and store.hash(f["path"]) != f["xxh3_128"]:
            problem = "does not hash to its recorded xxh3-128 (corrupt)"
        if problem is not None:
            problems.append({"dataset_id": f["dataset_id"], "shard_index": None, "path": f["path"],
                             "problem": f"Parquet document file {where} {problem}; restore it from a backup"})
    return problems


def _users(refs: Any, encodings: Any) -> dict[str, set[str]]:
    """Object address -> every version that needs it to be checked out: those that refer to it,
    and their descendants along first parents whose patch of the same parameter is replayed on
    top of it (anything but a full copy or a removal)."""
    children: dict[str, list[str]] = defaultdict(list)
    encoding: dict[tuple[str, str], str] = {}
    for vid, parent, name, enc in zip(*(encodings.column(c).to_pylist()
                                        for c in ("version_id", "first_parent", "name", "encoding"))):
        encoding[(vid, name)] = enc
        if parent is not None and (not children[parent] or children[parent][-1] != vid):
            children[parent].append(vid)
    users: dict[str, set[str]] = defaultdict(set)
    for address, vid, name, kind in zip(*(refs.column(c).to_pylist() for c in ("address", "version_id", "name", "kind"))):
        found = users[address]
        found.add(vid)
        stack = list(children.get(vid, ())) if kind == "param" else []
        while stack:
            child = stack.pop()
            if child not in found and encoding.get((child, name)) in ("unchanged", "sparse", "low_rank"):
                found.add(child)
                stack.extend(children.get(child, ()))
    return users
