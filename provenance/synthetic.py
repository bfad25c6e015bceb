"""Generated corpora with planted near-duplicates, for the demo, the tests and the benchmarks.

Nothing is downloaded: words are drawn from a Zipf-like distribution over a generated vocabulary
(with some accented and non-Latin words, capitals and punctuation), and a chosen fraction of the
documents are near-copies of earlier ones with a fraction of their words replaced. The planted
pairs are returned so that tests can check that the ledger finds them.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from provenance.files import atomic_write_bytes

_SYLLABLES = [
    "ka", "lo", "mi", "ren", "sto", "vu", "te", "ar", "bel", "dor", "fi", "gan", "hu", "is", "jo", "ul",
    "mer", "no", "pas", "qui", "ro", "sa", "tin", "ve", "wo", "xe", "yu", "zan", "el", "om",
]
_NON_ASCII = [
    "straße", "café", "naïve", "Ærøskøbing", "Ζεύς", "ΣΟΦΙΑ", "данные", "модель", "日本語", "データ",
    "ﬁnance", "Ⅻ", "½", "İstanbul", "façade", "mañana", "Łódź", "über", "한국어", "emoji🙂",
]
_PUNCT = [",", ".", ";", ":", "!", "?", " —", "'s", ")"]


@dataclass
class Corpus:
    """Documents (``{"id", "text"}`` dicts) and the planted near-duplicate pairs ``(copy, original)``."""

    docs: list[dict]
    planted: list[tuple[str, str]] = field(default_factory=list)

    def write_jsonl(self, path: str | Path, *, compress: bool = False) -> Path:
        """Write the documents as JSON lines (gzipped when asked or when the name ends in .gz)."""
        path = Path(path)
        data = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in self.docs).encode("utf-8")
        if compress or path.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        return atomic_write_bytes(path, data)


def _vocabulary(rng: np.random.Generator, size: int, non_ascii: float) -> np.ndarray:
    words = set()
    while len(words) < size:
        k = int(rng.integers(1, 5))
        words.add("".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), k)))
    vocab = sorted(words)
    n_special = int(size * non_ascii)
    for i in range(n_special):
        vocab[int(rng.integers(0, size))] = _NON_ASCII[i % len(_NON_ASCII)] + ("" if i < len(_NON_ASCII) else str(i))
    return np.array(vocab, dtype=object)


class _Writer:
    def __init__(self, seed: int, vocab_size: int, non_ascii: float):
        self.rng = np.random.default_rng(seed)
        self.vocab = _vocabulary(self.rng, vocab_size, non_ascii)
        ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
        p = 1.0 / ranks**1.05
        self.cdf = np.cumsum(p / p.sum())

    def words(self, n: int) -> list[str]:
        ids = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.vocab) - 1)
        words = self.vocab[ids].tolist()
        # Sentence capitals and punctuation, so that normalisation has work to do.
        marks = self.rng.random(n)
        for i in np.flatnonzero(marks < 0.08).tolist():
            words[i] = words[i] + _PUNCT[i % len(_PUNCT)]
        for i in np.flatnonzero(marks > 0.96).tolist():
            words[i] = words[i].capitalize()
        return words

    def mutate(self, text: str, rate: float) -> str:
        words = text.split(" ")
        n = len(words)
        k = max(1, int(round(n * rate)))
        for i in self.rng.choice(n, size=min(k, n), replace=False).tolist():
            words[i] = self.vocab[int(self.rng.integers(0, len(self.vocab)))]
        return " ".join(words)


def generate_corpus(
    n_docs: int,
    *,
    mean_words: int = 200,
    dup_fraction: float = 0.05,
    mutation: float = 0.03,
    non_ascii: float = 0.02,
    vocab_size: int = 20_000,
    seed: int = 0,
    prefix: str = "doc",
) -> Corpus:
    """``n_docs`` documents; ``dup_fraction`` of them near-copies (``mutation`` of words replaced)."""
    w = _Writer(seed, vocab_size, non_ascii)
    docs: list[dict] = []
    planted: list[tuple[str, str]] = []
    lengths = np.maximum(1, w.rng.poisson(mean_words, n_docs))
    for i in range(n_docs):
        key = f"{prefix}-{i:07d}"
        if docs and w.rng.random() < dup_fraction:
            original = docs[int(w.rng.integers(0, len(docs)))]
            docs.append({"id": key, "text": w.mutate(original["text"], mutation)})
            planted.append((key, original["id"]))
        else:
            docs.append({"id": key, "text": " ".join(w.words(int(lengths[i])))})
    return Corpus(docs, planted)


def iter_jsonl_lines(target_bytes: int, *, mean_words: int = 300, seed: int = 0, dup_fraction: float = 0.02) -> Iterator[bytes]:
    """Encoded JSONL lines until about ``target_bytes`` are produced (for benchmarks)."""
    w = _Writer(seed, 50_000, 0.02)
    produced = 0
    i = 0
    recent: list[str] = []
    while produced < target_bytes:
        if recent and w.rng.random() < dup_fraction:
            text = w.mutate(recent[int(w.rng.integers(0, len(recent)))], 0.03)
        else:
            text = " ".join(w.words(max(1, int(w.rng.poisson(mean_words)))))
            if len(recent) < 1000:
                recent.append(text)
        line = (json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n").encode("utf-8")
        produced += len(line)
        i += 1
        yield line


def graded_pairs(
    levels: list[float], *, per_level: int = 20, words: int = 200, noise: int = 200, ngram: int = 5, seed: int = 0
) -> Corpus:
    """Near-duplicate pairs planted at known Jaccard levels, among ``noise`` unrelated documents.

    For each level ``J`` and each of ``per_level`` pairs, a copy keeps the first ``m`` words of an
    original of ``words`` words and replaces the rest with fresh ones, ``m`` chosen so that the
    ``ngram``-shingle sets have Jaccard ``x / (2(n − g + 1) − x)`` closest to ``J`` (``x`` shared
    shingles); chance repeats of a shingle move the exact value slightly, so tests measure it.
    """
    w = _Writer(seed, 20_000, 0.02)
    shingles = words - ngram + 1
    docs: list[dict] = []
    planted: list[tuple[str, str]] = []
    for li, level in enumerate(levels):
        shared = round(2 * level * shingles / (1 + level))
        keep = min(words, shared + ngram - 1) if shared > 0 else 0
        for i in range(per_level):
            original = w.words(words)
            copy = original[:keep] + w.words(words - keep)
            a, b = f"orig-{li}-{i:04d}", f"copy-{li}-{i:04d}"
            docs += [{"id": a, "text": " ".join(original)}, {"id": b, "text": " ".join(copy)}]
            planted.append((b, a))
    docs += [{"id": f"noise-{i:05d}", "text": " ".join(w.words(words))} for i in range(noise)]
    order = w.rng.permutation(len(docs))
    return Corpus([docs[i] for i in order.tolist()], planted)


def template_variants(n: int, *, others: int = 0, words: int = 60, seed: int = 7) -> list[dict]:
    """``n`` texts of one ``words``-word template with one word replaced each, by a word of their
    own (ids ``v0``, ``v1``, ...: one near-duplicate cluster whose band buckets hold nearly all of
    them, as boilerplate pages do), then ``others`` unrelated texts of as many words (``o0``, ...)."""
    rng = np.random.default_rng(seed)
    template = [f"t{j}" for j in range(words)]
    docs = []
    for i, at in enumerate(rng.integers(0, words, n).tolist()):
        text = list(template)
        text[at] = f"x{i}"
        docs.append({"id": f"v{i}", "text": " ".join(text)})
    return docs + [{"id": f"o{i}", "text": " ".join(f"o{i}w{j}" for j in range(words))} for i in range(others)]
