"""URLs of object storage and the Arrow file systems that read and write them: S3 natively (with
the standard AWS settings: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an
S3-compatible server), any other scheme through ``fsspec`` when its package is installed. Used by
sources in buckets (:mod:`provenance.sources.urls`), the object store in a bucket
(:mod:`provenance.object_buckets`) and Parquet document files in a bucket
(:mod:`provenance.ledger.document_store`).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from provenance.errors import ObjectMissingError, SourceError, StorageUnreachableError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(spec: Any) -> bool:
    """Whether ``spec`` is a URL of a file system other than the local one (``file://`` is local)."""
    return isinstance(spec, str) and bool(_URL.match(spec)) and not spec.startswith("file://")


def split_url(url: str, what: str = "a source") -> tuple[str, str]:
    """``(scheme, path)``: ``s3://bucket/a/b`` gives ``("s3", "bucket/a/b")``. ``what`` names the
    URL in errors: ``"a source"`` (stored with its shards), or a prefix of the ledger's own
    (``"an object store"``, ``"a document store"``: stored in the ledger)."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise SourceError(f"{url}: {what} URL takes no query or fragment; set the file system's options in its "
                          "environment (for S3: AWS_ENDPOINT_URL_S3, AWS_REGION and the credentials)")
    if not parts.netloc:
        raise SourceError(f"{url}: no bucket (or host) in the URL")
    if "@" in parts.netloc:  # the URL is stored in the ledger: it must not hold a secret
        stored = "with the shard" if what == "a source" else "in the ledger"
        raise SourceError(f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[1]}{parts.path}: credentials in {what} URL "
                          f"are refused (the URL is stored {stored}); set them in the environment or ~/.aws")
    path = (parts.netloc + parts.path).rstrip("/")
    odd = unreadable_key(path)
    if odd:
        raise SourceError(f"{url}: {odd}")
    return parts.scheme.lower(), path


def unreadable_key(path: str) -> str | None:
    """Why the object key of ``path`` (``bucket/key``) cannot stand in a URL that reads it back,
    or None: Arrow reads ``a/../b`` as ``b`` (another object) and refuses ``a//b``; a URL ends its
    path at ``?`` or ``#``."""
    key = path.split("/", 1)[1] if "/" in path else ""
    parts = key.split("/")
    if any(p in (".", "..") for p in parts):
        return "a key with a '.' or '..' part names another object when read (a/../b reads b); rename the object"
    if "" in parts[:-1] and key:
        return "a key with an empty part ('//') cannot be read by Arrow; rename the object"
    if "?" in key or "#" in key:
        return "a key holding '?' or '#' cannot be read back through its URL; rename the object"
    return None


#: How long one S3 request may go without a byte (seconds), and how many times it is tried, unless
#: ``PROV_S3_TIMEOUT`` and ``AWS_MAX_ATTEMPTS`` say otherwise: an endpoint that takes connections
#: and never answers fails after about ``timeout × attempts``.
S3_TIMEOUT, S3_ATTEMPTS = 60.0, 3


def s3_settings() -> tuple[float, int]:
    """``(timeout, attempts)`` of S3 requests: ``PROV_S3_TIMEOUT`` (seconds) and the AWS SDKs'
    ``AWS_MAX_ATTEMPTS`` (tries in all), each refused by name when it is not a positive number."""
    env = os.environ
    timeout, attempts = S3_TIMEOUT, S3_ATTEMPTS
    if env.get("PROV_S3_TIMEOUT"):
        try:
            timeout = float(env["PROV_S3_TIMEOUT"])
        except ValueError:
            timeout = float("nan")
        if not 0 < timeout < 86400:
            raise SourceError(f"PROV_S3_TIMEOUT={env['PROV_S3_TIMEOUT']!r} is not a number of seconds (above 0, "
                              "below a day)")
    if env.get("AWS_MAX_ATTEMPTS"):
        text = env["AWS_MAX_ATTEMPTS"].strip()
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise SourceError(f"AWS_MAX_ATTEMPTS={env['AWS_MAX_ATTEMPTS']!r} is not a number of tries from 1 to 100")
        attempts = int(text)
    return timeout, attempts


def why(exc: BaseException) -> str:
    """The first line of a file system's error, for a message that names what it was doing. A
    request that timed out names the endpoint, how long it waited and what sets that (Arrow's own
    message names neither)."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "curlCode: 28" in first or "Timeout was reached" in first:
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "the S3 endpoint"
        timeout, attempts = s3_settings()
        tries = f"{attempts} tries" if attempts != 1 else "1 try"
        return (f"{endpoint} did not answer ({tries}, each waiting {timeout:g} s for a byte; set PROV_S3_TIMEOUT "
                f"or AWS_MAX_ATTEMPTS to change that): {first}")
    return first


def filesystem(scheme: str, *, delayed_open: bool = False) -> pafs.FileSystem:
    """The file system for URLs of ``scheme``, made once per process and settings.
    ``delayed_open`` (S3): a write opens nothing until it is closed, so that a small object is
    one ``PutObject`` instead of a multipart upload's three requests (the object store's
    writes; a missing bucket is then reported by the close)."""
    if scheme in ("s3", "s3a"):
        env = os.environ
        return _s3(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
                   env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1", delayed_open, *s3_settings())
    return _fsspec(scheme)


def download(fs: pafs.FileSystem, key: str, url: str, target: Path) -> None:
    """Copy the object ``key`` (``url``, for messages) to the local file ``target``. A bucket
    that does not answer or refuses the credentials is a :class:`StorageUnreachableError` naming
    the URL (it was Arrow's bare message, with neither); an error of the local file (a full disk)
    is raised as it is."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(key, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except FileNotFoundError:  # the target's folder was just made: the object is not there
        raise ObjectMissingError(f"{url} is missing from the bucket") from None
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the local side (Arrow's own errors carry none)
            raise
        raise StorageUnreachableError(f"{url} could not be downloaded ({why(exc)}): is the bucket "
                                      "reachable with these credentials?") from None


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str, delayed_open: bool = False, timeout: float = S3_TIMEOUT,
        attempts: int = S3_ATTEMPTS) -> pafs.FileSystem:
    options: dict[str, Any] = {"region": region, "connect_timeout": min(10.0, timeout), "request_timeout": timeout,
                               "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                               "allow_delayed_open": delayed_open}
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            source = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") == endpoint else "AWS_ENDPOINT_URL"
            raise SourceError(f"{source} {endpoint!r} is not an http:// or https:// address")
        options.update(endpoint_override=parts.netloc + parts.path.rstrip("/"), scheme=parts.scheme)
    return pafs.S3FileSystem(**options)


@lru_cache(maxsize=8)
def _fsspec(scheme: str) -> pafs.FileSystem:
    try:
        import fsspec

        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{scheme}:// sources need a file system for {scheme!r}: {exc}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
