"""Shared fixtures: an empty ledger in a temporary folder and a tiny synthetic corpus on disk.

Everything is generated locally; nothing touches the network or needs a GPU.
"""

from __future__ import annotations

import os
import sys

import torch

# Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter, which must be
# switched on before any kernel is defined (that is, before provenance.kernels imports Triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from provenance import Ledger
from provenance.synthetic import Corpus, generate_corpus


def pytest_configure(config: pytest.Config) -> None:
    """Keep the repository root on sys.path, but last. pytest puts it first (for the ``tests``
    package), as ``python -m pytest`` does the current folder; there its kernels/ folder
    (installed as provenance.kernels) shadows the ``kernels`` distribution that transformers
    (5.25 and later) requires and imports. Runs before any test module is imported."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for entry in [p for p in sys.path if os.path.abspath(p or os.curdir) == root]:
        sys.path.remove(entry)
    sys.path.append(root)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """An empty ledger at ``tmp_path/.prov``."""
    return Ledger.init(tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder for source files, beside (not inside) the ledger."""
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    """40 short documents, a fifth of them planted near-copies of earlier ones."""
    return generate_corpus(40, mean_words=60, dup_fraction=0.2, mutation=0.05, seed=3)


@pytest.fixture
def corpus_jsonl(corpus: Corpus, data_dir: Path) -> Path:
    return corpus.write_jsonl(data_dir / "corpus.jsonl")


@pytest.fixture
def write_jsonl() -> Callable[..., Path]:
    """``write_jsonl(path, records)``: one JSON object per line, UTF-8."""

    def write(path: Path, records: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return path

    return write


@pytest.fixture
def ledger_state() -> Callable[[Ledger], tuple]:
    """``ledger_state(ledger)``: everything a failed registration must leave as it was, staging
    files included (a registration stages document rows under ``.prov/tmp/staging``)."""

    def state(ledger: Ledger) -> tuple:
        counts = ledger.sql(
            """SELECT (SELECT count(*) FROM documents) AS documents,
                      (SELECT count(*) FROM shards) AS shards,
                      (SELECT count(*) FROM datasets) AS datasets,
                      (SELECT count(*) FROM fingerprint_configs) AS configs"""
        ).to_pylist()[0]
        staging = ledger.root / "tmp" / "staging"
        staged = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        return ledger.summary(), counts, staged

    return state
