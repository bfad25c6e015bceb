"""The OpenAPI document of ``prov serve``, committed as ``schemas/openapi.json``.

``python -m provenance.server.openapi`` writes it; ``--check`` says whether the committed file
drifted from the routes (the test suite fails when it did).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def document() -> dict[str, Any]:
    """The OpenAPI document, generated from the routes (no ledger needed)."""
    from provenance.server.app import create_app

    return create_app(None).openapi()  # type: ignore[arg-type]  # routes only: no ledger is opened


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def default_path() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "schemas" / "openapi.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = default_path()
    if "--check" in argv:
        if not path.exists() or path.read_text(encoding="utf-8") != text():
            print(f"{path} drifted from the routes: run python -m provenance.server.openapi", file=sys.stderr)
            return 1
        return 0
    path.write_text(text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
