"""Stored LSH band keys versus banding at query time, on the same ledger, side by side.

The ledger stores, per document, the signature and the band keys of the dataset's configured
threshold. This measures what that choice buys: the candidate-pair self-join over the stored
keys, against the same join over band keys computed inside DuckDB from the stored signatures
(what every other threshold costs), and the storage the keys take.

Usage: ``.venv/bin/python benchmarks/banding.py [--docs 100000]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from provenance import Ledger
    from provenance.synthetic import generate_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = generate_corpus(args.docs, mean_words=120, dup_fraction=0.05, seed=1)
        ledger = Ledger.init(tmp)
        t = time.perf_counter()
        ds = ledger.register_dataset("bench", corpus.docs, id_field="id").dataset
        reg = time.perf_counter() - t
        b, r = ds.bands, ds.rows
        stored = """
            WITH x AS (SELECT doc_id, unnest(band_keys) AS k, generate_subscripts(band_keys, 1) AS band FROM documents)
            SELECT count(*) FROM (SELECT DISTINCT x1.doc_id, x2.doc_id FROM x x1 JOIN x x2
                                  ON x1.band = x2.band AND x1.k = x2.k AND x1.doc_id < x2.doc_id)"""
        computed = f"""
            WITH x AS (SELECT doc_id, band, hash(signature[band * {r} + 1 : (band + 1) * {r}]) AS k
                       FROM documents, range({b}) t(band))
            SELECT count(*) FROM (SELECT DISTINCT x1.doc_id, x2.doc_id FROM x x1 JOIN x x2
                                  ON x1.band = x2.band AND x1.k = x2.k AND x1.doc_id < x2.doc_id)"""
        results = {}
        for name, sql in (("stored band keys", stored), ("bands computed at query time", computed)):
            times, pairs = [], None
            for _ in range(args.repeat):
                t = time.perf_counter()
                pairs = ledger.sql(sql).column(0)[0].as_py()
                times.append(time.perf_counter() - t)
            results[name] = (statistics.median(times), pairs)
        sizes = [int(v) for v in ledger.sql(
            "SELECT sum(len(band_keys)) * 8, sum(len(signature)) * 4 FROM documents"
        ).to_pylist()[0].values()]
    print(f"{args.docs:,} documents, banding {b} x {r} (threshold {ds.config.lsh_threshold}); registration {reg:.1f} s")
    print(f"{'method':32s} {'median s':>9s} {'candidate pairs':>16s}")
    for name, (secs, pairs) in results.items():
        print(f"{name:32s} {secs:9.3f} {pairs:16,}")
    ratio = results["bands computed at query time"][0] / results["stored band keys"][0]
    print(f"stored keys: {sizes[0] / 1e6:.1f} MB raw ({sizes[0] / sizes[1]:.0%} of the signatures); "
          f"query-time banding is {ratio:.1f}x slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
