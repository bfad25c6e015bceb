"""Training runs: what a run started from, which data it consumed, and the version it produced.

A run is a row in the ledger from :func:`start_run` on. It declares its datasets (each with the
epochs it means to make over it) and may log, per step, the keys of the documents it saw.
Logged keys are buffered in memory and written every ``flush_every`` examples (and when the run
ends) in one transaction: resolved to the ledger's ``doc_id`` and appended to ``run_examples``,
a columnar table of (run, step, doc_id) that DuckDB stores compressed. An unknown key is refused
at that flush, naming the key and its step.

A run ends one of three ways, each recorded: :meth:`Run.commit` stores the trained state as a
version whose parent is the run's base (the version and the end of the run land in one
transaction); :meth:`Run.finish` ends it without a version; an exception inside ``with``, an
explicit :meth:`Run.fail`, or the process exiting with the run open records it as failed. A run
whose process was killed is marked failed by the next :func:`start_run` on the same host.

When a run ends, ``run_shards`` gets one row per shard of its datasets: examples seen and epochs,
counted from the logged examples where the run logged any for that dataset, else the declared
epochs over the whole dataset. **Logged keys win**: when a run both declares epochs other than 1
for a dataset and logs its keys, and the two disagree, the logged count is what lineage uses and
a :class:`EpochsDisagreeWarning` says so.

A run belongs to the process that started it (``pid``; for ``prov run start``, the process that
ran the command, e.g. the training script or the shell): a run whose process is gone while the
run is still open is marked failed ("abandoned") by the next :func:`start_run` on the same host.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import socket
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from provenance.errors import InvalidParameterError, ProvenanceError, ProvenanceWarning, RunEndedError, warn
from provenance.files import process_alive
from provenance.ledger import LedgerStore
from provenance.ledger._common import _now
from provenance.openlineage_out import Emitter, with_job
from provenance.records import DatasetRecord, RegistrationResult, RunRecord, VersionRecord, check_utf8
from provenance.versions import check_step, commit

_OPEN: weakref.WeakSet[Run] = weakref.WeakSet()
#: Runs this process attached to (:meth:`Run.attach`) and has not ended: not abandoned while it holds them.
_ATTACHED: weakref.WeakSet[Run] = weakref.WeakSet()


#: JSON has no NaN or infinities: a run's params hold them as these strings.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def stored_params(params: Mapping[str, Any] | None, sender: Emitter | None, message: str) -> dict[str, Any]:
    """A run's ``params`` as they are stored (here, or sent to a ledger server): JSON values, with
    the OpenLineage job (:func:`~provenance.openlineage_out.with_job`), and a non-finite number
    (``max_grad_norm=float("inf")``) as the string :data:`NON_FINITE` names, since JSON has none
    (it was stored as the bare token ``NaN``, which strict JSON readers refuse, and a ledger
    server's client failed on it with a traceback)."""
    if params is not None and not isinstance(params, Mapping):
        raise InvalidParameterError(f"run params must be a mapping of names to JSON values, got {type(params).__name__}")
    _check_depth(params or {})

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return NON_FINITE[str(value)]
        if isinstance(value, Mapping):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    stored = finite(with_job(params, sender, message))
    try:
        json.dumps(stored, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"run params must be JSON values: {exc}") from None
    _check_text(stored, "")
    return stored


#: How deep a run's params may nest (a configuration: Hydra's nest a few levels).
MAX_PARAM_DEPTH = 100


def _check_depth(params: Mapping[str, Any]) -> None:
    """Refuse params nested deeper than :data:`MAX_PARAM_DEPTH`, or holding themselves, naming the
    param, before they are walked: the walks recursed past Python's limit (a ``RecursionError``
    traceback, HTTP 500 from a server for 600 levels of JSON). This walk keeps its own stack."""
    stack = [(value, 1, name) for name, value in params.items()]
    while stack:
        value, depth, name = stack.pop()
        if isinstance(value, Mapping):
            children = list(value.values())
        elif isinstance(value, (list, tuple)):
            children = list(value)
        else:
            continue
        if depth > MAX_PARAM_DEPTH:
            raise InvalidParameterError(f"run param {name!r} nests more than {MAX_PARAM_DEPTH} levels of mappings or "
                                        "lists (or holds itself); flatten it")
        stack.extend((child, depth + 1, name) for child in children)


def _check_text(value: Any, where: str) -> None:
    """Refuse a param's name or text that is not UTF-8, naming it: an unpaired surrogate was stored
    (escaped) and read back as itself, so the run's record could not be sent as JSON, and a server
    answered every ``GET /runs`` with a 500 from then on."""
    if isinstance(value, str):
        check_utf8(value, f"run param {where!r}")
    elif isinstance(value, Mapping):
        for name, item in value.items():
            if isinstance(name, str):  # JSON writes a number as its text
                check_utf8(name, f"the name of run param {name!r}")
            _check_text(item, f"{where}.{name}" if where else name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


def start_run(
    ledger: LedgerStore,
    *,
    base: str | VersionRecord | None = None,
    datasets: Iterable[str | DatasetRecord] | Mapping[str, float] = (),
    params: Mapping[str, Any] | None = None,
    message: str,
    author: str | None = None,
    flush_every: int = 65_536,
    detached: bool = False,
    pid: int | None = None,
    host: str | None = None,
    openlineage: Emitter | None = None,
) -> Run:
    """Record the start of a training run and return it.

    ``base`` is the version the run starts from (None: from scratch). ``datasets`` names the
    registered datasets it trains on (``NAME`` for the latest version, or ``NAME@VERSION``), or
    maps each to the epochs the run makes over it (default 1). ``params`` are hyper-parameters,
    stored as JSON. A ``detached`` run is not marked failed when this process exits and is
    ended explicitly (``prov run finish``); ``pid`` is the process that owns the run (default:
    this one; ``prov run start`` gives the process that ran it), watched for abandonment on
    ``host`` (default: this one; a ledger server is told the training job's). ``openlineage``
    sends the run's OpenLineage events (:mod:`provenance.openlineage_out`; a ledger's
    ``start_run`` makes one from the configuration).
    """
    if not isinstance(message, str) or not message.strip():
        raise InvalidParameterError("a run needs a message")
    check_utf8(message, "the run's message")  # bytes that are not UTF-8 ($PROV_AUTHOR, an argument): a traceback
    if author is not None:
        check_utf8(author, "the run's author")
    if host is not None:  # a server is told its client's host: one not UTF-8 was a 500
        check_utf8(host, "the run's host")
    check_flush_every(flush_every)
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (int, np.integer)) or not 0 <= pid < 2**31):
        raise InvalidParameterError(f"pid must be a process id from 0 to 2**31 - 1 (0: no owner), got {pid!r}")
    params_json = json.dumps(stored_params(params, openlineage, message), sort_keys=True, allow_nan=False)
    with ledger.session():  # one connection for the reads and the run's row
        declared = declared_datasets(ledger, datasets)
        base_id = ledger.version(base).version_id if base is not None else None
        started = _now()
        host, pid = host or socket.gethostname(), os.getpid() if pid is None else int(pid)
        run_id = xxhash.xxh3_128(f"{base_id}|{message}|{started.isoformat()}|{host}|{pid}|{os.urandom(8).hex()}".encode())
        record = RunRecord(
            run_id=run_id.hexdigest(), base_version=base_id, message=message, author=author,
            params=json.loads(params_json), status="running", started_at=started, host=host, pid=pid, datasets=declared,
        )
        # a process is watched only on this machine: a server told of a job on another host looked its
        # pid up here, and a later run from that host marked a live run abandoned
        here = host == socket.gethostname()
        held = {r.run_id for r in list(_ATTACHED) if not r._ended}  # a run resumed here, its first process gone
        with ledger.transaction() as tx:
            for rid, rhost, rpid in tx.running_runs():
                if here and rhost == host and rpid and not process_alive(rpid) and rid not in held:
                    tx.end_run(rid, "failed", error=f"abandoned: process {rpid} exited without ending the run")
            tx.insert_run(record)
    run = Run(ledger, record, flush_every, owned=not detached, openlineage=openlineage)
    if openlineage is not None:
        openlineage.start(ledger, record, wait=detached)  # a detached run's end is another process's
    return run


def check_flush_every(flush_every: Any) -> None:
    """Refuse a ``flush_every`` that is not a positive integer (a server's client took 0 and 2.5)."""
    if isinstance(flush_every, bool) or not isinstance(flush_every, (int, np.integer)) or flush_every < 1:
        raise InvalidParameterError(f"flush_every must be a positive integer, got {flush_every!r}")


def declared_items(datasets: Any) -> list[tuple[Any, float]]:
    """``datasets`` as a run declares them (a name, a list of names, or a mapping of each to its
    epochs) as ``(ref, epochs)`` pairs, checked before anything is read or sent, in the same words
    for a local ledger and a server's client (the client took ``"2"`` for 2 epochs, and ``None``
    was a ``TypeError``)."""
    if isinstance(datasets, (str, DatasetRecord, RegistrationResult)):
        datasets = [datasets]
    if not isinstance(datasets, Iterable):  # None, a number: 'object is not iterable' named nothing
        raise InvalidParameterError(f"datasets must be dataset names (NAME or NAME@VERSION), or a mapping of each "
                                    f"to its epochs, got {type(datasets).__name__}")
    items = list(datasets.items() if isinstance(datasets, Mapping) else ((d, 1.0) for d in datasets))
    for ref, epochs in items:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs >= 0 or epochs == float("inf"):
            raise InvalidParameterError(f"epochs over dataset {ref!r} must be a finite number >= 0, got {epochs!r}")
    return [(ref, float(epochs)) for ref, epochs in items]


def declared_datasets(ledger: LedgerStore, datasets: Any) -> dict[str, float]:
    """The datasets a run declares (:func:`declared_items`) as ``{dataset id: epochs}``, each looked
    up in ``ledger`` (a local ledger or a server's client) and refused, naming it, when it is not
    there, when two name one dataset, or when its epochs make too many examples."""
    out: dict[str, float] = {}
    given: dict[str, str] = {}  # each dataset id as it was given, for the refusal of a second
    for ref, epochs in declared_items(datasets):
        record = ledger.dataset(ref)
        dataset_id = record.dataset_id
        said = repr(ref) if isinstance(ref, str) else dataset_id
        if record.n_documents * epochs >= 2**62:  # the examples they make are counted in a BIGINT when the run ends
            raise InvalidParameterError(f"epochs over dataset {said} must make fewer than 2**62 examples, got "
                                        f"{epochs:g} epochs x {record.n_documents:,} documents")
        if dataset_id in out:  # 'web' and 'web@1' are one dataset: the second's epochs replaced the first's
            raise InvalidParameterError(f"datasets {given[dataset_id]} and {said} are both {dataset_id}; give each "
                                        "once, with its epochs")
        out[dataset_id], given[dataset_id] = float(epochs), said
    return out


class EpochsDisagreeWarning(ProvenanceWarning):
    """A run declared epochs over a dataset and logged its keys, and the two disagree."""


def epoch_disagreements(ledger: LedgerStore, run: str | RunRecord) -> list[dict[str, Any]]:
    """Datasets of an ended run whose declared epochs (other than the default 1) differ from the
    epochs its logged keys give: ``{"dataset_id", "declared", "logged"}``. Logged keys win."""
    record = run if isinstance(run, RunRecord) else ledger.run(run)
    logged: dict[str, int] = {}
    for s in ledger.run_shards(record):
        if s.logged:
            logged[s.dataset_id] = logged.get(s.dataset_id, 0) + s.examples
    found = []
    for dataset_id, declared in record.datasets.items():
        if dataset_id in logged and declared != 1.0:
            n = ledger.dataset(dataset_id).n_documents
            epochs = logged[dataset_id] / n if n else 0.0
            if abs(epochs - declared) > 0.01 * declared:
                found.append({"dataset_id": dataset_id, "declared": declared, "logged": round(epochs, 4)})
    return found


def warn_epoch_disagreements(ledger: LedgerStore, run: str | RunRecord) -> list[dict[str, Any]]:
    """Warn (:class:`EpochsDisagreeWarning`) about each of :func:`epoch_disagreements`."""
    record = run if isinstance(run, RunRecord) else ledger.run(run)
    found = epoch_disagreements(ledger, record) if record.status != "running" else []
    warn_disagreements(record, found)
    return found


def warn_disagreements(record: RunRecord, found: list[dict[str, Any]]) -> None:
    """One :class:`EpochsDisagreeWarning` per disagreement of :func:`epoch_disagreements`."""
    for d in found:
        warn(
            f"run {record.run_id[:12]}: {d['dataset_id']} was declared for {d['declared']:g} epochs but its "
            f"logged keys make {d['logged']:g}; the logged keys win (lineage counts what was logged)",
            EpochsDisagreeWarning)


class Run:
    """A training run in progress. Use it as a context manager, or end it with :meth:`commit`,
    :meth:`finish` or :meth:`fail`. Its end goes to ``openlineage`` as well, when it has one."""

    def __init__(self, ledger: LedgerStore, record: RunRecord, flush_every: int = 65_536, *, owned: bool = True,
                 openlineage: Emitter | None = None):
        self.ledger = ledger
        self.record = record
        self.flush_every = flush_every
        self.openlineage = openlineage
        self.step = 0  # the step logged examples get when none is given; track() advances it
        # The buffer, one entry per call: keys as given (a list of str, or an Arrow array), their
        # step and dataset. Arrow arrays are built once per flush: building one per call costs more
        # than a training step's other bookkeeping.
        self._keys: list[list[str] | pa.Array] = []
        self._steps: list[int] = []
        self._datasets: list[str | None] = []
        self._pending = 0
        self._written = False  # whether a flush has written (and so checked) keys yet
        self._named: dict[str, str] = {}  # dataset= as given: the id of the run's dataset it names
        self._ended = record.status != "running"
        if owned and not self._ended:
            _OPEN.add(self)

    @classmethod
    def attach(cls, ledger: LedgerStore, run: str | RunRecord, *, openlineage: Emitter | None = None) -> Run:
        """A running run started elsewhere (e.g. by ``prov run start``), to log into or end."""
        record = ledger.run(run)
        if record.status != "running":
            raise InvalidParameterError(f"run {record.run_id[:12]} is {record.status}, not running"
                                        f"{f' ({record.error})' if record.error else ''}")
        run = cls(ledger, record, owned=False, openlineage=openlineage)
        _ATTACHED.add(run)
        return run

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def base(self) -> str | None:
        return self.record.base_version

    def __repr__(self) -> str:
        return f"Run({self.run_id[:12]}, {self.record.message!r})"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._ended:
            return
        if exc_type is not None:
            try:
                reason = f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__
                self.fail(reason.encode("utf-8", "backslashreplace").decode("utf-8"))  # a surrogate would refuse it
            except RunEndedError:  # ended already (its commit landed before the error): the error raised
                pass               # in the block is the one to see, not this
        else:
            self.finish()

    # -- logging ----------------------------------------------------------------------------

    def log_examples(self, keys: Sequence[str] | pa.Array, *, step: int | None = None, dataset: str | None = None) -> None:
        """Record that the documents with these keys were seen at ``step`` (default: ``self.step``).

        A key is looked up in the run's datasets (or only in ``dataset``, a name or id, when a key
        exists in several). Keys are checked when the buffer is written: at the first call (so a
        wrong key stops training at its first step), every ``flush_every`` examples, and when the
        run ends. Refused keys are dropped with the examples buffered with them.
        """
        self._check_open()
        step = self.step if step is None else step
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**63:
            raise InvalidParameterError(f"step must be an integer from 0 to 2**63 - 1, got {step!r}")
        if isinstance(keys, (str, bytes)) or not isinstance(keys, (Iterable, pa.Array)):
            what = "one string" if isinstance(keys, str) else f"{keys!r} ({type(keys).__name__})"
            raise InvalidParameterError(f"log_examples takes a sequence of keys, not {what}")
        batch = _checked_keys(keys, step)
        if not self.record.datasets:
            raise InvalidParameterError("this run declared no datasets, so its examples cannot be logged")
        if dataset is not None:
            dataset = self._dataset_id(dataset)
        self._keys.append(batch)
        self._steps.append(int(step))
        self._datasets.append(dataset)
        self._pending += len(batch)
        if self._pending >= self.flush_every or not self._written:  # the first batch at once: a wrong key
            self.flush()                                            # stops training at its first step, not its end

    def _dataset_id(self, dataset: str | DatasetRecord) -> str:
        """The id of one of the run's datasets, named by ``dataset``: its id, or a name the run
        declared one version of (a version registered since then is not the run's). Looked up
        once per name: a lookup per batch cost a training loop more than the rest of its logging."""
        if isinstance(dataset, str) and dataset in self._named:
            return self._named[dataset]
        ours = [d for d in self.record.datasets if d.rpartition("@")[0] == dataset]
        if len(ours) > 1:  # it was taken for the latest version, whichever the keys came from
            raise InvalidParameterError(f"dataset {dataset!r} names {len(ours)} of the run's datasets "
                                        f"({', '.join(ours)}); give one as NAME@VERSION")
        found = ours[0] if isinstance(dataset, str) and len(ours) == 1 else self.ledger.dataset(dataset).dataset_id
        if found not in self.record.datasets:
            raise InvalidParameterError(f"dataset {found} is not one of the run's datasets "
                                        f"({', '.join(self.record.datasets) or 'none'})")
        if isinstance(dataset, str):
            self._named[dataset] = found
        return found

    def flush(self) -> int:
        """Write the buffered examples to the ledger now; returns how many were written."""
        if not self._pending:
            return 0
        n = self._pending
        lengths = np.fromiter((len(k) for k in self._keys), np.int64, len(self._keys))
        try:
            if all(isinstance(k, list) for k in self._keys):
                keys = pa.array(list(itertools.chain.from_iterable(self._keys)), pa.string())
            else:
                keys = pa.concat_arrays([k if isinstance(k, pa.Array) else pa.array(k, pa.string())
                                         for k in self._keys])
        except UnicodeEncodeError:  # a key with an unpaired surrogate: it stayed buffered, and every later
            self._refuse_unencodable(n)  # log, finish and fail raised the same UnicodeEncodeError
        datasets = None if all(d is None for d in self._datasets) else np.repeat(np.array(self._datasets, object), lengths)
        log = pa.table({
            "seq": pa.array(np.arange(n, dtype=np.int64)),
            "step": pa.array(np.repeat(np.array(self._steps, np.int64), lengths)),
            "key": keys,
            "dataset": pa.nulls(n, pa.string()) if datasets is None else pa.array(datasets, pa.string()),
        })
        try:
            self._write(log)
        except RunEndedError:
            self._ended_elsewhere()
            raise
        except InvalidParameterError as exc:  # keys that name no document: refused, and not kept to refuse again
            self._keys, self._steps, self._datasets, self._pending = [], [], [], 0
            raise InvalidParameterError(f"{exc} (none of the {n:,} examples buffered since the last write were "
                                        "written)") from None
        self._keys, self._steps, self._datasets, self._pending = [], [], [], 0
        self._written = True
        return n

    def _refuse_unencodable(self, n: int) -> None:
        """Refuse the buffer, naming its first key that is not valid UTF-8 and its step, and drop it
        as a flush drops keys that name no document."""
        batches = [(batch, step) for batch, step in zip(self._keys, self._steps) if not isinstance(batch, pa.Array)]
        self._keys, self._steps, self._datasets, self._pending = [], [], [], 0
        written = f"(none of the {n:,} examples buffered since the last write were written)"
        for batch, step in batches:
            for key in batch:
                try:
                    check_utf8(key, f"logged example {key!r} at step {step}")
                except InvalidParameterError as exc:
                    raise InvalidParameterError(f"{exc} {written}") from None
        raise InvalidParameterError(f"a logged example's key is not valid UTF-8 {written}")

    def _write(self, log: pa.Table) -> None:
        write_examples(self.ledger, self.record, log)

    # -- ending -------------------------------------------------------------------------------

    def commit(self, state: Any, *, message: str | None = None, **options: Any) -> VersionRecord:
        """Store ``state`` as the version this run produced (its parent is the run's base) and end
        the run. Options are those of :func:`provenance.versions.commit`."""
        self._check_open()
        if "parent" in options or "run" in options:
            raise InvalidParameterError("a run commits on its base, as itself: do not pass parent= or run=")
        with self.ledger.session():  # one connection for the examples, the version and the reads after
            self.flush()
            version = self._commit(state, parent=self.base, run=self.run_id, message=message or self.record.message,
                                   author=options.pop("author", self.record.author), **options)
            found = self._reread()
        self._after_end(found)
        return version

    def _commit(self, state: Any, **options: Any) -> VersionRecord:
        """Store the state as the run's version (a remote run sends it to the server)."""
        return commit(self.ledger, state, **options)

    def checkpoint(self, state: Any, *, step: int | None = None, message: str | None = None,
                   **options: Any) -> VersionRecord:
        """Store ``state`` as a checkpoint of this run, which goes on: a version whose parent is
        the run's base, recorded with the run, and trained on the examples the run logged at steps
        up to ``step`` (default: the last step logged so far, -1 when none is; the examples buffered
        are written first). Its lineage counts those only, and taint of a document the run first saw at a
        later step leaves it out. Options are those of :func:`provenance.versions.commit`."""
        self._check_open()
        if {"parent", "run", "checkpoint_of", "patch_of_run"} & set(options):
            raise InvalidParameterError("a run's checkpoint is on its base, of itself: do not pass parent=, run=, "
                                        "checkpoint_of= or patch_of_run=")
        check_step(step)
        at = "" if step is None else f" at step {step}"
        message = message or f"{self.record.message}: checkpoint{at} of run {self.run_id[:12]}"
        with self.ledger.session():
            self.flush()
            try:
                return self._store_checkpoint(state, parent=self.base, checkpoint_of=self.run_id, step=step,
                                              message=message, author=options.pop("author", self.record.author),
                                              **options)
            except InvalidParameterError:
                if self.ledger.run(self.run_id).status != "running":  # ended by another process meanwhile
                    self._ended_elsewhere()
                raise

    def _store_checkpoint(self, state: Any, **options: Any) -> VersionRecord:
        """Store a checkpoint of the run (a remote run sends it to the server)."""
        return commit(self.ledger, state, **options)

    def finish(self) -> RunRecord:
        """End the run without a version (e.g. an evaluation-only run, or one not worth keeping)."""
        return self._end("finished", None)

    def fail(self, error: str = "failed") -> RunRecord:
        """Record the run as failed, with ``error`` saying why. Buffered examples are still written
        (what a failed run saw is part of the record) when they resolve."""
        check_utf8(error, "the run's error")  # refused before the run ends (it was a traceback inside its end)
        return self._end("failed", error)

    def _end(self, status: str, error: str | None) -> RunRecord:
        self._check_open()
        with self.ledger.session():  # one connection for the examples, the run's end and the reads after
            try:
                self.flush()
            except InvalidParameterError as exc:
                if status == "finished":
                    raise
                error = f"{error}; its last logged examples were not written: {exc}"
            try:
                self._send_end(status, error)
            except RunEndedError:
                self._ended_elsewhere()
                raise
            found = self._reread()
        self._after_end(found)
        return self.record

    def _send_end(self, status: str, error: str | None) -> None:
        end_run(self.ledger, self.record, status, error)

    def _reread(self) -> list[dict[str, Any]]:
        """The ended run: its record read again, and its :func:`epoch_disagreements`."""
        self._ended = True
        _OPEN.discard(self)
        self.record = self.ledger.run(self.run_id)
        return epoch_disagreements(self.ledger, self.record) if self.record.status != "running" else []

    def _after_end(self, disagreements: list[dict[str, Any]]) -> None:
        """What follows a run's end outside the ledger's connection: its OpenLineage event (which
        waits for the sending) and the warnings."""
        if self.openlineage is not None:
            self.openlineage.end(self.ledger, self.record)
        warn_disagreements(self.record, disagreements)

    def _ended_elsewhere(self) -> None:
        """The run was ended by another process (``prov run finish``): its record read again, so that
        a later call says how it ended, not that it ended 'running'."""
        self._ended = True
        _OPEN.discard(self)
        self.record = self.ledger.run(self.run_id)

    def _check_open(self) -> None:
        if self._ended:
            raise ProvenanceError(f"run {self.run_id[:12]} has ended ({self.record.status})")



def _checked_keys(keys: Sequence[str] | pa.Array, step: int) -> list[str] | pa.Array:
    """The keys of one call to :meth:`Run.log_examples`, checked: strings, none missing."""
    if isinstance(keys, pa.Array):
        if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            raise InvalidParameterError(f"document keys must be strings, got an Arrow array of {keys.type}")
        if keys.null_count:
            raise InvalidParameterError(f"document keys at step {step} include None")
        return keys.cast(pa.string()) if keys.type != pa.string() else keys
    batch = list(keys)  # a copy: the caller may reuse its list
    for i, key in enumerate(batch):
        if type(key) is str:
            continue
        if key is None:
            raise InvalidParameterError(f"document keys at step {step} include None")
        if not isinstance(key, str):
            raise InvalidParameterError(f"document keys must be strings: got {key!r} ({type(key).__name__}) at step {step}")
        batch[i] = str(key)  # a str subclass (numpy's str_): stored as its plain text
    return batch


def _check_running(tx, run_id: str) -> None:
    status = tx.run_status(run_id)
    if status != "running":
        raise RunEndedError(f"run {run_id[:12]} is {status} already (ended by another process?)")


#: The columns of a log of examples: order within the flush, step, document key, dataset (or null).
EXAMPLES_SCHEMA = pa.schema([("seq", pa.int64()), ("step", pa.int64()), ("key", pa.string()),
                             ("dataset", pa.string())])


def _first(mask: pa.ChunkedArray) -> int:
    """The 0-based row of the first true value of ``mask``."""
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))


def write_examples(ledger: LedgerStore, run: str | RunRecord, log: pa.Table) -> int:
    """Append a log of examples (:data:`EXAMPLES_SCHEMA`) to a running run, in one transaction;
    an unknown key or a dataset the run did not declare is refused, naming it."""
    record = run if isinstance(run, RunRecord) else ledger.run(run)  # whether it runs: checked in the transaction
    if log.schema.names != EXAMPLES_SCHEMA.names:
        raise InvalidParameterError(f"examples: expected the columns {', '.join(EXAMPLES_SCHEMA.names)}, got "
                                    f"{', '.join(log.schema.names)}")
    try:
        log = log.cast(EXAMPLES_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidParameterError(f"examples: {exc}") from None
    for name in ("seq", "key", "step"):
        if log.column(name).null_count:
            raise InvalidParameterError(f"examples: row {_first(pc.is_null(log.column(name)))}: the {name} is null")
    seq = log.column("seq").to_numpy()
    if len(np.unique(seq)) < len(seq):  # rows of one seq were taken for one key in several datasets
        order = np.argsort(seq, kind="stable")
        row = int(order[1:][seq[order][1:] == seq[order][:-1]].min())
        raise InvalidParameterError(f"examples: row {row}: seq {int(seq[row])} is an earlier row's; each row's seq is "
                                    "its own (its place in the batch)")
    if log.num_rows and pc.min(log.column("step")).as_py() < 0:
        row = _first(pc.less(log.column("step"), 0))
        raise InvalidParameterError(f"examples: row {row}: the step is negative ({log.column('step')[row].as_py()})")
    if not record.datasets:
        raise InvalidParameterError("this run declared no datasets, so its examples cannot be logged")
    named = pc.unique(log.column("dataset").drop_null()).to_pylist()
    if undeclared := sorted(set(named) - set(record.datasets)):  # else its keys were 'not a document'
        raise InvalidParameterError(
            f"examples: dataset {undeclared[0]!r} is not one of the run's datasets ({', '.join(record.datasets)}); "
            "the dataset column names one by its id, NAME@VERSION, or is null")
    with ledger.transaction() as tx:
        _check_running(tx, record.run_id)
        tx.log_examples(record.run_id, list(record.datasets), log)
    return log.num_rows


def end_run(ledger: LedgerStore, run: str | RunRecord, status: str, error: str | None = None) -> RunRecord:
    """Record the end of a running run: ``finished`` or ``failed`` (with ``error``)."""
    if status not in ("finished", "failed"):
        raise InvalidParameterError(f"a run ends finished or failed, not {status!r}")
    if error is not None:  # Run.fail checks it; a server's POST /runs/ID/end did not (a 500)
        check_utf8(error, "the run's error")
    record = run if isinstance(run, RunRecord) else ledger.run(run)
    with ledger.transaction() as tx:
        _check_running(tx, record.run_id)
        tx.end_run(record.run_id, status, error=error)
    return ledger.run(record.run_id)


@atexit.register
def _fail_open_runs() -> None:
    """A process exiting with runs open records them as failed (best effort: the ledger may be
    held by another process; the next start_run on this host marks them then)."""
    for run in list(_OPEN):
        try:
            run.fail(f"abandoned: process {os.getpid()} exited without ending the run")
        except Exception:
            pass
