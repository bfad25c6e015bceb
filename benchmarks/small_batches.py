"""Small fingerprint batches: one thread under ``SERIAL_BELOW`` bytes, or all of numba's threads.

A registration fingerprints batches of about 8 MB, where numba's threads pay off. Many calls are
small: ``cfg.fingerprint(text)`` per document, a memorization audit's samples, a gate's evaluation
texts, a server's small registrations. There, waking numba's other threads costs more than the
work, and on a busy machine a scheduler time slice. This times ``cfg.fingerprint_batch`` per call
on batches of 1 to 10,000 short documents (about 60 bytes each) both ways, alternating call by
call so that load from other processes falls on both alike, and datasketch's ``MinHash`` of the
same documents one at a time (the signatures equal) for scale. Medians of ``--calls`` calls.

Run: ``.venv/bin/python benchmarks/small_batches.py [--calls 200] [--sizes 1 10 100 1000 10000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200, help="calls per batch size and way (default 200)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1_000, 10_000],
                    help="documents per call, one row each (default 1 10 100 1000 10000)")
    args = ap.parse_args(argv)

    import numba
    from datasketch import MinHash

    from provenance.fingerprints import FingerprintConfig, batches

    cfg = FingerprintConfig()
    rule = batches.SERIAL_BELOW
    rng = np.random.default_rng(5)
    vocab = ["the", "model", "trained", "on", "Straße", "ΣΟΦΙΑ", "data", "of", "many", "words", "ﬁne", "x²"]
    docs = [" ".join(rng.choice(vocab, 10).tolist()) for _ in range(10_000)]
    cfg.warm_up()
    print(f"numba threads: {numba.get_num_threads()} ({numba.threading_layer()}), cores: {os.cpu_count()}, "
          f"load: {os.getloadavg()[0]:.2f}; SERIAL_BELOW = {rule:,} bytes\n")
    print("| documents | bytes | one thread under the rule (µs/call) | all threads (µs/call) | × | "
          "datasketch one by one (µs) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        texts = docs[:n]
        size = sum(len(t.encode()) for t in texts)
        times: dict[str, list[float]] = {"rule": [], "all": []}
        calls = max(5, args.calls // max(1, n // 100))
        for _ in range(calls):
            for way in ("rule", "all"):
                batches.SERIAL_BELOW = rule if way == "rule" else 0
                t = time.perf_counter()
                cfg.fingerprint_batch(texts)
                times[way].append(time.perf_counter() - t)
        batches.SERIAL_BELOW = rule
        ds = []
        for _ in range(max(3, calls // 10)):
            t = time.perf_counter()
            for text in texts[:100]:
                m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=cfg.hashfunc)
                m.update_batch(cfg.shingles(text))
            ds.append((time.perf_counter() - t) * n / len(texts[:100]))
        ours, theirs = statistics.median(times["rule"]) * 1e6, statistics.median(times["all"]) * 1e6
        print(f"| {n:,} | {size:,} | {ours:,.0f} | {theirs:,.0f} | {theirs / ours:.2f} | "
              f"{statistics.median(ds) * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
