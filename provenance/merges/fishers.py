"""The Fishers a merge reads. A version's diagonal Fisher is stored beside its patch by
:func:`store_fisher` (checked against its manifest: the full diagonal, or a top-k sketch); a
merge reads, per input and group, the Fisher stored with the input, one given to that merge only
(checked by :func:`given_fishers`, written by :func:`fisher_rows` as objects its receipt keeps)
or one a receipt recorded, with the addresses of the objects it read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from provenance.errors import InvalidParameterError
from provenance.history import numel
from provenance.ledger import LedgerStore
from provenance.objects import NewObjects, ObjectStore, new_objects, unstorable
from provenance.records import VersionRecord


def store_fisher(
    ledger: LedgerStore, version: str | VersionRecord, fisher: Mapping[str, torch.Tensor], *, keep: float | None = None,
    meta: Mapping[str, Any] | None = None, update: bool = False,
) -> int:
    """Store the diagonal Fisher of ``version`` (parameter name -> tensor of the parameter's shape);
    returns the bytes of the tensors stored. With ``keep`` in (0, 1], only the largest ``keep``
    fraction of each tensor's entries is kept (a top-k sketch).

    It replaces the Fisher stored for the version before, every parameter of it (one estimate,
    never a mix of two); with ``update=True`` only the parameters given are replaced, the others
    kept (a Fisher stored a few parameters at a time). Merges made with the Fisher replaced keep
    theirs: their receipts hold the objects they read."""
    ver = ledger.version(version)
    if isinstance(fisher, Mapping) and not fisher and not update:  # it would replace the stored one with none
        raise InvalidParameterError(f"the Fisher given for version {ver.version_id[:12]} holds no parameters: storing it "
                                    "would remove the Fisher stored with the version; give parameter name -> tensor")
    if meta is not None:
        try:
            if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
                raise TypeError(f"a {type(meta).__name__} was given" if not isinstance(meta, Mapping) else
                                f"a key is not text: {next(k for k in meta if not isinstance(k, str))!r}")
            json.dumps(dict(meta), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(f"meta must be a mapping of text keys to JSON values (it is stored as JSON): "
                                        f"{exc}") from None
    with ledger.session(), new_objects(ledger.object_store(), ledger.object_writers) as added:
        rows, stored = fisher_rows(ledger, ver, fisher, added, keep=keep, meta=meta)
        with ledger.transaction() as tx:
            tx.set_fishers(ver.version_id, rows, replace_all=not update)
    return stored


def fisher_rows(ledger: LedgerStore, ver: VersionRecord, fisher: Mapping[str, torch.Tensor], added: NewObjects, *,
                keep: float | None = None, meta: Mapping[str, Any] | None = None, where: str = ""
                ) -> tuple[list[dict], int]:
    """``fisher`` checked against ``ver``'s manifest and written to the object store (through
    ``added``, the write's new objects): the rows ``name, kind, objects, meta`` that record it,
    and the bytes of the tensors. ``where`` begins a refusal's message (which Fisher it is)."""
    check_fisher_mapping(fisher, where or f"the Fisher given for version {ver.version_id[:12]} ")
    manifest = {n: p for n, p in ledger.manifest(ver).items() if p.encoding != "removed"}
    unknown = sorted(set(fisher) - set(manifest))
    if unknown:
        raise InvalidParameterError(f"Fisher given for parameters not in version {ver.version_id[:12]}: {', '.join(unknown)}")
    if keep is not None and not 0 < keep <= 1:
        raise InvalidParameterError(f"keep must be in (0, 1], got {keep!r}")
    rows, stored = [], 0
    for name in sorted(fisher):
        f = fisher[name]
        if not isinstance(f, torch.Tensor) or list(f.shape) != manifest[name].shape:
            shape = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise InvalidParameterError(f"{where}Fisher of {name!r} is {shape}, the parameter is {manifest[name].shape}")
        if f.is_complex():
            raise InvalidParameterError(f"{where}Fisher of {name!r} is {str(f.dtype).removeprefix('torch.')}: a "
                                        "Fisher holds real, non-negative values")
        refusal = unstorable(f)
        if refusal is not None:  # a meta Fisher failed in torch ("Cannot copy out of meta tensor")
            raise InvalidParameterError(f"{where}Fisher of {name!r} is {refusal}")
        f = f.detach().to("cpu")
        wide = f.dtype == torch.float64  # its values may lie beyond float32's range: checked as given
        if not wide:
            f = f.to(torch.float32).contiguous()  # (FP8 has no isfinite or comparisons of its own)
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise InvalidParameterError(f"{where}Fisher of {name!r} holds negative, NaN or Inf values")
        f = f.to(torch.float32).contiguous()
        if wide and not bool(torch.isfinite(f).all()):
            raise InvalidParameterError(f"{where}Fisher of {name!r} holds values beyond float32's range (it is stored "
                                        "as float32): scale it down; a merge uses only its ratios")
        if keep is None or keep == 1 or f.numel() == 0:
            tensors, kind = {"full": f}, "full"
        else:
            k = max(1, math.ceil(keep * f.numel()))
            values, indices = torch.topk(f.reshape(-1), k, sorted=False)
            order = torch.argsort(indices)
            tensors, kind = {"indices": indices[order].to(torch.int64), "values": values[order]}, "topk"
        objects = {role: added.put(t).address for role, t in tensors.items()}
        stored += sum(t.numel() * t.element_size() for t in tensors.values())
        rows.append({"name": name, "kind": kind, "objects": objects, "meta": dict(meta or {}, keep=keep)})
    return rows, stored


def check_fisher_mapping(fisher: Any, what: str) -> None:
    """Refuse a Fisher that is not a mapping of parameter names (text) to tensors, before it is
    read: a tensor, a list of pairs or None failed inside torch or ``str.join`` ("Boolean value of
    Tensor with more than one value is ambiguous"). ``what`` names the Fisher."""
    what = what.removesuffix(": ").strip()
    if not isinstance(fisher, Mapping):
        raise InvalidParameterError(f"{what} is a {type(fisher).__name__}: give a mapping of parameter name -> tensor")
    odd = next((k for k in fisher if not isinstance(k, str)), None)
    if odd is not None:
        raise InvalidParameterError(f"{what} has a key that is not a parameter name (text): {odd!r}")


def load_fisher(ledger: LedgerStore, version: str | VersionRecord, name: str) -> torch.Tensor | None:
    """The stored Fisher of one parameter of ``version`` (a top-k sketch filled with 0), or None."""
    ver = ledger.version(version)
    row = ledger.fishers(ver).get(name)
    if row is None:
        return None
    return fisher_tensor(ledger.object_store(), row, ledger.manifest(ver)[name].shape)


def fisher_tensor(store: ObjectStore, row: dict, shape: list[int]) -> torch.Tensor:
    if row["kind"] == "full":
        return store.get(row["objects"]["full"])
    out = torch.zeros(numel(shape), dtype=torch.float32)
    out[store.get(row["objects"]["indices"])] = store.get(row["objects"]["values"])
    return out.reshape(shape)


def given_fishers(ledger, inputs, fisher, names) -> list[Mapping[str, torch.Tensor]]:
    """The Fishers passed to a merge, in input order, checked to cover every parameter."""
    if isinstance(fisher, Mapping) and any(isinstance(v, torch.Tensor) for v in fisher.values()):
        raise InvalidParameterError("fisher= maps parameter names to tensors: that is one Fisher; give one per input, "
                                    "as a list in their order or a mapping from version")
    if isinstance(fisher, Mapping):
        keyed, said = {}, {}
        for k, v in fisher.items():
            vid = ledger.version(k).version_id
            if vid in keyed:  # one of the two would be dropped without a word
                raise InvalidParameterError(f"fisher= gives version {vid[:12]} two Fishers ({said[vid]!r} and {k!r})")
            keyed[vid], said[vid] = v, k
        missing = [v.version_id[:12] for v in inputs if v.version_id not in keyed]
        if missing:
            raise InvalidParameterError(f"no Fisher given for version(s) {', '.join(missing)}")
        given = [keyed[v.version_id] for v in inputs]
    elif isinstance(fisher, (str, bytes)) or not isinstance(fisher, Sequence):
        raise InvalidParameterError(f"fisher= is a {type(fisher).__name__}: give one Fisher (parameter name -> tensor) "
                                    "per input, as a list in their order or a mapping from version")
    else:
        given = list(fisher)
    if len(given) != len(inputs):
        raise InvalidParameterError(f"{len(given)} Fishers for {len(inputs)} versions")
    for i, (v, f) in enumerate(zip(inputs, given), 1):
        check_fisher_mapping(f, f"the Fisher given for input {i} ({v.version_id[:12]})")
        absent = [n for n in names if n not in f]
        if absent:
            raise InvalidParameterError(f"the Fisher of {v.version_id[:12]} lacks {', '.join(absent[:5])}")
        # a misspelt name was dropped without a word (store_fisher refuses it)
        unknown = sorted(set(f) - {n for n, p in ledger.manifest(v).items() if p.encoding != "removed"})
        if unknown:
            raise InvalidParameterError(f"the Fisher given for input {i} ({v.version_id[:12]}) names parameters not in "
                                        f"the version: {', '.join(map(repr, unknown[:5]))}"
                                        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return given


def fisher_sources(ledger, inputs, names, rows=None):
    """Per input, a function name -> (its stored Fisher tensor, the object addresses); ``rows``:
    per input, name -> ``{"kind", "objects"}`` to read instead of the Fishers stored with them."""
    store = ledger.object_store()
    stored = [ledger.fishers(v) for v in inputs] if rows is None else rows
    lacking = {v.version_id[:12]: [n for n in names if n not in rows] for v, rows in zip(inputs, stored)}
    lacking = {vid: absent for vid, absent in lacking.items() if absent}
    if lacking:  # which parameters: a Fisher stored a few at a time (update=True) may lack one
        which = "; ".join(f"{vid} lacks {', '.join(map(repr, absent[:3]))}{' ...' if len(absent) > 3 else ''} "
                          f"({len(absent)} of {len(names)})" for vid, absent in lacking.items())
        raise InvalidParameterError(
            f"version(s) {', '.join(lacking)} have no stored Fisher for every parameter ({which}): store one with "
            "ledger.store_fisher(version, fisher) (update=True adds parameters to a stored one; docs/merging.md) or "
            "pass fisher=..., or merge by another method (--method average, task_arithmetic or ties)"
        )
    manifests = [ledger.manifest(v) for v in inputs]

    def source(rows, manifest):
        return lambda name: (fisher_tensor(store, rows[name], manifest[name].shape), rows[name]["objects"])

    return [source(rows, m) for rows, m in zip(stored, manifests)]


def fisher_norms(fishers, names) -> list[float]:
    """Per input, the L2 norm of its whole Fisher (all parameter groups)."""
    return [math.sqrt(sum(float(source(n)[0].double().square().sum()) for n in names)) or 1.0 for source in fishers]


#: The largest float32: the merge kernels sum ``λᵢ·F'ᵢ`` in float32 (float64 for float64 groups).
FLOAT32_MAX = torch.finfo(torch.float32).max


def check_fisher_range(name: str, fishers: Sequence[torch.Tensor], lam: Sequence[float], eps: float,
                       norms: Sequence[float] | None, dtype: torch.dtype) -> None:
    """Refuse a Fisher merge of group ``name`` whose sums ``Σ λᵢ·max(Fᵢ / normᵢ, eps)`` can pass
    float32's range, where the kernels add them up (one pass over each Fisher, for its largest
    value), or whose norms do. Past it the running mean's weights overflowed: Fishers of 3e38 with
    weights 1 and 1 gave the first input back as the merge, larger ones NaN, and a norm beyond
    float32 made every normalised Fisher 0 (so eps: a plain average)."""
    if dtype == torch.float64 or not fishers or not fishers[0].numel():
        return
    if norms and not max(norms) <= FLOAT32_MAX:  # 1 / inf: every element's Fisher fell to eps, unweighted
        i, top = max(enumerate(norms, 1), key=lambda p: p[1])
        raise InvalidParameterError(
            f"the Fisher merge of parameter {name!r} would overflow float32: the L2 norm of input {i}'s Fisher is "
            f"{top:.3g}, beyond {FLOAT32_MAX:.3g}, and normalize=True divides by it in float32; divide every input's "
            "Fisher by one factor (a merge uses only their ratios)")
    scale = norms or [1.0] * len(fishers)
    tops = [float(f.max()) for f in fishers]
    bound = sum(w * max(top / s, eps) for w, top, s in zip(lam, tops, scale))
    if not bound <= FLOAT32_MAX:
        raise InvalidParameterError(
            f"the Fisher merge of parameter {name!r} would overflow float32, in which it sums each input's weight "
            f"times its Fisher: the Fishers reach {max(tops):.3g}, eps is {eps:g} and the weights are {list(lam)} "
            f"(a sum up to {bound:.3g}, beyond {FLOAT32_MAX:.3g}); divide every input's Fisher by one factor (a merge "
            "uses only their ratios), merge with normalize=True, or give smaller weights or eps")


def group_fishers(fishers, name: str, prepare) -> tuple[list[torch.Tensor], list]:
    """Each input's Fisher of group ``name`` passed through ``prepare`` (a slice, a reshape, a move
    to the merge's device), and the object addresses they were read from."""
    fs, addresses = [], []
    for source in fishers:
        f, address = source(name)
        fs.append(prepare(f))
        addresses.append(address)
    return fs, addresses
