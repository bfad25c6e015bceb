"""provenance: training-data provenance for models developed by patching and merging.

The names below are imported on first use, so that ``provenance.kernels`` (torch and Triton only)
can be imported where the rest of the stack (DuckDB, numba, Arrow) is not installed, as on a bare
GPU host.
"""

from provenance.errors import ProvenanceError

__version__ = "0.1.0"

# name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "Banding": "provenance.fingerprints", "Fingerprint": "provenance.fingerprints",
    "FingerprintConfig": "provenance.fingerprints", "Ledger": "provenance.api", "LedgerAPI": "provenance.api",
    "DatasetRecord": "provenance.records", "ShardRecord": "provenance.records",
    "DocumentRecord": "provenance.records", "VersionRecord": "provenance.records",
    "RunRecord": "provenance.records", "TagRecord": "provenance.records", "License": "provenance.records",
}

__all__ = [*_LAZY, "ProvenanceError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'provenance' has no attribute {name!r}")
