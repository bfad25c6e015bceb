"""A real S3 API server for tests: moto's server mode as a subprocess on a free loopback port.

``running()`` starts ``python -m moto.server`` on 127.0.0.1, waits until it answers, points the
standard AWS settings of this process at it (``AWS_ENDPOINT_URL_S3``, dummy credentials, a
region) and yields an :class:`S3` with a bucket-making, object-writing Arrow file system. The
server's state lives in its process: stopping it loses every bucket.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.fs as pafs

from tests.serving import free_port

SETTINGS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class S3:
    """A running moto server: its endpoint, an Arrow file system on it, and its process."""

    def __init__(self, endpoint: str, proc: subprocess.Popen, log: Path):
        self.endpoint, self.proc, self.log = endpoint, proc, log
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http", region="us-east-1",
                                    access_key="testing", secret_key="testing", session_token="testing",
                                    allow_bucket_creation=True, allow_bucket_deletion=True)

    def bucket(self, name: str) -> str:
        self.fs.create_dir(name)
        return name

    def put(self, path: str, data: bytes) -> str:
        """Write ``data`` as the object ``path`` ("bucket/key"); its ``s3://`` URL."""
        with self.fs.open_output_stream(path, compression=None) as out:
            out.write(data)
        return f"s3://{path}"

    def upload(self, folder: Path, prefix: str) -> str:
        """Every file under ``folder`` as objects under ``prefix`` ("bucket/key-prefix"); its URL."""
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        return f"s3://{prefix}/"

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running(tmp: Path, timeout: float = 60.0) -> Iterator[S3]:
    port = free_port()
    Path(tmp).mkdir(parents=True, exist_ok=True)
    log = Path(tmp) / f"moto-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **SETTINGS})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not answer in {timeout:g}s") from None
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in (*SETTINGS, "AWS_ENDPOINT_URL_S3")}
    os.environ.update({**SETTINGS, "AWS_ENDPOINT_URL_S3": endpoint})
    try:
        yield S3(endpoint, proc, log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
