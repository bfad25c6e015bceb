"""The ledger's schema: the numbered migrations shipped in ``provenance/schemas/migrations``
(``NNNN_name.sql``, numbered 1..n without gaps), and applying the ones a ledger lacks, each in a
transaction together with the ``schema_migrations`` row that records it, so applying them twice
changes nothing. Mixed into :class:`~provenance.ledger.LedgerStore`, whose ``init`` creates the
schema and whose ``open`` migrates an older ledger and refuses a newer one. Kept apart from the
connections because it is the one place that knows how the schema evolves.
"""

from __future__ import annotations

import re
from importlib import resources

from provenance.errors import (
    LedgerDamagedError,
    LedgerNotFoundError,
    LedgerReadOnlyError,
    ProvenanceError,
    SchemaVersionError,
    warn,
)
from provenance.ledger._common import _now

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


class SchemaMigrations:
    """Migrating a ledger to the shipped schema and reading its version (``self`` is a
    :class:`~provenance.ledger.LedgerStore`)."""

    def _migrate(self, *, create: bool, meta: dict[str, str] | None = None) -> None:
        """Apply the migrations the ledger lacks, each in a transaction with its row; a new ledger
        (``create``) gets all of them and its ``meta`` rows (``ledger_meta``) in one transaction,
        so that an init killed half-way leaves a database with no tables, which the next
        ``init`` completes, never a ledger of an older schema."""
        shipped = migrations()
        with self._cursor() as con:
            tables = dict(con.execute(
                "SELECT table_name = 'schema_migrations', count(*) FROM information_schema.tables GROUP BY 1"
            ).fetchall())
            exists = tables.get(True, 0)
            if not exists and not create:
                if not tables:
                    raise LedgerNotFoundError(
                        f"{self.db_path} is not a provenance ledger: it holds no tables, as a `prov init` stopped "
                        f"before it finished leaves it; run `prov init {self.root.parent}` (or Ledger.init) again to "
                        "finish it")
                raise LedgerNotFoundError(f"{self.db_path} is not a provenance ledger (no schema_migrations table)")
            if exists and not create:  # before anything is migrated: a database that lost writes is refused
                self._check_writes(con)
            current = con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0] if exists else 0
            current = current or 0
            if exists and not create and current == 0:  # every migration again: "schema_migrations already exists"
                raise LedgerDamagedError(
                    f"the ledger database {self.db_path} has a schema_migrations table with no rows, so which "
                    "migrations it holds is unknown (no provenance leaves it so: it was changed by other means). "
                    "Restore it from a backup copy")
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
            todo = shipped[current:]
            for batch in ([todo] if current == 0 else [[m] for m in todo]):
                con.execute("BEGIN TRANSACTION")
                try:
                    for version, name, sql in batch:
                        con.execute(sql)
                        con.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()]
                        )
                        if version == 1:
                            con.execute(
                                "INSERT INTO ledger_meta VALUES ('created_at', ?), ('created_by', ?)",
                                [_now().isoformat(), "provenance"],
                            )
                    if current == 0:
                        for key, value in (meta or {}).items():
                            con.execute("INSERT INTO ledger_meta VALUES (?, ?)", [key, value])
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
        if 0 < current < len(shipped):  # for good: an older provenance refuses the ledger from now on
            warn(f"ledger {self.root}: migrated from schema version {current} to {len(shipped)}; a "
                 f"provenance that understands only version {current} can no longer open it")

    def schema_version(self) -> int:
        with self._cursor() as con:
            return int(con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0])
