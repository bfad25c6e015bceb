"""One rank of a two-process (gloo, CPU) Trainer run with ProvenanceCallback, started by torchrun from
tests/test_integration_distributed.py: ``ddp_trainer.py LEDGER OUT``. Each rank writes what it trained on,
by step, to OUT/rankN.json."""

import json
import os
import sys
from collections import defaultdict

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from provenance import Ledger
from provenance.integrations.transformers import ProvenanceCallback

root, out = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
records = [{"id": f"doc{i}", "text": " ".join([f"d{i}"] + [f"w{(i * 7 + j) % 40}" for j in range(7)])} for i in range(64)]
vocab = {w: n for n, w in enumerate(sorted({w for r in records for w in r["text"].split()}))}
rows = [{"input_ids": [vocab[w] for w in r["text"].split()], "labels": [vocab[w] for w in r["text"].split()], "key": r["id"]} for r in records]
ledger = Ledger.open(root)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0))
callback = ProvenanceCallback(ledger, datasets=["tiny"], message="ddp")
args = TrainingArguments(output_dir=os.path.join(out, "run"), per_device_train_batch_size=4, max_steps=4, save_steps=2,
                         report_to=[], use_cpu=True, seed=0, disable_tqdm=True, ddp_backend="gloo")
trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
key_of = {tuple(r["input_ids"]): r["key"] for r in rows}
seen = defaultdict(list)
def hook(module, a, kw):
    for ids in kw["input_ids"].tolist():
        seen[trainer.state.global_step].append(key_of[tuple(ids)])
trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
with callback:
    trainer.train()
json.dump({"seen": seen, "run": callback.run.run_id, "version": callback.version and callback.version.version_id,
           "world": int(os.environ["WORLD_SIZE"]), "weights": {k: v.sum().item() for k, v in trainer.model.state_dict().items()}},
          open(os.path.join(out, f"rank{rank}.json"), "w"))
