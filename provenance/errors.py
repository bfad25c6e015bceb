"""The errors of provenance: one base class and a few subclasses, each for one kind of failure."""

from __future__ import annotations

import sys
import warnings
from typing import Any


class ProvenanceError(Exception):
    """Base class of every error provenance raises on purpose."""


class InvalidParameterError(ProvenanceError, ValueError):
    """A parameter given by the caller is out of range or of the wrong kind."""


class LedgerNotFoundError(ProvenanceError):
    """No ledger at the given path, in PROV_LEDGER, or in any folder above the current one."""


class LedgerExistsError(ProvenanceError):
    """A ledger already exists where a new one was to be created."""


class LedgerLockedError(ProvenanceError):
    """Another process holds the ledger open for writing."""


class SchemaVersionError(ProvenanceError):
    """The ledger was written by a newer provenance than this one."""


class ReadOnlyQueryError(ProvenanceError):
    """A query given to the read-only SQL interface would write or reach outside the ledger."""


class NotFoundError(ProvenanceError, KeyError):
    """A named record (dataset, version, ...) does not exist in the ledger."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class SourceError(ProvenanceError):
    """A data source is unreadable or malformed; the message names the file and line or record."""


class FingerprintMismatchError(ProvenanceError):
    """Two signatures made under different fingerprint configs were compared."""


class ObjectMissingError(ProvenanceError):
    """An object the ledger refers to is not in the object store."""


class StorageUnreachableError(ObjectMissingError):
    """The bucket holding objects or document files could not be read (the network, the
    server, the credentials): the object may well be there, so nothing is called damaged."""


class ObjectCorruptError(ProvenanceError):
    """An object's bytes do not hash to its address (or are not a readable safetensors file)."""


class UnsafeOutputError(InvalidParameterError):
    """An output path would overwrite part of the ledger, or needs folders that do not exist."""


class LedgerDamagedError(ProvenanceError):
    """The ledger's database file is truncated or corrupt; the message says how to recover."""


class NonFiniteError(InvalidParameterError):
    """A tensor holds NaN or Inf values that the caller did not allow; ``parameter`` names it."""

    def __init__(self, message: str, parameter: str | None = None):  # None: re-raised from a server's answer
        super().__init__(message)
        self.parameter = parameter

    def __reduce__(self):  # pickled with its parameter (another process may re-raise it)
        return type(self), (self.args[0], self.parameter)


class ObjectWriteError(ProvenanceError, OSError):
    """An object cannot be written into the object store; ``folder`` is the folder that refused it."""

    def __init__(self, message: str, folder: str | None = None):  # None: re-raised from a server's answer
        super().__init__(message)
        self.folder = folder

    def __reduce__(self):
        return type(self), (self.args[0], self.folder)


class BucketWriteError(ObjectWriteError):
    """A bucket refused an upload or did not answer it (the network, the credentials, the
    bucket's own limits): not the server's disk, and it may pass when tried again."""


class StorageFullError(ProvenanceError, OSError):
    """The disk refused a write of the ledger's database (full, over a quota or a file size
    limit); the transaction was rolled back, so nothing of the command was kept."""


class LedgerReadOnlyError(ProvenanceError):
    """A write was asked of a ledger opened read-only (or whose files cannot be written)."""


class GateFailedError(ProvenanceError):
    """A merge asked for the pre-merge gate first, and the gate failed; ``report`` holds it."""

    def __init__(self, message: str, report: Any):
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        return type(self), (self.args[0], self.report)


class AccessDeniedError(ProvenanceError):
    """The ledger server refused the call: no token, a bad one, or one whose scope does not allow it."""


class RunEndedError(ProvenanceError):
    """A run was ended already (by another process, or another client of a ledger server)."""


class AlreadyAppliedError(ProvenanceError):
    """A retried write was applied before the ledger server stopped, and its answer was lost.
    ``made``: what the write made, where the server knows (``run_id``, ``version_id``,
    ``dataset_id``)."""

    def __init__(self, message: str, made: dict[str, str] | None = None):
        super().__init__(message)
        self.made = dict(made or {})


def shown(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters with the length said (an
    error naming a 5,000-character name given by mistake printed it whole, twice)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:limit - 1]}…{text[0] if isinstance(value, str) else ''}{size}"


class ProvenanceWarning(UserWarning):
    """Base class of every warning provenance raises on purpose (a ``UserWarning``: shown once per
    place by default, and a filter on ``UserWarning`` takes them)."""


#: Packages whose frames a warning passes over to reach the user's line: provenance itself, and
#: the trainers that call its callbacks (a warning from a callback points at ``trainer.fit(...)``).
PASSED_OVER = frozenset({"provenance", "transformers", "accelerate", "lightning", "pytorch_lightning"})


def warn(message: str, category: type[Warning] = ProvenanceWarning) -> None:
    """``warnings.warn`` pointed at the first caller outside provenance and the trainers that call
    it (:data:`PASSED_OVER`): the user's line, however deep in the package the warning is raised;
    what ``skip_file_prefixes`` does from Python 3.12."""
    frame, level = sys._getframe(1), 2  # 1 is this function; 2 its caller
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in PASSED_OVER:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
