"""JSON Schemas of the records and typed results (:mod:`provenance.results`), generated into ``schemas/records/`` from the pydantic models.

Run ``python -m provenance.schema_export`` to regenerate them; the tests fail when the files on
disk drift from the models (``python -m provenance.schema_export --check`` says which).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from provenance.fingerprints import FingerprintConfig
from provenance.records import (
    CheckpointRecord,
    DatasetRecord,
    DocumentRecord,
    License,
    ParamRecord,
    RegistrationResult,
    RunRecord,
    RunShardRecord,
    ShardRecord,
    VersionRecord,
)
from provenance.results import iter_models

MODELS: dict[str, type[BaseModel]] = {
    "fingerprint_config": FingerprintConfig,
    "license": License,
    "dataset": DatasetRecord,
    "shard": ShardRecord,
    "document": DocumentRecord,
    "registration_result": RegistrationResult,
    "version": VersionRecord,
    "param": ParamRecord,
    "run": RunRecord,
    "run_shard": RunShardRecord,
    "checkpoint": CheckpointRecord,
    **dict(iter_models()),
}


def schemas() -> dict[str, str]:
    """File name -> JSON text of every record's schema."""
    out = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://provenance.dev/schemas/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def default_folder() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas" / "records"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = default_folder()
    stale = []
    for name, text in schemas().items():
        path = folder / name
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale schemas in {folder}: {', '.join(stale)}; run python -m provenance.schema_export", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
