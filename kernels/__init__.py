"""Compute kernels of provenance, importable as ``provenance.kernels``.

Each kernel family lives in one module beside its reference implementation; see
``provenance.kernels.minhash`` for the CPU MinHash path.
"""
