"""A two-process (gloo, CPU) Lightning ``ddp`` fit with ProvenanceCallback, started from
tests/test_integration_distributed.py: ``ddp_lightning.py LEDGER OUT`` (Lightning starts the second
process by running this script again). Each rank writes what it trained on, by step, to OUT/rankN.json.
``ddp_lightning.py LEDGER OUT RANK STEP``: that rank's training_step raises at that step (its file says the error)."""

import json
import os
import sys
from collections import defaultdict

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from provenance import Ledger
from provenance.integrations.lightning import ProvenanceCallback

root, out = sys.argv[1], sys.argv[2]
fail_rank, fail_step = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (None, None)
rows = []
for i in range(64):
    x = torch.linspace(0, 1, 8) * (i + 1)
    x[0] = i  # the row number, which training_step records
    rows.append({"key": f"doc{i}", "x": x, "y": torch.tensor([float(i % 7)])})

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)
        self.seen = defaultdict(list)
    def training_step(self, batch, batch_idx):
        if self.global_rank == fail_rank and self.global_step == fail_step:
            raise RuntimeError(f"rank {fail_rank} diverged at step {fail_step}")
        self.seen[self.global_step].extend(f"doc{int(v)}" for v in batch["x"][:, 0].tolist())
        return torch.nn.functional.mse_loss(self.layer(batch["x"] / 64), batch["y"])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

ledger = Ledger.open(root)
callback = ProvenanceCallback(ledger, datasets=["tiny"], message="ddp lightning")
ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), every_n_train_steps=2, save_top_k=-1)
trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[callback, ckpt])
module = Tiny()
error = None
try:
    trainer.fit(module, DataLoader(rows, batch_size=4, shuffle=True))
except Exception as exc:
    error = repr(exc)
    raise
finally:
    json.dump({"seen": module.seen, "run": callback.run.run_id, "version": callback.version and callback.version.version_id,
               "checkpoints": sorted(callback.checkpoints), "error": error,
               "weights": {k: v.sum().item() for k, v in module.state_dict().items()}},
              open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w"))
