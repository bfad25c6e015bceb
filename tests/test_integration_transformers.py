"""ProvenanceCallback records what a Hugging Face Trainer trained on, step by step.

A tiny GPT-2 (two layers, 32 wide) trains for a few steps on CPU on 64 generated documents, tokenized
by a whitespace vocabulary; the rows carry their document key in a ``key`` column that the Trainer
strips before batches are made (``remove_unused_columns``, the default) and that the model never
sees. What was trained at each step is recorded independently of the callback, by a forward hook
on the model that reads the token ids each micro-batch carries and the Trainer's step.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from provenance.errors import InvalidParameterError, ProvenanceWarning  # noqa: E402
from provenance.integrations.transformers import ProvenanceCallback  # noqa: E402
from provenance.torch import RegisteredDataset  # noqa: E402
from tests.logged import assert_same_per_step, logged_by_step  # noqa: E402

N_DOCS, DOC_WORDS = 64, 8


def _records() -> list[dict]:
    # the first word is the document's own, so token ids identify a document
    return [{"id": f"doc{i}", "text": " ".join([f"d{i}"] + [f"w{(i * 7 + j) % 40}" for j in range(DOC_WORDS - 1)])}
            for i in range(N_DOCS)]


VOCAB = {w: n for n, w in enumerate(sorted({w for r in _records() for w in r["text"].split()}))}


def _tokenize(item: dict) -> dict:
    ids = [VOCAB[w] for w in item["text"].split()]
    return {"input_ids": ids, "labels": ids, "key": item["key"]}


@pytest.fixture
def tiny(ledger):
    ledger.register_dataset("tiny", _records(), id_field="id")
    rows = [_tokenize({"key": r["id"], "text": r["text"]}) for r in _records()]
    return ledger, rows


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64))


def _trainer(model, rows, tmp_path, callback, **args) -> Trainer:
    options = dict(per_device_train_batch_size=4, max_steps=6, save_steps=3, report_to=[], use_cpu=True, seed=0,
                   logging_steps=100, disable_tqdm=True)
    options.update(args)
    eval_dataset = options.pop("eval_dataset", None)
    return Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "out"), **options),
                   train_dataset=rows, eval_dataset=eval_dataset, callbacks=[callback])


def _watch(trainer: Trainer, rows) -> dict[int, list[str]]:
    """The keys of every micro-batch the model is run on, by the Trainer's step at the time."""
    key_of = {tuple(r["input_ids"]): r["key"] for r in rows}
    seen: dict[int, list[str]] = defaultdict(list)

    def hook(module, args, kwargs):
        for ids in kwargs["input_ids"].tolist():
            seen[trainer.state.global_step].append(key_of[tuple(ids)])

    trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize(("n_rows", "accumulate", "workers"), [
    (64, 2, 0),   # part of an epoch; the batch the loader drew ahead is never trained
    (20, 2, 0),   # five batches an epoch: the third step of each epoch has one micro-batch
    (64, 1, 2),   # worker processes draw ahead of training
])
def test_the_keys_of_every_trained_batch_are_logged_at_its_step(tiny, tmp_path, n_rows, accumulate, workers):
    ledger, rows = tiny
    rows = rows[:n_rows]
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="tiny gpt2")
    trainer = _trainer(model, rows, tmp_path, callback, gradient_accumulation_steps=accumulate,
                       dataloader_num_workers=workers)
    seen = _watch(trainer, rows)
    with callback:
        trainer.train()

    assert sorted(seen) == list(range(6))
    assert sum(map(len, seen.values())) == (6 * 4 * accumulate if n_rows == 64 else 2 * n_rows)
    assert_same_per_step(logged_by_step(ledger, callback.run.run_id), seen)

    record = ledger.run(callback.run.run_id)
    assert record.status == "finished" and record.n_logged == sum(map(len, seen.values()))
    assert record.params["gradient_accumulation_steps"] == accumulate and record.params["start_step"] == 0
    version = callback.version
    assert version.run_id == record.run_id and version.parents == [record.base_version]
    final = ledger.checkout(version)
    state = trainer.model.state_dict()
    assert sorted(final) == sorted(state)
    assert all(torch.equal(final[k], state[k].cpu()) for k in state)
    base = ledger.checkout(record.base_version)  # the starting weights, committed when training began
    assert all(torch.equal(base[k], start[k]) for k in start)
    assert not all(torch.equal(base[k], final[k]) for k in start)
    assert [d.dataset_id for d in ledger.lineage(version).datasets] == ["tiny@1"]
    assert sorted(callback.checkpoints) == [3, 6]
    checkpoint = callback.checkpoints[3]
    assert checkpoint.parents == [record.base_version] and f"step 3 of run {record.run_id[:12]}" in checkpoint.message
    saved = load_file(str(tmp_path / "out" / "checkpoint-3" / "model.safetensors"))
    at_three = ledger.checkout(checkpoint)
    assert all(torch.equal(at_three[k], saved[k]) for k in saved)  # the weights the Trainer saved at step 3
    assert callback.checkpoints[6] == version  # saved at the last step: the run's own version, not a second commit
    assert len(ledger.versions()) == 3
    # the checkpoint is the run's, trained on steps 0 to 2 (the updates before its save): its lineage counts
    # exactly the examples of those steps, the run's version every step's
    assert checkpoint.run_id == record.run_id
    assert [(c.version_id, c.step) for c in ledger.checkpoints(record.run_id)] == [(checkpoint.version_id, 2)]
    lineage = ledger.lineage(checkpoint)
    assert [(d["dataset_id"], d["examples"]) for d in lineage.datasets] == [("tiny@1", sum(len(seen[s]) for s in range(3)))]
    assert checkpoint.version_id not in lineage.unrecorded
    assert ledger.lineage(version).datasets[0]["examples"] == record.n_logged


def test_two_callbacks_on_one_trainer_each_log_every_batch(tiny, tmp_path):
    """Two callbacks recording one training into two ledgers (a local one and a team's) shared
    one tap of the batch sampler: the first took each batch's keys, and the second failed at
    the first step ("trained a batch at step 0 that its train sampler did not draw"), the first
    run left running. Each takes every batch, also through a resume's skipped batches."""
    from provenance import Ledger

    ledger, rows = tiny
    other = Ledger.init(tmp_path / "other")
    other.register_dataset("tiny", _records(), id_field="id")
    callbacks = [ProvenanceCallback(ledger, datasets=["tiny"], message="here"),
                 ProvenanceCallback(other, datasets=["tiny"], message="there")]
    trainer = _trainer(_model(), rows, tmp_path, callbacks[0], gradient_accumulation_steps=2, dataloader_num_workers=1)
    trainer.add_callback(callbacks[1])
    seen = _watch(trainer, rows)
    trainer.train()
    assert sum(map(len, seen.values())) == 6 * 2 * 4
    for callback, where in zip(callbacks, (ledger, other)):
        assert where.run(callback.run.run_id).status == "finished"
        assert_same_per_step(logged_by_step(where, callback.run.run_id), seen)
    resumed = _trainer(_model(), rows, tmp_path, callbacks[0], gradient_accumulation_steps=2)
    resumed.add_callback(callbacks[1])
    seen = _watch(resumed, rows)
    with pytest.warns(ProvenanceWarning, match="training resumed at step 3"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert sorted(seen) == [3, 4, 5]
    for callback, where in zip(callbacks, (ledger, other)):
        assert_same_per_step(logged_by_step(where, callback.run.run_id), seen)


def test_a_registered_dataset_names_itself_and_its_keys(tiny, tmp_path):
    ledger, _ = tiny
    source = tmp_path / "tiny.jsonl"  # read back from its file, checked against its hash
    source.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    ledger.register_dataset("tiny-file", source, id_field="id")
    data = RegisteredDataset(ledger, "tiny-file", transform=_tokenize)
    base = ledger.commit(_model().state_dict(), message="pretrained")
    callback = ProvenanceCallback(ledger, base=base, message="fine-tune", commit_on_save=False)
    trainer = _trainer(_model(), data, tmp_path, callback, max_steps=2)
    seen = _watch(trainer, [data[i] for i in range(len(data))])
    trainer.train()
    record = ledger.run(callback.run.run_id)
    assert record.status == "finished" and record.datasets == {"tiny-file@1": 1.0} and record.base_version == base.version_id
    assert callback.checkpoints == {} and callback.version.parents == [base.version_id]
    assert_same_per_step(logged_by_step(ledger, record.run_id), seen)


def test_training_that_raises_ends_the_run_failed(tiny, tmp_path):
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="doomed")
    trainer = _trainer(_model(), rows, tmp_path, callback)

    def explode(module, args, kwargs):
        if trainer.state.global_step == 4:
            raise RuntimeError("loss went to the moon")

    trainer.model.register_forward_pre_hook(explode, with_kwargs=True)
    with pytest.raises(RuntimeError, match="moon"), callback:
        trainer.train()
    record = ledger.run(callback.run.run_id)
    assert record.status == "failed" and "RuntimeError: loss went to the moon" in record.error
    assert sorted(logged_by_step(ledger, record.run_id)) == [0, 1, 2, 3]  # what it saw before failing is kept
    assert callback.version is None and record.version_id is None
    assert sorted(callback.checkpoints) == [3]


def test_keys_that_name_no_document_fail_the_run_even_outside_a_with_block(tiny, tmp_path):
    """The Trainer has no hook for exceptions: a refused key fails the run itself before the
    error stops training, so the run is not left running."""
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], keys=[f"bogus{i}" for i in range(len(rows))])
    with pytest.raises(InvalidParameterError, match="is not a document"):
        _trainer(_model(), rows, tmp_path, callback).train()
    record = ledger.run(callback.run.run_id)
    assert record.status == "failed" and "is not a document" in record.error
    assert record.error.count("is not a document") == 1  # said once, not again for the buffer at the end


def test_a_run_left_open_is_failed_when_training_begins_again(tiny, tmp_path):
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="retried")
    trainer = _trainer(_model(), rows, tmp_path, callback, max_steps=2, save_steps=10)

    def out_of_memory(module, args):
        raise RuntimeError("out of memory")

    handle = trainer.model.register_forward_pre_hook(out_of_memory)
    with pytest.raises(RuntimeError):
        trainer.train()  # no `with callback`: the run stays open
    first = callback.run.run_id
    assert ledger.run(first).status == "running"
    handle.remove()
    trainer.train()
    assert ledger.run(first).status == "failed" and "began again" in ledger.run(first).error
    assert ledger.run(callback.run.run_id).status == "finished" and callback.run.run_id != first


def test_training_again_with_the_same_callback_continues_the_lineage(tiny, tmp_path):
    """`trainer.train()` a second time trains the same model further: the second run's starting
    weights were a new root version, so the final version's lineage left out the first run's data
    (found by stranger pass 47). The second run now starts on the first run's version."""
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="twice")
    trainer = _trainer(_model(), rows, tmp_path, callback, max_steps=2, save_steps=10)
    trainer.train()
    first = callback.version
    trainer.train()
    second = callback.version
    assert ledger.run(second.run_id).base_version == first.version_id and second.version_id != first.version_id
    lineage = ledger.lineage(second)
    assert first.version_id in lineage.versions.column("version_id").to_pylist()
    assert [(d.dataset_id, d.examples) for d in lineage.datasets] == [("tiny@1", 16)]  # 2 runs x 2 steps x 4


def test_training_again_with_a_callback_given_base_continues_the_lineage_too(tiny, tmp_path):
    """With base= (the pretrained weights, committed before), a second `trainer.train()` from the
    weights the first ended with was again based on base=: its lineage left out the first run's
    data (8 examples of 16). It starts on the first run's version, as without base=; weights
    changed in between keep base= as the caller named it."""
    ledger, rows = tiny
    model = _model()
    pretrained = ledger.commit({name: t.clone() for name, t in model.state_dict().items()}, message="pretrained")
    callback = ProvenanceCallback(ledger, datasets=["tiny"], base=pretrained, message="twice")
    trainer = _trainer(model, rows, tmp_path, callback, max_steps=2, save_steps=10)
    trainer.train()
    first = callback.version
    assert ledger.run(first.run_id).base_version == pretrained.version_id
    trainer.train()
    second = callback.version
    assert ledger.run(second.run_id).base_version == first.version_id and second.parents == [first.version_id]
    assert [(d.dataset_id, d.examples) for d in ledger.lineage(second).datasets] == [("tiny@1", 16)]
    trainer.model.load_state_dict(ledger.checkout(pretrained))  # back to the pretrained weights: base= again
    trainer.train()
    assert ledger.run(callback.version.run_id).base_version == pretrained.version_id
    assert [(d.dataset_id, d.examples) for d in ledger.lineage(callback.version).datasets] == [("tiny@1", 8)]
    assert len(ledger.versions()) == 4  # pretrained and the three runs' versions: no starting weights committed


def test_resuming_from_a_checkpoint_logs_only_the_steps_trained_again(tiny, tmp_path):
    """Two steps an epoch: the run resumes in the second epoch, one step into it."""
    ledger, rows = tiny
    rows = rows[:16]
    first = ProvenanceCallback(ledger, datasets=["tiny"], message="first")
    trainer = _trainer(_model(), rows, tmp_path, first, gradient_accumulation_steps=2)
    trainer.train()
    again = ProvenanceCallback(ledger, datasets=["tiny"], message="resumed")
    resumed = _trainer(_model(), rows, tmp_path, again, gradient_accumulation_steps=2)
    seen = _watch(resumed, rows)
    with pytest.warns(ProvenanceWarning, match="training resumed at step 3: this run records the data of the steps "
                      "from there on"):  # and not of the steps before: said, not left to be found out
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    logged = logged_by_step(ledger, again.run.run_id)
    assert_same_per_step(logged, seen)
    assert sorted(logged) == [3, 4, 5]
    before = logged_by_step(ledger, first.run.run_id)
    assert all(sorted(logged[s]) == sorted(before[s]) for s in (3, 4, 5))  # the same batches as the first time
    assert ledger.run(again.run.run_id).params["start_step"] == 3


def test_the_keys_trained_before_a_checkpoint_are_written_when_it_is_saved(tiny, tmp_path):
    """A run killed after a checkpoint kept only the keys it had flushed (4 of 56 in pass 36): the
    record of what the checkpoint was trained on waited in memory. They are written at each save."""
    from transformers import TrainerCallback

    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="saves", flush_every=10_000)
    written: dict[int, list[int]] = {}

    class AtSave(TrainerCallback):  # what the ledger holds when the checkpoint is on disk
        def on_save(self, args, state, control, **kwargs):
            written[state.global_step] = sorted(set(ledger.run_examples(callback.run.run_id).column("step").to_pylist()))

    trainer = _trainer(_model(), rows, tmp_path, callback, save_steps=2)
    trainer.add_callback(AtSave())
    trainer.train()
    assert written[2] == [0, 1] and written[4] == [0, 1, 2, 3]


def test_with_load_best_model_at_end_each_save_is_the_version_of_its_own_weights(tiny, tmp_path):
    """With load_best_model_at_end the Trainer loads its best checkpoint (step 2) back when
    training ends: checkpoints[6] was the run's version, which holds step 2's weights, and the
    weights saved at step 6 were in no version. The last save is a checkpoint of its own, and a
    warning says the run's version is the best checkpoint's weights, credited with every step."""
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="best")
    trainer = _trainer(_model(), rows, tmp_path, callback, save_steps=2, eval_strategy="steps", eval_steps=2,
                       learning_rate=0.5, load_best_model_at_end=True, metric_for_best_model="loss",
                       greater_is_better=True, eval_dataset=rows[:8])
    with pytest.warns(ProvenanceWarning, match=r"loaded its best checkpoint back .*checkpoint-2\): the run's version "
                                               r"holds those weights, and its lineage counts the data of every step "
                                               r"the run trained \(to step 5\)"):
        trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    assert sorted(callback.checkpoints) == [2, 4, 6]
    for step, version in callback.checkpoints.items():  # each the weights the Trainer saved at its step
        saved = load_file(str(tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors"))
        stored = ledger.checkout(version)
        assert all(torch.equal(stored[k], saved[k]) for k in saved), step
    assert callback.checkpoints[6] != callback.version
    final = ledger.checkout(callback.version)  # the weights the Trainer ends with: the best checkpoint's
    assert all(torch.equal(final[k], t.cpu()) for k, t in trainer.model.state_dict().items())
    assert all(torch.equal(final[k], t) for k, t in ledger.checkout(callback.checkpoints[2]).items())
    assert ledger.run(callback.run.run_id).n_logged == 6 * 4


def test_what_cannot_be_followed_is_refused_before_anything_is_written(tiny, tmp_path):
    ledger, rows = tiny
    written = len(ledger.sql("SELECT run_id FROM runs").to_pylist()), len(ledger.versions())
    with pytest.raises(InvalidParameterError, match="datasets="):
        _trainer(_model(), rows, tmp_path, ProvenanceCallback(ledger, message="m")).train()
    unkeyed = [{k: v for k, v in r.items() if k != "key"} for r in rows]
    with pytest.raises(InvalidParameterError, match="'key'"):
        _trainer(_model(), unkeyed, tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], message="m")).train()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(rows)

    with pytest.raises(InvalidParameterError, match="IterableDataset"):
        _trainer(_model(), Stream(), tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], message="m")).train()
    with pytest.raises(InvalidParameterError, match="in_order"):
        _trainer(_model(), rows, tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], message="m"),
                 dataloader_num_workers=1, dataloader_in_order=False).train()
    from provenance.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no dataset 'nope'"):  # it left a "starting weights" version
        _trainer(_model(), rows, tmp_path, ProvenanceCallback(ledger, datasets=["nope"], message="m")).train()
    assert (len(ledger.sql("SELECT run_id FROM runs").to_pylist()), len(ledger.versions())) == written


def test_datasets_naming_no_dataset_is_refused_before_anything_is_written(tiny, tmp_path):
    """ProvenanceCallback(datasets=[]) committed the starting weights and started a run that failed
    at the first batch ("this run declared no datasets, so its examples cannot be logged"),
    leaving both behind. It is refused when the callback is made."""
    ledger, rows = tiny
    for empty in ([], {}, ()):
        with pytest.raises(InvalidParameterError, match=re.escape(f"datasets={empty!r} names no dataset: name the registered "
                                                                  "datasets the training set holds")):
            ProvenanceCallback(ledger, datasets=empty, message="m")
    assert ledger.runs() == [] and ledger.versions() == []


def test_a_ledger_that_is_not_a_ledger_is_refused_when_the_callback_is_made(tiny, tmp_path):
    """ProvenanceCallback(None) or ProvenanceCallback("path/to/ledger") was taken, and training
    failed when it began with "AttributeError: 'str' object has no attribute 'dataset'";
    datasets=5 with "TypeError: object of type 'int' has no len()". Both are refused by name."""
    ledger, rows = tiny
    for wrong, shown in ((None, "NoneType None"), (str(tmp_path), f"str {str(tmp_path)!r}")):
        with pytest.raises(InvalidParameterError, match=re.escape(f"ledger must be a Ledger (Ledger.open(PATH) or "
                                                                  f"Ledger.open('http://HOST:PORT')), got {shown}")):
            ProvenanceCallback(wrong, datasets=["tiny"], message="m")
    with pytest.raises(InvalidParameterError, match=re.escape("datasets must name registered datasets (a list of "
                                                              "names, or a mapping of names to epochs), got int 5")):
        ProvenanceCallback(ledger, datasets=5, message="m")
    assert ProvenanceCallback(ledger, datasets={"tiny"}, message="m").datasets == {"tiny"}  # a set names datasets too
    assert ledger.runs() == [] and ledger.versions() == []


def test_training_that_trains_no_batch_commits_no_version(tiny, tmp_path):
    """num_train_epochs=0 trained nothing, yet the run committed a version whose lineage counted a
    whole epoch of the dataset (a run that logs nothing counts its declared epochs): 64 examples.
    The run ends without a version, and a warning says why."""
    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="m")
    with pytest.warns(UserWarning, match="training ended before a batch was trained .* ended without a version"):
        _trainer(_model(), rows, tmp_path, callback, max_steps=-1, num_train_epochs=0, save_strategy="no").train()
    record = ledger.run(callback.run.run_id)
    assert (record.status, record.n_logged, record.version_id, callback.version) == ("finished", 0, None, None)
    assert [v.message for v in ledger.versions()] == ["m: starting weights"]


def test_keys_that_are_not_strings_are_refused_before_anything_is_written(tiny, tmp_path):
    """keys=[0, 1, ...] (a numeric id column) committed the starting weights and started a run,
    which failed at its first batch ("document keys must be strings: got 6 (int) at step 0");
    keys="abc" was "keys has 3 entries". Both are refused when training begins, naming the entry."""
    ledger, rows = tiny
    with pytest.raises(InvalidParameterError, match=r"keys\[0\] is 0 \(int\); document keys are strings"):
        _trainer(_model(), rows, tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], keys=list(range(len(rows))),
                                                              message="m")).train()
    with pytest.raises(InvalidParameterError, match="keys is one string; give one document key per row"):
        _trainer(_model(), rows, tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], keys="doc0", message="m")).train()
    assert ledger.runs() == [] and ledger.versions() == []


def test_the_callback_changes_nothing_the_trainer_does(tiny, tmp_path):
    """Over three epochs (each shuffled by its own epoch seed), the batches and the weights are those
    of the same training without the callback."""
    ledger, rows = tiny
    rows = rows[:16]  # two steps an epoch

    def train(callbacks):
        trainer = Trainer(model=_model(), args=TrainingArguments(
            output_dir=str(tmp_path / "plain"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
            max_steps=6, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True),
            train_dataset=rows, callbacks=callbacks)
        seen = _watch(trainer, rows)
        trainer.train()
        return seen, trainer.model.state_dict()

    plain, plain_state = train([])
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="tracked")
    tracked, tracked_state = train([callback])
    assert tracked == plain and plain[0] != plain[2]  # the same order, and a new order each epoch
    assert all(torch.equal(plain_state[k], tracked_state[k]) for k in plain_state)
    assert_same_per_step(logged_by_step(ledger, callback.run.run_id), tracked)


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set")
def test_a_lora_model_is_committed_as_low_rank_patches_of_its_base(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    ledger, rows = tiny
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                                                         lora_dropout=0.0))
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="lora")
    trainer = _trainer(wrapped, rows, tmp_path, callback, max_steps=4, save_steps=2, learning_rate=1e-2)
    seen = _watch(trainer, rows)
    trainer.train()
    assert_same_per_step(logged_by_step(ledger, callback.run.run_id), seen)

    base = ledger.checkout(callback.run.base)  # the base model's own weights, under their own names
    assert sorted(base) == sorted(start) and all(torch.equal(base[k], start[k]) for k in start)
    targeted = {f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)}
    for version in (callback.version, *callback.checkpoints.values()):
        manifest = ledger.manifest(version)
        assert {n for n, p in manifest.items() if p.encoding == "low_rank"} == targeted
        assert {p.encoding for n, p in manifest.items() if n not in targeted} == {"unchanged"}
    assert sorted(callback.checkpoints) == [2, 4]
    final = ledger.checkout(callback.version)
    merged = wrapped.merge_and_unload().state_dict()  # PEFT's own merge of the trained adapter
    assert sorted(final) == sorted(merged)
    for name in merged:
        torch.testing.assert_close(final[name], merged[name], rtol=1e-6, atol=1e-6)
    assert not all(torch.equal(final[n], start[n]) for n in targeted)


def test_a_lora_adapter_trained_again_says_its_lineage_leaves_out_the_first_run(tiny, tmp_path):
    """A LoRA model trained a second time with the same callback went on from the adapter the
    first run trained, but its version (low-rank patches of the base model's weights) had the
    base as parent: its lineage silently held the second run's data only (8 examples of 16).
    A warning says so; an adapter started afresh is not warned about."""
    peft = pytest.importorskip("peft")
    ledger, rows = tiny
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)
    wrapped = peft.get_peft_model(_model(), config)
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="lora")
    trainer = _trainer(wrapped, rows, tmp_path, callback, max_steps=2, save_strategy="no", learning_rate=1e-2)
    trainer.train()
    first = callback.version
    with pytest.warns(ProvenanceWarning, match=rf"the LoRA adapter trains on from the weights of version "
                                               rf"{first.version_id[:12]} \(run {first.run_id[:12]}\).*does not hold "
                                               "the data of that run"):
        trainer.train()
    assert [(d.dataset_id, d.examples) for d in ledger.lineage(callback.version).datasets] == [("tiny@1", 8)]
    fresh = peft.get_peft_model(_model(), config)
    trainer = _trainer(fresh, rows, tmp_path, callback, max_steps=2, save_strategy="no", learning_rate=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvenanceWarning)
        trainer.train()  # another adapter: nothing goes on, nothing to say


def test_an_adapter_that_cannot_be_committed_is_refused_before_training(tiny, tmp_path):
    """A DoRA (or lora_bias) adapter trained to the end, then failed at the commit, naming a
    temporary folder: refused when training begins, before anything is written."""
    peft = pytest.importorskip("peft")
    ledger, rows = tiny
    written = len(ledger.sql("SELECT run_id FROM runs").to_pylist()), len(ledger.versions())
    for options, refused in (({"use_dora": True}, "use_dora=True"), ({"lora_bias": True}, "lora_bias=True")):
        wrapped = peft.get_peft_model(_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                                fan_in_fan_out=True, **options))
        trainer = _trainer(wrapped, rows, tmp_path, ProvenanceCallback(ledger, datasets=["tiny"], message="dora"),
                           max_steps=4)
        with pytest.raises(InvalidParameterError, match=rf"ProvenanceCallback: adapter 'default': {refused} cannot be "
                                                        r"read as low-rank patches of the base model"):
            trainer.train()
        assert trainer.state.global_step == 0  # no step trained for nothing
    assert (len(ledger.sql("SELECT run_id FROM runs").to_pylist()), len(ledger.versions())) == written


def test_a_datasets_dataset_trains_with_the_keys_the_ledger_gave_its_rows(ledger, tmp_path):
    hf = pytest.importorskip("datasets")
    from provenance.integrations.hf_datasets import with_keys

    texts = [r["text"] for r in _records()]
    corpus = hf.Dataset.from_dict({"text": texts})
    ledger.register_dataset("hf-tiny", corpus)  # no id field: a row's key is its shard and row
    keyed = with_keys(corpus)
    tokenized = keyed.map(lambda row: {"input_ids": [VOCAB[w] for w in row["text"].split()],
                                       "labels": [VOCAB[w] for w in row["text"].split()]}, remove_columns=["text"])
    callback = ProvenanceCallback(ledger, datasets=["hf-tiny"], keys=tokenized["key"])  # the Trainer drops the column
    trainer = _trainer(_model(), tokenized, tmp_path, callback, max_steps=3, save_strategy="no")
    seen = _watch(trainer, [{"input_ids": r["input_ids"], "key": r["key"]} for r in tokenized])
    trainer.train()
    assert sum(map(len, seen.values())) == 12
    assert_same_per_step(logged_by_step(ledger, callback.run.run_id), seen)
    assert ledger.run(callback.run.run_id).n_logged == 12


def test_a_datasets_key_column_that_is_not_strings_is_refused_before_anything_is_written(ledger, tmp_path):
    """A datasets.Dataset that keeps its key column (remove_unused_columns=False, a collator that
    drops it) with integer ids committed the starting weights and started a run, which failed at
    its first batch ("document keys must be strings: got 4 (int)"); keys= of the same ints was
    refused before anything was written. The column is refused alike, naming the row."""
    hf = pytest.importorskip("datasets")
    records = _records()
    ledger.register_dataset("numbered", [{"id": i, "text": r["text"]} for i, r in enumerate(records)], id_field="id")
    rows = hf.Dataset.from_dict({"id": list(range(N_DOCS)), "input_ids": [_tokenize({**r, "key": ""})["input_ids"]
                                                                          for r in records]})

    def collate(batch):
        ids = torch.tensor([row["input_ids"] for row in batch])
        return {"input_ids": ids, "labels": ids}

    def trainer(data):
        return Trainer(model=_model(), args=TrainingArguments(str(tmp_path / "out"), max_steps=2, report_to=[],
                                                              use_cpu=True, remove_unused_columns=False, disable_tqdm=True),
                       train_dataset=data, data_collator=collate, callbacks=[callback])

    callback = ProvenanceCallback(ledger, datasets=["numbered"], key_column="id", message="m")
    with pytest.raises(InvalidParameterError, match=re.escape("row 0 of the training set's 'id' column is 0 (int); "
                                                              "document keys are strings (a numeric id 7 is the key '7')")):
        trainer(rows).train()
    assert ledger.runs() == [] and ledger.versions() == []
    trainer(rows.cast_column("id", hf.Value("string"))).train()  # what the message says to do works
    assert ledger.run(callback.run.run_id).n_logged == 2 * 8


def test_a_row_without_a_key_fails_the_run_even_outside_a_with_block(tiny, tmp_path):
    """A list of rows whose 6th lacks its key stopped training at the batch that held it, but the
    run was left running (the Trainer has no hook for exceptions), with the keys of the steps
    before unwritten; a key the run refuses failed it. Both fail the run now."""
    ledger, rows = tiny
    rows = [dict(r) for r in rows]
    del rows[5]["key"]
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="m")
    trainer = _trainer(_model(), rows, tmp_path, callback, train_sampling_strategy="sequential", save_strategy="no")
    with pytest.raises(InvalidParameterError, match="row 5 of the training set has no string 'key' field"):
        trainer.train()
    record = ledger.run(callback.run.run_id)
    assert record.status == "failed" and "row 5 of the training set has no string 'key' field" in record.error
    logged = logged_by_step(ledger, record.run_id)
    assert {step: sorted(keys) for step, keys in logged.items()} == {0: ["doc0", "doc1", "doc2", "doc3"]}  # kept


def test_a_save_at_the_last_step_is_kept_when_training_fails_before_the_final_commit(tiny, tmp_path):
    """A save at the last step waits for the final commit, its version the run's. A reporting
    callback that raised as it logged the training's metrics (after that save) failed the run,
    and checkpoint-6, trained on every step, was on disk but in no version (checkpoints: [3]).
    It is committed as a checkpoint, as a save held for the next batch is."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):  # a tracking server that cannot be reached
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "train_runtime" in logs:
                raise ConnectionError("tracking server unreachable")

    ledger, rows = tiny
    callback = ProvenanceCallback(ledger, datasets=["tiny"], message="m")
    trainer = _trainer(_model(), rows, tmp_path, callback)
    trainer.add_callback(Reporter())
    with pytest.raises(ConnectionError), callback:
        trainer.train()
    record = ledger.run(callback.run.run_id)
    assert (record.status, record.n_logged, callback.version) == ("failed", 24, None)
    assert sorted(callback.checkpoints) == [3, 6]
    last = callback.checkpoints[6]
    assert last.parents == [record.base_version] and f"checkpoint at step 6 of run {record.run_id[:12]}" in last.message
    saved = load_file(str(tmp_path / "out" / "checkpoint-6" / "model.safetensors"))
    stored = ledger.checkout(last)
    assert all(torch.equal(stored[k], saved[k]) for k in saved)
    assert len(ledger.versions()) == 3  # the starting weights and the two saves


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests import serving

    with serving.running(tmp_path_factory.mktemp("trainer") / "ledger") as srv:
        yield srv


def test_a_remote_ledger_records_the_same_run(server, tmp_path):
    remote = server.ledger()
    remote.register_dataset("tiny-remote", _records(), id_field="id")
    rows = [_tokenize({"key": r["id"], "text": r["text"]}) for r in _records()]
    callback = ProvenanceCallback(remote, datasets=["tiny-remote"], message="over HTTP")
    trainer = _trainer(_model(), rows, tmp_path, callback, max_steps=4, save_steps=2, gradient_accumulation_steps=2)
    seen = _watch(trainer, rows)
    with callback:
        trainer.train()
    assert_same_per_step(logged_by_step(remote, callback.run.run_id), seen)
    assert remote.run(callback.run.run_id).status == "finished" and sorted(callback.checkpoints) == [2, 4]
    final = remote.checkout(callback.version)
    assert all(torch.equal(final[k], v) for k, v in trainer.model.state_dict().items())
    assert [(d.dataset_id, d.examples) for d in remote.lineage(callback.version).datasets] == [("tiny-remote@1", 32)]



@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set")
def test_a_lora_model_through_a_server_is_stored_as_the_same_low_rank_patches(server, tmp_path):
    """A ledger server takes no adapter folder: the callback sends the applied state with the
    factors, and the server stores low-rank patches that check out as PEFT's own merge."""
    peft = pytest.importorskip("peft")
    remote = server.ledger()
    if "tiny-remote" not in {d.name for d in remote.datasets()}:
        remote.register_dataset("tiny-remote", _records(), id_field="id")
    rows = [_tokenize({"key": r["id"], "text": r["text"]}) for r in _records()]
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                                      lora_dropout=0.0))
    callback = ProvenanceCallback(remote, datasets=["tiny-remote"])
    _trainer(lora, rows, tmp_path, callback, max_steps=4, save_steps=2, learning_rate=1e-2).train()
    targeted = {f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)}
    for version in (callback.version, *callback.checkpoints.values()):
        manifest = remote.manifest(version)
        assert {n for n, p in manifest.items() if p.encoding == "low_rank"} == targeted
        assert {p.encoding for n, p in manifest.items() if n not in targeted} == {"unchanged"}
    base = remote.checkout(callback.run.base)
    assert all(torch.equal(base[k], start[k]) for k in start)
    final = remote.checkout(callback.version)
    merged = lora.merge_and_unload().state_dict()
    for name in merged:
        torch.testing.assert_close(final[name], merged[name], rtol=1e-6, atol=1e-6)


def test_the_run_starts_from_a_version_with_the_files_from_pretrained_needs(tiny, tmp_path):
    """The starting weights are committed with the model's config, generation config and the
    Trainer's tokenizer, so every version of the run checks out as a folder from_pretrained loads."""
    tokenizers = pytest.importorskip("tokenizers")
    ledger, rows = tiny
    vocab = VOCAB | {"[UNK]": len(VOCAB), "[PAD]": len(VOCAB) + 1}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]")
    callback = ProvenanceCallback(ledger, datasets=["tiny"])
    trainer = Trainer(model=_model(), args=TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, save_steps=1, report_to=[],
        use_cpu=True, disable_tqdm=True), train_dataset=rows, processing_class=tokenizer, callbacks=[callback])
    trainer.train()
    base_files = {f.name for f in ledger.model_files(callback.run.base)}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= base_files
    for version in (callback.version, callback.checkpoints[1]):  # they have the base's files
        assert {f.name for f in ledger.model_files(version)} == base_files
    folder = ledger.checkout_hf(callback.version, tmp_path / "final")
    loaded = GPT2LMHeadModel.from_pretrained(folder)
    state = trainer.model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in loaded.state_dict())
    again = transformers.AutoTokenizer.from_pretrained(folder)
    assert again("d3 w5")["input_ids"] == [VOCAB["d3"], VOCAB["w5"]]
