"""Queries and writes of the service tables: API tokens, the access log, idempotent responses.

Mixed into :class:`~provenance.ledger.LedgerStore`; the server (:mod:`provenance.server`) is
their only user besides ``prov token``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from provenance.errors import InvalidParameterError, NotFoundError, shown
from provenance.ledger._common import _now
from provenance.records import TokenRecord

SCOPES = ("read", "write", "admin")  # each allows what the ones before it allow


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh API token: ``prov_`` and 43 URL-safe characters (256 random bits)."""
    return "prov_" + secrets.token_urlsafe(32)


class ServiceQueries:
    """API tokens, the access log and the idempotency table."""

    def issue_token(self, name: str, scope: str, *, expires_days: float | None = None) -> tuple[TokenRecord, str]:
        """A new token named ``name``: its record and the token itself, which is not stored (only
        its hash) and so can be shown once."""
        from provenance.records import check_name

        check_name(name, "token name")
        if expires_days is not None and not 0 < expires_days <= 36_500:
            raise InvalidParameterError(f"expires must be a number of days in (0, 36500], got {expires_days}")
        secret = new_token()
        expires = _now() + timedelta(days=expires_days) if expires_days else None
        return self.create_token(name, scope, secret, expires), secret

    def create_token(self, name: str, scope: str, secret: str, expires_at: datetime | None) -> TokenRecord:
        """Store a token (its hash only) under ``name``; ``secret`` is the token the caller prints once."""
        if scope not in SCOPES:
            raise InvalidParameterError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        record = TokenRecord(name=name, scope=scope, created_at=_now(), expires_at=expires_at, revoked_at=None)
        with self.transaction() as tx:
            found = tx._con.execute("SELECT revoked_at FROM tokens WHERE name = ?", [name]).fetchall()
            if found:  # a name keeps meaning one token in the access log: never reused
                state = " (revoked)" if found[0][0] is not None else ""
                raise InvalidParameterError(f"a token named {name!r} exists{state}; token names are not reused: "
                                            "choose another name")
            tx._con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                            [name, scope, token_hash(secret), record.created_at, expires_at])
        return record

    def tokens(self) -> list[TokenRecord]:
        """Every token (revoked and expired ones too), by name; never the token itself."""
        with self._cursor() as con:
            rows = con.sql("SELECT name, scope, created_at, expires_at, revoked_at FROM tokens ORDER BY name"
                           ).to_arrow_table().to_pylist()
        return [TokenRecord(**r) for r in rows]

    def revoke_token(self, name: str) -> TokenRecord:
        """Revoke the token ``name``; the last live admin token is kept (without one the server
        could not manage tokens, and ``prov serve`` does not start)."""
        live = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
        with self.transaction() as tx:
            found = tx._con.execute(f"SELECT scope = 'admin' AND {live} FROM tokens WHERE name = ?",
                                    [_now(), name]).fetchall()
            if not found:
                raise NotFoundError(f"no token named {shown(name)}")
            if found[0][0] and tx._con.execute(f"SELECT count(*) FROM tokens WHERE scope = 'admin' AND {live}",
                                               [_now()]).fetchall()[0][0] == 1:
                raise InvalidParameterError(
                    f"token {name!r} is the last live admin token: revoked, nothing could manage tokens through the "
                    "server and prov serve would not start; create another admin token first")
            tx._con.execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE name = ?", [_now(), name])
        return next(t for t in self.tokens() if t.name == name)

    def has_admin_token(self) -> bool:
        with self._cursor() as con:
            return bool(con.execute(
                """SELECT count(*) FROM tokens WHERE scope = 'admin' AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > ?)""", [_now()]).fetchall()[0][0])

    def check_token(self, secret: str) -> TokenRecord | None:
        """The live token whose hash matches ``secret`` (None: unknown, revoked or expired). The
        hash is compared in constant time."""
        digest = token_hash(secret)
        with self._cursor() as con:
            rows = con.sql("SELECT name, scope, token_hash, created_at, expires_at, revoked_at FROM tokens "
                           "WHERE token_hash = ?", params=[digest]).to_arrow_table().to_pylist()
        for r in rows:
            if hmac.compare_digest(r.pop("token_hash"), digest):
                record = TokenRecord(**r)
                if record.revoked_at is None and (record.expires_at is None or record.expires_at > _now()):
                    return record
        return None

    def log_access(self, rows: list[dict[str, Any]]) -> None:
        """Append rows of ``logged_at, token, method, path, status, idempotency_key, seconds``."""
        if not rows:
            return
        with self.transaction() as tx:
            tx._con.executemany("INSERT INTO access_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [[r["logged_at"], r["token"], r["method"], r["path"], r["status"], r["idempotency_key"],
                                  r["seconds"]] for r in rows])

    def idempotent_response(self, key: str) -> dict[str, Any] | None:
        """The response stored for ``key`` (``token, method, path, status, content_type, body,
        request_sha256``), if any."""
        with self._cursor() as con:
            rows = con.sql("SELECT token, method, path, status, content_type, body, request_sha256 FROM idempotency "
                           "WHERE idempotency_key = ?", params=[key]).to_arrow_table().to_pylist()
        return rows[0] if rows else None

    def store_response(self, key: str, token: str | None, method: str, path: str, status: int,
                       content_type: str | None, body: bytes, *, access: dict[str, Any] | None = None,
                       request_sha256: str | None = None) -> None:
        """Keep the answer to the write sent with ``key`` (replacing the mark its transaction left),
        and the SHA-256 of the request's body, with its ``access`` log row (as :meth:`log_access`
        takes them) in the same transaction."""
        with self.transaction() as tx:
            if access is not None:
                r = access
                tx._con.execute("INSERT INTO access_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [r["logged_at"], r["token"], r["method"], r["path"], r["status"], r["idempotency_key"],
                                 r["seconds"]])
            tx._con.execute(
                """INSERT INTO idempotency (idempotency_key, token, method, path, status, content_type, body, created_at,
                                           request_sha256)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key)
                   DO UPDATE SET status = excluded.status, content_type = excluded.content_type, body = excluded.body,
                                 request_sha256 = excluded.request_sha256""",
                [key, token, method, path, status, content_type, body, _now(), request_sha256])
