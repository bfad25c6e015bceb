"""Stage 1 of the CPU MinHash kernels (:mod:`provenance.kernels.minhash`): the complex spans that
Python folds, and the normalisation of everything else.

Input is one ``uint8`` buffer of valid UTF-8 with row offsets, as an Arrow string array lays text
out, and ``char_class``, each code point's class (:mod:`provenance.kernels.minhash_codes`).
:func:`complex_spans` finds the words holding a code point whose NFKC form or lower case depends on
context (whole words, or from whitespace to whitespace around capital sigma); Python's
``unicodedata`` folds just those. :func:`normalize_rows` lower-cases the rest code point by code
point, splits every row on the separators and writes its words joined by single spaces, with the
folded spans in their places; :func:`_normalize_row` does so for one row, and the fused
:func:`provenance.kernels.minhash.fingerprint_rows` inlines it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from provenance.kernels.jit_cache import cached_njit
from provenance.kernels.minhash_codes import CLASS_COMPLEX, CLASS_PUNCT, CLASS_SIGMA, CLASS_SPACE

_U32 = np.uint32
_U64 = np.uint64


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
