"""The files of a Hugging Face checkpoint folder beside its tensors: ``config.json``,
``generation_config.json``, the tokenizer's files. A commit of a folder stores them with the
version; a checkout to a folder writes them back beside ``model.safetensors``, so that
``transformers.AutoModel*.from_pretrained`` loads it.

**Stored as objects.** A file's bytes are stored as a ``uint8`` tensor in the object store
(:mod:`provenance.objects`): content-addressed, written atomically, shared between versions
whose file is the same, and checked against its address whenever it is read, like every tensor.
The version's rows (``version_files``) are inserted in the transaction that inserts the version.

**What a commit of a folder keeps.** Every regular file at the top of the folder, except:

- the tensors (``*.safetensors`` and ``*.safetensors.index.json``): the version holds them; any
  other tensor file (a second checkpoint, a shard its index does not name) is recorded with the
  reason, as is every tensor file of a ``files=`` folder (the version holds the state given);
- hidden files and sub-folders (``.gitattributes``, ``.cache/``, a Trainer's ``checkpoint-*/``);
- what is not a regular file (a FIFO, a socket, a device, a broken symlink), never opened;
- pickles and other weight formats, never read nor stored, recorded with the reason: ``*.bin``
  (``pytorch_model.bin``, ``training_args.bin``), ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``
  (``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth`` among them), ``*.h5``, ``*.msgpack``,
  ``*.onnx``, ``*.gguf``;
- ``trainer_state.json``, the Trainer's bookkeeping (the run records the training), recorded
  with the reason.

A file over ``max_file_bytes`` (:data:`MAX_FILE_BYTES`, 64 MiB) refuses the commit, naming it: a
large file a loader may need is not dropped silently; move it out of the folder, or raise the
limit. So does a ``.json`` file that is not JSON (``config.json`` read while ``save_pretrained``
rewrote it in place). A LoRA adapter folder's files describe the adapter, not the model: none of them is kept.

**Which files a version has.** Those its own commit stored. A version whose commit stored none (a
state dict, a ``.safetensors`` file, a LoRA adapter, a merge, a checkpoint the Trainer
callback committed, a folder of tensors only) has its first parent's, and so on up the first
parents: a fine-tune keeps its base model's config and tokenizer. A folder with files of its own
replaces the parent's whole; nothing is merged file by file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from provenance.errors import InvalidParameterError, ObjectCorruptError, ObjectMissingError, UnsafeOutputError
from provenance.files import (
    PICKLE_SUFFIXES,
    fsync_folder,
    host_label,
    naming,
    non_utf8,
    not_a_regular_file,
    process_alive,
)
from provenance.ledger import LedgerStore
from provenance.objects import ObjectStore
from provenance.records import VersionRecord

MAX_FILE_BYTES = 64 << 20
CONFIG = "config.json"
_TENSOR_SUFFIXES = (".safetensors", ".safetensors.index.json")
_OTHER_WEIGHTS = (".h5", ".msgpack", ".onnx", ".gguf")
_BOOKKEEPING = ("trainer_state.json",)


class ModelFile(BaseModel):
    """One file of the checkpoint folder a version (or its first parent) was committed from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="its name in the folder")
    size: int = Field(description="bytes")
    object: str | None = Field(None, description="address of the object holding its bytes; None: not stored")
    skipped: str | None = Field(None, description="why it was not stored")
    version_id: str | None = Field(None, description="the version whose commit recorded it")


def skip_reason(name: str) -> str | None:
    """Why a commit does not store the file ``name`` of a checkpoint folder (module doc), or None."""
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return "a pickle by its name (.bin, .pt, .pth, ...): never read nor stored (loading one runs code)"
    if lower.endswith(_OTHER_WEIGHTS):
        return "weights in another format: the version holds the tensors"
    if lower in _BOOKKEEPING:
        return "the Trainer's bookkeeping: the run records the training"
    return None


def scan(folder: Path, max_file_bytes: int = MAX_FILE_BYTES, tensors: Collection[Path] = ()
         ) -> list[tuple[Path, str | None]]:
    """The files of ``folder`` a commit records, by name: ``(path, None)`` for one it stores,
    ``(path, reason)`` for one it leaves out. ``tensors`` are the tensor files the commit reads
    (:func:`provenance.checkpoints.files_read`): any other ``.safetensors`` file is listed as left
    out. Refuses a file over ``max_file_bytes``, and a name that is not UTF-8."""
    if not isinstance(max_file_bytes, int) or max_file_bytes < 0:
        raise InvalidParameterError(f"max_file_bytes must be a non-negative integer, got {max_file_bytes!r}")
    read = {Path(t).name for t in tensors if Path(t).parent == folder}
    shard_folders = {Path(t).relative_to(folder).parts[0] for t in tensors  # an index's weight_map may name sub/x
                     if folder in Path(t).parents and Path(t).parent != folder}
    found = []
    for path in sorted(folder.iterdir()):
        if non_utf8(path.name) is not None:  # the ledger keeps each name as text
            raise InvalidParameterError(f"{non_utf8(path)}: the file's name is not valid UTF-8; rename it, or move it out of the "
                                        "folder (the ledger keeps the names of a checkpoint folder's files as text)"
                                        ) from None
        if path.name.endswith(_TENSOR_SUFFIXES) and path.is_file():
            if path.name not in read:  # a second checkpoint, a stray shard: say so, as for every file left out
                found.append((path, f"tensors the version does not hold: the commit reads {_reads(read)}"))
            continue
        if path.is_dir() and path.name in shard_folders:  # its shards' tensors are in the version
            found.append((path, "a folder of shards the index names: their tensors are in the version; its files "
                                "are not kept as files"))
            continue
        if path.is_dir():  # listed as left out, as a hidden file is, so nothing goes unsaid
            found.append((path, "a folder: only the folder's own files are kept, as save_pretrained writes them"))
            continue
        odd = not_a_regular_file(path)
        if odd is not None:  # never opened (a FIFO would block), but named: it was dropped without a word
            found.append((path, f"not a regular file: {odd}"))
            continue
        if path.name.startswith("."):
            found.append((path, "a hidden file: not part of what save_pretrained writes"))
            continue
        reason = skip_reason(path.name)
        size = path.stat().st_size
        if reason is None and size > max_file_bytes:
            raise InvalidParameterError(
                f"{path}: {size:,} bytes, over the {max_file_bytes:,}-byte limit on a checkpoint folder's files; "
                "move it out of the folder, or raise the limit (max_file_bytes=, prov model commit --max-file-mb)")
        found.append((path, reason))
    return found


def _reads(read: set[str]) -> str:
    if not read:
        return "the state given, not this folder's tensors"
    names = sorted(read, key=lambda n: (not n.endswith(".index.json"), n))
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def store_files(store: ObjectStore, listed: list[tuple[Path, str | None]], created: list[str]) -> list[ModelFile]:
    """Store the files :func:`scan` listed (each as one object; ``created`` gets the addresses
    this call wrote) and return their rows, the skipped ones with their reason."""
    rows = []
    for path, reason in listed:
        if reason is not None:
            size = _tree_size(path) if path.is_dir() else path.stat().st_size if path.is_file() else 0
            rows.append(ModelFile(name=path.name, size=size, skipped=reason))
            continue
        data = path.read_bytes()
        _check_json(path, data)
        ref = store.put(torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8))
        if ref.created:
            created.append(ref.address)
        rows.append(ModelFile(name=path.name, size=len(data), object=ref.address))
    return rows


def _check_json(path: Path, data: bytes) -> None:
    """Refuse a ``.json`` file that is not JSON, naming it: ``save_pretrained`` writes
    ``config.json`` in place, and a commit that read it mid-write stored it empty, so the
    version's checkout failed in ``from_pretrained`` long after."""
    if not path.name.endswith(".json"):
        return
    import json

    try:
        json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError included
        said = "is empty" if not data.strip() else f"is not valid JSON ({exc})"
        raise InvalidParameterError(f"{path} {said}: a loader could not read it; was it being written? Commit again "
                                    "once the writer is done, or move the file out of the folder") from None


def version_files(ledger: LedgerStore, version: str | VersionRecord) -> list[ModelFile]:
    """The files ``version`` has (its own, else its nearest first parent's: module doc), by name."""
    return [ModelFile(**r) for r in ledger.version_files(ledger.version(version).version_id).to_pylist()]


def read_file(store: ObjectStore, file: ModelFile) -> bytes:
    """The bytes of a stored file, checked against its address; a missing or corrupt object is
    reported naming the file and the version that stored it."""
    if file.object is None:
        raise InvalidParameterError(f"{file.name} was not stored ({file.skipped})")
    try:
        data = store.get(file.object).numpy().tobytes()
    except (ObjectCorruptError, ObjectMissingError) as exc:
        raise type(exc)(f"file {file.name!r} of version {(file.version_id or '?')[:12]}: {exc}") from None
    if len(data) != file.size:
        raise ObjectCorruptError(f"file {file.name!r} of version {(file.version_id or '?')[:12]}: object {file.object} "
                                 f"holds {len(data):,} bytes, the file had {file.size:,}")
    return data


def write_files(store: ObjectStore, files: list[ModelFile], folder: Path) -> list[str]:
    """Write the stored ``files`` into ``folder`` (each read and checked first); their names."""
    written = []
    for f in files:
        if f.object is None:
            continue
        if os.sep in f.name or (os.altsep and os.altsep in f.name) or f.name in ("", ".", ".."):
            raise InvalidParameterError(f"file name {f.name!r} of version {(f.version_id or '?')[:12]} is not a plain name")
        data = read_file(store, f)
        with naming(folder / f.name):  # a full disk names the file
            (folder / f.name).write_bytes(data)
        written.append(f.name)
    return written


def staging_folder(folder: Path) -> Path:
    """A new empty folder beside ``folder``, to fill and then rename into place (:func:`publish`).
    Named by this machine and process, as a checkout's temporary file is: the next checkout to
    ``folder`` removes what one that was killed left (a SIGKILLed ``checkout --hf`` left the
    model's bytes there, hidden, for good)."""
    mine = f".{folder.name}.{host_label()}-"
    with contextlib.suppress(OSError):  # no folder to list: mkdtemp says why
        for entry in os.scandir(folder.parent):
            pid = entry.name[len(mine):].split("-", 1)[0]
            if (entry.name.startswith(mine) and entry.name.endswith(".tmp") and pid.isdigit()
                    and not process_alive(int(pid)) and entry.is_dir(follow_symlinks=False)):
                shutil.rmtree(entry.path, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-", suffix=".tmp", dir=folder.parent))


def publish(staged: Path, folder: Path) -> Path:
    """Sync every file of ``staged`` and rename it to ``folder`` (absent or empty): a reader sees
    the whole folder or none of it. The folder gets the mode of the empty folder it replaces, else
    the one ``mkdir`` gives under the process's umask (``mkdtemp`` made it 0700)."""
    for path in staged.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except FileNotFoundError:
        mode = 0o777 & ~_umask()
    os.chmod(staged, mode)
    fsync_folder(staged)
    try:
        os.replace(staged, folder)
    except OSError as exc:  # said "cannot copy STAGED to FOLDER: Directory not empty"
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise UnsafeOutputError(f"refusing to write folder {folder}: another writer filled it while this checkout ran "
                                "(it was empty at the start); nothing of this checkout was written") from None
    fsync_folder(folder.parent)
    return folder


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc; setting it to read it back
    would, for a moment, change it for every thread of a server)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _tree_size(folder: Path) -> int:
    """The bytes of the regular files under ``folder`` (symlinks not followed)."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total
