"""What every typed result is built of (:mod:`provenance.results`): :class:`Result`, a frozen
pydantic model that also reads by key as the JSON it prints, and :class:`Row`, one row of a
result's list; Arrow tables as fields (:func:`ArrowRows`: kept as a table, validated from and
printed as lists of rows); and the parts several results share: the licence summary, the
banding of an audit and what an audit was of."""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from provenance.plain import utc_text

# ---- the base ----------------------------------------------------------------------------------


class Result(BaseModel):
    """A frozen result that also reads by key, as the JSON it prints."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in type(self).model_fields]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in type(self).model_fields]

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def __eq__(self, other: object) -> bool:
        """Equal to the same result, or to a mapping of its data (as ``model_dump()`` gives it)."""
        if isinstance(other, Mapping) and not isinstance(other, Result):
            return self.model_dump() == dict(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # results hold lists: not hashable

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``--json`` prints)."""
        return self.model_dump(mode="json")


class Row(Result):
    """One row of a result's list; extra fields are refused like everywhere else."""


# ---- Arrow tables as fields ---------------------------------------------------------------------

_ARROW_TYPES: dict[Any, pa.DataType] = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
                                        dt.datetime: pa.timestamp("us")}


def _arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a row field's annotation (scalars, optionals, lists of scalars)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _arrow_type(args[0])
    if origin in (typing.Union, types.UnionType):
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    return _ARROW_TYPES[annotation]


def arrow_schema(row: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a table whose rows are ``row``."""
    hints = typing.get_type_hints(row)
    return pa.schema([(name, _arrow_type(hints[name])) for name in row.model_fields])


def _rows(table: pa.Table, info: Any) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    if info.mode == "json":  # times as RFC 3339, like every record's
        for r in rows:
            for k, v in r.items():
                if isinstance(v, dt.datetime):
                    r[k] = utc_text(v)
    return rows


def ArrowRows(row: type[BaseModel]) -> Any:  # noqa: N802 (a type constructor)
    """An Arrow table field whose rows are ``row``: kept as a table, read from a table or a list
    of rows, printed as a list of rows (dates as ISO text)."""
    schema = arrow_schema(row)

    def validate(value: Any) -> pa.Table:
        if isinstance(value, pa.Table):
            return value
        if isinstance(value, list):
            return pa.Table.from_pylist([row.model_validate(r).model_dump() for r in value], schema=schema)
        raise ValueError(f"expected an Arrow table or a list of {row.__name__} rows, got {type(value).__name__}")

    return Annotated[
        pa.Table,
        PlainValidator(validate),
        PlainSerializer(_rows, return_type=list[dict[str, Any]]),
        WithJsonSchema({"type": "array", "items": row.model_json_schema()}),
    ]


# ---- shared parts -------------------------------------------------------------------------------


class LicenseSummary(Result):
    """The union of the licence conditions of a set of datasets."""

    licenses: list[str] = Field(description="the licences seen (SPDX expressions)")
    non_commercial: list[str] = Field(description="datasets whose licence forbids commercial use")
    share_alike: list[str] = Field(description="datasets whose licence requires share-alike")
    attribution: list[str] = Field(default_factory=list, description="datasets whose licence requires attribution")
    unknown_license: list[str] = Field(description="datasets of no or unknown licence")
    model_generated: list[str] = Field(description="datasets of model-generated text")


class Banding(Result):
    """How an audit's candidate pairs were found: LSH bands of rows of the MinHash signature."""

    bands: int
    rows: int
    num_perm: int
    min_matches: int = Field(description="signature positions that must agree for the threshold")
    p_at_threshold: float = Field(description="chance a pair at the threshold becomes a candidate")
    stored_band_keys: bool = Field(description="whether the registered band keys were used")
    s_curve: list[list[float]] | None = Field(None, description="[similarity, P(candidate)] over [0, 1]")


class AuditTarget(Row):
    target: str = Field(description="as given")
    kind: Literal["dataset", "version"]
    id: str = Field(description="the dataset id or the version id")
    label: str | None = Field(None, description="a version's short id and tags")
