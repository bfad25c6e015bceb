"""OpenLineage out: runs send OpenLineage RunEvents as they start and end, and the lineage of a
version exports as the RunEvents of every run and merge in it. (:mod:`provenance.openlineage` is
the way in: RunEvents that other jobs send become runs.)

**Emission.** A run started through a ledger (``ledger.start_run``, local or remote) sends
``START`` when it starts and ``COMPLETE`` (finished, with or without a version) or ``FAIL`` when
it ends; a run attached to (``ledger.attach_run``) sends only its end. The events go through an
``openlineage-python`` client (``pip install 'provenance[openlineage]'``) and the transport it is
configured with, as the client finds it: ``OPENLINEAGE_CONFIG``, ``openlineage.yml`` in the
working folder or in ``~/.openlineage/``, ``OPENLINEAGE__TRANSPORT__...`` variables or
``OPENLINEAGE_URL``. Where none of them is set nothing is sent and openlineage is not imported;
``OPENLINEAGE_DISABLED=true`` turns emission off everywhere. ``start_run(openlineage=...)`` takes
``False`` (off), ``True`` (on, the configured client), a client of one's own, or
:class:`OpenLineageOptions`. Events are sent in order from a daemon thread: a slow or failing
transport costs a run at most ``timeout`` seconds when it ends, and a logged warning, never an
error.

**What an event holds.**

- ``run.runId``: the provenance run id (32 hex digits) written as a UUID; ``eventTime``: when
  the run started or ended. A run that came in through the intake keeps its own runId and job.
- ``job``: namespace ``OPENLINEAGE_NAMESPACE``, else ``provenance``; name: the run's message.
  Both can be given (:class:`OpenLineageOptions`); the run keeps the job its events were sent
  under (``params["openlineage"]["job"]``), and an export names that one. A ``jobType`` facet
  says ``TRAINING``.
- ``inputs``: the base version, as a dataset in namespace ``provenance`` named by its id, and
  each declared dataset, in namespace ``provenance`` under its name, with the standard
  ``version`` facet (the dataset version's content hash) and the ``provenance_fingerprint``
  input facet (:data:`FINGERPRINT_SCHEMA_URL`: dataset id, fingerprint config id, document count,
  content hash and the epochs declared; never a signature).
- ``outputs`` (at the end): the version the run produced, in namespace ``provenance`` named by
  its id, which is what the intake reads as the version a job produced.
- ``FAIL`` carries the standard ``errorMessage`` facet.

**Export.** :func:`export_events` gives the events of a version's whole lineage: ``START`` and
``COMPLETE`` or ``FAIL`` of every run that produced a version in it (``START`` alone for one
still running), and of every merge, as a job whose inputs are the merged versions (runId: the
merged version's id as a UUID; job name: its message; ``jobType`` ``MERGE``), in time order.
Versions with neither a run nor a merge (an imported base) have no event. It reads only the
ledger's verbs (``lineage``, ``run``, ``dataset``), so a remote ledger exports the same way.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from provenance import __version__
from provenance.errors import InvalidParameterError, ProvenanceError
from provenance.plain import utc_text
from provenance.records import DatasetRecord, RunRecord, VersionRecord

#: The namespace of provenance's datasets and model versions in events (the intake reads outputs
#: in it as versions), and the default job namespace.
NAMESPACE = "provenance"
PRODUCER = f"https://provenance.dev/provenance/{__version__}"
#: Where the ``provenance_fingerprint`` facet's JSON Schema is published; the file ships as
#: ``provenance/schemas/openlineage/1-0-0/ProvenanceFingerprintInputDatasetFacet.json``.
FINGERPRINT_SCHEMA_URL = ("https://provenance.dev/schemas/openlineage/1-0-0/ProvenanceFingerprintInputDatasetFacet.json"
                          "#/$defs/ProvenanceFingerprintInputDatasetFacet")
INSTALL = "pip install 'provenance[openlineage]'"
NAME_LONGEST = 4096  # a namespace or name: a URI or a file path with room to spare
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never in a namespace or name (a terminal obeys them)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenLineageOptions:
    """Where a run's OpenLineage events go and what job they name."""

    client: Any = None  #: an ``OpenLineageClient``; None: one made from the configuration
    namespace: str | None = None  #: the job namespace; None: ``OPENLINEAGE_NAMESPACE``, else ``provenance``
    job: str | None = None  #: the job name; None: the run's message
    timeout: float = 5.0  #: seconds a run's end waits for its events to be sent

    def __post_init__(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not (
                0 <= self.timeout < math.inf):
            raise InvalidParameterError(f"openlineage timeout must be a number of seconds >= 0, got {self.timeout!r}")
        for name in ("namespace", "job"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidParameterError(f"openlineage {name} must be a non-empty string, got {value!r}")


def disabled() -> bool:
    """``OPENLINEAGE_DISABLED=true``: nothing is sent, whatever else is configured."""
    return os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true"


def configured() -> bool:
    """Whether an ``openlineage-python`` client would find a transport configured here: the
    places it looks (module doc), checked without importing it."""
    env = os.environ
    if env.get("OPENLINEAGE_URL") or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in env):
        return True
    files = (env.get("OPENLINEAGE_CONFIG"), os.path.join(os.getcwd(), "openlineage.yml"),
             os.path.expanduser(os.path.join("~", ".openlineage", "openlineage.yml")))
    return any(f and os.path.isfile(f) for f in files)


def job_namespace(given: str | None = None) -> str:
    """The job namespace: ``given``, else ``OPENLINEAGE_NAMESPACE``, else ``provenance``."""
    if given is not None and (not isinstance(given, str) or not given.strip()):  # '' fell back to the default
        raise InvalidParameterError(f"namespace must be a non-empty string, got {given!r}")
    configured = os.environ.get("OPENLINEAGE_NAMESPACE")
    if given is None and configured and not configured.strip():  # ' ' went into events
        raise InvalidParameterError(f"OPENLINEAGE_NAMESPACE is blank ({configured!r}): set it to a namespace, or unset it "
                                    f"for {NAMESPACE!r}")
    namespace = given or configured or NAMESPACE
    if (bad := _CONTROL.search(namespace)) or len(namespace) > NAME_LONGEST:  # events an intake refuses
        what = "namespace" if given is not None else "OPENLINEAGE_NAMESPACE"
        raise InvalidParameterError(
            f"{what} {namespace[:80]!r} holds the control character {bad.group()!r} at {bad.start()}" if bad else
            f"{what} is {len(namespace):,} characters long, more than {NAME_LONGEST:,}")
    return namespace


def emitter(option: Any = None) -> Emitter | None:
    """The sender of a run's events for ``start_run(openlineage=option)``, or None to send none.

    ``None``: as configured (:func:`configured`), else none; ``False``: none; ``True``: the
    configured client; a client; or :class:`OpenLineageOptions`. ``OPENLINEAGE_DISABLED=true``:
    none. With the configuration alone, a missing openlineage-python or a broken configuration is
    a logged warning (the run goes on); asked for explicitly, an error.
    """
    if option is None or isinstance(option, bool):
        options = OpenLineageOptions()
    elif isinstance(option, OpenLineageOptions):
        options = option
    elif callable(getattr(option, "emit", None)):
        options = OpenLineageOptions(client=option)
    else:
        raise InvalidParameterError(f"openlineage: expected True, False, an OpenLineageClient or OpenLineageOptions, "
                                    f"got {type(option).__name__}")
    if option is False or disabled() or (option is None and not configured()):
        return None
    client, owned = options.client, options.client is None
    if client is None:
        try:
            client = _ol().OpenLineageClient()
        except Exception as exc:
            if option is not None:  # asked for explicitly
                raise ProvenanceError(f"OpenLineage: {exc}") from None
            log.warning("OpenLineage is configured but no event will be sent: %s", exc)
            return None
    return Emitter(client, namespace=job_namespace(options.namespace), job=options.job, timeout=float(options.timeout),
                   owned=owned)


def with_job(params: Mapping[str, Any] | None, sender: Emitter | None, message: str) -> dict[str, Any]:
    """``params`` with the job ``sender`` names the run's events under (``openlineage.job``),
    kept with the run so that an export of its lineage names the same job; as they are without
    a sender, or where they already say ``openlineage``."""
    params = dict(params or {})
    if sender is not None and "openlineage" not in params:
        params["openlineage"] = {"job": {"namespace": sender.namespace, "name": job_name(sender.job or message)}}
    return params


def job_name(text: str) -> str:
    """A run's or a merge's message as a job name that an OpenLineage intake takes: each run of
    control characters (a multi-line message's newlines, a tab) and the spaces around it one
    space, at most :data:`NAME_LONGEST` characters (a provenance server refused its own exports
    otherwise)."""
    return re.sub(r" *[\x00-\x1f\x7f-\x9f][\x00-\x1f\x7f-\x9f ]*", " ", text).strip()[:NAME_LONGEST] or "run"


class Emitter:
    """Sends one run's events, in order, from a daemon thread (module doc): :meth:`start` at the
    run's start, :meth:`end` at its end, which waits ``timeout`` seconds at most for them."""

    def __init__(self, client: Any, *, namespace: str = NAMESPACE, job: str | None = None, timeout: float = 5.0,
                 owned: bool = False):
        self.client, self.namespace, self.job, self.timeout, self.owned = client, namespace, job, timeout, owned
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._datasets: dict[str, DatasetRecord] = {}

    def __repr__(self) -> str:
        return f"Emitter({type(self.client).__name__}, namespace={self.namespace!r}, job={self.job!r})"

    def start(self, ledger: Any, run: RunRecord, *, wait: bool = False) -> None:
        """Send the run's ``START``; with ``wait`` (a run this process will not end), wait for it
        to be sent, ``timeout`` seconds at most."""
        self._send(run, "START", lambda: run_event(run, self._records(ledger, run), "START", namespace=self.namespace,
                                                   job=self.job))
        if wait:
            self._drain(run, close=False)

    def end(self, ledger: Any, run: RunRecord) -> None:
        """Send the ended run's ``COMPLETE`` or ``FAIL`` and wait for every event of the run to be
        sent, ``timeout`` seconds at most (then warn; the thread goes on while the process lives)."""
        kind = "FAIL" if run.status == "failed" else "COMPLETE"
        self._send(run, kind, lambda: run_event(run, self._records(ledger, run), kind, namespace=self.namespace,
                                                job=self.job))
        self._drain(run, close=self.owned)

    def _records(self, ledger: Any, run: RunRecord) -> dict[str, DatasetRecord]:
        for dataset_id in run.datasets:
            if dataset_id not in self._datasets:
                self._datasets[dataset_id] = ledger.dataset(dataset_id)
        return self._datasets

    def _send(self, run: RunRecord, kind: str, make: Callable[[], Any]) -> None:
        try:
            event = make()
        except Exception as exc:  # lineage never fails a training run
            log.warning("OpenLineage: the %s event of run %s was not made: %s", kind, run.run_id[:12], exc)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                            name=f"openlineage-{run.run_id[:8]}")
            self._thread.start()
        self._queue.put(event)

    def _drain(self, run: RunRecord, *, close: bool) -> None:
        """Let the thread send what it holds and stop (closing the client with ``close``), waiting
        ``timeout`` seconds at most; a later event starts a new thread."""
        thread, stop = self._thread, _CLOSE if close else _STOP
        if thread is None:
            return
        self._queue.put(stop)
        self._thread, self._queue = None, queue.SimpleQueue()
        thread.join(self.timeout)
        if thread.is_alive():
            log.warning("OpenLineage: the events of run %s were not sent within %gs; the run goes on without them",
                        run.run_id[:12], self.timeout)

    def _work(self, events: queue.SimpleQueue) -> None:
        while (event := events.get()) not in (_STOP, _CLOSE):
            try:
                self.client.emit(event)
            except Exception as exc:
                log.warning("OpenLineage: the %s event of run %s was not sent: %s", event.eventType.value,
                            event.run.runId, exc)
        if event is _CLOSE:
            try:
                self.client.close(self.timeout)
            except Exception as exc:
                log.warning("OpenLineage: closing the client failed: %s", exc)


_STOP, _CLOSE = object(), object()  # what a sending thread is told when it has sent all it holds


# -- events -----------------------------------------------------------------------------------------


def run_event(run: RunRecord, datasets: Mapping[str, DatasetRecord], kind: str, *, namespace: str | None = None,
              job: str | None = None, unregistered: Sequence[tuple[str, str]] = ()) -> Any:
    """The ``START``, ``COMPLETE`` or ``FAIL`` RunEvent of a run (module doc); ``datasets`` holds
    the records of its declared datasets, ``unregistered`` the (namespace, name) of inputs it
    named that match no registered dataset."""
    ol = _ol()
    origin = run.params.get("openlineage") if isinstance(run.params, dict) else None
    if isinstance(origin, dict) and isinstance(origin.get("job"), dict) and _is_uuid(origin.get("runId")):
        run_id, job_ref = origin["runId"], ol.Job(namespace=origin["job"]["namespace"], name=origin["job"]["name"])
    else:  # a run of this ledger's own, under the job its events were sent under (if any)
        run_id = uuid.UUID(hex=run.run_id)
        sent = origin.get("job") if isinstance(origin, dict) and isinstance(origin.get("job"), dict) else {}
        job_ref = ol.Job(namespace=sent.get("namespace") or job_namespace(namespace),
                         name=job_name(sent.get("name") or job or run.message), facets={
            "jobType": ol.JobTypeJobFacet(processingType="BATCH", integration="PROVENANCE", jobType="TRAINING",
                                          producer=PRODUCER)})
    inputs = [ol.InputDataset(namespace=NAMESPACE, name=run.base_version)] if run.base_version else []
    inputs += [_input(datasets[d], epochs) for d, epochs in sorted(run.datasets.items())]
    inputs += [ol.InputDataset(namespace=n, name=m) for n, m in unregistered]
    facets, outputs, when = {}, [], run.started_at
    if kind != "START":
        when = run.ended_at or run.started_at
        if run.version_id:
            outputs = [ol.OutputDataset(namespace=NAMESPACE, name=run.version_id)]
        if kind == "FAIL":
            facets["errorMessage"] = ol.ErrorMessageRunFacet(message=run.error or "failed", programmingLanguage="python",
                                                             producer=PRODUCER)
    return ol.RunEvent(eventType=ol.RunState[kind], eventTime=utc_text(when), producer=PRODUCER,
                       run=ol.Run(runId=str(run_id), facets=facets), job=job_ref, inputs=inputs, outputs=outputs)


def merge_events(version: VersionRecord | Mapping[str, Any], *, namespace: str | None = None) -> list[Any]:
    """``START`` and ``COMPLETE`` of the merge that made ``version``: a job whose inputs are the
    merged versions and whose output is ``version`` (module doc)."""
    ol = _ol()
    row = version.model_dump() if isinstance(version, VersionRecord) else version
    job = ol.Job(namespace=job_namespace(namespace), name=job_name(row["message"] or "merge"),
                 facets={"jobType": ol.JobTypeJobFacet(processingType="BATCH", integration="PROVENANCE",
                                                       jobType="MERGE", producer=PRODUCER)})
    run = ol.Run(runId=str(uuid.UUID(hex=row["version_id"])))
    when = utc_text(row["created_at"])
    inputs = [ol.InputDataset(namespace=NAMESPACE, name=p) for p in row["parents"] or []]
    return [ol.RunEvent(eventType=ol.RunState.START, eventTime=when, producer=PRODUCER, run=run, job=job, inputs=inputs),
            ol.RunEvent(eventType=ol.RunState.COMPLETE, eventTime=when, producer=PRODUCER, run=run, job=job,
                        inputs=inputs, outputs=[ol.OutputDataset(namespace=NAMESPACE, name=row["version_id"])])]


def export_events(ledger: Any, version: str | VersionRecord, *, namespace: str | None = None) -> list[dict[str, Any]]:
    """The RunEvents (as JSON objects) of every run and merge in ``version``'s lineage, in time
    order (module doc). ``ledger``: a local or remote ledger."""
    job_namespace(namespace)  # checked before anything is read ('' fell back to the default)
    ol = _ol()
    lineage = ledger.lineage(version)
    unregistered: dict[str, list[tuple[str, str]]] = {}
    for u in lineage.unregistered_inputs:
        unregistered.setdefault(u.run_id, []).append((u.namespace, u.name))
    datasets: dict[str, DatasetRecord] = {}
    timed = []
    for row in lineage.version_rows():
        order = -row["depth"]  # at one time: the farther ancestor first
        if row["run_id"]:
            run = ledger.run(row["run_id"])
            for d in run.datasets:
                if d not in datasets:
                    datasets[d] = ledger.dataset(d)
            kinds = ["START"] + ([] if run.status == "running" else ["FAIL" if run.status == "failed" else "COMPLETE"])
            events = [run_event(run, datasets, k, namespace=namespace, unregistered=unregistered.get(run.run_id, []))
                      for k in kinds]
        elif row["merge"]:
            events = merge_events(row, namespace=namespace)
        else:
            continue
        timed += [(datetime.fromisoformat(e.eventTime.replace("Z", "+00:00")), order, phase, e)
                  for phase, e in enumerate(events)]
    timed.sort(key=lambda t: t[:3])
    return [ol.Serde.to_dict(e) for *_, e in timed]


def _input(dataset: DatasetRecord, epochs: float) -> Any:
    ol = _ol()
    fingerprint = ol.FingerprintFacet(dataset=dataset.dataset_id, configId=dataset.config_id,
                                      documentCount=dataset.n_documents, contentHash=dataset.content_hash,
                                      epochs=float(epochs), producer=PRODUCER)
    return ol.InputDataset(namespace=NAMESPACE, name=dataset.name,
                           facets={"version": ol.DatasetVersionDatasetFacet(datasetVersion=dataset.content_hash,
                                                                            producer=PRODUCER)},
                           inputFacets={"provenance_fingerprint": fingerprint})


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@functools.cache
def _ol() -> Any:
    """The classes of openlineage-python this module uses (imported on first use), and the
    ``provenance_fingerprint`` facet's class."""
    try:
        import attr
        from openlineage.client import OpenLineageClient
        from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import (
            InputDatasetFacet,
            dataset_version_dataset,
            error_message_run,
            job_type_job,
        )
        from openlineage.client.serde import Serde
    except ImportError as exc:
        raise ProvenanceError(f"OpenLineage needs openlineage-python ({exc}): {INSTALL}") from None

    @attr.define(kw_only=True)
    class ProvenanceFingerprintInputDatasetFacet(InputDatasetFacet):
        """Which registered dataset version an input is, and under which fingerprint config
        (:data:`FINGERPRINT_SCHEMA_URL`); never its signatures."""

        dataset: str
        configId: str  # noqa: N815 (OpenLineage facets are camelCase)
        documentCount: int  # noqa: N815
        contentHash: str  # noqa: N815
        epochs: float

        @staticmethod
        def _get_schema() -> str:
            return FINGERPRINT_SCHEMA_URL

    return SimpleNamespace(
        OpenLineageClient=OpenLineageClient, InputDataset=InputDataset, Job=Job, OutputDataset=OutputDataset, Run=Run,
        RunEvent=RunEvent, RunState=RunState, Serde=Serde, FingerprintFacet=ProvenanceFingerprintInputDatasetFacet,
        DatasetVersionDatasetFacet=dataset_version_dataset.DatasetVersionDatasetFacet,
        ErrorMessageRunFacet=error_message_run.ErrorMessageRunFacet, JobTypeJobFacet=job_type_job.JobTypeJobFacet)

