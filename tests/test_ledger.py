"""The ledger: creating, finding and opening it, schema migrations, read-only SQL, dataset lookup."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import provenance.ledger.schema as schema_module  # where LedgerStore._migrate reads migrations()
from provenance import Ledger
from provenance.errors import (
    AccessDeniedError,
    InvalidParameterError,
    LedgerDamagedError,
    LedgerExistsError,
    LedgerNotFoundError,
    NotFoundError,
    ReadOnlyQueryError,
    SchemaVersionError,
)
from provenance.ledger import SCHEMA_VERSION, LedgerStore, migrations, quote_identifier

DOCS = [{"id": f"d{i}", "text": f"document {i} of the ledger tests"} for i in range(3)]


def raw_rows(ledger: Ledger, query: str) -> list[tuple]:
    """Read the database behind the library's back (the ledger must not hold a connection)."""
    con = duckdb.connect(str(ledger.db_path), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# -- creating, finding, opening ------------------------------------------------------------------


def test_init_creates_the_layout(tmp_path):
    ledger = Ledger.init(tmp_path)
    assert ledger.root == (tmp_path / ".prov").resolve()
    assert ledger.db_path == ledger.root / "ledger.duckdb"
    assert ledger.db_path.is_file()
    assert (ledger.root / "objects").is_dir() and ledger.objects_path == ledger.root / "objects"
    assert ledger.schema_version() == SCHEMA_VERSION == len(migrations()) == 15
    assert ledger.summary() == {
        "path": str(ledger.root), "schema_version": 15, "datasets": 0, "dataset_versions": 0, "shards": 0,
        "documents": 0, "bytes": 0, "fingerprint_configs": 0,
    }
    meta = dict(raw_rows(ledger, "SELECT key, value FROM ledger_meta"))
    assert set(meta) == {"created_at", "created_by"} and meta["created_by"] == "provenance"


def test_init_twice_raises(tmp_path):
    Ledger.init(tmp_path)
    with pytest.raises(LedgerExistsError, match="a ledger already exists at"):
        Ledger.init(tmp_path)
    with pytest.raises(LedgerExistsError):
        Ledger.init(tmp_path / ".prov")


def test_init_at_the_prov_folder_itself(tmp_path):
    ledger = Ledger.init(tmp_path / "project" / ".prov")
    assert ledger.root == (tmp_path / "project" / ".prov").resolve()
    assert not (tmp_path / "project" / ".prov" / ".prov").exists()


def test_open_finds_the_ledger_from_a_subfolder(tmp_path, monkeypatch):
    created = Ledger.init(tmp_path)
    created.register_dataset("docs", DOCS)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)

    found = Ledger.open()

    assert found.root == created.root
    assert Ledger.find() == created.root
    assert found.dataset("docs").n_documents == 3


def test_open_from_the_prov_path_and_the_project_folder(tmp_path, monkeypatch):
    created = Ledger.init(tmp_path)
    assert Ledger.open(tmp_path / ".prov").root == created.root
    assert Ledger.open(tmp_path).root == created.root
    monkeypatch.chdir(tmp_path / ".prov" / "objects")
    assert Ledger.open().root == created.root


def test_no_ledger_elsewhere(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(LedgerNotFoundError, match="no ledger in .*elsewhere or any folder above it"):
        Ledger.open()
    with pytest.raises(LedgerNotFoundError, match="no ledger at"):
        Ledger.open(elsewhere)


@pytest.mark.parametrize("name, shown, said", [
    ("caf\udce9", r"caf\\xe9",  # how Python holds the byte 0xE9 of a name that is not UTF-8
     r"the path is not valid UTF-8, and DuckDB opens a database only at a UTF-8 path; rename the folder"),
    ("q?x", r"q\?x", r"the path holds a '\?', which DuckDB takes for the start of a database's options; rename the folder"),
])
def test_a_folder_whose_path_duckdb_cannot_open_is_refused_naming_it(tmp_path, monkeypatch, name, shown, said):
    """A folder a Latin-1 system named (``caf\\xe9``): ``init`` made ``.prov/objects`` and ``tmp``
    there, then DuckDB raised ``RuntimeError: std::bad_cast``; ``open`` and every command raised
    it too, and ``backup`` copied the whole ledger before it did. A ``?``, which DuckDB reads as
    the start of a database path's options: ``prov init 'q?x'`` failed with a traceback (``Cannot
    open file ".../q.wal?x/.prov/ledger.duckdb"``) and left a half-made ``.prov``."""
    odd = tmp_path / name
    with pytest.raises(InvalidParameterError, match=rf"^cannot create a ledger at .*{shown}/\.prov: {said}$"):
        Ledger.init(odd)
    assert not odd.exists()
    ledger = Ledger.init(tmp_path / "ok")
    with pytest.raises(InvalidParameterError, match=rf"^cannot back up into .*{shown}/copy: {said}$"):
        ledger.backup(odd / "copy")
    assert not odd.exists()
    odd.mkdir()
    (tmp_path / "ok" / ".prov").rename(odd / ".prov")
    for path in (odd, odd / ".prov"):
        with pytest.raises(InvalidParameterError, match=rf"^cannot open the ledger at .*{shown}/\.prov: {said}$"):
            Ledger.open(path)
    monkeypatch.chdir(odd)  # found from the current folder
    with pytest.raises(InvalidParameterError, match=rf"^cannot open the ledger at .*{shown}/\.prov: {said}$"):
        Ledger.open()


def test_a_duckdb_file_that_is_not_a_ledger(tmp_path):
    (tmp_path / ".prov").mkdir()
    duckdb.connect(str(tmp_path / ".prov" / "ledger.duckdb")).close()
    with pytest.raises(LedgerNotFoundError, match="is not a provenance ledger"):
        Ledger.open(tmp_path)


# -- schema and migrations -----------------------------------------------------------------------


def test_schema_migrations_has_one_row_per_migration(ledger):
    rows = raw_rows(ledger, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [(v, name) for v, name, _ in migrations()] == [(1, "initial"), (2, "versions"), (3, "runs"), (4, "merges"), (5, "audits"),
                                                                 (6, "service"), (7, "version_files"), (8, "document_files"),
                                                                 (9, "retractions"), (10, "idempotency_request"),
                                                                 (11, "unseen_shards"), (12, "token_answers"),
                                                                 (13, "audit_pairs_deleted"), (14, "committed_writes"),
                                                                 (15, "checkpoints")]


def test_opening_again_applies_nothing(ledger):
    before = raw_rows(ledger, "SELECT version, name, applied_at FROM schema_migrations")
    meta = raw_rows(ledger, "SELECT * FROM ledger_meta ORDER BY key")
    Ledger.open(ledger.root)
    Ledger.open(ledger.root)
    assert raw_rows(ledger, "SELECT version, name, applied_at FROM schema_migrations") == before
    assert raw_rows(ledger, "SELECT * FROM ledger_meta ORDER BY key") == meta


def test_newer_schema_is_refused(ledger):
    con = duckdb.connect(str(ledger.db_path))
    con.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', now())")
    con.close()
    with pytest.raises(SchemaVersionError) as info:
        Ledger.open(ledger.root)
    assert "schema version 999" in str(info.value) and f"understands up to {SCHEMA_VERSION}" in str(info.value)


def test_an_empty_schema_migrations_table_is_named_and_the_file_left_as_it_was(ledger):
    """A ``schema_migrations`` emptied by other means read as schema version 0: every migration
    ran again, and every command ended in a traceback (``Table with name "schema_migrations"
    already exists``)."""
    con = duckdb.connect(str(ledger.db_path))
    con.execute("DELETE FROM schema_migrations")
    con.close()
    before = ledger.db_path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(LedgerDamagedError, match=r"ledger\.duckdb has a schema_migrations table with no rows, so "
                                                     r"which migrations it holds is unknown .* Restore it from a backup"):
            Ledger.open(ledger.root, read_only=read_only)
    assert ledger.db_path.read_bytes() == before


SHIPPED = len(migrations())


def _with_extra(sql: str):
    shipped = migrations()

    def patched():
        return [*shipped, (SHIPPED + 1, "add_notes", sql)]

    return patched


def test_older_ledger_is_migrated_once(ledger, monkeypatch):
    ledger.register_dataset("docs", DOCS)
    monkeypatch.setattr(schema_module, "migrations", _with_extra("CREATE TABLE notes (note VARCHAR NOT NULL);"))

    opened = Ledger.open(ledger.root)

    assert opened.schema_version() == SHIPPED + 1
    assert raw_rows(ledger, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (v, name) for v, name, _ in migrations()
    ] + [(SHIPPED + 1, "add_notes")]
    assert raw_rows(ledger, "SELECT count(*) FROM notes") == [(0,)]
    Ledger.open(ledger.root)  # a second application would fail: the table exists
    assert raw_rows(ledger, "SELECT count(*) FROM schema_migrations") == [(SHIPPED + 1,)]
    assert opened.dataset("docs").n_documents == 3  # data survives the migration


def test_failing_migration_leaves_nothing_behind(ledger, monkeypatch):
    broken = "CREATE TABLE notes (note VARCHAR); INSERT INTO notes VALUES ('x'); SELECT * FROM no_such_table;"
    monkeypatch.setattr(schema_module, "migrations", _with_extra(broken))

    with pytest.raises(duckdb.CatalogException):
        Ledger.open(ledger.root)

    assert raw_rows(ledger, "SELECT version FROM schema_migrations ORDER BY 1") == [(v,) for v in range(1, SHIPPED + 1)]
    assert raw_rows(ledger, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'notes'") == [(0,)]
    monkeypatch.setattr(schema_module, "migrations", _with_extra("CREATE TABLE notes (note VARCHAR);"))
    assert Ledger.open(ledger.root).schema_version() == SHIPPED + 1  # the fixed migration then applies


def _older_code(monkeypatch, upto: int) -> None:
    """Make ledgers as the code of schema version ``upto`` did: its migrations only, and (before
    0014) write transactions without numbers (undone by ``monkeypatch.undo()``)."""
    earlier = migrations()[:upto]
    monkeypatch.setattr(schema_module, "migrations", lambda: earlier)
    if upto < 14:
        monkeypatch.setattr(LedgerStore, "_next_write", lambda self, con: 0)
        monkeypatch.setattr(LedgerStore, "_record_write", lambda self, number: None)


def test_a_ledger_of_an_earlier_schema_is_migrated_to_the_current_one(tmp_path, monkeypatch):
    """A real older ledger: made without the last two migrations (0013 changes rows, 0014 adds
    the write numbers), holding data, then opened."""
    _older_code(monkeypatch, 12)
    old = Ledger.init(tmp_path)
    with old.transaction() as tx:  # what the code of that schema wrote: rows in the table only
        tx._con.execute("INSERT INTO documents SELECT range, 'docs@1', 0, range, NULL, 'k' || range, range, 1, 1, "
                        "[1]::UINTEGER[], [1]::UBIGINT[] FROM range(3)")
        tx._con.execute("INSERT INTO audits VALUES ('ab' || repeat('0', 30), 'dedup', 'docs', '{}', NULL, '{}', now())")
        tx._con.execute("INSERT INTO audit_pairs VALUES ('ab' || repeat('0', 30), 0, 1, 128, 1.0, NULL, 0)")
        for vid, cited in (("v1", "AB000000"), ("v2", "audit-1"), ("v3", None)):  # 0013: the full id for a prefix
            tx._con.execute("INSERT INTO merge_receipts VALUES (?, 'average', ['a', 'b'], [0.5, 0.5], NULL, NULL, NULL, "
                            "NULL, 'torch', '{}', ?, now())", [vid, cited])
    assert old.schema_version() == 12
    monkeypatch.undo()

    with pytest.warns(UserWarning, match=rf"migrated from schema version 12 to {SHIPPED}; a provenance "
                                         r"that understands only version 12 can no longer open it"):
        opened = Ledger.open(tmp_path)
    assert opened.schema_version() == SHIPPED
    assert opened.sql("SELECT count(*) AS n FROM documents").column("n").to_pylist() == [3]
    tables = {r[0] for r in raw_rows(opened, "SELECT table_name FROM information_schema.tables")}
    assert "document_files" in tables
    assert [(a["pairs"], a["pairs_deleted_at"]) for a in opened.audits()] == [(1, None)]  # 0013: the column added
    assert raw_rows(opened, "SELECT version_id, audit_id FROM merge_receipts ORDER BY 1") == [
        ("v1", "ab" + "0" * 30), ("v2", "audit-1"), ("v3", None)]
    with pytest.raises(InvalidParameterError, match="cited by the merge receipt of version v1"):
        opened.delete_audits(["ab00"])
    assert {"version_id": "v2", "problem": "its merge receipt cites audit audit-1, which is not in the ledger"} in \
        opened.version_problems()
    assert opened.delete_audits(["ab00"], pairs_only=True)["pairs"] == 1
    # the older code numbered no write; the migrated ledger numbers them (the refused one above took none)
    assert (opened.root / "writes.json").read_text().endswith('"committed": 1}\n')


def test_a_ledger_made_before_checkpoints_were_recorded_gets_their_table(tmp_path, monkeypatch):
    """0015: a ledger of schema 14, with a run that is still running, opens with the checkpoints
    table; the run's checkpoint is then recorded, and its lineage counts its steps only."""
    import torch

    _older_code(monkeypatch, 14)
    old = Ledger.init(tmp_path)
    (tmp_path / "d.jsonl").write_text("".join(f'{{"id": "k{i}", "text": "text number {i} of d"}}\n' for i in range(6)))
    old.register_dataset("d", tmp_path / "d.jsonl", id_field="id")
    base = old.commit({"w": torch.zeros(2)}, message="base")
    run = old.start_run(base=base, datasets=["d"], message="train", detached=True)
    run.log_examples(["k0", "k1"], step=0)
    run.log_examples(["k2", "k3", "k4"], step=1)
    run.flush()
    assert old.schema_version() == 14
    monkeypatch.undo()

    with pytest.warns(UserWarning, match=rf"migrated from schema version 14 to {SHIPPED}"):
        opened = Ledger.open(tmp_path)
    assert raw_rows(opened, "SELECT count(*) FROM checkpoints") == [(0,)]
    attached = opened.attach_run(run.run_id)
    checkpoint = attached.checkpoint({"w": torch.ones(2)}, step=0)
    assert [(c.version_id, c.step) for c in opened.checkpoints(run.run_id)] == [(checkpoint.version_id, 0)]
    final = attached.commit({"w": torch.full((2,), 2.0)})
    assert [d.examples for d in opened.lineage(checkpoint).datasets] == [2]
    assert [d.examples for d in opened.lineage(final).datasets] == [5]


def test_migrations_remove_what_older_code_wrote_wrongly(tmp_path, monkeypatch):
    """0011: the 0-example rows a logged run got for shards it never saw; 0012: a new token's
    secret kept in the answer to its creation (a read token could select it)."""
    _older_code(monkeypatch, 10)
    old = Ledger.init(tmp_path)
    with old.transaction() as tx:
        tx._con.execute("INSERT INTO run_shards VALUES ('r', 'docs@1', 0, 3, 3, 1.0, true), "
                        "('r', 'docs@1', 1, 0, 0, 0.0, true), ('r', 'other@1', 0, 0, 0, 0.0, false)")
        answer = b'{"name":"ci","scope":"admin","token":"prov_secret-that-was-kept"}'
        tx._con.execute("INSERT INTO idempotency VALUES ('k1', 'admin', 'POST', '/api/v1/tokens', 201, "
                        "'application/json', ?, now()::TIMESTAMP, NULL), ('k2', 'admin', 'POST', '/api/v1/runs', 201, "
                        "'application/json', ?, now()::TIMESTAMP, NULL)", [answer, b'{"run_id":"r"}'])
    monkeypatch.undo()
    opened = Ledger.open(tmp_path)
    assert raw_rows(opened, "SELECT dataset_id, shard_index FROM run_shards ORDER BY ALL") == [
        ("docs@1", 0), ("other@1", 0)]  # only the unseen shard of a logged dataset goes
    assert raw_rows(opened, "SELECT idempotency_key, status, decode(body) FROM idempotency ORDER BY 1") == [
        ("k1", 0, '{"token":"ci"}'), ("k2", 201, '{"run_id":"r"}')]


def test_a_ledger_of_schema_1_is_migrated_to_the_current_one(tmp_path, monkeypatch):
    first_only = migrations()[:1]
    monkeypatch.setattr(schema_module, "migrations", lambda: first_only)
    assert Ledger.init(tmp_path).schema_version() == 1
    monkeypatch.undo()
    opened = Ledger.open(tmp_path)
    assert opened.schema_version() == SHIPPED
    tables = {r[0] for r in raw_rows(opened, "SELECT table_name FROM information_schema.tables")}
    assert {"versions", "version_params", "tags", "document_files"} <= tables


def test_shipped_migrations_are_numbered_without_gaps():
    found = migrations()
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))
    assert all(sql.strip() for _, _, sql in found)


# -- read-only SQL -------------------------------------------------------------------------------


def test_sql_select_returns_arrow_with_values(ledger):
    ledger.register_dataset("docs", DOCS, id_field="id")
    table = ledger.sql("SELECT key, token_count, len(signature) AS k FROM documents ORDER BY key")
    assert isinstance(table, pa.Table)
    assert table.column_names == ["key", "token_count", "k"]
    assert table.to_pylist() == [{"key": f"d{i}", "token_count": 6, "k": 128} for i in range(3)]
    bound = ledger.sql("SELECT key FROM documents WHERE key = ? OR key = ? ORDER BY key", ["d2", "d0"])
    assert bound.column("key").to_pylist() == ["d0", "d2"]
    assert ledger.sql("WITH t AS (SELECT 41 AS x) SELECT x + 1 AS y FROM t").to_pylist() == [{"y": 42}]
    assert ledger.sql("EXPLAIN SELECT * FROM datasets").num_rows >= 1


def test_sql_params_must_be_a_list_of_values(ledger):
    """``params="xy"`` was split into two values (``"x"`` worked by chance), a dict gave its keys
    as the values (``SELECT ?`` with ``{"a": 5}`` answered ``'a'``), a number was a TypeError."""
    assert ledger.sql("SELECT ? AS a, ? AS b", ("x", 2)).to_pylist() == [{"a": "x", "b": 2}]
    assert ledger.sql("SELECT ? AS a", iter([b"\xff"])).to_pylist() == [{"a": b"\xff"}]
    assert ledger.sql("SELECT 1 AS a", []).to_pylist() == [{"a": 1}]
    for params, advice in [("x", r"got str 'x': for one value give \['x'\]"),
                           ("xy", r"got str 'xy': for one value give \['xy'\]"),
                           (5, r"got int 5: for one value give \[5\]"),
                           ({"a": 5}, r"got a dict \{'a': 5\}: write \? in the query and give the values as a list")]:
        with pytest.raises(InvalidParameterError, match="params must be a list of the values of the query's "
                                                         rf"\? placeholders, in order, {advice}"):
            ledger.sql("SELECT ? AS a", params)


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO ledger_meta VALUES ('k', 'v')",
        "UPDATE documents SET key = 'x'",
        "DELETE FROM documents",
        "CREATE TABLE t (x INTEGER)",
        "DROP TABLE documents",
        "ATTACH ':memory:' AS other",
        "DETACH ledger",
        "COPY documents TO 'out.csv'",
        "EXPORT DATABASE 'dump'",
        "SET threads = 1",
        "PRAGMA database_list",
        "CALL pragma_version()",
        "INSTALL httpfs",
        "LOAD json",
        "CHECKPOINT",
        "SELECT 1; DELETE FROM documents",
        "SELECT 1; SELECT 2",
        "",
        "EXPLAIN ANALYZE DELETE FROM documents",
        "EXPLAIN (ANALYZE) DELETE FROM documents",
        "EXPLAIN /* c */ ANALYZE DELETE FROM documents",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM glob('/etc/*')",
        "SELEC 1",
    ],
)
def test_sql_refuses_writes_and_outside_access(ledger, query, ledger_state, tmp_path):
    ledger.register_dataset("docs", DOCS)
    before = ledger_state(ledger)
    with pytest.raises(ReadOnlyQueryError):
        ledger.sql(query)
    assert ledger_state(ledger) == before
    assert raw_rows(ledger, "SELECT count(*) FROM ledger_meta") == [(2,)]
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "dump").exists()


def test_sql_refusal_messages(ledger):
    with pytest.raises(ReadOnlyQueryError, match="only SELECT queries are allowed on the ledger, got DELETE"):
        ledger.sql("DELETE FROM documents")
    with pytest.raises(ReadOnlyQueryError, match=r"allowed on the ledger, got INSTALL \(a LOAD statement\)"):
        ledger.sql("INSTALL httpfs")
    with pytest.raises(ReadOnlyQueryError, match="allowed on the ledger, got DELETE$"):
        ledger.sql("EXPLAIN ANALYZE DELETE FROM documents")
    with pytest.raises(ReadOnlyQueryError, match="give exactly one statement, got 2"):
        ledger.sql("SELECT 1; SELECT 2")
    with pytest.raises(ReadOnlyQueryError, match="query refused: .*/etc/passwd"):
        ledger.sql("SELECT * FROM read_csv('/etc/passwd')")


def test_sql_of_a_query_that_is_not_utf8_names_the_character(ledger, tmp_path):
    """`prov sql $'SELECT \'\xff\''` (bytes a Latin-1 shell passes) raised DuckDB's TypeError
    `extract_statements(): incompatible function arguments` as a traceback, exit 1."""
    with pytest.raises(InvalidParameterError, match="the query holds an unpaired surrogate at character 8: it is not valid UTF-8"):
        ledger.sql("SELECT '\udcff'")
    from click.testing import CliRunner

    from provenance.cli.main import main

    result = CliRunner().invoke(main, ["--ledger", str(tmp_path), "sql", "SELECT '\udcff'"])
    assert result.exit_code == 4 and "Error: the query holds an unpaired surrogate at character 8" in result.output
    assert "Traceback" not in result.output


def test_sql_inside_a_session_reads_only_the_ledger(ledger):
    """A held session (a server) has no second connection: the query's tree is checked instead."""
    with ledger.session():
        assert ledger.sql("WITH x AS (SELECT 1 AS one) SELECT one FROM x").to_pylist() == [{"one": 1}]
        assert ledger.sql("SELECT count(*) AS n FROM versions JOIN range(2) ON true").to_pylist() == [{"n": 0}]
        for query, why in [("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv"),
                           ("SELECT (SELECT count(*) FROM read_text('/etc/hosts')) AS n", "table function read_text"),
                           ("SELECT * FROM '/etc/passwd'", "not a table of the ledger"),
                           ("SELECT getenv('HOME')", "environment"),
                           ("DELETE FROM versions", "only SELECT")]:
            with pytest.raises(ReadOnlyQueryError, match=why):
                ledger.sql(query)
    assert ledger.sql("SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_sql_inside_a_session_cannot_move_a_sequence(ledger):
    """``SELECT setval('committed_writes', 1)`` through a session (a server's read token) set the
    database's last write number below the one recorded, so every command refused the ledger as
    one that lost committed writes; ``nextval`` skipped numbers the same way."""
    held = "SELECT last_value FROM duckdb_sequences() WHERE sequence_name = 'committed_writes'"
    before = ledger.sql(held).to_pylist()
    with ledger.session():
        for query, fn in [("SELECT setval('committed_writes', 1)", "setval"),
                          ("SELECT nextval('committed_writes') AS n", "nextval"),
                          ("SELECT * FROM versions WHERE nextval('committed_writes') > 0", "nextval")]:
            with pytest.raises(ReadOnlyQueryError, match=rf"query refused: {fn}\(\) changes a sequence of the ledger"):
                ledger.sql(query)
    assert ledger.sql(held).to_pylist() == before
    assert Ledger.open(ledger.root).sql("SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_sql_inside_a_session_nested_too_deeply_for_the_check_is_refused(ledger):
    """400 nested calls (which DuckDB runs) were a RecursionError from the check of the syntax
    tree: HTTP 500 on a server."""
    deep = "SELECT " + "abs(" * 400 + "-1" + ")" * 400 + " AS a"
    assert ledger.sql(deep).to_pylist() == [{"a": 1}]  # no check of the tree: DuckDB's own limit
    with ledger.session():
        with pytest.raises(ReadOnlyQueryError, match="cannot check the query: it nests its expressions too deeply"):
            ledger.sql(deep)
        assert ledger.sql("SELECT " + "abs(" * 50 + "-1" + ")" * 50 + " AS a").to_pylist() == [{"a": 1}]
    with pytest.raises(ReadOnlyQueryError, match="too deeply"):
        ledger.sql(deep, hidden=("tokens",))


def test_sql_nested_past_duckdb_s_limit_is_not_told_to_set_it(ledger):
    """DuckDB's parser advised ``Use "SET max_expression_depth TO x"``, which a query can never
    do (``SET`` is refused)."""
    deep = "SELECT " + "(" * 1200 + "1" + ")" * 1200 + " AS a"
    with pytest.raises(ReadOnlyQueryError) as info:
        ledger.sql(deep)
    assert str(info.value) == ("cannot parse query: Parser Error: Max expression depth limit of 1000 exceeded: a query "
                               "cannot raise the limit; write it with fewer nested levels")


def test_sql_explain_with_options_and_show_of_hidden_tables(ledger):
    """``EXPLAIN (FORMAT json) ...`` was a parser traceback (HTTP 500 on a server), and ``SHOW
    tokens`` gave a read token the columns of a table it may not read."""
    for hidden in ((), ("tokens",)):
        plan = ledger.sql("EXPLAIN (FORMAT json) SELECT count(*) FROM versions", hidden=hidden).to_pylist()
        assert len(plan) == 1 and plan[0]["explain_key"] == "physical_plan"
        assert ledger.sql("SHOW versions", hidden=hidden).num_rows > 5
    with pytest.raises(ReadOnlyQueryError, match="cannot check the statement EXPLAIN explains"):
        ledger.sql("EXPLAIN /* c */ ANALYZE DELETE FROM ledger_meta")
    for query in ("SHOW tokens", "SELECT count(*) FROM (SHOW tokens)", "DESCRIBE tokens", "EXPLAIN SELECT * FROM tokens"):
        with pytest.raises(AccessDeniedError, match="table 'tokens' is readable with an admin token only"):
            ledger.sql(query, hidden=("tokens",))
    assert ledger.sql("SHOW TABLES", hidden=("tokens",)).num_rows > 20
    counted = "SELECT table_name, estimated_size FROM duckdb_tables() WHERE table_name = 'tokens'"
    for query in (counted, counted.replace("duckdb_tables()", "duckdb_tables"),  # the function and DuckDB's views
                  counted.replace("duckdb_tables()", "main.duckdb_tables")):
        with pytest.raises(AccessDeniedError, match=r"duckdb_tables counts the rows of tables readable with an admin "
                                                    r"token only \(tokens\); SHOW TABLES or information_schema.tables"):
            ledger.sql(query, hidden=("tokens",))
    assert ledger.sql(counted).to_pylist() == [{"table_name": "tokens", "estimated_size": 0}]  # an admin's, or local
    assert ledger.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'tokens'",
                      hidden=("tokens",)).to_pylist() == [{"n": 1}]


# -- looking up datasets -------------------------------------------------------------------------


def test_dataset_by_version_and_latest(ledger):
    v1 = ledger.register_dataset("docs", DOCS).dataset
    v2 = ledger.register_dataset("docs", [*DOCS, {"text": "one more"}]).dataset
    other = ledger.register_dataset("other", DOCS[:1]).dataset

    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert ledger.dataset("docs@1") == v1
    assert ledger.dataset("docs@2") == v2
    assert ledger.dataset("docs") == v2
    assert ledger.dataset(v1) is v1
    assert [d.dataset_id for d in ledger.datasets()] == ["docs@2", "other@1"]
    assert [d.dataset_id for d in ledger.datasets(all_versions=True)] == ["docs@1", "docs@2", "other@1"]
    assert [d.dataset_id for d in ledger.datasets("docs", all_versions=True)] == ["docs@1", "docs@2"]
    assert ledger.documents("docs@1").num_rows == 3 and ledger.documents("docs").num_rows == 4
    assert ledger.documents("docs", columns=["key"], limit=2).to_pylist() == [
        {"key": "batch-00000:0"}, {"key": "batch-00000:1"}
    ]


def test_unknown_dataset_lists_registered_names(ledger):
    with pytest.raises(NotFoundError) as info:
        ledger.dataset("missing")
    assert str(info.value) == "no dataset 'missing' in the ledger; none is registered"

    ledger.register_dataset("beta", DOCS)
    ledger.register_dataset("alpha", DOCS)
    with pytest.raises(NotFoundError) as info:
        ledger.dataset("missing")
    assert str(info.value) == "no dataset 'missing' in the ledger; registered: alpha, beta"
    with pytest.raises(NotFoundError, match="no dataset 'alpha@2' in the ledger: alpha has version 1$"):
        ledger.dataset("alpha@2")
    with pytest.raises(KeyError):  # NotFoundError is also a KeyError
        ledger.dataset("gamma")


def test_bad_dataset_references(ledger):
    with pytest.raises(InvalidParameterError, match="must be a number"):
        ledger.dataset("docs@latest")
    ledger.register_dataset("docs", DOCS)
    with pytest.raises(InvalidParameterError, match=r"dataset version in 'docs@' must be a number"):
        ledger.dataset("docs@")  # was docs@1, the latest: `prov taint docs@` narrowed NAME (every version) silently
    with pytest.raises(InvalidParameterError, match="dataset name 'no spaces' must start"):
        ledger.dataset("no spaces")


def test_documents_and_document_lookups(ledger):
    ledger.register_dataset("docs", DOCS, id_field="id")
    doc = ledger.document("docs", "d1")
    assert (doc.key, doc.row_index, doc.dataset_id, doc.token_count) == ("d1", 1, "docs@1", 6)
    with pytest.raises(NotFoundError, match="no document 'nope' in dataset docs@1"):
        ledger.document("docs", "nope")
    with pytest.raises(InvalidParameterError, match="unknown document column"):
        ledger.documents("docs", columns=["no_such_column"])


def test_quote_identifier():
    assert quote_identifier("documents") == '"documents"'
    assert quote_identifier('we"ird') == '"we""ird"'


def test_only_the_ledger_package_imports_duckdb():
    root = Path(__file__).resolve().parent.parent
    offenders = [
        str(p.relative_to(root)) for folder in ("provenance", "cli", "kernels") for p in (root / folder).rglob("*.py")
        if re.search(r"^\s*(import duckdb|from duckdb)", p.read_text(encoding="utf-8"), re.MULTILINE)
        and "provenance/ledger/" not in p.as_posix()
    ]
    assert offenders == []


def test_a_ledger_made_from_a_path_without_one_says_so_and_makes_nothing(tmp_path):
    """``Ledger(path)`` of a folder without a database (a project folder instead of its .prov,
    a typo) names the path and the two ways in, instead of leaving an empty database there."""
    from provenance import Ledger
    from provenance.errors import LedgerNotFoundError

    with pytest.raises(LedgerNotFoundError, match=r"no ledger at .*Ledger\.open\(path\).*Ledger\.init\(path\)"):
        Ledger(tmp_path).datasets()
    assert list(tmp_path.iterdir()) == []
    made = Ledger.init(tmp_path)
    assert Ledger(made.root).datasets() == [] and Ledger.open(tmp_path).datasets() == []


def test_reading_connections_keep_the_memory_limit_and_spill_into_the_ledger(ledger):
    """verify, taint and backup open the database read-only, which set no memory limit: their
    memory grew with the database (3 GB for a 3.3 GB ledger, stranger pass 17)."""
    for read_only in (False, True):
        con = ledger._connect(read_only=read_only)
        try:
            limit, spill = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')"
                                       ).fetchall()[0]
        finally:
            con.close()
        assert (limit, spill) == ("488.2 MiB", str(ledger.root / "tmp")), read_only  # 512 MB, in DuckDB's words


def test_a_reader_that_cannot_write_the_ledger_spills_into_the_system_temp(ledger, monkeypatch):
    import os
    import tempfile

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("tmp") else real(p, mode))
    con = ledger._connect(read_only=True)
    try:
        spill = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    finally:
        con.close()
    assert spill == os.path.join(tempfile.gettempdir(), f"prov-duckdb-{os.getpid()}")


# A `prov init` SIGKILLed inside its migrations: the child kills itself at the Nth row it stamps.
_INIT_KILLED_AT = """
import os, signal, sys
import provenance.ledger.schema as schema
from provenance import Ledger

calls, now = [0], schema._now

def stamp():
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return now()

schema._now = stamp
Ledger.init(sys.argv[1])
"""


@pytest.mark.parametrize("killed_at", [1, 5])
def test_an_init_killed_half_way_is_finished_by_the_next_init(tmp_path, killed_at):
    """Killed inside migration 1, or after some migrations: no ledger of an older schema (it
    was migrated on open, with a warning) and no folder that `init` refused as existing while
    every command said `not a provenance ledger`; the next init makes the ledger."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _INIT_KILLED_AT, str(tmp_path), str(killed_at)],
                          capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert (tmp_path / ".prov" / "ledger.duckdb").exists()
    with pytest.raises(LedgerNotFoundError, match=r"it holds no tables, as a `prov init` stopped before it finished "
                                                  rf"leaves it; run `prov init {re.escape(str(tmp_path))}`"):
        Ledger.open(tmp_path)
    ledger = Ledger.init(tmp_path)
    assert ledger.schema_version() == SHIPPED
    assert raw_rows(ledger, "SELECT count(*) FROM ledger_meta WHERE key = 'created_at'") == [(1,)]
    with pytest.raises(LedgerExistsError):  # a whole ledger is still never made again
        Ledger.init(tmp_path)


def test_a_file_where_the_temporary_folder_should_be_is_named_with_what_to_do(tmp_path):
    """`.prov/tmp` replaced by a file: a write said only `…/.prov/tmp/staging: Not a directory`."""
    from provenance.errors import LedgerDamagedError

    ledger = Ledger.init(tmp_path / "p")
    tmp = ledger.root / "tmp"
    import shutil

    shutil.rmtree(tmp)
    tmp.write_text("not a folder")
    rows = [{"id": "a", "text": "one two three four five six"}]
    with pytest.raises(LedgerDamagedError, match=re.escape(f"{tmp} is a file, not the ledger's temporary folder: "
                                                           f"move it aside (mv {tmp} {tmp}.moved)")):
        ledger.register_dataset("d", rows, id_field="id")
    assert ledger.datasets() == []  # reading still works (a read-only connection spills elsewhere)
    tmp.rename(tmp.with_name("tmp.moved"))
    assert ledger.register_dataset("d", rows, id_field="id").created


def test_one_ledger_used_from_several_threads_at_once(tmp_path):
    """Threads of a caller sharing one Ledger shared its DuckDB connection: commits failed with
    DuckDB's "connection is busy", a ValueError or a VersionRecord validated from another thread's
    rows. Each thread now queries on a cursor of its own, and the writes take turns."""
    import threading

    import torch

    ledger = Ledger.init(tmp_path / "p")
    base = ledger.commit({"w": torch.zeros(3)}, message="base")
    made, failures = {}, []

    def work(i: int) -> None:
        try:
            version = ledger.commit({"w": torch.full((3,), float(i))}, parent=base, message=f"thread {i}")
            made[i] = version.version_id
            for _ in range(3):
                assert ledger.version(version.version_id).message == f"thread {i}"
                assert torch.equal(ledger.checkout(version)["w"], torch.full((3,), float(i)))
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(repr(exc))

    with ledger.session():  # the session open in the main thread too: its connection is not lent out
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    assert sorted(v.message for v in ledger.versions()) == ["base"] + [f"thread {i}" for i in range(6)]
