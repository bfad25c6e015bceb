"""The patch-direct path: where every input of a merge stores a group as a patch (sparse,
low-rank or unchanged) on one shared parent, an elementwise merge never materialises the inputs.
Sparse patches are merged on the union of the positions they change; low-rank ones block of rows
by block (on a CUDA device by the fused kernel of
:func:`provenance.kernels.merge_patches.merge_patches`, which makes them in registers); either
way, on the CPU, bit for bit the whole-tensor merge.
"""

from __future__ import annotations

import torch

from provenance import merge as methods
from provenance.history import materialize
from provenance.kernels.merge_patches import merge_patches
from provenance.kernels.patch import apply_chain
from provenance.merges.fishers import check_fisher_range, group_fishers


def patch_direct(history, store, ids, name, method, base_id):
    """When every input stores ``name`` as a sparse or low-rank patch (or unchanged) on one shared
    parent, that parent's value and each input's patch, ``("sparse", indices, values)`` or
    ``("low_rank", B, A, scale)``: an elementwise merge can then make each input's value from the
    parent and its patch as it goes, never holding the inputs whole. None otherwise."""
    if not methods.get(method).direct or len(ids) < 2:
        return None
    parents = {history.parent(v) for v in ids}
    rows = [history.manifest(v)[name] for v in ids]
    if len(parents) != 1 or None in parents or any(r.encoding not in ("sparse", "low_rank", "unchanged") for r in rows):
        return None
    parent = parents.pop()
    if methods.get(method).needs_base and parent != base_id:
        return None
    theta0 = materialize(history, store, parent, name)[0]
    patches = []
    for r in rows:
        if r.encoding == "unchanged":
            patches.append(("sparse", torch.zeros(0, dtype=torch.int64), theta0.new_empty(0)))
        elif r.encoding == "sparse":
            patches.append(("sparse", store.get(r.objects["indices"]).long(), store.get(r.objects["values"])))
        else:
            patches.append(("low_rank", store.get(r.objects["B"]), store.get(r.objects["A"]), r.meta["scale"]))
    return theta0, patches


def merge_direct(direct, method, name, fishers, lam, eps, norms, device: torch.device):
    """A group whose inputs are all patches on one parent, merged without materialising them:
    on the union of the changed positions when every patch is sparse, else by
    :func:`provenance.kernels.merge_patches.merge_patches`, on ``device``. Returns the merged
    value, the Fisher objects read, and the first input (on the CPU; the new patch is encoded
    against it)."""
    if all(p[0] == "sparse" for p in direct[1]):
        return _merge_sparse(direct, method, name, fishers, lam, eps, norms, device)
    return _merge_patched(direct, method, name, fishers, lam, eps, norms, device)


def _merge_sparse(direct, method, name, fishers, lam, eps, norms, device=None):
    """The elementwise merge on the union of the inputs' changed positions, the parent elsewhere
    (bit for bit what merging the whole tensors gives: every input equals the parent there, and a
    merge of equal values returns that value exactly). Also returns the first input's value."""
    theta0, patches = direct
    flat0 = theta0.reshape(-1)
    union = torch.unique(torch.cat([idx for _, idx, _ in patches]))
    thetas_u = []
    for _, idx, values in patches:
        t = flat0[union].clone()
        t[torch.searchsorted(union, idx)] = values
        thetas_u.append(t)
    how, on = methods.get(method), mover(device)
    thetas_u = [on(t) for t in thetas_u]
    fs, fisher_objects = (group_fishers(fishers, name, lambda f: on(f.reshape(-1)[union].contiguous()))
                          if how.needs_fisher else (None, None))
    if fs is not None:
        check_fisher_range(name, fs, lam, eps, norms, theta0.dtype)
    theta0_u = on(flat0[union].clone()) if how.needs_base else None
    merged_u = how.merge(thetas_u, lam=lam, theta0=theta0_u, fishers=fs, eps=eps, norms=norms)
    merged = flat0.clone()
    merged[union] = merged_u.cpu()
    first = flat0.clone()
    first[patches[0][1]] = patches[0][2]
    return merged.reshape(theta0.shape), fisher_objects, first.reshape(theta0.shape)


def _merge_patched(direct, method, name, fishers, lam, eps, norms, device=None):
    """The elementwise merge of a group whose inputs are low-rank or sparse patches on one parent,
    by :func:`provenance.kernels.merge_patches.merge_patches`. On the CPU each input's rows are
    made from the parent's rows and its patch, block by block (bit for bit the merge of the
    materialised inputs); on a CUDA device the fused Triton kernel makes them in registers from
    the factors (``exact=False``: ``B @ A`` is never made; within float32 rounding of the CPU
    result, and bit for bit the same on a re-run there). Also returns the first input (the new
    patch is encoded against it) and the Fisher objects read."""
    theta0, patches = direct
    on = mover(device)
    fs, fisher_objects = None, None
    if methods.get(method).needs_fisher:
        fs, fisher_objects = group_fishers(fishers, name, lambda f: on(f.reshape(theta0.shape)))
        check_fisher_range(name, fs, lam, eps, norms, theta0.dtype)
    given = [None if p[0] == "sparse" and not p[1].numel() else p for p in patches]
    moved = [None if p is None else tuple(on(t) if isinstance(t, torch.Tensor) else t for t in p) for p in given]
    merged = merge_patches(on(theta0), moved, lam, method=method, fishers=fs, eps=eps, norms=norms,
                           exact=device is None or device.type == "cpu").cpu()
    first = theta0.clone() if given[0] is None else apply_chain(theta0, [given[0]])
    return merged, fisher_objects, first


def mover(device: torch.device | None):
    """A function that puts a tensor on ``device`` (the identity for the CPU)."""
    return (lambda t: t) if device is None or device.type == "cpu" else (lambda t: t.to(device))
