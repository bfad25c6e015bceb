"""Merge methods: a registry, one file per method (``average``, ``fisher``, ``task_arithmetic``,
``ties``). To add a method, write a :class:`~provenance.merge.base.MergeMethod` subclass in a new
file of this package, decorate it with :func:`~provenance.merge.base.register` and import the file
below; ``ledger.merge`` and ``prov merge --method`` pick it up."""

from __future__ import annotations

from provenance.merge import average, fisher, task_arithmetic, ties  # noqa: F401  (each registers itself)
from provenance.merge.base import MergeMethod, get, names, register

__all__ = ["MergeMethod", "get", "names", "register"]
