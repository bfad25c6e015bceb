"""Document fingerprints: normalisation, word shingles, datasketch-compatible MinHash, LSH bands.

The specification, in the order it is applied (also in ``docs/fingerprints.md``):

1. **Normalise**: Unicode NFKC, then ``str.lower()``, then every separator becomes a word break.
   A separator is a character ``c`` with ``c.isspace()`` or whose Unicode general category starts
   with ``P`` (punctuation). Symbols (``$``, ``+``, emoji) and digits stay inside words. The
   normalised text is the words joined by one ASCII space; its xxh3-64 is the document's exact hash
   and its word count is the token count.
2. **Shingle**: every run of ``ngram`` consecutive words, joined by one space, UTF-8 encoded. A
   document with at least one but fewer than ``ngram`` words has one shingle, its whole normalised
   text; an empty document has none, and its signature is all ``0xFFFFFFFF`` (the value of an
   empty ``datasketch.MinHash``).
3. **Hash** each shingle with xxh32 (seed 0), i.e. ``xxhash.xxh32_intdigest``.
4. **Permute and take the minimum** exactly as ``datasketch.MinHash(num_perm, seed, scheme)``.

So ``MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=cfg.hashfunc)``
updated with ``cfg.shingles(text)`` has the hash values of ``cfg.signature(text)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provenance.errors import FingerprintMismatchError, InvalidParameterError
from provenance.fingerprints.batches import (
    FingerprintBatch,
    _fold,
    _fold_spans,
    _string_buffers,
    as_string_array,
    fingerprint_array,
    fingerprint_read,
    strings_to_arrow,
)
from provenance.fingerprints.normalization import cache_dir, normalize
from provenance.fingerprints.normalization import char_tables as _char_tables

if TYPE_CHECKING:
    from datasketch import LeanMinHash

MIN_RECALL = 0.99
#: The bounds of FingerprintConfig's integer fields (the command line checks them as click ranges).
MAX_NGRAM, MAX_NUM_PERM, MAX_SEED = 64, 8192, 2**32 - 1
"""Probability with which a pair exactly at the banding threshold must become an LSH candidate."""


@functools.lru_cache(maxsize=32)
def _permutations(scheme: str, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters, drawn from ``np.random.RandomState(seed)``."""
    gen = np.random.RandomState(seed)
    if scheme == "affine32":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a, b
    prime = np.uint64((1 << 61) - 1)
    pairs = np.array(
        [(gen.randint(1, prime, dtype=np.uint64), gen.randint(0, prime, dtype=np.uint64)) for _ in range(num_perm)],
        dtype=np.uint64,
    )
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


@dataclass(frozen=True)
class Banding:
    """LSH banding: ``bands`` bands of ``rows`` signature positions each (band i is positions
    ``[i*rows, (i+1)*rows)``). A pair of similarity ``s`` is a candidate with probability
    ``1 - (1 - s**rows)**bands``."""

    bands: int
    rows: int

    def probability(self, similarity: float) -> float:
        return 1.0 - (1.0 - similarity**self.rows) ** self.bands

    @property
    def tag(self) -> str:
        return f"b{self.bands}r{self.rows}"

    def false_positive_area(self, threshold: float, steps: int = 200) -> float:
        """Mean candidate probability over similarities below ``threshold`` (lower is better)."""
        xs = np.linspace(0.0, threshold, steps)
        return float(np.mean([self.probability(x) for x in xs]))

    @classmethod
    def for_threshold(cls, num_perm: int, threshold: float, min_recall: float = MIN_RECALL) -> Banding:
        """The banding with the most rows per band (fewest false candidates) that still makes a
        pair at ``threshold`` a candidate with probability at least ``min_recall``."""
        if not 0.0 < threshold < 1.0:
            raise InvalidParameterError(f"threshold must be in (0, 1), got {threshold}")
        if isinstance(num_perm, bool) or not isinstance(num_perm, numbers.Integral) or not 1 <= num_perm <= MAX_NUM_PERM:
            raise InvalidParameterError(f"num_perm must be a whole number from 1 to {MAX_NUM_PERM}, got {num_perm!r}")
        if not 0.0 < min_recall < 1.0:
            raise InvalidParameterError(f"min_recall must be in (0, 1), got {min_recall}")
        rows = _most_rows(int(num_perm), float(threshold), float(min_recall))
        if rows:
            return cls(bands=num_perm // rows, rows=rows)
        lowest = 1 - (1 - min_recall) ** (1 / num_perm)  # one row per band: P = 1 - (1 - t)^num_perm
        raise InvalidParameterError(
            f"threshold {threshold:g} is too low for num_perm={num_perm}: even {num_perm} band{'s' * (num_perm != 1)} of one row find{'s' * (num_perm == 1)} a "
            f"pair at that similarity with probability {cls(num_perm, 1).probability(threshold):.4f} < {min_recall}; "
            f"the lowest threshold it reaches is about {lowest:.3f} (or use more permutations)"
        )


@functools.lru_cache(maxsize=1024)
def _most_rows(num_perm: int, threshold: float, min_recall: float) -> int:
    """The most rows per band for :meth:`Banding.for_threshold`, or 0 where none reaches
    ``min_recall``: a search of up to ``num_perm`` bandings, kept (each batch fingerprinted asks
    for its config's banding; the search was most of the time of a one-document batch)."""
    for rows in range(num_perm, 0, -1):
        if Banding(bands=num_perm // rows, rows=rows).probability(threshold) >= min_recall:
            return rows
    return 0


class FingerprintConfig(BaseModel):
    """Frozen parameters of a document signature; stored with every signature it made.

    Signatures compare only under the same :attr:`identity`. ``lsh_threshold`` picks the banding
    of the stored LSH keys (:attr:`banding`); it does not change signatures.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: Literal["word"] = Field("word", description="shingle unit: words after normalisation")
    ngram: int = Field(5, ge=1, le=MAX_NGRAM, description="words per shingle")
    normalization: Literal["nfkc-lower-punct"] = Field(
        "nfkc-lower-punct", description="NFKC, lower-case, split on whitespace and punctuation"
    )
    hash: Literal["xxh32"] = Field("xxh32", description="token hash applied to each shingle's UTF-8 bytes")
    scheme: Literal["affine32", "legacy"] = Field("affine32", description="datasketch permutation scheme")
    num_perm: int = Field(128, ge=1, le=MAX_NUM_PERM, description="number of permutations (signature length)")
    seed: int = Field(1, ge=0, le=MAX_SEED, description="seed of datasketch's permutations")
    lsh_threshold: float = Field(0.8, gt=0.0, lt=1.0, allow_inf_nan=False,
                                 description="similarity the stored LSH bands target")

    @model_validator(mode="after")
    def _check_banding(self) -> FingerprintConfig:
        # Every batch stores band keys: a config whose threshold no banding can serve is refused
        # when it is made, not when it is first used.
        try:
            Banding.for_threshold(self.num_perm, self.lsh_threshold)
        except InvalidParameterError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def identity(self) -> str:
        """Stable string naming everything that shapes a signature (not the banding)."""
        return (
            f"minhash-v1:{self.unit}{self.ngram}:{self.normalization}:{self.hash}:"
            f"{self.scheme}:k{self.num_perm}:s{self.seed}"
        )

    @property
    def banding(self) -> Banding:
        return Banding.for_threshold(self.num_perm, self.lsh_threshold)

    @property
    def hashfunc(self):
        """The token hash as a callable ``bytes -> int`` that ``datasketch.MinHash`` accepts."""
        return xxhash.xxh32_intdigest

    @property
    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        return _permutations(self.scheme, self.num_perm, self.seed)

    # -- reference path (pure Python) ---------------------------------------------------------

    def normalize(self, text: str) -> str:
        return normalize(text)

    def shingles(self, text: str) -> list[bytes]:
        """The shingles of ``text`` as UTF-8 bytes, in document order (duplicates kept). ``text``
        is checked as :meth:`signature` checks it (a string of valid UTF-8)."""
        if not isinstance(text, str):
            as_string_array([text])  # the error signature() gives for it (bytes, None, a number)
            raise InvalidParameterError(f"text is {type(text).__name__}; every document needs a str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            as_string_array([text])  # names the unpaired surrogate, as signature() does
            raise
        words = normalize(text).split(" ")
        if words == [""]:
            return []
        n = self.ngram
        if len(words) < n:
            return [" ".join(words).encode("utf-8")]
        return [" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)]

    # -- fast path ----------------------------------------------------------------------------

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of one text, ``uint32[num_perm]``."""
        return self.signatures([text])[0]

    def signatures(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Signatures of many texts, ``uint32[n, num_perm]``; the fast path."""
        return self.fingerprint_batch(texts).signatures

    def fingerprint(self, text: str) -> Fingerprint:
        return Fingerprint(self.identity, self.num_perm, self.signature(text))

    def to_datasketch(self, signature: Fingerprint | np.ndarray | Sequence[int]) -> LeanMinHash:
        """A signature made under this config (a ``Fingerprint``, or ``num_perm`` values such as a
        row of the ``documents.signature`` column) as a ``datasketch.LeanMinHash`` with this
        config's seed and scheme. It equals datasketch's own ``MinHash`` of ``self.shingles(text)``
        and works with datasketch's tools (``jaccard``, ``MinHashLSH``, serialisation)."""
        from datasketch import LeanMinHash  # here, not at the top: datasketch imports scipy

        if isinstance(signature, Fingerprint):
            if signature.config_id != self.identity:
                raise FingerprintMismatchError(
                    f"signature made under {signature.config_id!r}, not under this config {self.identity!r}"
                )
            signature = signature.signature
        values = np.asarray(signature)
        if values.shape != (self.num_perm,) or values.dtype.kind not in "iu" or (
            values.size and (int(values.min()) < 0 or int(values.max()) > 0xFFFFFFFF)
        ):
            raise InvalidParameterError(
                f"a signature under {self.identity} is {self.num_perm} integers in [0, 2**32); "
                f"got shape {values.shape}, dtype {values.dtype}"
            )
        return LeanMinHash(seed=self.seed, hashvalues=values.astype(np.uint64), scheme=self.scheme)

    def warm_up(self) -> None:
        """Load every path of the CPU kernels (numba's start and its cached machine code: about
        0.6 s once per process, longer the first time, when it compiles; the Unicode tables from
        their cache file) on a text that takes each of them."""
        fingerprint_array(self, strings_to_arrow(["the kernels warm up: é ﬁ ½ 한 ΣΑΣ"]), None)

    def fingerprint_batch(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray, *,
                          device: Any = None) -> FingerprintBatch:
        """Everything the ledger stores per document, computed in one pass over ``texts``.

        ``device`` (a torch device, e.g. ``"cuda"``): the MinHash signatures are taken there by
        :func:`provenance.kernels.minhash_gpu.signatures` (the Triton kernel on a GPU) from the
        shingle hashes the CPU makes, instead of in the fused CPU pass; the results are the same,
        bit for bit."""
        arr = as_string_array(texts)
        if arr.null_count:
            first = arr.is_null().to_numpy(zero_copy_only=False).argmax()
            raise InvalidParameterError(f"text {first} is null; every document needs a text")
        return fingerprint_array(self, arr, device)


@dataclass(frozen=True)
class Fingerprint:
    """A signature together with the identity of the config that made it."""

    config_id: str
    num_perm: int
    signature: np.ndarray

    def jaccard(self, other: Fingerprint) -> float:
        """Estimated Jaccard similarity; raises when the configs differ."""
        if other.config_id != self.config_id:
            raise FingerprintMismatchError(
                f"cannot compare signatures made under different configs: {self.config_id!r} vs {other.config_id!r}"
            )
        return float(np.mean(self.signature == other.signature))

    def stderr(self, other: Fingerprint) -> float:
        j = self.jaccard(other)
        return math.sqrt(j * (1.0 - j) / self.num_perm)


def band_key_reference(values: Sequence[int], band: int) -> int:
    """Pure-Python band key (the specification of :func:`provenance.kernels.minhash.band_keys`)."""
    mask = (1 << 64) - 1
    key = band
    for v in values:
        z = key ^ int(v)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        key = z ^ (z >> 31)
    return key


__all__ = ["MAX_NGRAM", "MAX_NUM_PERM", "MAX_SEED", "MIN_RECALL", "Banding", "Fingerprint", "FingerprintBatch",
           "FingerprintConfig", "_char_tables", "_fold", "_fold_spans", "_permutations", "_string_buffers",
           "band_key_reference", "cache_dir", "fingerprint_read", "normalize", "strings_to_arrow"]
