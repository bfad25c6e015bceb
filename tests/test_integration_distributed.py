"""Both callbacks under distributed training: two CPU processes (gloo) train one model; every rank
logs the batches it trains on into one local ledger, process zero starts the run (the other
attaches to it), commits every checkpoint and the final weights, and ends the run.

Each rank records, independently of the callback, the keys of the inputs it trained on at each
step (from the token ids or the row number the inputs carry); the ledger's examples of the run
must be their union, step by step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from provenance import Ledger
from tests.logged import assert_same_per_step, logged_by_step
from tests.serving import free_port

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def _ledger(root: Path, records: list[dict]) -> Ledger:
    ledger = Ledger.init(root)
    ledger.register_dataset("tiny", records, id_field="id")
    return ledger


def _check(ledger: Ledger, out: Path, checkpoints: list[int]) -> None:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["run"] == ranks[1]["run"]  # one run: rank 1 attached to rank 0's
    assert ranks[0]["version"] is not None and ranks[1]["version"] is None  # process zero commits
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas equal
    seen: dict[int, list[str]] = defaultdict(list)
    for rank in ranks:
        for step, keys in rank["seen"].items():
            seen[int(step)] += keys
    assert all(rank["seen"] for rank in ranks)  # both ranks trained
    assert sorted(seen) == list(range(4))
    assert_same_per_step(logged_by_step(ledger, ranks[0]["run"]), seen)
    run = ledger.run(ranks[0]["run"])
    assert run.status == "finished" and run.n_logged == 32 and run.params["world_size"] == 2
    assert run.version_id == ranks[0]["version"]
    assert len(ledger.versions()) == 1 + len(checkpoints)  # base, checkpoints (the last one is the final version)


#: The workers' environment: provenance comes from the installed package, not from the repository
#: on PYTHONPATH (whose kernels/ folder would shadow the ``kernels`` distribution transformers imports);
#: other folders on it (a sitecustomize that maps the package elsewhere) stay.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
if _kept := [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "kernels").is_dir()]:
    _ENV["PYTHONPATH"] = os.pathsep.join(_kept)


def test_a_trainer_under_torchrun_logs_every_rank_and_commits_once(tmp_path):
    records = [{"id": f"doc{i}", "text": " ".join([f"d{i}"] + [f"w{(i * 7 + j) % 40}" for j in range(7)])}
               for i in range(64)]
    ledger = _ledger(tmp_path / "ledger", records)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()),
                           str(HERE / "ddp_trainer.py"), str(tmp_path / "ledger"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    _check(ledger, tmp_path, [2, 4])


def test_a_lightning_ddp_fit_logs_every_rank_and_commits_once(tmp_path):
    ledger = _ledger(tmp_path / "ledger", [{"id": f"doc{i}", "text": f"document {i} of the tiny corpus"} for i in range(64)])
    done = subprocess.run([sys.executable, str(HERE / "ddp_lightning.py"), str(tmp_path / "ledger"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300,
                          env={**_ENV, "MASTER_PORT": str(free_port())})
    assert done.returncode == 0, done.stderr[-3000:]
    _check(ledger, tmp_path, [2, 4])
    assert json.loads((tmp_path / "rank0.json").read_text())["checkpoints"] == [2, 4]


def test_a_rank_that_raises_writes_the_examples_it_trained_on(tmp_path):
    """Process 1 raises at step 3: the run ends failed, and the examples of every step trained are
    there, those of process 1 too (it dropped the keys it had not written yet: step 2 had 4 of its
    8 examples; found by stranger pass 51)."""
    ledger = _ledger(tmp_path / "ledger", [{"id": f"doc{i}", "text": f"document {i} of the tiny corpus"} for i in range(64)])
    done = subprocess.run([sys.executable, str(HERE / "ddp_lightning.py"), str(tmp_path / "ledger"), str(tmp_path), "1", "3"],
                          capture_output=True, text=True, timeout=300, env={**_ENV, "MASTER_PORT": str(free_port())})
    assert done.returncode != 0 and "rank 1 diverged at step 3" in done.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert "rank 1 diverged at step 3" in ranks[1]["error"] and ranks[0]["run"] == ranks[1]["run"]
    seen: dict[int, list[str]] = defaultdict(list)
    for rank in ranks:
        for step, keys in rank["seen"].items():
            if int(step) < 3:  # process 0 trained on step 3's batch, but its update never came (process 1 was gone)
                seen[int(step)] += keys
    assert {step: len(keys) for step, keys in seen.items()} == {0: 8, 1: 8, 2: 8}
    assert_same_per_step(logged_by_step(ledger, ranks[0]["run"]), seen)
    run = ledger.run(ranks[0]["run"])
    assert run.status == "failed" and run.version_id is None and run.n_logged == 24
