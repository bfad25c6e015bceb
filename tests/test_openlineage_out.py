"""OpenLineage out: runs send RunEvents through the ``openlineage-python`` client and its real
transports (file, HTTP to a live ``prov serve``), a version's lineage exports as RunEvents, and
every event validates against the OpenLineage spec and the ``provenance_fingerprint`` facet's
schema in ``schemas/openlineage/``.

openlineage-python ships no JSON Schema: its classes are generated from ``spec/OpenLineage.json``
of the OpenLineage repository, and the wheel and the sdist leave the spec out. The rules of the
2-0-2 spec that a RunEvent and the standard facets sent here must follow are therefore written out
below (:data:`OPENLINEAGE`), under the spec's own ``$id`` and ``$defs`` names, so that the custom
facet's ``allOf`` reference to ``OpenLineage.json#/$defs/InputDatasetFacet`` resolves as it would
against the published spec.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from importlib import resources
from pathlib import Path

import httpx
import jsonschema
import pytest
import torch
from click.testing import CliRunner
from jsonschema import Draft202012Validator, FormatChecker
from openlineage.client import OpenLineageClient
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport
from referencing import Registry, Resource

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import InvalidParameterError, NotFoundError
from provenance.openlineage_out import FINGERPRINT_SCHEMA_URL, OpenLineageOptions, emitter
from tests import serving

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
ROOT = Path(__file__).resolve().parent.parent
FACET_FILE = ROOT / "schemas" / "openlineage" / "1-0-0" / "ProvenanceFingerprintInputDatasetFacet.json"


def _facets(kind: str) -> dict:
    return {"type": "object", "additionalProperties": {"$ref": f"#/$defs/{kind}"}}


def _string(*names: str) -> dict:
    return {name: {"type": "string"} for name in names}


#: The OpenLineage 2-0-2 core spec's rules for RunEvents (module doc).
OPENLINEAGE = {
    "$schema": DRAFT, "$id": SPEC, "$ref": "#/$defs/RunEvent",
    "$defs": {
        "BaseEvent": {"type": "object", "required": ["eventTime", "producer", "schemaURL"], "properties": {
            "eventTime": {"type": "string", "format": "date-time"}, "producer": {"type": "string", "format": "uri"},
            "schemaURL": {"type": "string", "format": "uri"}}},
        "RunEvent": {"allOf": [{"$ref": "#/$defs/BaseEvent"}, {"type": "object", "required": ["run", "job"], "properties": {
            "eventType": {"type": "string", "enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
            "run": {"$ref": "#/$defs/Run"}, "job": {"$ref": "#/$defs/Job"},
            "inputs": {"type": "array", "items": {"$ref": "#/$defs/InputDataset"}},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/OutputDataset"}}}}]},
        "Run": {"type": "object", "required": ["runId"], "properties": {
            "runId": {"type": "string", "format": "uuid"}, "facets": _facets("RunFacet")}},
        "Job": {"type": "object", "required": ["namespace", "name"], "properties": {
            **_string("namespace", "name"), "facets": _facets("JobFacet")}},
        "Dataset": {"type": "object", "required": ["namespace", "name"], "properties": {
            **_string("namespace", "name"), "facets": _facets("DatasetFacet")}},
        "InputDataset": {"allOf": [{"$ref": "#/$defs/Dataset"}, {"type": "object", "properties": {
            "inputFacets": _facets("InputDatasetFacet")}}]},
        "OutputDataset": {"allOf": [{"$ref": "#/$defs/Dataset"}, {"type": "object", "properties": {
            "outputFacets": _facets("OutputDatasetFacet")}}]},
        "BaseFacet": {"type": "object", "required": ["_producer", "_schemaURL"], "additionalProperties": True,
                      "properties": {"_producer": {"type": "string", "format": "uri"},
                                     "_schemaURL": {"type": "string", "format": "uri"}}},
        "RunFacet": {"type": "object", "allOf": [{"$ref": "#/$defs/BaseFacet"}]},
        "JobFacet": {"type": "object", "allOf": [{"$ref": "#/$defs/BaseFacet"},
                                                 {"type": "object", "properties": {"_deleted": {"type": "boolean"}}}]},
        "DatasetFacet": {"type": "object", "allOf": [{"$ref": "#/$defs/BaseFacet"},
                                                     {"type": "object", "properties": {"_deleted": {"type": "boolean"}}}]},
        "InputDatasetFacet": {"type": "object", "allOf": [{"$ref": "#/$defs/BaseFacet"}]},
        "OutputDatasetFacet": {"type": "object", "allOf": [{"$ref": "#/$defs/BaseFacet"}]},
    },
}


def _standard_facet(url: str, name: str, base: str, required: list[str], strings: list[str]) -> dict:
    return {"$schema": DRAFT, "$id": url, "$defs": {name: {"type": "object", "allOf": [
        {"$ref": f"{SPEC}#/$defs/{base}"},
        {"type": "object", "required": required, "properties": _string(*strings)}]}}}


#: The standard facets the events carry (their spec files' required fields).
STANDARD_FACETS = [
    _standard_facet("https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json",
                    "DatasetVersionDatasetFacet", "DatasetFacet", ["datasetVersion"], ["datasetVersion"]),
    _standard_facet("https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json", "ErrorMessageRunFacet",
                    "RunFacet", ["message", "programmingLanguage"], ["message", "programmingLanguage", "stackTrace"]),
    _standard_facet("https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json", "JobTypeJobFacet", "JobFacet",
                    ["processingType", "integration"], ["processingType", "integration", "jobType"]),
]
#: Facets the client adds by itself when configured to (git, environment, tags): their schemas are not here.
CLIENT_FACETS = {"sourceCodeLocation", "environmentVariables", "tags"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    shipped = json.loads((resources.files("provenance.schemas") / "openlineage" / "1-0-0" /
                          "ProvenanceFingerprintInputDatasetFacet.json").read_text(encoding="utf-8"))
    schemas = [OPENLINEAGE, *STANDARD_FACETS, shipped]
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)


def check(event: dict, registry: Registry) -> dict:
    """``event`` if it is a valid RunEvent whose every facet validates against the schema its
    ``_schemaURL`` names; else the first error."""
    Draft202012Validator({"$ref": SPEC}, registry=registry, format_checker=FormatChecker()).validate(event)
    assert datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00")).tzinfo is not None
    facets = [*event["run"].get("facets", {}).items(), *event["job"].get("facets", {}).items()]
    for d in event.get("inputs", []) + event.get("outputs", []):
        facets += [*d.get("facets", {}).items(), *d.get("inputFacets", {}).items(), *d.get("outputFacets", {}).items()]
    for name, facet in facets:
        url = facet["_schemaURL"]
        try:
            registry.get_or_retrieve(url.partition("#")[0])
        except Exception:
            assert name in CLIENT_FACETS, f"facet {name}: no schema for {url}"
            continue
        Draft202012Validator({"$ref": url}, registry=registry, format_checker=FormatChecker()).validate(facet)
    return event


def own(event: dict) -> dict:
    """``event`` without the facets the client adds as it sends it (:data:`CLIENT_FACETS`)."""
    event = json.loads(json.dumps(event))
    for part in (event["run"], event["job"]):
        for name in CLIENT_FACETS:
            part.get("facets", {}).pop(name, None)
    return event


def _docs(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"{prefix} document number {i} says something of its own"} for i in range(n)]


def _file_client(path: Path) -> OpenLineageClient:
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _quiet_environment(monkeypatch, home: Path) -> None:
    """No OpenLineage configuration anywhere: variables, HOME's file or the working folder's."""
    for key in list(os.environ):
        if key.startswith("OPENLINEAGE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A ledger with ``web`` (30 documents) and ``forum`` (10) and a base version, in a folder
    with no OpenLineage configuration."""
    _quiet_environment(monkeypatch, tmp_path)
    ledger = Ledger.init(tmp_path)
    ledger.register_dataset("web", _docs("web", 30), id_field="id")
    ledger.register_dataset("forum", _docs("forum", 10), id_field="id")
    base = ledger.commit({"w": torch.zeros(4)}, message="imported base")
    return ledger, base


# -- emission -----------------------------------------------------------------------------------


def test_a_committed_run_sends_start_and_complete_through_the_file_transport(local, tmp_path, registry):
    ledger, base = local
    path = tmp_path / "events.jsonl"
    with ledger.start_run(base=base, datasets={"web": 2, "forum@1": 1}, message="fine-tune on web and forum",
                          openlineage=_file_client(path)) as run:
        version = run.commit({"w": torch.ones(4)})
    events = [check(e, registry) for e in _read(path)]
    record = ledger.run(run.run_id)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert {e["run"]["runId"] for e in events} == {str(uuid.UUID(hex=run.run_id))}
    assert [e["eventTime"] for e in events] == [record.started_at.isoformat() + "Z", record.ended_at.isoformat() + "Z"]
    assert all(e["job"]["namespace"] == "provenance" and e["job"]["name"] == "fine-tune on web and forum" for e in events)
    assert events[0]["job"]["facets"]["jobType"]["jobType"] == "TRAINING"
    for event in events:
        assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
            ("provenance", base.version_id), ("provenance", "forum"), ("provenance", "web")]
        for d in event["inputs"][1:]:
            ds = ledger.dataset(d["name"])
            assert d["facets"]["version"]["datasetVersion"] == ds.content_hash
            fingerprint = dict(d["inputFacets"]["provenance_fingerprint"])
            assert fingerprint.pop("_schemaURL") == FINGERPRINT_SCHEMA_URL
            assert fingerprint.pop("_producer").startswith("https://")
            assert fingerprint == {"dataset": ds.dataset_id, "configId": ds.config_id, "documentCount": ds.n_documents,
                                   "contentHash": ds.content_hash, "epochs": {"web": 2.0, "forum": 1.0}[ds.name]}
            assert "signature" not in json.dumps(d)
    assert "outputs" not in events[0] or events[0]["outputs"] == []
    assert events[1]["outputs"] == [{"namespace": "provenance", "name": version.version_id, "facets": {},
                                     "outputFacets": {}}]
    exported = ledger.export_openlineage(version)
    assert exported == [own(e) for e in events]  # the export says what the run said as it ran
    for blank in ("", "  "):  # fell back to the default namespace without a word
        with pytest.raises(InvalidParameterError, match=f"namespace must be a non-empty string, got {blank!r}"):
            ledger.export_openlineage(version, namespace=blank)
    with pytest.MonkeyPatch.context() as env:  # ' ' went into the events (found by stranger pass 31)
        env.setenv("OPENLINEAGE_NAMESPACE", " ")
        with pytest.raises(InvalidParameterError, match=r"^OPENLINEAGE_NAMESPACE is blank \(' '\): set it"):
            ledger.export_openlineage(version)


def test_a_failed_run_sends_fail_with_its_error(local, tmp_path, registry):
    ledger, base = local
    path = tmp_path / "events.jsonl"
    with pytest.raises(RuntimeError), ledger.start_run(base=base, datasets=["web"], message="diverges",
                                                        openlineage=_file_client(path)) as run:
        raise RuntimeError("loss is nan at step 7")
    start, fail = (check(e, registry) for e in _read(path))
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert start["run"]["runId"] == fail["run"]["runId"] == str(uuid.UUID(hex=run.run_id))
    error = fail["run"]["facets"]["errorMessage"]
    assert error["message"] == "RuntimeError: loss is nan at step 7" == ledger.run(run.run_id).error
    assert error["programmingLanguage"] == "python" and fail.get("outputs", []) == []


def test_options_name_the_job_and_an_attached_run_sends_its_end(local, tmp_path, registry):
    ledger, base = local
    path = tmp_path / "events.jsonl"
    options = OpenLineageOptions(client=_file_client(path), namespace="ml-team", job="nightly-finetune")
    started = ledger.start_run(base=base, datasets=["forum"], message="nightly", detached=True, openlineage=options)
    attached = ledger.attach_run(started.run_id, openlineage=options)
    attached.finish()
    start, complete = (check(e, registry) for e in _read(path))
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["job"] == complete["job"] and (start["job"]["namespace"], start["job"]["name"]) == (
        "ml-team", "nightly-finetune")
    assert complete.get("outputs", []) == []  # finished without a version


def test_configuration_decides_whether_and_where_events_go(local, tmp_path, monkeypatch, registry, caplog):
    ledger, base = local
    assert emitter(None) is None and emitter(False) is None  # nothing configured: nothing sent
    events = tmp_path / "configured.jsonl"
    config = tmp_path / "ol.yml"
    config.write_text(f"transport:\n  type: file\n  log_file_path: {events}\n  append: true\n", encoding="utf-8")
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(config))
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "team-a")
    with ledger.start_run(base=base, datasets=["web"], message="configured") as run:
        run.commit({"w": torch.full((4,), 3.0)})
    sent = [check(e, registry) for e in _read(events)]
    assert [(e["eventType"], e["job"]["namespace"], e["run"]["runId"]) for e in sent] == [
        ("START", "team-a", str(uuid.UUID(hex=run.run_id))), ("COMPLETE", "team-a", str(uuid.UUID(hex=run.run_id)))]

    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")  # the switch that turns it off everywhere
    with ledger.start_run(base=base, datasets=["web"], message="disabled", openlineage=True) as run:
        run.finish()
    assert len(_read(events)) == 2

    monkeypatch.delenv("OPENLINEAGE_DISABLED")
    config.write_text("transport:\n  type: no-such-transport\n", encoding="utf-8")  # broken: a warning, the run goes on
    with caplog.at_level(logging.WARNING, logger="provenance.openlineage_out"):
        with ledger.start_run(base=base, datasets=["web"], message="broken config") as run:
            run.finish()
    assert ledger.run(run.run_id).status == "finished"
    assert "OpenLineage is configured but no event will be sent" in caplog.text
    with pytest.raises(Exception, match="OpenLineage"):  # asked for explicitly: an error
        ledger.start_run(base=base, datasets=["web"], message="broken", openlineage=True)


def test_nothing_configured_means_openlineage_is_never_imported_and_a_missing_one_is_a_warning(tmp_path):
    code = ("import sys, torch\n"
            "from provenance import Ledger\n"
            "ledger = Ledger.init('.')\n"
            "ledger.register_dataset('d', [{'text': 'one document'}])\n"
            "with ledger.start_run(datasets=['d'], message='m') as run:\n"
            "    run.commit({'w': torch.zeros(2)})\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'openlineage')\n"
            "assert loaded == [], loaded\n"
            # configured, but openlineage-python is missing: a warning that says what to install
            "import logging, os\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "sys.modules['openlineage'] = None\n"
            "os.environ['OPENLINEAGE_URL'] = 'http://127.0.0.1:9'\n"
            "with ledger.start_run(datasets=['d'], message='m2') as run:\n"
            "    run.finish()\n"
            "assert ledger.run(run.run_id).status == 'finished'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")} | {"HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "OpenLineage is configured but no event will be sent" in done.stderr
    assert "pip install 'provenance[openlineage]'" in done.stderr


def test_a_failing_transport_never_fails_the_run(local, caplog):
    ledger, base = local
    closed = serving.free_port()  # nothing listens there
    refused = OpenLineageClient(transport=HttpTransport(HttpConfig(url=f"http://127.0.0.1:{closed}",
                                                                   retry={"total": 0}, timeout=2)))
    with caplog.at_level(logging.WARNING, logger="provenance.openlineage_out"):
        with ledger.start_run(base=base, datasets=["web"], message="refused", openlineage=refused) as run:
            version = run.commit({"w": torch.ones(4)})
    assert ledger.run(run.run_id).status == "finished" and ledger.run(run.run_id).version_id == version.version_id
    assert "the START event of run" in caplog.text and "the COMPLETE event of run" in caplog.text
    assert "not sent" in caplog.text

    caplog.clear()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = OpenLineageClient(transport=HttpTransport(HttpConfig(
            url=f"http://127.0.0.1:{silent.getsockname()[1]}", retry={"total": 0}, timeout=60)))
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="provenance.openlineage_out"):
            with ledger.start_run(base=base, datasets=["web"], message="hangs",
                                  openlineage=OpenLineageOptions(client=hanging, timeout=0.5)) as run:
                run.commit({"w": torch.full((4,), 2.0)})
        assert time.monotonic() - began < 15  # the run waited half a second for its events, not a minute
    assert ledger.run(run.run_id).status == "finished"
    assert "were not sent within 0.5s" in caplog.text


def test_bad_options_are_refused_clearly():
    with pytest.raises(InvalidParameterError, match="expected True, False, an OpenLineageClient"):
        emitter("yes")
    with pytest.raises(InvalidParameterError, match="timeout must be a number of seconds >= 0, got -1"):
        OpenLineageOptions(timeout=-1)
    with pytest.raises(InvalidParameterError, match="job must be a non-empty string"):
        OpenLineageOptions(job=" ")



def test_a_namespace_with_control_characters_is_refused(local, monkeypatch):
    """``--namespace $'a\\tb'`` or ``OPENLINEAGE_NAMESPACE`` read from a file with Windows line
    ends (``team\\r``) went into every event, which an intake then refused (stranger pass 52)."""
    ledger, base = local
    _, _, _, c = _history(ledger, base)
    with pytest.raises(InvalidParameterError, match=r"^namespace 'a\\tb' holds the control character '\\t' at 1$"):
        ledger.export_openlineage(c, namespace="a\tb")
    with pytest.raises(InvalidParameterError, match="^namespace is 5,000 characters long, more than 4,096$"):
        ledger.export_openlineage(c, namespace="n" * 5000)
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "team\r")
    with pytest.raises(InvalidParameterError, match=r"^OPENLINEAGE_NAMESPACE 'team\\r' holds the control character"):
        ledger.export_openlineage(c)
    with pytest.raises(InvalidParameterError, match="OPENLINEAGE_NAMESPACE 'team"):
        emitter(OpenLineageOptions(client=_file_client(Path("x.jsonl"))))
    assert ledger.export_openlineage(c, namespace="lake")[0]["job"]["namespace"] == "lake"

# -- the custom facet's schema ------------------------------------------------------------------


def test_the_fingerprint_facet_schema_ships_and_refuses_what_it_should(registry):
    shipped = json.loads(FACET_FILE.read_text(encoding="utf-8"))
    assert FINGERPRINT_SCHEMA_URL == shipped["$id"] + "#/$defs/ProvenanceFingerprintInputDatasetFacet"
    validator = Draft202012Validator({"$ref": FINGERPRINT_SCHEMA_URL}, registry=registry)
    good = {"_producer": "https://provenance.dev/provenance/0.1.0", "_schemaURL": FINGERPRINT_SCHEMA_URL,
            "dataset": "web@2", "configId": "minhash-v1:word5", "documentCount": 3, "contentHash": "ab" * 16,
            "epochs": 1.5}
    validator.validate(good)
    for broken in ({k: v for k, v in good.items() if k != "contentHash"}, {**good, "_producer": None},
                   {**good, "dataset": "web"}, {**good, "documentCount": -1}, {**good, "contentHash": "xyz"}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)


# -- export ---------------------------------------------------------------------------------------


def _history(ledger, base):
    """base -> a (web x2), b (forum); merge(a, b) -> m; m -> c (web): the lineage of c."""
    with ledger.start_run(base=base, datasets={"web": 2}, message="train a", openlineage=False) as run:
        a = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["forum"], message="train b", openlineage=False) as run:
        b = run.commit({"w": torch.full((4,), 3.0)})
    m = ledger.merge([a, b], method="average", message="merge a and b")
    with ledger.start_run(base=m, datasets=["web"], message="train c", openlineage=False) as run:
        c = run.commit({"w": torch.full((4,), 5.0)})
    return a, b, m, c


def test_export_gives_every_run_and_merge_of_the_lineage_in_time_order(local, tmp_path, registry, monkeypatch):
    ledger, base = local
    a, b, m, c = _history(ledger, base)
    events = [check(e, registry) for e in ledger.export_openlineage(c)]
    steps = [(e["eventType"], e["job"]["name"]) for e in events]
    assert steps == [("START", "train a"), ("COMPLETE", "train a"), ("START", "train b"), ("COMPLETE", "train b"),
                     ("START", "merge a and b"), ("COMPLETE", "merge a and b"), ("START", "train c"),
                     ("COMPLETE", "train c")]
    times = [datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00")) for e in events]
    assert times == sorted(times)
    runs = {v.version_id: v.run_id for v in (a, b, c)}
    for (start, end), version in zip(zip(events[::2], events[1::2]), (a, b, m, c)):
        assert start["run"]["runId"] == end["run"]["runId"] == str(uuid.UUID(hex=runs.get(version.version_id,
                                                                                           version.version_id)))
        assert end["outputs"][0]["name"] == version.version_id
    merge = events[5]
    assert merge["job"]["facets"]["jobType"]["jobType"] == "MERGE"
    assert [d["name"] for d in merge["inputs"]] == [a.version_id, b.version_id]
    assert [d["name"] for d in events[7]["inputs"]] == [m.version_id, "web"]
    assert events[1]["inputs"][1]["inputFacets"]["provenance_fingerprint"]["epochs"] == 2.0

    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "lake")
    assert {e["job"]["namespace"] for e in ledger.export_openlineage(c)} == {"lake"}
    assert {e["job"]["namespace"] for e in ledger.export_openlineage(c, namespace="ns")} == {"ns"}
    assert ledger.export_openlineage(base) == []  # an imported base: no run, no merge, no event

    out = tmp_path / "lineage.jsonl"
    runner = CliRunner()
    done = runner.invoke(main, ["--ledger", str(tmp_path), "export", "openlineage", c.version_id[:12], "-o", str(out),
                                "--namespace", "ns"])
    assert done.exit_code == 0, done.output
    assert _read(out) == ledger.export_openlineage(c, namespace="ns")
    printed = runner.invoke(main, ["--ledger", str(tmp_path), "export", "openlineage", c.version_id])
    assert [json.loads(line) for line in printed.output.splitlines()] == ledger.export_openlineage(c)


def test_export_of_a_lineage_without_runs_says_there_are_no_events(local, tmp_path):
    """A version committed without a run has no events: the export printed nothing at all and
    exited 0, which reads as a broken export (stranger pass 37)."""
    ledger, _ = local
    base = ledger.commit({"w": torch.zeros(2)}, message="imported base")
    done = CliRunner().invoke(main, ["--ledger", str(tmp_path), "export", "openlineage", base.version_id[:12]])
    assert done.exit_code == 0 and done.stdout == ""
    assert done.stderr == (f"no events: no run or merge made a version in {base.version_id[:12]}'s lineage (a version "
                           "committed without a run, such as an imported base, has none)\n")


def test_export_of_an_unknown_version_is_a_clear_error(local, tmp_path):
    ledger, _ = local
    with pytest.raises(NotFoundError, match="nope"):
        ledger.export_openlineage("nope")
    done = CliRunner().invoke(main, ["--ledger", str(tmp_path), "export", "openlineage", "nope"])
    assert done.exit_code == 3 and "nope" in done.output


# -- through a live server: the HTTP transport into the intake, a remote ledger ----------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("olout")) as srv:
        ledger = srv.ledger()
        ledger.register_dataset("web", _docs("web", 30), id_field="id")  # the same bytes as the local web@1
        ledger.register_dataset("web", _docs("web", 31), id_field="id")  # web@2, the latest: not what was trained
        ledger.register_dataset("forum", _docs("forum", 10), id_field="id")
        yield srv


def _http_client(server) -> OpenLineageClient:
    return OpenLineageClient(transport=HttpTransport(HttpConfig(
        url=server.url, auth=ApiKeyTokenProvider({"apiKey": server.token}), timeout=30, retry={"total": 0})))


def _intake_run(remote, ol_run_id: str):
    return next(r for r in remote.runs() if r.params.get("openlineage", {}).get("runId") == ol_run_id)


def _inputs(remote, run_id: str) -> list[tuple]:
    table = remote.sql("SELECT namespace, name, dataset_id FROM run_inputs WHERE run_id = ? ORDER BY name", [run_id])
    return [tuple(r.values()) for r in table.to_pylist()]


def test_a_run_sends_its_events_to_a_provenance_server_which_matches_the_datasets(local, server):
    ledger, base = local
    with ledger.start_run(base=base, datasets=["web@1", "forum"], message="sent to the server",
                          openlineage=OpenLineageOptions(client=_http_client(server), timeout=60)) as run:
        run.commit({"w": torch.ones(4)})
    remote = server.ledger()
    received = _intake_run(remote, str(uuid.UUID(hex=run.run_id)))
    assert received.status == "finished" and received.message == "provenance/sent to the server"
    assert received.datasets == {"web@1": 1.0, "forum@1": 1.0}  # web@1 by its content hash, not the latest web@2
    assert received.version_id is None  # the version is the local ledger's, not the server's
    assert _inputs(remote, received.run_id) == [("provenance", "forum", "forum@1"), ("provenance", "web", "web@1")]


def test_an_exported_lineage_replays_into_the_intake(local, server, registry):
    ledger, base = local
    a, b, m, c = _history(ledger, base)
    events = ledger.export_openlineage(c)
    headers = {"Authorization": f"Bearer {server.token}"}
    answers = [httpx.post(f"{server.url}/api/v1/lineage", headers=headers, json=e, timeout=30) for e in events]
    assert [r.status_code for r in answers] == [200] * len(events), [r.text for r in answers]
    remote = server.ledger()
    by_job = {e["job"]["name"]: _intake_run(remote, e["run"]["runId"]) for e in events}
    assert {name: (r.status, r.datasets) for name, r in by_job.items()} == {
        "train a": ("finished", {"web@1": 1.0}), "train b": ("finished", {"forum@1": 1.0}),
        "merge a and b": ("finished", {}), "train c": ("finished", {"web@1": 1.0})}
    assert _inputs(remote, by_job["merge a and b"].run_id) == []  # its inputs are models, not data



def test_messages_with_control_characters_make_job_names_the_intake_takes(local, tmp_path, server, registry):
    """A run's or a merge's message is its job's name, and a multi-line message (or a tab) is
    common: the events of such a run, sent or exported, were refused by a provenance server's
    intake (422, "job.name: holds the control character '\\n'"), and a message over 4,096
    characters too. Each run of control characters is one space now (stranger pass 52)."""
    ledger, base = local
    path = tmp_path / "lines.jsonl"
    with ledger.start_run(base=base, datasets=["web"], message="fine-tune\n\n  on web,\tagain\x00",
                          openlineage=_file_client(path)) as run:
        trained = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["forum"], message="x" * 5000, openlineage=False) as run:
        other = run.commit({"w": torch.full((4,), 2.0)})
    merged = ledger.merge([trained, other], method="average", message="merge\r\nboth")
    sent = [check(e, registry) for e in _read(path)]
    assert [e["job"]["name"] for e in sent] == ["fine-tune on web, again"] * 2
    assert ledger.run(trained.run_id).params["openlineage"]["job"]["name"] == "fine-tune on web, again"
    events = [check(e, registry) for e in ledger.export_openlineage(merged)]
    assert sorted({e["job"]["name"] for e in events}) == ["fine-tune on web, again", "merge both", "x" * 4096]
    headers = {"Authorization": f"Bearer {server.token}"}
    answers = [httpx.post(f"{server.url}/api/v1/lineage", headers=headers, json=e, timeout=30) for e in events + sent]
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers]
    assert _intake_run(server.ledger(), events[-1]["run"]["runId"]).message == "provenance/merge both"

def test_a_remote_ledger_emits_and_exports_the_same_way(server, tmp_path, registry, monkeypatch):
    _quiet_environment(monkeypatch, tmp_path)
    remote = server.ledger()
    base = remote.commit({"w": torch.zeros(4)}, message="remote base")
    path = tmp_path / "remote.jsonl"
    with remote.start_run(base=base, datasets=["web@2"], message="remote run", openlineage=_file_client(path)) as run:
        version = run.commit({"w": torch.ones(4)})
    sent = [check(e, registry) for e in _read(path)]
    web2 = remote.dataset("web@2")
    assert [e["eventType"] for e in sent] == ["START", "COMPLETE"]
    assert sent[0]["inputs"][1]["facets"]["version"]["datasetVersion"] == web2.content_hash
    assert sent[0]["inputs"][1]["inputFacets"]["provenance_fingerprint"]["documentCount"] == 31
    exported = [check(e, registry) for e in remote.export_openlineage(version)]
    assert exported == [own(e) for e in sent]
    record = remote.run(run.run_id)
    assert exported[1]["eventTime"] == record.ended_at.replace(tzinfo=None).isoformat() + "Z"
    with pytest.raises(NotFoundError):
        remote.export_openlineage("0123456789abcdef0123456789abcdef")



def test_a_run_that_came_in_through_the_intake_exports_as_it_came(server, registry):
    remote = server.ledger()
    version = remote.commit({"w": torch.full((4,), 7.0)}, message="trained by a Spark job")
    ol_run, job = str(uuid.uuid4()), {"namespace": "spark://cluster", "name": "train_classifier"}
    headers = {"Authorization": f"Bearer {server.token}"}
    for kind, extra in (("START", {"inputs": [{"namespace": "s3://lake", "name": "crawl/forum"},
                                              {"namespace": "s3://lake", "name": "clicks/2026-11"}]}),
                        ("COMPLETE", {"outputs": [{"namespace": "provenance", "name": version.version_id}]})):
        answer = httpx.post(f"{server.url}/api/v1/lineage", headers=headers, timeout=30, json={
            "eventType": kind, "eventTime": datetime.now().astimezone().isoformat(), "producer": "https://spark.example",
            "run": {"runId": ol_run}, "job": job, **extra})
        assert answer.status_code == 200, answer.text
    start, complete = (check(e, registry) for e in remote.export_openlineage(version))
    assert start["run"]["runId"] == complete["run"]["runId"] == ol_run  # its own runId and job, not new ones
    assert {k: start["job"][k] for k in ("namespace", "name")} == job
    assert [(d["namespace"], d["name"]) for d in start["inputs"]] == [("provenance", "forum"),
                                                                      ("s3://lake", "clicks/2026-11")]
    assert complete["outputs"][0]["name"] == version.version_id


def test_prov_run_start_and_finish_send_start_and_complete(local, tmp_path, monkeypatch, registry):
    ledger, base = local
    events = tmp_path / "cli.jsonl"
    config = tmp_path / "openlineage.yml"  # in the working folder: the client finds it there
    config.write_text(f"transport:\n  type: file\n  log_file_path: {events}\n  append: true\n", encoding="utf-8")
    runner = CliRunner()
    started = runner.invoke(main, ["--ledger", str(tmp_path), "run", "start", "-m", "from the shell", "-d", "web",
                                   "--base", base.version_id, "--json"])
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.output)["run_id"]
    assert [e["eventType"] for e in _read(events)] == ["START"]  # sent before the command returned
    finished = runner.invoke(main, ["--ledger", str(tmp_path), "run", "finish", run_id])
    assert finished.exit_code == 0, finished.output
    sent = [check(e, registry) for e in _read(events)]
    assert [(e["eventType"], e["run"]["runId"]) for e in sent] == [("START", str(uuid.UUID(hex=run_id))),
                                                                   ("COMPLETE", str(uuid.UUID(hex=run_id)))]
