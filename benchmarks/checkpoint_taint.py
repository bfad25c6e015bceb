"""Taint and lineage on a ledger whose runs saved checkpoints.

A dataset of ``--docs`` generated documents (and a second one, untouched) is registered; one run
logs ``--examples`` examples in batches of ``--batch`` random keys and saves a checkpoint every
``--every`` steps (0: none, for the same ledger without checkpoints), ending with its own version; a second run logs the same way without
checkpoints. Timed, each in the same process on the built ledger, medians of ``--repeats``:
``taint`` of one document (by key), ``taint`` of the whole dataset, and the ``lineage`` of the
middle checkpoint (the examples up to its step, counted from the log).

``--build PATH`` builds the ledger at PATH and stops; ``--time PATH`` times it (so that two
versions of the code time one ledger: run ``--time`` with each importable as ``provenance``).

Usage: ``.venv/bin/python benchmarks/checkpoint_taint.py --build L && .venv/bin/python benchmarks/checkpoint_taint.py --time L``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def build(path: Path, docs: int, examples: int, batch: int, every: int) -> None:
    import torch

    from provenance import Ledger

    ledger = Ledger.init(path)
    ledger.register_dataset("corpus", ({"id": f"doc-{i:08d}", "text": f"document {i} about topic {i % 97} and {i % 13}"}
                                       for i in range(docs)), id_field="id")
    ledger.register_dataset("other", ({"id": f"o-{i}", "text": f"another text {i} on {i % 7}"} for i in range(1000)),
                            id_field="id")
    keys = pa.array([f"doc-{i:08d}" for i in range(docs)])
    rng = np.random.default_rng(0)
    base = ledger.commit({"w": torch.zeros(8)}, message="base")
    steps = examples // batch
    saving = None
    for saves in (True, False):
        run = ledger.start_run(base=base, datasets=["corpus"], message=f"checkpoints: {saves}", flush_every=1 << 20)
        for step in range(steps):
            run.log_examples(keys.take(pa.array(rng.integers(0, docs, batch))), step=step)
            if saves and every and (step + 1) % every == 0:
                run.checkpoint({"w": torch.full((8,), float(step))})
        run.commit({"w": torch.ones(8)})
        saving = saving or run.run_id
    print(json.dumps({"built": str(path), "steps": steps, "examples": steps * batch * 2,
                      "checkpoints": len(ledger.checkpoints(saving))}))


def timed(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 1)


def time_it(path: Path, repeats: int) -> None:
    from provenance import Ledger

    ledger = Ledger.open(path)
    run = next(r for r in ledger.runs() if r.message == "checkpoints: True")
    saved = ledger.checkpoints(run.run_id)
    middle = saved[len(saved) // 2].version_id if saved else run.version_id  # --every 0: the run's version
    print(json.dumps({
        "checkpoints": len(saved), "code": str(Path(__import__("provenance").__file__).parent.parent),
        "taint_key_ms": timed(lambda: ledger.taint(dataset="corpus", key="doc-00000042"), repeats),
        "taint_dataset_ms": timed(lambda: ledger.taint(dataset="corpus"), repeats),
        "lineage_checkpoint_ms": timed(lambda: ledger.lineage(middle), repeats),
        "tainted_by_key": len(ledger.taint(dataset="corpus", key="doc-00000042").versions),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path)
    parser.add_argument("--time", type=Path)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--examples", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.build:
        build(args.build, args.docs, args.examples, args.batch, args.every)
    if args.time:
        time_it(args.time, args.repeats)


if __name__ == "__main__":
    main()
