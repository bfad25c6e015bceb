"""Model versions: commit a state as patches against its parent, check a version out losslessly.

A commit walks the state one parameter group at a time: it checks the group against the
parent's (same shape and dtype, finite values), encodes the difference with the smallest exact
patch (:mod:`provenance.patches`), writes the patch's tensors to the object store, and finally
inserts the version and its manifest in one ledger transaction. A crash before that transaction
leaves only unreferenced objects, which no version shows; ``prov gc`` (to come) removes them.

Checkout replays, per parameter group, the patches from the nearest full copy up the chain of
first parents. (A snapshot policy that bounds chain length comes with the rest of the versions
issue.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import xxhash

from provenance.errors import InvalidParameterError, ObjectCorruptError, ObjectMissingError, ProvenanceError
from provenance.ledger import Ledger
from provenance.objects import ObjectStore
from provenance.patches import Patch, encode
from provenance.records import ParamRecord, VersionRecord


def _load_state(state: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if path.suffix != ".safetensors":
            raise InvalidParameterError(f"{path}: expected a .safetensors file or a state dict")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise InvalidParameterError(f"{path}: no such file") from None
        except Exception as exc:  # safetensors raises its own errors for corrupt headers
            raise InvalidParameterError(f"{path}: not a readable safetensors file: {exc}") from None
    if isinstance(state, Mapping):
        return state
    if hasattr(state, "state_dict"):
        return state.state_dict()
    raise InvalidParameterError(f"cannot commit a {type(state).__name__}: give a state dict, a module or a .safetensors path")


def _check_tensor(name: Any, tensor: Any, allow_nonfinite: bool) -> torch.Tensor:
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"parameter names must be non-empty strings, got {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise InvalidParameterError(f"parameter {name!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach()
    if tensor.is_floating_point() and not allow_nonfinite and tensor.numel():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            first = int(torch.nonzero(bad.reshape(-1))[0])
            raise InvalidParameterError(
                f"parameter {name!r} holds {int(bad.sum())} NaN or Inf values (first at flat index {first}); "
                "pass allow_nonfinite=True to store them"
            )
    return tensor.cpu()


def commit(
    ledger: Ledger,
    state: Any,
    *,
    parent: str | VersionRecord | None = None,
    message: str,
    author: str | None = None,
    run: str | None = None,
    encoding: str = "auto",
    low_rank: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None,
    allow_nonfinite: bool = False,
) -> VersionRecord:
    """Store ``state`` (a state dict, a module, or a .safetensors path) as a new version.

    Each parameter group is stored against ``parent`` with ``encoding`` (``"auto"``: the smallest
    exact one). ``low_rank`` gives, per parameter name, factors ``(B, A, scale)`` whose
    ``base + scale * B @ A`` is the new value (e.g. a LoRA update); they are used when exact.
    """
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a commit needs a message")
    # The ledger's lock is held from the first object written to the version's row, so that
    # `gc` in another process never sees this commit's objects as unreferenced.
    with ledger.session():
        return _commit(ledger, _load_state(state), parent, message, author, run, encoding, low_rank, allow_nonfinite)


def _commit(ledger, tensors, parent, message, author, run, encoding, low_rank, allow_nonfinite) -> VersionRecord:
    parent_rec = ledger.version(parent) if parent is not None else None
    if run is not None:
        run_rec = ledger.run(run)
        if run_rec.status != "running":
            raise InvalidParameterError(f"run {run_rec.run_id[:12]} is {run_rec.status}: only a running run can commit")
        if parent_rec is None and run_rec.base_version is not None:
            parent_rec = ledger.version(run_rec.base_version)
        if (parent_rec.version_id if parent_rec else None) != run_rec.base_version:
            raise InvalidParameterError(
                f"run {run_rec.run_id[:12]} started from {(run_rec.base_version or 'nothing')[:12]}, "
                f"so its version's parent must be that, not {parent_rec.version_id[:12] if parent_rec else 'none'}"
            )
        run = run_rec.run_id
    history = _History(ledger)
    parent_manifest = history.manifest(parent_rec.version_id) if parent_rec else {}
    store = ObjectStore(ledger.objects_path)
    low_rank = dict(low_rank or {})
    unknown = sorted(set(low_rank) - set(tensors))
    if unknown:
        raise InvalidParameterError(f"low_rank factors given for parameters not in the state: {', '.join(unknown)}")
    # Check everything before writing anything: a refused commit leaves no object behind.
    checked = {}
    for name in sorted(tensors, key=str):
        target = _check_tensor(name, tensors[name], allow_nonfinite)
        previous = parent_manifest.get(name)
        if previous is not None and previous.encoding != "removed":
            if list(target.shape) != previous.shape or _dtype(target) != previous.dtype:
                raise InvalidParameterError(
                    f"parameter {name!r} is {_dtype(target)}{list(target.shape)} but {previous.dtype}{previous.shape} "
                    f"in the parent {parent_rec.version_id[:12]}"
                )
        checked[name] = target

    params: list[ParamRecord] = []
    n_elements = full_bytes = stored = 0
    for name, target in checked.items():
        n_elements += target.numel()
        full_bytes += target.numel() * target.element_size()
        previous = parent_manifest.get(name)
        if previous is not None and previous.encoding != "removed":
            base = _materialize(history, store, parent_rec.version_id, name)
            hints = {"low_rank": low_rank[name]} if name in low_rank else {}
            patch = encode(base, target, encoding=encoding, **hints)
        else:
            patch = encode(target, target, encoding="full")  # a new parameter: stored whole
        objects = {role: store.put(t).address for role, t in patch.tensors.items()}
        stored += patch.nbytes
        params.append(ParamRecord(name=name, dtype=_dtype(target), shape=list(target.shape), encoding=patch.encoding,
                                  objects=objects, meta=patch.meta, nbytes=patch.nbytes))
    for name, previous in parent_manifest.items():
        if name not in checked and previous.encoding != "removed":
            params.append(ParamRecord(name=name, dtype=previous.dtype, shape=previous.shape, encoding="removed"))

    created = datetime.now(timezone.utc).replace(tzinfo=None)
    parents = [parent_rec.version_id] if parent_rec else []
    h = xxhash.xxh3_128(f"{parents}|{message}|{author}|{run}|{created.isoformat()}|".encode())
    for p in params:
        h.update(p.model_dump_json().encode())
    version = VersionRecord(
        version_id=h.hexdigest(), parents=parents, message=message, author=author, created_at=created, run_id=run,
        n_params=sum(p.encoding != "removed" for p in params), n_elements=n_elements, full_bytes=full_bytes,
        stored_bytes=stored,
    )
    with ledger.transaction() as tx:
        if run is not None and tx.run_status(run) != "running":
            raise InvalidParameterError(f"run {run[:12]} ended while this commit was being written")
        tx.insert_version(version, params)
        if run is not None:
            tx.end_run(run, "finished", version_id=version.version_id)
    return version


def diff(ledger: Ledger, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]:
    """Per parameter group, how ``new`` differs from ``old`` (any two versions): the encoding a
    commit of ``new`` on ``old`` would pick, the fraction of elements whose bits changed, and the
    bytes of that patch against the group's full size."""
    a, b = checkout(ledger, old), checkout(ledger, new)
    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in b or name not in a:
            t = b.get(name, a.get(name))
            rows.append({"name": name, "status": "removed" if name not in b else "added", "encoding": None,
                         "changed": 1.0, "patch_bytes": 0 if name not in b else t.numel() * t.element_size(),
                         "full_bytes": t.numel() * t.element_size()})
            continue
        x, y = a[name], b[name]
        full = y.numel() * y.element_size()
        if x.shape != y.shape or x.dtype != y.dtype:
            rows.append({"name": name, "status": f"reshaped {list(x.shape)} -> {list(y.shape)}", "encoding": "full",
                         "changed": 1.0, "patch_bytes": full, "full_bytes": full})
            continue
        patch = encode(x, y)
        size = max(1, y.element_size())
        bits_x = x.contiguous().reshape(-1).view(torch.uint8).view(-1, size) if x.numel() else None
        bits_y = y.contiguous().reshape(-1).view(torch.uint8).view(-1, size) if y.numel() else None
        changed = int((bits_x != bits_y).any(dim=1).sum()) / y.numel() if bits_x is not None else 0.0
        rows.append({"name": name, "status": "unchanged" if patch.encoding == "unchanged" else "changed",
                     "encoding": patch.encoding, "changed": changed, "patch_bytes": patch.nbytes, "full_bytes": full})
    return rows


def gc(ledger: Ledger, *, apply: bool = False) -> dict[str, Any]:
    """Objects that no version refers to (left by interrupted commits): listed, or removed with
    ``apply``. Runs holding the ledger's lock, so no commit is writing objects meanwhile."""
    store = ObjectStore(ledger.objects_path)
    with ledger.session():
        referenced = ledger.referenced_objects()
        unreferenced = [a for a in store.addresses() if a not in referenced]
        sizes = {a: store.path(a).stat().st_size for a in unreferenced}
        freed = sum(store.delete(a) for a in unreferenced) if apply else 0
    return {"unreferenced": unreferenced, "bytes": sum(sizes.values()), "removed": apply, "freed": freed}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


class _History:
    """Manifests and first parents of versions, read once per commit or checkout."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._manifests: dict[str, dict[str, ParamRecord]] = {}
        self._parents: dict[str, str | None] = {}

    def manifest(self, vid: str) -> dict[str, ParamRecord]:
        if vid not in self._manifests:
            self._manifests[vid] = self.ledger.manifest(vid)
        return self._manifests[vid]

    def parent(self, vid: str) -> str | None:
        if vid not in self._parents:
            parents = self.ledger.version(vid).parents
            self._parents[vid] = parents[0] if parents else None
        return self._parents[vid]


def _materialize(history: _History, store: ObjectStore, version_id: str, name: str) -> torch.Tensor:
    """The value of parameter ``name`` in ``version_id``: replay patches up the first-parent chain."""
    ledger = history.ledger
    chain: list[ParamRecord] = []
    vid: str | None = version_id
    while vid is not None:
        row = history.manifest(vid).get(name)
        if row is None or row.encoding == "removed":
            raise ProvenanceError(f"parameter {name!r} is not in version {vid[:12]}")
        chain.append(row)
        if row.encoding == "full":
            break
        vid = history.parent(vid)
    else:
        raise ProvenanceError(f"parameter {name!r} of version {version_id[:12]} has no full copy in its history")
    value: torch.Tensor | None = None
    for row in reversed(chain):
        patch = Patch(row.encoding, {role: _get(ledger, store, addr) for role, addr in row.objects.items()}, row.meta)
        value = patch.apply(value) if value is not None else patch.tensors["full"]
    assert value is not None
    return value


def _get(ledger: Ledger, store: ObjectStore, address: str) -> torch.Tensor:
    try:
        return store.get(address)
    except (ObjectCorruptError, ObjectMissingError) as exc:
        users = ledger.versions_using(address)
        raise type(exc)(f"{exc}; used by version(s) {', '.join(u[:12] for u in users) or 'none'}") from None


def checkout(ledger: Ledger, version: str | VersionRecord) -> dict[str, torch.Tensor]:
    """Every parameter of ``version``, bit-identical to what was committed."""
    ver = ledger.version(version)
    store = ObjectStore(ledger.objects_path)
    history = _History(ledger)
    return {
        name: _materialize(history, store, ver.version_id, name)
        for name, row in history.manifest(ver.version_id).items()
        if row.encoding != "removed"
    }
