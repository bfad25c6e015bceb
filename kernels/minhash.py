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

The stages are the modules beside this one, and this module gives their kernels under its name:
:mod:`provenance.kernels.minhash_normalize` (1), :mod:`provenance.kernels.minhash_shingles` (2, with
xxh32), :mod:`provenance.kernels.minhash_signatures` (3 and 4). It holds :func:`fingerprint_rows`,
every stage for every row in one parallel pass: what registration runs on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from provenance.kernels.jit_cache import cached_njit
from provenance.kernels.minhash_codes import (
    CLASS_COMPLEX,
    CLASS_PUNCT,
    CLASS_SIGMA,
    CLASS_SIMPLE,
    CLASS_SPACE,
    SCHEME_AFFINE32,
    SCHEME_LEGACY,
)
from provenance.kernels.minhash_normalize import _normalize_row, complex_spans, normalize_rows
from provenance.kernels.minhash_shingles import READ_AHEAD, _row_shingles, shingle_count, shingle_hashes, xxh32
from provenance.kernels.minhash_signatures import _band_row, _signature, band_keys, minhash_signatures


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


__all__ = ["CLASS_COMPLEX", "CLASS_PUNCT", "CLASS_SIGMA", "CLASS_SIMPLE", "CLASS_SPACE", "READ_AHEAD", "SCHEME_AFFINE32",
           "SCHEME_LEGACY", "band_keys", "complex_spans", "fingerprint_rows", "minhash_signatures", "normalize_rows",
           "shingle_count", "shingle_hashes", "xxh32"]
