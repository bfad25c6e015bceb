"""What the training callbacks cost: the same training with and without ``ProvenanceCallback``.

A tiny GPT-2 (2 layers, 64 wide, built from its config) trains ``--steps`` optimizer steps on CPU,
batches of 8 rows of 32 tokens drawn from 2,048 generated documents registered in a fresh local
ledger, with a checkpoint saved every ``--save-every`` steps in both arms (the callback commits
each save, the starting weights and the final weights). Arms alternate, ``--rounds`` times each,
so that the machine's drift hits both alike; the figure is the median time per step of each arm
and their ratio.

- ``trainer``: ``transformers.Trainer`` (its own checkpoint saving in both arms).
- ``lightning``: the same model in a ``LightningModule``, ``lightning.Trainer`` with a
  ``ModelCheckpoint`` every ``--save-every`` steps in both arms.

Usage: ``.venv/bin/python benchmarks/integrations.py [--part trainer] [--steps 1000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from provenance import Ledger  # noqa: E402

N_DOCS, WORDS, BATCH = 2048, 32, 8


def _records() -> list[dict]:
    return [{"id": f"doc{i}", "text": " ".join(f"w{(i * 31 + j * 7) % 500}" for j in range(WORDS))} for i in range(N_DOCS)]


def _rows() -> list[dict]:
    return [{"key": r["id"], "input_ids": [int(w[1:]) for w in r["text"].split()]} for r in _records()]


def _model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=WORDS,
                                      bos_token_id=0, eos_token_id=0))


def trainer_arm(tmp: Path, steps: int, save_every: int, tracked: bool) -> tuple[float, int]:
    from transformers import Trainer, TrainingArguments

    from provenance.integrations.transformers import ProvenanceCallback

    rows = [{**r, "labels": r["input_ids"]} for r in _rows()]
    callbacks, ledger = [], None
    if tracked:
        ledger = Ledger.init(tempfile.mkdtemp(dir=tmp))
        ledger.register_dataset("bench", _records(), id_field="id")
        callbacks = [ProvenanceCallback(ledger, datasets=["bench"], message="benchmark")]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(dir=tmp), per_device_train_batch_size=BATCH, max_steps=steps,
                             save_steps=save_every, report_to=[], use_cpu=True, seed=0, logging_steps=10 * steps,
                             disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=_model(), args=args, train_dataset=rows, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    logged = ledger.run(callbacks[0].run.run_id).n_logged if tracked else 0
    return elapsed, logged


def lightning_arm(tmp: Path, steps: int, save_every: int, tracked: bool) -> tuple[float, int]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from provenance.integrations.lightning import ProvenanceCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=5e-5)

    rows = [{"key": r["key"], "input_ids": torch.tensor(r["input_ids"])} for r in _rows()]
    callbacks, ledger = [], None
    if tracked:
        ledger = Ledger.init(tempfile.mkdtemp(dir=tmp))
        ledger.register_dataset("bench", _records(), id_field="id")
        callbacks = [ProvenanceCallback(ledger, datasets=["bench"], message="benchmark")]
    saving = pl.callbacks.ModelCheckpoint(dirpath=tempfile.mkdtemp(dir=tmp), every_n_train_steps=save_every, save_top_k=-1)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[saving, *callbacks])
    loader = DataLoader(rows, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    trainer.fit(Module(), loader)
    elapsed = time.perf_counter() - start
    logged = ledger.run(callbacks[0].run.run_id).n_logged if tracked else 0
    return elapsed, logged


ARMS = {"trainer": trainer_arm, "lightning": lightning_arm}
HOOKS = {"trainer": ("on_train_begin", "on_substep_end", "on_step_end", "on_save", "on_train_end"),
         "lightning": ("on_train_start", "on_train_batch_start", "on_train_batch_end", "on_save_checkpoint",
                       "on_train_end")}
IN_HOOKS: list[float] = []  # seconds spent inside the callback's hooks, per tracked run


def _timed_hooks(part: str) -> None:
    """Make the callback class count the wall time its hooks take (the time training waits on it;
    a checkpoint's commit on the callback's own thread is not in it)."""
    module = __import__(f"provenance.integrations.{'transformers' if part == 'trainer' else 'lightning'}",
                        fromlist=["ProvenanceCallback"])
    cls = module.ProvenanceCallback
    for name in HOOKS[part]:
        hook = getattr(cls, name)

        def timed(self, *args, _hook=hook, **kwargs):
            start = time.perf_counter()
            try:
                return _hook(self, *args, **kwargs)
            finally:
                IN_HOOKS[-1] += time.perf_counter() - start

        setattr(cls, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", choices=sorted(ARMS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # one core for the model, as a data-parallel rank on a shared host would have
    print(f"| training | steps | plain, ms/step (median of {args.rounds}) | with the callback | overhead (median of "
          "paired runs) | in the hooks, ms/step | examples logged |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-integrations-") as tmp:
        for part in args.part or ["trainer", "lightning"]:
            arm = ARMS[part]
            _timed_hooks(part)
            IN_HOOKS.append(0.0)
            arm(Path(tmp), 20, 10, True)  # warm: imports, first compile of anything lazy
            times: dict[bool, list[float]] = {False: [], True: []}
            hooks, logged = [], 0
            for round_ in range(args.rounds):
                for tracked in ((False, True) if round_ % 2 == 0 else (True, False)):
                    IN_HOOKS.append(0.0)
                    elapsed, n = arm(Path(tmp), args.steps, args.save_every, tracked)
                    times[tracked].append(elapsed / args.steps * 1000)
                    if tracked:
                        hooks.append(IN_HOOKS[-1] / args.steps * 1000)
                    logged = max(logged, n)
            plain, with_cb = statistics.median(times[False]), statistics.median(times[True])
            paired = statistics.median(t / p - 1 for p, t in zip(times[False], times[True]))
            in_hooks = statistics.median(hooks)
            print(f"| {part} | {args.steps:,} | {plain:.2f} ({', '.join(f'{t:.2f}' for t in times[False])}) "
                  f"| {with_cb:.2f} ({', '.join(f'{t:.2f}' for t in times[True])}) "
                  f"| {100 * paired:+.1f}% | {in_hooks:.3f} ({100 * in_hooks / plain:.1f}%) | {logged:,} |", flush=True)


if __name__ == "__main__":
    main()
