"""Faults in what a source is, not only in what it holds: unpaired surrogates under every
``on_invalid`` policy, symlink loops, FIFOs, sockets and devices among the files, and Parquet
columns of unusual types. Each is refused with a message naming the file (and line, row or
column) and leaves the ledger as it was, or registers exactly what a clean source would.

Reading a FIFO or a device can block or never end, so every test runs under an alarm, and the
command line is also run once in a child process with a timeout.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from provenance import Ledger
from provenance.cli.main import main
from provenance.errors import SourceError

GO_ON = "(on_invalid / --on-invalid replace or skip to go on)"
COMPARED = ["key", "row_index", "line", "exact_hash", "token_count", "n_bytes", "signature", "band_keys"]
TIME_LIMIT_S = 120

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"), reason="needs POSIX files")


class Hung(Exception):
    """The alarm rang: the code under test ran past its time limit (not an OSError, so no reader
    can mistake it for a read failure and wrap it)."""


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail a test that blocks (on a FIFO, say) instead of hanging the suite."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum, frame):
        raise Hung(f"the test ran past {TIME_LIMIT_S} s: something blocked")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def populated(ledger: Ledger, data_dir: Path, write_jsonl, ledger_state) -> tuple[Ledger, Callable[[], None]]:
    """A ledger holding one dataset ``good@1``, and a check that nothing changed since."""
    good = [{"id": f"g{i}", "text": f"a good document number {i} with some words"} for i in range(3)]
    ledger.register_dataset("good", write_jsonl(data_dir.parent / "good.jsonl", good), id_field="id")
    before = ledger_state(ledger)

    def unchanged() -> None:
        assert ledger_state(ledger) == before
        assert [d.dataset_id for d in ledger.datasets(all_versions=True)] == ["good@1"]

    return ledger, unchanged


def refused(ledger: Ledger, sources, **options) -> str:
    with pytest.raises(SourceError) as info:
        ledger.register_dataset("bad", sources, **options)
    return str(info.value)


def rows(ledger: Ledger, name: str) -> list[dict]:
    return ledger.documents(name, columns=COMPARED).to_pylist()


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A folder holding a ledger, as the current folder of CLI tests."""
    monkeypatch.delenv("PROV_LEDGER", raising=False)
    monkeypatch.chdir(tmp_path)
    Ledger.init(tmp_path)
    return tmp_path


def cli(*args: str):
    return CliRunner().invoke(main, ["-q", *args])


def cli_refused(*args: str) -> str:
    """Run ``prov`` expecting bad input (exit status 4) and return its output."""
    result = cli(*args)
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    return result.output


# -- 1. unpaired surrogates --------------------------------------------------------------------

# Written as bytes: the JSON holds the six characters \ud800, as a broken encoder writes them.
SURROGATE_LINES = [
    b'{"id": "a", "text": "a clean line of text"}',
    b'{"id": "b", "text": "abc \\ud800 def"}',  # in the text
    b'{"id": "c\\udc00", "text": "an id with a lone low half"}',  # in the id
    b'{"id": "\\ud800d", "text": "both \\udfff broken"}',  # in both: one invalid record
    b'{"id": "e", "text": "a real pair \\ud83d\\ude00 is fine"}',
]
# What ``replace`` must store: each unpaired surrogate becomes U+FFFD, nothing else changes.
REPAIRED = [
    {"id": "a", "text": "a clean line of text"},
    {"id": "b", "text": "abc \ufffd def"},
    {"id": "c\ufffd", "text": "an id with a lone low half"},
    {"id": "\ufffdd", "text": "both \ufffd broken"},
    {"id": "e", "text": "a real pair \U0001f600 is fine"},
]


def write_surrogates(folder: Path, suffix: str, lines: list[bytes] = SURROGATE_LINES) -> Path:
    data = b"\n".join(lines) + b"\n"
    path = folder / f"sur{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_surrogate_in_text_is_refused_naming_file_and_line(populated, data_dir, suffix):
    ledger, unchanged = populated
    path = write_surrogates(data_dir, suffix)
    for id_field in (None, "id"):
        assert refused(ledger, path, id_field=id_field) == f"{path}:2: text holds an unpaired surrogate at character 4 {GO_ON}"
        unchanged()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_surrogate_in_id_is_refused_naming_file_and_line(populated, data_dir, suffix):
    ledger, unchanged = populated
    path = write_surrogates(data_dir, suffix, [SURROGATE_LINES[0], SURROGATE_LINES[2]])
    assert refused(ledger, path, id_field="id") == f"{path}:2: id holds an unpaired surrogate at character 1 {GO_ON}"
    unchanged()
    # Without an id field the id is not read, so the record is valid.
    ds = ledger.register_dataset("no-ids", path).dataset
    assert (ds.n_documents, ds.n_invalid_replaced, ds.n_invalid_skipped) == (2, 0, 0)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_surrogates_replaced_store_what_the_repaired_file_would(ledger, data_dir, write_jsonl, suffix):
    path = write_surrogates(data_dir, suffix)
    ds = ledger.register_dataset("replaced", path, id_field="id", on_invalid="replace").dataset
    assert (ds.n_documents, ds.n_invalid_replaced, ds.n_invalid_skipped) == (5, 3, 0)

    clean = write_jsonl(data_dir.parent / "clean.jsonl", REPAIRED)
    ledger.register_dataset("clean", clean, id_field="id")
    stored = rows(ledger, "replaced")
    assert [r["key"] for r in stored] == ["a", "b", "c\ufffd", "\ufffdd", "e"]
    assert stored == rows(ledger, "clean")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_surrogates_skipped_are_counted(ledger, data_dir, suffix):
    path = write_surrogates(data_dir, suffix)
    result = ledger.register_dataset("skipped", path, id_field="id", on_invalid="skip")
    ds = result.dataset
    assert (ds.n_documents, ds.n_invalid_replaced, ds.n_invalid_skipped) == (2, 0, 3)
    assert result.message.endswith("(3 invalid records skipped)")
    assert [(r["key"], r["line"], r["row_index"]) for r in rows(ledger, "skipped")] == [("a", 1, 0), ("e", 5, 4)]


def test_surrogates_in_records_under_every_policy(populated):
    ledger, unchanged = populated
    records = [{"id": "a", "text": "fine text here"}, {"id": "b\ud800", "text": "the id is broken"},
               {"id": "c", "text": "the text \udc80 is broken"}]
    assert refused(ledger, records, id_field="id") == (
        f"records[batch-00000]: record 1: id holds an unpaired surrogate at character 1 {GO_ON}"
    )
    unchanged()
    ds = ledger.register_dataset("replaced", records, id_field="id", on_invalid="replace").dataset
    assert (ds.n_documents, ds.n_invalid_replaced) == (3, 2)
    assert [r["key"] for r in rows(ledger, "replaced")] == ["a", "b\ufffd", "c"]
    ds = ledger.register_dataset("skipped", records, id_field="id", on_invalid="skip").dataset
    assert (ds.n_documents, ds.n_invalid_skipped) == (1, 2)
    assert [r["key"] for r in rows(ledger, "skipped")] == ["a"]


def _with_raw_bytes(values: list[bytes]) -> pa.Array:
    """A string array holding ``values`` unchecked, as a writer that does not validate leaves them."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def test_surrogate_bytes_in_a_parquet_id_column(populated, data_dir):
    ledger, unchanged = populated
    # "b\ud800" encoded with surrogatepass: bytes that are not UTF-8
    ids = _with_raw_bytes([b"a", "b\ud800".encode("utf-8", "surrogatepass"), b"c"])
    path = data_dir / "ids.parquet"
    pq.write_table(pa.table({"text": ["one two three", "four five six", "seven eight nine"], "id": ids}), path)
    assert refused(ledger, path, id_field="id") == f"{path}: row 1: invalid UTF-8 at byte 1 of the id {GO_ON}"
    unchanged()
    ds = ledger.register_dataset("replaced", path, id_field="id", on_invalid="replace").dataset
    assert (ds.n_documents, ds.n_invalid_replaced) == (3, 1)
    assert [r["key"] for r in rows(ledger, "replaced")] == ["a", "b\ufffd\ufffd\ufffd", "c"]
    ds = ledger.register_dataset("skipped", path, id_field="id", on_invalid="skip").dataset
    assert (ds.n_documents, ds.n_invalid_skipped) == (2, 1)
    assert [(r["key"], r["row_index"]) for r in rows(ledger, "skipped")] == [("a", 0), ("c", 2)]


def test_cli_surrogates(project):
    path = write_surrogates(project, ".jsonl")
    output = cli_refused("dataset", "add", "sur", str(path), "--id-field", "id")
    assert f"{path}:2: text holds an unpaired surrogate at character 4" in output
    assert Ledger.open(project).datasets(all_versions=True) == []

    result = cli("dataset", "add", "sur", str(path), "--id-field", "id", "--on-invalid", "replace", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.output)["dataset"]
    assert (ds["n_documents"], ds["n_invalid_replaced"], ds["n_invalid_skipped"]) == (5, 3, 0)


# -- 2. symlink loops --------------------------------------------------------------------------

LOOP = "symlink loop: the link never reaches a file"


def _loops(folder: Path) -> tuple[Path, Path]:
    """``a.jsonl -> b.jsonl -> a.jsonl`` and ``self.jsonl -> self.jsonl`` beside a good file."""
    (folder / "good.jsonl").write_text('{"text": "a good document"}\n')
    os.symlink("b.jsonl", folder / "a.jsonl")
    os.symlink("a.jsonl", folder / "b.jsonl")
    os.symlink("self.jsonl", folder / "self.jsonl")
    return folder / "a.jsonl", folder / "self.jsonl"


@posix_only
def test_symlink_loops_are_refused_by_name(populated, data_dir):
    ledger, unchanged = populated
    pair, itself = _loops(data_dir)
    assert refused(ledger, data_dir) == f"{pair}: {LOOP}"  # the folder: the first loop in name order
    assert refused(ledger, pair) == f"{pair}: {LOOP}"
    assert refused(ledger, itself) == f"{itself}: {LOOP}"
    assert refused(ledger, [data_dir / "good.jsonl", itself]) == f"{itself}: {LOOP}"
    assert refused(ledger, str(data_dir / "s*.jsonl")) == f"{itself}: {LOOP}"  # a glob no longer drops it
    unchanged()


@posix_only
def test_broken_symlink_is_refused_by_name(populated, data_dir):
    ledger, unchanged = populated
    os.symlink("missing.jsonl", data_dir / "dangling.jsonl")
    expected = f"{data_dir / 'dangling.jsonl'}: broken symlink (a symlink to missing.jsonl): its target does not exist"
    assert refused(ledger, data_dir) == expected
    assert refused(ledger, data_dir / "dangling.jsonl") == expected
    unchanged()


@posix_only
def test_cli_symlink_loop(project):
    folder = project / "data"
    folder.mkdir()
    pair, itself = _loops(folder)
    assert f"{pair}: {LOOP}" in cli_refused("dataset", "add", "loops", str(folder))
    assert f"{itself}: {LOOP}" in cli_refused("dataset", "add", "loops", str(itself))
    assert Ledger.open(project).datasets(all_versions=True) == []


# -- 3. FIFOs, sockets, devices ----------------------------------------------------------------

NOT_REGULAR = "not a regular file: it is {kind}; only regular files can be registered"


@pytest.fixture
def unix_socket(data_dir: Path) -> Iterator[Path]:
    path = data_dir / "s.jsonl"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:  # a path too long for sun_path
        sock.close()
        pytest.skip(f"cannot bind a unix socket at {path}: {exc}")
    yield path
    sock.close()


@posix_only
def test_fifo_is_refused_not_opened(populated, data_dir):
    ledger, unchanged = populated
    (data_dir / "good.jsonl").write_text('{"text": "a good document"}\n')
    fifo = data_dir / "p.jsonl"
    os.mkfifo(fifo)
    expected = f"{fifo}: " + NOT_REGULAR.format(kind="a FIFO (named pipe)")
    assert refused(ledger, data_dir) == expected
    assert refused(ledger, fifo) == expected  # given directly: not "no such file"
    assert refused(ledger, str(data_dir / "*.jsonl")) == expected
    unchanged()


@posix_only
def test_socket_is_refused(populated, data_dir, unix_socket):
    ledger, unchanged = populated
    expected = f"{unix_socket}: " + NOT_REGULAR.format(kind="a socket")
    assert refused(ledger, data_dir) == expected
    assert refused(ledger, unix_socket) == expected
    unchanged()


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_character_devices_are_refused(populated, data_dir):
    ledger, unchanged = populated
    link = data_dir / "x.jsonl"
    os.symlink("/dev/zero", link)  # read, it would never end
    expected = f"{link}: " + NOT_REGULAR.format(kind="a character device (a symlink to /dev/zero)")
    assert refused(ledger, data_dir) == expected
    assert refused(ledger, link) == expected
    assert refused(ledger, "/dev/null") == "/dev/null: " + NOT_REGULAR.format(kind="a character device")
    unchanged()


@posix_only
def test_cli_special_files(project):
    folder = project / "data"
    folder.mkdir()
    os.mkfifo(folder / "p.jsonl")
    output = cli_refused("dataset", "add", "pipes", str(folder))
    assert f"{folder / 'p.jsonl'}: not a regular file: it is a FIFO (named pipe)" in output
    output = cli_refused("dataset", "add", "pipes", str(folder / "p.jsonl"))
    assert "not a regular file" in output and "no such file" not in output
    assert Ledger.open(project).datasets(all_versions=True) == []


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_cli_special_files_in_a_child_process(project):
    """The same through ``prov`` in a child process: a regression hangs the child, not the suite."""
    folder = project / "data"
    folder.mkdir()
    os.mkfifo(folder / "p.jsonl")
    os.symlink("/dev/zero", project / "x.jsonl")
    for source, kind in ((folder, "a FIFO (named pipe)"), (project / "x.jsonl", "a character device")):
        child = subprocess.run(
            [sys.executable, "-m", "provenance.cli.main", "-q", "dataset", "add", "special", str(source)],
            capture_output=True, text=True, timeout=TIME_LIMIT_S // 2, cwd=project,
        )
        assert child.returncode == 4, child.stderr
        assert f"not a regular file: it is {kind}" in child.stderr
        assert "Traceback" not in child.stderr


# -- 4. Parquet column types -------------------------------------------------------------------

TEXTS = ["alpha beta gamma delta epsilon", "zeta eta theta iota kappa", "alpha beta gamma delta epsilon"]
IDS = ["a", "b", "c"]


def write_parquet(folder: Path, name: str, **columns: pa.Array) -> Path:
    path = folder / f"{name}.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    ("text", "ident"),
    [
        (pa.array(TEXTS).dictionary_encode(), pa.array(IDS)),
        (pa.array(TEXTS), pa.array(IDS).dictionary_encode()),
        (pa.array(TEXTS).dictionary_encode(), pa.array(IDS).dictionary_encode()),
        (pa.array(TEXTS, pa.large_string()), pa.array(IDS, pa.large_string())),
    ],
    ids=["dictionary-text", "dictionary-id", "dictionary-both", "large-string"],
)
def test_parquet_string_encodings_register_like_plain_strings(ledger, data_dir, text, ident):
    plain = write_parquet(data_dir, "plain", text=pa.array(TEXTS), id=pa.array(IDS))
    other = write_parquet(data_dir, "other", text=text, id=ident)
    ledger.register_dataset("plain", plain, id_field="id")
    ds = ledger.register_dataset("other", other, id_field="id").dataset
    assert ds.n_documents == 3
    assert pq.read_schema(other).field("text").type == text.type  # the file kept the encoding
    assert rows(ledger, "other") == rows(ledger, "plain")
    assert [r["key"] for r in rows(ledger, "other")] == IDS


def test_arrow_tables_with_dictionary_or_view_columns_register_like_plain_strings(ledger):
    ledger.register_dataset("plain", pa.table({"text": TEXTS, "id": IDS}), id_field="id")
    encoded = pa.table({"text": pa.array(TEXTS).dictionary_encode(), "id": pa.array(IDS).dictionary_encode()})
    ledger.register_dataset("dictionary", encoded, id_field="id")
    viewed = pa.table({"text": pa.array(TEXTS, pa.string_view()), "id": pa.array(IDS)})
    ledger.register_dataset("view", viewed, id_field="id")
    assert rows(ledger, "dictionary") == rows(ledger, "plain")
    assert rows(ledger, "view") == rows(ledger, "plain")


def test_parquet_integer_ids_are_keys(ledger, data_dir):
    path = write_parquet(data_dir, "ints", text=pa.array(TEXTS), id=pa.array([7, 8, 9]).dictionary_encode())
    ledger.register_dataset("ints", path, id_field="id")
    assert [r["key"] for r in rows(ledger, "ints")] == ["7", "8", "9"]


@pytest.mark.parametrize(
    ("ident", "type_name"),
    [
        (pa.array([["a"], ["b"], ["c"]]), "list<element: string>"),
        (pa.array([{"x": 1}, {"x": 2}, {"x": 3}]), "struct<x: int64>"),
        (pa.array([1.5, 2.5, 3.5]), "double"),
        (pa.array([True, False, True]), "bool"),
        (pa.array([b"a", b"b", b"c"]), "binary"),
    ],
    ids=["list", "struct", "float", "bool", "binary"],
)
def test_parquet_id_column_of_another_type_is_named(populated, data_dir, ident, type_name):
    ledger, unchanged = populated
    path = write_parquet(data_dir, "ids", text=pa.array(TEXTS), id=ident)
    assert refused(ledger, path, id_field="id") == (
        f"{path}: the id column has type {type_name}; ids must be strings or integers (column 'id')"
    )
    unchanged()


def test_arrow_table_with_list_ids_is_named(populated):
    ledger, unchanged = populated
    table = pa.table({"text": TEXTS, "id": [["a"], ["b"], ["c"]]})
    assert refused(ledger, table, id_field="id") == (
        "arrow table: the id column has type list<item: string>; ids must be strings or integers (column 'id')"
    )
    unchanged()


@pytest.mark.parametrize(
    ("text", "type_name"),
    [
        (pa.array([1, 2, 3]), "int64"),
        (pa.array([t.encode() for t in TEXTS], pa.binary()), "binary"),
        (pa.array([[t] for t in TEXTS]), "list<element: string>"),
        (pa.array([1, 2, 3]).dictionary_encode(), "int64"),
    ],
    ids=["int", "binary", "list", "dictionary-of-int"],
)
def test_parquet_text_column_of_another_type_is_named(populated, data_dir, text, type_name):
    ledger, unchanged = populated
    path = write_parquet(data_dir, "texts", text=text)
    assert refused(ledger, path) == f"{path}: text column 'text' has type {type_name}, expected string"
    unchanged()


def test_cli_parquet_column_types(project):
    listed = write_parquet(project, "listed", text=pa.array(TEXTS), id=pa.array([["a"], ["b"], ["c"]]))
    output = cli_refused("dataset", "add", "p", str(listed), "--id-field", "id")
    assert f"{listed}: the id column has type list<element: string>; ids must be strings or integers" in output

    encoded = write_parquet(project, "encoded", text=pa.array(TEXTS).dictionary_encode(), id=pa.array(IDS))
    result = cli("dataset", "add", "p", str(encoded), "--id-field", "id", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dataset"]["n_documents"] == 3


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(ledger, data_dir):
    """Bytes a Latin-1 system wrote in a file name (Python holds them as surrogates) reached the
    shard hash as a UnicodeEncodeError traceback; the file is now refused by name."""
    folder = data_dir / "latin1"
    folder.mkdir()
    with open(os.fsencode(folder) + b"/caf\xe9.jsonl", "w", encoding="utf-8") as f:
        f.write('{"text": "hello there general kenobi"}\n')
    for source in (folder, folder / "*.jsonl"):
        with pytest.raises(SourceError, match=r"caf\\xe9.jsonl: the file's name is not valid UTF-8; rename it"):
            ledger.register_dataset("latin", source)
    result = CliRunner().invoke(main, ["--ledger", str(ledger.root), "dataset", "add", "latin", str(folder)])
    assert result.exit_code == 4 and "not valid UTF-8" in result.output and "Traceback" not in result.output
    assert ledger.datasets() == []
