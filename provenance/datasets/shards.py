"""A registration's shards written: each read batch by batch (the next batches read on a thread
meanwhile), fingerprinted and staged as document rows, or, for a file the latest version holds
unchanged under the same config, its rows copied without reading it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import Any

import numpy as np
import pyarrow as pa

from provenance.fingerprints import FingerprintBatch, FingerprintConfig, fingerprint_read
from provenance.ledger import DocumentStage, LedgerWriter
from provenance.progress import Progress
from provenance.records import DatasetRecord, ShardRecord
from provenance.sources import Batch, Counters, FileShard, ReadOptions, Shard


def write_shards(
    tx: LedgerWriter,
    dataset_id: str,
    shards,
    cfg: FingerprintConfig,
    opts: ReadOptions,
    counters: Counters,
    progress: Progress,
    reusable: dict[tuple[str, str], ShardRecord],
) -> list[ShardRecord]:
    next_id = tx.next_doc_id()
    rows: list[ShardRecord] = []
    with tx.document_stage() as stage:
        for index, shard in enumerate(shards):
            earlier = reusable.get((shard.name, shard.shard_id)) if isinstance(shard, FileShard) else None
            if earlier is not None:  # same bytes, same config: copy the rows, do not read the file
                tx.copy_documents(earlier, dataset_id, index, next_id)
                rows.append(earlier.model_copy(update={"dataset_id": dataset_id, "shard_index": index, "uri": shard.uri}))
                progress.advance(shard.n_bytes)
            else:
                rows.append(_write_shard(stage, dataset_id, index, shard, cfg, opts, counters, progress, next_id))
            next_id += rows[-1].n_documents
    return rows


def reusable_shards(
    tx: LedgerWriter, latest: DatasetRecord | None, cfg: FingerprintConfig, opts: ReadOptions
) -> dict[tuple[str, str], ShardRecord]:
    """Shards of the latest version whose rows a new version can copy: same fields, config and
    banding, and no invalid record in it (so the on_invalid policy made no difference)."""
    if latest is None or (latest.n_invalid_replaced or latest.n_invalid_skipped) or tx.has_removals(latest.dataset_id):
        return {}  # a version made by removing documents holds fewer rows than its files
    same = (latest.config_id, latest.bands, latest.rows, latest.text_field, latest.id_field) == (
        cfg.identity, cfg.banding.bands, cfg.banding.rows, opts.text_field, opts.id_field
    )
    if not same:
        return {}
    return {(s.name, s.shard_id): s for s in tx.shards_of(latest.dataset_id) if s.uri is not None}


def _write_shard(
    stage: DocumentStage,
    dataset_id: str,
    index: int,
    shard: Shard,
    cfg: FingerprintConfig,
    opts: ReadOptions,
    counters: Counters,
    progress: Progress,
    first_id: int,
    device: Any = None,
) -> ShardRecord:
    """Read one shard batch by batch, fingerprint it (the MinHash on the torch ``device`` when
    given, see :meth:`FingerprintConfig.fingerprint_batch`) and stage its document rows."""
    n_docs = n_tokens = reported = 0
    for batch in _prefetch(shard.batches(opts, counters)):
        fp = fingerprint_read(cfg, batch.texts, device)
        stage.write(_documents_table(dataset_id, index, shard.name, batch, fp, first_id + n_docs))
        n_docs += len(fp)
        n_tokens += int(fp.token_count.sum())
        progress.advance(batch.consumed - reported)
        reported = batch.consumed
    return ShardRecord(
        dataset_id=dataset_id,
        shard_index=index,
        shard_id=shard.shard_id,
        name=shard.name,
        uri=shard.uri,
        format=shard.format,
        sha256=shard.sha256,
        n_bytes=shard.n_bytes,
        n_documents=n_docs,
        n_tokens=n_tokens,
    )


def _prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Read the next batches in a thread while the caller fingerprints this one.

    Parsing holds the GIL; the numba kernels release it, so the two overlap. Errors raised while
    reading reach the caller at the batch where they happened; if the caller stops early, the
    reader stops after the batch it is on.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        queue.put(batch, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:  # handed to the consumer
            queue.put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="provenance-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        reader.join()


def _documents_table(
    dataset_id: str, shard_index: int, shard_name: str, batch: Batch, fp: FingerprintBatch, first_id: int
) -> pa.Table:
    n = len(fp)
    k = fp.signatures.shape[1]
    b = fp.band_keys.shape[1]
    text_offsets = np.frombuffer(batch.texts.buffers()[1], dtype=np.int64)[batch.texts.offset : batch.texts.offset + n + 1]
    keys = batch.ids if batch.ids is not None else pa.array([f"{shard_name}:{r}" for r in batch.rows.tolist()], pa.string())
    return pa.table(
        {
            "doc_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            "dataset_id": pa.array([dataset_id] * n, pa.string()),
            "shard_index": pa.array(np.full(n, shard_index, dtype=np.int32)),
            "row_index": pa.array(batch.rows),
            "line": pa.array(batch.lines) if batch.lines is not None else pa.nulls(n, pa.int64()),
            "key": keys,
            "exact_hash": pa.array(fp.exact_hash),
            "token_count": pa.array(fp.token_count.astype(np.int32)),
            "n_bytes": pa.array(np.diff(text_offsets).astype(np.int32)),
            "signature": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)), pa.array(fp.signatures.reshape(-1))
            ),
            "band_keys": pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * b, b, dtype=np.int32)), pa.array(fp.band_keys.reshape(-1))
            ),
        }
    )
