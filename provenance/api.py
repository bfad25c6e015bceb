"""The ``Ledger`` facade: one object, one verb per use case, each delegating to one domain function.

``from provenance import Ledger``. The facade is the storage gateway
(:class:`provenance.ledger.LedgerStore`: connections, transactions and every query) plus the
verbs below, so the domain modules (registration, versions, runs, merges, lineage, audits) sit
between the two and import only the store: the gateway never imports what is above it.
:class:`LedgerAPI` is the facade as a ``Protocol``, which a remote ledger over HTTP implements
too.

Each verb imports its domain module when it is first called (an import downward, from the top
layer), so that opening a ledger to read it does not load torch and the kernels.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from provenance.errors import GateFailedError, InvalidParameterError
from provenance.files import warn_pickle_name
from provenance.ledger import LedgerStore, preliminary
from provenance.records import CheckpointRecord, DatasetRecord, RegistrationResult, RunRecord, TagRecord, VersionRecord
from provenance.results import DedupReport, GateReport, Lineage, MemorizationReport, MergeReceipt, TaintReport

if TYPE_CHECKING:  # the verbs import their domain module when first called: opening a ledger to list
    # its datasets need not load torch and the kernels
    from huggingface_hub import ModelCard

    from provenance import model_files, runs, verify


def _one_connection(verb: Callable[..., Any]) -> Callable[..., Any]:
    """``verb`` in one session of the ledger: the reads and writes it makes share one opening of
    the database (each opening costs 10–30 ms; a model card opened it six times)."""

    @functools.wraps(verb)
    def in_session(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        with self.session():
            return verb(self, *args, **kwargs)

    return in_session


@runtime_checkable
class LedgerAPI(Protocol):
    """What a ledger offers its users, local or remote."""

    def register_dataset(self, name: str, sources: Any, **options: Any) -> RegistrationResult: ...
    def dataset(self, ref: str | DatasetRecord | RegistrationResult) -> DatasetRecord: ...
    def datasets(self, name: str | None = None, *, all_versions: bool = False) -> list[DatasetRecord]: ...
    def commit(self, state: Any, **options: Any) -> VersionRecord: ...
    def checkout(self, version: str | VersionRecord, output: str | os.PathLike | None = None, **options: Any) -> Any: ...
    def checkout_hf(self, version: str | VersionRecord, folder: str | os.PathLike, **options: Any) -> Any: ...
    def version(self, ref: str | VersionRecord) -> VersionRecord: ...
    def versions(self) -> list[VersionRecord]: ...
    def tag(self, name: str, version: str | VersionRecord) -> VersionRecord: ...
    def tags(self) -> list[TagRecord]: ...
    def find_tag(self, name: str) -> TagRecord: ...
    def delete_tag(self, name: str) -> TagRecord: ...
    def start_run(self, **options: Any) -> runs.Run: ...
    def run(self, ref: str | RunRecord) -> RunRecord: ...
    def attach_run(self, run: str | RunRecord) -> runs.Run: ...
    def checkpoints(self, run: str | RunRecord) -> list[CheckpointRecord]: ...
    def diff(self, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]: ...
    def merge(self, versions: Sequence[str | VersionRecord], **options: Any) -> VersionRecord: ...
    def receipt(self, version: str | VersionRecord) -> MergeReceipt | None: ...
    def lineage(self, version: str | VersionRecord) -> Lineage: ...
    def model_card(self, version: str | VersionRecord, *, base_model: str | None = None) -> Any: ...
    def taint(self, **target: Any) -> TaintReport: ...
    def retract(self, **options: Any) -> dict[str, Any]: ...
    def apply_retraction(self, retraction: str, **options: Any) -> list[dict[str, Any]]: ...
    def audit_retraction(self, retraction: str, **options: Any) -> dict[str, Any]: ...
    def retraction(self, retraction_id: str) -> dict[str, Any]: ...
    def retractions(self) -> list[dict[str, Any]]: ...
    def remove_documents(self, name: str, keys: Sequence[str], **options: Any) -> RegistrationResult: ...
    def audit_dedup(self, targets: Sequence[Any], **options: Any) -> DedupReport: ...
    def audit_merge(self, versions: Sequence[str | VersionRecord], **options: Any) -> GateReport: ...
    def audit_memorization(self, version: str | VersionRecord, samples: Any, **options: Any) -> MemorizationReport: ...
    def delete_audits(self, audit_ids: Sequence[str] = (), **options: Any) -> dict[str, Any]: ...
    def verify(self, **options: Any) -> verify.VerifyReport: ...
    def gc(self, *, apply: bool = False) -> dict[str, Any]: ...
    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any: ...
    def sql_batches(self, query: str, params: Sequence[Any] | None = None, *, rows: int = 10_000) -> Any: ...


def _check_gate_options(gate: Any) -> None:
    """``gate=`` of :meth:`Ledger.merge`: a mapping of :func:`provenance.gate.audit_merge`'s
    options (a string was an ``AttributeError``, an unknown key a ``TypeError``)."""
    import inspect

    from provenance import gate as gate_

    known = [name for name, p in inspect.signature(gate_.audit_merge).parameters.items() if p.kind is p.KEYWORD_ONLY]
    if not isinstance(gate, Mapping):
        raise InvalidParameterError(f"gate must be a dict of the pre-merge gate's options ({{}} for its defaults), "
                                    f"got {type(gate).__name__}")
    unknown = sorted(map(str, set(gate) - set(known)))
    if unknown:
        raise InvalidParameterError(f"gate: unknown option(s) {', '.join(map(repr, unknown))}; "
                                    f"the gate's options are {', '.join(known)}")


class Ledger(LedgerStore):
    """A provenance ledger: create one with :meth:`init`, open one with :meth:`open` (a folder, or
    the nearest ``.prov`` above the current one), then one verb per use case."""

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, lock_timeout: float = 10.0, read_only: bool = False,
             token: str | None = None, verify: bool | str = True) -> Any:
        """Open the ledger at ``path`` (a project folder or its ``.prov``; None: ``PROV_LEDGER``,
        else the nearest ``.prov`` above the current folder), or the one a server serves at an
        ``http(s)://`` URL: then a :class:`provenance.remote.RemoteLedger` with the same verbs,
        authenticated with ``token`` (default ``PROV_TOKEN``); ``verify`` is the CA bundle that
        checks an https server's certificate (default: the system's, or ``SSL_CERT_FILE``)."""
        if path is None:
            path = os.environ.get("PROV_LEDGER") or None
        if isinstance(path, str) and path.startswith(("http://", "https://")):
            from provenance.remote import RemoteLedger

            return RemoteLedger(path, token=token, verify=verify)
        if isinstance(path, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):  # `ftp://x` was the folder ftp:/x
            raise InvalidParameterError(f"ledger {path!r}: a ledger is a folder, or a ledger server's http:// or "
                                        "https:// URL")
        return super().open(path, lock_timeout=lock_timeout, read_only=read_only)

    # -- data -----------------------------------------------------------------------------------

    def register_dataset(self, name: str, sources: Any, **options: Any) -> RegistrationResult:
        """Register a dataset; see :func:`provenance.datasets.register_dataset`."""
        from provenance import datasets as datasets_

        return datasets_.register_dataset(self, name, sources, **options)

    @_one_connection
    def export_croissant(self, dataset: str | DatasetRecord, base: Any = None) -> dict[str, Any]:
        """The dataset version as Croissant 1.1 JSON-LD (see :mod:`provenance.croissant`), with
        file locations relative to ``base`` (the folder the JSON is written to; default: the
        shards' common folder)."""
        from provenance.croissant import to_croissant, warn_invalid_records

        ds = self.dataset(dataset)
        withheld = self.withheld(ds)
        if withheld:  # a reader takes whole files: the removed documents would come back
            name, here, held = withheld[0]
            raise InvalidParameterError(
                f"{ds.dataset_id}: its file {name} still holds {held - here:,} document(s) that this version left out "
                f"(prov dataset remove keeps the files); a Croissant reader reads whole files and would give them "
                f"back. Write the files without them and register those, then export that version"
                + (f" ({len(withheld)} files hold such documents)" if len(withheld) > 1 else ""))
        document = to_croissant(ds, self.shards(ds), base=base, key_kinds=self.key_kinds(ds))
        warn_invalid_records(ds)
        return document

    def export_openlineage(self, version: str | VersionRecord, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """The OpenLineage RunEvents of every run and merge in ``version``'s lineage, in time
        order, with jobs in ``namespace``; see :func:`provenance.openlineage_out.export_events`."""
        from provenance import openlineage_out

        return openlineage_out.export_events(self, version, namespace=namespace)

    # -- models ---------------------------------------------------------------------------------

    def commit(self, state: Any, **options: Any) -> VersionRecord:
        """Store a model state as a new version; see :func:`provenance.versions.commit`."""
        from provenance import versions as versions_

        return versions_.commit(self, state, **options)

    def checkout(self, version: str | VersionRecord, output: str | os.PathLike | None = None, *,
                 parents: bool = False, progress: Any = None) -> Any:
        """The tensors of ``version``, bit-identical to what was committed, as a dict or streamed
        to the safetensors file ``output`` (never inside the ledger folder; its folder must exist
        unless ``parents``); see :func:`provenance.versions.checkout`."""
        ver = self.version(version)
        if output is not None:
            output = self.output_path(output, parents=parents)
            warn_pickle_name(output)
        from provenance import versions as versions_

        return versions_.checkout(self, ver, output, progress=progress)

    def checkout_hf(self, version: str | VersionRecord, folder: str | os.PathLike, *, parents: bool = False,
                    progress: Any = None) -> Path:
        """``version`` as a Hugging Face checkpoint folder that ``from_pretrained`` loads: its
        stored files (config, tokenizer) and its tensors as ``model.safetensors``, bit-identical.
        ``folder`` must be absent or empty and outside the ledger folder; its parent must exist
        unless ``parents``. See :func:`provenance.versions.checkout_folder`."""
        ver = self.version(version)
        folder = self.output_folder(folder, parents=parents)
        from provenance import versions as versions_

        return versions_.checkout_folder(self, ver, folder, progress=progress)

    def model_files(self, version: str | VersionRecord) -> list[model_files.ModelFile]:
        """The checkpoint-folder files ``version`` has, stored or left out with the reason (its
        own, else its nearest first parent's); see :mod:`provenance.model_files`."""
        from provenance import model_files as model_files_

        return model_files_.version_files(self, version)

    @_one_connection
    def diff(self, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]:
        """Per parameter group, how ``new`` differs from ``old``; see :func:`provenance.versions.diff`."""
        old, new = self.version(old), self.version(new)  # a missing one refused before torch is imported (3 s)
        from provenance import versions as versions_

        return versions_.diff(self, old, new)

    @_one_connection
    def data_diff(self, a: str | VersionRecord, b: str | VersionRecord) -> dict[str, Any]:
        """The datasets and shards in one lineage and not the other; see :func:`provenance.lineage.data_diff`."""
        from provenance import lineage as lineage_

        return lineage_.data_diff(self, a, b)

    def attach_run(self, run: str | RunRecord, *, openlineage: Any = None) -> runs.Run:
        """A running run started elsewhere (``prov run start``), to log into or end; its end is
        sent to OpenLineage as :meth:`start_run` says."""
        from provenance import openlineage_out
        from provenance import runs as runs_

        return runs_.Run.attach(self, run, openlineage=openlineage_out.emitter(openlineage))

    def backup(self, destination: str | os.PathLike, *, link: bool = False, progress: Any = None) -> dict[str, Any]:
        """A consistent copy of the ledger in ``destination``; see :func:`provenance.backup.backup`."""
        from provenance import backup as backup_

        return backup_.backup(self, destination, link=link, progress=progress)

    def gc(self, *, apply: bool = False) -> dict[str, Any]:
        """Objects no version uses; see :func:`provenance.versions.gc`."""
        from provenance import versions as versions_

        return versions_.gc(self, apply=apply)

    def start_run(self, *, openlineage: Any = None, **options: Any) -> runs.Run:
        """Start a training run; see :func:`provenance.runs.start_run`. Its OpenLineage events go
        where ``openlineage`` says (:func:`provenance.openlineage_out.emitter`; by default where the
        openlineage-python client is configured to send them, else nowhere)."""
        from provenance import openlineage_out
        from provenance import runs as runs_

        return runs_.start_run(self, openlineage=openlineage_out.emitter(openlineage), **options)

    def store_fisher(self, version: str | VersionRecord, fisher: dict, **options: Any) -> int:
        """Store the diagonal Fisher of a version; see :func:`provenance.merges.store_fisher`."""
        from provenance import merges as merges_

        return merges_.store_fisher(self, version, fisher, **options)

    @_one_connection
    def merge(self, versions: Sequence[str | VersionRecord], *, gate: Mapping[str, Any] | None = None,
              **options: Any) -> VersionRecord:
        """Merge versions into a new version; see :func:`provenance.merges.merge`. With ``gate``
        (the options of :meth:`audit_merge`, ``{}`` for its defaults) the pre-merge gate runs
        first: when it fails nothing is merged and :class:`GateFailedError` carries its report;
        when it passes the merge cites it. The gate runs once the merge's own options and inputs
        have passed their checks (a merge refused for three weights of two versions had stored
        its gate)."""
        from provenance import merges as merges_

        if gate is not None:
            if options.get("audit"):
                raise InvalidParameterError("give gate=... (run the gate now) or audit=ID (cite one), not both")
            _check_gate_options(gate)
            if gate.get("store") is False:
                raise InvalidParameterError("a gated merge cites its gate, which must be stored: leave out store=False")

            def run_gate() -> str:
                with preliminary():  # not the write a server's Idempotency-Key names: the merge is
                    report = self.audit_merge(versions, **gate)
                if not report.passed:
                    raise GateFailedError(
                        f"the pre-merge gate failed (audit {report.audit_id[:12]}); nothing merged: "
                        + "; ".join(report.alerts), report)
                return report.audit_id

            options["run_gate"] = run_gate
        return merges_.merge(self, versions, **options)

    # -- questions ------------------------------------------------------------------------------

    def lineage(self, version: str | VersionRecord) -> Lineage:
        """Every dataset and shard that shaped ``version``; see :func:`provenance.lineage.lineage`."""
        from provenance import lineage as lineage_

        return lineage_.lineage(self, version)

    @_one_connection
    def model_card(self, version: str | VersionRecord, *, base_model: str | None = None) -> ModelCard:
        """The Hugging Face model card of ``version``: its datasets and their shares, licence,
        base model and audits; see :func:`provenance.model_card.model_card`."""
        from provenance import model_card as model_card_

        return model_card_.model_card(self, version, base_model=base_model)

    def taint(self, *, dataset: str | DatasetRecord | None = None, shard: str | int | None = None,
              key: str | None = None, text: str | None = None, near: float | None = None) -> TaintReport:
        """Every version whose lineage contains the target: a dataset, a shard of it, a document
        (``key`` in ``dataset``) or a ``text``, and with ``near`` its near-copies; see
        :func:`provenance.audits.taint_report`."""
        from provenance import audits as audits_

        if isinstance(dataset, (DatasetRecord, RegistrationResult)):
            dataset = self.dataset(dataset).dataset_id
        return audits_.taint_report(self, dataset=dataset, shard=shard, key=key, text=text, near=near)

    def retract(self, *, reason: str, dataset: str | DatasetRecord | None = None, shard: str | int | None = None,
                key: str | None = None, text: str | None = None, near: float | None = None,
                author: str | None = None) -> dict[str, Any]:
        """Record a retraction of a document, text (and with ``near`` its near-copies), shard or
        dataset with the plan for every version it taints; see :func:`provenance.retract.retract`."""
        from provenance import retract as retract_

        if isinstance(dataset, (DatasetRecord, RegistrationResult)):
            dataset = self.dataset(dataset).dataset_id
        return retract_.retract(self, reason=reason, dataset=dataset, shard=None if shard is None else str(shard),
                                key=key, text=text, near=near, author=author)

    def apply_retraction(self, retraction: str, *, rebase: bool = False, progress: Any = None) -> list[dict[str, Any]]:
        """Carry out a retraction's re-merges (and rebases); see :func:`provenance.retract.apply_retraction`."""
        from provenance import retract as retract_

        return retract_.apply_retraction(self, retraction, rebase_too=rebase, progress=progress)

    @_one_connection
    def audit_retraction(self, retraction: str, **options: Any) -> dict[str, Any]:
        """The proof of a retraction; see :func:`provenance.retract.audit_retraction`."""
        from provenance import retract as retract_

        return retract_.audit_retraction(self, retraction, **options)

    @_one_connection
    def remove_documents(self, name: str, keys: Sequence[str], *, reason: str | None = None,
                         retraction: str | None = None) -> RegistrationResult:
        """A new version of dataset ``name`` without the documents ``keys``; see
        :func:`provenance.datasets.remove_documents`."""
        from provenance import datasets as datasets_

        return datasets_.remove_documents(self, name, keys, reason=reason, retraction=retraction)

    def audit_dedup(self, targets: Sequence[Any], **options: Any) -> DedupReport:
        """Near-duplicates in datasets or lineages; see :func:`provenance.audits.audit_dedup`."""
        from provenance import audits as audits_

        return audits_.audit_dedup(self, targets, **options)

    @_one_connection
    def audit_merge(self, versions: Sequence[str | VersionRecord], **options: Any) -> GateReport:
        """The pre-merge gate; see :func:`provenance.gate.audit_merge`."""
        from provenance import gate as gate_

        return gate_.audit_merge(self, versions, **options)

    @_one_connection
    def audit_memorization(self, version: str | VersionRecord, samples: Any, **options: Any) -> MemorizationReport:
        """Which training documents generated samples reproduce; see
        :func:`provenance.memorization.audit_memorization`."""
        from provenance import memorization as memorization_

        return memorization_.audit_memorization(self, version, samples, **options)

    def delete_audits(self, audit_ids: Sequence[str] = (), **options: Any) -> dict[str, Any]:
        """Delete stored audits, or only their pairs; see :func:`provenance.audits.delete_audits`."""
        from provenance import audits as audits_

        return audits_.delete_audits(self, audit_ids, **options)

    def verify(self, **options: Any) -> verify.VerifyReport:
        """Check objects, versions and datasets; see :func:`provenance.verify.verify`."""
        from provenance import verify as verify_

        return verify_.verify(self, **options)
