"""The object store in a bucket: a ledger made with ``prov init --objects s3://bucket/prefix``
keeps its tensor objects there instead of in ``.prov/objects/``.

The layout is the local store's (:mod:`provenance.objects`) under the prefix:
``PREFIX/ab/cdef….safetensors``, one safetensors file per object, named by the xxh3-128 of its
dtype, shape and bytes; a ``PREFIX/.provenance-ledger`` object names the ledger that owns the
prefix, so that two ledgers never share one (``prov gc`` of one would remove the other's objects).
Objects are read and written through Arrow's file systems, with the settings sources use
(:mod:`provenance.buckets`: the standard AWS variables, ``AWS_ENDPOINT_URL_S3`` for an
S3-compatible server), or fsspec for other schemes.

What differs from a folder, and how the store keeps the same promises:

- **Atomic writes.** An S3 object appears whole when its upload completes, or not at all; a
  process killed mid-upload leaves an incomplete multipart upload that no listing or read sees
  (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` frees its parts). Arrow completes an
  upload when its stream is closed, also after an exception in the middle; the store then deletes
  the cut object at once, and every read checks the hash in any case.
- **A put of an existing object** from 1 MiB (:data:`CHECK_FROM`) checks its size and its header
  (a lookup and a ranged read), not the hash of its bytes, which would download it (``prov verify
  --objects`` re-hashes). A smaller object is sent again whatever is there: one request either
  way. A commit that fails removes the large objects it added; the small ones it sent may have
  been there before, so they are left for ``prov gc``.
- **Temporary files**: none (there is no rename); ``prov gc`` lists none.
- **Quarantine**: ``prov verify --repair`` moves a damaged object to ``PREFIX/quarantine/``.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import torch

from provenance.buckets import download, filesystem, is_url, split_url, why
from provenance.errors import (
    BucketWriteError,
    InvalidParameterError,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectWriteError,
    StorageUnreachableError,
)
from provenance.objects import (
    _KEY,
    BackgroundWriter,
    ObjectRef,
    _dtype_name,
    address_of,
    checked_tensor,
    header_problem,
    quarantine_name,
    read_problem,
    unstorable,
)
from provenance.tensorfile import file_bytes, header, tensors_in

MARKER = ".provenance-ledger"  # the object naming the ledger that owns a prefix
QUARANTINE = "quarantine"
_ARROW_ERRORS = (OSError, pa.ArrowException)
CHECK_FROM = 1 << 20  # objects from this size are looked up before they are sent; smaller ones are sent
PREFETCH_BYTES = 1 << 28  # downloaded ahead of a checkout's reads, at most (or one larger object)


class BucketObjectStore:
    """Content-addressed tensors under ``url`` (``s3://bucket/prefix``): the interface of
    :class:`provenance.objects.ObjectStore`, on an Arrow file system."""

    def __init__(self, url: str, *, sync: bool = True):
        if not is_url(url):
            raise InvalidParameterError(f"object store {url!r} is not a URL such as s3://bucket/prefix")
        self.scheme, self.prefix = split_url(url, "an object store")
        self.fs: pafs.FileSystem = filesystem(self.scheme, delayed_open=True)
        self.url = f"{self.scheme}://{self.prefix}"
        self.root = self.url  # where the objects are, for messages
        self.sync = sync  # a completed upload is durable: nothing to sync
        self.writer_threads = 16  # uploads wait on round trips, not on a disk: many at once
        self._pool: ThreadPoolExecutor | None = None  # prefetch: downloads under way, by address
        self._ahead: dict[str, tuple[Future, int]] = {}
        self._ahead_bytes = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _key(self, address: str) -> str:
        return f"{self.prefix}/{address[:2]}/{address[2:]}.safetensors"

    def location(self, address: str) -> str:
        return f"{self.scheme}://{self._key(address)}"

    def _info(self, key: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(key)
        except _ARROW_ERRORS as exc:
            raise StorageUnreachableError(f"cannot look up {self.scheme}://{key}: {why(exc)}") from None

    def check_bucket(self) -> None:
        """Refuse a bucket that is not there: each of its objects would be missing, and the
        cause said nowhere. A bucket that cannot be looked up (a key allowed to read objects and
        not to list the bucket) passes."""
        bucket = self.prefix.split("/", 1)[0]
        try:
            found = self._info(bucket).type != pafs.FileType.NotFound
        except StorageUnreachableError:
            return
        if not found:
            raise StorageUnreachableError(f"object store {self.url}: the bucket {bucket!r} does not exist (deleted, "
                                          "or the endpoint or account is another); no object could be checked")

    def size(self, address: str) -> int | None:
        info = self._info(self._key(address))
        return info.size if info.type == pafs.FileType.File else None

    def __contains__(self, address: str) -> bool:
        return self.size(address) is not None

    # -- writing ------------------------------------------------------------------------------

    def put(self, tensor: torch.Tensor, writer: BackgroundWriter | None = None) -> ObjectRef:
        """Store ``tensor`` (once: an object of the right size and header is kept, another is
        written again); with a ``writer``, uploaded on its threads. As
        :meth:`provenance.objects.ObjectStore.put`."""
        refusal = unstorable(tensor)
        if refusal is not None:
            raise InvalidParameterError(f"cannot store a tensor that is {refusal}")
        tensor = tensor.detach().contiguous().cpu()
        address = address_of(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        ref = ObjectRef(address, _dtype_name(tensor.dtype), tuple(tensor.shape), nbytes)
        if writer is not None and address in writer.pending:
            return ref
        key = self._key(address)
        if writer is not None:  # the lookup too runs on the writer's threads: no round trip here
            writer.submit(address, tensor, self._ensure, key, tensor, address, writer.created)
            return ref
        created, repaired = self._ensure(key, tensor, address)
        return replace(ref, created=created, repaired=repaired)

    def _ensure(self, key: str, tensor: torch.Tensor, address: str, created: list[str] | None = None) -> tuple[bool, bool]:
        """Upload the object unless an object of its size and header is there: ``(created,
        repaired)``; a new object's address is appended to ``created``."""
        head = header([(_KEY, tensor.dtype, tuple(tensor.shape))], {"address": address})
        if len(head) + tensor.numel() * tensor.element_size() < CHECK_FROM:  # as cheap to send as to look up
            self._write(key, tensor, address)
            return False, False  # (whether it was there is not known: a failed commit leaves it to gc)
        try:
            info = self.fs.get_file_info(key)
        except _ARROW_ERRORS as exc:
            raise BucketWriteError(f"cannot write object {address} into {self.url}: {why(exc)}", self.url) from None
        exists = info.type == pafs.FileType.File
        if exists and info.size == len(head) + tensor.numel() * tensor.element_size() and self._head(key, len(head)) == head:
            return False, False
        self._write(key, tensor, address)
        if not exists and created is not None:
            created.append(address)
        return not exists, exists

    def _head(self, key: str, n: int) -> bytes | None:
        try:
            with self.fs.open_input_file(key) as fh:
                return fh.read_at(n, 0)
        except _ARROW_ERRORS:
            return None

    def _write(self, key: str, tensor: torch.Tensor, address: str) -> None:
        """Upload one object; an upload cut by an exception (which Arrow still completes) is
        deleted again, and the exception raised, a refusal of the bucket as :class:`BucketWriteError`."""
        _, pieces = file_bytes([(_KEY, tensor.dtype, tuple(tensor.shape))], [(_KEY, tensor)], {"address": address})
        try:
            with self.fs.open_output_stream(key, compression=None) as out:
                for piece in pieces:
                    out.write(piece)
        except BaseException as exc:
            with contextlib.suppress(*_ARROW_ERRORS):
                self.fs.delete_file(key)
            if isinstance(exc, _ARROW_ERRORS):
                raise BucketWriteError(f"cannot write object {address} to {self.scheme}://{key}: {why(exc)}",
                                       self.url) from None
            raise

    # -- reading ------------------------------------------------------------------------------

    def get(self, address: str) -> torch.Tensor:
        """The tensor at ``address`` (downloaded whole, or taken from :meth:`prefetch`); raises
        when it is missing or its bytes do not match."""
        ahead = self._ahead.pop(address, None)
        if ahead is not None:
            self._ahead_bytes -= ahead[1]
            self._refill()
            return ahead[0].result()
        return self._download(address)

    def _download(self, address: str) -> torch.Tensor:
        key = self._key(address)
        where = f"{self.scheme}://{key}"
        try:
            with self.fs.open_input_file(key) as fh:
                buf = bytearray(fh.size())
                got = fh.readinto(buf) if buf else 0
        except FileNotFoundError:
            raise ObjectMissingError(f"object {address} is missing from {self.url}") from None
        except _ARROW_ERRORS as exc:
            raise StorageUnreachableError(f"object {address} could not be read from {where}: {why(exc)}") from None
        if got != len(buf):
            raise ObjectCorruptError(f"object {address} ({where}) ended after {got:,} of {len(buf):,} bytes")
        return checked_tensor(address, where, lambda: tensors_in(buf, where)[0])

    def prefetch(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Download the objects ``wanted`` (``(address, bytes)``, in the order :meth:`get` will
        ask for them) ahead, on :attr:`writer_threads` threads, holding at most
        :data:`PREFETCH_BYTES` (or one object) downloaded and not yet asked for. A checkout of many
        small tensors is then bound by the bucket's throughput, not by one round trip after
        another. :meth:`stop_prefetch` ends it."""
        self.stop_prefetch()
        self._pool = ThreadPoolExecutor(max_workers=self.writer_threads, thread_name_prefix="prov-prefetch")
        self._wanted = iter(wanted)
        self._next: tuple[str, int] | None = None
        self._refill()

    def _refill(self) -> None:
        if self._pool is None:
            return
        while len(self._ahead) < 4 * self.writer_threads:
            if self._next is None:
                self._next = next(self._wanted, None)
                if self._next is None:
                    return
            address, nbytes = self._next
            if address in self._ahead:  # already on its way (asked for twice): the second get downloads
                self._next = None
                continue
            if self._ahead and self._ahead_bytes + nbytes > PREFETCH_BYTES:
                return
            self._ahead[address] = (self._pool.submit(self._download, address), nbytes)
            self._ahead_bytes += nbytes
            self._next = None

    def stop_prefetch(self) -> None:
        """Drop what was fetched ahead and not asked for, and stop the threads."""
        if self._pool is not None:
            for future, _ in self._ahead.values():
                future.cancel()
            self._pool.shutdown(wait=True)
        self._pool, self._ahead, self._ahead_bytes = None, {}, 0

    def addresses(self) -> Iterator[str]:
        """Every stored address (the marker and the quarantine excluded)."""
        selector = pafs.FileSelector(self.prefix, recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except _ARROW_ERRORS as exc:
            raise StorageUnreachableError(f"cannot list {self.url}: {why(exc)}: is the bucket reachable with these "
                                          "credentials?") from None
        found = []
        for info in infos:
            rel = posixpath.relpath(info.path, self.prefix)
            folder, _, name = rel.partition("/")
            if info.type == pafs.FileType.File and len(folder) == 2 and "/" not in name and name.endswith(".safetensors"):
                found.append(folder + name.removesuffix(".safetensors"))
        yield from sorted(found)

    def temporaries(self) -> Iterator[Path]:
        """None: an upload is never visible before it is whole."""
        return iter(())

    def delete(self, address: str) -> int:
        """Remove an object; the bytes freed (0 when it was not there). A bucket that refuses
        raises OSError."""
        key = self._key(address)
        try:
            info = self.fs.get_file_info(key)
            if info.type != pafs.FileType.File:
                return 0
            self.fs.delete_file(key)
        except FileNotFoundError:
            return 0
        except _ARROW_ERRORS as exc:
            raise OSError(f"cannot delete {self.scheme}://{key}: {why(exc)}") from None
        return info.size

    def check(self, address: str, *, rehash: bool) -> tuple[str, str] | None:
        """As :meth:`provenance.objects.ObjectStore.check`: presence, header and size (a ranged
        read of the header), and with ``rehash`` the bytes' hash (a download)."""
        key = self._key(address)
        where = f"{self.scheme}://{key}"
        try:
            info = self.fs.get_file_info(key)
            if info.type == pafs.FileType.NotFound:
                return "missing", f"{where} does not exist"
            if info.type != pafs.FileType.File:
                return "corrupt", f"{where} is not an object"
            with self.fs.open_input_file(key) as fh:
                at = [8]

                def read(n: int) -> bytes:
                    data = fh.read_at(min(n, max(info.size - at[0], 0)), at[0])
                    at[0] += len(data)
                    return data

                problem = header_problem(where, info.size, fh.read_at(min(8, info.size), 0), read)
        except FileNotFoundError:  # gone between the lookup and the read
            return "missing", f"{where} does not exist"
        except _ARROW_ERRORS as exc:  # not an answer about the object: a read error is not damage
            raise StorageUnreachableError(f"{where} could not be read ({why(exc)}): is the bucket reachable with "
                                          "these credentials? Nothing was judged damaged") from None
        return problem or (read_problem(self, address) if rehash else None)

    def quarantine(self, address: str, folder: Path) -> str | None:
        """Move a damaged object to ``PREFIX/quarantine/`` (``folder``, the ledger's local
        quarantine, is not used: the bytes stay in the bucket); where it went."""
        key = self._key(address)
        if self.size(address) is None:
            return None
        folder = f"{self.prefix}/{QUARANTINE}"

        def taken(name: str) -> bool:
            return self.fs.get_file_info(f"{folder}/{name}").type != pafs.FileType.NotFound

        target = f"{folder}/{quarantine_name(address, taken)}"
        self.fs.move(key, target)
        return f"{self.scheme}://{target}"

    def download(self, address: str, path: Path) -> int:
        """Copy the object's file to ``path`` (a backup into a local store); its bytes."""
        key = self._key(address)
        download(self.fs, key, f"{self.scheme}://{key}", path)
        return path.stat().st_size

    # -- ownership ----------------------------------------------------------------------------

    def owner(self) -> dict[str, Any] | None:
        return prefix_owner(self.fs, self.scheme, self.prefix)

    def claim(self, ledger: dict[str, Any]) -> str | None:
        return claim_prefix(self.fs, self.scheme, self.prefix, ledger)


def prefix_owner(fs: pafs.FileSystem, scheme: str, prefix: str) -> dict[str, Any] | None:
    """What the prefix's marker says (the ledger that owns it), None when it has none."""
    key = f"{prefix}/{MARKER}"
    try:
        with fs.open_input_stream(key) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None
    except _ARROW_ERRORS as exc:
        raise ObjectWriteError(f"cannot read {scheme}://{key}: {why(exc)}; is the bucket reachable (its endpoint, "
                               "the network) and readable with these credentials?", f"{scheme}://{prefix}") from None
    except ValueError:
        return {"ledger": "?", "note": f"{MARKER} is not JSON"}


def claim_prefix(fs: pafs.FileSystem, scheme: str, prefix: str, ledger: dict[str, Any]) -> str | None:
    """Take a bucket prefix for a new ledger (its objects or its document files): refused when
    another ledger's marker or unclaimed objects are there (a prefix is one ledger's: ``prov gc``
    removes what its ledger does not list), or when the bucket cannot be written (writing the
    marker is the test). The same ledger folder made again takes its prefix back. Returns the
    marker's key when this call wrote it (None: the prefix was this ledger folder's already)."""
    url = f"{scheme}://{prefix}"
    owner = prefix_owner(fs, scheme, prefix)
    if owner is not None and owner.get("ledger") == ledger["ledger"]:
        return None  # the same ledger folder made again (an init that failed, a ledger deleted): its files serve
    if owner is not None:
        raise InvalidParameterError(f"{url} already holds the files of ledger {owner.get('ledger', '?')} "
                                    f"(its {MARKER}); give each ledger a prefix of its own")
    try:
        listed = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    except _ARROW_ERRORS as exc:
        raise ObjectWriteError(f"cannot list {url}: {why(exc)}; is the bucket there and readable with these "
                               "credentials?", url) from None
    if any(i.type == pafs.FileType.File for i in listed):
        raise InvalidParameterError(f"{url} already holds objects; give the ledger an empty prefix")
    key = f"{prefix}/{MARKER}"
    try:
        with fs.open_output_stream(key, compression=None) as out:
            out.write(json.dumps(ledger, sort_keys=True).encode())
    except _ARROW_ERRORS as exc:
        raise ObjectWriteError(f"cannot write {scheme}://{key}: {why(exc)}; is the bucket there and "
                               "writable with these credentials?", url) from None
    return key
