"""Numba's on-disk cache of compiled kernels, made safe for processes that compile at once.

Numba keeps one index per function (``name-LINE.pyXY.nbi``: which data file holds the machine
code of each signature and specialisation) and names each new data file by the first number the
index does not use. Saving reads the index, picks that number, writes the index, then the data,
with no lock. Two processes that compile two specialisations of one function at the same moment
(DDP ranks, Ray actors, a server and a CLI, a test suite beside a command) can both pick the same
number: the index then names, for one specialisation, a data file holding the other's code, and
every later process loads the wrong kernel. It happened here: the TIES merge ran another merge
mode's fold and returned wrong values, silently, until the cache was removed.

:func:`cached_njit` is ``numba.njit(cache=True)`` with two changes to the saving: each data file is
named by a hash of its own index key (signature, target, code and closure hashes), so two
specialisations never share a file and a file only ever holds the code its key names; and the
data file is written whole before the index is read, updated and written again under an
exclusive ``flock`` on a lock file beside it, so that no process drops another's entry. Loading is
numba's: the index and data files are each replaced atomically (written aside, then renamed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from numba import njit
from numba.core.caching import FunctionCache, IndexDataCacheFile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the names alone keep the entries apart
    fcntl = None


class _KeyedIndex(IndexDataCacheFile):
    """An index whose data files are named by their keys, updated under a lock (module doc)."""

    def save(self, key: Any, data: Any) -> None:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        name = f"{self._index_name.removesuffix('.nbi')}.{digest}.nbc"
        self._save_data(name, data)  # whole before any index names it
        with _locked(self._index_path + ".lock"):
            overloads = self._load_index()  # as it is now, with what other processes saved meanwhile
            overloads[key] = name
            self._save_index(overloads)


class _KeyedCache(FunctionCache):
    """Numba's per-function cache over :class:`_KeyedIndex`."""

    def __init__(self, py_func: Callable[..., Any]):
        super().__init__(py_func)
        self._cache_file = _KeyedIndex(cache_path=self._cache_path, filename_base=self._impl.filename_base,
                                       source_stamp=self._impl.locator.get_source_stamp())


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made if missing) while the block runs; none where the
    file cannot be made (a read-only cache folder is not written to anyway) or without ``fcntl``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def cached_njit(name: str | None = None, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options, cache=True)`` with the cache of this module: a decorator.

    ``name``: the function's name, for a function made by a factory with its constants in its
    closure (one per specialisation). Numba names compiled code, and the cache's files, by the
    qualified name: every specialisation of ``_fold_kernel.<locals>.fold`` had the same one, and a
    kernel loaded from the cache, linked beside another specialisation compiled in the process,
    called that one's code (a task-arithmetic merge ran the average's fold)."""

    def decorate(fn: Callable[..., Any]) -> Any:
        if name is not None:
            fn.__name__ = name
            fn.__qualname__ = f"{fn.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
        dispatcher = njit(**options)(fn)
        dispatcher._cache = _KeyedCache(dispatcher.py_func)  # what njit(cache=True) does, with the keyed index
        return dispatcher

    return decorate
