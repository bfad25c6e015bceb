"""The ledger as a service, side by side with the same work on a local ledger.

Parts (``--part``, repeatable; default all), each against a real ``prov serve`` subprocess on
127.0.0.1 with an admin token:

- ``register``: ``prov dataset add`` of a ``--size-mb`` JSONL corpus (``bench-data/``, made once)
  into a local ledger, and the same command with ``--ledger http://...`` (the client reads and
  fingerprints, uploads Arrow IPC, the server registers): MB/s of each and their ratio.
- ``examples``: ``log_examples`` over HTTP from 4 client processes at once (batches of 262,144 keys,
  sent as Arrow), aggregate examples/s; beside it one local process logging as many.
- ``lineage``: ``lineage()`` of the tip of the 10,000-version benchmark ledger
  (``benchmarks/audits.py``), in a local session and over HTTP: p50 of each and the overhead.
- ``commit``: commit and checkout of a 475 MiB state (GPT-2 small's shapes), local and over HTTP,
  ``--repeats`` rounds of a new state each.
- ``load``: 1, 4 and 16 client processes, each for ``--seconds`` doing a cycle of reads (a
  version, a lineage, the datasets) and a small commit; p50 and p99 latency per request.

Usage: ``.venv/bin/python benchmarks/service.py [--part register] [--size-mb 1000]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from provenance import Ledger  # noqa: E402
from tests import serving  # noqa: E402

PROV = [sys.executable, "-m", "provenance.cli.main"]


def _timed_cmd(args: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t


def part_register(args, tmp: Path) -> list[str]:
    from register import make_corpus

    corpus = make_corpus(args.size_mb, 0)
    mb = corpus.stat().st_size / 1e6
    subprocess.run([sys.executable, "-c", "from provenance import FingerprintConfig as C; C().signatures(['a b'])"],
                   check=True)  # numba's cache warm: compile time not counted
    local = tmp / "reg-local"
    subprocess.run([*PROV, "init", str(local)], check=True, capture_output=True)
    t_local = _timed_cmd([*PROV, "--ledger", str(local), "-q", "dataset", "add", "bench", str(corpus), "--id-field", "id"])
    with serving.running(tmp / "reg-served") as server:
        t_remote = _timed_cmd([*PROV, "--ledger", server.url, "-q", "dataset", "add", "bench", str(corpus),
                               "--id-field", "id"], env={"PROV_TOKEN": server.token})
        same = Ledger.open(local).dataset("bench").content_hash == server.ledger().dataset("bench").content_hash
    return [f"| register {mb:,.0f} MB of JSONL | local {mb / t_local:.1f} MB/s ({t_local:.1f} s) | over HTTP "
            f"{mb / t_remote:.1f} MB/s ({t_remote:.1f} s) | **{t_local / t_remote:.2f}×** | same content hash: {same} |"]


def _log_worker(url: str, token: str, dataset: str, keys: list[str], n: int, out: mp.Queue) -> None:
    ledger = Ledger.open(url, token=token)
    run = ledger.start_run(datasets=[dataset], message="bench")  # batches of REMOTE_FLUSH keys
    batch = np.array(keys, dtype=object)
    t = time.perf_counter()
    sent = 0
    while sent < n:
        run.log_examples(batch.tolist(), step=sent)
        sent += len(batch)
    run.finish()
    out.put((sent, time.perf_counter() - t))


def part_examples(args, tmp: Path) -> list[str]:
    docs = [{"id": f"k{i}", "text": f"example document {i} for the log"} for i in range(65_536)]
    keys = [d["id"] for d in docs]
    n = args.examples
    local = Ledger.init(tmp / "ex-local")
    local.register_dataset("logs", docs, id_field="id")
    t = time.perf_counter()
    run = local.start_run(datasets=["logs"], message="bench", flush_every=1_000_000)
    for step in range(0, 4 * n, len(keys)):
        run.log_examples(keys, step=step)
    run.finish()
    local_rate = 4 * n / (time.perf_counter() - t)
    with serving.running(tmp / "ex-served") as server:
        server.ledger().register_dataset("logs", docs, id_field="id")
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_log_worker, args=(server.url, server.token, "logs", keys, n, out)) for _ in range(4)]
        t = time.perf_counter()
        for p in procs:
            p.start()
        results = [out.get(timeout=1800) for _ in procs]
        wall = time.perf_counter() - t
        for p in procs:
            p.join()
    total = sum(r[0] for r in results)
    in_loop = total / max(r[1] for r in results)
    return [f"| log_examples, {total:,} examples | local, one process: {local_rate:,.0f}/s | over HTTP, 4 processes: "
            f"{in_loop:,.0f}/s while logging ({total / wall:,.0f}/s with start-up) | {in_loop / local_rate:.2f}× | "
            f"target ≥ 1,000,000/s |"]


def part_lineage(args, tmp: Path) -> list[str]:
    """The local side runs on a copy of the served ledger (the server holds the original), the two
    calls alternate, and the overhead is the median of the paired differences: this machine's
    run-to-run spread of the query itself (±20 ms) would otherwise swamp what HTTP adds."""
    import shutil

    from audits import build_lineage_ledger

    ledger, vids, _, rows = build_lineage_ledger(tmp / "lin" / "ledger-root", 10_000, 100_000, 1)
    tip = vids[-1]
    _, token = ledger.issue_token("admin", "admin")
    shutil.copytree(tmp / "lin" / "ledger-root", tmp / "lin" / "copy")
    local = Ledger.open(tmp / "lin" / "copy")
    reps = args.repeats * 10
    with serving.running(tmp / "lin" / "ledger-root", token=token) as server, local.session():
        remote = server.ledger()
        assert remote.lineage(tip).to_dict() == local.lineage(tip).to_dict()
        times: dict[str, list[float]] = {"local": [], "remote": []}
        for i in range(reps):
            for side in (("local", "remote") if i % 2 else ("remote", "local")):
                fn = local.lineage if side == "local" else remote.lineage
                t = time.perf_counter()
                fn(tip)
                times[side].append(time.perf_counter() - t)
    lo, re_ = statistics.median(times["local"]) * 1e3, statistics.median(times["remote"]) * 1e3
    diffs = sorted((r - lc) * 1e3 for r, lc in zip(times["remote"], times["local"]))
    over = statistics.median(diffs)
    return [f"| lineage() of the tip, 10,000-version ledger ({rows:,} run_shards rows), {reps} calls each, "
            f"alternating | local in a session p50 {lo:.0f} ms | over HTTP p50 {re_:.0f} ms | overhead p50 "
            f"{over:+.1f} ms (paired; quartiles {diffs[len(diffs) // 4]:+.0f}…{diffs[3 * len(diffs) // 4]:+.0f}) "
            f"| target ≤ +10 ms |"]


def part_commit(args, tmp: Path) -> list[str]:
    """``--repeats`` rounds, each committing a new state (so no object is already stored) locally
    and over HTTP, then checking both out; ``os.sync()`` before each timed step, so that one
    step's write-back does not land on the next (both sides sync their objects and outputs)."""
    import torch
    from safetensors.torch import load_file
    from versions import gpt2_small_state

    local = Ledger.init(tmp / "c-local")
    times: dict[str, list[float]] = {"commit": [], "r_commit": [], "checkout": [], "r_checkout": []}
    same = True

    def timed(key: str, fn, *a, **kw):
        os.sync()
        t = time.perf_counter()
        out = fn(*a, **kw)
        times[key].append(time.perf_counter() - t)
        return out

    with serving.running(tmp / "c-served") as server:
        remote = server.ledger()
        for r in range(args.repeats):
            state = gpt2_small_state(r)
            mib = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
            v = timed("commit", local.commit, state, message="local")
            rv = timed("r_commit", remote.commit, state, message="remote")
            timed("checkout", local.checkout, v, tmp / f"local-{r}.safetensors")
            timed("r_checkout", remote.checkout, rv, tmp / f"remote-{r}.safetensors")
            a, b = load_file(str(tmp / f"local-{r}.safetensors")), load_file(str(tmp / f"remote-{r}.safetensors"))
            same = same and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            for f in tmp.glob("*.safetensors"):
                f.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}

    def span(key: str) -> str:
        return f"{min(times[key]):.2f}–{max(times[key]):.2f} s"

    return [f"| commit of a {mib:.0f} MiB state, {args.repeats} rounds | local median {med['commit']:.2f} s "
            f"({span('commit')}) | over HTTP median {med['r_commit']:.2f} s ({span('r_commit')}) | "
            f"**{med['commit'] / med['r_commit']:.2f}×** | target ≥ 0.5× |",
            f"| checkout of it to a file | local median {med['checkout']:.2f} s ({span('checkout')}) | over HTTP median "
            f"{med['r_checkout']:.2f} s ({span('r_checkout')}) | **{med['checkout'] / med['r_checkout']:.2f}×** | "
            f"bit-identical: {same}; target ≥ 0.5× |"]


def _load_worker(url: str, token: str, version: str, seconds: float, seed: int, out: mp.Queue) -> None:
    import torch

    ledger = Ledger.open(url, token=token)
    lat: dict[str, list[float]] = {"read": [], "write": []}
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        for kind, fn in (("read", lambda: ledger.version(version)), ("read", lambda: ledger.lineage(version)),
                         ("read", ledger.datasets),
                         ("write", lambda i=i: ledger.commit({"w": torch.full((16,), float(seed * 100_000 + i))},
                                                             message="load"))):
            t = time.perf_counter()
            fn()
            lat[kind].append(time.perf_counter() - t)
        i += 1
    out.put(lat)


def part_load(args, tmp: Path) -> list[str]:
    import torch

    lines = []
    with serving.running(tmp / "load") as server:
        ledger = server.ledger()
        ledger.register_dataset("d", [{"id": f"x{i}", "text": f"text {i}"} for i in range(1000)], id_field="id")
        with ledger.start_run(datasets=["d"], message="seed") as run:
            run.log_examples([f"x{i}" for i in range(1000)])
            version = run.commit({"w": torch.zeros(16)}).version_id
        ctx = mp.get_context("spawn")
        for clients in (1, 4, 16):
            out = ctx.Queue()
            procs = [ctx.Process(target=_load_worker, args=(server.url, server.token, version, args.seconds, c, out))
                     for c in range(clients)]
            for p in procs:
                p.start()
            results = [out.get(timeout=args.seconds + 300) for _ in procs]
            for p in procs:
                p.join()
            reads = sorted(x for r in results for x in r["read"])
            writes = sorted(x for r in results for x in r["write"])

            def q(xs: list[float], f: float) -> float:
                return xs[min(len(xs) - 1, int(f * len(xs)))] * 1e3

            lines.append(f"| load, {clients} client(s), {args.seconds:g} s each | reads p50 {q(reads, .5):.1f} ms, "
                         f"p99 {q(reads, .99):.1f} ms | commits p50 {q(writes, .5):.1f} ms, p99 {q(writes, .99):.1f} ms | "
                         f"{(len(reads) + len(writes)) / args.seconds:,.0f} requests/s | errors 0 |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=["register", "examples", "lineage", "commit", "load"])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=2_000_000, help="examples per client process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    parts = args.part or ["register", "examples", "lineage", "commit", "load"]
    fns = {"register": part_register, "examples": part_examples, "lineage": part_lineage, "commit": part_commit,
           "load": part_load}
    lines = []
    with tempfile.TemporaryDirectory(prefix="prov-bench-service-") as tmp:
        for part in parts:
            rows = fns[part](args, Path(tmp) / part)
            for r in rows:
                print(r, flush=True)
            lines += rows
    print("\nresults\n| measure | baseline | provenance | ratio | detail |\n|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
