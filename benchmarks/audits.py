"""Audits at scale, side by side with what users would otherwise run.

Parts (``--part``, default all):

- ``dedup``: a dedup audit over ``--docs`` documents' signatures (1M by default) end to end, in a
  fresh subprocess so its peak RSS is its own; and at ``--compare-docs`` (100K) the same audit
  against datasketch's ``MinHashLSH`` inserting and querying the same signatures (then checking
  each candidate's estimated Jaccard, so both sides produce the pairs).
- ``lineage``: ``lineage()`` of the tip and of random versions of a DAG of ``--versions``
  (10,000, every tenth a merge of two earlier versions) whose runs trained on ``--shards``
  (100,000) shards.
- ``taint``: taint of one document with ``near=0.8`` among the ``--docs`` documents.
- ``cluster``: one large near-duplicate cluster, ``--variants`` (2,000, 8,000, 20,000) texts of
  one 60-word template with one word replaced each, among 2,000 unrelated texts, fingerprinted
  from text: the audit with its default bucket window (64) against the same audit comparing
  every two documents of a band bucket (``bucket_window=0``, up to ``--exact-variants``), each in
  a fresh subprocess, with its peak RSS and the peak size of the ledger's spill folder, and the
  documents the window left out of the exact audit's clusters.
- ``gate``: the pre-merge gate and the memorization audit over the same kind of cluster on one
  contributor's side: ``--variants`` template texts and 1,000 unrelated ones trained by one
  contributor, 2,000 texts by another (1,000 of them near copies of the first's unrelated ones,
  and, in a second ledger, ``--shared`` of the template texts too: 50 by default, ``all`` puts the
  whole cluster on both sides, ``all-near`` as near copies, a word added to each, ``all-variants``
  as variants of its own, ``all-far`` as variants near none of the first's), 25 evaluation texts (5 of them template variants); the gate
  without its span check (``ngram=0``), the memorization audit of 3 template texts and an
  unrelated one without its span check, each in a fresh subprocess.
- ``spans``: the memorization audit's span check with many samples: ``--samples`` (1,000 and
  4,000) samples, each a 30-word training document copied after three words of its own, against
  those documents and 12,000 unrelated 30-word ones (one epoch), with ``span=20`` (the default,
  50 words, is longer than these documents), in a fresh subprocess; the report's spans are hashed, so two checkouts' reports can be
  compared.
- ``store``: the ledger's file as stored audits come and go: the memorization audit above
  (8,000 variants, or the second of ``--variants``) stored twice, its pairs counted by
  ``audits()``, one audit's pairs deleted (``pairs_only``) and the other deleted whole, then a
  third run; each step in a fresh subprocess.

The signature corpora are generated, not fingerprinted from text: random 128-position signatures
with ``--dup`` (1%) of the documents near-copies of an earlier one at an estimated Jaccard drawn
uniformly from [0.7, 1], inserted as one registered dataset of 100 shards with the band keys the
fingerprint config stores. The accuracy of the audit on real text is ``benchmarks/audit_accuracy.py``.

Usage: ``.venv/bin/python benchmarks/audits.py [--part dedup|lineage|taint|cluster|gate|spans|store] [--docs 1000000]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

K = 128


def signatures(n: int, dup: float, seed: int) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """``uint32[n, K]`` random signatures, ``dup`` of them near-copies ``(copy, original, J)``."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 2**32, size=(n, K), dtype=np.uint32)
    copies = np.flatnonzero(rng.random(n) < dup)
    copies = copies[copies > 0]
    planted = []
    for c in copies.tolist():
        o = int(rng.integers(0, c))
        j = float(rng.uniform(0.7, 1.0))
        keep = rng.random(K) < j
        sig[c] = np.where(keep, sig[o], sig[c])
        planted.append((c, o, float(np.mean(keep))))
    return sig, planted


def insert_dataset(ledger, name: str, sig: np.ndarray, shards: int = 100, documents_as: str = "auto") -> None:
    """Register ``sig`` as dataset ``name`` (documents ``d0``, ``d1``, ...) straight into the
    ledger, its rows kept as ``documents_as`` says (the table, Parquet files, or by size)."""
    from provenance.fingerprints import FingerprintConfig
    from provenance.kernels.minhash import band_keys
    from provenance.records import DatasetRecord, License, ShardRecord

    cfg = FingerprintConfig(num_perm=K, lsh_threshold=0.8)
    banding = cfg.banding
    n = len(sig)
    per = -(-n // shards)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    ds = DatasetRecord(dataset_id=f"{name}@1", name=name, version=1, role="train", license=License(),
                       text_field="text", config=cfg, config_id=cfg.identity, unicode_version="15.0.0",
                       bands=banding.bands, rows=banding.rows, content_hash=f"generated-{name}", n_shards=shards,
                       n_documents=n, n_bytes=0, n_tokens=0, created_at=now)
    with ledger.transaction() as tx:
        tx.set_documents_as(documents_as)
        tx.ensure_config(cfg)
        tx.insert_dataset(ds)
        tx.insert_shards([ShardRecord(dataset_id=ds.dataset_id, shard_index=i, shard_id=f"{i:032x}",
                                      name=f"part-{i:05d}", format="jsonl", n_bytes=0,
                                      n_documents=min(per, n - i * per), n_tokens=0) for i in range(shards)])
        first = tx.next_doc_id()
        rng = np.random.default_rng(1)
        with tx.document_stage() as stage:
            for lo in range(0, n, 100_000):
                hi = min(n, lo + 100_000)
                s = np.ascontiguousarray(sig[lo:hi])
                keys = band_keys(s, banding.bands, banding.rows)
                m = hi - lo
                idx = np.arange(lo, hi)
                stage.write(pa.table({
                    "doc_id": pa.array(first + idx, pa.int64()),
                    "dataset_id": pa.array([ds.dataset_id] * m, pa.string()),
                    "shard_index": pa.array((idx // per).astype(np.int32)),
                    "row_index": pa.array(idx % per, pa.int64()),
                    "line": pa.nulls(m, pa.int64()),
                    "key": pa.array([f"d{i}" for i in idx.tolist()], pa.string()),
                    "exact_hash": pa.array(rng.integers(0, 2**63, m, dtype=np.uint64)),
                    "token_count": pa.array(np.full(m, 200, np.int32)),
                    "n_bytes": pa.array(np.full(m, 1200, np.int32)),
                    "signature": pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * K, K, dtype=np.int32)),
                                                          pa.array(s.reshape(-1))),
                    "band_keys": pa.ListArray.from_arrays(
                        pa.array(np.arange(0, (m + 1) * banding.bands, banding.bands, dtype=np.int32)),
                        pa.array(keys.reshape(-1))),
                }))


CHILD = r"""
import json, resource, sys, time
from provenance import Ledger
from provenance.audits import audit_dedup
ledger = Ledger.open(sys.argv[1])
options = {"threshold": 0.8, **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})}
t = time.perf_counter()
report = audit_dedup(ledger, [sys.argv[2]], pairs_file=sys.argv[3], **options)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "summary": report.summary.model_dump(), "banding": [report.banding.bands, report.banding.rows]}))
"""


def run_audit(root: Path, dataset: str, pairs: Path, **options) -> dict:
    """The audit in a fresh subprocess; ``spill_mib``: the peak size of the ledger's spill
    folder while it ran (polled every 50 ms)."""
    spill = root / ".prov" / "tmp"
    peak = [0]
    done = threading.Event()

    def size_of(path: Path) -> int:
        try:
            return path.stat().st_size if path.is_file() else 0
        except OSError:  # a spill file removed between the listing and its stat
            return 0

    def poll() -> None:
        while not done.wait(0.05):
            try:
                size = sum(size_of(f) for f in spill.rglob("*")) if spill.is_dir() else 0
            except OSError:  # the folder changed while it was listed: the next poll counts it
                continue
            peak[0] = max(peak[0], size)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), dataset, str(pairs), json.dumps(options)],
                             capture_output=True, text=True, check=True)
    finally:
        done.set()
        watcher.join()
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "spill_mib": peak[0] / 2**20}


def datasketch_pairs(sig: np.ndarray) -> tuple[float, set[tuple[int, int]]]:
    """MinHashLSH at 0.8 over the same signatures, given as ``LeanMinHash`` objects (the
    cheapest way to hand datasketch stored signatures: no permutations are set up): insert all,
    query each, keep candidates whose estimated Jaccard is >= 0.8. Returns seconds and the pairs."""
    from datasketch import LeanMinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=K)
    hashes = [LeanMinHash(seed=1, hashvalues=row.astype(np.uint64), scheme="affine32") for row in sig]
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            session.insert(i, m)
    pairs = set()
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j > i and np.count_nonzero(sig[i] == sig[j]) >= 0.8 * K:
                pairs.add((i, j))
    return time.perf_counter() - t, pairs


def part_dedup(args, tmp: Path) -> list[str]:
    from provenance import Ledger

    lines = []
    root = tmp / "dedup"
    ledger = Ledger.init(root)
    sig, planted = signatures(args.docs, args.dup, seed=0)
    t = time.perf_counter()
    insert_dataset(ledger, "big", sig)
    print(f"inserted {args.docs:,} signatures in {time.perf_counter() - t:.1f} s", flush=True)
    small, small_planted = signatures(args.compare_docs, args.dup, seed=1)
    insert_dataset(ledger, "small", small)
    del ledger
    big = run_audit(root, "big", tmp / "big.parquet")
    print("audit big", big, flush=True)
    at_threshold = [p for p in planted if p[2] >= 0.85]
    import pyarrow.parquet as pq

    found = pq.read_table(tmp / "big.parquet", columns=["a", "b"]).to_pydict()
    found = {tuple(sorted((int(a[1:]), int(b[1:])))) for a, b in zip(found["a"], found["b"])}
    recall = sum(tuple(sorted(p[:2])) in found for p in at_threshold) / max(1, len(at_threshold))
    lines.append(f"| dedup audit, {args.docs:,} documents (end to end) | {big['seconds']:.1f} s | "
                 f"peak RSS {big['peak_mib']:.0f} MiB | {big['summary']['pairs']:,} pairs; recall of planted "
                 f"pairs with J >= 0.85: {recall:.4f} | target < 60 s, < 4 GB |")
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternating, so that the machine's drift falls on both
        ours.append(run_audit(root, "small", tmp / "small.parquet"))
        theirs.append(datasketch_pairs(small))
    ours_s = statistics.median(r["seconds"] for r in ours)
    theirs_s = statistics.median(t for t, _ in theirs)
    found_small = pq.read_table(tmp / "small.parquet", columns=["a", "b"]).to_pydict()
    found_small = {tuple(sorted((int(a[1:]), int(b[1:])))) for a, b in zip(found_small["a"], found_small["b"])}
    ds_pairs = theirs[0][1]
    lines.append(f"| dedup, {args.compare_docs:,} documents: provenance audit vs datasketch MinHashLSH insert+query "
                 f"| {ours_s:.2f} s vs {theirs_s:.2f} s | **{theirs_s / ours_s:.1f}× faster** | pairs {len(found_small):,} vs "
                 f"{len(ds_pairs):,} (in both {len(found_small & ds_pairs):,}) | target ≥ 10× |")
    return lines


def part_lineage(args, tmp: Path) -> list[str]:
    ledger, vids, receipts, n_run_shards = build_lineage_ledger(tmp / "lineage", args.versions, args.shards,
                                                                 args.runs_per_shard)
    rng = np.random.default_rng(3)
    n_versions, n_shards = args.versions, args.shards
    tip = vids[-1]
    lin = ledger.lineage(tip)
    picks = rng.choice(vids, 15).tolist()

    def measure() -> tuple[float, float]:
        times, rand = [], []
        for _ in range(args.repeats * 3):
            t = time.perf_counter()
            ledger.lineage(tip)
            times.append(time.perf_counter() - t)
        for v in picks:
            t = time.perf_counter()
            ledger.lineage(v)
            rand.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3, statistics.median(rand) * 1e3

    cold_tip, cold_rand = measure()  # each call opens the database, as one CLI command does
    with ledger.session():  # a process that keeps the ledger open (a service, a notebook)
        warm_tip, warm_rand = measure()
    return [f"| lineage of a {n_versions:,}-version DAG ({len(receipts):,} merges) over {n_shards:,} shards, "
            f"{n_run_shards:,} run_shards rows | tip ({len(lin.versions):,} versions, "
            f"{lin.shards.num_rows:,} shards): p50 {cold_tip:.0f} ms, {warm_tip:.0f} ms in a session | "
            f"15 random versions: p50 {cold_rand:.0f} ms, {warm_rand:.0f} ms in a session | | target p50 < 100 ms |"]


def build_lineage_ledger(root: Path, n_versions: int = 10_000, n_shards: int = 100_000, runs_per_shard: int = 1):
    """A ledger whose version DAG has ``n_versions`` versions (a merge every tenth) and whose runs
    train on ``n_shards`` shards, each about ``runs_per_shard`` times, written by bulk inserts:
    ``(ledger, version ids, merge ids, run_shards rows)``."""
    from provenance import Ledger

    ledger = Ledger.init(root)
    rng = np.random.default_rng(2)
    datasets = 100
    per_ds = n_shards // datasets
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    from provenance.fingerprints import FingerprintConfig

    cfg = FingerprintConfig()
    vids = [f"{i:032x}" for i in range(1, n_versions + 1)]
    parents, runs, receipts = [], [], []
    for i, v in enumerate(vids):
        if i == 0:
            parents.append([])
        elif i % 10 == 0:
            a, b = int(rng.integers(0, i)), i - 1
            parents.append([vids[b], vids[a]] if a != b else [vids[b]])
            if a != b:
                receipts.append(v)
        else:
            back = 1 if rng.random() < 0.9 else int(rng.integers(2, 21))  # mostly the line's tip, else a branch
            parents.append([vids[max(0, i - back)]])
        runs.append(None if v in receipts else f"{i:032x}r")
    run_rows = [(r, vids[i]) for i, r in enumerate(runs) if r]
    # each run trains on a contiguous block of shards_per_run shards of one or two datasets, so each
    # shard is trained on by about --runs-per-shard runs
    shards_per_run = max(1, n_shards * runs_per_shard // max(1, len(run_rows)))
    starts = rng.integers(0, n_shards - shards_per_run, size=len(run_rows))
    shard_of_run = starts[:, None] + np.arange(shards_per_run)[None, :]
    with ledger.transaction() as tx:
        con = tx._con
        for d in range(datasets):
            con.execute(
                """INSERT INTO datasets VALUES (?, ?, 1, 'train', 'CC-BY-4.0', false, false, true, false, NULL, NULL,
                   NULL, 'text', NULL, ?, ?, '15.0.0', 21, 6, ?, ?, 0, 0, 0, 0, 0, ?)""",
                [f"ds{d}@1", f"ds{d}", cfg.identity, cfg.model_dump_json(), f"h{d}", per_ds, now])
        con.register("s", pa.table({"dataset_id": [f"ds{i // per_ds}@1" for i in range(n_shards)],
                                    "shard_index": pa.array([i % per_ds for i in range(n_shards)], pa.int32())}))
        con.execute("""INSERT INTO shards SELECT dataset_id, shard_index, md5(dataset_id || shard_index), 'part-' || shard_index,
                       NULL, 'jsonl', NULL, 0, 100, 0 FROM s""")
        con.register("v", pa.table({"version_id": vids, "parents": parents, "run_id": runs}))
        con.execute("""INSERT INTO versions SELECT version_id, parents, 'v', NULL, now()::TIMESTAMP, run_id, 0, 0, 0, 0 FROM v""")
        con.register("r", pa.table({"run_id": [r for r, _ in run_rows], "version_id": [v for _, v in run_rows]}))
        con.execute("""INSERT INTO runs SELECT run_id, NULL, 'r', NULL, '{}', 'finished', NULL, now()::TIMESTAMP,
                       now()::TIMESTAMP, version_id, 'bench', 0, 0 FROM r""")
        flat_run = np.repeat(np.arange(len(run_rows)), shard_of_run.shape[1])
        flat_shard = shard_of_run.reshape(-1)
        con.register("rs", pa.table({"run_id": [run_rows[i][0] for i in flat_run.tolist()],
                                     "dataset_id": [f"ds{s // per_ds}@1" for s in flat_shard.tolist()],
                                     "shard_index": pa.array((flat_shard % per_ds).astype(np.int32))}))
        con.execute("""INSERT INTO run_shards SELECT DISTINCT ON (run_id, dataset_id, shard_index) run_id, dataset_id,
                       shard_index, 100, 100, 1.0, false FROM rs""")
        con.execute("INSERT INTO run_datasets SELECT DISTINCT run_id, dataset_id, 1.0 FROM run_shards")
        con.register("m", pa.table({"version_id": receipts}))
        con.execute("""INSERT INTO merge_receipts SELECT version_id, 'average', [], [0.5, 0.5], NULL, NULL, NULL, NULL,
                       'torch', '{}', NULL, now()::TIMESTAMP FROM m""")
    return ledger, vids, receipts, len(run_rows) * shards_per_run


def part_taint(args, tmp: Path) -> list[str]:
    from provenance import Ledger
    from provenance.audits import taint_report

    root = tmp / "taint"
    ledger = Ledger.init(root)
    sig, planted = signatures(args.docs, args.dup, seed=3)
    insert_dataset(ledger, "big", sig)
    times, found = [], []
    for _, original, _ in planted[: args.repeats * 2]:
        t = time.perf_counter()
        report = taint_report(ledger, dataset="big", key=f"d{original}", near=0.8)
        times.append(time.perf_counter() - t)
        found.append(len(report["matches"]))
    return [f"| taint of one document, near >= 0.8, among {args.docs:,} documents | p50 "
            f"{statistics.median(times):.2f} s | matches per query {statistics.median(found):.0f} | | target < 5 s |"]


def clusters_of(path: Path) -> dict[str, int]:
    """Each document of a pairs file with its cluster."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["a", "b", "cluster"]).to_pydict()
    return {**dict(zip(t["a"], t["cluster"])), **dict(zip(t["b"], t["cluster"]))}


def part_cluster(args, tmp: Path) -> list[str]:
    from provenance import Ledger
    from provenance.synthetic import template_variants

    lines = []
    for n in args.variants:
        root = tmp / f"cluster{n}"
        docs = template_variants(n, others=2_000)
        (tmp / f"variants{n}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        Ledger.init(root).register_dataset("variants", tmp / f"variants{n}.jsonl", id_field="id")
        runs = {}
        for window in (64, 0):
            if window == 0 and n > args.exact_variants:
                continue
            runs[window] = run_audit(root, "variants", tmp / f"pairs{n}-{window}.parquet", bucket_window=window)
            print(n, window, runs[window], flush=True)
        w = runs[64]
        s = w["summary"]
        row = (f"| {n:,} variants + 2,000 others | window 64: {w['seconds']:.1f} s, {w['peak_mib']:.0f} MiB, spill "
               f"{w['spill_mib']:.0f} MiB, {s['pairs']:,} pairs, largest cluster {s['largest_cluster']:,}, "
               f"{s['windowed_buckets']} buckets windowed")
        if 0 in runs:
            e = runs[0]
            exact, windowed = clusters_of(tmp / f"pairs{n}-0.parquet"), clusters_of(tmp / f"pairs{n}-64.parquet")
            left_out = len(set(exact) - set(windowed))
            row += (f" | every pair: {e['seconds']:.1f} s, {e['peak_mib']:.0f} MiB, spill {e['spill_mib']:.0f} MiB, "
                    f"{e['summary']['pairs']:,} pairs, largest cluster {e['summary']['largest_cluster']:,} | "
                    f"**{e['seconds'] / w['seconds']:.1f}× faster**; {left_out} of {len(exact):,} clustered "
                    f"documents left out by the window |")
        else:
            row += " | every pair: not run | |"
        lines.append(row)
    # sparser links: 1,500 variants of a 100-word template at 0.9 (about 17 near pairs a document)
    root = tmp / "sparse"
    (tmp / "sparse.jsonl").write_text("".join(json.dumps(d) + "\n" for d in template_variants(1_500, words=100)))
    Ledger.init(root).register_dataset("sparse", tmp / "sparse.jsonl", id_field="id")
    found = {}
    for window in (0, 64, 16):
        r = run_audit(root, "sparse", tmp / f"sparse-{window}.parquet", bucket_window=window, threshold=0.9)
        found[window] = (r, len(clusters_of(tmp / f"sparse-{window}.parquet")))
    lines.append("| 1,500 variants of 100 words at 0.9 | " + "; ".join(
        f"window {w}: {r['seconds']:.1f} s, {r['summary']['pairs']:,} pairs, {r['summary']['clusters']} clusters "
        f"(largest {r['summary']['largest_cluster']:,}), {n:,} documents in clusters"
        for w, (r, n) in found.items()) + " | | | |")
    return lines


GATE_CHILD = r"""
import json, resource, sys, time
from provenance import Ledger
from provenance.gate import audit_merge
from provenance.memorization import audit_memorization
ledger = Ledger.open(sys.argv[1])
kind, a, b = sys.argv[2:5]
t = time.perf_counter()
if kind == "gate":
    r = audit_merge(ledger, [a, b], store=False, ngram=0)
    o, c = r.overlap[0], r.contamination
    found = {"a_near": o.a_near, "a_exact": o.a_exact, "b_near": o.b_near, "b_exact": o.b_exact,
             "training_near": c.training_near, "contaminated": c.contaminated_eval_documents}
else:
    r = audit_memorization(ledger, a, json.loads(sys.argv[5]), store=False, span=0)
    found = {"samples_matching": r.summary.samples_matching_training,
             "documents_matched": r.summary.training_documents_matched,
             "near_copies": [m.near_copies for s in r.samples for m in s.matches[:1]]}
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "found": found}))
"""


def gate_ledger(root: Path, tmp: Path, n: int, shared: int, copies: str = "exact") -> tuple[str, str, list[str]]:
    """A ledger of two contributors on one base (module doc, ``gate``): their version ids, and
    the memorization samples. ``copies``: what the other contributor's ``shared`` template texts
    are: ``exact`` copies of the first's, ``near`` copies (a word added), ``variants`` of
    their own (another word replaced: near only those of the first's that replaced the same
    place), or ``far`` variants (three words replaced: near none of the first's, though in the
    same band buckets: every pair across must be compared)."""
    import torch

    from provenance import Ledger
    from provenance.synthetic import template_variants

    a = template_variants(n, others=1_000)
    b = [{"id": f"b{i}", "text": d["text"] + f" tail{i} end{i}"} for i, d in enumerate(template_variants(0, others=2_000))]
    if copies == "variants":
        b += [{"id": f"bv{i}", "text": d["text"].replace(f"x{i}", f"y{i}")}
              for i, d in enumerate(template_variants(shared, seed=3))]
    elif copies == "far":  # three words replaced: in the template's band buckets, near none of a's
        rng = np.random.default_rng(3)
        for i, d in enumerate(template_variants(shared, seed=3)):
            words = d["text"].replace(f"x{i}", f"y{i}").split()
            for at in rng.choice(len(words), 2, replace=False).tolist():
                words[at] = f"z{i}r{at}"
            b.append({"id": f"bv{i}", "text": " ".join(words)})
    else:
        b += [{"id": f"bv{i}", "text": a[i]["text"] + (f" near{i}" if copies == "near" else "")} for i in range(shared)]
    ev = [{"id": f"e{i}", "text": " ".join(f"e{i}w{j}" for j in range(60))} for i in range(20)]
    ev += [{"id": f"ev{i}", "text": d["text"].replace("t1 ", "q1 ")} for i, d in enumerate(template_variants(5, seed=11))]
    for name, docs in (("a", a), ("b", b), ("ev", ev)):
        (tmp / f"{root.name}-{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    ledger = Ledger.init(root)
    for name in ("a", "b", "ev"):
        ledger.register_dataset(name, tmp / f"{root.name}-{name}.jsonl", id_field="id", **({"role": "eval"} if name == "ev" else {}))
    with ledger.start_run(message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    with ledger.start_run(base=base, datasets=["a"], message="a") as run:
        va = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["b"], message="b") as run:
        vb = run.commit({"w": 2 * torch.ones(4)})
    samples = [a[1]["text"], a[2]["text"], a[3]["text"], "nothing like the training data at all"]
    return va.version_id, vb.version_id, samples


def part_gate(args, tmp: Path) -> list[str]:
    lines = []
    for n in args.variants:
        for option in args.shared:
            count, _, copies = option.partition("-")
            shared = n if count == "all" else int(count)
            root = tmp / f"gate{n}-{option}"
            va, vb, samples = gate_ledger(root, tmp, n, shared, copies or "exact")
            figures = []
            for kind in ("gate", "memorization"):
                if kind == "memorization" and shared:
                    continue  # the same training side as without shared texts
                out = subprocess.run([sys.executable, "-c", GATE_CHILD, str(root), kind, va, vb, json.dumps(samples)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(n, shared, kind, r, flush=True)
                figures.append(f"{kind}: {r['seconds']:.2f} s, {r['peak_mib']:.0f} MiB, {r['found']}")
            what = {"exact": "exact copies of them", "near": "near copies of them",
                    "variants": "variants of its own", "far": "far variants of its own"}[copies or "exact"]
            lines.append(f"| {n:,} variants on one side, {shared:,} {what} on the other | "
                         + "; ".join(figures) + " |")
    return lines


SPANS_CHILD = r"""
import hashlib, json, resource, sys, time
from provenance import Ledger
from provenance.memorization import audit_memorization
ledger = Ledger.open(sys.argv[1])
samples = json.loads(open(sys.argv[3]).read())
t = time.perf_counter()
r = audit_memorization(ledger, sys.argv[2], samples, store=False, span=20)
spans = json.dumps([[(m.key, m.span_words, m.span_text) for m in x.matches] for x in r.samples])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "matching": r.summary.samples_matching_training, "with_span": r.summary.samples_with_span,
                  "spans": hashlib.sha256(spans.encode()).hexdigest()[:12]}))
"""


def part_spans(args, tmp: Path) -> list[str]:
    import torch

    from provenance import Ledger

    lines = []
    for n in args.samples:
        copied = [" ".join(f"s{i}w{j}" for j in range(30)) for i in range(n)]
        others = [" ".join(f"u{i}w{j}" for j in range(30)) for i in range(12_000)]
        path = tmp / f"spans{n}.jsonl"
        path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(copied + others)))
        root = tmp / f"spans{n}"
        ledger = Ledger.init(root)
        ledger.register_dataset("train", path, id_field="id")
        with ledger.start_run(datasets=["train"], message="one epoch") as run:
            version = run.commit({"w": torch.zeros(4)})
        (tmp / f"samples{n}.json").write_text(json.dumps([f"the model wrote {t}" for t in reversed(copied)]))
        out = subprocess.run([sys.executable, "-c", SPANS_CHILD, str(root), version.version_id,
                              str(tmp / f"samples{n}.json")], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(n, r, flush=True)
        lines.append(f"| memorization, {n:,} samples each copying one of {n + 12_000:,} documents | "
                     f"{r['seconds']:.1f} s | {r['peak_mib']:.0f} MiB | {r['matching']:,} matching, "
                     f"{r['with_span']:,} with a span; spans {r['spans']} | |")
    return lines


STORE_CHILD = r"""
import json, sys, time
from provenance import Ledger
from provenance.memorization import audit_memorization
ledger = Ledger.open(sys.argv[1])
step = sys.argv[2]
t = time.perf_counter()
if step == "audit":
    r = audit_memorization(ledger, sys.argv[3], json.loads(sys.argv[4]), span=0)
    out = {"audit_id": r.audit_id}
elif step == "list":
    out = {"audits": [[a["audit_id"], a["pairs"]] for a in ledger.audits()]}
else:
    r = ledger.delete_audits([sys.argv[3]], pairs_only=step == "pairs-only")
    out = {"pairs": r["pairs"]}
print(json.dumps({"seconds": time.perf_counter() - t, **out}))
"""


def part_store(args, tmp: Path) -> list[str]:
    """What a stored memorization audit adds to the ledger's file, and what deleting it gives back."""
    n = args.variants[min(1, len(args.variants) - 1)]
    root = tmp / f"store{n}"
    va, _, samples = gate_ledger(root, tmp, n, 0)
    db = root / ".prov" / "ledger.duckdb"

    def step(*argv: str) -> dict:
        out = subprocess.run([sys.executable, "-c", STORE_CHILD, str(root), *argv], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    sizes = [db.stat().st_size]
    first = step("audit", va, json.dumps(samples))
    sizes.append(db.stat().st_size)
    second = step("audit", va, json.dumps(samples))
    sizes.append(db.stat().st_size)
    listed = step("list")
    pairs = dict(listed["audits"])
    gone = step("pairs-only", first["audit_id"])
    whole = step("delete", second["audit_id"])
    sizes.append(db.stat().st_size)
    third = step("audit", va, json.dumps(samples))
    sizes.append(db.stat().st_size)
    mib = [f"{s / 2**20:.1f}" for s in sizes]
    print(n, first, second, listed, gone, whole, third, mib, flush=True)
    return [f"| memorization audit of {n:,} variants, stored twice, then deleted | audit {first['seconds']:.2f} s, "
            f"{second['seconds']:.2f} s; list {listed['seconds'] * 1e3:.0f} ms; delete pairs only "
            f"{gone['seconds']:.2f} s, whole {whole['seconds']:.2f} s | ledger file {' → '.join(mib)} MiB "
            f"(before; after each audit; after both deletes; after a third audit) | "
            f"{pairs[first['audit_id']]:,} pairs each | |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["dedup", "lineage", "taint", "cluster", "gate", "spans", "store"],
                        action="append")
    parser.add_argument("--variants", type=int, nargs="+", default=[2_000, 8_000, 20_000])
    parser.add_argument("--exact-variants", type=int, default=8_000,
                        help="cluster: the largest cluster audited with every pair compared as well")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--compare-docs", type=int, default=100_000)
    parser.add_argument("--dup", type=float, default=0.01)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--runs-per-shard", type=int, default=1,
                        help="lineage: runs that trained on each shard, on average (10: a million run_shards rows)")
    parser.add_argument("--shared", nargs="+", default=["0", "50"],
                        help="gate: how many of the template texts the other contributor trained on too, each a "
                             "ledger of its own (a number, or 'all': the cluster on both sides; with '-near', "
                             "as near copies: 'all-near'; '-variants': as variants of the other's own; '-far': variants "
                             "near none of the first's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, nargs="+", default=[1_000, 4_000], help="spans: samples per audit")
    args = parser.parse_args()
    parts = args.part or ["dedup", "lineage", "taint", "cluster", "gate"]
    lines = []
    with tempfile.TemporaryDirectory(dir=Path.cwd() / "bench-data" if (Path.cwd() / "bench-data").is_dir() else None) as tmp:
        for part in parts:
            lines += {"dedup": part_dedup, "lineage": part_lineage, "taint": part_taint,
                      "cluster": part_cluster, "gate": part_gate, "spans": part_spans,
                      "store": part_store}[part](args, Path(tmp))
            print(lines[-1], flush=True)
    print("\nresults")
    print("| measure | time | memory / size | detail | target |\n|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
