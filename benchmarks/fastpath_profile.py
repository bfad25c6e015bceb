"""Where the fast path's time goes: one instrumented pass of ``cfg.fingerprint_batch``.

Rather than copy ``provenance.fingerprints.batches.fingerprint_array`` (which would drift from it), the
profile times the library itself: every kernel it calls as ``_k.<name>(...)`` and its Python
helpers are wrapped with timers for one pass and restored afterwards. What is left is numpy glue;
the time from the last kernel's return to the end of the call is the exact-hash (xxh3) loop.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from text_corpora import Corpus


def n_shingles(token_count: np.ndarray, ngram: int) -> int:
    tc = np.asarray(token_count, dtype=np.int64)
    return int(np.where(tc == 0, 0, np.where(tc < ngram, 1, tc - ngram + 1)).sum())


_HELPERS = {  # (the module that reads it, its name): each is wrapped where it is read
    ("provenance.fingerprints", "as_string_array"): "arrow conversion",
    ("provenance.fingerprints.batches", "_string_buffers"): "string buffers",
    ("provenance.fingerprints.batches", "char_tables"): "char tables",
    ("provenance.fingerprints.batches", "_fold"): "python _fold (unicodedata)",
}
EXACT_STAGE = "exact-hash loop (after last kernel)"
GLUE_STAGE = "rest (numpy glue, ASCII test, span assembly)"


def _kernel_names() -> list[str]:
    import inspect
    import re

    import provenance.fingerprints.batches as fp

    names = dict.fromkeys(re.findall(r"\b_k\.([a-z]\w*)\(", inspect.getsource(fp)))
    return list(names)


def _complex_regex():
    """A regex matching any code point the kernels cannot fold alone (class COMPLEX or above)."""
    import re

    from provenance.fingerprints import _char_tables
    from provenance.kernels import minhash as _k

    cls = np.asarray(_char_tables(True)[0])
    cps = np.flatnonzero((cls == _k.CLASS_COMPLEX) | (cls == _k.CLASS_SIGMA))
    if not cps.size:
        return None
    breaks = np.flatnonzero(np.diff(cps) != 1)
    lo = np.concatenate([[cps[0]], cps[breaks + 1]])
    hi = np.concatenate([cps[breaks], [cps[-1]]])
    return re.compile("[" + "".join(f"{re.escape(chr(x))}-{re.escape(chr(y))}" for x, y in zip(lo, hi)) + "]")


def profile_fast(cfg, corpus: Corpus, ranges, threads: int | None = None) -> dict:
    """One pass of ``cfg.fingerprint_batch`` over the whole corpus with its stages timed."""
    import importlib

    import numba

    from provenance.kernels import minhash as _k

    clock = time.perf_counter
    times: Counter = Counter()
    counts: Counter = Counter()
    last_end = [0.0]
    patched = []

    def wrap(module, name, label, kernel):
        orig = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return orig(*args, **kwargs)
            finally:
                t1 = clock()
                times[label] += t1 - t0
                if kernel:
                    last_end[0] = t1
                elif name == "_fold":
                    counts["_fold calls"] += 1
                    counts["_fold input chars"] += len(args[0])
                elif name == "char_tables":
                    counts["non-ASCII batches"] += int(bool(args[0]))

        patched.append((module, name, orig))
        setattr(module, name, timed)

    default = numba.get_num_threads()
    numba.set_num_threads(threads or default)
    kernels = [k for k in _kernel_names() if hasattr(_k, k)]
    try:
        for (module_name, name), label in _HELPERS.items():
            module = importlib.import_module(module_name)
            if hasattr(module, name):
                wrap(module, name, label, False)
        for name in kernels:
            wrap(_k, name, name, True)
        for lo, hi in ranges:
            chunk = corpus.texts[lo:hi]
            t0 = clock()
            batch = cfg.fingerprint_batch(chunk)
            t1 = clock()
            times["total"] += t1 - t0
            times[EXACT_STAGE] += t1 - last_end[0]
            counts["batches"] += 1
            counts["docs"] += len(chunk)
            counts["shingles"] += n_shingles(batch.token_count, cfg.ngram)
    finally:
        for module, name, orig in reversed(patched):
            setattr(module, name, orig)
        numba.set_num_threads(default)
    total = times.pop("total")
    stages = {label: times.get(label, 0.0) for label in _HELPERS.values()}
    stages.update({k: times.get(k, 0.0) for k in kernels})
    stages[EXACT_STAGE] = times[EXACT_STAGE]
    stages[GLUE_STAGE] = total - sum(stages.values())
    return {
        "threads": threads or default,
        "kernels_called": kernels,
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "stages_share": {k: round(v / total, 4) if total else 0.0 for k, v in stages.items()},
        "total_s": round(total, 4),
        "counts": dict(counts),
    }


def complex_share(corpus: Corpus) -> dict:
    """Documents holding a code point that the kernels hand to Python (class COMPLEX or above)."""
    rx = _complex_regex()
    hit = np.array([bool(rx.search(t)) for t in corpus.texts], dtype=bool) if rx else np.zeros(len(corpus.texts), bool)
    return {
        "docs": int(hit.sum()),
        "doc_share": float(hit.mean()) if hit.size else 0.0,
        "byte_share": float(corpus.sizes[hit].sum() / max(corpus.n_bytes, 1)),
    }
