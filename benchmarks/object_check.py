"""What checking an already-stored object costs a commit.

``ObjectStore.put`` used to skip a tensor whose object file existed; it now checks that file
(size, header, xxh3-128 of the bytes) and rewrites it when it is damaged. The check runs only when
the object exists: a commit of new tensors is unchanged. The worst case is a commit whose every
tensor is already stored (the same checkpoint committed again, or a fine-tune that froze most
groups but hands back a full state). Side by side in one run, median of ``--repeats``, on a state
with GPT-2 small's shapes (124M float32 parameters, random weights):

1. ``ledger.commit`` of a state whose objects are all stored, with the check;
2. the same with the check switched off (the old behaviour), to isolate its cost;
3. ``safetensors.torch.save_file`` of the same state, unsynced (what a user would otherwise run).

Usage: ``.venv/bin/python benchmarks/object_check.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from versions import gpt2_small_state  # noqa: E402

from provenance import Ledger  # noqa: E402
from provenance.objects import ObjectStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    state = gpt2_small_state()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    work = Path(tempfile.mkdtemp(prefix="prov-object-check-"))
    try:
        ledger = Ledger.init(work / "ledger")
        ledger.commit(state, message="first: writes every object", sync=False)
        checked, unchecked, saved = [], [], []
        intact = ObjectStore.__dict__["_intact"]  # the staticmethod itself, to put back
        for i in range(args.repeats):
            t = time.perf_counter()
            ledger.commit(state, message=f"again {i}", sync=False)
            checked.append(time.perf_counter() - t)
            ObjectStore._intact = staticmethod(lambda path, tensor, address: True)  # the old skip
            try:
                t = time.perf_counter()
                ledger.commit(state, message=f"again, unchecked {i}", sync=False)
                unchecked.append(time.perf_counter() - t)
            finally:
                ObjectStore._intact = intact
            t = time.perf_counter()
            save_file(state, str(work / "state.safetensors"))
            saved.append(time.perf_counter() - t)
        rows = {"bytes": nbytes, "commit_checked_s": statistics.median(checked),
                "commit_unchecked_s": statistics.median(unchecked), "save_file_s": statistics.median(saved)}
        rows["check_cost_s"] = rows["commit_checked_s"] - rows["commit_unchecked_s"]
        rows["checked_vs_unchecked"] = rows["commit_unchecked_s"] / rows["commit_checked_s"]
        rows["checked_vs_save_file"] = rows["save_file_s"] / rows["commit_checked_s"]
        rows["check_gb_per_s"] = nbytes / rows["check_cost_s"] / 1e9 if rows["check_cost_s"] > 0 else None
        print(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
