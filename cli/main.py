"""``prov``: the command line of provenance.

Each command parses its arguments, calls one library function and renders the result: a table
for people, ``--json`` for programs. Library errors become one-line messages with documented
exit statuses in one place (:class:`provenance.cli.app.ProvGroup`). The group and what commands
share are in :mod:`provenance.cli.app`; the commands, one module per group, are imported here so
that every one of them is registered before ``prov`` runs.
"""

from __future__ import annotations

import sys

from provenance.cli import (  # noqa: F401  (they register commands)
    admin,
    audits,
    datasets,
    exports,
    models,
    retract,
    runs,
    service,
)
from provenance.cli.app import main

__all__ = ["main", "run"]


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="prov")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
