"""CLI tests: parsing, output and exit codes of `prov`; the library is tested elsewhere."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pyarrow as pa
import pytest
from click.testing import CliRunner

from provenance.cli.main import main
from provenance.synthetic import generate_corpus


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def project(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["init", "."])
    assert result.exit_code == 0, result.output
    corpus = generate_corpus(60, seed=3, prefix="d")
    corpus.write_jsonl(tmp_path / "data" / "a.jsonl")
    return tmp_path


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_init_twice_fails_with_message(project, runner):
    result = runner.invoke(main, ["init", "."])
    assert result.exit_code == 4
    assert "already exists" in result.output


def test_init_makes_the_ledger_that_ledger_names(tmp_path, runner, monkeypatch):
    """`prov --ledger l init` made the ledger in the current folder, without a word, and every
    later `--ledger l` found none."""
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    made = _json(runner.invoke(main, ["--ledger", "l", "init", "--json"]))
    assert made["ledger"] == str(tmp_path / "l" / ".prov") and not (tmp_path / ".prov").exists()
    assert _json(runner.invoke(main, ["--ledger", "l", "dataset", "list", "--json"])) == []
    result = runner.invoke(main, ["--ledger", "l", "init", "other"])
    assert result.exit_code == 2 and "--ledger l and PATH other name two ledgers: give one of them" in result.output
    result = runner.invoke(main, ["--ledger", "http://127.0.0.1:9", "init"])
    assert result.exit_code == 2 and "is a ledger server: prov init makes a ledger in a folder" in result.output
    assert runner.invoke(main, ["--ledger", "l/.prov", "init", "l"]).exit_code == 4  # the same one: already there
    monkeypatch.setenv("PROV_LEDGER", str(tmp_path / "l"))  # an exported default gives way to the PATH typed
    assert _json(runner.invoke(main, ["init", "m", "--json"]))["ledger"] == str(tmp_path / "m" / ".prov")
    assert not (tmp_path / "other").exists()
    for url in ("s3://bucket/ledger", "ftp://host/x"):  # made (or looked for) the local folder s3:/bucket/ledger
        made = runner.invoke(main, ["init", url])
        assert made.exit_code == 4 and f"cannot create a ledger at {url!r}: a ledger's database is in a local folder" in made.output
        opened = runner.invoke(main, ["--ledger", url, "dataset", "list"])
        assert opened.exit_code == 4 and "a ledger is a folder, or a ledger server's http:// or https:// URL" in opened.output
    assert not (tmp_path / "s3:").exists()


def test_dataset_add_list_show(project, runner):
    out = _json(runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id",
                                      "--license", "cc-by-nc-4.0", "--json"]))
    assert out["created"] is True
    ds = out["dataset"]
    assert ds["dataset_id"] == "web@1"
    assert ds["n_documents"] == 60
    assert ds["license"] == {"spdx": "CC-BY-NC-4.0", "non_commercial": True, "share_alike": False, "attribution": True}
    assert ds["config_id"] == "minhash-v1:word5:nfkc-lower-punct:xxh32:affine32:k128:s1"
    again = _json(runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id", "--json"]))
    assert again["created"] is False and "unchanged" in again["message"]

    listed = _json(runner.invoke(main, ["dataset", "list", "--json"]))
    assert [d["dataset_id"] for d in listed] == ["web@1"]
    shown = _json(runner.invoke(main, ["dataset", "show", "web@1", "--json"]))
    assert shown["shards"][0]["name"] == "a.jsonl"
    data = (project / "data" / "a.jsonl").read_bytes()
    assert shown["shards"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    human = runner.invoke(main, ["dataset", "show", "web"])
    assert human.exit_code == 0 and "CC-BY-NC-4.0 (non-commercial, attribution)" in human.output


def test_dataset_show_lists_the_first_shards_unless_asked_for_all(project, runner, monkeypatch):
    """A folder of text files is a shard a file: `prov dataset show` drew every one (a table of
    20,000 shards took 78 s); the table shows the first SHOWN_SHARDS and says how many more."""
    import provenance.cli.datasets as datasets_cli

    monkeypatch.setattr(datasets_cli, "SHOWN_SHARDS", 2)
    for i in range(5):
        (project / "txt").mkdir(exist_ok=True)
        (project / "txt" / f"f{i}.txt").write_text(f"text file number {i} of five")
    assert runner.invoke(main, ["dataset", "add", "files", "txt"]).exit_code == 0
    out = runner.invoke(main, ["dataset", "show", "files"])
    assert out.exit_code == 0, out.output
    assert "shards (the first 2 of 5)" in out.output and "f1.txt" in out.output and "f2.txt" not in out.output
    assert out.output.endswith("3 more shard(s): --all lists them, --json gives everything\n")
    out = runner.invoke(main, ["dataset", "show", "files", "--all"])
    assert out.exit_code == 0 and "f4.txt" in out.output and "more shard(s)" not in out.output
    assert len(_json(runner.invoke(main, ["dataset", "show", "files", "--json"]))["shards"]) == 5


def test_dataset_add_options_shape_the_config(project, runner):
    out = _json(runner.invoke(main, ["dataset", "add", "small", "data/a.jsonl", "--num-perm", "64", "--ngram", "3",
                                      "--seed", "7", "--threshold", "0.5", "--role", "eval", "--json"]))
    ds = out["dataset"]
    assert ds["config_id"] == "minhash-v1:word3:nfkc-lower-punct:xxh32:affine32:k64:s7"
    assert ds["role"] == "eval"
    # 3 rows: 1 - (1 - 0.5**3)**21 = 0.939 < 0.99; 2 rows: 1 - (1 - 0.5**2)**32 = 0.9999
    assert (ds["bands"], ds["rows"]) == (32, 2)


def test_bad_input_exit_code_and_message(project, runner):
    bad = project / "data" / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    result = runner.invoke(main, ["dataset", "add", "bad", str(bad)])
    assert result.exit_code == 4
    assert "bad.jsonl:2: invalid UTF-8" in result.output
    ok = _json(runner.invoke(main, ["dataset", "add", "bad", str(bad), "--on-invalid", "replace", "--json"]))
    assert ok["dataset"]["n_invalid_replaced"] == 1 and ok["dataset"]["n_documents"] == 2
    for option, value, bounds in (("--num-perm", "0", "1<=x<=8192"), ("--ngram", "65", "1<=x<=64"),
                                  ("--seed", "-1", "0<=x<=4294967295")):  # usage errors, exit 2 (they exited 4)
        bogus = runner.invoke(main, ["dataset", "add", "x", "data/a.jsonl", option, value])
        assert bogus.exit_code == 2 and f"Invalid value for '{option}': {value} is not in the range {bounds}." in bogus.output
    too_few = runner.invoke(main, ["dataset", "add", "x", "data/a.jsonl", "--num-perm", "2"])  # in range, yet no banding
    assert too_few.exit_code == 2 and "Error: --threshold 0.8 with --num-perm 2: threshold 0.8 is too low" in too_few.output


def test_an_option_of_bytes_that_are_not_utf8_is_refused_by_name(project, runner):
    """A shell argument such as $'\\xff' reaches Python as a surrogate: it failed with a UnicodeEncodeError
    traceback once every document was fingerprinted (exit 1); now it is refused first, naming the option."""
    for option in ("--source", "--creator", "--description", "--text-field", "--id-field"):
        result = runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", option, "caf\udce9"])
        assert result.exit_code == 4, result.output
        what = option.removeprefix("--").replace("-", "_")
        assert result.output == f"Error: {what} holds an unpaired surrogate at character 3: it is not valid UTF-8\n"
    assert _json(runner.invoke(main, ["dataset", "list", "--json"])) == []


def test_sql_formats_and_refusals(project, runner):
    runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"])
    rows = _json(runner.invoke(main, ["sql", "SELECT key, token_count FROM documents ORDER BY key LIMIT 2", "--json"]))
    assert [r["key"] for r in rows] == ["d-0000000", "d-0000001"]
    csv_out = runner.invoke(main, ["sql", "SELECT count(*) AS n FROM documents", "--format", "csv"])
    assert list(csv.reader(io.StringIO(csv_out.output))) == [["n"], ["60"]]
    table = runner.invoke(main, ["sql", "SELECT dataset_id FROM datasets"])
    assert "web@1" in table.output and "(1 row)" in table.output
    for query in ["DELETE FROM documents", "DROP TABLE documents", "SELECT * FROM read_csv('/etc/passwd')",
                  "SELECT 1; SELECT 2"]:
        result = runner.invoke(main, ["sql", query])
        assert result.exit_code == 4, query
    count = _json(runner.invoke(main, ["sql", "SELECT count(*) AS n FROM documents", "--json"]))
    assert count == [{"n": 60}]


def test_sql_of_a_query_that_opens_with_a_comment(project, runner):
    """A query file that starts with a SQL comment (``prov sql "$(cat q.sql)"``) was taken for an
    option: ``No such option '-- how many …'``, exit 2."""
    runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"])
    query = "-- how many documents\nSELECT count(*) AS n FROM documents"
    assert _json(runner.invoke(main, ["sql", query, "--json"])) == [{"n": 60}]
    assert _json(runner.invoke(main, ["sql", "--format", "json", query])) == [{"n": 60}]
    assert _json(runner.invoke(main, ["sql", "-- one line\nSELECT 2 AS two", "--format=json"])) == [{"two": 2}]
    result = runner.invoke(main, ["sql", "-- only a comment"])
    assert result.exit_code == 4 and "give exactly one statement, got 0" in result.output
    result = runner.invoke(main, ["sql", "SELECT 1", "--fromat", "csv"])  # a mistyped option is still one
    assert result.exit_code == 2 and "No such option '--fromat'. Did you mean '--format'?" in result.output


def test_duckdb_draws_no_progress_bar_into_the_output(project, runner):
    """DuckDB's own progress bar is on by default and drew on stdout for any query of over 2 s:
    into `prov sql --json`, and (a registration copying many shards) into a benchmark's JSON line.
    Checked by its setting in a process of its own (under pytest DuckDB leaves it off), on the
    command's connection and on another thread's cursor (a server's reads); by hand, a 6 s
    query's `--json` output was JSON only."""
    import subprocess
    import sys

    script = """if True:
        import json, sys, threading
        from provenance import Ledger
        from provenance.cli.main import main
        query = "SELECT current_setting('enable_progress_bar') AS bar"
        ledger, seen = Ledger.open(sys.argv[1]), []
        with ledger.session():
            seen += ledger.sql(query).to_pylist()
            reader = threading.Thread(target=lambda: seen.extend(ledger.sql(query).to_pylist()))
            reader.start()
            reader.join()
        print(json.dumps(seen))
        main(["--ledger", sys.argv[1], "sql", query, "--json"])"""
    done = subprocess.run([sys.executable, "-c", script, str(project)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    library, command = done.stdout.split("\n", 1)
    assert (json.loads(library), json.loads(command)) == ([{"bar": False}, {"bar": False}], [{"bar": False}]), done.stdout


def test_ledger_option_env_and_missing(project, runner, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    missing = runner.invoke(main, ["dataset", "list"])
    assert missing.exit_code == 3 and "no ledger" in missing.output
    assert runner.invoke(main, ["--ledger", str(project), "dataset", "list", "--json"]).output.strip() == "[]"
    monkeypatch.setenv("PROV_LEDGER", str(project / ".prov"))
    assert runner.invoke(main, ["dataset", "list", "--json"]).exit_code == 0


def test_export_croissant(project, runner, tmp_path):
    runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id", "--license", "MIT",
                         "--creator", "Acme", "--model-generated"])
    doc = _json(runner.invoke(main, ["dataset", "export", "web"]))
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert doc["@type"] == "sc:Dataset"
    assert doc["license"] == "https://spdx.org/licenses/MIT.html"
    assert doc["rai:hasSyntheticData"] is True
    assert doc["creator"]["name"] == "Acme"
    (fo,) = doc["distribution"]
    assert fo["sha256"] == hashlib.sha256((project / "data" / "a.jsonl").read_bytes()).hexdigest()
    fields = {f["name"]: f for f in doc["recordSet"][0]["field"]}
    assert fields["text"]["source"]["extract"] == {"column": "text"}
    assert fo["contentUrl"] == "a.jsonl"  # on stdout: relative to the shards' folder
    out = tmp_path / "web.croissant.json"
    result = runner.invoke(main, ["dataset", "export", "web", "-o", str(out)])
    assert result.exit_code == 0
    written = json.loads(out.read_text())
    assert written["distribution"][0]["contentUrl"] == "data/a.jsonl"  # relative to where the JSON is written
    assert {k: v for k, v in written.items() if k not in ("distribution", "url")} == {
        k: v for k, v in doc.items() if k not in ("distribution", "url")}


def test_demo_finds_planted_pairs(tmp_path, runner):
    report = _json(runner.invoke(main, ["demo", str(tmp_path / "demo"), "--docs", "300", "--json"]))
    assert report["summary"]["datasets"] == 3
    assert report["planted_eval_leaks"] == 10 and report["found_eval_leaks"] == 10
    assert report["planted_near_duplicates"] > 0
    assert report["found_near_duplicates"] >= 0.9 * report["planted_near_duplicates"]
    base, fish, lora, merged = report["models"]
    assert [m["tag"] for m in report["models"]] == ["demo-base", "demo-fish", "demo-lora", "demo-merge"]
    assert fish["parents"] == [base["version_id"]] and lora["parents"] == [base["version_id"]]
    assert merged["parents"] == [fish["version_id"], lora["version_id"]] and merged["run_id"] is None
    assert base["encodings"] == {"full": 5} and base["stored_bytes"] == base["full_bytes"]
    assert fish["encodings"].get("sparse", 0) >= 1 and fish["stored_bytes"] < 0.05 * fish["full_bytes"]
    assert lora["encodings"] == {"low_rank": 1, "unchanged": 4} and lora["stored_bytes"] == (64 * 4 + 4 * 64) * 4
    # the forum has 75 posts and 20 reposted web pages (the overlap the gate finds)
    assert {d: c["examples"] for d, c in base["consumed"].items()} == {"web-crawl@1": 600, "forum-posts@1": 190}
    assert fish["consumed"]["forum-posts@1"]["examples"] == 95 and fish["params"]["keep_ratio"] == 0.005
    assert lora["consumed"]["web-crawl@1"]["examples"] == 300  # 300 web documents are 10 batches of 32, < 20
    gate = report["gate"]
    # the planted evaluation leaks fail the gate's default policy (any contamination), said first
    assert not gate["passed"] and gate["policy"]["max_overlap"] == 0.25 and gate["policy"]["max_contamination"] == 0
    assert gate["violations"][0]["policy"] == "max_contamination"
    assert gate["violations"][0]["message"].startswith("max-contamination 0 broken: 10 evaluation documents")
    overlap = gate["overlap"][0]
    assert (overlap["a"], overlap["b"]) == (fish["version_id"], lora["version_id"])
    assert (overlap["a_exact"], overlap["a_near"], overlap["a_documents"]) == (10, 10, 95)
    assert gate["contamination"]["contaminated_eval_documents"] == 10
    lineage = report["lineage"]
    assert lineage["version"] == merged["version_id"]
    assert {d["dataset_id"]: d["effective_share"] > 0 for d in lineage["datasets"]} == {"web-crawl@1": True,
                                                                                          "forum-posts@1": True}
    assert lineage["license"]["non_commercial"] == ["forum-posts@1"]
    again = _json(runner.invoke(main, ["demo", str(tmp_path / "demo"), "--docs", "300", "--json"]))
    assert again["gate"]["audit_id"] == gate["audit_id"]
    assert all(r["created"] is False for r in again["registrations"])
    assert [m["version_id"] for m in again["models"]] == [m["version_id"] for m in report["models"]]
    other = runner.invoke(main, ["demo", str(tmp_path / "demo"), "--docs", "100"])  # it kept the old corpus, silently
    assert other.exit_code == 4 and "holds the demo made with --docs 300 --seed 0, which it keeps; for --docs 100 " \
                                    "--seed 0 give another folder" in other.output


def test_demo_given_the_ledger_folder_uses_the_folder_holding_it(tmp_path, runner):
    """`prov demo x/.prov` made its ledger there but generated its data in x/.prov/data, inside
    the ledger folder (and run again, on the ledger it had made, kept doing so). The folder
    holding the ledger folder is the demo's, as `prov init x/.prov` makes the ledger in x."""
    report = _json(runner.invoke(main, ["demo", str(tmp_path / "x" / ".prov"), "--docs", "20", "--json"]))
    assert report["ledger"] == str(tmp_path / "x" / ".prov")
    assert (tmp_path / "x" / "data" / "demo.json").is_file()
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [".prov", "data"]
    assert not (tmp_path / "x" / ".prov" / "data").exists() and not (tmp_path / "x" / ".prov" / ".prov").exists()
    again = _json(runner.invoke(main, ["demo", str(tmp_path / "x"), "--docs", "20", "--json"]))
    assert all(r["created"] is False for r in again["registrations"])


def test_demo_refuses_a_ledger_it_did_not_make_and_bad_numbers(tmp_path, runner, write_jsonl):
    import torch

    from provenance import Ledger

    work = Ledger.init(tmp_path / "work")
    work.register_dataset("mine", write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "text": "some words here"}]),
                          id_field="id")
    out = runner.invoke(main, ["demo", str(tmp_path / "work"), "--docs", "100"])
    assert out.exit_code == 4 and "is a ledger the demo did not make (it holds mine)" in out.output
    assert [d.name for d in work.datasets()] == ["mine"] and not (tmp_path / "work" / "data").exists()
    work.commit({"w": torch.zeros(2)}, message="a model, no dataset")
    Ledger.init(tmp_path / "models").commit({"w": torch.zeros(2)}, message="imported")
    out = runner.invoke(main, ["demo", str(tmp_path / "models"), "--docs", "100"])
    assert out.exit_code == 4 and "(it holds 1 model version)" in out.output
    for option, value, says in (("--docs", "0", "0 is not in the range 20<=x<=1000000"),
                                ("--docs", "99999999999", "not in the range"), ("--seed", "-1", "-1 is not in the range x>=0")):
        out = runner.invoke(main, ["demo", str(tmp_path / "fresh"), option, value])
        assert out.exit_code == 2 and says in out.output, out.output
    assert not (tmp_path / "fresh").exists()  # nothing written
    from provenance.demo import run_demo
    from provenance.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=r"--docs\) must be 20 to 1,000,000, got -5"):
        run_demo(tmp_path / "fresh", n_docs=-5)
    assert not (tmp_path / "fresh").exists()


def test_model_commit_log_show_checkout_and_tag(project, runner):
    import torch
    from safetensors.torch import save_file

    state = {"w": torch.arange(200, dtype=torch.float32).reshape(20, 10), "b": torch.zeros(10)}
    save_file(state, str(project / "a.safetensors"))
    state["w"][3, 4] = -1.0
    save_file(state, str(project / "b.safetensors"))
    root = _json(runner.invoke(main, ["model", "commit", "a.safetensors", "-m", "root", "--json"]))
    assert (root["parents"], root["stored_bytes"], root["full_bytes"]) == ([], 840, 840)
    assert runner.invoke(main, ["tag", "base", root["version_id"][:8]]).output.strip() == f"base -> {root['version_id']}"
    listed = runner.invoke(main, ["tag", "list", root["version_id"][:8]])  # said: Got unexpected extra argument
    assert listed.exit_code == 2 and "a tag named 'list' is set with `prov tag set list VERSION`" in listed.output
    assert _json(runner.invoke(main, ["tag", "set", "list", root["version_id"][:8], "--json"]))["name"] == "list"
    child = _json(runner.invoke(main, ["model", "commit", "b.safetensors", "--parent", "base", "-m", "fix", "--json"]))
    assert (child["parents"], child["stored_bytes"]) == ([root["version_id"]], 8)
    log = _json(runner.invoke(main, ["model", "log", "--json"]))
    assert [v["version_id"] for v in log] == [child["version_id"], root["version_id"]]
    shown = _json(runner.invoke(main, ["model", "show", child["version_id"][:10], "--json"]))
    assert {p["name"]: p["encoding"] for p in shown["manifest"]} == {"b": "unchanged", "w": "sparse"}
    out = project / "out.safetensors"
    assert runner.invoke(main, ["model", "checkout", "base", "-o", str(out)]).exit_code == 0
    from safetensors import safe_open
    from safetensors.torch import load_file

    expected = load_file(str(project / "a.safetensors"))
    written = load_file(str(out))
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata() == {"prov_version": root["version_id"], "prov_message": "root"}
    log = _json(runner.invoke(main, ["model", "log", "base", "--json"]))
    assert [v["version_id"] for v in log] == [root["version_id"]]  # base and its ancestors only
    missing = runner.invoke(main, ["model", "show", "ffff"])
    assert missing.exit_code == 3 and "no version 'ffff'" in missing.output


def test_merge_cli_and_the_receipt_in_model_show(project, runner):
    import torch

    from provenance import Ledger

    ledger = Ledger.open(project)
    base = ledger.commit({"w": torch.zeros(4, 4)}, message="base")
    a = ledger.commit({"w": torch.ones(4, 4)}, parent=base, message="a")
    b = ledger.commit({"w": torch.full((4, 4), 3.0)}, parent=base, message="b")
    merged = _json(runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], "--method", "average",
                                        "--weights", "0.75,0.25", "-m", "average them", "--json"]))
    assert merged["parents"] == [a.version_id, b.version_id]
    assert torch.equal(Ledger.open(project).checkout(merged["version_id"])["w"], torch.full((4, 4), 1.5))
    shown = runner.invoke(main, ["model", "show", merged["version_id"][:8]])
    assert "merge   average, weights [0.75, 0.25]; kernel torch" in shown.output
    receipt = _json(runner.invoke(main, ["model", "show", merged["version_id"][:8], "--json"]))["receipt"]
    assert (receipt["method"], receipt["inputs"]) == ("average", [a.version_id, b.version_id])
    no_fisher = runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], "-m", "fisher"])
    assert no_fisher.exit_code == 4 and "no stored Fisher" in no_fisher.output
    bad = runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], "--weights", "x,1", "-m", "m"])
    assert bad.exit_code == 2 and "expected numbers separated by commas" in bad.output
    # an option the method does not use was dropped silently (stranger pass 25): `--density` without
    # `--method ties` made a Fisher merge, `--base nosuch` with averaging was never even looked up
    before = len(ledger.versions())
    for args, says in ((["--density", "0.5"], "--density is for ties: the fisher method does not use it"),
                       (["--method", "average", "--base", "nosuch"],
                        "--base is for task_arithmetic, ties: the average method does not use it"),
                       (["--method", "ties", "--eps", "0.1", "--normalize"],
                        "--eps is for fisher; --normalize is for fisher: the ties method does not use them")):
        out = runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], *args, "-m", "m"])
        assert out.exit_code == 2 and out.output.splitlines()[-1] == f"Error: {says}", out.output
    for args, says in ((["--method", "ties", "--density", "0"], "Invalid value for '--density': 0.0 is not in the range 0<x<=1."),
                       (["--method", "ties", "--density", "nan"], "Invalid value for '--density': 'nan' is not a number."),
                       (["--method", "fisher", "--eps", "-1"], "Invalid value for '--eps': -1.0 is not in the range x>=0.")):
        out = runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], *args, "-m", "m"])  # they exited 4
        assert out.exit_code == 2 and out.output.splitlines()[-1] == f"Error: {says}", out.output
    one = runner.invoke(main, ["merge", a.version_id[:8], "-m", "m"])  # made a copy of a, with a receipt
    assert one.exit_code == 2 and one.output.splitlines()[-1] == ("Error: a merge takes at least two versions: "
                                                                  "prov merge V1 V2 [V3 ...]")
    assert len(Ledger.open(project).versions()) == before
    ties = _json(runner.invoke(main, ["merge", a.version_id[:8], b.version_id[:8], "--method", "ties", "--density",
                                      "1", "--base", base.version_id[:8], "-m", "ties", "--json"]))
    assert (ties["receipt"]["density"], ties["receipt"]["base_version"]) == (1.0, base.version_id)


def test_text_with_brackets_is_printed_as_it_is(project, runner):
    """Rich read `[/]` in a commit message, a parameter name, a creator or a document key as
    markup: `model log`, `model show`, `dataset show` and `sql` crashed with a MarkupError (exit 1),
    and `[wip]` vanished from messages. A file named `[red]a.jsonl` was taken for a glob."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2), "x[/]": torch.zeros(1)}, str(project / "a.safetensors"))
    for message in ("[wip] tune lr", "escape [/] in paths"):
        assert runner.invoke(main, ["model", "commit", "a.safetensors", "-m", message]).exit_code == 0
    log = runner.invoke(main, ["model", "log"])
    assert log.exit_code == 0, log.output
    assert "[wip] tune" in log.output and "escape [/]" in log.output  # (the message column wraps)
    version = _json(runner.invoke(main, ["model", "log", "--json"]))[0]["version_id"]
    shown = runner.invoke(main, ["model", "show", version])
    assert shown.exit_code == 0 and "x[/]" in shown.output
    (project / "odd").mkdir()
    (project / "odd" / "[red]a.jsonl").write_text('{"id": "k2[/]", "text": "a a a"}\n')
    added = runner.invoke(main, ["dataset", "add", "m", "odd/[red]a.jsonl", "--id-field", "id", "--creator", "Team [/]",
                                 "--source", "[red]src"])
    assert added.exit_code == 0, added.output  # the file's own name, not a pattern matching nothing
    info = runner.invoke(main, ["dataset", "show", "m"])
    assert info.exit_code == 0 and "Team [/]" in info.output and "[red]src" in info.output
    assert "[red]a.jsonl" in info.output
    rows = runner.invoke(main, ["sql", "select key, ['a', 'b'] AS l from documents where dataset_id = 'm@1'"])
    assert rows.exit_code == 0 and "k2[/]" in rows.output and "[a, b]" in rows.output


def test_remove_keys_file_takes_each_line_as_it_is(project, runner):
    """`--keys-file` stripped each line: " c " removed the document "c", and kept " c "."""
    (project / "sp.jsonl").write_text('{"id": " c ", "text": "spaced key doc"}\n{"id": "c", "text": "plain key doc"}\n'
                                      '{"id": "d", "text": "another doc"}\n')
    assert runner.invoke(main, ["dataset", "add", "sp", "sp.jsonl", "--id-field", "id"]).exit_code == 0
    removed = runner.invoke(main, ["dataset", "remove", "sp", "--keys-file", "-"], input=" c \n\n")
    assert removed.exit_code == 0, removed.output
    keys = _json(runner.invoke(main, ["sql", "select key from documents where dataset_id = 'sp@2' order by key",
                                      "--json"]))
    assert [r["key"] for r in keys] == ["c", "d"]


def test_near_out_of_range_is_a_usage_error(project, runner):
    """`taint --near` and `retract --near` took any float: 0, 1.5 and NaN were refused by the library
    with exit 4; they are usage errors naming the range, exit 2, as --threshold's are."""
    (project / "doc.txt").write_text("a document to look for")
    for command in (["taint"], ["retract", "--reason", "a request"]):
        for value, said in (("nan", "'nan' is not a number."), ("0", "0.0 is not in the range 0<x<=1."),
                            ("1.5", "1.5 is not in the range 0<x<=1.")):
            result = runner.invoke(main, [*command, "--text", "doc.txt", "--near", value])
            assert result.exit_code == 2 and f"Invalid value for '--near': {said}" in result.output, result.output


def test_keys_that_are_not_utf8_are_an_error_naming_the_line(project, runner):
    """A keys file with a byte that is not UTF-8 (`dataset remove --keys-file`, `run log KEYS`) was a
    traceback and exit status 1, the status of a failed gate (stranger pass 25): now one line
    naming the file and line, exit status 4, and nothing is removed or logged."""
    (project / "k.jsonl").write_text('{"id": "a", "text": "first doc"}\n{"id": "b", "text": "second doc"}\n')
    assert runner.invoke(main, ["dataset", "add", "k", "k.jsonl", "--id-field", "id"]).exit_code == 0
    (project / "keys.txt").write_bytes(b"a\nb\xff\n")
    removed = runner.invoke(main, ["dataset", "remove", "k", "--keys-file", "keys.txt"])
    assert removed.exit_code == 4 and removed.output.strip() == "Error: keys.txt: line 2 is not UTF-8 (byte 3)"
    assert [r["dataset_id"] for r in _json(runner.invoke(main, ["dataset", "list", "--json"]))] == ["k@1"]
    run_id = _json(runner.invoke(main, ["run", "start", "-m", "r", "-d", "k", "--owner", "0", "--json"]))["run_id"]
    logged = runner.invoke(main, ["run", "log", run_id, "--step", "0", "--json"], input=b"a\r\n\xffb\n")
    assert logged.exit_code == 4
    assert json.loads(logged.output) == {"error": "stdin: line 2 is not UTF-8 (byte 3)", "kind": "source"}
    one = runner.invoke(main, ["run", "log", run_id, "--step", "0"], input=b"a\r\n\n")  # CRLF, a blank line
    assert one.exit_code == 0 and one.output == "logged 1 example\n"  # was "1 examples"
    assert _json(runner.invoke(main, ["run", "show", run_id, "--json"]))["n_logged"] == 1


def test_sql_as_a_table_shows_its_first_rows(project, runner):
    """A million rows as a table took 167 s and 1.8 GB (stranger pass 17): the table shows the
    first 1,000 and says how to get them all; csv gives every row."""
    out = runner.invoke(main, ["--ledger", str(project), "sql", "SELECT range AS n FROM range(1500)"])
    assert out.exit_code == 0, out.output
    assert "(1,500 rows): the first 1,000 shown; --format csv or json gives every row" in out.output
    assert "│ 999 " in out.output and "│ 1000 " not in out.output
    out = runner.invoke(main, ["--ledger", str(project), "sql", "SELECT range AS n FROM range(1500)", "--format", "csv"])
    assert out.output.splitlines()[-1] == "1499" and len(out.output.splitlines()) == 1501


def test_sql_json_and_csv_make_python_objects_of_a_batch_at_a_time(tmp_path, monkeypatch):
    """`prov sql "SELECT doc_id, key, signature FROM documents" --format json` over 510,000 documents
    grew to 6 GB and did not finish in 100 s (stranger pass 42): every row was made a Python dict,
    twice more by plain(), then one string. Rows are written a batch at a time, the text unchanged."""
    import contextlib
    import tracemalloc

    import pyarrow as pa

    from provenance.cli import render
    from provenance.plain import dumps

    n = 30_000
    table = pa.table({"doc_id": pa.array(range(n), pa.int64()),
                      "signature": pa.array([[10**12 + i + j for j in range(16)] for i in range(n)])})
    small = table.slice(0, 3)
    for fmt in ("json", "csv"):
        out = tmp_path / f"out.{fmt}"
        with open(out, "w") as f, contextlib.redirect_stdout(f):
            monkeypatch.setattr(render, "SQL_BATCH", 2, raising=False)  # several batches write what one would
            render.arrow(small.schema, small.to_batches(), fmt)
        if fmt == "json":
            assert out.read_text() == dumps(small.to_pylist()) + "\n"
        else:
            assert out.read_text().splitlines()[1:] == [f'{i},"{[10**12 + i + j for j in range(16)]}"' for i in range(3)]
        monkeypatch.undo()
        with open(out, "w") as f, contextlib.redirect_stdout(f):
            tracemalloc.start()
            render.arrow(table.schema, table.to_batches(), fmt)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 30 * 2**20, (fmt, peak)  # all rows at once: 150 MB and more
        assert len(out.read_text().splitlines()) == (n * 21 + 2 if fmt == "json" else n + 1)


def test_sql_reads_its_result_a_batch_at_a_time_and_closes_the_database_before_printing(project, runner,
                                                                                      monkeypatch):
    """`prov sql ... --format csv` of a million documents held the whole result (1.4 GB): the ledger
    gives it as batches of at most 10,000 rows, which csv and json go through a temporary file, so
    the database is closed while the output is written (output piped into a pager waiting for a
    key must not keep training jobs from writing); times without a zone are written with `Z`."""
    import subprocess
    import sys

    from provenance import Ledger
    from provenance.cli import render
    from provenance.errors import InvalidParameterError, ReadOnlyQueryError

    ledger = Ledger.open(project)
    batches = list(ledger.sql_batches("SELECT range AS n FROM range(25000)"))
    assert [b.num_rows for b in batches] == [10_000, 10_000, 5_000]
    assert pa.Table.from_batches(batches).equals(ledger.sql("SELECT range AS n FROM range(25000)"))
    [empty] = ledger.sql_batches("SELECT key, n_bytes FROM documents WHERE false")
    assert (empty.num_rows, empty.schema.names) == (0, ["key", "n_bytes"])
    with pytest.raises(ReadOnlyQueryError, match="only SELECT queries"):
        next(ledger.sql_batches("DELETE FROM datasets"))
    for rows in (0, -1, True, 2.5, "10"):
        with pytest.raises(InvalidParameterError, match=f"rows \\(per batch\\) must be a positive integer, got {rows!r}"):
            next(ledger.sql_batches("SELECT 1", rows=rows))

    writes = []
    printing = render.arrow

    def arrow(schema, batches, fmt):  # another process commits while this one prints
        code = "import sys, torch\nfrom provenance import Ledger\nLedger.open(sys.argv[1]).commit({'w': torch.ones(2)}, message='meanwhile')"
        writes.append(subprocess.run([sys.executable, "-c", code, str(project)], capture_output=True, text=True,
                                     timeout=120).returncode)
        printing(schema, batches, fmt)

    monkeypatch.setattr(render, "arrow", arrow)
    query = "SELECT range AS n, TIMESTAMP '2026-01-02 03:04:05.5' + range * INTERVAL 1 SECOND AS t FROM range(25000)"
    out = runner.invoke(main, ["--ledger", str(project), "sql", query, "--format", "csv"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert (len(lines), lines[0], lines[1], lines[-1]) == (25_001, "n,t", "0,2026-01-02T03:04:05.500000Z",
                                                          "24999,2026-01-02T10:00:44.500000Z")
    rows = _json(runner.invoke(main, ["--ledger", str(project), "sql", query, "--json"]))
    assert (len(rows), rows[12_345]) == (25_000, {"n": 12_345, "t": "2026-01-02T06:29:50.500000Z"})
    assert writes == [0, 0]
    assert [v.message for v in Ledger.open(project).versions()] == ["meanwhile", "meanwhile"]


def test_lineage_names_ten_unrecorded_versions_at_most(project, runner):
    """A chain of 3,000 versions without runs printed their ids on one 42,045-character line."""
    import torch

    from provenance import Ledger

    ledger = Ledger.open(project)
    v = None
    for i in range(12):
        v = ledger.commit({"w": torch.full((2,), float(i))}, parent=v, message=f"step {i}")
    out = runner.invoke(main, ["--ledger", str(project), "lineage", v.version_id])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("no training data recorded"))
    assert line.startswith("no training data recorded for 12 version(s): ") and line.endswith(
        " and 2 more (--json lists them)") and line.count(", ") == 9


def test_token_expiry_out_of_range_is_a_usage_error(project, runner):
    """`prov token create --expires 99999d` (or nan, inf) passed the CLI's check, `> 0`, and the
    ledger refused it: exit 4, and through a server pydantic's words (`body.expires_days: Input
    should be less than or equal to 36500`). It is a usage error naming the range, exit 2, and no
    token is made."""
    from datetime import datetime

    for given in ("99999d", "36501", "nan", "inf", "0"):
        result = runner.invoke(main, ["token", "create", "t", "--scope", "read", "--expires", given])
        assert result.exit_code == 2, (given, result.output)
        assert f"Invalid value for --expires: '{given}': more than 0 and at most 36500 days" in result.output
    result = runner.invoke(main, ["token", "create", "t", "--scope", "read", "--expires", "36500d", "--json"])
    made = _json(result)
    lasts = datetime.fromisoformat(made["expires_at"]) - datetime.fromisoformat(made["created_at"])
    assert round(lasts.total_seconds() / 86_400) == 36_500
    assert [t["name"] for t in _json(runner.invoke(main, ["token", "list", "--json"]))] == ["t"]


def test_sql_keeps_columns_of_one_name(project, runner):
    """`prov sql "SELECT 1 AS a, 2 AS a"` printed the row as `2 |` (table) and `2` under `a,a`
    (csv), and as {"a": 2} with --json: rows went through dicts, which keep one value a name
    (stranger pass 31). Table and CSV show both values; JSON refuses, naming the column."""
    table = runner.invoke(main, ["sql", "SELECT 1 AS a, 2 AS a, 3 AS b"])
    assert table.exit_code == 0, table.output
    assert "│ 1 │ 2 │ 3 │" in table.output
    out = runner.invoke(main, ["sql", "SELECT 1 AS a, 2 AS a, 3 AS b", "--format", "csv"])
    assert out.exit_code == 0 and out.output == "a,a,b\n1,2,3\n"
    for args in (["--json"], ["--format", "json"]):
        refused = runner.invoke(main, ["sql", "SELECT 1 AS a, 2 AS a, 3 AS b", *args])
        assert refused.exit_code == 4
        assert "the query's columns share a name ('a')" in refused.output
    assert _json(runner.invoke(main, ["sql", "SELECT 1 AS a, 2 AS b", "--json"])) == [{"a": 1, "b": 2}]


def test_an_empty_path_is_refused_not_the_current_folder(project, runner):
    """`prov init ''` made a ledger in the current folder, `prov model commit '' -m x` committed
    the checkpoint there, `prov audit dedup --html ''` wrote no page without a word and
    `prov dataset export -o ''` printed to stdout (stranger pass 31): an empty path is a usage
    error naming the option, as `--ledger ''` is."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(project / "model.safetensors"))
    runner.invoke(main, ["dataset", "add", "a", "data/a.jsonl"])
    before = _json(runner.invoke(main, ["sql", "SELECT count(*) AS n FROM versions", "--json"]))
    for args, said in ((["init", ""], "'[PATH]': is empty: give a folder name"),
                       (["model", "commit", "", "-m", "x"], "'PATH': is empty: give a file or folder name"),
                       (["audit", "dedup", "a", "--html", ""], "'--html': is empty: give a file name"),
                       (["dataset", "export", "a", "-o", ""], "'-o' / '--output': is empty: give a file name"),
                       (["backup", ""], "'DESTINATION': is empty: give a folder name")):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"Error: Invalid value for {said}" in result.output, (args, result.output)
    assert _json(runner.invoke(main, ["sql", "SELECT count(*) AS n FROM versions", "--json"])) == before == [{"n": 0}]
    assert _json(runner.invoke(main, ["audit", "list", "--json"])) == []


def test_sql_refuses_json_with_another_format(project, runner):
    """`prov sql Q --format csv --json` printed JSON: --json won silently over the format asked
    for. Two formats are refused; --json with --format json (or no --format) is one."""
    for fmt in ("csv", "table"):
        refused = runner.invoke(main, ["sql", "SELECT 1 AS a", "--format", fmt, "--json"])
        assert refused.exit_code == 2
        assert f"--json and --format {fmt} ask for two formats" in refused.output
    for args in (["--json"], ["--format", "json", "--json"]):
        assert _json(runner.invoke(main, ["sql", "SELECT 1 AS a", *args])) == [{"a": 1}]


def test_control_characters_in_keys_and_messages_reach_the_terminal_visible(project, runner):
    """A document key or a commit message holding terminal controls (`ESC [2J` clears the screen,
    `ESC ]0;...BEL` retitles the window) was printed raw in every table and line (found by
    stranger pass 37): shown as `\\x1b` now, while JSON keeps the value as it is."""
    import torch

    from provenance import Ledger

    key, message = "k\x1b[2J", "base\x1b]0;owned\x07 \x9b31m"
    rows = [{"id": key, "text": "the same words in the same order, again and again and again"},
            {"id": "plain", "text": "the same words in the same order, again and again and again"}]
    (project / "data" / "evil.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ledger = Ledger.open(project)
    ledger.register_dataset("evil", str(project / "data" / "evil.jsonl"), id_field="id")
    ledger.commit({"w": torch.ones(2)}, message=message)
    for args in (["audit", "dedup", "evil", "--no-store"], ["model", "log"], ["model", "show", "HEAD"]):
        if args[-1] == "HEAD":
            args = ["model", "show", _json(runner.invoke(main, ["model", "log", "--json"]))[0]["version_id"]]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert not any(c in result.output for c in "\x1b\x07\x9b"), (args, result.output)
    assert "k\\x1b[2J" in runner.invoke(main, ["audit", "dedup", "evil", "--no-store"]).output
    assert "base\\x1b]0;owned\\x07 \\x9b31m" in runner.invoke(main, ["model", "show", args[-1]]).output
    assert _json(runner.invoke(main, ["model", "log", "--json"]))[0]["message"] == message
    refused = runner.invoke(main, ["tag", "v\x1b[2J", args[-1]])
    assert refused.exit_code != 0 and "\x1b" not in refused.output


def test_an_empty_commit_message_is_a_usage_error(project, runner):
    """`prov model commit PATH -m ""` exited 4 (bad input), as a damaged file does; an empty
    option is a usage error (2), as click's own are, and nothing is committed."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(project / "s.safetensors"))
    for message in ("", "  \n"):
        result = runner.invoke(main, ["model", "commit", "s.safetensors", "-m", message])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '-m' / '--message': a commit needs a message: say what changed" in result.output
    assert _json(runner.invoke(main, ["model", "log", "--json"])) == []


def test_a_newline_or_tab_in_a_parameter_or_shard_name_stays_on_its_row(project, runner):
    """A parameter or file name holding a newline was drawn over two table lines, the second
    looking like a row of its own; in a table's rows a newline and a tab are shown as ``\\n``
    and ``\\t`` (a commit message too), while JSON keeps the text as it is."""
    import torch

    from provenance import Ledger

    ledger = Ledger.open(project)
    shard = project / "data" / "two\nlines.jsonl"
    shard.write_text(json.dumps({"id": "x", "text": "a document in an oddly named file"}) + "\n", encoding="utf-8")
    ledger.register_dataset("odd", str(shard), id_field="id")
    v = ledger.commit({"layer\n0.w": torch.ones(2), "tab\tb": torch.zeros(1)}, message="two lines\nin a message")
    shown = runner.invoke(main, ["model", "show", v.version_id])
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if "│" in line]
    assert any("layer\\n0.w" in line for line in rows) and any("tab\\tb" in line for line in rows), shown.output
    assert not any(line.split("│")[1].strip() == "0.w" for line in rows)
    assert "lines\\nin" in runner.invoke(main, ["model", "log"]).output  # wrapped at its spaces
    listed = runner.invoke(main, ["dataset", "show", "odd"])
    assert listed.exit_code == 0 and "two\\nlines.jsonl" in listed.output, listed.output
    assert _json(runner.invoke(main, ["dataset", "show", "odd", "--json"]))["shards"][0]["name"] == "two\nlines.jsonl"


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_stdout_refuses_is_an_error_naming_stdout(project):
    """`prov ... > /dev/full` said only "No space left on device", then Python's "Exception
    ignored ... OSError" at exit, with status 120 (found by stranger pass 37)."""
    import subprocess
    import sys

    said = ("cannot write the output to stdout: No space left on device (what the command recorded in the ledger "
            "is kept)")
    for extra in (["--json"], []):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "provenance.cli", "dataset", "list", *extra], stdout=full,
                                  stderr=subprocess.PIPE, text=True, cwd=project, timeout=120)
        assert done.returncode == 4
        assert done.stderr == (json.dumps({"error": said, "kind": "os"}) + "\n" if extra else f"Error: {said}\n")


def test_a_resource_warning_is_not_relayed_into_a_command_s_output(project, runner, monkeypatch):
    """The CLI relays library warnings as `warning: ...` lines; Python's ResourceWarning for a file
    the garbage collector closed (left by an earlier ledger of the same process) landed in a
    command's `--json` output, which then did not parse (seen in test_runs under a full run)."""
    import warnings

    from provenance.api import Ledger

    datasets = Ledger.datasets

    def leaky(self, *args, **kwargs):
        warnings.warn("unclosed file <_io.FileIO name=12 mode='rb' closefd=True>", ResourceWarning, stacklevel=1)
        return datasets(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "datasets", leaky)
    result = runner.invoke(main, ["dataset", "list", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []


def test_text_and_keys_files_with_a_byte_order_mark(project, runner):
    """A file saved with a UTF-8 byte order mark: registration drops it, but `taint --text` kept it
    (so the file matched no registered copy of itself: "0 documents (no dataset holds it)") and
    `dataset remove --keys-file` took it as part of the first key ("has no document '\\ufeffa'")."""
    (project / "bom").mkdir()
    (project / "bom" / "note.txt").write_bytes("\ufeffA note saved by an editor that writes a BOM.\r\n".encode())
    assert runner.invoke(main, ["dataset", "add", "notes", "bom"]).exit_code == 0
    found = _json(runner.invoke(main, ["taint", "--text", "bom/note.txt", "--json"]))
    assert [(m["dataset_id"], m["key"]) for m in found["matches"]] == [("notes@1", "note.txt:0")]
    assert found["target"] == "text (46 characters)"  # the text and its CRLF, not the mark
    (project / "k.jsonl").write_text('{"id": "a", "text": "first doc"}\n{"id": "b", "text": "second doc"}\n')
    assert runner.invoke(main, ["dataset", "add", "k", "k.jsonl", "--id-field", "id"]).exit_code == 0
    removed = runner.invoke(main, ["dataset", "remove", "k", "--keys-file", "-"], input="\ufeffa\r\n".encode())
    assert removed.exit_code == 0, removed.output
    assert [r["key"] for r in _json(runner.invoke(main, ["sql", "select key from documents where dataset_id = 'k@2'",
                                                         "--json"]))] == ["b"]


def test_taint_text_without_words_is_refused(project, runner):
    """A text of only spaces and punctuation has the exact hash of the empty text: `taint --text`
    listed every registered document without words as a copy of it (and `retract --text` would
    retract them all); it is refused like an empty text."""
    (project / "e.jsonl").write_text('{"id": "a", "text": ""}\n{"id": "b", "text": " -- "}\n{"id": "c", "text": "words"}\n')
    assert runner.invoke(main, ["dataset", "add", "e", "e.jsonl", "--id-field", "id"]).exit_code == 0
    (project / "dots.txt").write_text("  ...  \n")
    for command in (["taint"], ["retract", "--reason", "a request"]):
        result = runner.invoke(main, [*command, "--text", "dots.txt"])
        assert result.exit_code == 4, result.output
        assert result.output.strip() == "Error: the text to look for has no words (only spaces and punctuation: '  ...  \\n')"
    assert _json(runner.invoke(main, ["retractions", "--json"])) == []


@pytest.mark.parametrize("text", ["a\\[", "x\\[b]", "c:\\dir\\", "c:\\dir\\\\", "[red]no", "\\\\[bold]", "[", "a]b[/]"])
def test_text_from_the_ledger_prints_as_written(text, capsys):
    """Reasons, problems and targets went through Rich markup with `rich.markup.escape`, which
    leaves a `[` that does not look like a tag: the backslash of a reason ending `\\[` was taken as
    its escape and dropped, and of two trailing backslashes one was lost."""
    from provenance.cli import render

    render.say(("✗ " + text, "red"), f": {text}", " after")
    assert capsys.readouterr().out == f"✗ {text}: {text} after\n"


def test_json_times_are_rfc3339_utc_in_every_command(project, runner):
    """`prov audit list --json`, `audit delete --json`, `retract --json` and `retractions --json`
    printed the ledger's times as naive ISO text (`2026-12-07T16:27:02.479260`), while `model log`,
    `tag list`, `run list` and `audit show` print the same kind of time with `Z`; `audit show` of an
    audit whose pairs were deleted printed `pairs_deleted_at` with a space (`2026-12-07 16:40:41`)."""
    import torch

    from provenance import Ledger

    assert runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"]).exit_code == 0
    with Ledger.open(project).start_run(datasets=["web"], message="train") as run:  # a version the data shaped
        run.commit({"w": torch.zeros(2, 2)})
    report = _json(runner.invoke(main, ["audit", "dedup", "web", "--json"]))
    created = report["created_at"]
    assert created.endswith("Z")
    listed = _json(runner.invoke(main, ["audit", "list", "--json"]))
    assert [(a["audit_id"], a["created_at"]) for a in listed] == [(report["audit_id"], created)]
    deleted = _json(runner.invoke(main, ["audit", "delete", report["audit_id"], "--pairs-only", "--json"]))
    assert [a["created_at"] for a in deleted["deleted"]] == [created]
    shown = _json(runner.invoke(main, ["audit", "show", report["audit_id"], "--json"]))
    assert shown["created_at"] == created and shown["pairs_deleted_at"].endswith("Z")
    assert "T" in shown["pairs_deleted_at"] and " " not in shown["pairs_deleted_at"]
    assert _json(runner.invoke(main, ["audit", "list", "--json"]))[0]["pairs_deleted_at"] == shown["pairs_deleted_at"]
    record = _json(runner.invoke(main, ["retract", "web", "--key", "d-0000001", "--reason", "a request", "--json"]))
    assert record["created_at"].endswith("Z")
    assert [r["created_at"] for r in _json(runner.invoke(main, ["retractions", "--json"]))] == [record["created_at"]]
    one = _json(runner.invoke(main, ["retractions", record["retraction_id"], "--json"]))
    assert one["created_at"] == record["created_at"]
    proof = runner.invoke(main, ["audit", "retraction", record["retraction_id"], "--json"])  # nothing applied: fails
    assert proof.exit_code == 1
    proof = json.loads(proof.stdout)  # its time was naive text in the report, and a moment later in its row
    stored = _json(runner.invoke(main, ["sql", "SELECT strftime(created_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS t "
                                                "FROM retraction_audits", "--json"]))
    assert proof["created_at"].endswith("Z") and stored == [{"t": proof["created_at"]}]


def test_taint_and_retract_without_a_target_are_usage_errors(project, runner):
    """`prov taint` and `prov retract --reason R` with nothing to look for exited 4, the status of
    bad input, with kind `invalid_parameter` and no usage line, where a missing argument is a usage
    error (exit 2, docs/cli.md), as `prov retract` without --reason and `dataset remove NAME` without
    keys are; nothing is recorded."""
    assert runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"]).exit_code == 0
    for command, said in ((["taint"], "give what to look for"), (["retract", "--reason", "a request"],
                                                                 "give what to retract")):
        result = runner.invoke(main, command)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"Usage: main {command[0]} [OPTIONS]")
        assert result.output.endswith(f"Error: {said}: DATASET (with --shard or --key for a part of it), or --text "
                                      "FILE\n")
        result = runner.invoke(main, [*command, "--near", "0.5", "--json"])
        assert result.exit_code == 2 and json.loads(result.output) == {
            "error": f"{said}: DATASET (with --shard or --key for a part of it), or --text FILE", "kind": "usage"}
    assert _json(runner.invoke(main, ["retractions", "--json"])) == []


def test_tag_set_json_is_a_tag_list_row(project, runner):
    """`prov tag set --json` printed `{"tag", "version_id", "moved_from"}` while `prov tag list --json`
    lists each tag as `{"name", "version_id", "created_at", "message"}`: a program reading `.name`
    of what it had just set got nothing. It prints the row `tag list` has for it, and where it moved
    from."""
    import torch

    from provenance import Ledger

    ledger = Ledger.open(project)
    a = ledger.commit({"w": torch.zeros(2)}, message="first")
    b = ledger.commit({"w": torch.ones(2)}, message="second", parent=a)
    made = _json(runner.invoke(main, ["tag", "set", "release", a.version_id, "--json"]))
    listed = _json(runner.invoke(main, ["tag", "list", "--json"]))
    assert made == {**listed[0], "moved_from": None}
    assert (made["name"], made["version_id"], made["message"]) == ("release", a.version_id, "first")
    moved = _json(runner.invoke(main, ["tag", "release", b.version_id[:8], "--json"]))
    assert moved == {**_json(runner.invoke(main, ["tag", "list", "--json"]))[0], "moved_from": a.version_id}
    assert (moved["version_id"], moved["message"]) == (b.version_id, "second")
    assert runner.invoke(main, ["tag", "release", a.version_id]).output == (
        f"release -> {a.version_id} (moved from {b.version_id[:12]})\n")


def test_gate_names_each_input_and_retraction_once(project, runner):
    """The pre-merge gate's note of retracted data named an input once per run of its lineage that
    trained on the data (`b: retraction R; b: retraction R`), and wrapped at the console's width, so
    that a CI log's grep for the retraction missed it; its ✗ lines are one line each already."""
    import torch

    from provenance import Ledger

    assert runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"]).exit_code == 0
    ledger = Ledger.open(project)
    with ledger.start_run(datasets=["web"], message="base") as run:
        base = run.commit({"w": torch.zeros(4)})
    with ledger.start_run(base=base, datasets=["web"], message="again") as run:  # a second run on the same data
        a = run.commit({"w": torch.ones(4)})
    b = ledger.commit({"w": torch.full((4,), 2.0)}, message="b", parent=base)
    rid = _json(runner.invoke(main, ["retract", "web", "--key", "d-0000001", "--reason", "a request", "--json"]))[
        "retraction_id"]
    result = runner.invoke(main, ["audit", "merge", a.version_id, b.version_id, "--no-store", "--max-contamination",
                                  "none"])
    assert result.exit_code == 0, result.output
    [note] = [line for line in result.output.splitlines() if line.startswith("  ! ")]
    assert note == (f"  ! retracted data in the lineage of 2 input(s) (--deny-retracted fails on it): "
                    f"{a.version_id[:12]}: retraction {rid}; {b.version_id[:12]}: retraction {rid}")


def test_run_start_epochs_out_of_range_are_usage_errors(project, runner):
    """`prov run start -d web:-1` (or `:nan`, `:inf`) was refused by the library with exit status 4
    and a message naming no option, while `-d web:abc` and a dataset given twice are usage errors
    naming --dataset (exit 2); `-d web:-0` was stored and printed as -0.0 epochs. No run is started."""
    assert runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--id-field", "id"]).exit_code == 0
    for spec in ("web:-1", "web:nan", "web:inf", "web:1e400", "web@1:-0.5"):
        result = runner.invoke(main, ["run", "start", "-m", "x", "-d", spec, "--owner", "0"])
        assert result.exit_code == 2, result.output
        assert result.output.endswith(f"Error: Invalid value for --dataset: '{spec}': EPOCHS must be a finite number "
                                      ">= 0\n")
    assert _json(runner.invoke(main, ["run", "list", "--json"])) == []
    run = _json(runner.invoke(main, ["run", "start", "-m", "x", "-d", "web:-0", "--owner", "0", "--json"]))
    assert json.dumps(run["datasets"]) == '{"web@1": 0.0}'
def test_sql_csv_keeps_escape_sequences_in_values(tmp_path):
    """`prov sql ... --format csv > keys.txt` dropped an ANSI sequence from a value (a file named
    `e\\x1b[31mred.jsonl` gave the key `ered.jsonl:0`: click.echo strips them when not writing to a
    terminal), so the keys read back for `prov dataset remove --keys-file` were not the ledger's."""
    import contextlib

    import pyarrow as pa

    from provenance.cli import render

    keys = ["e\x1b[31mred.jsonl:0", "plain.jsonl:0"]
    out = tmp_path / "keys.csv"
    with open(out, "w") as f, contextlib.redirect_stdout(f):
        table = pa.table({"key": keys})
        render.arrow(table.schema, table.to_batches(), "csv")
    assert out.read_text() == "key\n" + "".join(f"{k}\n" for k in keys)


def test_tag_delete_removes_the_name_and_keeps_the_version(project, runner):
    import torch

    from provenance import Ledger

    v = Ledger.open(project).commit({"w": torch.zeros(2)}, message="first")
    runner.invoke(main, ["tag", "ft", v.version_id])
    result = runner.invoke(main, ["tag", "delete", "ft"])
    assert (result.exit_code, result.output) == (0, f"deleted tag ft (it named {v.version_id[:12]}; the version is kept)\n")
    assert _json(runner.invoke(main, ["tag", "list", "--json"])) == []
    assert [r["version_id"] for r in _json(runner.invoke(main, ["model", "log", "--json"]))] == [v.version_id]
    missing = runner.invoke(main, ["tag", "delete", "ft"])
    assert (missing.exit_code, missing.output) == (3, "Error: no tag 'ft' (the ledger has no tags)\n")
    two = runner.invoke(main, ["tag", "delete", "ft", v.version_id])  # meant `tag set delete VERSION`?
    assert two.exit_code == 2 and "a tag named 'delete' is set with `prov tag set delete VERSION`" in two.output
    runner.invoke(main, ["tag", "set", "delete", v.version_id])
    assert _json(runner.invoke(main, ["tag", "delete", "delete", "--json"]))["name"] == "delete"


def test_tag_arguments_swapped_or_a_command_mistyped_are_named(project, runner):
    """`prov tag VERSION NAME` said "tag '...' looks like a version id; pick another name", and
    `prov tag lst` said "Missing argument 'VERSION'" under `prov tag set`: both usage errors now
    say what was meant."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(project / "a.safetensors"))
    root = _json(runner.invoke(main, ["model", "commit", "a.safetensors", "-m", "root", "--json"]))["version_id"]
    swapped = runner.invoke(main, ["tag", root[:12], "release"])
    assert swapped.exit_code == 2
    assert f"'{root[:12]}' looks like a version id and 'release' names no version: the tag's name comes first " \
           f"(did you mean `prov tag release {root[:12]}`?)" in swapped.output
    assert _json(runner.invoke(main, ["tag", "list", "--json"])) == []  # nothing tagged
    typo = runner.invoke(main, ["tag", "lst"])
    assert typo.exit_code == 2 and "No such command 'lst'. Did you mean 'list'?" in typo.output
    assert runner.invoke(main, ["tag", "release", root[:12]]).output.strip() == f"release -> {root}"
    dead = runner.invoke(main, ["tag", "dead", "release"])  # a real version: the name is refused as before
    assert dead.exit_code == 4 and "tag 'dead' looks like a version id (4 to 32 hex digits); pick another name" in dead.output
    alone = runner.invoke(main, ["tag", "release"])  # not close to a command: a tag without its version
    assert alone.exit_code == 2 and "Missing argument 'VERSION'" in alone.output


def test_an_interrupted_demo_names_what_it_kept_and_how_to_go_on(tmp_path, runner, monkeypatch):
    """Ctrl-C while the demo trained said only `Aborted!`, though its datasets were registered
    (docs/cli.md: one that had landed is kept, and `Aborted!` names it): the demo opened its
    ledger itself, out of the interrupt's sight."""
    import provenance.demo_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(provenance.demo_model, "train_story", interrupted)
    result = runner.invoke(main, ["demo", str(tmp_path / "d"), "--docs", "20"])
    assert result.exit_code == 130
    assert "Aborted! What the ledger recorded before the interrupt is kept: dataset web-crawl@1; dataset " \
           f"forum-posts@1; dataset qa-eval@1; run `prov demo {tmp_path / 'd'}` again to go on where it stopped" \
           in result.output
    monkeypatch.undo()
    again = _json(runner.invoke(main, ["demo", str(tmp_path / "d"), "--docs", "20", "--json"]))
    assert [r["created"] for r in again["registrations"]] == [False] * 3 and len(again["models"]) == 4


def test_an_interrupted_served_demo_says_where_its_server_wrote(tmp_path, runner, monkeypatch):
    """With --server the writes are the server subprocess's, which no ledger opened by the command
    committed: Ctrl-C said only `Aborted!`. (Interrupting the real thing was tried by hand: the
    server stops, and the demo run again goes on: "unchanged: ... nothing registered".)"""
    import provenance.demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(provenance.demo, "run_served_demo", interrupted)
    result = runner.invoke(main, ["demo", str(tmp_path / "d"), "--server"])
    assert result.exit_code == 130
    assert result.output.strip() == (
        f"Aborted! What the ledger recorded before the interrupt is kept: what the demo's server wrote, in "
        f"{tmp_path / 'd' / '.prov'}; run `prov demo {tmp_path / 'd'} --server` again to go on where it stopped")


def test_the_option_and_name_errors_concepts_quotes_are_what_prov_prints(project, runner):
    """docs/concepts.md said `prov` prints `invalid parameter: lsh_threshold: Input should be less
    than 1` for an out-of-range threshold (click refuses the option first), and quoted the refused
    dataset name's message without its end."""
    from pathlib import Path

    concepts = (Path(__file__).resolve().parent.parent / "docs" / "concepts.md").read_text(encoding="utf-8")
    concepts = " ".join(concepts.split())  # as rendered: the page's lines are wrapped
    threshold = runner.invoke(main, ["dataset", "add", "x", "data/a.jsonl", "--threshold", "1"])
    assert threshold.exit_code == 2
    said = threshold.output.strip().splitlines()[-1].removeprefix("Error: ")
    assert said == "Invalid value for '--threshold': 1.0 is not in the range 0<x<1."
    assert f"`{said}`, exit status 2" in concepts and "invalid parameter: lsh_threshold" not in concepts
    name = runner.invoke(main, ["dataset", "add", "bad name!", "data/a.jsonl"])
    assert name.exit_code == 4
    said = name.output.strip().removeprefix("Error: ")
    assert said.startswith("dataset name 'bad name!' must start") and f"| invalid dataset name | `{said}` |" in concepts


def test_init_below_another_ledger_warns_that_it_takes_its_place(project, runner):
    """`prov init` in a subfolder of a project made a second ledger without a word, and every
    command run there from then on used it instead of the project's."""
    (project / "sub" / "deeper").mkdir(parents=True)
    result = runner.invoke(main, ["init", "sub"])
    assert result.exit_code == 0, result.output
    assert f"warning: {project / 'sub'} is inside the project of the ledger {project / '.prov'}: commands run in it " \
           f"or below now use the new ledger, not that one (--ledger {project} names that one)" in result.output
    assert (project / "sub" / ".prov" / "ledger.duckdb").is_file()
    beside = runner.invoke(main, ["init", str(project.parent / f"{project.name}-beside")])  # no ledger above it
    assert beside.exit_code == 0 and "warning" not in beside.output


def test_dataset_add_with_name_and_source_swapped_says_so(project, runner):
    """`prov dataset add data/a.jsonl web` said only `web: no such file or folder`: NAME is a file
    and the source is nothing, so the arguments were swapped; nothing is registered."""
    swapped = runner.invoke(main, ["dataset", "add", "data/a.jsonl", "web", "--id-field", "id"])
    assert swapped.exit_code == 2
    assert "web: no such file or folder, and NAME data/a.jsonl is a file: the dataset's name comes first " \
           "(did you mean `prov dataset add web data/a.jsonl`?)" in swapped.output
    assert _json(runner.invoke(main, ["dataset", "list", "--json"])) == []
    missing = runner.invoke(main, ["dataset", "add", "web", "nope.jsonl"])  # NAME is no file: as before
    assert missing.exit_code == 4 and "nope.jsonl: no such file or folder" in missing.output
    assert _json(runner.invoke(main, ["dataset", "add", "web", "data/a.jsonl", "--json"]))["created"] is True


def test_backup_shows_its_stages_and_an_interrupted_check_names_the_whole_copy(project, runner, monkeypatch):
    """`prov backup` of a 1M-document ledger ran 18 s with no progress bar; and a Ctrl-C while it
    checked the copy said only `Aborted!`, though the copy was whole in DESTINATION/.prov (a second
    backup into it was refused: the folder was not empty)."""
    import provenance.verify
    from provenance import Ledger

    ledger = Ledger.open(project)
    ledger.commit({"w": __import__("torch").ones(4)}, message="base")
    seen = []

    class Recorder:
        def start(self, description, total):
            seen.append(description)

        def advance(self, amount):
            pass

    assert ledger.backup(project.parent / "bk1", progress=Recorder())["verified"] is True
    assert seen[:2] == ["backup: database", "backup: objects"] and seen[-1] == "verify: objects"
    del ledger

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(provenance.verify, "verify", interrupted)
    dest = project.parent / "bk2"
    result = runner.invoke(main, ["backup", str(dest)])
    assert result.exit_code == 130 and (dest / ".prov").is_dir()
    assert (f"Aborted! What the ledger recorded before the interrupt is kept: the copy {dest / '.prov'}, whole; its "
            f"check was stopped; check it with `prov --ledger {dest} verify --objects`") in result.output
    import provenance.backup

    monkeypatch.setattr(provenance.backup, "_copy_objects", interrupted)  # stopped before the copy was whole
    result = runner.invoke(main, ["backup", str(project.parent / "bk3")])
    assert result.exit_code == 130 and "kept" not in result.output and not (project.parent / "bk3").exists()
