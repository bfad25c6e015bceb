"""Kernels against the memory-bandwidth ceiling and against the naive torch expression.

For N-way merges (N = 2, 4, 8) and for patch application (each kind, and a fused chain), side by
side in one run on one device: median time, effective GB/s (the bytes that must move: each input
read once, the output written once), the ratio to a plain copy of as many bytes on the same device
(``dst.copy_(src)``, counted as read + write), and the speed-up over the expression a user would
write in torch. On CPU the kernels run their torch path (Triton runs only on CUDA devices).

Usage: ``.venv/bin/python benchmarks/kernels.py [--elements 8388608] [--device cpu|cuda] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from device_timing import bench, copy_gbs


def row(kernel: str, n: int, nbytes: int, ours: float, into: float, naive: float, ceiling: float) -> dict:
    """One table row: times in ms, GB/s of ``nbytes`` (fresh output and into an existing one),
    their ratios to the copy ceiling, and the speed-up over the naive expression."""
    gbs, gbs_into = nbytes / ours / 1e9, nbytes / into / 1e9
    r = {"kernel": kernel, "n": n, "ms": round(ours * 1e3, 2), "gb_s": round(gbs, 2),
         "vs_copy": round(gbs / ceiling, 2), "out_ms": round(into * 1e3, 2), "out_vs_copy": round(gbs_into / ceiling, 2),
         "naive_ms": round(naive * 1e3, 2), "vs_naive": round(naive / ours, 2)}
    print(r, flush=True)
    return r


def naive_merge(method: str, base, thetas, fishers, lam, eps=1e-6, density=0.2):
    """What a user writes: whole-tensor expressions with temporaries."""
    if method == "average":
        return sum(w * t for w, t in zip(lam, thetas)) / sum(lam)
    if method == "fisher":
        fs = [f.clamp(min=eps) for f in fishers]
        num = sum(w * f * t for w, f, t in zip(lam, fs, thetas))
        den = sum(w * f for w, f in zip(lam, fs))
        return num / den
    if method == "task_arithmetic":
        return base + sum(w * (t - base) for w, t in zip(lam, thetas))
    taus = torch.stack([t - base for t in thetas])
    k = max(1, int(density * base.numel()))
    thresholds = taus.abs().flatten(1).kthvalue(base.numel() - k + 1, dim=1).values
    trimmed = torch.where(taus.abs() >= thresholds.view(-1, *[1] * base.dim()), taus, torch.zeros_like(taus))
    weighted = trimmed * torch.tensor(lam, device=base.device).view(-1, *[1] * base.dim())
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    lam_t = torch.tensor(lam, device=base.device).view(-1, *[1] * base.dim()).expand_as(trimmed)
    num = (weighted * agree).sum(0)
    den = (lam_t * agree).sum(0)
    return base + torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))


def inplace_fisher(thetas, fishers, lam, eps, num, den, tmp):
    """The Fisher merge as a careful user writes it in torch: in-place ops on preallocated buffers
    (``clamp_min``, ``mul_``, ``add_``, ``addcmul_``, ``div_``), no temporaries per model."""
    num.zero_()
    den.zero_()
    for w, f, t in zip(lam, fishers, thetas):
        a = torch.clamp_min(f, eps, out=tmp).mul_(w)
        den.add_(a)
        num.addcmul_(a, t)
    return num.div_(den)


def inplace_rows(n: int, device: str) -> list[dict]:
    """Fisher merges into an existing output against :func:`inplace_fisher`, alternating."""
    from provenance.kernels import merge as k

    g = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(n, generator=g, device=device)
    rows = []
    out, num, den, tmp = (torch.empty_like(base).fill_(1.0) for _ in range(4))
    for count in (2, 4, 8):
        thetas = [base + 0.01 * torch.randn(n, generator=g, device=device) for _ in range(count)]
        fishers = [torch.rand(n, generator=g, device=device) for _ in range(count)]
        lam = [1.0 / count] * count
        ours = bench(lambda t=thetas, f=fishers, w=lam: k.fisher_merge(t, f, w, out=out), device)
        theirs = bench(lambda t=thetas, f=fishers, w=lam: inplace_fisher(t, f, w, 1e-6, num, den, tmp), device)
        r = {"kernel": "fisher vs in-place torch", "n": count, "ms": round(ours * 1e3, 2),
             "inplace_ms": round(theirs * 1e3, 2), "vs_inplace": round(theirs / ours, 2)}
        print(r, flush=True)
        rows.append(r)
    return rows


def merges(n: int, device: str, ceiling: float) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    base = torch.randn(n, generator=g, device=device)
    rows = []
    for count in (2, 4, 8):
        thetas = [base + 0.01 * torch.randn(n, generator=g, device=device) for _ in range(count)]
        fishers = [torch.rand(n, generator=g, device=device) for _ in range(count)]
        rows += merge_rows(base, thetas, fishers, device, ceiling)
    return rows


def merge_rows(base, thetas, fishers, device: str, ceiling: float) -> list[dict]:
    from provenance.kernels import merge as k

    count, n = len(thetas), base.numel()
    lam = [1.0 / count] * count
    out = torch.empty_like(base).fill_(1.0)  # an existing output, as the copy has: no first-touch page faults
    cases = {
        "average": (lambda o=None: k.weighted_average(thetas, lam, out=o), count + 1),
        "fisher": (lambda o=None: k.fisher_merge(thetas, fishers, lam, out=o), 2 * count + 1),
        "task_arithmetic": (lambda o=None: k.task_arithmetic(base, thetas, lam, out=o), count + 2),
        "ties": (lambda o=None: k.ties(base, thetas, lam, density=0.2, out=o), count + 2),
    }
    rows = []
    for method, (fn, tensors) in cases.items():
        nbytes = tensors * n * 4
        repeats = 3 if method == "ties" else 7
        ours = bench(fn, device, repeats=repeats)
        into = bench(lambda f=fn: f(out), device, repeats=repeats)
        naive = bench(lambda m=method: naive_merge(m, base, thetas, fishers, lam), device, repeats=repeats)
        rows.append(row(f"merge {method}", count, nbytes, ours, into, naive, ceiling))
    return rows


def patches(n: int, device: str, ceiling: float) -> list[dict]:
    from provenance.kernels import patch as p

    g = torch.Generator(device=device).manual_seed(1)
    rows_, cols = n // 1024, 1024
    base = torch.randn(rows_, cols, generator=g, device=device)
    k = n // 200  # 0.5% sparse
    idx = torch.randperm(n, generator=g, device=device)[:k].sort().values.to(torch.int32)
    vals = torch.randn(k, generator=g, device=device)
    delta = torch.randn(rows_, cols, generator=g, device=device)
    b, a = torch.randn(rows_, 8, generator=g, device=device), torch.randn(8, cols, generator=g, device=device)
    cases = {
        "sparse (0.5%)": (lambda: p.apply_sparse(base, idx, vals), 2 * n * 4 + k * 8,
                          lambda: base.clone().view(-1).index_put_((idx.long(),), vals)),
        "dense delta": (lambda: p.apply_dense_delta(base, delta), 3 * n * 4, lambda: base + delta),
        "low rank (r=8)": (lambda: p.apply_low_rank(base, b, a, 0.5), 2 * n * 4, lambda: base + 0.5 * (b @ a)),
    }
    chain = [("sparse", idx, vals), ("dense", delta), ("low_rank", b, a, 0.5), ("sparse", idx, vals)]
    if hasattr(p, "apply_chain"):
        def naive_chain():
            out = base.clone()
            out.view(-1)[idx.long()] = vals
            out = out + delta
            out = out + 0.5 * (b @ a)
            out.view(-1)[idx.long()] = vals
            return out

        cases["chain sparse+dense+low rank+sparse"] = (lambda: p.apply_chain(base, chain), 3 * n * 4 + 2 * k * 8,
                                                       naive_chain)
    into_cases = {
        "sparse (0.5%)": [("sparse", idx, vals)], "dense delta": [("dense", delta)],
        "low rank (r=8)": [("low_rank", b, a, 0.5)], "chain sparse+dense+low rank+sparse": chain,
    }
    dst = torch.empty_like(base).fill_(1.0)
    out = []
    for name, (fn, nbytes, naive_fn) in cases.items():
        ours, naive = bench(fn, device), bench(naive_fn, device)
        into = bench(lambda c=into_cases[name]: p.apply_chain(base, c, out=dst), device)
        out.append(row(f"patch {name}", 1, nbytes, ours, into, naive, ceiling))
    return out


def patched(n: int, device: str, ceiling: float) -> list[dict]:
    """Four contributors' patches on one base (sparse 0.5%, rank 8, dense delta, unchanged) merged
    directly, against materialising each input then merging (what merging whole models does)."""
    from provenance.kernels import merge as k
    from provenance.kernels import patch as p
    from provenance.kernels.merge_patches import merge_patches

    g = torch.Generator(device=device).manual_seed(2)
    rows_, cols = n // 1024, 1024
    base = torch.randn(rows_, cols, generator=g, device=device)
    nnz = n // 200
    idx = torch.randperm(n, generator=g, device=device)[:nnz].sort().values
    patches = [("sparse", idx, torch.randn(nnz, generator=g, device=device)),
               ("low_rank", torch.randn(rows_, 8, generator=g, device=device),
                torch.randn(8, cols, generator=g, device=device), 0.5),
               ("dense", torch.randn(rows_, cols, generator=g, device=device)), None]
    lam = [0.25] * 4
    out = torch.empty_like(base).fill_(1.0)

    def naive():
        thetas = [base.clone() if q is None else p.apply_chain(base, [q]) for q in patches]
        return k.weighted_average(thetas, lam)

    nbytes = 3 * n * 4 + nnz * 12 + (rows_ + cols) * 8 * 4  # base, dense delta, output; sparse entries, factors
    ours = bench(lambda: merge_patches(base, patches, lam), device)
    into = bench(lambda: merge_patches(base, patches, lam, out=out), device)
    slow = bench(naive, device)
    return [row("merge patches directly (sparse, low rank, dense, none)", 4, nbytes, ours, into, slow, ceiling)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 23)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    n, device = args.elements, args.device
    ceiling = copy_gbs(2 * n * 4 * 4, device)  # a copy of 4 tensors' worth: well past the caches
    print(f"device {device}, {n:,} fp32 elements per tensor, copy ceiling {ceiling:.2f} GB/s", flush=True)
    rows = merges(n, device, ceiling) + patches(n, device, ceiling) + patched(n, device, ceiling)
    inplace = inplace_rows(n, device)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "elements": n, "copy_gb_s": round(ceiling, 2), "rows": rows, "inplace": inplace}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['device']}; copy ceiling {ceiling:.2f} GB/s; {n:,} fp32 elements per tensor")
    print("| kernel | N | ms | GB/s | × copy | ms into existing output | × copy | naive torch ms | × faster than naive |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kernel']} | {r['n']} | {r['ms']} | {r['gb_s']} | {r['vs_copy']} | {r['out_ms']} | "
              f"{r['out_vs_copy']} | {r['naive_ms']} | {r['vs_naive']} |")
    print("\n| Fisher merge into an existing output | N | ms | in-place torch ms | × faster |\n|---|---:|---:|---:|---:|")
    for r in inplace:
        print(f"| fisher_merge(out=) vs in-place torch | {r['n']} | {r['ms']} | {r['inplace_ms']} | {r['vs_inplace']} |")


if __name__ == "__main__":
    main()
