"""Hugging Face ``datasets`` as sources: ``Dataset``, ``IterableDataset`` and ``DatasetDict`` register
directly, and :func:`provenance.integrations.hf_datasets.with_keys` gives their rows the keys the
ledger gave them."""

from __future__ import annotations

import pytest
import torch

from provenance import FingerprintConfig, Ledger
from provenance.errors import InvalidParameterError, SourceError
from provenance.integrations.hf_datasets import with_keys
from provenance.torch import track

datasets = pytest.importorskip("datasets")

TEXTS = [f"document number {i} about fingerprints, ledgers and the word {i * 13}" for i in range(12)]


def _documents(ledger: Ledger, name: str) -> list[dict]:
    return ledger.documents(name, columns=["key", "signature"]).to_pylist()


def test_register_hf_dataset_honours_selection(tmp_path):
    ledger = Ledger.init(tmp_path)
    texts = TEXTS[:5]
    ds = datasets.Dataset.from_dict({"text": texts, "id": [f"k{i}" for i in range(5)]})
    result = ledger.register_dataset("hf", ds.select([4, 1, 3]), id_field="id")
    assert result.dataset.n_documents == 3
    docs = _documents(ledger, "hf")
    assert [d["key"] for d in docs] == ["k4", "k1", "k3"]
    expected = FingerprintConfig().signatures([texts[4], texts[1], texts[3]])
    assert [d["signature"] for d in docs] == expected.tolist()
    (shard,) = ledger.shards("hf")
    assert (shard.format, shard.uri) == ("hf-dataset", None)
    again = ledger.register_dataset("hf", ds.select([4, 1, 3]), id_field="id")
    assert again.created is False


def test_a_dataset_dict_registers_one_shard_per_split_and_with_keys_names_its_rows(ledger):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS[:8]}),
                                   "test": datasets.Dataset.from_dict({"text": TEXTS[8:]})})
    ledger.register_dataset("dd", splits)
    assert [(s.name, s.n_documents, s.format) for s in ledger.shards("dd")] == [("train", 8, "hf-dataset"),
                                                                               ("test", 4, "hf-dataset")]
    keyed = with_keys(splits)
    assert isinstance(keyed, datasets.DatasetDict) and list(keyed["test"]["key"]) == ["test:0", "test:1", "test:2", "test:3"]
    docs = _documents(ledger, "dd")
    assert [d["key"] for d in docs] == list(keyed["train"]["key"]) + list(keyed["test"]["key"])
    assert [d["signature"] for d in docs] == FingerprintConfig().signatures(TEXTS).tolist()


def test_an_iterable_dataset_registers_the_same_content_as_its_dataset(ledger):
    table = datasets.Dataset.from_dict({"text": TEXTS, "n": list(range(100, 112))})
    ledger.register_dataset("mapped", table, id_field="n")

    def rows():
        for n, text in zip(range(100, 112), TEXTS):
            yield {"text": text, "n": n}

    streamed = datasets.IterableDataset.from_generator(rows)
    result = ledger.register_dataset("streamed", streamed, id_field="n")
    (mapped_shard,), (streamed_shard,) = ledger.shards("mapped"), ledger.shards("streamed")
    assert streamed_shard.shard_id == mapped_shard.shard_id  # hashed from the texts and ids, not the container
    assert result.dataset.content_hash == ledger.dataset("mapped").content_hash
    assert _documents(ledger, "streamed") == _documents(ledger, "mapped")
    assert [r["key"] for r in with_keys(streamed, id_field="n")] == [str(n) for n in range(100, 112)]
    assert list(with_keys(table, id_field="n")["key"]) == [d["key"] for d in _documents(ledger, "mapped")]
    assert [r["key"] for r in with_keys(table.to_iterable_dataset())] == [f"hf-00000:{i}" for i in range(12)]


def test_track_logs_the_keys_of_a_keyed_dataset(ledger):
    corpus = datasets.Dataset.from_dict({"text": TEXTS})
    ledger.register_dataset("corpus", corpus)
    run = ledger.start_run(base=ledger.commit({"w": torch.zeros(2)}, message="base"), datasets=["corpus"], message="r")
    loader = torch.utils.data.DataLoader(with_keys(corpus).with_format("torch"), batch_size=5)
    for _ in track(loader, run):
        pass
    run.finish()
    logged = ledger.sql("SELECT e.step, d.key FROM run_examples e JOIN documents d USING (doc_id) ORDER BY e.step, d.key"
                        ).to_pylist()
    assert [(r["step"], r["key"]) for r in logged] == sorted((i // 5, f"hf-00000:{i}") for i in range(12))


def test_bad_input_names_the_split_the_column_and_the_row(ledger):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": TEXTS})})
    with pytest.raises(SourceError, match=r"datasets.DatasetDict\['train'\]: no text column 'text'"):
        ledger.register_dataset("bad", splits)
    nulls = datasets.Dataset.from_dict({"text": TEXTS[:3] + [None] + TEXTS[4:]})
    with pytest.raises(SourceError, match="record 3: text 'text' is null"):
        ledger.register_dataset("bad", nulls)
    with pytest.raises(InvalidParameterError, match="no splits"):
        ledger.register_dataset("bad", datasets.DatasetDict({}))
    assert ledger.datasets() == []
    with pytest.raises(InvalidParameterError, match="already has a 'key' column"):
        with_keys(datasets.Dataset.from_dict({"text": TEXTS, "key": TEXTS}))
    with pytest.raises(InvalidParameterError, match="no id column 'id'"):
        with_keys(datasets.Dataset.from_dict({"text": TEXTS}), id_field="id")
    with pytest.raises(InvalidParameterError, match="Hugging Face datasets object"):
        with_keys([{"text": "x"}])


def test_with_keys_names_a_missing_id_column_of_a_stream_whose_columns_are_unknown():
    """A stream after map() does not know its columns until it streams: with_keys(id_field="doc")
    raised a bare KeyError: 'doc' at the first row. It names the column and the row's columns."""
    stream = datasets.Dataset.from_dict({"id": ["a", "b"], "text": TEXTS[:2]}).to_iterable_dataset().map(lambda r: r)
    assert stream.column_names is None
    assert [row["key"] for row in with_keys(stream, id_field="id")] == ["a", "b"]
    with pytest.raises(InvalidParameterError, match=r"^no id column 'doc' \(columns: id, text\)$"):
        list(with_keys(stream, id_field="doc"))


def test_with_keys_refuses_to_key_a_reordered_stream_by_position(ledger):
    """A streamed dataset of several shards keyed by position gave keys of other documents once
    DataLoader workers, shuffle() or split_dataset_by_node dealt out its shards (each counted
    from 0), and track() logged them: 20 distinct documents of 40 for one epoch. Those, and a
    stream already shuffled, filtered or split, are refused; one shard keyed first stays right."""
    from datasets.distributed import split_dataset_by_node

    table = datasets.Dataset.from_dict({"text": [f"document {i} of the stream, with words" for i in range(12)]})
    ledger.register_dataset("one", table.to_iterable_dataset(num_shards=1))
    assert [d["key"] for d in _documents(ledger, "one")] == [f"hf-00000:{i}" for i in range(12)]  # row i: "document i"
    one = table.to_iterable_dataset(num_shards=1)
    for stream in (with_keys(one).shuffle(seed=1, buffer_size=4), split_dataset_by_node(with_keys(one), rank=1, world_size=2)):
        rows = list(stream)
        assert rows and all(r["key"] == f"hf-00000:{int(r['text'].split()[1])}" for r in rows)
    for stream, why in ((table.to_iterable_dataset(num_shards=4), "it streams 4 shards"),
                        (one.shuffle(seed=1, buffer_size=4), "its rows already pass through"),
                        (one.filter(lambda r: True), "its rows already pass through FilteredExamplesIterable"),
                        (one.skip(2), "its rows already pass through SkipExamplesIterable"),
                        (split_dataset_by_node(one, rank=0, world_size=2), "it is already split between processes")):
        with pytest.raises(InvalidParameterError, match=f"with_keys cannot key this IterableDataset by row position: {why}"):
            with_keys(stream)
    assert [r["key"] for r in with_keys(table.to_iterable_dataset(num_shards=4).map(lambda r: {"id": r["text"][:11]}),
                                        id_field="id")][:2] == ["document 0 ", "document 1 "]


def test_a_stream_whose_rows_differ_in_type_is_refused_naming_it_and_what_to_do(ledger):
    """A stream made from a generator, with a None text or ids both numbers and strings, failed
    with pyarrow's bare "ArrowInvalid: Schema at index 1 was different", naming no dataset (the
    stream's features do not help: datasets makes a table of each row). The error says what does."""
    rows = [{"id": "a", "text": TEXTS[0]}, {"id": "b", "text": None}, {"id": "c", "text": TEXTS[2]}]
    stream = datasets.IterableDataset.from_generator(lambda: iter(rows))
    with pytest.raises(SourceError, match=r"^datasets.IterableDataset generator: its rows cannot be read as Arrow "
                                          r"batches \(Schema at index 1 was different: id: string text: string vs id: "
                                          r"string text: null\): a column's type differs from row to row .*drop or "
                                          r"fill such rows \(stream.filter\(lambda row: row\['text'\] is not None\)\)"):
        ledger.register_dataset("mixed", stream)
    numbers_and_strings = [{"id": 1, "text": TEXTS[0]}, {"id": "x", "text": TEXTS[1]}]
    mixed_ids = datasets.IterableDatasetDict({"train": datasets.IterableDataset.from_generator(
        lambda: iter(numbers_and_strings))})
    with pytest.raises(SourceError, match=r"^datasets.IterableDatasetDict\['train'\]: its rows cannot be read"):
        ledger.register_dataset("mixed", mixed_ids, id_field="id")
    assert ledger.datasets() == []
    kept = ledger.register_dataset("mixed", stream.filter(lambda row: row["text"] is not None), id_field="id")
    assert kept.dataset.n_documents == 2  # what the message says to do works
    fixed = ledger.register_dataset("ids", mixed_ids["train"].map(lambda row: {"id": str(row["id"])}), id_field="id")
    assert [d["key"] for d in _documents(ledger, "ids")] == ["1", "x"] and fixed.dataset.n_documents == 2


def test_with_keys_refuses_a_column_name_and_ids_that_registration_would_refuse():
    """with_keys(ds, column=None) added a column named 'None', and column='' one named ''; an id
    column of floats gave keys '1' and '2.5' and one with a None id the key None, where
    registration refuses both: the keys named no document, found only when a run logged them."""
    data = datasets.Dataset.from_dict({"id": ["a", "b"], "text": TEXTS[:2]})
    for column in (None, "", 3):
        with pytest.raises(InvalidParameterError, match=f"column must name the column to add, got {column!r}"):
            with_keys(data, column=column)
    with pytest.raises(InvalidParameterError, match="id_field must name a column, got 5"):
        with_keys(data, id_field=5)
    floats = datasets.Dataset.from_dict({"id": [1.0, 2.5], "text": TEXTS[:2]})
    with pytest.raises(InvalidParameterError, match="id column 'id' has type double; ids must be strings or integers"):
        with_keys(floats, id_field="id")
    missing = datasets.Dataset.from_dict({"id": ["a", None, "c"], "text": TEXTS[:3]})
    with pytest.raises(InvalidParameterError, match=r"id column 'id': row 1 has no id \(None\)"):
        with_keys(missing, id_field="id")
    assert with_keys(data, id_field="id", column="doc")["doc"] == ["a", "b"]
    assert list(with_keys(datasets.Dataset.from_dict({"n": [7, 2**40], "text": TEXTS[:2]}), id_field="n")["key"]) == [
        "7", "1099511627776"]


def test_with_keys_refuses_stream_ids_that_registration_would_refuse():
    """A stream keyed by id_field gave a None id the key 'None', a float 1.0 the key '1.0' and a
    bool the key 'True', where registration refuses them (and a Dataset's with_keys does): the keys
    named no document, found only when a run logged them. Refused, naming the row; a NumPy
    integer id, which a map() may give, is its decimal string as registration reads it."""
    import numpy as np

    def stream(ids):
        return datasets.IterableDataset.from_generator(lambda: iter([{"id": i, "text": t} for i, t in zip(ids, TEXTS)]))

    with pytest.raises(InvalidParameterError, match=r"^id column 'id': row 2 of the stream has no id \(None\); every "):
        list(with_keys(stream(["a", "b", None]), id_field="id"))
    for ids, shown in (([1.0, 2.5], r"1\.0 \(float\)"), ([True, False], r"True \(bool\)")):
        with pytest.raises(InvalidParameterError, match=rf"id column 'id': row 0 of the stream has id {shown}; ids must be "
                                                         "strings or integers"):
            list(with_keys(stream(ids), id_field="id"))
    numpy_ids = stream([1, 2]).map(lambda row: {"id": np.int64(row["id"] * 10)})
    assert [r["key"] for r in with_keys(numpy_ids, id_field="id")] == ["10", "20"]
    assert [r["key"] for r in with_keys(stream(["a", 7]), id_field="id")] == ["a", "7"]


def test_a_save_to_disk_folder_is_refused_saying_how_to_register_it(ledger, tmp_path):
    """A folder that datasets' save_to_disk wrote, given as a source, was refused as
    "data-00000-of-00001.arrow: unknown file type" with no way forward. The message says how to
    register it, and that way works."""
    data = datasets.Dataset.from_dict({"id": [f"a{i}" for i in range(4)], "text": TEXTS[:4]})
    data.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "splits"))
    for folder, first in (("saved", "data-00000-of-00001.arrow"), ("splits", "dataset_dict.json")):
        with pytest.raises(SourceError, match=rf"{first}: unknown file type; supported: .*; the folder is a Hugging Face "
                                              r"dataset written by save_to_disk: register it from Python as "
                                              r"ledger.register_dataset\(NAME, datasets.load_from_disk\(FOLDER\)\)"):
            ledger.register_dataset("saved", tmp_path / folder, id_field="id")
    assert ledger.datasets() == []
    ledger.register_dataset("saved", datasets.load_from_disk(str(tmp_path / "saved")), id_field="id")
    assert [d["key"] for d in _documents(ledger, "saved")] == ["a0", "a1", "a2", "a3"]
