"""Retraction: planning on the 10,000-version benchmark ledger, and a re-merge against the merge
it replaces.

Parts (``--part``, default both):

- ``plan``: ``Ledger.retract`` (taint, plan, and the record written) of one shard on the ledger
  ``benchmarks/audits.py`` builds for lineage (``--versions`` 10,000 in a DAG with a merge every
  tenth, runs on ``--shards`` 100,000 shards): a shard trained on early in the history (it
  taints most of the DAG: thousands of steps) and shards picked at random. Target: under 1 s.
- ``remerge``: three contributors' patches of one base (A sparse, B LoRA, C dense; ``--params``
  fp32 elements in ``--groups`` groups each) Fisher-merged into M; A is retracted; the
  ``apply_retraction`` re-merge of B and C is timed side by side with ``ledger.merge([B, C])``
  given the same weights, alternating, ``--rounds`` times each. Target: the re-merge costs what
  the merge costs (ratio about 1).

Usage: ``.venv/bin/python benchmarks/retract.py [--part plan|remerge] [--versions 10000] [--params 8000000]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def part_plan(args, tmp: Path) -> list[str]:
    from audits import build_lineage_ledger

    t = time.perf_counter()
    ledger, vids, receipts, n_run_shards = build_lineage_ledger(tmp / "plan", args.versions, args.shards, 1)
    built = time.perf_counter() - t
    rng = np.random.default_rng(5)
    first_run = ledger.sql("SELECT dataset_id, shard_index FROM run_shards WHERE run_id = ? LIMIT 1",
                           [f"{1:032x}r"]).to_pylist()[0]
    picks = [(first_run["dataset_id"], first_run["shard_index"])]
    shards = ledger.sql("SELECT DISTINCT dataset_id, shard_index FROM run_shards USING SAMPLE 40 ROWS "
                        "ORDER BY dataset_id, shard_index").to_pylist()
    picks += [(r["dataset_id"], r["shard_index"]) for r in rng.permutation(shards)[: args.repeats].tolist()]
    rows = []
    for i, (dataset, shard) in enumerate(picks):
        times, steps = [], None
        for _ in range(3 if i == 0 else 1):
            t = time.perf_counter()
            record = ledger.retract(dataset=dataset, shard=shard, reason="benchmark")
            times.append(time.perf_counter() - t)
            steps = record["steps"]
        rows.append((statistics.median(times), len(steps), {a: sum(s["action"] == a for s in steps)
                                                           for a in ("remerge", "retrain", "rebase")}))
    early, rest = rows[0], rows[1:]
    print(f"built the ledger in {built:.1f} s ({n_run_shards:,} run_shards rows, {len(receipts):,} merges)")
    print(json.dumps({"early": early, "random": rest}, indent=1))
    return [
        f"| `prov retract` of the shard the first run trained on, {args.versions:,}-version ledger "
        f"({n_run_shards:,} run_shards rows) | **{early[0]:.2f} s** (median of 3) | {early[1]:,} steps: "
        f"{early[2]['remerge']:,} re-merge, {early[2]['retrain']:,} retrain, {early[2]['rebase']:,} rebase | < 1 s |",
        f"| `prov retract` of {len(rest)} random trained shards, same ledger | p50 "
        f"**{statistics.median(r[0] for r in rest):.2f} s**, max {max(r[0] for r in rest):.2f} s | steps p50 "
        f"{statistics.median(r[1] for r in rest):,.0f}, max {max(r[1] for r in rest):,} | < 1 s |",
    ]


def part_remerge(args, tmp: Path) -> list[str]:
    import torch

    from provenance import Ledger

    ledger = Ledger.init(tmp / "remerge")
    data = tmp / "data"
    data.mkdir()
    (data / "private.jsonl").write_text(json.dumps({"id": "x", "text": "a withdrawn letter"}) + "\n")
    (data / "open.jsonl").write_text(json.dumps({"id": "o", "text": "an open text"}) + "\n")
    ledger.register_dataset("private", data / "private.jsonl", id_field="id")
    ledger.register_dataset("open", data / "open.jsonl", id_field="id")
    g = torch.Generator().manual_seed(0)
    per = args.params // args.groups
    rows = 1024
    base_state = {f"layer{i}.weight": torch.randn(rows, per // rows, generator=g) for i in range(args.groups)}
    base = ledger.commit(base_state, message="base")

    def run(dataset, state, **options):
        with ledger.start_run(base=base, datasets=[dataset], message=dataset) as r:
            return r.commit(state, **options)

    a_state, b_state, c_state, low_rank = {}, {}, {}, {}
    for name, w in base_state.items():
        mask = torch.rand(w.shape, generator=g) < 0.01
        a_state[name] = torch.where(mask, w + 0.1, w)
        bf, af = torch.randn(rows, 8, generator=g), torch.randn(8, w.shape[1], generator=g)
        b_state[name] = w + 0.5 * (bf @ af)
        low_rank[name] = (bf, af, 0.5)
        c_state[name] = w + 0.01 * torch.randn(w.shape, generator=g)
    a = run("private", a_state)
    b = run("open", b_state, low_rank=low_rank)
    c = run("open", c_state)
    del a_state, b_state, c_state
    for seed, v in enumerate((a, b, c)):
        ledger.store_fisher(v, {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) + 0.05
                                for n, w in base_state.items()})
    m = ledger.merge([a, b, c], method="fisher", weights=[0.2, 0.5, 0.3], message="M")
    apply_t, merge_t = [], []
    for i in range(args.rounds):
        rid = ledger.retract(dataset="private", key="x", reason=f"benchmark round {i}")["retraction_id"]
        t = time.perf_counter()
        ledger.apply_retraction(rid)
        apply_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        ledger.merge([b, c], method="fisher", weights=[0.625, 0.375], message=f"direct {i}")
        merge_t.append(time.perf_counter() - t)
    del m
    a_med, m_med = statistics.median(apply_t), statistics.median(merge_t)
    print(f"apply {apply_t}\nmerge {merge_t}")
    return [f"| re-merge by `apply_retraction` (B a LoRA patch + C dense, {args.params / 1e6:.0f}M fp32 in "
            f"{args.groups} groups, stored Fishers) vs `ledger.merge([B, C])`, alternating, {args.rounds} rounds | "
            f"{a_med:.2f} s | {m_med:.2f} s | **{m_med / a_med:.2f}×** the merge's speed | ≈ 1× |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["plan", "remerge"], action="append")
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--params", type=int, default=8_000_000)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    parts = args.part or ["plan", "remerge"]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if "plan" in parts:
            lines += part_plan(args, Path(tmp))
        if "remerge" in parts:
            lines += part_remerge(args, Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
