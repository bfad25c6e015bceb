"""What nothing in the ledger refers to: unreferenced objects, unfinished object writes, spill
files, staged rows and Ray folders of killed processes, unlisted Parquet document folders; listed
or removed by :func:`gc` (``prov gc``).
"""

from __future__ import annotations

import shutil
from typing import Any

from provenance.errors import StorageUnreachableError, warn
from provenance.ledger import LedgerStore


def gc(ledger: LedgerStore, *, apply: bool = False) -> dict[str, Any]:
    """Objects that no version refers to, temporary files of object writes that never finished,
    DuckDB's spill files of killed processes (:meth:`LedgerStore.stale_spill_files`), a server's
    uploads no client registered within a day (:meth:`LedgerStore.stale_uploads`), the rows a
    killed registration staged (:meth:`LedgerStore.stale_staging`), the folders of killed Ray
    registrations and dedup audits (:meth:`LedgerStore.stale_ray_folders`), and
    folders of Parquet document files that no dataset lists (a registration killed between
    writing them and its commit): listed, or removed with ``apply``. ``temporary_files`` holds the
    Ray folders too; ``ray_folders`` names each again with its bytes and whether it was removed
    (``False`` in a dry run, or where a file in it could not be removed: a warning says so);
    ``not_removed`` names each object or temporary file that could not be removed (``FILE:
    REASON``; a warning says so, and the others are removed all the same).
    ``left_alone`` names what else ``.prov/tmp`` holds, with its bytes: provenance did not write
    it there, and never removes it (not counted in ``bytes``). Runs
    holding the ledger's lock, so no commit or registration is writing meanwhile (in a server:
    refused while commits are writing objects, and commits that start meanwhile wait)."""
    store = ledger.object_store()
    with ledger.session(), ledger.write_lock, ledger.object_writers.collecting():
        referenced = ledger.referenced_objects()
        unreferenced = [a for a in store.addresses() if a not in referenced]
        temporaries = list(store.temporaries()) + ledger.stale_spill_files() + ledger.stale_uploads()
        staged = ledger.stale_staging(remove=apply)  # a killed registration's staged rows
        rays = ledger.stale_ray_folders()
        folders = ledger.unlisted_document_folders()
        foreign = [{"path": str(p), "bytes": n} for p, n in ledger.foreign_temporaries()]
        sizes = ([store.size(a) or 0 for a in unreferenced] + [t.stat().st_size for t in temporaries]
                 + [n for _, n in staged] + [n for _, n in rays] + list(folders.values()))
        freed = 0
        ray_folders = [{"path": str(folder), "bytes": n, "removed": False} for folder, n in rays]
        not_removed: list[str] = []  # refused one by one (an immutable file, another user's): gc goes on
        if apply:
            freed = sum(n for _, n in staged)
            for a in unreferenced:
                try:
                    freed += store.delete(a)
                except StorageUnreachableError:  # no answer about any object: stop, as before
                    raise
                except OSError as exc:
                    not_removed.append(f"{store.location(a)}: {exc.strerror or exc}")
            for (folder, n), listed in zip(rays, ray_folders):
                shutil.rmtree(folder, ignore_errors=True)
                if folder.exists():  # a file in it could not be removed: say so, count none of it
                    warn(f"{folder}: could not remove all of it (permissions or an immutable file); "
                         "prov gc lists it again until it can")
                else:
                    listed["removed"] = True
                    freed += n
            for t in temporaries:
                try:
                    size = t.stat().st_size
                    t.unlink()
                except FileNotFoundError:  # gone meanwhile
                    continue
                except OSError as exc:
                    not_removed.append(f"{t}: {exc.strerror or exc}")
                    continue
                freed += size
            if not_removed:
                warn(f"could not remove {len(not_removed)} file(s) (permissions, or an immutable file): "
                     f"{'; '.join(not_removed[:3])}{' …' if len(not_removed) > 3 else ''}; prov gc lists them again "
                     "until it can")
            for d in folders:
                ledger.document_store.remove_folder(d)
            freed += sum(folders.values())
    return {"unreferenced": unreferenced,
            "temporary_files": [str(t) for t in temporaries] + [p for p, _ in staged] + [str(p) for p, _ in rays],
            "ray_folders": ray_folders, "document_folders": [str(d) for d in folders], "bytes": sum(sizes),
            "removed": apply, "freed": freed, "not_removed": not_removed, "left_alone": foreign}

