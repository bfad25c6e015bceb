"""Logged training examples: how fast ``run.log_examples`` takes them and what they cost on disk.

A dataset of ``--docs`` generated documents is registered; a run then logs ``--examples`` examples
in batches of ``--batch`` keys (random documents, one batch per step), the way
``provenance.torch.track`` does. Side by side, the same (step, key) stream is written the way a
training script would otherwise keep it: a CSV log, plain and gzip-compressed. Reported: examples
per second, bytes per example (the ledger file's growth; the CSV files), and the extrapolation to
a billion examples.

Usage: ``.venv/bin/python benchmarks/runs.py [--docs 100000] [--examples 10000000] [--batch 1024]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench-data" / "runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--examples", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from provenance import Ledger

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    ledger = Ledger.init(WORK / "ledger")
    docs = ({"id": f"doc-{i:08d}", "text": f"document {i} about topic {i % 97} and {i % 13}"} for i in range(args.docs))
    ledger.register_dataset("corpus", docs, id_field="id")
    keys = pa.array([f"doc-{i:08d}" for i in range(args.docs)])
    rng = np.random.default_rng(0)
    steps = args.examples // args.batch
    choices = [pa.array(rng.integers(0, args.docs, args.batch)) for _ in range(min(steps, 64))]

    before = ledger.db_path.stat().st_size
    run = ledger.start_run(datasets=["corpus"], message="log benchmark", flush_every=1 << 20)
    t = time.perf_counter()
    for step in range(steps):
        run.log_examples(keys.take(choices[step % len(choices)]), step=step)
    run.finish()
    ours_s = time.perf_counter() - t
    ledger_bytes = ledger.db_path.stat().st_size - before
    n = steps * args.batch
    assert ledger.run(run.run_id).n_logged == n

    t = time.perf_counter()
    with open(WORK / "log.csv", "w") as plain, gzip.open(WORK / "log.csv.gz", "wt", compresslevel=6) as packed:
        for step in range(steps):
            batch = keys.take(choices[step % len(choices)])
            text = "".join(f"{step},{k}\n" for k in batch.to_pylist())
            plain.write(text)
            packed.write(text)
    csv_s = time.perf_counter() - t
    csv_bytes = (WORK / "log.csv").stat().st_size
    gz_bytes = (WORK / "log.csv.gz").stat().st_size
    # What the ledger holds per example: (run_id, step, doc_id), resolved from the keys.
    distinct = pc.count_distinct(pa.concat_arrays(choices)).as_py()

    result = {
        "docs": args.docs, "examples": n, "batch": args.batch, "distinct_documents_in_sample": distinct,
        "ledger_examples_per_s": round(n / ours_s), "csv_examples_per_s": round(n / csv_s),
        "ledger_bytes_per_example": round(ledger_bytes / n, 2), "csv_bytes_per_example": round(csv_bytes / n, 2),
        "csv_gz_bytes_per_example": round(gz_bytes / n, 2),
        "ledger_gib_per_billion": round(ledger_bytes / n * 1e9 / 2**30, 1),
        "csv_gz_gib_per_billion": round(gz_bytes / n * 1e9 / 2**30, 1),
    }
    shutil.rmtree(WORK, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(f"\nledger: {result['ledger_bytes_per_example']} B/example, {result['ledger_examples_per_s']:,} examples/s; "
          f"csv.gz: {result['csv_gz_bytes_per_example']} B/example, {result['csv_examples_per_s']:,} examples/s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
