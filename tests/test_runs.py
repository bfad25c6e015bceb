"""Training runs: what they consumed, how they end, and the version they produce."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import InvalidParameterError, NotFoundError, ProvenanceError, SourceError
from provenance.torch import RegisteredDataset, track


@pytest.fixture
def two_datasets(ledger, data_dir, write_jsonl):
    """Dataset ``a`` (10 documents in two files) and ``b`` (6), keyed by their id field."""
    write_jsonl(data_dir / "a1.jsonl", [{"id": f"a{i}", "text": f"document a number {i} says hello"} for i in range(4)])
    write_jsonl(data_dir / "a2.jsonl", [{"id": f"a{i}", "text": f"document a number {i} says hello"} for i in range(4, 10)])
    write_jsonl(data_dir / "b.jsonl", [{"id": f"b{i}", "text": f"another text {i} of b"} for i in range(6)])
    ledger.register_dataset("a", [data_dir / "a1.jsonl", data_dir / "a2.jsonl"], id_field="id")
    ledger.register_dataset("b", data_dir / "b.jsonl", id_field="id")
    return ledger


def test_logged_examples_and_declared_epochs_become_per_shard_consumption(two_datasets):
    ledger = two_datasets
    v0 = ledger.commit({"w": torch.zeros(3, 3)}, message="base")
    with ledger.start_run(base=v0, datasets={"a": 1, "b": 2.5}, params={"lr": 0.01}, message="fine-tune") as run:
        run.log_examples(["a0", "a1", "a5"], step=0)
        run.log_examples(["a5", "a9"], step=1)
        version = run.commit({"w": torch.ones(3, 3)})

    assert version.parents == [v0.version_id] and version.run_id == run.run_id
    record = ledger.run(run.run_id[:8])
    assert (record.status, record.version_id, record.n_logged) == ("finished", version.version_id, 5)
    assert record.params == {"lr": 0.01} and record.datasets == {"a@1": 1.0, "b@1": 2.5}
    shards = {(s.dataset_id, s.shard_index): s for s in ledger.run_shards(run.run_id)}
    # a: counted from the logs (a0, a1 in the first file; a5 twice and a9 in the second)
    assert (shards["a@1", 0].examples, shards["a@1", 0].distinct_documents, shards["a@1", 0].logged) == (2, 2, True)
    assert shards["a@1", 0].epochs == pytest.approx(2 / 4)
    assert (shards["a@1", 1].examples, shards["a@1", 1].distinct_documents) == (3, 2)
    assert shards["a@1", 1].epochs == pytest.approx(3 / 6)
    # b: nothing logged, so seen in full 2.5 times as declared
    assert (shards["b@1", 0].examples, shards["b@1", 0].distinct_documents, shards["b@1", 0].logged) == (15, 6, False)
    assert shards["b@1", 0].epochs == 2.5
    logged = ledger.run_examples(run.run_id).to_pydict()
    assert logged["key"] == ["a0", "a1", "a5", "a5", "a9"] and logged["step"] == [0, 0, 0, 1, 1]


def test_declared_fractions_of_an_epoch_see_no_more_documents_than_examples(two_datasets):
    """b has 6 documents: 0.1 epochs is 1 example (0.6 rounded) of 1 document, 0.05 epochs none;
    distinct documents were the whole shard's 6 either way."""
    ledger = two_datasets
    for epochs, expected in ((0.1, (1, 1)), (0.05, (0, 0)), (2.5, (15, 6))):
        run = ledger.start_run(datasets={"b": epochs}, message=f"b x {epochs}")
        run.finish()
        [shard] = ledger.run_shards(run.run_id)
        assert (shard.examples, shard.distinct_documents) == expected, epochs


def test_a_dataset_declared_for_zero_epochs_did_not_shape_the_version(two_datasets):
    # it had rows of 0 examples: lineage listed it, and taint called the version "trained on it"
    ledger = two_datasets
    with ledger.start_run(datasets={"a": 0.5, "b": 0}, message="b held out") as run:
        version = run.commit({"w": torch.ones(1)})
    assert [(s.dataset_id, s.examples) for s in ledger.run_shards(run.run_id)] == [("a@1", 2), ("a@1", 3)]
    assert [d.dataset_id for d in ledger.lineage(version).datasets] == ["a@1"]
    assert ledger.taint(dataset="b").versions == []
    assert [v.version_id for v in ledger.taint(dataset="a").versions] == [version.version_id]


def test_a_logged_run_is_counted_only_on_the_shards_it_saw(two_datasets):
    """A run that logs documents of one file of ``a`` trained on that shard only: lineage lists
    that shard, tainting the other finds nothing, and a data diff tells the two runs apart."""
    ledger = two_datasets
    v0 = ledger.commit({"w": torch.zeros(3, 3)}, message="base")
    with ledger.start_run(base=v0, datasets=["a"], message="first file") as run:
        run.log_examples(["a0", "a1"], step=0)
        first = run.commit({"w": torch.ones(3, 3)})
    with ledger.start_run(base=v0, datasets=["a"], message="second file") as run:
        run.log_examples(["a5"], step=0)
        second = run.commit({"w": 2 * torch.ones(3, 3)})
    assert [(s.shard_index, s.examples) for s in ledger.run_shards(first.run_id)] == [(0, 2)]
    lineage = ledger.lineage(first)
    assert lineage.shards.column("shard").to_pylist() == ["a1.jsonl"]
    assert (lineage.datasets[0]["shards"], lineage.datasets[0]["examples"]) == (1, 2)
    assert [v.version_id for v in ledger.taint(dataset="a", shard="a2.jsonl").versions] == [second.version_id]
    diff = ledger.data_diff(first, second)
    assert (diff["shards_only_in_a"], diff["shards_only_in_b"]) == (
        [{"dataset_id": "a@1", "shard_index": 0, "shard": "a1.jsonl"}],
        [{"dataset_id": "a@1", "shard_index": 1, "shard": "a2.jsonl"}])


def test_flush_every_writes_in_batches_and_unknown_keys_are_refused_whole(two_datasets):
    ledger = two_datasets
    run = ledger.start_run(datasets=["a"], message="batches", flush_every=4)
    run.log_examples(["a0", "a1"], step=0)
    assert ledger.run(run.run_id).n_logged == 2  # the first call is written (checked) at once
    run.log_examples(["a2", "a3"], step=1)
    assert ledger.run(run.run_id).n_logged == 2  # then buffered
    run.log_examples(["a4", "a5"], step=2)
    assert ledger.run(run.run_id).n_logged == 6  # the 4th buffered example flushed the buffer
    run.log_examples(["a6", "nope", "zzz"], step=7)
    with pytest.raises(InvalidParameterError, match=r"'nope' at step 7 .*\(and 1 more unknown keys\) \(none of the 3 "):
        run.flush()
    assert ledger.run(run.run_id).n_logged == 6  # nothing of the refused flush landed
    assert run.flush() == 0  # and it is not kept, to be refused again at the end
    record = run.fail("gave up")
    assert (record.status, record.error, record.version_id) == ("failed", "gave up", None)


def test_a_wrong_key_stops_training_at_its_first_step(two_datasets):
    run = two_datasets.start_run(datasets=["a"], message="wrong keys")
    with pytest.raises(InvalidParameterError, match="'bogus0' at step 0 is not a document"):
        run.log_examples(["bogus0", "bogus1"], step=0)
    run.log_examples(["a0"], step=1)  # checked at once too, until a write succeeds
    assert two_datasets.run(run.run_id).n_logged == 1


def test_ambiguous_keys_need_a_dataset(ledger, data_dir, write_jsonl):
    write_jsonl(data_dir / "x.jsonl", [{"text": "same shard name"}])
    other = data_dir / "other"
    other.mkdir()
    write_jsonl(other / "x.jsonl", [{"text": "same shard name, other text"}])
    ledger.register_dataset("x", data_dir / "x.jsonl")
    ledger.register_dataset("y", other / "x.jsonl")
    run = ledger.start_run(datasets=["x", "y"], message="two")
    with pytest.raises(InvalidParameterError, match=r"several of the run's datasets \(x@1, y@1\)"):
        run.log_examples(["x.jsonl:0"], step=0)
    run2 = ledger.start_run(datasets=["x", "y"], message="two, said which")
    run2.log_examples(["x.jsonl:0"], step=0, dataset="y")
    run2.finish()
    assert ledger.run_examples(run2.run_id).to_pydict()["dataset_id"] == ["y@1"]
    run.fail("ambiguous")


def test_an_examples_log_naming_a_dataset_the_run_lacks_is_refused_naming_it(two_datasets):
    # the log a server receives (POST /runs/{ref}/examples): its dataset column holds ids
    from provenance.runs import EXAMPLES_SCHEMA, write_examples

    run = two_datasets.start_run(datasets=["a"], message="by name")
    for named in ("a", "b@1"):
        log = pa.table({"seq": [0, 1], "step": [0, 0], "key": ["a0", "a1"], "dataset": [None, named]},
                       schema=EXAMPLES_SCHEMA)
        said = (f"examples: dataset {named!r} is not one of the run's datasets (a@1); the dataset column names one "
                "by its id, NAME@VERSION, or is null")
        with pytest.raises(InvalidParameterError, match=f"^{re.escape(said)}$"):  # no `as`: a cycle kept the ledger
            write_examples(two_datasets, run.run_id, log)
    log = pa.table({"seq": [0], "step": [0], "key": ["a0"], "dataset": ["a@1"]}, schema=EXAMPLES_SCHEMA)
    assert write_examples(two_datasets, run.run_id, log) == 1
    run.finish()
    assert two_datasets.run_examples(run.run_id).num_rows == 1  # the refused logs wrote nothing


def test_log_examples_dataset_names_the_runs_version_once(two_datasets, data_dir, write_jsonl, monkeypatch):
    ledger = two_datasets
    run = ledger.start_run(datasets=["a", "b"], message="by name")
    looked_up = []
    dataset = type(ledger).dataset
    monkeypatch.setattr(type(ledger), "dataset", lambda self, ref: looked_up.append(ref) or dataset(self, ref))
    for step in range(50):  # a lookup per batch cost ~50 ms of a training loop's step
        run.log_examples(["a0"], step=step, dataset="a")
    assert looked_up == []
    monkeypatch.undo()
    # a version registered while the run trains is not the run's: the name still means the run's version
    write_jsonl(data_dir / "b.jsonl", [{"id": f"b{i}", "text": f"b's second version {i}"} for i in range(7)])
    assert ledger.register_dataset("b", data_dir / "b.jsonl", id_field="id").dataset.dataset_id == "b@2"
    run.log_examples(["b1"], step=50, dataset="b")
    with pytest.raises(InvalidParameterError, match=r"^dataset b@2 is not one of the run's datasets \(a@1, b@1\)$"):
        run.log_examples(["b1"], step=51, dataset="b@2")
    run.finish()
    logged = ledger.run_examples(run.run_id).to_pydict()
    assert len(logged["key"]) == 51 and logged["dataset_id"][-1] == "b@1"


def test_an_examples_log_with_a_null_or_negative_value_names_its_row(two_datasets):
    """"examples: a step is negative" and "a key or a step is null" named neither the row nor the
    column (found by stranger pass 38)."""
    from provenance.runs import EXAMPLES_SCHEMA, write_examples

    run = two_datasets.start_run(datasets=["a"], message="rows")
    for column, values, said in (("step", [0, 1, -3], "examples: row 2: the step is negative (-3)"),
                                 ("step", [0, None, 1], "examples: row 1: the step is null"),
                                 ("key", ["a0", "a1", None], "examples: row 2: the key is null")):
        table = {"seq": [0, 1, 2], "step": [0, 0, 0], "key": ["a0", "a1", "a2"], "dataset": [None] * 3,
                 column: values}
        with pytest.raises(InvalidParameterError, match=f"^{re.escape(said)}$"):
            write_examples(two_datasets, run.run_id, pa.table(table, schema=EXAMPLES_SCHEMA))
    run.finish()
    assert two_datasets.run_examples(run.run_id).num_rows == 0


def test_a_run_that_raises_is_failed_and_produces_no_version(two_datasets):
    ledger = two_datasets
    with pytest.raises(RuntimeError, match="diverged"):
        with ledger.start_run(datasets=["a"], message="doomed") as run:
            run.log_examples(["a0"], step=0)
            raise RuntimeError("loss diverged")
    record = ledger.run(run.run_id)
    assert (record.status, record.error, record.version_id, record.n_logged) == (
        "failed", "RuntimeError: loss diverged", None, 1)
    assert ledger.versions() == []
    with pytest.raises(ProvenanceError, match="has ended"):
        run.commit({"w": torch.ones(1)})
    # its error is said too: "is failed" alone, after an abandonment, read as this process's doing
    said = f"run {run.run_id[:12]} is failed (RuntimeError: loss diverged): only a running run can commit"
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(said)}$"):
        ledger.commit({"w": torch.ones(1)}, message="sneak", run=run.run_id)


def test_a_run_ended_by_another_process_says_how_it_ended(two_datasets):
    from provenance.runs import end_run

    ledger = two_datasets
    run = ledger.start_run(datasets=["a"], message="ended elsewhere")
    run.log_examples(["a0"], step=0)
    run.log_examples(["a1"], step=1)  # buffered
    end_run(ledger, run.run_id, "failed", "killed by the scheduler")  # prov run finish --failed, say
    with pytest.raises(ProvenanceError, match=r"is failed already \(ended by another process\?\)"):
        run.commit({"w": torch.ones(1)})
    # it said 'has ended (running)'
    with pytest.raises(ProvenanceError, match=r"^run [0-9a-f]{12} has ended \(failed\)$"):
        run.commit({"w": torch.ones(1)})
    assert (run.record.status, run.record.error, run.record.n_logged) == ("failed", "killed by the scheduler", 1)


def test_commit_must_be_on_the_runs_base(two_datasets):
    ledger = two_datasets
    v0 = ledger.commit({"w": torch.zeros(2)}, message="v0")
    v1 = ledger.commit({"w": torch.ones(2)}, parent=v0, message="v1")
    run = ledger.start_run(base=v0, datasets=["a"], message="from v0")
    with pytest.raises(InvalidParameterError, match="its version's parent must be that"):
        ledger.commit({"w": torch.full((2,), 2.0)}, parent=v1, message="wrong parent", run=run.run_id)
    assert ledger.run(run.run_id).status == "running"
    version = ledger.commit({"w": torch.full((2,), 2.0)}, message="right", run=run.run_id)  # parent from the run
    assert version.parents == [v0.version_id]


def test_bad_run_arguments(two_datasets):
    ledger = two_datasets
    with pytest.raises(InvalidParameterError, match="needs a message"):
        ledger.start_run(datasets=["a"], message=" ")
    with pytest.raises(NotFoundError, match="nope"):
        ledger.start_run(datasets=["nope"], message="m")
    with pytest.raises(InvalidParameterError, match="must be a finite number"):
        ledger.start_run(datasets={"a": -1}, message="m")
    with pytest.raises(InvalidParameterError, match="JSON values"):
        ledger.start_run(datasets=["a"], params={"f": object()}, message="m")
    for wrong, named in ((None, "NoneType"), (3, "int")):  # a TypeError: 'NoneType' object is not iterable
        with pytest.raises(InvalidParameterError, match=rf"^datasets must be dataset names .* got {named}$"):
            ledger.start_run(datasets=wrong, message="m")
    with pytest.raises(NotFoundError):
        ledger.start_run(base="beef", datasets=["a"], message="m")
    # one dataset named two ways: the second's epochs replaced the first's (prov run start -d a@1:2 -d a:3)
    with pytest.raises(InvalidParameterError, match=r"^datasets 'a@1' and 'a' are both a@1; give each once"):
        ledger.start_run(datasets={"a@1": 2, "a": 3}, message="m")
    assert ledger.runs() == []
    run = ledger.start_run(datasets=["a"], message="m")
    with pytest.raises(InvalidParameterError, match="not one string"):
        run.log_examples("a0", step=0)
    with pytest.raises(InvalidParameterError, match="step must be an integer"):
        run.log_examples(["a0"], step=-1)
    with pytest.raises(InvalidParameterError, match="not one of the run's datasets"):
        run.log_examples(["b0"], step=0, dataset="b")
    with pytest.raises(InvalidParameterError, match="include None"):
        run.log_examples(["a0", None], step=0)
    with pytest.raises(InvalidParameterError, match=r"must be strings: got 7 \(int\) at step 3"):
        run.log_examples(["a0", 7], step=3)
    with pytest.raises(InvalidParameterError, match="include None"):  # checked after a str subclass too
        run.log_examples(["a0", np.str_("a1"), None], step=4)
    with pytest.raises(InvalidParameterError, match="Arrow array of int64"):
        run.log_examples(pa.array([1, 2]), step=0)
    with pytest.raises(InvalidParameterError, match="include None"):
        run.log_examples(pa.array(["a0", None]), step=0)
    run.log_examples(["a0"], step=0)  # the first call is written at once
    reused = ["a1", "a2"]
    run.log_examples(reused, step=0)  # buffered: the list the caller reuses is copied
    reused[:] = ["a3", "a4"]
    run.log_examples(reused, step=1)
    run.log_examples(pa.array(["a5"], pa.large_string()), step=1, dataset="a")
    run.log_examples(np.array(["a5"]), step=2)  # numpy's str_ is a str
    assert run.flush() == 6
    assert [(r["step"], r["key"]) for r in ledger.run_examples(run.run_id).to_pylist()] == [
        (0, "a0"), (0, "a1"), (0, "a2"), (1, "a3"), (1, "a4"), (1, "a5"), (2, "a5")]
    with pytest.raises(InvalidParameterError, match=r"^track: field 'key' holds None \(NoneType\), not the document"):
        list(track([{"key": None}], run))  # a TypeError: 'NoneType' object is not iterable
    run.finish()
    with pytest.raises(ProvenanceError, match="has ended"):
        run.log_examples(["a0"], step=0)


def test_epochs_too_many_to_count_are_refused_at_the_start(two_datasets):
    # 1e300 epochs were taken, and the count at the run's end overflowed: the run could never end,
    # and every later start_run on the host failed marking it abandoned
    ledger = two_datasets
    said = "epochs over dataset 'a' must make fewer than 2**62 examples, got 1e+300 epochs x 10 documents"
    with pytest.raises(InvalidParameterError, match=f"^{re.escape(said)}$"):
        ledger.start_run(datasets={"a": 1e300}, message="m")
    assert ledger.runs() == []
    run = ledger.start_run(datasets={"a": 1e17}, message="many")
    run.finish()
    assert [s.examples for s in ledger.run_shards(run.run_id)] == [4 * 10**17, 6 * 10**17]


def test_track_logs_every_batch_of_a_dataloader(two_datasets):
    ledger = two_datasets
    data = RegisteredDataset(ledger, "a")
    assert len(data) == 10 and data[4] == {"key": "a4", "text": "document a number 4 says hello", "dataset": "a@1"}
    with ledger.start_run(datasets=["a"], message="two epochs") as run:
        for _ in range(2):
            for batch in track(DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0)), run):
                assert len(batch["key"]) in (1, 3)
        version = run.commit({"w": torch.ones(1)})
    assert run.step == 8  # 4 batches per epoch
    logged = ledger.run_examples(run.run_id).to_pydict()
    assert sorted(logged["key"]) == sorted(data.keys * 2)
    assert logged["step"] == sorted(logged["step"]) and set(logged["step"]) == set(range(8))
    assert all(s.epochs == 2.0 and s.logged for s in ledger.run_shards(run.run_id))
    assert version.run_id == run.run_id


def test_a_track_loop_left_with_break_does_not_share_its_last_step(two_datasets):
    # the batch a loop breaks at was trained on: the first batch of the next loop logged at its step too
    ledger = two_datasets
    loader = DataLoader(RegisteredDataset(ledger, "a"), batch_size=2)
    with ledger.start_run(datasets=["a"], message="break, then an epoch") as run:
        for i, _ in enumerate(track(loader, run)):
            if i == 1:
                break
        assert run.step == 2
        for _ in track(loader, run):
            pass
    assert run.step == 7
    logged = ledger.run_examples(run.run_id).to_pydict()
    assert logged["step"] == [0, 0, 1, 1] + [s for s in range(2, 7) for _ in range(2)]
    assert logged["key"][:6] == ["a0", "a1", "a2", "a3", "a0", "a1"]


def test_a_registered_dataset_of_a_version_with_documents_removed_reads_only_what_it_keeps(two_datasets):
    """`prov dataset remove` keeps the files: the version it made read every document back and was
    refused (`a@2: read 10 documents back, the ledger has 8`), so it could not be trained on."""
    ledger = two_datasets
    ledger.remove_documents("a", ["a2", "a7"], reason="withdrawn")
    data = RegisteredDataset(ledger, "a@2")
    assert data.keys == ["a0", "a1", "a3", "a4", "a5", "a6", "a8", "a9"]
    assert data[2] == {"key": "a3", "text": "document a number 3 says hello", "dataset": "a@2"}
    assert len(RegisteredDataset(ledger, "a@1")) == 10


def test_track_a_map_style_dataset_and_a_custom_key(two_datasets):
    ledger = two_datasets
    data = RegisteredDataset(ledger, "b", transform=lambda item: (item["key"], len(item["text"])))
    run = ledger.start_run(datasets=["b"], message="map-style")
    tracked = track(data, run, key=lambda item: [item[0]])
    for i in range(3):
        run.step = i
        tracked[i]
    run.finish()
    assert ledger.run_examples(run.run_id).to_pydict()["key"] == ["b0", "b1", "b2"]
    with pytest.raises(InvalidParameterError, match="has no 'key' field"):
        next(iter(track([(1, 2)], ledger.start_run(datasets=["b"], message="m"))))


def test_a_tracked_dataset_read_in_worker_processes_is_refused(two_datasets):
    """track(dataset) in DataLoader(num_workers=2): each worker logged into a copy of the run and
    the keys were lost (64 fed, 2 logged, no word). It is refused, saying what to do."""
    ledger = two_datasets
    run = ledger.start_run(datasets=["a"], message="workers")
    loader = DataLoader(track(RegisteredDataset(ledger, "a"), run), batch_size=2, num_workers=2)
    with pytest.raises(InvalidParameterError, match=r"track\(dataset\) is read in DataLoader worker [01] of 2: a "
                                                    r"worker process cannot log into the run .*wrap the DataLoader"):
        list(loader)
    run.finish()
    assert ledger.run_examples(run.run_id).num_rows == 0
    with ledger.start_run(datasets=["a"], message="the loader wrapped") as run:  # the way that works
        batches = list(track(DataLoader(RegisteredDataset(ledger, "a"), batch_size=2, num_workers=2), run))
    assert len(batches) == 5 and ledger.run_examples(run.run_id).num_rows == 10


def test_registered_dataset_refuses_a_changed_file(two_datasets, data_dir):
    with (data_dir / "b.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "b6", "text": "appended later"}) + "\n")
    with pytest.raises(SourceError, match="changed since it was registered as shard b.jsonl of b@1"):
        RegisteredDataset(two_datasets, "b")


_KILLED = textwrap.dedent("""
    import os, sys, time
    from provenance import Ledger
    ledger = Ledger.open(sys.argv[1])
    run = ledger.start_run(datasets=["a"], message="will be killed")
    run.log_examples(["a0"], step=0)
    run.flush()
    print(run.run_id, flush=True)
    if sys.argv[2] == "kill":
        time.sleep(60)
    else:
        sys.exit(0)  # leaves the run open: atexit records it failed
""")


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_an_abandoned_run_is_recorded_as_failed(two_datasets, tmp_path, how):
    child = subprocess.Popen([sys.executable, "-c", _KILLED, str(tmp_path), how], stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    if how == "kill":
        os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    ledger = Ledger.open(tmp_path)
    if how == "kill":
        assert ledger.run(run_id).status == "running"  # nobody has looked yet
        env = {"PROV_LEDGER": str(tmp_path), "COLUMNS": "200"}
        listed = CliRunner().invoke(main, ["run", "list"], env=env)  # but the CLI says its process is gone
        assert listed.exit_code == 0 and "running (process gone)" in listed.output, listed.output
        shown = CliRunner().invoke(main, ["run", "show", run_id], env=env)
        assert (f"status   running (its process {child.pid} on this host exited without ending it: the next run "
                f"started on this host marks it abandoned; `prov run finish {run_id[:12]} --failed` ends it now)"
                in shown.output), shown.output
        ledger.start_run(datasets=["a"], message="next").finish()
    record = ledger.run(run_id)
    assert record.status == "failed" and record.error.startswith("abandoned: process")
    assert record.n_logged == 1 and record.version_id is None
    assert [s.examples for s in ledger.run_shards(run_id)] == [1]  # a's second file was never reached


def test_cli_run_start_log_finish_show(two_datasets, tmp_path):
    cli = CliRunner()
    env = {"PROV_LEDGER": str(tmp_path)}
    started = cli.invoke(main, ["run", "start", "-m", "from the shell", "-d", "a:3", "-p", "lr=0.1", "-p", "opt=adam",
                                "--json"], env=env)
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.output)["run_id"]
    logged = cli.invoke(main, ["run", "log", run_id[:10], "--step", "5", "--json"], input="a3\na4\n\n", env=env)
    assert logged.exit_code == 0, logged.output
    assert json.loads(logged.output) == {"run_id": run_id, "logged": 2, "step": 5}
    bad = cli.invoke(main, ["run", "log", run_id, "--step", "6"], input="zzz\n", env=env)
    assert bad.exit_code == 4 and "'zzz' at step 6 is not a document" in bad.output
    # A run started from the CLI belongs to the process that ran the command (here the test's own
    # parent, alive): starting another does not end it.
    Ledger.open(tmp_path).start_run(datasets=["a"], message="other").finish()
    checkpoint = Ledger.open(tmp_path).attach_run(run_id).checkpoint({"w": torch.ones(2)})  # at step 5, the last logged
    shown = json.loads(cli.invoke(main, ["run", "show", run_id, "--json"], env=env).output)
    assert (shown["status"], shown["params"], shown["datasets"], shown["n_logged"]) == (
        "running", {"lr": 0.1, "opt": "adam"}, {"a@1": 3.0}, 2)
    assert [(c["version_id"], c["step"]) for c in shown["checkpoints"]] == [(checkpoint.version_id, 5)]
    lines = cli.invoke(main, ["run", "show", run_id], env=env).output.splitlines()
    assert f"saved    1 checkpoint: {checkpoint.version_id[:12]} (step 5)" in lines  # aligned with the fields above
    attached = Ledger.open(tmp_path).attach_run(run_id)
    more = [attached.checkpoint({"w": torch.full((2,), float(i))}, step=i) for i in range(11)]
    line = next(x for x in cli.invoke(main, ["run", "show", run_id], env=env).output.splitlines() if x.startswith("saved"))
    assert line.startswith(f"saved    12 checkpoints: {more[0].version_id[:12]} (step 0), ")
    assert line.endswith(" and 2 more (--json lists them)") and line.count(" (step ") == 10
    lineage = cli.invoke(main, ["lineage", checkpoint.version_id], env={**env, "COLUMNS": "200"}).output
    assert f"checkpoint of run {run_id[:8]} at step 5" in lineage  # it said "run ...", as the whole run's version
    finished = cli.invoke(main, ["run", "finish", run_id, "--failed", "--error", "OOM"], env=env)
    assert finished.exit_code == 0 and "failed" in finished.output
    shown = json.loads(cli.invoke(main, ["run", "show", run_id, "--json"], env=env).output)
    assert shown["status"] == "failed" and shown["error"] == "OOM"
    assert [(s["examples"], s["logged"]) for s in shown["shards"]] == [(1, True), (1, True)]
    listed = json.loads(cli.invoke(main, ["run", "list", "--json"], env=env).output)
    assert {r["run_id"] for r in listed} >= {run_id}
    again = cli.invoke(main, ["run", "finish", run_id], env=env)
    assert again.exit_code == 4 and "is failed, not running" in again.output
    early = Ledger.open(tmp_path).start_run(datasets=["a"], message="early")  # saved before any example: step -1
    start = early.checkpoint({"w": torch.zeros(2)})
    assert f"saved    1 checkpoint: {start.version_id[:12]} (before any step)" in cli.invoke(
        main, ["run", "show", early.run_id], env=env).output.splitlines()
    lineage = cli.invoke(main, ["lineage", start.version_id], env={**env, "COLUMNS": "200"}).output
    assert f"checkpoint of run {early.run_id[:8]} before any step" in lineage  # it said "at step -1"
    # bad options are usage errors, not tracebacks or silently dropped values
    for args, says in ((["-d", "a", "-d", "a:3"], "dataset 'a' is given twice"), (["-p", "x=1", "-p", "x=2"],
                                                                                 "'x' is given twice")):
        out = cli.invoke(main, ["run", "start", "-m", "twice", *args], env=env)
        assert out.exit_code == 2 and says in out.output, out.output
    run_id = json.loads(cli.invoke(main, ["run", "start", "-m", "odd values", "-p", "lr=NaN", "-p", "b=Infinity",
                                          "--json"], env=env).output)["run_id"]
    huge = cli.invoke(main, ["run", "log", run_id, "--step", str(2**70)], input="a3\n", env=env)
    assert huge.exit_code == 2 and "is not in the range 0<=x<=9223372036854775807" in huge.output
    with pytest.raises(InvalidParameterError, match=r"step must be an integer from 0 to 2\*\*63 - 1"):
        Ledger.open(tmp_path).attach_run(run_id).log_examples(["a3"], step=2**63)
    ended = cli.invoke(main, ["run", "finish", run_id, "--error", "diverged"], env=env)  # --error implies --failed
    assert ended.exit_code == 0 and "failed" in ended.output
    shown = json.loads(cli.invoke(main, ["run", "show", run_id, "--json"], env=env).output)
    assert (shown["status"], shown["error"], shown["params"]) == ("failed", "diverged", {"lr": "NaN", "b": "Infinity"})


def test_a_run_s_texts_that_are_not_utf8_are_refused_by_name(two_datasets, tmp_path):
    """`PROV_AUTHOR=$'\xff' prov run start ...`, `-m $'\xff'` and `prov run finish --error $'\xff'`
    were UnicodeEncodeError tracebacks (the last inside the run's end, the run left running)."""
    cli = CliRunner()
    env = {"PROV_LEDGER": str(tmp_path)}
    for args, extra, says in ((["-m", "x"], {"PROV_AUTHOR": "\udcff\udcfe"}, "the run's author holds an unpaired surrogate at character 0"),
                              (["-m", "ok\udcff"], {}, "the run's message holds an unpaired surrogate at character 2")):
        out = cli.invoke(main, ["run", "start", *args, "-d", "a", "--owner", "0"], env={**env, **extra})
        assert out.exit_code == 4 and says in out.output and "Traceback" not in out.output, out.output
    assert Ledger.open(tmp_path).runs() == []
    run_id = cli.invoke(main, ["run", "start", "-m", "x", "-d", "a", "--owner", "0"], env=env).output.strip()
    out = cli.invoke(main, ["run", "finish", run_id, "--error", "bad\udcff"], env=env)
    assert out.exit_code == 4 and "the run's error holds an unpaired surrogate at character 3" in out.output, out.output
    assert Ledger.open(tmp_path).run(run_id).status == "running"
    with pytest.raises(ValueError), Ledger.open(tmp_path).attach_run(run_id):  # such an exception still ends the run
        raise ValueError("no \udcff")
    assert Ledger.open(tmp_path).run(run_id).error == "ValueError: no \\udcff"


def test_cli_run_start_owner(two_datasets, tmp_path):
    """`C=$(prov run start ...)` gave the run to the command substitution's subshell, gone at once:
    the next start on the host marked it abandoned, and `run log` said only "is failed". --owner
    names the process (`--owner $$`), 0 none; the refusal says the run was abandoned."""
    import subprocess

    cli, env = CliRunner(), {"PROV_LEDGER": str(tmp_path)}
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has exited, as the subshell has
    owned = {}
    for owner in (str(gone.pid), "0"):
        started = cli.invoke(main, ["run", "start", "-m", f"owner {owner}", "-d", "a", "--owner", owner, "--json"], env=env)
        assert started.exit_code == 0, started.output
        owned[owner] = json.loads(started.output)["run_id"]
    Ledger.open(tmp_path).start_run(datasets=["a"], message="the next run on this host").finish()
    assert Ledger.open(tmp_path).run(owned["0"]).status == "running"  # no owner: never abandoned
    refused = cli.invoke(main, ["run", "log", owned[str(gone.pid)], "--step", "0"], input="a1\n", env=env)
    assert refused.exit_code == 4
    assert f"is failed, not running (abandoned: process {gone.pid} exited without ending the run)" in refused.output
    bad = cli.invoke(main, ["run", "start", "-m", "m", "--owner", "-1"], env=env)
    assert bad.exit_code == 2 and "--owner" in bad.output


def test_an_owner_past_a_process_id_is_refused_naming_it(two_datasets, tmp_path):
    """`prov run start --owner 2147483648` (or 10**20) ended in DuckDB's traceback (`Conversion
    Error: Type INT64 with value 2147483648 can't be cast ... INT32 ... column pid`), and
    start_run(pid=2**31) raised it too. --owner is a usage error past 2**31 - 1, the library names
    pid, and no run is written."""
    cli, env = CliRunner(), {"PROV_LEDGER": str(tmp_path)}
    for owner in ("2147483648", str(10**20)):
        bad = cli.invoke(main, ["run", "start", "-m", "m", "-d", "a", "--owner", owner], env=env)
        assert bad.exit_code == 2, bad.output
        assert f"Invalid value for '--owner': {owner} is not in the range 0<=x<=2147483647." in bad.output
    for pid in (2**31, -1, True, 1.5):
        with pytest.raises(InvalidParameterError, match=r"pid must be a process id from 0 to 2\*\*31 - 1 "
                                                        rf"\(0: no owner\), got {pid!r}"):
            two_datasets.start_run(datasets=["a"], message="m", detached=True, pid=pid)
    assert two_datasets.runs() == []
    owned = two_datasets.start_run(datasets=["a"], message="the largest", detached=True, pid=2**31 - 1)
    assert two_datasets.run(owned.run_id).pid == 2**31 - 1


def test_an_error_in_a_run_whose_end_came_first_is_the_error_raised(two_datasets):
    """Leaving a ``with start_run`` block on an error fails the run; when the run has ended
    already (another handle finished it), the block's own error is raised, not "run ... is
    finished already"."""
    ledger = two_datasets
    with pytest.raises(ValueError, match="the training failed"):
        with ledger.start_run(datasets=["a"], message="ended elsewhere") as run:
            ledger.attach_run(run.run_id).finish()
            raise ValueError("the training failed")
    assert ledger.run(run.run_id).status == "finished"


def test_logging_while_another_ledger_instance_commits_in_a_thread(ledger, write_jsonl, data_dir):
    """What the training callbacks do: the loop logs keys (each flush registers an Arrow table)
    while their commit thread commits checkpoints through a Ledger of its own (opening and closing
    connections). One run in three failed with DuckDB's "Table Function with name
    python_arrow_scan does not exist" and stopped training. Bounded: 200 flushes."""
    import threading

    from provenance import Ledger

    write_jsonl(data_dir / "rows.jsonl", [{"id": f"k{i}", "text": f"row number {i}"} for i in range(100)])
    ledger.register_dataset("rows", data_dir / "rows.jsonl", id_field="id")
    base = ledger.commit({"w": torch.zeros(32, 32)}, message="base")
    run = ledger.start_run(base=base, datasets=["rows"], message="logging beside commits", flush_every=4)
    stop, commits, errors = threading.Event(), [], []

    def committer() -> None:
        other = Ledger.open(ledger.root)
        try:
            while not stop.is_set():
                commits.append(other.commit({"w": torch.randn(32, 32)}, parent=base, message=f"ckpt {len(commits)}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=committer)
    thread.start()
    try:
        for step in range(200):
            run.log_examples([f"k{(step * 4 + j) % 100}" for j in range(4)], step=step)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and len(commits) > 0
    run.finish()
    assert ledger.run(run.run_id).n_logged == 800


def test_a_key_that_is_not_utf8_is_refused_naming_it_and_the_run_goes_on(two_datasets):
    """A key with an unpaired surrogate (a file name's stray bytes through ``os.fsdecode``) raised
    ``UnicodeEncodeError`` and stayed buffered: every later log, ``finish`` and ``fail`` raised it
    again, and the run could not be ended."""
    ledger = two_datasets
    run = ledger.start_run(datasets=["a"], message="stray bytes", flush_every=3)
    run.log_examples(["a0", "a1"], step=0)
    with pytest.raises(InvalidParameterError, match=r"logged example '\\udce9' at step 1 holds an unpaired surrogate "
                                                    r"at character 0.*none of the 3 examples buffered"):
        run.log_examples(["a2", "\udce9", "a3"], step=1)
    run.log_examples(["a4", "a5", "a6", "a7"], step=2)
    assert run.finish().n_logged == 6
    assert ledger.run_examples(run.record)["key"].to_pylist() == ["a0", "a1", "a4", "a5", "a6", "a7"]
    with ledger.start_run(datasets=["a"], message="fails", flush_every=100) as failing:
        failing.log_examples(["a0"])
        failing.log_examples(["\ud800"])
        failing.fail("diverged")
    record = ledger.run(failing.run_id)
    assert (record.status, record.n_logged) == ("failed", 1)
    assert record.error.startswith("diverged; its last logged examples were not written: logged example '\\ud800'")


def test_run_params_that_are_not_utf8_are_refused(two_datasets):
    """A surrogate in a param was stored (escaped) and read back as itself: the run list could not
    be printed as JSON, and a server answered every ``GET /runs`` with a 500."""
    ledger = two_datasets
    said = []
    for params in ({"note": "caf\udce9"}, {"caf\udce9": 1}, {"a": ["ok", {"b": "\ud800"}]}):
        with pytest.raises(InvalidParameterError) as refused:
            ledger.start_run(datasets=["a"], params=params, message="m")
        said.append(str(refused.value))
    assert said == ["run param 'note' holds an unpaired surrogate at character 3: it is not valid UTF-8",
                    "the name of run param 'caf\\udce9' holds an unpaired surrogate at character 3: it is not valid UTF-8",
                    "run param 'a[1].b' holds an unpaired surrogate at character 0: it is not valid UTF-8"]
    assert ledger.runs() == []
    with pytest.raises(InvalidParameterError, match="the run's host holds an unpaired surrogate"):
        ledger.start_run(datasets=["a"], message="m", host="node\udce9")
    run = ledger.start_run(datasets=["a"], message="m", flush_every=1)
    with pytest.raises(InvalidParameterError, match="the run's error holds an unpaired surrogate"):
        from provenance.runs import end_run
        end_run(ledger, run.run_id, "failed", "\ud800")
    assert ledger.run(run.run_id).status == "running"
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(InvalidParameterError, match=f"flush_every must be a positive integer, got {bad!r}"):
            ledger.start_run(datasets=["a"], message="m", flush_every=bad)


def test_track_looks_keys_up_in_the_registered_dataset_it_reads(two_datasets, data_dir, write_jsonl):
    """A loader over a@1 in a run that declared a (a@2, whose keys are the same): its keys were
    logged as a@2's, and lineage named the version that was not trained on."""
    ledger = two_datasets
    write_jsonl(data_dir / "a3.jsonl", [{"id": f"a{i}", "text": f"a rewritten document {i}"} for i in range(10)])
    ledger.register_dataset("a", data_dir / "a3.jsonl", id_field="id")
    with ledger.start_run(datasets=["a"], message="declares a@2") as run:
        with pytest.raises(InvalidParameterError, match=r"^dataset a@1 is not one of the run's datasets \(a@2\)$"):
            next(iter(track(DataLoader(RegisteredDataset(ledger, "a@1"), batch_size=4), run)))
        with pytest.raises(InvalidParameterError, match=r"^dataset a@1 is not one of the run's datasets \(a@2\)$"):
            track(RegisteredDataset(ledger, "a@1"), run)[0]
        train, _ = torch.utils.data.random_split(RegisteredDataset(ledger, "a@1"), [8, 2])
        with pytest.raises(InvalidParameterError, match=r"^dataset a@1 is not one of the run's datasets \(a@2\)$"):
            next(iter(track(DataLoader(train, batch_size=4), run)))
        assert [len(b["key"]) for b in track(DataLoader(RegisteredDataset(ledger, "a"), batch_size=4), run)] == [4, 4, 2]
        version = run.commit({"w": torch.ones(1)})
    assert ledger.run(run.run_id).n_logged == 10
    assert [(d.dataset_id, d.examples) for d in ledger.lineage(version).datasets] == [("a@2", 10)]
    with ledger.start_run(datasets=["a@1", "b"], message="declares a@1") as run:
        assert sum(len(b["key"]) for b in track(DataLoader(RegisteredDataset(ledger, "a@1"), batch_size=4), run)) == 10
        run.finish()
    assert [(s.dataset_id, s.examples) for s in ledger.run_shards(run.run_id)] == [("a@1", 4), ("a@1", 6), ("b@1", 6)]


def test_a_dataset_name_naming_two_declared_versions_is_refused(two_datasets, data_dir, write_jsonl):
    # dataset="a" in a run that declared a@1 and a@2 was taken for a@2, wherever the keys came from
    ledger = two_datasets
    write_jsonl(data_dir / "a3.jsonl", [{"id": f"a{i}", "text": f"a rewritten document {i}"} for i in range(10)])
    ledger.register_dataset("a", data_dir / "a3.jsonl", id_field="id")
    run = ledger.start_run(datasets=["a@1", "a@2"], message="both versions")
    with pytest.raises(InvalidParameterError, match=r"^dataset 'a' names 2 of the run's datasets \(a@1, a@2\); give "
                                                    r"one as NAME@VERSION$"):
        run.log_examples(["a1"], dataset="a")
    run.log_examples(["a1", "a2"], dataset="a@1")
    run.finish()
    assert [(s.dataset_id, s.examples) for s in ledger.run_shards(run.run_id)] == [("a@1", 2), ("a@2", 10)]


def test_keys_that_are_not_a_sequence_of_strings_are_refused_naming_them(two_datasets):
    ledger = two_datasets
    run = ledger.start_run(datasets=["a"], message="odd keys")
    with pytest.raises(InvalidParameterError, match=r"^log_examples takes a sequence of keys, not None \(NoneType\)$"):
        run.log_examples(None)  # a TypeError: 'NoneType' object is not iterable
    with pytest.raises(InvalidParameterError, match=r"^log_examples takes a sequence of keys, not b'a1' \(bytes\)$"):
        run.log_examples(b"a1")  # "document keys must be strings: got 97 (int)", its first byte
    with pytest.raises(InvalidParameterError, match=r"^track: field 'key' holds b'a1' \(bytes\), not the document keys"):
        list(track([{"key": b"a1"}], run))
    run.log_examples(k for k in ["a1", "a2"])  # any iterable of strings
    run.finish()
    assert ledger.run_examples(run.run_id).to_pydict()["key"] == ["a1", "a2"]


def test_registered_dataset_errors_name_what_went_wrong(two_datasets):
    with pytest.raises(InvalidParameterError, match=r"^RegisteredDataset needs a ledger \(Ledger.open\(PATH\)\), got "
                                                    r"'ledger' \(str\)$"):
        RegisteredDataset("ledger", "b")  # AttributeError: 'str' object has no attribute 'dataset'

    def bad(item):
        raise ValueError("no label")

    data = RegisteredDataset(two_datasets, "b", transform=bad)
    with pytest.raises(ValueError, match="^no label") as caught:
        data[3]
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__ == ["in the transform of item 3 (key 'b3') of b@1"]


def test_a_run_resumed_by_attaching_is_not_abandoned_by_the_process_holding_it(two_datasets, tmp_path):
    """Its first process killed, the run attached to here and trained on: the next start_run in this
    very process marked it abandoned, and its commit was refused ("is failed")."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED, str(tmp_path), "kill"], stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    ledger = Ledger.open(tmp_path)
    resumed = ledger.attach_run(run_id)
    resumed.log_examples(["a1", "a2"], step=1)
    ledger.start_run(datasets=["b"], message="an evaluation meanwhile").finish()
    assert ledger.run(run_id).status == "running"
    version = resumed.commit({"w": torch.ones(1)})
    record = ledger.run(run_id)
    assert (record.status, record.version_id, record.n_logged) == ("finished", version.version_id, 3)
    assert ledger.run_examples(run_id).to_pydict()["step"] == [0, 1, 1]
