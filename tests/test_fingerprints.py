"""Fingerprints: the numba fast path against the pure-Python reference and ``datasketch.MinHash``.

The contract (``provenance/fingerprints/``): for every text, ``cfg.signature(text)`` and the
matching row of ``cfg.signatures(...)`` equal a ``datasketch.MinHash`` with the config's
parameters updated with ``cfg.shingles(text)``; the exact hash and token count are those of the
reference :func:`provenance.fingerprints.normalize`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pydantic
import pytest
import xxhash
from datasketch import MinHash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provenance.errors import FingerprintMismatchError, InvalidParameterError
from provenance.fingerprints import Banding, Fingerprint, FingerprintConfig, band_key_reference, normalize
from provenance.kernels import minhash as kernels
from provenance.synthetic import generate_corpus

CONFIGS = [
    FingerprintConfig(),
    FingerprintConfig(scheme="legacy"),
    FingerprintConfig(num_perm=64, seed=7, ngram=3),
    FingerprintConfig(scheme="legacy", num_perm=32, seed=12345, ngram=1),
    FingerprintConfig(num_perm=257, seed=0, ngram=2),
    FingerprintConfig(scheme="legacy", num_perm=3, seed=2**32 - 1, ngram=9),
]
EMPTY = np.uint32(0xFFFFFFFF)

# deadline=None: the first non-ASCII text loads (or, with no cache file yet, builds) the full character tables.
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_signature(cfg: FingerprintConfig, text: str) -> np.ndarray:
    """What datasketch computes for ``text`` under ``cfg``."""
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=cfg.hashfunc)
    shingles = cfg.shingles(text)
    for i in range(0, len(shingles), 20_000):  # bounded memory for long documents; same minimum
        m.update_batch(shingles[i : i + 20_000])
    return m.hashvalues.astype(np.uint32)


def reference_exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize(text).encode("utf-8"))


def reference_token_count(text: str) -> int:
    return len(normalize(text).split())


# -- text strategies ---------------------------------------------------------------------------

_WORDS = st.sampled_from(
    ["the", "Cat", "SAT", "on", "mat", "don't", "e-mail", "straße", "ΣΟΦΙΑ", "ὈΔΥΣΣΕΎΣ", "İstanbul",
     "한국어", "ﬁnance", "Ｆｕｌｌ", "$5+3", "emoji🙂", "½", "Ⅻ", "x²"]
)
_SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", ", ", ". ", "!", "?", " — ", "\u3000", "\u00a0", "\u2028", "…"])
_SPECIAL = st.sampled_from(
    ["Σ", "σ", "ς", "\ufb01", "\ufb02", "\ufb03", "\u0130", "\u0131", "ß", "ẞ", "\u2126", "\u212b", "ǅ", "Å",
     "\u0345", "\u1e9e", "\u00ad", "\u200b", "\ufeff", "\u0000", "٣", "🙂", "\U0001d400", "\U000e0041"]
)
_PIECES = st.one_of(
    _WORDS,
    _SEPARATORS,
    _SPECIAL,
    st.characters(max_codepoint=0x7F),
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),  # combining diacritics
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # Hangul jamo
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul syllables
    st.characters(min_codepoint=0x0391, max_codepoint=0x03C9),  # Greek, capital sigma included
    st.characters(min_codepoint=0xFF01, max_codepoint=0xFF5E),  # fullwidth forms
    st.characters(min_codepoint=0xFB00, max_codepoint=0xFB4F),  # ligatures, presentation forms
)
MIXED_TEXT = st.lists(_PIECES, max_size=60).map("".join)
TEXTS = st.one_of(st.text(), MIXED_TEXT)  # st.text(): all of Unicode except surrogates


def reference_rows(cfg: FingerprintConfig, texts: list[str]) -> list[tuple[np.ndarray, int, int]]:
    """Each text's signature, exact hash and word count by the reference implementations."""
    return [(reference_signature(cfg, t), reference_exact_hash(t), reference_token_count(t)) for t in texts]


def assert_rows_match_reference(cfg: FingerprintConfig, texts: list[str], batch,
                                expected: list[tuple[np.ndarray, int, int]] | None = None) -> None:
    """``batch`` holds the reference's rows of ``texts`` (``expected``: those rows, computed once
    for several batches of the same texts; datasketch's pure-Python signatures are the slow part)."""
    assert batch.signatures.dtype == np.uint32
    assert batch.signatures.shape == (len(texts), cfg.num_perm)
    for i, (text, (signature, exact, words)) in enumerate(zip(texts, expected or reference_rows(cfg, texts))):
        np.testing.assert_array_equal(batch.signatures[i], signature, err_msg=repr(text))
        assert int(batch.exact_hash[i]) == exact, repr(text)
        assert int(batch.token_count[i]) == words, repr(text)


# -- the contract over arbitrary text ------------------------------------------------------------


@PROPERTY
@given(cfg=st.sampled_from(CONFIGS), text=TEXTS)
def test_signature_equals_datasketch(cfg, text):
    sig = cfg.signature(text)
    assert sig.dtype == np.uint32
    np.testing.assert_array_equal(sig, reference_signature(cfg, text))


@PROPERTY
@given(cfg=st.sampled_from(CONFIGS), texts=st.lists(TEXTS, max_size=6))
def test_batch_rows_equal_datasketch_from_lists_and_arrow(cfg, texts):
    expected = reference_rows(cfg, texts)
    assert_rows_match_reference(cfg, texts, cfg.fingerprint_batch(texts), expected)
    np.testing.assert_array_equal(
        cfg.signatures(texts), cfg.fingerprint_batch(texts).signatures
    )
    for arrow_type in (pa.string(), pa.large_string()):
        arr = pa.array(texts, type=arrow_type)
        assert_rows_match_reference(cfg, texts, cfg.fingerprint_batch(arr), expected)
        padded = pa.array(["Padding ΣΤΟ start, ﬁ.", *texts, "and at the end"], type=arrow_type)
        sliced = padded.slice(1, len(texts))
        assert sliced.offset == 1
        assert_rows_match_reference(cfg, texts, cfg.fingerprint_batch(sliced), expected)
    chunked = pa.chunked_array([texts[:2], texts[2:]], type=pa.large_string())
    assert_rows_match_reference(cfg, texts, cfg.fingerprint_batch(chunked), expected)


@PROPERTY
@given(text=TEXTS)
def test_fast_normalisation_equals_reference(text):
    batch = FingerprintConfig(num_perm=16).fingerprint_batch([text, text.upper(), f"x {text} y"])
    for i, variant in enumerate([text, text.upper(), f"x {text} y"]):
        assert int(batch.exact_hash[i]) == reference_exact_hash(variant)
        assert int(batch.token_count[i]) == reference_token_count(variant)


# Capital sigma lower-cases by context (final form) across punctuation and case-ignorable
# characters, next to combining marks, jamo and compatibility characters that fold by word.
_SIGMA_CONTEXT = st.lists(
    st.sampled_from(
        list("ΑΒΣσςαx.' ·:-_,!\t") + ["\u00ad", "\u0345", "\u200b", "\u2019", "\u0301", "\u00a0", "\u1fbc",
        "\u03a3\u0301", "İ", "ﬁ", "Ａ", "\u1100", "\u1161", "가", "\u11a8", "\u0387", "\u037e", "\u2126"]
    ),
    max_size=24,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_SIGMA_CONTEXT)
def test_sigma_contexts_normalise_like_the_reference(text):
    batch = FingerprintConfig(num_perm=8, ngram=2).fingerprint_batch([text])
    assert int(batch.exact_hash[0]) == reference_exact_hash(text)
    assert int(batch.token_count[0]) == reference_token_count(text)


# -- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.identity)
@pytest.mark.parametrize(
    "text",
    ["", "word", "   \t\n\u3000 ", "...!? — ;", "two words", "Ｆｕｌｌ ﬁt", "İ", "ΟΔΥΣΣΕΥΣ"],
    ids=["empty", "one-word", "whitespace", "punctuation", "two-words", "compat", "dotted-I", "sigma"],
)
def test_edge_cases_equal_datasketch(cfg, text):
    batch = cfg.fingerprint_batch([text])
    assert_rows_match_reference(cfg, [text], batch)
    np.testing.assert_array_equal(cfg.signature(text), batch.signatures[0])


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.identity)
@pytest.mark.parametrize("text", ["", "   \t\n ", "...!?"])
def test_text_without_words_has_the_empty_signature(cfg, text):
    batch = cfg.fingerprint_batch([text])
    assert cfg.shingles(text) == []
    assert batch.token_count.tolist() == [0]
    assert int(batch.exact_hash[0]) == xxhash.xxh3_64_intdigest(b"")
    assert (batch.signatures[0] == EMPTY).all()


def test_text_shorter_than_the_ngram_is_one_shingle():
    cfg = FingerprintConfig(ngram=5)
    assert cfg.shingles("Hello, World!  foo") == [b"hello world foo"]
    assert FingerprintConfig(ngram=2).shingles("Hello, World! foo") == [b"hello world", b"world foo"]
    np.testing.assert_array_equal(cfg.signature("Hello, World!  foo"), cfg.signature("hello world foo"))
    assert not np.array_equal(cfg.signature("hello world foo"), cfg.signature("hello world"))


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Straße, ΣΟΦΙΑ!", "straße σοφια"),
        ("ΟΔΥΣΣΕΥΣ", "οδυσσευς"),  # final sigma
        ("ﬁnance", "finance"),
        ("İstanbul", "i\u0307stanbul"),
        ("Ｆｕｌｌ－ｗｉｄｔｈ", "full width"),
        ("don't e-mail $5+3 🙂ok", "don t e mail $5+3 🙂ok"),
        ("a\u0301", "\u00e1"),
        ("\u1100\u1161\u11a8", "\uac01"),
        ("½ Ⅻ", "1\u20442 xii"),
    ],
)
def test_normalize_values(text, normalised):
    assert normalize(text) == normalised
    batch = FingerprintConfig().fingerprint_batch([text])
    assert int(batch.exact_hash[0]) == xxhash.xxh3_64_intdigest(normalised.encode())
    assert int(batch.token_count[0]) == len(normalised.split(" "))


def test_a_batch_over_the_serial_rule_runs_on_every_thread_and_equals_datasketch(monkeypatch):
    """Small batches run on one thread (``SERIAL_BELOW``); one above it takes numba's threads, and
    gives the same rows as one thread and as datasketch."""
    import numba

    from provenance.fingerprints import batches

    rng = np.random.default_rng(4)
    vocab = np.array(["the", "Cat", "straße", "ΣΟΦΙΑ", "ﬁnance", "한국어", "x²", "don't", "½", "Ⅻ", "e\u0301"])
    texts = [" ".join(vocab[rng.integers(0, vocab.size, 12)].tolist()) for _ in range(2_000)]
    assert sum(len(t.encode()) for t in texts) > batches.SERIAL_BELOW
    threads = []
    real = batches._fingerprint_buffers
    monkeypatch.setattr(batches, "_fingerprint_buffers", lambda *a: threads.append(numba.get_num_threads()) or real(*a))
    cfg = FingerprintConfig()
    threaded = cfg.fingerprint_batch(texts)
    monkeypatch.setattr(batches, "SERIAL_BELOW", 1 << 40)
    serial = cfg.fingerprint_batch(texts)
    assert threads == [numba.get_num_threads(), 1]  # 2 on the 2-core CI machine
    for column in ("signatures", "band_keys", "exact_hash", "token_count"):
        np.testing.assert_array_equal(getattr(threaded, column), getattr(serial, column))
    assert_rows_match_reference(cfg, texts[::40], cfg.fingerprint_batch(texts[::40]))
    for i in range(0, len(texts), 40):
        np.testing.assert_array_equal(threaded.signatures[i], reference_signature(cfg, texts[i]))


def test_normalize_refuses_what_is_not_a_str():
    # bytes used to fail inside str.translate with "a bytes-like object is required, not 'dict'"
    with pytest.raises(InvalidParameterError, match=r"normalize takes a str, got bytes \(decode it first"):
        normalize(b"Hello world")
    with pytest.raises(InvalidParameterError, match="normalize takes a str, got NoneType$"):
        normalize(None)


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("alphabet", ["ascii", "mixed"])
def test_long_document_equals_datasketch(scheme, alphabet):
    """200k words: ASCII runs through the numba normaliser, mixed text through unicodedata."""
    rng = np.random.default_rng(11)
    words = ["alpha", "Beta,", "gamma.", "don't", "x1", "y-2"]
    if alphabet == "mixed":
        words += ["straße", "ΣΟΦΙΑ", "δ", "ﬁ", "naïve"]
    vocab = np.char.add(np.array(words * 60), np.arange(len(words) * 60).astype(str))
    text = " ".join(vocab[rng.integers(0, vocab.size, 200_000)].tolist())
    assert text.isascii() == (alphabet == "ascii")
    cfg = FingerprintConfig(scheme=scheme)
    batch = cfg.fingerprint_batch(["short one", text, ""])
    assert batch.token_count.tolist() == [2, reference_token_count(text), 0]
    assert batch.token_count[1] >= 200_000
    np.testing.assert_array_equal(batch.signatures[1], reference_signature(cfg, text))
    assert int(batch.exact_hash[1]) == reference_exact_hash(text)


def test_every_code_point_normalises_like_the_reference():
    """Each code point 1..0x10FFFF (no surrogates) alone and between two letters."""
    cfg = FingerprintConfig(num_perm=4)
    code_points = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    h3 = xxhash.xxh3_64_intdigest
    for wrap in ("{}", "a{}b"):
        texts = [wrap.format(chr(cp)) for cp in code_points]
        batch = cfg.fingerprint_batch(texts)
        normalised = [normalize(t) for t in texts]
        expected_hash = np.fromiter((h3(n.encode()) for n in normalised), dtype=np.uint64, count=len(texts))
        expected_count = np.fromiter((len(n.split()) for n in normalised), dtype=np.int64, count=len(texts))
        bad = np.flatnonzero((batch.exact_hash != expected_hash) | (batch.token_count != expected_count))
        assert bad.size == 0, f"{wrap}: differs at {[hex(code_points[i]) for i in bad[:20]]}"


# -- LSH bands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("bands", "rows"), [(1, 1), (21, 6), (16, 8), (3, 5), (7, 1)])
def test_band_keys_equal_reference(bands, rows):
    rng = np.random.default_rng(bands * 100 + rows)
    sigs = rng.integers(0, 2**32, size=(9, bands * rows + 2), dtype=np.uint64).astype(np.uint32)
    sigs[0] = 0xFFFFFFFF
    sigs[1] = 0
    keys = kernels.band_keys(sigs, bands, rows)
    assert keys.dtype == np.uint64
    assert keys.shape == (9, bands)
    for i in range(9):
        for band in range(bands):
            values = sigs[i, band * rows : (band + 1) * rows].tolist()
            assert int(keys[i, band]) == band_key_reference(values, band)


def test_fingerprint_batch_band_keys_follow_the_config_banding(corpus):
    cfg = FingerprintConfig(num_perm=64, lsh_threshold=0.7)
    banding = Banding.for_threshold(64, 0.7)
    texts = [d["text"] for d in corpus.docs[:10]]
    batch = cfg.fingerprint_batch(texts)
    assert batch.band_keys.shape == (10, banding.bands)
    for i in range(10):
        expected = [
            band_key_reference(batch.signatures[i, b * banding.rows : (b + 1) * banding.rows].tolist(), b)
            for b in range(banding.bands)
        ]
        assert batch.band_keys[i].tolist() == expected


def _best_banding(num_perm: int, threshold: float, min_recall: float = 0.99) -> tuple[int, int]:
    """Independent search: among all (b, r) with b * r <= num_perm reaching ``min_recall`` at the
    threshold, the largest r (and for it the most bands)."""
    ok = [
        (b, r)
        for r in range(1, num_perm + 1)
        for b in range(1, num_perm // r + 1)
        if 1.0 - (1.0 - threshold**r) ** b >= min_recall
    ]
    return max(ok, key=lambda br: (br[1], br[0]))


def test_banding_for_128_perms_at_08_is_21_bands_of_6_rows():
    banding = Banding.for_threshold(128, 0.8)
    assert (banding.bands, banding.rows) == (21, 6) == _best_banding(128, 0.8)
    assert banding.tag == "b21r6"
    assert banding.probability(0.8) == pytest.approx(1 - (1 - 0.8**6) ** 21)
    assert banding.probability(0.8) >= 0.99
    assert Banding(128 // 7, 7).probability(0.8) < 0.99  # one more row per band misses the target
    assert FingerprintConfig().banding == banding


@pytest.mark.parametrize("num_perm", [8, 64, 128, 256])
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9, 0.95])
def test_banding_picks_the_most_rows_that_reach_the_recall(num_perm, threshold):
    banding = Banding.for_threshold(num_perm, threshold)
    assert banding.probability(threshold) >= 0.99
    assert banding.bands * banding.rows <= num_perm
    assert (banding.bands, banding.rows) == _best_banding(num_perm, threshold)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_banding_threshold_out_of_range(threshold):
    with pytest.raises(InvalidParameterError, match="threshold must be in"):
        Banding.for_threshold(128, threshold)


def test_banding_impossible_with_too_few_perms():
    with pytest.raises(InvalidParameterError, match=r"threshold 0.8 is too low for num_perm=2: .* the lowest "
                                                    r"threshold it reaches is about 0.900 \(or use more permutations\)"):
        Banding.for_threshold(2, 0.8)
    with pytest.raises(InvalidParameterError, match="threshold 1e-09 is too low for num_perm=128: .* about 0.035"):
        Banding.for_threshold(128, 1e-9)
    for num_perm in (0, -5, 8193, 1.5):  # 0 was a ZeroDivisionError; -5 'even -5 bands ... probability -3124.0000'
        with pytest.raises(InvalidParameterError, match=rf"num_perm must be a whole number from 1 to 8192, got {num_perm}"):
            Banding.for_threshold(num_perm, 0.8)
    for recall in (0.0, 1.0, float("nan")):  # 1.0 is reached by no banding, NaN by every one
        with pytest.raises(InvalidParameterError, match=r"min_recall must be in \(0, 1\)"):
            Banding.for_threshold(128, 0.8, min_recall=recall)


# -- comparing fingerprints ----------------------------------------------------------------------


def test_jaccard_across_configs_raises():
    a = FingerprintConfig().fingerprint("the same words in the same order here")
    b = FingerprintConfig(seed=2).fingerprint("the same words in the same order here")
    with pytest.raises(FingerprintMismatchError) as info:
        a.jaccard(b)
    assert a.config_id in str(info.value) and b.config_id in str(info.value)
    with pytest.raises(FingerprintMismatchError):
        a.stderr(b)


def test_jaccard_of_identical_and_empty_documents():
    cfg = FingerprintConfig()
    a = cfg.fingerprint("one two three four five six seven")
    assert a.jaccard(cfg.fingerprint("One, two; three four five six seven!")) == 1.0
    assert a.stderr(a) == 0.0
    assert a.jaccard(cfg.fingerprint("")) == 0.0


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    mutation=st.floats(0.02, 0.4),
    mean_words=st.integers(40, 300),
    cfg=st.sampled_from([FingerprintConfig(num_perm=256), FingerprintConfig(num_perm=256, scheme="legacy", ngram=3)]),
)
def test_jaccard_estimate_within_four_standard_errors(seed, mutation, mean_words, cfg):
    corpus = generate_corpus(2, mean_words=mean_words, dup_fraction=1.0, mutation=mutation, vocab_size=2_000, seed=seed)
    assert corpus.planted == [("doc-0000001", "doc-0000000")]
    original, copy = (d["text"] for d in corpus.docs)
    a, b = set(cfg.shingles(original)), set(cfg.shingles(copy))
    true = len(a & b) / len(a | b)
    estimate = cfg.fingerprint(original).jaccard(cfg.fingerprint(copy))
    stderr = math.sqrt(true * (1 - true) / cfg.num_perm)
    assert abs(estimate - true) <= 4 * stderr + 1e-12, (true, estimate, stderr)


def test_fingerprint_carries_identity_and_signature():
    cfg = FingerprintConfig(num_perm=32)
    fp = cfg.fingerprint("some text here")
    assert isinstance(fp, Fingerprint)
    assert fp.config_id == cfg.identity
    assert fp.num_perm == 32
    np.testing.assert_array_equal(fp.signature, reference_signature(cfg, "some text here"))


# -- identity and errors -------------------------------------------------------------------------


def test_identity_of_default_config_is_stable():
    assert FingerprintConfig().identity == "minhash-v1:word5:nfkc-lower-punct:xxh32:affine32:k128:s1"
    assert (
        FingerprintConfig(scheme="legacy", num_perm=64, seed=9, ngram=3).identity
        == "minhash-v1:word3:nfkc-lower-punct:xxh32:legacy:k64:s9"
    )
    # The banding threshold does not shape signatures, so it is not part of the identity.
    assert FingerprintConfig(lsh_threshold=0.5).identity == FingerprintConfig().identity


def test_signatures_of_one_string_is_refused():
    with pytest.raises(InvalidParameterError, match="not one string"):
        FingerprintConfig().signatures("a single text")


def test_none_inside_the_list_is_refused():
    with pytest.raises(InvalidParameterError, match="text 1 is null"):
        FingerprintConfig().signatures(["fine", None, "also fine"])


def test_non_string_items_and_arrays_are_refused():
    with pytest.raises(InvalidParameterError, match="text 1 .*int"):
        FingerprintConfig().signatures(["fine", 3])
    with pytest.raises(InvalidParameterError, match="Arrow string array"):
        FingerprintConfig().signatures(pa.array([1, 2]))


def test_unpaired_surrogate_is_refused():
    with pytest.raises(InvalidParameterError):
        FingerprintConfig().signatures(["ok", "bad \ud800 text"])


_INVALID_UTF8_CHILD = """
import pyarrow as pa
from provenance.errors import InvalidParameterError
from provenance.fingerprints import FingerprintConfig

raw = pa.array([b"bad \\xff text", b"ends badly \\xff"], type=pa.binary())
invalid = pa.Array.from_buffers(pa.string(), 2, raw.buffers())
try:
    FingerprintConfig().signatures(invalid)
except InvalidParameterError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


def test_invalid_utf8_arrow_array_is_refused():
    # In a child process, because today the unchecked bytes can crash the interpreter.
    child = subprocess.run([sys.executable, "-c", _INVALID_UTF8_CHILD], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("refused:"), child.stdout


_SIGMA_SPANS_CHILD = """
import xxhash
from provenance.fingerprints import FingerprintConfig, normalize

# Two complex words, then capital sigma, with punctuation but no whitespace between them.
texts = ["\\u0301,\\u0301-\\u03a3"] * 4000
batch = FingerprintConfig(num_perm=8).fingerprint_batch(texts)
expected = xxhash.xxh3_64_intdigest(normalize(texts[0]).encode())
print("wrong rows:", [i for i, h in enumerate(batch.exact_hash.tolist()) if h != expected])
"""


def test_complex_words_before_capital_sigma_in_a_parallel_batch():
    # In a child process with several numba threads, because today the overflow can crash it.
    env = {**os.environ, "NUMBA_NUM_THREADS": "4"}
    child = subprocess.run(
        [sys.executable, "-c", _SIGMA_SPANS_CHILD], capture_output=True, text=True, timeout=300, env=env
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "wrong rows: []"


def test_empty_batch():
    batch = FingerprintConfig(num_perm=16).fingerprint_batch([])
    assert len(batch) == 0
    assert batch.signatures.shape == (0, 16)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_perm": 0}, {"num_perm": 8193}, {"ngram": 0}, {"seed": -1}, {"seed": 2**32}, {"scheme": "affine64"},
     {"lsh_threshold": 1.0}, {"unknown": 1}],
)
def test_invalid_config_is_a_validation_error(kwargs):
    with pytest.raises(pydantic.ValidationError):
        FingerprintConfig(**kwargs)


def test_config_is_frozen():
    cfg = FingerprintConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.num_perm = 64


def test_config_without_a_banding_is_refused_when_made():
    with pytest.raises(pydantic.ValidationError, match="threshold 0.8 is too low for num_perm=2"):
        FingerprintConfig(num_perm=2)
    with pytest.raises(pydantic.ValidationError, match="threshold 0.1 is too low for num_perm=16"):
        FingerprintConfig(num_perm=16, lsh_threshold=0.1)
    assert FingerprintConfig(num_perm=16, lsh_threshold=0.5).banding.probability(0.5) >= 0.99


def test_shingles_refuse_what_signature_refuses():
    """The plain-Python reference raised UnicodeEncodeError, TypeError or AttributeError where
    signature() names the problem."""
    cfg = FingerprintConfig()
    for bad, message in (("a\ud800b", "unpaired surrogate at character 1"), (b"bytes", "is bytes"),
                         (None, "is null"), ({"a": 1}, "is dict")):
        for call in (cfg.shingles, cfg.signature):
            with pytest.raises(InvalidParameterError, match=message):
                call(bad)
    assert cfg.shingles("one two three four five six") == [b"one two three four five", b"two three four five six"]
