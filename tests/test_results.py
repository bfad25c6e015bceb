"""Typed results: every verb that answers a question returns a frozen pydantic model, whose JSON is
what ``--json`` prints and what the schema in ``schemas/records/`` describes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from provenance.cli.main import main
from provenance.demo import run_demo
from provenance.results import (
    DedupReport,
    GateReport,
    Lineage,
    MemorizationReport,
    MergeReceipt,
    TaintReport,
)
from provenance.schema_export import default_folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's ledger: three datasets (one of evaluation data), three trained versions, a merge."""
    root = tmp_path_factory.mktemp("results") / "demo"
    report = run_demo(root, n_docs=400, seed=3)
    from provenance import Ledger

    ledger = Ledger.open(root)
    samples = root / "samples.jsonl"
    forum = [json.loads(line)["text"] for line in (root / "data" / "forum.jsonl").read_text().splitlines()[:3]]
    samples.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*forum, "nothing like the training data"]))
    return ledger, report, samples


def _schema(name: str) -> dict:
    return json.loads((default_folder() / f"{name}.schema.json").read_text())


def _cli(root: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--ledger", str(root), *args, "--json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def test_every_question_returns_its_typed_result(demo):
    ledger, _, samples = demo
    lin = ledger.lineage("demo-merge")
    assert isinstance(lin, Lineage) and isinstance(lin.versions, pa.Table) and isinstance(lin.shards, pa.Table)
    assert lin.versions.column("version_id")[0].as_py() == lin.version == ledger.version("demo-merge").version_id
    assert {d.dataset_id for d in lin.datasets} == {"web-crawl@1", "forum-posts@1"}
    assert sum(d.effective_share for d in lin.datasets) == pytest.approx(1.0)
    assert lin.license.non_commercial == ["forum-posts@1"]

    taint = ledger.taint(dataset="forum-posts")
    assert isinstance(taint, TaintReport) and taint.target == "forum-posts"
    direct = {ledger.version(t).version_id: d for t, d in
              [("demo-base", True), ("demo-fish", True), ("demo-lora", False), ("demo-merge", False)]}
    assert {v.version_id: v.direct for v in taint.versions} == direct  # the base trained on forum posts too

    dedup = ledger.audit_dedup(["web-crawl"], store=False)
    assert isinstance(dedup, DedupReport) and dedup.kind == "dedup" and not dedup.stored
    assert dedup.summary.pairs == len(dedup.pairs) > 0 and dedup.summary.documents == 400
    assert all(p.jaccard >= 0.8 for p in dedup.pairs)

    gate = ledger.audit_merge(["demo-fish", "demo-lora"], store=False)
    assert isinstance(gate, GateReport) and gate.passed is False
    assert [v.policy for v in gate.violations] == ["max_contamination"]
    assert gate.contamination.contaminated_eval_documents > 0
    assert gate.overlap[0].a_exact + gate.overlap[0].a_near > 0  # the planted reposts

    memo = ledger.audit_memorization("demo-merge", samples, store=False)
    assert isinstance(memo, MemorizationReport) and memo.summary.samples == 4
    assert memo.summary.samples_matching_training == 3 and memo.samples[3].matches == []
    assert all(s.matches[0].jaccard == 1.0 and s.matches[0].dataset_id == "forum-posts@1" for s in memo.samples[:3])

    receipt = ledger.receipt("demo-merge")
    assert isinstance(receipt, MergeReceipt) and receipt.method == "fisher" and len(receipt.inputs) == 2
    assert set(receipt.groups) == set(ledger.manifest("demo-merge"))
    assert ledger.receipt("demo-base") is None


def test_results_are_frozen_read_by_key_and_round_trip_through_json(demo):
    ledger, _, _ = demo
    gate = ledger.audit_merge(["demo-fish", "demo-lora"], store=False)
    with pytest.raises(ValidationError):
        gate.passed = True
    assert gate["passed"] is gate.passed and gate["policy"]["max_contamination"] == gate.policy.max_contamination == 0
    assert dict(gate)["audit_id"] == gate.audit_id and "violations" in gate and "nope" not in gate
    with pytest.raises(KeyError):
        gate["nope"]
    assert GateReport.model_validate_json(gate.model_dump_json()) == gate
    assert GateReport.model_validate(gate.to_dict()).to_dict() == gate.to_dict()
    lin = ledger.lineage("demo-merge")
    again = Lineage.model_validate(json.loads(json.dumps(lin.to_dict())))
    assert again.to_dict() == lin.to_dict() and again.shards.num_rows == lin.shards.num_rows > 0
    assert again.versions.schema.field("created_at").type == pa.timestamp("us")
    with pytest.raises(ValidationError, match="extra"):
        MergeReceipt.model_validate({**ledger.receipt("demo-merge").to_dict(), "surprise": 1})


def test_the_json_the_cli_prints_validates_against_the_published_schemas(demo):
    ledger, _, samples = demo
    root = ledger.root.parent
    printed = {
        "lineage": _cli(root, "lineage", "demo-merge"),
        "taint_report": _cli(root, "taint", "forum-posts"),
        "dedup_report": _cli(root, "audit", "dedup", "web-crawl", "--no-store"),
        "gate_report": _cli(root, "audit", "merge", "demo-fish", "demo-lora", "--no-store"),
        "memorization_report": _cli(root, "audit", "memorization", "demo-merge", "--samples", str(samples),
                                    "--no-store"),
        "merge_receipt": _cli(root, "model", "show", "demo-merge")["receipt"],
    }
    for name, data in printed.items():
        jsonschema.Draft202012Validator(_schema(name)).validate(data)
    assert printed["gate_report"]["passed"] is False and printed["merge_receipt"]["method"] == "fisher"
    broken = {**printed["gate_report"], "passed": "no"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema("gate_report")).validate(broken)


def test_a_stored_audit_keeps_the_json_of_its_typed_report(demo):
    ledger, _, _ = demo
    report = ledger.audit_dedup(["forum-posts"])
    stored = ledger.audit(report.audit_id)["report"]
    assert DedupReport.model_validate(stored).summary == report.summary
    jsonschema.Draft202012Validator(_schema("dedup_report")).validate(stored)
