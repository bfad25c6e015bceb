"""Document rows kept as Parquet files against rows in the DuckDB table, side by side.

For ``--docs`` (1M) generated documents (random 128-position signatures with 5% near-copies, as
``benchmarks/audits.py`` makes them; 100 shards), alternating the two arms ``--rounds`` times,
each run in a fresh subprocess with a fresh ledger (so its peak RSS is its own):

- **write**: the registration's last step, putting the staged rows where they are kept. ``table``:
  DuckDB's ``INSERT`` into ``documents`` (one thread, 256 MB, as a registration runs it);
  ``parquet``: the staged file renamed into ``.prov/documents/`` (it holds exactly the columns of
  ``documents``), synced and hashed (xxh3-128); ``copy``: the path of Ray actors' parts and of
  rows copied from an earlier version, DuckDB's ``COPY`` to zstd Parquet files on all threads,
  then synced and hashed; ``bucket``: as ``parquet``, then uploaded to a ledger made with
  ``--documents s3://...`` (a local S3 API server, moto's server mode on 127.0.0.1, which the
  queries then read through). Timed around ``LedgerWriter._put_documents`` alone (the staging
  before it is the same in both arms), and the whole registration transaction.
- **size**: the database file after a checkpoint, and the Parquet files.
- **queries**, on the ledger just written, in the same process: a fresh ``Ledger.open`` (which
  makes the ``documents`` view), a document by key (median of 20), the dataset's documents in
  order, and the dedup audit (``store=False``, threshold 0.8).

Usage: ``.venv/bin/python benchmarks/parquet_documents.py [--docs 1000000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"

CHILD = r"""
import json, resource, statistics, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/benchmarks"]
from audits import insert_dataset, signatures
from provenance import Ledger
from provenance.audits import audit_dedup
from provenance.ledger import document_writes, writer as writer_module

root, arm, docs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if arm == "copy":  # the path of Ray parts and copied shards: DuckDB's COPY rewrites the rows
    document_writes.DOCUMENT_SCHEMA = None

sig, _ = signatures(docs, 0.05, seed=0)
ledger = Ledger.init(root) if arm != "bucket" else Ledger.init(root, documents=sys.argv[5])
put = []
original = writer_module.LedgerWriter._put_documents
def timed(self, *args, **kwargs):
    t = time.perf_counter()
    original(self, *args, **kwargs)
    put.append(time.perf_counter() - t)
writer_module.LedgerWriter._put_documents = timed
t = time.perf_counter()
insert_dataset(ledger, "big", sig, documents_as="table" if arm == "table" else "parquet")
register = time.perf_counter() - t
del sig
with ledger.session():
    ledger._con.execute("CHECKPOINT")
db_bytes = ledger.db_path.stat().st_size
parquet_bytes = sum(f["n_bytes"] for f in ledger.document_files())
t = time.perf_counter()
opened = Ledger.open(root)
with opened.session():
    opened.sql("SELECT 1")
open_s = time.perf_counter() - t
lookups = []
for i in range(20):
    t = time.perf_counter()
    rows = opened.sql("SELECT doc_id FROM documents WHERE dataset_id = 'big@1' AND key = ?", [f"d{i * (docs // 20)}"])
    lookups.append(time.perf_counter() - t)
    assert rows.num_rows == 1
t = time.perf_counter()
n = opened.documents("big@1", columns=["doc_id", "key"]).num_rows
ordered = time.perf_counter() - t
t = time.perf_counter()
report = audit_dedup(opened, ["big"], threshold=0.8, store=False)
audit = time.perf_counter() - t
print(json.dumps({"put": sum(put), "register": register, "db_bytes": db_bytes, "parquet_bytes": parquet_bytes,
                  "open": open_s, "lookup": statistics.median(lookups), "ordered": ordered, "rows": n,
                  "audit": audit, "pairs": report.summary.pairs,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(arm: str, docs: int, tmp: Path, round_: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp / f"{arm}-{round_}"), arm, str(docs), str(ROOT),
                          f"s3://bench/{arm}-{round_}/documents"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the {arm} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", choices=["table", "parquet", "copy", "bucket"],
                        default=["table", "parquet", "copy"])
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-parquet-docs-", dir=DATA))
        if "bucket" in args.arms:  # a local S3 API server; the children inherit its settings
            sys.path.insert(0, str(ROOT))
            from tests import s3server

            stack.enter_context(s3server.running(Path(tmp) / "moto")).bucket("bench")
        for round_ in range(args.rounds):
            for arm in (args.arms if round_ % 2 == 0 else args.arms[::-1]):
                r = run(arm, args.docs, Path(tmp), round_)
                results[arm].append(r)
                print(f"round {round_ + 1} {arm}: put {r['put']:.1f} s, registration {r['register']:.1f} s, "
                      f"audit {r['audit']:.1f} s ({r['pairs']:,} pairs), {r['rss_mib']:.0f} MiB", flush=True)
    pairs = {r["pairs"] for runs in results.values() for r in runs}
    print(f"\n{args.docs:,} documents, median of {args.rounds} rounds; same pairs in every run: {len(pairs) == 1}\n")
    med = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}
    rows = [("put the rows, s", "put", "{:.2f}"), ("registration transaction, s", "register", "{:.2f}"),
            ("rows written, docs/s", None, "{:,.0f}"), ("database file, MB", "db_bytes", "{:.0f}"),
            ("Parquet files, MB", "parquet_bytes", "{:.0f}"), ("open + first query, ms", "open", "{:.0f}"),
            ("document by key, ms", "lookup", "{:.1f}"), ("all documents in order, s", "ordered", "{:.2f}"),
            ("dedup audit, s", "audit", "{:.1f}"), ("peak RSS, MiB", "rss_mib", "{:.0f}")]
    others = [a for a in args.arms if a != "table"]
    print("| measure | " + " | ".join(args.arms) + " | " + " | ".join(f"{a} / table" for a in others) + " |")
    print("|---" * (len(args.arms) + len(others) + 1) + "|")
    for label, key, fmt in rows:
        scale = 1e-6 if key and key.endswith("bytes") else 1000 if key in ("open", "lookup") else 1
        value = {a: args.docs / med[a]["put"] if key is None else med[a][key] * scale for a in args.arms}
        ratios = [f"{value[a] / value['table']:.2f}" if value.get("table") else "-" for a in others]
        print(f"| {label} | " + " | ".join(fmt.format(value[a]) for a in args.arms) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
