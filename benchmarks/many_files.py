"""A folder of many small files registered, then registered again with one file added.

The first registration writes the small shards' document rows in shared row groups (each
shard's rows were a row group of their own, whose metadata the Parquet writer held: 22 KB a file).
The second registration fingerprints the added file only and copies the rows of every unchanged
shard inside DuckDB. Until stranger pass 70 that copy was one ``SELECT`` per shard joined by
``UNION ALL``; 800 files or so ran DuckDB out of its memory limit. Each arm runs in a fresh
subprocess on a fresh ledger and prints wall time, the outcome and the child's peak RSS.

Usage: ``.venv/bin/python benchmarks/many_files.py [--files 2000] [--docs-per-file 5]``. To measure
older code, run this script with that code importable as ``provenance`` (a worktree installed in
another virtual environment, or on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from provenance import Ledger
root, data = Path(sys.argv[1]), Path(sys.argv[2])
ledger = Ledger.init(root)
t = time.perf_counter()
ledger.register_dataset("many", data, id_field="id")
first = time.perf_counter() - t
first_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
(data / "p000" / "added.jsonl").write_text(json.dumps({"id": "added", "text": "one file more"}) + "\n")
t = time.perf_counter()
try:
    again = ledger.register_dataset("many", data, id_field="id")
    outcome = f"{again.dataset.dataset_id}, {again.dataset.n_documents:,} documents"
except Exception as exc:  # the outcome is the measurement
    outcome = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
print(json.dumps({"first_s": round(first, 2), "first_peak_rss_mib": round(first_rss), "again_s": round(time.perf_counter() - t, 2), "outcome": outcome,
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def make_folder(folder: Path, files: int, docs: int) -> None:
    """``files`` JSONL files of ``docs`` short documents each, 100 to a subfolder."""
    for i in range(files):
        sub = folder / f"p{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps({"id": f"{i}-{j}", "text": f"document {j} of file {i}, a few words long"}) for j in range(docs))
        (sub / f"f{i:05d}.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--docs-per-file", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prov-many-files-"))
    try:
        make_folder(work / "data", args.files, args.docs_per_file)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CHILD, str(work / "ledger"), str(work / "data")],
                              capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode:
            sys.exit(done.stderr)
        # (after DuckDB's own progress bar, which a long copy query drew on stdout with no newline)
        result = json.loads(done.stdout[done.stdout.rindex('{"first_s"'):])
        print(f"{args.files:,} files x {args.docs_per_file} documents: first registration {result['first_s']} s "
              f"(peak RSS {result['first_peak_rss_mib']} MiB); "
              f"again with one file added {result['again_s']} s ({result['outcome']}); peak RSS "
              f"{result['peak_rss_mib']} MiB; {time.perf_counter() - started:.1f} s in all "
              f"(children's peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
