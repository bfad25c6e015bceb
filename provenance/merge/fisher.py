"""Fisher merging (Matena & Raffel 2022): each element weighted by each input's diagonal Fisher,
θ* = Σᵢ λᵢ Fᵢ θᵢ / Σᵢ λᵢ Fᵢ, with a floor ``eps`` on the Fisher and optionally each input's Fisher
divided by its L2 norm."""

from __future__ import annotations

from typing import Any

from provenance.merge.base import MergeMethod, register


@register
class Fisher(MergeMethod):
    name = "fisher"
    needs_fisher = True
    weighted_mean = True
    direct = True
    options = ("eps", "normalize")

    def merge(self, thetas, *, lam, theta0=None, fishers=None, eps=1e-6, norms=None, density=0.2) -> Any:
        from provenance.kernels import merge as kernels

        return kernels.fisher_merge(thetas, fishers, lam, eps=eps, norms=norms)
