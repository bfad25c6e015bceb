"""The pre-merge gate and the memorization audit: overlap, contamination, exit status, exposure."""

from __future__ import annotations

import gzip
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from provenance.audit_html import write_report
from provenance.cli.main import main
from provenance.errors import InvalidParameterError, NotFoundError, SourceError
from provenance.gate import audit_merge
from provenance.ledger.audit_sql import AuditWrites
from provenance.memorization import audit_memorization, read_samples
from provenance.ngrams import WindowIndex, longest_run


def _two_contributors(ledger, a: str, b: str):
    """Versions trained on dataset ``a`` and on dataset ``b``, each from one base."""
    base = ledger.commit({"w": torch.zeros(2)}, message="base")
    with ledger.start_run(base=base, datasets=[a], message=a) as run:
        va = run.commit({"w": torch.ones(2)})
    with ledger.start_run(base=base, datasets=[b], message=b) as run:
        vb = run.commit({"w": 2 * torch.ones(2)})
    return va, vb


def words(i: int, n: int = 40) -> str:
    return " ".join(f"w{i}x{j}" for j in range(n))


@pytest.fixture
def contributors(ledger, data_dir, write_jsonl):
    """Two contributors on one base: ``a`` trained on 20 documents, ``b`` on 20 of which 3 are
    exact copies of a's and 1 a near-copy; an eval set with one document copied into b and one
    that shares a 15-word span with a training document."""
    write_jsonl(data_dir / "base.jsonl", [{"id": f"z{i}", "text": words(900 + i)} for i in range(10)])
    write_jsonl(data_dir / "a.jsonl", [{"id": f"a{i}", "text": words(i)} for i in range(20)])
    b_docs = [{"id": f"b{i}", "text": words(i) if i < 3 else words(100 + i)} for i in range(20)]
    b_docs[3]["text"] = words(5).replace("w5x39", "changed")  # a near-copy of a5 (39 of 40 words)
    b_docs[4]["text"] = words(700)  # = eval e0
    write_jsonl(data_dir / "b.jsonl", b_docs)
    write_jsonl(data_dir / "ev.jsonl", [{"id": "e0", "text": words(700)},
                                        {"id": "e1", "text": "a question: " + " ".join(words(110).split()[:15]) + " ?"},
                                        {"id": "e2", "text": words(800)}])
    ledger.register_dataset("base", data_dir / "base.jsonl", id_field="id")
    ledger.register_dataset("a", data_dir / "a.jsonl", id_field="id")
    ledger.register_dataset("b", data_dir / "b.jsonl", id_field="id")
    ledger.register_dataset("ev", data_dir / "ev.jsonl", id_field="id", role="eval")
    with ledger.start_run(datasets=["base"], message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    with ledger.start_run(base=base, datasets={"a": 3}, message="a") as run:
        va = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["b"], message="b") as run:
        vb = run.commit({"w": 2 * torch.ones(4)})
    return ledger, base, va, vb


def test_gate_reports_overlap_and_contamination(contributors):
    ledger, base, va, vb = contributors
    report = audit_merge(ledger, [va.version_id, vb.version_id], threshold=0.8)
    # by default any contaminated evaluation document fails the gate; overlap is only reported
    assert report["policy"] == {"max_overlap": None, "max_contamination": 0, "deny_license": [], "deny_retracted": False}
    assert not report["passed"] and report["violations"] == [{
        "policy": "max_contamination",
        "message": "max-contamination 0 broken: 2 evaluation documents of ev@1 are in the training data (2 over)"}]
    assert report["alerts"] == [report["violations"][0]["message"]]
    no_limit = audit_merge(ledger, [va.version_id, vb.version_id], max_contamination=None, ngram=0)
    assert no_limit["passed"] and no_limit["violations"] == [] and no_limit["contamination"]["contaminated_eval_documents"] == 1
    assert [s["datasets"] for s in report["sides"]] == [["a@1"], ["b@1"]]  # the shared base's data is not counted
    o = report["overlap"][0]
    assert (o["a_documents"], o["b_documents"]) == (20, 20)
    assert (o["a_exact"], o["a_near"], o["b_exact"], o["b_near"]) == (3, 1, 3, 1)
    assert o["a_fraction"] == pytest.approx(4 / 20) and o["datasets"] == [{"dataset": "a@1", "other": "b@1", "exact": 3, "near": 1}]
    c = report["contamination"]
    assert c["eval_datasets"] == ["ev@1"] and c["eval_documents"] == 3 and c["training_documents"] == 40
    assert (c["eval_exact"], c["training_exact"]) == (1, 1) and c["training_keys"] == ["b@1:b4"]
    assert c["ngram"]["eval_keys"] == ["ev@1:e0", "ev@1:e1"]  # e1 by its 15-word span (>= 13), e0 whole
    assert c["contaminated_eval_documents"] == 2 and c["contaminated_eval_keys"] == ["ev@1:e0", "ev@1:e1"]
    full = audit_merge(ledger, [va.version_id, vb.version_id], full_lineage=True, ngram=0)
    assert full["overlap"][0]["a_documents"] == 30 and full["overlap"][0]["a_exact"] == 13  # base's 10 in both
    assert full["contamination"]["training_documents"] == 50  # the base's 10 once, not once per input (60)
    assert full["contamination"]["ngram"] is None and full["contamination"]["contaminated_eval_documents"] == 1
    stored = ledger.audit(report["audit_id"])
    assert stored["kind"] == "merge" and stored["passed"] is False
    assert ledger.audit(no_limit["audit_id"])["passed"] is True


def test_gate_limits_fail_with_how_much_and_cli_exit_status(contributors, tmp_path):
    ledger, base, va, vb = contributors
    report = audit_merge(ledger, [va.version_id, vb.version_id], max_overlap=0.1, max_contamination=1)
    assert not report["passed"] and len(report["alerts"]) == 3
    assert [v["policy"] for v in report["violations"]] == ["max_contamination", "max_overlap", "max_overlap"]
    assert "max-contamination 1 broken: 2 evaluation documents of ev@1" in report["alerts"][0]
    assert "max-overlap 10.00% broken: 20.00%" in report["alerts"][1] and "10.00 points over" in report["alerts"][1]
    assert ledger.audit(report["audit_id"])["passed"] is False
    runner = CliRunner()
    cli = ["--ledger", str(ledger.root)]
    out = runner.invoke(main, [*cli, "audit", "merge", va.version_id, vb.version_id, "--max-overlap", "0.5"])
    assert out.exit_code == 1 and "FAILED" in out.output and "max-contamination 0 broken" in out.output, out.output
    # the broken policy is said first, before the tables
    assert out.output.index("max-contamination 0 broken") < out.output.index("Training-data overlap")
    out = runner.invoke(main, [*cli, "audit", "merge", va.version_id, vb.version_id, "--max-overlap", "0.5",
                               "--max-contamination", "none"])
    assert out.exit_code == 0 and "PASSED" in out.output, out.output
    out = runner.invoke(main, [*cli, "audit", "merge", va.version_id, vb.version_id, "--max-contamination", "0",
                               "--json"])
    assert out.exit_code == 1 and json.loads(out.output)["passed"] is False
    ledger.tag("rel-a", va)
    ledger.tag("a-2", va)
    listed = runner.invoke(main, [*cli, "audit", "list"]).output.splitlines()  # the versions short, with their tags
    assert len(listed) == 4 and all(line.endswith(f"{va.version_id[:12]} (a-2, rel-a) {vb.version_id[:12]}")
                                    for line in listed), "\n".join(listed)
    assert [line.split()[6] for line in listed] == ["FAILED", "passed", "FAILED", "FAILED"]
    assert json.loads(runner.invoke(main, [*cli, "audit", "list", "--json"]).output)[0]["target"] == \
        f"{va.version_id} {vb.version_id}"  # the whole ids, as stored
    gone = runner.invoke(main, [*cli, "audit", "delete", "--before", "2999-01-01", "--dry-run"]).output.splitlines()
    assert [line.split()[0] for line in gone[:4]] == [line.split()[0] for line in listed]  # newest first, as listed
    assert gone[0].endswith(f"{va.version_id[:12]} (a-2, rel-a) {vb.version_id[:12]}")
    # prov merge --gate refuses, and merges with --audit or a passing gate
    before = len(ledger.versions())
    out = runner.invoke(main, [*cli, "merge", va.version_id, vb.version_id, "--method", "average", "--gate",
                               "--max-overlap", "0.1", "-m", "gated"])
    assert out.exit_code == 1 and "the pre-merge gate failed" in out.output and len(ledger.versions()) == before
    out = runner.invoke(main, [*cli, "merge", va.version_id, vb.version_id, "--method", "average", "--gate",
                               "--max-overlap", "0.5", "--max-contamination", "2", "-m", "gated", "--json"])
    assert out.exit_code == 0, out.output
    merged = json.loads(out.output)["version_id"]
    assert ledger.receipt(merged)["audit_id"] == ledger.audits("merge")[0]["audit_id"]
    out = runner.invoke(main, [*cli, "merge", va.version_id, vb.version_id, "--max-overlap", "0.5", "-m", "x"])
    assert out.exit_code == 2 and "need --gate" in out.output
    page = write_report(report, tmp_path / "gate.html")
    text = page.read_text()
    HTMLParser().feed(text)
    assert "Pre-merge gate" in text and "max-contamination 1 broken" in text
    both = text[text.index("Overlapping datasets"):]  # each input's documents found in the other's datasets
    rows = [r.split("</tr>")[0] for r in both.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]]
    assert [r.split("</td>")[1:4] for r in rows] == [["<td>a@1", f"<td>{vb.version_id[:12]}", "<td>b@1"],
                                                     ["<td>b@1", f"<td>{va.version_id[:12]}", "<td>a@1"]]


def test_gate_bad_input(contributors):
    ledger, base, va, vb = contributors
    with pytest.raises(InvalidParameterError, match="at least two different versions"):
        audit_merge(ledger, [va.version_id, va.version_id])
    with pytest.raises(InvalidParameterError, match=r"threshold must be in \(0, 1\]"):
        audit_merge(ledger, [va.version_id, vb.version_id], threshold=0)
    with pytest.raises(InvalidParameterError, match="max-overlap must be a fraction"):
        audit_merge(ledger, [va.version_id, vb.version_id], max_overlap=2)
    with pytest.raises(InvalidParameterError, match=r"^deny-licence ',' names no condition; choose from non-comm"):
        audit_merge(ledger, [va.version_id, vb.version_id], deny_license=",")  # was: no condition, silently
    with pytest.raises(InvalidParameterError, match=r"^deny-licence '' names no condition; choose from non-comm"):
        audit_merge(ledger, [va.version_id, vb.version_id], deny_license="")  # `--deny-licence "$UNSET"`: it passed
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "merge", va.version_id, vb.version_id,
                                       "--deny-licence", ""])
    assert result.exit_code == 4 and "deny-licence '' names no condition" in result.output, result.output
    with pytest.raises(Exception, match="no version or tag 'nope'"):
        audit_merge(ledger, [va.version_id, "nope"])
    with pytest.raises(NotFoundError, match="no version or tag 'a'.*; a@1 is a dataset: the memorization audit takes a "
                                            "model version"):
        audit_memorization(ledger, "a", ["some sample text"])  # was: no version or tag 'a@1'
    with pytest.raises(NotFoundError, match=r"^no version or tag 'nope' \(a version id is 4 to 32 hex digits\)$"):
        audit_memorization(ledger, "nope", ["some sample text"])  # was: neither a dataset nor a version
    with pytest.raises(InvalidParameterError, match="ngram must be from 0 .no span check. to 1000 words, got 100000"):
        audit_merge(ledger, [va.version_id, vb.version_id], ngram=100_000)  # a span no text holds: no check at all
    with pytest.raises(InvalidParameterError, match=r"^ngram must be a whole number of words, got 13.5$"):
        audit_merge(ledger, [va.version_id, vb.version_id], ngram=13.5)
    for limit in (float("nan"), 1.5, -1, True):  # NaN was a bare ValueError; 1.5 was cut to 1 and passed
        with pytest.raises(InvalidParameterError, match=rf"^max-contamination must be a whole count >= 0 \(or None: no "
                                                        rf"limit\), got {limit!r}$"):
            audit_merge(ledger, [va.version_id, vb.version_id], max_contamination=limit)
    with pytest.raises(InvalidParameterError, match="span must be from 0 .no span check. to 1000 words, got 1001"):
        audit_memorization(ledger, va.version_id, ["x"], span=1001)  # was taken: a span no sample holds
    for command in (["audit", "merge", va.version_id, vb.version_id], ["audit", "dedup", "a"]):
        result = CliRunner().invoke(main, ["--ledger", str(ledger.root), *command, "--threshold", "0"])
        assert result.exit_code == 2 and "Invalid value for '--threshold': 0.0 is not in the range 0<x<=1" in result.output
    # every out-of-range number is a usage error (exit 2) as --threshold is; these exited 4
    for option, value, bounds in (("--max-overlap", "2", "2.0 is not in the range 0<=x<=1"),
                                  ("--ngram", "1001", "1001 is not in the range 0<=x<=1000")):
        result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "merge", va.version_id,
                                           vb.version_id, option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}': {bounds}" in result.output
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", va.version_id,
                                       "--samples", "x.txt", "--span", "100000"])
    assert result.exit_code == 2 and "Invalid value for '--span': 100000 is not in the range 0<=x<=1000" in result.output
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "merge", va.version_id])
    assert result.exit_code == 2 and "at least two versions" in result.output  # a usage error, as cli.md says
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "dataset", "add", "x", "a.jsonl", "--threshold", "1"])
    assert result.exit_code == 2 and "0<x<1" in result.output  # the stored bands need a similarity below 1


def test_a_contamination_limit_with_no_evaluation_dataset(ledger, data_dir, write_jsonl):
    """With no evaluation dataset the default limit checks nothing and the report says so (its
    policy has none, the header lists none); a limit given, 0 included, is refused: it could not
    be checked (stranger pass: 1 was refused, 0 printed 'PASSED (limits: max-contamination 0)')."""
    for name, start in (("a", 0), ("b", 100)):
        write_jsonl(data_dir / f"{name}.jsonl", [{"id": f"{name}{i}", "text": words(start + i)} for i in range(5)])
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
    va, vb = _two_contributors(ledger, "a", "b")
    report = audit_merge(ledger, [va.version_id, vb.version_id], ngram=0)
    assert report.passed and report["contamination"] is None and report["policy"]["max_contamination"] is None
    assert report["stored"] and not audit_merge(ledger, [va.version_id, vb.version_id], ngram=0, store=False)["stored"]
    assert not audit_memorization(ledger, va.version_id, [words(1)], store=False)["stored"]  # --json says so
    for limit in (0, 1):
        with pytest.raises(InvalidParameterError, match=rf"^--max-contamination {limit} needs evaluation datasets: "
                                                        r"none given \(--eval\)"):
            audit_merge(ledger, [va.version_id, vb.version_id], max_contamination=limit, ngram=0)
    cli = ["--ledger", str(ledger.root), "audit", "merge", va.version_id, vb.version_id, "--ngram", "0"]
    out = CliRunner().invoke(main, cli)
    assert out.exit_code == 0 and "PASSED (no limits set: a report only)" in out.output, out.output
    assert "contamination: no evaluation datasets registered" in out.output
    out = CliRunner().invoke(main, [*cli, "--max-contamination", "0"])
    assert out.exit_code == 4 and "--max-contamination 0 needs evaluation datasets" in out.output, out.output
    assert CliRunner().invoke(main, [*cli, "--max-contamination", "none"]).exit_code == 0


def test_an_evaluation_set_of_another_config_found_by_default_is_named_as_such(ledger, data_dir, write_jsonl):
    """An evaluation set registered under another fingerprint config failed the gate with the
    default limit as "a@1 uses … but q3@1 uses …": the user never named q3, and nothing said it was
    compared because every eval set is by default, nor how to leave it out."""
    from provenance.errors import FingerprintMismatchError

    for name, start in (("a", 0), ("b", 100)):
        write_jsonl(data_dir / f"{name}.jsonl", [{"id": f"{name}{i}", "text": words(start + i)} for i in range(5)])
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
    write_jsonl(data_dir / "q3.jsonl", [{"id": "q0", "text": words(200)}])
    ledger.register_dataset("q3", data_dir / "q3.jsonl", id_field="id", role="eval", config={"ngram": 3})
    va, vb = _two_contributors(ledger, "a", "b")
    with pytest.raises(FingerprintMismatchError, match=r"but q3@1 uses .*word3.* \(the evaluation datasets q3@1 are "
                                                       r"compared because every dataset of role eval is, when none is "
                                                       r"named: name those to compare with --eval"):
        audit_merge(ledger, [va.version_id, vb.version_id], ngram=0)
    with pytest.raises(FingerprintMismatchError, match=r"but q3@1 uses [^(]*config$"):  # named: the plain refusal
        audit_merge(ledger, [va.version_id, vb.version_id], ngram=0, eval_datasets=["q3"])
    with pytest.warns(UserWarning, match="evaluation set q3@1 left out"):
        assert audit_merge(ledger, [va.version_id, vb.version_id], ngram=0, max_contamination=None).passed


def test_memorization_finds_copies_spans_and_exposure(contributors, data_dir, tmp_path):
    ledger, base, va, vb = contributors
    samples = data_dir / "samples.jsonl"
    samples.write_text("\n".join(json.dumps(s) for s in [
        {"text": words(3)},                                                    # a3 verbatim
        "nothing like the training data at all, just words",                  # no match
        {"text": "so " + " ".join(words(7).split()[:25]) + " and more"},      # a 25-word span of a7
        {"text": words(905)},                                                  # z5: base data, in the lineage too
    ]) + "\n")
    report = audit_memorization(ledger, va.version_id, samples, span=20)
    by = {s["index"]: s["matches"] for s in report["samples"]}
    assert [(m["key"], m["jaccard"], m["span_words"]) for m in by[0]] == [("a3", 1.0, 40)]
    assert by[1] == []
    assert [(m["key"], m["span_words"]) for m in by[2]] == [("a7", 25)] and by[2][0]["jaccard"] < 0.8
    assert [m["key"] for m in by[3]] == ["z5"]
    assert by[0][0]["exposure"] == 3.0 and by[3][0]["exposure"] == 1.0  # a declared for 3 epochs, base for 1
    assert report["summary"] == {"samples": 4, "samples_matching_training": 3, "samples_with_span": 3,
                                 "training_documents_matched": 3, "max_exposure": 3.0}
    # b's lineage has a near-copy of a5 (b3) and an exact copy of a0 (b0): exposure counts near-copies
    runner = CliRunner()
    out = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", vb.version_id,
                               "--samples", str(samples), "--json", "--html", str(tmp_path / "m.html")])
    assert out.exit_code == 0, out.output
    assert [m["key"] for m in json.loads(out.output)["samples"][3]["matches"]] == ["z5"]
    HTMLParser().feed((tmp_path / "m.html").read_text())
    for given in (samples.read_text(), "\n".join(words(905) if i == 3 else f"sample {i}" for i in range(4)) + "\n"):
        piped = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", vb.version_id,
                                     "--samples", "-", "--json", "--no-store"], input=given)  # was: no such file '-'
        assert piped.exit_code == 0, piped.output
        assert [m["key"] for m in json.loads(piped.output)["samples"][3]["matches"]] == ["z5"]
    empty = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", vb.version_id,
                                 "--samples", "-"], input="\n")
    assert empty.exit_code == 4 and "stdin: the samples file is empty" in empty.output


def test_an_eval_set_of_another_config_is_left_out_only_when_no_limit_asks_for_it(data_dir, contributors):
    """One evaluation set registered under another fingerprint config made every gate fail, even
    with `--max-contamination none` (found by stranger pass 37): with no limit it is named in a
    warning and left out; with a limit (the default included) the gate still refuses."""
    from provenance.errors import FingerprintMismatchError
    from provenance.fingerprints import FingerprintConfig

    ledger, base, va, vb = contributors
    ledger.register_dataset("ev64", data_dir / "ev.jsonl", id_field="id", role="eval",
                            config=FingerprintConfig(num_perm=64))
    with pytest.warns(UserWarning, match=r"evaluation set ev64@1 left out: fingerprinted under \S*k64\S*, not the "
                      r"training data's \S*k128\S*, so its contamination cannot be measured"):
        report = ledger.audit_merge([va, vb], max_contamination=None, store=False)
    assert report.contamination is not None and report.contamination["eval_datasets"] == ["ev@1"]
    for limit in ({}, {"max_contamination": 0}):
        with pytest.raises(FingerprintMismatchError, match="different configs"):
            ledger.audit_merge([va, vb], store=False, **limit)


def test_samples_files_are_checked(data_dir, contributors):
    ledger, base, va, vb = contributors
    (data_dir / "empty.txt").write_text("\n\n")
    with pytest.raises(SourceError, match="empty.txt: the samples file is empty"):
        read_samples(data_dir / "empty.txt")
    (data_dir / "bad.txt").write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(SourceError, match=r"bad.txt: line 2 is not UTF-8"):
        read_samples(data_dir / "bad.txt")
    (data_dir / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(SourceError, match=r"bad.jsonl: line 2 has no text"):
        read_samples(data_dir / "bad.jsonl")
    (data_dir / "cut.jsonl").write_text('{"text": "ok"}\n{"text": "cut here\n')
    with pytest.raises(SourceError) as caught:
        read_samples(data_dir / "cut.jsonl")
    assert str(caught.value) == f"{data_dir / 'cut.jsonl'}: line 2 is not JSON (Unterminated string at column 10)"
    (data_dir / "lines.txt").write_text("one sample\n\nanother sample\n")
    assert read_samples(data_dir / "lines.txt") == ["one sample", "another sample"]
    (data_dir / "surrogate.jsonl").write_text('{"text": "ok"}\n{"text": "a \\ud800 b"}\n')
    with pytest.raises(SourceError) as caught:  # it named neither the file nor the line
        read_samples(data_dir / "surrogate.jsonl")
    assert str(caught.value) == (f"{data_dir / 'surrogate.jsonl'}: line 2: the text holds an unpaired surrogate at "
                                 "character 2, which is not valid Unicode")
    (data_dir / "samples.ndjson").write_text('{"text": "one"}\n"two"\n')  # each JSON line was a sample (pass 37)
    assert read_samples(data_dir / "samples.ndjson") == ["one", "two"]
    (data_dir / "lines.txt.gz").write_bytes(gzip.compress(b"one sample\n"))
    with pytest.raises(SourceError, match=r"lines.txt.gz: the samples file is gzip-compressed; decompress it first"):
        read_samples(data_dir / "lines.txt.gz")  # it said 'line 1 is not UTF-8 (byte 1)'
    with pytest.raises(InvalidParameterError, match="span must be"):
        audit_memorization(ledger, va.version_id, ["x"], span=-1)
    assert ledger.audits("memorization") == []


def test_gate_with_thousands_of_copies_on_both_sides(ledger, data_dir, write_jsonl):
    """Boilerplate repeated thousands of times on both sides: counted right, without a band join
    over millions of pairs (identical signatures are grouped first)."""
    x = words(1, 60)
    x_near = x.replace("w1x59", "other")  # 59 of 60 words: a near-copy
    write_jsonl(data_dir / "a.jsonl", [{"id": f"a{i}", "text": x} for i in range(2000)]
                + [{"id": f"u{i}", "text": words(100 + i)} for i in range(10)])
    write_jsonl(data_dir / "b.jsonl", [{"id": f"b{i}", "text": x_near} for i in range(1500)]
                + [{"id": "bx", "text": x}] + [{"id": f"v{i}", "text": words(200 + i)} for i in range(9)])
    ledger.register_dataset("a", data_dir / "a.jsonl", id_field="id")
    ledger.register_dataset("b", data_dir / "b.jsonl", id_field="id")
    va, vb = _two_contributors(ledger, "a", "b")
    o = audit_merge(ledger, [va, vb], ngram=0)["overlap"][0]
    assert (o["a_documents"], o["a_exact"], o["a_near"]) == (2010, 2000, 0)
    assert (o["b_documents"], o["b_exact"], o["b_near"]) == (1510, 1, 1500)
    # per pair of datasets, in both directions (B's were left out: pass 22)
    assert o["datasets"] == [{"dataset": "a@1", "other": "b@1", "exact": 2000, "near": 0}]
    assert o["b_datasets"] == [{"dataset": "b@1", "other": "a@1", "exact": 1, "near": 1500}]


def test_memorization_with_many_copies_counts_them_all(ledger, data_dir, write_jsonl):
    x = words(5, 60)
    write_jsonl(data_dir / "t.jsonl", [{"id": f"c{i}", "text": x} for i in range(500)]
                + [{"id": "near", "text": x.replace("w5x59", "changed")}]
                + [{"id": f"u{i}", "text": words(300 + i)} for i in range(20)])
    ledger.register_dataset("t", data_dir / "t.jsonl", id_field="id")
    with ledger.start_run(datasets={"t": 2}, message="two epochs") as run:
        v = run.commit({"w": torch.zeros(2)})
    report = audit_memorization(ledger, v.version_id, [x, words(999)], span=0)
    matches = report["samples"][0]["matches"]
    assert len(matches) == 501 and report["samples"][1]["matches"] == []
    by_key = {m["key"]: m for m in matches}
    assert by_key["c0"]["jaccard"] == 1.0 and 0.8 <= by_key["near"]["jaccard"] < 1.0
    assert by_key["c7"]["near_copies"] == 500 and by_key["c7"]["exposure"] == 501 * 2.0
    assert by_key["near"]["near_copies"] == 500 and by_key["near"]["exposure"] == 501 * 2.0


def test_a_memorization_audit_stores_the_pairs_of_the_matched_documents_only(ledger, data_dir, write_jsonl):
    """The stored pairs are the matched documents' with their near-copies, also when a sample is
    a verbatim copy (its group's first member is then the sample, not a document); documents that
    no sample reached are not paired (stranger pass 37)."""
    x = words(5, 60)
    write_jsonl(data_dir / "t.jsonl", [{"id": "t0", "text": x}, {"id": "copy", "text": x},
                                       {"id": "near", "text": x.replace("w5x59", "changed")},
                                       {"id": "u0", "text": words(300)}, {"id": "u1", "text": words(300)}])
    ledger.register_dataset("t", data_dir / "t.jsonl", id_field="id")
    with ledger.start_run(datasets=["t"], message="one epoch") as run:
        v = run.commit({"w": torch.zeros(2)})

    def stored(samples):
        report = audit_memorization(ledger, v.version_id, samples, span=0)
        return sorted((p["a"], p["b"]) for p in ledger.audit_pairs(report["audit_id"]).to_pylist())

    assert stored([x]) == stored([x.replace("w5x59", "other")]) == [("t0", "copy"), ("t0", "near")]
    assert stored([words(999)]) == []


def test_memorization_exposure_is_the_exact_sum_over_a_document_and_its_copies(ledger, data_dir, write_jsonl):
    """Fractional epochs over two runs: a copy's exposure is the exactly rounded sum of what
    training saw of it and of its 299 copies (math.fsum's answer), whatever order the rows come in."""
    import math

    x = words(6, 60)
    write_jsonl(data_dir / "f.jsonl", [{"id": f"c{i}", "text": x} for i in range(300)]
                + [{"id": f"u{i}", "text": words(400 + i)} for i in range(10)])
    ledger.register_dataset("f", data_dir / "f.jsonl", id_field="id")
    with ledger.start_run(datasets={"f": 0.1}, message="a tenth of an epoch") as run:
        v1 = run.commit({"w": torch.zeros(2)})
    with ledger.start_run(base=v1, datasets={"f": 1 / 3}, message="a third") as run:
        v2 = run.commit({"w": torch.ones(2)})
    report = audit_memorization(ledger, v2.version_id, [x], span=0)
    matches = report["samples"][0]["matches"]
    assert len(matches) == 300 and {m["near_copies"] for m in matches} == {299}
    seen = 0.1 + 1 / 3
    assert {m["seen"] for m in matches} == {seen}
    assert {m["exposure"] for m in matches} == {math.fsum([seen] * 300)}


def test_merge_with_the_gate_in_the_library(contributors):
    from provenance.errors import GateFailedError

    ledger, base, va, vb = contributors
    before = len(ledger.versions())
    with pytest.raises(GateFailedError, match="the pre-merge gate failed .*max-contamination 0 broken") as failed:
        ledger.merge([va, vb], method="average", message="gated", gate={})  # the gate's defaults
    assert failed.value.report["passed"] is False and len(ledger.versions()) == before
    with pytest.raises(InvalidParameterError, match="not both"):
        ledger.merge([va, vb], method="average", message="x", gate={}, audit=failed.value.report["audit_id"])
    with pytest.raises(InvalidParameterError, match="a gated merge cites its gate, which must be stored"):
        ledger.merge([va, vb], method="average", message="x", gate={"store": False, "max_contamination": None})
    audits = len(ledger.audits())
    with pytest.raises(InvalidParameterError, match=r"^gate: unknown option\(s\) 'max_overlaps'; the gate's options are "
                                                    r"eval_datasets, threshold, max_overlap, "):
        ledger.merge([va, vb], method="average", message="x", gate={"max_overlaps": 0.1})  # a TypeError
    with pytest.raises(InvalidParameterError, match=r"^gate must be a dict of the pre-merge gate's options \(\{\} for "
                                                    r"its defaults\), got str$"):
        ledger.merge([va, vb], method="average", message="x", gate="strict")  # an AttributeError
    assert len(ledger.audits()) == audits and len(ledger.versions()) == before
    merged = ledger.merge([va, vb], method="average", message="gated", gate={"max_contamination": 2})
    assert ledger.receipt(merged)["audit_id"] == ledger.audits("merge")[0]["audit_id"]
    assert ledger.audit(ledger.receipt(merged)["audit_id"])["passed"] is True


def test_a_gated_merge_refused_for_its_options_runs_no_gate(contributors):
    """``merge(gate={...})`` ran the gate, storing its audit, before the merge's own checks: three
    weights for two versions, a negative one, eps with TIES, a base that is no ancestor or missing
    stored Fishers were refused after the gate had run, each leaving an audit behind (a
    refused input that changed the ledger). The gate now runs once those checks pass; the CLI's
    --gate too."""
    ledger, base, va, vb = contributors
    audits, versions = len(ledger.audits()), len(ledger.versions())
    for options, says in (({"weights": [1, 2, 3]}, "3 weights for 2 versions"),
                          ({"weights": [1, -1]}, "weights must be finite, >= 0"),
                          ({"method": "ties", "eps": 0.1}, "eps= is for fisher"),
                          ({"method": "task_arithmetic", "base": va}, "is not an ancestor of input"),
                          ({"method": "fisher"}, "have no stored Fisher"),
                          ({"message": " "}, "a merge needs a message")):
        with pytest.raises(InvalidParameterError, match=says):
            ledger.merge([va, vb], **{"method": "average", "message": "m", **options}, gate={"max_contamination": 2})
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "merge", va.version_id, vb.version_id,
                                       "--method", "average", "--weights", "1,2,3", "--gate", "-m", "m"])
    assert result.exit_code == 4 and "3 weights for 2 versions" in result.output  # bad input, not a failed gate
    assert len(ledger.audits()) == audits and len(ledger.versions()) == versions
    merged = ledger.merge([va, vb], method="average", message="gated", gate={"max_contamination": 2})
    assert len(ledger.audits()) == audits + 1
    assert ledger.receipt(merged).audit_id == ledger.audits("merge")[0]["audit_id"]


def test_a_merge_cites_a_stored_gate_of_its_inputs_by_its_full_id(contributors):
    """``audit=`` was kept as given: a prefix (or any text) in the receipt, so prov audit delete did
    not see the citation and deleted the audit, and the model card then failed (stranger pass 23)."""
    import duckdb

    from provenance.verify import verify

    ledger, base, va, vb = contributors
    gate = audit_merge(ledger, [va, vb], ngram=0)  # failed (contamination): it may still be cited
    merged = ledger.merge([va, vb], method="average", message="cites by prefix", audit=gate.audit_id[:6].upper())
    assert ledger.receipt(merged).audit_id == gate.audit_id
    with pytest.raises(InvalidParameterError, match=f"cited by the merge receipt of version {merged.version_id[:12]}"):
        ledger.delete_audits([gate.audit_id[:6]])
    dedup = ledger.audit_dedup(["a"])
    with pytest.raises(InvalidParameterError, match=f"audit {dedup.audit_id[:12]} is a dedup audit; a merge cites a "
                                                    "pre-merge gate"):
        ledger.merge([va, vb], method="average", message="x", audit=dedup.audit_id)
    third = ledger.commit({"w": torch.full((4,), 3.0)}, parent=base, message="third")
    with pytest.raises(InvalidParameterError, match=f"audit {gate.audit_id[:12]} is the pre-merge gate of .*, not of "
                                                    "this merge's inputs"):
        ledger.merge([va, third], method="average", message="x", audit=gate.audit_id)
    with pytest.raises(NotFoundError, match="no audit 'nosuchaudit'"):
        ledger.merge([va, vb], method="average", message="x", audit="nosuchaudit")
    assert verify(ledger).ok
    con = duckdb.connect(str(ledger.db_path))  # another program deletes the cited audit
    con.execute("DELETE FROM audits WHERE audit_id = ?", [gate.audit_id])
    con.close()
    assert verify(ledger).version_problems == [{
        "version_id": merged.version_id,
        "problem": f"its merge receipt cites audit {gate.audit_id}, which is not in the ledger"}]


def test_prov_merge_says_whether_the_gate_it_cites_failed(contributors):
    """A merge may cite a failed gate (its receipt and model card say "Failed"); ``prov merge``'s
    own output says so too, with the gate's alerts, and ``--json`` has it as ``cited_gate``; a
    passed gate is said to have passed, and a merge that cites none has ``cited_gate`` null."""
    ledger, _, va, vb = contributors
    failed = audit_merge(ledger, [va, vb], ngram=0)
    (alert,) = failed.alerts
    assert not failed.passed and alert.startswith("max-contamination 0 broken: 1 evaluation document of ev@1")
    merge = ["--ledger", str(ledger.root), "merge", va.version_id, vb.version_id, "--method", "average"]
    out = CliRunner().invoke(main, [*merge, "--audit", failed.audit_id[:8], "-m", "cites a failed gate"])
    assert out.exit_code == 0, out.output  # citing a failed gate is allowed
    assert out.output.splitlines()[1] == f"cited gate {failed.audit_id[:12]}: FAILED ({alert})"
    out = CliRunner().invoke(main, [*merge, "--audit", failed.audit_id, "-m", "again", "--json"])
    assert out.exit_code == 0, out.output
    cited = json.loads(out.output)
    assert cited["cited_gate"] == {"audit_id": failed.audit_id, "passed": False, "alerts": [alert]}
    assert cited["receipt"]["audit_id"] == failed.audit_id
    out = CliRunner().invoke(main, [*merge, "--gate", "--max-contamination", "2", "-m", "gated"])
    assert out.exit_code == 0, out.output
    passed = ledger.audits("merge")[0]["audit_id"]
    assert passed != failed.audit_id and ledger.audit(passed)["passed"] is True
    assert out.output.splitlines()[1] == f"cited gate {passed[:12]}: passed"
    out = CliRunner().invoke(main, [*merge, "-m", "cites nothing", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["cited_gate"] is None
    assert len(CliRunner().invoke(main, [*merge, "-m", "cites nothing"]).output.splitlines()) == 1
    from provenance.cli.models import _cited_gate, _merged_text  # a gate deleted between the merge and its output

    gone = _cited_gate(ledger, "0" * 32)
    assert gone == {"audit_id": "0" * 32, "passed": None, "alerts": ["the cited gate is no longer in the ledger"]}
    shown = _merged_text({"parents": ["a", "b"], "version_id": "f" * 32, "stored_bytes": 1, "full_bytes": 2,
                          "cited_gate": gone})
    assert shown.splitlines()[1] == "cited gate 000000000000: not found (the cited gate is no longer in the ledger)"


def test_the_gate_fails_closed_when_the_span_check_cannot_read_a_source(contributors, data_dir):
    """e1 shares a 15-word span with b's training text, which only the span check finds. With
    b.jsonl moved the check cannot look: the gate fails, saying why, instead of passing on the
    contamination it did not see."""
    ledger, _, va, vb = contributors
    (data_dir / "b.jsonl").rename(data_dir / "b.moved")
    report = audit_merge(ledger, [va.version_id, vb.version_id])
    assert not report.passed
    assert report.contamination.ngram["unreadable"] == [
        f"b@1 shard b.jsonl: {data_dir / 'b.jsonl'}: shard b.jsonl of b@1 is no longer there"]
    assert report.violations[-1].policy == "max_contamination" and report.violations[-1].message.startswith(
        "max-contamination 0 not shown: the 13-word span check could not read 1 shard (b@1 shard b.jsonl: ")
    assert report.violations[-1].message.endswith("leave the span check out with --ngram 0")
    skipped = audit_merge(ledger, [va.version_id, vb.version_id], ngram=0)  # the other two checks still run
    assert [v.message for v in skipped.violations] == [
        "max-contamination 0 broken: 1 evaluation document of ev@1 is in the training data (1 over)"]


def test_texts_with_no_words_are_no_copies(ledger, data_dir, write_jsonl, tmp_path):
    """Every text with no words ("", "!!! ...", "-") has the same signature and exact hash, but
    copies nothing: an eval item "-" is not found in training documents that are empty, and a
    sample "..." reproduces none of them."""
    write_jsonl(data_dir / "t.jsonl", [{"id": f"d{i}", "text": words(i)} for i in range(5)]
                + [{"id": "empty1", "text": ""}, {"id": "empty2", "text": "!!! ..."}])
    write_jsonl(data_dir / "u.jsonl", [{"id": f"u{i}", "text": words(50 + i)} for i in range(5)]
                + [{"id": "blank", "text": "   "}])
    write_jsonl(data_dir / "e.jsonl", [{"id": "q0", "text": "-"}, {"id": "q1", "text": words(3)}])
    for name in ("t", "u"):
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
    ledger.register_dataset("ev", data_dir / "e.jsonl", id_field="id", role="eval")
    vt, vu = _two_contributors(ledger, "t", "u")
    report = audit_merge(ledger, [vt.version_id, vu.version_id])
    assert report.contamination.contaminated_eval_keys == ["ev@1:q1"]  # the real copy, not "-"
    assert report.overlap[0]["a_exact"] == report.overlap[0]["b_exact"] == 0  # empty1/empty2 vs blank
    samples = tmp_path / "s.jsonl"
    samples.write_text('"..."\n' + json.dumps(words(2)) + "\n")
    memo = audit_memorization(ledger, vt.version_id, samples)
    assert [(s.index, [m.key for m in s.matches]) for s in memo.samples] == [(0, []), (1, ["d2"])]


def test_inputs_that_share_all_their_data_are_told_apart_from_empty_ones(ledger, data_dir, write_jsonl):
    """Two versions on a base whose run recorded data, adding none of their own: the gate said
    "no run recorded any data" (stranger pass 17)."""
    write_jsonl(data_dir / "base.jsonl", [{"id": f"z{i}", "text": words(900 + i)} for i in range(5)])
    ledger.register_dataset("base", data_dir / "base.jsonl", id_field="id")
    with ledger.start_run(datasets=["base"], message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    one, two = (ledger.commit({"w": torch.full((4,), x)}, parent=base, message=f"edit {x}") for x in (1.0, 2.0))
    with pytest.raises(InvalidParameterError, match=r"^the inputs share all the data of their lineages \(the gate "
                                                    r"compares what each added since their shared ancestor; "
                                                    r"--full-lineage compares whole lineages\)"):
        audit_merge(ledger, [one.version_id, two.version_id])
    assert audit_merge(ledger, [one.version_id, two.version_id], full_lineage=True).passed
    roots = [ledger.commit({"w": torch.full((4,), x)}, message=f"root {x}") for x in (3.0, 4.0)]
    with pytest.raises(InvalidParameterError, match="^the inputs' lineages are empty: no run recorded any data"):
        audit_merge(ledger, [r.version_id for r in roots])


@pytest.fixture
def every_pair(monkeypatch):
    """The audits compare every two documents of a band bucket, whatever classes and window they
    ask for: the reference the gate's and memorization's pairs across classes must agree with."""

    near_pairs = AuditWrites.near_pairs

    def all_of_them(self, *args, classes=None, window=None, **kwargs):
        return near_pairs(self, *args, **kwargs)

    monkeypatch.setattr(AuditWrites, "near_pairs", all_of_them)
    monkeypatch.setattr(AuditWrites, "partner_pairs", lambda self, *args, **kwargs: None)


def _template(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of one 60-word template with one word replaced each: one near-duplicate cluster."""
    from provenance.synthetic import template_variants

    return [d["text"] for d in template_variants(n, seed=seed)]


@pytest.fixture
def clustered(ledger, data_dir, write_jsonl):
    """A contributor trained on 400 template texts (one cluster) and 20 others; another on near
    copies of 10 of those others, 4 of the template texts exactly and 3 nearly, and 10 texts of
    its own; an exact copy of a template text on both sides and in the evaluation set, which also
    holds 2 near template texts and 5 texts of its own."""
    tpl = _template(400)
    write_jsonl(data_dir / "a.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(tpl)]
                + [{"id": f"o{i}", "text": words(i, 60)} for i in range(20)])
    write_jsonl(data_dir / "b.jsonl", [{"id": f"n{i}", "text": words(i, 60) + " tail"} for i in range(10)]
                + [{"id": f"x{i}", "text": tpl[i]} for i in range(4)]
                + [{"id": f"y{i}", "text": tpl[10 + i] + " more"} for i in range(3)]
                + [{"id": f"u{i}", "text": words(500 + i, 60)} for i in range(10)])
    write_jsonl(data_dir / "ev.jsonl", [{"id": "e0", "text": tpl[0]}, {"id": "e1", "text": tpl[20] + " again"},
                                        {"id": "e2", "text": tpl[21] + " once more"}]
                + [{"id": f"e{3 + i}", "text": words(800 + i, 60)} for i in range(5)])
    ledger.register_dataset("a", data_dir / "a.jsonl", id_field="id")
    ledger.register_dataset("b", data_dir / "b.jsonl", id_field="id")
    ledger.register_dataset("ev", data_dir / "ev.jsonl", id_field="id", role="eval")
    va, vb = _two_contributors(ledger, "a", "b")
    return ledger, va, vb, tpl


def _compiled(request, audit):
    """``audit()`` with every candidate compared by the compiled loop (samples' negative ids too)."""
    from provenance.ledger import audit_pairs

    monkeypatch = request.getfixturevalue("monkeypatch")
    with monkeypatch.context() as m:
        m.setattr(audit_pairs, "COMPILED_FROM", 0)
        return audit()


def _stored_pairs(ledger, report) -> list[tuple]:
    """The pairs an audit stored, as sorted ``(doc_a, doc_b, matches)``, repeats kept."""
    t = ledger.audit_pairs(report["audit_id"])
    return sorted(zip(*(t.column(c).to_pylist() for c in ("doc_a", "doc_b", "matches"))))


def _same_fields(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("audit_id", "created_at", "seconds")}


def test_the_gate_compares_across_sides_only_and_finds_what_every_pair_finds(clustered, data_dir, request):
    """A cluster of 400 texts on one side: the gate forms the pairs that cross sides only (buckets
    of one side's documents are left out before the join), and its report is the one that every
    pair compared gives."""
    ledger, va, vb, _ = clustered
    texts = {(d[0], r["id"]): r["text"] for d in ("a.jsonl", "b.jsonl", "ev.jsonl")
             for r in map(json.loads, (data_dir / d).read_text().splitlines())}
    gate = audit_merge(ledger, [va, vb], ngram=0)
    o, c = gate["overlap"][0], gate["contamination"]
    # b holds 4 of a's template texts exactly; its 10 n and 3 y texts are one word longer than an
    # o or template text of a (56 of 57 shingles shared); a's o texts and the template texts near
    # b's are a's near ones (which template texts are near one another is up to their estimates)
    assert (o["a_exact"], o["b_exact"], o["b_near"]) == (4, 4, 13) and o["a_near"] >= 13
    # e0 is t0 (and x0), e1 and e2 are one or two words longer than t20 and t21
    assert (c["training_exact"], c["eval_exact"], c["eval_near"], c["contaminated_eval_documents"]) == (2, 1, 2, 3)
    # each pair joins two texts' documents (a text's copies are one group) that are not all on one side
    sides_of_text: dict[str, set[str]] = {}
    for (d, _), t in texts.items():
        sides_of_text.setdefault(t, set()).add(d)
    pairs = ledger.audit_pairs(gate["audit_id"]).to_pylist()
    assert pairs and all(len(sides_of_text[texts[p["dataset_a"][0], p["a"]]]
                             | sides_of_text[texts[p["dataset_b"][0], p["b"]]]) > 1 for p in pairs)
    compiled = _compiled(request, lambda: audit_merge(ledger, [va, vb], ngram=0))
    request.getfixturevalue("every_pair")
    reference = audit_merge(ledger, [va, vb], ngram=0)
    assert _same_fields(gate.to_dict()) == _same_fields(reference.to_dict()) == _same_fields(compiled.to_dict())
    assert ledger.audit_pairs(reference["audit_id"]).num_rows > 10 * len(pairs)  # the cluster's own pairs


_TEMPLATE = [f"t{j}" for j in range(60)]


def _variants(rng, prefix: str, n: int, replaced: int | list[int]) -> list[dict]:
    """``n`` texts (ids ``prefix0`` …) of the 60-word template with ``replaced`` words replaced
    each (or a number of them drawn from a list), by words of their own."""
    rows = []
    for i in range(n):
        text = list(_TEMPLATE)
        count = replaced if isinstance(replaced, int) else int(rng.choice(replaced))
        for at in rng.choice(60, count, replace=False).tolist():
            text[at] = f"{prefix}{i}r{at}"
        rows.append({"id": f"{prefix}{i}", "text": " ".join(text)})
    return rows


def test_a_cluster_on_both_sides_is_windowed_and_the_gate_finds_what_every_pair_finds(
        ledger, data_dir, write_jsonl, request, monkeypatch):
    """Variants of one template (two words replaced: they share band buckets, not the threshold)
    in two datasets on each side; the template itself on one side, its near copies on the other,
    which meet it only in buckets the variants crowd. With a window of 1 each document meets one
    of another side's documents per bucket first; those that match none of a dataset's then meet
    all of them. The report, which dataset each document is counted against included, is the one
    every pair gives, from fewer pairs."""
    from provenance import gate as gate_module

    rng = np.random.default_rng(5)
    template = _TEMPLATE

    def variants(prefix: str, n: int) -> list[dict]:
        return _variants(rng, prefix, n, 2)

    a1 = [{"id": "y", "text": " ".join(template)}] + variants("p", 150)
    a2 = [{"id": "y2", "text": "z0 z1 z2 " + " ".join(template)}] + variants("q", 40)
    b1 = [{"id": f"x{i}", "text": " ".join(template) + f" extra{i} more{i} words{i}"} for i in range(12)] + variants("r", 30)
    b2 = variants("s", 20) + [{"id": f"c{i}", "text": a1[1 + i]["text"]} for i in range(5)]
    ev = variants("e", 4) + [{"id": "e-copy", "text": b1[0]["text"]}]
    for name, rows in (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2), ("ev", ev)):
        write_jsonl(data_dir / f"{name}.jsonl", rows)
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id", **({"role": "eval"} if name == "ev" else {}))
    base = ledger.commit({"w": torch.zeros(2)}, message="base")
    with ledger.start_run(base=base, datasets=["a1", "a2"], message="a") as run:
        va = run.commit({"w": torch.ones(2)})
    with ledger.start_run(base=base, datasets=["b1", "b2"], message="b") as run:
        vb = run.commit({"w": 2 * torch.ones(2)})
    added = []
    resolve_open = AuditWrites._resolve_open
    monkeypatch.setattr(AuditWrites, "_resolve_open", lambda self, *args: added.append(resolve_open(self, *args)))
    monkeypatch.setattr(gate_module, "SIDE_WINDOW", 1)
    gate = audit_merge(ledger, [va, vb], ngram=0, max_contamination=None)
    assert added[0] > 0  # documents that met all of a crowded dataset after their window
    o = gate["overlap"][0]
    assert (o["a_exact"], o["b_exact"]) == (5, 5) and o["b_near"] >= 12  # every x is near y (and y2)
    assert {(d["dataset"], d["other"]) for d in o["datasets"]} >= {("a1@1", "b1@1"), ("a1@1", "b2@1")}
    windowed = ledger.audit_pairs(gate["audit_id"]).num_rows
    compiled = _compiled(request, lambda: audit_merge(ledger, [va, vb], ngram=0, max_contamination=None))
    assert added[1] > 0 and _stored_pairs(ledger, compiled) == _stored_pairs(ledger, gate)  # each found once
    request.getfixturevalue("every_pair")
    reference = audit_merge(ledger, [va, vb], ngram=0, max_contamination=None)
    assert _same_fields(gate.to_dict()) == _same_fields(reference.to_dict()) == _same_fields(compiled.to_dict())
    assert 0 < windowed < ledger.audit_pairs(reference["audit_id"]).num_rows


def test_documents_on_several_sides_are_compared_only_where_they_can_tell_something(
        ledger, data_dir, write_jsonl, request, monkeypatch):
    """Three inputs that all trained on one dataset (a template's variants, so its documents are on
    every side) and each on one of its own, with copies across; whole lineages compared, window 1.
    Documents of the same sides and datasets are not paired, yet the report is the one every pair
    gives."""
    from provenance import gate as gate_module

    rng = np.random.default_rng(9)

    def variants(prefix: str, n: int) -> list[dict]:
        return _variants(rng, prefix, n, [1, 2])

    shared = variants("s", 120) + [{"id": f"w{i}", "text": words(900 + i, 50)} for i in range(20)]
    own = {"a": variants("a", 60) + [{"id": "ac", "text": shared[0]["text"]}],
           "b": variants("b", 40) + [{"id": "bc", "text": shared[1]["text"] + " tail"}], "c": variants("c", 30)}
    ev = variants("e", 4) + [{"id": "ecopy", "text": own["a"][3]["text"]}]
    for name, rows in (("shared", shared), *own.items(), ("ev", ev)):
        write_jsonl(data_dir / f"{name}.jsonl", rows)
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id", **({"role": "eval"} if name == "ev" else {}))
    base = ledger.commit({"w": torch.zeros(2)}, message="base")
    versions = []
    for name in own:
        with ledger.start_run(base=base, datasets=["shared", name], message=name) as run:
            versions.append(run.commit({"w": torch.rand(2)}).version_id)
    monkeypatch.setattr(gate_module, "SIDE_WINDOW", 1)
    gate = audit_merge(ledger, versions, ngram=0, max_contamination=None, full_lineage=True)
    assert [(o["a_exact"], o["b_exact"]) for o in gate["overlap"]] == [(141, 140), (141, 140), (140, 140)]
    assert all(o["a_near"] > 0 and o["b_near"] > 0 for o in gate["overlap"])
    fewer = ledger.audit_pairs(gate["audit_id"]).num_rows
    compiled = _compiled(request, lambda: audit_merge(ledger, versions, ngram=0, max_contamination=None,
                                                      full_lineage=True))
    assert _stored_pairs(ledger, compiled) == _stored_pairs(ledger, gate)  # the same pairs, each found once
    request.getfixturevalue("every_pair")
    reference = audit_merge(ledger, versions, ngram=0, max_contamination=None, full_lineage=True)
    assert _same_fields(gate.to_dict()) == _same_fields(reference.to_dict()) == _same_fields(compiled.to_dict())
    assert 0 < fewer < ledger.audit_pairs(reference["audit_id"]).num_rows


def test_memorization_pairs_samples_then_matches_and_finds_what_every_pair_finds(clustered, data_dir, request):
    """Samples paired first, then the documents they match with every other: the near copies and
    exposure of each match are those every pair compared gives."""
    ledger, va, _, tpl = clustered
    samples = [tpl[3], tpl[7] + " one", words(999, 60), words(2, 60)]
    report = audit_memorization(ledger, va.version_id, samples)
    first = {m["key"]: m for m in report["samples"][0]["matches"]}
    assert first["t3"]["jaccard"] == 1.0 and first["t3"]["near_copies"] >= 1 and len(first) > 1
    assert report["samples"][2]["matches"] == [] and [m["key"] for m in report["samples"][3]["matches"]] == ["o2"]
    (data_dir / "samples.txt").write_text("\n".join(samples) + "\n")
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", va.version_id,
                                    "--samples", str(data_dir / "samples.txt")])
    shown = sum(min(len(s["matches"]), 5) for s in report["samples"])
    hidden = sum(len(s["matches"]) for s in report["samples"]) - shown
    assert out.exit_code == 0 and hidden > 0 and f"{hidden:,} more in --json and --html" in out.output
    compiled = _compiled(request, lambda: audit_memorization(ledger, va.version_id, samples))
    request.getfixturevalue("every_pair")
    reference = audit_memorization(ledger, va.version_id, samples)
    assert _same_fields(report.to_dict()) == _same_fields(reference.to_dict()) == _same_fields(compiled.to_dict())


def test_an_evaluation_set_a_shared_ancestor_trained_on_fails_the_gate(ledger, data_dir, write_jsonl):
    """Two fine-tunes of a base trained on the evaluation set: the gate compares what each added,
    but the evaluation documents the base trained on count as contaminated (by their shard), and
    inherited data it did not compare is said so."""
    write_jsonl(data_dir / "shared.jsonl", [{"id": f"s{i}", "text": words(i)} for i in range(30)])
    write_jsonl(data_dir / "other.jsonl", [{"id": f"o{i}", "text": words(300 + i)} for i in range(5)])
    write_jsonl(data_dir / "a.jsonl", [{"id": f"a{i}", "text": words(100 + i)} for i in range(10)])
    write_jsonl(data_dir / "b.jsonl", [{"id": f"b{i}", "text": words(200 + i)} for i in range(10)])
    for name in ("shared", "other", "a", "b"):
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
    with ledger.start_run(datasets=["shared", "other"], message="base") as run:
        base = run.commit({"w": torch.zeros(2)})
    with ledger.start_run(base=base, datasets=["a"], message="a") as run:
        va = run.commit({"w": torch.ones(2)})
    with ledger.start_run(base=base, datasets=["b"], message="b") as run:
        vb = run.commit({"w": 2 * torch.ones(2)})
    with pytest.warns(UserWarning, match=r"^shared@1 is registered as training data \(role train\) and is compared "
                                         r"here as evaluation data; an evaluation set is registered with role eval"):
        report = audit_merge(ledger, [va, vb], eval_datasets=["shared"], ngram=0)  # as asked, and said
    c = report["contamination"]
    assert not report["passed"] and (c["inherited_shards"], c["inherited_eval_documents"]) == (2, 30)
    assert c["contaminated_eval_documents"] == 30 and c["eval_exact"] == 0  # found by shard, not by content
    assert report["violations"][0]["policy"] == "max_contamination"
    whole = audit_merge(ledger, [va, vb], eval_datasets=["shared"], ngram=0, full_lineage=True)["contamination"]
    assert (whole["inherited_shards"], whole["contaminated_eval_documents"], whole["eval_exact"]) == (0, 30, 30)
    other = audit_merge(ledger, [va, vb], eval_datasets=["other"], ngram=0, max_contamination=None)["contamination"]
    assert (other["inherited_shards"], other["inherited_eval_documents"], other["contaminated_eval_documents"]) == (2, 5, 5)
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "merge", va.version_id, vb.version_id,
                                    "--eval", "shared", "--ngram", "0"])
    assert out.exit_code == 1 and "trained on by a shared ancestor 30" in out.output
    assert "warning: shared@1 is registered as training data (role train)" in out.stderr
    assert "2 shard(s) inherited from shared ancestors were not compared" in out.output


def test_gate_limits_and_eval_sets_of_the_wrong_kind_are_refused_naming_them(contributors):
    """Stranger pass 50: ``max_overlap="0.1"`` passed the range check (float("0.1")) and then
    failed with a TypeError comparing a float with a str; ``eval_datasets="ev"`` was looked up a
    character at a time ("no dataset 'e'"). Nothing is stored for either."""
    ledger, _, va, vb = contributors
    before = len(ledger.audits())
    for bad in ("0.1", True, b"0.1"):
        with pytest.raises(InvalidParameterError, match="max-overlap must be a fraction in \\[0, 1\\]"):
            audit_merge(ledger, [va, vb], max_overlap=bad)
    with pytest.raises(InvalidParameterError, match="eval_datasets must be a list .*got str"):
        audit_merge(ledger, [va, vb], eval_datasets="ev")
    assert len(ledger.audits()) == before
    report = audit_merge(ledger, [va, vb], max_overlap=np.float32(0.5), eval_datasets=("ev",))  # a number is a number
    assert report.policy["max_overlap"] == 0.5 and report.contamination.eval_datasets == ["ev@1"]


def test_samples_split_only_at_line_ends(tmp_path):
    """Stranger pass 50: samples were split with ``str.splitlines()``, which also breaks at
    U+2028, U+0085 and form feeds: a JSONL line whose text holds U+2028 raw (valid JSON) was
    refused as "not JSON", and a plain-text sample with a form feed became two samples."""
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"text": "one\u2028two\x85three"}, ensure_ascii=False) + "\r\n"
                     + json.dumps("second\x0csample", ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_samples(jsonl) == ["one\u2028two\x85three", "second\x0csample"]
    plain = tmp_path / "s.txt"
    plain.write_text("first\x0cstill first\u2028and still\r\nsecond\rthird\n\n", encoding="utf-8", newline="")
    assert read_samples(plain) == ["first\x0cstill first\u2028and still", "second", "third"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a\u2028b"}\r\n\n{"text": 3}\n', encoding="utf-8", newline="")
    with pytest.raises(SourceError, match="line 3 has no text"):  # line numbers count only line ends
        read_samples(bad)


def test_hundreds_of_samples_each_copying_a_document_find_their_spans(ledger, data_dir, write_jsonl):
    """Stranger pass 58: the span check compared every training document that shared a window
    with every sample (an ``isin`` per pair), and the report walked every match once per sample:
    1,000 samples against 13,000 documents took 146 s (2 s now). Each sample here copies one
    document, with a 30-word span."""
    n = 800
    texts = [" ".join(f"s{i}w{j}" for j in range(30)) for i in range(n)]
    write_jsonl(data_dir / "t.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    ledger.register_dataset("t", data_dir / "t.jsonl", id_field="id")
    with ledger.start_run(datasets=["t"], message="one epoch") as run:
        v = run.commit({"w": torch.zeros(2)})
    samples = ["the model wrote " + t for t in texts[::-1]]
    report = audit_memorization(ledger, v.version_id, samples, span=20, store=False)  # minutes before, seconds now
    assert report.summary.samples_matching_training == n and report.summary.samples_with_span == n
    for sample in (report.samples[0], report.samples[n // 2], report.samples[-1]):
        (m,) = sample.matches
        assert m.key == f"d{n - 1 - sample.index}" and m.span_words == 30 and m.exposure == 1.0
        assert m.span_text == texts[n - 1 - sample.index] and m.jaccard >= 0.8


def test_a_window_index_finds_the_runs_a_pass_over_every_text_finds():
    """:class:`WindowIndex` (stranger pass 58) against the plain reference it replaced: an
    ``isin`` of each text's windows, on random windows with repeats, empty texts and no text."""
    rng = np.random.default_rng(58)
    for _ in range(500):
        windows = [rng.integers(0, 12, rng.integers(0, 15)).astype(np.uint64) for _ in range(rng.integers(0, 6))]
        other = rng.integers(0, 12, rng.integers(0, 15)).astype(np.uint64)
        expected = [(i, *longest_run(np.isin(w, other))) for i, w in enumerate(windows) if np.isin(w, other).any()]
        assert WindowIndex(windows).shared(other) == expected


def test_the_memorization_page_never_replaces_the_samples(contributors, data_dir, tmp_path, monkeypatch):
    """Stranger pass 58: ``prov audit memorization v --samples s.jsonl --html s.jsonl`` read the
    samples, then wrote the page over them: the generated texts were lost. Refused, naming both
    options, also through another spelling of the path; nothing is stored and the file is kept."""
    ledger, base, va, vb = contributors
    samples = data_dir / "samples.jsonl"
    samples.write_text(json.dumps({"text": words(3)}) + "\n")
    monkeypatch.chdir(data_dir)
    runner = CliRunner()
    for html in (str(samples), "./samples.jsonl", f"../{data_dir.name}/samples.jsonl"):
        out = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", va.version_id,
                                   "--samples", "samples.jsonl", "--html", html])
        assert out.exit_code == 2, out.output
        assert "--html and --samples name the same file 'samples.jsonl'" in out.output
    assert samples.read_text() == json.dumps({"text": words(3)}) + "\n" and ledger.audits() == []
    out = runner.invoke(main, ["--ledger", str(ledger.root), "audit", "memorization", va.version_id,
                               "--samples", "samples.jsonl", "--html", str(tmp_path / "page.html"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["summary"]["samples_matching_training"] == 1
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")


def test_a_samples_file_that_is_one_json_array_is_named_as_such(tmp_path):
    """Stranger pass 58: ``samples.json`` holding a JSON array written over several lines (valid
    JSON) was refused as "line 1 is not JSON (Expecting value at column 2)", and one on a single
    line as having no text: both now say the file is a JSON array and that samples are one per line."""
    pretty = tmp_path / "samples.json"
    pretty.write_text(json.dumps(["first sample", {"text": "second"}], indent=2) + "\n")
    with pytest.raises(SourceError, match=r"samples.json: the file is one JSON array over several lines; samples are "
                                          r"JSONL: one sample per line"):
        read_samples(pretty)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(["first sample", "second"]) + "\n")
    with pytest.raises(SourceError, match=r"flat.json: line 1 has no text .*: it is a JSON array; samples are JSONL"):
        read_samples(flat)
    broken = tmp_path / "broken.jsonl"  # not an array: the line and the reason, as before
    broken.write_text('{"text": "a"}\n[\n')
    with pytest.raises(SourceError, match=r"broken.jsonl: line 2 is not JSON \(Expecting value at column 2\)$"):
        read_samples(broken)
    pretty.write_text("\n".join(json.dumps(s) for s in ["first sample", {"text": "second"}]) + "\n")
    assert read_samples(pretty) == ["first sample", "second"]
