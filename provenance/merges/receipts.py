"""What a merge receipt records, used again: :func:`receipt_check` re-runs a merge group by group
from the recorded inputs, Fishers and settings and compares the result bit for bit, and
:class:`RecordedFisher` gives an input's Fisher as the receipt recorded it (a retraction's
re-merge passes it as ``fisher=``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from provenance import merge as methods
from provenance.errors import InvalidParameterError
from provenance.history import History, materialize
from provenance.ledger import LedgerStore
from provenance.merges.direct import merge_direct, patch_direct
from provenance.merges.fishers import fisher_norms, fisher_sources, fisher_tensor
from provenance.merges.groups import kept_groups, kept_value, merge_group, settle
from provenance.objects import address_of
from provenance.records import VersionRecord


def receipt_check(ledger: LedgerStore, version: str | VersionRecord) -> dict[str, bool]:
    """Re-run the merge a receipt records, group by group, from the recorded inputs, Fishers and
    settings, on the device type it ran on (a Triton merge needs a CUDA device); per parameter,
    whether the inputs still hash as recorded and the result is bit-identical to the merged tensor."""
    ver = ledger.version(version)
    receipt = ledger.receipt(ver)
    if receipt is None:
        raise InvalidParameterError(f"version {ver.version_id[:12]} is not a merge")
    device = torch.device("cuda") if receipt.kernel.startswith("triton") else None
    if device is not None and not torch.cuda.is_available():
        raise InvalidParameterError(f"the merge {ver.version_id[:12]} ran on a CUDA device ({receipt.kernel}); "
                                    "re-running it bit for bit needs one")
    recorded = receipt.groups
    inputs = [ledger.version(v) for v in receipt.inputs]
    ids, lam, method = receipt.inputs, list(receipt.weights), receipt.method
    history, store = History(ledger), ledger.object_store()
    names = sorted(recorded)
    how = methods.get(method)
    kept = kept_groups(history, ids[0], names)
    averaged = [n for n in names if n not in kept]
    fishers = fisher_sources(ledger, inputs, averaged, rows=_recorded_fishers(recorded, averaged, len(ids))) \
        if how.needs_fisher else None
    norms = fisher_norms(fishers, averaged) if how.needs_fisher and receipt.normalize else None
    out = {}
    for name in names:
        recorded_inputs = recorded[name].inputs  # None: merged directly from the inputs' patches
        direct = patch_direct(history, store, ids, name, method, receipt.base_version) \
            if recorded_inputs is None and device is not None and name not in kept else None
        if name in kept:
            thetas = [materialize(history, store, vid, name)[0] for vid in ids]
            same_inputs = [address_of(t) for t in thetas] == recorded_inputs
            merged, fisher_objects = kept_value(name, thetas, ids), None
        elif direct is not None:  # on CUDA the direct path is the fused kernel's own rounding: re-run it
            merged, fisher_objects, _ = merge_direct(direct, method, name, fishers, lam, receipt.eps, norms,
                                                     device)
            same_inputs = True
        else:  # on the CPU the direct paths are bit for bit the merge of the whole inputs: check that
            thetas = [materialize(history, store, vid, name)[0] for vid in ids]
            same_inputs = recorded_inputs is None or [address_of(t) for t in thetas] == recorded_inputs
            merged, fisher_objects = merge_group(method, name, thetas, fishers, lam, receipt.eps, norms,
                                                 receipt.density, history, store, receipt.base_version,
                                                 device)
        results = {address_of(merged)}  # a merge made before non-finite elements were settled stored this
        if name not in kept:
            settled, inputs = settle(merged, method, name, history, store, ids, fishers, lam, receipt.eps, norms)
            if inputs is not None:  # it held NaN or Inf: the settled result too (a finite one is hashed once)
                results.add(address_of(settled))
        same_fishers = fisher_objects == recorded[name].fishers
        out[name] = same_inputs and same_fishers and recorded[name].merged in results
    return out


class RecordedFisher(Mapping):
    """The Fisher of one input of a merge as its receipt records it (parameter name -> tensor,
    each read from the object store when asked for): what a re-merge without some inputs passes
    as ``fisher=``, so it merges with the same Fishers whatever is stored with the input now."""

    def __init__(self, ledger: LedgerStore, version: str | VersionRecord, input_version: str):
        receipt = ledger.receipt(version)
        if receipt is None:
            raise InvalidParameterError(f"version {ledger.version(version).version_id[:12]} is not a merge")
        index = receipt.inputs.index(ledger.version(input_version).version_id)
        manifest = ledger.manifest(input_version)
        self._store, self._shapes = ledger.object_store(), {n: manifest[n].shape for n in receipt.groups}
        self._rows = _recorded_fishers(receipt.groups, sorted(receipt.groups), len(receipt.inputs))[index]

    def __getitem__(self, name: str) -> torch.Tensor:
        return fisher_tensor(self._store, self._rows[name], self._shapes[name])

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _recorded_fishers(recorded, names: list[str], n: int) -> list[dict[str, dict]]:
    """Per input, name -> ``{"kind", "objects"}`` of the Fisher objects a receipt records (read
    whatever Fisher is stored with the input now: a later one may have replaced it)."""
    rows: list[dict[str, dict]] = [{} for _ in range(n)]
    for name in names:
        for i, objects in enumerate(recorded[name].fishers or []):
            if objects:
                rows[i][name] = {"kind": "full" if "full" in objects else "topk", "objects": dict(objects)}
    return rows
