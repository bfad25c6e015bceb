"""Croissant exports read back with mlcroissant, the reference implementation, record for record.

Every test registers real files, exports them, loads the JSON-LD with ``mlcroissant`` (which
validates it) and compares each record it yields, key and text, with the registered documents:
the key with the ledger's key, the text with the source text and with the ledger's exact hash of
it. Nothing may reach the network.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from provenance.croissant import ReadsOtherwiseWarning, to_croissant
from provenance.errors import InvalidParameterError
from provenance.fingerprints import normalize
from provenance.records import UnknownLicenseWarning

mlc = pytest.importorskip("mlcroissant")

CITE_AS = '[Metadata({name})] Property "http://mlcommons.org/croissant/citeAs" is recommended, but does not exist.'
LICENSE = '[Metadata({name})] Property "https://schema.org/license" is recommended, but does not exist.'


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlcroissant fetches remote files and metadata with requests: make any attempt fail."""
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def export(ledger, name: str, folder: Path) -> Path:
    """Write the Croissant JSON-LD of ``name`` into ``folder``, paths relative to it."""
    ds = ledger.dataset(name)
    path = folder / f"{name}.croissant.json"
    path.write_text(json.dumps(to_croissant(ds, ledger.shards(ds), base=folder), indent=2), encoding="utf-8")
    return path


def read_back(path: Path) -> tuple[object, dict[str, dict[str, str]]]:
    """mlcroissant's dataset and, per record set, ledger-style key -> text of every record."""
    dataset = mlc.Dataset(jsonld=path)
    out = {}
    for rs in dataset.metadata.record_sets:
        rows = list(dataset.records(record_set=rs.uuid))
        texts = {_key(row, rs.uuid): row[f"{rs.uuid}/text"].decode("utf-8") for row in rows}
        assert len(texts) == len(rows), f"{rs.uuid}: duplicate keys"
        out[rs.uuid] = texts
    return dataset, out


def _key(row: dict, rs: str) -> str:
    if f"{rs}/id" in row:
        value = row[f"{rs}/id"]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return f"{row[f'{rs}/shard'].decode('utf-8')}:{row[f'{rs}/row']}"


def assert_same_documents(ledger, name: str, texts: dict[str, str], expected: dict[str, str]) -> None:
    """The records are the source documents, and the ledger's: same keys, and each text has the
    exact hash the ledger stored for its key."""
    assert texts == expected
    stored = {row["key"]: row["exact_hash"] for row in ledger.documents(name).to_pylist()}
    assert set(stored) == set(texts)
    for key, text in texts.items():
        assert stored[key] == xxhash.xxh3_64_intdigest(normalize(text).encode("utf-8")), key


def warnings_of(dataset) -> set[str]:
    return set(dataset.metadata.ctx.issues.warnings)


def test_minimal_metadata_validates_and_reads_back(ledger, data_dir, write_jsonl, tmp_path):
    # No id field, creator, description or licence: this export used to send mlcroissant's
    # validator into a RecursionError (an empty licence-conditions object).
    docs = [{"text": f"document number {i}, the plain kind"} for i in range(5)]
    write_jsonl(data_dir / "plain.jsonl", docs)
    ledger.register_dataset("mini", data_dir / "plain.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    path = export(ledger, "mini", out)
    doc = json.loads(path.read_text())
    assert "license" not in doc and "creator" not in doc and "provenance:licenseConditions" not in doc
    assert doc["url"] == out.resolve().as_uri()
    assert doc["datePublished"].startswith(ledger.dataset("mini").created_at.date().isoformat())
    (fo,) = doc["distribution"]
    assert fo["contentUrl"] == "../data/plain.jsonl"
    (rs,) = doc["recordSet"]
    assert rs["key"] == [{"@id": "documents/shard"}, {"@id": "documents/row"}]

    validate = [str(Path(sys.executable).parent / "mlcroissant"), "validate", "--jsonld", str(path)]
    result = subprocess.run(validate, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dataset, records = read_back(path)
    assert warnings_of(dataset) == {CITE_AS.format(name="mini"), LICENSE.format(name="mini")}
    expected = {f"plain.jsonl:{i}": d["text"] for i, d in enumerate(docs)}
    assert_same_documents(ledger, "mini", records["documents"], expected)


def test_full_metadata(ledger, data_dir, corpus):
    corpus.write_jsonl(data_dir / "corpus.jsonl")
    ledger.register_dataset("web", data_dir / "corpus.jsonl", id_field="id", license="CC-BY-SA-4.0",
                            creator="Acme Research", description="Synthetic web text.",
                            source="https://example.org/web", model_generated=True)
    path = export(ledger, "web", data_dir)
    doc = json.loads(path.read_text())
    assert doc["license"] == "https://spdx.org/licenses/CC-BY-SA-4.0.html"
    assert doc["provenance:licenseConditions"] == {"nonCommercial": False, "shareAlike": True, "attribution": True}
    assert doc["creator"] == {"@type": "sc:Organization", "name": "Acme Research"}
    assert doc["description"] == "Synthetic web text."
    assert doc["url"] == "https://example.org/web"
    assert doc["rai:hasSyntheticData"] is True
    fields = {f["name"]: f for f in doc["recordSet"][0]["field"]}
    assert fields["id"]["dataType"] == "sc:Text"  # the corpus' ids are strings
    assert doc["recordSet"][0]["key"] == {"@id": "documents/id"}

    dataset, records = read_back(path)
    assert warnings_of(dataset) == {CITE_AS.format(name="web")}
    meta = dataset.metadata
    assert meta.url == "https://example.org/web" and meta.license == ["https://spdx.org/licenses/CC-BY-SA-4.0.html"]
    assert [c.name for c in meta.creators] == ["Acme Research"]
    assert_same_documents(ledger, "web", records["documents"], {d["id"]: d["text"] for d in corpus.docs})


@pytest.mark.parametrize(
    ("spdx", "license"),
    [
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0"),
        ("Apache-2.0 WITH LLVM-exception", "Apache-2.0 WITH LLVM-exception"),
        ("LicenseRef-my-licence", "LicenseRef-my-licence"),
        ("Not-A-Licence-1.0", "Not-A-Licence-1.0"),
        ("gpl-2.0+", "https://spdx.org/licenses/GPL-2.0-or-later.html"),
    ],
)
def test_license_links_only_spdx_list_ids(ledger, data_dir, write_jsonl, recwarn, spdx, license):
    write_jsonl(data_dir / "a.jsonl", [{"text": "one document"}])
    ledger.register_dataset("lic", data_dir / "a.jsonl", license=spdx)
    assert [w.category for w in recwarn] == ([UnknownLicenseWarning] if spdx.startswith("Not-") else [])
    path = export(ledger, "lic", data_dir)
    assert json.loads(path.read_text())["license"] == license
    assert mlc.Dataset(jsonld=path).metadata.license == [license]


def test_gzipped_jsonl_through_the_ledger_facade(ledger, data_dir, corpus):
    corpus.write_jsonl(data_dir / "corpus.jsonl.gz")
    ledger.register_dataset("gz", data_dir / "corpus.jsonl.gz", id_field="id")
    # Without a folder, paths are relative to the shards' folder: the document belongs there.
    path = data_dir / "gz.croissant.json"
    path.write_text(json.dumps(ledger.export_croissant("gz")), encoding="utf-8")
    (fo,) = json.loads(path.read_text())["distribution"]
    assert (fo["contentUrl"], fo["encodingFormat"]) == ("corpus.jsonl.gz", "application/jsonlines")
    _, records = read_back(path)
    assert_same_documents(ledger, "gz", records["documents"], {d["id"]: d["text"] for d in corpus.docs})


def test_parquet_with_integer_ids(ledger, data_dir, corpus):
    ids = [1000 + 7 * i for i in range(len(corpus.docs))]
    table = pa.table({"doc_id": pa.array(ids, pa.int64()), "body": [d["text"] for d in corpus.docs]})
    pq.write_table(table, data_dir / "corpus.parquet", row_group_size=16)
    ledger.register_dataset("pq", data_dir / "corpus.parquet", text_field="body", id_field="doc_id")
    path = export(ledger, "pq", data_dir)
    doc = json.loads(path.read_text())
    assert doc["distribution"][0]["encodingFormat"] == "application/x-parquet"
    fields = {f["name"]: f for f in doc["recordSet"][0]["field"]}
    assert fields["id"]["dataType"] == "sc:Integer"
    assert fields["text"]["source"]["extract"] == {"column": "body"}
    dataset = mlc.Dataset(jsonld=path)
    assert [r["documents/id"] for r in dataset.records(record_set="documents")] == ids  # integers stay integers
    _, records = read_back(path)
    assert_same_documents(ledger, "pq", records["documents"], {str(i): d["text"] for i, d in zip(ids, corpus.docs)})


def test_jsonl_with_integer_ids(ledger, data_dir, write_jsonl):
    docs = [{"n": 3 * i, "text": f"integer keyed document {i}"} for i in range(6)]
    write_jsonl(data_dir / "ints.jsonl", docs)
    ledger.register_dataset("ints", data_dir / "ints.jsonl", id_field="n")
    path = export(ledger, "ints", data_dir)
    assert {f["name"]: f["dataType"] for f in json.loads(path.read_text())["recordSet"][0]["field"]} == {
        "text": "sc:Text", "id": "sc:Integer"}
    rows = list(mlc.Dataset(jsonld=path).records(record_set="documents"))
    assert [r["documents/id"] for r in rows] == [d["n"] for d in docs]
    assert all(type(r["documents/id"]) is int for r in rows)
    _, records = read_back(path)
    assert_same_documents(ledger, "ints", records["documents"], {str(d["n"]): d["text"] for d in docs})


def test_jsonl_ids_of_mixed_types_read_back(ledger, data_dir, write_jsonl):
    """The ids' type came from the first record alone: ``1`` then ``"x7"`` was declared
    ``sc:Integer``, and mlcroissant failed on every record (int('x7')); ``1`` then ``2.5`` lost 2.5."""
    cases = {"mixed": ([1, "x7", 3], "sc:Text", ["1", "x7", "3"]), "floats": ([1, 2.5, 3], "sc:Float", [1.0, 2.5, 3.0])}
    for name, (ids, declared, read) in cases.items():
        write_jsonl(data_dir / f"{name}.jsonl", [{"id": i, "text": f"document number {n} here"} for n, i in enumerate(ids)])
        ledger.register_dataset(name, data_dir / f"{name}.jsonl", id_field="id")
        doc = ledger.export_croissant(name, base=data_dir)
        assert doc["recordSet"][0]["field"][1]["dataType"] == declared
        path = data_dir / f"{name}.croissant.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        got = [r["documents/id"] for r in mlc.Dataset(jsonld=path).records(record_set="documents")]
        assert [g.decode() if isinstance(g, bytes) else g for g in got] == read


def test_a_version_with_removed_documents_is_not_exported_over_the_whole_files(ledger, data_dir, write_jsonl):
    """``prov dataset remove`` keeps the files; a Croissant of its version pointed at them, and
    mlcroissant read the removed (erased) document back."""
    write_jsonl(data_dir / "d.jsonl", [{"id": k, "text": f"the text of document {k} here"} for k in "abc"])
    ledger.register_dataset("d", data_dir / "d.jsonl", id_field="id")
    ledger.remove_documents("d", ["b"], reason="erasure request")
    with pytest.raises(InvalidParameterError, match=r"d@2: its file d.jsonl still holds 1 document\(s\) that this "
                                                    r"version left out"):
        ledger.export_croissant("d@2", base=data_dir)
    assert ledger.export_croissant("d@1", base=data_dir)["recordSet"][0]["description"] == "3 documents"
    write_jsonl(data_dir / "d.jsonl", [{"id": k, "text": f"the text of document {k} here"} for k in "ac"])
    ledger.register_dataset("d", data_dir / "d.jsonl", id_field="id")  # the files written without it
    assert ledger.export_croissant("d@3", base=data_dir)["recordSet"][0]["description"] == "2 documents"
    (data_dir / "bad.jsonl").write_bytes(b'{"text": "a good line of words"}\n{"text": "bad \xff byte"}\n')
    ledger.register_dataset("skipped", data_dir / "bad.jsonl", on_invalid="skip")
    ledger.register_dataset("replaced", data_dir / "bad.jsonl", on_invalid="replace")  # the same file counts 2
    assert ledger.withheld("skipped") == []  # no removal: nothing to say (it was refused as removed)


def test_records_skipped_or_repaired_at_registration_are_warned_of(ledger, data_dir):
    """mlcroissant reads a file as it is: a line that ``on_invalid="skip"`` left out comes back."""
    (data_dir / "bad.jsonl").write_bytes(b'{"text": "a good line of words"}\n{"text": "bad \\ud800 half"}\n'
                                         b'{"text": "another good line"}\n')  # an unpaired surrogate
    ledger.register_dataset("skipped", data_dir / "bad.jsonl", on_invalid="skip")
    ledger.register_dataset("replaced", data_dir / "bad.jsonl", on_invalid="replace")
    with pytest.warns(ReadsOtherwiseWarning, match=r"^skipped@1: its files hold 1 record that registration skipped "
                                                   r"as invalid \(on_invalid\); a Croissant reader"):
        doc = ledger.export_croissant("skipped", base=data_dir)
    path = data_dir / "skipped.croissant.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert len(list(mlc.Dataset(jsonld=path).records(record_set="documents"))) == 3  # what the warning says
    assert ledger.documents("skipped").num_rows == 2
    with pytest.warns(ReadsOtherwiseWarning, match=r"^replaced@1: its files hold 1 record that registration repaired"):
        ledger.export_croissant("replaced", base=data_dir)


@pytest.mark.parametrize("where", ["data folder", "above it"])
def test_multi_file_dataset_reads_through_a_file_set(ledger, data_dir, write_jsonl, where):
    first = [{"text": f"first file, document {i}"} for i in range(4)]
    second = [{"text": f"second file, gzipped, document {i}"} for i in range(3)]
    write_jsonl(data_dir / "a.jsonl", first[:2])
    with open(data_dir / "a.jsonl", "a", encoding="utf-8") as fh:  # a blank line is not a record
        fh.write("\n" + "".join(json.dumps(d) + "\n" for d in first[2:]))
    (data_dir / "sub").mkdir()
    (data_dir / "sub" / "b.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in second).encode()))
    ledger.register_dataset("multi", [data_dir / "a.jsonl", data_dir / "sub" / "b.jsonl.gz"])
    folder = data_dir if where == "data folder" else data_dir.parent
    path = export(ledger, "multi", folder)
    doc = json.loads(path.read_text())
    prefix = "" if folder == data_dir else "data/"
    *objects, file_set = doc["distribution"]
    assert [o["contentUrl"] for o in objects] == [f"{prefix}a.jsonl", f"{prefix}sub/b.jsonl.gz"]
    assert file_set["@type"] == "cr:FileSet" and file_set["includes"] == [f"{prefix}a.jsonl", f"{prefix}sub/b.jsonl.gz"]
    for field in doc["recordSet"][0]["field"]:
        assert field["source"]["fileSet"] == {"@id": file_set["@id"]}  # one source per field

    _, records = read_back(path)
    expected = {f"a.jsonl:{i}": d["text"] for i, d in enumerate(first)}
    expected |= {f"sub/b.jsonl.gz:{i}": d["text"] for i, d in enumerate(second)}
    assert_same_documents(ledger, "multi", records["documents"], expected)


def test_multi_file_dataset_outside_the_metadata_folder_is_refused(ledger, data_dir, write_jsonl, tmp_path):
    for name in ("a", "b"):
        write_jsonl(data_dir / f"{name}.jsonl", [{"text": f"file {name}"}])
    ledger.register_dataset("two", [data_dir / "a.jsonl", data_dir / "b.jsonl"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(InvalidParameterError, match=r"\.\./data/a\.jsonl is outside"):
        export(ledger, "two", elsewhere)


def test_mixed_formats_get_one_record_set_each(ledger, data_dir, write_jsonl):
    write_jsonl(data_dir / "a.jsonl", [{"text": "from json lines"}, {"text": "again from json lines"}])
    pq.write_table(pa.table({"text": ["from parquet"]}), data_dir / "b.parquet")
    ledger.register_dataset("mixed", [data_dir / "a.jsonl", data_dir / "b.parquet"])
    _, records = read_back(export(ledger, "mixed", data_dir))
    assert records == {
        "documents-jsonl": {"a.jsonl:0": "from json lines", "a.jsonl:1": "again from json lines"},
        "documents-parquet": {"b.parquet:0": "from parquet"},
    }


def test_a_folder_holding_its_croissant_export_registers_again(ledger, tmp_path):
    """The export written beside the data (where mlcroissant wants a multi-file dataset's) made
    the next registration of the folder fail: `ints.croissant.json: unknown file type`."""
    import json

    folder = tmp_path / "data"
    folder.mkdir()
    for part in ("a", "b"):
        (folder / f"{part}.jsonl").write_text("".join(json.dumps({"id": f"{part}{i}", "text": f"text {part} {i}"}) + "\n"
                                                      for i in range(3)))
    first = ledger.register_dataset("ints", folder, id_field="id").dataset
    (folder / "ints.croissant.json").write_text(json.dumps(ledger.export_croissant("ints")))
    again = ledger.register_dataset("ints", folder, id_field="id")
    assert (again.created, again.dataset.dataset_id) == (False, first.dataset_id)  # the export is not a shard


def test_file_names_with_spaces_hashes_and_percent_signs_read_back_as_named(ledger, data_dir):
    """``contentUrl`` is the path as the file is named, not percent-encoded: mlcroissant reads
    ``a b.jsonl`` as written and does not find ``a%20b.jsonl``, and ``p%41`` would be another name."""
    names = ["a b", "h#x", "p%41", "q?y", "u é"]
    for i, name in enumerate(names):
        (data_dir / f"{name}.jsonl").write_text(json.dumps({"id": f"k{i}", "text": f"text of {name}"}) + "\n",
                                                encoding="utf-8")
    ledger.register_dataset("odd", data_dir, id_field="id")
    path = export(ledger, "odd", data_dir)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert sorted(fo["contentUrl"] for fo in doc["distribution"] if fo["@type"] == "cr:FileObject") == sorted(
        f"{name}.jsonl" for name in names)
    records = mlc.Dataset(jsonld=path).records(record_set="documents")
    assert sorted((r["documents/id"], r["documents/text"]) for r in records) == sorted(
        (f"k{i}".encode(), f"text of {name}".encode()) for i, name in enumerate(names))


def test_date_published_is_rfc3339_utc(ledger, data_dir, write_jsonl, tmp_path):
    # The ledger's times are naive UTC: written without a zone, a reader took the registration
    # time as its own local time (mlcroissant gave a naive datetime).
    import datetime as dt

    write_jsonl(data_dir / "when.jsonl", [{"text": "registered at some time"}])
    ledger.register_dataset("when", data_dir / "when.jsonl")
    created = ledger.dataset("when").created_at.replace(microsecond=0)
    path = export(ledger, "when", data_dir)
    doc = json.loads(path.read_text())
    assert doc["datePublished"] == created.isoformat() + "Z"
    published = mlc.Dataset(jsonld=path).metadata.date_published
    assert published.utcoffset() == dt.timedelta(0)
    assert published.replace(tzinfo=None) == created


def test_a_changed_or_missing_file_is_refused(ledger, data_dir, write_jsonl, tmp_path):
    # The export gave a file the sha256 and size it was registered with, whatever it holds now:
    # a changed file read back as other records than the ledger's, a missing one as nothing.
    from provenance.errors import SourceError

    path = data_dir / "later.jsonl"
    write_jsonl(path, [{"text": "the first document"}, {"text": "the second one"}])
    ledger.register_dataset("later", path)
    assert ledger.export_croissant("later", base=data_dir)["distribution"][0]["contentSize"] == f"{path.stat().st_size} B"
    registered = path.stat().st_size
    with path.open("a") as f:
        f.write('{"text": "added after registration"}\n')
    with pytest.raises(SourceError, match=rf"later@1: its file .*later\.jsonl has changed since it was registered "
                                          rf"\({path.stat().st_size:,} bytes, registered with {registered:,}\)"):
        ledger.export_croissant("later", base=data_dir)
    path.unlink()
    with pytest.raises(SourceError, match=r"later@1: its file .*later\.jsonl cannot be read \(No such file"):
        ledger.export_croissant("later", base=data_dir)
