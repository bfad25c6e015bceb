"""What every audit shares (:class:`AuditRun`): the dedup audit, the pre-merge gate and the
memorization audit each stage their documents and find their near pairs through it."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from provenance.audits.banding import banding_for, check_threshold
from provenance.audits.scope import check_same_config
from provenance.errors import InvalidParameterError
from provenance.ledger import LedgerStore
from provenance.ledger._common import _now
from provenance.progress import stage, step
from provenance.records import DatasetRecord


class AuditRun:
    """What every audit shares: the banding its threshold asks for over its datasets' one
    fingerprint config, an id and a time, and one transaction (a scratch one when the audit stores
    nothing) in which the audited documents, and any probes, are staged and joined by LSH bands
    into ``audit_pairs``. The dedup audit, the pre-merge gate and the memorization audit are each
    this skeleton plus their own questions to the pairs."""

    def __init__(self, ledger: LedgerStore, kind: str, datasets: Sequence[DatasetRecord], threshold: float, *,
                 store: bool = True, progress: Any = None):
        self.ledger, self.kind, self.store, self.progress = ledger, kind, store, progress
        self.started = time.perf_counter()
        self.threshold = check_threshold(threshold)
        self.config = check_same_config(datasets)
        self.k = self.config.num_perm
        self.banding = banding_for(self.k, self.threshold)
        self.min_matches = math.ceil(self.threshold * self.k - 1e-9)
        self.stored_bands = all((d.bands, d.rows) == (self.banding.bands, self.banding.rows) for d in datasets)
        self.audit_id = uuid.uuid4().hex
        self.n_docs = 0
        self.window = self.windowed = 0  # the bucket window asked for, and the buckets it windowed (pairs())
        self.created = _now()

    @contextlib.contextmanager
    def pairs(self, scope: pa.Table, *, probes: np.ndarray | None = None, all_pairs: bool = False,
              stage_label: str = "documents", engine: Any = None, window: int = 0,
              classes: str | None = None) -> Iterator[Any]:
        """The transaction, once ``scope``'s documents (and ``probes``, signatures of texts that
        are not in the ledger) are staged and their near pairs found, by the database or by
        ``engine`` (:func:`audit_dedup`); the audit's temporary tables are dropped when the block
        ends. ``self.n_docs``: the documents staged. ``window``: the bucket window (module doc;
        0: every two documents of a bucket), ``self.windowed``: the buckets it windowed.
        ``classes``: ``"sides"`` or ``"samples"``, the pairs to find are only those across them
        (:meth:`provenance.ledger.audit_pairs.PairWrites.near_pairs`)."""
        self.window = window
        stage(self.progress, f"{self.kind}: {stage_label}", 4)
        with self.ledger.transaction(scratch=not self.store) as tx:
            if engine is not None:  # it reads the documents itself: nothing is staged
                if probes is not None:
                    raise InvalidParameterError("an audit engine takes no probes")
                self.windowed = engine.near_pairs(tx, self, scope, all_pairs=all_pairs) or 0
                step(self.progress, 2)
            else:
                self.n_docs = tx.stage_documents(scope, in_place=probes is None)
                if probes is not None:
                    tx.stage_probes(probes)
                step(self.progress)
                self.windowed = tx.near_pairs(self.audit_id, self.banding.bands, self.banding.rows, self.min_matches,
                                              stored=self.stored_bands and probes is None, collapse=True,
                                              all_pairs=all_pairs, window=window, classes=classes)
                step(self.progress)
            yield tx
            tx.drop_audit_tables()
            step(self.progress)

    def banding_report(self) -> dict[str, Any]:
        """How the pairs were found: bands, rows, the chance to find a pair at the threshold."""
        return {"bands": self.banding.bands, "rows": self.banding.rows, "num_perm": self.k,
                "min_matches": self.min_matches, "p_at_threshold": self.banding.probability(self.threshold),
                "stored_band_keys": self.stored_bands}

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def record(self, tx: Any, *, target: str, params: dict[str, Any], passed: bool | None,
               report: dict[str, Any]) -> None:
        """Store the audit's row (nothing when the audit stores nothing)."""
        tx.insert_audit({"audit_id": self.audit_id, "kind": self.kind, "target": target, "params": params,
                         "passed": passed, "report": report, "created_at": self.created})
