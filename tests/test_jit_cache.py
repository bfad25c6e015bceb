"""The kernels' numba cache under processes that compile at once (``provenance.kernels.jit_cache``).

Numba names each new data file by the first number its index does not use, and saves the index
and the data with no lock: two processes compiling two specialisations of one function at once
could give one the other's machine code, for good (a TIES merge ran another mode's fold and
returned wrong values until the cache was removed). These tests start real processes at one
moment on one cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provenance.kernels.jit_cache import _KeyedIndex

SAVER = """
import os, sys, time
from provenance.kernels.jit_cache import _KeyedIndex
from numba.core.caching import IndexDataCacheFile

folder, worker, go, keyed = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "keyed"
kind = _KeyedIndex if keyed else IndexDataCacheFile
index = kind(cache_path=folder, filename_base="f-1.py311", source_stamp=(1.0, 10))
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(40):
    index.save(("key", worker, i), {"worker": worker, "i": i, "pad": bytes(4000)})
"""


def _race(folder: Path, keyed: bool, workers: int = 4) -> tuple[int, int]:
    """``workers`` processes saving 40 entries each into one index at the same moment; returns
    the entries then missing from the index and those naming another entry's data."""
    go = folder / "go"
    children = [subprocess.Popen([sys.executable, "-c", SAVER, str(folder), str(w), str(go), "keyed" if keyed else "stock"])
                for w in range(workers)]
    time.sleep(2.0)  # every child waits for the go
    go.touch()
    assert [c.wait(120) for c in children] == [0] * workers
    index = _KeyedIndex(cache_path=str(folder), filename_base="f-1.py311", source_stamp=(1.0, 10))
    missing = wrong = 0
    for w in range(workers):
        for i in range(40):
            data = index.load(("key", w, i))
            if data is None:
                missing += 1
            elif (data["worker"], data["i"]) != (w, i):
                wrong += 1
    return missing, wrong


def test_processes_saving_at_once_keep_every_entry_with_its_own_data(tmp_path):
    (tmp_path / "keyed").mkdir()
    assert _race(tmp_path / "keyed", keyed=True) == (0, 0)
    names = sorted(p.name for p in (tmp_path / "keyed").glob("*.nbc"))
    assert len(names) == 160 and all(len(n.split(".")[-2]) == 24 for n in names)  # named by their keys


def test_every_kernel_uses_the_keyed_index_and_old_files_go():
    """The swap relies on numba's ``Cache._cache_file``: a numba that renamed it would bring the
    race back without an error, so each kernel module's dispatchers are checked."""
    from numba.core.registry import CPUDispatcher

    from provenance.kernels import (
        finite,
        merge_cpu,
        minhash,
        minhash_normalize,
        minhash_shingles,
        minhash_signatures,
        signature_match,
    )

    modules = (finite, merge_cpu, minhash, minhash_normalize, minhash_shingles, minhash_signatures, signature_match)
    found = [v for m in modules for v in vars(m).values()
             if isinstance(v, CPUDispatcher)] + list(merge_cpu._FOLDS) + list(merge_cpu._MERGE_NB.values())
    assert len(found) > 30 and all(isinstance(d._cache._cache_file, _KeyedIndex) for d in found)
    assert len({d.py_func.__qualname__ for d in merge_cpu._MERGE_NB.values()}) == len(merge_cpu._MERGE_NB)
    assert [f.py_func.__name__ for f in merge_cpu._FOLDS] == ["fold_0", "fold_1", "fold_2", "fold_3"]


def test_an_index_that_starts_over_removes_the_old_data_files(tmp_path):
    index = _KeyedIndex(cache_path=str(tmp_path), filename_base="f-1.py311", source_stamp=(2.0, 10))
    old, young, other = tmp_path / "f-1.py311.1.nbc", tmp_path / "f-1.py311.abc.nbc", tmp_path / "g-1.py311.1.nbc"
    for p in (old, young, other):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # an hour old: an older source's
    os.utime(other, (time.time() - 7200, time.time() - 7200))  # another function's
    index.save(("key",), {"x": 1})
    assert not old.exists() and young.exists() and other.exists() and index.load(("key",)) == {"x": 1}


def test_an_edit_to_any_kernel_module_makes_every_cached_kernel_stale(tmp_path):
    """A kernel compiles in the njit helpers it calls from sibling modules (``fingerprint_rows``
    inlines the three stage modules of the fingerprint path), and numba checks only the defining
    file: each index's stamp also holds every kernel module's, so an edit to a stage module makes
    the cached ``fingerprint_rows`` stale instead of leaving its old code running."""
    from provenance.kernels import jit_cache, minhash

    stamp = minhash.fingerprint_rows._cache._cache_file._source_stamp
    assert stamp[1] == jit_cache._kernels_stamp()
    files = {name for name, _, _ in stamp[1]}
    assert {"minhash.py", "minhash_normalize.py", "minhash_shingles.py", "minhash_signatures.py", "merge_cpu.py"} <= files
    saved = _KeyedIndex(cache_path=str(tmp_path), filename_base="f-1.py311", source_stamp=((1.0, 10), stamp[1]))
    saved.save(("key",), {"x": 1})
    edited = tuple((n, t + 1, size) if n == "minhash_shingles.py" else (n, t, size) for n, t, size in stamp[1])
    assert _KeyedIndex(cache_path=str(tmp_path), filename_base="f-1.py311",
                       source_stamp=((1.0, 10), stamp[1])).load(("key",)) == {"x": 1}
    assert _KeyedIndex(cache_path=str(tmp_path), filename_base="f-1.py311",
                       source_stamp=((1.0, 10), edited)).load(("key",)) is None  # recompiled, not the old code


CHILD = """
import sys, torch
from provenance.kernels import merge as M

def run(method, xs, fs, base, w):
    if method == "average":
        return M.weighted_average(xs, w)
    if method == "fisher":
        return M.fisher_merge(xs, fs, w)
    if method == "task":
        return M.task_arithmetic(base, xs, w)
    return M.ties(base, xs, w, density=0.3)

bad = []
for method in sys.argv[1].split(","):
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(hash((method, str(dtype))) % 2**31)
        xs = [torch.randn(9000, generator=g, dtype=dtype) for _ in range(3)]
        fs = [torch.rand(9000, generator=g, dtype=dtype) + 0.1 for _ in range(3)]
        base = torch.randn(9000, generator=g, dtype=dtype)
        fast = run(method, xs, fs, base, [0.2, 0.3, 0.5])
        M._numba_ok = lambda *a, **k: False
        ref = run(method, xs, fs, base, [0.2, 0.3, 0.5])
        del M._numba_ok
        from provenance.kernels.merge_cpu import _numba_ok
        M._numba_ok = _numba_ok
        if not torch.equal(fast.view(torch.uint8), ref.view(torch.uint8)):
            bad.append(f"{method} {dtype}")
print("bad:", ";".join(bad), flush=True)
"""


@pytest.mark.slow
def test_merge_kernels_compiled_by_processes_at_once_are_each_their_own(tmp_path):
    """Four processes compile the four merge modes into one fresh cache at the same moment; a
    fifth, loading them all from it, gets bit-for-bit the torch reference of every mode."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, method], env=env, stdout=subprocess.PIPE, text=True)
                for method in ("average", "fisher", "task", "ties")]
    outs = [c.communicate(timeout=600)[0] for c in children]
    assert all(c.returncode == 0 for c in children) and all(o.strip() == "bad:" for o in outs), outs
    assert list((tmp_path / "cache").rglob("*merge_nb_?_?_?_3-*.nbi"))  # the kernels were cached there, by key
    assert all(len(p.name.split(".")[-2]) == 24 for p in (tmp_path / "cache").rglob("*.nbc"))
    again = subprocess.run([sys.executable, "-c", CHILD, "average,fisher,task,ties"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.strip() == "bad:", (again.stdout, again.stderr)


KERNEL = """
from provenance.kernels.jit_cache import cached_njit

@cached_njit()
def double(x):
    return 2 * x
"""

CALLER = "import sys; sys.path.insert(0, sys.argv[1]); import tiny_kernel; print(tiny_kernel.double(21))"


def _run_on(tmp_path: Path, terminal: bool) -> str:
    """What a process that calls a kernel of ``tmp_path/tiny_kernel.py`` writes to stderr, a
    terminal or a pipe (numba's cache in ``tmp_path/cache``)."""
    import pty

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_DISABLE_JIT", None)
    if not terminal:
        done = subprocess.run([sys.executable, "-c", CALLER, str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and done.stdout == "42\n", done.stderr
        return done.stderr
    primary, secondary = pty.openpty()
    child = subprocess.Popen([sys.executable, "-c", CALLER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                             stderr=secondary, text=True)
    os.close(secondary)
    out, _ = child.communicate(timeout=120)
    said = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the child
            break
        if not chunk:
            break
        said += chunk
    os.close(primary)
    assert child.returncode == 0 and out == "42\n"
    return said.decode()


def test_a_terminal_is_told_once_that_kernels_compile(tmp_path):
    """The first call of a kernel after an install compiles it (a minute for the audits' kernels,
    with nothing said): a terminal is told so, once; a later process loads the cache and says
    nothing; a pipe is told nothing (a job's log keeps its own lines)."""
    (tmp_path / "tiny_kernel.py").write_text(KERNEL)
    first = _run_on(tmp_path, terminal=True)
    assert first.count("compiling provenance's kernels for this machine") == 1, first
    assert str(tmp_path / "cache") in first.replace("\r\n", "")
    assert _run_on(tmp_path, terminal=True) == ""  # loaded from the cache
    (tmp_path / "cache").rename(tmp_path / "old-cache")
    assert _run_on(tmp_path, terminal=False) == ""  # compiled again, told to no pipe
