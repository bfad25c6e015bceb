"""SQL migrations and generated JSON Schemas of provenance, importable as ``provenance.schemas``."""
