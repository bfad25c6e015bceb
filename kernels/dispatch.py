"""Which implementation a kernel call runs: the Triton kernel or the plain-torch path.

The caller never chooses: :func:`pick` returns ``"triton"`` when Triton is installed and every
tensor is on a CUDA device, else ``"torch"`` (the exact CPU path). Tests and benchmarks override
the choice with :func:`backend`::

    with backend("triton"):   # on CPU this needs TRITON_INTERPRET=1, set before Triton is imported
        out = apply_sparse(base, indices, values)
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch

BACKENDS = ("auto", "triton", "torch")
_forced: ContextVar[str] = ContextVar("provenance_kernel_backend", default="auto")


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is the ``gpu`` extra: ``pip install 'provenance[gpu]'``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton runs its kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force ``"triton"`` or ``"torch"`` for the kernel calls in the block (``"auto"``: let :func:`pick` choose)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; one of {', '.join(BACKENDS)}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced() -> str:
    """The backend forced by :func:`backend` around this call, or ``"auto"``."""
    return _forced.get()


def pick(*tensors: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for a call on ``tensors``."""
    forced = _forced.get()
    if forced == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors)
    if forced == "triton":
        if not triton_available():
            raise RuntimeError("the triton backend was forced but Triton is not installed: pip install 'provenance[gpu]'")
        if not on_cuda and not interpreting():
            raise RuntimeError("the triton backend was forced on CPU tensors: set TRITON_INTERPRET=1 before importing Triton")
        return "triton"
    return "triton" if on_cuda and triton_available() else "torch"
