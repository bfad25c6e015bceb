"""provenance: training-data provenance for models developed by patching and merging.

The names below are imported on first use, so that ``provenance.kernels`` (torch and Triton only)
can be imported where the rest of the stack (DuckDB, numba, Arrow) is not installed, as on a bare
GPU host.
"""

from provenance.errors import ProvenanceError

__version__ = "0.1.0"

__all__ = ["Banding", "Fingerprint", "FingerprintConfig", "ProvenanceError", "__version__"]


def __getattr__(name: str):
    if name in ("Banding", "Fingerprint", "FingerprintConfig"):
        from provenance import fingerprints

        return getattr(fingerprints, name)
    raise AttributeError(f"module 'provenance' has no attribute {name!r}")
