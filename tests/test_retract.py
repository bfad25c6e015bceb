"""Retraction (issue 15): plan, apply, prove; dataset versions without documents; the gate and
lineage showing retracted data; a kill in the middle of --apply."""

from __future__ import annotations

import json
import re
import types

import pytest
import torch
from click.testing import CliRunner

from provenance.cli.main import main
from provenance.errors import InvalidParameterError
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
    fishers = [{"w": torch.rand(8, 8, generator=torch.Generator().manual_seed(s)) + 0.1} for s in (5, 6)]  # M's
    direct = ledger.merge([v["b"], v["c"]], method="fisher", fisher=fishers, weights=[0.6, 0.4],
                          message="B and C directly")
    assert ledger.fishers(v["b"]) == {}  # M was given its Fishers: the re-merge read them from M's receipt
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
    assert all(r["made_now"] for r in results)
    again = apply_retraction(ledger, record["retraction_id"])
    assert again == [{**r, "made_now": False} for r in results]  # nothing made twice
    n = len(ledger.versions())
    assert len(apply_retraction(ledger, record["retraction_id"])) == 2 and len(ledger.versions()) == n
    tags = {t.name for t in ledger.tags()}
    assert {f"release-1+retracted-{record['retraction_id']}", f"release-2+retracted-{record['retraction_id']}"} <= tags


def test_a_retraction_is_named_by_a_prefix_of_its_id(contributors, monkeypatch):
    """Versions and audits took id prefixes; a retraction's 12 hex digits had to be given whole
    (`prov retractions 1a2b` said there was none). A prefix of at least 4 digits names it; one of
    several is refused, naming them; a prefix also written with capitals is the same."""
    from provenance.errors import NotFoundError
    from provenance.retract import apply_retraction, retract

    ledger, v = contributors
    ids = iter(["1a2b3c4d5e6f" + "0" * 20, "1a2b3c999999" + "0" * 20])
    monkeypatch.setattr("provenance.retract.uuid", types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=next(ids))))
    first = retract(ledger, dataset="private", key="x1", reason="withdrawn")["retraction_id"]
    second = retract(ledger, dataset="private", key="x2", reason="withdrawn too")["retraction_id"]
    assert (first, second) == ("1a2b3c4d5e6f", "1a2b3c999999")
    assert ledger.retraction("1A2B3C4")["retraction_id"] == first
    assert {r["version_id"] for r in apply_retraction(ledger, "1a2b3c4d")} == {v["m"].version_id, v["avg"].version_id}
    with pytest.raises(InvalidParameterError, match="retraction prefix '1a2b' is ambiguous: 1a2b3c4d5e6f, 1a2b3c999999"):
        ledger.retraction("1a2b")
    for bad in ("abc", "not-hex!", ""):
        with pytest.raises(NotFoundError, match="a retraction id is 4 to 12 hex digits"):
            ledger.retraction(bad)
    runner = CliRunner()
    out = runner.invoke(main, ["--ledger", str(ledger.root), "retractions", "1a2b3c4", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["retraction_id"] == first
    out = runner.invoke(main, ["--ledger", str(ledger.root), "retractions", "1a2b"])
    assert out.exit_code == 4 and "is ambiguous: 1a2b3c4d5e6f, 1a2b3c999999" in out.output
    out = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "retraction", "1a2b3c9", "--json"])
    assert out.exit_code in (0, 1) and json.loads(out.output)["retraction_id"] == second


def test_apply_tags_after_the_tags_of_now_not_those_of_the_plan(contributors):
    """The `+retracted` tags were those the tainted version had when the retraction was recorded:
    with release-1 moved to another version before --apply, M's replacement was still tagged
    release-1+retracted-ID, naming as release-1's replacement what replaces a version no longer
    released; a tag set on M since got none. The tags on the version when its step is applied
    name its replacement."""
    from provenance.retract import apply_retraction, retract

    ledger, v = contributors
    rid = retract(ledger, dataset="private", key="x1", reason="withdrawn")["retraction_id"]
    ledger.tag("release-1", v["ties"])  # the release moved on (TIES of B and C: untainted)
    ledger.tag("hotfix", v["m"])
    results = {r["version_id"]: r["new_version_id"] for r in apply_retraction(ledger, rid)}
    tags = {t.name: t.version_id for t in ledger.tags() if "+retracted-" in t.name}
    assert tags == {f"hotfix+retracted-{rid}": results[v["m"].version_id],
                    f"release-2+retracted-{rid}": results[v["avg"].version_id]}


def test_a_target_that_taints_nothing_is_refused(contributors, data_dir, write_jsonl):
    from provenance.errors import InvalidParameterError
    from provenance.retract import retract

    ledger, _ = contributors
    write_jsonl(data_dir / "unused.jsonl", [{"id": "u1", "text": "never trained on"}])
    ledger.register_dataset("unused", data_dir / "unused.jsonl", id_field="id")
    with pytest.raises(InvalidParameterError, match="nothing to retract: unused u1 shaped no version; to keep it out "
                       "of the training to come, make a version of the dataset without it: prov dataset remove unused u1"):
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



def test_a_third_retraction_points_at_each_earlier_one_by_its_own_id(contributors):
    """Each note on an earlier retraction of the same document ended "(`prov retractions ID`
    shows the first)", the second one's too: each names the retraction it is about."""
    ledger, _ = contributors
    runner, base = CliRunner(), ["--ledger", str(ledger.root)]
    ids = [json.loads(runner.invoke(main, [*base, "retract", "private", "--key", "x1", "--reason", reason,
                                           "--json"]).output)["retraction_id"] for reason in ("first", "second")]
    out = runner.invoke(main, [*base, "retract", "private", "--key", "x1", "--reason", "third"])
    assert out.exit_code == 0, out.output
    notes = [line for line in out.output.splitlines() if line.startswith("note: ")]
    assert [re.search(r"`prov retractions (\w+)` shows (.*)\)$", n).groups() for n in notes] == \
        [(rid, "it") for rid in ids]


def test_a_key_given_twice_is_refused_not_half_retracted(contributors):
    """`prov retract private --key x1 --key x2` recorded a retraction of x2 alone (click kept the
    last value silently): x1, the document to remove, was never looked at, and `prov taint` with
    two keys showed one's versions. A second --key or --shard is now refused, naming both, and
    nothing is recorded."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger, _ = contributors
    base = ["--ledger", str(ledger.root)]
    for args in (["retract", "private", "--key", "x1", "--key", "x2", "--reason", "two"],
                 ["taint", "private", "--key", "x1", "--key", "x2"]):
        out = CliRunner().invoke(main, [*base, *args])
        assert out.exit_code == 2, out.output
        assert ("Invalid value for '--key': given 2 times ('x1', 'x2'); it names one: run the command once for each"
                in out.output), out.output
    out = CliRunner().invoke(main, [*base, "retract", "private", "--shard", "0", "--shard", "1", "--reason", "two"])
    assert out.exit_code == 2 and "'--shard': given 2 times ('0', '1')" in out.output, out.output
    assert ledger.retractions() == []
    out = CliRunner().invoke(main, [*base, "retract", "private", "--key", "x1", "--reason", "one", "--json"])
    assert out.exit_code == 0, out.output
    assert [d["key"] for d in json.loads(out.output)["documents"]] == ["x1"]


def test_a_reason_author_or_key_that_is_not_utf8_text_is_refused_naming_it(contributors):
    """`prov retract private --key x1 --reason $'\\xff'` (or --author, --key) printed a DuckDB
    traceback ("cannot encode str as UTF-8") from the INSERT; key=7 in Python was a DuckDB
    ConversionException, text=5 an AttributeError, and author=3 was stored as '3' locally while a
    server refused it. Each is refused naming what it is, and nothing is recorded."""
    ledger, _ = contributors
    base = ["--ledger", str(ledger.root)]
    for args, said in ((["--key", "x1", "--reason", "bad \udcff"], "the retraction's reason holds an unpaired "
                        "surrogate at character 4"),
                       (["--key", "x1", "--reason", "ok", "--author", "\udcff"], "the retraction's author holds"),
                       (["--key", "\udcff", "--reason", "ok"], "the document key holds an unpaired surrogate")):
        out = CliRunner().invoke(main, [*base, "retract", "private", *args])
        assert out.exit_code == 4 and f"Error: {said}" in out.output and "Traceback" not in out.output, out.output
    for options, said in (({"dataset": "private", "key": 7}, "a document key is text, as the ledger stores it: give '7', not int 7"),
                          ({"text": 5, "near": 0.5}, "the text must be a string, got int 5"),
                          ({"dataset": "private", "key": "x1", "author": 3},
                           "the retraction's author must be a string, got int 3")):
        with pytest.raises(InvalidParameterError, match=said):
            ledger.retract(reason="asked", **options)
    assert ledger.retractions() == []


# ---- the issue's scenarios ------------------------------------------------------------------------

LETTER = ("dear editor I am writing to withdraw the essay I sent last spring about my grandmother's farm near the "
          "river because it names my neighbours and describes their children in ways I no longer want public")


@pytest.fixture
def three(ledger, data_dir, write_jsonl):
    """A base; A (a sparse FISH-mask update) trained on ``private``, which holds X; B (a LoRA
    adapter) and C (a dense fine-tune) on ``open``; their Fisher merge M tagged release-1, with
    stored Fishers; E trained on ``mirror``, which holds a near-copy of X (one word changed)."""
    write_jsonl(data_dir / "private.jsonl", [{"id": "X", "text": LETTER}] +
                [{"id": f"p{i}", "text": f"a private note number {i} about the weather and the roads"} for i in range(5)])
    write_jsonl(data_dir / "open.jsonl", [{"id": f"o{i}", "text": f"an open text number {i} on gardening"}
                                          for i in range(6)])
    write_jsonl(data_dir / "mirror.jsonl", [{"id": "copy", "text": LETTER.replace("spring", "summer")},
                                            {"id": "m1", "text": "something else entirely about trains"}])
    for name in ("private", "open", "mirror"):
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
    g = torch.Generator().manual_seed(0)
    base_state = {"w": torch.randn(16, 16, generator=g), "h": torch.randn(16, 8, generator=g)}
    base = ledger.commit(base_state, message="base")

    def run(dataset, state, **options):
        with ledger.start_run(base=base, datasets=[dataset], message=f"on {dataset}") as r:
            return r.commit(state, **options)

    a_w = base_state["w"].clone()
    a_w[torch.rand(16, 16, generator=g) < 0.05] += 1.0  # a sparse mask
    a = run("private", {"w": a_w, "h": base_state["h"]})
    bf, af = torch.randn(16, 2, generator=g), torch.randn(2, 8, generator=g)
    b = run("open", {"w": base_state["w"], "h": base_state["h"] + 0.5 * (bf @ af)}, low_rank={"h": (bf, af, 0.5)})
    c = run("open", {"w": base_state["w"] + 0.1 * torch.randn(16, 16, generator=g),
                     "h": base_state["h"] + 0.1 * torch.randn(16, 8, generator=g)})
    e = run("mirror", {"w": base_state["w"] * 1.01, "h": base_state["h"]})
    assert ledger.manifest(a)["w"].encoding == "sparse" and ledger.manifest(b)["h"].encoding == "low_rank"
    assert ledger.manifest(c)["w"].encoding == "full"
    fishers = {}
    for seed, v in zip((11, 12, 13), (a, b, c)):
        fishers[v.version_id] = {n: torch.rand(*t.shape, generator=torch.Generator().manual_seed(seed)) + 0.05
                                 for n, t in base_state.items()}
        ledger.store_fisher(v, fishers[v.version_id])
    m = ledger.merge([a, b, c], method="fisher", weights=[0.2, 0.5, 0.3], message="M")
    ledger.tag("release-1", m)
    return ledger, {"base": base, "a": a, "b": b, "c": c, "e": e, "m": m}


def test_retracting_x_remerges_b_and_c_bit_identically_and_proves_it(three):
    from provenance.patches import same_bits

    ledger, v = three
    record = ledger.retract(dataset="private", key="X", near=0.5, reason="the author withdrew the letter",
                            author="maintainer")
    rid = record["retraction_id"]
    assert {(d["dataset_id"], d["key"]) for d in record["documents"]} == {("private@1", "X"), ("mirror@1", "copy")}
    steps = {s["version_id"]: s for s in record["steps"]}
    assert steps[v["a"].version_id]["action"] == "retrain" and steps[v["e"].version_id]["action"] == "retrain"
    m = steps[v["m"].version_id]
    assert (m["action"], m["inputs"], m["dropped"], m["tags"]) == (
        "remerge", [v["b"].version_id, v["c"].version_id], [v["a"].version_id], ["release-1"])
    assert m["weights"] == pytest.approx([0.625, 0.375])  # 0.5 and 0.3 renormalised to sum to 1
    a_step = steps[v["a"].version_id]  # the run's recorded settings and what to remove
    assert a_step["datasets"] == {"private@1": 1.0} and a_step["remove"] == {"private@1": ["X"]}
    assert "prov dataset remove private X" in a_step["why"]

    results = ledger.apply_retraction(rid)
    assert [(r["version_id"], r["action"], r["exact"]) for r in results] == [(v["m"].version_id, "remerge", True)]
    new = ledger.version(results[0]["new_version_id"])
    direct = ledger.merge([v["b"], v["c"]], method="fisher", weights=[0.625, 0.375], message="B and C directly")
    got, want = ledger.checkout(new), ledger.checkout(direct)
    assert set(got) == {"w", "h"} and all(same_bits(got[k], want[k]) for k in got)
    assert {t.name: t.version_id for t in ledger.tags()}[f"release-1+retracted-{rid}"] == new.version_id

    lin = ledger.lineage(new)
    assert {d["dataset_id"] for d in lin.datasets} == {"open@1"}  # neither X's dataset nor its near-copy's
    assert lin.retracted == [] and lin.made_by_retraction["retraction_id"] == rid
    old = ledger.lineage(v["m"])
    assert {r["retraction_id"] for r in old.retracted} == {rid} and old.retracted[0]["run_id"] == v["a"].run_id

    proof = ledger.audit_retraction(rid)
    assert proof["passed"], proof["problems"]
    assert [c["version_id"] for c in proof["checked"]] == [new.version_id] and proof["checked"][0]["clean"]
    assert {p["version_id"] for p in proof["pending"]} == {v["a"].version_id, v["e"].version_id}
    releases = ledger.audit_retraction(rid, releases="release-*")
    for blank in ("", " "):  # it said "(give --releases PATTERN)" although one was given
        with pytest.raises(InvalidParameterError, match=f"releases must be a tag pattern \\(release-\\*\\), got {blank!r}"):
            ledger.audit_retraction(rid, releases=blank)
    assert not releases["passed"]
    by_tag = {c["as"]: c for c in releases["checked"]}
    assert not by_tag["release release-1"]["clean"] and by_tag["release release-1"]["via"] == v["a"].version_id
    # the re-merge is checked once, as the step that made it, though its tag matches the pattern too
    assert [c["version_id"] for c in releases["checked"]].count(new.version_id) == 1
    made = by_tag[f"remerge of {v['m'].version_id[:12]}"]
    assert made["clean"] and made["tags"] == [f"release-1+retracted-{rid}"]
    assert any("release release-1 " in p for p in releases["problems"])
    # a pattern that matches no tag (a typo) checked no release and passed (stranger pass 25)
    typo = ledger.audit_retraction(rid, releases="relase-*")
    assert not typo["passed"] and [c["version_id"] for c in typo["checked"]] == [new.version_id]
    assert typo["problems"] == ["no tag matches --releases 'relase-*': no release was checked"]

    taint = ledger.taint(dataset="private", key="X")
    assert [r["retraction_id"] for r in taint.retractions] == [rid] and taint.retractions[0]["results"] == [
        new.version_id]


def test_the_audit_runs_the_samples_against_the_retracted_texts(three):
    ledger, v = three
    rid = ledger.retract(dataset="private", key="X", reason="withdrawn")["retraction_id"]
    ledger.apply_retraction(rid)
    clean = ledger.audit_retraction(rid, samples=["a poem about gardening and open texts", "numbers and roads"],
                                    span=8)
    assert clean["passed"] and clean["memorization"]["matches"] == []
    leaked = ledger.audit_retraction(rid, samples=["unrelated words here", "so " + LETTER[:160] + " and more"],
                                     span=8)
    assert not leaked["passed"]
    (hit,) = leaked["memorization"]["matches"]
    assert (hit["sample"], hit["key"], hit["dataset_id"]) == (1, "X", "private@1") and hit["span_words"] >= 25
    assert hit["span_text"].startswith("dear editor i am writing")
    stored = ledger.sql("SELECT passed FROM retraction_audits WHERE retraction_id = ? ORDER BY created_at",
                        [rid]).to_pylist()
    assert [r["passed"] for r in stored] == [True, False]
    with pytest.raises(InvalidParameterError, match=r"^span must be from 0 \(no span check\) to 1000 words, got 5000$"):
        ledger.audit_retraction(rid, samples=["x"], span=5000)  # was taken: a span no sample holds checks nothing


def test_a_copy_registered_after_the_retraction_is_found_by_the_audit(three, data_dir, write_jsonl):
    ledger, v = three
    rid = ledger.retract(dataset="private", key="X", reason="withdrawn")["retraction_id"]
    (made,) = ledger.apply_retraction(rid)
    write_jsonl(data_dir / "late.jsonl", [{"id": "again", "text": LETTER}])
    with pytest.warns(UserWarning, match=rf"late@1 holds again what was taken out: again \(retraction {rid}\); a "
                                         "run trained on it brings them back into a model"):
        late = ledger.register_dataset("late", data_dir / "late.jsonl", id_field="id")
    assert late.retracted == [{"key": "again", "retractions": [rid], "removed_from": []}]
    with ledger.start_run(base=made["new_version_id"], datasets=["late"], message="on late") as r:
        later = r.commit(ledger.checkout(made["new_version_id"]))
    ledger.tag("release-2", later)
    report = ledger.audit_retraction(rid, releases="release-2")
    assert [(c["dataset_id"], c["key"]) for c in report["copies_found_now"]] == [("late@1", "again")]
    assert not report["passed"] and not {c["as"]: c for c in report["checked"]}["release release-2"]["clean"]


def test_a_chain_retrains_a_and_rebases_d_onto_the_base(ledger, data_dir, write_jsonl):
    """base -> A (trained on X) -> D (a sparse patch on A): retrain A, rebase D; --rebase re-applies
    D's patch onto the base, the result marked approximate."""
    write_jsonl(data_dir / "private.jsonl", [{"id": "X", "text": LETTER}, {"id": "y", "text": "other words"}])
    write_jsonl(data_dir / "open.jsonl", [{"id": "o", "text": "an open text"}])
    ledger.register_dataset("private", data_dir / "private.jsonl", id_field="id")
    ledger.register_dataset("open", data_dir / "open.jsonl", id_field="id")
    g = torch.Generator().manual_seed(3)
    base = ledger.commit({"w": torch.randn(8, 8, generator=g)}, message="base")
    with ledger.start_run(base=base, datasets=["private"], message="A", params={"lr": 3e-4, "epochs": 2}) as r:
        a = r.commit({"w": torch.randn(8, 8, generator=g)})
    d_w = ledger.checkout(a)["w"].clone()
    d_w[1, 2], d_w[5, 5] = 9.0, -9.0
    with ledger.start_run(base=a, datasets=["open"], message="D") as r:
        d = r.commit({"w": d_w})
    ledger.tag("release-d", d)
    assert ledger.manifest(d)["w"].encoding == "sparse"
    record = ledger.retract(dataset="private", key="X", reason="licence audit")
    steps = {s["version_id"]: s for s in record["steps"]}
    assert steps[a.version_id]["action"] == "retrain" and steps[a.version_id]["settings"] == {"lr": 3e-4, "epochs": 2}
    assert (steps[d.version_id]["action"], steps[d.version_id]["onto"]) == ("rebase", base.version_id)
    assert ledger.apply_retraction(record["retraction_id"]) == []  # nothing without --rebase
    (result,) = ledger.apply_retraction(record["retraction_id"], rebase=True)
    assert (result["version_id"], result["action"], result["exact"]) == (d.version_id, "rebase", False)
    new = ledger.version(result["new_version_id"])
    assert new.parents == [base.version_id] and "approximate" in new.message
    want = ledger.checkout(base)["w"].clone()
    want[1, 2], want[5, 5] = 9.0, -9.0
    assert torch.equal(ledger.checkout(new)["w"], want)
    lin = ledger.lineage(new)
    assert lin.made_by_retraction == {"retraction_id": record["retraction_id"], "replaces": d.version_id,
                                      "action": "rebase", "exact": False}
    assert {t.name: t.version_id for t in ledger.tags()}[f"release-d+retracted-{record['retraction_id']}"] == \
        new.version_id
    # D's patch was trained on `open`: the rebased version carries D's run, so its lineage holds
    # `open` (it said "no run recorded: data unknown") and taint of `open` finds it
    assert new.run_id == d.run_id and ledger.run(d.run_id).version_id == d.version_id  # the run left as it was
    assert [x.dataset_id for x in lin.datasets] == ["open@1"] and lin.unrecorded == [base.version_id]
    assert "private@1" not in {x.dataset_id for x in lin.datasets}
    hits = {r["version_id"]: r["direct"] for r in ledger.taint(dataset="open", key="o").versions}
    assert hits == {d.version_id: True, new.version_id: True}
    assert ledger.audit_retraction(record["retraction_id"])["passed"]  # D's run never saw X


def test_a_merge_whose_receipt_is_missing(contributors):
    """The plan is recorded from the graph; the receipt then goes missing (a damaged ledger): the
    other steps are carried out, and the error names the version."""
    from provenance.errors import InvalidParameterError

    ledger, v = contributors
    rid = ledger.retract(dataset="private", key="x1", reason="asked")["retraction_id"]
    with ledger.transaction() as tx:
        tx._con.execute("DELETE FROM merge_receipts WHERE version_id = ?", [v["m"].version_id])
    with pytest.raises(InvalidParameterError, match=f"{v['m'].version_id[:12]} has no merge receipt"):
        ledger.apply_retraction(rid)
    done = ledger.retraction(rid)["results"]
    assert [r["version_id"] for r in done] == [v["avg"].version_id]  # the other re-merge was made


def test_a_merge_without_a_receipt_is_planned_as_a_retrain(contributors):
    ledger, v = contributors
    with ledger.transaction() as tx:
        tx._con.execute("DELETE FROM merge_receipts WHERE version_id = ?", [v["m"].version_id])
    steps = {s["version_id"]: s for s in ledger.retract(dataset="private", key="x1", reason="asked")["steps"]}
    assert steps[v["m"].version_id]["action"] == "retrain"
    assert "no merge receipt" in steps[v["m"].version_id]["why"]


KILL_ON_SECOND_STEP = """
import os, signal, sys
import provenance.retract.steps as steps  # _recording reads _tags_in there
from provenance import Ledger

real, made = steps._tags_in, []


def tags_then_die(tx, step, rid, version):  # inside the step's transaction: its version is written, not committed
    made.append(version.version_id)
    if len(made) == 2:
        print("dying", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    real(tx, step, rid, version)


steps._tags_in = tags_then_die
Ledger.open(sys.argv[1]).apply_retraction(sys.argv[2])
"""


def test_a_kill_in_the_middle_of_apply_leaves_whole_steps_and_a_rerun_continues(contributors, tmp_path):
    import signal
    import subprocess
    import sys

    ledger, v = contributors
    rid = ledger.retract(dataset="private", key="x1", reason="asked")["retraction_id"]
    before = {x.version_id for x in ledger.versions()}
    script = tmp_path / "kill_apply.py"
    script.write_text(KILL_ON_SECOND_STEP)
    proc = subprocess.run([sys.executable, str(script), str(ledger.root), rid], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL and "dying" in proc.stdout, proc.stderr
    first = ledger.retraction(rid)["results"]
    assert [r["version_id"] for r in first] == [v["m"].version_id]  # the first step landed whole
    after = {x.version_id for x in ledger.versions()}
    assert after - before == {first[0]["new_version_id"]}  # the killed step left no version
    tags = {t.name for t in ledger.tags()}
    assert f"release-1+retracted-{rid}" in tags and f"release-2+retracted-{rid}" not in tags
    assert ledger.verify().ok
    results = ledger.apply_retraction(rid)  # continues: the second step only
    assert [r["version_id"] for r in results] == [v["m"].version_id, v["avg"].version_id]
    assert results[0]["new_version_id"] == first[0]["new_version_id"]
    assert len({x.version_id for x in ledger.versions()} - before) == 2
    assert f"release-2+retracted-{rid}" in {t.name for t in ledger.tags()}


def test_dataset_remove_makes_a_version_without_the_documents(contributors, data_dir):
    from provenance.errors import InvalidParameterError, NotFoundError

    ledger, v = contributors
    rid = ledger.retract(dataset="private", key="x1", reason="asked")["retraction_id"]
    with pytest.raises(NotFoundError, match=r"private@1 has no document 'nope'.*1 of the 2 keys"):
        ledger.remove_documents("private", ["x1", "nope"])
    with pytest.raises(InvalidParameterError, match="not a version"):
        ledger.remove_documents("private@1", ["x1"])
    with pytest.raises(InvalidParameterError, match="would leave private@1 empty"):
        ledger.remove_documents("private", ["x0", "x1", "x2", "x3"])
    for bad in ("nonexistent", ""):
        with pytest.raises(NotFoundError, match=f"no retraction '{bad}'"):
            ledger.remove_documents("private", ["x1"], retraction=bad)
    assert [d.dataset_id for d in ledger.datasets("private", all_versions=True)] == ["private@1"]  # nothing made
    result = ledger.remove_documents("private", ["x1"], reason="withdrawn", retraction=rid)
    ds = result.dataset
    assert (ds.dataset_id, ds.n_documents, ds.n_shards) == ("private@2", 3, 1) and "without 1 document" in result.message
    keys = ledger.sql("SELECT key FROM documents WHERE dataset_id = 'private@2' ORDER BY key").column("key").to_pylist()
    assert keys == ["x0", "x2", "x3"]
    # a retraction recorded now points the retrain at the version already without the document
    again_rec = ledger.retract(dataset="private", key="x1", reason="asked again")
    step = next(s for s in again_rec["steps"] if s["version_id"] == v["a"].version_id)
    assert step["action"] == "retrain" and step["remove"] == {"private@1": ["x1"]}
    assert "train on private@2 (already without the retracted documents)" in step["why"]
    assert "prov dataset remove" not in step["why"]
    old = {r["key"]: r for r in ledger.sql("SELECT key, signature, exact_hash FROM documents "
                                          "WHERE dataset_id = 'private@1'").to_pylist()}
    for r in ledger.sql("SELECT key, signature, exact_hash FROM documents WHERE dataset_id = 'private@2'").to_pylist():
        assert (r["signature"], r["exact_hash"]) == (old[r["key"]]["signature"], old[r["key"]]["exact_hash"])
    assert ledger.removals(["private@2"])[0] | {"created_at": None} == {
        "dataset_id": "private@2", "from_dataset_id": "private@1", "doc_id": ledger.document("private@1", "x1").doc_id,
        "key": "x1", "retraction_id": rid, "reason": "withdrawn", "created_at": None}
    # a retrain on the new version is clean; registering the files again brings every document back
    with ledger.start_run(base=v["base"], datasets=["private@2"], message="A again") as r:
        again = r.commit(ledger.checkout(v["a"]))
    assert ledger.lineage(again).retracted == []
    tainted = {t.version_id for t in ledger.taint(dataset="private@1", key="x1").versions}
    assert again.version_id not in tainted and v["a"].version_id in tainted
    # the bare name: every version of the dataset, so the removed document still finds what it shaped
    assert {t.version_id for t in ledger.taint(dataset="private", key="x1").versions} == tainted
    with pytest.raises(NotFoundError, match=r"no document 'x1' in dataset private@2 \(removed from private@1"):
        ledger.taint(dataset="private@2", key="x1")
    with pytest.warns(UserWarning, match=r"private@3 holds again what was taken out: x1 \(retraction "):
        back = ledger.register_dataset("private", data_dir / "private.jsonl", id_field="id")
    assert back.created and back.dataset.n_documents == 4
    assert back.retracted == [{"key": "x1", "retractions": sorted([rid, again_rec["retraction_id"]]), "removed_from": []}]
    assert [e["retraction_id"] for e in again_rec["earlier"]] == [rid]  # the second retraction was told of the first


def test_dataset_remove_refuses_keys_as_a_string_and_text_that_is_not_utf8(contributors):
    """`remove_documents("private", "x1")` said "no document '1', 'x'" (the string taken a
    character at a time); `prov dataset remove private x1 --reason $'\\xff'` printed a
    UnicodeEncodeError traceback from Arrow, and reason=5 an ArrowTypeError. Each is refused
    naming what was given, and no version of the dataset is made."""
    ledger, _ = contributors
    for keys, options, said in (("x1", {}, "keys must be a list of document keys, got str 'x1'"),
                                (["x\udcff"], {}, "a document key holds an unpaired surrogate at character 1"),
                                (["x1"], {"reason": 5}, "the removal's reason must be a string, got int 5")):
        with pytest.raises(InvalidParameterError, match=re.escape(said)):
            ledger.remove_documents("private", keys, **options)
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "dataset", "remove", "private", "x1", "--reason",
                                    "bad \udcff"])
    assert out.exit_code == 4 and "Error: the removal's reason holds an unpaired surrogate at character 4" in out.output
    assert "Traceback" not in out.output, out.output
    assert [d.dataset_id for d in ledger.datasets("private", all_versions=True)] == ["private@1"]


def test_the_gate_reports_and_with_deny_retracted_fails_on_retracted_data(contributors):
    from provenance.errors import GateFailedError

    ledger, v = contributors
    rid = ledger.retract(dataset="private", key="x1", reason="asked")["retraction_id"]
    report = ledger.audit_merge([v["a"], v["b"]], store=False)
    assert report.passed and {(r["input"], r["retraction_id"]) for r in report.retracted} == {(v["a"].version_id, rid)}
    denied = ledger.audit_merge([v["a"], v["b"]], deny_retracted=True, store=False)
    assert not denied.passed
    (violation,) = denied.violations
    assert violation["policy"] == "deny_retracted" and f"retraction {rid}" in violation["message"]
    assert ledger.audit_merge([v["b"], v["c"]], deny_retracted=True, store=False).passed
    with pytest.raises(GateFailedError):
        ledger.merge([v["a"], v["b"]], method="average", message="no", gate={"deny_retracted": True})


def test_a_long_reason_is_cut_short_in_taint_and_lineage_and_shown_whole_by_retractions(contributors):
    """A 100 kB reason was printed whole by every `prov taint` and `prov lineage` that met it."""
    ledger, v = contributors
    reason = "withdrawn at the author's request; " + "details " * 12_000
    rid = ledger.retract(dataset="private", key="x1", reason=reason)["retraction_id"]
    base = ["--ledger", str(ledger.root)]
    for args in (["taint", "private@1", "--key", "x1"], ["lineage", v["a"].version_id]):
        out = CliRunner().invoke(main, [*base, *args], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and f"retraction {rid}" in out.output, out.output
        assert "withdrawn at the author's request; details" in out.output and len(out.output) < 5_000, len(out.output)
    whole = CliRunner().invoke(main, [*base, "retractions", rid, "--json"])
    assert json.loads(whole.output)["reason"] == reason.strip()  # kept whole (trimmed, as every reason is)


def test_the_command_line(contributors, tmp_path):
    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger, v = contributors
    runner = CliRunner()
    base = ["--ledger", str(ledger.root)]

    def prov(*args, code=0):
        out = runner.invoke(main, [*base, *args])
        assert out.exit_code == code, out.output
        return out.output

    text = prov("retract", "private", "--key", "x1", "--reason", "withdrawn", "--html", str(tmp_path / "plan.html"))
    rid = text.split()[1]
    assert "remerge" in text and "release-1" in text and f"prov retract {rid} --apply" in text
    assert "Retraction" in (tmp_path / "plan.html").read_text()
    assert rid in prov("retractions")
    assert "release-2" in prov("retractions", rid)
    assert "Invalid value for 'RETRACTION-ID': is empty" in prov("retractions", " ", code=2)  # it listed them all
    applied = prov("retract", rid, "--apply")
    assert applied.count("remerge") == 2
    proof = prov("audit", "retraction", rid, "--html", str(tmp_path / "proof.html"))
    assert "PASSED" in proof
    assert "Proof of retraction" in (tmp_path / "proof.html").read_text()
    failed = prov("audit", "retraction", rid, "--releases", "release-1", code=1)
    assert "FAILED" in failed and "tainted through" in failed
    assert "without 1 document" in prov("dataset", "remove", "private", "x1", "--retraction", rid)
    assert "retracted data: retraction" in prov("lineage", v["m"].version_id)
    assert f"retracted: retraction {rid}" in prov("taint", "private@1", "--key", "x1")
    gate = runner.invoke(main, [*base, "audit", "merge", v["a"].version_id, v["b"].version_id, "--deny-retracted",
                                "--max-contamination", "none"])
    assert gate.exit_code == 1 and "deny-retracted broken" in gate.output
    bad = runner.invoke(main, [*base, "retract", "private", "--key", "x1", "--apply", "--json"])
    assert bad.exit_code == 2  # was 4, kind 'invalid', a kind the reference does not list
    assert json.loads(bad.output) == {"error": "--apply takes only the retraction id (and --rebase)", "kind": "usage"}
    bad = runner.invoke(main, [*base, "retract", rid])  # it said the retraction needs --reason
    assert bad.exit_code == 2 and f"Error: {rid} is a retraction: prov retract {rid} --apply carries out" in bad.output
    bad = runner.invoke(main, [*base, "retract", "private", "--key", "x1"])
    assert bad.exit_code == 2 and "a retraction needs --reason" in bad.output
    bad = runner.invoke(main, [*base, "retract", "0123456789ab", "--apply"])
    assert bad.exit_code != 0 and "no retraction '0123456789ab'" in bad.output


def test_a_whole_dataset_or_a_text_can_be_retracted(contributors):
    from click.testing import CliRunner

    from provenance.cli.main import main

    ledger, v = contributors
    whole = ledger.retract(dataset="private", reason="the licence was revoked")
    assert whole["documents"] == [{"dataset_id": "private@1", "shard_index": None}]
    assert {s["version_id"] for s in whole["steps"]} == {v["a"].version_id, v["m"].version_id, v["d"].version_id,
                                                         v["avg"].version_id}
    assert {r["retraction_id"] for r in ledger.lineage(v["d"]).retracted} == {whole["retraction_id"]}
    shard = ledger.retract(dataset="private", shard="0", reason="one file")
    assert shard["documents"] == [{"dataset_id": "private@1", "shard_index": 0}] and shard["target"] == "private shard 0"
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "retract", "--text", "-", "--reason", "by text",
                                    "--json"], input="a private letter number 2")
    assert out.exit_code == 0, out.output
    by_text = json.loads(out.output)
    assert by_text["target"] == "text (25 characters)" and json.loads(by_text["target_json"])["text_chars"] == 25
    assert [(d["dataset_id"], d["key"]) for d in by_text["documents"]] == [("private@1", "x2")]
    assert "a private letter" not in json.dumps(by_text)  # the text itself is not kept
    (result,) = [r for r in ledger.apply_retraction(whole["retraction_id"]) if r["version_id"] == v["m"].version_id]
    assert ledger.audit_retraction(whole["retraction_id"])["passed"]
    assert ledger.lineage(result["new_version_id"]).retracted == []


def test_a_document_retracted_with_its_whole_dataset_or_shard_names_that_retraction(contributors):
    """A retraction of `private` as a whole (or of its shard) retracts x1, but a later retraction of
    x1 by key said nothing of it (the docs: "a second retraction of documents already retracted
    says which retraction has them"), and `prov taint private --key x1` did not list it: only
    retractions by key or text were matched to a document."""
    ledger, _ = contributors
    whole = ledger.retract(dataset="private", reason="the licence was revoked")
    shard = ledger.retract(dataset="private", shard="0", reason="one file")
    assert [e["retraction_id"] for e in shard["earlier"]] == [whole["retraction_id"]]
    by_key = ledger.retract(dataset="private", key="x1", reason="withdrawn")
    assert [e["retraction_id"] for e in by_key["earlier"]] == [whole["retraction_id"], shard["retraction_id"]]
    report = ledger.taint(dataset="private", key="x1")
    assert [r["retraction_id"] for r in report.retractions] == [whole["retraction_id"], shard["retraction_id"],
                                                                by_key["retraction_id"]]
    assert [r["retraction_id"] for r in ledger.taint(dataset="open", key="o1").retractions] == []


def test_a_dense_patch_is_rebased_as_its_difference_from_the_tainted_parent(ledger):
    """D stored whole (a dense fine-tune of A): rebased onto A', it is A' + (D - A), in float64
    then cast; an int64 buffer D left as A had it takes A''s value."""
    from provenance.retract import Step, rebase

    g = torch.Generator().manual_seed(4)
    base = ledger.commit({"w": torch.randn(6, 6, generator=g), "pos": torch.arange(6)}, message="base")
    a = ledger.commit({"w": torch.randn(6, 6, generator=g), "pos": torch.arange(6)}, parent=base, message="A")
    d_w = ledger.checkout(a)["w"] + 0.1 * torch.randn(6, 6, generator=g)
    d = ledger.commit({"w": d_w, "pos": torch.arange(6)}, parent=a, message="D", encoding="full")
    assert ledger.manifest(d)["w"].encoding == "full"
    clean = ledger.commit({"w": torch.ones(6, 6), "pos": torch.arange(6) + 1}, parent=base, message="A'")
    new, carried = rebase(ledger, Step(d.version_id, "rebase", "test"), clean, "r1")
    out = ledger.checkout(new)
    want = (torch.ones(6, 6).double() + (d_w.double() - ledger.checkout(a)["w"].double())).float()
    assert carried == [] and torch.equal(out["w"], want)
    assert torch.equal(out["pos"], torch.arange(6) + 1)


def _merge_of_merges(ledger, data_dir, write_jsonl) -> tuple:
    """A, B, C fine-tuned from a base, A on a letter to be retracted; M = average(A, B) and
    M2 = 0.7·M + 0.3·C."""
    write_jsonl(data_dir / "letters.jsonl", [{"id": "L7", "text": "a letter the author withdrew about the farm"}])
    write_jsonl(data_dir / "essays.jsonl", [{"id": "E0", "text": "an essay on gardening in a small town"}])
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")
    ledger.register_dataset("essays", data_dir / "essays.jsonl", id_field="id")
    base = ledger.commit({"w": torch.zeros(4)}, message="base")

    def tuned(dataset: str, value: float):
        with ledger.start_run(base=base, datasets=[dataset], message=dataset) as run:
            return run.commit({"w": torch.full((4,), value)})

    a, b, c = tuned("letters", 1.0), tuned("essays", 2.0), tuned("essays", 3.0)
    m = ledger.merge([a, b], method="average", weights=[0.5, 0.5], message="M")
    m2 = ledger.merge([m, c], method="average", weights=[0.7, 0.3], message="M2")
    return a, b, c, m, m2


def test_a_merge_of_a_merge_takes_the_clean_replacement_of_its_tainted_input(ledger, data_dir, write_jsonl):
    """M = average(A, B) with A trained on the retracted letter, M2 = average(M, C). M's step
    re-merges B alone; M2's re-merge dropped M (and so all of B) and was C alone, while the audit
    passed. It now merges M's clean replacement with C, at the recorded weights."""
    a, b, c, m, m2 = _merge_of_merges(ledger, data_dir, write_jsonl)
    ledger.tag("release-2", m2)
    record = ledger.retract(dataset="letters", key="L7", reason="withdrawn")
    steps = {s["version_id"]: s for s in record["steps"]}
    nested = steps[m2.version_id]
    assert (nested["action"], nested["inputs"], nested["weights"], nested["stand_ins"], nested["dropped"]) == (
        "remerge", [m.version_id, c.version_id], [0.7, 0.3], [m.version_id], [])
    assert nested["why"] == f"re-merge with the same average method and weights, {m.version_id[:12]} replaced by the " \
                            "result of its own step"
    results = {r["version_id"]: r for r in ledger.apply_retraction(record["retraction_id"])}
    clean_m = results[m.version_id]["new_version_id"]
    made = ledger.version(f"release-2+retracted-{record['retraction_id']}")
    assert made.version_id == results[m2.version_id]["new_version_id"] and made.parents == [clean_m, c.version_id]
    assert torch.allclose(ledger.checkout(made)["w"], torch.full((4,), 0.7 * 2.0 + 0.3 * 3.0))  # not C's 3.0
    assert sorted(d.dataset_id for d in ledger.lineage(made).datasets) == ["essays@1"]
    assert ledger.audit_retraction(record["retraction_id"])["passed"]


def test_a_plan_recorded_before_stand_ins_is_refused_and_its_results_fail_the_audit(ledger, data_dir, write_jsonl):
    """A retraction recorded by the code before stand-ins kept a plan whose re-merge of M2 was C
    alone (M dropped); the new code applied it as stored, and the audit passed its result."""
    from datetime import datetime

    from provenance.errors import InvalidParameterError

    a, b, c, m, m2 = _merge_of_merges(ledger, data_dir, write_jsonl)
    rid = ledger.retract(dataset="letters", key="L7", reason="withdrawn")["retraction_id"]
    plan = json.loads(ledger.retraction(rid)["plan_json"])
    for step in plan:  # as the older planner wrote it
        if step["version_id"] == m2.version_id:
            step.update(inputs=[c.version_id], weights=[1.0], dropped=[m.version_id], stand_ins=[])
    with ledger.transaction() as tx:
        tx._con.execute("UPDATE retractions SET plan_json = ? WHERE retraction_id = ?", [json.dumps(plan), rid])
    with pytest.raises(InvalidParameterError, match=rf"retraction {rid}: its plan was recorded by an older provenance, "
                                                    rf"whose re-merge of {m2.version_id[:12]} leaves out {m.version_id[:12]}"):
        ledger.apply_retraction(rid)
    assert ledger.retraction(rid)["results"] == []  # nothing made
    with ledger.transaction() as tx:  # what the older code made when it applied that plan: C alone
        tx.insert_retraction_result({"retraction_id": rid, "version_id": m2.version_id, "action": "remerge",
                                     "new_version_id": c.version_id, "exact": True, "applied_at": datetime.now()})
    later = ledger.commit({"w": torch.full((4,), 4.0)}, parent=c, message="a release made on the re-merge")
    ledger.tag("release-3", later)
    report = ledger.audit_retraction(rid, releases="release-*")
    assert not report["passed"] and any(
        f"({c.version_id[:12]}) was made by the plan of an older provenance, which left out {m.version_id[:12]}" in p
        for p in report["problems"])
    assert f"release release-3 ({later.version_id[:12]}) is built on {c.version_id[:12]}, which the plan of an older " \
           f"provenance made without {m.version_id[:12]}'s clean version: record the retraction again, apply it, and " \
           "make this version again on its result" in report["problems"]
    assert sum("is built on" in p for p in report["problems"]) == 1  # the stale re-merge itself is not built on itself


def test_a_remerge_waits_for_an_input_made_clean_by_a_rebase(ledger, data_dir, write_jsonl):
    """M2 merges X, a fine-tune of the tainted A, with C: X's clean replacement is a rebase, made
    only with rebase_too; until then M2's re-merge waits (it does not drop X), and the CLI says so."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    write_jsonl(data_dir / "letters.jsonl", [{"id": "L7", "text": "a letter the author withdrew about the farm"}])
    write_jsonl(data_dir / "essays.jsonl", [{"id": "E0", "text": "an essay on gardening in a small town"}])
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")
    ledger.register_dataset("essays", data_dir / "essays.jsonl", id_field="id")
    base = ledger.commit({"w": torch.zeros(4)}, message="base")

    def tuned(dataset: str, value: float, parent=base):
        with ledger.start_run(base=parent, datasets=[dataset], message=dataset) as run:
            return run.commit({"w": torch.full((4,), value)})

    a = tuned("letters", 1.0)
    x, c = tuned("essays", 2.0, parent=a), tuned("essays", 3.0)
    m2 = ledger.merge([x, c], method="average", message="M2")
    rid = ledger.retract(dataset="letters", key="L7", reason="withdrawn")["retraction_id"]
    args = ["--ledger", str(ledger.root), "retract", rid, "--apply"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.strip() == ("left to do: 1 retrain (train again without the retracted data: see the plan), "
                                    "1 rebase (with --rebase), 1 re-merge waiting for an input made clean by a "
                                    "rebase (with --rebase)")
    second = CliRunner().invoke(main, [*args, "--rebase"])
    assert second.exit_code == 0, second.output
    lines = second.output.strip().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["rebase", "remerge"]
    assert lines[1].startswith(f"remerge {m2.version_id[:12]} -> ") and lines[1].endswith("(approximate)")
    assert lines[2] == "left to do: 1 retrain (train again without the retracted data: see the plan)"
    results = {r["version_id"]: r for r in ledger.apply_retraction(rid)}
    made = ledger.version(results[m2.version_id]["new_version_id"])
    assert made.parents == [results[x.version_id]["new_version_id"], c.version_id]
    # X's patch moved onto the base: 0 + (2 - 1) = 1; averaged with C: (1 + 3) / 2
    assert torch.allclose(ledger.checkout(made)["w"], torch.full((4,), 2.0))


def test_near_copies_of_a_key_are_found_under_every_fingerprint_config(ledger, data_dir, write_jsonl):
    """`taint A --key doc --near` and `retract` by key searched only the datasets of A's config:
    the same text in a dataset fingerprinted with another seed was missed, and the retraction's
    plan left out the version trained on it. The key's text is read back and fingerprinted
    under each other config; a text registered from memory cannot be, and says so."""
    from provenance.audits import taint_report
    from provenance.fingerprints import FingerprintConfig
    from provenance.torch import track

    text = " ".join(f"tok{i * 7919 % 1000}" for i in range(200))
    write_jsonl(data_dir / "a.jsonl", [{"id": "doc", "text": text}])
    ledger.register_dataset("A", data_dir / "a.jsonl", id_field="id")
    ledger.register_dataset("F", [{"id": "copy", "text": text}], id_field="id", config=FingerprintConfig(seed=5))
    base = ledger.commit({"w": torch.zeros(2)}, message="base")
    made = {}
    for name, key in (("A", "doc"), ("F", "copy")):
        with ledger.start_run(base=base, datasets=[name], message=f"on {name}") as run:
            for _ in track([{"key": [key]}], run):
                pass
            made[name] = run.commit({"w": torch.ones(2)}).version_id
    report = taint_report(ledger, dataset="A", key="doc", near=0.9)
    assert sorted((m["dataset_id"], m["key"], m["jaccard"]) for m in report.matches) == [("A@1", "doc", 1.0),
                                                                                      ("F@1", "copy", 1.0)]
    assert sorted(v["version_id"] for v in report.versions) == sorted(made.values())
    record = ledger.retract(dataset="A", key="doc", near=0.9, reason="asked")
    assert sorted(s["version_id"] for s in record["steps"]) == sorted(made.values())
    with pytest.warns(UserWarning, match=r"F@1 copy: its text could not be read .* registered from memory.* were not "
                                         r"searched for copies of it; search them by text"):
        from_memory = taint_report(ledger, dataset="F", key="copy", near=0.9)
    assert [m["dataset_id"] for m in from_memory.matches] == ["F@1"]
    with pytest.warns(UserWarning, match="were not searched"):
        of_memory = ledger.retract(dataset="F", key="copy", near=0.9, reason="asked too")
    ledger.apply_retraction(of_memory["retraction_id"])
    audit = ledger.audit_retraction(of_memory["retraction_id"], releases="*")
    assert not audit["passed"] and any("F@1 copy: its text could not be read" in p for p in audit["problems"])


def test_a_merge_stamped_before_its_input_by_a_stepped_back_clock_keeps_it(ledger, data_dir, write_jsonl):
    """The plan went by creation time: a merge of merges whose clock read earlier than its inner
    merge's was planned first, found no step for the inner merge and dropped it (C alone again)."""
    from datetime import timedelta

    from provenance.retract import outdated_steps

    a, b, c, m, m2 = _merge_of_merges(ledger, data_dir, write_jsonl)
    rows = taint(ledger, dataset="letters", key="L7")
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    graph[m2.version_id]["created_at"] = graph[m.version_id]["created_at"] - timedelta(hours=1)
    graph[a.version_id]["created_at"] = graph[m.version_id]["created_at"] + timedelta(hours=1)  # A after M too
    steps = plan(rows, graph)
    assert [s.version_id for s in steps] == [a.version_id, m.version_id, m2.version_id]  # parents first
    nested = steps[-1]
    assert (nested.action, nested.inputs, nested.stand_ins, nested.dropped) == (
        "remerge", [m.version_id, c.version_id], [m.version_id], [])
    assert outdated_steps(steps) == {}


def test_a_retrain_on_an_older_dataset_version_says_remove_starts_from_the_latest(contributors, data_dir,
                                                                                    write_jsonl):
    """A run trained on private@1; the file changed since (private@2 holds x1 with another text,
    lost x2 and x3): the step said `prov dataset remove private x1`, which makes private@2 without
    x1, not private@1 without it (stranger pass 20)."""
    ledger, v = contributors
    write_jsonl(data_dir / "private.jsonl", [{"id": "x0", "text": "a private letter number 0"},
                                             {"id": "x1", "text": "a letter rewritten since"},
                                             {"id": "x9", "text": "a new letter"}])
    assert ledger.register_dataset("private", data_dir / "private.jsonl", id_field="id").dataset.dataset_id == \
        "private@2"
    record = ledger.retract(dataset="private@1", key="x1", reason="asked")
    step = next(s for s in record["steps"] if s["version_id"] == v["a"].version_id)
    assert step["action"] == "retrain" and step["remove"] == {"private@1": ["x1"]}
    assert ("make its data without the retracted documents with prov dataset remove private x1 (it starts from "
            "private@2, the latest version, whose documents may differ from private@1's, which the run trained on; "
            "for private@1's own, write its files without them and register those)") in step["why"]


def test_the_removal_command_a_plan_prints_quotes_keys_for_the_shell(ledger, data_dir, write_jsonl):
    """A key with spaces or shell characters is one argument of the printed `prov dataset remove`,
    in a retrain step and in the refusal of a document nothing trained on (stranger pass 37)."""
    write_jsonl(data_dir / "letters.jsonl", [{"id": "letter <7>", "text": "a private letter"},
                                             {"id": "it's mine", "text": "not trained on"}])
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")
    (data_dir / "letters.jsonl").write_text(json.dumps({"id": "letter <7>", "text": "a private letter"}) + "\n")
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")  # letters@2 without the other
    with ledger.start_run(datasets=["letters"], message="A") as r:
        a = r.commit({"w": torch.zeros(2)})
    record = ledger.retract(dataset="letters", key="letter <7>", reason="withdrawn")
    (step,) = [s for s in record["steps"] if s["version_id"] == a.version_id]
    assert "make its data without the retracted documents with prov dataset remove letters 'letter <7>'" in step["why"]
    with pytest.raises(InvalidParameterError, match=r"prov dataset remove letters 'it'\"'\"'s mine'$"):
        ledger.retract(dataset="letters", key="it's mine", reason="asked")


def test_a_retrain_on_two_versions_of_a_dataset_names_the_removal_once(ledger, data_dir, write_jsonl):
    """A run trained on letters@1 and letters@2, both holding L7: the step said `prov dataset
    remove letters L7` twice, once with the note about letters@1 and once without (stranger pass 62)."""
    write_jsonl(data_dir / "letters.jsonl", [{"id": f"L{i}", "text": f"a letter number {i} to the editor"}
                                             for i in range(4)])
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")
    assert ledger.remove_documents("letters", ["L1"]).dataset.dataset_id == "letters@2"
    with ledger.start_run(datasets=["letters@1", "letters@2"], message="both") as r:
        v = r.commit({"w": torch.zeros(2)})
    (step,) = ledger.retract(dataset="letters", key="L3", reason="withdrawn")["steps"]
    assert step["version_id"] == v.version_id and step["remove"] == {"letters@1": ["L3"], "letters@2": ["L3"]}
    assert step["why"].count("prov dataset remove letters L3") == 1
    assert step["why"].endswith(
        "make its data without the retracted documents with prov dataset remove letters L3 (it starts from letters@2, "
        "the latest version, whose documents may differ from letters@1's, which the run trained on; for letters@1's "
        "own, write its files without them and register those)")
    assert ledger.remove_documents("letters", ["L3"]).dataset.dataset_id == "letters@3"
    (step,) = ledger.retract(dataset="letters", key="L3", reason="asked again")["steps"]
    assert step["why"].endswith("; train on letters@3 (already without the retracted documents)")  # not twice


def test_the_retractions_of_a_taint_have_utc_times_and_a_list_of_results(contributors):
    """`prov taint --json` printed a retraction's created_at without its Z (a dict passed through as
    it was), and `results` of a retraction with nothing applied was null, as in the `earlier` of a
    second retraction of the same document (stranger pass 62)."""
    ledger, v = contributors
    first = ledger.retract(dataset="private", key="x1", reason="withdrawn")
    second = ledger.retract(dataset="private", key="x1", reason="asked again")
    assert second["earlier"] == [{"retraction_id": first["retraction_id"], "reason": "withdrawn", "results": []}]
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "taint", "private", "--key", "x1", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["retractions"]
    assert [r["retraction_id"] for r in listed] == [first["retraction_id"], second["retraction_id"]]
    assert [r["results"] for r in listed] == [[], []]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r["created_at"]) for r in listed)
    assert listed[0]["created_at"] == first["created_at"].isoformat() + "Z"
    third = CliRunner().invoke(main, ["--ledger", str(ledger.root), "retract", "private", "--key", "x1", "--reason", "3"])
    assert third.exit_code == 0, third.output
    for earlier in (first, second):  # the second was "(`prov retractions ID` shows the first)" too
        assert f"(`prov retractions {earlier['retraction_id']}` shows it)" in third.output


def test_the_audit_names_a_copy_the_retraction_did_not_take_out(ledger, data_dir, write_jsonl):
    """A key retracted in one dataset, its text also in another that a rebased version still
    trained on: the audit failed saying the version "has retracted data in its lineage", although
    the retracted document was gone and only the copy, not retracted, was left (stranger pass 62)."""
    letter = "the letter I sent last spring about the farm by the river and my neighbours"
    write_jsonl(data_dir / "letters.jsonl", [{"id": "L7", "text": letter}, {"id": "L1", "text": "a note on roads"}])
    write_jsonl(data_dir / "mirror.jsonl", [{"id": "copy", "text": letter}, {"id": "m1", "text": "a note on trains"}])
    ledger.register_dataset("letters", data_dir / "letters.jsonl", id_field="id")
    ledger.register_dataset("mirror", data_dir / "mirror.jsonl", id_field="id")
    base = ledger.commit({"w": torch.zeros(4)}, message="base")
    with ledger.start_run(base=base, datasets=["letters"], message="A") as r:
        a = r.commit({"w": torch.ones(4)})
    with ledger.start_run(base=a, datasets=["mirror"], message="D on A") as r:
        d = r.commit({"w": torch.full((4,), 2.0)})
    record = ledger.retract(dataset="letters", key="L7", reason="withdrawn")  # by key: the copy is not retracted
    assert [(x["dataset_id"], x["key"]) for x in record["documents"]] == [("letters@1", "L7")]
    assert {s["version_id"]: s["action"] for s in record["steps"]} == {a.version_id: "retrain", d.version_id: "rebase"}
    (made,) = ledger.apply_retraction(record["retraction_id"], rebase=True)
    assert ledger.taint(dataset="letters", key="L7").versions[0].version_id != made["new_version_id"]
    report = ledger.audit_retraction(record["retraction_id"], store=False)
    assert [(c["dataset_id"], c["key"]) for c in report["copies_found_now"]] == [("mirror@1", "copy")]
    new = made["new_version_id"][:12]
    assert report["problems"] == [
        f"rebase of {d.version_id[:12]} ({new}) has a copy of a retracted document in its lineage (found now: "
        f"mirror@1 copy), through {new}: the retraction did not take it out; retract the copy too"]
    assert not report["passed"]


def test_the_tag_of_a_replacement_stays_a_tag_prov_tag_can_move(contributors):
    """A release tag of 128 characters: its replacement was tagged `<tag>+retracted-<id>`, 151
    characters, which `prov tag` then refused as invalid, so it could not be moved (stranger pass 62)."""
    ledger, v = contributors
    long = "release-" + "x" * 120
    ledger.tag(long, v["m"])
    rid = ledger.retract(dataset="private", key="x1", reason="withdrawn")["retraction_id"]
    ledger.apply_retraction(rid)
    made = [t.name for t in ledger.tags() if t.name.startswith("release-x")]
    assert sorted(made) == sorted([long, long[:105] + f"+retracted-{rid}"]) and all(len(t) <= 128 for t in made)
    moved = CliRunner().invoke(main, ["--ledger", str(ledger.root), "tag", long[:105] + f"+retracted-{rid}",
                                      v["b"].version_id])
    assert moved.exit_code == 0, moved.output
    assert ledger.version(long[:105] + f"+retracted-{rid}").version_id == v["b"].version_id
    assert ledger.version(f"release-1+retracted-{rid}").tags == [f"release-1+retracted-{rid}"]  # short ones whole


def test_an_html_page_over_the_text_or_the_samples_is_refused_before_anything_is_recorded(contributors, tmp_path):
    """`prov retract --text doc.txt --html doc.txt` recorded the retraction and wrote its page over
    the document's text, and `prov audit retraction --samples s.txt --html s.txt` over the samples
    (stranger pass 65); `prov audit memorization` refused the same already."""
    ledger, _ = contributors
    base = ["--ledger", str(ledger.root)]
    doc = tmp_path / "doc.txt"
    doc.write_text("a private letter number 1\n", encoding="utf-8")
    out = CliRunner().invoke(main, [*base, "retract", "--text", str(doc), "--reason", "asked", "--html",
                                    str(tmp_path / "." / "doc.txt")])
    assert out.exit_code == 2 and f"--html and --text name the same file {str(doc)!r}: the page would replace" in out.output
    assert doc.read_text(encoding="utf-8") == "a private letter number 1\n" and ledger.retractions() == []
    rid = ledger.retract(dataset="private", key="x1", reason="withdrawn")["retraction_id"]
    out = CliRunner().invoke(main, [*base, "audit", "retraction", rid, "--samples", str(doc), "--html", str(doc)])
    assert out.exit_code == 2 and f"--html and --samples name the same file {str(doc)!r}: the page would" in out.output
    assert doc.read_text(encoding="utf-8") == "a private letter number 1\n"


def test_the_plan_page_counts_documents_and_whole_datasets_apart(contributors, tmp_path):
    """The plan's page said "documents: 1" for a retraction of a whole dataset of four documents,
    and of a shard (stranger pass 65)."""
    from provenance.audit_html import write_report

    ledger, _ = contributors

    def summary(record):
        page = write_report({**record, "kind": "retraction"}, tmp_path / "plan.html").read_text(encoding="utf-8")
        return dict(re.findall(r"<tr><th>([^<]*)</th><td[^>]*>([^<]*)</td></tr>", page))

    retracted = ledger.retract(dataset="private", reason="withdrawn")
    whole = summary(retracted)
    assert (whole["documents"], whole["whole datasets and shards"]) == ("0", "1")
    keys = summary(ledger.retract(dataset="private", key="x1", reason="one letter"))
    assert keys["documents"] == "1" and "whole datasets and shards" not in keys
    # the list, the proof and the proof's page counted the whole dataset as 1 document too
    listed = {r["retraction_id"]: (r["documents"], r["whole"]) for r in ledger.retractions()}
    assert sorted(listed.values()) == [(0, 1), (1, 0)]
    proof = ledger.audit_retraction(retracted["retraction_id"], store=False)
    assert (proof["documents"], proof["whole"]) == (0, 1)
    page = write_report({**proof, "kind": "retraction-audit"}, tmp_path / "proof.html").read_text(encoding="utf-8")
    shown = dict(re.findall(r"<tr><th>([^<]*)</th><td[^>]*>([^<]*)</td></tr>", page))
    assert (shown["documents"], shown["whole datasets and shards"]) == ("0", "1")
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "retractions"])
    rows = {line.split("│")[4].strip(): line.split("│")[5].strip() for line in out.output.splitlines() if "│" in line}
    assert out.exit_code == 0 and (rows["withdrawn"], rows["one letter"]) == ("0 (+1 whole)", "1"), out.output


def test_a_tainted_checkpoint_is_retrained_with_its_run_and_one_saved_before_is_left_alone(ledger, data_dir,
                                                                                          write_jsonl):
    """A checkpoint is its run's, trained on the steps up to its own: a document the run saw by then
    taints it and the plan retrains it as its run (never a rebase, as if it carried an ended run's
    patch); a document first seen after it leaves it out of the plan."""
    from provenance.retract import retract

    write_jsonl(data_dir / "d.jsonl", [{"id": f"k{i}", "text": f"document number {i} of d"} for i in range(8)])
    ledger.register_dataset("d", data_dir / "d.jsonl", id_field="id")
    base = ledger.commit({"w": torch.zeros(3)}, message="base")
    with ledger.start_run(base=base, datasets=["d"], params={"lr": 0.1}, message="train") as run:
        for step in range(4):
            run.log_examples([f"k{2 * step}", f"k{2 * step + 1}"], step=step)
            if step == 1:
                checkpoint = run.checkpoint({"w": torch.ones(3)})
        final = run.commit({"w": torch.full((3,), 2.0)})
    tuned = ledger.commit({"w": torch.full((3,), 3.0)}, parent=checkpoint, message="tuned from the checkpoint")

    first = retract(ledger, dataset="d", key="k1", reason="withdrawn")
    early = {s["version_id"]: s for s in first["steps"]}
    assert set(early) == {checkpoint.version_id, final.version_id, tuned.version_id}
    assert (early[checkpoint.version_id]["action"], early[checkpoint.version_id]["run_id"]) == ("retrain", run.run_id)
    assert early[checkpoint.version_id]["settings"] == {"lr": 0.1} and early[checkpoint.version_id]["remove"] == {
        "d@1": ["k1"]}
    assert early[final.version_id]["action"] == "retrain"
    assert (early[tuned.version_id]["action"], early[tuned.version_id]["onto"]) == ("rebase", base.version_id)
    second = retract(ledger, dataset="d", key="k6", reason="withdrawn too")  # seen at step 3
    assert [(s["version_id"], s["action"]) for s in second["steps"]] == [(final.version_id, "retrain")]
    assert [r["retraction_id"] for r in ledger.lineage(checkpoint).retracted] == [first["retraction_id"]]
    assert sorted(r["retraction_id"] for r in ledger.lineage(final).retracted) == sorted(
        [first["retraction_id"], second["retraction_id"]])
