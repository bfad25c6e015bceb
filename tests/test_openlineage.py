"""OpenLineage intake: the unmodified ``openlineage-python`` client, with its HTTP transport and an
API key, posts RunEvents to a live ``prov serve``; the runs, their matched and unmatched inputs
and the version they produced show up in lineage."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from datetime import datetime, timezone

import attr
import httpx
import pytest
import torch
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import DatasetFacet, error_message_run
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpCompression, HttpConfig, HttpTransport

from tests import serving

PRODUCER = "https://github.com/provenance/tests"


@attr.define
class ProvenanceDatasetFacet(DatasetFacet):
    """The ``provenance`` dataset facet: which registered dataset an input is."""

    dataset: str


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("ol")) as srv:
        ledger = srv.ledger()
        ledger.register_dataset("web", [{"id": f"w{i}", "text": f"web page number {i} about things"} for i in range(30)],
                                id_field="id")
        ledger.register_dataset("forum", [{"id": f"f{i}", "text": f"forum post {i} with an opinion"} for i in range(10)],
                                id_field="id")
        yield srv


def _client(server, token=None, compression=None) -> OpenLineageClient:
    config = HttpConfig(url=server.url, auth=ApiKeyTokenProvider({"apiKey": token or server.token}), timeout=30,
                        compression=compression, retry={"total": 0})
    return OpenLineageClient(transport=HttpTransport(config))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def test_a_spark_style_job_becomes_a_run_in_lineage(server):
    ledger = server.ledger()
    base = ledger.commit({"w": torch.zeros(3)}, message="a model trained by an external job")
    client, run_id = _client(server), str(uuid.uuid4())
    job = Job(namespace="spark://cluster", name="train_classifier")
    inputs = [InputDataset(namespace="s3://corp-data", name="crawl/web"),  # matched by name (…/web)
              InputDataset(namespace="hdfs://lake", name="posts", facets={"provenance": ProvenanceDatasetFacet(
                  dataset="forum@1")}),  # matched by the provenance facet
              InputDataset(namespace="s3://corp-data", name="clickstream/2026-11")]  # matches nothing
    client.emit(RunEvent(eventType=RunState.START, eventTime=_now(), run=Run(runId=run_id), job=job, producer=PRODUCER,
                         inputs=inputs))
    client.emit(RunEvent(eventType=RunState.RUNNING, eventTime=_now(), run=Run(runId=run_id), job=job,
                         producer=PRODUCER))
    client.emit(RunEvent(eventType=RunState.COMPLETE, eventTime=_now(), run=Run(runId=run_id), job=job,
                         producer=PRODUCER, outputs=[OutputDataset(namespace="provenance", name=base.version_id)]))
    runs = [r for r in ledger.runs() if r.params.get("openlineage", {}).get("runId") == run_id]
    assert len(runs) == 1
    run = runs[0]
    assert run.status == "finished" and run.message == "spark://cluster/train_classifier"
    assert run.datasets == {"web@1": 1.0, "forum@1": 1.0} and run.version_id == base.version_id
    lin = ledger.lineage(base)
    assert {d.dataset_id: d.examples for d in lin.datasets} == {"web@1": 30, "forum@1": 10}
    assert [(u.namespace, u.name, u.version_id) for u in lin.unregistered_inputs] == [
        ("s3://corp-data", "clickstream/2026-11", base.version_id)]
    assert [v.version_id for v in ledger.taint(dataset="forum").versions] == [base.version_id]
    # what people read says so too (only --json did): the table, and the graphs
    from click.testing import CliRunner

    from provenance.cli.main import main

    cli = ["--ledger", server.url, "lineage", base.version_id]
    env = {"PROV_TOKEN": server.token}
    table = CliRunner().invoke(main, cli, env=env, terminal_width=200)
    assert table.exit_code == 0, table.output
    assert ("1 input of its runs matches no registered dataset: data that shaped the version, of which the ledger "
            "has no fingerprints and no licence") in table.output
    row = next(line for line in table.output.splitlines() if "clickstream/2026-11" in line)
    assert "s3://corp-data" in row and runs[0].run_id[:8] in row and base.version_id[:12] in row
    mermaid = CliRunner().invoke(main, [*cli, "--format", "mermaid"], env=env).output
    assert '  u0[/"s3://corp-data/clickstream/2026-11 (unregistered)"/]' in mermaid and "  u0 -.-> v0" in mermaid
    dot = CliRunner().invoke(main, [*cli, "--format", "dot"], env=env).output
    assert '  u0 [shape=note, label="s3://corp-data/clickstream/2026-11 (unregistered)"];' in dot
    assert "  u0 -> v0 [style=dashed];" in dot


def test_failed_and_gzipped_events_and_an_event_after_the_end(server):
    ledger = server.ledger()
    client, run_id = _client(server, compression=HttpCompression.GZIP), str(uuid.uuid4())
    job = Job(namespace="airflow", name="dedupe")
    client.emit(RunEvent(eventType=RunState.FAIL, eventTime=_now(), job=job, producer=PRODUCER,
                         run=Run(runId=run_id, facets={"errorMessage": error_message_run.ErrorMessageRunFacet(
                             message="executor lost", programmingLanguage="python")}),
                         inputs=[InputDataset(namespace="file", name="web")]))
    run = next(r for r in ledger.runs() if r.params.get("openlineage", {}).get("runId") == run_id)
    assert run.status == "failed" and "executor lost" in run.error and run.datasets == {"web@1": 1.0}
    late = httpx.post(f"{server.url}/api/v1/lineage", headers={"Authorization": f"Bearer {server.token}"},
                      json={"eventType": "COMPLETE", "eventTime": _now(), "run": {"runId": run_id},
                            "job": {"namespace": "airflow", "name": "dedupe"}})
    assert late.status_code == 200 and "ended" in late.json()["status"]
    assert ledger.run(run.run_id).status == "failed"


def test_a_start_that_arrives_after_the_complete_still_adds_its_inputs(server):
    """The client sends events asynchronously: a COMPLETE naming the version may land before the
    START naming the data. The data still counts in the version's lineage."""
    ledger = server.ledger()
    version = ledger.commit({"w": torch.ones(3)}, message="made by a job whose events crossed")
    h, run_id = {"Authorization": f"Bearer {server.token}"}, str(uuid.uuid4())
    event = {"eventTime": _now(), "run": {"runId": run_id}, "job": {"namespace": "airflow", "name": "crossed"}}
    done = httpx.post(f"{server.url}/api/v1/lineage", headers=h, json={
        **event, "eventType": "COMPLETE", "outputs": [{"namespace": "provenance", "name": version.version_id}]})
    assert done.status_code == 200 and done.json()["status"] == "finished"
    late = httpx.post(f"{server.url}/api/v1/lineage", headers=h, json={
        **event, "eventType": "START", "inputs": [{"namespace": "s3://corp", "name": "forum"}]})
    assert late.status_code == 200 and "its inputs are added to it" in late.json()["status"]
    assert {d.dataset_id: d.examples for d in ledger.lineage(version).datasets} == {"forum@1": 10}
    again = httpx.post(f"{server.url}/api/v1/lineage", headers=h, json={
        **event, "eventType": "START", "inputs": [{"namespace": "s3://corp", "name": "forum"}]})
    assert "event ignored" in again.json()["status"]  # nothing new: nothing changes
    assert {d.dataset_id: d.examples for d in ledger.lineage(version).datasets} == {"forum@1": 10}
    for kind in ("START", "RUNNING", "OTHER"):  # with no inputs it answered "finished", as if it had counted
        bare = httpx.post(f"{server.url}/api/v1/lineage", headers=h, json={**event, "eventType": kind})
        assert bare.json()["status"] == "finished (event ignored: the run has ended)", bare.json()


def test_bad_events_and_tokens_are_refused(server):
    h = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/v1/lineage"
    no_run = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": _now(),
                                              "job": {"namespace": "a", "name": "b"}})
    assert no_run.status_code == 422 and "run" in no_run.json()["error"]
    bad_type = httpx.post(url, headers=h, json={"eventType": "FINISHED", "eventTime": _now(), "run": {"runId": "x"},
                                                "job": {"namespace": "a", "name": "b"}})
    assert bad_type.status_code == 422 and "eventType" in bad_type.json()["error"]
    not_uuid = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": _now(), "run": {"runId": "job-42"},
                                                "job": {"namespace": "a", "name": "b"}})
    assert not_uuid.status_code == 422
    assert not_uuid.json()["error"] == ("not an OpenLineage RunEvent: run.runId: 'job-42' is not a UUID (OpenLineage's "
                                        "runId is one, e.g. 00000000-0000-0000-0000-000000000000)")
    not_json = httpx.post(url, headers={**h, "Content-Type": "application/json"}, content=b"{oops")
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["error"]
    deep = httpx.post(url, headers={**h, "Content-Type": "application/json"}, content=b"[" * 50_000 + b"]" * 50_000)
    assert deep.status_code == 422 and "nests its JSON too deeply" in deep.json()["error"]  # not a 500
    fake_gzip = httpx.post(url, headers={**h, "Content-Encoding": "gzip"}, content=b"plain")
    assert fake_gzip.status_code == 422 and "gzip" in fake_gzip.json()["error"]
    wrong_facet = httpx.post(url, headers={**h, "Content-Encoding": "gzip"}, content=gzip.compress(json.dumps({
        "eventType": "START", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())}, "job": {"namespace": "a", "name": "b"},
        "inputs": [{"namespace": "x", "name": "y", "facets": {"provenance": {"dataset": "nope"}}}]}).encode()),
        )
    assert wrong_facet.status_code == 404 and "nope" in wrong_facet.json()["error"]
    runs = len(server.ledger().runs())
    for job, says in (({"namespace": "a", "name": "spark\x00job"}, "job.name: holds the control character '\\x00' at 5"),
                      ({"namespace": "a" * 4097, "name": "b"}, "job.namespace: String should have at most 4096 characters")):
        long = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": _now(),
                                                "run": {"runId": str(uuid.uuid4())}, "job": job})
        assert long.status_code == 422 and says in long.json()["error"], long.text  # both were stored as a run
    input_nul = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())},
                                                 "job": {"namespace": "a", "name": "b"},
                                                 "inputs": [{"namespace": "s3://b", "name": "x\x1b[2J"}]})
    assert input_nul.status_code == 422 and "inputs.0.name: holds the control character '\\x1b'" in input_nul.json()["error"]
    assert len(server.ledger().runs()) == runs
    _, reader = server.ledger().issue_token(f"reader-{uuid.uuid4().hex[:6]}", "read")
    with pytest.raises(Exception) as refused:
        _client(server, token=reader).emit(RunEvent(eventType=RunState.START, eventTime=_now(),
                                                    run=Run(runId=str(uuid.uuid4())), job=Job(namespace="a", name="b"),
                                                    producer=PRODUCER))
    assert "403" in str(refused.value)


def test_a_run_id_in_capitals_is_the_same_run(server):
    """The runId is a UUID: its canonical form names the run, whatever case the sender writes."""
    h, run_id = {"Authorization": f"Bearer {server.token}"}, str(uuid.uuid4())
    event = {"eventTime": _now(), "job": {"namespace": "airflow", "name": "shouting"}}
    started = httpx.post(f"{server.url}/api/v1/lineage", headers=h,
                         json={**event, "eventType": "START", "run": {"runId": run_id.upper()}})
    done = httpx.post(f"{server.url}/api/v1/lineage", headers=h,
                      json={**event, "eventType": "COMPLETE", "run": {"runId": run_id}})
    assert started.status_code == done.status_code == 200
    assert started.json()["run_id"] == done.json()["run_id"] and done.json()["status"] == "finished"
    run = next(r for r in server.ledger().runs() if r.run_id == done.json()["run_id"])
    assert run.params["openlineage"]["runId"] == run_id and run.status == "finished"


def test_a_gzip_body_is_limited_once_decompressed(server):
    """16 MiB is the limit on the event, not on its compressed bytes: 400 KB of gzip inflating to
    400 MB took the server to 1.9 GB. It now stops reading at the limit and answers 413."""
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    event = {"eventType": "START", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())},
             "job": {"namespace": "x", "name": "bomb"}, "pad": "y" * (40 << 20)}
    bomb = gzip.compress(json.dumps(event).encode())
    assert len(bomb) < 100_000
    refused = httpx.post(f"{server.url}/api/v1/lineage", headers=h, content=bomb, timeout=60)
    assert refused.status_code == 413
    assert refused.json()["error"] == "the event is larger than 16 MiB once decompressed"
    big = httpx.post(f"{server.url}/api/v1/lineage", headers={**h, "Content-Encoding": "identity"},
                     content=b" " * (17 << 20), timeout=60)
    assert big.status_code == 413 and big.json()["error"].startswith("the event is larger than 16 MiB (17,825,792 bytes")
    two = gzip.compress(json.dumps({**event, "pad": "small"}).encode())
    two = two[:len(two) // 2] + two[len(two) // 2:]  # a whole member: accepted
    assert httpx.post(f"{server.url}/api/v1/lineage", headers=h, content=two).status_code == 200


def test_an_event_cut_short_by_its_client_is_no_server_error(server):
    import socket

    query = "SELECT count(*) AS n FROM access_log WHERE path = '/api/v1/lineage' AND status = 422"
    before = server.ledger().sql(query).column("n")[0].as_py()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:  # says 100,000 bytes, sends 20, goes away
        s.sendall(f"POST /api/v1/lineage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"eventType\": \"START\"".encode())
    for _ in range(100):  # the refusal is logged (the answer had nobody to go to)
        if server.ledger().sql(query).column("n")[0].as_py() > before:
            break
        time.sleep(0.1)
    assert server.ledger().sql(query).column("n")[0].as_py() == before + 1
    assert "Exception in ASGI application" not in server.output() and "ClientDisconnect" not in server.output()


def test_an_event_with_thousands_of_inputs_is_one_write(server):
    """An event naming 5,000 inputs: each input took a query or two and an insert (6 ms each, 2
    minutes for 20,000, holding every other writer); now the datasets are read once and the inputs
    written in one statement."""
    h, run_id = {"Authorization": f"Bearer {server.token}"}, str(uuid.uuid4())
    inputs = [{"namespace": "s3://lake", "name": f"tables/t{i}"} for i in range(5000)]
    inputs += [{"namespace": "s3://lake", "name": "crawl/web"}, {"namespace": "s3://lake", "name": "tables/t7"}]
    answer = httpx.post(f"{server.url}/api/v1/lineage", headers=h, timeout=120, json={
        "eventType": "START", "eventTime": _now(), "run": {"runId": run_id}, "job": {"namespace": "x", "name": "wide"},
        "inputs": inputs})
    assert answer.status_code == 200, answer.text
    assert [i for i in answer.json()["inputs"] if i["dataset_id"]] == [
        {"namespace": "s3://lake", "name": "crawl/web", "dataset_id": "web@1"}]
    run = answer.json()["run_id"]
    rows = server.ledger().sql("SELECT count(*) AS n, count(dataset_id) AS matched FROM run_inputs WHERE run_id = ?",
                               [run]).to_pylist()
    assert rows == [{"n": 5001, "matched": 1}]  # tables/t7 twice: one row
    declared = server.ledger().sql("SELECT dataset_id, epochs FROM run_datasets WHERE run_id = ?", [run]).to_pylist()
    assert declared == [{"dataset_id": "web@1", "epochs": 1.0}]


def test_a_run_starts_and_ends_when_its_events_say(server):
    """The end was the server's clock, not the COMPLETE's eventTime; a START that arrived after
    the COMPLETE left the run ending before it began."""
    h = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/v1/lineage"

    def send(kind: str, when: str, run_id: str) -> dict:
        answer = httpx.post(url, headers=h, json={"eventType": kind, "eventTime": when, "run": {"runId": run_id},
                                                  "job": {"namespace": "x", "name": "timed"}})
        assert answer.status_code == 200, answer.text
        return answer.json()

    in_order, crossed = str(uuid.uuid4()), str(uuid.uuid4())
    first = send("START", "2020-01-01T00:00:00Z", in_order)["run_id"]
    send("COMPLETE", "2020-01-01T01:00:00+00:00", in_order)
    second = send("COMPLETE", "2020-01-01T00:00:10Z", crossed)["run_id"]
    send("START", "2020-01-01T00:00:00Z", crossed)
    times = {r.run_id: (r.started_at.isoformat(), r.ended_at.isoformat()) for r in server.ledger().runs()
             if r.run_id in (first, second)}
    assert times[first][0].startswith("2020-01-01T00:00:00") and times[first][1].startswith("2020-01-01T01:00:00")
    assert times[second][0].startswith("2020-01-01T00:00:00") and times[second][1].startswith("2020-01-01T00:00:10")


def test_a_malformed_provenance_facet_or_a_body_that_is_not_an_object_is_refused(server):
    h = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/v1/lineage"
    facet = httpx.post(url, headers=h, json={
        "eventType": "START", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())}, "job": {"namespace": "a", "name": "b"},
        "inputs": [{"namespace": "s3://lake", "name": "crawl/web", "facets": {"provenance": "web"}}]})
    assert facet.status_code == 422
    assert facet.json()["error"] == ('input s3://lake/crawl/web: its provenance facet must be {"dataset": "NAME" or '
                                     '"NAME@VERSION"}, got web')
    for body, kind in (([], "array"), (None, "null"), ("START", "string")):
        answer = httpx.post(url, headers={**h, "Content-Type": "application/json"}, content=json.dumps(body))
        assert answer.status_code == 422
        assert answer.json()["error"] == f"not an OpenLineage RunEvent: the body is a JSON {kind}, not an object"


def test_a_ledger_s_own_events_posted_back_change_nothing_and_a_merge_is_no_run_s(server):
    """`prov export openlineage` of a merge, posted to the server it came from (or a run's own
    events sent there) made a second run of every run, left running (their COMPLETE was refused:
    "version ... was produced by run ... already"), and the merge became a run's version: its
    retraction plan said "retrain". The ledger's own runs and merges are recognised and ignored;
    an output naming a merge is refused, naming it."""
    ledger = server.ledger()
    base = ledger.commit({"w": torch.zeros(3)}, message="base of the replayed merge")
    trained = []
    for i, name in enumerate(("web", "forum")):
        with ledger.start_run(base=base, datasets=[name], message=f"replayed {name}", openlineage=False) as run:
            run.log_examples([f"{name[0]}{i}"], step=0)
            trained.append(run.commit({"w": torch.full((3,), float(i + 1))}))
    merged = ledger.merge(trained, method="average", message="replayed merge")
    before = sorted((r.run_id, r.status) for r in ledger.runs())
    lineage = {d.dataset_id: d.examples for d in ledger.lineage(merged).datasets}
    events = ledger.export_openlineage(merged)
    assert len(events) == 6
    h = {"Authorization": f"Bearer {server.token}"}
    answers = [httpx.post(f"{server.url}/api/v1/lineage", headers=h, json=e, timeout=30) for e in events]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert [a.json()["status"] for a in answers[-2:]] == [
        f"event ignored: it is the merge {merged.version_id[:12]} of this ledger, which the ledger records itself"] * 2
    assert answers[0].json()["run_id"] == trained[0].run_id
    assert sorted((r.run_id, r.status) for r in ledger.runs()) == before
    assert ledger.version(merged).run_id is None
    assert {d.dataset_id: d.examples for d in ledger.lineage(merged).datasets} == lineage
    claim = httpx.post(f"{server.url}/api/v1/lineage", headers=h, json={
        "eventType": "COMPLETE", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "spark://cluster", "name": "claims a merge"},
        "outputs": [{"namespace": "provenance", "name": merged.version_id}]})
    assert claim.status_code == 422
    assert claim.json()["error"] == (
        f"version {merged.version_id[:12]} is a merge of {trained[0].version_id[:12]}, {trained[1].version_id[:12]}: a "
        "merge, not a run, made it, so an OpenLineage run cannot be what produced it")
    assert sorted((r.run_id, r.status) for r in ledger.runs()) == before and ledger.version(merged).run_id is None


def test_an_event_time_out_of_range_in_utc_is_refused_not_a_server_error(server):
    """``0001-01-01T00:00:00+05:00`` is valid RFC 3339, but before year 1 once in UTC:
    ``astimezone`` raised OverflowError, a 500, and the job's client retried it (stranger pass 52)."""
    h, url = {"Authorization": f"Bearer {server.token}"}, f"{server.url}/api/v1/lineage"
    runs = len(server.ledger().runs())
    for when in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        answer = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": when,
                                                  "run": {"runId": str(uuid.uuid4())}, "job": {"namespace": "a", "name": "b"}})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == (f"not an OpenLineage RunEvent: eventTime: {when} is out of range in UTC "
                                          "(years 1 to 9999)")
    assert len(server.ledger().runs()) == runs
    edge = httpx.post(url, headers=h, json={"eventType": "START", "eventTime": "0001-01-01T05:00:00+05:00",
                                            "run": {"runId": str(uuid.uuid4())}, "job": {"namespace": "a", "name": "b"}})
    assert edge.status_code == 200
    assert server.ledger().run(edge.json()["run_id"]).started_at.isoformat().startswith("0001-01-01T00:00:00")


def test_unpaired_surrogates_in_an_event_are_no_server_error(server):
    """JSON may write a lone surrogate (``"\\ud800"``; Python's client does, for a file name's stray
    bytes in a stack trace). In a FAIL's errorMessage it was DuckDB's InvalidInputException (500,
    the FAIL lost and the run left running); in ``producer`` it was stored, and the run could not
    be served again; in a provenance facet's ref, a 500. The error keeps it as its escape; the
    others are refused, naming the field (stranger pass 52)."""
    h = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    url, job = f"{server.url}/api/v1/lineage", {"namespace": "airflow", "name": "surrogates"}
    failed = httpx.post(url, headers=h, content=json.dumps({
        "eventType": "FAIL", "eventTime": _now(), "job": job,
        "run": {"runId": str(uuid.uuid4()), "facets": {"errorMessage": {
            "message": "cannot open /data/caf\udce9.jsonl", "programmingLanguage": "python"}}}}))
    assert failed.status_code == 200, failed.text
    run = server.ledger().run(failed.json()["run_id"])
    assert (run.status, run.error) == ("failed", "OpenLineage FAIL: cannot open /data/caf\\udce9.jsonl")
    runs = len(server.ledger().runs())
    for extra, says in (({"producer": "https://x\ud800"}, "producer: holds an unpaired surrogate at character 9"),
                        ({"run": {"runId": str(uuid.uuid4()), "facets": {"provenance": {"version": "\ud800"}}}},
                         "run.facets.provenance.version holds an unpaired surrogate at character 0"),
                        ({"inputs": [{"namespace": "s3", "name": "x", "facets": {"provenance": {"dataset": "w\udcffb"}}}]},
                         "input s3/x: its provenance facet's dataset holds an unpaired surrogate at character 1")):
        answer = httpx.post(url, headers=h, content=json.dumps({"eventType": "START", "eventTime": _now(), "job": job,
                                                                "run": {"runId": str(uuid.uuid4())}, **extra}))
        assert answer.status_code == 422, answer.text
        assert says in answer.json()["error"]
    assert len(server.ledger().runs()) == runs


def test_a_run_id_is_one_job_s_and_its_last_event_is_the_latest_by_event_time(server):
    """A second job sending the same runId was merged into the first job's run (its inputs and end
    counted as that run's), and ``last_event`` was whichever event arrived last: a START delivered
    after the COMPLETE made a finished run's last event START."""
    h = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.url}/api/v1/lineage"
    run_id = str(uuid.uuid4())

    def send(kind: str, when: str, job: str, inputs=()) -> httpx.Response:
        return httpx.post(url, headers=h, json={"eventType": kind, "eventTime": when, "run": {"runId": run_id},
                                                "job": {"namespace": "airflow", "name": job},
                                                "inputs": [{"namespace": "s3", "name": n} for n in inputs]})

    assert send("COMPLETE", "2021-03-01T10:00:00Z", "train").status_code == 200
    assert send("START", "2021-03-01T09:00:00Z", "train").status_code == 200  # late, but earlier in time
    other = send("START", "2021-03-01T11:00:00Z", "evaluate", inputs=["web"])
    assert other.status_code == 422
    assert other.json()["error"] == (f"run.runId {run_id} is the run of the job airflow/train; this event names the "
                                     "job airflow/evaluate (each run has a runId of its own)")
    row = server.ledger().sql("SELECT o.last_event, o.last_event_time, r.status, (SELECT count(*) FROM run_inputs i "
                              "WHERE i.run_id = o.run_id) AS inputs FROM openlineage_runs o JOIN runs r USING (run_id) "
                              "WHERE ol_run_id = ?", [run_id]).to_pylist()
    assert row == [{"last_event": "COMPLETE", "last_event_time": datetime(2021, 3, 1, 10, 0), "status": "finished",
                    "inputs": 0}]


def _post(server, event) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/lineage", headers={"Authorization": f"Bearer {server.token}"}, json=event)


def test_job_and_dataset_events_the_client_sends_are_answered_not_refused(server):
    """The client sends its JobEvents and DatasetEvents (a job's or a dataset's definition, no run)
    to the same route: they were refused as RunEvents ("run: Field required"; a DatasetEvent "job:
    Field required" too), and the client raised that 422 in the job that sent one. They name no run:
    answered ``event ignored``, nothing written (stranger pass 78)."""
    runs = len(server.ledger().runs())
    client, job = _client(server), Job(namespace="dbt://warehouse", name="models.orders")
    client.emit(JobEvent(eventTime=_now(), job=job, producer=PRODUCER,
                         inputs=[InputDataset(namespace="s3://lake", name="crawl/web")]))
    client.emit(DatasetEvent(eventTime=_now(), dataset=StaticDataset(namespace="s3://lake", name="crawl/web"),
                             producer=PRODUCER))
    answer = _post(server, {"eventTime": _now(), "producer": PRODUCER, "job": {"namespace": "a", "name": "b"},
                            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/JobEvent"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"run_id": None, "event": "JobEvent", "status": "event ignored: a JobEvent names no run, "
                             "and the ledger records runs", "inputs": [], "version_id": None}
    bare = _post(server, {"eventTime": _now(), "dataset": {"namespace": "a", "name": "b"}})
    assert bare.status_code == 200 and bare.json()["event"] == "DatasetEvent"
    missing = _post(server, {"eventType": "START", "eventTime": _now(), "job": {"namespace": "a", "name": "b"}})
    assert missing.status_code == 422  # a RunEvent without its run is still refused
    assert missing.json()["error"] == "not an OpenLineage RunEvent: run: Field required"
    assert len(server.ledger().runs()) == runs


def test_an_event_time_that_is_a_number_is_refused_naming_it(server):
    """The spec's eventTime is an ISO 8601 date-time (the client refuses anything else): a number,
    or a string of digits, was taken as seconds since 1970 and stored as the run's start."""
    runs = len(server.ledger().runs())
    for when, shown in ((0, "a JSON number, 0"), (20261208, "a JSON number, 20261208"),
                        ("1733616000", "'1733616000'"), (True, "a JSON boolean, True"), ("-1", "'-1'")):
        answer = _post(server, {"eventType": "START", "eventTime": when, "run": {"runId": str(uuid.uuid4())},
                                "job": {"namespace": "a", "name": "b"}})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == ("not an OpenLineage RunEvent: eventTime: must be an ISO 8601 date-time "
                                          f"such as 2026-12-08T09:30:00Z, got {shown}")
    assert len(server.ledger().runs()) == runs
    ok = _post(server, {"eventType": "START", "eventTime": "2026-12-08T09:30:00.123456789+09:00",
                        "run": {"runId": str(uuid.uuid4())}, "job": {"namespace": "a", "name": "b"}})
    assert ok.status_code == 200, ok.text  # nanoseconds and a zone, as Java's clients send them
    run = server.ledger().run(ok.json()["run_id"])
    assert run.started_at.replace(tzinfo=None) == datetime(2026, 12, 8, 0, 30, 0, 123456)


def test_a_provenance_facet_that_names_nothing_says_which_input_or_field(server):
    """An unknown dataset in an input's provenance facet was "no dataset 'nosuch'" (which of the
    event's inputs?), an unknown version in the run's facet "no version or tag 'nope'", a version
    that is no string (``5``, a list) was looked up as its text, and a run facet that is not
    ``{"version": REF}`` was ignored (the same dataset facet is refused)."""
    runs = len(server.ledger().runs())

    def send(run_facets=None, inputs=()) -> httpx.Response:
        return _post(server, {"eventType": "COMPLETE", "eventTime": _now(), "job": {"namespace": "a", "name": "b"},
                              "run": {"runId": str(uuid.uuid4()), "facets": run_facets or {}}, "inputs": list(inputs)})

    unknown = send(inputs=[{"namespace": "s3://lake", "name": "web"},
                           {"namespace": "hdfs://lake", "name": "posts", "facets": {"provenance": {"dataset": "nosuch"}}}])
    assert unknown.status_code == 404
    assert unknown.json()["error"] == ("input hdfs://lake/posts: its provenance facet's dataset: no dataset 'nosuch' "
                                       "in the ledger; registered: forum, web")
    version = send({"provenance": {"version": "nope"}})
    assert version.status_code == 404
    assert version.json()["error"] == ("run.facets.provenance.version: no version or tag 'nope' (a version id is 4 to "
                                       "32 hex digits)")
    for facet in ({"version": 5}, {"version": ["a"]}, "v1", {"ref": "main"}):
        wrong = send({"provenance": facet})
        assert wrong.status_code == 422, wrong.text
        assert wrong.json()["error"] == f'run.facets.provenance must be {{"version": REF}}, got {facet}'
    assert len(server.ledger().runs()) == runs


def test_another_ledger_s_input_with_a_content_hash_of_none_of_ours_is_unregistered(server):
    """An input a provenance ledger sent (its ``provenance_fingerprint`` facet) whose content hash
    is no version of ours was matched to our latest dataset of that name: the lineage counted our
    ``web``'s documents for another ledger's ``web``, and a taint of ours listed it."""
    fingerprint = {"dataset": "web@4", "configId": "minhash-v1:word5", "documentCount": 3, "contentHash": "ab" * 16}
    theirs = {"namespace": "provenance", "name": "web", "facets": {"version": {"datasetVersion": "ab" * 16}},
              "inputFacets": {"provenance_fingerprint": fingerprint}}
    delta = {"namespace": "s3://lake", "name": "tables/web", "facets": {"version": {"datasetVersion": "3"}}}
    ours = {**theirs, "facets": {"version": {"datasetVersion": server.ledger().dataset("web").content_hash}}}
    answer = _post(server, {"eventType": "START", "eventTime": _now(), "run": {"runId": str(uuid.uuid4())},
                            "job": {"namespace": "a", "name": "b"}, "inputs": [theirs, delta, ours]})
    assert answer.status_code == 200, answer.text
    assert [i["dataset_id"] for i in answer.json()["inputs"]] == [None, "web@1", "web@1"]


def test_an_input_named_again_keeps_its_match_and_an_unmatched_one_takes_a_later_one(server):
    """A run's input named by its START and again by its COMPLETE, a new version of its dataset
    registered in between, was declared as both versions (the lineage counted 30 + 7 examples for
    one input); one that matched nothing at START and was registered before the COMPLETE was both a
    dataset of the lineage and an unregistered input of it."""
    ledger = server.ledger()
    name = f"late{uuid.uuid4().hex[:6]}"
    ledger.register_dataset("shop", [{"id": f"s{i}", "text": f"shop item {i} with a price"} for i in range(30)],
                            id_field="id")
    version = ledger.commit({"w": torch.full((3,), 11.0)}, message="trained on shop by Spark")
    run_id = str(uuid.uuid4())
    inputs = [{"namespace": "s3://lake", "name": f"x/{name}"}, {"namespace": "s3://lake", "name": "x/shop"}]
    start = _post(server, {"eventType": "START", "eventTime": "2026-12-08T00:00:00Z", "run": {"runId": run_id},
                           "job": {"namespace": "spark", "name": "shop"}, "inputs": inputs})
    assert [i["dataset_id"] for i in start.json()["inputs"]] == [None, "shop@1"]
    ledger.register_dataset(name, [{"id": f"l{i}", "text": f"late doc {i} words here"} for i in range(4)], id_field="id")
    ledger.register_dataset("shop", [{"id": f"s{i}", "text": f"shop item {i} sold out"} for i in range(7)], id_field="id")
    complete = _post(server, {"eventType": "COMPLETE", "eventTime": "2026-12-08T00:01:00Z", "run": {"runId": run_id},
                              "job": {"namespace": "spark", "name": "shop"}, "inputs": inputs,
                              "outputs": [{"namespace": "provenance", "name": version.version_id}]})
    assert complete.status_code == 200, complete.text
    assert [i["dataset_id"] for i in complete.json()["inputs"]] == [f"{name}@1", "shop@1"]  # what it recorded
    lineage = ledger.lineage(version)
    assert {d.dataset_id: d.examples for d in lineage.datasets} == {f"{name}@1": 4, "shop@1": 30}
    assert lineage.unregistered_inputs == []
    run = ledger.run(complete.json()["run_id"])
    assert run.datasets == {f"{name}@1": 1.0, "shop@1": 1.0}


def test_a_late_event_s_unmatched_input_is_said_added_not_ignored(server):
    """An event after the run's end whose new inputs matched nothing was answered "event ignored:
    the run has ended", yet its inputs were added: the version's lineage listed them as
    unregistered inputs from then on."""
    ledger = server.ledger()
    version = ledger.commit({"w": torch.full((3,), 13.0)}, message="trained by a dbt job")
    run_id = str(uuid.uuid4())

    def send(kind: str, when: str, inputs=(), outputs=()) -> dict:
        answer = _post(server, {"eventType": kind, "eventTime": when, "run": {"runId": run_id},
                                "job": {"namespace": "dbt", "name": "train"}, "outputs": list(outputs),
                                "inputs": [{"namespace": "postgres://db:5432", "name": n} for n in inputs]})
        assert answer.status_code == 200, answer.text
        return answer.json()

    send("COMPLETE", "2026-12-08T00:10:00Z", outputs=[{"namespace": "provenance", "name": version.version_id}])
    late = send("START", "2026-12-08T00:00:00Z", inputs=["analytics.public.clicks"])
    assert late["status"] == "finished (the run had ended: its inputs are added to it)"
    assert [(u.namespace, u.name) for u in ledger.lineage(version).unregistered_inputs] == [
        ("postgres://db:5432", "analytics.public.clicks")]
    again = send("RUNNING", "2026-12-08T00:05:00Z", inputs=["analytics.public.clicks"])
    assert again["status"] == "finished (event ignored: the run has ended)"  # nothing new: nothing written
