"""Text corpora for the benchmarks: generated JSON lines, or text files already on this machine.

``synthetic_corpus`` parses the lines of :func:`provenance.synthetic.iter_jsonl_lines`;
``real_corpus`` reads man pages and info manuals (decompressed), /usr/share/doc, the licences and
the Python standard library, one document per file, with large files split at blank lines. Nothing
is downloaded. ``sample_indices`` picks every k-th document; ``batches`` cuts a corpus the way the
sources cut it for ``fingerprint_batch``.
"""

from __future__ import annotations

import gzip
import os
import platform
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BATCH_BYTES = 8 << 20  # what provenance.sources hands to fingerprint_batch
MB = 1e6


@dataclass
class Corpus:
    name: str
    texts: list[str]
    description: str
    composition: dict = field(default_factory=dict)
    build_s: float = 0.0

    def __post_init__(self):
        self.sizes = np.fromiter((len(t.encode("utf-8")) for t in self.texts), dtype=np.int64, count=len(self.texts))

    @property
    def n_bytes(self) -> int:
        return int(self.sizes.sum())


def synthetic_corpus(size_mb: float, seed: int) -> Corpus:
    import orjson

    from provenance.synthetic import iter_jsonl_lines

    t0 = time.perf_counter()
    target = int(size_mb * MB)
    texts, n = [], 0
    for line in iter_jsonl_lines(2 * target + (1 << 20), seed=seed):  # lazy: stop on text bytes
        text = orjson.loads(line)["text"]
        texts.append(text)
        n += len(text.encode("utf-8"))
        if n >= target:
            break
    desc = f"provenance.synthetic.iter_jsonl_lines(seed={seed}), JSON lines parsed with orjson, one document per line"
    return Corpus("synthetic", texts, desc, build_s=time.perf_counter() - t0)


_SKIP_SUFFIXES = (".tar.gz", ".ps.gz", ".pdf.gz", ".eps.gz", ".svg.gz", ".png.gz", ".jpg.gz")
_DOC_SUFFIXES = ("", ".txt", ".md", ".rst", ".gz")
_SPLIT_OVER = 256 * 1024
_PIECE = 64 * 1024


def _real_candidates() -> list[tuple[str, Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []

    def add(source: str, paths):
        for p in paths:
            if p.is_file() and not p.name.endswith(_SKIP_SUFFIXES):
                found.append((source, p))

    add("common-licenses", Path("/usr/share/common-licenses").glob("*"))
    add("man", Path("/usr/share/man").rglob("*.gz"))
    add("info", Path("/usr/share/info").glob("*.gz"))
    add("doc", (p for p in Path("/usr/share/doc").rglob("*") if p.suffix in _DOC_SUFFIXES))
    add("dict", Path("/usr/share/dict").glob("*"))
    add(
        "python-stdlib",
        (p for p in stdlib.rglob("*") if p.suffix in (".py", ".rst", ".txt") and "site-packages" not in p.parts),
    )
    seen, unique = set(), []
    for source, p in sorted(found, key=lambda sp: str(sp[1])):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append((source, p))
    return unique


def _split(text: str) -> list[str]:
    """Documents of about ``_PIECE`` characters for texts over ``_SPLIT_OVER``: cut at blank lines,
    or at line ends inside a paragraph that is itself longer than ``_PIECE``."""
    if len(text) <= _SPLIT_OVER:
        return [text]
    units = []
    for para in text.split("\n\n"):
        units.extend(para.split("\n") if len(para) > _PIECE else [para])
    pieces, cur, size = [], [], 0
    for unit in units:
        cur.append(unit)
        size += len(unit) + 1
        if size >= _PIECE:
            pieces.append("\n".join(cur))
            cur, size = [], 0
    if cur:
        pieces.append("\n".join(cur))
    return [p for p in pieces if p.strip()]


def real_corpus(size_mb: float, seed: int) -> Corpus:
    """Local text files in a seeded random order until ``size_mb`` of UTF-8 text."""
    t0 = time.perf_counter()
    candidates = _real_candidates()
    order = np.random.default_rng(seed).permutation(len(candidates))
    target = int(size_mb * MB)
    texts: list[str] = []
    stats: dict[str, Counter] = {}
    skipped = Counter()
    n = 0
    for i in order.tolist():
        if n >= target:
            break
        source, path = candidates[i]
        try:
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8")
        except (OSError, EOFError, gzip.BadGzipFile):
            skipped["unreadable"] += 1
            continue
        except UnicodeDecodeError:
            skipped["not UTF-8"] += 1
            continue
        if "\0" in text or not text.strip():
            skipped["binary or empty"] += 1
            continue
        docs = _split(text)
        texts.extend(docs)
        nbytes = len(raw)
        n += nbytes
        s = stats.setdefault(source, Counter())
        s["files"] += 1
        s["docs"] += len(docs)
        s["bytes"] += nbytes
    composition = {
        src: {"files": c["files"], "docs": c["docs"], "MB": round(c["bytes"] / MB, 2)}
        for src, c in sorted(stats.items())
    }
    composition["skipped files"] = dict(skipped)
    composition["candidate files"] = len(candidates)
    desc = (
        f"local files (man pages and info manuals decompressed, /usr/share/doc text and .gz, "
        f"/usr/share/common-licenses, /usr/share/dict, Python {platform.python_version()} stdlib .py/.rst/.txt) "
        f"in a random order (seed {seed}) until {size_mb:g} MB; one document per file, files over "
        f"{_SPLIT_OVER // 1024} Ki characters split at blank lines (or line ends) into ~{_PIECE // 1024} Ki-character documents; "
        f"files that are not UTF-8 or hold NUL skipped"
    )
    return Corpus("real", texts, desc, composition, build_s=time.perf_counter() - t0)


def sample_indices(corpus: Corpus, sample_mb: float) -> np.ndarray:
    """Every k-th document, k chosen so that the sample holds about ``sample_mb``; cut at it."""
    k = max(1, int(round(corpus.n_bytes / (sample_mb * MB))))
    idx = np.arange(0, len(corpus.texts), k)
    cum = np.cumsum(corpus.sizes[idx])
    stop = int(np.searchsorted(cum, sample_mb * MB)) + 1
    return idx[:stop]


def batches(texts: list[str], sizes: np.ndarray, batch_bytes: int = BATCH_BYTES) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of about ``batch_bytes`` of text, as the sources cut them."""
    out, lo, size = [], 0, 0
    for i, s in enumerate(sizes.tolist()):
        size += s
        if size >= batch_bytes:
            out.append((lo, i + 1))
            lo, size = i + 1, 0
    if lo < len(texts):
        out.append((lo, len(texts)))
    return out
