"""Documents removed from a dataset: a new version holding every document of the latest but those
named, its rows copied with their fingerprints, no source read again."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import xxhash

from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger import LedgerStore, _now
from provenance.plain import counted
from provenance.records import RegistrationResult, check_document_keys, check_utf8

#: The notes a removal appends to the description, "[news@1 without 2 document(s), retraction R]".
_REMOVAL_NOTES = re.compile(r"(?: ?\[[A-Za-z0-9][A-Za-z0-9._-]*@\d+ without \d+ document\(s\)(?:, retraction [^\]]+)?\])+$")


def without_removal_notes(description: str | None) -> str | None:
    """``description`` without the notes removals appended (None if nothing else is left): what
    a registration of the files again carries over, since its version holds the documents again."""
    if description is None:
        return None
    return _REMOVAL_NOTES.sub("", description) or None


def remove_documents(ledger: LedgerStore, name: str, keys: Sequence[str], *, reason: str | None = None,
                     retraction: str | None = None) -> RegistrationResult:
    """A new version of dataset ``name`` holding every document of its latest version but those
    keyed ``keys`` (``prov dataset remove``): the kept rows are copied with their fingerprints, no
    source is read again, and the removed documents are listed in ``dataset_removals`` (with the
    retraction they serve, if any). Its shards are the same files, with fewer documents; its
    content hash differs from any registration's, so registering the files again makes a new
    version that holds the documents again. A key the latest version lacks is refused, naming it."""
    keys = check_document_keys(keys)
    if reason is not None:  # bytes that are not UTF-8 (an argument), reason=5: tracebacks from Arrow
        check_utf8(reason, "the removal's reason")
    if not keys:
        raise InvalidParameterError("give the keys of the documents to remove")
    if "@" in name:
        raise InvalidParameterError(f"give the dataset's name, not a version ({name!r}): documents are removed from "
                                    "its latest version, and the result is its next")
    if retraction is not None:  # the retraction it serves must exist (raises NotFoundError naming it)
        retraction = ledger.retraction(retraction)["retraction_id"]
    latest = ledger.dataset(name)
    with ledger._cursor() as con:
        found = con.sql("SELECT doc_id, key, shard_index, token_count FROM documents "
                        "WHERE dataset_id = ? AND list_contains(?, key)",
                        params=[latest.dataset_id, keys]).to_arrow_table().to_pylist()
    missing = sorted(set(keys) - {r["key"] for r in found})
    if missing:
        shown = ", ".join(repr(k) for k in missing[:5])
        asked = set(missing)
        gone = {r["key"]: r["dataset_id"] for r in sorted(  # removed by an earlier removal (run twice?): said
            ledger.removals([f"{name}@{v}" for v in range(2, latest.version + 1)]),
            key=lambda r: int(r["dataset_id"].rsplit("@", 1)[1])) if r["key"] in asked}
        earlier = ", ".join(f"{k!r} in {gone[k]}" for k in missing if k in gone)
        raise NotFoundError(f"dataset {latest.dataset_id} has no document {shown}{', ...' if len(missing) > 5 else ''} "
                            f"({len(missing)} of the {len(keys)} keys given)"
                            + (f"; removed before: {earlier[:300]}" if earlier else ""))
    if len(found) >= latest.n_documents:
        raise InvalidParameterError(f"removing {counted(len(found), 'document')} would leave {latest.dataset_id} empty")
    per_shard: dict[int, list[dict[str, Any]]] = {}
    for r in found:
        per_shard.setdefault(r["shard_index"], []).append(r)
    removed_ids = [r["doc_id"] for r in found]
    tail = ", ".join(f"{r['key']}" for r in found[:3]) + (", ..." if len(found) > 3 else "")
    h = xxhash.xxh3_128(f"{latest.content_hash}\nwithout\n".encode())
    for doc in sorted(removed_ids):
        h.update(f"{doc}\n".encode())
    with ledger.transaction() as tx:
        now = tx.latest_dataset(name)
        if now is None or now.dataset_id != latest.dataset_id:
            raise InvalidParameterError(f"dataset {name} changed while its documents were being removed "
                                        f"(now {now.dataset_id if now else 'gone'}); run it again")
        tx.follow_storage(latest)
        dataset_id = f"{name}@{latest.version + 1}"
        shards = []
        for s in tx.shards_of(latest.dataset_id):
            out = per_shard.get(s.shard_index, [])
            shards.append(s.model_copy(update={
                "dataset_id": dataset_id, "n_documents": s.n_documents - len(out),
                "n_tokens": s.n_tokens - sum(r["token_count"] for r in out)}))
        n_docs = latest.n_documents - len(found)
        tx.copy_documents_except(latest.dataset_id, dataset_id, removed_ids, n_docs)
        tx.insert_shards(shards)
        created = _now()
        record = latest.model_copy(update={
            "dataset_id": dataset_id, "version": latest.version + 1, "content_hash": h.hexdigest(),
            "n_documents": n_docs, "n_tokens": sum(s.n_tokens for s in shards), "created_at": created,
            "description": ((latest.description + " ") if latest.description else "")
            + f"[{latest.dataset_id} without {len(found)} document(s)"
            + (f", retraction {retraction}" if retraction else "") + "]"})
        tx.insert_dataset(record)
        tx.insert_removals([{"dataset_id": dataset_id, "from_dataset_id": latest.dataset_id, "doc_id": r["doc_id"],
                             "key": r["key"], "retraction_id": retraction, "reason": reason, "created_at": created}
                            for r in found])
    return RegistrationResult(dataset=record, created=True,
                              message=f"registered {dataset_id}: {latest.dataset_id} without {counted(len(found), 'document')} "
                                      f"({tail}); {counted(n_docs, 'document')} kept, no source read again")
