"""Real failures for the Ray tests: SIGKILL a worker process while the work it serves runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any


def kill_during(work: Callable[[], Any], matches: Callable[[str], bool], *, ready: Callable[[], bool] = lambda: True,
                timeout: float = 120.0) -> tuple[dict[str, Any], str | None]:
    """Run ``work`` on a thread and, once ``ready()``, SIGKILL the first process whose command
    line ``matches``; returns ``{"result": ...}`` or ``{"error": ...}`` when the work ends, and the
    command line killed (None when the work ended first)."""
    import psutil

    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    killed = None
    deadline = time.monotonic() + timeout
    while killed is None and worker.is_alive() and time.monotonic() < deadline:
        if ready():
            for p in psutil.process_iter(["pid", "cmdline"]):
                line = " ".join(p.info["cmdline"] or [])
                if matches(line):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed = line
                    break
        time.sleep(0.01)
    worker.join(300)
    return outcome, killed
