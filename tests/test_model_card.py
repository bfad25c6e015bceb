"""Model cards: the metadata and text of a version's Hugging Face model card, read back with
``huggingface_hub``, against the lineage, licences and audits the ledger records."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from provenance.cli.main import main
from provenance.errors import InvalidParameterError
from provenance.model_card import hub_license
from provenance.results import LicenseSummary

hub = pytest.importorskip("huggingface_hub")


def words(i: int, n: int = 40) -> str:
    return " ".join(f"w{i}x{j}" for j in range(n))


@pytest.fixture
def lineage(ledger, data_dir, write_jsonl):
    """A base trained on ``web`` (CC-BY-SA-4.0); ``a`` on ``books`` (CC-BY-NC-4.0), ``b`` on
    ``misc`` (no licence), both from the base; their merge with weights 3:1, gated against the
    evaluation set ``ev``, one of whose documents ``misc`` holds."""
    write_jsonl(data_dir / "web.jsonl", [{"id": f"w{i}", "text": words(i)} for i in range(10)])
    write_jsonl(data_dir / "books.jsonl", [{"id": f"k{i}", "text": words(100 + i)} for i in range(8)])
    write_jsonl(data_dir / "misc.jsonl", [{"id": f"m{i}", "text": words(200 + i)} for i in range(5)])
    write_jsonl(data_dir / "ev.jsonl", [{"id": "e0", "text": words(200)}, {"id": "e1", "text": words(900)}])
    ledger.register_dataset("web", data_dir / "web.jsonl", id_field="id", license="CC-BY-SA-4.0")
    ledger.register_dataset("books", data_dir / "books.jsonl", id_field="id", license="CC-BY-NC-4.0")
    ledger.register_dataset("misc", data_dir / "misc.jsonl", id_field="id")
    ledger.register_dataset("ev", data_dir / "ev.jsonl", id_field="id", role="eval", license="MIT")
    with ledger.start_run(datasets=["web"], message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    with ledger.start_run(base=base, datasets={"books": 2}, message="books") as run:
        va = run.commit({"w": torch.ones(4)})
    with ledger.start_run(base=base, datasets=["misc"], message="misc") as run:
        vb = run.commit({"w": 3 * torch.ones(4)})
    merged = ledger.merge([va, vb], method="average", weights=[3.0, 1.0], message="the merge",
                          gate={"eval_datasets": ["ev"], "ngram": 0, "max_contamination": None})
    return ledger, base, va, vb, merged


def _table(text: str) -> dict[str, list[str]]:
    """The training-data table of a card's text: dataset -> its other cells."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| dataset", "| ---"))]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}


def test_card_metadata_and_table_are_the_lineages(lineage, tmp_path):
    ledger, base, va, vb, merged = lineage
    card = ledger.model_card(merged)
    saved = tmp_path / "README.md"
    card.save(saved)
    loaded = hub.ModelCard.load(saved)
    lin = ledger.lineage(merged)
    by_share = sorted(lin.datasets, key=lambda d: -d.effective_share)
    assert loaded.data.datasets == [d.dataset_id for d in by_share] == ["books@1", "web@1", "misc@1"]
    assert loaded.data.license == "other"
    assert loaded.data.license_name == "cc-by-nc-4.0-and-cc-by-sa-4.0-and-unknown"
    assert loaded.data.provenance == {"version": merged.version_id, "datasets": [
        {"id": d.dataset_id, "effective_share": d.effective_share} for d in by_share]}
    assert loaded.data.base_model is None and loaded.data.tags == ["provenance"]
    # books: 8 documents x 2 epochs, at weight 3/4; web: 10 at weight 1; misc: 5 at 1/4
    assert {d.dataset_id: d.effective_examples for d in lin.datasets} == {"books@1": 12.0, "web@1": 10.0, "misc@1": 1.25}
    table = _table(loaded.text)
    assert list(table) == [d.dataset_id for d in by_share]
    for d in lin.datasets:
        role, licence, examples, effective, share = table[d.dataset_id]
        assert (role, licence) == ("train", d.license or "unknown")
        assert int(examples.replace(",", "")) == d.examples
        assert float(effective.replace(",", "")) == pytest.approx(d.effective_examples, abs=0.005)
        assert float(share.rstrip("%")) == pytest.approx(100 * d.effective_share, abs=0.005)
    assert f"The lineage starts at version `{base.version_id[:12]}` (base)." in loaded.text


def test_card_states_the_licence_conditions(lineage):
    ledger, *_, merged = lineage
    text = ledger.model_card(merged).text
    assert "several licences: CC-BY-NC-4.0, CC-BY-SA-4.0, and some of it under no known licence" in text
    assert "- **Non-commercial**: books@1 (their licences forbid commercial use)." in text
    assert "- **Share-alike**: web@1 (derivatives may have to be shared under the same licence)." in text
    assert "- **Unknown licence**: misc@1 (no licence is recorded, or its conditions are unknown)." in text
    assert "- **Attribution**: books@1, web@1" in text


def test_card_shows_the_gate_the_merge_cites_and_the_latest_audits(lineage, data_dir, write_jsonl):
    ledger, base, va, vb, merged = lineage
    gate = ledger.receipt(merged).audit_id
    text = ledger.model_card(merged).text
    assert f"Passed (audit `{gate[:12]}`" in text
    assert "- Contamination with ev@1: 1 of 2 evaluation documents have an exact or near copy" in text
    assert "No deduplication audit was run on this version or its datasets." in text
    assert "No memorization audit was run on this version." in text

    ledger.audit_dedup(["web"])  # a dataset of the lineage
    dedup = ledger.audit_dedup([merged.version_id])  # the version itself: the latest
    memo = ledger.audit_memorization(merged, [words(3), "nothing like the training data at all"])
    text = ledger.model_card(merged).text
    assert f"Deduplication (audit `{dedup.audit_id[:12]}`" in text
    assert f"0 of {dedup.summary.documents} documents are redundant copies" in text
    assert f"Memorization (audit `{memo.audit_id[:12]}`" in text and "1 of 2 generated samples reproduce" in text

    text_a = ledger.model_card(va).text  # an input of the gated merge: the gate concerns it too
    assert f"Passed (audit `{gate[:12]}`" in text_a
    assert "No pre-merge gate was run for this version." in ledger.model_card(base).text
    import duckdb  # the cited audit removed by another program (or by prov audit delete before it saw citations)

    con = duckdb.connect(str(ledger.db_path))
    con.execute("DELETE FROM audits WHERE audit_id = ?", [gate])
    con.close()
    assert (f"The merge's receipt cites the pre-merge gate audit `{gate[:12]}`, which is not in the ledger "
            "(`prov verify` reports it).") in ledger.model_card(merged).text  # the card still made (stranger pass 24)


def test_one_cluster_and_one_redundant_document_are_said_in_the_singular(ledger, data_dir, write_jsonl):
    """The card and `prov audit dedup` said "1 clusters" and "1 redundant documents" (stranger pass 37)."""
    write_jsonl(data_dir / "twice.jsonl", [{"id": "a", "text": words(1)}, {"id": "b", "text": words(1)},
                                           {"id": "c", "text": words(2)}])
    ledger.register_dataset("twice", data_dir / "twice.jsonl", id_field="id")
    with ledger.start_run(datasets=["twice"], message="on twice") as run:
        v = run.commit({"w": torch.zeros(2)})
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "audit", "dedup", "twice"])
    assert out.exit_code == 0 and "duplicate rate 33.33% (1 redundant document)\n" in out.output, out.output
    assert ("1 of 3 documents are redundant copies (duplicate rate 33.33%, 1 cluster)."
            in ledger.model_card(v).text)


def test_one_licence_gives_its_hub_id():
    def summary(licenses, unknown=()):
        return LicenseSummary(licenses=licenses, non_commercial=[], share_alike=[], unknown_license=list(unknown),
                              model_generated=[])

    assert hub_license(summary(["CC-BY-SA-4.0"])) == ("cc-by-sa-4.0", None)
    assert hub_license(summary(["ODbL-1.0"])) == ("odbl", None)
    assert hub_license(summary(["GPL-3.0-only"])) == ("gpl-3.0", None)
    assert hub_license(summary(["LicenseRef-mine"])) == ("other", "licenseref-mine")
    assert hub_license(summary(["MIT"], unknown=["x@1"])) == ("other", "mit-and-unknown")
    assert hub_license(summary([], unknown=["x@1"])) == ("unknown", None)
    assert hub_license(summary([])) == ("unknown", None)  # no data recorded: docs/model-cards.md
    # a LicenseRef is a licence whose conditions are unknown, not data of no licence
    assert hub_license(summary(["LicenseRef-mine"], unknown=["x@1"]), unlicensed=[]) == ("other", "licenseref-mine")


def test_card_licence_of_conditions_unknown_retractions_and_one_line_messages(ledger, data_dir, write_jsonl):
    """A ``LicenseRef-`` licence made the card say "LicenseRef-custom, and some of it under no
    known licence" (licence ``licenseref-custom-and-unknown``); a retraction in the lineage went
    unsaid; a message's newline broke the base model's paragraph."""
    write_jsonl(data_dir / "c.jsonl", [{"id": f"c{i}", "text": words(i)} for i in range(4)])
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id", license="LicenseRef-custom")
    base = ledger.commit({"w": torch.zeros(2)}, message="imported\nsecond line")
    with ledger.start_run(base=base, datasets=["c"], message="r") as run:
        v = run.commit({"w": torch.ones(2)})
    card = ledger.model_card(v)
    assert (card.data.license, card.data.license_name) == ("other", "licenseref-custom")
    assert "The training data is under LicenseRef-custom." in card.text and "no known licence" not in card.text
    assert "- **Unknown licence**: c@1 (no licence is recorded, or its conditions are unknown)." in card.text
    assert f"`{base.version_id[:12]}` (imported second line)." in card.text
    assert "Retracted data" not in card.text
    retraction = ledger.retract(dataset="c", key="c1", reason="asked to")
    text = ledger.model_card(v).text
    assert (f"**Retracted data**: runs in this lineage trained on data retracted since: c c1 (asked to; retraction "
            f"`{retraction['retraction_id'][:12]}`)") in text


def test_card_names_inputs_as_written_and_a_long_history_in_short(ledger):
    """An unregistered input's name went into the card raw (an `<!--` in it hid the rest of the
    card, its licence included), a version whose runs named only such inputs had "no run in its
    lineage recorded any", and every version without a run was listed (1,997 ids in one paragraph
    for a deep history) (stranger pass 46)."""
    import uuid

    from provenance.openlineage import ingest

    chain = [ledger.commit({"w": torch.zeros(2)}, message="root")]
    for i in range(12):
        chain.append(ledger.commit({"w": torch.full((2,), float(i))}, parent=chain[-1], message=f"c{i}"))
    v = chain[-1]
    names = ["<!-- hidden", "tbl `x`"]
    for made in chain[-2:]:  # two runs naming the same inputs: each is listed once
        ingest(ledger, {"eventType": "COMPLETE", "eventTime": "2026-01-01T00:00:00Z", "run": {"runId": str(uuid.uuid4())},
                        "job": {"namespace": "ns", "name": "job"}, "producer": "p",
                        "inputs": [{"namespace": "s3", "name": n} for n in names],
                        "outputs": [{"namespace": "provenance", "name": made.version_id}]})
    text = ledger.model_card(v).text
    assert ("No registered dataset is recorded for this version: its runs named only inputs that are not registered "
            "datasets (below).") in text and "no run in its lineage recorded any" not in text
    assert "Inputs the runs named that are not registered datasets: `s3/<!-- hidden`, `` s3/tbl `x` ``." in text
    listed = re.search(r"the ledger does not know: (.*)\.\n", text).group(1)
    assert listed.count("`") == 2 * 10 + 2 and listed.endswith(f" and 1 more (`prov lineage {v.version_id[:12]} --json` "
                                                           "lists them)")
    assert "## Licence" in text


def test_free_text_is_shown_as_written_and_hides_nothing(ledger, data_dir, write_jsonl):
    """A commit message, an author and a retraction's reason went into the card raw: an `<!--` in
    the version's message hid everything after it (the data and the licence), a `<details>` in a
    reason folded the rest away, and a reason's newline broke its paragraph."""
    write_jsonl(data_dir / "c.jsonl", [{"id": f"c{i}", "text": words(i)} for i in range(4)])
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id", license="MIT")
    base = ledger.commit({"w": torch.zeros(2)}, message="import <b>old</b> & new")
    with ledger.start_run(base=base, datasets=["c"], message="r") as run:
        v = run.commit({"w": torch.ones(2)}, message="fine-tune <!-- draft", author="Ann <ann@example.org>")
    ledger.retract(dataset="c", key="c1", reason="<details>PII\nsee ticket 7")
    text = ledger.model_card(v).text
    assert "<!--" not in text and "<details>" not in text and "<b>" not in text
    assert "\n\nfine-tune &lt;!-- draft\n\nCommitted " in text and " by Ann &lt;ann@example.org&gt;. " in text
    assert f"`{base.version_id[:12]}` (import &lt;b&gt;old&lt;/b&gt; &amp; new)." in text
    assert "c c1 (&lt;details&gt;PII see ticket 7; retraction" in text
    assert "## Training data" in text and "## Licence" in text and "The training data is under MIT." in text


def test_single_licence_card(ledger, data_dir, write_jsonl):
    write_jsonl(data_dir / "web.jsonl", [{"id": f"w{i}", "text": words(i)} for i in range(4)])
    ledger.register_dataset("web", data_dir / "web.jsonl", id_field="id", license="MIT")
    with ledger.start_run(datasets=["web"], message="base") as run:
        v = run.commit({"w": torch.zeros(2)})
    card = ledger.model_card(v, base_model="openai-community/gpt2")
    assert (card.data.license, card.data.license_name, card.data.base_model) == ("mit", None, "openai-community/gpt2")
    assert "The training data is under MIT." in card.text
    assert "Non-commercial" not in card.text and "Unknown licence" not in card.text
    assert "[openai-community/gpt2](https://huggingface.co/openai-community/gpt2)" in card.text
    assert "None in the ledger: this version has no parent" in card.text  # not "the lineage starts at" itself
    # a base model given was written as it was (stranger pass 25): '' made `base_model: ''`, a space or a
    # newline a broken Hub link, a ')' ended the link early
    for bad in ("", "gpt 2", "gpt2\nx", "a/b/c", "../gpt2", "gpt2)](https://example.org"):
        with pytest.raises(InvalidParameterError, match=r"base model .* is not a Hugging Face Hub name"):
            ledger.model_card(v, base_model=bad)
    out = CliRunner().invoke(main, ["--ledger", str(ledger.root), "model", "card", v.version_id, "--base-model", ""])
    assert out.exit_code == 4 and out.output == ("Error: base model '' is not a Hugging Face Hub name (NAME or "
                                                 "ORG/NAME: ASCII letters, digits, '.', '_', '-')\n")


def test_base_model_recorded_in_the_stored_config(ledger, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "openai-community/gpt2", "model_type": "gpt2"}))
    root = ledger.commit(folder, message="from the hub")
    child = ledger.commit({"w": torch.ones(2)}, parent=root, message="fine-tuned")
    card = ledger.model_card(child)
    assert card.data.base_model == "openai-community/gpt2"
    assert "no training data is recorded" in card.text.lower()
    assert f"neither a run nor a merge, whose training data the ledger does not know: `{child.version_id[:12]}`, " \
           f"`{root.version_id[:12]}`" in card.text
    (folder / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path), "model_type": "gpt2"}))
    local = ledger.commit(folder, message="from a local folder")
    assert ledger.model_card(local).data.base_model is None  # a path here is not a Hub name


def test_cli_card_prints_or_writes(lineage, tmp_path, monkeypatch):
    ledger, *_, merged = lineage
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    printed = runner.invoke(main, ["--ledger", str(ledger.root), "model", "card", merged.version_id[:8]])
    assert printed.exit_code == 0, printed.output
    assert hub.ModelCard(printed.output).data.to_dict() == ledger.model_card(merged).data.to_dict()
    written = runner.invoke(main, ["--ledger", str(ledger.root), "model", "card", merged.version_id, "-o", "README.md",
                                   "--base-model", "gpt2", "--json"])
    assert written.exit_code == 0, written.output
    out = json.loads(written.output)
    loaded = hub.ModelCard.load(tmp_path / "README.md")
    assert out["metadata"] == loaded.data.to_dict() and loaded.data.base_model == "gpt2"
    assert re.search(r"\| books@1 \| train \| CC-BY-NC-4.0 \| 16 \| 12\.00 \| 51\.\d\d% \|", loaded.text)
    inside = runner.invoke(main, ["--ledger", str(ledger.root), "model", "card", merged.version_id, "-o",
                                  str(ledger.root / "README.md")])
    assert inside.exit_code != 0 and "inside the ledger folder" in inside.output


def test_remote_card_and_checkout_hf_refusal(tmp_path_factory, data_dir, write_jsonl, tmp_path):
    from tests import serving

    with serving.running(tmp_path_factory.mktemp("served")) as server:
        remote = server.ledger()
        write_jsonl(data_dir / "web.jsonl", [{"id": f"w{i}", "text": words(i)} for i in range(6)])
        remote.register_dataset("web", data_dir / "web.jsonl", id_field="id", license="CC-BY-4.0")
        with remote.start_run(datasets=["web"], message="base") as run:
            v = run.commit({"w": torch.zeros(2)})
        memo = remote.audit_memorization(v, [words(1)])
        card = remote.model_card(v)
        assert card.data.datasets == ["web@1"] and card.data.license == "cc-by-4.0"
        assert card.data.provenance["datasets"] == [{"id": "web@1", "effective_share": 1.0}]
        assert _table(card.text)["web@1"] == ["train", "CC-BY-4.0", "6", "6.00", "100.00%"]
        assert f"Memorization (audit `{memo.audit_id[:12]}`" in card.text
        with pytest.raises(InvalidParameterError, match="not available through a ledger server: it does not serve "
                                                        "a version's stored files"):
            remote.checkout_hf(v, tmp_path / "out")


def test_markdown_in_free_text_is_shown_as_written_and_hides_nothing(ledger, data_dir, write_jsonl):
    """A commit message with a line of three backticks opened a code block that held the rest of
    the card (its data, licence and audits), a ``---`` line under a message made it a heading, a
    lone backtick in a root's message paired with the next version id's, and an ESC in an author
    went into README.md as it was, and a U+202E in a retraction's reason turned the rest of its
    paragraph, the retraction's id included, right to left (stranger pass 65). Read back with a CommonMark parser."""
    mdit = pytest.importorskip("markdown_it")
    write_jsonl(data_dir / "c.jsonl", [{"id": f"c{i}", "text": words(i)} for i in range(4)])
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id", license="MIT")
    base = ledger.commit({"w": torch.zeros(2)}, message="import `old")
    root2 = ledger.commit({"w": torch.ones(2)}, message="second root")
    merged = ledger.merge([base, root2], method="average", message="merge")
    with ledger.start_run(base=merged, datasets=["c"], message="fix the loader\n    ```python\nprint(1)\n---\n# not a heading\n"
                          "1. not a list | [x](javascript:alert(1)) *a*", author="Ann \x1b[2J") as run:
        v = run.commit({"w": torch.ones(2)})
    rid = ledger.retract(dataset="c", key="c1", reason="asked \u202eby the author")["retraction_id"]
    text = ledger.model_card(v).text
    md = mdit.MarkdownIt("commonmark").enable("table")
    tokens = md.parse(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == [f"Model version {v.version_id[:12]}", "Base model", "Training data", "Licence", "Audits",
                        "Pre-merge gate", "Duplicates and memorization"]
    assert not [t for t in tokens if t.type in ("fence", "code_block")]
    rendered = md.render(text)
    assert ("<p>fix the loader\n```python\nprint(1)\n---\n# not a heading\n1. not a list | [x](javascript:alert(1)) "
            "*a*</p>") in rendered
    assert (f"The lineage starts at versions <code>{base.version_id[:12]}</code> (import `old), "
            f"<code>{root2.version_id[:12]}</code> (second root).") in rendered
    assert "\x1b" not in text and " by Ann \\\\x1b\\[2J. " in text and "by Ann \\x1b[2J. " in rendered
    assert "The training data is under MIT." in rendered
    assert "\u202e" not in text and f"c c1 (asked \\u202eby the author; retraction <code>{rid[:12]}</code>)" in rendered


def test_training_data_of_no_licence_is_said_in_the_licence_section(ledger, data_dir, write_jsonl):
    """Data recorded, none of it under a licence: the Licence section had no sentence, only a blank
    line above its list (stranger pass 65)."""
    write_jsonl(data_dir / "c.jsonl", [{"id": f"c{i}", "text": words(i)} for i in range(3)])
    ledger.register_dataset("c", data_dir / "c.jsonl", id_field="id")
    with ledger.start_run(datasets=["c"], message="r") as run:
        v = run.commit({"w": torch.ones(2)})
    card = ledger.model_card(v)
    assert card.data.license == "unknown" and card.data.datasets == ["c@1"]
    section = card.text.split("## Licence\n\n", 1)[1].split("\n\n## ", 1)[0]
    assert section == ("No licence is recorded for the training data; the card's licence is `unknown`.\n\n"
                       "- **Unknown licence**: c@1 (no licence is recorded, or its conditions are unknown).")
