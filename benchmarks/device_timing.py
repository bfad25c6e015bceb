"""Timing on a torch device, shared by the kernel benchmarks (``kernels.py``, ``gpu_figures.py``)."""

from __future__ import annotations

import statistics
import time

import torch


def bench(fn, device: str, repeats: int = 7) -> float:
    """Median seconds of ``fn()`` after one warm-up call (synchronising around CUDA work)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_gbs(nbytes: int, device: str) -> float:
    """GB/s of ``dst.copy_(src)`` moving ``nbytes`` (half read, half written)."""
    src = torch.empty(nbytes // 8, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return nbytes / bench(lambda: dst.copy_(src), device) / 1e9
