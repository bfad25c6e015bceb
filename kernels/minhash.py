"""MinHash kernels for the CPU: normalisation, shingle hashing, permutation-min, banding.

These are the fast path behind :meth:`provenance.FingerprintConfig.signatures`. Each stage is a
numba-compiled function over flat buffers (one ``uint8`` byte buffer with row starts and lengths,
as an Arrow string array lays text out), parallel over documents, so no Python runs per shingle.
The plain reference for every stage is the pure-Python path in :mod:`provenance.fingerprints`
together with ``datasketch.MinHash``; the tests compare them on random input.

Stages:

1. :func:`complex_spans` finds the words holding a code point whose NFKC form or lower case
   depends on context; Python's ``unicodedata`` folds just those words (from whitespace to
   whitespace around capital sigma). :func:`normalize_rows` lower-cases the rest
   code point by code point, splits every row on the separator table and writes the words
   joined by single spaces.
2. :func:`shingle_hashes` hashes every word n-gram of the normalised text with xxh32 (seed 0).
   Because words are joined by exactly one space, an n-gram is a contiguous slice of the row and
   needs no copy.
3. :func:`minhash_signatures` applies datasketch's permutations (``affine32`` or ``legacy``) and
   keeps the element-wise minimum per document.
4. :func:`band_keys` hashes each LSH band of a signature to one 64-bit key.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from provenance.kernels.jit_cache import cached_njit
from provenance.kernels.minhash_codes import (  # noqa: F401 (the codes are this module's too)
    CLASS_COMPLEX,
    CLASS_PUNCT,
    CLASS_SIGMA,
    CLASS_SIMPLE,
    CLASS_SPACE,
    SCHEME_AFFINE32,
    SCHEME_LEGACY,
)

_U32 = np.uint32
_U64 = np.uint64

# xxh32 primes (from the xxHash specification).
_P1 = np.uint32(0x9E3779B1)
_P2 = np.uint32(0x85EBCA77)
_P3 = np.uint32(0xC2B2AE3D)
_P4 = np.uint32(0x27D4EB2F)
_P5 = np.uint32(0x165667B1)

_MERSENNE61 = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


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


@cached_njit(inline="always")
def _utf8_decode(buf, p):
    """Code point starting at ``buf[p]`` and its byte length (input is valid UTF-8)."""
    c = np.int64(buf[_U64(p)])
    if c < 0x80:
        return c, 1
    if c < 0xE0:
        return ((c & 0x1F) << 6) | (np.int64(buf[_U64(p + 1)]) & 0x3F), 2
    if c < 0xF0:
        return ((c & 0x0F) << 12) | ((np.int64(buf[_U64(p + 1)]) & 0x3F) << 6) | (np.int64(buf[_U64(p + 2)]) & 0x3F), 3
    return (
        ((c & 0x07) << 18)
        | ((np.int64(buf[_U64(p + 1)]) & 0x3F) << 12)
        | ((np.int64(buf[_U64(p + 2)]) & 0x3F) << 6)
        | (np.int64(buf[_U64(p + 3)]) & 0x3F)
    ), 4


@cached_njit(inline="always")
def _is_break(c):
    return c == CLASS_SPACE or c == CLASS_PUNCT


@cached_njit(inline="always")
def _first_non_ascii(data, s, e):
    """The first position in ``data[s:e]`` of a byte from 128 (``e`` if none): blocks of 64
    bytes OR-ed together (a loop LLVM vectorises), then byte by byte in the block that has one."""
    p = s
    while p + 64 <= e:
        acc = np.uint8(0)
        for j in range(64):
            acc |= data[_U64(p + j)]
        if acc >= 128:
            break
        p += 64
    while p < e and data[_U64(p)] < 128:
        p += 1
    return p


@cached_njit(inline="always")
def _scan_spans(data, s, e, char_class, starts, ends, base, limit):
    """Walk one row and return its number of complex spans, writing them from ``base`` when
    ``limit`` (the row's final count, from a first pass with ``limit = -1``) is known.

    A complex span runs from the break before a complex code point to the next break after it:
    whole words, since NFKC and lower-casing of a word do not depend on other words. A span
    holding capital sigma runs from whitespace to whitespace instead (the final-sigma rule looks
    across punctuation), and swallows the spans it overlaps. A span that a later one swallows
    may sit at or past ``limit``; it is not written, so a row never writes into the next row's.
    """
    count = 0
    since_space = 0
    word_start = s
    space_start = s
    p = s
    while p < e:
        if data[_U64(p)] < 128:
            # No span starts in a run of ASCII: skip it at the speed of a vectorised scan, and
            # keep only where its last break and its last space are (looking back from its end).
            q = _first_non_ascii(data, p, e)
            r = q
            while r > p and not _is_break(char_class[data[_U64(r - 1)]]):
                r -= 1
            if r > p:
                word_start = r
                while r > p and char_class[data[_U64(r - 1)]] != CLASS_SPACE:
                    r -= 1
                if r > p:
                    space_start = r
                    since_space = 0
            p = q
            continue
        cp, size = _utf8_decode(data, p)
        c = char_class[_U64(cp)]
        if c == CLASS_SPACE:
            word_start = space_start = p + size
            since_space = 0
            p += size
        elif c == CLASS_PUNCT:
            word_start = p + size
            p += size
        elif c == CLASS_COMPLEX or c == CLASS_SIGMA:
            sigma = c == CLASS_SIGMA
            q = p + size
            while q < e:
                cq, sq = _utf8_decode(data, q)
                cc = char_class[_U64(cq)]
                if cc == CLASS_SIGMA:
                    sigma = True
                elif cc == CLASS_SPACE or (cc == CLASS_PUNCT and not sigma):
                    break
                q += sq
            start = word_start
            if sigma:
                count -= since_space
                since_space = 0
                start = space_start
            if count < limit:
                starts[base + count] = start
                ends[base + count] = q
            count += 1
            since_space += 1
            word_start = q
            p = q
        else:
            p += size
    return count


@cached_njit(parallel=True, nogil=True)
def complex_spans(data, offsets, char_class):
    """Where Python must fold (NFKC + lower-case) each row: ``(span_offsets, starts, ends)``.

    A code point is complex when its NFKC form or lower case depends on its neighbours or changes
    its UTF-8 length (combining marks, compatibility characters, Hangul jamo, capital sigma...).
    The spans of row ``i`` are ``span_offsets[i]:span_offsets[i + 1]``; Python's ``unicodedata``
    folds each, the kernel everything else.
    """
    n = offsets.shape[0] - 1
    counts = np.zeros(n, dtype=np.int64)
    dummy = np.zeros(0, dtype=np.int64)
    for i in prange(n):
        counts[i] = _scan_spans(data, offsets[i], offsets[i + 1], char_class, dummy, dummy, 0, -1)
    span_offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        span_offsets[i + 1] = span_offsets[i] + counts[i]
    starts = np.empty(span_offsets[n], dtype=np.int64)
    ends = np.empty(span_offsets[n], dtype=np.int64)
    for i in prange(n):
        if counts[i]:
            _scan_spans(data, offsets[i], offsets[i + 1], char_class, starts, ends, span_offsets[i], counts[i])
    return span_offsets, starts, ends


@cached_njit(inline="always")
def _utf8_write(out, w, cp):
    if cp < 0x80:
        out[_U64(w)] = cp
        return w + 1
    if cp < 0x800:
        out[_U64(w)] = 0xC0 | (cp >> 6)
        out[_U64(w + 1)] = 0x80 | (cp & 0x3F)
        return w + 2
    if cp < 0x10000:
        out[_U64(w)] = 0xE0 | (cp >> 12)
        out[_U64(w + 1)] = 0x80 | ((cp >> 6) & 0x3F)
        out[_U64(w + 2)] = 0x80 | (cp & 0x3F)
        return w + 3
    out[_U64(w)] = 0xF0 | (cp >> 18)
    out[_U64(w + 1)] = 0x80 | ((cp >> 12) & 0x3F)
    out[_U64(w + 2)] = 0x80 | ((cp >> 6) & 0x3F)
    out[_U64(w + 3)] = 0x80 | (cp & 0x3F)
    return w + 4


@cached_njit(inline="always")
def _emit(src, s, e, lower, char_class, lower_cp, out, w, words, in_word):
    """Split ``src[s:e]`` on separators into ``out``; lower-case through ``lower_cp`` if asked."""
    p = s
    while p < e:
        c = src[_U64(p)]
        if lower and c < 128:  # ASCII, without a branch on where words start and end
            cls = char_class[c]
            keep = (cls != CLASS_SPACE) & (cls != CLASS_PUNCT)
            start = keep & (not in_word)
            out[_U64(w)] = 32  # kept only when a word starts after another
            w += start & (words > 0)
            words += start
            out[_U64(w)] = lower_cp[c]  # kept only when in a word
            w += keep
            in_word = keep
            p += 1
            continue
        cp, size = _utf8_decode(src, p)
        if _is_break(char_class[_U64(cp)]):
            in_word = False
        else:
            if not in_word:
                if words > 0:
                    out[_U64(w)] = 32
                    w += 1
                words += 1
                in_word = True
            if lower:
                w = _utf8_write(out, w, lower_cp[_U64(cp)])
            else:
                for q in range(size):
                    out[_U64(w)] = src[_U64(p + q)]
                    w += 1
        p += size
    return w, words, in_word


@cached_njit(parallel=True, nogil=True)
def normalize_rows(data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out, out_starts):
    """Split every row on separators and write its words joined by one space into ``out``.

    Text read from ``data`` is lower-cased code point by code point through ``lower_cp`` (it holds
    no complex code point, so NFKC leaves it as it is and lower-casing keeps each code point's
    UTF-8 length). Complex spans are replaced by their folded form ``side[span_side[k]:
    span_side[k + 1]]``, which is only split. Row ``i`` is written from ``out_starts[i]``.
    Returns ``(lengths, n_words)``.
    """
    n = offsets.shape[0] - 1
    lengths = np.zeros(n, dtype=np.int64)
    n_words = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        lengths[i], n_words[i] = _normalize_row(
            data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out, out_starts, i
        )
    return lengths, n_words


@cached_njit(inline="always")
def _normalize_row(data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out,
                   out_starts, i):
    w = out_starts[i]
    words = 0
    in_word = False
    p = offsets[i]
    for k in range(span_offsets[i], span_offsets[i + 1]):
        w, words, in_word = _emit(data, p, span_starts[k], True, char_class, lower_cp, out, w, words, in_word)
        w, words, in_word = _emit(side, span_side[k], span_side[k + 1], False, char_class, lower_cp, out, w, words, in_word)
        p = span_ends[k]
    w, words, in_word = _emit(data, p, offsets[i + 1], True, char_class, lower_cp, out, w, words, in_word)
    return w - out_starts[i], words


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


@cached_njit(parallel=True, nogil=True)
def fingerprint_rows(data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out,
                     out_starts, ngram, a, b, scheme, bands, rows):
    """All stages for every row in one parallel pass: normalise into ``out``, hash the shingles,
    permute and take the minimum, hash the bands. Same results as running ``normalize_rows``,
    ``shingle_hashes``, ``minhash_signatures`` and ``band_keys`` one after the other, with one
    parallel region instead of four and no array of all token hashes.
    Returns ``(lengths, n_words, signatures, band_keys)``.
    """
    n = offsets.shape[0] - 1
    lengths = np.zeros(n, dtype=np.int64)
    n_words = np.zeros(n, dtype=np.int64)
    signatures = np.empty((n, a.shape[0]), dtype=np.uint32)
    keys = np.empty((n, bands), dtype=np.uint64)
    for i in prange(n):
        length, nw = _normalize_row(
            data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out, out_starts, i
        )
        lengths[i] = length
        n_words[i] = nw
        count = 0 if nw == 0 else (1 if nw < ngram else nw - ngram + 1)
        hashes = np.empty(count, dtype=np.uint32)
        _row_shingles(out, out_starts[i], out_starts[i] + length, nw, ngram, hashes, 0)
        _signature(hashes, 0, count, a, b, scheme, signatures[i])
        _band_row(signatures[i], bands, rows, keys[i])
    return lengths, n_words, signatures, keys


@cached_njit(inline="always")
def _fmix32(h):
    h ^= h >> np.uint32(16)
    h = np.uint32(h * np.uint32(0x85EBCA6B))
    h ^= h >> np.uint32(13)
    h = np.uint32(h * np.uint32(0xC2B2AE35))
    h ^= h >> np.uint32(16)
    return h


@cached_njit(parallel=True, nogil=True)
def minhash_signatures(hashes, hash_offsets, a, b, scheme):
    """Signatures ``(n, num_perm)`` uint32 from flat token hashes, as datasketch computes them.

    ``affine32``: ``min(a * fmix32(h) + b mod 2**32)``; ``legacy``: ``min(((h * a + b) mod 2**64)
    mod (2**61 - 1)) & 0xFFFFFFFF`` with 64-bit ``a`` and ``b``. Rows without hashes keep the
    initial value 0xFFFFFFFF in every position, like an empty ``datasketch.MinHash``.
    """
    n = hash_offsets.shape[0] - 1
    out = np.empty((n, a.shape[0]), dtype=np.uint32)
    for i in prange(n):
        _signature(hashes, hash_offsets[i], hash_offsets[i + 1], a, b, scheme, out[i])
    return out


@cached_njit(inline="always")
def _signature(hashes, lo, hi, a, b, scheme, out_row):
    """Write the signature of token hashes ``hashes[lo:hi]`` into ``out_row``."""
    k = a.shape[0]
    if scheme == 0:
        sig = np.full(k, np.uint32(0xFFFFFFFF), dtype=np.uint32)
        for t in range(lo, hi):
            h = _fmix32(hashes[t])
            for j in range(k):
                v = np.uint32(a[j] * h + b[j])
                if v < sig[j]:
                    sig[j] = v
        out_row[:] = sig
    else:
        sig64 = np.full(k, _MASK32, dtype=np.uint64)
        for t in range(lo, hi):
            h = np.uint64(hashes[t])
            for j in range(k):
                v = ((h * a[j] + b[j]) % _MERSENNE61) & _MASK32
                if v < sig64[j]:
                    sig64[j] = v
        for j in range(k):
            out_row[j] = np.uint32(sig64[j])


@cached_njit(inline="always")
def _splitmix64(z):
    z = np.uint64(z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = np.uint64(z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.uint64(z ^ (z >> np.uint64(31)))


@cached_njit(parallel=True, nogil=True)
def band_keys(signatures, bands, rows):
    """One uint64 key per (document, band): fold the band's values through splitmix64.

    ``key = band``; for each value ``v`` of the band in order: ``key = splitmix64(key ^ v)``.
    Band ``i`` covers positions ``[i * rows, (i + 1) * rows)``.
    """
    n = signatures.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    for i in prange(n):
        _band_row(signatures[i], bands, rows, out[i])
    return out


@cached_njit(inline="always")
def _band_row(sig, bands, rows, out_row):
    for band in range(bands):
        key = np.uint64(band)
        for r in range(rows):
            key = _splitmix64(key ^ np.uint64(sig[band * rows + r]))
        out_row[band] = key
