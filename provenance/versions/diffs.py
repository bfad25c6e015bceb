"""How two versions differ, per parameter group: the encoding a commit would pick, the fraction
of elements changed and the rank of the change (:func:`diff`, ``prov model diff``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from provenance.history import History, materialize, numel
from provenance.ledger import LedgerStore
from provenance.patches import changed_mask, encode
from provenance.records import VersionRecord
from provenance.tensorfile import dtype_from_name
from provenance.versions.groups import dtype_of


def diff(ledger: LedgerStore, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]:
    """Per parameter group, how ``new`` differs from ``old`` (any two versions): the encoding a
    commit of ``new`` on ``old`` would pick (where ``old`` is ``new``'s first parent and ``new``
    stores a sparse or low-rank patch on it: that patch, a LoRA update's factors), the fraction of elements whose bits
    changed, the rank of the change up to its dtype's rounding (2-D groups up to 1024 on a side),
    and the bytes of that patch against the group's full size. Reads one group of each version at
    a time."""
    a, b = ledger.version(old), ledger.version(new)
    store, history = ledger.object_store(), History(ledger)
    live_a = {n for n, p in history.manifest(a.version_id).items() if p.encoding != "removed"}
    live_b = {n for n, p in history.manifest(b.version_id).items() if p.encoding != "removed"}
    rows = []
    for name in sorted(live_a | live_b):
        if name not in live_a or name not in live_b:
            p = history.manifest(b.version_id if name in live_b else a.version_id)[name]
            full = numel(p.shape) * torch.empty((), dtype=dtype_from_name(p.dtype)).element_size()
            rows.append({"name": name, "status": "removed" if name not in live_b else "added", "encoding": None,
                         "changed": 1.0, "rank": None, "patch_bytes": 0 if name not in live_b else full,
                         "full_bytes": full})
            continue
        x = materialize(history, store, a.version_id, name)[0]
        y = materialize(history, store, b.version_id, name)[0]
        full = y.numel() * y.element_size()
        if x.shape != y.shape or x.dtype != y.dtype:
            was, now = (f"{dtype_of(t)}{list(t.shape)}" if x.dtype != y.dtype else str(list(t.shape)) for t in (x, y))
            status = f"{'retyped' if x.shape == y.shape else 'reshaped'} {was} -> {now}"
            rows.append({"name": name, "status": status, "encoding": "full",
                         "changed": 1.0, "rank": None, "patch_bytes": full, "full_bytes": full})
            continue
        mask = changed_mask(x, y)
        patch = encode(x, y, changed=mask)  # the mask is computed once, for both
        encoding, nbytes = patch.encoding, patch.nbytes
        stored = history.manifest(b.version_id)[name] if b.parents[:1] == [a.version_id] else None
        if stored is not None and stored.encoding in ("sparse", "low_rank") and encoding != "unchanged":
            encoding, nbytes = stored.encoding, stored.nbytes  # a child's patch as stored (a LoRA's factors)
        changed = int(mask.sum()) / y.numel() if y.numel() else 0.0
        rank = None
        if (encoding != "unchanged" and y.dim() == 2 and y.is_floating_point() and y.element_size() >= 2
                and max(y.shape) <= 1024):  # FP8: no rank (its rounding hides any update; torch has no max)
            rank = _rank(x, y)
        rows.append({"name": name, "status": "unchanged" if encoding == "unchanged" else "changed",
                     "encoding": encoding, "changed": changed, "rank": rank, "patch_bytes": nbytes,
                     "full_bytes": full})
    return rows


def _rank(x: torch.Tensor, y: torch.Tensor) -> int | None:
    """The rank of ``y - x`` up to the rounding of ``y``'s dtype: ``y = x + B @ A`` computed in
    float32 differs from the exact sum by up to half an ulp of each element, noise that is of
    full rank (taken exactly, every LoRA update was rank 32). Singular values below the norm such
    noise has (entries up to ``eps · max|value|``: about ``(√m + √n)`` times that) are not
    counted; the bound over every sign pattern (``√(m·n)`` times) hid real bf16 updates."""
    delta = y.double() - x.double()
    if not bool(torch.isfinite(delta).all()):
        return None
    scale = max(float(x.abs().max()), float(y.abs().max())) if y.numel() else 0.0
    atol = torch.finfo(y.dtype).eps * scale * (math.sqrt(y.shape[0]) + math.sqrt(y.shape[1]))
    return int(torch.linalg.matrix_rank(delta, atol=atol, rtol=max(y.shape) * torch.finfo(torch.float64).eps))
