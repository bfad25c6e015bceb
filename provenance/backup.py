"""``prov backup``: a consistent copy of a ledger, also while a server is serving it.

The database file is checkpointed and copied while the ledger is held (a server holds it between
two requests; a local ``prov backup`` takes its lock), so the copy is one committed state. Objects
are then copied (or with ``link``, hard-linked: fast, but the copy then shares the disk and the
files with the original) into the copy: they are immutable and named by their hash, and a commit
writes its objects before its row, so every object the copied database names is already there.
Objects written after the snapshot may come along; they are unreferenced in the copy (``prov gc``
lists them). A ledger whose objects are in a bucket (``prov init --objects``) gets a copy that
stands alone: the objects its database refers to are downloaded into the copy's
``.prov/objects/``, and the copy's objects are there, not in the bucket. The copy is made in
``DESTINATION/.prov.partial`` and renamed to ``.prov`` when whole: a copy that fails half-way (a
full disk) is removed, with the destination folder if the backup made it, and the error names the
file; a copy whose process was killed is left under the partial name, which no command opens as a
ledger. The copy is then opened and verified.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.files import fsync_folder, output_name
from provenance.ledger import LedgerStore, check_utf8_folder
from provenance.ledger._common import DOCUMENTS_DIR, LEDGER_DIR
from provenance.progress import stage, step
from provenance.records import check_flags


def _copy_document_files(ledger: LedgerStore, copy: LedgerStore, root: Path, *, link: bool) -> int:
    """Copy (or hard-link) the Parquet document files that the copied database lists into the
    copy; returns their bytes. They are immutable: a registration writes them before its commit,
    so every file the snapshot lists is whole. Files in a bucket are downloaded into the copy's
    ``documents/`` folder, and the copy's rows and setting say so: the copy stands alone.
    ``copy``: the copy, opened (at ``root``)."""
    store = ledger.document_store
    total = 0
    moved = []
    for f in copy.document_files():
        if store.is_url(f["path"]):
            name, tag, file = f["path"].rsplit("/", 3)[1:]
            local = f"{DOCUMENTS_DIR}/{name}/{tag}/{file}"
            store.download(f["path"], root / local)
            moved.append((local, f["path"]))
            total += f["n_bytes"]
            continue
        source, target = ledger.root / f["path"], root / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(source, target)
                total += f["n_bytes"]
                continue
            except OSError:  # another file system: copy
                pass
        shutil.copy2(source, target)
        total += f["n_bytes"]
    with copy._cursor() as con:
        con.execute("DELETE FROM ledger_meta WHERE key = 'documents_url'")
        if moved:
            con.executemany("UPDATE document_files SET path = ? WHERE path = ?", moved)
    return total


def backup_destination(destination: object) -> Path:
    """The folder, absolute, that a backup into ``destination`` copies the ledger into (as its
    ``.prov``); refuses a ``destination`` that names no path (``backup(123)``: pathlib's ``TypeError``)."""
    return output_name(destination, folder=True).expanduser().absolute()


def backup(ledger: LedgerStore, destination: str | os.PathLike, *, link: bool = False,
           progress: Any = None) -> dict[str, Any]:
    """Copy the ledger into ``destination`` (a new or empty folder, outside the ledger), which
    becomes a ledger folder ``destination/.prov``; returns what was copied and the copy's check
    (:func:`provenance.verify.verify` with every object re-hashed: ``verified``, and ``problems``
    naming what is damaged, which the ledger copied holds too). ``progress``
    (:mod:`provenance.progress`) is told of each stage: the database, the objects, the check."""
    started = time.perf_counter()
    check_flags(link=link)
    dest = backup_destination(destination)
    check_utf8_folder(dest, "cannot back up into")  # DuckDB cannot open the copy there: found after copying it all
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        if (dest / f"{LEDGER_DIR}.partial").is_dir():
            raise InvalidParameterError(f"backup destination {dest} holds {LEDGER_DIR}.partial, the copy of a backup "
                                        "that was stopped before it finished; remove it, or give another folder")
        raise InvalidParameterError(f"backup destination {dest} exists and is not an empty folder")
    if dest.resolve().is_relative_to(ledger.root.resolve()):
        raise InvalidParameterError(f"backup destination {dest} is inside the ledger {ledger.root}")
    made = dest  # the first folder of it the backup makes (it made parents too, and left them after a failure)
    while not made.parent.exists():
        made = made.parent
    made = None if dest.exists() else made
    # Built under a name that is not a ledger's, renamed when whole: a copy that failed half-way
    # (a full disk) is removed, and one whose process was killed is not taken for a ledger.
    partial = dest / f"{LEDGER_DIR}.partial"
    try:
        try:  # a folder that cannot be made was refused as '/dev/null/bk/.prov.partial/objects: Not a directory'
            (partial / "objects").mkdir(parents=True)
            (partial / "tmp").mkdir()
        except OSError as exc:
            raise InvalidParameterError(f"cannot make backup destination {dest}: {exc.strerror or exc}") from None
        stage(progress, "backup: database", None)
        db_bytes = ledger.snapshot_database(partial / ledger.db_path.name)
        step(progress, db_bytes)
        copy = type(ledger).open(partial)
        with copy.session():  # the copy's database opened once for what follows
            copy._record_held()  # the copy's record of writes committed starts at what it holds
            if ledger.objects_url is not None:  # a bucket: its objects come down into the copy, which stands alone
                linked, copied, object_bytes = 0, *_download_objects(ledger, copy, partial)
            else:
                linked, copied, object_bytes = _copy_objects(ledger, partial, link=link, progress=progress)
            document_bytes = _copy_document_files(ledger, copy, partial, link=link)
        del copy
        root = dest / LEDGER_DIR
        os.rename(partial, root)
        fsync_folder(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    from provenance.verify import verify

    copy = type(ledger).open(dest, read_only=True)
    report = verify(copy, objects=True, progress=progress)  # every object and document file re-hashed: a copy of a corrupt one is not "ok"
    problems = ([f"object {d.address} {d.problem} (needed by {', '.join(v[:12] for v in d.versions) or 'no version'})"
                 for d in report.damaged_objects]
                + [f"dataset {p['dataset_id']}: {p['problem']}" for p in report.dataset_problems]
                + [f"version {p['version_id'][:12]}: {p['problem']}" for p in report.version_problems]
                + [f"table {p['table']}: {p['problem']}" for p in report.database_problems])
    return {"destination": str(root), "database_bytes": db_bytes, "objects_linked": linked, "objects_copied": copied,
            "object_bytes": object_bytes, "document_bytes": document_bytes, "verified": report.ok, "problems": problems,
            "versions": report.versions_checked, "datasets": report.datasets_checked,
            "seconds": round(time.perf_counter() - started, 3)}


def _download_objects(ledger: LedgerStore, copy: LedgerStore, root: Path) -> tuple[int, int]:
    """Download the objects the copy's versions use from the ledger's bucket into the copy, whose
    setting then says it keeps its own: ``(objects, bytes)``."""
    store = ledger.object_store()
    with copy._cursor() as con:
        con.execute("DELETE FROM ledger_meta WHERE key = 'objects_url'")
    copied = total = 0
    for address in sorted(copy.referenced_objects()):
        total += store.download(address, root / "objects" / address[:2] / f"{address[2:]}.safetensors")
        copied += 1
    return copied, total


def _copy_objects(ledger: LedgerStore, root: Path, *, link: bool, progress: Any = None) -> tuple[int, int, int]:
    """Copy (or hard-link) the ledger's object files into the copy: ``(linked, copied, bytes)``."""
    linked = copied = object_bytes = 0
    folders = sorted(p for p in ledger.objects_path.iterdir() if p.is_dir())
    stage(progress, "backup: objects", len(folders))
    for folder in folders:
        target = root / "objects" / folder.name
        target.mkdir(exist_ok=True)
        step(progress)
        for f in folder.iterdir():
            if f.name.startswith(".") or not f.is_file():  # a write in progress: not an object yet
                continue
            if link:
                try:
                    os.link(f, target / f.name)
                    linked += 1
                    object_bytes += f.stat().st_size
                    continue
                except OSError:  # another file system: copy
                    pass
            shutil.copy2(f, target / f.name)
            copied += 1
            object_bytes += f.stat().st_size
    return linked, copied, object_bytes
