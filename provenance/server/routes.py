"""The resources of ``prov serve`` under ``/api/v1``, named after the ledger's nouns, one module
each; this module gathers their routers into :data:`router`, which
:func:`provenance.server.app.create_app` mounts:

- :mod:`~provenance.server.queries`: the ledger's summary, read-only SQL
- :mod:`~provenance.server.datasets`: datasets, shards, documents, uploads and registration,
  near-duplicates, documents removed
- :mod:`~provenance.server.versions`: versions, their tensors and Fishers, tags, merges
- :mod:`~provenance.server.runs`: training runs and their logged examples
- :mod:`~provenance.server.lineage`: lineage, OpenLineage events, taint
- :mod:`~provenance.server.retractions`: retractions, applied and proven
- :mod:`~provenance.server.audits`: dedup, merge-gate and memorization audits
- :mod:`~provenance.server.admin`: gc, backup, verify, tokens

and :mod:`~provenance.server.common`, what they share.

Each route is one call of the library on the served ledger (under the service's lock) and
returns its record or typed result as JSON; uploads arrive as Arrow IPC streams (document rows,
logged examples) or safetensors files (model states), streamed to a file under the ledger's
``tmp/uploads`` first so that no body is held in memory whole.
"""

from __future__ import annotations

from fastapi import APIRouter

from provenance.server import admin, audits, datasets, lineage, queries, retractions, runs, versions

router = APIRouter()
for resource in (queries, datasets, versions, runs, lineage, retractions, audits, admin):  # the order routes match in
    router.include_router(resource.router)
