"""Stored audits deleted, whole or their pairs only; an audit a merge receipt cites keeps its
report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from provenance.errors import InvalidParameterError
from provenance.ledger import LedgerStore
from provenance.ledger._common import _now
from provenance.ledger.lineage import check_audit_kind
from provenance.plain import utc_time


def delete_audits(ledger: LedgerStore, audit_ids: Sequence[str] = (), *, kind: str | None = None,
                  before: datetime | str | None = None, pairs_only: bool = False,
                  dry_run: bool = False) -> dict[str, Any]:
    """Delete stored audits, their reports and their pairs; with ``pairs_only``, their pairs
    only (the report stays readable with :meth:`Ledger.audit`; :meth:`Ledger.audit_pairs` then
    says the pairs were deleted). The pairs are what grows: one gate or memorization audit of a
    large lineage stores millions.

    The audits are those named by ``audit_ids`` (ids or prefixes of at least 4 hex digits), else
    every stored one, narrowed to ``kind`` and to those made before ``before`` (a datetime or ISO
    string; naive means UTC). Naming none and giving no ``before`` is refused: that would be all.
    An audit that a merge receipt cites keeps its report: named, it is refused unless
    ``pairs_only``; selected by ``before``, it is left whole and listed in ``kept``. The deletion
    is one transaction. ``dry_run``: only say what would go.

    Returns ``deleted`` (``audit_id, kind, target, created_at, pairs``), ``pairs`` (how many
    pairs go), ``kept`` (``audit_id, cited_by``), ``skipped`` (named audits that ``kind`` or
    ``before`` leave out, or whose pairs were deleted before: ``audit_id, why``), ``pairs_only``
    and ``dry_run``. The space the
    rows held is reused by later writes, and given back where it ends the database file."""
    check_audit_kind(kind)
    before = utc_time(before, "before")
    names = [audit_ids] if isinstance(audit_ids, str) else list(audit_ids)
    if not names and before is None:
        raise InvalidParameterError("name the audits to delete, or give before= (a date: the audits made before it)")
    ids = sorted({ledger.audit(a)["audit_id"] for a in names}) if names else None  # not found: says which
    if dry_run:
        return _deletion(ledger.select_audits(ids), ids, kind, before, pairs_only, dry_run=True)
    with ledger.transaction() as tx:
        result = _deletion(tx.select_audits(ids), ids, kind, before, pairs_only, dry_run=False)
        when = _now()
        for row in result["deleted"]:
            tx.delete_audit(row["audit_id"], pairs_only=pairs_only, when=when)
    return result


def _deletion(rows: list[dict[str, Any]], named: list[str] | None, kind: str | None, before: datetime | None,
              pairs_only: bool, *, dry_run: bool) -> dict[str, Any]:
    """What goes (module function :func:`delete_audits`): ``rows`` are every stored audit, or
    the named ones; those that ``kind``, ``before`` or (``pairs_only``) pairs deleted before
    leave out are listed in ``skipped`` with why."""
    skipped = []
    for r in rows:
        why = (f"a {r['kind']} audit, not {kind}" if kind is not None and r["kind"] != kind else
               f"made {r['created_at']:%Y-%m-%d %H:%M} UTC, not before {before:%Y-%m-%d %H:%M}"
               if before is not None and r["created_at"] >= before else
               "its pairs were deleted before" if pairs_only and r["pairs_deleted_at"] is not None else None)
        if why is not None:
            skipped.append({"audit_id": r["audit_id"], "why": why})
    present = {r["audit_id"] for r in rows}
    skipped += [{"audit_id": a, "why": "no longer in the ledger (deleted meanwhile)"} for a in named or () if a not in present]
    out = {s["audit_id"] for s in skipped}
    rows = [r for r in rows if r["audit_id"] not in out]
    cited = [r for r in rows if r["cited_by"] and not pairs_only]
    if cited and named is not None:
        r = cited[0]
        more = f" and {len(r['cited_by']) - 1} more" if len(r["cited_by"]) > 1 else ""
        raise InvalidParameterError(
            f"audit {r['audit_id'][:12]} is cited by the merge receipt of version {r['cited_by'][0][:12]}{more}: "
            "its report stays; delete its pairs only (--pairs-only; pairs_only=True)")
    deleted = [{k: r[k] for k in ("audit_id", "kind", "target", "created_at", "pairs")} for r in rows
               if pairs_only or not r["cited_by"]]
    return {"deleted": deleted, "pairs": sum(r["pairs"] for r in deleted),
            "kept": [{"audit_id": r["audit_id"], "cited_by": r["cited_by"]} for r in cited],
            "skipped": skipped if named is not None else [], "pairs_only": pairs_only, "dry_run": dry_run}
