"""Small Arrow columns from Python lists, built from buffers.

``pa.array`` (and ``pa.table`` of lists, ``pa.scalar``) on Python objects first asks whether they
are pandas objects, and the first time in a process that means importing pandas: 0.2–0.4 s on
the 2-core machine of ``docs/benchmarks.md``, longer than a whole audit's queries on 100,000
documents. A command that only needs a scope table or a few ids builds them here instead, and
does not import pandas at all.

::

    >>> strings(["a", None, "ü"]).to_pylist()
    ['a', None, 'ü']
    >>> ints([1, None], pa.int32()).to_pylist()
    [1, None]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from provenance.errors import InvalidParameterError

__all__ = ["from_encoded", "from_numpy", "ints", "strings", "to_numpy"]

_INTS = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
         pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64}


def _validity(values: Sequence[object]) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap of ``values`` (None where there are no nulls) and the null count."""
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    nulls = len(values) - int(valid.sum())
    return (pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls


def from_numpy(values: np.ndarray) -> pa.Array:
    """A column of the 1-D numeric array ``values`` (no nulls), sharing its memory where it is
    contiguous."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise InvalidParameterError(f"from_numpy() takes a 1-D numeric array, not {values.dtype}{list(values.shape)}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The numeric column ``values`` (no nulls) as a numpy array, a view of its buffer where it is
    one chunk (``Array.to_numpy`` asks pyarrow's pandas shim first, which imports pandas)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise InvalidParameterError(f"to_numpy() takes a numeric column without nulls, not {values.type} "
                                    f"with {values.null_count} null(s)")
    dtype = np.dtype(values.type.to_pandas_dtype())
    if not len(values):
        return np.zeros(0, dtype)
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


def ints(values: Sequence[int | None], type: pa.DataType | None = None) -> pa.Array:
    """An integer column of ``values`` (None: null) of ``type`` (default int64); an out-of-range
    value is refused, naming it."""
    type = pa.int64() if type is None else type
    if type not in _INTS:
        raise InvalidParameterError(f"ints() builds integer columns, not {type}")
    info = np.iinfo(_INTS[type])
    for v in values:  # numpy would take "7" and True as numbers
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              or not info.min <= int(v) <= info.max):
            raise InvalidParameterError(f"{v!r} is not a {type} value")
    validity, nulls = _validity(values)
    data = np.array([0 if v is None else v for v in values], dtype=_INTS[type])
    return pa.Array.from_buffers(type, len(values), [validity, pa.py_buffer(data)], null_count=nulls)


def strings(values: Sequence[str | None]) -> pa.Array:
    """A string column of ``values`` (None: null); a value that is not a str is refused, naming it."""
    validity, nulls = _validity(values)
    try:
        encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    except (AttributeError, UnicodeEncodeError):
        bad = next(v for v in values if v is not None and not _encodes(v))
        raise InvalidParameterError(f"{bad!r} is not a str that UTF-8 can encode") from None
    return from_encoded(encoded, validity=validity, nulls=nulls)


def from_encoded(encoded: Sequence[bytes], *, large: bool = False, validity: pa.Buffer | None = None,
                 nulls: int = 0) -> pa.Array:
    """A string column of UTF-8 ``encoded`` values (a null's value empty, and unset in
    ``validity``): 32-bit offsets while they fit, unless ``large``."""
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    large = large or offsets[-1] >= 2**31
    return pa.Array.from_buffers(pa.large_string() if large else pa.string(), len(encoded),
                                 [validity, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                  pa.py_buffer(b"".join(encoded))], null_count=nulls)


def _encodes(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
