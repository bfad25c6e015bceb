"""What a run logged, by step, and the check that it equals what training saw (the callbacks' tests)."""

from __future__ import annotations

from collections import defaultdict


def logged_by_step(ledger, run_id: str) -> dict[int, list[str]]:
    """The document keys ``run_id`` logged, by step (a local or a remote ledger)."""
    rows = ledger.sql("SELECT e.step, d.key FROM run_examples e JOIN documents d USING (doc_id) WHERE e.run_id = ?",
                      [run_id]).to_pylist()
    out: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        out[row["step"]].append(row["key"])
    return out


def assert_same_per_step(logged: dict[int, list[str]], seen: dict[int, list[str]]) -> None:
    """The same steps, and at each the same keys (in any order)."""
    assert sorted(logged) == sorted(seen)
    for step in seen:
        assert sorted(logged[step]) == sorted(seen[step]), f"step {step}"
