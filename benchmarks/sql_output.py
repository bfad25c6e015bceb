"""``prov sql`` of a whole table as csv and json: wall time and the child process's peak RSS.

A ledger of ``--docs`` generated documents is built (or reused, ``--ledger``); then ``prov sql
"SELECT * FROM documents" --format csv`` (and ``--json``) run as subprocesses writing to
/dev/null, ``--rounds`` times each. Run this script with older code importable as ``provenance``
to compare (the ``prov`` it starts is ``python -m provenance.cli.main`` of the same interpreter).

Usage: ``.venv/bin/python benchmarks/sql_output.py [--docs 200000] [--ledger PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def build(path: Path, docs: int) -> None:
    from provenance import Ledger

    ledger = Ledger.init(path)
    ledger.register_dataset("corpus", ({"id": f"doc-{i:08d}", "text": f"document {i} about topic {i % 97} and {i % 13}"}
                                       for i in range(docs)), id_field="id")


def run(ledger: Path, fmt: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``prov sql`` of every document row, as GNU time
    measures it (a child's own rusage counted the pages it shared with this process at the fork)."""
    command = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "provenance.cli.main", "--ledger", str(ledger),
               "sql", "SELECT * FROM documents", *(["--json"] if fmt == "json" else ["--format", fmt])]
    with open(os.devnull, "w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        sys.exit(f"prov sql failed: {done.stderr[-500:]}")
    seconds, kib = done.stderr.split()[-2:]
    return float(seconds), int(kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--ledger", type=Path, default=None, help="reuse (or build) the ledger here")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ledger = args.ledger or Path(tempfile.mkdtemp(prefix="prov-sql-bench-")) / "ledger"
    if not (ledger / ".prov").exists():
        build(ledger, args.docs)
    import provenance

    result = {"code": str(Path(provenance.__file__).parent.parent), "docs": args.docs}
    for fmt in ("csv", "json"):
        runs = [run(ledger, fmt) for _ in range(args.rounds)]
        result[fmt] = {"median_s": round(statistics.median(r[0] for r in runs), 1),
                       "peak_rss_mib": round(max(r[1] for r in runs))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
