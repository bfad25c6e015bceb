"""Objects in a bucket: commit and checkout on a ledger made with ``--objects s3://...`` against
the same on a local object folder, and against what a user without the ledger would do with the
same S3 server with S3's reference client: ``safetensors.torch.save`` (the file's bytes in
memory) sent as one object by boto3's ``put_object``, and for the checkout ``get_object`` read
whole and ``safetensors.torch.load`` (no local file either way).

The S3 server is moto's server mode on 127.0.0.1 (a Python process, so absolute figures are
moto's, not S3's: the ratios between arms on the same server are the measurement). Two states,
generated: ``encoder`` (a 22M-parameter sentence encoder's shapes: 104 tensors, 87 MiB of fp32)
and ``large`` (two 16M-element fp32 matrices, 128 MiB). Each arm runs ``--rounds`` times
alternately, in this one process, each commit into a fresh ledger (and prefix); a checkout reads
every tensor (a sum). Medians; ``--json FILE`` writes the table.

Usage: ``.venv/bin/python benchmarks/object_bucket.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import boto3
import torch
from safetensors.torch import load, save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import Ledger  # noqa: E402
from tests import s3server  # noqa: E402


def encoder() -> dict[str, torch.Tensor]:
    """MiniLM-L6-shaped: embeddings, 6 layers of 16 tensors, a pooler; 104 tensors."""
    g = torch.Generator().manual_seed(0)
    state = {"embeddings.word_embeddings.weight": torch.randn(30522, 384, generator=g),
             "embeddings.position_embeddings.weight": torch.randn(512, 384, generator=g),
             "embeddings.token_type_embeddings.weight": torch.randn(2, 384, generator=g),
             "embeddings.LayerNorm.weight": torch.ones(384), "embeddings.LayerNorm.bias": torch.zeros(384)}
    for i in range(6):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            state[p + name + ".weight"] = torch.randn(384, 384, generator=g)
            state[p + name + ".bias"] = torch.randn(384, generator=g)
        state[p + "attention.output.LayerNorm.weight"] = torch.ones(384)
        state[p + "attention.output.LayerNorm.bias"] = torch.zeros(384) + i
        state[p + "intermediate.dense.weight"] = torch.randn(1536, 384, generator=g)
        state[p + "intermediate.dense.bias"] = torch.randn(1536, generator=g)
        state[p + "output.dense.weight"] = torch.randn(384, 1536, generator=g)
        state[p + "output.dense.bias"] = torch.randn(384, generator=g)
        state[p + "output.LayerNorm.weight"] = torch.ones(384) * (i + 2)
        state[p + "output.LayerNorm.bias"] = torch.zeros(384) - i
    state["pooler.dense.weight"] = torch.randn(384, 384, generator=g)
    state["pooler.dense.bias"] = torch.randn(384, generator=g)
    state["pooler.extra.weight"] = torch.randn(384, generator=g)
    return state


def large() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"a": torch.randn(4096, 4096, generator=g), "b": torch.randn(4096, 4096, generator=g)}


def read_all(state: dict[str, torch.Tensor]) -> float:
    return float(sum(t.double().sum() for t in state.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, s3server.running(Path(tmp) / "moto") as s3:
        s3.bucket("bench")
        client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        n = 0
        for label, make in (("encoder", encoder), ("large", large)):
            state = make()
            nbytes = sum(t.numel() * t.element_size() for t in state.values())
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for arm in ("local", "bucket", "save + upload"):
                    n += 1
                    folder = Path(tmp) / f"r{n}"
                    t0 = time.perf_counter()
                    if arm == "save + upload":
                        client.put_object(Bucket="bench", Key=f"plain/{n}.safetensors", Body=save(state))
                        commit = time.perf_counter() - t0
                        t0 = time.perf_counter()
                        body = client.get_object(Bucket="bench", Key=f"plain/{n}.safetensors")["Body"].read()
                        total = read_all(load(body))
                        checkout = time.perf_counter() - t0
                    else:
                        ledger = (Ledger.init(folder) if arm == "local"
                                  else Ledger.init(folder, objects=f"s3://bench/l{n}/objects"))
                        v = ledger.commit(state, message="bench")
                        commit = time.perf_counter() - t0
                        ledger = Ledger.open(folder)
                        t0 = time.perf_counter()
                        total = read_all(ledger.checkout(v))
                        checkout = time.perf_counter() - t0
                    assert abs(total - read_all(state)) < 1e-3 * max(1.0, abs(total)), (arm, total)
                    times.setdefault(f"{arm} commit", []).append(commit)
                    times.setdefault(f"{arm} checkout", []).append(checkout)
            med = {k: statistics.median(v) for k, v in times.items()}
            for op in ("commit", "checkout"):
                base = med[f"save + upload {op}"]
                for arm in ("local", "bucket", "save + upload"):
                    s = med[f"{arm} {op}"]
                    rows.append({"state": label, "tensors": len(state), "MiB": round(nbytes / 2**20, 1), "op": op,
                                 "arm": arm, "median_s": round(s, 3), "MB_s": round(nbytes / s / 1e6, 1),
                                 "speed_vs_baseline": round(base / s, 2), "runs": [round(x, 3) for x in times[f"{arm} {op}"]]})
    print(f"{'state':8} {'op':9} {'arm':20} {'median s':>9} {'MB/s':>8} {'speed vs boto3':>18}")
    for r in rows:
        print(f"{r['state']:8} {r['op']:9} {r['arm']:20} {r['median_s']:9.3f} {r['MB_s']:8.1f} {r['speed_vs_baseline']:18.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
