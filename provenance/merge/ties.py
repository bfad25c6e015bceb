"""TIES merging: each task vector trimmed to its ``density`` largest magnitudes, a sign elected
per element, and only the values that agree with it averaged. Not elementwise in the inputs alone
(the trim looks at each whole task vector), so it takes no patch-direct path."""

from __future__ import annotations

from typing import Any

from provenance.merge.base import MergeMethod, register


@register
class Ties(MergeMethod):
    name = "ties"
    needs_base = True
    finite_only = True
    options = ("density",)

    def merge(self, thetas, *, lam, theta0=None, fishers=None, eps=1e-6, norms=None, density=0.2) -> Any:
        from provenance.kernels import merge as kernels

        return kernels.ties(theta0, thetas, lam, density=density)
