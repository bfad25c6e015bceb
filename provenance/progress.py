"""Progress reporting: what long operations tell a display, and the helpers they share.

A long operation (registration, an audit, a commit, a checkout, a merge) takes an optional
``progress`` object with two methods: ``start(description, total)`` begins a stage (``total`` in
bytes, or steps; ``None`` when unknown) and ``advance(amount)`` moves it on. The CLI passes a
rich progress bar (``provenance.cli.render.progress``); library callers may pass their own or
nothing.
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """What a progress display needs; the CLI passes a rich progress bar."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...


class NoProgress:
    """A progress display that shows nothing."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


def stage(progress: Any, description: str, total: int | None) -> None:
    """Begin a stage on ``progress`` (which may be None)."""
    if progress is not None:
        progress.start(description, total)


def step(progress: Any, amount: int = 1) -> None:
    """Advance ``progress`` (which may be None) by ``amount``."""
    if progress is not None:
        progress.advance(amount)
