"""Commits stored as their tensors arrive (``provenance.server.streams``), against one real
server for the module: the order the body comes in, truncated and malformed bodies, an error
before the body is read, and a slow upload that must not hold the other writes or ``gc``."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpx
import pytest
import torch

from provenance import errors
from provenance.remote import RemoteLedger
from provenance.tensorfile import file_bytes
from tests import serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving.running(tmp_path_factory.mktemp("streams") / "ledger") as srv:
        yield srv


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"b.weight": torch.randn(256, 512, generator=g), "a.bias": torch.randn(512, generator=g),
            "c.step": torch.arange(7, dtype=torch.int64) + seed, "d.half": torch.randn(64, generator=g).half()}


def _body(state: dict[str, torch.Tensor], order: list[str]) -> bytes:
    entries = [(n, state[n].dtype, tuple(state[n].shape)) for n in order]
    _, pieces = file_bytes(entries, ((n, state[n]) for n in order))
    return b"".join(bytes(p) for p in pieces)


def _post(server, body: bytes, query: str = "message=raw", **headers) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/versions?{query}", content=body, timeout=120,
                      headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/octet-stream",
                               **headers})


def _open_upload(server, body_length: int, query: str = "message=slow") -> socket.socket:
    """A commit whose body is sent by hand: the request's head now, the body as the test says."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall((f"POST /api/v1/versions?{query} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {server.token}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {body_length}\r\nConnection: close\r\n\r\n").encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, json.loads(body)


def test_a_body_in_any_order_commits_the_same_version_content(server):
    ledger = server.ledger()
    state = _state(1)
    in_order = ledger.commit(state, message="in order")
    backwards = _post(server, _body(state, sorted(state, reverse=True)), "message=backwards")
    assert backwards.status_code == 201, backwards.text
    assert re.fullmatch(r"app;dur=\d+\.\d", backwards.headers["server-timing"])  # the server's own time
    spooled = backwards.json()
    assert [p.name for p in ledger.manifest(in_order).values()] == sorted(state)
    assert list(ledger.manifest(spooled["version_id"])) == list(ledger.manifest(in_order))
    for vid in (in_order.version_id, spooled["version_id"]):
        got = ledger.checkout(vid)
        assert all(torch.equal(got[k], state[k]) and got[k].dtype == state[k].dtype for k in state)
    assert not list((server.root / ".prov" / "tmp" / "uploads").glob("*"))  # the spooled file is gone


@pytest.mark.parametrize("case", ["trailing", "trailing, chunked", "short header", "not json", "huge header",
                                  "length disagrees"])
def test_malformed_bodies_are_refused_by_what_is_wrong(server, case):
    body = _body(_state(2), sorted(_state(2)))
    before = len(server.ledger().versions())
    if case == "trailing":
        r, match = _post(server, body + b"extra"), "its header accounts for 526,808"
    elif case == "trailing, chunked":  # no Content-Length: found when the last tensor is read
        r, match = _post(server, iter([body, b"extra"])), "goes on after the last tensor"
    elif case == "short header":
        r, match = _post(server, body[:5]), "inside the header's length"
    elif case == "not json":
        r, match = _post(server, (8).to_bytes(8, "little") + b"{notjson" + body[8:]), "not a safetensors file"
    elif case == "huge header":
        r, match = _post(server, (1 << 40).to_bytes(8, "little") + body[8:]), "a header of"
    else:
        head = int.from_bytes(body[:8], "little")
        r, match = _post(server, body[:8 + head] + body[8 + head:-4]), "tensor .d.half. offsets 526392..526520 do not fit"
    assert r.status_code == 422 and re.search(match, r.json()["error"]), (r.status_code, r.text)
    assert len(server.ledger().versions()) == before


def test_an_upload_cut_off_leaves_no_version_and_no_objects(server):
    ledger = server.ledger()
    before = len(ledger.versions())
    body = _body(_state(3), sorted(_state(3)))
    sock = _open_upload(server, len(body), "message=cut")
    sock.sendall(body[: len(body) * 2 // 3])  # past the first tensors: some objects are written
    time.sleep(0.5)
    sock.close()
    deadline = time.monotonic() + 30
    while True:  # the server notices the client has gone, fails the commit, removes its objects
        try:
            report = RemoteLedger(server.url, token=server.token, retries=0).gc()
        except errors.LedgerLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
            continue
        if not report["unreferenced"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["unreferenced"] == [] and report["temporary_files"] == []
    assert len(ledger.versions()) == before


def test_an_error_before_the_body_is_read_reaches_the_client(server):
    ledger = server.ledger()
    big = {"w": torch.zeros(8 << 20)}  # 32 MiB the server does not need once the parent is unknown
    with pytest.raises(errors.NotFoundError, match="no-such-version"):
        ledger.commit(big, parent="no-such-version", message="orphan")
    with pytest.raises(errors.InvalidParameterError, match="NaN or Inf"):
        ledger.commit({"a": torch.tensor([float("nan")]), "z": torch.zeros(4 << 20)}, message="nan")


def test_a_slow_upload_holds_neither_other_writes_nor_its_objects_from_gc(server):
    ledger = server.ledger()
    state = _state(4)
    body = _body(state, sorted(state))
    sock = _open_upload(server, len(body))
    sock.sendall(body[: len(body) // 2])  # the first tensor is stored, the next one waits for its bytes
    time.sleep(0.5)
    done: dict = {}

    def other_writes() -> None:
        other = server.ledger()
        done["version"] = other.commit({"small": torch.ones(3)}, message="beside the slow one").version_id
        other.register_dataset("beside", [{"id": "a", "text": "written while a commit uploads"}], id_field="id")
        done["ok"] = True

    t = threading.Thread(target=other_writes)
    t.start()
    t.join(60)
    assert done.get("ok"), "other writes waited for the slow upload"
    with pytest.raises(errors.LedgerLockedError, match="writing objects"):  # its objects are not garbage
        RemoteLedger(server.url, token=server.token, retries=0).gc(apply=True)
    sock.sendall(body[len(body) // 2:])
    status, record = _answer(sock)
    sock.close()
    assert status == 201, record
    got = ledger.checkout(record["version_id"])
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert ledger.gc()["unreferenced"] == []
    assert torch.equal(ledger.checkout(done["version"])["small"], torch.ones(3))


def test_a_registration_whose_source_fails_midway_leaves_nothing(server, tmp_path):
    """The rows go out while the rest is fingerprinted; a bad record near the end stops the upload
    with the source's own error (file and line), and the server keeps neither rows nor dataset."""
    source = tmp_path / "late-error.jsonl"
    with source.open("w") as f:
        for i in range(120_000):
            f.write(json.dumps({"id": f"d{i}", "text": f"document number {i} of a corpus that breaks late"}) + "\n")
        f.write("{not json\n")
    ledger = server.ledger()
    with pytest.raises(errors.SourceError, match=r"late-error.jsonl:120001: malformed JSON"):
        ledger.register_dataset("late-error", str(source), id_field="id")
    uploads = server.root / ".prov" / "tmp" / "uploads"
    deadline = time.monotonic() + 10
    while list(uploads.glob("*.arrows")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the server notices the upload was cut off and removes what it received
    assert list(uploads.glob("*.arrows")) == []
    assert "late-error" not in [d.name for d in ledger.datasets()]
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(50)))
    assert ledger.register_dataset("late-error", str(source), id_field="id").dataset.n_documents == 50


def test_a_registration_kept_as_parquet_through_the_server(server, tmp_path):
    """``documents_as`` goes with the upload; the server writes the files under its ledger and its
    queries read them."""
    source = tmp_path / "kept.jsonl"
    source.write_text("".join(json.dumps({"id": f"k{i}", "text": f"kept document {i} of a small corpus"}) + "\n"
                              for i in range(300)))
    ledger = server.ledger()
    result = ledger.register_dataset("kept", str(source), id_field="id", documents_as="parquet")
    assert result.created and result.dataset.n_documents == 300
    files = sorted((server.root / ".prov" / "documents" / "kept").glob("v1-*/*.parquet"))
    assert len(files) == 1
    rows = ledger.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM documents WHERE dataset_id = 'kept@1'")
    assert rows.to_pylist() == [{"n": 300, "k": 300}]
    assert ledger.taint(dataset="kept", key="k7").target
    with pytest.raises(errors.InvalidParameterError, match="documents_as must be one of auto, table, parquet"):
        ledger.register_dataset("kept2", str(source), documents_as="feather")
