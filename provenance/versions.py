"""Model versions: commit a state as patches against its parent, check a version out losslessly.

A commit walks the state one parameter group at a time (a state dict, a safetensors file, a
sharded checkpoint read tensor by tensor, or a PEFT LoRA adapter applied to the parent): it checks
the group against the parent's (same shape and dtype, finite values), encodes the difference with
the smallest exact patch (:mod:`provenance.patches`), writes the patch's tensors to the object
store, and finally inserts the version and its manifest in one ledger transaction. A refused
commit removes the objects it had written; a killed one leaves only unreferenced objects, which
no version shows and ``prov gc`` removes.

What a commit stores, bit for bit: dense tensors of every dtype that both torch and safetensors
hold (bool, int8 to int64, uint8 to uint64, float16, bfloat16, float32, float64 and the FP8
formats; :func:`provenance.objects.unstorable`), NaN payloads and ``-0.0`` included; a
``torch._neg_view`` is stored as the values it shows. It refuses, naming the parameter: meta
tensors, sparse layouts, quantized tensors, and complex tensors (conjugate views included), which
are not stored: ``torch.view_as_real(t)`` is their exact real form. NaN or Inf values are refused
with :class:`~provenance.errors.NonFiniteError` unless ``allow_nonfinite=True``.

Checkout replays, per parameter group, the patches from the nearest full copy up the chain of
first parents. The :class:`SnapshotPolicy` bounds that chain: a group is stored whole again when
its chain would pass ``every`` patches or ``max_chain_ratio`` of its full size in patch bytes.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import xxhash

from provenance import model_files
from provenance.errors import (
    InvalidParameterError,
    NonFiniteError,
    ObjectCorruptError,
    ObjectMissingError,
    warn,
)
from provenance.history import History, chain_objects, materialize, numel, sparse_chain
from provenance.kernels.finite import float_chunks, is_finite
from provenance.kernels.patch import apply_low_rank
from provenance.ledger import LedgerStore
from provenance.objects import new_objects, unstorable
from provenance.patches import changed_mask, changed_mask_over, encode
from provenance.records import ParamRecord, VersionRecord, check_utf8
from provenance.tensorfile import TensorFileWriter, TensorSequence, dtype_from_name, file_bytes


@dataclass(frozen=True)
class SnapshotPolicy:
    """When ``encoding="auto"`` stores a group whole instead of as one more patch: when the chain
    of patches since its last full copy would reach ``every`` patches, or their bytes would pass
    ``max_chain_ratio`` times the group's full size. Checkout then reads at most a full copy plus
    that ratio, in at most ``every`` steps."""

    every: int = 64
    max_chain_ratio: float = 1.0

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise InvalidParameterError(f"snapshot every must be a positive integer, got {self.every!r}")
        if not self.max_chain_ratio > 0:
            raise InvalidParameterError(f"snapshot max_chain_ratio must be > 0, got {self.max_chain_ratio!r}")


_SAME = object()  # a group the incoming state leaves as the parent has it (no need to read it)


@dataclass(frozen=True)
class _AdapterUpdate:
    """A LoRA-patched group: ``start`` (or the parent's value) plus ``scale * b @ a``."""

    b: torch.Tensor
    a: torch.Tensor
    scale: float
    start: torch.Tensor | None = None


class _Incoming:
    """The state a commit stores, one group at a time: ``get(name)`` gives a tensor, an
    :class:`_AdapterUpdate`, or ``_SAME``."""

    def __init__(self, names: list[str], get, close=lambda: None):
        self.names, self.get, self.close = names, get, close


def _incoming(state: Any, parent_manifest: dict[str, ParamRecord], parent_id: str | None) -> _Incoming:
    from provenance import checkpoints

    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if checkpoints.is_lora_adapter(path):
            if parent_id is None:
                raise InvalidParameterError(f"{path} is a LoRA adapter: commit it with parent= the base version")
            live = {n: p for n, p in parent_manifest.items() if p.encoding != "removed"}
            adapter = checkpoints.read_lora_adapter(
                path, {n: (dtype_from_name(p.dtype), tuple(p.shape)) for n, p in live.items()}
            )

            def get(name: str) -> Any:
                update = adapter.updates.get(name)
                if update is not None:
                    return _AdapterUpdate(update.b, update.a, update.scale, adapter.replaced.get(name))
                return adapter.replaced.get(name, _SAME)

            return _Incoming(sorted(live), get)
        if not path.exists():
            raise InvalidParameterError(f"{path}: no such file or folder")
        if path.is_file() and not (path.name.endswith(".safetensors") or path.name.endswith(checkpoints.INDEX_SUFFIX)):
            raise InvalidParameterError(f"{path}: expected a .safetensors file, a *.safetensors.index.json, a folder or a state dict")
        reader = checkpoints.open_state(path)
        return _Incoming(list(reader.names), reader.get, reader.close)
    if isinstance(state, TensorSequence):
        return _Incoming(list(state.names), state.get, state.close)
    if hasattr(state, "state_dict") and not isinstance(state, Mapping):
        state = state.state_dict()
    if isinstance(state, Mapping):
        for name in state:
            if not isinstance(name, str) or not name:
                raise InvalidParameterError(f"parameter names must be non-empty strings, got {name!r}")
            if name == "__metadata__":  # the safetensors header's own key: the version could not be written out
                raise InvalidParameterError("parameter name '__metadata__' is the key safetensors keeps its metadata "
                                            "under; rename the parameter")
            check_utf8(name, f"parameter name {name!r}")
        return _Incoming(sorted(state), state.__getitem__)
    raise InvalidParameterError(
        f"cannot commit a {type(state).__name__}: give a state dict, a module, a .safetensors file, "
        "a sharded checkpoint or a LoRA adapter folder"
    )


def _check_tensor(name: str, tensor: Any, allow_nonfinite: bool) -> torch.Tensor:
    """``tensor`` as it is stored (on the CPU, a negative view made plain), or a refusal naming
    ``name``: not a tensor, no data (meta), not dense (sparse layouts), quantized, complex, of a
    dtype without a safetensors name, or holding NaN or Inf without ``allow_nonfinite``."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidParameterError(f"parameter {name!r} is a {type(tensor).__name__}, not a tensor")
    refusal = unstorable(tensor)
    if refusal is not None:
        raise InvalidParameterError(f"parameter {name!r} is {refusal}")
    tensor = tensor.detach().resolve_neg()  # a torch._neg_view has the negated values, not its memory's
    if tensor.is_floating_point() and not allow_nonfinite and tensor.numel():
        flat = tensor.reshape(-1)
        if not is_finite(flat):
            count, first = 0, -1
            for start, part in float_chunks(flat):
                bad = ~torch.isfinite(part)
                if first < 0 and bool(bad.any()):
                    first = start + int(torch.nonzero(bad)[0])
                count += int(bad.sum())
            raise NonFiniteError(
                f"parameter {name!r} holds {count} NaN or Inf values (first at flat index {first}); "
                "pass allow_nonfinite=True to store them",
                name,
            )
    return tensor.cpu()


def commit(
    ledger: LedgerStore,
    state: Any,
    *,
    parent: str | VersionRecord | None = None,
    message: str,
    author: str | None = None,
    run: str | None = None,
    encoding: str = "auto",
    low_rank: Mapping[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None,
    allow_nonfinite: bool = False,
    snapshot: SnapshotPolicy | None = None,
    sync: bool = True,
    progress: Any = None,
    max_file_bytes: int = model_files.MAX_FILE_BYTES,
    files: str | os.PathLike | None = None,
    also: Callable[[Any, VersionRecord], None] | None = None,
    patch_of_run: str | None = None,
) -> VersionRecord:
    """Store ``state`` as a new version and return its record.

    ``state`` is a state dict, a module, a ``.safetensors`` file, a sharded checkpoint (its
    ``*.safetensors.index.json`` or its folder) or a PEFT LoRA adapter folder (applied to
    ``parent`` and stored as low-rank patches). Each parameter group is stored against ``parent``
    with ``encoding`` (``"auto"``: the smallest exact one, within the ``snapshot`` policy).
    ``low_rank`` gives, per parameter name, factors ``(B, A, scale)`` whose
    ``base + scale * B @ A`` is the new value (e.g. a LoRA update); they are used when exact.
    ``run`` names the running run that produced the state; the commit ends it. With
    ``sync=False`` objects are still written whole (temporary name, then rename) but not synced
    to the disk: about three times faster where the disk is slow, at the price that a power cut
    soon after may leave objects that fail their hash check on read (a process crash cannot).
    ``progress`` (``start(description, total)``, ``advance(bytes)``) is told the bytes of each
    group as it is stored. A checkpoint folder's other files (config, tokenizer) are stored with
    the version, each up to ``max_file_bytes``; see :mod:`provenance.model_files`. ``files`` is a
    folder whose files are stored so, for a ``state`` that is not a folder (a state dict whose
    config and tokenizer were saved apart, as the Trainer callback does). ``also(tx, version)``
    writes rows that must land in the version's own transaction (a retraction's result).
    ``patch_of_run`` names an ended run whose training made the patch this version carries (a
    retraction's rebase moves a version's patch onto a clean parent): it is recorded as the
    version's run, so that lineage and taint see its data, and the run is left as it is.
    """
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a commit needs a message")
    check_utf8(message, "the commit's message")
    if author is not None:
        check_utf8(author, "the commit's author")
    if files is not None:
        if _is_model_folder(state):
            raise InvalidParameterError(f"{state} is a checkpoint folder, whose files are stored with it: do not pass files=")
        if not isinstance(files, (str, os.PathLike)) or not Path(files).is_dir():
            raise InvalidParameterError(f"files must be a folder, got {files!r}")
    if files is not None:
        listed = model_files.scan(Path(files), max_file_bytes)
    elif _is_model_folder(state):
        from provenance import checkpoints

        listed = model_files.scan(Path(state), max_file_bytes, tensors=checkpoints.files_read(state))
    else:
        listed = []
    # The ledger's lock is held from the first object written to the version's row, so that
    # `gc` in another process never sees this commit's objects as unreferenced.
    with ledger.session():
        return _commit(ledger, state, parent, message, author, run, encoding, _factors(low_rank), allow_nonfinite,
                       snapshot or SnapshotPolicy(), sync, progress, listed, also, patch_of_run)


def _factors(low_rank: Mapping[str, Any] | None) -> dict[str, Any]:
    """``low_rank`` checked: per parameter, ``(B, A, scale)`` with B and A tensors and a number."""
    out = dict(low_rank or {})
    for name, given in out.items():
        ok = isinstance(given, (tuple, list)) and len(given) == 3 and all(
            isinstance(t, torch.Tensor) for t in given[:2]) and isinstance(given[2], numbers.Real)
        if not ok:
            kinds = (f"({', '.join(type(x).__name__ for x in given)})" if isinstance(given, (tuple, list))
                     else type(given).__name__)
            raise InvalidParameterError(f"low_rank[{name!r}] must be (B, A, scale): two tensors and a number, "
                                        f"got {kinds}")
    return out


def _is_model_folder(state: Any) -> bool:
    """Whether ``state`` is a checkpoint folder whose other files a commit keeps (not a LoRA
    adapter's: its files describe the adapter)."""
    from provenance import checkpoints

    return isinstance(state, (str, os.PathLike)) and Path(state).is_dir() and not checkpoints.is_lora_adapter(state)


def _commit(ledger, state, parent, message, author, run, encoding, low_rank, allow_nonfinite, policy, sync,
            progress, listed, also=None, patch_of_run=None) -> VersionRecord:
    parent_rec = ledger.version(parent) if parent is not None else None
    if patch_of_run is not None:
        if run is not None:
            raise InvalidParameterError("give run (the running run that commits) or patch_of_run, not both")
        patch_run = ledger.run(patch_of_run)
        if patch_run.status == "running":
            raise InvalidParameterError(f"run {patch_run.run_id[:12]} is running: its own commit ends it (run=); "
                                        "patch_of_run names an ended run whose patch a version carries")
        patch_of_run = patch_run.run_id
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
    parent_id = parent_rec.version_id if parent_rec else None
    history = History(ledger)
    parent_manifest = history.manifest(parent_id) if parent_id else {}
    store = ledger.object_store(sync=sync)
    incoming = _incoming(state, parent_manifest, parent_id)
    unknown = sorted(set(low_rank) - set(incoming.names))
    if unknown:
        incoming.close()
        raise InvalidParameterError(f"low_rank factors given for parameters not in the state: {', '.join(unknown)}")
    params: list[ParamRecord] = []
    n_elements = full_bytes = stored = 0
    try:  # the objects this commit adds are removed again if it is refused
        with new_objects(store, ledger.object_writers) as added:
            files = model_files.store_files(store, listed, added.created)
            with added.background() as writer:
                _encode_all(history, store, writer, parent_id, parent_manifest, incoming, encoding, low_rank,
                            allow_nonfinite, policy, params, added.created, progress)
            for p in params:
                if p.encoding != "removed":
                    n_elements += numel(p.shape)
                    full_bytes += numel(p.shape) * torch.empty((), dtype=dtype_from_name(p.dtype)).element_size()
                    stored += p.nbytes
            kept = set(incoming.names)
            for name, previous in parent_manifest.items():
                if name not in kept and previous.encoding != "removed":
                    params.append(ParamRecord(name=name, dtype=previous.dtype, shape=previous.shape,
                                              encoding="removed"))

            created_at = datetime.now(timezone.utc).replace(tzinfo=None)
            parents = [parent_id] if parent_id else []
            h = xxhash.xxh3_128(f"{parents}|{message}|{author}|{run or patch_of_run}|{created_at.isoformat()}|".encode())
            for p in params:
                h.update(p.model_dump_json().encode())
            for f in files:
                h.update(f.model_dump_json().encode())
            version = VersionRecord(
                version_id=h.hexdigest(), parents=parents, message=message, author=author, created_at=created_at,
                run_id=run or patch_of_run,
                n_params=sum(p.encoding != "removed" for p in params), n_elements=n_elements, full_bytes=full_bytes,
                stored_bytes=stored,
            )
            with ledger.transaction() as tx:
                if run is not None and tx.run_status(run) != "running":
                    raise InvalidParameterError(f"run {run[:12]} ended while this commit was being written")
                tx.insert_version(version, params, [f.model_dump() for f in files])
                if run is not None:
                    tx.end_run(run, "finished", version_id=version.version_id)
                if also is not None:  # rows that must land with the version or not at all (a retraction's result)
                    also(tx, version)
    finally:
        incoming.close()
    return version


def _encode_all(history, store, writer, parent_id, parent_manifest, incoming, encoding, low_rank, allow_nonfinite,
                policy, params, created, progress=None) -> None:
    """Encode every incoming group and hand its patch's tensors to ``writer``; appends to
    ``params`` and to ``created`` (the objects this commit adds) as it goes."""
    if progress is not None:
        progress.start("commit", None)
    for name in incoming.names:
        previous = parent_manifest.get(name)
        if previous is not None and previous.encoding == "removed":
            previous = None
        value = incoming.get(name)
        if value is _SAME:
            params.append(ParamRecord(name=name, dtype=previous.dtype, shape=previous.shape, encoding="unchanged"))
            continue
        patch, target = _encode_group(history, store, parent_id, name, previous, value, encoding, low_rank,
                                      allow_nonfinite, policy)
        objects = {}
        for role, t in patch.tensors.items():
            ref = store.put(t, writer)
            objects[role] = ref.address
            if ref.created:
                created.append(ref.address)
        params.append(ParamRecord(name=name, dtype=_dtype(target), shape=list(target.shape), encoding=patch.encoding,
                                  objects=objects, meta=patch.meta, nbytes=patch.nbytes))
        if progress is not None:
            progress.advance(target.numel() * target.element_size())


def _encode_group(history, store, parent_id, name, previous, value, encoding, low_rank, allow_nonfinite, policy):
    """The patch of one group against the parent's, and the group's new value."""
    if previous is None:  # a new parameter: stored whole
        if isinstance(value, _AdapterUpdate):
            raise InvalidParameterError(f"LoRA update for {name!r}, which the parent does not have")
        target = _check_tensor(name, value, allow_nonfinite)
        return encode(target, target, encoding="full"), target
    hints = {}
    if isinstance(value, _AdapterUpdate):
        base, depth, chain_bytes = materialize(history, store, parent_id, name)
        start = base if value.start is None else value.start
        with _naming(name):
            updated = apply_low_rank(start, value.b, value.a, value.scale)
        target = _check_tensor(name, updated, allow_nonfinite)
        if value.start is None:
            hints["low_rank"] = (value.b, value.a, value.scale)
    else:
        target = _check_tensor(name, value, allow_nonfinite)
        if list(target.shape) != previous.shape or _dtype(target) != previous.dtype:
            # a resized embedding, a cast to half precision: no patch relates the two, so the new
            # value is stored whole, as a new parameter is (and later patches build on it)
            if encoding not in ("auto", "full"):
                raise InvalidParameterError(
                    f"parameter {name!r} is {_dtype(target)}{list(target.shape)} but {previous.dtype}{previous.shape} "
                    f"in the parent {parent_id[:12]}: a change of shape or dtype is stored whole (encoding auto or "
                    f"full), not as {encoding!r}")
            return encode(target, target, encoding="full"), target
        # A parent reached by sparse patches from its last full copy is not materialised (a copy
        # of the whole group): the changed elements are found against that copy, corrected where
        # the patches wrote. Only the mask is needed, unless low-rank factors are to be checked.
        lazy = sparse_chain(history, store, parent_id, name) if name not in low_rank else None
        if lazy is not None:
            base, steps, depth, chain_bytes = lazy
            hints["changed"] = changed_mask_over(base, steps, target)
        else:
            base, depth, chain_bytes = materialize(history, store, parent_id, name)
        if name in low_rank:
            hints["low_rank"] = low_rank[name]
    with _naming(name) if "low_rank" in hints else contextlib.nullcontext():  # the factors' shapes
        patch = encode(base, target, encoding=encoding, **hints)
    if encoding == "auto" and patch.encoding not in ("unchanged", "full"):
        full_size = target.numel() * target.element_size()
        if depth + 1 > policy.every or chain_bytes + patch.nbytes > policy.max_chain_ratio * full_size:
            patch = encode(base, target, encoding="full")
    return patch, target


@contextlib.contextmanager
def _naming(name: str) -> Iterator[None]:
    """A refusal of ``name``'s low-rank factors, prefixed with the parameter's name."""
    try:
        yield
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"parameter {name!r}: {exc}") from None


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
            was, now = (f"{_dtype(t)}{list(t.shape)}" if x.dtype != y.dtype else str(list(t.shape)) for t in (x, y))
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


def gc(ledger: LedgerStore, *, apply: bool = False) -> dict[str, Any]:
    """Objects that no version refers to, temporary files of object writes that never finished,
    DuckDB's spill files of killed processes (:meth:`LedgerStore.stale_spill_files`), the rows a
    killed registration staged (:meth:`LedgerStore.stale_staging`), the folders of killed Ray
    registrations and dedup audits (:meth:`LedgerStore.stale_ray_folders`), and
    folders of Parquet document files that no dataset lists (a registration killed between
    writing them and its commit): listed, or removed with ``apply``. ``temporary_files`` holds the
    Ray folders too; ``ray_folders`` names each again with its bytes and whether it was removed
    (``False`` in a dry run, or where a file in it could not be removed: a warning says so). Runs
    holding the ledger's lock, so no commit or registration is writing meanwhile (in a server:
    refused while commits are writing objects, and commits that start meanwhile wait)."""
    store = ledger.object_store()
    with ledger.session(), ledger.write_lock, ledger.object_writers.collecting():
        referenced = ledger.referenced_objects()
        unreferenced = [a for a in store.addresses() if a not in referenced]
        temporaries = list(store.temporaries()) + ledger.stale_spill_files()
        staged = ledger.stale_staging(remove=apply)  # a killed registration's staged rows
        rays = ledger.stale_ray_folders()
        folders = _unlisted_document_folders(ledger)
        sizes = ([store.size(a) or 0 for a in unreferenced] + [t.stat().st_size for t in temporaries]
                 + [n for _, n in staged] + [n for _, n in rays] + list(folders.values()))
        freed = 0
        ray_folders = [{"path": str(folder), "bytes": n, "removed": False} for folder, n in rays]
        if apply:
            freed = sum(store.delete(a) for a in unreferenced) + sum(n for _, n in staged)
            for (folder, n), listed in zip(rays, ray_folders):
                shutil.rmtree(folder, ignore_errors=True)
                if folder.exists():  # a file in it could not be removed: say so, count none of it
                    warn(f"{folder}: could not remove all of it (permissions or an immutable file); "
                         "prov gc lists it again until it can")
                else:
                    listed["removed"] = True
                    freed += n
            for t in temporaries:
                freed += t.stat().st_size
                t.unlink()
            for d in folders:
                ledger.document_store.remove_folder(d)
            freed += sum(folders.values())
    return {"unreferenced": unreferenced,
            "temporary_files": [str(t) for t in temporaries] + [p for p, _ in staged] + [str(p) for p, _ in rays],
            "ray_folders": ray_folders, "document_folders": [str(d) for d in folders], "bytes": sum(sizes),
            "removed": apply, "freed": freed}


def _unlisted_document_folders(ledger: LedgerStore) -> dict[str, int]:
    """The folders of Parquet document files (``NAME/TAG`` in ``.prov/documents/`` or the
    ledger's documents bucket) that hold no file a dataset lists, with their bytes."""
    store = ledger.document_store
    listed = {store.folder_of(f["path"]) for f in ledger.document_files()}
    return store.folders(skip=listed)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def iter_checkout(ledger: LedgerStore, version: str | VersionRecord) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter of ``version``, in name order, one at a time."""
    with ledger.session():  # one connection for the version and its chain
        ver = ledger.version(version)
        store = ledger.object_store()
        history = History(ledger)
        manifest = history.manifest(ver.version_id)
    names = [name for name, row in manifest.items() if row.encoding != "removed"]
    prefetch = getattr(store, "prefetch", None)  # a bucket: downloads run ahead of the reads, on threads
    try:
        if prefetch is not None:
            prefetch(a for name in names for a in chain_objects(history, ver.version_id, name))
        for name in names:
            try:
                tensor = materialize(history, store, ver.version_id, name)[0]
            except (ObjectCorruptError, ObjectMissingError) as exc:  # the object may be an ancestor's, in the chain
                raise type(exc)(f"{exc}; version {ver.label()}, asked for, builds its parameter {name!r} on it") \
                    from None
            yield name, tensor
    finally:
        if prefetch is not None:
            store.stop_prefetch()


def _live_entries(ledger: LedgerStore, ver: VersionRecord) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The version's safetensors entries (name, dtype, shape), in name order, removed groups left out."""
    return [(p.name, dtype_from_name(p.dtype), tuple(p.shape)) for p in ledger.manifest(ver).values()
            if p.encoding != "removed"]


def _file_metadata(ver: VersionRecord) -> dict[str, str]:
    return {"prov_version": ver.version_id, "prov_message": ver.message}


def checkout_stream(ledger: LedgerStore, version: str | VersionRecord) -> tuple[int, Iterator[memoryview | bytes]]:
    """The version as the bytes of a safetensors file, made one tensor at a time (a server streams
    them without writing the file): its size, and the bytes. Each tensor is checked against the
    header before it is sent."""
    ver = ledger.version(version)
    return file_bytes(_live_entries(ledger, ver), iter_checkout(ledger, ver), _file_metadata(ver))


def checkout(ledger: LedgerStore, version: str | VersionRecord, output: str | os.PathLike | None = None,
             progress: Any = None, *, metadata: Mapping[str, str] | None = None) -> Any:
    """Every parameter of ``version``, bit-identical to what was committed: a dict of tensors, or
    with ``output`` a safetensors file written one tensor at a time (so a model larger than memory
    can be checked out), whose path is returned, with ``metadata`` added to its header's;
    ``progress`` is told the bytes written."""
    if output is None:
        return dict(iter_checkout(ledger, version))
    ver = ledger.version(version)
    if progress is not None:
        progress.start("checkout", ver.full_bytes)
    with TensorFileWriter(output, _live_entries(ledger, ver), {**_file_metadata(ver), **(metadata or {})}) as writer:
        for name, tensor in iter_checkout(ledger, ver):
            writer.write(name, tensor)
            if progress is not None:
                progress.advance(tensor.numel() * tensor.element_size())
    return Path(output)


def checkout_folder(ledger: LedgerStore, version: str | VersionRecord, folder: str | os.PathLike,
                    progress: Any = None) -> Path:
    """Write ``version`` as a Hugging Face checkpoint folder that ``from_pretrained`` loads: its
    stored files (:func:`provenance.model_files.version_files`, each checked against its hash)
    and its tensors as ``model.safetensors``, bit-identical. The folder (absent, or empty) is
    filled under a temporary name beside it and renamed into place when whole."""
    from provenance.checkpoints import SINGLE_FILE

    ver = ledger.version(version)
    files = model_files.version_files(ledger, ver)
    if not any(f.name == model_files.CONFIG and f.object for f in files):
        if files:  # the nearest version with files of its own stored them all: a parent's are not mixed in
            owner = files[0].version_id or ver.version_id
            whose = "it" if owner == ver.version_id else f"its ancestor {owner[:12]}"
            raise InvalidParameterError(
                f"version {ver.label()} takes the files {whose} stored ({', '.join(f.name for f in files[:6])}), and "
                f"no {model_files.CONFIG} is among them: commit the checkpoint folder with its {model_files.CONFIG}, "
                "or check out the tensors to a .safetensors file")
        raise InvalidParameterError(
            f"version {ver.label()} has no stored {model_files.CONFIG} (nor has any first parent): commit the "
            "checkpoint folder that save_pretrained wrote, or check out the tensors to a .safetensors file")
    folder = Path(folder)
    staged = model_files.staging_folder(folder)
    try:
        model_files.write_files(ledger.object_store(), files, staged)
        # transformers 4 refuses a safetensors file whose metadata lacks the format save_pretrained writes
        checkout(ledger, ver, staged / SINGLE_FILE, progress, metadata={"format": "pt"})
        return model_files.publish(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
