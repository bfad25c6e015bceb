"""The service under real failures and load, with real processes: a server SIGKILLed while eight
clients write, then restarted; sixteen clients at once. Every write a client saw acknowledged is
in the ledger, nothing partial is visible, and every version checks out bit-identical."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from provenance import Ledger
from provenance.errors import InvalidParameterError, ProvenanceError
from tests import serving
from tests.service_client import state

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _clients(server, tmp_path: Path, count: int, n: int, *, reads: bool = False) -> list[subprocess.Popen]:
    procs = []
    for c in range(count):
        cmd = [sys.executable, str(ROOT / "tests" / "service_client.py"), server.url, server.token,
               str(tmp_path / f"client-{c}.jsonl"), str(c), str(n)] + (["--reads"] if reads else [])
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        out.append((p.returncode, text.decode(errors="replace")[-2000:]))
    return out


def _acks(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(tmp_path.glob("client-*.jsonl")) for line in f.read_text().splitlines()]


def _check_acknowledged(ledger, acks: list[dict]) -> dict[str, int]:
    """Every acknowledged write is there, whole; returns counts per kind."""
    counts: dict[str, int] = {}
    for a in acks:
        counts[a["op"]] = counts.get(a["op"], 0) + 1
        if a["op"] == "register":
            assert ledger.dataset(a["dataset"]).n_documents == a["documents"]
        elif a["op"] in ("commit", "run"):
            got = ledger.checkout(a["version"])
            want = state(a["client"], a["i"])
            assert all(torch.equal(got[k], want[k]) for k in want), a
            if a["op"] == "run":
                run = ledger.run(a["run"])
                assert run.status == "finished" and run.version_id == a["version"]
                assert sum(s.examples for s in ledger.run_shards(run)) == a["examples"]
    return counts


def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path):
    server = serving.start(tmp_path / "ledger")
    port = int(server.url.rsplit(":", 1)[1])
    procs = _clients(server, tmp_path, 8, 24)
    deadline = time.monotonic() + 120
    while len(_acks(tmp_path)) < 12 and time.monotonic() < deadline:  # the clients are writing
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    killed_at = len(_acks(tmp_path))
    time.sleep(1.0)
    restarted = serving.start(tmp_path / "ledger", port=port, token=server.token)
    try:
        results = _wait(procs, 420)
        acks = _acks(tmp_path)
        assert all(code == 0 for code, _ in results), [t for c, t in results if c][:2]
        assert not [a for a in acks if a["op"] == "error"]
        ledger = restarted.ledger()
        counts = _check_acknowledged(ledger, acks)
        assert counts.get("register", 0) + counts.get("applied-unknown", 0) >= 8 * 6 - 8  # the rest finished
        assert 0 < killed_at < len(acks)  # the kill landed while clients were writing
        report = ledger.verify()
        assert report.ok and not report.damaged_objects and not report.dataset_problems, report
        # A run whose start was applied just before the kill, its answer lost (the client got
        # AlreadyAppliedError), stays running until its owner is gone: the next start marks it.
        unknown = sum(a["op"] == "applied-unknown" for a in acks)
        running = [r for r in ledger.runs() if r.status == "running"]
        assert len(running) <= unknown
        ledger.start_run(message="after the clients").finish()
        assert [r for r in ledger.runs() if r.status == "running"] == []
        assert all("abandoned" in (ledger.run(r.run_id).error or "") for r in running)
    finally:
        restarted.stop()


def test_a_run_a_plain_http_client_started_outlives_a_server_restart(tmp_path):
    """A run started over HTTP without a pid (curl, a job in another language) was owned by the
    server's process: once the server restarted, the next run started on its host marked it failed
    ("abandoned: process N exited") while its job was still logging."""
    server = serving.start(tmp_path / "ledger")
    port = int(server.url.rsplit(":", 1)[1])
    started = httpx.post(f"{server.url}/api/v1/runs", json={"message": "a curl job"},
                         headers={"Authorization": f"Bearer {server.token}"})
    assert started.status_code == 201 and started.json()["pid"] == 0
    server.stop(signal.SIGKILL)
    restarted = serving.start(tmp_path / "ledger", port=port, token=server.token)
    try:
        ledger = restarted.ledger()
        ledger.start_run(message="another job").finish()
        run = ledger.run(started.json()["run_id"])
        assert (run.status, run.error) == ("running", None)
    finally:
        restarted.stop()


def test_sixteen_clients_at_once(tmp_path):
    """16 client processes, each making over 1,000 calls: 33 rounds of a registration, a commit, a
    run (start, examples, commit) and three sets of six reads."""
    rounds = 33
    with serving.running(tmp_path / "ledger") as server:
        started = time.monotonic()
        results = _wait(_clients(server, tmp_path, 16, 6 * rounds, reads=True), 1500)
        seconds = time.monotonic() - started
        acks = _acks(tmp_path)
        assert all(code == 0 for code, _ in results), [t for c, t in results if c][:2]
        assert not [a for a in acks if a["op"] == "error"]
        ledger = server.ledger()
        counts = _check_acknowledged(ledger, acks)
        assert counts == {"register": 16 * rounds, "commit": 16 * rounds, "run": 16 * rounds, "read": 16 * 3 * rounds}
        writes = ledger.sql("SELECT count(*) AS n FROM access_log").to_pylist()[0]["n"]
        # per round: a registration (upload, register), a commit, a run (start, examples, commit):
        # 6 writes, each logged once, whatever retries happened
        assert writes == 16 * rounds * 6
        requests = server.output().count('HTTP/1.1"')
        assert requests >= 16 * 1000
        assert ledger.verify().ok
        print(f"16 clients x {rounds} rounds: {requests} requests ({writes} writes) in {seconds:.1f} s")


def test_a_second_server_on_a_held_ledger_is_refused(tmp_path):
    from provenance.errors import LedgerLockedError

    with serving.running(tmp_path / "ledger") as server:
        with pytest.raises(RuntimeError, match="in use|locked|lock|served"):
            serving.start(tmp_path / "ledger", token=server.token, timeout=30)
        assert Ledger.open(server.url, token=server.token).summary()["datasets"] == 0
        # a process opening the served ledger's folder is told to go through the server, not to retry
        with pytest.raises(LedgerLockedError, match=f"is served by `prov serve` \\(process {server.proc.pid}\\) at "
                                                    f"http://127.0.0.1:{server.url.rsplit(':', 1)[1]}: while it runs"):
            Ledger.open(tmp_path / "ledger", lock_timeout=0.2).summary()
    assert not (tmp_path / "ledger" / ".prov" / "serving.json").exists()  # removed when the server stopped


def test_a_backup_through_the_server_keeps_the_ledger_held(tmp_path):
    """The backup copied the database file in the server's process, and closing that copy's
    descriptor dropped DuckDB's lock on it (a POSIX lock is the process's, on every descriptor):
    another process, a second server included, could then open the served ledger and write it."""
    from provenance.errors import LedgerLockedError

    with serving.running(tmp_path / "ledger") as server:
        client = server.ledger()
        client.commit({"w": torch.arange(4.0)}, message="base")
        assert client.backup(tmp_path / "copy")["verified"] is True
        with pytest.raises(LedgerLockedError, match=f"is served by `prov serve` \\(process {server.proc.pid}\\)"):
            Ledger.open(tmp_path / "ledger", lock_timeout=0.2).summary()
        with pytest.raises(RuntimeError, match="in use|locked|lock|served"):
            serving.start(tmp_path / "ledger", token=server.token, timeout=30)
        assert [v.message for v in client.versions()] == ["base"]
    assert [v.message for v in Ledger.open(tmp_path / "copy", read_only=True).versions()] == ["base"]


def test_a_server_stopped_says_nothing_of_leaks(tmp_path):
    """The start-up froze what it loaded (gc.freeze, to spare the collector); left frozen at exit,
    Triton's bindings printed ``nanobind: leaked 4 instances! ... likely caused by a reference
    counting issue`` and some 30 lines more at every stop of ``prov serve``."""
    Ledger.init(tmp_path / "ledger")
    script = (f"import threading\nfrom provenance.server import LedgerService\n"
              f"service = LedgerService({str(tmp_path / 'ledger')!r}, auth=False)\n"
              "[t.join() for t in threading.enumerate() if t.name == 'provenance-warm-up']\n"
              "service.close()\nprint('closed')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed\n"
    assert "leaked" not in done.stderr, done.stderr[:500]


def test_a_server_on_an_ipv6_address_is_named_by_a_url_that_works(tmp_path):
    """``prov serve --host ::1``: a process refused the ledger was told to use http://::1:PORT,
    which no client reads as a URL (``Invalid port: ':1:PORT'``)."""
    import socket

    from provenance.errors import LedgerLockedError

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    root = tmp_path / "ledger"
    _, token = Ledger.init(root).issue_token("admin", "admin")
    port = serving.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "provenance.cli.main", "--ledger", str(root), "serve", "--host", "::1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://[::1]:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with pytest.raises(LedgerLockedError) as refused:
            Ledger.open(root, lock_timeout=0.2).summary()
        assert f"at {url}: while it runs" in str(refused.value)
        assert Ledger.open(url, token=token).summary()["datasets"] == 0  # the URL it names works
    finally:
        proc.terminate()
        proc.wait(30)


def test_tls_with_a_certificate_the_test_makes(tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian: apt install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = serving.start(tmp_path / "ledger", args=("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
                           scheme="https", verify=str(cert))
    try:
        ledger = Ledger.open(server.url, token=server.token, verify=str(cert))
        v = ledger.commit({"w": torch.arange(6.0)}, message="over TLS")
        assert torch.equal(ledger.checkout(v)["w"], torch.arange(6.0))
        from provenance.errors import ProvenanceError

        with pytest.raises(ProvenanceError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            r = Ledger.open(server.url, token=server.token)  # the system's CAs do not know this certificate
            r.retries = 0
            r.versions()
        plain = Ledger.open(server.url.replace("https://", "http://"), token=server.token)
        plain.retries = 0
        with pytest.raises(ProvenanceError):
            plain.versions()
    finally:
        server.stop()


def test_serve_refuses_a_certificate_or_key_it_cannot_load_naming_the_file(tmp_path):
    """`prov serve --ssl-certfile X --ssl-keyfile Y` with a file that is not PEM, or a key of
    another certificate, opened the ledger and then said `Error: [SSL] PEM lib (_ssl.c:3905)`,
    naming neither file; an encrypted key without a terminal said `Error: Invalid argument`."""
    import shutil

    from click.testing import CliRunner

    from provenance.cli.main import main

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian: apt install openssl)")
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                        "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem")],
                       check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "a.key"), "-aes256", "-passout", "pass:secret",
                    "-out", str(tmp_path / "encrypted.key")], check=True, capture_output=True)
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    root = tmp_path / "ledger"
    Ledger.init(root).issue_token("admin", "admin")

    def serve(cert: str, key: str):
        return CliRunner().invoke(main, ["--ledger", str(root), "serve", "--port", str(serving.free_port()),
                                         "--ssl-certfile", str(tmp_path / cert), "--ssl-keyfile", str(tmp_path / key)])

    result = serve("notes.txt", "a.key")
    assert result.exit_code == 4, result.output
    assert result.output.startswith(f"Error: --ssl-certfile {tmp_path / 'notes.txt'} is not a PEM certificate")
    result = serve("a.key", "a.pem")  # the two swapped
    assert result.output.startswith(f"Error: --ssl-certfile {tmp_path / 'a.key'} is not a PEM certificate")
    result = serve("a.pem", "b.key")
    assert result.exit_code == 4, result.output
    assert result.output.startswith(f"Error: --ssl-keyfile {tmp_path / 'b.key'} is not the PEM private key of the "
                                    f"certificate in {tmp_path / 'a.pem'}: [X509: KEY_VALUES_MISMATCH]")
    result = serve("a.pem", "encrypted.key")  # CliRunner's stdin is no terminal
    assert result.exit_code == 4, result.output
    assert result.output.startswith(f"Error: --ssl-keyfile {tmp_path / 'encrypted.key'} is encrypted and there is "
                                    "no terminal to ask its passphrase on")
    assert not (root / ".prov" / "serving.json").exists()


def test_serve_refuses_an_upload_limit_under_one_byte(tmp_path):
    """`prov serve --max-upload -5` started a server that refused every upload as `larger than this
    server's upload limit (-5 bytes)`; it is a usage error now."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    for value in ("-5", "0"):
        result = CliRunner().invoke(main, ["--ledger", str(tmp_path), "serve", "--max-upload", value])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '--max-upload': {value} is not in the range x>=1" in result.output


def test_serve_refuses_an_empty_host_naming_the_option(tmp_path):
    """`prov serve --host ''` said `cannot listen on :0: Name or service not known`, and with
    --insecure-no-auth `serves the loopback only, not ` with nothing after it (stranger pass 31)."""
    from click.testing import CliRunner

    from provenance.cli.main import main

    Ledger.init(tmp_path)
    for extra in ([], ["--insecure-no-auth"]):
        result = CliRunner().invoke(main, ["--ledger", str(tmp_path), "serve", "--host", " ", *extra])
        assert result.exit_code == 4, result.output
        assert "--host is empty: give the address to listen on (127.0.0.1, or 0.0.0.0 for every interface)" in \
            result.output


def test_oversized_bodies_are_refused_naming_the_limit(tmp_path):
    with serving.running(tmp_path / "ledger", args=("--max-upload", "100000")) as server:
        ledger = Ledger.open(server.url, token=server.token)
        from provenance.errors import InvalidParameterError

        with pytest.raises(InvalidParameterError, match="upload limit .100,000 bytes"):
            ledger.commit({"w": torch.zeros(100_000)}, message="too big")
        assert ledger.commit({"w": torch.zeros(100)}, message="small").n_params == 1
        import httpx

        huge = b'{"message": "' + b"x" * (65 << 20) + b'"}'
        r = httpx.post(f"{server.url}/api/v1/runs", content=huge, timeout=120,
                       headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"})
        assert r.status_code == 413 and "at most" in r.json()["error"]

        def chunked(total: int, head: bytes = b'{"message": "'):  # no Content-Length: the limit held only with one
            yield head
            for _ in range(total >> 20):
                yield b"x" * (1 << 20)
            yield b'"}'

        auth = {"Authorization": f"Bearer {server.token}"}
        for kind in ("application/json", "text/plain"):  # a JSON route read either whole, however large
            r = httpx.post(f"{server.url}/api/v1/runs", content=chunked(65 << 20), timeout=120,
                           headers={**auth, "Content-Type": kind})
            assert r.status_code == 413, (kind, r.text)
            assert r.json() == {"error": "a JSON body may have at most 67,108,864 bytes, this one has more",
                                "kind": "InvalidParameterError"}
        r = httpx.post(f"{server.url}/api/v1/lineage", content=chunked(17 << 20, b'{"eventType": "START", "x": "'),
                       timeout=120, headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == ("the event is larger than 16 MiB (more than 16,777,216 "
                                                              "bytes sent)")
        assert ledger.runs() == []
        assert ledger.versions()[0].message == "small"  # nothing else landed


def test_sigterm_drains_a_write_in_flight(tmp_path):
    """SIGTERM while a commit is being uploaded: the server finishes it, answers, then exits."""
    import threading

    import httpx

    from provenance.tensorfile import header, raw_bytes

    server = serving.start(tmp_path / "ledger")
    tensor = torch.arange(8 * 2**20 // 4, dtype=torch.float32)
    head, data = header([("w", tensor.dtype, tuple(tensor.shape))]), raw_bytes(tensor)
    started = threading.Event()

    def slowly():
        yield head
        started.set()
        for at in range(0, len(data), 1 << 20):  # 8 pieces, 0.25 s apart: 2 s of upload
            time.sleep(0.25)
            yield data[at:at + (1 << 20)]

    answer = {}

    def upload():
        answer["r"] = httpx.post(f"{server.url}/api/v1/versions", params={"message": "in flight"}, content=slowly(),
                                 headers={"Authorization": f"Bearer {server.token}",
                                          "Content-Length": str(len(head) + len(data))}, timeout=120)

    thread = threading.Thread(target=upload)
    thread.start()
    assert started.wait(30)
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(120)
    assert answer["r"].status_code == 201, answer["r"].text
    assert server.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    assert "Waiting for application shutdown" in server.output() and "Traceback" not in server.output()
    after = Ledger.open(tmp_path / "ledger")
    version = after.version(answer["r"].json()["version_id"])
    assert torch.equal(after.checkout(version)["w"], tensor)


def test_a_write_whose_answer_was_lost_is_made_good_by_the_client(tmp_path, monkeypatch):
    """The server started a run and committed a run's version, then stopped before storing either
    answer: what their transactions left is the Idempotency-Key's mark, with what each made. The
    client's retry with the same key gets 409 naming it, reads it back, and goes on with the run and
    the version that were made once, instead of an error (and a run left running) it cannot act on."""
    import types

    from provenance.ledger import WRITE_KEY

    root = tmp_path / "ledger"
    local = Ledger.init(root)
    _, token = local.issue_token("admin", "admin")
    local.register_dataset("d", [{"id": "a", "text": "one document"}], id_field="id")
    mark = WRITE_KEY.set(("k-run", "admin", "POST", "/api/v1/runs"))
    try:
        started = local.start_run(datasets=["d"], message="its answer was lost", detached=True)
    finally:
        WRITE_KEY.reset(mark)
    other = local.start_run(datasets=["d"], message="its commit's answer was lost", detached=True)
    mark = WRITE_KEY.set(("k-commit", "admin", "POST", "/api/v1/versions"))
    try:
        committed = other.commit({"w": torch.ones(3)})
    finally:
        WRITE_KEY.reset(mark)
    logging = local.start_run(datasets=["d"], message="its examples' answer was lost", detached=True)
    mark = WRITE_KEY.set(("k-examples", "admin", "POST", f"/api/v1/runs/{logging.run_id}/examples"))
    try:
        logging.log_examples(["a", "a"], step=0)
        logging.flush()
    finally:
        WRITE_KEY.reset(mark)
    mark = WRITE_KEY.set(("k-tag", "admin", "PUT", "/api/v1/tags/release/lost"))
    try:
        local.tag("release/lost", committed)
    finally:
        WRITE_KEY.reset(mark)
    mark = WRITE_KEY.set(("k-register", "admin", "POST", "/api/v1/datasets"))
    try:
        local.register_dataset("e", [{"id": "b", "text": "another document"}], id_field="id")
    finally:
        WRITE_KEY.reset(mark)
    del local

    server = serving.start(root, token=token)
    try:
        import httpx

        raw = httpx.post(f"{server.url}/api/v1/runs", json={"message": "x"}, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k-run"})
        assert raw.status_code == 409 and raw.json()["made"] == {"run_id": started.run_id}
        assert f"it made run {started.run_id}: read it" in raw.json()["error"]

        keys = iter(["k-run", "k-commit"])
        monkeypatch.setattr("provenance.remote.transport.uuid.uuid4", lambda: types.SimpleNamespace(hex=next(keys)))
        client = server.ledger()
        run = client.start_run(datasets=["d"], message="its answer was lost")
        assert (run.run_id, run.record.status) == (started.run_id, "running")
        version = client.commit({"w": torch.ones(3)}, message="its commit's answer was lost", run=other.run_id)
        assert version.version_id == committed.version_id
        assert client.run(other.run_id).version_id == committed.version_id
        # A batch of examples and a tag that landed: the job goes on (the batch was sent again under
        # a new key by the run's end, and logged twice), and the tag is read back.
        keys = iter(["k-examples", "k-tag", "k-upload", "k-register"])
        monkeypatch.setattr("provenance.remote.transport.uuid.uuid4", lambda: types.SimpleNamespace(hex=next(keys)))
        attached = client.attach_run(logging.run_id)
        attached.log_examples(["a", "a"], step=0)
        attached.flush()
        assert client.tag("release/lost", committed).version_id == committed.version_id
        with pytest.warns(UserWarning, match="e@1 was registered before the server stopped"):
            again = client.register_dataset("e", [{"id": "b", "text": "another document"}], id_field="id")
        assert again.dataset.dataset_id == "e@1" and "read back" in again.message
        monkeypatch.undo()
        attached.finish()
        assert client.run(logging.run_id).n_logged == 2 and client.run(logging.run_id).status == "finished"
        assert sum(s.examples for s in client.run_shards(logging.run_id)) == 2
        run.finish()
        assert client.run(started.run_id).status == "finished"
        assert len(client.runs()) == 3 and len(client.versions()) == 1  # nothing made twice
        assert [d.dataset_id for d in client.datasets(all_versions=True)] == ["d@1", "e@1"]
    finally:
        server.stop()


def test_serve_on_a_port_in_use_is_an_error_naming_it_not_not_found(tmp_path, monkeypatch):
    """`prov serve` on a port another process listens on printed uvicorn's log line and exited 3,
    the status of "not found". It is `Error: cannot listen on HOST:PORT: Address already in use`,
    exit 4, before the ledger is opened; a startup uvicorn fails is exit 4 too."""
    import socket

    import uvicorn
    from click.testing import CliRunner

    from provenance.cli.main import main

    root = tmp_path / "ledger"
    Ledger.init(root).issue_token("admin", "admin")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["--ledger", str(root), "serve", "--port", str(port)])
    assert result.exit_code == 4, result.output
    assert result.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not (root / ".prov" / "serving.json").exists()
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: sys.exit(3))  # as uvicorn does when it cannot start
    result = CliRunner().invoke(main, ["--ledger", str(root), "serve", "--port", str(serving.free_port())])
    assert result.exit_code == 4, result.output
    assert "Error: the server did not start on 127.0.0.1:" in result.output
    assert not (root / ".prov" / "serving.json").exists()


@pytest.fixture(scope="module")
def runs_server(tmp_path_factory):
    """One server for the tests of runs whose answers go astray (none stops it): a dataset ``d`` of
    eight documents ``k0`` … ``k7``; each test names its own runs."""
    root = tmp_path_factory.mktemp("runs")
    (root / "d.jsonl").write_text("".join(json.dumps({"id": f"k{i}", "text": f"doc {i}"}) + "\n" for i in range(8)))
    with serving.running(root / "ledger") as server:
        server.ledger().register_dataset("d", str(root / "d.jsonl"), id_field="id")
        yield server


def _answers_lost(ledger, lost: list[int], what, times: int = 1) -> None:
    """Make ``ledger``'s first ``times`` requests that ``what(request)`` picks land on the server and
    their answers never reach the client (the connection drops after the server applied them);
    ``lost`` gets each one's status. No retry: the client sees the failure."""
    ledger.retries = 0
    send = ledger._http.send

    def answer_lost(request, **options):
        response = send(request, **options)
        if what(request) and len(lost) < times:
            response.read()
            lost.append(response.status_code)  # applied on the server; the client never hears
            raise httpx.ReadError("the connection dropped")
        return response

    ledger._http.send = answer_lost


def test_run_text_that_is_not_utf8_is_refused_and_the_runs_stay_readable(runs_server):
    """JSON may escape an unpaired surrogate (``"\\ud800"``): in a run's params it was stored and every
    later ``GET /runs`` answered 500; in its host, or in the error of its end, the write was a 500."""
    server = runs_server
    ledger = server.ledger()
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    said = {}
    for what, body in (("params", b'{"message": "m", "datasets": {"d": 1}, "params": {"a": "\\udce9"}}'),
                       ("host", b'{"message": "m", "datasets": {"d": 1}, "host": "node\\ud800", "pid": 7}')):
        answer = httpx.post(f"{server.url}/api/v1/runs", content=body, headers=headers)
        said[what] = (answer.status_code, answer.json()["error"])
    assert said == {"params": (422, "run param 'a' holds an unpaired surrogate at character 0: it is not valid UTF-8"),
                    "host": (422, "the run's host holds an unpaired surrogate at character 4: it is not valid UTF-8")}
    before = len(ledger.runs())
    run = ledger.start_run(datasets=["d"], message="ok")
    answer = httpx.post(f"{server.url}/api/v1/runs/{run.run_id}/end", headers=headers,
                        content=b'{"status": "failed", "error": "\\ud800"}')
    assert (answer.status_code, answer.json()["kind"]) == (422, "InvalidParameterError")
    assert len(ledger.runs()) == before + 1 and ledger.run(run.run_id).status == "running"
    run.log_examples(["k1", "k2"])
    assert run.finish().n_logged == 2


def test_a_run_of_a_job_on_another_host_is_not_marked_abandoned_by_the_server(runs_server):
    """The server looked up the pid of a job on another machine among its own processes: the next
    run started from that machine marked a run whose job still logged as failed, 'abandoned'."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process of this machine has
    server = runs_server
    ledger = server.ledger()
    headers = {"Authorization": f"Bearer {server.token}"}
    started = [httpx.post(f"{server.url}/api/v1/runs", headers=headers,
                          json={"message": m, "datasets": {"d": 1}, "host": "gpu-node-7", "pid": pid}).json()
               for m, pid in (("job 1", gone.pid), ("job 2", gone.pid + 1))]
    first = ledger.attach_run(started[0]["run_id"])
    first.log_examples(["k0", "k1", "k2"])
    assert [(ledger.run(r["run_id"]).status, ledger.run(r["run_id"]).error) for r in started] == [
        ("running", None), ("running", None)]
    assert first.finish().n_logged == 3
    # a run of this machine whose process is gone is still marked, as before
    local = ledger.start_run(datasets=["d"], message="here", pid=gone.pid, detached=True)
    ledger.start_run(datasets=["d"], message="next here").finish()
    assert ledger.run(local.run_id).error == f"abandoned: process {gone.pid} exited without ending the run"


def test_a_bad_flush_every_is_refused_before_the_run_starts_on_the_server(runs_server):
    """The client took ``flush_every=0`` or ``2.5`` and started the run on the server (a local
    ledger refused them); and a key with an unpaired surrogate stuck in its buffer."""
    ledger = runs_server.ledger()
    before = len(ledger.runs())
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InvalidParameterError, match=f"flush_every must be a positive integer, got {bad!r}"):
            ledger.start_run(datasets=["d"], message="m", flush_every=bad)
    assert len(ledger.runs()) == before
    run = ledger.start_run(datasets=["d"], message="m", flush_every=2)
    run.log_examples(["k0"])
    with pytest.raises(InvalidParameterError, match=r"logged example '\\udce9' at step 0 holds an unpaired"):
        run.log_examples(["\udce9", "k1"])
    run.log_examples(["k2", "k3"], step=1)
    assert run.finish().n_logged == 3


def test_a_batch_whose_answer_never_came_is_sent_again_under_its_key(runs_server):
    """A batch of examples landed, and its answer never reached the client (the connection dropped,
    the server stayed down past the retries): the buffer was kept and the next flush sent it again,
    with the examples logged since, under a new Idempotency-Key: logged twice."""
    ledger, lost = runs_server.ledger(), []
    _answers_lost(ledger, lost, lambda request: request.url.path.endswith("/examples"), times=2)
    run = ledger.start_run(datasets=["d"], message="answers lost", flush_every=2)
    with pytest.raises(ProvenanceError, match="failed after 1 tries"):
        run.log_examples(["k0", "k1"], step=0)        # landed, answer lost
    with pytest.raises(ProvenanceError, match="failed after 1 tries"):
        run.log_examples(["k2", "k3"], step=1)        # k0 k1 sent again (answered), k2 k3 landed, answer lost
    run.log_examples(["k4", "k5", "k6"], step=2)      # k2 k3 sent again, then these
    assert lost == [200, 200]
    assert run.finish().n_logged == 7
    seen = ledger.sql("SELECT e.step, d.key FROM run_examples e JOIN documents d USING (doc_id) "
                      "WHERE e.run_id = ? ORDER BY e.step, d.key", [run.run_id]).to_pylist()
    assert [(r["step"], r["key"]) for r in seen] == [
        (0, "k0"), (0, "k1"), (1, "k2"), (1, "k3"), (2, "k4"), (2, "k5"), (2, "k6")]


def test_an_end_whose_answer_never_came_is_sent_again_under_its_key(runs_server):
    """A run's end landed and its answer never reached the client: ``finish()`` again sent it under a
    new Idempotency-Key, and was refused, 'finished already (ended by another process?)'."""
    ledger, lost = runs_server.ledger(), []
    _answers_lost(ledger, lost, lambda request: request.url.path.endswith("/end"))
    run = ledger.start_run(datasets=["d"], message="end lost")
    run.log_examples(["k0", "k1", "k2"])
    with pytest.raises(ProvenanceError, match="failed after 1 tries"):
        run.finish()
    record = run.finish()
    assert (lost, record.status, record.error, record.n_logged) == ([200], "finished", None, 3)
    assert [r.status for r in ledger.runs() if r.message == "end lost"] == ["finished"]


def test_a_run_commit_whose_answer_never_came_returns_the_version_it_made(runs_server):
    """A run's commit landed and its answer never reached the client: ``run.commit`` again was
    refused, 'run … is finished: only a running run can commit', with the run left open here."""
    ledger, lost = runs_server.ledger(), []
    _answers_lost(ledger, lost, lambda request: (request.method, request.url.path) == ("POST", "/api/v1/versions"))
    before = {v.version_id for v in ledger.versions()}
    with ledger.start_run(datasets=["d"], message="commit lost") as run:
        run.log_examples(["k0", "k1"])
        with pytest.raises(ProvenanceError, match="failed after 1 tries"):
            run.commit({"w": torch.ones(3)})
        version = run.commit({"w": torch.ones(3)})
    record = ledger.run(run.run_id)
    assert (lost, record.status, record.n_logged) == ([201], "finished", 2)
    assert record.version_id == version.version_id and version.run_id == run.run_id
    assert [v.version_id for v in ledger.versions() if v.version_id not in before] == [version.version_id]
