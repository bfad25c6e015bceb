"""Compute kernels of provenance, importable as ``provenance.kernels``.

Each kernel family lives in one module beside its reference implementation; see
``provenance.kernels.minhash`` for the CPU MinHash path.

This folder sits at the top of the repository, so a Python started there (``python -c``, a
notebook, the REPL: the working folder comes first on ``sys.path``) finds it by the plain name
``kernels``, the name of Hugging Face's kernel package, which ``transformers`` and ``peft``
import. Imported by that name, it puts the installed package in its place (or fails as that
import would), so that a model library works from the repository's folder too.
"""

if __name__ == "kernels":
    import importlib
    import os
    import sys

    _here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    del sys.modules["kernels"]
    try:
        sys.modules["kernels"] = importlib.import_module("kernels")  # what `import kernels` then returns
    finally:
        sys.path[:] = _saved
