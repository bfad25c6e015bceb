"""A real ledger server for tests: ``prov serve`` as a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from provenance import Ledger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ``prov serve``: its URL, the admin token, the process and its log."""

    def __init__(self, root: Path, url: str, token: str | None, proc: subprocess.Popen, log: Path):
        self.root, self.url, self.token, self.proc, self.log = root, url, token, proc, log

    def ledger(self, token: str | None = None):
        return Ledger.open(self.url, token=token or self.token)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start(root: Path, *, auth: bool = True, port: int | None = None, args: tuple[str, ...] = (),
          token: str | None = None, scheme: str = "http", verify: bool | str = True, timeout: float = 60.0,
          file_size_limit: int | None = None) -> Server:
    """Start a server on the ledger in ``root`` (created, with an admin token, when missing) and
    wait until ``/healthz`` answers. ``file_size_limit``: the server process may write no file
    larger than this (``RLIMIT_FSIZE``: a disk that refuses writes, for real)."""
    root = Path(root)
    if not (root / ".prov").exists():
        ledger = Ledger.init(root)
        if auth and token is None:
            _, token = ledger.issue_token("admin", "admin")
    port = port or free_port()
    log = root / f"server-{port}.log"
    cmd = [sys.executable, "-m", "provenance.cli.main", "--ledger", str(root), "serve", "--port", str(port), *args]
    if not auth:
        cmd.append("--insecure-no-auth")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=None if file_size_limit is None else lambda: _hold(file_size_limit))
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prov serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200:
                return Server(root, url, token, proc, log)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"prov serve did not answer in {timeout:g}s:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def _hold(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@contextlib.contextmanager
def running(root: Path, **options) -> Iterator[Server]:
    server = start(root, **options)
    try:
        yield server
    finally:
        server.stop()

