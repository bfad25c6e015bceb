"""Export a dataset version as Croissant 1.1 JSON-LD (MLCommons), with per-file SHA-256.

The export describes the files of each shard (``cr:FileObject`` with ``sha256``), one record set
of documents (key and text fields extracted from those files), the licence as an SPDX URL, the
Data Provenance Initiative's conditions, whether the text is model-generated
(``rai:hasSyntheticData``), and the fingerprint config the ledger used.
"""

from __future__ import annotations

from typing import Any

from provenance.records import DatasetRecord, ShardRecord

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "prov": "http://www.w3.org/ns/prov#",
    "provenance": "https://provenance.dev/ns/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "format": "cr:format",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "recordSet": "cr:recordSet",
    "source": "cr:source",
    "transform": "cr:transform",
}

_MEDIA_TYPES = {
    "jsonl": "application/jsonlines",
    "jsonl.gz": "application/jsonlines+gzip",
    "jsonl.zst": "application/jsonlines+zstd",
    "parquet": "application/x-parquet",
    "text": "text/plain",
}


def to_croissant(ds: DatasetRecord, shards: list[ShardRecord]) -> dict[str, Any]:
    """The Croissant 1.1 JSON-LD document of one dataset version."""
    files = [s for s in shards if s.uri is not None]
    distribution = [
        {
            "@type": "cr:FileObject",
            "@id": f"file-{s.shard_index}",
            "name": s.name,
            "contentUrl": s.name,
            "contentSize": f"{s.n_bytes} B",
            "encodingFormat": _MEDIA_TYPES.get(s.format, "application/octet-stream"),
            "sha256": s.sha256,
            "provenance:xxh3_128": s.shard_id,
        }
        for s in files
    ]
    fields = []
    for name, column, dtype in (
        ("text", ds.text_field, "sc:Text"),
        ("id", ds.id_field, "sc:Text"),
    ):
        if column is None:
            continue
        sources = [_field_source(s, column) for s in files]
        fields.append(
            {
                "@type": "cr:Field",
                "@id": f"documents/{name}",
                "name": name,
                "dataType": dtype,
                "source": sources[0] if len(sources) == 1 else sources,
            }
        )
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": ds.name,
        "description": ds.description or f"{ds.name}, registered in a provenance ledger as {ds.dataset_id}",
        "version": str(ds.version),
        "dateCreated": ds.created_at.date().isoformat(),
        "license": _license_url(ds),
        "distribution": distribution,
        "recordSet": [
            {
                "@type": "cr:RecordSet",
                "@id": "documents",
                "name": "documents",
                "description": f"{ds.n_documents} documents",
                "field": fields,
            }
        ],
        "provenance:role": ds.role,
        "provenance:fingerprintConfig": ds.config_id,
        "provenance:contentHash": ds.content_hash,
        "provenance:licenseConditions": {
            "nonCommercial": ds.license.non_commercial,
            "shareAlike": ds.license.share_alike,
            "attribution": ds.license.attribution,
        },
    }
    if ds.creator:
        doc["creator"] = {"@type": "sc:Organization", "name": ds.creator}
    if ds.source:
        doc["prov:wasDerivedFrom"] = {"@id": ds.source} if "://" in ds.source else ds.source
    if ds.model_generated is not None:
        doc["rai:hasSyntheticData"] = ds.model_generated
    if len(files) < len(shards):
        doc["provenance:inMemoryShards"] = [s.shard_id for s in shards if s.uri is None]
    return doc


def _field_source(shard: ShardRecord, column: str) -> dict[str, Any]:
    if shard.format == "text":
        return {"fileObject": {"@id": f"file-{shard.shard_index}"}, "extract": {"fileProperty": "content"}}
    if shard.format == "parquet":
        return {"fileObject": {"@id": f"file-{shard.shard_index}"}, "extract": {"column": column}}
    return {"fileObject": {"@id": f"file-{shard.shard_index}"}, "extract": {"jsonPath": f"$.{column}"}}


def _license_url(ds: DatasetRecord) -> str:
    if ds.license.spdx is None:
        return "unknown"
    if " " in ds.license.spdx:  # an SPDX expression
        return ds.license.spdx
    return f"https://spdx.org/licenses/{ds.license.spdx}.html"
