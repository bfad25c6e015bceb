"""A ledger served by ``prov serve``, with the facade's interface: ``Ledger.open("http://host:8765",
token=...)`` (or ``PROV_LEDGER`` and ``PROV_TOKEN``) returns a :class:`RemoteLedger`.

Each verb is one or a few HTTP calls (httpx: pooled connections, timeouts). Connection errors and
502/503/504 answers are retried with exponential backoff; every write carries an
``Idempotency-Key``, so a retry of a write the server already applied gets its stored answer and
is not applied twice. Errors come back as the library's own exception classes. Heavy work stays
where the data is: :meth:`register_dataset` reads and fingerprints the shards here and uploads
the document rows (Arrow IPC); :meth:`commit` uploads the state as a safetensors file;
:meth:`checkout` streams it back, written atomically.

:class:`RemoteLedger` is defined here (its HTTP client, the ledger's summary and SQL, tokens) and
mixes in the rest, one module each: :mod:`.transport` (the calls, retried, and what their answers
mean), :mod:`.datasets` (registration by upload), :mod:`.versions` (tensors up and down),
:mod:`.runs` (:class:`RemoteRun`) and :mod:`.questions` (lineage, taint, retractions, audits).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from provenance.errors import InvalidParameterError
from provenance.records import TokenRecord, check_batch_rows, check_name, query_params
from provenance.remote.datasets import RemoteDatasets
from provenance.remote.questions import RemoteQuestions
from provenance.remote.runs import REMOTE_FLUSH, RemoteRun, RemoteRuns
from provenance.remote.transport import RETRY_STATUS, Transport, _warning_class, segment
from provenance.remote.versions import RemoteVersions
from provenance.wire import API, ipc_to_table


def is_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(("http://", "https://"))


class RemoteLedger(Transport, RemoteDatasets, RemoteVersions, RemoteRuns, RemoteQuestions):
    """The facade over HTTP (see the module doc)."""

    read_only = False

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 300.0, retries: int = 6,
                 verify: bool | str = True):
        self.url = url.rstrip("/")
        if self.url.endswith(API):  # the API's prefix given too: "no such API route: GET /api/v1/api/v1/datasets"
            self.url = self.url.removesuffix(API)
        self.root = self.url
        try:  # 'http://[::1' ended in httpx's traceback, 'http://' in 7 tries to reach no host
            parsed = httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise InvalidParameterError(f"ledger server URL {url!r} is not a valid URL: {exc}") from None
        if not parsed.host:
            raise InvalidParameterError(f"ledger server URL {url!r} names no host: give http://HOST:PORT")
        if parsed.userinfo or parsed.query or parsed.fragment:  # a token there was sent as Basic auth, or not at all
            bare = str(parsed.copy_with(userinfo=None, query=None, fragment=None)).rstrip("/")
            said = "a user name or password" if parsed.userinfo else "a query (?...)" if parsed.query else "a fragment (#...)"
            raise InvalidParameterError(
                f"ledger server URL {bare} is given with {said}, which the server does not read: give the token in "
                "PROV_TOKEN or Ledger.open(URL, token=...), never in the URL (messages and logs print it)")
        token = token or os.environ.get("PROV_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify,
                                  timeout=httpx.Timeout(timeout, connect=10.0),
                                  limits=httpx.Limits(max_connections=16, max_keepalive_connections=8))
        weakref.finalize(self, self._http.close)  # the pooled connections close with the ledger

    def __repr__(self) -> str:
        return f"RemoteLedger({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[RemoteLedger]:
        """Nothing to hold: the server keeps the ledger open (for code written against a local one)."""
        yield self

    # -- the ledger -----------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return self._call("GET", "summary")

    def schema_version(self) -> int:
        return self._call("GET", "/healthz")["schema_version"]

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        data = self._call("POST", "sql", json_body={"query": query, "params": query_params(params)})
        return ipc_to_table(data, "the server's answer")

    def sql_batches(self, query: str, params: Sequence[Any] | None = None, *,
                    rows: int = 10_000) -> Iterator[pa.RecordBatch]:
        """:meth:`sql`'s result as record batches of at most ``rows`` rows (the server answers it
        whole: the batches are the answer's, cut; the first names the columns)."""
        check_batch_rows(rows)
        table = self.sql(query, params)
        yield from table.to_batches(max_chunksize=rows) or [pa.RecordBatch.from_pylist([], schema=table.schema)]

    def output_path(self, path: str | os.PathLike, *, parents: bool | None = None) -> Path:
        """Check a file this client is about to write (a local path: the ledger is elsewhere), as
        a local ledger checks one (:func:`provenance.files.check_output`): one inside a ledger
        folder on this machine is refused too, as the server's would be if it serves from here
        (the client does not know which ledger folder is the server's)."""
        from provenance.errors import UnsafeOutputError
        from provenance.files import DB_FILE, LEDGER_DIR, check_output, output_name

        given = output_name(path).expanduser()
        resolved = given.resolve()
        for folder in resolved.parents:
            if folder.name == LEDGER_DIR and (folder / DB_FILE).is_file():
                raise UnsafeOutputError(f"refusing to write {str(given)!r}: it resolves to {resolved}, inside the "
                                        f"ledger folder {folder} (a server on this machine may serve it)")
        return check_output(given, resolved, parents=parents)

    # -- tokens (admin) ---------------------------------------------------------------------------

    def issue_token(self, name: str, scope: str, *, expires_days: float | None = None) -> tuple[TokenRecord, str]:
        check_name(name, "token name")  # the ledger's words, not the request model's pattern
        data = self._call("POST", "tokens", json_body={"name": name, "scope": scope, "expires_days": expires_days})
        secret = data.pop("token")
        return TokenRecord.model_validate(data), secret

    def tokens(self) -> list[TokenRecord]:
        return [TokenRecord.model_validate(r) for r in self._call("GET", "tokens")]

    def revoke_token(self, name: str) -> TokenRecord:
        return TokenRecord.model_validate(self._call("DELETE", f"tokens/{segment(name)}"))


__all__ = ["REMOTE_FLUSH", "RETRY_STATUS", "RemoteLedger", "RemoteRun", "_warning_class", "is_url"]
