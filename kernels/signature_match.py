"""How many positions two MinHash signatures agree in, for many candidate pairs at once.

The audits compare the signatures of their LSH candidate pairs and keep those that agree in at
least ``need`` of ``k`` positions. In DuckDB that comparison is a lambda over the zipped lists,
about 1.4 µs per pair at k = 128 on two cores; this loop reads the two rows of a pair side by side
and stops as soon as more than ``k − need`` positions differ, which for most candidates of a
large near-duplicate cluster is after a few dozen positions (4M pairs of a cluster: 0.3 s against
5.7 s). A pair it keeps was compared in every position, so its count is exact.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from provenance.kernels.jit_cache import cached_njit


def count_matches(signatures: np.ndarray, a: np.ndarray, b: np.ndarray, need: int, *,
                  rows: np.ndarray | None = None, first: int = 0) -> np.ndarray:
    """For each pair ``(a[i], b[i])`` of row indices into ``signatures`` (``uint32[n, k]``), the
    number of positions the two rows agree in when it is at least ``need``, else -1 (int32).
    ``rows``: ``a`` and ``b`` hold ids instead, id ``x`` being row ``rows[x - first]`` (looked up in
    the loop: no index arrays are made)."""
    if signatures.ndim != 2 or signatures.dtype != np.uint32:
        raise ValueError(f"signatures must be uint32[n, k], got {signatures.dtype}{list(signatures.shape)}")
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"pair indices must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    n = signatures.shape[0]
    if rows is None:
        if first:
            raise ValueError("first is the id of rows[0]: give rows with it")
        rows = np.arange(n, dtype=np.int64)
    elif rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got {rows.shape}")
    if rows.dtype not in (np.int32, np.int64):
        rows = rows.astype(np.int64)
    for side in (a, b):
        if side.size and (side.min() < first or side.max() - first >= len(rows)):
            raise ValueError(f"pair indices outside the {len(rows)} rows")
    if rows.size and (rows.min() < -1 or rows.max() >= n):
        raise ValueError(f"rows outside the {n} signatures")
    return _count(np.ascontiguousarray(signatures), a.astype(np.int64, copy=False), b.astype(np.int64, copy=False),
                  int(need), rows, int(first))


@cached_njit(parallel=True, nogil=True)
def _count(sig, a, b, need, rows, first):
    out = np.empty(a.shape[0], np.int32)
    k = sig.shape[1]
    allow = k - need  # positions that may differ
    for i in prange(a.shape[0]):
        ra = rows[a[i] - first]
        rb = rows[b[i] - first]
        if ra < 0 or rb < 0:  # an id without a signature
            out[i] = -1
            continue
        x = sig[ra]
        y = sig[rb]
        miss = 0
        j = 0
        while j < k and miss <= allow:
            miss += x[j] != y[j]
            j += 1
        out[i] = k - miss if miss <= allow else -1
    return out


def bucket_partners(starts: np.ndarray, members: np.ndarray, focus_starts: np.ndarray, focus_buckets: np.ndarray,
                    focus_rows: np.ndarray, lo: int, hi: int, stamp: np.ndarray, *, classes: np.ndarray,
                    open_starts: np.ndarray, open_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs of the focus documents ``lo`` … ``hi − 1``, each once: a focus document
    with every other document of the buckets it looks into. ``members[starts[j]:starts[j + 1]]``
    are the rows of bucket ``j``; ``focus_buckets[focus_starts[i]:focus_starts[i + 1]]`` the
    buckets that the focus document whose row is ``focus_rows[i]`` looks into. A mate that looks
    for the focus document's class itself (``classes[row]``, int64; the classes row ``m`` looks
    for are ``open_to[open_starts[m]:open_starts[m + 1]]``) forms the pair where it is the
    smaller row, so two such documents meet once. ``stamp`` (int64, one per row, filled with -1
    once for all calls) marks the rows met. Returns ``(a, b)`` rows (int64), ``a`` the focus
    document's."""
    return _partners(starts, members, focus_starts, focus_buckets, focus_rows, int(lo), int(hi), stamp,
                     classes, open_starts, open_to)


@cached_njit(nogil=True)
def _partners(starts, members, focus_starts, focus_buckets, focus_rows, lo, hi, stamp, classes, open_starts, open_to):
    """:func:`bucket_partners` in one walk: the output is sized by what the focus documents'
    buckets hold (each meets at most every row once), and cut to what they met. A focus
    document whose buckets hold at least ``rows / DENSE`` rows writes its mates in row order:
    they are stamped first, then read off the stamps in order, so that their signatures are
    read in sequence (2× faster to compare, one thread, than in the buckets' order, where a large
    cluster's rows come scattered); the scan costs at most ``DENSE`` times the walk."""
    rows = stamp.shape[0]
    held = np.empty(hi - lo, np.int64)  # how many rows each focus document's buckets hold, with repeats
    cap = 0
    for i in range(lo, hi):
        h = 0
        for t in range(focus_starts[i], focus_starts[i + 1]):
            h += starts[focus_buckets[t] + 1] - starts[focus_buckets[t]]
        held[i - lo] = h
        cap += min(h, rows)
    a = np.empty(cap, np.int64)
    b = np.empty(cap, np.int64)
    n = 0
    for i in range(lo, hi):
        f = focus_rows[i]
        if held[i - lo] * DENSE >= rows:  # stamped with i (-1 until met), then read off in row order
            _meet(starts, members, focus_starts, focus_buckets, f, i, stamp, classes, open_starts, open_to, a, b, -1)
            for m in range(rows):
                if stamp[m] == i:
                    a[n] = f
                    b[n] = m
                    n += 1
        else:
            n = _meet(starts, members, focus_starts, focus_buckets, f, i, stamp, classes, open_starts, open_to, a, b, n)
    return a[:n], b[:n]


@cached_njit(nogil=True, inline="always")
def _meet(starts, members, focus_starts, focus_buckets, f, i, stamp, classes, open_starts, open_to, a, b, n):
    """Walk the buckets of focus document ``i`` (row ``f``), stamping each mate met with ``i``,
    or with ``-i - 2`` where the mate forms the pair itself (a smaller row that looks for
    ``f``'s class); with ``n >= 0``, also write the pairs from ``n`` on and return the new end."""
    c = classes[f]
    skip = -i - 2
    for t in range(focus_starts[i], focus_starts[i + 1]):
        j = focus_buckets[t]
        for s in range(starts[j], starts[j + 1]):
            m = members[s]
            if m == f or stamp[m] == i or stamp[m] == skip:
                continue
            if m < f:  # formed by m where m looks for f's class too
                looks = False
                for u in range(open_starts[m], open_starts[m + 1]):
                    if open_to[u] == c:
                        looks = True
                        break
                if looks:
                    stamp[m] = skip
                    continue
            stamp[m] = i
            if n >= 0:
                a[n] = f
                b[n] = m
                n += 1
    return n


#: A focus document is walked densely (:func:`_partners`) when its buckets hold at least
#: ``rows / DENSE`` rows.
DENSE = 4
