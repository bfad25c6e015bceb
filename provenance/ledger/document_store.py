"""Where a ledger's Parquet document files live: ``.prov/documents/`` (the default) or a bucket
prefix chosen at ``prov init --documents s3://bucket/prefix``.

A file's row in ``document_files`` holds its ``path``: relative to the ledger folder for a local
file (``documents/NAME/vVERSION-TAG/data_N.parquet``), the whole URL for one in a bucket
(``s3://bucket/prefix/NAME/vVERSION-TAG/data_N.parquet``), so that each row says where its bytes
are whatever the ledger's setting is later. DuckDB reads bucket files through the same Arrow S3
client as every other object read (:mod:`provenance.buckets`), handed to it as an fsspec
file system (``register_filesystem``): no DuckDB extension is needed.

A registration writes its files in a staging folder, hashes them (xxh3-128), and then either
renames the folder into place or uploads each file (an upload is atomic: a file is whole or
absent); the folder is removed again if the transaction rolls back, and one left by a process
killed before its commit is listed by ``prov gc``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import xxhash

from provenance.buckets import download, filesystem, is_url, split_url, why
from provenance.errors import BucketWriteError, InvalidParameterError, StorageUnreachableError
from provenance.files import fsync_folder, xxh3_file
from provenance.ledger._common import DOCUMENTS_DIR

_ARROW_ERRORS = (OSError, pa.ArrowException)


class Unreadable(str):
    """What :meth:`DocumentStore.sizes` gives for a file it could not look at: the text
    ``unreadable (why)``, with ``why`` kept apart for a message that words it otherwise (a bucket
    that did not answer is no damage)."""

    why: str

    def __new__(cls, why: str) -> Unreadable:
        text = super().__new__(cls, f"unreadable ({why})")
        text.why = why
        return text


class DocumentStore:
    """The Parquet document files of the ledger at ``root``, in its folder or under ``url``."""

    def __init__(self, root: Path, url: str | None = None):
        self.root, self.url = root, url
        self.fs: pafs.FileSystem | None = None
        if url is not None:
            if not is_url(url):
                raise InvalidParameterError(f"document store {url!r} is not a URL such as s3://bucket/prefix")
            self.scheme, self.prefix = split_url(url, "a document store")
            self.url = f"{self.scheme}://{self.prefix}"
            self.fs = filesystem(self.scheme)

    @property
    def where(self) -> str:
        """The folder or prefix new files go to (for messages and ``allowed_directories``)."""
        return self.url + "/" if self.url else str(self.root / DOCUMENTS_DIR) + os.sep

    @staticmethod
    def is_url(path: str) -> bool:
        """Whether a row's ``path`` is a bucket URL (else relative to the ledger folder)."""
        return is_url(path)

    def location(self, path: str) -> str:
        """Where the file whose row says ``path`` is: its URL, or its path on this machine."""
        return path if self.is_url(path) else str(self.root / path)

    def _key(self, path: str) -> str:
        return path.split("://", 1)[1]

    def _fs_of(self, path: str) -> pafs.FileSystem:
        if self.fs is not None:
            return self.fs
        return filesystem(split_url(path)[0])

    # -- reading -----------------------------------------------------------------------------

    def register(self, con: duckdb.DuckDBPyConnection, paths: list[str]) -> None:
        """Let DuckDB read the bucket files among ``paths`` (once per database instance)."""
        schemes = {p.split("://", 1)[0] for p in paths if self.is_url(p)}
        if not schemes:
            return
        have = set(con.list_filesystems())
        for scheme in sorted(schemes - have):
            wrapper = type(f"Arrow_{scheme}", (_read_at_wrapper(),), {"protocol": scheme})
            try:
                con.register_filesystem(wrapper(self._fs_of(f"{scheme}://x/x")))
            except duckdb.InvalidInputException:  # registered meanwhile by another connection
                pass

    def sizes(self, paths: list[str]) -> dict[str, int | str | None]:
        """Each file's size now: bytes, None when it is missing, or why it cannot be looked at.
        Bucket files are looked up by one listing of each dataset folder, not one request each."""
        found: dict[str, int | str | None] = {}
        folders: dict[str, list[str]] = {}
        for path in paths:
            if self.is_url(path):
                folders.setdefault(posixpath.dirname(path), []).append(path)
                continue
            try:
                found[path] = os.stat(self.root / path).st_size
            except FileNotFoundError:
                found[path] = None
            except OSError as exc:
                found[path] = Unreadable(exc.strerror or type(exc).__name__)
        for folder, inside in folders.items():
            fs = self._fs_of(folder)
            try:
                listed = {i.path: i.size for i in fs.get_file_info(
                    pafs.FileSelector(self._key(folder), allow_not_found=True)) if i.type == pafs.FileType.File}
            except _ARROW_ERRORS as exc:
                found.update({p: Unreadable(why(exc)) for p in inside})
                continue
            found.update({p: listed.get(self._key(p)) for p in inside})
        return found

    def hash(self, path: str) -> str:
        """The xxh3-128 of the file's bytes as they are now (downloaded for a bucket file)."""
        if not self.is_url(path):
            return xxh3_file(self.root / path)
        digest = xxhash.xxh3_128()
        with self._fs_of(path).open_input_stream(self._key(path), compression=None) as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()

    def download(self, path: str, target: Path) -> None:
        download(self._fs_of(path), self._key(path), path, target)

    # -- writing -----------------------------------------------------------------------------

    def publish(self, tmp: Path, name: str, tag: str) -> tuple[str, list[tuple[Path, str]]]:
        """Put the synced, hashed files of the staging folder ``tmp`` in place as the folder
        ``NAME/TAG``: renamed, or uploaded (then ``tmp`` removed). The folder's id (for
        :meth:`remove_folder`) and each file with the path its row records."""
        files = sorted(tmp.iterdir())
        if self.url is None:
            final = self.root / DOCUMENTS_DIR / name / tag
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
            fsync_folder(final.parent)
            return str(final), [(final / f.name, (final / f.name).relative_to(self.root).as_posix()) for f in files]
        folder = f"{self.url}/{name}/{tag}"
        published = []
        try:
            for f in files:
                url = f"{folder}/{f.name}"
                with self.fs.open_output_stream(self._key(url), compression=None) as out, open(f, "rb") as src:
                    while chunk := src.read(1 << 23):
                        out.write(chunk)
                published.append((f, url))
        except BaseException as exc:  # a cut upload is completed by Arrow: remove what was sent
            with contextlib.suppress(Exception):  # a bucket gone is what failed: its own error is the one to say
                self.remove_folder(folder)
            if isinstance(exc, _ARROW_ERRORS):
                raise BucketWriteError(f"cannot upload the Parquet document files to {folder}: {why(exc)}",
                                       folder) from None
            raise
        return folder, published

    def finish(self, tmp: Path) -> None:
        """Remove what :meth:`publish` left in staging (uploaded files' local copies)."""
        shutil.rmtree(tmp, ignore_errors=True)

    def remove_folder(self, folder: str) -> None:
        """Remove a published folder (a rollback, ``prov gc --apply``)."""
        if not self.is_url(folder):
            shutil.rmtree(folder, ignore_errors=True)
            return
        fs = self._fs_of(folder)
        try:
            fs.delete_dir(self._key(folder))
        except FileNotFoundError:
            pass
        except _ARROW_ERRORS:  # some object stores refuse delete_dir on a "directory" that is a prefix
            for info in fs.get_file_info(pafs.FileSelector(self._key(folder), recursive=True, allow_not_found=True)):
                if info.type == pafs.FileType.File:
                    fs.delete_file(info.path)

    def folders(self, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, int]:
        """Every published folder (``NAME/TAG``, by its id) with its bytes, in this store, but
        those in ``skip`` (whose files a local store then does not even stat)."""
        if self.url is None:
            base = self.root / DOCUMENTS_DIR
            if not base.is_dir():
                return {}
            return {str(d): sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                    for name in sorted(base.iterdir()) if name.is_dir() for d in sorted(name.iterdir())
                    if str(d) not in skip and d.is_dir()}
        found: dict[str, int] = {}
        try:
            listing = self.fs.get_file_info(pafs.FileSelector(self.prefix, recursive=True, allow_not_found=True))
        except OSError as exc:  # the bucket does not answer: no answer about any folder
            raise StorageUnreachableError(
                f"cannot list the ledger's documents bucket {self.url} ({str(exc).splitlines()[0]}): is the bucket "
                "reachable with these credentials? Nothing was judged damaged") from None
        for info in listing:
            parts = posixpath.relpath(info.path, self.prefix).split("/")
            if info.type == pafs.FileType.File and len(parts) == 3 and not parts[0].startswith("."):
                folder = f"{self.url}/{parts[0]}/{parts[1]}"
                if folder not in skip:  # (the listing gives the sizes anyway)
                    found[folder] = found.get(folder, 0) + info.size
        return dict(sorted(found.items()))

    def folder_of(self, path: str) -> str:
        """The folder id of the file whose row says ``path``."""
        return posixpath.dirname(path) if self.is_url(path) else str((self.root / path).parent)


def _read_at_wrapper() -> type:
    from fsspec.implementations.arrow import ArrowFSWrapper

    class ReadAt(ArrowFSWrapper):
        """An Arrow file system as fsspec's, whose read-only files read at a position of each
        thread's own: DuckDB's threads share one handle per file and read it as seek-then-read,
        two calls apart, which on a plain file object interleave (and the Parquet decoder then
        gets another thread's bytes: seen as "TProtocolException: Invalid data")."""

        def _open(self, path, mode="rb", block_size=None, seekable=True, **kwargs):
            if mode != "rb":
                return super()._open(path, mode, block_size, seekable, **kwargs)
            return _PositionalFile(self.fs.open_input_file(path), path)

    return ReadAt


class _PositionalFile:
    """A read-only file of an Arrow random-access file: ``seek`` and ``read`` act on a
    position of the calling thread's own, and each read is a positional read (``read_at``)."""

    def __init__(self, handle: pa.NativeFile, path: str):
        self._handle, self.path, self._size = handle, path, handle.size()
        self._local = threading.local()
        self.closed = False

    def _pos(self) -> int:
        return getattr(self._local, "pos", 0)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos(), 2: self._size}[whence]
        self._local.pos = max(0, base + offset)
        return self._local.pos

    def tell(self) -> int:
        return self._pos()

    def read(self, n: int = -1) -> bytes:
        pos = self._pos()
        n = self._size - pos if n is None or n < 0 else min(n, max(self._size - pos, 0))
        data = self._handle.read_at(n, pos) if n > 0 else b""
        self._local.pos = pos + len(data)
        return data

    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self._handle.close()

    def __enter__(self) -> _PositionalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
