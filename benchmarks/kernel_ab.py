"""Side by side: ``fingerprint_batch`` with this tree's fingerprint kernels against an earlier commit's.

The modules ``kernels/minhash*.py`` of ``--base`` (a git revision: ``minhash.py`` and, from the
split of its stages into modules beside it, those) are written to ``bench-data/kernel-ab/<commit>/``
and loaded in place of this tree's by half of the runs;
everything else (the Python around the kernels, the corpora, the batches) is this tree's. Each run
is a fresh process that fingerprints the generated and the real corpus (``text_corpora``, as
Arrow arrays in batches of 8 MB, what registration hands the kernels) on 2 threads and on 1,
median of 3 passes; the arms alternate for ``--rounds`` rounds. The kernels are warmed up (and,
the first time for a commit, compiled) before anything is timed.

Usage: ``.venv/bin/python benchmarks/kernel_ab.py --base 3db3161 [--size-mb 100] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-data" / "kernel-ab"


def base_module(rev: str) -> Path:
    """The base revision's kernel modules (``kernels/minhash*.py``), written once per commit: the
    path of its ``minhash.py``, written last."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    path = OUT / commit / "minhash.py"
    if not path.exists():
        listed = subprocess.run(["git", "ls-tree", "--name-only", commit, "kernels/"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.split()
        names = sorted((Path(n).name for n in listed if Path(n).name.startswith("minhash") and n.endswith(".py")),
                       key=lambda name: name == "minhash.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = subprocess.run(["git", "show", f"{commit}:kernels/{name}"], cwd=ROOT, check=True,
                                    capture_output=True).stdout
            (path.parent / name).write_bytes(source)
    return path


def child(module: str, size_mb: float) -> None:
    """One run: load ``module`` as the kernels (empty: this tree's), time, print one JSON line.
    ``module``'s folder comes first on the search path of ``provenance.kernels``, so that the
    modules it imports from beside it (its stages) are the base's too."""
    if module:
        import provenance.kernels

        provenance.kernels.__path__.insert(0, str(Path(module).parent))
        import provenance.kernels.minhash as kernels

        if not hasattr(kernels, "READ_AHEAD"):  # a module from before the read-ahead: padding is harmless
            kernels.READ_AHEAD = 32
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numba
    from text_corpora import batches, real_corpus, synthetic_corpus

    from provenance import FingerprintConfig
    from provenance.fingerprints import strings_to_arrow

    cfg = FingerprintConfig()
    cfg.warm_up()
    out = {}
    for name, corpus in (("generated", synthetic_corpus(size_mb, 0)), ("real", real_corpus(size_mb, 0))):
        arrays = [strings_to_arrow(corpus.texts[lo:hi]) for lo, hi in batches(corpus.texts, corpus.sizes)]
        cfg.fingerprint_batch(arrays[0])  # the paths this corpus takes, loaded before timing
        for threads in (2, 1):
            numba.set_num_threads(threads)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                for arr in arrays:
                    cfg.fingerprint_batch(arr)
                times.append(time.perf_counter() - t)
            out[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = corpus.n_bytes / 1e6 / statistics.median(times)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the git revision to compare with (its kernels/minhash.py); required")
    parser.add_argument("--size-mb", type=float, default=100, help="MB of text per corpus")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of one run per arm")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.size_mb)
        return
    if not args.base:
        parser.error("--base REV is required (the commit whose kernels to compare with)")
    arms = {f"base ({args.base})": str(base_module(args.base)), "this tree": ""}
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        for arm, module in arms.items():
            run = subprocess.run([sys.executable, __file__, "--child", module, "--size-mb", str(args.size_mb)],
                                 capture_output=True, text=True)
            if run.returncode:
                sys.exit(f"the {arm} run failed:\n{run.stderr}")
            results[arm].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {arm}: " + ", ".join(f"{k} {v:.1f} MB/s" for k, v in results[arm][-1].items()),
                  flush=True)
    base, tree = results.values()
    print(f"\n{args.size_mb:g} MB per corpus; MB/s of each round, alternating; ratio of the medians\n")
    print(f"| corpus | {' | '.join(arms)} | × |")
    print("|---|---:|---:|---:|")
    for key in base[0]:
        b, t = [r[key] for r in base], [r[key] for r in tree]
        print(f"| {key} | {' / '.join(f'{x:.1f}' for x in b)} | {' / '.join(f'{x:.1f}' for x in t)} | "
              f"{statistics.median(t) / statistics.median(b):.2f} |")


if __name__ == "__main__":
    main()
