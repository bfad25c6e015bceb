"""The torch path of the elementwise merges (:mod:`provenance.kernels.merge`): the reference, and the
path of what neither the Triton kernel nor the numba loop (:mod:`provenance.kernels.merge_cpu`)
takes (float16 on the CPU, more than 8 models, CUDA tensors without Triton). Each chunk of every
input is read once; the steps are in-place ops on a few buffers of the chunk's size, reused from
chunk to chunk, accumulating in float32 (float64 for float64 inputs: :func:`_acc_dtype`).
"""

from __future__ import annotations

import torch

CHUNK = 1 << 18  # elements per step of the torch path on CPU, so its buffers stay in cache


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def _merge_torch(mode, out, base, thetas, fishers, lam, extra, eps) -> None:
    """The merge ``mode`` into ``out``, chunk by chunk: each chunk of every input is read once, and
    the steps are in-place ops on a few buffers of the chunk's size, reused from chunk to chunk."""
    n, acc = out.numel(), _acc_dtype(out.dtype)
    step = CHUNK if out.device.type == "cpu" else n
    bufs = torch.empty(7, min(step, n), dtype=acc, device=out.device)
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        m, w, p, q, t, u, b = bufs[:, : sl.stop - sl.start]
        xs = [x.view(-1)[sl] for x in thetas]
        if mode in ("task", "ties"):
            b.copy_(base.view(-1)[sl])  # upcast once, so that x - b is computed in the accumulation dtype
        if mode == "mean":
            _running_mean(m, xs, lam, t)
        elif mode == "fisher":
            m.zero_()
            w.zero_()
            for x, f, lam_i, norm in zip(xs, fishers, lam, extra):
                a = p.copy_(f.view(-1)[sl])  # F'ᵢ λᵢ, then the step's ratio a / W
                if norm != 1.0:
                    a.div_(norm)
                a.clamp_min_(eps).mul_(lam_i)
                w.add_(a)
                a.div_(w).masked_fill_(w == 0, 0.0)  # 0/0 only where every weight so far is 0
                m.addcmul_(a, torch.sub(x, m, out=t))
            holes = w == 0  # Σ λᵢ F'ᵢ == 0: the λ-weighted average there (rare, so computed lazily)
            if holes.any():
                m.copy_(torch.where(holes, _running_mean(q, xs, lam, t), m))
        elif mode == "task":
            m.copy_(b)
            for x, lam_i in zip(xs, lam):
                m.add_(torch.sub(x, b, out=t), alpha=lam_i)
        else:  # ties: λ-weighted sums and weights of the positive (m, w) and negative (p, q) trimmed values
            for buf in (m, w, p, q):
                buf.zero_()
            for x, lam_i, threshold in zip(xs, lam, extra):
                tau = torch.sub(x, b, out=t)
                if threshold > 0:  # trim: zero the magnitudes under the model's threshold
                    tau.masked_fill_(torch.abs(tau, out=u) < threshold, 0.0)
                m.add_(torch.clamp_min(tau, 0.0, out=u), alpha=lam_i)
                w.add_(u.sign_(), alpha=lam_i)  # λ where τ̂ > 0, with no bool-to-float conversion
                p.add_(torch.clamp_max(tau, 0.0, out=u), alpha=lam_i)
                q.sub_(u.sign_(), alpha=lam_i)
            up = (m + p) >= 0
            den = torch.where(up, w, q)
            m.copy_(torch.where(up, m, p).div_(den).masked_fill_(den == 0, 0.0)).add_(b)
        out.view(-1)[sl].copy_(m)


def _running_mean(m: torch.Tensor, xs: list[torch.Tensor], lam: list[float], tmp: torch.Tensor) -> torch.Tensor:
    """The λ-weighted running mean of ``xs`` into ``m`` (scalar weights, so the ratio is a float)."""
    m.zero_()
    total = 0.0
    for x, lam_i in zip(xs, lam):
        total += lam_i
        if lam_i:
            m.add_(torch.sub(x, m, out=tmp), alpha=lam_i / total)
    return m
