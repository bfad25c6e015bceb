"""A registered shard read again from its file (a local path or an object store URL), after
checking that the file still hashes as registered: what audits and retractions read texts with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pyarrow.fs import FileType

from provenance.errors import SourceError
from provenance.records import DatasetRecord, ShardRecord
from provenance.sources import Batch, Counters, FileShard, ObjectShard, ReadOptions
from provenance.sources.urls import is_url, object_error


def read_back(ds: DatasetRecord, shard: ShardRecord) -> Iterator[Batch]:
    """The batches of a registered shard, read again from its file after checking the file still
    hashes as registered (xxh3; the readers check again at the end of the file, so a change while
    reading is caught too). Errors name the file, the shard and the dataset."""
    if shard.uri is None:
        raise SourceError(f"shard {shard.name} of {ds.dataset_id} was registered from memory: no file to read")
    if is_url(shard.uri):
        reader: FileShard = ObjectShard.at(shard.uri, shard.name, shard.format)
        try:
            kind = reader.fs.get_file_info(reader.path).type
        except OSError as exc:
            raise object_error(shard.uri, exc, f"reading shard {shard.name} of {ds.dataset_id}") from None
        if kind != FileType.File:
            raise SourceError(f"{shard.uri}: shard {shard.name} of {ds.dataset_id} is no longer there")
    else:
        path = Path(shard.uri)
        if not path.is_file():
            raise SourceError(f"{path}: shard {shard.name} of {ds.dataset_id} is no longer there")
        reader = FileShard(path, shard.name, shard.format)
    reader.shard_id, reader.sha256 = shard.shard_id, shard.sha256  # (its SHA-256 is not taken again)
    if reader._rehash() != shard.shard_id:
        raise SourceError(f"{reader.display} changed since it was registered as shard {shard.name} of {ds.dataset_id}")
    reader.changed = (f"changed since it was registered as shard {shard.name} of {ds.dataset_id} (while it was "
                      "being read back)")  # (it said: while it was being registered; register it again)
    opts = ReadOptions(text_field=ds.text_field, id_field=ds.id_field, on_invalid="replace")
    yield from reader.batches(opts, Counters())
