"""Task arithmetic: θ* = θ₀ + Σᵢ λᵢ (θᵢ − θ₀), task vectors from a base version θ₀."""

from __future__ import annotations

from typing import Any

from provenance.merge.base import MergeMethod, register


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    needs_base = True
    direct = True

    def merge(self, thetas, *, lam, theta0=None, fishers=None, eps=1e-6, norms=None, density=0.2) -> Any:
        from provenance.kernels import merge as kernels

        return kernels.task_arithmetic(theta0, thetas, lam)
