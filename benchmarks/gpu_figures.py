"""The GPU figures that benchmarks/kernels.py does not take: MinHash on the GPU and ``ledger.merge`` on the GPU.

MinHash: a generated corpus is fingerprinted three ways side by side: the fused CPU pass
(``fingerprint_batch(texts)``), the same call with the MinHash on the GPU
(``fingerprint_batch(texts, device="cuda")``: normalise and shingle on the CPU, signatures on the
GPU), and the GPU kernel alone on that call's own shingle hashes (``minhash_gpu.signatures``,
Triton and the torch path), each as docs/s and MB/s of the corpus's UTF-8 text. The kernel's
floor is its arithmetic (shingles x permutations hash evaluations), not its bytes; both are printed.

Merge: a ledger holds a base and ``--inputs`` dense children of ``--params`` fp32 parameters in
four groups; ``ledger.merge(..., device="cuda")`` and ``device="cpu"`` run side by side (Fisher
with stored Fisher states, and the average), end to end: inputs read from the object store and
verified, the kernel, the output committed. The results are compared.

Usage: ``python benchmarks/gpu_figures.py [--docs 100000] [--params 33554432] [--inputs 4] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from device_timing import bench, copy_gbs

try:
    import triton
except ImportError:  # the sweep needs Triton; the other parts run without it
    triton = None


def minhash_rows(n_docs: int, repeats: int, device: str) -> list[dict]:
    from provenance import FingerprintConfig
    from provenance.kernels import minhash_gpu
    from provenance.kernels.dispatch import backend
    from provenance.synthetic import generate_corpus

    texts = [d["text"] for d in generate_corpus(n_docs, mean_words=200, seed=11).docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    cfg = FingerprintConfig(num_perm=128)
    captured = {}
    kernel = minhash_gpu.signatures

    def capture(*args):
        captured["args"] = args
        return kernel(*args)

    minhash_gpu.signatures = capture
    try:
        on_gpu = cfg.fingerprint_batch(texts, device=device)
    finally:
        minhash_gpu.signatures = kernel
    on_cpu = cfg.fingerprint_batch(texts)
    same = all(np.array_equal(getattr(on_gpu, f), getattr(on_cpu, f))
               for f in ("exact_hash", "token_count", "signatures", "band_keys"))
    hashes, offsets, a, b, scheme = captured["args"]
    shingles = int(hashes.numel())
    rows = []

    def add(path: str, seconds: float) -> None:
        r = {"path": path, "docs": n_docs, "text_mb": round(mb, 1), "ms": round(seconds * 1e3, 2),
             "docs_s": round(n_docs / seconds), "mb_s": round(mb / seconds, 1),
             "g_hashes_s": round(shingles * a.numel() / seconds / 1e9, 1), "equal_to_cpu": same}
        print(r, flush=True)
        rows.append(r)

    add("fingerprint_batch, fused CPU pass", bench(lambda: cfg.fingerprint_batch(texts), "cpu", repeats))
    add(f"fingerprint_batch(device='{device}'), end to end",
        bench(lambda: cfg.fingerprint_batch(texts, device=device), device, repeats))
    for name in ("auto", "torch"):
        with backend(name):
            got = kernel(hashes, offsets, a, b, scheme)
            assert np.array_equal(got.cpu().numpy().astype(np.uint32), on_cpu.signatures), name
            seconds = bench(lambda: kernel(hashes, offsets, a, b, scheme), device, repeats)
        add(f"minhash_gpu.signatures alone ({'Triton' if name == 'auto' else 'torch path'})", seconds)
    return rows


def ties_rows(n: int, repeats: int, device: str) -> list[dict]:
    """TIES thresholds (the k-th largest |θ − θ₀| at density 0.2) on ``device``: ``kthvalue``
    against what CUDA tensors take (kernels.merge._kth_abs_radix: a sampled window, radix
    selection where it misses) and radix selection alone; all equal."""
    from provenance.kernels import merge as M

    g = torch.Generator(device=device).manual_seed(5)
    base = torch.randn(n, generator=g, device=device)
    theta = base + torch.randn(n, generator=g, device=device)
    rank = n - int(0.2 * n)
    want = (theta - base).abs().kthvalue(rank + 1).values.item()
    got = M._kth_abs_radix(base, [theta], rank)[0]
    assert M._radix_select((theta - base).abs().view(torch.int32), rank) == got
    from provenance.kernels.dispatch import backend

    def torch_window(base, theta, rank):
        with backend("torch"):
            return M._kth_abs_radix(base, [theta], rank)

    assert torch_window(base, theta, rank)[0] == got
    rows = []
    for path, fn in (("kthvalue", lambda: (theta - base).abs().kthvalue(rank + 1).values.item()),
                     ("sampled window, the counting pass in Triton (as merges take it)",
                      lambda: M._kth_abs_radix(base, [theta], rank)),
                     ("sampled window, the counting pass in torch ops", lambda: torch_window(base, theta, rank)),
                     ("radix selection alone", lambda: M._radix_select((theta - base).abs().view(torch.int32), rank))):
        seconds = bench(fn, device, repeats)
        r = {"path": path, "n": n, "ms": round(seconds * 1e3, 2), "gb_s": round(2 * n * 4 / seconds / 1e9, 1),
             "equal": got == want}
        print(r, flush=True)
        rows.append(r)
    return rows


def sweep_rows(n: int, device: str) -> list[dict]:
    """The merge kernel at block sizes and warp counts side by side (the GPU's N = 2-4 merges sat at
    0.65-0.85x copy at BLOCK 1024, 4 warps), launched directly with the parameters uploaded once,
    and ``merge.weighted_average`` as called (its parameters uploaded per call): GB/s and x copy."""
    from provenance.kernels import merge as M

    ceiling = copy_gbs(16 * n, device)  # a copy of two tensors' worth
    g = torch.Generator(device=device).manual_seed(9)
    xs = [torch.randn(n, generator=g, device=device) for _ in range(4)]
    fs = [torch.rand(n, generator=g, device=device) + 0.1 for _ in range(4)]
    out = torch.empty_like(xs[0])
    rows = []
    for mode, k in (("mean", 2), ("mean", 4), ("fisher", 4)):
        lam = [1.0 / k] * k
        params = torch.tensor(lam + [0.0] * (8 - k) + [1.0] * 8 + [1e-6], device=device)
        models = xs[:k] + xs[:1] * (8 - k)
        fishers = (fs[:k] if mode == "fisher" else xs[:1] * k) + xs[:1] * (8 - k)
        nbytes = (k * (2 if mode == "fisher" else 1) + 1) * n * 4
        want = torch.empty_like(out)  # the kernel as merges launch it: the other block sizes must give its bits
        M._merge_triton(mode, want, xs[0], xs[:k], fs[:k] if mode == "fisher" else [], lam, [1.0] * k, 1e-6)
        for block in (512, 1024, 2048, 4096):
            for warps in (4, 8):
                def launch(block=block, warps=warps, mode=mode, k=k, models=models, fishers=fishers, params=params):
                    M._merge_kernel[(triton.cdiv(n, block),)](out, xs[0], *models, *fishers, params, n, N=k, MODE=mode,
                                                              BLOCK=block, num_warps=warps)
                out.fill_(float("nan"))
                launch()
                seconds = bench(launch, device, 9)
                r = {"mode": mode, "n_models": k, "block": block, "warps": warps, "ms": round(seconds * 1e3, 3),
                     "x_copy": round(nbytes / seconds / 1e9 / ceiling, 2), "equal": bool(torch.equal(out, want))}
                print(r, flush=True)
                rows.append(r)
        call = (lambda k=k, lam=lam: M.weighted_average(xs[:k], lam, out=out)) if mode == "mean" else \
            (lambda k=k, lam=lam: M.fisher_merge(xs[:k], fs[:k], lam, out=out))
        seconds = bench(call, device, 9)
        r = {"mode": mode, "n_models": k, "block": "as called", "warps": "", "ms": round(seconds * 1e3, 3),
             "x_copy": round(nbytes / seconds / 1e9 / ceiling, 2), "equal": True}
        print(r, flush=True)
        rows.append(r)
    return rows


def profile_merge(ledger, children, device: str, path: Path | None) -> None:
    """cProfile of one ``ledger.merge(device=...)``: the 25 costliest calls by cumulative time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    ledger.merge(children, method="fisher", message=f"profiled {device}", device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
    if path:
        path.write_text(text.getvalue())


def merge_rows(params: int, inputs: int, repeats: int, devices: tuple[str, ...], profile: Path | None) -> list[dict]:
    from provenance import Ledger

    g = torch.Generator().manual_seed(3)
    rows_per = params // 4 // 4096
    base_state = {f"layer{i}.weight": torch.randn(rows_per, 4096, generator=g) for i in range(4)}
    nbytes_in = sum(t.numel() * 4 for t in base_state.values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.init(Path(tmp) / "ledger")
        base = ledger.commit(base_state, message="base")
        children = []
        for i in range(inputs):
            state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
            child = ledger.commit(state, parent=base, message=f"child {i}")
            ledger.store_fisher(child, {k: torch.rand(v.shape, generator=g) + 0.1 for k, v in base_state.items()})
            children.append(child)
        counter = iter(range(10_000))
        for method in ("fisher", "average"):
            results = {}
            for device in devices:
                def run(method=method, device=device, results=results):
                    results[device] = ledger.merge(children, method=method, message=f"{method} {device} {next(counter)}",
                                                   device=device)
                seconds = bench(run, device, repeats)
                moved = nbytes_in * (inputs * (2 if method == "fisher" else 1) + 1)
                r = {"merge": method, "device": device, "inputs": inputs, "params": params, "s": round(seconds, 3),
                     "input_gb_s": round(moved / seconds / 1e9, 2),
                     "kernel": ledger.receipt(results[device])["kernel"]}
                rows.append(r)
                print(r, flush=True)
            gpu, cpu = ledger.checkout(results[devices[0]]), ledger.checkout(results[devices[-1]])
            worst = max(float((gpu[k] - cpu[k]).norm() / cpu[k].norm()) for k in cpu)
            for r in rows[-len(devices):]:
                r["rel_diff_gpu_cpu"] = worst
        profile_merge(ledger, children, devices[0], profile)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--params", type=int, default=1 << 25)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--parts", default="minhash,ties,merge,sweep", help="which figures, comma-separated")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script's paths where there is no GPU")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_figures.py needs a CUDA GPU (--device cpu for a dry run)")
    parts = set(args.parts.split(","))
    minhash = minhash_rows(args.docs, args.repeats, args.device) if "minhash" in parts else []
    ties = ties_rows(args.params * 2, 3, args.device) if "ties" in parts else []
    sweep = sweep_rows(args.params * 2, args.device) if "sweep" in parts and triton is not None else []
    profile = args.json.with_name("merge-profile.txt") if args.json else None
    merges = merge_rows(args.params, args.inputs, max(1, args.repeats // 2), tuple(dict.fromkeys((args.device, "cpu"))),
                        profile) if "merge" in parts else []
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    if args.json:
        args.json.write_text(json.dumps({"device": name, "minhash": minhash,
                                         "ties": ties, "sweep": sweep, "merges": merges}, indent=2) + "\n")
    table(f"{name}: MinHash, 128 permutations, {args.docs:,} generated documents", minhash,
          [("path", "path"), ("ms", "ms"), ("docs/s", "docs_s"), ("text MB/s", "mb_s"),
           ("1e9 hash evaluations/s", "g_hashes_s"), ("equal to CPU", "equal_to_cpu")])
    table(f"TIES threshold of {args.params * 2:,} fp32 elements (density 0.2)", ties,
          [("path", "path"), ("ms", "ms"), ("GB/s (two inputs read)", "gb_s"), ("equal to kthvalue", "equal")])
    table(f"The merge kernel by block size and warps, {args.params * 2:,} fp32 elements per tensor", sweep,
          [("merge", "mode"), ("N", "n_models"), ("BLOCK", "block"), ("warps", "warps"), ("ms", "ms"),
           ("× copy", "x_copy"), ("equal", "equal")])
    table(f"ledger.merge end to end, {args.inputs} inputs x {args.params:,} fp32 parameters (4 groups)", merges,
          [("method", "merge"), ("device", "device"), ("s", "s"), ("GB/s of inputs", "input_gb_s"),
           ("kernel", "kernel"), ("rel. diff GPU vs CPU", "rel_diff_gpu_cpu")])


def table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """``rows`` as a Markdown table under ``title``: ``columns`` are (heading, key) pairs."""
    print(f"\n{title}\n| " + " | ".join(h for h, _ in columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool) else
                                (f"{r[k]:.1e}" if k == "rel_diff_gpu_cpu" else str(r[k])) for _, k in columns) + " |")


if __name__ == "__main__":
    main()
