"""Records of the ledger: validated pydantic models that cross every layer.

The ledger module turns rows into these and back; the CLI renders them; their JSON Schemas are
generated into ``schemas/records/`` (see :mod:`provenance.schema_export`).
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import license_expression
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from provenance.errors import InvalidParameterError, NotFoundError, ProvenanceWarning, shown, warn
from provenance.fingerprints import FingerprintConfig
from provenance.plain import UTCDateTime

Role = Literal["train", "eval"]
OnInvalid = Literal["error", "replace", "skip"]

# Names, tags and ids are matched whole (re.fullmatch): "$" alone would let a trailing newline in.
NAME_MAX = 128
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}")
_TAG = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+/-]{{0,{NAME_MAX - 1}}}")
_HEX_ID = re.compile(r"[0-9a-fA-F]{4,32}")  # what a version, run or audit id (or its prefix) looks like
_UNKNOWN_LICENSE = ("", "unknown", "none", "noassertion")
# An SPDX id (letters, digits, '.', '-'; a trailing '+' means "or later"), LicenseRef- ones included.
_SPDX_ID = re.compile(r"(DocumentRef-[A-Za-z0-9.-]+:)?[A-Za-z0-9.-]+\+?")
_USER_DEFINED = ("LicenseRef-", "DocumentRef-")

# Conditions of common licences, after the Data Provenance Initiative's categories:
# (non_commercial, share_alike, attribution). Identifiers are SPDX.
KNOWN_LICENSES: dict[str, tuple[bool, bool, bool]] = {
    "CC0-1.0": (False, False, False),
    "PDDL-1.0": (False, False, False),
    "Unlicense": (False, False, False),
    "MIT": (False, False, True),
    "BSD-2-Clause": (False, False, True),
    "BSD-3-Clause": (False, False, True),
    "Apache-2.0": (False, False, True),
    "CC-BY-3.0": (False, False, True),
    "CC-BY-4.0": (False, False, True),
    "ODC-By-1.0": (False, False, True),
    "CC-BY-SA-3.0": (False, True, True),
    "CC-BY-SA-4.0": (False, True, True),
    "ODbL-1.0": (False, True, True),
    "GPL-2.0-only": (False, True, True),
    "GPL-3.0-only": (False, True, True),
    "GPL-3.0-or-later": (False, True, True),
    "LGPL-3.0-only": (False, True, True),
    "CC-BY-NC-4.0": (True, False, True),
    "CC-BY-NC-3.0": (True, False, True),
    "CC-BY-NC-SA-4.0": (True, True, True),
    "CC-BY-NC-SA-3.0": (True, True, True),
    "CC-BY-NC-ND-4.0": (True, False, True),
    "CC-BY-ND-4.0": (False, False, True),
}


def check_utf8(text: str, what: str) -> None:
    """Refuse a text the ledger cannot keep: one that does not encode as UTF-8 (an unpaired
    surrogate, as ``os.fsdecode`` makes of a file name's stray bytes), or no text at all (an
    ``author=5``: a server's request model made it '5'); ``what`` names it."""
    if not isinstance(text, str):
        raise InvalidParameterError(f"{what} must be a string, got {type(text).__name__} {shown(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(f"{what} holds an unpaired surrogate at character {exc.start}: it is not valid "
                                    "UTF-8") from None


def check_batch_rows(rows: Any) -> None:
    """Refuse a number of rows per batch of a query's result that is not a positive integer."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise InvalidParameterError(f"rows (per batch) must be a positive integer, got {rows!r}")


def query_params(params: Any) -> list[Any] | None:
    """The values of a query's ``?`` placeholders, in order, as a list (None for none). A string
    was split into its characters (``params="xy"``: two values, and ``"x"`` worked by chance), a
    dict gave its keys as the values (``SELECT ?`` with ``{"a": 5}`` answered ``'a'``), a number
    was a ``TypeError``."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        raise InvalidParameterError(f"params must be a list of the values of the query's ? placeholders, in order, "
                                    f"got a dict {shown(params)}: write ? in the query and give the values as a list")
    if isinstance(params, (str, bytes, bytearray)) or not isinstance(params, Iterable):
        raise InvalidParameterError(f"params must be a list of the values of the query's ? placeholders, in order, "
                                    f"got {type(params).__name__} {shown(params)}: for one value give "
                                    f"[{shown(params)}]")
    return list(params) or None


def check_document_key(key: Any) -> str:
    """``key`` if it is a document key: text (``key=5`` was DuckDB's ConversionException, as the
    keys were cast to its type), and UTF-8 (bytes of an argument that are not: a traceback)."""
    if not isinstance(key, str):
        raise InvalidParameterError(f"a document key is text, as the ledger stores it: give {str(key)!r}, not "
                                    f"{type(key).__name__} {key!r}")
    check_utf8(key, "the document key")
    return key


def check_document_keys(keys: Any) -> list[str]:
    """``keys`` as a list of distinct document keys, in order (``prov dataset remove``): a string
    is refused (it was taken a character at a time: "no document '7', 'L'"), and so is a key that
    is not UTF-8 (a traceback from DuckDB, or from the JSON of a request)."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise InvalidParameterError(f"keys must be a list of document keys, got {type(keys).__name__} {keys!r}")
    keys = list(keys)
    for i, k in enumerate(keys):  # a number is the key an id number became; None or b"k" was "no document 'None'"
        if not isinstance(k, (str, numbers.Real)) or isinstance(k, bool):
            raise InvalidParameterError(f"keys[{i}] is of type {type(k).__name__} ({k!r:.60}): a document key is a string "
                                        "(or the number an id field held)")
    keys = list(dict.fromkeys(str(k) for k in keys))
    for k in keys:
        check_utf8(k, "a document key")
    return keys


class UnknownLicenseWarning(ProvenanceWarning):
    """A licence id is not on the SPDX list: it is kept as given, with unknown conditions."""


@functools.lru_cache(maxsize=1)
def spdx_licensing() -> license_expression.Licensing:
    """The SPDX licence list (deprecated ids as aliases of their successors, and the exceptions),
    from the copy that ships with ``license-expression``: no network. The ScanCode-only keys of
    that copy (``LicenseRef-scancode-...``) are left out: they are not on the SPDX list."""
    return license_expression.Licensing(
        license_expression.LicenseSymbol(
            key=entry["spdx_license_key"],
            aliases=tuple(a for a in entry.get("other_spdx_license_keys", []) if not a.startswith(_USER_DEFINED)),
            is_exception=entry.get("is_exception", False),
        )
        for entry in license_expression.get_license_index()
        if entry.get("spdx_license_key") and not entry["spdx_license_key"].startswith(_USER_DEFINED)
    )


class License(BaseModel):
    """A licence as an SPDX identifier and its conditions; ``None`` means unknown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spdx: str | None = Field(None, description="SPDX identifier or expression; None when unknown")
    non_commercial: bool | None = None
    share_alike: bool | None = None
    attribution: bool | None = None

    @classmethod
    def from_spdx(cls, spdx: str | None) -> License:
        """The licence named by the SPDX expression ``spdx`` (``MIT``, ``MIT OR Apache-2.0``,
        ``Apache-2.0 WITH LLVM-exception``, ``LicenseRef-mine``), in canonical spelling.

        A malformed expression is refused (:class:`InvalidParameterError`). An id that is not on
        the SPDX list is kept as given, with unknown conditions and an
        :class:`UnknownLicenseWarning`; ``LicenseRef-`` ids are user-defined, so they get no
        warning, and unknown conditions too. Conditions of expressions: see :func:`_conditions`.
        """
        if spdx is None or spdx.strip().lower() in _UNKNOWN_LICENSE:
            return cls()
        licensing = spdx_licensing()
        try:
            expr = licensing.parse(spdx, strict=True)
        except license_expression.ExpressionError as exc:
            raise InvalidParameterError(f"license {spdx!r} is not an SPDX identifier or expression: {exc}") from None
        for symbol in licensing.license_symbols(expr):
            if not _SPDX_ID.fullmatch(symbol.key):
                raise InvalidParameterError(
                    f"license {spdx!r}: {symbol.key!r} is not an SPDX identifier (letters, digits, '.' and '-' only)"
                )
        unknown = [k for k in licensing.unknown_license_keys(expr) if not k.startswith(_USER_DEFINED)]
        if unknown:
            warn(f"license {spdx!r}: not on the SPDX list: {', '.join(unknown)}; stored with unknown conditions "
                 "(a licence of your own takes a LicenseRef- id)", UnknownLicenseWarning)
        conditions = _conditions(expr)
        if conditions is None:
            return cls(spdx=str(expr))
        nc, sa, by = conditions
        return cls(spdx=str(expr), non_commercial=nc, share_alike=sa, attribution=by)

    @property
    def known(self) -> bool:
        return self.non_commercial is not None

    @property
    def url(self) -> str | None:
        """The licence's page on spdx.org when it is one id of the SPDX list, else ``None``
        (expressions, ``LicenseRef-`` ids and unknown ids have no page there)."""
        symbol = spdx_licensing().known_symbols.get(self.spdx or "")
        if symbol is None or symbol.is_exception:
            return None
        return f"https://spdx.org/licenses/{symbol.key}.html"


def _conditions(expr: license_expression.LicenseExpression) -> tuple[bool, bool, bool] | None:
    """(non_commercial, share_alike, attribution) of a parsed expression, or ``None`` when unknown.

    A known licence has its own (:data:`KNOWN_LICENSES`); ``WITH`` an exception, those of the
    licence (an exception only adds permissions, so they are an upper bound). ``A AND B`` demands
    what either part demands. ``A OR B`` demands what its least demanding option does, when one
    option demands no more than every other on each condition; otherwise the choice is unclear.
    """
    if isinstance(expr, license_expression.LicenseWithExceptionSymbol):
        expr = expr.license_symbol
    if isinstance(expr, license_expression.LicenseSymbol):
        return KNOWN_LICENSES.get(expr.key)
    parts = [_conditions(arg) for arg in expr.args]
    if any(p is None for p in parts):
        return None
    if isinstance(expr, license_expression.AND):
        return tuple(any(flags) for flags in zip(*parts))  # type: ignore[return-value]
    least = tuple(all(flags) for flags in zip(*parts))
    return least if least in parts else None  # type: ignore[return-value]


class DatasetRecord(BaseModel):
    """One version of a registered dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_id: str = Field(description="NAME@VERSION")
    name: str
    version: int = Field(ge=1)
    role: Role
    license: License
    model_generated: bool | None = Field(None, description="whether the text was generated by a model")
    source: str | None = None
    creator: str | None = None
    description: str | None = None
    text_field: str
    id_field: str | None = None
    config: FingerprintConfig
    config_id: str = Field(description="identity of the fingerprint config of every signature")
    unicode_version: str = Field(description="Unicode database version of the Python that normalised the text")
    bands: int = Field(description="LSH bands of the stored band keys")
    rows: int = Field(description="signature positions per LSH band")
    content_hash: str = Field(description="xxh3-128 over shard hashes, fields and config")
    n_shards: int
    n_documents: int
    n_bytes: int
    n_tokens: int
    n_invalid_replaced: int = 0
    n_invalid_skipped: int = 0
    created_at: UTCDateTime

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        check_name(v)
        return v


class ShardRecord(BaseModel):
    """One input file (or in-memory batch) of a dataset version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_id: str
    shard_index: int = Field(ge=0)
    shard_id: str = Field(description="xxh3-128 (hex) of the file's bytes, or of the records for in-memory data")
    name: str = Field(description="path relative to the sources' common folder, or batch-NNNNN")
    uri: str | None = Field(None, description="absolute path of the file when the shard is a file")
    format: str
    sha256: str | None = Field(None, description="SHA-256 (hex) of the file's bytes")
    n_bytes: int
    n_documents: int
    n_tokens: int


class DocumentRecord(BaseModel):
    """One document of a shard with its fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: int = Field(description="ledger-wide document number")
    dataset_id: str
    shard_index: int
    row_index: int = Field(description="0-based index of the record within its shard")
    line: int | None = Field(None, description="1-based line number in a JSONL file")
    key: str = Field(description="id_field value, else SHARD:ROW")
    exact_hash: int = Field(description="xxh3-64 of the normalised text")
    token_count: int
    n_bytes: int = Field(description="UTF-8 bytes of the original text")
    signature: list[int]
    band_keys: list[int]


class RegistrationResult(BaseModel):
    """What ``register_dataset`` did: the dataset version and whether it is new."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: DatasetRecord
    created: bool
    message: str
    retracted: list[dict[str, Any]] = Field(
        default_factory=list, description="what was taken out that the new version holds again: documents with the "
        "text of a retracted document or of one `prov dataset remove` took out of an earlier version, and shards with "
        "a retracted shard's bytes (key or shard name, the retractions, the versions removed from), at most 20")

    def warn_retracted(self) -> None:
        """Warn when the version holds again what was taken out."""
        if not self.retracted:
            return
        def why(r: dict[str, Any]) -> str:
            return ", ".join([*(f"retraction {x}" for x in r["retractions"]),
                              *(f"removed from {x}" for x in r.get("removed_from") or [])])

        named = ", ".join(f"{r['key']} ({why(r)})" for r in self.retracted[:5])
        if len(self.retracted) > 5:
            named += f" and {len(self.retracted) - 5}{' or more' if len(self.retracted) >= 20 else ''} more"
        warn(f"{self.dataset.dataset_id} holds again what was taken out: {named}; a run trained on it brings "
             f"them back into a model (remove them again with prov dataset remove {self.dataset.name} KEY...)")


def check_list(value: Any, what: str, call: str, *, least: int = 0, fewer: str = "") -> list[Any]:
    """``value`` (a list, a tuple, any iterable but a mapping) as a list, or a refusal naming
    ``what`` and showing ``call``: a string (taken a character at a time: "no version or tag
    '3'"), a single record, a mapping, or None; a list of fewer than ``least`` items is refused
    with ``fewer``."""
    if isinstance(value, (str, bytes, BaseModel, Mapping)) or not isinstance(value, Iterable):
        raise InvalidParameterError(f"{what} must be a list ({call}), got {type(value).__name__}")
    items = list(value)
    if len(items) < least:
        raise InvalidParameterError(fewer)
    return items


def check_target_names(dataset: Any, shard: Any) -> None:
    """Refuse a taint or retraction target's dataset or shard name that is not UTF-8 (an unpaired
    surrogate), naming it, locally and in a client before it sends it: DuckDB's ``Python
    Conversion Failure`` was HTTP 500 from a server, and httpx's ``UnicodeEncodeError`` a client's."""
    for part, value in (("dataset", dataset), ("shard", shard)):
        if isinstance(value, str):
            check_utf8(value, f"the {part} {value!r}")


def check_ref(value: Any, what: str, kinds: tuple[type, ...] = (str, BaseModel)) -> Any:
    """``value`` if it is a reference (a string) or a record (of ``kinds``); else a refusal that
    says ``what`` one is and shows the value (an int was looked up as its digits: "no version or
    tag '5'"). A string that is not UTF-8 (an unpaired surrogate: JSON's ``"\\ud800"`` sent to a
    server, a command line's stray bytes) is refused naming it: the ledger's lookup raised DuckDB's
    ``Python Conversion Failure``, HTTP 500 from a server."""
    if isinstance(value, str):
        check_utf8(value, f"the reference {shown(value)}")
    if isinstance(value, kinds):
        return value
    raise InvalidParameterError(f"{what}, got {type(value).__name__} {value!r}"[:300])


def check_flags(**flags: Any) -> None:
    """Refuse a flag that is not True or False (numpy's bools taken), naming it: ``store="no"``
    is a true string, so an audit asked not to be stored was stored (and said ``stored: false``)."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidParameterError(f"{name} must be True or False, got {type(value).__name__} {value!r}"[:300])


A_VERSION = "a version is an id, an id prefix, a tag or a VersionRecord"
A_TARGET = "a target is a dataset or version name or record"


def check_targets(targets: Any) -> list[Any]:
    """The targets of a dedup audit, checked in the same words locally and through a server."""
    targets = check_list(targets, "targets", "of datasets or versions: audit_dedup(['web', 'v1'])",
                         least=1, fewer="give at least one dataset or version to audit")
    return [check_ref(t, A_TARGET) for t in targets]


def check_gate_versions(versions: Any) -> list[Any]:
    """The versions of a pre-merge gate, checked in the same words locally and through a server."""
    versions = check_list(versions, "versions", "of the versions to merge: audit_merge([a, b])",
                          least=2, fewer="the gate needs at least two different versions")
    return [check_ref(v, A_VERSION) for v in versions]


def check_merge_options(versions: Any, weights: Any, eps: Any, normalize: Any, density: Any = None) -> list[float] | None:
    """Refuse a merge's options of the wrong kind before anything is read or sent, in the same
    words for a local ledger and a server's client (None: the method's default); returns
    ``weights`` as a list (a tensor or a numpy array of them included), or None. A string of
    versions was merged a character at a time ("no version or tag '3'")."""
    for v in check_list(versions, "versions", "of the versions to merge, ids, tags or records: merge([a, b], ...)",
                        least=1, fewer="merge needs at least one version"):
        check_ref(v, A_VERSION)
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps)
                            or eps < 0):
        raise InvalidParameterError(f"eps (the floor on the Fisher) must be a finite number >= 0, got {eps!r}")
    if normalize is not None and not isinstance(normalize, bool):
        raise InvalidParameterError(f"normalize must be True or False, got {normalize!r}")
    if density is not None and (isinstance(density, bool) or not isinstance(density, numbers.Real)
                                or not 0 < density <= 1):
        raise InvalidParameterError(f"density (the fraction of each task vector TIES keeps) must be a number in (0, 1], "
                                    f"got {density!r}")
    if weights is None:
        return None
    if hasattr(weights, "tolist") and not isinstance(weights, (str, bytes)):  # a tensor or a numpy array
        weights = weights.tolist()
    if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence) or not all(
            isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise InvalidParameterError(f"weights must be a list of numbers, one per version, got {shown(weights)}")
    return [float(w) for w in weights]


def check_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it is a valid dataset (or, per ``what``, token) name, else an error saying
    what one looks like."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidParameterError(
            f"{what} {shown(name)} must start with an ASCII letter or digit and hold only ASCII letters, digits, '.', '_', "
            f"'-' (at most {NAME_MAX} characters)"
        )
    return name


def check_tag(name: str) -> str:
    """``name`` if it is a valid tag: a name that may also hold '+' and '/', and that does not
    look like a version id or prefix (4 to 32 hex digits, in any case), which it would shadow."""
    if not isinstance(name, str) or not _TAG.fullmatch(name):
        raise InvalidParameterError(
            f"tag {shown(name)} must start with an ASCII letter or digit and hold only ASCII letters, digits, '.', '_', '-', "
            f"'+', '/' (at most {NAME_MAX} characters)"
        )
    if looks_like_id(name):
        raise InvalidParameterError(f"tag {name!r} looks like a version id (4 to 32 hex digits); pick another name")
    return name


def looks_like_id(ref: str) -> bool:
    """Whether ``ref`` has the form of a version, run or audit id or id prefix (4-32 hex digits)."""
    return isinstance(ref, str) and _HEX_ID.fullmatch(ref) is not None


def check_retraction_id(ref: Any) -> str:
    """``ref`` as a retraction id or prefix, or NotFoundError naming it: through a server ``""``
    was "no such API route: POST /api/v1/retractions//apply", and ``12`` "expected a name, id or
    record"."""
    if not looks_like_id(str(ref)):
        raise NotFoundError(f"no retraction {ref!r} (a retraction id is 4 to 12 hex digits; `prov retractions` lists them)")
    return str(ref)


class ParamRecord(BaseModel):
    """One parameter group in a version's manifest: how it differs from the first parent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: str
    shape: list[int]
    encoding: Literal["unchanged", "sparse", "low_rank", "full", "removed"]
    objects: dict[str, str] = Field(default_factory=dict, description="role of each patch tensor -> object address")
    meta: dict[str, float] = Field(default_factory=dict, description="small patch metadata, e.g. the low-rank scale")
    nbytes: int = Field(0, description="bytes of the patch's tensors")


class VersionRecord(BaseModel):
    """A model state: its parents, what produced it, and what it cost to store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version_id: str = Field(description="32 hex digits")
    parents: list[str]
    message: str
    author: str | None = None
    created_at: UTCDateTime
    run_id: str | None = None
    n_params: int
    n_elements: int
    full_bytes: int = Field(description="bytes of a full copy of this version")
    stored_bytes: int = Field(description="bytes of the patch tensors this version references")
    tags: list[str] = Field(default_factory=list, description="tags that name this version (kept in the tags table)")

    def label(self) -> str:
        """The short id with the version's tags, as people see it: ``3f2a9c1b04de (release, v2)``."""
        return self.version_id[:12] + (f" ({', '.join(self.tags)})" if self.tags else "")


class TokenRecord(BaseModel):
    """An API token of ``prov serve``: its name and scope; the token itself is never stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    scope: Literal["read", "write", "admin"] = Field(description="read < write < admin: each allows the ones before")
    created_at: UTCDateTime
    expires_at: UTCDateTime | None = Field(None, description="when it stops working (None: never)")
    revoked_at: UTCDateTime | None = None


class TagRecord(BaseModel):
    """A tag: a name for a version, movable by tagging again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version_id: str
    created_at: UTCDateTime = Field(description="when the tag was set (or last moved)")
    message: str = Field(description="the message of the version it names")


class RunShardRecord(BaseModel):
    """What a run consumed of one shard: examples seen and epochs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    dataset_id: str
    shard_index: int
    examples: int = Field(description="examples of the shard the run saw (repeats counted)")
    distinct_documents: int = Field(description="distinct documents of the shard the run saw")
    epochs: float = Field(description="examples / documents of the shard")
    logged: bool = Field(description="counted from logged examples (else assumed from the declared epochs)")


class CheckpointRecord(BaseModel):
    """A version saved as a checkpoint of a run (:meth:`provenance.runs.Run.checkpoint`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version_id: str
    run_id: str
    step: int = Field(description="the last step whose logged examples it was trained on (-1: saved before the run "
                                   "logged any)")
    created_at: UTCDateTime


class RunRecord(BaseModel):
    """A training run: what it started from, which data it declared, how it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(description="32 hex digits")
    base_version: str | None = Field(None, description="the version the run starts from")
    message: str
    author: str | None = None
    params: dict = Field(default_factory=dict, description="hyper-parameters as given")
    status: Literal["running", "finished", "failed"]
    error: str | None = Field(None, description="why a failed run failed")
    started_at: UTCDateTime
    ended_at: UTCDateTime | None = None
    version_id: str | None = Field(None, description="the version the run produced")
    host: str
    pid: int = Field(description="process that owns the run; 0: none (started from the CLI)")
    datasets: dict[str, float] = Field(default_factory=dict, description="dataset id -> declared epochs")
    n_logged: int = Field(0, description="examples logged with their document keys")
