"""ProvenanceCallback records what a Lightning Trainer trained on, step by step.

A tiny regression module (one linear layer) trains for a few steps on CPU on 40 generated
documents; each item carries its document key, which ``training_step`` never uses. What was
trained at each step is recorded independently of the callback: ``training_step`` reads the row
number every input carries in its first feature, and the trainer's step.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from provenance.errors import InvalidParameterError, NonFiniteError, NotFoundError  # noqa: E402
from provenance.integrations.lightning import ProvenanceCallback  # noqa: E402
from provenance.torch import RegisteredDataset  # noqa: E402
from tests import serving  # noqa: E402
from tests.logged import assert_same_per_step, logged_by_step  # noqa: E402

N_DOCS = 40


def _records() -> list[dict]:
    return [{"id": f"doc{i}", "text": f"document {i} of the tiny corpus, words {i * 3} and {i * 5}"} for i in range(N_DOCS)]


def _item(i: int) -> dict:
    x = torch.linspace(0, 1, 8) * (i + 1)
    x[0] = i  # the row number, which training_step records
    return {"key": f"doc{i}", "x": x, "y": torch.tensor([float(i % 7)])}


ROWS = [_item(i) for i in range(N_DOCS)]


class Tiny(pl.LightningModule):
    def __init__(self, fail_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)
        self.fail_at = fail_at
        self.seen: dict[int, list[str]] = defaultdict(list)  # step -> keys, from the inputs themselves

    def training_step(self, batch, batch_idx):
        x = batch["x"] if isinstance(batch, dict) else batch[0]
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError(f"diverged at step {self.global_step}")
        self.seen[self.global_step].extend(f"doc{int(v)}" for v in x[:, 0].tolist())
        return torch.nn.functional.mse_loss(self.layer(x / N_DOCS), batch["y"] if isinstance(batch, dict) else batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _trainer(tmp_path, callback, **options) -> pl.Trainer:
    settings = dict(max_steps=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    settings.update(options)
    return pl.Trainer(callbacks=[callback, *settings.pop("extra", [])], **settings)


@pytest.fixture
def tiny(ledger):
    ledger.register_dataset("tiny", _records(), id_field="id")
    return ledger


@pytest.mark.parametrize(("n_rows", "accumulate", "workers", "trained"), [
    (40, 1, 0, 6 * 4),      # part of an epoch
    (20, 2, 0, 2 * 5 * 4),  # five batches an epoch: the third step of each epoch has one batch
    (40, 2, 2, 12 * 4),     # worker processes and Lightning's prefetch read ahead of training
])
def test_the_keys_of_every_trained_batch_are_logged_at_its_step(tiny, tmp_path, n_rows, accumulate, workers, trained):
    ledger = tiny
    module = Tiny()
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="tiny regression")
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = _trainer(tmp_path, callback, accumulate_grad_batches=accumulate, enable_checkpointing=True,
                       extra=[checkpoints])
    loader = DataLoader(ROWS[:n_rows], batch_size=4, shuffle=True, num_workers=workers,
                        persistent_workers=bool(workers), generator=torch.Generator().manual_seed(1))
    trainer.fit(module, loader)

    run = ledger.run(callback.run.run_id)
    assert run.status == "finished" and run.version_id == callback.version.version_id
    assert sum(map(len, module.seen.values())) == trained and sorted(module.seen) == list(range(6))
    assert_same_per_step(logged_by_step(ledger, run.run_id), module.seen)
    assert run.params["accumulate_grad_batches"] == accumulate and run.params["trainer"].startswith("lightning ")

    # the final weights, and each checkpoint's, check out bit-identical to what was trained and saved
    final = ledger.checkout(callback.version)
    assert all(torch.equal(final[k], v) for k, v in module.state_dict().items())
    assert sorted(callback.checkpoints) == [3, 6]
    for step, version in callback.checkpoints.items():
        (path,) = (tmp_path / "ckpt").glob(f"*step={step}.ckpt")
        saved = torch.load(path, weights_only=True)["state_dict"]
        state = ledger.checkout(version)
        assert version.parents == [run.base_version] and set(state) == set(saved)
        assert all(torch.equal(state[k], saved[k]) for k in saved), f"checkpoint at step {step}"
    assert [d.dataset_id for d in ledger.lineage(callback.version).datasets] == ["tiny@1"]


class _Stream(IterableDataset):
    def __iter__(self):
        yield from ROWS[:24]


def test_an_iterable_dataset_works_because_the_keys_come_with_the_batches(tiny, tmp_path):
    module = Tiny()
    callback = ProvenanceCallback(tiny, datasets={"tiny": 1.0})
    _trainer(tmp_path, callback, max_steps=-1, max_epochs=2).fit(module, DataLoader(_Stream(), batch_size=5))
    assert sorted(module.seen) == list(range(10))  # 24 rows in batches of 5: five steps an epoch
    assert_same_per_step(logged_by_step(tiny, callback.run.run_id), module.seen)


def test_a_registered_dataset_names_itself(ledger, tmp_path, write_jsonl):
    ledger.register_dataset("wiki", write_jsonl(tmp_path / "wiki.jsonl", _records()), id_field="id")
    data = RegisteredDataset(ledger, "wiki", transform=lambda item: {**_item(int(item["key"][3:])), **item})
    module = Tiny()
    callback = ProvenanceCallback(ledger)
    _trainer(tmp_path, callback, max_steps=3).fit(module, DataLoader(data, batch_size=4))
    assert callback.run.record.datasets == {ledger.dataset("wiki").dataset_id: 1.0}
    assert_same_per_step(logged_by_step(ledger, callback.run.run_id), module.seen)
    assert callback.run.record.message == "Tiny trained with Lightning"


def test_an_exception_in_training_ends_the_run_failed(tiny, tmp_path):
    module = Tiny(fail_at=2)
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    with pytest.raises(RuntimeError, match="diverged at step 2"):
        _trainer(tmp_path, callback).fit(module, DataLoader(ROWS, batch_size=4))
    run = tiny.run(callback.run.run_id)
    assert run.status == "failed" and "RuntimeError: diverged at step 2" in run.error and run.version_id is None
    assert_same_per_step(logged_by_step(tiny, run.run_id), module.seen)  # the two steps trained are kept


def test_batches_without_keys_stop_training_at_the_first_one(tiny, tmp_path):
    rows = TensorDataset(torch.stack([r["x"] for r in ROWS]), torch.stack([r["y"] for r in ROWS]))
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    with pytest.raises(InvalidParameterError, match="a training batch has no 'key' field.*let each item carry its key"):
        _trainer(tmp_path, callback).fit(Tiny(), DataLoader(rows, batch_size=4))
    assert tiny.run(callback.run.run_id).status == "failed"

    keyed = ProvenanceCallback(tiny, datasets=["tiny"], key=lambda batch: [f"doc{int(v)}" for v in batch[0][:, 0]])
    module = Tiny()
    _trainer(tmp_path, keyed, max_steps=2).fit(module, DataLoader(rows, batch_size=4))
    assert_same_per_step(logged_by_step(tiny, keyed.run.run_id), module.seen)


def test_a_key_function_that_drops_or_invents_keys_stops_training_at_once(tiny, tmp_path):
    """Too few keys for the batch would undercount silently: that stops training at the first
    step. Keys that name no document are refused at the run's first write (the run starts on the
    commit thread while the first steps train: within a few steps of a real model; this tiny one
    may finish first), and the run is failed."""
    rows = TensorDataset(torch.stack([r["x"] for r in ROWS]), torch.stack([r["y"] for r in ROWS]))
    short = ProvenanceCallback(tiny, datasets=["tiny"], key=lambda batch: ["doc1", "doc2"])
    module = Tiny()
    with pytest.raises(InvalidParameterError, match=r"batch 0 at step 0 gave 2 document keys, but its tensors hold 8"):
        _trainer(tmp_path, short).fit(module, DataLoader(rows, batch_size=8))
    assert tiny.run(short.run.run_id).status == "failed" and list(module.seen) == [0]
    bogus = ProvenanceCallback(tiny, datasets=["tiny"], key=lambda batch: [f"bogus{i}" for i in range(len(batch[0]))])
    module = Tiny()
    with pytest.raises(InvalidParameterError, match="'bogus0' at step 0 is not a document"):
        _trainer(tmp_path, bogus).fit(module, DataLoader(rows, batch_size=8))
    assert tiny.run(bogus.run.run_id).status == "failed"


def test_a_key_function_that_gives_a_tensor_or_one_string_is_refused_by_name(tiny, tmp_path):
    """key=lambda batch: batch["x"][:, 0] (a tensor) stopped training with "RuntimeError: Boolean
    value of Tensor with more than one value is ambiguous"; one string, with "log_examples takes a
    sequence of keys", a call the user never made. Both name the batch and what the keys were."""
    for key, shown in ((lambda batch: batch["x"][:, 0], "Tensor (tensor([0., 1., 2., 3.]))"),
                       (lambda batch: "doc1", "str ('doc1')")):
        callback = ProvenanceCallback(tiny, datasets=["tiny"], key=key)
        with pytest.raises(InvalidParameterError, match=re.escape(
                f"ProvenanceCallback: the document keys of batch 0 at step 0 are a {shown}, not a list of strings")):
            _trainer(tmp_path, callback).fit(Tiny(), DataLoader(ROWS, batch_size=4))
        assert tiny.run(callback.run.run_id).status == "failed"


@pytest.mark.parametrize("kind", ["generator", "map", "numpy"])
def test_a_key_function_may_give_any_iterable_of_keys(tiny, tmp_path, kind):
    """A key function returning a generator or a map stopped training with "TypeError: object of
    type 'generator' has no len()"; a numpy array of strings with "The truth value of an array with
    more than one element is ambiguous" (found by stranger pass 73)."""
    import numpy as np

    key = {"generator": lambda batch: (k for k in batch["key"]), "map": lambda batch: map(str, batch["key"]),
           "numpy": lambda batch: np.array(batch["key"])}[kind]
    module, callback = Tiny(), ProvenanceCallback(tiny, datasets=["tiny"], key=key)
    _trainer(tmp_path, callback, max_steps=2).fit(module, DataLoader(ROWS, batch_size=4))
    assert {step: len(keys) for step, keys in module.seen.items()} == {0: 4, 1: 4}
    assert_same_per_step(logged_by_step(tiny, callback.run.run_id), module.seen)


def test_a_key_function_that_gives_no_sequence_is_refused_by_name(tiny, tmp_path):
    callback = ProvenanceCallback(tiny, datasets=["tiny"], key=lambda batch: 4)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "ProvenanceCallback: the document keys of batch 0 at step 0 are a int (4), not a list of strings")):
        _trainer(tmp_path, callback).fit(Tiny(), DataLoader(ROWS, batch_size=4))
    assert tiny.run(callback.run.run_id).status == "failed"


def test_what_cannot_be_followed_is_refused_before_anything_is_written(tiny, tmp_path):
    with pytest.raises(InvalidParameterError, match="pass datasets="):
        _trainer(tmp_path, ProvenanceCallback(tiny)).fit(Tiny(), DataLoader(ROWS, batch_size=4))
    with pytest.raises(InvalidParameterError, match="key must name"):
        ProvenanceCallback(tiny, key="")
    assert tiny.runs() == [] and tiny.versions() == []


def test_training_on_an_empty_stream_commits_no_version(tiny, tmp_path):
    """An IterableDataset that yields nothing: Lightning trained no batch, and the run committed a
    version whose lineage counted a whole epoch of the dataset (40 examples, 40 documents). The run
    ends without a version, and a warning says why."""

    class Empty(IterableDataset):
        def __iter__(self):
            return iter([])

    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    with pytest.warns(UserWarning, match="training ended before a batch was trained .* ended without a version"):
        _trainer(tmp_path, callback, max_steps=-1, max_epochs=1).fit(Tiny(), DataLoader(Empty(), batch_size=4))
    record = tiny.run(callback.run.run_id)
    assert (record.status, record.n_logged, record.version_id, callback.version) == ("finished", 0, None, None)
    assert len(tiny.versions()) == 1  # the starting weights, the run's base


def test_the_run_starts_on_the_commit_thread_while_the_first_steps_train(tiny, tmp_path, monkeypatch):
    """Committing the starting weights and starting the run happen on the callback's own thread:
    the steps trained meanwhile keep their keys until the run exists, a checkpoint waits for it,
    and the base is the weights as they were when training started (copied then)."""
    started = []
    start_run = type(tiny).start_run

    def slow_start(self, *args, **kwargs):
        time.sleep(0.5)  # far longer than this model's six steps
        started.append(threading.current_thread().name)
        return start_run(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "start_run", slow_start)
    module = Tiny()
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _trainer(tmp_path, callback, enable_checkpointing=True, extra=[checkpoints]).fit(module, DataLoader(ROWS, batch_size=4))
    assert len(started) == 1 and started[0].startswith("provenance-commit")
    run = tiny.run(callback.run.run_id)
    assert run.status == "finished" and run.n_logged == 6 * 4
    assert_same_per_step(logged_by_step(tiny, run.run_id), module.seen)
    base = tiny.checkout(run.base_version)
    assert all(torch.equal(base[k], v) for k, v in initial.items())
    assert callback.checkpoints[3].parents == [run.base_version]


def test_a_run_that_cannot_start_stops_training_before_it_begins(tiny, tmp_path):
    """A run that cannot start (here, a dataset that is not registered) stops training before its
    first batch, and leaves no run and no version (it left the starting weights' version)."""
    module = Tiny()
    versions = len(tiny.versions())
    callback = ProvenanceCallback(tiny, datasets=["nope"])
    with pytest.raises(NotFoundError, match="nope"):
        _trainer(tmp_path, callback, max_steps=10_000).fit(module, DataLoader(ROWS, batch_size=4))
    assert tiny.runs() == [] and sum(map(len, module.seen.values())) == 0 and len(tiny.versions()) == versions


def test_a_state_dict_entry_that_is_not_a_tensor_is_named(tiny, tmp_path):
    """A module's get_extra_state (a dict) in state_dict: `AttributeError: 'dict' object has no
    attribute 'detach'` from the callback; now the entry is named, before anything is written."""

    class Counter(torch.nn.Module):
        def get_extra_state(self):
            return {"seen": 3}

        def set_extra_state(self, state):
            pass

    module = Tiny()
    module.counter = Counter()
    with pytest.raises(InvalidParameterError, match=r"state_dict entry 'counter._extra_state' is a dict, not a tensor"):
        _trainer(tmp_path, ProvenanceCallback(tiny, datasets=["tiny"])).fit(module, DataLoader(ROWS, batch_size=4))
    assert tiny.runs() == []


def test_the_callback_changes_nothing_lightning_does(tiny, tmp_path):
    def fit(callbacks):
        module = Tiny()
        trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        trainer.fit(module, DataLoader(ROWS[:16], batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)))
        return module.seen, module.state_dict()

    plain, plain_state = fit([])
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    tracked, tracked_state = fit([callback])
    assert tracked == plain
    assert all(torch.equal(plain_state[k], tracked_state[k]) for k in plain_state)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("lightning") / "ledger") as srv:
        yield srv


def test_a_remote_ledger_records_the_same_run(server, tmp_path):
    remote = server.ledger()
    remote.register_dataset("tiny-remote", _records(), id_field="id")
    module = Tiny()
    callback = ProvenanceCallback(remote, datasets=["tiny-remote"])
    _trainer(tmp_path, callback, max_steps=4, accumulate_grad_batches=2).fit(module, DataLoader(ROWS, batch_size=4))
    run = remote.run(callback.run.run_id)
    assert run.status == "finished"
    state = remote.checkout(callback.version)
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    assert_same_per_step(logged_by_step(remote, run.run_id), module.seen)
    lineage = remote.lineage(callback.version)
    assert [(d.dataset_id, d.examples) for d in lineage.datasets] == [("tiny-remote@1", 4 * 2 * 4)]


def test_a_checkpoint_that_cannot_be_committed_fails_training(tiny, tmp_path):
    """Checkpoints are committed on a thread of their own; one that fails (weights gone NaN) is
    raised in training at the next save, and the run ends failed."""

    class Poison(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                with torch.no_grad():
                    pl_module.layer.weight[0, 0] = float("nan")

    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        _trainer(tmp_path, callback, max_steps=9, enable_checkpointing=True, extra=[checkpoints, Poison()]).fit(
            Tiny(), DataLoader(ROWS, batch_size=4))
    run = tiny.run(callback.run.run_id)
    assert run.status == "failed" and "NonFiniteError" in run.error and callback.checkpoints == {}


def test_a_save_at_the_end_of_the_last_epoch_is_the_run_s_version(tiny, tmp_path):
    """With max_epochs (no max_steps), a checkpoint saved as the last epoch ends was committed as a
    version of its own, and the final weights again as the run's version: the same weights twice."""
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    before = len(tiny.versions())
    _trainer(tmp_path, callback, max_steps=-1, max_epochs=2, enable_checkpointing=True,
             extra=[checkpoints]).fit(Tiny(), DataLoader(ROWS, batch_size=8))
    assert sorted(callback.checkpoints) == [5, 10]  # 5 batches an epoch
    assert callback.checkpoints[10] == callback.version  # the last save is the run's version, not a copy of it
    assert callback.checkpoints[5] != callback.version
    assert len(tiny.versions()) == before + 3  # the starting weights, the first epoch's save, the run's version
    # the first epoch's save is the run's, trained on its steps 0 to 4: its lineage counts those examples only
    first = callback.checkpoints[5]
    assert first.run_id == callback.run.run_id
    assert [(c.version_id, c.step) for c in tiny.checkpoints(first.run_id)] == [(first.version_id, 4)]
    assert [d.examples for d in tiny.lineage(first).datasets] == [5 * 8]
    assert [d.examples for d in tiny.lineage(callback.version).datasets] == [10 * 8]


def test_resuming_from_a_checkpoint_says_the_steps_before_are_out_of_the_lineage(tiny, tmp_path):
    """Resumed with `ckpt_path`, a run's starting weights are a version of no run: the version's
    lineage holds the steps trained after the resume only, which nothing said (found by stranger
    pass 36); a warning says so, and the run records the steps it trained."""
    from provenance.errors import ProvenanceWarning

    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    _trainer(tmp_path, ProvenanceCallback(tiny, datasets=["tiny"]), max_steps=-1, max_epochs=1, enable_checkpointing=True,
             extra=[checkpoints]).fit(Tiny(), DataLoader(ROWS, batch_size=8))
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    again = ProvenanceCallback(tiny, datasets=["tiny"])
    with pytest.warns(ProvenanceWarning, match="training resumed at step 5: this run records the data of the steps"):
        _trainer(tmp_path, again, max_steps=-1, max_epochs=2).fit(Tiny(), DataLoader(ROWS, batch_size=8),
                                                                  ckpt_path=str(saved[-1]))
    assert tiny.run(again.run.run_id).params["start_step"] == 5
    assert sorted(logged_by_step(tiny, again.run.run_id)) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize(("options", "at_start", "match"), [
    ({"datasets": {"tiny": -1}}, True, "epochs over dataset 'tiny' must be a finite number >= 0, got -1"),
    ({"datasets": ["tiny", "tiny@1"]}, True, "datasets 'tiny' and 'tiny@1' are both tiny@1"),
    ({"datasets": ["tiny"], "params": {"optimizer": object()}}, False, "run params must be JSON values"),
    ({"datasets": ["tiny"], "flush_every": 0}, False, "flush_every must be a positive integer, got 0"),
])
def test_refused_settings_leave_no_starting_weights_behind(tiny, tmp_path, options, at_start, match):
    """Epochs, params or flush_every that start_run refuses were refused after the starting weights
    were committed: each refusal left a version of no run in the ledger (found by stranger pass 51)."""
    with pytest.raises(InvalidParameterError, match=re.escape(match)):
        callback = ProvenanceCallback(tiny, **options)
        assert at_start  # else refused when the callback is made
        _trainer(tmp_path, callback).fit(Tiny(), DataLoader(ROWS, batch_size=4))
    assert tiny.versions() == [] and tiny.runs() == []


def test_fitting_again_from_where_the_last_run_ended_keeps_its_lineage(tiny, tmp_path):
    """A second fit of the same module with the same callback started from the first run's final
    weights, but committed them again as a version of no run: the second version's lineage lost the
    first run's 12 examples (found by stranger pass 51). The first run's version is the base now."""
    module, callback = Tiny(), ProvenanceCallback(tiny, datasets=["tiny"])
    _trainer(tmp_path, callback, max_steps=3).fit(module, DataLoader(ROWS, batch_size=4))
    first = callback.version
    _trainer(tmp_path, callback, max_steps=2).fit(module, DataLoader(ROWS[20:], batch_size=4))
    assert callback.version.parents == [first.version_id] and callback.run.base == first.version_id
    assert [(d.dataset_id, d.examples) for d in tiny.lineage(callback.version).datasets] == [("tiny@1", 12 + 8)]
    assert len(tiny.versions()) == 3  # the first run's starting weights and the two runs' versions

    with torch.no_grad():  # weights changed between the fits: committed as the new run's starting weights
        module.layer.bias.add_(1.0)
    second = callback.version
    _trainer(tmp_path, callback, max_steps=1).fit(module, DataLoader(ROWS, batch_size=4))
    assert callback.run.base != second.version_id and len(tiny.versions()) == 5


def test_a_batch_that_training_step_skips_is_not_logged(tiny, tmp_path):
    """A training_step that returns None makes Lightning skip the batch (no backward: no weight
    changes), yet its keys were logged as trained at the step (found by stranger pass 51)."""
    class Skipping(Tiny):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if batch_idx % 2:
                self.seen[self.global_step] = self.seen[self.global_step][:-4]  # not trained on
                return None
            return loss

    module, callback = Skipping(), ProvenanceCallback(tiny, datasets=["tiny"])
    _trainer(tmp_path, callback, max_steps=4, accumulate_grad_batches=2).fit(module, DataLoader(ROWS, batch_size=4))
    assert {step: len(keys) for step, keys in module.seen.items()} == {0: 4, 1: 4, 2: 4, 3: 4}
    assert_same_per_step(logged_by_step(tiny, callback.run.run_id), module.seen)
    assert tiny.run(callback.run.run_id).n_logged == 16


def test_a_run_ended_elsewhere_stops_training_with_the_error_that_says_so(tiny, tmp_path):
    """Another process ended the run (`prov run finish`) while training went on: the final commit
    was refused with "finished already (ended by another process?)", and failing the run then
    raised "has ended (finished)" from Lightning's exception hook, in its place (found by stranger
    pass 51)."""
    from provenance.errors import RunEndedError

    class EndedElsewhere(Tiny):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                tiny.attach_run(callback.run.run_id).finish()
            return super().training_step(batch, batch_idx)

    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    with pytest.raises(RunEndedError, match="is finished already \\(ended by another process\\?\\)"):
        _trainer(tmp_path, callback, max_steps=4).fit(EndedElsewhere(), DataLoader(ROWS, batch_size=4))
    run = tiny.run(callback.run.run_id)
    assert run.status == "finished" and run.version_id is None and sorted(logged_by_step(tiny, run.run_id)) == [0]


class _Several(Tiny):
    """Trains on a batch of several train dataloaders (a dict of batches, a part None once its
    loader is exhausted in "max_size" mode); records the rows of each part it trained on."""

    def training_step(self, batch, batch_idx):
        losses = [super(_Several, self).training_step(part, batch_idx) for part in batch.values() if part is not None]
        return sum(losses)


@pytest.mark.parametrize(("mode", "by_function", "trained"), [
    ("max_size_cycle", False, 3 * 4 + 3 * 2),  # three batches of "a", and of "b" (two batches of 2 rows) cycled
    ("max_size", True, 3 * 4 + 2 * 2),         # "b" is exhausted at the third step: its part is None
])
def test_several_train_dataloaders_log_the_examples_of_each(tiny, tmp_path, mode, by_function, trained):
    """A CombinedLoader's batch holds the batches of every train dataloader: a key function giving
    the keys of all of them was refused ("gave 6 document keys, but its tensors hold 2 or 4
    examples"), and the default key found no "key" field in {"a": ..., "b": ...} (found by stranger pass 73)."""
    from lightning.pytorch.utilities import CombinedLoader

    def keys(batch):
        return [key for part in batch.values() if part is not None for key in part["key"]]

    module = _Several()
    callback = ProvenanceCallback(tiny, datasets=["tiny"], **({"key": keys} if by_function else {}))
    loaders = CombinedLoader({"a": DataLoader(ROWS[:12], batch_size=4), "b": DataLoader(ROWS[20:24], batch_size=2)}, mode)
    _trainer(tmp_path, callback, max_steps=-1, max_epochs=1).fit(module, loaders)
    assert sum(map(len, module.seen.values())) == trained and sorted(module.seen) == [0, 1, 2]
    assert_same_per_step(logged_by_step(tiny, callback.run.run_id), module.seen)
    assert tiny.run(callback.run.run_id).n_logged == trained


def test_datasets_are_inferred_from_a_random_split_and_from_several_loaders(ledger, tmp_path, write_jsonl):
    """A LightningDataModule's usual train/val split (random_split) of a RegisteredDataset, and a
    dict of train dataloaders, were refused: "pass datasets= ... the training set is a Subset"
    ("... is a dict"; found by stranger pass 73)."""
    from torch.utils.data import ConcatDataset, random_split

    ledger.register_dataset("wiki", write_jsonl(tmp_path / "wiki.jsonl", _records()), id_field="id")
    ledger.register_dataset("news", write_jsonl(tmp_path / "news.jsonl", [{**r, "id": f"art{i}"} for i, r in enumerate(_records()[:10])]), id_field="id")
    wiki, news = (RegisteredDataset(ledger, name, transform=lambda item: {**_item(int(item["key"][3:])), **item})
                  for name in ("wiki", "news"))
    train, _ = random_split(wiki, [30, 10], generator=torch.Generator().manual_seed(0))
    callback = ProvenanceCallback(ledger)
    _trainer(tmp_path, callback, max_steps=2).fit(Tiny(), DataLoader(train, batch_size=4))
    assert callback.run.record.datasets == {"wiki@1": 1.0}
    assert [(d.dataset_id, d.examples) for d in ledger.lineage(callback.version).datasets] == [("wiki@1", 8)]

    callback = ProvenanceCallback(ledger)
    _trainer(tmp_path, callback, max_steps=2).fit(
        _Several(), {"a": DataLoader(train, batch_size=4), "b": DataLoader(news, batch_size=2)})
    assert callback.run.record.datasets == {"wiki@1": 1.0, "news@1": 1.0}
    assert {d.dataset_id: d.examples for d in ledger.lineage(callback.version).datasets} == {"wiki@1": 8, "news@1": 4}

    # several datasets trained on as one (ConcatDataset) were refused: "the training set is a ConcatDataset"
    callback = ProvenanceCallback(ledger)
    _trainer(tmp_path, callback, max_steps=3).fit(Tiny(), DataLoader(ConcatDataset([news, train]), batch_size=5))
    assert callback.run.record.datasets == {"news@1": 1.0, "wiki@1": 1.0}
    assert {d.dataset_id: d.examples for d in ledger.lineage(callback.version).datasets} == {"news@1": 10, "wiki@1": 5}
    with pytest.raises(InvalidParameterError, match="the training set is a ConcatDataset holding a list"):
        _trainer(tmp_path, ProvenanceCallback(ledger), max_steps=1).fit(
            Tiny(), DataLoader(ConcatDataset([news, [_item(0)]]), batch_size=5))


class _SeveralInAList(Tiny):
    def training_step(self, batch, batch_idx):
        return sum(super(_SeveralInAList, self).training_step(part, batch_idx) for part in batch if part is not None)


@pytest.mark.parametrize("as_list", [False, True])
def test_two_loaders_whose_datasets_share_keys_log_each_part_as_its_datasets(ledger, tmp_path, write_jsonl, as_list):
    """Two train dataloaders over datasets keyed alike (row numbers, here doc0 … doc9 in both)
    failed the run at its first batch: "logged example 'doc0' is a document of several of the
    run's datasets". Each part of a batch is logged as its own loader's dataset's."""
    ledger.register_dataset("wiki", write_jsonl(tmp_path / "wiki.jsonl", _records()), id_field="id")
    ledger.register_dataset("mirror", write_jsonl(tmp_path / "mirror.jsonl", [
        {**r, "text": f"another text {i} with other words {i * 11}"} for i, r in enumerate(_records()[:10])]), id_field="id")
    wiki, mirror = (RegisteredDataset(ledger, name, transform=lambda item: {**_item(int(item["key"][3:])), **item})
                    for name in ("wiki", "mirror"))
    loaders = {"w": DataLoader(wiki, batch_size=4), "m": DataLoader(mirror, batch_size=2)}
    callback = ProvenanceCallback(ledger)
    model = _SeveralInAList() if as_list else _Several()
    _trainer(tmp_path, callback, max_steps=3).fit(model, list(loaders.values()) if as_list else loaders)
    assert callback.run.record.datasets == {"wiki@1": 1.0, "mirror@1": 1.0}
    assert {d.dataset_id: d.examples for d in ledger.lineage(callback.version).datasets} == {"wiki@1": 12, "mirror@1": 6}
    logged = ledger.sql("SELECT d.dataset_id, e.step, d.key FROM run_examples e JOIN documents d USING (doc_id) "
                        "WHERE e.run_id = ? ORDER BY e.step, d.dataset_id, d.key", [callback.run.run_id]).to_pylist()
    assert [(r["dataset_id"], r["key"]) for r in logged if r["step"] == 1] == [
        ("mirror@1", "doc2"), ("mirror@1", "doc3"), ("wiki@1", "doc4"), ("wiki@1", "doc5"), ("wiki@1", "doc6"),
        ("wiki@1", "doc7")]


def test_a_second_save_at_the_same_step_is_the_same_version(tiny, tmp_path):
    """ModelCheckpoint(save_last=True) saves twice at each step it saves (its file and last.ckpt):
    each was committed, two versions of the same weights per save (found by stranger pass 73)."""
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                                               save_last=True)
    callback = ProvenanceCallback(tiny, datasets=["tiny"])
    _trainer(tmp_path, callback, max_steps=5, enable_checkpointing=True, extra=[checkpoints]).fit(
        Tiny(), DataLoader(ROWS, batch_size=4))
    assert sorted(callback.checkpoints) == [2, 4]
    assert len(tiny.versions()) == 4  # the starting weights, the saves at steps 2 and 4, the run's version
    for step in (2, 4):
        (path,) = (tmp_path / "ckpt").glob(f"*step={step}.ckpt")
        saved, state = torch.load(path, weights_only=True)["state_dict"], tiny.checkout(callback.checkpoints[step])
        assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and all(
        torch.equal(tiny.checkout(callback.checkpoints[4])[k], v) for k, v in last["state_dict"].items())
