"""The fast path: a batch of texts as one Arrow string array, checked (:func:`as_string_array`),
normalised, shingled, MinHashed and banded by the CPU kernels in one pass, the complex spans
folded in Python (:func:`_fold_spans`), the signatures taken on a GPU when asked
(:func:`fingerprint_array`); everything the ledger stores per document (:class:`FingerprintBatch`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import xxhash

from provenance import columns
from provenance.errors import InvalidParameterError
from provenance.fingerprints.normalization import char_tables
from provenance.kernels import minhash_codes as _codes

if TYPE_CHECKING:
    from provenance.fingerprints import FingerprintConfig


@dataclass(frozen=True)
class FingerprintBatch:
    """Per-document results for a batch: exact hash, token count, signature, LSH band keys."""

    exact_hash: np.ndarray  # uint64[n]
    token_count: np.ndarray  # int64[n]
    signatures: np.ndarray  # uint32[n, num_perm]
    band_keys: np.ndarray  # uint64[n, bands]

    def __len__(self) -> int:
        return int(self.exact_hash.shape[0])


def fingerprint_read(cfg: FingerprintConfig, texts: pa.Array, device: Any = None) -> FingerprintBatch:
    """:meth:`FingerprintConfig.fingerprint_batch` of a reader's batch of texts
    (:class:`provenance.sources.Batch`), which the reader made or checked: a string array of
    valid UTF-8 without nulls, so it is not validated again (that check, Arrow's full
    validation, cost 3% of a registration's main thread)."""
    return fingerprint_array(cfg, texts, device)


def as_string_array(texts: Sequence[str] | pa.Array | pa.ChunkedArray | Iterable[str]) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if isinstance(texts, pa.Array):
        if pa.types.is_string_view(texts.type):
            texts = texts.cast(pa.large_string())
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise InvalidParameterError(f"texts must be an Arrow string array, got type {texts.type}")
        _check_utf8(texts)
        return texts
    if isinstance(texts, str):
        raise InvalidParameterError("texts must be a sequence of strings, not one string; use signature(text)")
    return strings_to_arrow(texts if isinstance(texts, list) else list(texts))


def _check_utf8(arr: pa.Array) -> None:
    """Arrow does not check that string arrays built from buffers hold UTF-8; the kernels rely on it."""
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        for i, value in enumerate(arr.cast(pa.large_binary(), safe=False).to_pylist()):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidParameterError(f"text {i} is not valid UTF-8 (byte {exc.start})") from None
        raise


def strings_to_arrow(texts: list[str]) -> pa.LargeStringArray:
    """A large-string Arrow array of ``texts``, built from ``str.encode``; raises naming the first
    text that is not a valid str. (``pa.array`` converted 40,000 generated texts 4× faster in
    isolation, but registered 1 GB of JSONL 8% slower with 80 MiB more memory: it imports pandas
    and holds the GIL; docs/benchmarks.md.)"""
    try:
        encoded = [t.encode("utf-8") for t in texts]
    except (AttributeError, UnicodeEncodeError):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                kind = "null" if t is None else type(t).__name__
                raise InvalidParameterError(f"text {i} is {kind}; every document needs a str") from None
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidParameterError(
                    f"text {i} holds an unpaired surrogate at character {exc.start}, which is not valid Unicode"
                ) from None
        raise
    return columns.from_encoded(encoded, large=True)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    offset_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, offsets_buf, data_buf = arr.buffers()
    n = len(arr)
    if offsets_buf is None:
        offsets = np.zeros(n + 1, dtype=offset_type)
    else:
        offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets.astype(np.int64, copy=False)


def _fold(text: str) -> bytes:
    """NFKC and lower-case, UTF-8 encoded: the part of normalisation that needs Python."""
    return unicodedata.normalize("NFKC", text).lower().encode("utf-8")


def _fold_spans(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each span ``data[starts[i]:ends[i]]`` (whole UTF-8 characters) folded by :func:`_fold`:
    the folded bytes one after another (one zero byte when there are none) and their offsets.

    The spans are folded in one call, joined by NUL: NUL is a starter that composes with nothing
    (NFKC neither reorders nor composes across it), neither cased nor case-ignorable (so the
    final-sigma rule of ``lower`` sees it as a word's end), and no folding makes one; the result
    is split at the NULs (the 145,826 spans of 100,000 generated documents: 124 ms one by one,
    49 ms so: less of the serial part that many cores wait on). Spans holding a NUL, or a result
    with another count of NULs, are folded one by one."""
    n = starts.size
    span_side = np.zeros(n + 1, dtype=np.int64)
    if not n:
        return np.zeros(1, dtype=np.uint8), span_side
    lengths = ends - starts
    out_starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=out_starts[1:])
    index = np.arange(int(lengths.sum()) + n, dtype=np.int64)
    index += np.repeat(starts - out_starts, lengths + 1)
    separators = out_starts + lengths
    index[separators] = starts[0]  # any valid index: the separators are written after the check
    joined = data[index]
    if not (joined == 0).any():
        joined[separators] = 0
        folded = np.frombuffer(_fold(joined.tobytes().decode("utf-8")), dtype=np.uint8)
        nul = np.flatnonzero(folded == 0)
        if nul.size == n:
            np.cumsum(np.diff(nul, prepend=-1) - 1, out=span_side[1:])
            side = folded[folded != 0]
            return (side if side.size else np.zeros(1, dtype=np.uint8)), span_side
    view = memoryview(data)
    pieces = [_fold(str(view[a:b], "utf-8")) for a, b in zip(starts.tolist(), ends.tolist())]
    np.cumsum([len(p) for p in pieces], out=span_side[1:])
    return (np.frombuffer(b"".join(pieces), dtype=np.uint8) if span_side[-1] else np.zeros(1, dtype=np.uint8)), span_side


#: Bytes of text under which a batch is fingerprinted on the calling thread alone: waking numba's
#: other threads costs more than they save there (a few rows: 0.2–2 ms a call on a busy machine
#: against 0.05 ms of work).
SERIAL_BELOW = 1 << 16


def fingerprint_array(cfg: FingerprintConfig, arr: pa.Array, device: Any = None) -> FingerprintBatch:
    from provenance.kernels.jit_cache import threads_for

    data, offsets = _string_buffers(arr)
    with threads_for(int(offsets[-1] - offsets[0]) if len(arr) else 0, SERIAL_BELOW):
        return _fingerprint_buffers(cfg, len(arr), data, offsets, device)


def _fingerprint_buffers(cfg: FingerprintConfig, n: int, data: np.ndarray, offsets: np.ndarray,
                         device: Any) -> FingerprintBatch:
    from provenance.kernels import minhash as _k  # numba: imported by what fingerprints, not by every command

    full = bool(n) and int(data[offsets[0] : offsets[-1]].max(initial=0)) >= 128
    char_class, lower_cp = char_tables(full)
    capacity = np.diff(offsets)
    if full:
        span_offsets, span_starts, span_ends = _k.complex_spans(data, offsets, char_class)
    else:
        span_offsets = np.zeros(n + 1, dtype=np.int64)
        span_starts = span_ends = np.zeros(0, dtype=np.int64)
    # Python folds the complex spans (NFKC + lower-case); the kernel does everything else.
    side, span_side = _fold_spans(data, span_starts, span_ends)
    if span_starts.size:
        growth = (span_side[1:] - span_side[:-1]) - (span_ends - span_starts)
        span_row = np.repeat(np.arange(n), np.diff(span_offsets))
        capacity = capacity + np.bincount(span_row, weights=growth, minlength=n).astype(np.int64)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(capacity, out=starts[1:])
    out = np.empty(int(starts[-1]) + _k.READ_AHEAD, dtype=np.uint8)  # the shingle hash reads ahead (its doc)
    a, b = cfg.permutations
    scheme = _codes.SCHEME_AFFINE32 if cfg.scheme == "affine32" else _codes.SCHEME_LEGACY
    banding = cfg.banding
    if device is None:
        lengths, n_words, signatures, keys = _k.fingerprint_rows(
            data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out, starts,
            cfg.ngram, a, b, scheme, banding.bands, banding.rows,
        )
    else:  # the same stages one after the other, the MinHash on ``device``
        lengths, n_words = _k.normalize_rows(
            data, offsets, span_offsets, span_starts, span_ends, side, span_side, char_class, lower_cp, out, starts)
        hash_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(_k.shingle_count(n_words, cfg.ngram), out=hash_offsets[1:])
        hashes = _k.shingle_hashes(out, starts[:-1], lengths, n_words, cfg.ngram, hash_offsets)
        signatures = _device_signatures(hashes, hash_offsets, a, b, scheme, device)
        keys = _k.band_keys(signatures, banding.bands, banding.rows)
    starts = starts[:-1]

    view = memoryview(out)
    h3 = xxhash.xxh3_64_intdigest
    exact = np.fromiter(
        (h3(view[s : s + ln]) for s, ln in zip(starts.tolist(), lengths.tolist())), dtype=np.uint64, count=n
    )
    return FingerprintBatch(exact_hash=exact, token_count=n_words, signatures=signatures, band_keys=keys)


def _device_signatures(hashes: np.ndarray, hash_offsets: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: int,
                       device: Any) -> np.ndarray:
    """``uint32[n, num_perm]`` signatures computed on the torch ``device`` (imported here: torch
    is not needed by the CPU path)."""
    import torch

    from provenance.kernels import minhash_gpu

    def tensor(x: np.ndarray) -> Any:  # the int64 bit patterns minhash_gpu takes
        return torch.from_numpy(x.view(np.int64) if x.dtype == np.uint64 else x.astype(np.int64)).to(device)

    sig = minhash_gpu.signatures(tensor(hashes), tensor(hash_offsets), tensor(a), tensor(b), scheme)
    return sig.cpu().numpy().astype(np.uint32)
