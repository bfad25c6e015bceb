"""Model versions: storage of a sparse patch chain, commit and checkout throughput.

On a state with GPT-2-small's parameter names and shapes (124M float32 parameters, random
weights: no checkpoint is downloaded), side by side in one run:

1. **Throughput**, median of ``--repeats``: ``safetensors.torch.save_file`` and ``load_file`` of
   the state, against ``ledger.commit`` of the same state as a root version (hashing, writing and
   syncing every object; and with ``sync=False``, not synced, against the unsynced ``save_file``) and ``ledger.checkout`` of it (reading, hash-checking), to a dict and
   streamed to a safetensors file. GB/s of parameters. ``load_file`` maps the file and reads
   nothing until a tensor is used, so the baseline is ``load_file`` followed by a sum over every
   tensor (each page read once); the lazy figure is reported beside it.
2. **Storage** after ``--commits`` sparse commits, each replacing a fresh random ``--density`` of
   every parameter group (what successive FISH-mask fine-tunes produce): bytes on disk of the
   objects and of the ledger file, against one full copy plus the patches' indices and values
   (the floor), full copies of every version, and every changed group stored densely (Git-Theta's
   behaviour without a sparse update type). The time of each sparse commit and of a checkout at
   the end of the chain are reported too.

Usage: ``.venv/bin/python benchmarks/versions.py [--repeats 3] [--commits 20] [--density 0.005]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench-data" / "versions"


def gpt2_small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """GPT-2 small's parameter names and shapes (vocab 50257, context 1024, 12 layers of 768)."""
    g = torch.Generator().manual_seed(seed)
    d, v, n = 768, 50257, 1024

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    state = {"wte.weight": w(v, d), "wpe.weight": w(n, d), "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)}
    for i in range(12):
        p = f"h.{i}."
        state.update({
            p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d),
            p + "attn.c_attn.weight": w(d, 3 * d), p + "attn.c_attn.bias": torch.zeros(3 * d),
            p + "attn.c_proj.weight": w(d, d), p + "attn.c_proj.bias": torch.zeros(d),
            p + "ln_2.weight": torch.ones(d), p + "ln_2.bias": torch.zeros(d),
            p + "mlp.c_fc.weight": w(d, 4 * d), p + "mlp.c_fc.bias": torch.zeros(4 * d),
            p + "mlp.c_proj.weight": w(4 * d, d), p + "mlp.c_proj.bias": torch.zeros(d),
        })
    return state


def sparse_update(state: dict[str, torch.Tensor], density: float, g: torch.Generator) -> tuple[dict, int]:
    """A copy of ``state`` with a random ``density`` of each group's elements replaced; the
    number of replaced elements."""
    out, changed = {}, 0
    for name, t in state.items():
        k = max(1, int(t.numel() * density))
        idx = torch.randperm(t.numel(), generator=g)[:k]
        new = t.clone()
        new.view(-1)[idx] += torch.randn(k, generator=g) * 1e-3
        out[name] = new
        changed += k
    return out, changed


def disk_bytes(folder: Path) -> tuple[int, int]:
    """(sum of file sizes, bytes of the blocks allocated) under ``folder``."""
    size = blocks = 0
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            size += st.st_size
            blocks += st.st_blocks * 512
    return size, blocks


def drop_caches() -> bool:
    """Empty the page cache (needs root); False where that is not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn, *, free: bool = False) -> float:
    """Seconds ``fn`` takes, after ``os.sync()`` (no dirty pages of the previous step compete for
    the disk) and, with ``free``, after emptying the page cache where allowed: on this VM a write
    that must first reclaim cached pages runs several times slower, so each write starts with
    the same free memory."""
    os.sync()
    if free:
        drop_caches()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--density", type=float, default=0.005)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from safetensors.torch import load_file, save_file

    from provenance import Ledger

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    state = gpt2_small_state()
    n_params = sum(t.numel() for t in state.values())
    full = sum(t.numel() * t.element_size() for t in state.values())
    gb = full / 1e9
    print(f"state: {len(state)} groups, {n_params / 1e6:.1f}M parameters, {full / 2**20:.0f} MiB", file=sys.stderr)

    def load_and_read(path: Path) -> None:
        for t in load_file(str(path)).values():  # load_file maps the file lazily: read every page
            t.sum()

    keys = ("st_save", "st_save_fsync", "st_load_lazy", "st_load", "st_load_cold", "commit", "commit_nosync",
            "checkout", "checkout_cold", "checkout_file")

    def save_synced(path: Path) -> None:
        save_file(state, str(path))
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    times: dict[str, list[float]] = {k: [] for k in keys}
    def one_repeat(r: int) -> None:
        # Each provenance operation runs right after the safetensors one it is compared with, so
        # that both meet the same state of the page cache and the disk.
        path = WORK / f"plain-{r}.safetensors"
        unsynced = Ledger.init(WORK / f"unsynced-{r}")
        times["st_save"].append(timed(lambda: save_file(state, str(path)), free=True))
        times["commit_nosync"].append(timed(lambda: unsynced.commit(state, message="root", sync=False), free=True))
        shutil.rmtree(WORK / f"unsynced-{r}")
        ledger = Ledger.init(WORK / f"ledger-{r}")
        holder = {}
        times["st_save_fsync"].append(timed(lambda: save_synced(path), free=True))
        times["commit"].append(timed(lambda: holder.update(v=ledger.commit(state, message="root")), free=True))
        load_and_read(path)  # the writes above emptied the page cache: warm it for the warm reads
        ledger.checkout(holder["v"])
        times["st_load_lazy"].append(timed(lambda: load_file(str(path))))
        times["st_load"].append(timed(lambda: load_and_read(path)))
        times["checkout"].append(timed(lambda: ledger.checkout(holder["v"])))
        if drop_caches():  # both read from the disk
            times["st_load_cold"].append(timed(lambda: load_and_read(path)))
            drop_caches()
            times["checkout_cold"].append(timed(lambda: ledger.checkout(holder["v"])))
        out = WORK / f"out-{r}.safetensors"
        times["checkout_file"].append(timed(lambda: ledger.checkout(holder["v"], output=out), free=True))
        out.unlink()
        path.unlink()
        shutil.rmtree(WORK / f"ledger-{r}")

    for r in range(args.repeats):
        one_repeat(r)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rate = {k: gb / v for k, v in med.items()}

    # -- storage of a sparse chain -------------------------------------------------------------
    ledger = Ledger.init(WORK / "chain")
    version = ledger.commit(state, message="root")
    g = torch.Generator().manual_seed(1)
    current, patch_floor, commit_times = state, 0, []
    for i in range(args.commits):
        current, changed = sparse_update(current, args.density, g)
        patch_floor += changed * (4 + 4)  # int32 index + float32 value
        t = time.perf_counter()
        version = ledger.commit(current, parent=version, message=f"sparse {i}")
        commit_times.append(time.perf_counter() - t)
    encodings = {p.encoding for p in ledger.manifest(version).values()}
    chain_checkout = statistics.median(timed(lambda: ledger.checkout(version)) for _ in range(args.repeats))
    obj_size, obj_blocks = disk_bytes(ledger.objects_path)
    db = ledger.db_path.stat().st_size
    floor = full + patch_floor
    ours = obj_blocks + db
    versions = args.commits + 1
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "params_millions": round(n_params / 1e6, 1), "full_mib": round(full / 2**20, 1), "repeats": args.repeats,
        "throughput_gb_s": {k: round(v, 3) for k, v in rate.items()},
        "commit_vs_safetensors_save": round(rate["commit"] / rate["st_save"], 2),
        "commit_vs_safetensors_save_fsync": round(rate["commit"] / rate["st_save_fsync"], 2),
        "commit_nosync_vs_safetensors_save": round(rate["commit_nosync"] / rate["st_save"], 2),
        "checkout_cold_vs_safetensors_load_cold": (
            round(rate["checkout_cold"] / rate["st_load_cold"], 2) if "st_load_cold" in rate else None),
        "checkout_vs_safetensors_load": round(rate["checkout"] / rate["st_load"], 2),
        "checkout_file_vs_safetensors_load": round(rate["checkout_file"] / rate["st_load"], 2),
        "sparse_commits": args.commits, "density": args.density, "last_encodings": sorted(encodings),
        "sparse_commit_s_median": round(statistics.median(commit_times), 3),
        "sparse_commit_gb_s": round(gb / statistics.median(commit_times), 3),
        "chain_checkout_s": round(chain_checkout, 3), "chain_checkout_gb_s": round(gb / chain_checkout, 3),
        "chain_checkout_vs_safetensors_load": round((gb / chain_checkout) / rate["st_load"], 2),
        "bytes": {"objects_file_sizes": obj_size, "objects_blocks": obj_blocks, "ledger_file": db, "ours": ours,
                  "floor_full_plus_patches": floor, "full_copies": full * versions,
                  "dense_changed_groups": full * versions},
        "ours_vs_floor": round(ours / floor, 3),
        "full_copies_vs_ours": round(full * versions / ours, 2),
    }
    shutil.rmtree(WORK, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print("\n| measure | provenance | safetensors | ratio |\n|---|---|---|---|")
    print(f"| commit / save_file (GB/s) | {rate['commit']:.2f} | {rate['st_save']:.2f} | {result['commit_vs_safetensors_save']}x |")
    print(f"| commit(sync=False) / save_file (GB/s) | {rate['commit_nosync']:.2f} | {rate['st_save']:.2f} | "
          f"{result['commit_nosync_vs_safetensors_save']}x |")
    print(f"| commit / save_file + fsync (GB/s) | {rate['commit']:.2f} | {rate['st_save_fsync']:.2f} | "
          f"{result['commit_vs_safetensors_save_fsync']}x |")
    if "st_load_cold" in rate:
        print(f"| checkout / load_file, cold page cache (GB/s) | {rate['checkout_cold']:.2f} | {rate['st_load_cold']:.2f} | "
              f"{result['checkout_cold_vs_safetensors_load_cold']}x |")
    print(f"| checkout / load_file (GB/s) | {rate['checkout']:.2f} | {rate['st_load']:.2f} | {result['checkout_vs_safetensors_load']}x |")
    print(f"| checkout to file / load_file (GB/s) | {rate['checkout_file']:.2f} | {rate['st_load']:.2f} | "
          f"{result['checkout_file_vs_safetensors_load']}x |")
    print(f"| checkout after {args.commits} sparse commits (GB/s) | {result['chain_checkout_gb_s']:.2f} | "
          f"{rate['st_load']:.2f} | {result['chain_checkout_vs_safetensors_load']}x |")
    print(f"| bytes after {args.commits} sparse commits | {ours / 2**20:.0f} MiB | floor {floor / 2**20:.0f} MiB | "
          f"{result['ours_vs_floor']}x |")


if __name__ == "__main__":
    main()
