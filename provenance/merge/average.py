"""Weighted averaging: θ* = Σᵢ λᵢ θᵢ / Σᵢ λᵢ (Fisher merging with every Fisher equal; only the weights' ratios count)."""

from __future__ import annotations

from typing import Any

from provenance.merge.base import MergeMethod, register


@register
class Average(MergeMethod):
    name = "average"
    direct = True
    weighted_mean = True

    def merge(self, thetas, *, lam, theta0=None, fishers=None, eps=1e-6, norms=None, density=0.2) -> Any:
        from provenance.kernels import merge as kernels

        return kernels.weighted_average(thetas, lam)
