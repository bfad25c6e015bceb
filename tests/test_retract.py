"""Retraction (issue 15): plan, apply, prove; dataset versions without documents; the gate and
lineage showing retracted data; a kill in the middle of --apply."""

from __future__ import annotations

import json

import pytest
import torch

from provenance.lineage import taint
from provenance.retract import plan


@pytest.fixture
def contributors(ledger, data_dir, write_jsonl):
    """A base; contributors A (trained on ``private``, which holds document x1), B and C (on
    ``open``); their Fisher merge M tagged release-1; D, a patch on A; an average of A and B
    tagged release-2 (TIES of B and C untouched)."""
    write_jsonl(data_dir / "private.jsonl", [{"id": f"x{i}", "text": f"a private letter number {i}"} for i in range(4)])
    write_jsonl(data_dir / "open.jsonl", [{"id": f"o{i}", "text": f"an open text number {i}"} for i in range(6)])
    ledger.register_dataset("private", data_dir / "private.jsonl", id_field="id")
    ledger.register_dataset("open", data_dir / "open.jsonl", id_field="id")
    g = torch.Generator().manual_seed(0)
    base = ledger.commit({"w": torch.randn(8, 8, generator=g)}, message="base")

    def tuned(seed: int, dataset: str, parent=base):
        with ledger.start_run(base=parent, datasets=[dataset], message=f"{dataset} {seed}") as run:
            return run.commit({"w": torch.randn(8, 8, generator=torch.Generator().manual_seed(seed))})

    a, b, c = tuned(1, "private"), tuned(2, "open"), tuned(3, "open")
    fishers = [{"w": torch.rand(8, 8, generator=torch.Generator().manual_seed(s)) + 0.1} for s in (4, 5, 6)]
    m = ledger.merge([a, b, c], method="fisher", fisher=fishers, weights=[0.5, 0.3, 0.2], message="M")
    ledger.tag("release-1", m)
    d = tuned(7, "open", parent=a)
    avg = ledger.merge([a, b], method="average", message="A+B")
    ledger.tag("release-2", avg)
    ties = ledger.merge([b, c], method="ties", message="B+C")
    return ledger, {"base": base, "a": a, "b": b, "c": c, "m": m, "d": d, "avg": avg, "ties": ties}


def test_the_plan_remerges_retrains_and_rebases(contributors):
    ledger, v = contributors
    rows = taint(ledger, dataset="private", key="x1")
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    steps = {s.version_id: s for s in plan(rows, graph)}
    ids = {k: x.version_id for k, x in v.items()}
    assert set(steps) == {ids["a"], ids["m"], ids["d"], ids["avg"]}  # b, c, ties and base are clean
    assert steps[ids["a"]].action == "retrain"
    m = steps[ids["m"]]
    assert (m.action, m.method, m.inputs, m.dropped, m.tags) == ("remerge", "fisher", [ids["b"], ids["c"]], [ids["a"]],
                                                                  ["release-1"])
    assert m.weights == pytest.approx([0.6, 0.4])  # 0.3 and 0.2 renormalised to the 1.0 they summed to with A
    avg = steps[ids["avg"]]
    assert (avg.action, avg.inputs, avg.tags) == ("remerge", [ids["b"]], ["release-2"]) and avg.weights == [1.0]
    d = steps[ids["d"]]  # its parent A needs retraining: its patch goes onto A's clean parent, the base
    assert (d.action, d.onto, d.after, d.exact) == ("rebase", ids["base"], None, False)
    order = [s.version_id for s in plan(rows, graph)]
    assert order.index(ids["a"]) < order.index(ids["d"])  # parents first


def test_a_method_that_does_not_renormalise_says_so(contributors):
    ledger, v = contributors
    rows = taint(ledger, dataset="open", key="o1")  # declared by B, C and D's runs
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    steps = {s.version_id: s for s in plan(rows, graph)}
    ties = steps[v["ties"].version_id]
    assert ties.action == "retrain" and "nothing clean is left" in ties.why  # both inputs trained on open
    m = steps[v["m"].version_id]
    assert m.action == "remerge" and m.inputs == [v["a"].version_id] and m.weights == pytest.approx([1.0])


def test_nothing_tainted_plans_nothing(contributors):
    ledger, _ = contributors
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    assert plan([], graph) == []


def test_a_remerge_checks_out_bit_identical_to_merging_the_clean_inputs(contributors):
    from provenance.patches import same_bits
    from provenance.retract import remerge

    ledger, v = contributors
    rows = taint(ledger, dataset="private", key="x1")
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    step = next(s for s in plan(rows, graph) if s.version_id == v["m"].version_id)
    new = remerge(ledger, step, "r1")
    direct = ledger.merge([v["b"], v["c"]], method="fisher", weights=[0.6, 0.4], message="B and C directly")
    assert same_bits(ledger.checkout(new)["w"], ledger.checkout(direct)["w"])
    assert ledger.receipt(new).weights == pytest.approx([0.6, 0.4])
    assert {t.name: t.version_id for t in ledger.tags()}["release-1+retracted-r1"] == new.version_id
    lineage = ledger.lineage(new)
    assert "private@1" not in {d["dataset_id"] for d in lineage.datasets}


def test_a_rebase_reapplies_the_patch_onto_the_clean_parent(ledger):
    """base -> A (tainted) -> D (a sparse patch and a LoRA patch on A); A' a clean replacement
    of A: D rebased onto A' holds D's replacement values at D's positions, A''s values elsewhere,
    and A' + D's low-rank product."""
    from provenance.retract import Step, rebase

    g = torch.Generator().manual_seed(0)
    base = ledger.commit({"w": torch.randn(6, 6, generator=g), "h": torch.randn(6, 4, generator=g)}, message="base")
    a = ledger.commit({"w": torch.randn(6, 6, generator=g), "h": torch.randn(6, 4, generator=g)}, parent=base,
                      message="A")
    a_state = ledger.checkout(a)
    d_w = a_state["w"].clone()
    d_w[2, 3] = 7.0
    b, f = torch.randn(6, 2, generator=g), torch.randn(2, 4, generator=g)
    d = ledger.commit({"w": d_w, "h": a_state["h"] + 0.5 * (b @ f)}, parent=a, message="D",
                      low_rank={"h": (b, f, 0.5)})
    assert ledger.manifest(d)["w"].encoding == "sparse" and ledger.manifest(d)["h"].encoding == "low_rank"
    clean = ledger.commit({"w": torch.zeros(6, 6), "h": torch.ones(6, 4)}, parent=base, message="A retrained")
    new, carried = rebase(ledger, Step(d.version_id, "rebase", "test", ["d-tag"]), clean, "r9")
    out = ledger.checkout(new)
    want_w = torch.zeros(6, 6)
    want_w[2, 3] = 7.0
    assert torch.equal(out["w"], want_w) and carried == []
    assert torch.allclose(out["h"], torch.ones(6, 4) + 0.5 * (b @ f))
    assert ledger.manifest(new)["h"].encoding == "low_rank" and new.parents == [clean.version_id]
    assert {t.name for t in ledger.tags()} >= {"d-tag+retracted-r9"}


def test_retract_records_a_plan_and_apply_is_idempotent(contributors):
    from provenance.retract import apply_retraction, retract

    ledger, v = contributors
    record = retract(ledger, dataset="private", key="x1", reason="the author withdrew consent", author="maintainer")
    assert record["target"] == "private x1" and {s["action"] for s in record["steps"]} == {"retrain", "remerge", "rebase"}
    results = apply_retraction(ledger, record["retraction_id"])
    assert {r["version_id"] for r in results} == {v["m"].version_id, v["avg"].version_id}
    assert all(r["exact"] for r in results)
    again = apply_retraction(ledger, record["retraction_id"])
    assert again == results  # nothing made twice
    n = len(ledger.versions())
    assert len(apply_retraction(ledger, record["retraction_id"])) == 2 and len(ledger.versions()) == n
    tags = {t.name for t in ledger.tags()}
    assert {f"release-1+retracted-{record['retraction_id']}", f"release-2+retracted-{record['retraction_id']}"} <= tags


def test_a_target_that_taints_nothing_is_refused(contributors, data_dir, write_jsonl):
    from provenance.errors import InvalidParameterError
    from provenance.retract import retract

    ledger, _ = contributors
    write_jsonl(data_dir / "unused.jsonl", [{"id": "u1", "text": "never trained on"}])
    ledger.register_dataset("unused", data_dir / "unused.jsonl", id_field="id")
    with pytest.raises(InvalidParameterError, match="nothing to retract: unused u1 shaped no version"):
        retract(ledger, dataset="unused", key="u1", reason="asked")
    with pytest.raises(InvalidParameterError, match="needs a reason"):
        retract(ledger, dataset="private", key="x1", reason=" ")


def test_prov_retract_on_the_command_line(contributors):
    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger, v = contributors
    runner = CliRunner()
    base = ["--ledger", str(ledger.root)]
    out = runner.invoke(main, [*base, "retract", "private", "--key", "x1", "--json"])
    assert out.exit_code != 0 and "--reason" in out.output
    out = runner.invoke(main, [*base, "retract", "private", "--key", "x1", "--reason", "withdrawn", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert {s["version_id"]: s["action"] for s in data["steps"]}[v["m"].version_id] == "remerge"
    out = runner.invoke(main, [*base, "retract", data["retraction_id"], "--apply", "--json"])
    assert out.exit_code == 0, out.output
    assert {r["version_id"] for r in json.loads(out.output)} == {v["m"].version_id, v["avg"].version_id}
