"""``low_rank``: factors B (out × r), A (r × in) and a scale; the patched tensor is
``base + scale · B @ A`` computed by :func:`provenance.kernels.patch.apply_low_rank`.

Only used when the caller gives the factors (``low_rank=(B, A, scale)``, e.g. from a LoRA
adapter) and they reproduce the target exactly under that function.
"""

from __future__ import annotations

import torch

from provenance.kernels.patch import apply_low_rank
from provenance.patches import Encoding, Patch, register, same_bits


class LowRank(Encoding):
    name = "low_rank"

    def encode(self, base: torch.Tensor, target: torch.Tensor, low_rank=None, **hints) -> Patch | None:
        if low_rank is None:  # (factors for a tensor that is not 2-D are refused by apply, naming its shape)
            return None
        b, a, scale = low_rank
        patch = Patch(self.name, {"B": b.detach().contiguous(), "A": a.detach().contiguous()}, {"scale": float(scale)})
        return patch if same_bits(self.apply(base, patch), target) else None

    def apply(self, base: torch.Tensor, patch: Patch) -> torch.Tensor:
        return apply_low_rank(base, patch.tensors["B"], patch.tensors["A"], patch.meta["scale"])


register(LowRank())
