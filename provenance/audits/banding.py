"""The banding an audit at a threshold uses, and the threshold itself checked: the most rows per
band such that a pair at the threshold is a candidate with probability at least
:data:`MIN_RECALL` (:mod:`provenance.audits`)."""

from __future__ import annotations

import math

from provenance.errors import InvalidParameterError
from provenance.fingerprints import Banding

MIN_RECALL = 0.99  # probability that a pair at the threshold becomes a candidate


def check_threshold(value: float, name: str = "threshold") -> float:
    """``value`` as a float in (0, 1], or an error naming ``name`` (a string is not taken as the
    number it spells: ``threshold="0.8"`` is a mistake somewhere, as a local call and a server's
    request model both say)."""
    try:
        if isinstance(value, (str, bytes, bool)):
            raise TypeError(type(value).__name__)
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < t <= 1.0 or math.isnan(t):
        raise InvalidParameterError(f"{name} must be in (0, 1], got {value!r}")
    return t


def banding_for(num_perm: int, threshold: float) -> Banding:
    """The banding an audit at ``threshold`` uses (module doc); one band of every position at 1."""
    if threshold >= 1.0:
        return Banding(bands=1, rows=num_perm)
    return Banding.for_threshold(num_perm, threshold, MIN_RECALL)


def s_curve(banding: Banding, steps: int = 40) -> list[list[float]]:
    """``[similarity, P(candidate)]`` over [0, 1]: the S-curve of ``banding``."""
    return [[i / steps, banding.probability(i / steps)] for i in range(steps + 1)]
