"""The OpenAPI document of ``prov serve``, committed as ``schemas/openapi.json``: FastAPI's,
with the refusals and the token as the server has them (:func:`shaped`).

``python -m provenance.server.openapi`` writes it; ``--check`` says whether the committed file
drifted from the routes (the test suite fails when it did).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from provenance.wire import READ_POSTS


def document() -> dict[str, Any]:
    """The OpenAPI document, generated from the routes (no ledger needed)."""
    from provenance.server.app import create_app

    return create_app(None).openapi()  # type: ignore[arg-type]  # routes only: no ledger is opened


def shaped(doc: dict[str, Any], open_paths: tuple[str, ...]) -> None:
    """Say in the OpenAPI document what the server does: every refusal is ``{"error", "kind"}``
    (FastAPI's own document said a 422 is ``{"detail": [...]}``, which no answer is), and every
    route but the open ones takes a bearer token."""
    schemas = doc["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = {
        "title": "Error", "type": "object", "required": ["error", "kind"],
        "properties": {"error": {"type": "string", "description": "what is wrong, naming the field, parameter or record"},
                       "kind": {"type": "string", "description": "the library's exception class (InvalidParameterError, "
                                                                 "NotFoundError, AccessDeniedError, ...)"}}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    doc["components"]["securitySchemes"] = {"token": {
        "type": "http", "scheme": "bearer", "description": "a token from `prov token create NAME --scope SCOPE`"}}
    doc["security"] = [{"token": []}]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            answers = operation.setdefault("responses", {})
            if path in open_paths:
                operation["security"] = []
                continue
            # every refusal the server answers, so a client made from this document expects it
            # (it listed 401, 403 and 422 only: an unknown version's 404 was outside the contract)
            answers["401"] = {"description": "No token, or an unknown, revoked or expired one", "content": error}
            answers["403"] = {"description": "The token's scope does not allow the call", "content": error}
            answers["404"] = {"description": "No such record (version, tag, dataset, run, audit, ...)", "content": error}
            answers["422"] = {"description": "Refused: the error names the field, parameter or record", "content": error}
            if "requestBody" in operation:
                answers["413"] = {"description": "The body is larger than its limit (64 MiB of JSON; an upload: the "
                                                 "server's --max-upload)", "content": error}
            if method != "get" and path not in READ_POSTS:
                answers["400"] = {"description": "Refused by the ledger's state (a run that has ended)", "content": error}
                answers["409"] = {"description": "Applied already (a retried Idempotency-Key whose answer was lost: "
                                                 "`made` names what it made), or a pre-merge gate that failed",
                                  "content": error}


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
