"""Every ``prov`` command that works on a ledger works with ``--ledger http://...`` against a live
server: a whole story told through the CLI, remotely, and checked against the server's ledger."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from provenance.cli.main import main
from tests import serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("cli-remote")) as srv:
        yield srv


def test_the_cli_through_a_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PROV_TOKEN", server.token)
    runner = CliRunner()

    def prov(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, ["--ledger", server.url, *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.output)
        return result.stdout

    def js(*args: str, code: int = 0):
        return json.loads(prov(*args, "--json", code=code))

    docs = [{"id": f"d{i}", "text": f"document {i} " + "word " * (i % 7) + f"tail {i % 5}"} for i in range(40)]
    docs += [{"id": "dup", "text": docs[3]["text"]}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "e.jsonl").write_text(json.dumps({"id": "q", "text": docs[5]["text"]}) + "\n")
    reg = js("dataset", "add", "corpus", str(tmp_path / "c.jsonl"), "--id-field", "id", "--license", "MIT")
    assert reg["created"] and reg["dataset"]["n_documents"] == 41
    js("dataset", "add", "evals", str(tmp_path / "e.jsonl"), "--id-field", "id", "--role", "eval")
    assert [d["dataset_id"] for d in js("dataset", "list")] == ["corpus@1", "evals@1"]
    assert js("dataset", "show", "corpus")["shards"][0]["n_documents"] == 41
    prov("dataset", "export", "corpus", "-o", str(tmp_path / "corpus.json"))
    assert json.loads((tmp_path / "corpus.json").read_text())["name"] == "corpus"

    save_file({"w": torch.zeros(6, 4)}, str(tmp_path / "base.safetensors"))
    base = js("model", "commit", str(tmp_path / "base.safetensors"), "-m", "base")
    prov("tag", "base", base["version_id"])
    heads = []
    for i, part in enumerate((docs[:20], docs[20:])):
        run = prov("run", "start", "-m", f"part {i}", "--base", "base", "-d", "corpus").strip()
        (tmp_path / "keys").write_text("".join(d["id"] + "\n" for d in part))
        assert js("run", "log", run, str(tmp_path / "keys"), "--step", "0")["logged"] == len(part)
        save_file({"w": torch.full((6, 4), float(i + 1))}, str(tmp_path / f"v{i}.safetensors"))
        heads.append(js("model", "commit", str(tmp_path / f"v{i}.safetensors"), "-m", f"part {i}", "--run", run))
    assert js("run", "show", run)["shards"][0]["examples"] == 21
    assert len(js("run", "list")) == 2
    assert [v["version_id"] for v in js("model", "log")][-1] == base["version_id"]
    assert len(js("model", "log", heads[0]["version_id"])) == 2
    assert js("model", "show", "base")["manifest"][0]["name"] == "w"
    assert js("model", "diff", "base", heads[0]["version_id"])[0]["name"] == "w"
    assert js("model", "diff", heads[0]["version_id"], heads[1]["version_id"], "--data")["datasets_in_both"] == ["corpus@1"]
    prov("model", "checkout", heads[1]["version_id"], "-o", str(tmp_path / "out.safetensors"))
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["w"], torch.full((6, 4), 2.0))

    gate = js("audit", "merge", heads[0]["version_id"], heads[1]["version_id"], code=1)
    assert gate["passed"] is False and gate["contamination"]["contaminated_eval_documents"] == 1
    unfit = runner.invoke(main, ["--ledger", server.url, "merge", heads[0]["version_id"], heads[1]["version_id"],
                                 "--gate", "-m", "refused"])  # fisher, with no Fishers stored: refused before the gate
    assert unfit.exit_code == 4 and "have no stored Fisher for every parameter" in unfit.output
    refused = runner.invoke(main, ["--ledger", server.url, "merge", heads[0]["version_id"], heads[1]["version_id"],
                                   "--method", "average", "--gate", "-m", "refused"])
    assert refused.exit_code == 1 and "nothing merged" in refused.output
    merged = js("merge", heads[0]["version_id"], heads[1]["version_id"], "--method", "average", "-m", "merged",
                "--audit", gate["audit_id"])
    assert merged["receipt"]["audit_id"] == gate["audit_id"]
    assert merged["cited_gate"] == {"audit_id": gate["audit_id"], "passed": False, "alerts": gate["alerts"]}
    lin = js("lineage", merged["version_id"])
    assert lin["datasets"][0]["dataset_id"] == "corpus@1" and lin["datasets"][0]["examples"] == 41
    assert "graph BT" in prov("lineage", merged["version_id"], "--format", "mermaid")
    assert len(js("taint", "corpus", "--key", "d3")["versions"]) == 2
    dedup = js("audit", "dedup", "corpus", "--pairs", str(tmp_path / "pairs.parquet"))
    assert dedup["summary"]["exact_duplicate_pairs"] == 1 and dedup["pairs_file"] == str(tmp_path / "pairs.parquet")
    import pyarrow.parquet as pq

    pairs = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    assert len(pairs) == dedup["summary"]["pairs"] and {"d3", "dup"} in [{p["a"], p["b"]} for p in pairs]
    js("audit", "dedup", "corpus", "--pairs", str(tmp_path / "pairs.csv"))  # CSV by its name, as a local ledger writes
    import pyarrow.csv as pacsv

    assert pacsv.read_csv(tmp_path / "pairs.csv").select(["a", "b", "jaccard"]).to_pylist() == [
        {k: p[k] for k in ("a", "b", "jaccard")} for p in pairs]
    assert js("audit", "show", dedup["audit_id"])["audit_id"] == dedup["audit_id"]
    assert {a["kind"] for a in js("audit", "list")} == {"dedup", "merge"}
    (tmp_path / "samples.txt").write_text(docs[7]["text"] + "\n")
    memo = js("audit", "memorization", merged["version_id"], "--samples", str(tmp_path / "samples.txt"), "--span", "3")
    assert memo["samples"][0]["matches"][0]["key"] == "d7"
    cited = runner.invoke(main, ["--ledger", server.url, "audit", "delete", gate["audit_id"][:8]])
    assert cited.exit_code == 4 and f"cited by the merge receipt of version {merged['version_id'][:12]}" in cited.output
    gone = js("audit", "delete", gate["audit_id"][:8], "--pairs-only")
    assert [d["audit_id"] for d in gone["deleted"]] == [gate["audit_id"]] and gone["pairs_only"]
    assert {a["audit_id"]: a for a in js("audit", "list")}[gate["audit_id"]]["pairs_deleted_at"] is not None
    assert js("audit", "delete", memo["audit_id"])["deleted"][0]["audit_id"] == memo["audit_id"]
    assert js("sql", "SELECT count(*) AS n FROM versions") == [{"n": 4}]
    assert js("verify")["ok"] is True
    assert js("gc")["unreferenced"] == []
    assert js("tag", "list")[0]["name"] == "base"
    reader = js("token", "create", "reader", "--scope", "read")
    assert reader["token"].startswith("prov_") and {t["name"] for t in js("token", "list")} == {"admin", "reader"}
    assert js("token", "revoke", "reader")["revoked_at"] is not None
    twice = runner.invoke(main, ["--ledger", server.url, "token", "revoke", "reader"])  # it said "revoked reader" again
    assert twice.exit_code == 0 and "token reader was already revoked (" in twice.output, twice.output
    assert "UTC); nothing changed" in twice.output
    again = runner.invoke(main, ["--ledger", server.url, "token", "create", "reader", "--scope", "read"])
    assert again.exit_code == 4 and "a token named 'reader' exists (revoked); token names are not reused" in again.output
    last = runner.invoke(main, ["--ledger", server.url, "token", "revoke", "admin"])
    assert last.exit_code == 4 and "is the last live admin token" in last.output
    assert {t["name"]: t["revoked_at"] for t in js("token", "list")}["admin"] is None
    unfinished = prov("run", "start", "-m", "abandoned", "-d", "corpus").strip()
    assert js("run", "finish", unfinished, "--failed", "--error", "gave up")["status"] == "failed"
    local = server.root / ".prov"
    assert local.exists()  # everything above went through HTTP; the server's access log has it all
    writes = server.ledger().sql("SELECT count(*) AS n FROM access_log WHERE status < 400").to_pylist()[0]["n"]
    assert writes >= 20


def test_the_demo_through_a_server(tmp_path):
    """`prov demo --server`: the embedded demo's story, told through a real server subprocess."""
    result = CliRunner().invoke(main, ["demo", "--server", str(tmp_path / "d"), "--docs", "400", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["server"]["url"].startswith("http://127.0.0.1:") and report["server"]["writes"] >= 20
    assert report["gate"]["passed"] is False and report["lineage"]["datasets"]
    assert {m["tag"] for m in report["models"]} >= {"demo-base", "demo-fish", "demo-lora", "demo-merge"}
    from provenance import Ledger

    local = Ledger.open(tmp_path / "d")  # the server stopped: the folder is a plain ledger again
    assert local.version("demo-merge").parents and {t.name for t in local.tokens()} == {"demo-admin", "demo-trainer"}


def test_a_client_says_what_a_local_ledger_says(server, tmp_path):
    """Warnings made on the server stayed in its log: a licence id not on the SPDX list, and a
    Croissant export of a file whose invalid line was skipped, warned locally only."""
    from provenance import Ledger
    from provenance.croissant import ReadsOtherwiseWarning
    from provenance.errors import InvalidParameterError
    from provenance.records import UnknownLicenseWarning

    ledger = Ledger.open(server.url, token=server.token)
    (tmp_path / "s.jsonl").write_bytes(b'{"text": "a first line of words"}\n{"text": "half \\ud800"}\n'
                                       b'{"text": "a third line of words"}\n')
    with pytest.warns(UnknownLicenseWarning, match="license 'Acme-Scrape-1.0': not on the SPDX list"):
        reg = ledger.register_dataset("scraped", tmp_path / "s.jsonl", license="Acme-Scrape-1.0", on_invalid="skip")
    assert (reg.dataset.license.spdx, reg.dataset.license.non_commercial) == ("Acme-Scrape-1.0", None)
    assert (reg.dataset.n_documents, reg.dataset.n_invalid_skipped) == (2, 1)
    with pytest.raises(InvalidParameterError, match=r"license 'MIT AND \(' is not an SPDX identifier"):
        ledger.register_dataset("broken", tmp_path / "s.jsonl", license="MIT AND (", on_invalid="skip")
    assert [d.name for d in ledger.datasets()].count("broken") == 0
    with pytest.warns(ReadsOtherwiseWarning, match="scraped@1: its files hold 1 record that registration skipped"):
        document = ledger.export_croissant("scraped")
    assert document["name"] == "scraped"


def test_a_url_that_is_not_a_ledger_server_is_one_line_naming_it(tmp_path, monkeypatch):
    """``--ledger`` pointed at another web server (or a wrong path on a proxy) printed that
    server's whole HTML error page as the error, without the URL it came from. It is one line
    naming the URL, saying it is not a ledger server's answer, exit status 4."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_address[1]}"
    monkeypatch.setenv("PROV_TOKEN", "prov_whatever")
    try:
        result = CliRunner().invoke(main, ["--ledger", url + "/prefix", "dataset", "list"])
    finally:
        other.shutdown()
        other.server_close()
    assert result.exit_code == 4, result.output
    assert result.output.startswith(f"Error: GET {url}/prefix/api/v1/datasets: HTTP 404, not a provenance ledger "
                                    "server's answer (is the URL the server's address?): <!DOCTYPE HTML> <html")
    assert result.output.count("\n") == 1


def test_a_bad_token_name_through_a_server_is_refused_in_the_ledger_s_words(server, tmp_path, monkeypatch):
    """A token name the ledger refuses was refused through a server in the request model's words
    (`invalid request: body.name: String should match pattern '^[A-Za-z0-9]...'`). The client
    checks it as the ledger does and says what a local ledger says, before anything is sent."""
    from provenance import Ledger

    monkeypatch.setenv("PROV_TOKEN", server.token)
    Ledger.init(tmp_path / "local")
    for name in ("bad name!", ".dot", "x" * 129):
        remote = CliRunner().invoke(main, ["--ledger", server.url, "token", "create", name, "--scope", "read"])
        local = CliRunner().invoke(main, ["--ledger", str(tmp_path / "local"), "token", "create", name, "--scope", "read"])
        assert (remote.exit_code, remote.output) == (local.exit_code, local.output) == (4, (
            f"Error: token name {name!r} must start with an ASCII letter or digit and hold only ASCII letters, "
            "digits, '.', '_', '-' (at most 128 characters)\n"))


def test_a_call_without_a_token_says_where_the_token_goes(server, monkeypatch):
    """`prov --ledger http://... dataset list` without PROV_TOKEN said `Error: this server needs a
    token: Authorization: Bearer TOKEN`, an HTTP header where a CLI user sets a variable. It says
    where prov and Python take the token from, and how one is made."""
    monkeypatch.delenv("PROV_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["--ledger", server.url, "dataset", "list"])
    assert result.exit_code == 4, result.output
    assert result.output == (f"Error: GET {server.url}/api/v1/datasets: this server needs a token (Authorization: "
                             "Bearer TOKEN): prov reads it from "
                             "PROV_TOKEN, Python from Ledger.open(URL, token=...); the server's admin makes one with "
                             "`prov token create NAME --scope read`\n")


def test_a_client_does_not_write_into_a_ledger_folder_on_its_machine(server, tmp_path, monkeypatch):
    """A local ledger refuses to write an export inside its own folder, but a client of a server on
    the same machine did not know the server's folder: `prov --ledger URL export openlineage V -o
    ROOT/.prov/x.jsonl` wrote into the ledger the server serves. A client now refuses any path
    inside a ledger folder on its machine, and writes elsewhere as before."""
    monkeypatch.setenv("PROV_TOKEN", server.token)
    runner = CliRunner()
    save_file({"w": torch.ones(3)}, str(tmp_path / "m.safetensors"))
    version = json.loads(runner.invoke(main, ["--ledger", server.url, "model", "commit", str(tmp_path / "m.safetensors"),
                                              "-m", "a model", "--json"]).output)["version_id"]
    inside = server.root / ".prov" / "events.jsonl"
    for args in (["export", "openlineage", version, "-o", str(inside)], ["model", "card", version, "-o", str(inside)]):
        out = runner.invoke(main, ["--ledger", server.url, *args])
        assert out.exit_code == 4, out.output
        assert f"inside the ledger folder {server.root / '.prov'}" in out.output
        assert not inside.exists()
    out = runner.invoke(main, ["--ledger", server.url, "export", "openlineage", version, "-o", str(tmp_path / "e.jsonl")])
    assert out.exit_code == 0 and (tmp_path / "e.jsonl").is_file() and "wrote 0 events" in out.output


def test_token_list_says_which_tokens_have_expired(server, monkeypatch):
    """An expired token was listed as ``live`` (locally and through a server) while every call
    with it got 401: the state column is ``expired`` once its time is past."""
    import time

    monkeypatch.setenv("PROV_TOKEN", server.token)
    admin = server.ledger()
    admin.issue_token("brief", "read", expires_days=1e-6)  # 0.09 s
    admin.issue_token("lasting", "read", expires_days=30)
    time.sleep(0.3)
    listed = CliRunner().invoke(main, ["--ledger", server.url, "token", "list"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    states = {line.split("│")[1].strip(): line.split("│")[5].strip() for line in listed.output.splitlines()
              if line.startswith("│")}
    assert states == {"admin": "live", "brief": "expired", "lasting": "live"} | (
        {"reader": "revoked"} if "reader" in states else {})
