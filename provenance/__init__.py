"""provenance: training-data provenance for models developed by patching and merging."""

from provenance.errors import ProvenanceError
from provenance.fingerprints import Banding, Fingerprint, FingerprintConfig

__version__ = "0.1.0"

__all__ = ["Banding", "Fingerprint", "FingerprintConfig", "ProvenanceError", "__version__"]
