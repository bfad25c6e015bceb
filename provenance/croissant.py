"""Export a dataset version as Croissant 1.1 JSON-LD (MLCommons) that ``mlcroissant`` can read.

The export describes the files of each shard (``cr:FileObject`` with ``sha256``, its
``contentUrl`` relative to the folder the JSON-LD is written in), one record set of documents
whose fields are extracted from those files (through a ``cr:FileSet`` when there are several),
the licence (an spdx.org URL only for an id on the SPDX list), the Data Provenance Initiative's
conditions, whether the text is model-generated (``rai:hasSyntheticData``), and the fingerprint
config the ledger used.

The record set ``documents`` has a field ``text`` and a key that names each document as the
ledger does: the field ``id`` (typed like the ids in the files) when the dataset was registered
with an id field; otherwise the pair (``shard``, ``row``), the shard's name and the 0-based index
of the record in it, whose ledger key is ``f"{shard}:{row}"``. A dataset mixing file formats
gets one record set per format (``documents-jsonl``, ``documents-parquet``, ``documents-text``).
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from provenance.errors import InvalidParameterError, ProvenanceWarning, SourceError, warn
from provenance.plain import utc_text
from provenance.records import DatasetRecord, ShardRecord
from provenance.sources.urls import is_url

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"

# mlcroissant's own context for Croissant 1.1, and the namespaces of the extra properties.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "prov": "http://www.w3.org/ns/prov#",
    "provenance": "https://provenance.dev/ns/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

# Media type of each shard format's content: compressed JSON Lines are still JSON Lines
# (mlcroissant recognises gzip by its magic bytes; it cannot read zstd).
_MEDIA_TYPES = {"jsonl": "application/jsonlines", "parquet": "application/x-parquet", "text": "text/plain"}


class ReadsOtherwiseWarning(ProvenanceWarning):
    """A Croissant reader reads a dataset's files as they are: records that registration skipped
    or repaired as invalid (``on_invalid``) come back as written, or fail the reader."""


def warn_invalid_records(ds: DatasetRecord) -> None:
    """Warn when ``ds``'s files hold records that registration skipped or repaired."""
    held = [f"{n:,} record{'s' if n != 1 else ''} that registration {how}" for n, how in (
        (ds.n_invalid_skipped, "skipped as invalid"), (ds.n_invalid_replaced, "repaired"))
        if n]
    if held:
        warn(
            f"{ds.dataset_id}: its files hold {' and '.join(held)} (on_invalid); a Croissant reader reads the files "
            "as they are, and gives those records back as written or fails on them (mlcroissant on a byte that is not "
            "UTF-8)", ReadsOtherwiseWarning)


def to_croissant(ds: DatasetRecord, shards: list[ShardRecord], base: str | os.PathLike | None = None,
                 key_kinds: set[str] | None = None) -> dict[str, Any]:
    """The Croissant 1.1 JSON-LD document of one dataset version.

    ``base``: the folder the document will be written in; file paths are relative to it. By
    default, the shards' common folder (the document is then meant to sit beside the data). A
    dataset of several files of one format is read through a ``cr:FileSet``, which mlcroissant
    only looks for inside the document's folder, so ``base`` must then hold those files.
    ``key_kinds``: what the ledger's keys look like (:meth:`Ledger.key_kinds`), which bounds the
    ids' type.
    """
    files = [s for s in shards if s.uri is not None]
    remote = next((s.uri for s in files if is_url(s.uri)), None)
    if remote is not None:
        raise InvalidParameterError(
            f"{ds.dataset_id}: its shards are in object storage ({remote}); a Croissant export describes files "
            "beside the document, so copy them to a folder and register that (or export the dataset there)")
    _check_files(ds, files)
    root = _common_folder(files)
    folder = Path(base).resolve() if base is not None else root
    distribution = [_file_object(s, folder) for s in files]
    kinds = sorted({_kind(s) for s in files})
    record_sets = []
    for kind in kinds:
        group = [s for s in files if _kind(s) == kind]
        name = "documents" if len(kinds) == 1 else f"documents-{kind}"
        if len(group) == 1:
            source: dict[str, Any] = {"fileObject": {"@id": _file_id(group[0])}}
        else:
            file_set = _file_set(f"files-{kind}", group, folder)
            distribution.append(file_set)
            source = {"fileSet": {"@id": file_set["@id"]}}
        record_sets.append(_record_set(name, ds, group, source, folder, root, key_kinds))
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": ds.name,
        "description": ds.description or f"{ds.name}, registered in a provenance ledger as {ds.dataset_id}",
        "version": str(ds.version),
        "datePublished": utc_text(ds.created_at.replace(microsecond=0)),  # RFC 3339: UTC says so
        "distribution": distribution,
        "recordSet": record_sets,
        "provenance:role": ds.role,
        "provenance:fingerprintConfig": ds.config_id,
        "provenance:contentHash": ds.content_hash,
    }
    if ds.source and "://" in ds.source:
        doc["url"] = ds.source
    elif folder is not None:
        doc["url"] = folder.as_uri()
    if ds.license.spdx:
        doc["license"] = ds.license.url or ds.license.spdx  # only an id on the SPDX list has a page
    if ds.license.known:  # not when unknown: an object of nulls is a node mlcroissant cannot load
        doc["provenance:licenseConditions"] = {
            "nonCommercial": ds.license.non_commercial,
            "shareAlike": ds.license.share_alike,
            "attribution": ds.license.attribution,
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


def _check_files(ds: DatasetRecord, files: list[ShardRecord]) -> None:
    """Refuse to describe a file that is gone or whose size is no longer the registered one: the
    document would give it the registered ``sha256`` and ``contentSize``, and a reader would read
    other records than the ledger's (a stat per file; a change that keeps the size would take
    reading every file again)."""
    for s in files:
        try:
            size = os.stat(s.uri).st_size  # type: ignore[arg-type]
        except OSError as exc:
            raise SourceError(f"{ds.dataset_id}: its file {s.uri} cannot be read ({exc.strerror}); a Croissant export "
                              "describes the files as registered: put the file back, or register the data again "
                              "and export that version") from None
        if size != s.n_bytes:
            raise SourceError(f"{ds.dataset_id}: its file {s.uri} has changed since it was registered ({size:,} "
                              f"bytes, registered with {s.n_bytes:,}); its sha256 would not match: register the "
                              "data again and export that version")


def _kind(shard: ShardRecord) -> str:
    return shard.format.split(".")[0]  # jsonl.gz and jsonl.zst are jsonl


def _file_id(shard: ShardRecord) -> str:
    return f"file-{shard.shard_index}"


def _common_folder(files: list[ShardRecord]) -> Path | None:
    """The folder the shards' names are relative to."""
    if not files:
        return None
    s = files[0]
    return Path(s.uri).parents[len(Path(s.name).parts) - 1]  # type: ignore[arg-type]


def _relative(shard: ShardRecord, folder: Path) -> str:
    return Path(os.path.relpath(shard.uri, folder)).as_posix()  # type: ignore[arg-type]


def _file_object(shard: ShardRecord, folder: Path) -> dict[str, Any]:
    return {
        "@type": "cr:FileObject",
        "@id": _file_id(shard),
        "name": shard.name,
        "contentUrl": _relative(shard, folder),
        "contentSize": f"{shard.n_bytes} B",
        "encodingFormat": _MEDIA_TYPES[_kind(shard)],
        "sha256": shard.sha256,
        "provenance:xxh3_128": shard.shard_id,
    }


def _file_set(file_set_id: str, group: list[ShardRecord], folder: Path) -> dict[str, Any]:
    paths = [_relative(s, folder) for s in group]
    outside = [p for p in paths if p.startswith("../")]
    if outside:
        raise InvalidParameterError(
            f"the Croissant file set of {len(group)} files is read inside the folder of the metadata, "
            f"but {outside[0]} is outside {folder}: write the metadata in a folder that holds the files"
        )
    return {
        "@type": "cr:FileSet",
        "@id": file_set_id,
        "name": file_set_id,
        "encodingFormat": _MEDIA_TYPES[_kind(group[0])],
        "includes": [glob.escape(p) for p in paths],
    }


def _record_set(
    name: str, ds: DatasetRecord, group: list[ShardRecord], source: dict[str, Any], folder: Path, root: Path,
    key_kinds: set[str] | None = None,
) -> dict[str, Any]:
    def field(field_name: str, data_type: str, extract: dict[str, Any], transform: Any = None) -> dict[str, Any]:
        return {
            "@type": "cr:Field",
            "@id": f"{name}/{field_name}",
            "name": field_name,
            "dataType": data_type,
            "source": {**source, "extract": extract, **({"transform": transform} if transform else {})},
        }

    text = {"fileProperty": "content"} if _kind(group[0]) == "text" else {"column": ds.text_field}
    fields = [field("text", "sc:Text", text)]
    if ds.id_field:
        fields.append(field("id", _id_type(group, ds.id_field, key_kinds), {"column": ds.id_field}))
        key: Any = {"@id": f"{name}/id"}
    else:
        fields.append(field("shard", "sc:Text", **_shard_name(group, source, folder, root)))
        fields.append(field("row", "sc:Integer", {"fileProperty": "lineNumbers"}))
        key = [{"@id": f"{name}/shard"}, {"@id": f"{name}/row"}]
    return {
        "@type": "cr:RecordSet",
        "@id": name,
        "name": name,
        "description": f"{sum(s.n_documents for s in group)} documents",
        "key": key,
        "field": fields,
    }


def _shard_name(group: list[ShardRecord], source: dict[str, Any], folder: Path, root: Path) -> dict[str, Any]:
    """How a record's shard name (its file's path below the shards' common folder) is read."""
    if "fileSet" in source:  # the paths of a file set's files start at the metadata's folder
        prefix = Path(os.path.relpath(root, folder)).as_posix()
        if prefix == ".":
            return {"extract": {"fileProperty": "fullpath"}}
        return {"extract": {"fileProperty": "fullpath"}, "transform": {"regex": f"^{re.escape(prefix)}/(.*)$"}}
    name = group[0].name
    if "/" not in name:
        return {"extract": {"fileProperty": "filename"}}
    return {"extract": {"fileProperty": "filepath"}, "transform": {"regex": f"^.*/({re.escape(name)})$"}}


def _id_type(group: list[ShardRecord], id_field: str, key_kinds: set[str] | None = None) -> str:
    """The Croissant type of the ids: integer or float when the first record of every file has
    one of that type and every key (``key_kinds``: the ledger keeps them as text) reads as one,
    else text (a JSON Lines file may mix ``1`` and ``"x7"``, which no number type reads)."""
    types = {_id_value_type(s, id_field) for s in group}
    kind = types.pop() if len(types) == 1 else "sc:Text"
    if key_kinds is None or kind == "sc:Text":
        return kind
    if "text" in key_kinds:
        return "sc:Text"
    return "sc:Float" if "number" in key_kinds else kind


def _id_value_type(shard: ShardRecord, id_field: str) -> str:
    try:
        if shard.format == "parquet":
            arrow_type = pq.read_schema(shard.uri).field(id_field).type
            if pa.types.is_integer(arrow_type):
                return "sc:Integer"
            return "sc:Float" if pa.types.is_floating(arrow_type) else "sc:Text"
        value = _first_record(shard).get(id_field)
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return "sc:Text"  # the file is gone or changed: text is what the ledger holds
    if isinstance(value, bool):
        return "sc:Text"
    return "sc:Integer" if isinstance(value, int) else "sc:Float" if isinstance(value, float) else "sc:Text"


def _first_record(shard: ShardRecord) -> dict[str, Any]:
    """The first record of a JSON Lines shard (plain, gzip or zstd)."""
    with open(shard.uri, "rb") as raw:  # type: ignore[arg-type]
        stream: Any = raw
        if shard.format == "jsonl.gz":
            stream = gzip.GzipFile(fileobj=raw)
        elif shard.format == "jsonl.zst":
            import zstandard

            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        for line in stream:
            if line.strip():
                record = orjson.loads(line.removeprefix(b"\xef\xbb\xbf"))
                return record if isinstance(record, dict) else {}
    return {}
