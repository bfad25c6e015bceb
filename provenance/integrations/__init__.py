"""Glue between provenance and training frameworks, one module per framework.

Each module imports its framework when it is itself imported (``provenance.integrations.transformers``
needs ``transformers``), so ``import provenance`` never does. They use the ledger only through the
facade's verbs (:class:`provenance.api.LedgerAPI`), so a local ledger and a ledger server serve alike.
"""

from __future__ import annotations

from typing import Any

from provenance.errors import InvalidParameterError

__all__ = ["registered_datasets"]


def registered_datasets(dataset: Any, who: str) -> list[str]:
    """The registered dataset a training set is, when it is a :class:`provenance.torch.RegisteredDataset`;
    else an error asking ``who``'s user to name the datasets."""
    from provenance.torch import RegisteredDataset

    if isinstance(dataset, RegisteredDataset):
        return [dataset.dataset.dataset_id]
    raise InvalidParameterError(
        f"{who}: pass datasets= (the registered datasets the training set holds); they are inferred only "
        f"from a provenance.torch.RegisteredDataset, and the training set is a {type(dataset).__name__}")
