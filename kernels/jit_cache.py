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
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from numba import get_num_threads, njit, set_num_threads
from numba.core.caching import FunctionCache, IndexDataCacheFile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the names alone keep the entries apart
    fcntl = None


#: Age after which a data file that no index names is removed when its function's index starts over.
STALE_SECONDS = 3600


class _KeyedIndex(IndexDataCacheFile):
    """An index whose data files are named by their keys, updated under a lock (module doc)."""

    def save(self, key: Any, data: Any) -> None:
        base = self._index_name.removesuffix(".nbi")
        name = f"{base}.{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}.nbc"
        self._save_data(name, data)  # whole before any index names it
        with _locked(self._index_path + ".lock"):
            overloads = self._load_index()  # as it is now, with what other processes saved meanwhile
            if not overloads:  # a new index, or one of an older source: its files are no one's now
                self._remove_unnamed(base, keep=name)
            overloads[key] = name
            self._save_index(overloads)

    def _remove_unnamed(self, base: str, keep: str) -> None:
        """The data files of ``base`` other than ``keep`` older than :data:`STALE_SECONDS` (a
        younger one may be another process's, written and not yet in the index)."""
        cutoff = time.time() - STALE_SECONDS
        for entry in os.scandir(self._cache_path):
            if entry.name.startswith(base + ".") and entry.name.endswith(".nbc") and entry.name != keep:
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)


class _KeyedCache(FunctionCache):
    """Numba's per-function cache over :class:`_KeyedIndex`."""

    def __init__(self, py_func: Callable[..., Any]):
        super().__init__(py_func)
        self._cache_file = _KeyedIndex(cache_path=self._cache_path, filename_base=self._impl.filename_base,
                                       source_stamp=(self._impl.locator.get_source_stamp(), _kernels_stamp()))

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        data = super().load_overload(sig, target_context)
        if data is None:  # numba compiles it now
            _say_compiling(self._cache_path)
        return data


@functools.lru_cache(maxsize=1)
def _kernels_stamp() -> tuple[tuple[str, int, int], ...]:
    """The modification time and size of every module of this package. Numba checks only the
    file that defines a kernel, but a kernel compiles in the njit helpers it calls from sibling
    modules (``fingerprint_rows`` inlines the stages of ``minhash_normalize.py``,
    ``minhash_shingles.py`` and ``minhash_signatures.py``): an edit to one of those must make
    every cached kernel stale, or the old code runs on without an error. An installed package's
    files do not change, so its cache stays valid."""
    folder = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            st = entry.stat()
            stamps.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


_told = False  # whether this process said it compiles


def _say_compiling(folder: str) -> None:
    """Say once, on a terminal, that kernels are being compiled: the first audit or merge after
    an install spends up to a minute doing so, and nothing else said why it waited. Not said to
    a pipe or a log (a job's stderr keeps only its own lines)."""
    global _told
    if _told:
        return
    _told = True
    err = sys.stderr
    if err is not None and err.isatty():
        err.write(f"compiling provenance's kernels for this machine (up to a minute, once: later runs load them "
                  f"from {folder})\n")
        err.flush()


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made if missing) while the block runs; none where the
    file cannot be made (a read-only cache folder is not written to anyway) or without ``fcntl``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:  # made by another user: a lock on a read-only descriptor excludes as well
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            fd = None
    if fd is None:
        yield
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _specialised(fn: Callable[..., Any]) -> None:
    """Name ``fn`` after the values in its closure (in the order of ``co_freevars``), if it has
    one: ``fold`` with ``mode = 3`` is ``fold_3``; ``merge_nb`` with ``bf16, fbf16, fdirect, mode =
    False, False, True, 1`` is ``merge_nb_0_0_1_1``; values other than integers by a hash of their
    repr."""
    if not fn.__closure__:
        return
    values = [cell.cell_contents for cell in fn.__closure__]
    if all(isinstance(v, (bool, int)) for v in values):
        suffix = "_".join(str(int(v)) for v in values)
    else:
        suffix = hashlib.sha256(repr(values).encode()).hexdigest()[:12]
    fn.__name__ = f"{fn.__name__}_{suffix}"
    fn.__qualname__ = f"{fn.__qualname__.rpartition('.')[0]}.{fn.__name__}".lstrip(".")


def cached_njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options, cache=True)`` with the cache of this module: a decorator.

    A function made by a factory, with its constants in its closure (one per specialisation), is
    named after them (:func:`_specialised`): numba names compiled code, and the cache's files, by
    the qualified name, and every specialisation of ``_fold_kernel.<locals>.fold`` had the same
    one, so a kernel loaded from the cache, linked beside another specialisation compiled in the
    process, called that one's code (a task-arithmetic merge ran the average's fold)."""

    def decorate(fn: Callable[..., Any]) -> Any:
        _specialised(fn)
        dispatcher = njit(**options)(fn)
        if hasattr(dispatcher, "py_func"):  # NUMBA_DISABLE_JIT gives the Python function back
            dispatcher._cache = _KeyedCache(dispatcher.py_func)  # what njit(cache=True) does, with the keyed index
        return dispatcher

    return decorate


@contextlib.contextmanager
def threads_for(work: int, serial_below: int) -> Iterator[int]:
    """Numba's threads for a kernel call over ``work`` units (elements, bytes): one under
    ``serial_below``, where waking the others costs more than the work (and, on a busy machine, a
    scheduler time slice per call: 10,000 small groups took a minute to merge), else all of them.
    The count is the calling thread's own (numba keeps it per thread) and is restored after."""
    threads = max(1, get_num_threads())
    if work >= serial_below or threads == 1:
        yield threads
        return
    set_num_threads(1)
    try:
        yield 1
    finally:
        set_num_threads(threads)
