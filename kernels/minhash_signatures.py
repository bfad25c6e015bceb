"""Stages 3 and 4 of the CPU MinHash kernels (:mod:`provenance.kernels.minhash`): each document's
signature from its token hashes, and the LSH band keys of a signature.

:func:`minhash_signatures` applies datasketch's permutations (``affine32`` or ``legacy``) and keeps
the element-wise minimum per document; :func:`band_keys` folds each band of a signature through
splitmix64 into one 64-bit key. :func:`_signature` and :func:`_band_row` do so for one document,
and the fused :func:`provenance.kernels.minhash.fingerprint_rows` inlines them.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from provenance.kernels.jit_cache import cached_njit

_MERSENNE61 = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


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
