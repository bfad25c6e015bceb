"""Hashed word n-grams of normalised text, for exact-span checks: the 13-gram contamination test
of the pre-merge gate (as lm-eval-harness defines decontamination) and the 50-token spans of the
memorization audit (Carlini et al.'s extractable memorization).

Words are those of the fingerprint normalisation (:func:`provenance.fingerprints.normalize`:
NFKC, lower case, split on whitespace and punctuation). Each word is hashed with xxh3-64 and a
window of ``n`` words hashes to ``Σ h(wᵢ) · P^(n−1−i) mod 2⁶⁴``, computed for all windows at once
with numpy; two windows with the same words in the same order have the same hash, and different
windows collide with probability about 2⁻⁶⁴ per pair.
"""

from __future__ import annotations

import numpy as np
import xxhash

from provenance.errors import InvalidParameterError
from provenance.fingerprints import normalize

_P = np.uint64(0x100000001B3)  # an odd 64-bit multiplier (the FNV prime)

#: The longest span an exact-span check takes (lm-eval-harness uses 13 words; memorization
#: studies 50): a span longer than any document's text would silently check nothing.
MAX_SPAN = 1000


def check_span(value: int, name: str) -> int:
    """``value`` as a span of 0 (no span check) to :data:`MAX_SPAN` words, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{name} must be a whole number of words, got {value!r}")
    if not 0 <= value <= MAX_SPAN:
        raise InvalidParameterError(f"{name} must be from 0 (no span check) to {MAX_SPAN} words, got {value}")
    return int(value)


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    norm = normalize(text)
    return norm.split(" ") if norm else []


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """``uint64`` hashes of every window of ``n`` consecutive words of ``text``, in order; empty
    when the text has fewer than ``n`` words."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ws = words(text)
    count = len(ws) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    wh = np.fromiter((xxhash.xxh3_64_intdigest(w.encode("utf-8")) for w in ws), np.uint64, len(ws))
    acc = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * _P + wh[j : j + count]
    return acc


#: Characters of a shared span's text that reports keep.
SPAN_TEXT_CHARS = 500


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """The first longest run of True in ``mask``, as ``(start, length)``; ``(0, 0)`` when none."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return 0, 0
    i = int(np.argmax(ends - starts))
    return int(starts[i]), int(ends[i] - starts[i])


class WindowIndex:
    """The windows of many texts (``windows``: each text's :func:`ngram_hashes`), sorted once so
    that the texts sharing a window with another text are found by binary search: each text of a
    corpus costs ``O(w log W)`` for its ``w`` windows, not a pass over all ``W`` windows of the
    samples and one more per sample (which made 1,000 samples against 13,000 documents take
    minutes)."""

    def __init__(self, windows: list[np.ndarray]):
        lengths = np.fromiter((len(w) for w in windows), np.int64, len(windows))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate(windows) if len(windows) else np.zeros(0, np.uint64)
        self.order = np.argsort(flat, kind="stable")
        self.sorted = flat[self.order]
        self.owner = np.repeat(np.arange(len(windows)), lengths)

    def __len__(self) -> int:
        return len(self.sorted)

    def shared(self, hashes: np.ndarray) -> list[tuple[int, int, int]]:
        """``(text, start, windows)`` for each indexed text sharing a window with ``hashes`` (another
        text's windows): the first longest run of its windows found in ``hashes``, as
        :func:`longest_run` gives it; in the order of the texts."""
        doc = np.unique(hashes)
        lo, hi = np.searchsorted(self.sorted, doc, "left"), np.searchsorted(self.sorted, doc, "right")
        counts = hi - lo
        total = int(counts.sum())
        if not total:
            return []
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        positions = np.sort(self.order[starts + np.arange(total)])  # flat positions, grouped by text
        owners = self.owner[positions]
        out = []
        for group in np.split(np.arange(total), np.flatnonzero(np.diff(owners)) + 1):
            i = int(owners[group[0]])
            hit = np.zeros(self.offsets[i + 1] - self.offsets[i], bool)
            hit[positions[group] - self.offsets[i]] = True
            start, run = longest_run(hit)
            out.append((i, start, run))
        return out
