"""The FastAPI application of ``prov serve``: auth (default deny), idempotent writes, the access
log, errors as JSON, and ``serve()`` running it on uvicorn.

**Auth.** Every call under ``/api/v1`` needs ``Authorization: Bearer TOKEN`` (``prov token
create``): a read token may read, a write token may also write, an admin token may also manage
tokens and run ``gc`` and ``verify``. 401 for a missing or unknown token, 403 for a scope that does
not allow the call. A server started with ``auth=False`` (``--insecure-no-auth``) allows
everything and listens on the loopback only. ``/healthz`` and the OpenAPI document are open.

**Idempotency.** A write sent with ``Idempotency-Key`` is applied once: its response is stored
with the key, and a retry with the same key (the connection dropped after the server got it)
gets the stored response, marked ``Idempotent-Replayed: true``, without applying it again.
Retries of one key wait for the first to finish. A key answers again only the request it came
with: the same method, path and token, and a body of the same SHA-256 (kept with the answer); any
other is refused (422), so a reused key never drops a different write while answering "done".

**Access log.** Every write is recorded (time, the token's name, method, path, status,
idempotency key, seconds) in ``access_log``, which ``prov sql`` can query.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from provenance import __version__, errors
from provenance.files import atomic_write_text, describe
from provenance.ledger import SERVING_FILE, WRITE_KEY
from provenance.ledger._common import _now
from provenance.server import LedgerService
from provenance.server.common import MAX_JSON
from provenance.wire import API, READ_POSTS, WARNINGS_HEADER, error_body, status_of, warnings_header

_ADMIN = (f"{API}/tokens", f"{API}/gc", f"{API}/verify", f"{API}/backup", f"{API}/audits/delete")
_SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}
#: The errors of a disk that refuses a write: full, over a quota, over the file size limit.
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OPEN_PATHS = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
#: The warnings raised while the request this context answers runs (``(category, message)``).
_HELD: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("prov_held_warnings",
                                                                                     default=None)


def _relay_warnings() -> None:
    """Send the library's warnings to the client whose request raised them (in the answer's
    :data:`~provenance.wire.WARNINGS_HEADER`), where they were printed in the server's log only: a
    gate comparing a training set as evaluation data said so to no one who asked. Each request
    holds its own list (a context variable, which the threads answering it share); a warning
    raised outside a request goes to the log as before. Every warning of the library is passed on,
    not only its first at each place."""
    if getattr(warnings.showwarning, "prov_relay", False):
        return
    shown = warnings.showwarning

    def relay(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
              line: str | None = None) -> None:
        held = _HELD.get()
        if held is None:
            return shown(message, category, filename, lineno, file, line)
        held.append((category.__name__, str(message)))

    relay.prov_relay = True
    warnings.showwarning = relay
    warnings.filterwarnings("always", module=r"provenance(\.|$)")
    warnings.filterwarnings("always", category=errors.ProvenanceWarning)  # told to the user's line, not provenance's


def _bearer(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    scheme, _, secret = headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _reads(method: str, path: str) -> bool:
    return method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path in READ_POSTS)


def needed_scope(method: str, path: str) -> str:
    if path.startswith(_ADMIN):
        return "admin"
    return "read" if _reads(method, path) else "write"


def create_app(service: LedgerService) -> FastAPI:
    """The application serving ``service``'s ledger."""
    from provenance.server.openapi import shaped
    from provenance.server.routes import router

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # SIGINT/SIGTERM: uvicorn drains the requests in flight, then this
        yield
        if service is not None:
            _unserve(service.ledger.root)  # uvicorn then raises the signal again: no later finally runs
            service.close()  # the ledger closed cleanly (checkpointed) before the process exits

    app = FastAPI(title="provenance ledger", version=__version__, lifespan=lifespan,
                  description="Training-data provenance: datasets, model versions, runs, merges, lineage and audits.")
    app.state.service = service

    @app.exception_handler(errors.ProvenanceError)
    async def library_error(request: Request, exc: errors.ProvenanceError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_of(exc))

    @app.exception_handler(OSError)
    async def storage_error(request: Request, exc: OSError) -> JSONResponse:
        # The server's own disk refused a write (full, over a quota or a file size limit): 507,
        # "Insufficient Storage" (RFC 4918), naming the file; any other OS error is the server's: 500.
        return JSONResponse({"error": describe(exc), "kind": "OSError"},
                            status_code=507 if exc.errno in _STORAGE_FULL else 500)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (no such route, a method the route lacks) in the ledger's shape: a
        # client newer than this server then says what is missing, not "not a ledger server".
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read a JSON body
            return JSONResponse({"error": f"invalid request: {_unreadable(exc.__cause__, request.headers)}",
                                 "kind": "InvalidParameterError"}, status_code=422)
        what = {404: "no such API route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        headers = exc.headers
        if exc.status_code == 405:  # every method of the path, not only those of the first route matching it
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(app.router, request.scope))}
        return JSONResponse({"error": f"{what}: {request.method} {request.url.path} (server {__version__})",
                             "kind": "ProvenanceError"}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type")
        problems = "; ".join(_body_problem(e, kind) or f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}", "kind": "InvalidParameterError"},
                            status_code=422)

    @app.exception_handler(ValidationError)
    async def bad_value(request: Request, exc: ValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid parameter: {problems}", "kind": "InvalidParameterError"},
                            status_code=422)

    _relay_warnings()
    app.add_middleware(Guard, service=service, router=app.router)

    @app.get("/healthz", tags=["service"])
    def healthz(request: Request) -> dict[str, Any]:
        """Whether the server is up (no token needed), and to a caller with a valid token the
        ledger's path on the server's disk (not told to anyone who asks)."""
        ledger = service.ledger
        body = {"status": "ok", "schema_version": service.read(ledger.schema_version), "version": __version__,
                "auth": service.auth}
        secret = _bearer(request.headers)
        if not service.auth or (secret is not None and service.check_token(secret) is not None):
            body["ledger"] = str(ledger.root)
        return body

    app.include_router(router, prefix=API)
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            shaped(plain_openapi(), _OPEN_PATHS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _routed(router: Any, scope: dict) -> bool:
    """Whether a route answers ``scope``'s method and path."""
    from starlette.routing import Match

    return any(route.matches(scope)[0] == Match.FULL for route in router.routes)


def _allowed(router: Any, scope: dict) -> list[str]:
    """The methods some route of ``scope``'s path answers (HEAD wherever GET is). Starlette's
    ``Allow`` named the methods of the first route whose path matched: ``GET`` for ``DELETE
    /api/v1/datasets``, whose POST registers, and for ``/api/v1/audits/delete``, a POST route."""
    found = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if _routed(router, {**scope, "method": m})]
    return [*found[:1], "HEAD", *found[1:]] if "GET" in found else found


def _unreadable(cause: BaseException, headers: Any) -> str:
    """Why a body sent as JSON could not be read (FastAPI said only "There was an error parsing
    the body", HTTP 400, for a body that is not UTF-8, gzip'ed, nested too deeply or holding a
    number of more digits than Python converts)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return (f"the body is sent with Content-Encoding: {encoding}, which this route does not read: send the JSON "
                "as it is (OpenLineage events, POST /api/v1/lineage, may be gzip'ed)")
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not JSON: it is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at offset "
                f"{cause.start:,})")
    if isinstance(cause, RecursionError):
        return "the body nests its arrays or objects too deeply to be read"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return f"the body holds a number of more than {sys.get_int_max_str_digits():,} digits"
    return f"the body could not be read as JSON ({type(cause).__name__}: {cause})"


def _body_problem(error: dict[str, Any], content_type: str | None) -> str | None:
    """What is wrong with a JSON body as a whole, said plainly: pydantic's words for it ("body.0:
    JSON decode error", "Input should be a valid dictionary" for a body curl -d sent as a form)."""
    if error["loc"][:1] != ("body",) or len(error["loc"]) > 2:
        return None
    if error["type"] == "json_invalid":
        return f"the body is not JSON ({error.get('ctx', {}).get('error', 'unreadable')} at character {error['loc'][-1]})"
    if isinstance(error.get("input"), bytes):  # read as bytes: it did not say it is JSON
        return ("the body must be a JSON object sent with Content-Type: application/json (this request's: "
                f"{content_type or 'none'})")
    if error["type"] == "missing" and len(error["loc"]) == 1:
        return "the body is empty: this route takes a JSON object"
    return None


class Guard:
    """Auth, idempotency and the access log, as plain ASGI middleware (bodies stream through it
    untouched, which matters for uploads and checkouts)."""

    def __init__(self, app: Any, service: LedgerService, router: Any = None):
        self.app = app
        self.service = service
        self.router = router  # the routes: a method or path the server lacks is said to be, to any token
        self.key_locks = _KeyLocks()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            return await self(_as_get(scope), receive, _headers_only(send))
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            return await self.app(scope, receive, send)
        held = _HELD.set([])  # this request's warnings (_relay_warnings)
        try:
            return await self._guarded(scope, receive, send)
        finally:
            _HELD.reset(held)

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import Headers

        started = time.perf_counter()
        service, method, path = self.service, scope["method"], scope["path"]
        headers = Headers(scope=scope)
        status = [500]

        async def timed(message: dict) -> None:  # the status, and how long the server took to answer
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"server-timing", f"app;dur={(time.perf_counter() - started) * 1e3:.1f}".encode())]
                if held := _HELD.get():
                    message["headers"].append((WARNINGS_HEADER.encode(), warnings_header(held)))
            await send(message)

        token = None
        if service.auth:
            secret = _bearer(headers)
            if secret is None:
                return await _deny(scope, receive, send, 401, NO_TOKEN)
            known, token = service.cached_token(secret)
            if not known:
                token = await run_in_threadpool(service.check_token, secret)
            if token is None:
                return await _deny(scope, receive, send, 401, "unknown, revoked or expired token")
            need = needed_scope(method, path)
            # a route the server lacks answers 404 or 405 to every token (a read token's POST to a
            # route newer than this server was told it "needs write", which no token could pass)
            if _SCOPE_RANK[token.scope] < _SCOPE_RANK[need] and (self.router is None or _routed(self.router, scope)):
                return await _deny(scope, receive, send, 403,
                                   f"token {token.name!r} has scope {token.scope}; {method} {path} needs {need}")
        name = token.name if token else None
        scope.setdefault("state", {})["token"] = name
        scope["state"]["token_scope"] = token.scope if token else "admin"  # no auth: the loopback's own user
        length = headers.get("content-length")
        if (headers.get("content-type", "").startswith("application/json") and length and length.isdigit()
                and int(length) > MAX_JSON):
            return await JSONResponse({"error": f"a JSON body may have at most {MAX_JSON:,} bytes, this one has "
                                       f"{int(length):,}", "kind": "InvalidParameterError"},
                                      status_code=413)(scope, receive, send)
        if _reads(method, path):
            return await self.app(scope, receive, timed)
        key = headers.get("idempotency-key")

        def access() -> dict[str, Any]:
            return {"logged_at": _now(), "token": name, "method": method, "path": path, "status": status[0],
                    "idempotency_key": key, "seconds": time.perf_counter() - started}

        if key is None:
            await self.app(scope, receive, timed)
            await _keep(service.ledger.log_access, [access()])
            return
        with self.key_locks.hold(key) as lock:  # one request per key at a time: a retry waits for the first
            if not lock.acquire(blocking=False):
                await run_in_threadpool(lock.acquire)
            try:
                await self._idempotent(scope, receive, timed, key, name, method, path, status, access)
            finally:
                lock.release()

    async def _idempotent(self, scope: dict, receive: Any, send: Any, key: str, token: str | None, method: str,
                          path: str, status: list[int], access: Callable[[], dict[str, Any]]) -> None:
        """Answer a write sent with an Idempotency-Key: the stored answer when the key was seen, else
        the write's, stored with the access-log row in one transaction before it is sent."""
        from starlette.concurrency import run_in_threadpool

        service = self.service
        if len(key) > 200 or not key.strip():  # an empty key would be every write's, each refused as another's
            said = ("at most 200 characters" if key.strip()
                    else "empty (leave the header out, or send a new key per write)")
            return await JSONResponse({"error": f"Idempotency-Key: {said}",
                                       "kind": "InvalidParameterError"}, status_code=422)(scope, receive, send)
        stored = await run_in_threadpool(service.read, service.ledger.idempotent_response, key)
        if stored is not None:
            sent = await _BodyHash(receive).rest()  # a retry sends its request again: the same one?
            if (stored["method"], stored["path"]) != (method, path):
                response: Response = JSONResponse(
                    {"error": f"Idempotency-Key {key!r} was used for {stored['method']} {stored['path']}",
                     "kind": "InvalidParameterError"}, status_code=422)
            elif stored["token"] != token:
                response = JSONResponse({"error": f"Idempotency-Key {key!r} was used by another token's write",
                                         "kind": "InvalidParameterError"}, status_code=422)
            elif stored["request_sha256"] is not None and stored["request_sha256"] != sent:
                response = JSONResponse(
                    {"error": f"Idempotency-Key {key!r} was used for a write with another body: a retry sends the "
                     "same request again, a new write needs a new key", "kind": "InvalidParameterError"},
                    status_code=422)
            elif stored["status"] == 0:  # applied, and its answer not kept (the server stopped; a secret)
                made = _made(stored["body"])
                response = JSONResponse({"error": _not_kept(key, made), "kind": "AlreadyAppliedError", "made": made},
                                        status_code=409)
            else:
                response = Response(stored["body"], status_code=stored["status"], media_type=stored["content_type"],
                                    headers={"Idempotent-Replayed": "true"})
            status[0] = response.status_code
            await response(scope, receive, send)
            return await _keep(service.ledger.log_access, [access()])
        start: dict = {}
        body: list[bytes] = []

        async def capture(message: dict) -> None:  # a write's answer is small: kept, stored, then sent
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        request = _BodyHash(receive)  # the request's body hashed as the app reads it
        mark = WRITE_KEY.set((key, token, method, path))
        try:
            await self.app(scope, request.receive, capture)
        finally:
            WRITE_KEY.reset(mark)
        sent = await request.rest()  # with what the app did not read (it answered first), for a retry's check
        data = b"".join(body)
        kind = next((v.decode("latin-1") for k, v in start.get("headers", []) if k.lower() == b"content-type"), None)
        status[0] = start.get("status", 500)
        if status[0] < 500:
            kept_status, kept = status[0], data
            if (method, path) == ("POST", f"{API}/tokens") and status[0] < 300:
                # a new token's secret is shown once and never kept: a retry learns the token was made
                kept_status, kept = 0, json.dumps({"token": json.loads(data).get("name")}).encode()
            await _keep(service.ledger.store_response, key, token, method, path, kept_status, kind, kept,
                        access=access(), request_sha256=sent)
        else:
            await _keep(service.ledger.log_access, [access()])
        await send(start)
        await send({"type": "http.response.body", "body": data})


def _as_get(scope: dict) -> dict:
    """A HEAD request answered as its GET is (RFC 9110: a server supports both): the routes are
    GET routes, and HEAD got 405, ``HEAD /healthz`` from a load balancer's health check too."""
    return {**scope, "method": "GET"}


def _headers_only(send: Any) -> Callable[[dict], Any]:
    """``send`` passing a response's status and headers (its length included) and none of its body."""

    async def head(message: dict) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head


def _not_kept(key: str, made: dict[str, str]) -> str:
    """Why a retried write gets no answer but the news that it was applied, and what to do."""
    if "token" in made:
        return (f"the write with Idempotency-Key {key!r} made token {made['token']!r}; its secret is shown once and "
                "is not kept: revoke the token and create another if the answer was lost")
    said = "; ".join(f"it made {what.removesuffix('_id')} {ref}" for what, ref in made.items())
    return (f"the write with Idempotency-Key {key!r} was applied before the server stopped, and its answer was lost: "
            f"{said + ': read it' if said else 'read the resource'} to see its result")


def _made(body: bytes | None) -> dict[str, str]:
    """What a write whose answer was lost made, as its transaction's mark keeps it (empty for
    marks left before the mark kept it)."""
    try:
        made = json.loads(body or b"{}")
    except ValueError:
        return {}
    return {k: v for k, v in made.items() if isinstance(v, str)} if isinstance(made, dict) else {}


class _BodyHash:
    """The SHA-256 of a request's body: :meth:`receive` passes the ASGI messages on and hashes
    their bodies; :meth:`rest` reads (and hashes) what is left, and gives the digest."""

    def __init__(self, receive: Any):
        self._receive, self._digest, self._ended = receive, hashlib.sha256(), False

    async def receive(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.request":
            self._digest.update(message.get("body", b""))
            self._ended = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self._ended = True
        return message

    async def rest(self) -> str:
        while not self._ended:
            await self.receive()
        return self._digest.hexdigest()


async def _keep(write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Keep a request's access-log row (and a write's answer, for its Idempotency-Key). On a full
    disk this write fails too: the answer is sent all the same (a 507 saying so, or the write's),
    and the failure goes to the server's log. A write whose answer could not be kept is answered
    409 ``AlreadyAppliedError`` when retried with its key, never applied twice."""
    from starlette.concurrency import run_in_threadpool

    try:
        await run_in_threadpool(write, *args, **kwargs)
    except errors.StorageFullError as exc:
        logging.getLogger("uvicorn.error").warning("could not keep the access log row: %s", exc)


class _KeyLocks:
    """A lock per Idempotency-Key while requests with it are in flight (then forgotten)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, requests holding or waiting for it]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[threading.Lock]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]


NO_TOKEN = ("this server needs a token (Authorization: Bearer TOKEN): prov reads it from PROV_TOKEN, Python from "
            "Ledger.open(URL, token=...); the server's admin makes one with `prov token create NAME --scope read`")


async def _deny(scope: dict, receive: Any, send: Any, status: int, message: str) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await JSONResponse({"error": message, "kind": "AccessDeniedError"}, status_code=status,
                       headers=headers)(scope, receive, send)


def serve(path: str, *, host: str = "127.0.0.1", port: int = 8765, auth: bool = True,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None, max_upload: int = 64 << 30,
          log_level: str = "info") -> None:
    """Open the ledger at ``path`` and serve it until interrupted (SIGINT/SIGTERM drain the
    requests in flight, then the ledger is closed)."""
    import uvicorn

    if not isinstance(host, str) or not host.strip():  # it said "cannot listen on :0", or "not " with nothing after
        raise errors.InvalidParameterError(f"--host is empty: give the address to listen on (127.0.0.1, or 0.0.0.0 for "
                                           f"every interface), got {host!r}")
    if not auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise errors.InvalidParameterError(f"--insecure-no-auth serves the loopback only, not {host}")
    _check_listen(host, port)
    if ssl_certfile:
        _check_tls(ssl_certfile, ssl_keyfile)
    service = LedgerService(path, auth=auth, max_upload=max_upload)
    try:
        if auth and not service.ledger.has_admin_token():
            raise errors.InvalidParameterError(
                f"ledger {service.ledger.root} has no admin token, so nobody could manage this server: run "
                "`prov token create NAME --scope admin` first (or serve with --insecure-no-auth, loopback only)")
        scheme = "https" if ssl_certfile else "http"
        serving = service.ledger.root / SERVING_FILE  # so that a process refused the ledger is told where to go
        with contextlib.suppress(OSError):  # a hint only: a disk that refuses it does not stop the server
            where = f"[{host}]" if ":" in host else host  # an IPv6 address: http://::1:8765 is no URL
            atomic_write_text(serving, json.dumps({"pid": os.getpid(), "url": f"{scheme}://{where}:{port}" if port else None}))
        try:
            uvicorn.run(create_app(service), host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                        log_level=log_level, timeout_graceful_shutdown=30)
        except SystemExit as exc:  # uvicorn's "startup failed" is 3, which is prov's "not found"
            if exc.code != 3:
                raise
            raise errors.ProvenanceError(f"the server did not start on {host}:{port} (uvicorn's log above says why)") from None
        finally:
            _unserve(service.ledger.root)
    finally:
        service.close()


def _check_listen(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (a port in use, a host not of this
    machine) before the ledger is opened, naming it."""
    try:
        addresses = {info[4][:2]: info[:3] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                         flags=socket.AI_PASSIVE)}
    except socket.gaierror as exc:
        raise errors.InvalidParameterError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for address, (family, kind, proto) in addresses.items():
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
            try:
                probe.bind(address)
            except OSError as exc:
                raise errors.InvalidParameterError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _check_tls(certfile: str, keyfile: str | None) -> None:
    """Refuse a certificate or key uvicorn could not load (its error named neither: ``[SSL] PEM
    lib (_ssl.c:3905)``) before the ledger is opened, naming the file. An encrypted key is left to
    uvicorn, which asks for its passphrase on a terminal; without one it said ``Invalid argument``."""
    import ssl

    class _Encrypted(Exception):
        pass

    def passphrase() -> bytes:
        raise _Encrypted

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError) as exc:
        raise errors.InvalidParameterError(
            f"--ssl-certfile {certfile} is not a PEM certificate (-----BEGIN CERTIFICATE-----): {exc}") from None
    try:
        context.load_cert_chain(certfile, keyfile, password=passphrase)
    except _Encrypted:
        if sys.stdin.isatty():
            return
        raise errors.InvalidParameterError(
            f"--ssl-keyfile {keyfile} is encrypted and there is no terminal to ask its passphrase on: serve with "
            f"the key decrypted (openssl pkey -in {keyfile} -out KEY.pem), readable by the server's user only") from None
    except (ssl.SSLError, OSError) as exc:
        raise errors.InvalidParameterError(
            f"--ssl-keyfile {keyfile} is not the PEM private key of the certificate in {certfile}: {exc}") from None


def _unserve(root) -> None:
    """Remove the ledger's :data:`SERVING_FILE` when this process wrote it."""
    path = root / SERVING_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
