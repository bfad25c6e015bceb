"""The fused CPU kernel equals its staged reference, stage by stage, on random input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance import FingerprintConfig
from provenance.fingerprints import _char_tables, _string_buffers, strings_to_arrow
from provenance.kernels import minhash as k

WORDS = st.sampled_from(["alpha", "Beta", "γάμμα", "ﬁne", "ΣΟΦΙΑ", "e\u0301", "가", "1,2", "—", "x", "'s", ".", " "])


def _staged(cfg: FingerprintConfig, texts: list[str]):
    """Normalise, hash shingles, permute and band with the separate kernels, on one thread as the
    fused kernel runs a batch this small (``fingerprints.batches.SERIAL_BELOW``): waking numba's
    threads six times per example made this test take half a minute."""
    from provenance.kernels.jit_cache import threads_for

    with threads_for(0, serial_below=1):
        return _stages(cfg, texts)


def _stages(cfg: FingerprintConfig, texts: list[str]):
    arr = strings_to_arrow(texts)
    data, offsets = _string_buffers(arr)
    cls, lower = _char_tables(True)
    span_offsets, span_starts, span_ends = k.complex_spans(data, offsets, cls)
    from provenance.fingerprints import _fold

    pieces = [_fold(bytes(data[a:b]).decode()) for a, b in zip(span_starts.tolist(), span_ends.tolist())]
    span_side = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in pieces], out=span_side[1:])
    side = np.frombuffer(b"".join(pieces), np.uint8) if span_side[-1] else np.zeros(1, np.uint8)
    capacity = np.diff(offsets) + 64 * np.diff(span_offsets) + 4 * np.diff(offsets)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(capacity, out=starts[1:])
    out = np.zeros(max(int(starts[-1]), 1), np.uint8)
    lengths, n_words = k.normalize_rows(data, offsets, span_offsets, span_starts, span_ends, side, span_side, cls, lower,
                                        out, starts)
    hash_offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(k.shingle_count(n_words, cfg.ngram), out=hash_offsets[1:])
    hashes = k.shingle_hashes(out, starts[:-1], lengths, n_words, cfg.ngram, hash_offsets)
    a, b = cfg.permutations
    scheme = k.SCHEME_AFFINE32 if cfg.scheme == "affine32" else k.SCHEME_LEGACY
    sigs = k.minhash_signatures(hashes, hash_offsets, a, b, scheme)
    keys = k.band_keys(sigs, cfg.banding.bands, cfg.banding.rows)
    texts_out = [bytes(out[s : s + n]) for s, n in zip(starts[:-1].tolist(), lengths.tolist())]
    return texts_out, n_words, sigs, keys


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(WORDS, max_size=40).map(" ".join), min_size=1, max_size=30))
def test_fused_kernel_equals_stages(scheme, docs):
    cfg = FingerprintConfig(scheme=scheme, num_perm=32, ngram=3)
    fused = cfg.fingerprint_batch(docs)
    texts_out, n_words, sigs, keys = _staged(cfg, docs)
    from provenance.fingerprints import normalize

    assert texts_out == [normalize(d).encode() for d in docs]
    assert np.array_equal(fused.token_count, n_words)
    assert np.array_equal(fused.signatures, sigs)
    assert np.array_equal(fused.band_keys, keys)


SPAN_WORDS = st.sampled_from(["ΣΑΣ", "ΟΔΟΣ.", "\u0301x", "ǅ", "\u1100\u1161", "ﬁ", "½", "ẞ", "İ", "e\u0301\u0323", "Å",
                              "word", " ", "\t", "ΑΣ\u0301"])


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(st.lists(SPAN_WORDS | WORDS, max_size=30).map("".join), min_size=1, max_size=20))
def test_spans_folded_in_one_call_equal_one_by_one(docs):
    """The complex spans folded in one NUL-joined call (``_fold_spans``) equal each span folded on
    its own: final sigma, combining marks at a span's start, Hangul jamo, compatibility forms."""
    from provenance.fingerprints import _fold, _fold_spans

    data, offsets = _string_buffers(strings_to_arrow(docs))
    _, starts, ends = k.complex_spans(data, offsets, _char_tables(True)[0])
    side, span_side = _fold_spans(data, starts, ends)
    pieces = [_fold(bytes(data[a:b]).decode()) for a, b in zip(starts.tolist(), ends.tolist())]
    assert np.diff(span_side).tolist() == [len(p) for p in pieces]
    assert bytes(side[: span_side[-1]]) == b"".join(pieces) and side.size >= 1


def test_spans_folded_one_by_one_where_a_nul_would_mislead(monkeypatch):
    """A span holding a NUL, or a fold that makes one, takes the span-by-span way: same result."""
    from provenance.fingerprints import batches as f  # _fold_spans reads _fold there

    data = np.frombuffer("é\x00é ﬁ ΣΑΣ".encode(), np.uint8).copy()
    for spans, fold in ((([0, 6, 10], [5, 9, 16]), f._fold),  # the first span holds the NUL
                        (([6, 10], [9, 16]), lambda t: t.replace("ﬁ", "\x00").encode())):  # a fold makes one
        monkeypatch.setattr(f, "_fold", fold)
        starts, ends = (np.array(v, np.int64) for v in spans)
        want = [fold(bytes(data[a:b]).decode()) for a, b in zip(starts.tolist(), ends.tolist())]
        side, span_side = f._fold_spans(data, starts, ends)
        assert [bytes(side[a:b]) for a, b in zip(span_side[:-1], span_side[1:])] == want
    assert want == [b"\x00", "ΣΑΣ".encode()]


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("ngram", [1, 2, 5])
def test_shingle_hashes_equal_xxhash_at_every_length(ngram, padded):
    """Each shingle's hash equals xxhash's xxh32 for shingles of 1 to 180 bytes (every stripe and
    tail count): read ahead into the padding, or, on a buffer without it, by the plain hash
    wherever a shingle ends too near the buffer's end."""
    import xxhash

    rng = np.random.default_rng(ngram)
    words = ["".join(chr(97 + c) for c in rng.integers(0, 26, size=int(n))) for n in rng.integers(1, 37, size=400)]
    words += ["q" * n for n in range(1, 181)]  # one word of each length, so ngram = 1 meets every length
    row = " ".join(words).encode()
    buf = np.frombuffer(row + (b"\xff" * k.READ_AHEAD if padded else b""), np.uint8)
    n_words = np.array([len(words)], np.int64)
    hash_offsets = np.zeros(2, np.int64)
    np.cumsum(k.shingle_count(n_words, ngram), out=hash_offsets[1:])
    got = k.shingle_hashes(buf, np.zeros(1, np.int64), np.array([len(row)], np.int64), n_words, ngram, hash_offsets)
    want = [xxhash.xxh32_intdigest(" ".join(words[i : i + ngram]).encode()) for i in range(len(words) - ngram + 1)]
    assert got.tolist() == want
    lengths = {len(" ".join(words[i : i + ngram])) for i in range(len(words) - ngram + 1)}
    assert min(lengths) < 32 and max(lengths) >= 48  # one stripe, two, and more (ngram 1: every length)
    if ngram == 1:
        assert lengths == set(range(1, 181))


@pytest.mark.parametrize(("tail", "sigma"), [("ΣΑΣ end", True), ("x.ΟΔΟΣ. end", True), ("ab,ΑΣ\u0301 c", True),
                                           ("ﬁne", False), ("e\u0301 b", False), ("x.½", False)])
def test_spans_after_leading_ascii_of_every_length(tail, sigma):
    """The span scan skips each run of ASCII in blocks of 64 bytes and keeps only where its last
    break and last space are: after prefixes of 0 to 140 bytes ending in a word, a space,
    punctuation or punctuation and spaces, the first span starts where the word (or, with capital
    sigma, the whitespace run) does, and the text is normalised as Python does."""
    from provenance.fingerprints import normalize

    ends = ["", " ", ",", ". ", " ,", "a"]
    docs = [("ab cd, " * 30)[:n] + end + tail for n in range(141) for end in ends]
    texts_out, _, _, _ = _staged(FingerprintConfig(num_perm=8), docs)
    assert texts_out == [normalize(d).encode() for d in docs]
    data, offsets = _string_buffers(strings_to_arrow(docs))
    span_offsets, starts, _ = k.complex_spans(data, offsets, _char_tables(True)[0])
    got = [int(starts[span_offsets[i]] - offsets[i]) for i in range(len(docs))]
    breaks = " " if sigma else " ,."  # a span starts after the last of these before its first non-ASCII
    firsts = [next(j for j, ch in enumerate(d) if ord(ch) >= 128) for d in docs]
    want = [max((j + 1 for j in range(f) if d[j] in breaks), default=0) for d, f in zip(docs, firsts)]
    assert got == want
