"""Lineage, taint and the data diff: which data shaped which version, through runs and merges."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from provenance.cli.main import main
from provenance.errors import InvalidParameterError, NotFoundError
from provenance.lineage import graph_text


@pytest.fixture
def family(ledger, data_dir, write_jsonl):
    """base (trained on ``web``), two contributors on it (``forum``; ``code``), their 3:1 merge,
    and an imported model with no run."""
    write_jsonl(data_dir / "web1.jsonl", [{"id": f"w{i}", "text": f"web page {i} about many things"} for i in range(6)])
    write_jsonl(data_dir / "web2.jsonl", [{"id": f"w{i}", "text": f"web page {i} about many things"} for i in range(6, 10)])
    write_jsonl(data_dir / "forum.jsonl", [{"id": f"f{i}", "text": f"a forum post number {i}"} for i in range(8)])
    write_jsonl(data_dir / "code.jsonl", [{"id": f"c{i}", "text": f"def f{i}(x): return x + {i}"} for i in range(5)])
    ledger.register_dataset("web", [data_dir / "web1.jsonl", data_dir / "web2.jsonl"], id_field="id", license="CC-BY-4.0")
    ledger.register_dataset("forum", data_dir / "forum.jsonl", id_field="id", license="CC-BY-NC-SA-4.0")
    ledger.register_dataset("code", data_dir / "code.jsonl", id_field="id")
    state = {"w": torch.zeros(4, 4)}
    with ledger.start_run(datasets={"web": 2}, message="base") as run:
        base = run.commit(state)
    with ledger.start_run(base=base, datasets=["forum"], message="forum") as run:
        run.log_examples(["f0", "f1", "f1"], step=0)
        forum = run.commit({"w": torch.ones(4, 4)})
    with ledger.start_run(base=base, datasets={"code": 3}, message="code") as run:
        code = run.commit({"w": 2 * torch.ones(4, 4)})
    merged = ledger.merge([forum, code], method="average", weights=[3, 1], message="merge")
    ledger.tag("merged", merged)
    imported = ledger.commit({"w": torch.full((4, 4), 5.0)}, message="imported")
    return ledger, {"base": base, "forum": forum, "code": code, "merged": merged, "imported": imported}


def test_lineage_carries_merge_weights_to_an_effective_contribution(family):
    ledger, v = family
    lin = ledger.lineage("merged")
    weights = {row["version_id"]: row["weight"] for row in lin.version_rows()}
    assert weights == {v["merged"].version_id: 1.0, v["forum"].version_id: 0.75, v["code"].version_id: 0.25,
                       v["base"].version_id: 1.0}
    ds = {d["dataset_id"]: d for d in lin.datasets}
    assert set(ds) == {"web@1", "forum@1", "code@1"}
    assert ds["web@1"]["examples"] == 20 and ds["web@1"]["shards"] == 2  # 10 documents, 2 epochs
    assert ds["forum@1"]["examples"] == 3  # logged examples, not the declared epoch
    assert ds["code@1"]["examples"] == 15
    # effective: web 20 x 1.0, forum 3 x 0.75, code 15 x 0.25
    assert ds["web@1"]["effective_examples"] == 20 and ds["forum@1"]["effective_examples"] == 2.25
    assert ds["code@1"]["effective_examples"] == 3.75
    assert ds["forum@1"]["effective_share"] == pytest.approx(2.25 / 26)
    assert ds["forum@1"]["path"] == [v["merged"].version_id, v["forum"].version_id]
    assert lin.license["non_commercial"] == ["forum@1"] and lin.license["share_alike"] == ["forum@1"]
    assert lin.license["unknown_license"] == ["code@1"] and lin.license["licenses"] == ["CC-BY-4.0", "CC-BY-NC-SA-4.0"]
    assert lin.unrecorded == []
    # each row says what the summary does: attribution was in the summary only
    assert {d: (r["non_commercial"], r["share_alike"], r["attribution"]) for d, r in ds.items()} == {
        "web@1": (False, False, True), "forum@1": (True, True, True), "code@1": (None, None, None)}
    web_shards = [s for s in lin.shards.to_pylist() if s["dataset_id"] == "web@1"]
    assert [(s["shard"], s["examples"]) for s in web_shards] == [("web1.jsonl", 12), ("web2.jsonl", 8)]


def test_a_version_without_a_run_is_flagged_not_silently_empty(family):
    ledger, v = family
    lin = ledger.lineage(v["imported"])
    assert lin.datasets == [] and lin.unrecorded == [v["imported"].version_id]
    with pytest.raises(NotFoundError, match="no version or tag 'nope'"):
        ledger.lineage("nope")


def test_taint_finds_every_version_downstream(family):
    ledger, v = family
    ids = lambda report: {r.version_id: r.direct for r in report.versions}  # noqa: E731
    assert ids(ledger.taint(dataset="web")) == {v["base"].version_id: True, v["forum"].version_id: False,
                                                  v["code"].version_id: False, v["merged"].version_id: False}
    assert ids(ledger.taint(dataset="forum")) == {v["forum"].version_id: True, v["merged"].version_id: False}
    assert ids(ledger.taint(dataset="web", shard="web2.jsonl")) == ids(ledger.taint(dataset="web"))
    # a logged document: only the runs that logged it; a document of a declared dataset: its runs
    assert ids(ledger.taint(dataset="forum", key="f1")) == {v["forum"].version_id: True, v["merged"].version_id: False}
    assert ids(ledger.taint(dataset="forum", key="f5")) == {}  # in the dataset, but never logged as seen
    report = ledger.taint(dataset="forum", key="f1")
    assert report.versions[-1].examples == 2 and report.target == "forum f1" and report.matches == []
    assert ids(ledger.taint(dataset="code", key="c2")) == {v["code"].version_id: True, v["merged"].version_id: False}
    with pytest.raises(NotFoundError, match="has no shard 'zz'"):
        ledger.taint(dataset="web", shard="zz")
    with pytest.raises(InvalidParameterError, match="document key 'f1' needs the dataset that holds it"):
        ledger.taint(key="f1")
    with pytest.raises(InvalidParameterError, match="shard 3 needs the dataset that holds it"):
        ledger.taint(shard=3)


def test_a_bare_dataset_name_taints_through_every_version_of_it(ledger, data_dir, write_jsonl):
    """A version trained on news@1 is tainted by news's document n1 after news@2 (or a version
    made without n1) exists: a bare name means every version, NAME@N that one."""
    rows = [{"id": f"n{i}", "text": f"news story number {i} of the day"} for i in range(4)]
    write_jsonl(data_dir / "news.jsonl", rows)
    ledger.register_dataset("news", data_dir / "news.jsonl", id_field="id")
    with ledger.start_run(datasets=["news"], message="on news@1") as run:
        run.log_examples(["n1"], step=0)
        old = run.commit({"w": torch.zeros(2)})
    write_jsonl(data_dir / "news.jsonl", [*rows, {"id": "n4", "text": "a late story"}])
    assert ledger.register_dataset("news", data_dir / "news.jsonl", id_field="id").dataset.dataset_id == "news@2"
    with ledger.start_run(base=old, datasets={"news": 1}, message="on news@2") as run:
        new = run.commit({"w": torch.ones(2)})
    ids = lambda report: {r.version_id: r.direct for r in report.versions}  # noqa: E731
    both = {old.version_id: True, new.version_id: True}
    assert ids(ledger.taint(dataset="news", key="n1")) == both  # news@2's run declared the dataset: every shard
    assert ids(ledger.taint(dataset="news@1", key="n1")) == {old.version_id: True, new.version_id: False}
    assert ids(ledger.taint(dataset="news@2", key="n1")) == {new.version_id: True}
    assert ids(ledger.taint(dataset="news", key="n4")) == {new.version_id: True}  # only in news@2
    assert ids(ledger.taint(dataset="news")) == both
    assert ids(ledger.taint(dataset="news", shard=0)) == both
    assert ids(ledger.taint(dataset="news", shard="news.jsonl")) == both
    assert ids(ledger.taint(dataset="news@1", shard=0)) == {old.version_id: True, new.version_id: False}
    with pytest.raises(NotFoundError, match=r"no document 'zz' in any version of dataset news \(news@2, news@1\)"):
        ledger.taint(dataset="news", key="zz")
    with pytest.raises(NotFoundError, match="news@2 has no shard 'nope'"):
        ledger.taint(dataset="news", shard="nope")
    # a retraction of the bare name's document retracts it in each version, and taint lists it
    rec = ledger.retract(dataset="news", key="n1", reason="asked")
    assert sorted((d["dataset_id"], d["key"]) for d in rec["documents"]) == [("news@1", "n1"), ("news@2", "n1")]
    assert [r["retraction_id"] for r in ledger.taint(dataset="news@1", key="n1").retractions] == [rec["retraction_id"]]
    shard_rec = ledger.retract(dataset="news", shard="news.jsonl", reason="the whole file")
    assert sorted((d["dataset_id"], d["shard_index"]) for d in shard_rec["documents"]) == [("news@1", 0), ("news@2", 0)]
    listed = [r["retraction_id"] for r in ledger.taint(dataset="news@1").retractions]
    assert sorted(listed) == sorted([rec["retraction_id"], shard_rec["retraction_id"]])
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "taint", "news", "--key", "n1", "--json"])
    assert out.exit_code == 0, out.output
    assert {r["version_id"] for r in json.loads(out.output)["versions"]} == set(both)


def test_a_shard_is_named_by_its_decimal_index_name_or_path(family):
    """' 0', '0x0' and '+0' were taken as shard 0 (a cast)."""
    ledger, v = family
    ids = lambda report: [r.version_id for r in report.versions]  # noqa: E731
    assert ids(ledger.taint(dataset="web", shard="1")) == ids(ledger.taint(dataset="web", shard=1)) == ids(
        ledger.taint(dataset="web", shard="web2.jsonl")) and v["base"].version_id in ids(ledger.taint(dataset="web", shard=1))
    for given in (" 0", "0x0", "+0", "0.0", "01x"):
        with pytest.raises(NotFoundError, match=re.escape(f"web@1 has no shard {given!r} (it has web1.jsonl")):
            ledger.taint(dataset="web", shard=given)


def test_a_shard_or_key_of_a_file_named_in_nfd_is_found_by_its_nfc_name(ledger, data_dir, write_jsonl):
    """A file from macOS is named in NFD; a name typed in NFC said "no shard 'café.jsonl' (it has
    café.jsonl)", the two looking the same."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café.jsonl")
    write_jsonl(data_dir / nfd, [{"text": "a document in a file with an accent in its name"}])
    write_jsonl(data_dir / "plain.jsonl", [{"text": "another document"}])
    ledger.register_dataset("menu", data_dir)
    with ledger.start_run(datasets=["menu"], message="on menu") as run:
        version = run.commit({"w": torch.zeros(2)})
    nfc = unicodedata.normalize("NFC", "café.jsonl")
    assert nfc != nfd
    ids = lambda report: [r.version_id for r in report.versions]  # noqa: E731
    assert ids(ledger.taint(dataset="menu", shard=nfc)) == [version.version_id]
    assert [d.key for d in ledger.documents_by_key(["menu@1"], f"{nfc}:0")] == [f"{nfd}:0"]
    assert ids(ledger.taint(dataset="menu", key=f"{nfc}:0")) == [version.version_id]
    assert ledger.document("menu@1", f"{nfc}:0").key == f"{nfd}:0"
    with pytest.raises(NotFoundError, match="no document 'cafe.jsonl:0'"):  # equivalent forms only, not look-alikes
        ledger.document("menu@1", "cafe.jsonl:0")


def test_taint_by_text_and_near_duplicates(family):
    from provenance.audits import taint_report

    ledger, v = family
    exact = taint_report(ledger, text="A forum post number 1")  # normalisation: case does not matter
    assert [m["key"] for m in exact["matches"]] == ["f1"]
    assert {r["version_id"] for r in exact["versions"]} == {v["forum"].version_id, v["merged"].version_id}
    near = taint_report(ledger, dataset="web", key="w3", near=0.1)
    keys = {m["key"] for m in near["matches"]}
    assert "w3" in keys and all(m["jaccard"] >= 0.1 for m in near["matches"])
    with pytest.raises(InvalidParameterError, match=r"near must be in \(0, 1\]"):
        taint_report(ledger, text="x", near=1.5)
    with pytest.raises(InvalidParameterError, match="empty"):
        taint_report(ledger, text="   ")



def test_a_document_without_words_has_no_near_copies(ledger, data_dir, write_jsonl):
    """`taint(dataset="posts", key="e", near=0.5)` of an empty document matched every document
    without words in the ledger ("..." of another dataset, "" under another config) at Jaccard 1.0
    and tainted every version trained on any of them; the dedup audit and the gate compare such
    documents with nothing (stranger pass 82)."""
    write_jsonl(data_dir / "posts.jsonl", [{"id": "e", "text": ""}, {"id": "t", "text": "a post with some words in it"}])
    write_jsonl(data_dir / "other.jsonl", [{"id": "dots", "text": "..."}, {"id": "u", "text": "unrelated words here"}])
    write_jsonl(data_dir / "tri.jsonl", [{"id": "blank", "text": "  "}, {"id": "v", "text": "more unrelated words"}])
    ledger.register_dataset("posts", data_dir / "posts.jsonl", id_field="id")
    ledger.register_dataset("other", data_dir / "other.jsonl", id_field="id")
    ledger.register_dataset("tri", data_dir / "tri.jsonl", id_field="id", config={"ngram": 3})
    versions = {}
    for name in ("posts", "other", "tri"):
        with ledger.start_run(datasets=[name], message=name) as run:
            versions[name] = run.commit({"w": torch.zeros(2)}).version_id
    for near in (0.5, 1.0):
        report = ledger.taint(dataset="posts", key="e", near=near)
        assert [(m["dataset_id"], m["key"], m["jaccard"]) for m in report.matches] == [("posts@1", "e", 1.0)]
        assert [t.version_id for t in report.versions] == [versions["posts"]]
    words = ledger.taint(dataset="posts", key="t", near=0.5)  # a document with words is still searched
    assert [(m["dataset_id"], m["key"]) for m in words.matches] == [("posts@1", "t")]


def test_a_target_whose_parts_do_not_go_together_is_refused(family):
    """`prov taint forum --text F` looked for the text in every dataset and dropped `forum`, and
    `--key f1 --shard web.jsonl` dropped the shard (one forum does not have): the answer was for a
    target other than the one given, and `prov retract` recorded it so (stranger pass 25)."""
    ledger, v = family
    text_and = "a text is looked for in every dataset: give it alone, without a dataset, shard or key"
    key_and = r"give a shard or a document key, not both \(key 'f1' names its document in whichever shard holds it\)"
    for target, says in (({"dataset": "forum", "text": "a forum post number 1"}, text_and),
                         ({"key": "f1", "text": "a forum post number 1", "near": 0.5}, text_and),
                         ({"dataset": "forum", "key": "f1", "shard": "web.jsonl"}, key_and),
                         ({"dataset": "forum", "key": "f1", "shard": 0, "near": 0.5}, key_and)):
        with pytest.raises(InvalidParameterError, match=says):
            ledger.taint(**target)
        with pytest.raises(InvalidParameterError, match=says):
            ledger.retract(reason="asked", **target)
    assert ledger.retractions() == []
    assert {t.version_id for t in ledger.taint(dataset="forum", key="f1").versions} == {
        v["forum"].version_id, v["merged"].version_id}
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "taint", "forum", "--key", "f1", "--shard", "0"])
    assert out.exit_code == 4 and out.output.startswith("Error: give a shard or a document key, not both")


def test_a_document_key_that_is_not_text_is_refused(family):
    """`taint(dataset="forum", key=5)` raised DuckDB's ConversionException ("Could not convert string
    'f0' to INT32"), and `retract` the same: the ledger stores keys as text (stranger pass 46)."""
    ledger, v = family
    for verb in (ledger.taint, lambda **t: ledger.retract(reason="asked", **t)):
        with pytest.raises(InvalidParameterError, match=r"a document key is text, as the ledger stores it: give '5', "
                                                        r"not int 5"):
            verb(dataset="forum", key=5)
    assert ledger.retractions() == []


def test_an_empty_text_file_is_named(family, tmp_path):
    """`prov taint --text empty.txt` said "the text to look for is empty", naming no file (stranger pass 46)."""
    ledger, v = family
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    for command in (["taint"], ["retract", "--reason", "asked"]):
        out = CliRunner().invoke(main, ["--ledger", str(ledger.root), *command, "--text", str(empty)])
        assert out.exit_code == 4 and out.output == f"Error: {empty}: empty (no text to look for)\n"
    assert ledger.retractions() == []


def test_graph_labels_show_quotes_backslashes_entities_and_html_as_written(ledger, tmp_path):
    """A Mermaid label doubled a backslash (Mermaid has none to escape: `a\\b` was drawn), drew
    `#quot;` as a quote and `<b>` as bold; `--format dot --json` printed the JSON and dropped the
    graph unsaid (stranger pass 46)."""
    base = ledger.commit({"w": torch.zeros(2)}, message='a\\b "q" #quot; <b>x</b> --> y\nnext line')
    lin = ledger.lineage(base)
    mermaid = graph_text(lin, "mermaid")
    assert f'  v0["{base.version_id[:8]}: a\\b #quot;q#quot; #35;quot; #lt;b#gt;x#lt;/b#gt; --#gt; y"]\n' in mermaid
    dot = graph_text(lin, "dot")  # a backslash does escape in Graphviz
    assert f'  v0 [shape=box, label="{base.version_id[:8]}: a\\\\b \'q\' #quot; <b>x</b> --> y"];' in dot
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "lineage", base.version_id, "--format", "dot",
                                    "--json"])
    assert out.exit_code == 2 and "--format dot draws the graph, --json gives the lineage's data: give one" in out.output


def test_data_diff_and_graphs(family):
    from provenance.lineage import data_diff

    ledger, v = family
    d = data_diff(ledger, v["forum"], v["code"])
    assert d["datasets_only_in_a"] == ["forum@1"] and d["datasets_only_in_b"] == ["code@1"]
    assert d["datasets_in_both"] == ["web@1"]
    assert d["shards_only_in_a"] == [{"dataset_id": "forum@1", "shard_index": 0, "shard": "forum.jsonl"}]
    lin = ledger.lineage("merged")
    mermaid = graph_text(lin, "mermaid")
    assert mermaid.startswith("graph BT") and "|λ=3|" in mermaid and "|λ=1|" in mermaid and "(merged)" in mermaid
    assert mermaid.count("-.->") == 3  # web -> base, forum -> forum, code -> code
    dot = graph_text(lin, "dot")
    assert dot.startswith("digraph lineage {") and dot.count("shape=cylinder") == 3 and dot.rstrip().endswith("}")
    with pytest.raises(InvalidParameterError, match="unknown graph format"):
        graph_text(lin, "svg")
    from provenance.lineage import _shortened  # a long message is cut between words, and says so

    assert _shortened("Fisher merge of the FISH and LoRA patches of two contributors", 40) == \
        "Fisher merge of the FISH and LoRA…"  # was 'Fisher merge of the FISH and LoRA patche'
    assert _shortened("first line\nsecond", 40) == "first line" and _shortened("x" * 50, 10) == "x" * 9 + "…"


def test_cli_lineage_taint_and_diff(family, tmp_path):
    ledger, v = family
    runner = CliRunner()
    base = ["--ledger", str(ledger.root)]
    out = runner.invoke(main, [*base, "lineage", "merged", "--json"])
    assert out.exit_code == 0, out.output
    assert {d["dataset_id"] for d in json.loads(out.output)["datasets"]} == {"web@1", "forum@1", "code@1"}
    out = runner.invoke(main, [*base, "lineage", "merged"])
    assert out.exit_code == 0 and "forum@1" in out.output and "non-commercial: forum@1" in out.output
    assert "\n  attribution: forum@1, web@1\n" in out.output  # it was in --json and the model card only
    out = runner.invoke(main, [*base, "lineage", "merged", "--format", "mermaid"])
    assert out.output.startswith("graph BT")
    out = runner.invoke(main, [*base, "taint", "forum", "--key", "f0", "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.output)["versions"]) == 2
    out = runner.invoke(main, [*base, "taint", "--text", "-", "--json"], input="a forum post number 0")
    assert out.exit_code == 0, out.output
    assert [m["key"] for m in json.loads(out.output)["matches"]] == ["f0"]
    out = runner.invoke(main, [*base, "taint", "--text", "-"], input="a forum post number 0")
    assert "the text, exactly: 1 document\n  forum@1 f0\n" in out.output  # which documents hold it
    out = runner.invoke(main, [*base, "taint", "--text", "-"], input="a text no dataset holds")
    assert out.exit_code == 0 and out.output.splitlines()[:2] == [  # it said nothing of where it looked
        "target: text (23 characters)", "the text, exactly: 0 documents (no dataset holds it)"]
    out = runner.invoke(main, [*base, "taint", "--text", "-"], input=b"\xff\xfe bad")
    assert out.exit_code == 4 and "not UTF-8" in out.output
    out = runner.invoke(main, [*base, "model", "diff", v["forum"].version_id, v["code"].version_id, "--data", "--json"])
    assert json.loads(out.output)["datasets_only_in_b"] == ["code@1"]
    out = runner.invoke(main, [*base, "lineage", "deadbeef"])
    assert out.exit_code == 3 and "no version 'deadbeef'" in out.output


def test_cli_lineage_table_lists_the_nearest_versions_unless_asked_for_all(ledger, tmp_path, monkeypatch):
    """A deep history is summarised: the nearest LINEAGE_VERSIONS versions, then how many more."""
    import provenance.cli.lineage as lineage_cli

    monkeypatch.setattr(lineage_cli, "LINEAGE_VERSIONS", 3)
    tip = None
    for i in range(5):
        tip = ledger.commit({"w": torch.full((2,), float(i))}, message=f"step {i}", parent=tip)
    base = ["--ledger", str(ledger.root)]
    out = CliRunner().invoke(main, [*base, "lineage", tip.version_id])
    assert out.exit_code == 0, out.output
    assert "the 3 nearest of 5" in out.output and "2 more version(s): --all lists them" in out.output
    assert "step 4" in out.output and "step 2" in out.output and "step 1" not in out.output
    out = CliRunner().invoke(main, [*base, "lineage", tip.version_id, "--all"])
    assert out.exit_code == 0 and "step 0" in out.output and "more version(s)" not in out.output


def test_cli_taint_lists_the_first_versions_and_documents_unless_asked_for_all(ledger, data_dir, write_jsonl,
                                                                              monkeypatch):
    """`prov taint` drew every tainted version (no limit: a table of thousands), and cut the
    matching documents at 20 without saying so."""
    import provenance.cli.lineage as lineage_cli

    monkeypatch.setattr(lineage_cli, "LINEAGE_VERSIONS", 3)
    monkeypatch.setattr(lineage_cli, "TAINT_MATCHES", 2)
    write_jsonl(data_dir / "d.jsonl", [{"id": f"d{i}", "text": "the same text in every row"} for i in range(5)])
    ledger.register_dataset("d", data_dir / "d.jsonl", id_field="id")
    with ledger.start_run(datasets=["d"], message="trained") as run:
        tip = run.commit({"w": torch.zeros(2)})
    for i in range(4):
        tip = ledger.commit({"w": torch.full((2,), float(i))}, message=f"child {i}", parent=tip)
    base = ["--ledger", str(ledger.root), "taint", "--text", "-"]
    out = CliRunner().invoke(main, base, input="the same text in every row")
    assert out.exit_code == 0, out.output
    assert "the text, exactly: 5 documents\n  d@1 d0\n  d@1 d1\n  3 more document(s): --all lists them" in out.output
    assert "5 tainted version(s) (the first 3)" in out.output and "2 more version(s): --all lists them" in out.output
    out = CliRunner().invoke(main, [*base, "--all"], input="the same text in every row")
    assert out.exit_code == 0 and "  d@1 d4\n" in out.output and "5 tainted version(s) " in out.output
    assert "more document(s)" not in out.output and "more version(s)" not in out.output
    assert all(f"child {i}" in out.output for i in range(4))


def test_lineage_of_a_large_ledger_is_the_same_every_time(tmp_path):
    """300,000 run_shards rows: enough for DuckDB to aggregate on several threads, whose float
    sums used to come out in a different order from call to call (8 of 10 calls differed)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_audits", Path(__file__).resolve().parents[1] / "benchmarks" / "audits.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ledger, vids, _, n_rows = bench.build_lineage_ledger(tmp_path / "big", 2_000, 30_000, 10)
    assert n_rows > 250_000
    first = ledger.lineage(vids[-1])
    assert first.shards.num_rows > 20_000 and len(first.datasets) == 100
    assert sum(d.effective_share for d in first.datasets) == pytest.approx(1.0)
    for _ in range(6):
        again = ledger.lineage(vids[-1])
        assert again.shards.equals(first.shards)
        assert [d.model_dump() for d in again.datasets] == [d.model_dump() for d in first.datasets]


def test_lineage_sums_are_exact_on_a_binary_grid_whatever_the_row_order():
    """Per shard, Σ epochs and Σ weight × examples are summed as integers in units of 2⁻⁶⁰: exact
    for dyadic merge shares (2⁻⁴⁰, 3/8), within n·2⁻⁶¹ of the exact sum of the doubles otherwise
    (1/3, 10⁻¹²), and the same bits in any row order (DuckDB's threads sum in any order)."""
    import random
    from fractions import Fraction

    import duckdb
    import pyarrow as pa

    from provenance.ledger.lineage import LineageQueries

    weights = {"r0": 2.0 ** -40, "r1": 3 / 8, "r2": 1 / 3, "r3": 1e-12, "r4": 1.0}
    rows = [(f"r{i % 5}", "d@1", i % 3, 1 + 7 * i, (1 + i) / 3 if i % 2 else 0.5 ** i) for i in range(60)]
    expected = {}
    for run, _, shard, examples, epochs in rows:
        e, x = expected.get(shard, (Fraction(0), Fraction(0)))
        expected[shard] = (e + Fraction(epochs), x + Fraction(weights[run] * examples))
    results = []
    for seed in range(4):
        random.Random(seed).shuffle(rows)
        con = duckdb.connect()
        con.register("lineage_runs", pa.table({"run_id": list(weights), "weight": list(weights.values())}))
        con.register("run_shards", pa.table({
            "run_id": [r[0] for r in rows], "dataset_id": [r[1] for r in rows], "shard_index": [r[2] for r in rows],
            "examples": [r[3] for r in rows], "distinct_documents": [1] * len(rows), "epochs": [r[4] for r in rows]}))
        con.register("shards", pa.table({"dataset_id": ["d@1"] * 3, "shard_index": [0, 1, 2], "name": ["a", "b", "c"]}))
        results.append(LineageQueries._trained(con).to_pylist())
    assert all(r == results[0] for r in results[1:])  # the same bits every time
    for row in results[0]:
        epochs, effective = expected[row["shard_index"]]
        assert row["runs"] == 20 and row["shard"] == "abc"[row["shard_index"]]
        assert abs(Fraction(row["epochs"]) - epochs) <= 20 * Fraction(1, 2 ** 61) + Fraction(row["epochs"]) * 2 ** -52
        assert abs(Fraction(row["effective_examples"]) - effective) <= (
            20 * Fraction(1, 2 ** 61) + Fraction(row["effective_examples"]) * 2 ** -52)
    # 2⁻⁴⁰ and 3/8: every term on the grid, so the sums are exact (decimals of 18 places were not:
    # 5·2⁻⁴⁰ came back as 4.547474e-12)
    dyadic = [("r0", 0, 5, 2.0 ** -45), ("r1", 1, 6, 0.25), ("r4", 1, 9, 0.25)]
    con = duckdb.connect()
    con.register("lineage_runs", pa.table({"run_id": list(weights), "weight": list(weights.values())}))
    con.register("run_shards", pa.table({"run_id": [r[0] for r in dyadic], "dataset_id": ["d@1"] * 3,
                                         "shard_index": [r[1] for r in dyadic], "examples": [r[2] for r in dyadic],
                                         "distinct_documents": [1] * 3, "epochs": [r[3] for r in dyadic]}))
    con.register("shards", pa.table({"dataset_id": ["d@1"] * 2, "shard_index": [0, 1], "name": ["a", "b"]}))
    tiny, whole = LineageQueries._trained(con).to_pylist()
    assert (tiny["effective_examples"], tiny["epochs"]) == (5 * 2.0 ** -40, 2.0 ** -45)
    assert (whole["effective_examples"], whole["epochs"]) == (3 / 8 * 6 + 9.0, 0.5)
