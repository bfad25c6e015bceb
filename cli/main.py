"""``prov``: the command line of provenance.

Each command parses its arguments, calls one library function and renders the result: a table
for people, ``--json`` for programs. Library errors become one-line messages with documented
exit statuses in one place (:class:`provenance.cli.app.ProvGroup`). The group and what commands
share are in :mod:`provenance.cli.app`; the commands, one module per group, are imported here so
that every one of them is registered before ``prov`` runs.
"""

from __future__ import annotations

import io
import sys

from provenance.cli import (  # noqa: F401  (they register commands)
    admin,
    audits,
    datasets,
    exports,
    lineage,
    models,
    retract,
    runs,
    service,
)
from provenance.cli.app import main

__all__ = ["main", "run"]


def run() -> None:  # pragma: no cover - console entry point
    _whole_writes()
    main(prog_name="prov")


def _whole_writes() -> None:
    """Give stdout a buffer when it has none. With ``PYTHONUNBUFFERED`` set (as in many
    containers) or ``python -u``, stdout writes straight to its file, and CPython drops the rest
    of a write that a closed pipe took only part of: ``prov sql ... | head`` exited 0 with no
    error instead of 141 (docs/cli.md). A line-buffered writer over a buffer writes the whole
    text, so the reader's going away is seen; lines still appear as they are printed."""
    buffer = getattr(sys.stdout, "buffer", None)
    if isinstance(buffer, io.RawIOBase):
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(buffer), encoding=sys.stdout.encoding,
                                      errors=sys.stdout.errors, line_buffering=True)


if __name__ == "__main__":  # pragma: no cover
    _whole_writes()
    sys.exit(main())
