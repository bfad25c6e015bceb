"""Registration on Ray Data against the single-process path, on the same corpus, side by side.

Generates ``--size-mb`` (default 1000) of JSONL in ``--shards`` files under ``bench-data/`` (kept
between runs, ignored by git), then alternates, ``--rounds`` times:

1. ``local``: ``Ledger.register_dataset`` in this process (the reader thread and the numba
   kernel);
2. ``ray``: :func:`provenance.integrations.ray_data.register_dataset` on a local Ray started once
   beforehand with ``--workers`` CPUs (one fingerprinting actor each; Ray's start is not timed, as
   a cluster exists before a job uses it; the actors' start is).

Each registers into a fresh ledger. Reported: MB/s end to end (hash, read, fingerprint, write
the rows, register them in DuckDB), the cores busy meanwhile (the whole machine's busy CPU time,
from ``/proc/stat`` through psutil, over the wall time: Ray's daemons count) and MB/s per busy
core; the ratio of the per-core figures is the Ray engine's overhead (issue 14: ≥ 0.8).

``--part dedup``: the dedup audit instead, on ``--docs`` generated signatures (``--dup`` of them
near-copies, as ``benchmarks/audits.py`` makes them) inserted straight into one ledger: the local
audit (DuckDB) against :func:`provenance.integrations.ray_dedup.audit_dedup` on the same Ray, side
by side, with the same figures (seconds, cores busy, documents per second per busy core) and a
check that both found the same pairs and clusters.

``--jobs``: also both as commands, ``prov dataset add`` in a fresh process (``--engine ray --address
auto`` on the same Ray, or local): each pays its interpreter, imports and kernel loading, as the
Ray arm's actors do.

``--num-gpus G``: the Ray registration with ``G`` GPUs per actor (MinHash on the GPU) against the
same actors on CPUs, on one machine's GPUs; ``benchmarks/gpu_check.sh`` runs it where Ray is.

Usage: ``.venv/bin/python benchmarks/scaleout.py [--part register|dedup] [--size-mb 1000] [--shards 16]
[--docs 200000] [--workers 2] [--rounds 2] [--jobs] [--num-gpus G]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:  # installed (an editable install maps provenance.kernels to kernels/), or laid out on PYTHONPATH
    import provenance  # noqa: F401
except ImportError:
    sys.path[:0] = [str(ROOT)]
DATA = ROOT / "bench-data"

import psutil  # noqa: E402

from provenance import Ledger  # noqa: E402


def make_corpus(size_mb: int, shards: int, seed: int = 0) -> Path:
    from provenance.synthetic import iter_jsonl_lines

    folder = DATA / f"scaleout-{size_mb}mb-{shards}shards-s{seed}"
    if folder.exists():
        return folder
    tmp = folder.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    per_shard = size_mb * 1_000_000 // shards
    lines = iter_jsonl_lines(size_mb * 1_000_000 + 10_000_000, seed=seed)
    for i in range(shards):
        written = 0
        with open(tmp / f"part-{i:05d}.jsonl", "wb") as fh:
            for line in lines:
                fh.write(line)
                written += len(line)
                if written >= per_shard:
                    break
    os.replace(tmp, folder)
    return folder


def busy() -> float:
    """CPU-seconds the whole machine has spent busy (every process: Ray's own daemons too)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def local_arm(corpus: Path, tmp: Path) -> tuple[float, float, int]:
    ledger = Ledger.init(tempfile.mkdtemp(dir=tmp))
    c, t = busy(), time.perf_counter()
    result = ledger.register_dataset("bench", str(corpus), id_field="id")
    wall = time.perf_counter() - t
    return wall, (busy() - c) / wall, result.dataset.n_documents


def ray_arm(corpus: Path, tmp: Path, workers: int, gpus: float | None = None) -> tuple[float, float, int]:
    from provenance.integrations.ray_data import register_dataset

    ledger = Ledger.init(tempfile.mkdtemp(dir=tmp))
    c, t = busy(), time.perf_counter()
    result = register_dataset(ledger, "bench", str(corpus), id_field="id", num_cpus=workers, num_gpus=gpus,
                              staging=tmp)
    wall = time.perf_counter() - t
    return wall, (busy() - c) / wall, result.dataset.n_documents


def job_arm(corpus: Path, tmp: Path, engine: str, workers: int) -> tuple[float, float, int]:
    """``prov dataset add`` as a command (a fresh process: its interpreter, imports and kernel
    loading counted, as the Ray actors' are), with ``--engine ray --address auto`` on the running
    local Ray, or in its own process."""
    ledger = Ledger.init(tempfile.mkdtemp(dir=tmp))
    cmd = [str(Path(sys.executable).with_name("prov")), "--ledger", str(ledger.root), "-q", "dataset", "add",
           "bench", str(corpus), "--id-field", "id", "--json"]
    if engine == "ray":
        cmd += ["--engine", "ray", "--address", "auto", "--num-cpus", str(workers), "--staging", str(tmp)]
    c, t = busy(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, (busy() - c) / wall, json.loads(out.stdout)["dataset"]["n_documents"]


def dedup_arm(ledger, engine: str) -> tuple[float, float, dict]:
    from provenance.audits import audit_dedup
    from provenance.integrations import ray_dedup

    run = audit_dedup if engine == "local" else ray_dedup.audit_dedup
    c, t = busy(), time.perf_counter()
    report = run(ledger, ["big"], threshold=0.8, store=False)
    wall = time.perf_counter() - t
    pairs = sorted((p["a"], p["b"], p["matches"], p["cluster"]) for p in report["pairs"])
    return wall, (busy() - c) / wall, {"summary": report["summary"], "pairs": pairs,
                                       "rounds": report["cluster_rounds"]}


def dedup(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ray
    from audits import insert_dataset, signatures

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-dedup-", dir=DATA) as tmp:
        ledger = Ledger.init(Path(tmp) / "ledger")
        sig, _ = signatures(args.docs, args.dup, seed=0)
        insert_dataset(ledger, "big", sig)
        del sig
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        results: dict[str, list] = {"local": [], "ray": []}
        for round_ in range(args.rounds):
            for arm in (("local", "ray") if round_ % 2 == 0 else ("ray", "local")):
                run = dedup_arm(ledger, arm)
                results[arm].append(run)
                s = run[2]["summary"]
                print(f"round {round_ + 1} {arm}: {run[0]:.1f} s on {run[1]:.2f} cores, {s['pairs']:,} pairs, "
                      f"{s['clusters']:,} clusters, {run[2]['rounds']} cluster rounds", flush=True)
        ray.shutdown()
    same = all(r[2]["pairs"] == results["local"][0][2]["pairs"] for runs in results.values() for r in runs)
    print(f"\ndedup audit of {args.docs:,} documents ({args.dup:.0%} near-copies), threshold 0.8; "
          f"median of {args.rounds} rounds; same pairs and clusters: {same}\n")
    per_core = table(results, args.docs, "docs", "{:,.0f}")
    print(f"\nRay per core / local per core: {per_core['ray'] / per_core['local']:.2f}")


def gpu(args) -> None:
    """The Ray registration with ``--num-gpus`` per actor against the same actors on CPUs: the
    same content hash, and documents per second per GPU."""
    import ray
    import torch

    gpus = torch.cuda.device_count()
    if not gpus:
        sys.exit("--num-gpus: torch sees no CUDA device here")
    corpus = make_corpus(args.size_mb, args.shards)
    ray.init(num_cpus=args.workers, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-gpu-", dir=DATA) as tmp:
        # Warm-up on one shard, untimed: on a fresh machine the first use compiles the CPU kernels
        # (numba, cached to disk) and the Triton one, which would count against the first arm.
        first = sorted(corpus.iterdir())[0]
        ray_arm(first, Path(tmp), args.workers)
        ray_arm(first, Path(tmp), args.workers, args.num_gpus)
        on_cpu = ray_arm(corpus, Path(tmp), args.workers)
        on_gpu = ray_arm(corpus, Path(tmp), args.workers, args.num_gpus)
    ray.shutdown()
    used = min(gpus, args.workers * args.num_gpus)
    print(f"| Ray actors | wall, s | documents | docs/s | docs/s per GPU |\n|---|---|---|---|---|\n"
          f"| {args.workers} on CPUs | {on_cpu[0]:.1f} | {on_cpu[2]:,} | {on_cpu[2] / on_cpu[0]:,.0f} | |\n"
          f"| {args.workers} with {args.num_gpus:g} GPU each | {on_gpu[0]:.1f} | {on_gpu[2]:,} | "
          f"{on_gpu[2] / on_gpu[0]:,.0f} | {on_gpu[2] / on_gpu[0] / used:,.0f} |")


def table(results: dict[str, list], work: float, unit: str, fmt: str) -> dict[str, float]:
    """Print the medians of each arm's ``(wall, cores, ...)`` runs as a Markdown table: ``work``
    (in ``unit``) per second, and per busy core; returns the per-core figures."""
    print(f"| engine | wall, s | {unit}/s | cores busy | {unit}/s per busy core |")
    print("|---|---|---|---|---|")
    per_core = {}
    for arm, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cores = statistics.median(r[1] for r in runs)
        per_core[arm] = work / wall / cores
        print(f"| {arm} | {wall:.1f} | {fmt.format(work / wall)} | {cores:.2f} | {fmt.format(per_core[arm])} |")
    return per_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["register", "dedup"], default="register")
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--dup", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", action="store_true",
                        help="also `prov dataset add` as a command, local and --engine ray --address auto")
    parser.add_argument("--num-gpus", type=float, default=None,
                        help="GPUs per Ray actor: the actors take the MinHash on the GPU (the GPU check runs this)")
    args = parser.parse_args()
    if args.part == "dedup":
        dedup(args)
        return
    if args.num_gpus:
        gpu(args)
        return
    corpus = make_corpus(args.size_mb, args.shards)
    size = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    arms = ("local", "ray") + (("local job", "ray job") if args.jobs else ())
    results: dict[str, list[tuple[float, float, int]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-", dir=DATA) as tmp:
        for round_ in range(args.rounds):
            for arm in (arms if round_ % 2 == 0 else arms[::-1]):
                if arm == "local":
                    run = local_arm(corpus, Path(tmp))
                elif arm == "ray":
                    run = ray_arm(corpus, Path(tmp), args.workers)
                else:
                    run = job_arm(corpus, Path(tmp), arm.split()[0], args.workers)
                results[arm].append(run)
                print(f"round {round_ + 1} {arm}: {run[0]:.1f} s, {size / run[0]:.1f} MB/s on {run[1]:.2f} cores, "
                      f"{run[2]:,} documents", flush=True)
    ray.shutdown()
    print(f"\n{size:,.0f} MB of JSONL in {args.shards} shards; median of {args.rounds} rounds\n")
    per_core = table(results, size, "MB", "{:.1f}")
    print(f"\nRay per core / single process per core: {per_core['ray'] / per_core['local']:.2f} (goal >= 0.8)")
    if args.jobs:
        print(f"as commands (fresh processes both): {per_core['ray job'] / per_core['local job']:.2f}")
    print(f"per core vs datatrove's signature stage at 0.85 MB/s per task: {per_core['ray'] / 0.85:.0f}x (Ray), "
          f"{per_core['local'] / 0.85:.0f}x (single process)")


if __name__ == "__main__":
    main()
