"""Commit and checkout against the depth of a version history.

A generated chain (nothing downloaded): a root version of ``--groups`` groups of 256 float32,
then ``--depth`` commits, each the whole state with one element of one group changed (the
groups in turn), ``sync=False``, in one session. Every commit compares each incoming group with
its parent's value, so its cost has a part per group; what must not grow with the depth is the
rest (reading the history, walking each group's chain down to its last full copy).

Reported: the median time of the 10 commits ending at each ``--every``-th depth, and a checkout
of the tip (to a dict, every group compared with the state committed).

Usage: ``.venv/bin/python benchmarks/history.py [--depth 300] [--groups 300] [--every 100]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()

    from provenance import Ledger

    work = ROOT / "bench-data"
    with tempfile.TemporaryDirectory(dir=work if work.is_dir() else None) as tmp:
        ledger = Ledger.init(Path(tmp) / "history")
        g = torch.Generator().manual_seed(0)
        state = {f"g{i:04d}": torch.randn(256, generator=g) for i in range(args.groups)}
        times = []
        with ledger.session():
            version = ledger.commit(state, message="root", sync=False)
            for d in range(1, args.depth + 1):
                name = f"g{d % args.groups:04d}"
                changed = state[name].clone()
                changed[d % 256] += 1.0
                state = {**state, name: changed}
                t = time.perf_counter()
                version = ledger.commit(state, parent=version, message=f"commit {d}", sync=False)
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = ledger.checkout(version)
            checkout = time.perf_counter() - t
        if out.keys() != state.keys() or not all(torch.equal(out[k], state[k]) for k in state):
            raise SystemExit("the checkout of the tip is not the state committed")
    print(f"| depth | commit, median of 10 (ms) |  ({args.groups} groups of 256 float32)\n|---:|---:|")
    for end in sorted({10, *range(args.every, args.depth + 1, args.every)}):
        print(f"| {end} | {statistics.median(times[end - 10:end]) * 1e3:.1f} |")
    print(f"checkout of the tip (depth {args.depth}): {checkout * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
