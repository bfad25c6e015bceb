"""Commit and checkout across a model zoo of generated states, against safetensors.

Shapes (random float32 weights; nothing downloaded):

- ``encoder-22m``: a 6-layer, 384-wide sentence-embedding encoder (the shapes of a MiniLM-L6
  checkpoint: 103 tensors, 22.7M parameters, 91 MB);
- ``decoder-124m``: GPT-2 small's names and shapes (148 tensors, 124.4M parameters, 498 MB);
- ``many-groups``: ``--groups`` groups of equal size summing to ``--big-params`` parameters (a
  large state of many groups; 1,000 groups, 250M parameters, 1 GB by default).

Per model, side by side in one process, each measured right after its baseline, median of
``--repeats`` (warm page cache: every file was read once before):

- **checkout** (``ledger.checkout(version)``, every tensor summed so that each page is read) in a
  fresh call (the ledger's database opened and closed by the call, as one command does) and in a
  session (the database kept open), against ``safetensors.torch.load_file`` + the same sum;
- **commit** with ``sync=False`` as a new root version stored whole (every tensor new: its first
  element changes before each round, untimed), in its own call and in a session, against
  ``save_file`` (unsynced) of the same state, alternating, both to the same disk, each write
  after ``os.sync()`` and an emptied page cache (where allowed).

Also, once, what a call costs before it touches a tensor: opening and closing the ledger's DuckDB
file, and an in-memory DuckDB database (its floor).

Usage: ``.venv/bin/python benchmarks/zoo.py [--repeats 7] [--big-params 250000000] [--groups 1000]
[--models encoder-22m decoder-124m many-groups] [--json out.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODELS = ("encoder-22m", "decoder-124m", "many-groups")


def encoder_22m() -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a 6-layer, 384-wide BERT-style encoder (a MiniLM-L6 checkpoint's)."""
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (30522, 384), "embeddings.position_embeddings.weight": (512, 384),
        "embeddings.token_type_embeddings.weight": (2, 384), "embeddings.LayerNorm.weight": (384,),
        "embeddings.LayerNorm.bias": (384,)}
    for i in range(6):
        p = f"encoder.layer.{i}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (384, 384), (384,)
        shapes[p + "attention.output.LayerNorm.weight"] = shapes[p + "attention.output.LayerNorm.bias"] = (384,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (1536, 384), (1536,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (384, 1536), (384,)
        shapes[p + "output.LayerNorm.weight"] = shapes[p + "output.LayerNorm.bias"] = (384,)
    shapes["pooler.dense.weight"], shapes["pooler.dense.bias"] = (384, 384), (384,)
    return shapes


def decoder_124m() -> dict[str, tuple[int, ...]]:
    """GPT-2 small's tensor names and shapes."""
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (50257, 768), "wpe.weight": (1024, 768)}
    for i in range(12):
        p = f"h.{i}."
        shapes[p + "ln_1.weight"] = shapes[p + "ln_1.bias"] = (768,)
        shapes[p + "attn.c_attn.weight"], shapes[p + "attn.c_attn.bias"] = (768, 2304), (2304,)
        shapes[p + "attn.c_proj.weight"], shapes[p + "attn.c_proj.bias"] = (768, 768), (768,)
        shapes[p + "ln_2.weight"] = shapes[p + "ln_2.bias"] = (768,)
        shapes[p + "mlp.c_fc.weight"], shapes[p + "mlp.c_fc.bias"] = (768, 3072), (3072,)
        shapes[p + "mlp.c_proj.weight"], shapes[p + "mlp.c_proj.bias"] = (3072, 768), (768,)
    shapes["ln_f.weight"] = shapes["ln_f.bias"] = (768,)
    return shapes


def many_groups(params: int, groups: int) -> dict[str, tuple[int, ...]]:
    """``groups`` groups of 1,024-wide rows, ``params`` parameters in all."""
    rows = max(1, params // groups // 1024)
    return {f"blocks.{i:05d}.weight": (rows, 1024) for i in range(groups)}


def make_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def fresh_page_cache() -> None:
    """Write back dirty pages and, where allowed (root), empty the page cache: on this VM a write
    that must first reclaim cached pages runs several times slower, so each write starts alike."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def median_of(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def touch(tensors: dict[str, torch.Tensor]) -> float:
    """Read every element (so a lazily mapped file is read whole)."""
    return sum(float(t.sum()) for t in tensors.values())


def database_costs(ledger, repeats: int) -> dict[str, float]:
    """Milliseconds to open and close the ledger's DuckDB file, and an in-memory database."""
    import duckdb

    def file_open():
        with ledger.session():
            pass

    def memory_open():
        duckdb.connect(":memory:").close()

    return {"ledger_open_close_ms": median_of(file_open, repeats) * 1e3,
            "duckdb_memory_open_close_ms": median_of(memory_open, repeats) * 1e3}


def bench_model(name: str, state: dict[str, torch.Tensor], work: Path, repeats: int) -> dict:
    from safetensors.torch import load_file, save_file

    from provenance import Ledger

    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    file = work / f"{name}.safetensors"
    save_file(state, file)
    ledger = Ledger.init(work / f"{name}-ledger")
    version = ledger.commit(state, message=name, sync=False)

    load_s = median_of(lambda: touch(load_file(file)), repeats)
    checkout_s = median_of(lambda: touch(ledger.checkout(version)), repeats)
    with ledger.session():
        session_s = median_of(lambda: touch(ledger.checkout(version)), repeats)
    load2_s = median_of(lambda: touch(load_file(file)), repeats)  # the baseline again, after ours
    load_s = min(load_s, load2_s)

    # Commits of new tensors: before each round (untimed) the first element of every tensor
    # changes, so that every object is new; each commit is a root version stored whole.
    # A commit in a session (the database already open, as in a training job's callback that holds
    # the ledger) is timed too, after its own change of the first elements.
    commits = Ledger.init(work / f"{name}-commits")
    saves, stored, in_session = [], [], []
    for r in range(repeats + 1):
        for t in state.values():
            t.view(-1)[0] = float(2 * r + 1)
        fresh_page_cache()
        t0 = time.perf_counter()
        save_file(state, work / f"save-{r}.safetensors")
        t1 = time.perf_counter()
        fresh_page_cache()
        t2 = time.perf_counter()
        commits.commit(state, message=f"{name} {r}", sync=False, encoding="full")
        t3 = time.perf_counter()
        for t in state.values():
            t.view(-1)[0] = float(2 * r + 2)
        with commits.session():
            fresh_page_cache()
            t4 = time.perf_counter()
            commits.commit(state, message=f"{name} {r} in a session", sync=False, encoding="full")
            t5 = time.perf_counter()
        if r:  # the first round warms both up
            saves.append(t1 - t0)
            stored.append(t3 - t2)
            in_session.append(t5 - t4)
    save_s, commit_s, session_commit_s = statistics.median(saves), statistics.median(stored), statistics.median(in_session)
    row = {"model": name, "tensors": len(state), "mb": nbytes / 1e6,
           "load_ms": load_s * 1e3, "checkout_ms": checkout_s * 1e3, "checkout_session_ms": session_s * 1e3,
           "checkout_vs_load": load_s / checkout_s, "checkout_session_vs_load": load_s / session_s,
           "save_ms": save_s * 1e3, "commit_ms": commit_s * 1e3, "commit_vs_save": save_s / commit_s,
           "commit_session_ms": session_commit_s * 1e3, "commit_session_vs_save": save_s / session_commit_s,
           **database_costs(ledger, repeats)}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--big-params", type=int, default=250_000_000)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shapes = {"encoder-22m": encoder_22m, "decoder-124m": decoder_124m,
              "many-groups": lambda: many_groups(args.big_params, args.groups)}
    rows = []
    for name in args.models:
        work = Path(tempfile.mkdtemp(prefix=f"zoo-{name}-"))
        try:
            rows.append(bench_model(name, make_state(shapes[name](), seed=len(rows)), work, args.repeats))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| model | tensors | MB | load_file + read ms | checkout ms (own call) | × | checkout ms (session) | × "
          "| save_file ms | commit ms (sync=False) | × | commit ms (session) | × |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['tensors']} | {r['mb']:,.0f} | {r['load_ms']:.1f} | {r['checkout_ms']:.1f} | "
              f"{r['checkout_vs_load']:.2f} | {r['checkout_session_ms']:.1f} | {r['checkout_session_vs_load']:.2f} | "
              f"{r['save_ms']:.1f} | {r['commit_ms']:.1f} | {r['commit_vs_save']:.2f} | {r['commit_session_ms']:.1f} | "
              f"{r['commit_session_vs_save']:.2f} |")
    print("\ndatabase open + close, ms: " + ", ".join(
        f"{r['model']} ledger {r['ledger_open_close_ms']:.1f} (in-memory DuckDB {r['duckdb_memory_open_close_ms']:.1f})"
        for r in rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
