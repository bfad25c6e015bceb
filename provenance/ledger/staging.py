"""The staging folder of registrations (``.prov/tmp/staging``): :class:`DocumentStage`, the
Parquet file a registration collects its document rows in, and what a process that died in the
middle of a registration left there."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from provenance.files import naming
from provenance.ledger._common import TMP_DIR, tree_bytes


def staging_entries(root: Path) -> list[tuple[Path, int]]:
    """What the staging folder holds, each file or folder with its bytes: outside a
    registration, what a process that died in one left there."""
    staging = root / TMP_DIR / "staging"
    if not staging.is_dir():
        return []
    found = []
    for entry in sorted(staging.iterdir()):
        with contextlib.suppress(OSError):  # gone meanwhile: nothing to report
            found.append((entry, tree_bytes(entry)))
    return found


def clean_staging(root: Path) -> Path:
    """Remove staging files and folders: called holding the ledger's lock, when no registration
    is running, so anything there was left by a process that died and was never part of the ledger."""
    staging = root / TMP_DIR / "staging"
    if staging.exists():
        for stale in staging.iterdir():
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return staging


#: Rows of a row group of the stage. Writes of fewer rows (a shard of a few documents) are kept
#: until a row group fills, or :data:`PENDING_BYTES` wait: each write was a row group, and a folder
#: of 30,000 small files made a file of 30,000 row groups whose metadata the writer held and wrote
#: (22 KB a file: 1 GiB). A registration's batch of several MB is written as it comes.
ROW_GROUP = 16_384
PENDING_BYTES = 1 << 20


class DocumentStage:
    """A Parquet file of document rows, written batch by batch (see ``document_stage``)."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self.rows = 0
        self.dataset_id = ""
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._written = False
        self._pending: list[pa.Table] = []  # rows not yet written: fewer than ROW_GROUP, under PENDING_BYTES
        self._pending_rows = self._pending_bytes = 0

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if not self.dataset_id and table.num_rows:
            self.dataset_id = table.column("dataset_id")[0].as_py()
        if self.schema is None:
            self.columns, self.schema = table.column_names, table.schema
        elif not table.schema.equals(self.schema):  # as the writer would refuse it, at this write
            raise ValueError(f"a batch's schema {table.schema} is not the stage's {self.schema}")
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        self._written = True
        if self._pending_rows >= ROW_GROUP or self._pending_bytes >= PENDING_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the pending rows, in row groups of ``ROW_GROUP``."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        with naming(self.path):  # a full disk: "PATH: No space left on device", and nothing registered
            if self._writer is None:
                # Statistics of the columns queries filter on: the file may become a dataset's own.
                self._writer = pq.ParquetWriter(
                    self.path, table.schema, compression="none", use_dictionary=False,
                    write_statistics=[c for c in ("doc_id", "dataset_id", "shard_index") if c in table.column_names],
                )
            self._writer.write_table(table, row_group_size=ROW_GROUP)

    def close(self) -> bool:
        """Finish the file; True when it holds rows."""
        self._flush()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with naming(self.path):
                writer.close()
        return self._written

    def discard(self) -> None:
        """Close the file, quietly (a write that failed may fail again here), and remove it."""
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0  # not written only to be removed
        with contextlib.suppress(OSError):
            self.close()
        self.path.unlink(missing_ok=True)
