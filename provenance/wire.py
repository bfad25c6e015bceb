"""What the server (:mod:`provenance.server`) and the remote ledger (:mod:`provenance.remote`)
agree on: the API's prefix, content types, Arrow IPC bodies, and errors as JSON that turn back
into the same exception class on the client.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa

from provenance import errors

API = "/api/v1"
#: Queries sent as POST (their question is a body) that write nothing: a read token may send them,
#: and they carry no Idempotency-Key and are not logged, as GETs are not.
READ_POSTS = (f"{API}/sql", f"{API}/near-duplicates", f"{API}/taint")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: Names of the low-rank factors a commit uploads beside the state: ``prefix + "B:" + parameter``
#: and ``prefix + "A:" + parameter``; their scales travel as the ``low_rank_scales`` parameter.
LOW_RANK_PREFIX = "prov.low_rank."
#: A result with Arrow tables in it (a lineage): a JSON header and one Arrow IPC stream per table.
BUNDLE = "application/vnd.provenance.bundle"

#: The warnings the library raised while the server answered a request (a dataset of role train
#: compared as evaluation data): JSON, ``[{"category", "message"}]``,
#: raised again on the client. At most :data:`MAX_WARNINGS`, each cut to :data:`WARNING_CHARS`.
WARNINGS_HEADER = "x-prov-warnings"
MAX_WARNINGS = 20
WARNING_CHARS = 2000


def warnings_header(held: list[tuple[str, str]]) -> bytes:
    """``(category name, message)`` pairs as the value of :data:`WARNINGS_HEADER` (ASCII JSON:
    a header holds no newline or other character outside Latin-1)."""
    return json.dumps([{"category": c, "message": m[:WARNING_CHARS]} for c, m in held[:MAX_WARNINGS]],
                      ensure_ascii=True).encode("ascii")


def warnings_of(value: str | None) -> list[tuple[str, str]]:
    """The ``(category name, message)`` pairs of a :data:`WARNINGS_HEADER` value; none when it is
    absent or not such a list (a proxy's doing: a warning is not worth failing an answer for)."""
    try:
        items = json.loads(value) if value else []
        return [(str(w["category"]), str(w["message"])) for w in items][:MAX_WARNINGS]
    except (ValueError, TypeError, KeyError):
        return []


#: Tables a ledger server's SQL answers only for admin tokens: the tokens (their hashes), the
#: stored answers of writes (other tokens' results) and the access log.
ADMIN_TABLES = ("tokens", "idempotency", "access_log")

#: HTTP status of each library error (the most specific class wins; everything else is 400).
STATUS: dict[type[errors.ProvenanceError], int] = {
    errors.NotFoundError: 404,
    errors.AccessDeniedError: 403,
    errors.InvalidParameterError: 422,
    errors.SourceError: 422,
    errors.FingerprintMismatchError: 422,
    errors.ReadOnlyQueryError: 422,
    errors.ObjectCorruptError: 422,
    errors.GateFailedError: 409,
    errors.LedgerReadOnlyError: 409,
    errors.LedgerLockedError: 503,
    errors.ObjectMissingError: 409,
    errors.StorageUnreachableError: 503,  # the bucket did not answer: nothing is known of the object
    errors.LedgerDamagedError: 500,
    errors.ObjectWriteError: 507,  # Insufficient Storage (RFC 4918): the server's store refused the write
    errors.BucketWriteError: 502,  # Bad Gateway: the bucket behind the server refused or did not answer (retried)
    errors.StorageFullError: 507,
}


def status_of(exc: errors.ProvenanceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(exc: BaseException, *, kind: str | None = None) -> dict[str, Any]:
    """An error as JSON: ``{"error": message, "kind": class name}`` plus a gate's report."""
    body: dict[str, Any] = {"error": str(exc.args[0]) if exc.args else str(exc), "kind": kind or type(exc).__name__}
    report = getattr(exc, "report", None)
    if report is not None:
        body["report"] = report.to_dict() if hasattr(report, "to_dict") else report
    return body


def raise_error(status: int, body: Any, where: str) -> None:
    """Raise what the server said: the library's own exception class when it names one."""
    if not isinstance(body, dict) or "error" not in body:  # another server's page (a proxy's, a wrong URL's)
        text = " ".join(str(body).split())
        raise errors.ProvenanceError(f"{where}: HTTP {status}, not a provenance ledger server's answer (is the URL "
                                     f"the server's address?): {text[:300]}")
    message, kind = body["error"], body.get("kind", "")
    if status == 401:  # which server refused the token: "unknown, revoked or expired token" named none
        message = f"{where}: {message}"
    cls = getattr(errors, kind, None)
    if kind == "GateFailedError":
        from provenance.results import GateReport

        raise errors.GateFailedError(message, GateReport.model_validate(body["report"]))
    if kind == "AlreadyAppliedError":
        made = body.get("made")
        raise errors.AlreadyAppliedError(message, made if isinstance(made, dict) else None)
    if isinstance(cls, type) and issubclass(cls, errors.ProvenanceError) and kind != "ProvenanceError":
        for base in cls.__mro__:  # the class itself, or the nearest one made from a message alone
            if isinstance(base, type) and issubclass(base, errors.ProvenanceError):
                try:
                    exc = base(message)
                except TypeError:
                    continue
                raise exc
    if status in (401, 403):
        raise errors.AccessDeniedError(message)
    raise errors.ProvenanceError(message if status < 500 else f"{where}: server error {status}: {message}")


def table_to_ipc(table: pa.Table, *, compress: bool = False) -> bytes:
    """``table`` as an Arrow IPC stream; ``compress``: its buffers LZ4-compressed (the reader
    needs nothing to know: the stream says so)."""
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression="lz4") if compress else None
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_to_table(data: bytes, what: str) -> pa.Table:
    """An Arrow IPC stream as a table; a malformed one is an :class:`InvalidParameterError` naming ``what``."""
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise errors.InvalidParameterError(f"{what}: not an Arrow IPC stream ({exc})") from None


def pack(meta: dict[str, Any], tables: dict[str, pa.Table]) -> bytes:
    """A result as one body: the JSON of ``meta`` and of the table names, then each table as an
    Arrow IPC stream, each part preceded by its length (8 bytes, little-endian)."""
    import orjson

    head = orjson.dumps({"meta": meta, "tables": list(tables)}, option=orjson.OPT_SERIALIZE_NUMPY)
    parts = [head, *(table_to_ipc(t, compress=True) for t in tables.values())]
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """What :func:`pack` made."""
    import orjson

    parts, at = [], 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 8], "little")
        parts.append(data[at + 8:at + 8 + n])
        at += 8 + n
    head = orjson.loads(parts[0])
    return head["meta"], {name: ipc_to_table(p, name) for name, p in zip(head["tables"], parts[1:])}
