"""Glue between provenance and training frameworks, one module per framework.

Each module imports its framework when it is itself imported (``provenance.integrations.transformers``
needs ``transformers``), so ``import provenance`` never does. They use the ledger only through the
facade's verbs (:class:`provenance.api.LedgerAPI`), so a local ledger and a ledger server serve alike.
"""
