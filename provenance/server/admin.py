"""What only an admin token may do (tag ``admin``; :mod:`provenance.server.app` checks the
scope): garbage collection, a backup on the server's machine, verification (and repair), and the
tokens: listed, created (the secret shown once) and revoked.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from provenance.errors import InvalidParameterError
from provenance.records import TokenRecord
from provenance.server.common import Body, JsonRoute, jsonable, service_of
from provenance.verify import VerifyReport

router = APIRouter(route_class=JsonRoute)


class GcBody(Body):
    apply: bool = False


@router.post("/gc", tags=["admin"])
def gc(request: Request, body: GcBody) -> dict[str, Any]:
    s = service_of(request)
    return s.call(s.ledger.gc, apply=body.apply)


class BackupBody(Body):
    destination: str = Field(description="a new or empty folder on the server's machine")
    link: bool = Field(False, description="hard-link the objects instead of copying them")


@router.post("/backup", tags=["admin"])
def backup(request: Request, body: BackupBody) -> dict[str, Any]:
    """A consistent copy of the served ledger, on the server's machine (writes wait meanwhile)."""
    s = service_of(request)
    if not os.path.isabs(body.destination):  # it was taken from the server's working folder, wherever that is
        raise InvalidParameterError(f"backup destination {body.destination!r} is not an absolute path: give a folder "
                                    "on the server's machine from its root")
    return s.call(s.ledger.backup, body.destination, link=body.link)


class VerifyBody(Body):
    objects: bool = False
    repair: bool = False


@router.post("/verify", tags=["admin"], response_model=None,
             responses={200: {"model": VerifyReport}})
def verify(request: Request, body: VerifyBody) -> dict[str, Any]:
    s = service_of(request)
    return jsonable(s.call(s.ledger.verify, objects=body.objects, repair=body.repair))


class TokenBody(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    scope: Literal["read", "write", "admin"]
    expires_days: float | None = Field(None, gt=0, le=36_500, description="days until it stops working")


@router.get("/tokens", tags=["admin"], response_model=None,
            responses={200: {"model": list[TokenRecord]}})
def tokens(request: Request) -> list[dict[str, Any]]:
    s = service_of(request)
    return jsonable(s.read(s.ledger.tokens))


@router.post("/tokens", tags=["admin"], status_code=201)
def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
    """A new token; the response is the only place the token itself appears."""
    s = service_of(request)
    record, secret = s.call(s.ledger.issue_token, body.name, body.scope, expires_days=body.expires_days)
    s.forget_tokens()
    return {**jsonable(record), "token": secret}


@router.delete("/tokens/{name}", tags=["admin"], response_model=None,
               responses={200: {"model": TokenRecord}})
def revoke_token(request: Request, name: str) -> dict[str, Any]:
    s = service_of(request)
    record = s.call(s.ledger.revoke_token, name)
    s.forget_tokens()
    return jsonable(record)
