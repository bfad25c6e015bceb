"""Stage 2 of the CPU MinHash kernels (:mod:`provenance.kernels.minhash`): xxh32 (seed 0) of every
word n-gram of the normalised rows.

:func:`xxh32` equals ``xxhash.xxh32_intdigest``; :func:`_xxh32_ahead` is the same hash with fewer
unpredictable branches, for a buffer that holds :data:`READ_AHEAD` bytes past the slice. Words are
joined by exactly one space after normalisation, so an n-gram is a contiguous slice of its row and
needs no copy: :func:`shingle_hashes` hashes the slices of every row, flat;
:func:`_row_shingles` those of one row (the fused
:func:`provenance.kernels.minhash.fingerprint_rows` inlines it); :func:`shingle_count` says how
many a row has.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from provenance.kernels.jit_cache import cached_njit
from provenance.kernels.minhash_normalize import _U64

# xxh32 primes (from the xxHash specification).
_P1 = np.uint32(0x9E3779B1)
_P2 = np.uint32(0x85EBCA77)
_P3 = np.uint32(0xC2B2AE3D)
_P4 = np.uint32(0x27D4EB2F)
_P5 = np.uint32(0x165667B1)


@cached_njit(inline="always")
def _rotl32(x, r):
    return np.uint32((x << np.uint32(r)) | (x >> np.uint32(32 - r)))


@intrinsic
def _load32(typingctx, buf, p):
    """The 32-bit unsigned integer stored little-endian at byte ``p`` of the contiguous ``uint8``
    array ``buf``, as one unaligned load. Four byte loads ``buf[p + i]`` were not merged into one
    by LLVM, and each paid numba's negative-index wrap-around for a signed index (a compare and
    two moves): the shingle stage ran about twice as slow with them. ``p`` must lie within the buffer,
    unchecked, as numba does not check bounds either. (Elsewhere in this module a byte index is
    cast to ``uint64`` where it is used, ``buf[_U64(p)]``: numba does not wrap an unsigned index.)"""
    if not (isinstance(buf, types.Array) and buf.dtype == types.uint8 and buf.ndim == 1 and buf.layout == "C"
            and isinstance(p, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [index]), ir.IntType(32).as_pointer())
        value = builder.load(ptr, align=1)
        return builder.bswap(value) if sys.byteorder == "big" else value

    return types.uint32(buf, p), codegen


@cached_njit(inline="always")
def _read32(buf, p):
    return _load32(buf, p)


@cached_njit(inline="always")
def _round32(acc, lane):
    acc = np.uint32(acc + np.uint32(lane * _P2))
    acc = _rotl32(acc, 13)
    return np.uint32(acc * _P1)


@cached_njit(inline="always")
def _stripes(buf, p, limit, v1, v2, v3, v4):
    """xxh32's four lanes over the 16-byte stripes from ``p`` while one starts by ``limit``."""
    while p <= limit:
        v1 = _round32(v1, _read32(buf, p))
        v2 = _round32(v2, _read32(buf, p + 4))
        v3 = _round32(v3, _read32(buf, p + 8))
        v4 = _round32(v4, _read32(buf, p + 12))
        p += 16
    return p, np.uint32(_rotl32(v1, 1) + _rotl32(v2, 7) + _rotl32(v3, 12) + _rotl32(v4, 18))


@cached_njit(inline="always")
def _avalanche32(h):
    h ^= h >> np.uint32(15)
    h = np.uint32(h * _P2)
    h ^= h >> np.uint32(13)
    h = np.uint32(h * _P3)
    h ^= h >> np.uint32(16)
    return h


@cached_njit()
def xxh32(buf, start, end):
    """xxh32 with seed 0 of ``buf[start:end]``; equals ``xxhash.xxh32_intdigest``."""
    n = end - start
    p = start
    if n >= 16:
        p, h = _stripes(buf, p, end - 16, np.uint32(_P1 + _P2), _P2, np.uint32(0), np.uint32(np.uint32(0) - _P1))
    else:
        h = _P5
    h = np.uint32(h + np.uint32(n))
    while p + 4 <= end:
        h = np.uint32(h + np.uint32(_read32(buf, p) * _P3))
        h = np.uint32(_rotl32(h, 17) * _P4)
        p += 4
    while p < end:
        h = np.uint32(h + np.uint32(np.uint32(buf[_U64(p)]) * _P5))
        h = np.uint32(_rotl32(h, 11) * _P1)
        p += 1
    return _avalanche32(h)


# How far past a slice's end :func:`_xxh32_ahead` may read. Callers of the shingle kernels pad
# their text buffer by this much so that every shingle takes the fast path (the kernels stay
# correct on an unpadded buffer: the last shingles of it take :func:`xxh32`).
READ_AHEAD = 32


@cached_njit(inline="always")
def _xxh32_ahead(buf, start, end):
    """:func:`xxh32` of ``buf[start:end]`` for a buffer that holds :data:`READ_AHEAD` bytes after
    ``end``, with fewer unpredictable branches: a 16-byte stripe is always computed and a second
    one kept only when the slice has it, and the tail's 4-byte words and bytes (at most three of
    each) are always computed and kept only where they lie within the slice. Shingles of five
    words are 20-60 bytes long, so their stripe and tail counts change from one to the next and
    the plain loops' exits were mispredicted: this made the shingle stage 1.3x faster. Slices
    under 16 bytes take :func:`xxh32`."""
    n = end - start
    if n < 16:
        return xxh32(buf, start, end)
    p = start
    v1 = _round32(np.uint32(_P1 + _P2), _read32(buf, p))
    v2 = _round32(_P2, _read32(buf, p + 4))
    v3 = _round32(np.uint32(0), _read32(buf, p + 8))
    v4 = _round32(np.uint32(np.uint32(0) - _P1), _read32(buf, p + 12))
    p += 16
    limit = end - 16
    w1 = _round32(v1, _read32(buf, p))  # the second stripe, kept if the slice has one
    w2 = _round32(v2, _read32(buf, p + 4))
    w3 = _round32(v3, _read32(buf, p + 8))
    w4 = _round32(v4, _read32(buf, p + 12))
    two = p <= limit
    v1, v2, v3, v4 = (w1 if two else v1), (w2 if two else v2), (w3 if two else v3), (w4 if two else v4)
    p, h = _stripes(buf, p + 16 if two else p, limit, v1, v2, v3, v4)
    h = np.uint32(h + np.uint32(n))
    words = (end - p) >> 2
    for r in range(3):
        g = np.uint32(_rotl32(np.uint32(h + np.uint32(_read32(buf, p + 4 * r) * _P3)), 17) * _P4)
        h = g if r < words else h
    p += 4 * words
    for r in range(3):
        g = np.uint32(_rotl32(np.uint32(h + np.uint32(np.uint32(buf[_U64(p + r)]) * _P5)), 11) * _P1)
        h = g if p + r < end else h
    return _avalanche32(h)


@cached_njit(parallel=True, nogil=True)
def shingle_hashes(buf, starts, lengths, n_words, ngram, hash_offsets):
    """xxh32 of every word ``ngram``-gram of each normalised row, flat, rows at ``hash_offsets``.

    A row with fewer than ``ngram`` (but at least one) words yields one shingle: the whole row.
    An empty row yields none.
    """
    n = starts.shape[0]
    hashes = np.empty(hash_offsets[n], dtype=np.uint32)
    for i in prange(n):
        _row_shingles(buf, starts[i], starts[i] + lengths[i], n_words[i], ngram, hashes, hash_offsets[i])
    return hashes


@cached_njit(inline="always")
def _row_shingles(buf, s, e, nw, ngram, hashes, base):
    """Write the xxh32 of every word n-gram of the normalised row ``buf[s:e]`` from ``base``."""
    if nw == 0:
        return
    if nw < ngram:
        hashes[base] = xxh32(buf, s, e)
        return
    # word_start[j] is where word j begins; word_start[nw] = e + 1 closes the last word. Written
    # without a branch: every byte stores, and the index moves on at a space (the words are
    # joined by single spaces, so no store goes past word_start[nw]).
    word_start = np.empty(nw + 1, dtype=np.int64)
    word_start[0] = s
    j = 1
    for p in range(s, e):
        word_start[j] = p + 1
        j += buf[_U64(p)] == 32
    word_start[nw] = e + 1
    safe = buf.size - READ_AHEAD  # slices ending here or before may be read past their end
    for k in range(nw - ngram + 1):
        end = word_start[k + ngram] - 1
        hashes[base + k] = _xxh32_ahead(buf, word_start[k], end) if end <= safe else xxh32(buf, word_start[k], end)


def shingle_count(n_words: np.ndarray, ngram: int) -> np.ndarray:
    """Shingles per row: none when empty, one when shorter than ``ngram``, else ``n - ngram + 1``."""
    return np.where(n_words == 0, 0, np.where(n_words < ngram, 1, n_words - ngram + 1))
