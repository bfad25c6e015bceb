"""Text -> MinHash signatures: datasketch vs rensa vs this project's fast path, on one corpus.

What it measures, end to end from ``str`` to a 128-value signature, with ``FingerprintConfig()``
defaults (word 5-grams, 128 permutations, seed 1, affine32, xxh32):

1. **datasketch**: ``cfg.shingles(text)`` (pure-Python normalisation and shingling) then
   ``datasketch.MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=cfg.hashfunc)
   .update_batch(shingles)``, one document at a time. This is the specification: its hash values
   are what the fast path must reproduce bit for bit.
2. **rensa**: the same Python shingles, then ``rensa.RMinHash(num_perm=128, seed=1)
   .update(shingles)`` and ``.digest()``. Rensa's hash values differ; the work is the same.
3. **fast path**: ``cfg.signatures(texts)`` on batches of about 8 MB of text (as dataset
   registration calls it), numba kernels parallel over documents on every core numba uses.

datasketch and rensa are slow, so they run on a deterministic sample (every k-th document, about
``--sample-mb`` of text). The fast path runs on that same sample, so the ratios compare identical
input, and on the whole corpus; both also with one numba thread. The methods take turns, one run
each per round for ``--reps`` rounds, so that load from other processes falls on all of them
alike; each timing is the median run, and CPU/wall (process CPU time over wall time) shows how much
of the machine a run got. The numba warm-up (loading or compiling the kernels, building the
Unicode tables) is timed on its own beforehand. The fast path's signatures are checked against
datasketch's for every sampled document. One instrumented pass of ``cfg.fingerprint_batch`` over
the whole corpus (the library's own kernels and helpers wrapped with timers, nothing copied) says
where the fast path's time goes and how much text goes through Python's ``unicodedata``.

Corpora: ``synthetic`` (``provenance.synthetic.iter_jsonl_lines``, ``--size-mb`` of text) and,
unless ``--no-real``, ``real``: files already on this machine (man pages, /usr/share/doc, info
manuals, licences, the Python standard library), one document per file, large files split at
blank lines. MB means 10**6 bytes of UTF-8 text.

Corpus building lives in ``text_corpora.py``, the stage profile in ``fastpath_profile.py``.

Run: ``.venv/bin/python benchmarks/fingerprint.py [--size-mb 100] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

# Sibling modules: the script's own folder is first on sys.path when it is run as a file.
from fastpath_profile import complex_share, profile_fast
from text_corpora import BATCH_BYTES, MB, Corpus, batches, real_corpus, sample_indices, synthetic_corpus

# ---------------------------------------------------------------------------------------------
# Methods


def run_datasketch(cfg, texts: list[str]) -> dict:
    """datasketch's own path, per document; keeps the hash values for the identity check."""
    from datasketch import MinHash

    hashfunc, clock = cfg.hashfunc, time.perf_counter
    t_sh = t_up = 0.0
    values, count = [], 0
    c0 = time.process_time()
    for text in texts:
        t0 = clock()
        sh = cfg.shingles(text)
        t1 = clock()
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=hashfunc)
        m.update_batch(sh)
        t2 = clock()
        t_sh += t1 - t0
        t_up += t2 - t1
        values.append(m.hashvalues)
        count += len(sh)
    cpu = time.process_time() - c0
    return {"s": t_sh + t_up, "cpu_s": cpu, "shingle_s": t_sh, "update_s": t_up, "shingles": count, "values": values}


def run_rensa(cfg, texts: list[str]) -> dict:
    """rensa's RMinHash on the same Python shingles, per document."""
    from rensa import RMinHash

    clock = time.perf_counter
    t_sh = t_up = 0.0
    count = 0
    c0 = time.process_time()
    for text in texts:
        t0 = clock()
        sh = cfg.shingles(text)
        t1 = clock()
        r = RMinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        r.update(sh)
        digest = r.digest()
        t2 = clock()
        t_sh += t1 - t0
        t_up += t2 - t1
        count += len(sh)
    cpu = time.process_time() - c0
    assert len(digest) == cfg.num_perm
    return {"s": t_sh + t_up, "cpu_s": cpu, "shingle_s": t_sh, "update_s": t_up, "shingles": count}


def run_fast(cfg, texts: list[str], ranges, keep: np.ndarray | None = None, threads: int | None = None) -> dict:
    """``cfg.signatures`` over the batches ``ranges`` of ``texts``; keeps the ``keep`` rows."""
    import numba

    default = numba.get_num_threads()
    numba.set_num_threads(threads or default)
    clock = time.perf_counter
    wall = cpu = 0.0
    kept = []
    try:
        for lo, hi in ranges:
            chunk = texts[lo:hi]
            c0, t0 = time.process_time(), clock()
            sig = cfg.signatures(chunk)
            wall += clock() - t0
            cpu += time.process_time() - c0
            if keep is not None:
                sel = keep[(keep >= lo) & (keep < hi)] - lo
                kept.append(sig[sel])
    finally:
        numba.set_num_threads(default)
    return {"s": wall, "cpu_s": cpu, "signatures": np.concatenate(kept) if kept else None}


def interleaved(reps: int, methods: dict) -> dict:
    """Run every method once per round, ``reps`` rounds, so that load from other processes falls
    on all of them alike; per method, the run with the median wall time plus all wall times."""
    runs = {name: [] for name in methods}
    for _ in range(reps):
        for name, fn in methods.items():
            runs[name].append(fn())
    out = {}
    for name, rs in runs.items():
        med = sorted(rs, key=lambda r: r["s"])[len(rs) // 2]
        out[name] = {**med, "runs": [round(r["s"], 4) for r in rs]}
    return out


# ---------------------------------------------------------------------------------------------
# Orchestration


def rss_mb() -> dict:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    current = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"peak_rss_MiB": round(peak, 1), "rss_MiB": round(current, 1)}


def machine() -> dict:
    from importlib.metadata import version

    import numba

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{pkg: version(pkg) for pkg in ("numpy", "numba", "datasketch", "rensa", "pyarrow", "xxhash")},
        "numba_threads": numba.get_num_threads(),
    }


def code_state() -> dict:
    """The commit measured and a digest of uncommitted changes to the library, if any."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD", "--", "provenance", "kernels")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "?",
        "library_changes": [line[3:] for line in git("status", "--short", "--", "provenance", "kernels").splitlines()],
        "library_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
    }


def warm_up():
    """Import the library (and numba), load or compile the kernels on a first call, build the
    Unicode tables on a first non-ASCII call. Returns ``(cfg, timings)``."""
    cache_dir = Path(
        os.environ.get("NUMBA_CACHE_DIR") or Path(__file__).resolve().parents[1] / "kernels" / "__pycache__"
    )
    cached = any(cache_dir.glob("minhash.*.nbi")) if cache_dir.is_dir() else False
    t0 = time.perf_counter()
    from provenance.fingerprints import FingerprintConfig

    cfg = FingerprintConfig()
    t1 = time.perf_counter()
    cfg.signatures(["warm up the ascii path of the kernels", ""])
    t2 = time.perf_counter()
    cfg.signatures(["Ünïcödé Straße ﬁnance ΣΟΦΙΑ 日本語 warm up", "café naïve"])
    t3 = time.perf_counter()
    import numba

    return cfg, {
        "numba_cache_present_before": cached,
        "import_s": round(t1 - t0, 3),
        "first_call_ascii_s": round(t2 - t1, 3),
        "first_call_unicode_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
        "threading_layer": numba.threading_layer(),
    }


def bench_corpus(cfg, corpus: Corpus, sample_mb: float, reps: int) -> dict:
    import numba

    sidx = sample_indices(corpus, sample_mb)
    every = int(sidx[1] - sidx[0]) if len(sidx) > 1 else 1
    sample = [corpus.texts[i] for i in sidx.tolist()]
    s_sizes = corpus.sizes[sidx]
    s_mb = float(s_sizes.sum()) / MB
    all_mb = corpus.n_bytes / MB
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(
        f"\n== {corpus.name}: {len(corpus.texts):,} docs, {all_mb:.1f} MB (built in {corpus.build_s:.1f} s); "
        f"sample: every {every}th doc, {len(sample):,} docs, {s_mb:.2f} MB; load {load_before}",
        flush=True,
    )
    s_ranges = batches(sample, s_sizes)
    keep = np.arange(len(sample))
    methods = {
        "datasketch": lambda: run_datasketch(cfg, sample),
        "rensa": lambda: run_rensa(cfg, sample),
        "fast": lambda: run_fast(cfg, sample, s_ranges, keep),
    }
    if numba.get_num_threads() > 1:
        methods["fast1"] = lambda: run_fast(cfg, sample, s_ranges, threads=1)
    res = interleaved(reps, methods)
    ds, rs, fs, f1 = res["datasketch"], res["rensa"], res["fast"], res.get("fast1")
    for name in res:
        print(f"  {name:11} runs {', '.join(f'{x:.3f}' for x in res[name]['runs'])} s", flush=True)

    # Bit identity on every sampled document.
    ds_matrix = np.stack(ds["values"]).astype(np.uint32)
    bad = np.flatnonzero((ds_matrix != fs["signatures"]).any(axis=1))
    identity = {"documents": len(sample), "mismatches": int(bad.size), "first_mismatches": sidx[bad[:5]].tolist()}
    print(f"  bit identity vs datasketch: {len(sample) - bad.size:,}/{len(sample):,} equal", flush=True)

    # Whole corpus: a profiled pass per thread setting (also warms the data), then timed runs whose
    # sampled rows must equal the sample run (signatures do not depend on batching).
    ranges = batches(corpus.texts, corpus.sizes)
    complex_docs = complex_share(corpus)
    profiles = [profile_fast(cfg, corpus, ranges)]
    if numba.get_num_threads() > 1:
        profiles.append(profile_fast(cfg, corpus, ranges, threads=1))
    whole = {"fast": lambda: run_fast(cfg, corpus.texts, ranges, sidx)}
    if numba.get_num_threads() > 1:
        whole["fast1"] = lambda: run_fast(cfg, corpus.texts, ranges, threads=1)
    wres = interleaved(reps, whole)
    fa = wres["fast"]
    identity["whole_corpus_rows_equal_sample_run"] = bool(np.array_equal(fa["signatures"], fs["signatures"]))
    for name in wres:
        print(f"  {name + ' all':11} runs {', '.join(f'{x:.3f}' for x in wres[name]['runs'])} s", flush=True)

    n = ds["shingles"]
    threads = numba.get_num_threads()

    def row(input_, mb, r, shingles, s=None):
        return {
            "input": input_,
            "mb": mb,
            "s": s if s is not None else r["s"],
            "cpu_s": r.get("cpu_s") if s is None else None,
            "shingles": shingles,
            "runs": r.get("runs") if s is None else None,
        }

    n_all = profiles[0]["counts"]["shingles"]
    fast_name = f"fast path: cfg.signatures [{threads} thr]"
    rows = {
        "datasketch: cfg.shingles + MinHash.update_batch": row("sample", s_mb, ds, n),
        "  of which cfg.shingles (Python)": row("sample", s_mb, ds, n, ds["shingle_s"]),
        "  of which MinHash() + update_batch": row("sample", s_mb, ds, n, ds["update_s"]),
        "rensa: cfg.shingles + RMinHash.update + digest": row("sample", s_mb, rs, rs["shingles"]),
        "  of which RMinHash() + update + digest": row("sample", s_mb, rs, rs["shingles"], rs["update_s"]),
        fast_name: row("sample", s_mb, fs, n),
    }
    if threads > 1:
        rows["fast path: cfg.signatures [1 thr]"] = row("sample", s_mb, f1, n)
    rows[fast_name + ", whole corpus"] = row("all", all_mb, fa, n_all)
    if threads > 1:
        rows["fast path: cfg.signatures [1 thr], whole corpus"] = row("all", all_mb, wres["fast1"], n_all)
    ds_rate, rs_rate = s_mb / ds["s"], s_mb / rs["s"]
    for r in rows.values():
        r["mb_s"] = r["mb"] / r["s"]
        r["shingles_s"] = r["shingles"] / r["s"]
        r["x_datasketch"] = r["mb_s"] / ds_rate
        r["x_rensa"] = r["mb_s"] / rs_rate
    fast_sample = rows[fast_name]
    fast_all = rows[fast_name + ", whole corpus"]
    targets = {
        "10x datasketch, same sample": fast_sample["x_datasketch"] >= 10,
        "2x rensa, same sample": fast_sample["x_rensa"] >= 2,
        "10x datasketch, whole-corpus rate": fast_all["x_datasketch"] >= 10,
        "2x rensa, whole-corpus rate": fast_all["x_rensa"] >= 2,
    }
    return {
        "corpus": {
            "name": corpus.name,
            "description": corpus.description,
            "docs": len(corpus.texts),
            "MB": round(all_mb, 3),
            "build_s": round(corpus.build_s, 2),
            "composition": corpus.composition,
            "sample": {"docs": len(sample), "MB": round(s_mb, 3), "every_kth": every},
            "batches": len(ranges),
        },
        "load_avg": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "rows": rows,
        "identity": identity,
        "profiles": profiles,
        "complex_docs": complex_docs,
        "targets": targets,
        "memory": rss_mb(),
    }


def render(result: dict) -> str:
    c = result["corpus"]
    head = (
        f"{'method':50} {'input':6} {'MB':>7} {'s':>8} {'MB/s':>8} {'shingles/s':>10} "
        f"{'x ds':>6} {'x rensa':>7} {'CPU/wall':>8}"
    )
    lines = [
        f"\n[{c['name']}] {c['docs']:,} docs, {c['MB']:.1f} MB in {c['batches']} batches; sample {c['sample']['docs']:,} docs "
        f"(every {c['sample']['every_kth']}th), {c['sample']['MB']:.2f} MB; load average {result['load_avg']}",
        head,
        "-" * len(head),
    ]
    for name, r in result["rows"].items():
        cpu = f"{r['cpu_s'] / r['s']:.2f}" if r.get("cpu_s") is not None else ""
        lines.append(
            f"{name:50} {r['input']:6} {r['mb']:7.2f} {r['s']:8.3f} {r['mb_s']:8.2f} {r['shingles_s']:10.3g} "
            f"{r['x_datasketch']:6.1f} {r['x_rensa']:7.1f} {cpu:>8}"
        )
    ident = result["identity"]
    lines.append(
        f"bit identity, fast path vs datasketch on every sampled doc: {ident['documents'] - ident['mismatches']:,}/"
        f"{ident['documents']:,} equal ({ident['mismatches']} mismatches); sampled rows of the whole-corpus run equal "
        f"the sample run: {ident['whole_corpus_rows_equal_sample_run']}"
    )
    lines.append("targets: " + "; ".join(f"{k}: {'MET' if v else 'NOT MET'}" for k, v in result["targets"].items()))
    profiles = result["profiles"]
    p, cx = profiles[0], result["complex_docs"]
    cnt = p["counts"]
    lines.append(
        f"fast-path stages, one instrumented pass of cfg.fingerprint_batch over the whole corpus per thread count; "
        f"docs holding a code point the kernels hand to Python: {cx['docs']:,}/{result['corpus']['docs']:,} "
        f"({cx['doc_share']:.1%}), {cx['byte_share']:.1%} of bytes; _fold called {cnt.get('_fold calls', 0):,} times on "
        f"{cnt.get('_fold input chars', 0) / MB:.2f} M characters; {cnt.get('non-ASCII batches', 0)}/{cnt['batches']} "
        f"batches hold non-ASCII"
    )
    lines.append(
        "    " + f"{'stage':46}" + "".join(f"{str(q['threads']) + ' thr s':>10} {'share':>6}" for q in profiles)
    )
    for k in p["stages_s"]:
        lines.append(f"    {k:46}" + "".join(f"{q['stages_s'][k]:10.3f} {q['stages_share'][k]:6.1%}" for q in profiles))
    lines.append("    " + f"{'total':46}" + "".join(f"{q['total_s']:10.3f} {'':>6}" for q in profiles))
    lines.append(f"memory after this corpus: {result['memory']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mb", type=float, default=100.0, help="MB of text in each corpus (default 100)")
    ap.add_argument(
        "--sample-mb", type=float, default=8.0, help="MB of text in the datasketch/rensa sample (default 8)"
    )
    ap.add_argument(
        "--real", action=argparse.BooleanOptionalAction, default=True, help="also run the local-files corpus"
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic corpus and of the real corpus' file order"
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions per timing; the median is reported (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = ap.parse_args(argv)

    cfg, warm = warm_up()
    report = {
        "config": cfg.identity,
        "batch_bytes": BATCH_BYTES,
        "reps": args.reps,
        "machine": machine(),
        "warm_up": warm,
        "code": code_state(),
    }
    m = report["machine"]
    print(f"config {cfg.identity}; batches of {BATCH_BYTES / MB:.1f} MB; median of {args.reps}")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), load {m['load_avg_at_start']}; Python {m['python']}, numpy {m['numpy']}, "
        f"numba {m['numba']} ({m['numba_threads']} threads, {report['warm_up']['threading_layer']}), datasketch {m['datasketch']}, "
        f"rensa {m['rensa']}, pyarrow {m['pyarrow']}, xxhash {m['xxhash']}"
    )
    print(f"numba warm-up: {report['warm_up']}")
    print(f"code: {report['code']}")

    results = []
    corpora = [lambda: synthetic_corpus(args.size_mb, args.seed)]
    if args.real:
        corpora.append(lambda: real_corpus(args.size_mb, args.seed))
    for build in corpora:
        corpus = build()
        results.append(bench_corpus(cfg, corpus, args.sample_mb, args.reps))
        del corpus
    report["results"] = results
    report["memory"] = rss_mb()

    print("\nMB = 10**6 bytes of UTF-8 text; x ds / x rensa: throughput over datasketch's / rensa's on the same sample")
    for r in results:
        print(f"\n{r['corpus']['name']} corpus: {r['corpus']['description']}")
        if r["corpus"]["composition"]:
            print(f"composition: {json.dumps(r['corpus']['composition'])}")
        print(render(r))
    print(f"\npeak RSS {report['memory']['peak_rss_MiB']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.json}")
    mismatches = sum(r["identity"]["mismatches"] for r in results)
    assert mismatches == 0, f"{mismatches} sampled documents differ from datasketch"
    return 0


if __name__ == "__main__":
    sys.exit(main())
