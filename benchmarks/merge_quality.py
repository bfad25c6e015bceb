"""Does Fisher merging keep more of two tasks than averaging? A small real experiment on CPU.

Two contributors start from one base model (an MLP body pre-trained on an auxiliary task, and one
classification head per task) and fine-tune it on two different generated tasks over the same
inputs: each trains the body and its own head. Their versions are merged in the ledger by
weighted averaging, task arithmetic (λ = 0.5 and 1.0), TIES (density 0.2) and Fisher merging
(exact diagonal Fisher of each fine-tuned model on 1,024 examples of its own task, stored with
its version). Each merged model is scored on held-out data of both tasks, over ``--seeds`` seeds.

Tasks (32-dimensional Gaussian inputs, 4 classes each; no data is downloaded):
- A: the signs of two random projections;
- B: whether a third projection's magnitude passes 0.7, and the sign of a fourth.

Usage: ``.venv/bin/python benchmarks/merge_quality.py [--seeds 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

DIM, HIDDEN = 32, 64


class Model(nn.Module):
    """A shared body and one head per task (and an auxiliary head used only to pre-train)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.heads = nn.ModuleDict({"aux": nn.Linear(HIDDEN, 8), "a": nn.Linear(HIDDEN, 4), "b": nn.Linear(HIDDEN, 4)})

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        return self.heads[head](self.body(x))


def make_tasks(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, DIM, generator=g)
    aux = torch.randn(3, DIM, generator=g)

    def sample(m: int):
        x = torch.randn(m, DIM, generator=g)
        p = x @ w.T / DIM**0.5
        ya = (p[:, 0] > 0).long() * 2 + (p[:, 1] > 0).long()
        yb = (p[:, 2].abs() > 0.7).long() * 2 + (p[:, 3] > 0).long()
        yaux = ((x @ aux.T) > 0).long() @ torch.tensor([4, 2, 1])
        return x, ya, yb, yaux

    return sample(n), sample(n // 2)


def train(model: Model, x, y, head: str, epochs: int, lr: float, params=None) -> Model:
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i], head), y[i]).backward()
            opt.step()
    return model


def accuracy(model: Model, x, y, head: str) -> float:
    with torch.no_grad():
        return float((model(x, head).argmax(1) == y).float().mean())


def one_seed(seed: int, n: int) -> dict[str, dict[str, float]]:
    from provenance import Ledger
    from provenance.fisher import diagonal_fisher

    torch.manual_seed(seed)
    (x, ya, yb, yaux), (tx, tya, tyb, _) = make_tasks(seed, n)
    ledger = Ledger.init(Path(tempfile.mkdtemp(prefix="merge-quality-")))
    base_model = train(Model(), x, yaux, "aux", epochs=5, lr=3e-3)
    base = ledger.commit(base_model, message="base: body pre-trained on the auxiliary task")

    def fine_tune(y, head):
        m = Model()
        m.load_state_dict(ledger.checkout(base))
        return train(m, x, y, head, epochs=10, lr=1e-3)

    model_a, model_b = fine_tune(ya, "a"), fine_tune(yb, "b")
    va = ledger.commit(model_a, parent=base, message="task A")
    vb = ledger.commit(model_b, parent=base, message="task B")
    for version, model, y, head in ((va, model_a, ya, "a"), (vb, model_b, yb, "b")):
        batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 1024, 128)]
        fisher = diagonal_fisher(model, batches, mode="exact", forward=lambda m, b, h=head: m(b[0], h))
        ledger.store_fisher(version, fisher, meta={"mode": "exact", "examples": 1024})

    merges = {
        "average": ledger.merge([va, vb], method="average", message="average"),
        "task arithmetic λ=0.5": ledger.merge([va, vb], method="task_arithmetic", weights=[0.5, 0.5], message="ta"),
        "task arithmetic λ=1": ledger.merge([va, vb], method="task_arithmetic", weights=[1.0, 1.0], message="ta1"),
        "ties d=0.2": ledger.merge([va, vb], method="ties", weights=[1.0, 1.0], density=0.2, message="ties"),
        "fisher": ledger.merge([va, vb], method="fisher", message="fisher"),
    }
    rows = {"base": base, "model A": va, "model B": vb, **merges}
    out = {}
    for name, version in rows.items():
        m = Model()
        m.load_state_dict(ledger.checkout(version))
        out[name] = {"A": accuracy(m, tx, tya, "a"), "B": accuracy(m, tx, tyb, "b")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    t = time.perf_counter()
    runs = [one_seed(seed, args.examples) for seed in range(args.seeds)]
    table = {}
    for name in runs[0]:
        a = [r[name]["A"] for r in runs]
        b = [r[name]["B"] for r in runs]
        table[name] = {"A": statistics.mean(a), "B": statistics.mean(b), "mean": statistics.mean(a + b),
                       "A_sd": statistics.pstdev(a), "B_sd": statistics.pstdev(b)}
    result = {"seeds": args.seeds, "examples": args.examples, "seconds": round(time.perf_counter() - t, 1),
              "accuracy": table, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| model | task A | task B | mean of both |  ({args.seeds} seeds, held-out accuracy, mean ± sd)")
    print("|---|---:|---:|---:|")
    for name, r in table.items():
        print(f"| {name} | {r['A']:.3f} ± {r['A_sd']:.3f} | {r['B']:.3f} ± {r['B_sd']:.3f} | {r['mean']:.3f} |")
    print(f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
