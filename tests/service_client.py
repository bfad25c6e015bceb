"""A training job for the service's fault and load tests: a bounded loop of mixed calls against a
ledger server, each acknowledged write appended to a JSON-lines file with what it should hold.

``python tests/service_client.py URL TOKEN OUT CLIENT N [--reads]``
"""

from __future__ import annotations

import json
import sys
import time

import torch

from provenance import Ledger
from provenance.errors import AlreadyAppliedError


def state(client: int, i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(client * 100_003 + i)
    return {"w": torch.randn(32, 16, generator=g), "b": torch.randint(0, 1000, (7,), generator=g)}


def main() -> int:
    url, token, out, client, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    reads = "--reads" in sys.argv
    ledger = Ledger.open(url, token=token)
    ledger.retries = 12  # rides out a server restart (backoff up to 5 s a try)
    errors = 0
    last: dict[str, str] = {}  # what this client wrote last: its reads ask for these
    with open(out, "a", encoding="utf-8") as log:
        def ack(**row) -> None:
            log.write(json.dumps(row) + "\n")
            log.flush()

        cycle = 6 if reads else 4  # a registration, a commit, a run, then reads (three sets of six) or a skip
        for i in range(n):
            op = i % cycle
            try:
                if op == 0:
                    name = f"c{client}-d{i}"
                    docs = [{"id": f"{name}-{j}", "text": f"client {client} item {i} document {j} words"} for j in range(20)]
                    r = ledger.register_dataset(name, docs, id_field="id")
                    last["dataset"] = r.dataset.dataset_id
                    ack(op="register", dataset=r.dataset.dataset_id, documents=r.dataset.n_documents)
                elif op == 1:
                    v = ledger.commit(state(client, i), message=f"c{client} v{i}")
                    ack(op="commit", version=v.version_id, client=client, i=i)
                elif op == 2:
                    name = f"c{client}-d{i - 2}"  # registered two operations before
                    with ledger.start_run(datasets=[name], message=f"c{client} run {i}", flush_every=8) as run:
                        run.log_examples([f"{name}-{j}" for j in range(20)], step=0)
                        v = run.commit(state(client, i))
                    last.update(version=v.version_id, run=run.run_id)
                    ack(op="run", version=v.version_id, run=run.run_id, client=client, i=i, examples=20)
                elif reads and "version" in last:  # reads whose cost does not grow with the ledger: a version, its lineage, ...
                    ledger.version(last["version"])
                    ledger.lineage(last["version"])
                    ledger.dataset(last["dataset"])
                    ledger.run(last["run"])
                    ledger.manifest(last["version"])
                    ledger.shards(last["dataset"])
                    ack(op="read")
                else:
                    ack(op="skip")
            except AlreadyAppliedError as exc:
                ack(op="applied-unknown", i=i, error=str(exc))
            except Exception as exc:  # counted: the test expects none
                errors += 1
                ack(op="error", i=i, error=f"{type(exc).__name__}: {exc}")
                time.sleep(0.2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
