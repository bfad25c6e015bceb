"""``full``: the tensor itself; always exact, the fallback of ``auto``."""

from __future__ import annotations

import torch

from provenance.kernels.patch import apply_full
from provenance.patches import Encoding, Patch, register


class Full(Encoding):
    name = "full"

    def encode(self, base: torch.Tensor, target: torch.Tensor, **hints) -> Patch | None:
        return Patch(self.name, {"full": target.detach().contiguous()})

    def apply(self, base: torch.Tensor, patch: Patch) -> torch.Tensor:
        return apply_full(base, patch.tensors["full"])


register(Full())
