"""The codes shared by the MinHash kernels (:mod:`provenance.kernels.minhash`) and the Python
code that prepares their inputs (:mod:`provenance.fingerprints`), in a module without numba: a
command that fingerprints nothing does not import numba (0.15–0.2 s) to read them."""

CLASS_SPACE = 0  # whitespace: a word break, and a boundary for NFKC and for lower-casing
CLASS_SIMPLE = 1  # NFKC keeps it; lower-cases alone to one code point of the same UTF-8 length
CLASS_COMPLEX = 2  # NFKC or lower-casing depends on the word around it
CLASS_SIGMA = 3  # complex, and lower-casing looks past punctuation (capital sigma's final form)
CLASS_PUNCT = 4  # punctuation: a word break and an NFKC boundary

SCHEME_AFFINE32 = 0
SCHEME_LEGACY = 1
