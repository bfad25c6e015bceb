"""schemathesis against the OpenAPI document a live ``prov serve`` serves: generated requests
(bounded), no server error and no answer that violates the documented schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import serving


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    cli = Path(sys.executable).parent / "schemathesis"
    if not cli.exists():
        pytest.skip("schemathesis is not installed (it is in the test extra)")
    with serving.running(tmp_path / "ledger") as server:
        ledger = server.ledger()
        ledger.register_dataset("web", [{"id": f"w{i}", "text": f"web page {i} about things"} for i in range(30)],
                                id_field="id")
        ledger.tag("base", ledger.commit({"w": torch.zeros(4)}, message="base"))
        # backup writes where it is told on the server's machine; uploads and examples take Arrow
        # bodies schemathesis cannot make (tests/test_api_contract.py sends them bad ones)
        done = subprocess.run(
            [str(cli), "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {server.token}",
             "--checks", "not_a_server_error,response_schema_conformance", "-n", "12", "--seed", "1",
             "--exclude-path-regex", "backup|uploads|examples", "--request-timeout", "60"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache goes there, not in the clone
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-6000:]
        assert "Server error" not in out and "violates schema" not in out
        assert "500 Internal Server Error" not in server.output()
