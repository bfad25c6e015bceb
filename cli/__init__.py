"""The ``prov`` command line, importable as ``provenance.cli``."""
