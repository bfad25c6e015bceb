"""``sparse``: flat indices of the elements whose bits changed and their new values.

Replacement values, not deltas, so the patch is exact for every dtype (a float delta added back
need not round to the same value). Indices are int32 when the tensor has fewer than 2**31
elements, else int64.
"""

from __future__ import annotations

import torch

from provenance.kernels.patch import apply_sparse
from provenance.patches import Encoding, Patch, _bits, register


class Sparse(Encoding):
    name = "sparse"

    def encode(self, base: torch.Tensor, target: torch.Tensor, **hints) -> Patch | None:
        size = base.element_size()
        changed = (_bits(base).view(-1, size) != _bits(target).view(-1, size)).any(dim=1)
        indices = torch.nonzero(changed).reshape(-1)
        indices = indices.to(torch.int32 if base.numel() < 2**31 else torch.int64)
        values = target.detach().contiguous().reshape(-1)[indices.long()].clone()
        return Patch(self.name, {"indices": indices, "values": values})

    def apply(self, base: torch.Tensor, patch: Patch) -> torch.Tensor:
        return apply_sparse(base, patch.tensors["indices"], patch.tensors["values"])


register(Sparse())
