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

import contextlib
import functools
import math
import numbers
import os
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from provenance import columns
from provenance.errors import FingerprintMismatchError, InvalidParameterError
from provenance.files import atomic_write_bytes
from provenance.kernels import minhash_codes as _codes

if TYPE_CHECKING:
    from datasketch import LeanMinHash

MIN_RECALL = 0.99
#: The bounds of FingerprintConfig's integer fields (the command line checks them as click ranges).
MAX_NGRAM, MAX_NUM_PERM, MAX_SEED = 64, 8192, 2**32 - 1
"""Probability with which a pair exactly at the banding threshold must become an LSH candidate."""


# ---------------------------------------------------------------------------------------------
# Normalisation


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
def _char_tables(full: bool) -> tuple[np.ndarray, np.ndarray]:
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
    folded = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).lower()
    return " ".join(folded.translate(_separator_translation()).split())


def _fold(text: str) -> bytes:
    """NFKC and lower-case, UTF-8 encoded: the part of normalisation that needs Python."""
    return unicodedata.normalize("NFKC", text).lower().encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Configuration


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
        for rows in range(num_perm, 0, -1):
            banding = cls(bands=num_perm // rows, rows=rows)
            if banding.probability(threshold) >= min_recall:
                return banding
        lowest = 1 - (1 - min_recall) ** (1 / num_perm)  # one row per band: P = 1 - (1 - t)^num_perm
        raise InvalidParameterError(
            f"threshold {threshold:g} is too low for num_perm={num_perm}: even {num_perm} band{'s' * (num_perm != 1)} of one row find{'s' * (num_perm == 1)} a "
            f"pair at that similarity with probability {cls(num_perm, 1).probability(threshold):.4f} < {min_recall}; "
            f"the lowest threshold it reaches is about {lowest:.3f} (or use more permutations)"
        )


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
            _as_string_array([text])  # the error signature() gives for it (bytes, None, a number)
            raise InvalidParameterError(f"text is {type(text).__name__}; every document needs a str")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _as_string_array([text])  # names the unpaired surrogate, as signature() does
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
        _fingerprint_array(self, strings_to_arrow(["the kernels warm up: é ﬁ ½ 한 ΣΑΣ"]), None)

    def fingerprint_batch(self, texts: Sequence[str] | pa.Array | pa.ChunkedArray, *,
                          device: Any = None) -> FingerprintBatch:
        """Everything the ledger stores per document, computed in one pass over ``texts``.

        ``device`` (a torch device, e.g. ``"cuda"``): the MinHash signatures are taken there by
        :func:`provenance.kernels.minhash_gpu.signatures` (the Triton kernel on a GPU) from the
        shingle hashes the CPU makes, instead of in the fused CPU pass; the results are the same,
        bit for bit."""
        arr = _as_string_array(texts)
        if arr.null_count:
            first = arr.is_null().to_numpy(zero_copy_only=False).argmax()
            raise InvalidParameterError(f"text {first} is null; every document needs a text")
        return _fingerprint_array(self, arr, device)


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
    return _fingerprint_array(cfg, texts, device)


def _as_string_array(texts: Sequence[str] | pa.Array | pa.ChunkedArray | Iterable[str]) -> pa.Array:
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


def _fingerprint_array(cfg: FingerprintConfig, arr: pa.Array, device: Any = None) -> FingerprintBatch:
    from provenance.kernels import minhash as _k  # numba: imported by what fingerprints, not by every command

    n = len(arr)
    data, offsets = _string_buffers(arr)
    full = bool(n) and int(data[offsets[0] : offsets[-1]].max(initial=0)) >= 128
    char_class, lower_cp = _char_tables(full)
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
