"""OpenLineage intake: RunEvents from jobs that already emit them (Spark, Airflow, dbt, a training
script with the ``openlineage-python`` client) become provenance runs.

Each OpenLineage run (``run.runId``, a UUID: anything else is refused) is one provenance run, created by its first event and ended
by ``COMPLETE`` (finished), ``FAIL`` or ``ABORT`` (failed); ``START``, ``RUNNING`` and ``OTHER``
add what they name. Every input dataset is recorded against the run by namespace and name, and
matched to a registered dataset:

- by a ``provenance`` input facet: ``{"dataset": "NAME" or "NAME@VERSION"}``;
- else by name: an input named like a registered dataset (``NAME`` for its latest version, or
  ``NAME@VERSION``), or whose name ends in ``/NAME``; when its standard ``version`` facet is the
  content hash of one version of that dataset, that version (as a ledger's own events say,
  :mod:`provenance.openlineage_out`); an input carrying the ``provenance_fingerprint`` facet
  (another ledger's) whose content hash is no version of ours matches nothing.

An input named again by a later event keeps the dataset it was first matched to (one that matched
nothing takes the match the later event finds). ``JobEvent`` and ``DatasetEvent`` (no run) are
answered ``event ignored``.

An input in namespace ``provenance`` named by a full version id is a model (a run's base, a
merge's parent), not data: it is not recorded as an input.

Events may arrive out of order (the client sends them asynchronously): inputs named by an event
that comes after the run's end (a ``START`` after its ``COMPLETE``) are still added to the run
and counted; a second end changes nothing. The run's last event is the one with the latest
``eventTime``, whatever the order they came in. An event naming a known runId under another job
is refused: a runId is one run of one job.

A matched dataset is declared by the run (one epoch, as ``prov run start --dataset`` would);
an unmatched input is kept and reported by lineage as an **unregistered input**: data that shaped
the version which the ledger has no fingerprints of. The version a run produced is named by a
``provenance`` run facet ``{"version": REF}`` or by an output in namespace ``provenance`` whose
name is the version's ref; the version (committed without a run) is then this run's, so
``prov lineage`` of it lists the run's data. Such an output naming no version of this ledger (the
events of another ledger's run) is not attached; one naming a merge is refused (a merge made it).

The ledger's own events (``prov export openlineage`` posted back, a run's events sent to its own
server) name its runs and merges by their ids as UUIDs: they are answered ``event ignored``, and
nothing is written.
"""

from __future__ import annotations

import re
import socket
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import xxhash
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger import LedgerStore
from provenance.openlineage_out import NAME_LONGEST, NAMESPACE
from provenance.records import RunRecord, check_utf8

_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
EVENT_TYPES = ("START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER")
_ENDS = {"COMPLETE": "finished", "FAIL": "failed", "ABORT": "failed"}


def _printable(value: str) -> str:
    """A namespace or name with no control characters: a NUL in a job's name was stored and
    shown as the run's message (and a terminal obeys the others)."""
    if bad := next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None):
        raise ValueError(f"holds the control character {bad!r} at {value.index(bad)}")
    return value


_Name = Annotated[str, Field(min_length=1, max_length=NAME_LONGEST), AfterValidator(_printable)]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class OLDataset(_Loose):
    namespace: _Name
    name: _Name
    facets: dict[str, Any] = Field(default_factory=dict)


class OLJob(_Loose):
    namespace: _Name
    name: _Name


class OLRun(_Loose):
    runId: str = Field(min_length=1, max_length=128)  # noqa: N815 (the OpenLineage field)
    facets: dict[str, Any] = Field(default_factory=dict)

    @field_validator("runId")
    @classmethod
    def _uuid(cls, value: str) -> str:
        """The spec's runId is a UUID: kept in its canonical form, so ``A1…`` and ``a1…`` are one run."""
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a UUID (OpenLineage's runId is one, e.g. "
                             f"{uuid.UUID(int=0)})") from None


class RunEvent(_Loose):
    """The fields of an OpenLineage RunEvent the ledger reads (the rest is allowed and ignored)."""

    eventType: Literal["START", "RUNNING", "COMPLETE", "FAIL", "ABORT", "OTHER"] | None = None  # noqa: N815
    eventTime: datetime  # noqa: N815
    run: OLRun
    job: OLJob
    inputs: list[OLDataset] = Field(default_factory=list)
    outputs: list[OLDataset] = Field(default_factory=list)
    producer: str | None = None

    @field_validator("producer")
    @classmethod
    def _utf8(cls, value: str | None) -> str | None:
        """Text the ledger can keep (the run's params hold it): a lone surrogate (JSON's ``"\\ud800"``)
        was stored, and the run then could not be served (a server error)."""
        try:
            if value is not None:
                value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"holds an unpaired surrogate at character {exc.start}: it is not valid UTF-8") from None
        return value

    @field_validator("eventTime", mode="before")
    @classmethod
    def _iso(cls, value: Any) -> Any:
        """An ISO 8601 date-time, as the spec (and the client) has it: a number (``0``, ``20261208``) or
        a string of digits was taken as seconds since 1970, a date nobody meant, and stored as it."""
        if not (isinstance(value, str) and re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value)):
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            shown = repr(value)[:40] if isinstance(value, str) else f"a JSON {kind}, {str(value)[:40]}"
            raise ValueError(f"must be an ISO 8601 date-time such as 2026-12-08T09:30:00Z, got {shown}")
        return value

    @field_validator("eventTime")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """In UTC without its zone, as the ledger keeps times: ``0001-01-01T00:00:00+05:00`` (before
        year 1 in UTC) was an OverflowError, a server error."""
        if value.tzinfo is None:
            return value
        try:
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range in UTC (years 1 to 9999)") from None


def parse_event(data: Any) -> RunEvent:
    """A RunEvent, or an :class:`InvalidParameterError` naming the field that is wrong."""
    if not isinstance(data, dict):
        raise InvalidParameterError(f"not an OpenLineage RunEvent: the body is a JSON "
                                    f"{_JSON_KINDS.get(type(data), type(data).__name__)}, not an object")
    try:
        return RunEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise InvalidParameterError(f"not an OpenLineage RunEvent: {problems}") from None


def ingest(ledger: LedgerStore, data: Any) -> dict[str, Any]:
    """Record one RunEvent (module doc); returns the provenance run and what was matched."""
    static = _static_kind(data)
    if static is not None:  # the client sends these to the same route: a 422 raised in the job that sent one
        return {"run_id": None, "event": static, "status": f"event ignored: a {static} names no run, and the ledger "
                "records runs", "inputs": [], "version_id": None}
    event = parse_event(data)
    kind = event.eventType or "OTHER"
    own = _own(ledger, event.run.runId)
    if own is not None:  # this ledger's own events, sent back (a replayed export, a run's events sent here)
        return {"run_id": own[0], "event": kind, "status": f"event ignored: it is {own[1]} of this ledger, which "
                "the ledger records itself", "inputs": [], "version_id": None}
    when = event.eventTime  # in UTC (RunEvent._utc)
    known = _Registered(ledger) if event.inputs else None
    inputs = [(d.namespace, d.name, _match(ledger, known, d)) for d in event.inputs if not _is_model(d)]
    version = _produced(ledger, event)
    with ledger.transaction() as tx:
        known = tx.openlineage_run(event.run.runId)
        if known is None:
            run_id = _run_id(event)
            tx.insert_run(RunRecord(
                run_id=run_id, base_version=None, message=f"{event.job.namespace}/{event.job.name}",
                params={"openlineage": {"runId": event.run.runId, "job": {"namespace": event.job.namespace,
                                                                           "name": event.job.name},
                                        "producer": event.producer}},
                status="running", started_at=when, host=socket.gethostname(), pid=0, datasets={}))
        else:
            if (known["job_namespace"], known["job_name"]) != (event.job.namespace, event.job.name):
                raise InvalidParameterError(  # a runId is unique (a UUID): two jobs sharing one is a client's mistake
                    f"run.runId {event.run.runId} is the run of the job {known['job_namespace']}/{known['job_name']}; "
                    f"this event names the job {event.job.namespace}/{event.job.name} (each run has a runId of its own)")
            run_id = known["run_id"]
            tx.run_started_earlier(run_id, when)  # events arrive out of order: the run began at its earliest
            if inputs:  # an input named again keeps its first match: named after a newer version was registered, it
                before = tx.run_input_matches(run_id)  # was declared as that one too (its data counted twice)
                inputs = [(n, m, before.get((n, m), d)) for n, m, d in inputs]
        status = tx.run_status(run_id)
        tx.map_openlineage_run(event.run.runId, run_id, event.job.namespace, event.job.name, kind, when)
        if status == "running":
            tx.add_run_inputs(run_id, inputs)
            if version is not None:
                tx.attach_version_run(version, run_id)
            if kind in _ENDS:
                error = _error(event) if kind != "COMPLETE" else None
                tx.end_run(run_id, _ENDS[kind], error=error, version_id=version, ended_at=when)
        elif inputs and (late := tx.add_run_inputs(run_id, inputs))[0]:  # events arrive out of order (the client
            if late[1]:                                                     # sends them asynchronously): late inputs
                tx.count_run_shards(run_id)                                 # still count
            status = f"{status} (the run had ended: its inputs are added to it)"  # an unmatched one too: it said ignored
        else:  # a repeated end, a late START or RUNNING, inputs it has: the run is ended; change nothing
            status = f"{status} (event ignored: the run has ended)"
    return {"run_id": run_id, "event": kind, "status": status if status != "running" or kind not in _ENDS
            else _ENDS[kind], "inputs": [{"namespace": n, "name": m, "dataset_id": d} for n, m, d in inputs],
            "version_id": version}


def _static_kind(data: Any) -> str | None:
    """``JobEvent`` or ``DatasetEvent`` when ``data`` is one of the spec's static events (a job's or
    a dataset's definition, no run: by its ``schemaURL``, else by having no ``run`` and no
    ``eventType``); None for anything else, a RunEvent to parse."""
    if not isinstance(data, dict) or "run" in data:
        return None
    url = data.get("schemaURL")
    kind = url.rpartition("/")[2] if isinstance(url, str) and "#/$defs/" in url else None
    if kind in ("JobEvent", "DatasetEvent"):
        return kind
    if kind is None and "eventType" not in data:
        return "DatasetEvent" if "dataset" in data else "JobEvent" if "job" in data else None
    return None


def _own(ledger: LedgerStore, ol_run_id: str) -> tuple[str | None, str] | None:
    """``(run id, what)`` when ``ol_run_id`` is a run or a merge of this ledger: its own events
    name a run by its id and a merge by its version's, as UUIDs (:mod:`provenance.openlineage_out`).
    Taken in again they made a second run of each, left running when their end named the version,
    and the merge a run's version (whose retraction then said "retrain")."""
    hex_id = uuid.UUID(ol_run_id).hex
    try:
        return ledger.run(hex_id).run_id, f"run {hex_id[:12]}"
    except NotFoundError:
        pass
    try:
        version = ledger.version(hex_id)
    except (NotFoundError, InvalidParameterError):
        return None
    return (None, f"the merge {hex_id[:12]}") if len(version.parents) > 1 else None


def _run_id(event: RunEvent) -> str:
    return xxhash.xxh3_128(f"openlineage|{event.run.runId}".encode()).hexdigest()


def _is_model(dataset: OLDataset) -> bool:
    return dataset.namespace == NAMESPACE and re.fullmatch(r"[0-9a-f]{32}", dataset.name) is not None


class _Registered:
    """Every registered dataset version, read once per event: an event may name thousands of
    inputs, and a query or two per input held the ledger for seconds."""

    def __init__(self, ledger: LedgerStore):
        self.ids: set[str] = set()
        self.latest: dict[str, str] = {}
        self.by_content: dict[tuple[str, str], str] = {}
        for r in ledger.datasets(all_versions=True):  # by name, then version: the latest comes last
            self.ids.add(r.dataset_id)
            self.latest[r.name] = r.dataset_id
            self.by_content.setdefault((r.name, r.content_hash), r.dataset_id)

    def find(self, ref: str) -> str | None:
        """``NAME`` (its latest version) or ``NAME@VERSION``, as :meth:`LedgerStore.dataset` reads it."""
        name, at, version = ref.partition("@")
        if not at:
            return self.latest.get(name)
        if not (version.isascii() and version.isdigit() and len(version) <= 9):
            return None
        found = f"{name}@{int(version)}"
        return found if found in self.ids else None


def _match(ledger: LedgerStore, known: _Registered, dataset: OLDataset) -> str | None:
    """The registered dataset an input names (module doc), or None."""
    facet = dataset.facets.get("provenance") if isinstance(dataset.facets, dict) else None
    if facet is not None and not (isinstance(facet, dict) and isinstance(facet.get("dataset"), str)):
        raise InvalidParameterError(f"input {dataset.namespace}/{dataset.name}: its provenance facet must be "
                                    f'{{"dataset": "NAME" or "NAME@VERSION"}}, got {str(facet)[:80]}')
    if facet is not None and facet["dataset"]:
        check_utf8(facet["dataset"], f"input {dataset.namespace}/{dataset.name}: its provenance facet's dataset")
        found = known.find(str(facet["dataset"]))  # named explicitly: a wrong name is an error, saying why
        if found is not None:
            return found
        try:
            return ledger.dataset(str(facet["dataset"])).dataset_id
        except (NotFoundError, InvalidParameterError) as exc:  # which of thousands of inputs: it said only the name
            raise type(exc)(f"input {dataset.namespace}/{dataset.name}: its provenance facet's dataset: {exc}") from None
    version = dataset.facets.get("version") if isinstance(dataset.facets, dict) else None
    if isinstance(version, dict) and version.get("datasetVersion"):
        for candidate in dict.fromkeys((dataset.name, dataset.name.rsplit("/", 1)[-1])):
            found = known.by_content.get((candidate, str(version["datasetVersion"])))
            if found is not None:
                return found
        extra = dataset.model_extra or {}
        if isinstance(extra.get("inputFacets"), dict) and "provenance_fingerprint" in extra["inputFacets"]:
            return None  # another ledger's dataset: its content hash is none of ours, so it is not our latest either
    for candidate in (dataset.name, dataset.name.rsplit("/", 1)[-1]):
        found = known.find(candidate)
        if found is not None:
            return found
    return None


def _produced(ledger: LedgerStore, event: RunEvent) -> str | None:
    facet = event.run.facets.get("provenance") if isinstance(event.run.facets, dict) else None
    if facet is not None and not (isinstance(facet, dict) and isinstance(facet.get("version"), str)):
        raise InvalidParameterError(f'run.facets.provenance must be {{"version": REF}}, got {str(facet)[:80]}')
    if facet is not None:  # named explicitly: a wrong ref is an error, saying where it is
        check_utf8(facet["version"], "run.facets.provenance.version")
        try:
            found = ledger.version(facet["version"])
        except (NotFoundError, InvalidParameterError) as exc:
            raise type(exc)(f"run.facets.provenance.version: {exc}") from None
        return _not_a_merge(found)
    for output in event.outputs:
        if output.namespace == NAMESPACE:
            try:
                found = ledger.version(output.name)
            except (NotFoundError, InvalidParameterError):
                continue  # a version of another ledger
            return _not_a_merge(found)
    return None


def _not_a_merge(version: Any) -> str:
    """A merge is made by ``prov merge``, from its inputs: no run produced it (attached to one, its
    lineage would count the run's data, and a retraction would retrain it)."""
    if len(version.parents) > 1:
        raise InvalidParameterError(
            f"version {version.version_id[:12]} is a merge of {', '.join(p[:12] for p in version.parents)}: a merge, not "
            "a run, made it, so an OpenLineage run cannot be what produced it")
    return version.version_id


def _error(event: RunEvent) -> str:
    facet = event.run.facets.get("errorMessage") if isinstance(event.run.facets, dict) else None
    if isinstance(facet, dict) and facet.get("message"):
        # a lone surrogate (JSON's "\\ud800", in a stack trace cut short) as its escape: it was a server error
        message = str(facet["message"])[:2000].encode("utf-8", "backslashreplace").decode()
        return f"OpenLineage {event.eventType}: {message}"
    return f"OpenLineage {event.eventType}"

