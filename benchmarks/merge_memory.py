"""Merging contributors' LoRA patches straight from the patches against materialising each input.

One ledger holds a base of one large 2-D group and ``N`` children that each store it as a rank-8
low-rank patch (LoRA contributors). Each merge runs in a fresh subprocess, so its peak RSS is its
own: ``direct`` is ``ledger.merge`` as it is (inputs made block of rows by block), ``materialised``
is the same merge with the patch-direct path switched off (every input checked out whole first,
as a merge of whole models does). Medians of ``--repeats`` runs; the results are compared bit for bit.

Usage: ``.venv/bin/python benchmarks/merge_memory.py [--rows 8192] [--cols 4096] [--inputs 8]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
import provenance.merges.groups as groups
from provenance import Ledger
root, method, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "materialised":
    groups.patch_direct = lambda *a, **k: None
ledger = Ledger.open(root)
children = [v for v in ledger.versions() if v.message.startswith("lora")]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
merged = ledger.merge(children, method=method, message=f"{mode} {time.time()}")
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
w = next(iter(ledger.checkout(merged).values()))
from provenance.objects import address_of
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "start_mib": before / 1024, "result": address_of(w)}))
"""


def build(root: Path, rows: int, cols: int, inputs: int) -> None:
    import torch

    from provenance import Ledger
    from provenance.kernels.patch import apply_low_rank

    ledger = Ledger.init(root)
    g = torch.Generator().manual_seed(0)
    base_w = torch.randn(rows, cols, generator=g)
    base = ledger.commit({"w": base_w}, message="base")
    for i in range(inputs):
        b, a = 0.01 * torch.randn(rows, 8, generator=g), torch.randn(8, cols, generator=g)
        target = {"w": apply_low_rank(base_w, b, a, 2.0)}
        child = ledger.commit(target, parent=base, low_rank={"w": (b, a, 2.0)}, message=f"lora {i}")
        ledger.store_fisher(child, {"w": torch.rand(rows, cols, generator=g) + 0.01})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ledger"
        build(root, args.rows, args.cols, args.inputs)
        mib = args.rows * args.cols * 4 / 2**20
        print(f"{args.inputs} rank-8 LoRA children of one {args.rows}x{args.cols} fp32 group ({mib:.0f} MiB)", flush=True)
        for method in ("average", "fisher"):
            results = {}
            for mode in ("direct", "materialised"):
                runs = []
                for _ in range(args.repeats):
                    out = subprocess.run([sys.executable, "-c", CHILD, str(root), method, mode],
                                         capture_output=True, text=True, check=True)
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                results[mode] = {"seconds": statistics.median(r["seconds"] for r in runs),
                                 "peak_mib": statistics.median(r["peak_mib"] - r["start_mib"] for r in runs),
                                 "result": runs[0]["result"]}
                print(method, mode, results[mode], flush=True)
            d, m = results["direct"], results["materialised"]
            rows.append((method, d, m, d["result"] == m["result"]))
    print("\n| method | direct s | materialised s | × faster | direct peak MiB | materialised peak MiB | × less memory | same bits |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for method, d, m, same in rows:
        print(f"| {method} | {d['seconds']:.2f} | {m['seconds']:.2f} | {m['seconds'] / d['seconds']:.2f} | "
              f"{d['peak_mib']:.0f} | {m['peak_mib']:.0f} | {m['peak_mib'] / d['peak_mib']:.2f} | {same} |")


if __name__ == "__main__":
    main()
