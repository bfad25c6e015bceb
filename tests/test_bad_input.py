"""Bad input: every failure is a SourceError (or InvalidParameterError) naming the file and line
(or record, or row), and the ledger is left exactly as it was."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from provenance.errors import InvalidParameterError, SourceError
from provenance.fingerprints import FingerprintConfig
from provenance.synthetic import iter_jsonl_lines

GOOD = [{"id": f"g{i}", "text": f"a good document number {i} with some words"} for i in range(4)]


@pytest.fixture
def populated(ledger, data_dir, write_jsonl, ledger_state):
    """A ledger holding one dataset ``good@1``; yields a check that nothing changed since."""
    ledger.register_dataset("good", write_jsonl(data_dir / "good.jsonl", GOOD), id_field="id")
    before = ledger_state(ledger)

    def unchanged() -> None:
        assert ledger_state(ledger) == before
        assert [d.dataset_id for d in ledger.datasets(all_versions=True)] == ["good@1"]

    return ledger, unchanged


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def refused(ledger, name: str, sources, error=SourceError, **options) -> str:
    with pytest.raises(error) as info:
        ledger.register_dataset(name, sources, **options)
    return str(info.value)


# -- JSONL content ------------------------------------------------------------------------------


def test_invalid_utf8_names_file_and_line(populated, data_dir):
    ledger, unchanged = populated
    path = write_lines(data_dir / "bad.jsonl", [b'{"text": "fine"}', b"", b'{"text": "bad \xff byte"}', b'{"text": "ok"}'])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}:3: invalid UTF-8 at byte 14 of the line")
    assert "replace or skip" in message
    unchanged()


def test_invalid_utf8_replace_and_skip_are_counted(populated, data_dir):
    ledger, unchanged = populated
    path = write_lines(data_dir / "bad.jsonl", [b'{"text": "fine words"}', b'{"text": "bad \xff byte"}', b'{"text": "ok"}'])

    replaced = ledger.register_dataset("replaced", path, on_invalid="replace").dataset
    assert (replaced.n_documents, replaced.n_invalid_replaced, replaced.n_invalid_skipped) == (3, 1, 0)
    rows = ledger.documents("replaced").to_pylist()
    assert [r["line"] for r in rows] == [1, 2, 3]
    cfg = FingerprintConfig()
    assert rows[1]["signature"] == cfg.signature("bad \ufffd byte").tolist()
    assert rows[1]["n_bytes"] == len("bad \ufffd byte".encode())

    skipped = ledger.register_dataset("skipped", path, on_invalid="skip")
    ds = skipped.dataset
    assert (ds.n_documents, ds.n_invalid_replaced, ds.n_invalid_skipped) == (2, 0, 1)
    assert skipped.message.endswith("(1 invalid record skipped)")
    rows = ledger.documents("skipped").to_pylist()
    # Record indices count the skipped line, so keys do not shift when a line goes bad.
    assert [(r["key"], r["row_index"], r["line"]) for r in rows] == [("bad.jsonl:0", 0, 1), ("bad.jsonl:2", 2, 3)]
    assert ledger.dataset("good@1").n_documents == 4


def test_unpaired_surrogate_escape(populated, data_dir):
    ledger, unchanged = populated
    path = write_lines(data_dir / "sur.jsonl", [b'{"text": "fine"}', b'{"text": "lone \\ud800 surrogate"}'])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}:2: text holds an unpaired surrogate at character 5")
    unchanged()

    ds = ledger.register_dataset("sur", path, on_invalid="replace").dataset
    assert (ds.n_documents, ds.n_invalid_replaced) == (2, 1)
    stored = ledger.documents("sur").to_pylist()[1]
    assert stored["signature"] == FingerprintConfig().signature("lone \ufffd surrogate").tolist()
    assert ledger.register_dataset("sur-skip", path, on_invalid="skip").dataset.n_invalid_skipped == 1


def test_a_record_with_a_bad_byte_and_a_lone_surrogate_is_repaired_once(populated, data_dir):
    """A line with both faults is one invalid record (it was counted twice: "2 invalid records repaired" of 1)."""
    ledger, _ = populated
    path = write_lines(data_dir / "both.jsonl", [b'{"text": "bad \xff and \\ud800 lone", "id": "\\udc00"}',
                                                 b'{"text": "fine words", "id": "b"}'])
    result = ledger.register_dataset("both", path, id_field="id", on_invalid="replace")
    ds = result.dataset
    assert (ds.n_documents, ds.n_invalid_replaced, ds.n_invalid_skipped) == (2, 1, 0)
    assert result.message.endswith("(1 invalid record repaired)")
    stored = ledger.documents("both").to_pylist()[0]
    assert stored["key"] == "\ufffd"
    assert stored["signature"] == FingerprintConfig().signature("bad \ufffd and \ufffd lone").tolist()
    skipped = ledger.register_dataset("both-skip", path, id_field="id", on_invalid="skip").dataset
    assert (skipped.n_documents, skipped.n_invalid_replaced, skipped.n_invalid_skipped) == (1, 0, 1)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"text": "unterminated}', ":2: malformed JSON at column 10: Unterminated string"),
        (b'{"text": "a",}', ":2: malformed JSON at column"),  # the text differs between Pythons
        (b'{"text": "tab\there"}', ":2: malformed JSON at column 14: Invalid control character"),
        (b'{"body": "x", "id": 1}', ":2: no text field 'text' (fields: body, id)"),
        (b'{"text": null}', ":2: text field 'text' is null, expected a string"),
        (b'{"text": 12}', ":2: text field 'text' is int, expected a string"),
        (b'{"text": ["a"]}', ":2: text field 'text' is list, expected a string"),
        (b'["not", "an", "object"]', ":2: expected a JSON object, got list"),
        (b'"just a string"', ":2: expected a JSON object, got str"),
        (b'null', ":2: expected a JSON object, got null"),
        (b'{"text": "x", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         ":2: the record nests its JSON too deeply to be read"),  # a RecursionError traceback, exit 1
        (b'{"text": "a"}\r{"text": "b"}',  # lines ended by CR alone: it said "Extra data" and no more
         ":2: malformed JSON at column 15: Extra data; the line holds a carriage return (\\r): are the lines ended by "
         "\\r alone? JSONL ends them by \\n"),
    ],
    ids=["unterminated", "trailing-comma", "control-character", "missing-text", "null-text", "number-text", "list-text",
         "array", "string", "null", "deep", "carriage-returns"],
)
def test_bad_jsonl_line_names_file_and_line(populated, data_dir, line, expected):
    ledger, unchanged = populated
    path = write_lines(data_dir / "bad.jsonl", [b'{"text": "fine"}', line, b'{"text": "after"}'])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}{expected}"), message
    if "JSON at column " in expected:  # the whole message: json's "... starting at" would dangle
        assert message == f"{path}{expected}"
    unchanged()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"text": "x"}, "no id field 'id' (fields: text)"),
        ({"id": None, "text": "x"}, "id field 'id' is null, expected a string or number"),
        ({"id": ["a"], "text": "x"}, "id field 'id' is list, expected a string or number"),
        ({"id": True, "text": "x"}, "id field 'id' is bool, expected a string or number"),
        ({"id": "", "text": "x"}, "id field 'id' is empty: every document needs a key"),
    ],
)
def test_bad_id_names_file_and_line(populated, data_dir, write_jsonl, record, expected):
    ledger, unchanged = populated
    path = write_jsonl(data_dir / "ids.jsonl", [{"id": "fine", "text": "ok"}, record])
    message = refused(ledger, "good", path, id_field="id")
    assert message == f"{path}:2: {expected}"
    unchanged()


def test_ids_past_64_bits_keep_their_digits_and_nan_is_refused(populated, data_dir):
    """orjson reads an integer past 64 bits as a float: ids 2**64 and 2**64 + 1 were one key
    ('1.8446744073709552e+19', refused as a duplicate), and a 30-digit id was stored rounded. NaN
    (which Python's json writes) was stored as the key 'nan'."""
    ledger, unchanged = populated
    path = write_lines(data_dir / "big.jsonl", [b'{"id": 18446744073709551616, "text": "first"}',
                                                b'{"id": 18446744073709551617, "text": "second"}',
                                                b'{"id": 123456789012345678901234567890, "text": "third"}',
                                                b'{"id": 1.5, "text": "fourth"}', b'{"id": 7, "text": "fifth"}'])
    ledger.register_dataset("big", path, id_field="id")
    keys = ledger.sql("SELECT key FROM documents WHERE dataset_id = 'big@1' ORDER BY row_index").column("key").to_pylist()
    assert keys == ["18446744073709551616", "18446744073709551617", "123456789012345678901234567890", "1.5", "7"]
    assert ledger.document("big@1", "123456789012345678901234567890").key == "123456789012345678901234567890"
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        bad = write_lines(data_dir / "nan.jsonl", [b'{"id": "a", "text": "x"}', b'{"id": ' + literal + b', "text": "y"}'])
        value = {b"NaN": "nan", b"Infinity": "inf", b"-Infinity": "-inf"}[literal]
        assert refused(ledger, "good", bad, id_field="id") == f"{bad}:2: id field 'id' is {value}: not a value a key can be"


def test_records_and_tables_refuse_the_ids_a_jsonl_file_may_not_hold(populated, data_dir):
    """NaN, infinities and "" are refused as ids from a JSONL file; records in memory stored them as
    the keys 'nan', 'inf' and '', and an Arrow table or Parquet file stored ''."""
    ledger, unchanged = populated
    for value, said in ((float("nan"), "is nan: not a value a key can be"), (float("-inf"), "is -inf: not a value a key can be"),
                        ("", "is empty: every document needs a key")):
        records = [{"id": "a", "text": "x"}, {"id": value, "text": "y"}]
        assert refused(ledger, "good", records, id_field="id") == f"records[batch-00000]: record 1: id field 'id' {said}"
    table = pa.table({"id": ["a", "", "c"], "text": ["x", "y", "z"]})
    assert refused(ledger, "good", table, id_field="id") == "arrow table: record 1: id 'id' is empty: every document needs a key"
    pq.write_table(table, data_dir / "empty-id.parquet")
    assert refused(ledger, "good", data_dir / "empty-id.parquet", id_field="id") == (
        f"{data_dir / 'empty-id.parquet'}: row 1: id column 'id' is empty: every document needs a key")
    unchanged()


def test_records_of_numpy_strings_register_as_plain_ones(populated):
    """Iterating a numpy array of strings gives numpy's str_, a str: it was refused as "text field 'text' is str_,
    expected a string". A numpy bool id is refused as a Python bool is (it was stored as the key 'True')."""
    ledger, unchanged = populated
    texts = np.array(["numpy text number one", "numpy text number two"])
    ids = np.array(["n1", "n2"])
    result = ledger.register_dataset("numpy", [{"id": i, "text": t} for i, t in zip(ids, texts)], id_field="id")
    plain = ledger.register_dataset("plain", [{"id": str(i), "text": str(t)} for i, t in zip(ids, texts)], id_field="id")
    assert result.dataset.n_documents == 2
    assert result.dataset.content_hash == plain.dataset.content_hash
    assert [r["key"] for r in ledger.documents("numpy").to_pylist()] == ["n1", "n2"]
    before = ledger.datasets(all_versions=True)
    assert refused(ledger, "flags", [{"id": np.bool_(True), "text": "x"}], id_field="id") == (
        "records[batch-00000]: record 0: id field 'id' is bool, expected a string or number")
    assert ledger.datasets(all_versions=True) == before


def test_empty_file(populated, data_dir, write_jsonl):
    ledger, unchanged = populated
    write_jsonl(data_dir / "a.jsonl", GOOD[:1])
    (data_dir / "b.jsonl").write_bytes(b"")
    assert refused(ledger, "good", data_dir / "b.jsonl") == f"{data_dir / 'b.jsonl'}: file is empty"
    assert refused(ledger, "good", data_dir) == f"{data_dir / 'b.jsonl'}: file is empty"  # one of a folder
    unchanged()


def test_file_of_blank_lines(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "blank.jsonl"
    path.write_bytes(b"\n   \n\t\n\r\n")
    assert refused(ledger, "good", path) == f"{path}: no documents (the file holds only blank lines)"
    unchanged()


def test_tables_of_no_rows_are_refused(populated):
    ledger, unchanged = populated
    empty = pa.table({"text": pa.array([], pa.string())})
    assert refused(ledger, "good", empty) == "no documents to register: table-00000 holds no records"  # (it said "hold")
    assert refused(ledger, "good", [empty, empty]) == "no documents to register: table-00000, table-00001 hold no records"
    unchanged()


def test_compressed_file_of_nothing(populated, data_dir):
    """A .gz or .zst whose data decompresses to no bytes was said to hold "only blank lines"."""
    ledger, unchanged = populated
    for path, data in ((data_dir / "nothing.jsonl.gz", gzip.compress(b"")),
                       (data_dir / "nothing.jsonl.zst", zstandard.ZstdCompressor().compress(b""))):
        path.write_bytes(data)
        assert refused(ledger, "good", path) == f"{path}: no documents (the file's compressed data decompresses to nothing)"
    path = data_dir / "blank.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n\n"))
    assert refused(ledger, "good", path) == f"{path}: no documents (the file holds only blank lines)"
    unchanged()


def test_every_line_skipped(populated, data_dir):
    ledger, unchanged = populated
    path = write_lines(data_dir / "all-bad.jsonl", [b'{"text": "\xff"}', b'{"text": "\xfe"}'])
    message = refused(ledger, "good", path, on_invalid="skip")
    assert message.startswith("no documents to register")
    assert "2 records" in message and "all-bad.jsonl" in message and "skipped" in message
    unchanged()


# -- duplicate ids -------------------------------------------------------------------------------


def test_duplicate_id_within_a_file(populated, data_dir, write_jsonl):
    ledger, unchanged = populated
    path = data_dir / "dup.jsonl"
    path.write_text(
        '{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n\n{"id": "a", "text": "three"}\n', encoding="utf-8"
    )
    message = refused(ledger, "good", path, id_field="id")
    assert message.startswith("duplicate document id")
    assert "'a'" in message and "dup.jsonl line 1" in message and "dup.jsonl line 4" in message
    assert "'b'" not in message
    unchanged()


def test_duplicate_ids_across_two_files(populated, data_dir, write_jsonl):
    ledger, unchanged = populated
    (data_dir / "parts").mkdir()
    write_jsonl(data_dir / "parts" / "a.jsonl", [{"id": "x", "text": "1"}, {"id": "q", "text": "2"}, {"id": 7, "text": "3"}])
    write_jsonl(data_dir / "parts" / "b.jsonl", [{"id": "z", "text": "4"}, {"id": "q", "text": "5"}, {"id": "7", "text": "6"}])
    message = refused(ledger, "good", data_dir / "parts", id_field="id")
    assert message.startswith("duplicate document id")
    # The first duplicated id in key order ('7' < 'q'), both places, and a count of the others.
    assert "'7'" in message and "a.jsonl line 3" in message and "b.jsonl line 3" in message
    assert "1 more" in message and "'q'" not in message
    unchanged()


def test_an_id_held_three_times_is_counted(populated, data_dir, write_jsonl):
    """An id in three files was said to occur "twice", at the first and the last place (found by
    stranger pass 41)."""
    ledger, unchanged = populated
    (data_dir / "thrice").mkdir()
    for part in "abc":
        write_jsonl(data_dir / "thrice" / f"{part}.jsonl", [{"id": "same", "text": f"doc of {part}"}])
    message = refused(ledger, "good", data_dir / "thrice", id_field="id")
    assert message == ("duplicate document id: id field 'id' holds 'same' 3 times, first at a.jsonl line 1 and last "
                       "at c.jsonl line 1; ids must be unique within a dataset")
    unchanged()


def test_duplicate_ids_in_records(populated):
    ledger, unchanged = populated
    records = [{"id": "r", "text": "1"}, {"id": "s", "text": "2"}, {"id": "r", "text": "3"}]
    message = refused(ledger, "good", records, id_field="id")
    assert message.startswith("duplicate document id")
    assert "'r'" in message and "batch-00000 record 0" in message and "batch-00000 record 2" in message
    unchanged()


def test_duplicate_ids_in_a_parquet_file_are_placed_by_row(populated, data_dir):
    """A Parquet file's null id is refused at "row N"; its duplicate ids were placed at "record N"
    (found by stranger pass 32): both now say row, counted as the null message counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ledger, unchanged = populated
    path = data_dir / "dup.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["one", "two", "three"]}), path)
    message = refused(ledger, "good", path, id_field="id")
    assert "'a'" in message and "dup.parquet row 0" in message and "dup.parquet row 2" in message
    pq.write_table(pa.table({"id": ["a", "b", None], "text": ["one", "two", "three"]}), path)
    assert "dup.parquet: row 2: id column 'id' is null" in refused(ledger, "good", path, id_field="id")
    unchanged()


# -- files that cannot be read -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_utf16_file_is_named_as_such_under_every_policy(populated, data_dir, encoding, suffix):
    """A UTF-16 file (as Windows tools write) said "invalid UTF-8 at byte 0", and with
    on_invalid="replace" a text file registered its characters as U+FFFD and NULs."""
    ledger, unchanged = populated
    path = data_dir / f"wide{suffix}"
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")
    path.write_bytes((bom + '{"text": "hello there"}\n').encode(encoding))
    for policy in ("error", "replace", "skip"):
        message = refused(ledger, "good", path, on_invalid=policy)
        assert message == (f"{path}: the file is UTF-16 (or UTF-32) text, by the byte order mark it starts with; "
                           "sources are read as UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)"), message
    unchanged()


def test_unknown_file_type(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "table.csv"
    path.write_text("text\nhello\n")
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: unknown file type; supported: .jsonl")
    unchanged()


@pytest.mark.parametrize("kind", ["Dataset", "DatasetDict"])
def test_a_folder_saved_by_hugging_face_datasets_says_how_to_register_it(populated, data_dir, kind):
    """A folder ``datasets``' save_to_disk wrote was refused as ``data-00000-of-00001.arrow: unknown
    file type`` (or ``dataset_dict.json``), with no word of load_from_disk."""
    ledger, unchanged = populated
    saved = data_dir / "saved"
    split = saved / "train" if kind == "DatasetDict" else saved
    split.mkdir(parents=True)
    (split / "data-00000-of-00001.arrow").write_bytes(b"arrow stream bytes")
    (split / "dataset_info.json").write_text("{}")
    (split / "state.json").write_text("{}")
    if kind == "DatasetDict":
        (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    first = saved / "dataset_dict.json" if kind == "DatasetDict" else split / "data-00000-of-00001.arrow"
    message = refused(ledger, "good", saved)
    assert message.startswith(f"{first}: unknown file type; supported: .jsonl"), message
    assert message.endswith("; the folder is a Hugging Face dataset written by save_to_disk: register it from Python "
                            "as ledger.register_dataset(NAME, datasets.load_from_disk(FOLDER)) (docs/hugging-face.md)")
    unchanged()


def test_truncated_parquet(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "cut.parquet"
    pq.write_table(pa.table({"text": [f"row {i} of a table" for i in range(2000)]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: not a readable Parquet file")
    unchanged()


def test_garbage_parquet(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "garbage.parquet"
    path.write_bytes(b"PAR1" + np.random.default_rng(0).bytes(300) + b"PAR1")
    assert refused(ledger, "good", path).startswith(f"{path}: not a readable Parquet file")
    path.write_bytes(b"this is not parquet at all")
    assert refused(ledger, "good", path).startswith(f"{path}: not a readable Parquet file")
    unchanged()


def test_parquet_without_text_column(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "cols.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), path)
    assert refused(ledger, "good", path) == f"{path}: no text column 'text' (columns: body, n)"
    unchanged()


def test_a_column_that_is_both_text_and_id_is_read_once(populated, data_dir, write_jsonl):
    """The text's field may be the id's: a Parquet file and an Arrow table register it as a JSONL file does
    (the Parquet reader asked for the column once and read the id from a second column that was not there:
    IndexError)."""
    ledger, _ = populated
    rows = [{"id": "alpha beta gamma"}, {"id": "delta epsilon"}]
    path = data_dir / "ids.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in rows]}), path)
    keys = set()
    for name, source in (("pq", path), ("arrow", pa.table({"id": [r["id"] for r in rows]})),
                         ("jsonl", write_jsonl(data_dir / "ids.jsonl", rows))):
        result = ledger.register_dataset(name, source, text_field="id", id_field="id")
        assert result.dataset.n_documents == 2
        docs = ledger.sql("SELECT key, token_count FROM documents WHERE dataset_id = ? ORDER BY key",
                          [result.dataset.dataset_id]).to_pylist()
        keys.add(tuple((d["key"], d["token_count"]) for d in docs))
    assert keys == {(("alpha beta gamma", 3), ("delta epsilon", 2))}


def test_a_column_named_twice_is_refused(populated, data_dir):
    """Two columns of one name: which holds the text is unclear (a Parquet file's first one was read and
    the other ignored; an Arrow table raised KeyError)."""
    ledger, unchanged = populated
    table = pa.table([pa.array(["one text"]), pa.array(["another text"]), pa.array(["k"])], names=["text", "text", "id"])
    path = data_dir / "twice.parquet"
    pq.write_table(table, path)
    expected = "2 columns are named 'text': which holds the text is unclear; rename or drop the others"
    assert refused(ledger, "good", path) == f"{path}: {expected}"
    assert refused(ledger, "good", table) == f"arrow table: {expected}"
    table = pa.table([pa.array(["one text"]), pa.array(["k"]), pa.array(["j"])], names=["text", "id", "id"])
    assert refused(ledger, "good", table, id_field="id") == (
        "arrow table: 2 columns are named 'id': which holds the id is unclear; rename or drop the others")
    unchanged()


def test_parquet_null_text_names_the_row(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), path)
    assert refused(ledger, "good", path) == f"{path}: row 2: text column 'text' is null"
    unchanged()


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string array holding the given bytes unchecked (as a buggy writer could produce)."""
    raw = pa.array(values, type=pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def test_parquet_invalid_utf8_names_the_row(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "inv.parquet"
    pq.write_table(pa.table({"text": _invalid_utf8_strings([b"good text", b"bad \xff text", b"more"])}), path)
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: row 1: invalid UTF-8 at byte 4 of the text")
    unchanged()

    replaced = ledger.register_dataset("replaced", path, on_invalid="replace").dataset
    assert (replaced.n_documents, replaced.n_invalid_replaced) == (3, 1)
    row = ledger.documents("replaced").to_pylist()[1]
    assert row["signature"] == FingerprintConfig().signature("bad \ufffd text").tolist()
    skipped = ledger.register_dataset("skipped", path, on_invalid="skip").dataset
    assert (skipped.n_documents, skipped.n_invalid_skipped) == (2, 1)
    assert [r["key"] for r in ledger.documents("skipped").to_pylist()] == ["inv.parquet:0", "inv.parquet:2"]


_INVALID_TABLE_CHILD = """
import sys
import pyarrow as pa
from provenance.errors import SourceError
from provenance import Ledger

raw = pa.array([b"good text", b"bad \\xff"], type=pa.binary())
table = pa.table({"text": pa.Array.from_buffers(pa.string(), 2, raw.buffers())})
try:
    Ledger.open(sys.argv[1]).register_dataset("good", table)
except SourceError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


def test_arrow_table_with_invalid_utf8_names_the_record(populated):
    ledger, unchanged = populated
    # In a child process, because today the unchecked bytes can crash the interpreter.
    child = subprocess.run(
        [sys.executable, "-c", _INVALID_TABLE_CHILD, str(ledger.root)], capture_output=True, text=True, timeout=300
    )
    unchanged()
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("refused: arrow table: record 1: invalid UTF-8"), child.stdout


def test_jsonl_with_byte_order_mark_is_read(populated, data_dir):
    ledger, _ = populated
    path = write_lines(data_dir / "bom.jsonl", [b'\xef\xbb\xbf{"text": "x"}', b'{"text": "y"}'])
    ds = ledger.register_dataset("bom", path).dataset
    assert ds.n_documents == 2
    docs = ledger.documents("bom", columns=["key", "line", "n_bytes"]).to_pylist()
    assert docs == [{"key": "bom.jsonl:0", "line": 1, "n_bytes": 1}, {"key": "bom.jsonl:1", "line": 2, "n_bytes": 1}]
    # A BOM anywhere else is not a BOM: that line is malformed.
    late = write_lines(data_dir / "late.jsonl", [b'{"text": "x"}', b'\xef\xbb\xbf{"text": "y"}'])
    assert refused(ledger, "late", late).startswith(f"{late}:2: malformed JSON at column 1")


def test_a_byte_order_mark_is_not_text_in_text_files_and_samples(populated, data_dir):
    """A .txt document and a samples file that start with a UTF-8 BOM read as the same text
    without it: the same exact hash, so dedup and memorization see them as equal."""
    from provenance.audits import read_samples

    ledger, _ = populated
    words = "the same words in a plain text file, once with a byte order mark and once without"
    (data_dir / "txt").mkdir()
    (data_dir / "txt" / "plain.txt").write_bytes(words.encode())
    (data_dir / "txt" / "marked.txt").write_bytes(b"\xef\xbb\xbf" + words.encode())
    ledger.register_dataset("marks", str(data_dir / "txt"))
    docs = ledger.documents("marks", columns=["key", "exact_hash", "n_bytes"]).to_pylist()
    assert len(docs) == 2 and docs[0]["exact_hash"] == docs[1]["exact_hash"]
    assert {d["n_bytes"] for d in docs} == {len(words)}
    for name, lines in (("s.txt", [words]), ("s.jsonl", [json.dumps({"text": words})])):
        path = data_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
        assert read_samples(path) == [words]


def _jsonl_payload(n: int = 2000) -> bytes:
    return b"".join(json.dumps({"text": f"line {i} " + "words " * 15}).encode() + b"\n" for i in range(n))


def test_truncated_gzip(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "cut.jsonl.gz"
    data = gzip.compress(_jsonl_payload())
    path.write_bytes(data[: len(data) // 2])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: gzip data is truncated or corrupt after line ")
    short = data_dir / "short.jsonl.gz"  # cut before its first line ended: not "damaged at its start"
    data = gzip.compress(_jsonl_payload(1))
    short.write_bytes(data[: len(data) - 12])
    assert refused(ledger, "good", short).startswith(
        f"{short}: gzip data is cut short: the file ends inside its compressed stream (copied in part?): ")
    unchanged()


def test_a_compressed_suffix_that_does_not_match_the_data(populated, data_dir):
    """A .jsonl.gz holding zstd (or plain text) was "truncated or corrupt after line 0"."""
    ledger, unchanged = populated
    path = data_dir / "wrong.jsonl.gz"
    path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl_payload(10)))
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: not gzip data, or damaged at its start (") and "suffix right?" in message
    plain = data_dir / "plain.jsonl.zst"
    plain.write_bytes(_jsonl_payload(10))
    assert refused(ledger, "good", plain).startswith(f"{plain}: not zstd data, or damaged at its start (")
    unchanged()


def test_truncated_zstd(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "cut.jsonl.zst"
    data = zstandard.ZstdCompressor().compress(_jsonl_payload())
    path.write_bytes(data[: len(data) // 2])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: zstd data is cut short: the file ends inside its compressed stream (copied in "
                              "part?): "), message  # it said "gzip data, or damaged at its start"
    short = data_dir / "short.jsonl.zst"
    short.write_bytes(zstandard.ZstdCompressor().compress(_jsonl_payload(1))[:-6])
    assert refused(ledger, "good", short) == (f"{short}: zstd data is cut short: the file ends inside its compressed "
                                              "stream (copied in part?): zstd frame is truncated: the file ends inside it")
    unchanged()


def test_truncated_zstd_at_a_block_boundary(populated, data_dir):
    ledger, unchanged = populated
    lines = []
    for i in range(3000):  # 128-byte lines: zstd's 128 KiB blocks end exactly on a line boundary
        line = json.dumps({"text": f"document {i:06d}"}).encode()
        lines.append(line + b" " * (127 - len(line)) + b"\n")
    data = zstandard.ZstdCompressor().compress(b"".join(lines))
    path = data_dir / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}: zstd data is truncated or corrupt after line "), message
    unchanged()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_bytes_after_good_compressed_data_name_the_line_they_follow(populated, data_dir, suffix):
    """A .zst whose good frame is followed by other bytes (a file appended to, a download with a
    trailer) said "not zstd data, or damaged at its start; is the file name's suffix right?"."""
    ledger, unchanged = populated
    path = data_dir / f"tail{suffix}"
    body = b'{"text": "first document"}\n{"text": "second document"}\n'
    packed = gzip.compress(body) if suffix == ".jsonl.gz" else zstandard.ZstdCompressor().compress(body)
    path.write_bytes(packed + b"trailing bytes that are not compressed data")
    message = refused(ledger, "good", path)
    kind = "gzip" if suffix == ".jsonl.gz" else "zstd"
    assert message.startswith(f"{path}: {kind} data is truncated or corrupt after line 2: "), message
    unchanged()


def test_missing_path(populated, data_dir):
    ledger, unchanged = populated
    path = data_dir / "nope.jsonl"
    assert refused(ledger, "good", path) == f"{path}: no such file or folder"
    assert refused(ledger, "good", [data_dir / "good.jsonl", path]) == f"{path}: no such file or folder"
    unchanged()


def test_glob_matching_nothing(populated, data_dir):
    ledger, unchanged = populated
    pattern = str(data_dir / "nothing-*.jsonl")
    assert refused(ledger, "good", pattern) == f"{pattern}: pattern matched no files"
    unchanged()


def test_glob_matching_only_a_folder_says_so(populated, data_dir):
    """`prov dataset add x 'cra*'` with `crawl/` a folder said `pattern matched no files`, and
    nothing of why (found by stranger pass 32): a pattern does not walk the folders it matches."""
    ledger, unchanged = populated
    (data_dir / "crawl").mkdir()
    (data_dir / "crawl" / "a.jsonl").write_text('{"text": "words in a file"}\n')
    pattern = str(data_dir / "cra*")
    assert refused(ledger, "good", pattern) == (
        f"{pattern}: pattern matched no files (only folders, which a pattern does not walk: {data_dir / 'crawl'}; "
        f"give the folder itself, or a pattern of its files such as {data_dir / 'crawl' / '*.jsonl'})")
    unchanged()


def test_empty_folder(populated, data_dir):
    ledger, unchanged = populated
    (data_dir / "empty").mkdir()
    assert refused(ledger, "good", data_dir / "empty") == f"{data_dir / 'empty'}: folder holds no files"
    unchanged()


# -- files that change while they are registered ---------------------------------------------------


class _OnRegistering:
    """A progress object that runs ``action`` once reading begins (after every file was hashed)."""

    def __init__(self, action):
        self.action = action
        self.descriptions: list[str] = []

    def start(self, description, total):
        self.descriptions.append(description)
        if description.startswith("registering "):
            self.action()

    def advance(self, amount):
        pass


def _write_two(data_dir: Path, fmt: str) -> tuple[Path, Path]:
    paths = []
    for name in ["a", "b"]:
        texts = [f"shard {name} document {j}" for j in range(3)]
        if fmt == "jsonl":
            path = data_dir / f"{name}.jsonl"
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        elif fmt == "parquet":
            path = data_dir / f"{name}.parquet"
            pq.write_table(pa.table({"text": texts}), path)
        else:
            path = data_dir / f"{name}.txt"
            path.write_text(" ".join(texts))
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "text"])
def test_file_deleted_after_hashing(populated, data_dir, fmt):
    ledger, unchanged = populated
    first, second = _write_two(data_dir, fmt)
    progress = _OnRegistering(second.unlink)
    message = refused(ledger, "good", [first, second], progress=progress)
    assert progress.descriptions == ["hashing", "registering good@2"]
    assert message.startswith(f"{second}: disappeared"), message
    unchanged()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "text"])
def test_file_changed_while_registering(populated, data_dir, fmt):
    ledger, unchanged = populated
    first, second = _write_two(data_dir, fmt)

    def rewrite():
        if fmt == "parquet":
            pq.write_table(pa.table({"text": ["something else entirely"]}), second)
        else:
            second.write_bytes(second.read_bytes().replace(b"document", b"DOCUMENT"))

    message = refused(ledger, "good", [first, second], progress=_OnRegistering(rewrite))
    assert message == f"{second}: file changed while it was being registered; register it again"
    unchanged()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "jsonl.gz"])
def test_file_cut_short_or_appended_to_after_hashing_is_said_as_changed(populated, data_dir, fmt):
    """A file cut in the middle of a line after it was hashed read as a malformed record, and a
    .gz appended to as damaged gzip data (``is the file name's suffix right?``): the change is said."""
    ledger, unchanged = populated
    first, second = _write_two(data_dir, "parquet" if fmt == "parquet" else "jsonl")
    if fmt == "jsonl.gz":
        second = second.rename(data_dir / "b.jsonl.gz")
        second.write_bytes(gzip.compress(second.read_bytes()))

    def damage():
        if fmt == "jsonl.gz":
            with open(second, "ab") as fh:
                fh.write(b'{"text": "appended after hashing"}\n')
        else:
            os.truncate(second, second.stat().st_size // 2)

    message = refused(ledger, "good", [first, second], progress=_OnRegistering(damage))
    assert message.startswith(f"{second}: file changed while it was being registered; register it again "
                              f"(reading it then failed: {second}"), message
    unchanged()


# -- in-memory records and parameters ------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([{"text": "ok"}, {"body": "x"}], "records[batch-00000]: record 1: no text field 'text' (fields: body)"),
        ([{"text": "ok"}, {"text": None}], "records[batch-00000]: record 1: text field 'text' is null, expected a string"),
        ([{"text": "ok"}, {"text": 3.5}], "records[batch-00000]: record 1: text field 'text' is float, expected a string"),
        ([{"text": "ok"}, "just text"], "records[batch-00000]: record 1 is a str, expected a dict"),
        ([{"text": "ok"}, None], "records[batch-00000]: record 1 is None, expected a dict"),
        (
            [{"text": "ok"}, {"text": "lone \ud800"}],
            "records[batch-00000]: record 1: text holds an unpaired surrogate at character 5",
        ),
    ],
    ids=["missing", "null", "float", "not-a-dict", "none", "surrogate"],
)
def test_bad_records_name_the_record(populated, records, expected):
    ledger, unchanged = populated
    assert refused(ledger, "good", records).startswith(expected)
    unchanged()


def test_bad_records_in_a_later_shard_name_it(populated):
    ledger, unchanged = populated
    records = ({"text": f"doc {i}"} if i != 13 else {"text": None} for i in range(20))
    message = refused(ledger, "good", records, shard_records=5)
    assert message.startswith("records[batch-00002]: record 3: text field 'text' is null")
    unchanged()


def test_arrow_table_with_null_text(populated):
    ledger, unchanged = populated
    table = pa.table({"text": ["a", None]})
    assert refused(ledger, "good", table) == "arrow table: record 1: text 'text' is null"
    assert refused(ledger, "good", pa.table({"text": [1, 2]})).startswith("arrow table: text column 'text' has type int64")
    unchanged()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"on_invalid": "ignore"}, "on_invalid must be 'error', 'replace' or 'skip', got 'ignore'"),
        ({"role": "test"}, "role must be 'train' or 'eval', got 'test'"),
        ({"text_field": ""}, "text_field must be a non-empty field name"),
        ({"id_field": ""}, "id_field must be a non-empty field name (None: SHARD:ROW keys)"),  # no id field ''
        ({"shard_records": 0}, "shard_records must be a whole number of records, at least 1; got 0"),
        ({"shard_records": 1.5}, "shard_records must be a whole number of records, at least 1; got 1.5"),  # 3 shards of 5
        ({"shard_records": True}, "shard_records must be a whole number of records, at least 1; got True"),
        ({"license": "not a licence!"}, "license 'not a licence!' is not an SPDX identifier"),
        # refused before anything is read (they failed when the version was inserted, after every document was
        # fingerprinted: UnicodeEncodeError from Arrow, pydantic's ValidationError)
        ({"source": "caf\udce9"}, "source holds an unpaired surrogate at character 3: it is not valid UTF-8"),
        ({"creator": "\ud800"}, "creator holds an unpaired surrogate at character 0: it is not valid UTF-8"),
        ({"description": "a \udcff"}, "description holds an unpaired surrogate at character 2: it is not valid UTF-8"),
        ({"text_field": "\udcff"}, "text_field holds an unpaired surrogate at character 0: it is not valid UTF-8"),
        ({"id_field": "id\udcff"}, "id_field holds an unpaired surrogate at character 2: it is not valid UTF-8"),
        ({"source": 5}, "source must be a string, got int"),
        ({"text_field": 5}, "text_field must be a string, got int"),
        ({"id_field": ["id"]}, "id_field must be a string, got list"),
    ],
)
def test_invalid_parameters(populated, data_dir, options, expected):
    ledger, unchanged = populated
    message = refused(ledger, "good", data_dir / "good.jsonl", InvalidParameterError, **options)
    assert message.startswith(expected)
    unchanged()


def test_invalid_sources_and_names(populated, data_dir):
    ledger, unchanged = populated
    assert refused(ledger, "bad name", GOOD, InvalidParameterError).startswith("dataset name 'bad name' must start")
    assert refused(ledger, "x", {"text": "one dict"}, InvalidParameterError).startswith("sources is one dict")
    assert refused(ledger, "x", [], InvalidParameterError) == "no sources given"
    assert refused(ledger, "x", 42, InvalidParameterError).startswith("cannot read sources of type int")
    pandas = pytest.importorskip("pandas")  # iterating a DataFrame gives its column names: "record 0 is a str"
    frame = pandas.DataFrame({"id": ["a", "b"], "text": ["one", "two"]})
    assert refused(ledger, "x", frame, InvalidParameterError, id_field="id") == (
        "sources is a pandas DataFrame, which is not read as records: pass pyarrow.Table.from_pandas(df) "
        "or df.to_dict('records')")
    (data_dir / "t.txt").write_text("plain")
    message = refused(ledger, "x", data_dir / "t.txt", InvalidParameterError, id_field="id")
    assert message == f"{data_dir / 't.txt'}: id_field does not apply to plain text files"
    unchanged()


def test_unreadable_file(populated, data_dir):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    ledger, unchanged = populated
    path = data_dir / "locked.jsonl"
    path.write_text('{"text": "secret"}\n')
    path.chmod(0)
    try:
        assert refused(ledger, "good", path) == f"{path}: cannot read: Permission denied"
    finally:
        path.chmod(0o644)
    unchanged()


# -- errors while batches are read ahead -----------------------------------------------------------


def _reader_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "provenance-reader" and t.is_alive()]


def test_malformed_line_after_several_batches(populated, data_dir):
    """An error found by the reader after some batches were fingerprinted still names its line."""
    ledger, unchanged = populated
    path = data_dir / "long.jsonl"
    with open(path, "wb") as fh:
        n_lines = 0
        for line in iter_jsonl_lines(18_000_000, seed=2):  # more than two reading batches of text
            fh.write(line)
            n_lines += 1
        fh.write(b'{"text": "cut short\n')
    message = refused(ledger, "good", path)
    assert message.startswith(f"{path}:{n_lines + 1}: malformed JSON")
    unchanged()
    assert _reader_threads() == []


def test_error_raised_by_the_callers_records_propagates(populated):
    ledger, unchanged = populated

    def records():
        for i in range(25):
            yield {"text": f"record {i}"}
        raise RuntimeError("the source broke after 25 records")

    with pytest.raises(RuntimeError, match="after 25 records"):
        ledger.register_dataset("good", records(), shard_records=10)
    unchanged()
    assert _reader_threads() == []


def test_record_id_errors_name_the_field_and_its_kind(populated):
    ledger, unchanged = populated
    with pytest.raises(SourceError, match=r"records\[batch-00000\]: record 1: id field 'id' is list, expected a string or number"):
        ledger.register_dataset("recs", [{"id": "a", "text": "x"}, {"id": ["b"], "text": "y"}], id_field="id")
    with pytest.raises(SourceError, match=r"record 0: no id field 'id' \(fields: text\)"):
        ledger.register_dataset("recs", [{"text": "x"}], id_field="id")
    unchanged()


def test_a_list_of_paths_with_something_else_in_it_names_the_item(populated, data_dir):
    """A list of paths with one item that is not a path was read as records: "records[batch-00000]:
    record 0 is a str, expected a dict", naming neither the odd item nor the paths."""
    ledger, unchanged = populated
    good = str(data_dir / "good.jsonl")
    assert refused(ledger, "mixed", [good, 5], InvalidParameterError) == (
        f"sources[1] is of type int (5), but sources[0] is a path ({good[:60]!r}): give a list of paths (str or Path), "
        "or of records (dicts)")
    assert refused(ledger, "mixed", (data_dir / "good.jsonl", None), InvalidParameterError).startswith(
        "sources[1] is of type NoneType (None), but sources[0] is a path")
    unchanged()


def test_keys_to_remove_that_are_not_keys_are_named(populated):
    """`remove_documents(name, 5)` was a TypeError ("'int' object is not iterable"), and a key None
    or b"g1" was looked up as the text 'None' or "b'g1'": "has no document 'None'"."""
    ledger, unchanged = populated
    cases = [(5, "keys must be a list of document keys, got int 5"),
             ([None], "keys[0] is of type NoneType (None): a document key is a string (or the number an id field held)"),
             (["g1", b"g2"], "keys[1] is of type bytes (b'g2'): a document key is a string (or the number an id field held)"),
             ([True], "keys[0] is of type bool (True): a document key is a string (or the number an id field held)")]
    for keys, message in cases:
        with pytest.raises(InvalidParameterError) as info:
            ledger.remove_documents("good", keys)
        assert str(info.value) == message
    unchanged()
    assert ledger.remove_documents("good", iter(["g1"])).dataset.n_documents == 3  # an iterable is a list of keys
