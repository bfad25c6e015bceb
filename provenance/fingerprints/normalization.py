"""Normalisation (step 1 of the specification in the package doc): :func:`normalize`, the
reference, and the character tables the kernels fold text with (:func:`char_tables`: each code
point's class and lower case), computed from this Python's Unicode database once per machine and
kept in a cache file (:func:`cache_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import xxhash

from provenance.errors import InvalidParameterError
from provenance.files import atomic_write_bytes
from provenance.kernels import minhash_codes as _codes


def _is_separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("P")


_SPACE, _PUNCT, _SIMPLE, _COMPLEX, _SIGMA = (
    _codes.CLASS_SPACE, _codes.CLASS_PUNCT, _codes.CLASS_SIMPLE, _codes.CLASS_COMPLEX, _codes.CLASS_SIGMA,
)
# Code points beyond these ranges are unassigned or private use: NFKC and lower() keep them.
_ASSIGNED_RANGES = ((1, 0x40000), (0xE0000, 0xE1000))
_HANGUL_SECONDS = (range(0x1161, 0x1176), range(0x11A8, 0x11C3))  # vowel and trailing jamo
_CAPITAL_SIGMA = 0x03A3  # str.lower() maps it by context (final sigma)


def _code_points(ranges) -> list[int]:
    return [cp for lo, hi in ranges for cp in range(lo, hi) if not 0xD800 <= cp <= 0xDFFF]


def _composition_pairs() -> tuple[set[int], set[int]]:
    """Code points that canonical composition can merge with the character after them (firsts)
    and into the character before them (seconds)."""
    firsts = set(range(0x1100, 0x1113)) | set(range(0xAC00, 0xD7A4))  # Hangul L jamo, LV syllables
    seconds = {cp for r in _HANGUL_SECONDS for cp in r}
    for cp in _code_points(_ASSIGNED_RANGES):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                firsts.add(int(parts[0], 16))
                seconds.add(int(parts[1], 16))
    return firsts, seconds


def _first_canonical(cp: int) -> int:
    while True:
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            return cp
        cp = int(d.split()[0], 16)


@functools.lru_cache(maxsize=2)
def char_tables(full: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(char_class, lower_cp)`` indexed by code point: ASCII only, or all of Unicode (read from
    :func:`_unicode_tables`' cache file, else computed in about 0.45 s)."""
    if full:
        char_class, lower_cp, _ = _unicode_tables()
        return char_class, lower_cp
    char_class, lower_cp, _ = _compute_tables(False)
    return char_class, lower_cp


def _compute_tables(full: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(char_class, lower_cp, separator)`` indexed by code point, ASCII only or all of Unicode
    (``separator``: 1 where :func:`_is_separator`).

    A code point is *simple* when NFKC keeps it as it is whatever surrounds it and ``str.lower``
    maps it to one code point of the same UTF-8 length; then the kernel can fold it alone. A
    *separator* is whitespace or punctuation whose NFKC form is separators only and that
    composes with nothing on either side, so that NFKC of a text is NFKC of the pieces between
    separators. Everything else is *complex*: the words holding it are folded by
    ``unicodedata``; around a complex code point whose NFKC form holds capital sigma (its lower
    case looks past punctuation) the folded span runs from whitespace to whitespace.
    """
    size = 0x110000 if full else 128
    char_class = np.full(size, _SIMPLE, dtype=np.uint8)
    lower_cp = np.arange(size, dtype=np.int32)
    separator = np.zeros(size, dtype=np.uint8)
    cps = _code_points(_ASSIGNED_RANGES if full else ((1, 128),))
    chars = [chr(cp) for cp in cps]
    joined = "\0".join(chars)  # NUL is a starter that composes with nothing
    nfkc = unicodedata.normalize("NFKC", joined).split("\0")
    lowered = joined.lower().split("\0")
    firsts, seconds = _composition_pairs() if full else (set(), set())
    for cp, ch, nf, lo in zip(cps, chars, nfkc, lowered):
        context_free = unicodedata.combining(ch) == 0 and cp not in seconds and _first_canonical(cp) not in seconds
        if _is_separator(ch):
            separator[cp] = 1
            boundary = context_free and cp not in firsts and all(_is_separator(c) for c in nf)
            char_class[cp] = (_SPACE if ch.isspace() else _PUNCT) if boundary else _COMPLEX
        elif (
            context_free
            and nf == ch
            and cp != _CAPITAL_SIGMA
            and len(lo) == 1
            and len(lo.encode("utf-8")) == len(ch.encode("utf-8"))
            and not _is_separator(lo)
        ):
            lower_cp[cp] = ord(lo)
        else:
            char_class[cp] = _COMPLEX
        if char_class[cp] == _COMPLEX and "\u03a3" in nf:
            char_class[cp] = _SIGMA
    return char_class, lower_cp, separator


@functools.lru_cache(maxsize=1)
def _separator_translation() -> dict[int, int]:
    return dict.fromkeys(np.flatnonzero(_unicode_tables()[2]).tolist(), 32)


# The full tables depend only on this Python's Unicode database and on the code that classifies
# (this file, and the class codes): they are computed once per machine and kept in a cache file
# named by a hash of those, instead of once per process (a registration of a few documents took
# 2.0 s, 0.45 s of it here; so did each Ray actor). The file ends with the xxh3-128 of the rest
# and is read only when its size and hash are right; it is written to a temporary file and
# renamed, so a killed writer leaves no half file under the name. Where no cache folder can be
# written, the tables are computed as before.
_TABLES_FORMAT = b"provenance-unicode-tables-v1"
_TABLE_SIZE = 0x110000
_TABLE_BYTES = _TABLE_SIZE * 6  # char_class (uint8), lower_cp (int32), separator (uint8)


def cache_dir() -> Path:
    """Where the project keeps files it can always recompute: ``$PROV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/provenance``, else ``~/.cache/provenance``."""
    if os.environ.get("PROV_CACHE_DIR"):
        return Path(os.environ["PROV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "provenance"


def _tables_path() -> Path | None:
    """The cache file for this Python's Unicode database and this code (None: sources unreadable)."""
    h = xxhash.xxh3_128(_TABLES_FORMAT)
    h.update(f"\n{unicodedata.unidata_version}\n{sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    try:
        for source in (__file__, _codes.__file__):
            h.update(Path(source).read_bytes())
    except (OSError, TypeError):
        return None
    return cache_dir() / f"unicode-tables-{h.hexdigest()}.bin"


@functools.lru_cache(maxsize=1)
def _unicode_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_compute_tables` for all of Unicode, through the cache file."""
    path = _tables_path()
    if path is not None:
        found = _read_tables(path)
        if found is not None:
            return found
    tables = _compute_tables(True)
    if path is not None:
        with contextlib.suppress(OSError):  # a read-only home, a full disk: computed again next time
            _write_tables(path, tables)
    return tables


def _read_tables(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The tables in ``path``, or None when it is missing, of the wrong size or fails its hash."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) != _TABLE_BYTES + 16 or xxhash.xxh3_128_digest(raw[:_TABLE_BYTES]) != raw[_TABLE_BYTES:]:
        return None
    buf = np.frombuffer(raw, dtype=np.uint8, count=_TABLE_BYTES)
    char_class = buf[:_TABLE_SIZE].copy()
    lower_cp = buf[_TABLE_SIZE : 5 * _TABLE_SIZE].view(np.int32).copy()
    return char_class, lower_cp, buf[5 * _TABLE_SIZE :].copy()


def _write_tables(path: Path, tables: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    payload = b"".join(np.ascontiguousarray(t).tobytes() for t in tables)
    atomic_write_bytes(path, payload + xxhash.xxh3_128_digest(payload))
    _prune_tables(path)


def _prune_tables(keep: Path, *, now: float | None = None) -> None:
    """Remove the tables of other code or Pythons not written for 30 days, and temporary files a
    killed writer left (``.unicode-tables-….tmp``) an hour ago or more (the folder may also be
    deleted whole at any time)."""
    now = time.time() if now is None else now
    for old in keep.parent.glob("*unicode-tables-*"):
        with contextlib.suppress(OSError):
            age = now - old.stat().st_mtime
            if old != keep and (age > 30 * 86400 or (old.name.endswith(".tmp") and age > 3600)):
                old.unlink()


def normalize(text: str) -> str:
    """The normalised text: NFKC, lower-case, words split on separators, joined by one space.

    This is the reference; the fast path in :mod:`provenance.kernels.minhash` must agree with it.
    """
    if not isinstance(text, str):
        decode = " (decode it first, e.g. text.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise InvalidParameterError(f"normalize takes a str, got {type(text).__name__}{decode}")
    folded = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).lower()
    return " ".join(folded.translate(_separator_translation()).split())
