"""FingerprintConfig.to_datasketch: our signatures as datasketch LeanMinHash objects, checked against
datasketch's own MinHash built from the same shingles under both schemes."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash

from provenance.errors import FingerprintMismatchError, InvalidParameterError
from provenance.fingerprints import FingerprintConfig

TEXTS = ["The quick brown fox jumps over the lazy dog near the bank of the river",
         "The quick brown fox jumped over a lazy dog near the bank of the river", "short", ""]


@pytest.mark.parametrize("cfg", [FingerprintConfig(), FingerprintConfig(scheme="legacy", num_perm=96, seed=11, ngram=3)])
def test_to_datasketch_equals_datasketch_minhash(cfg):
    theirs = []
    for text in TEXTS:
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme=cfg.scheme, hashfunc=cfg.hashfunc)
        m.update_batch(cfg.shingles(text))
        theirs.append(m)
    for text, m in zip(TEXTS, theirs):
        ours = cfg.to_datasketch(cfg.fingerprint(text))
        assert ours == LeanMinHash(m) and (ours.seed, ours.scheme, len(ours)) == (cfg.seed, cfg.scheme, cfg.num_perm)
        for other_text, other in zip(TEXTS, theirs):
            assert ours.jaccard(other) == cfg.fingerprint(text).jaccard(cfg.fingerprint(other_text))
    assert cfg.to_datasketch(cfg.signature(TEXTS[0]).tolist()) == LeanMinHash(theirs[0])  # a stored list


def test_to_datasketch_refuses_foreign_signatures():
    cfg = FingerprintConfig()
    with pytest.raises(FingerprintMismatchError):
        cfg.to_datasketch(FingerprintConfig(seed=2).fingerprint("some text"))
    for bad in (np.zeros(64, np.uint32), np.full(128, -1), np.zeros(128)):
        with pytest.raises(InvalidParameterError, match="128 integers"):
            cfg.to_datasketch(bad)
