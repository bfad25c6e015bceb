"""End-to-end `prov dataset add`: read JSONL, fingerprint, write to the ledger; MB/s and peak RSS.

Generates a JSONL corpus of ``--size-mb`` (default 1000) under ``bench-data/`` (kept between runs,
ignored by git), then in one run, side by side:

1. ``read+parse``: reading the file and ``orjson.loads`` per line, nothing else (the floor any
   registration pays in Python);
2. ``datasketch``: the same plus datasketch's own path on every document (Python shingling and
   ``MinHash.update_batch``), on a sample, extrapolated; this is what a user without provenance
   would run before even writing anything;
3. ``prov dataset add`` in a fresh subprocess on a fresh ledger, timed wall-clock, with the peak
   resident memory of that process (``ru_maxrss`` of the child).

Usage: ``.venv/bin/python benchmarks/register.py [--size-mb 1000] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"


def make_corpus(size_mb: int, seed: int) -> Path:
    from provenance.synthetic import iter_jsonl_lines

    path = DATA / f"register-{size_mb}mb-s{seed}.jsonl"
    if path.exists():
        return path
    DATA.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for line in iter_jsonl_lines(size_mb * 1_000_000, seed=seed):
            fh.write(line)
    os.replace(tmp, path)
    return path


def time_read_parse(path: Path) -> float:
    t = time.perf_counter()
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            n += len(orjson.loads(line)["text"])
    return time.perf_counter() - t


def time_datasketch(path: Path, sample_mb: float) -> tuple[float, float]:
    """Seconds for datasketch on the first ``sample_mb`` of the file, and the MB it covered."""
    from datasketch import MinHash

    from provenance import FingerprintConfig

    cfg = FingerprintConfig()
    done = 0
    t = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            text = orjson.loads(line)["text"]
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=cfg.hashfunc)
            m.update_batch(cfg.shingles(text))
            done += len(line)
            if done >= sample_mb * 1e6:
                break
    return time.perf_counter() - t, done / 1e6


def time_prov(path: Path, workdir: Path) -> tuple[float, int, str]:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    prov = [sys.executable, "-m", "provenance.cli.main"]
    subprocess.run([*prov, "init", str(workdir)], check=True, capture_output=True)
    # Warm numba's on-disk cache so that compile time is not counted.
    subprocess.run(
        [sys.executable, "-c", "from provenance import FingerprintConfig as C; C().signatures(['a b'])"], check=True
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    out = subprocess.run(
        [*prov, "--ledger", str(workdir), "-q", "dataset", "add", "bench", str(path), "--id-field", "id"],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        peak_kb = before  # ru_maxrss of children is the max over all of them
    return wall, peak_kb * 1024, out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--sample-mb", type=float, default=5.0, help="datasketch sample size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    path = make_corpus(args.size_mb, args.seed)
    mb = path.stat().st_size / 1e6
    parse_s = time_read_parse(path)
    ds_s, ds_mb = time_datasketch(path, args.sample_mb)
    prov_s, peak, message = time_prov(path, DATA / "register-ledger")
    ledger_mb = sum(f.stat().st_size for f in (DATA / "register-ledger" / ".prov").rglob("*") if f.is_file()) / 1e6

    rows = [
        ("read+parse (orjson)", mb, parse_s, mb / parse_s),
        ("datasketch (sample, extrapolated)", ds_mb, ds_s, ds_mb / ds_s),
        ("prov dataset add", mb, prov_s, mb / prov_s),
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"input: {path.name}, {mb:,.1f} MB JSONL; {message}")
    print(f"{'method':38s} {'MB':>9s} {'s':>8s} {'MB/s':>8s}")
    for name, size, secs, rate in rows:
        print(f"{name:38s} {size:9.1f} {secs:8.2f} {rate:8.1f}")
    print(
        f"prov dataset add: peak RSS {peak / 2**20:,.0f} MiB; ledger on disk {ledger_mb:,.0f} MB; "
        f"{(mb / prov_s) / (ds_mb / ds_s):.1f}x datasketch's throughput"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "input_mb": mb,
                    "rows": [dict(zip(("method", "mb", "seconds", "mb_per_s"), r)) for r in rows],
                    "peak_rss_bytes": peak,
                    "ledger_mb": ledger_mb,
                    "message": message,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
