"""Generated artefacts stay in step with the code: CLI reference, JSON Schemas, docs build."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from provenance.cli.reference import help_text, render, walk
from provenance.fingerprints import FingerprintConfig
from provenance.records import DatasetRecord, DocumentRecord, License, ShardRecord
from provenance.schema_export import default_folder, schemas

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help():
    from provenance.cli.main import main

    missing = [" ".join(path) for path, cmd in walk(main) if not (cmd.help or "").strip()]
    assert missing == []
    for path, cmd in walk(main):
        for param in cmd.params:
            if param.param_type_name == "option" and param.name not in ("help", "version"):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"


def test_cli_reference_is_current():
    on_disk = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert on_disk == render(), "docs/cli.md is stale: run `python -m provenance.cli.reference > docs/cli.md`"
    from provenance.cli.main import main

    for path, _ in walk(main):
        assert f"## `{' '.join(path)}`" in on_disk
    assert "add     Register SOURCES" in help_text(("prov", "dataset"), main.commands["dataset"])


def test_json_schemas_match_models():
    folder = default_folder()
    for name, text in schemas().items():
        path = folder / name
        assert path.exists(), f"missing {path}: run python -m provenance.schema_export"
        assert path.read_text(encoding="utf-8") == text, f"{name} drifted: run python -m provenance.schema_export"


def _load(name: str) -> dict:
    return json.loads((default_folder() / f"{name}.schema.json").read_text(encoding="utf-8"))


def test_records_round_trip_and_validate():
    cfg = FingerprintConfig(num_perm=64, ngram=3)
    ds = DatasetRecord(
        dataset_id="web@2", name="web", version=2, role="eval", license=License.from_spdx("CC-BY-SA-4.0"),
        model_generated=False, text_field="text", id_field="id", config=cfg, config_id=cfg.identity,
        unicode_version="14.0.0",
        bands=cfg.banding.bands, rows=cfg.banding.rows, content_hash="ab" * 16, n_shards=1, n_documents=2,
        n_bytes=10, n_tokens=4, created_at=datetime(2026, 1, 2, 3, 4, 5),
    )
    dumped = ds.model_dump(mode="json")
    jsonschema.validate(dumped, _load("dataset"))
    assert DatasetRecord.model_validate(dumped) == ds
    assert DatasetRecord.model_validate_json(ds.model_dump_json()) == ds
    shard = ShardRecord(dataset_id="web@2", shard_index=0, shard_id="00" * 16, name="a.jsonl", format="jsonl",
                        n_bytes=10, n_documents=2, n_tokens=4)
    jsonschema.validate(shard.model_dump(mode="json"), _load("shard"))
    doc = DocumentRecord(doc_id=1, dataset_id="web@2", shard_index=0, row_index=0, line=1, key="a", exact_hash=2**64 - 1,
                         token_count=3, n_bytes=9, signature=[1, 2], band_keys=[3])
    jsonschema.validate(doc.model_dump(mode="json"), _load("document"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**dumped, "role": "test"}, _load("dataset"))


def test_license_conditions():
    assert License.from_spdx("cc-by-nc-sa-4.0") == License(spdx="CC-BY-NC-SA-4.0", non_commercial=True,
                                                            share_alike=True, attribution=True)
    unknown = License.from_spdx("LicenseRef-internal")
    assert unknown.spdx == "LicenseRef-internal" and not unknown.known
    assert License.from_spdx(None) == License()
    from provenance.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="not an SPDX identifier"):
        License.from_spdx("free for all!")


def test_docs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "fingerprints" / "index.html").exists()


def test_openapi_document_is_current():
    from provenance.server.openapi import default_path, text

    assert default_path().read_text(encoding="utf-8") == text(), "run python -m provenance.server.openapi"
    doc = json.loads(text())
    assert doc["info"]["title"] == "provenance ledger" and "/api/v1/lineage/{ref}" in doc["paths"]
    assert "/healthz" in doc["paths"] and "/api/v1/runs/{ref}/examples" in doc["paths"]
    # the refusals as the server sends them ({"error", "kind"}, not FastAPI's {"detail": [...]}), and the token
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "kind"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    tags = doc["paths"]["/api/v1/tags/{name}"]["put"]["responses"]
    assert tags["422"]["content"] == tags["401"]["content"] == tags["403"]["content"] == error
    assert doc["paths"]["/api/v1/lineage"]["post"]["responses"]["422"]["content"] == error
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": "a token from `prov token create NAME --scope SCOPE`"}
    assert doc["security"] == [{"token": []}] and doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]


def test_the_docs_name_the_schema_version_a_new_ledger_has():
    """The schema page and the quickstart's `prov init` output name the version of the last
    migration (both said 12 after migration 13 was added)."""
    import re

    from provenance.ledger import SCHEMA_VERSION

    named = {page: re.findall(r"schema version (\d+)", (ROOT / "docs" / page).read_text(encoding="utf-8"))
             for page in ("schema.md", "quickstart.md")}
    assert named == {"schema.md": [str(SCHEMA_VERSION)], "quickstart.md": [str(SCHEMA_VERSION)]}
