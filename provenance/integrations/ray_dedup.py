"""The dedup audit on Ray Data: the band-key shuffle, the pairs' check on signatures and the
connected components run on a Ray cluster; the report and pairs are stored in the ledger as the
local audit stores them.

::

    from provenance.integrations.ray_dedup import audit_dedup

    report = audit_dedup(ledger, ["crawl", "books"], threshold=0.8, num_cpus=8)

**How.** The audit's documents are written out from the ledger's transaction as Parquet
(``doc_id``, signature, and the stored band keys when the audit's banding is the
registration's), without staging them in a temporary table as the local audit does. On Ray:

1. *Identical signatures.* Rows are hash-partitioned by signature (``groupby`` on a partition
   column) and each partition groups its identical signatures: every document gets its group's
   first (smallest) doc_id and the group's size. Only the first document of each group goes on:
   ``m`` copies of a boilerplate text cost ``m − 1`` pairs, not ``m(m − 1)/2`` in every band.
2. *Band-key shuffle.* Each group's first document becomes one row per band (band, band key,
   doc_id: 32 bytes), hash-partitioned by band key; in a partition, every two documents sharing a
   band and key are a candidate pair. *Verification* then brings the two signatures to each pair
   by two exchanges (the pairs partitioned by their smaller doc_id next to those documents'
   signatures, then by the larger one's), where the pairs shared by several bands are made one and
   a pair is kept when its signatures agree in at least ``ceil(threshold × num_perm)`` positions.
   A document's signature crosses the shuffles three times (the grouping and the two exchanges),
   not once per band: 2.45 KB a document with 128 permutations and 21 bands (measured on 1M
   documents), where carrying the signature in the band rows moved 15 KB.
3. The pairs and groups come back to the ledger's transaction (DuckDB reads the Parquet), where
   copies are paired with their group's first document (or, with ``all_pairs``, every pair is
   listed) exactly as the local audit does, and ``verify`` reads texts as locally.
4. *Connected components.* The pairs, as edges, go back to Ray for the large-star / small-star
   rounds of Kiveris et al. ("Connected Components in MapReduce and Beyond", SoCC 2014): each step
   is one shuffle of the edges by node and one pass per partition, and the rounds stop when a
   round leaves the edge set as it was (an order-free checksum of the edges, equal twice). Then
   every component is a star around its smallest doc_id, which becomes each pair's ``cluster``,
   as the local audit labels it.

Pairs, clusters and the report equal the local audit's on the same data (tested). Band keys the
audit computes itself (a banding other than the registration's) are 64-bit hashes of the band's
signature positions, as the database's are.

**Where the work is.** Every step that grows with the documents (grouping, the band shuffle,
the signature comparisons, the component rounds) runs on Ray. The ledger's transaction exports the
documents and receives the pairs; the report is queried there, from the pairs. **Staging.** The
files exchanged are written under ``staging`` (default: the ledger's ``.prov/tmp/ray``, where
``prov gc`` removes what a killed audit left), which the driver and every Ray worker must reach
(one machine, or a shared file system), and removed when the audit ends.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provenance import audits
from provenance.errors import InvalidParameterError, ProvenanceError
from provenance.integrations.ray_data import _connect, check_address, check_count, check_staging, work_folder
from provenance.ledger.audit_pairs import window_order
from provenance.results import DedupReport

try:
    import ray
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("provenance.integrations.ray_dedup needs Ray Data: pip install 'provenance[ray]'") from exc

__all__ = ["audit_dedup"]

#: Documents per partition the shuffles aim at: a partition is one task's memory, about 70 MB at
#: 128 permutations (0.70 KB a document grouping signatures, 21 band rows of 32 bytes, 0.54 KB
#: in an exchange).
DOCS_PER_PARTITION = 100_000
#: Edges per partition in the component rounds (24 bytes each, both directions).
EDGES_PER_PARTITION = 1_000_000
#: The most partitions a shuffle may be given: a sort shuffle makes blocks per partition and input block.
MAX_PARTITIONS = 10_000
#: Rounds of the component search after which something is wrong (they grow as log² of the
#: longest path; 2^20 nodes in a path take about 40).
MAX_ROUNDS = 200


def audit_dedup(ledger: Any, targets: Sequence[str], *, address: str | None = None, num_cpus: int | None = None,
                staging: str | os.PathLike | None = None, partitions: int | None = None,
                **options: Any) -> DedupReport:
    """The dedup audit of ``targets`` with its pairs and clusters found on Ray (module doc);
    ``options`` are :func:`provenance.audits.audit_dedup`'s. ``address``: the Ray cluster to use
    when Ray is not initialised in this process yet (default: start a local one with
    ``num_cpus`` CPUs). ``partitions``: of each shuffle (default: two per CPU, more for large
    audits)."""
    from provenance.ledger import LedgerStore

    if not isinstance(ledger, LedgerStore):
        raise InvalidParameterError(
            "the Ray engine audits a local ledger; through a ledger server, run the audit with the local engine "
            "(the server runs it) or run the Ray audit on the server's machine")
    check_address(address)
    check_count("num_cpus", num_cpus)
    check_count("partitions", partitions, most=MAX_PARTITIONS)  # 10**9 made Ray plan a billion blocks, for ever
    check_staging(staging)
    threshold = audits.check_threshold(options.get("threshold", 0.8))  # bad options are errors before Ray starts
    audits.check_window(options.get("bucket_window", audits.BUCKET_WINDOW))
    datasets = audits.resolve_scope(ledger, targets)[1]  # an unknown target is an error before Ray starts,
    audits.banding_for(audits.check_same_config(datasets).num_perm, threshold)  # and so is a threshold too low
    _connect(address, num_cpus)
    return audits.audit_dedup(ledger, targets, engine=RayDedup(staging, partitions, ledger=ledger), **options)


class RayDedup:
    """The engine :func:`provenance.audits.audit_dedup` calls for the pairs and the clusters."""

    def __init__(self, staging: str | os.PathLike | None = None, partitions: int | None = None, *,
                 ledger: Any = None):
        self.staging, self.partitions, self.ledger = staging, partitions, ledger

    def near_pairs(self, tx: Any, run: audits.AuditRun, scope: pa.Table, *, all_pairs: bool) -> int:
        """Steps 1–3 of the module doc: the audit's pairs, into ``audit_pairs``; ``run.n_docs``:
        the documents of ``scope``. Returns the band buckets windowed (``run.window``)."""
        with self._folder() as folder:
            run.n_docs = tx.export_documents(scope, str(folder / "docs"), band_keys=run.stored_bands)
            if run.n_docs == 0:
                tx.add_found_pairs(run.audit_id, [], [], all_pairs=all_pairs)
                return 0
            parts = self._partitions(run.n_docs, DOCS_PER_PARTITION)
            docs = _sorting(ray.data.read_parquet(str(folder / "docs"), override_num_blocks=parts))
            groups = (docs.map_batches(_signature_partition, batch_format="pyarrow", fn_kwargs={"parts": parts})
                      .groupby("part", num_partitions=parts)
                      .map_groups(_identical_signatures, batch_format="pyarrow")
                      .materialize())
            groups.select_columns(["doc_id", "rep", "size"]).write_parquet(str(folder / "groups"))
            reps = groups.map_batches(_first_of_groups, batch_format="pyarrow").materialize()
            del groups
            keyed = reps.map_batches(_keyed_signatures, batch_format="pyarrow", fn_kwargs={"parts": parts}).materialize()
            candidates = (reps.map_batches(_band_rows, batch_format="pyarrow",
                                           fn_kwargs={"bands": run.banding.bands, "rows": run.banding.rows,
                                                      "parts": parts, "stored": run.stored_bands})
                          .groupby("part", num_partitions=parts)
                          .map_groups(_candidates, batch_format="pyarrow", fn_kwargs={"parts": parts,
                                                                                     "window": run.window})
                          .materialize())
            windowed = int(candidates.sum("windowed") or 0) if candidates.count() else 0
            candidates = candidates.drop_columns(["windowed"])
            halves = (candidates.union(keyed).groupby("part", num_partitions=parts)
                      .map_groups(_first_signature, batch_format="pyarrow", fn_kwargs={"parts": parts}))
            pairs = (halves.union(keyed).groupby("part", num_partitions=parts)
                     .map_groups(_compare, batch_format="pyarrow", fn_kwargs={"min_matches": run.min_matches}))
            pairs.write_parquet(str(folder / "pairs"))
            tx.add_found_pairs(run.audit_id, _files(folder / "pairs"), _files(folder / "groups"), all_pairs=all_pairs)
            return windowed

    def label_clusters(self, tx: Any, audit_id: str) -> int:
        """Step 4 of the module doc: each pair's ``cluster``; returns the rounds."""
        with self._folder() as folder:
            n_edges = tx.export_edges(audit_id, str(folder / "edges"))
            if not n_edges:
                tx.set_clusters(audit_id, [])
                return 0
            parts = self._partitions(n_edges, EDGES_PER_PARTITION)
            edges = _sorting(ray.data.read_parquet(str(folder / "edges"), override_num_blocks=parts))
            previous, rounds = None, 0
            while True:
                rounds += 1
                if rounds > MAX_ROUNDS:
                    raise ProvenanceError(f"the connected components did not settle in {MAX_ROUNDS} rounds")
                edges = _star_step(edges, _large_star, parts, both=True)
                edges = _star_step(edges, _small_star, parts, both=False).materialize()
                mark = _checksum(edges)
                if mark == previous:
                    break
                previous = mark
            edges.map_batches(_labels, batch_format="pyarrow").write_parquet(str(folder / "labels"))
            tx.set_clusters(audit_id, _files(folder / "labels"))
            return rounds

    def _partitions(self, rows: int, per_partition: int) -> int:
        """Partitions of a shuffle of ``rows``: as given, else two per CPU or more for large ones."""
        if self.partitions is not None:
            return self.partitions
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(2 * cpus, math.ceil(rows / per_partition))

    def _folder(self) -> contextlib.AbstractContextManager[Path]:
        return work_folder(self.ledger, self.staging, "prov-ray-dedup-")


def _sorting(dataset: Any) -> Any:
    """``dataset`` (and what is derived from it) grouped by Ray's sort-based shuffle: its fixed
    cost is a tenth of a second where the hash shuffle's aggregator actors take seconds to start
    on every step, and the component rounds are many short steps."""
    dataset.context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return dataset


def _files(folder: Path) -> list[str]:
    """The Parquet files Ray wrote in ``folder`` (none when there were no rows)."""
    return sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else []


# ---- the steps, one partition or batch at a time (run on Ray workers) --------------------------

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64's) of ``x``, elementwise: a well-spread hash of integers."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _row_hash(matrix: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of an unsigned integer matrix."""
    h = np.zeros(len(matrix), np.uint64)
    for j in range(matrix.shape[1]):
        h = _mix(h ^ matrix[:, j].astype(np.uint64))
    return h


def _matrix(column: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """A list column of equal-length rows as a 2-D array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)


def _lists(matrix: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """The rows of ``matrix`` as a list column of ``dtype`` (empty when it has no rows)."""
    width = matrix.shape[1] if matrix.ndim == 2 else 0
    offsets = pa.array(np.arange(len(matrix) + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), dtype))


def _signature_partition(batch: pa.Table, parts: int) -> pa.Table:
    """Step 1's partition column: identical signatures land in one partition."""
    sig = _matrix(batch["signature"], np.uint32)
    part = _row_hash(sig[:, :4]) % np.uint64(parts)
    return batch.append_column("part", pa.array(part.astype(np.int64)))


def _identical_signatures(table: pa.Table) -> pa.Table:
    """Each document of the partition with its group's first doc_id (``rep``) and size."""
    doc = table["doc_id"].to_numpy()
    sig = np.ascontiguousarray(_matrix(table["signature"], np.uint32))
    keys = sig.view(np.dtype((np.void, sig.shape[1] * 4))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    rep = np.full(len(counts), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(rep, inverse, doc)
    return table.drop_columns(["part"]).append_column("rep", pa.array(rep[inverse])).append_column(
        "size", pa.array(counts[inverse].astype(np.int64)))


def _first_of_groups(batch: pa.Table) -> pa.Table:
    """Step 2 takes each group's first document only."""
    return batch.filter(pc.equal(batch["doc_id"], batch["rep"])).drop_columns(["rep", "size"])


def _band_rows(batch: pa.Table, bands: int, rows: int, parts: int, stored: bool) -> pa.Table:
    """Step 2's rows: a document once per band (``band, key, doc_id``), partitioned by band key."""
    doc = batch["doc_id"].to_numpy()
    n = len(doc)
    if stored:
        keys = _matrix(batch["band_keys"], np.uint64)
    elif n:
        sig = _matrix(batch["signature"], np.uint32)
        keys = np.stack([_row_hash(sig[:, b * rows:(b + 1) * rows]) for b in range(bands)], axis=1)
    else:
        keys = np.zeros((0, bands), np.uint64)
    band = np.tile(np.arange(bands, dtype=np.int64), n)
    key = keys.ravel()
    part = (_mix(key ^ _mix(band.astype(np.uint64))) % np.uint64(parts)).astype(np.int64)
    return pa.table({"part": part, "band": band, "key": key, "doc_id": np.repeat(doc, bands)})


def _candidates(table: pa.Table, parts: int, window: int) -> pa.Table:
    """Every two documents sharing a band and key in a partition of band rows, as the rows of the
    first signature exchange: partitioned by the smaller doc_id (``doc``), the other in ``other``.
    A bucket of more than ``2 × window`` documents (``window`` > 0) pairs each with the ``window``
    after it in the database's shuffled order (:func:`provenance.ledger.audit_pairs.window_order`),
    as the local audit does; the first row's ``windowed`` counts those buckets (0 on the others)."""
    band, key, doc = table["band"].to_numpy(), table["key"].to_numpy(), table["doc_id"].to_numpy()
    order = np.lexsort((key, band))
    band, key, doc = band[order], key[order], doc[order]
    n = len(doc)
    new = np.ones(n, bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    size = np.diff(np.append(starts, n))
    wide = size > 2 * window if window else np.zeros(len(size), bool)
    shuffled = np.where(wide[run], window_order(doc, band), 0)  # small buckets stay in doc_id order
    order = np.lexsort((doc, shuffled, run))
    band, doc = band[order], doc[order]
    after = size[run] - (np.arange(n) - starts[run]) - 1  # rows after each in its run
    reach = np.where(wide[run], np.minimum(after, window), after)
    a, b = [], []
    rows, d = np.flatnonzero(reach > 0), 1
    while rows.size:
        a.append(np.minimum(doc[rows], doc[rows + d]))
        b.append(np.maximum(doc[rows], doc[rows + d]))
        d += 1
        rows = rows[reach[rows] >= d]
    a = np.concatenate(a) if a else np.zeros(0, np.int64)
    b = np.concatenate(b) if b else np.zeros(0, np.int64)
    a, b = _unique_pairs(a, b)
    rows = _exchange_rows(a, b, None, parts)
    windowed = np.zeros(rows.num_rows, np.int64)
    windowed[:1] = int(wide.sum())
    return rows.append_column("windowed", pa.array(windowed))


def _keyed_signatures(batch: pa.Table, parts: int) -> pa.Table:
    """The first documents' signatures as rows of the signature exchanges (``other`` = -1)."""
    doc = batch["doc_id"].to_numpy()
    return _exchange_rows(doc, np.full(len(doc), -1, np.int64), batch["signature"], parts)


def _exchange_rows(doc: np.ndarray, other: np.ndarray, signature: Any, parts: int) -> pa.Table:
    """Rows of a signature exchange, partitioned by ``doc``: a document's signature (``other`` =
    -1), or a pair (``doc``, ``other``) with the signature of ``other`` (or none yet)."""
    if signature is None:
        signature = pa.ListArray.from_arrays(pa.array(np.zeros(len(doc) + 1, np.int32)), pa.array([], pa.uint32()))
    elif isinstance(signature, pa.ChunkedArray):
        signature = signature.combine_chunks()
    if signature.type != pa.list_(pa.uint32()):
        signature = signature.cast(pa.list_(pa.uint32()))
    part = (_mix(doc) % np.uint64(parts)).astype(np.int64)
    return pa.table({"part": part, "doc": doc.astype(np.int64), "other": other.astype(np.int64), "signature": signature})


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(a, b)`` once each (a pair of documents shares several bands)."""
    if not len(a):
        return a, b
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.ones(len(a), bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep], b[keep]


def _split(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A partition of an exchange: the documents there (sorted ids and their signatures), and
    its pairs (``doc``, ``other``) in row order."""
    doc, other = table["doc"].to_numpy(), table["other"].to_numpy()
    is_doc = other < 0
    ids = doc[is_doc]
    order = np.argsort(ids)
    signatures = _matrix(table.filter(pa.array(is_doc))["signature"], np.uint32)[order]
    return ids[order], signatures, doc[~is_doc], other[~is_doc]


def _first_signature(table: pa.Table, parts: int) -> pa.Table:
    """The first exchange: each pair (smaller id ``doc``) gets that document's signature and moves
    to the partition of the larger id."""
    ids, signatures, a, b = _split(table)
    a, b = _unique_pairs(a, b)
    found = signatures[np.searchsorted(ids, a)] if len(a) else np.zeros((0, signatures.shape[1] or 1), np.uint32)
    return _exchange_rows(b, a, _lists(found, pa.uint32()), parts)


def _compare(table: pa.Table, min_matches: int) -> pa.Table:
    """The second exchange: each pair's two signatures compared; the pairs agreeing in
    ``min_matches`` positions or more, ``doc_a < doc_b``."""
    ids, signatures, b, a = _split(table)
    pair_rows = table.filter(pc.greater_equal(table["other"], 0))
    if not len(a):
        return pa.table({"doc_a": pa.array([], pa.int64()), "doc_b": pa.array([], pa.int64()),
                         "matches": pa.array([], pa.int64()), "jaccard": pa.array([], pa.float64())})
    first = _matrix(pair_rows["signature"], np.uint32)
    second = signatures[np.searchsorted(ids, b)]
    matches = np.concatenate([(first[lo:lo + _CHUNK] == second[lo:lo + _CHUNK]).sum(axis=1)
                              for lo in range(0, len(a), _CHUNK)])
    keep = matches >= min_matches
    return pa.table({"doc_a": a[keep].astype(np.int64), "doc_b": b[keep].astype(np.int64),
                     "matches": matches[keep].astype(np.int64), "jaccard": matches[keep] / first.shape[1]})


#: Pairs compared at once (memory: this many × num_perm bytes).
_CHUNK = 65_536


def _star_step(edges: Any, step: Any, parts: int, *, both: bool) -> Any:
    """One large-star or small-star step over the edges ``u < v``: each node gets its neighbours
    (all of them, ``both``, or the smaller ones), by one shuffle on the node."""
    return (edges.map_batches(_by_node, batch_format="pyarrow", fn_kwargs={"parts": parts, "both": both})
            .groupby("part", num_partitions=parts)
            .map_groups(step, batch_format="pyarrow"))


def _by_node(batch: pa.Table, parts: int, both: bool) -> pa.Table:
    u, v = batch["u"].to_numpy(), batch["v"].to_numpy()
    node, other = (np.concatenate([u, v]), np.concatenate([v, u])) if both else (v, u)
    part = (_mix(node) % np.uint64(parts)).astype(np.int64)
    return pa.table({"part": part, "node": node, "other": other})


def _neighbours(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The partition's (node, other) rows sorted and without repeats, each node's first row, and
    each row's node's smallest neighbour."""
    node, other = table["node"].to_numpy(), table["other"].to_numpy()
    order = np.lexsort((other, node))
    node, other = node[order], other[order]
    keep = np.ones(len(node), bool)
    keep[1:] = (node[1:] != node[:-1]) | (other[1:] != other[:-1])
    node, other = node[keep], other[keep]
    starts = np.flatnonzero(np.append(True, node[1:] != node[:-1])) if len(node) else np.zeros(0, np.int64)
    least = np.minimum.reduceat(other, starts) if len(node) else other
    return node, other, starts, np.repeat(least, np.diff(np.append(starts, len(node))))


def _large_star(table: pa.Table) -> pa.Table:
    """Each node's larger neighbours are linked to the smallest of the node and its neighbours."""
    node, other, _, least = _neighbours(table)
    centre = np.minimum(least, node)
    larger = other > node
    return pa.table({"u": centre[larger], "v": other[larger]})


def _small_star(table: pa.Table) -> pa.Table:
    """A node and its smaller neighbours are all linked to the smallest of those neighbours."""
    node, other, starts, least = _neighbours(table)
    rest = other != least
    return pa.table({"u": np.concatenate([least[starts], least[rest]]),
                     "v": np.concatenate([node[starts], other[rest]])})


def _checksum(edges: Any) -> tuple[int, int, int]:
    """An order-free checksum of the edges: their count and the sums of the halves of a 64-bit
    hash of each."""
    n = hi = lo = 0
    for row in edges.map_batches(_edge_sums, batch_format="pyarrow").iter_rows():
        n, hi, lo = n + row["n"], hi + row["hi"], lo + row["lo"]
    return n, hi, lo


def _edge_sums(batch: pa.Table) -> pa.Table:
    h = _mix(_mix(batch["u"].to_numpy()) ^ batch["v"].to_numpy().astype(np.uint64))
    return pa.table({"n": [len(h)], "hi": [int((h >> np.uint64(32)).sum())],
                     "lo": [int((h & np.uint64(0xFFFFFFFF)).sum())]})


def _labels(batch: pa.Table) -> pa.Table:
    """The settled stars' edges (centre ``u``, member ``v``) as each member's label."""
    return pa.table({"doc": batch["v"], "label": batch["u"]})
