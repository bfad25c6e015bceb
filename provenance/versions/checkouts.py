"""A version's tensors back, bit-identical to what was committed, one group at a time: a dict,
a safetensors file written or streamed tensor by tensor, or a Hugging Face checkpoint folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from provenance import model_files
from provenance.errors import InvalidParameterError, ObjectCorruptError, ObjectMissingError
from provenance.history import History, chain_objects, damage_hint, materialize
from provenance.ledger import LedgerStore
from provenance.records import VersionRecord
from provenance.tensorfile import TensorFileWriter, dtype_from_name, file_bytes


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
                said = str(exc).removesuffix(damage_hint(exc))  # the version asked for, then what to do
                raise type(exc)(f"{said}; version {ver.label()}, asked for, builds its parameter {name!r} on it"
                                f"{damage_hint(exc)}") from None
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
