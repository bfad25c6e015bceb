"""Sources in object storage: ``s3://bucket/prefix/`` and the other file systems Arrow or fsspec know.

A URL names one object, a prefix (every object under it, as a folder names its files) or a glob
(``s3://bucket/crawl/*.jsonl.gz``). Objects are read through Arrow's file systems
(``pyarrow.fs``): S3 natively, with the standard AWS settings (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, and
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO); any
other scheme through ``fsspec`` when the package for it is installed (``gs://`` with gcsfs,
``az://`` with adlfs, ...). A shard's ``uri`` is its URL without credentials or settings, so a
shard registered on one machine reads back on another that has its own settings.

Every object is one shard, hashed as it is read like a local file; an object that changes (or is
cut short) between being hashed and being read fails the registration, naming its URL.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re

import pyarrow as pa
import pyarrow.fs as pafs

from provenance.buckets import filesystem, is_url, split_url, unreadable_key, why  # noqa: F401 (is_url: re-exported)
from provenance.errors import SourceError
from provenance.sources.base import HIDDEN, _unknown_type, file_format

_GLOB = re.compile(r"[*?\[]")
#: How S3 (and Arrow, in its own spelling) says the credentials were refused.
_DENIED = ("AccessDenied", "Forbidden", "ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
           "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch")


def object_error(url: str, exc: BaseException, doing: str) -> SourceError:
    """A :class:`SourceError` naming ``url`` for a failure of the file system while ``doing``."""
    if isinstance(exc, FileNotFoundError):
        return SourceError(f"{url}: no such object ({doing})")
    if isinstance(exc, PermissionError) or any(word in str(exc) for word in _DENIED):
        return SourceError(f"{url}: access denied ({doing}): check the credentials")
    return SourceError(f"{url}: {doing} failed: {why(exc)}")


def object_shards(spec: str) -> list[tuple[str, pafs.FileSystem, str, int]]:
    """The objects ``spec`` names: ``(url, file system, path, size)`` each, sorted by path."""
    scheme, path = split_url(spec)
    fs = filesystem(scheme)
    glob = _GLOB.search(path)
    if glob and not spec.endswith("/") and _is_object(spec, fs, path):  # `[1].jsonl` that exists is an object
        glob = None
    if glob:
        head = path[: glob.start()]
        root = head.rsplit("/", 1)[0] if "/" in head else ""  # `s3://sa*/x`: a pattern of bucket names lists them all
        pattern = path + "/*" if spec.endswith("/") else path  # `x/*/` names what is under the prefixes it matches
        matched = _readable(scheme, [f for f in _listing(spec, fs, root) if fnmatch.fnmatchcase(f.path, pattern)])
        found = [f for f in matched if not _hidden(f.path, root)]
        if not found:
            raise SourceError(f"{spec}: pattern matched no objects")
    else:
        try:
            info = fs.get_file_info(path)
        except (OSError, pa.ArrowException) as exc:
            raise object_error(spec, exc, "looking it up") from None
        if info.type == pafs.FileType.File and not spec.endswith("/"):
            found = [info]
        elif info.type == pafs.FileType.Directory or info.type == pafs.FileType.File:  # `a/` beside an object `a`
            found = [f for f in _readable(scheme, _listing(spec, fs, path)) if not _hidden(f.path, path)]
            if not found:
                raise SourceError(f"{spec}: prefix holds no objects")
        else:
            raise SourceError(f"{spec}: no such object or prefix")
    found.sort(key=lambda f: f.path)
    for f in found:
        if file_format(f.path) is None:
            raise _unknown_type(f"{scheme}://{f.path}")
    return [(f"{scheme}://{f.path}", fs, f.path, f.size) for f in found]


def _is_object(spec: str, fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type == pafs.FileType.File
    except (OSError, pa.ArrowException) as exc:
        raise object_error(spec, exc, "looking it up") from None


def _readable(scheme: str, listed: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """``listed``, when every key can be read back by its URL; else the error naming the first
    that cannot (registered, it would read another object, or none)."""
    for f in listed:
        odd = unreadable_key(f.path)
        if odd:
            raise SourceError(f"{scheme}://{f.path}: {odd}")
    return listed


def _hidden(path: str, prefix: str) -> bool:
    """Whether an object under ``prefix`` is hidden, as a folder's files are: a name, or a folder
    on its way, that starts with ``.`` or ``_`` (``.cache/x.jsonl``, Spark's ``_SUCCESS``)."""
    return any(part.startswith(HIDDEN) for part in posixpath.relpath(path, prefix).split("/"))


def _listing(spec: str, fs: pafs.FileSystem, prefix: str) -> list[pafs.FileInfo]:
    try:
        return [f for f in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
                if f.type == pafs.FileType.File]
    except (OSError, pa.ArrowException) as exc:
        raise object_error(spec, exc, "listing it") from None


def relative_names(paths: list[str]) -> list[str]:
    """Shard names: each object's path relative to the deepest prefix they share (a lone
    object's name is its last part), as a folder's files are named."""
    if len(paths) == 1:
        return [posixpath.basename(paths[0])]
    root = posixpath.commonpath([posixpath.dirname(p) for p in paths])
    return [posixpath.relpath(p, root) for p in paths]
