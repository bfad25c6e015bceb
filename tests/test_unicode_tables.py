"""The full character tables' cache file (``provenance/fingerprints/normalization.py``, ``_unicode_tables``).

The tables are computed once per machine and read back by every later process; a file that is
truncated, corrupted, half written by a killed process or unwritable never changes a fingerprint:
the tables are then computed again, bit for bit the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from provenance.fingerprints import normalization as fp  # where the tables, and their cache file, live


@pytest.fixture(scope="module")
def computed() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return fp._compute_tables(True)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh cache folder, and the process's memoised tables forgotten before and after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PROV_CACHE_DIR", str(folder))
    _forget()
    yield folder
    _forget()


def _forget() -> None:
    for f in (fp._unicode_tables, fp.char_tables, fp._separator_translation):
        f.cache_clear()


def _count_computations(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    real = fp._compute_tables

    def counting(full: bool):
        calls.append(full)
        return real(full)

    monkeypatch.setattr(fp, "_compute_tables", counting)
    return calls


def _assert_equal(tables, computed) -> None:
    assert [t.dtype for t in tables] == [np.uint8, np.int32, np.uint8]
    for got, want in zip(tables, computed):
        assert got.shape == (0x110000,)
        assert np.array_equal(got, want)


def test_first_process_writes_the_file_and_the_next_reads_it(cache, computed, monkeypatch):
    calls = _count_computations(monkeypatch)
    first = fp._unicode_tables()
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith("unicode-tables-") and files[0].endswith(".bin")
    assert (cache / files[0]).stat().st_size == 0x110000 * 6 + 16
    umask = os.umask(0o022)
    os.umask(umask)
    assert (cache / files[0]).stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600
    assert calls == [True]
    _forget()
    second = fp._unicode_tables()
    assert calls == [True]  # read back, not computed
    _assert_equal(first, computed)
    _assert_equal(second, computed)
    # what the kernels and the reference normaliser use comes from them
    char_class, lower_cp = fp.char_tables(True)
    assert np.array_equal(char_class, computed[0]) and np.array_equal(lower_cp, computed[1])
    assert fp._separator_translation() == {int(cp): 32 for cp in np.flatnonzero(computed[2])}
    assert fp._separator_translation()[ord("\u3002")] == 32 and ord("$") not in fp._separator_translation()
    assert fp.normalize("Straße, ÉTÉ!\u3000ﬁn½") == "straße été fin1⁄2"  # lower(), not casefold()


def test_separators_are_the_reference_definition(computed):
    want = {cp for cp in fp._code_points(fp._ASSIGNED_RANGES) if fp._is_separator(chr(cp))}
    assert set(np.flatnonzero(computed[2]).tolist()) == want
    assert ord("\u3000") in want and ord("\u2014") in want and ord("$") not in want


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "hash only"])
def test_damaged_file_is_computed_again_and_rewritten(cache, computed, monkeypatch, damage):
    fp._unicode_tables()
    (path,) = cache.iterdir()
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped byte":
        raw[0x110000 + 4 * ord("A")] ^= 0x01  # lower_cp['A']: 'a' becomes '`'
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = raw[-16:]
    path.write_bytes(bytes(raw))
    _forget()
    calls = _count_computations(monkeypatch)
    tables = fp._unicode_tables()
    assert calls == [True]
    _assert_equal(tables, computed)
    assert path.stat().st_size == 0x110000 * 6 + 16  # written whole again
    _forget()
    _assert_equal(fp._unicode_tables(), computed)
    assert calls == [True]


def test_unwritable_cache_folder_still_gives_the_tables(tmp_path, computed, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PROV_CACHE_DIR", str(blocker / "cache"))  # mkdir fails, even for root
    _forget()
    try:
        _assert_equal(fp._unicode_tables(), computed)
    finally:
        _forget()
    assert blocker.read_text() == "not a folder"


def test_cache_file_name_follows_the_unicode_version_and_the_code(cache, monkeypatch):
    name = fp._tables_path()
    assert name is not None and name.parent == cache
    assert fp._tables_path() == name
    monkeypatch.setattr(fp.unicodedata, "unidata_version", "99.0.0", raising=False)
    other = fp._tables_path()
    monkeypatch.undo()
    assert other != name
    monkeypatch.setenv("PROV_CACHE_DIR", str(cache))
    edited = cache.parent / "normalization.py"
    edited.write_bytes(Path(fp.__file__).read_bytes() + b"\n# an edit\n")
    monkeypatch.setattr(fp, "__file__", str(edited))
    assert fp._tables_path() not in (name, other)


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("PROV_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fp.cache_dir() == tmp_path / "xdg" / "provenance"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fp.cache_dir() == tmp_path / "home" / ".cache" / "provenance"


_CHILD = textwrap.dedent("""
    import os, sys, time
    from provenance.fingerprints import FingerprintConfig
    from provenance.fingerprints import normalization as fp
    computed = []
    real = fp._compute_tables
    def counting(full):
        computed.append(full)
        return real(full)
    fp._compute_tables = counting
    if sys.argv[1] == "stall":  # written, then held before the rename until killed
        real_replace = os.replace
        def stalled(a, b):
            if os.path.basename(b).startswith("unicode-tables-"):  # not numba's own cache files
                print("written", flush=True)
                time.sleep(120)
            real_replace(a, b)
        fp.os.replace = stalled
    sig = FingerprintConfig().signature("Ünïcode ﬁnds its way: ΣΑΣ, 한국어 and ½")
    print(len(computed), int(sig.sum()), flush=True)
""")


def _child(cache: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PROV_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode], env=env, stdout=subprocess.PIPE, text=True)


def test_processes_share_the_file_and_a_killed_writer_leaves_none(tmp_path):
    cache = tmp_path / "cache"
    stalled = _child(cache, "stall")
    assert stalled.stdout.readline().strip() == "written"
    os.kill(stalled.pid, signal.SIGKILL)
    stalled.wait(timeout=30)
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 1 and left[0].endswith(".tmp")  # the temporary file, never the name read
    assert (cache / left[0]).stat().st_size == 0x110000 * 6 + 16

    first = _child(cache, "plain")
    n_first, sig_first = first.stdout.read().split()
    assert first.wait(timeout=120) == 0 and n_first == "1"  # computed: the leftover is not read
    (table,) = [p for p in cache.iterdir() if p.suffix == ".bin"]
    stamp = table.stat().st_mtime_ns

    second = _child(cache, "plain")
    n_second, sig_second = second.stdout.read().split()
    assert second.wait(timeout=120) == 0 and n_second == "0"  # read from the file
    assert sig_second == sig_first
    assert table.stat().st_mtime_ns == stamp


def test_prune_removes_old_leftovers_and_keeps_the_rest(tmp_path):
    keep = tmp_path / "unicode-tables-new.bin"
    names = ["unicode-tables-new.bin", "unicode-tables-other.bin", "unicode-tables-old.bin",
             ".unicode-tables-new.bin.1.tmp", ".unicode-tables-new.bin.2.tmp", "unrelated.bin"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    now = time.time()
    day = 86400
    os.utime(tmp_path / "unicode-tables-old.bin", (now - 31 * day, now - 31 * day))
    os.utime(tmp_path / ".unicode-tables-new.bin.1.tmp", (now - 7200, now - 7200))
    os.utime(tmp_path / "unrelated.bin", (now - 99 * day, now - 99 * day))
    os.utime(keep, (now - 99 * day, now - 99 * day))
    fp._prune_tables(keep, now=now)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".unicode-tables-new.bin.2.tmp", "unicode-tables-new.bin", "unicode-tables-other.bin", "unrelated.bin"]
