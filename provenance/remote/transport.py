"""How :class:`~provenance.remote.RemoteLedger` calls the server. Each call is retried on
connection errors and 502/503/504 answers with exponential backoff, a write under one
``Idempotency-Key`` throughout its retries; an error answer is raised as the library's own
exception class, the warnings the server passed on are warned here as a local ledger warns them,
and a download is streamed to its file atomically. Mixed into
:class:`~provenance.remote.RemoteLedger` (whose ``_http`` client, ``url`` and ``retries`` it
uses); :func:`ref_of` is the reference of a record in the verbs' paths.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from provenance import errors
from provenance.files import naming
from provenance.records import DatasetRecord, RegistrationResult, RunRecord, VersionRecord, check_ref
from provenance.runs import Run
from provenance.wire import API, READ_POSTS, WARNINGS_HEADER, raise_error, warnings_of

RETRY_STATUS = (502, 503, 504)


def _warning_class(name: str) -> type[Warning]:
    """The class of a warning the server passed on, by its name: the library's own (so that a
    filter on it works as with a local ledger), else a built-in warning, else ``UserWarning``."""
    import builtins

    from provenance.audits import UnsearchedWarning
    from provenance.croissant import ReadsOtherwiseWarning
    from provenance.records import UnknownLicenseWarning
    from provenance.runs import EpochsDisagreeWarning

    own = {c.__name__: c for c in (errors.ProvenanceWarning, UnsearchedWarning, ReadsOtherwiseWarning,
                                   UnknownLicenseWarning, EpochsDisagreeWarning)}
    found = own.get(name, getattr(builtins, name, None))
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning


class Transport:
    """One API call, retried (``self`` is a :class:`~provenance.remote.RemoteLedger`)."""

    def _call(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
              content: Callable[[], Any] | None = None, content_type: str | None = None,
              stream_to: Path | None = None, accept: str | None = None, length: int | None = None,
              key: str | None = None) -> Any:
        """One API call, retried on connection errors and 502/503/504 (writes with one
        Idempotency-Key throughout: ``key``, or a new one); returns the decoded JSON (or bytes, or
        ``stream_to``)."""
        url = path if path.startswith("/") else f"{API}/{path}"
        headers = {}
        if method != "GET" and url not in READ_POSTS:  # writes only
            headers["Idempotency-Key"] = key or uuid.uuid4().hex
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        if length is not None:
            headers["Content-Length"] = str(length)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                body = content() if content is not None else None
                try:
                    request = self._http.build_request(method, url, json=json_body, params=params, headers=headers,
                                                       content=body)
                    response = self._http.send(request, stream=True)
                finally:
                    if hasattr(body, "close"):
                        body.close()
                try:
                    if response.status_code in RETRY_STATUS and attempt < self.retries:
                        response.read()
                        raise _Retry
                    if response.status_code >= 400:
                        response.read()
                        try:
                            detail = response.json()
                        except ValueError:
                            detail = response.text
                        raise_error(response.status_code, detail, f"{method} {self.url}{url}")
                    for category, message in warnings_of(response.headers.get(WARNINGS_HEADER)):
                        errors.warn(message, _warning_class(category))  # at the caller's line, as a local ledger warns
                    if stream_to is not None:
                        _save(response, stream_to)
                        return stream_to
                    data = response.read()
                finally:
                    response.close()
            except (httpx.TransportError, _Retry) as exc:
                if attempt >= self.retries:
                    raise errors.ProvenanceError(f"ledger server {self.url}: {method} {url} failed after "
                                                 f"{self.retries + 1} tries: {exc or 'server unavailable'}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            kind = response.headers.get("content-type", "")
            if kind.startswith("application/json"):
                return json.loads(data)
            return data
        raise AssertionError("unreachable")

    def _made(self, what: str, where: str, write: Callable[[], Any]) -> Any:
        """``write()``'s answer; when the server applied it and then stopped before answering (a
        retry gets :class:`~provenance.errors.AlreadyAppliedError` naming what it made), what it
        made, read back from ``where/ID``: the write happened once, and its caller goes on."""
        try:
            return write()
        except errors.AlreadyAppliedError as exc:
            if what not in exc.made:
                raise
            return self._call("GET", f"{where}/{exc.made[what]}")


class _Retry(Exception):
    def __str__(self) -> str:
        return "the server answered 502/503/504"


def ref_of(value: Any, what: str = "expected a name, id or record") -> str:
    """A record's id (or a run's), or the reference string as given; anything else is refused with ``what``."""
    if isinstance(value, RegistrationResult):
        return value.dataset.dataset_id
    if isinstance(value, DatasetRecord):
        return value.dataset_id
    if isinstance(value, VersionRecord):
        return value.version_id
    if isinstance(value, RunRecord):
        return value.run_id
    if isinstance(value, Run):  # ledger.checkpoints(run) with the run itself, as a local ledger takes it
        return value.run_id
    return check_ref(value, what, (str,))


def segment(value: Any) -> str:
    """``value`` (a record, or a reference, name or key as given) as it goes into an API path:
    percent-encoded, so that the server reads it as written. Unencoded, a ``?`` or ``#`` cut it
    short (``tag("rc?1", v)`` set the tag ``rc``), a ``%41`` reached the server as ``A`` and a
    ``..`` part was resolved away (``x/../v1`` named ``v1``)."""
    text = quote(ref_of(value), safe="/")
    return "/".join("%2E" * len(part) if part in (".", "..") else part for part in text.split("/"))


def _save(response: httpx.Response, path: Path) -> None:
    """Stream a response body to ``path`` atomically (a temporary name, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming(path), os.fdopen(fd, "wb") as out:  # a full disk names the file asked for
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
