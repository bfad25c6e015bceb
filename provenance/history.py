"""A version's history of patches: the manifests and first parents along its chain, and the
value of one parameter group made by replaying the patches from the chain's last full copy.

Commit (to encode a group against its parent), checkout and merges (to make their inputs) read
versions through here.
"""

from __future__ import annotations

import torch

from provenance.errors import ObjectCorruptError, ObjectMissingError, ProvenanceError, StorageUnreachableError
from provenance.kernels.patch import apply_chain
from provenance.ledger import LedgerStore
from provenance.objects import ObjectStore
from provenance.records import ParamRecord


def numel(shape: list[int]) -> int:
    """The number of elements of a tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n


class History:
    """Manifests and first parents of versions, read once per commit or checkout: a version's
    manifest and, below it, each group's rows down to its last full copy, in one query the first
    time it is asked for (:meth:`LedgerStore.first_parent_chain`).

    ``_manifests`` holds the whole manifests of the versions asked for; ``_below`` for each of them,
    per group, the rows with bytes read below it in first-parent order (``(version_id, row)``), and
    the version asked for before where its chain joined that one's (its rows then go on there). A
    group's chain is so walked row by row, not version by version: a group left unchanged for
    hundreds of versions cost a step per version and group (90,000 steps at depth 300 with 300
    groups, every commit)."""

    def __init__(self, ledger: LedgerStore):
        self.ledger = ledger
        self._manifests: dict[str, dict[str, ParamRecord]] = {}
        self._below: dict[str, tuple[dict[str, list[tuple[str, ParamRecord]]], str | None]] = {}
        self._parents: dict[str, str | None] = {}

    def _load(self, vid: str) -> None:
        below: dict[str, list[tuple[str, ParamRecord]]] = {}
        joined = None
        for depth, (version_id, parent, manifest) in enumerate(self.ledger.first_parent_chain(vid, resolved=True)):
            if depth == 0:
                self._manifests[version_id] = manifest
                self._parents[version_id] = parent
                continue
            if version_id in self._manifests:
                joined = version_id  # read whole before, with what a replay from it reaches below it
                break
            for name, row in manifest.items():
                below.setdefault(name, []).append((version_id, row))
        self._below[vid] = (below, joined)

    def manifest(self, vid: str) -> dict[str, ParamRecord]:
        """The whole manifest of ``vid``."""
        if vid not in self._manifests:
            self._load(vid)
        return self._manifests[vid]

    def parent(self, vid: str) -> str | None:
        """The first parent of ``vid``."""
        if vid not in self._parents:
            self._load(vid)
        return self._parents[vid]

    def rows_down(self, vid: str, name: str):
        """``(version_id, row)`` of group ``name`` from ``vid`` down its first parents: ``vid``'s
        own row (None where it has no such group), then the rows with bytes below it (each
        ``unchanged`` version between skipped), as far as a replay from ``vid`` reaches."""
        top = self.manifest(vid).get(name)
        yield vid, top
        while vid is not None:
            below, vid = self._below[vid]
            yield from below.get(name, ())
            if vid is not None:  # the chain goes on below a version asked for before: its own row, then its rows
                row = self._manifests[vid].get(name)
                if row is not None and row.encoding != "unchanged":
                    yield vid, row


def _chain(history: History, version_id: str, name: str) -> list[ParamRecord]:
    """The rows of ``name`` with bytes (not ``unchanged``) from ``version_id`` up its first
    parents to the last full copy."""
    chain: list[ParamRecord] = []
    for vid, row in history.rows_down(version_id, name):
        if row is None or row.encoding == "removed":
            raise ProvenanceError(f"parameter {name!r} is not in version {vid[:12]}")
        if row.encoding != "unchanged":
            chain.append(row)
        if row.encoding == "full":
            return chain
    raise ProvenanceError(f"parameter {name!r} of version {version_id[:12]} has no full copy in its history")


def _since_full(history: History, version_id: str, name: str) -> tuple[ParamRecord, list[ParamRecord]]:
    """The row of ``name``'s last full copy up the chain from ``version_id``, and the rows of the
    patches with bytes after it, newest first."""
    chain = _chain(history, version_id, name)
    return chain[-1], chain[:-1]


def chain_objects(history: History, version_id: str, name: str) -> list[tuple[str, int]]:
    """The objects :func:`materialize` reads for ``name`` in ``version_id``, in the order it
    reads them, each with its bytes (about: a patch's bytes are split evenly over its tensors)."""
    full, patches = _since_full(history, version_id, name)
    found = [(full.objects["full"], full.nbytes)]
    for row in reversed(patches):
        found += [(a, row.nbytes // max(len(row.objects), 1)) for a in row.objects.values()]
    return found


def materialize(history: History, store: ObjectStore, version_id: str, name: str) -> tuple[torch.Tensor, int, int]:
    """The value of parameter ``name`` in ``version_id`` (replaying patches up the first-parent
    chain from its last full copy), the number of patches with bytes in that chain, and their bytes."""
    ledger = history.ledger
    full, patches = _since_full(history, version_id, name)
    value = get_object(ledger, store, full.objects["full"])  # maps the object file
    if patches:
        # the whole chain in one pass over the output (provenance.kernels.patch.apply_chain)
        steps = []
        for row in reversed(patches):
            t = {role: get_object(ledger, store, addr) for role, addr in row.objects.items()}
            if row.encoding == "sparse":
                steps.append(("sparse", t["indices"], t["values"]))
            elif row.encoding == "low_rank":
                steps.append(("low_rank", t["B"], t["A"], row.meta["scale"]))
            else:
                steps.append((row.encoding, *t.values()))
        value = apply_chain(value, steps)
    return value, len(patches), sum(r.nbytes for r in patches)


def sparse_chain(history: History, store: ObjectStore, version_id: str, name: str
                 ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], int, int] | None:
    """Parameter ``name`` of ``version_id`` left unmaterialised, when its chain since the last full
    copy holds only sparse patches: that copy (mapped, not copied), the patches' ``(indices,
    values)`` oldest first, their number and their bytes. None when the chain holds another kind
    of patch (then :func:`materialize` it)."""
    full, patches = _since_full(history, version_id, name)
    if any(r.encoding != "sparse" for r in patches):
        return None
    ledger = history.ledger
    steps = [(get_object(ledger, store, r.objects["indices"]), get_object(ledger, store, r.objects["values"]))
             for r in reversed(patches)]
    return get_object(ledger, store, full.objects["full"]), steps, len(patches), sum(r.nbytes for r in patches)


#: What to do about a missing or corrupt object: the end of the error that reports it.
OBJECT_DAMAGE_HINT = ("; `prov verify` lists every damaged object with the versions that need it: commit a checkpoint "
                      "that holds the tensor again (the object is written afresh), or restore the object from a "
                      "backup of the ledger")
#: What to do when the bucket did not answer (the network, the endpoint, the credentials): the
#: object may well be there, so nothing is to be re-committed or restored.
UNREACHABLE_HINT = ("; the bucket did not answer, so nothing is known to be damaged: check its endpoint "
                    "(AWS_ENDPOINT_URL_S3), the network and the credentials, then try again")


def damage_hint(exc: ProvenanceError) -> str:
    """The end of the error that reports ``exc``: what to do about it."""
    return UNREACHABLE_HINT if isinstance(exc, StorageUnreachableError) else OBJECT_DAMAGE_HINT


def get_object(ledger: LedgerStore, store: ObjectStore, address: str) -> torch.Tensor:
    """The object at ``address``; a missing or corrupt one is reported with the versions that use it
    and what to do (:func:`damage_hint`)."""
    try:
        return store.get(address)
    except (ObjectCorruptError, ObjectMissingError) as exc:
        users = ledger.versions_using(address)
        raise type(exc)(f"{exc}; used by version(s) {', '.join(u[:12] for u in users) or 'none'}"
                        f"{damage_hint(exc)}") from None
