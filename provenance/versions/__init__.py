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
tensors, sparse layouts, quantized and nested tensors, and complex tensors (conjugate views
included), which are not stored: ``torch.view_as_real(t)`` is their exact real form. NaN or Inf values are refused
with :class:`~provenance.errors.NonFiniteError` unless ``allow_nonfinite=True``.

Checkout replays, per parameter group, the patches from the nearest full copy up the chain of
first parents. The :class:`SnapshotPolicy` bounds that chain: a group is stored whole again when
its chain would pass ``every`` patches or ``max_chain_ratio`` of its full size in patch bytes.

:func:`commit` and the checks of its options are here; the rest is one module each:
:mod:`.states` (the state a commit stores, read one parameter group at a time), :mod:`.groups`
(each group checked and encoded against the parent's, within the snapshot policy),
:mod:`.checkouts` (a version's tensors back: a dict, a safetensors file or stream, a Hugging Face
folder), :mod:`.diffs` (:func:`diff`) and :mod:`.garbage` (:func:`gc`).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import xxhash

from provenance import model_files
from provenance.errors import InvalidParameterError
from provenance.history import History, numel
from provenance.ledger import LedgerStore
from provenance.objects import check_low_rank, new_objects
from provenance.patches import ENCODINGS
from provenance.records import ParamRecord, VersionRecord, check_utf8
from provenance.tensorfile import dtype_from_name
from provenance.versions.checkouts import checkout, checkout_folder, checkout_stream, iter_checkout
from provenance.versions.diffs import _rank, diff
from provenance.versions.garbage import gc
from provenance.versions.groups import encode_all
from provenance.versions.states import incoming_state


@dataclass(frozen=True)
class SnapshotPolicy:
    """When ``encoding="auto"`` stores a group whole instead of as one more patch: when the chain
    of patches since its last full copy would reach ``every`` patches, or their bytes would pass
    ``max_chain_ratio`` times the group's full size. Checkout then reads at most a full copy plus
    that ratio, in at most ``every`` steps."""

    every: int = 64
    max_chain_ratio: float = 1.0

    def __post_init__(self):
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise InvalidParameterError(f"snapshot every must be a positive integer, got {self.every!r}")
        # (a string or None raised TypeError comparing it with 0)
        if (not isinstance(self.max_chain_ratio, numbers.Real) or isinstance(self.max_chain_ratio, bool)
                or not self.max_chain_ratio > 0):
            raise InvalidParameterError(f"snapshot max_chain_ratio must be a number > 0, got {self.max_chain_ratio!r}")


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
    checkpoint_of: str | None = None,
    step: int | None = None,
) -> VersionRecord:
    """Store ``state`` as a new version and return its record.

    ``state`` is a state dict, a module, a ``.safetensors`` file, a sharded checkpoint (its
    ``*.safetensors.index.json`` or its folder) or a PEFT LoRA adapter folder (applied to
    ``parent`` and stored as low-rank patches). Each parameter group is stored against ``parent``
    with ``encoding`` (``"auto"``: the smallest exact one, within the ``snapshot`` policy).
    ``low_rank`` gives, per parameter name, factors ``(B, A, scale)`` whose
    ``base + scale * B @ A`` is the new value (e.g. a LoRA update); they are used when exact, and
    refused for a group that is not 2-D, that the parent lacks or whose shape or dtype changed.
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
    ``checkpoint_of`` names a running run whose checkpoint ``state`` is (see
    :meth:`provenance.runs.Run.checkpoint`): the version is recorded with that run, whose base is
    its parent, and the run goes on; ``step`` is the last step whose logged examples it was
    trained on (default: the last step logged so far, -1 when none is), and its lineage counts those only.
    """
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a commit needs a message")
    check_utf8(message, "the commit's message")
    if author is not None:
        check_utf8(author, "the commit's author")
    if encoding != "auto" and encoding not in ENCODINGS:  # a root commit or a new group never reached encode()
        raise InvalidParameterError(f"unknown encoding {encoding!r}; known: auto, {', '.join(sorted(ENCODINGS))}")
    if snapshot is not None and not isinstance(snapshot, SnapshotPolicy):
        raise InvalidParameterError(f"snapshot must be a SnapshotPolicy(every=..., max_chain_ratio=...), got "
                                    f"{type(snapshot).__name__}")
    if step is not None and checkpoint_of is None:
        raise InvalidParameterError("step is the step of a checkpoint: give checkpoint_of= (the running run) with it")
    check_step(step)
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
        return _commit(ledger, state, parent, message, author, run, encoding, check_low_rank(low_rank), allow_nonfinite,
                       snapshot or SnapshotPolicy(), sync, progress, listed, also, patch_of_run, checkpoint_of, step)


def check_step(step: Any) -> None:
    """Refuse a checkpoint's step that is not an integer from 0 to 2**63 - 1 (as a logged one)."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step < 2**63):
        raise InvalidParameterError(f"a checkpoint's step must be an integer from 0 to 2**63 - 1, got {step!r}")


def _is_model_folder(state: Any) -> bool:
    """Whether ``state`` is a checkpoint folder whose other files a commit keeps (not a LoRA
    adapter's: its files describe the adapter)."""
    from provenance import checkpoints

    return isinstance(state, (str, os.PathLike)) and Path(state).is_dir() and not checkpoints.is_lora_adapter(state)


def _commit(ledger, state, parent, message, author, run, encoding, low_rank, allow_nonfinite, policy, sync,
            progress, listed, also=None, patch_of_run=None, checkpoint_of=None, step=None) -> VersionRecord:
    parent_rec = ledger.version(parent) if parent is not None else None
    if checkpoint_of is not None:
        if run is not None or patch_of_run is not None:
            raise InvalidParameterError("a checkpoint is of its running run (checkpoint_of=): do not give run= or "
                                        "patch_of_run= with it")
        run_rec = ledger.run(checkpoint_of)
        if run_rec.status != "running":
            why = f" ({run_rec.error})" if run_rec.error else ""
            raise InvalidParameterError(f"run {run_rec.run_id[:12]} is {run_rec.status}{why}: only a running run saves "
                                        "checkpoints")
        if parent_rec is None and run_rec.base_version is not None:
            parent_rec = ledger.version(run_rec.base_version)
        if (parent_rec.version_id if parent_rec else None) != run_rec.base_version:
            raise InvalidParameterError(
                f"run {run_rec.run_id[:12]} started from {(run_rec.base_version or 'nothing')[:12]}, "
                f"so its checkpoint's parent must be that, not {parent_rec.version_id[:12] if parent_rec else 'none'}")
        checkpoint_of = run_rec.run_id
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
            why = f" ({run_rec.error})" if run_rec.error else ""  # "abandoned: process 2249 exited ...": it was not this one
            raise InvalidParameterError(f"run {run_rec.run_id[:12]} is {run_rec.status}{why}: only a running run can commit")
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
    incoming = incoming_state(state, parent_manifest, parent_id)
    if not incoming.names:  # a version of nothing: a module not built yet, a dict filled later, a wrong file
        incoming.close()
        what = f"{state}" if isinstance(state, (str, os.PathLike)) else "the state given"  # (a server's: received)
        raise InvalidParameterError(f"{what} holds no tensors: there is nothing to commit (was the state taken before "
                                    "the model was built or loaded?)")
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
                encode_all(history, store, writer, parent_id, parent_manifest, incoming, encoding, low_rank,
                           allow_nonfinite, policy, params, added.created, progress)
            incoming.check()  # before the version is made of them: the file was not written to meanwhile
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
            recorded_run = run or patch_of_run or checkpoint_of
            h = xxhash.xxh3_128(f"{parents}|{message}|{author}|{recorded_run}|{created_at.isoformat()}|".encode())
            for p in params:
                h.update(p.model_dump_json().encode())
            for f in files:
                h.update(f.model_dump_json().encode())
            version = VersionRecord(
                version_id=h.hexdigest(), parents=parents, message=message, author=author, created_at=created_at,
                run_id=recorded_run,
                n_params=sum(p.encoding != "removed" for p in params), n_elements=n_elements, full_bytes=full_bytes,
                stored_bytes=stored,
            )
            with ledger.transaction() as tx:
                for live in (run, checkpoint_of):
                    if live is not None and tx.run_status(live) != "running":
                        raise InvalidParameterError(f"run {live[:12]} ended while this commit was being written")
                tx.insert_version(version, params, [f.model_dump() for f in files])
                if checkpoint_of is not None:  # in the version's transaction: a checkpoint is never a run's whole
                    tx.insert_checkpoint(version.version_id, checkpoint_of, step)
                if run is not None:
                    tx.end_run(run, "finished", version_id=version.version_id)
                if also is not None:  # rows that must land with the version or not at all (a retraction's result)
                    also(tx, version)
    finally:
        incoming.close()
    return version


__all__ = ["SnapshotPolicy", "_rank", "check_step", "checkout", "checkout_folder", "checkout_stream", "commit", "diff", "gc",
           "iter_checkout"]
