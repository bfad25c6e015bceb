"""What a merge method is: a name, the inputs it needs, and the elementwise merge of one
parameter group. Each method lives in its own file and registers itself here; ``ledger.merge``
and ``prov merge --method`` take their choices from :func:`names`.

A method's file must not import torch or the kernels at import time (the CLI lists the methods
at start-up): it imports them inside :meth:`MergeMethod.merge`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from provenance.errors import InvalidParameterError


class MergeMethod:
    """One way to merge the inputs' values of a parameter group, elementwise.

    ``needs_base``: it merges task vectors from a base version (``theta0``); ``needs_fisher``:
    it weighs each input by its diagonal Fisher; ``direct``: it can merge inputs made on the fly
    from sparse or low-rank patches of one shared parent (a pure elementwise combination, so the
    patch-direct path of :mod:`provenance.merge.direct` gives the same bits); ``options``: the
    settings it records in its receipt (the others are recorded as None).
    """

    name: ClassVar[str]
    needs_base: ClassVar[bool] = False
    needs_fisher: ClassVar[bool] = False
    direct: ClassVar[bool] = False
    #: Defined for finite values only (TIES: the magnitudes decide what is kept, and a NaN would
    #: silently drop every input at its element): a merge refuses NaN or Inf in its inputs or base.
    finite_only: ClassVar[bool] = False
    #: A weighted mean (averaging, Fisher merging): the elements the kernels' running mean leaves
    #: NaN or Inf are settled from the inputs afterwards, the same in any order
    #: (:func:`provenance.kernels.merge.settle_nonfinite`).
    weighted_mean: ClassVar[bool] = False
    options: ClassVar[tuple[str, ...]] = ()

    def merge(self, thetas: list[Any], *, lam: list[float], theta0: Any = None, fishers: list[Any] | None = None,
              eps: float = 1e-6, norms: list[float] | None = None, density: float = 0.2) -> Any:
        """The merged tensor of ``thetas`` (and ``theta0``, ``fishers`` where the method needs them)."""
        raise NotImplementedError

    def receipt_options(self, **settings: Any) -> dict[str, Any]:
        """The settings as a receipt records them: the method's own, the others None."""
        return {k: (v if k in self.options else None) for k, v in settings.items()}


_REGISTRY: dict[str, MergeMethod] = {}


def register(method: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make ``method`` available by its name."""
    if method.name in _REGISTRY:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method()
    return method


def get(name: str) -> MergeMethod:
    """The registered method ``name``, or an error listing the methods there are."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidParameterError(f"unknown merge method {name!r}; one of {', '.join(names())}") from None


def names() -> list[str]:
    """The registered methods' names, in registration order."""
    return list(_REGISTRY)
