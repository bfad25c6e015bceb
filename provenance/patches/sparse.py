"""``sparse``: flat indices of the elements whose bits changed and their new values.

Replacement values, not deltas, so the patch is exact for every dtype (a float delta added back
need not round to the same value). Indices are int32 when the tensor has fewer than 2**31
elements, else int64.
"""

from __future__ import annotations

import torch

from provenance.kernels.patch import apply_sparse
from provenance.patches import Encoding, Patch, changed_indices, changed_mask, count_changed, register


class Sparse(Encoding):
    name = "sparse"

    def encode(self, base: torch.Tensor, target: torch.Tensor, changed: torch.Tensor | None = None,
               auto: bool = False, **hints) -> Patch | None:
        if changed is None:
            changed = changed_mask(base, target)
        index_dtype = torch.int32 if base.numel() < 2**31 else torch.int64
        n = count_changed(changed)
        if auto and n * (base.element_size() + index_dtype.itemsize) >= base.numel() * base.element_size():
            return None  # cannot beat the full tensor: skip gathering the values
        indices = changed_indices(changed)
        values = target.detach().contiguous().reshape(-1)[indices]
        return Patch(self.name, {"indices": indices.to(index_dtype), "values": values})

    def apply(self, base: torch.Tensor, patch: Patch) -> torch.Tensor:
        return apply_sparse(base, patch.tensors["indices"], patch.tensors["values"])


register(Sparse())
