"""Hugging Face `datasets.Dataset` as a source (only when that package is installed)."""

from __future__ import annotations

import pytest

from provenance import FingerprintConfig, Ledger

datasets = pytest.importorskip("datasets")


def test_register_hf_dataset_honours_selection(tmp_path):
    ledger = Ledger.init(tmp_path)
    texts = [f"document number {i} about fingerprints and ledgers" for i in range(5)]
    ds = datasets.Dataset.from_dict({"text": texts, "id": [f"k{i}" for i in range(5)]})
    result = ledger.register_dataset("hf", ds.select([4, 1, 3]), id_field="id")
    assert result.dataset.n_documents == 3
    docs = ledger.documents("hf", columns=["key", "signature"]).to_pylist()
    assert [d["key"] for d in docs] == ["k4", "k1", "k3"]
    expected = FingerprintConfig().signatures([texts[4], texts[1], texts[3]])
    assert [d["signature"] for d in docs] == expected.tolist()
    (shard,) = ledger.shards("hf")
    assert (shard.format, shard.uri) == ("hf-dataset", None)
    again = ledger.register_dataset("hf", ds.select([4, 1, 3]), id_field="id")
    assert again.created is False
