"""Small calls on an embedded ledger: what a training job pays per call when each opens the ledger.

A training job logs into an embedded ledger with many small calls: a registration of a few
documents, a run's start, its examples, its end with a small commit, a tag. Each call that finds no
session open opens the DuckDB database (10–30 ms here) and closes it; a call that opened it
several times paid that several times. This times each kind of call, ``--rounds`` times in turn,
on a fresh ledger in a temporary folder, then ``tag`` five times as often inside one session (the
write's own cost, with no opening), and prints the median per call and how many times the
database was opened (counted by wrapping the ledger's ``_connect``).

Compare two checkouts by running this script with each one's package first on ``sys.path``,
alternately; the figures in docs/benchmarks.md were taken so.

Run: ``.venv/bin/python benchmarks/small_calls.py [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="calls of each kind (default 30)")
    args = ap.parse_args(argv)

    import torch

    from provenance import Ledger
    from provenance.ledger import connections

    opened = {"n": 0}
    real = connections.Connections._connect

    def counting(self, *a, **k):
        opened["n"] += 1
        return real(self, *a, **k)

    connections.Connections._connect = counting
    times: dict[str, list[float]] = defaultdict(list)
    opens: dict[str, int] = {}

    def timed(kind: str, call, *args, **kwargs):
        opened["n"] = 0
        t = time.perf_counter()
        out = call(*args, **kwargs)
        times[kind].append(time.perf_counter() - t)
        opens[kind] = opened["n"]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.init(Path(tmp) / "ledger")
        rows = [{"id": f"d{i}", "text": f"document {i} with a few words in it"} for i in range(10)]
        ledger.register_dataset("warm", rows, id_field="id")
        base = ledger.commit({"w": torch.zeros(8, 8)}, message="base")
        warnings.simplefilter("ignore")
        for r in range(args.rounds):
            timed("register 10 documents", ledger.register_dataset, f"d{r}", rows, id_field="id")
            run = timed("start_run", ledger.start_run, base=base, datasets=["warm"], message=f"run {r}")
            timed("log_examples (10 keys)", run.log_examples, [f"d{i}" for i in range(10)], step=0)
            version = timed("run.commit (8x8 state)", run.commit, {"w": torch.full((8, 8), float(r))})
            timed("tag", ledger.tag, f"t{r}", version)
        with ledger.session():  # the write alone: no opening, as a server's or a notebook's session
            for r in range(args.rounds * 5):
                timed("tag in a session", ledger.tag, f"s{r}", base)
    print(f"| call | median ms ({args.rounds} calls; {args.rounds * 5} in the session) | database opened |")
    print("|---|---:|---:|")
    for kind, ts in times.items():
        print(f"| {kind} | {statistics.median(ts) * 1e3:.1f} | {opens[kind]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
