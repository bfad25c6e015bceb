"""Plain values for JSON, CSV and HTML: what DuckDB and Arrow hand back, made ordinary.

DuckDB returns ``sum()`` of integers as a 128-bit integer that Arrow and Python see as a
``Decimal``; dates, times and blobs have no JSON form. :func:`plain` turns a value (nested lists,
dicts and tuples included) into ints, floats, strings, lists and dicts: a whole ``Decimal``
becomes an ``int``, any other a ``float``; dates and times their ISO 8601 text; bytes their
hexadecimal text.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, PlainSerializer, WithJsonSchema

from provenance.errors import InvalidParameterError


def _naive_utc(value: dt.datetime) -> dt.datetime:
    """The ledger keeps times as naive UTC (DuckDB TIMESTAMP): an aware time read back from JSON
    is converted to that."""
    if value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def utc_text(value: dt.datetime) -> str:
    """An RFC 3339 timestamp: ISO 8601 with ``Z`` (the ledger's times are UTC)."""
    return _naive_utc(value).isoformat() + "Z"


def utc_time(value: dt.datetime | dt.date | str | None, name: str) -> dt.datetime | None:
    """A time given as a datetime, a date (its start) or ISO 8601 text, as naive UTC (an aware one
    converted, a naive one taken as UTC); None stays None. Anything else is an error naming the
    parameter ``name``: the rule the ledger and a remote client of it both apply."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):  # a day: from its start, UTC
        value = dt.datetime(value.year, value.month, value.day)
    if value is not None and not isinstance(value, (str, dt.datetime)):
        raise InvalidParameterError(f"{name} {value!r}: a date, a datetime or an ISO string (2026-12-01)")
    if isinstance(value, str):
        try:
            text = value.strip()  # Python 3.10 reads no "Z"
            value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            raise InvalidParameterError(f"{name} {value!r}: not an ISO date or time (2026-12-01, "
                                        "2026-12-01T12:00)") from None
    return None if value is None else _naive_utc(value)


#: A time in a record or a result: naive UTC in Python, RFC 3339 with ``Z`` in JSON.
UTCDateTime = Annotated[dt.datetime, AfterValidator(_naive_utc), PlainSerializer(utc_text, when_used="json"),
                        WithJsonSchema({"type": "string", "format": "date-time"})]


def plain(value: Any) -> Any:
    """``value`` with every nested Decimal, date, time, blob, UUID and NumPy scalar made plain."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.is_finite() else float(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return plain(item())
    if hasattr(value, "model_dump"):  # pydantic records
        return plain(value.model_dump(mode="json"))
    return str(value)


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """``value`` as JSON text after :func:`plain` (NaN and infinities as null, never invalid JSON)."""
    return json.dumps(_finite(plain(value)), indent=indent, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 document``, ``2,000 documents``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


#: Control characters (C0 but tab and newline, DEL, C1) and the visible ``\xNN`` each is shown as.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """``text`` with its control characters shown as ``\\xNN``, for a terminal: a document key,
    file name or commit message holding ``ESC [2J`` or an OSC sequence would otherwise clear the
    screen, retitle the window or hide what follows it. JSON and CSV output keep the values as
    they are (JSON escapes such characters itself)."""
    return text.translate(_CONTROL)
