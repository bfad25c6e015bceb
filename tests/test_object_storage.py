"""Sources in object storage: ``s3://`` URLs against a real S3 API server (moto's server mode) on
127.0.0.1, started once for the module.

The same files are registered from a local folder and from a bucket: shard ids, documents,
signatures and band keys must be identical. Then the failures object storage has and a local disk
does not quite: a missing object, a prefix with nothing under it, an object cut short, one
replaced after registration, one deleted, a server that is gone.
"""

from __future__ import annotations

import gzip
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("moto")

from provenance import Ledger  # noqa: E402
from provenance.cli.main import main  # noqa: E402
from provenance.datasets import read_back  # noqa: E402
from provenance.errors import InvalidParameterError, SourceError  # noqa: E402
from provenance.torch import RegisteredDataset  # noqa: E402
from tests import s3server  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3server.running(tmp_path_factory.mktemp("moto")) as server:
        yield server


def _corpus(folder):
    """Three shards of three formats; one document is a near-copy of another."""
    (folder / "part").mkdir(parents=True)
    rows = [{"id": f"web{i}", "text": f"page {i} says the river rises in spring and floods the lower town {i % 4}"}
            for i in range(60)]
    (folder / "part" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    (folder / "part" / "b.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows[30:50]).encode()))
    pq.write_table(pa.Table.from_pylist(rows[50:]), folder / "c.parquet")
    return rows


def _documents(ledger, dataset_id):
    return ledger.sql("SELECT shard_index, row_index, line, key, exact_hash, token_count, n_bytes, signature, band_keys "
                      "FROM documents WHERE dataset_id = ? ORDER BY doc_id", [dataset_id]).to_pylist()


def _shards(ledger, dataset_id):
    return ledger.sql("SELECT shard_index, shard_id, name, uri, format, sha256, n_bytes, n_documents, n_tokens "
                      "FROM shards WHERE dataset_id = ? ORDER BY shard_index", [dataset_id]).to_pylist()


def test_a_bucket_prefix_registers_exactly_as_the_same_local_folder(s3, tmp_path):
    rows = _corpus(tmp_path / "crawl")
    s3.bucket("corpus")
    url = s3.upload(tmp_path / "crawl", "corpus/crawl/2026")
    ledger = Ledger.init(tmp_path / "ledger")
    local = ledger.register_dataset("local", str(tmp_path / "crawl"), id_field="id").dataset
    remote = ledger.register_dataset("bucket", url, id_field="id").dataset

    assert remote.n_documents == local.n_documents == len(rows)
    local_shards, bucket_shards = _shards(ledger, local.dataset_id), _shards(ledger, remote.dataset_id)
    assert [s["uri"] for s in bucket_shards] == [
        "s3://corpus/crawl/2026/c.parquet", "s3://corpus/crawl/2026/part/a.jsonl", "s3://corpus/crawl/2026/part/b.jsonl.gz"]
    for a, b in zip(local_shards, bucket_shards):
        assert {k: v for k, v in a.items() if k != "uri"} == {k: v for k, v in b.items() if k != "uri"}
    assert _documents(ledger, local.dataset_id) == _documents(ledger, remote.dataset_id)

    # the same objects again are the same dataset version; one object, a glob and the CLI work too
    again = ledger.register_dataset("bucket", url, id_field="id")
    assert (again.dataset.dataset_id, again.created) == (remote.dataset_id, False)
    assert remote.content_hash == local.content_hash  # the same bytes, wherever they are
    one = ledger.register_dataset("one", "s3://corpus/crawl/2026/part/b.jsonl.gz", id_field="id").dataset
    assert (one.n_documents, [s["name"] for s in _shards(ledger, one.dataset_id)]) == (20, ["b.jsonl.gz"])
    globbed = ledger.register_dataset("globbed", "s3://corpus/crawl/*/part/*.jsonl*", id_field="id").dataset
    assert [s["name"] for s in _shards(ledger, globbed.dataset_id)] == ["a.jsonl", "b.jsonl.gz"]
    result = CliRunner().invoke(main, ["--ledger", str(tmp_path / "ledger"), "dataset", "add", "cli", url, "--id-field", "id"])
    assert result.exit_code == 0, result.output
    assert ledger.dataset("cli").n_documents == len(rows)

    # a registered shard reads back from the bucket: the audits and RegisteredDataset use it
    ds = ledger.dataset("bucket")
    texts = [t for shard in ledger.sql("SELECT * FROM shards WHERE dataset_id = ? ORDER BY shard_index",
                                       [ds.dataset_id]).to_pylist()
             for batch in read_back(ds, _shard_record(ledger, ds, shard["shard_index"])) for t in batch.texts.to_pylist()]
    assert sorted(texts) == sorted(r["text"] for r in rows)
    items = RegisteredDataset(ledger, "bucket")
    assert sorted(items[i]["key"] for i in range(len(items))) == sorted(r["id"] for r in rows)
    with pytest.raises(InvalidParameterError, match=r"bucket@1: its shards are in object storage \(s3://corpus/"):
        ledger.export_croissant("bucket")


def _shard_record(ledger, ds, index):
    from provenance.records import ShardRecord

    (row,) = ledger.sql("SELECT * FROM shards WHERE dataset_id = ? AND shard_index = ?", [ds.dataset_id, index]).to_pylist()
    return ShardRecord(**row)


def _refused(ledger, source, match, **options):
    before = ledger.datasets(all_versions=True)
    with pytest.raises(SourceError, match=match):
        ledger.register_dataset("bad", source, **options)
    assert ledger.datasets(all_versions=True) == before  # nothing registered


def test_missing_cut_and_wrong_objects_are_refused_by_url(s3, tmp_path):
    s3.bucket("faults")
    ledger = Ledger.init(tmp_path / "ledger")
    _refused(ledger, "s3://faults/nothing-here.jsonl", r"s3://faults/nothing-here.jsonl: no such object or prefix")
    _refused(ledger, "s3://faults/empty/", r"s3://faults/empty/: no such object or prefix")
    _refused(ledger, "s3://faults/*.parquet", r"s3://faults/\*.parquet: pattern matched no objects")
    _refused(ledger, "s3://no-such-bucket/x.jsonl", r"s3://no-such-bucket/x.jsonl: ")
    _refused(ledger, "s3://faults/x.jsonl?versionId=3", "takes no query")
    with pytest.raises(SourceError, match=r"^s3://faults/x.jsonl: credentials in a source URL are refused") as refused:
        ledger.register_dataset("bad", "s3://AKIAEXAMPLE:s3cr3t@faults/x.jsonl")
    assert "s3cr3t" not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
    _refused(ledger, ["s3://faults/a.jsonl", str(tmp_path)], "local files and URLs cannot be registered together")

    lines = "".join(json.dumps({"id": f"d{i}", "text": f"document number {i} about tides"}) + "\n" for i in range(200))
    packed = gzip.compress(lines.encode())
    s3.put("faults/cut/a.jsonl.gz", packed[: len(packed) // 2])
    _refused(ledger, "s3://faults/cut/", r"s3://faults/cut/a.jsonl.gz: gzip data is truncated or corrupt after line")
    s3.delete("faults/cut/a.jsonl.gz")
    s3.put("faults/cut/b.jsonl", lines.encode()[:-20])  # cut inside the last line
    _refused(ledger, "s3://faults/cut/b.jsonl", r"s3://faults/cut/b.jsonl:200: malformed JSON")
    table = pa.Table.from_pylist([{"id": f"d{i}", "text": f"t {i}"} for i in range(100)])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    s3.put("faults/cut/c.parquet", data[: len(data) - 100])
    _refused(ledger, "s3://faults/cut/c.parquet", r"s3://faults/cut/c.parquet: not a readable Parquet file")
    s3.put("faults/odd/notes.csv", b"a,b\n")
    _refused(ledger, "s3://faults/odd/", r"s3://faults/odd/notes.csv")
    assert ledger.datasets() == []


def test_keys_that_cannot_be_read_back_are_refused_and_hidden_folders_left_out(s3, tmp_path):
    """A key `sub/../w.jsonl` was read as `w.jsonl` (another object, outside the prefix: the
    ledger recorded data it never read); `a//b` gave a traceback; `a#1` registered and could never
    be read back. A hidden folder under a prefix was read, unlike the same local folder."""
    import boto3  # Arrow writes `a/../b` as `b` and refuses `a//b`: boto3 writes the keys as given

    s3.bucket("keys")
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    ledger = Ledger.init(tmp_path / "ledger")
    line = b'{"id": "x", "text": "a document about the river"}\n'
    client.put_object(Bucket="keys", Key="dots/sub/../w.jsonl", Body=line)
    s3.put("keys/dots/sub/k.jsonl", line.replace(b'"x"', b'"k"'))
    _refused(ledger, "s3://keys/dots/sub/", r"^s3://keys/dots/sub/\.\./w\.jsonl: a key with a '\.' or '\.\.' part names "
                                           r"another object when read \(a/\.\./b reads b\); rename the object$")
    _refused(ledger, "s3://keys/dots/sub/../w.jsonl", "a key with a '.' or '..' part")
    client.put_object(Bucket="keys", Key="slash//d.jsonl", Body=line)
    _refused(ledger, "s3://keys/slash/", r"^s3://keys/slash//d\.jsonl: a key with an empty part \('//'\) cannot be read")
    _refused(ledger, "s3://keys/slash*", r"^s3://keys/slash//d\.jsonl: a key with an empty part")
    client.put_object(Bucket="keys", Key="hash/a#1.jsonl", Body=line)
    _refused(ledger, "s3://keys/hash/", r"^s3://keys/hash/a#1\.jsonl: a key holding '\?' or '#' cannot be read back")
    with pytest.raises(SourceError, match=r"s3://keys/objects/\.\./x: a key with a '\.' or '\.\.' part"):
        Ledger.init(tmp_path / "other", objects="s3://keys/objects/../x")
    assert not (tmp_path / "other").exists()

    local = tmp_path / "hidden"
    for name in ("x.jsonl", ".z.jsonl", ".cache/y.jsonl", "_SUCCESS", "_temporary/0/part-0.jsonl"):  # a Spark job's
        (local / name).parent.mkdir(parents=True, exist_ok=True)  # `_SUCCESS: unknown file type` refused the folder
        (local / name).write_bytes(b"" if name == "_SUCCESS" else line)
    url = s3.upload(local, "keys/hidden")
    bucket = ledger.register_dataset("bucket", url, id_field="id").dataset
    folder = ledger.register_dataset("folder", str(local), id_field="id").dataset
    globbed = ledger.register_dataset("globbed", "s3://keys/hidden/*.jsonl", id_field="id").dataset
    assert [s["name"] for s in _shards(ledger, bucket.dataset_id)] == ["x.jsonl"]
    assert [s["name"] for s in _shards(ledger, globbed.dataset_id)] == ["x.jsonl"]
    assert bucket.content_hash == folder.content_hash
    # `amb/` names the prefix even when an object `amb` stands beside it (it said: no such object or prefix)
    s3.put("keys/amb", line)
    s3.put("keys/amb/x.jsonl", line)
    beside = ledger.register_dataset("beside", "s3://keys/amb/", id_field="id").dataset
    assert [s["uri"] for s in _shards(ledger, beside.dataset_id)] == ["s3://keys/amb/x.jsonl"]


def test_an_object_whose_key_holds_glob_characters_registers_as_the_same_local_file(s3, tmp_path):
    """`s3://b/odd/[1].jsonl`, an object that exists, was taken as a pattern and refused (`pattern
    matched no objects`) where the same local file registers: an existing key is the object, as an
    existing file is; a pattern still matches when no object has its name."""
    s3.bucket("globs")
    ledger = Ledger.init(tmp_path / "ledger")
    line = b'{"id": "x", "text": "a document about the river"}\n'
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "[1].jsonl").write_bytes(line)
    s3.put("globs/odd/[1].jsonl", line)
    s3.put("globs/odd/1.jsonl", line.replace(b'"x"', b'"one"'))
    s3.put("globs/odd/*.jsonl", line.replace(b'"x"', b'"star"'))
    bucket = ledger.register_dataset("bucket", "s3://globs/odd/[1].jsonl", id_field="id").dataset
    local = ledger.register_dataset("local", str(tmp_path / "odd" / "[1].jsonl"), id_field="id").dataset
    assert [(s["name"], s["uri"]) for s in _shards(ledger, bucket.dataset_id)] == [("[1].jsonl", "s3://globs/odd/[1].jsonl")]
    assert bucket.content_hash == local.content_hash
    star = ledger.register_dataset("star", "s3://globs/odd/*.jsonl", id_field="id").dataset
    assert [d["key"] for d in _documents(ledger, star.dataset_id)] == ["star"]
    pattern = ledger.register_dataset("pattern", "s3://globs/odd/[0-9].jsonl", id_field="id").dataset
    assert [d["key"] for d in _documents(ledger, pattern.dataset_id)] == ["one"]


def test_a_shard_changed_or_deleted_after_registration_is_named_when_read_back(s3, tmp_path):
    s3.bucket("later")
    lines = "".join(json.dumps({"id": f"d{i}", "text": f"entry {i} of the log"}) + "\n" for i in range(10))
    url = s3.put("later/a.jsonl", lines.encode())
    ledger = Ledger.init(tmp_path / "ledger")
    record = ledger.register_dataset("later", url, id_field="id").dataset
    shard = _shard_record(ledger, record, 0)
    assert sum(len(b.texts) for b in read_back(record, shard)) == 10
    s3.put("later/a.jsonl", lines.replace("entry 3", "entry 4").encode())
    with pytest.raises(SourceError, match="s3://later/a.jsonl changed since it was registered as shard a.jsonl"):
        list(read_back(record, shard))
    s3.delete("later/a.jsonl")
    with pytest.raises(SourceError, match="s3://later/a.jsonl: shard a.jsonl of .* is no longer there"):
        list(read_back(record, shard))


def test_a_server_that_is_gone_fails_the_registration_naming_the_url(tmp_path):
    """The S3 endpoint stops answering: the registration fails (within the retries' time), names
    the URL, and leaves the ledger as it was."""
    with s3server.running(tmp_path / "moto") as server:
        server.bucket("gone")
        url = server.put("gone/a.jsonl", b'{"text": "one document"}\n')
        ledger = Ledger.init(tmp_path / "ledger")
        server.proc.kill()
        server.proc.wait(10)
        _refused(ledger, url, r"s3://gone/a.jsonl: looking it up failed")


def test_an_endpoint_that_never_answers_is_named_with_the_settings_that_bound_the_wait(tmp_path, monkeypatch):
    """A server that takes connections and sends nothing: the registration fails after
    ``PROV_S3_TIMEOUT`` × ``AWS_MAX_ATTEMPTS`` (it waited 60 s × 3 tries, and named neither the
    endpoint nor what sets the wait); bad values of either setting are refused by name."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("PROV_S3_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    ledger = Ledger.init(tmp_path / "ledger")
    try:
        _refused(ledger, "s3://silent/a.jsonl", rf"s3://silent/a.jsonl: looking it up failed: {endpoint} did not answer "
                 r"\(1 try, each waiting 1 s for a byte; set PROV_S3_TIMEOUT or AWS_MAX_ATTEMPTS")
    finally:
        listener.close()
    monkeypatch.setenv("PROV_S3_TIMEOUT", "soon")
    _refused(ledger, "s3://silent/a.jsonl", r"PROV_S3_TIMEOUT='soon' is not a number of seconds")
    monkeypatch.setenv("PROV_S3_TIMEOUT", "-1")
    _refused(ledger, "s3://silent/a.jsonl", r"PROV_S3_TIMEOUT='-1' is not a number of seconds")
    monkeypatch.setenv("PROV_S3_TIMEOUT", "5")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    _refused(ledger, "s3://silent/a.jsonl", r"AWS_MAX_ATTEMPTS='0' is not a number of tries from 1 to 100")


@pytest.mark.parametrize("when", ["identify", "_rehash"])
def test_a_server_lost_mid_registration_is_not_called_damage_or_a_missing_object(tmp_path, monkeypatch, when):
    """The S3 server dies after a Parquet object was hashed (``identify``), or after its rows were
    read and before its bytes are hashed again (``_rehash``): the error says the read failed, not
    that the object is not Parquet (it said "truncated or corrupt?") or that it "disappeared"."""
    from provenance.sources.files import FileShard

    monkeypatch.setenv("PROV_S3_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with s3server.running(tmp_path / "moto") as server:
        server.bucket("net")
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([{"text": "one document about the tides"}]), sink)
        url = server.put("net/b.parquet", sink.getvalue().to_pybytes())
        ledger = Ledger.init(tmp_path / "ledger")
        step = getattr(FileShard, when)

        def then_the_server_dies(self):
            if when == "_rehash":
                server.proc.kill()
                server.proc.wait(10)
            out = step(self)
            if when == "identify":
                server.proc.kill()
                server.proc.wait(10)
            return out

        monkeypatch.setattr(FileShard, when, then_the_server_dies)
        with pytest.raises(SourceError) as refused:
            ledger.register_dataset("net", url)
        message = str(refused.value)
        assert message.startswith(f"{url}: reading it failed: "), message
        assert "NETWORK_CONNECTION" in message and "disappeared" not in message and "corrupt" not in message
        assert ledger.datasets() == []


def test_a_pattern_of_bucket_names_and_a_pattern_ending_in_a_slash(s3, tmp_path):
    """`s3://patt*/x/a.jsonl` matched no objects (the bucket `patt` was listed) where `s3://*/x/a.jsonl`
    matched; `x/*/` (a prefix, by its slash) matched the objects directly in `x/` too, and
    `x/[a].jsonl/` registered the object `x/a.jsonl` where `x/a.jsonl/` names a prefix."""
    s3.bucket("patterns")
    ledger = Ledger.init(tmp_path / "ledger")
    line = b'{"id": "x", "text": "a document about the river"}\n'
    s3.put("patterns/x/a.jsonl", line)
    s3.put("patterns/x/sub/b.jsonl", line.replace(b'"x"', b'"b"'))
    bucket = ledger.register_dataset("bucket", "s3://patt*/x/a.jsonl", id_field="id").dataset
    assert [s["uri"] for s in _shards(ledger, bucket.dataset_id)] == ["s3://patterns/x/a.jsonl"]
    below = ledger.register_dataset("below", "s3://patterns/x/*/", id_field="id").dataset
    assert [(s["name"], s["uri"]) for s in _shards(ledger, below.dataset_id)] == [("b.jsonl", "s3://patterns/x/sub/b.jsonl")]
    _refused(ledger, "s3://patterns/x/[a].jsonl/", r"^s3://patterns/x/\[a\]\.jsonl/: pattern matched no objects$")


def test_a_file_url_is_the_local_path(tmp_path):
    """`file:///data/crawl/` was taken for a path named `file:///data/crawl/` and refused: `no such
    file or folder`, of a folder that is there."""
    folder = tmp_path / "a folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"id": "x", "text": "a document about the river"}) + "\n")
    ledger = Ledger.init(tmp_path / "ledger")
    url = "file://" + str(folder).replace(" ", "%20") + "/"
    by_url = ledger.register_dataset("by-url", url, id_field="id").dataset
    by_path = ledger.register_dataset("by-path", str(folder), id_field="id").dataset
    assert _shards(ledger, by_url.dataset_id) == _shards(ledger, by_path.dataset_id)
    assert _shards(ledger, by_url.dataset_id)[0]["uri"] == str(folder / "a.jsonl")
    _refused(ledger, "file://otherhost/data/a.jsonl", r"^file://otherhost/data/a\.jsonl: a file:// URL names a file of "
                                                      r"this machine")


def test_a_shard_that_changes_while_it_is_read_back_gives_no_texts(s3, tmp_path, monkeypatch):
    """An object rewritten after its hash was checked and before it was read: its texts were kept
    (the new bytes') beside the error, which said `file changed while it was being registered`."""
    from provenance.audits.texts import read_texts
    from provenance.sources.files import FileShard

    s3.bucket("racing")
    lines = "".join(json.dumps({"id": f"d{i}", "text": f"entry {i} of the log"}) + "\n" for i in range(10))
    url = s3.put("racing/a.jsonl", lines.encode())
    ledger = Ledger.init(tmp_path / "ledger")
    record = ledger.register_dataset("racing", url, id_field="id").dataset
    rehash = FileShard._rehash

    def then_rewritten(shard):
        digest = rehash(shard)
        s3.put("racing/a.jsonl", lines.replace("entry 3", "entry 4").encode())
        return digest

    monkeypatch.setattr(FileShard, "_rehash", then_rewritten)
    texts, unreadable = read_texts(ledger, {(record.dataset_id, 0): None})
    assert texts == {}
    assert unreadable == ["racing@1 shard a.jsonl: s3://racing/a.jsonl: changed since it was registered as shard a.jsonl "
                          "of racing@1 (while it was being read back)"]


def test_an_object_named_by_an_s3_and_an_s3a_url_is_one_shard(s3, tmp_path):
    """`s3://b/a.jsonl` and `s3a://b/a.jsonl` (Hadoop's name for the same object) were two shards
    named `a.jsonl`, refused as `key 'a.jsonl:0' occurs twice, at a.jsonl line 1 and at a.jsonl line 1`."""
    s3.bucket("aliases")
    url = s3.put("aliases/a.jsonl", b'{"text": "a document about the river"}\n')
    ledger = Ledger.init(tmp_path / "ledger")
    both = ledger.register_dataset("both", [url, url.replace("s3://", "s3a://")]).dataset
    assert [(s["name"], s["uri"]) for s in _shards(ledger, both.dataset_id)] == [("a.jsonl", "s3://aliases/a.jsonl")]
    assert both.n_documents == 1
