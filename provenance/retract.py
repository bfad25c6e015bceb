"""Retraction planning (issue 15, work in progress on branch ``retract-wip``): from the versions a
target taints to what can be done for each.

:func:`plan` takes the taint rows (:func:`provenance.lineage.taint`: per version, ``direct`` when
its own run trained on the target, else ``via`` the tainted ancestor) and the version graph
(:meth:`LedgerStore.version_graph`: parents, run, merge method and weights, tags) and returns one
step per tainted version, oldest first:

- ``remerge``: a merge some of whose inputs are tainted and some clean: merge the clean ones
  again from the stored receipt, same method and Fishers; weights renormalised over the
  remaining inputs for the methods whose weights are a convex combination (``average``,
  ``fisher``), kept as recorded for those whose weights scale task vectors (``task_arithmetic``,
  ``ties``), which the step says.
- ``retrain``: a version trained directly on the target, or a merge with no clean input left.
- ``rebase``: a version built on a tainted parent (a later patch): re-apply its stored patch onto
  the parent's clean replacement (exact for the patch, approximate for the model); when the
  parent itself needs retraining, the rebase waits for it (``after``).

Not yet here (the rest of issue 15): executing the plan (``apply``), the retraction record and
its table, ``prov dataset remove``, the proof audit, the gate's ``--deny-retracted``, the CLI, the
service and the HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Merge methods whose weights are a convex combination of the inputs: dropping inputs
#: renormalises the remaining weights to sum to what they summed to before.
RENORMALISED = frozenset({"average", "fisher"})


@dataclass
class Step:
    """What to do for one tainted version."""

    version_id: str
    action: Literal["remerge", "retrain", "rebase"]
    why: str
    tags: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # remerge: the clean inputs
    weights: list[float] = field(default_factory=list)  # remerge: their weights
    dropped: list[str] = field(default_factory=list)  # remerge: the tainted inputs left out
    method: str | None = None
    onto: str | None = None  # rebase: the parent to re-apply the patch onto (a step's version when after)
    after: str | None = None  # rebase: the step whose result it waits for
    exact: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def plan(taint_rows: list[dict[str, Any]], graph: dict[str, dict[str, Any]]) -> list[Step]:
    """One :class:`Step` per tainted version, parents before children (module doc)."""
    tainted = {r["version_id"]: r for r in taint_rows}
    order = sorted(tainted, key=lambda v: (graph[v]["created_at"], v))
    steps: dict[str, Step] = {}
    for vid in order:
        row, hit = graph[vid], tainted[vid]
        tags = list(row.get("tags") or [])
        parents = list(row.get("parents") or [])
        if row.get("method"):
            steps[vid] = _remerge(vid, row, parents, tainted, tags)
        elif hit["direct"]:
            steps[vid] = Step(vid, "retrain", "its own run trained on the target", tags)
        else:
            parent = parents[0] if parents else None
            before = steps.get(parent) if parent is not None else None
            if before is None:
                steps[vid] = Step(vid, "retrain", f"tainted through {hit['via'][:12]}, which has no step", tags)
            elif before.action == "remerge":
                steps[vid] = Step(vid, "rebase", f"its parent {parent[:12]} is re-merged without the target; its "
                                  "patch is re-applied onto the result (exact for the patch, approximate for the model)",
                                  tags, onto=parent, after=parent, exact=False)
            else:
                steps[vid] = Step(vid, "rebase", f"its parent {parent[:12]} needs a {before.action} first; then its "
                                  "patch is re-applied onto that (approximate), or retrain it", tags,
                                  onto=parent, after=parent, exact=False)
    return [steps[v] for v in order]


def _remerge(vid: str, row: dict[str, Any], parents: list[str], tainted: dict[str, Any], tags: list[str]) -> Step:
    method = row["method"]
    weights = list(row.get("weights") or [1.0 / len(parents)] * len(parents))
    keep = [i for i, p in enumerate(parents) if p not in tainted]
    dropped = [p for p in parents if p in tainted]
    if not dropped:  # tainted through no input: cannot happen for a merge unless its own inputs are the target
        return Step(vid, "retrain", "a merge tainted though none of its inputs is", tags, method=method)
    if not keep:
        return Step(vid, "retrain", "every input of this merge is tainted: nothing clean is left to merge", tags,
                    dropped=dropped, method=method)
    kept = [weights[i] for i in keep]
    if method in RENORMALISED:
        total, now = sum(weights), sum(kept)
        kept = [w * total / now for w in kept] if now else [total / len(kept)] * len(kept)
        why = (f"re-merge the {len(keep)} clean input(s) with the same {method} method and Fishers, weights "
               "renormalised over them")
    else:
        why = (f"re-merge the {len(keep)} clean input(s) with {method}; its weights scale task vectors and are not "
               "renormalised: they are kept as recorded")
    return Step(vid, "remerge", why, tags, inputs=[parents[i] for i in keep], weights=kept, dropped=dropped,
                method=method)


def remerge(ledger: Any, step: Step, retraction: str) -> Any:
    """Carry out a ``remerge`` step: merge its clean inputs again from the stored receipt (same
    method, the Fishers stored with each input, the same base, eps, normalisation and density;
    the step's weights), and tag the result ``<tag>+retracted-<retraction>`` for each tag of the
    tainted version. Returns the new version. (Idempotence, atomicity across steps and the link
    to a retraction record are still to come.)"""
    if step.action != "remerge":
        raise ValueError(f"step for {step.version_id[:12]} is a {step.action}, not a remerge")
    receipt = ledger.receipt(step.version_id)
    options: dict[str, Any] = {"method": receipt.method, "weights": step.weights}
    if receipt.base_version is not None:
        options["base"] = receipt.base_version
    for name in ("eps", "normalize", "density"):
        if getattr(receipt, name) is not None:
            options[name] = getattr(receipt, name)
    old = ledger.version(step.version_id)
    new = ledger.merge(step.inputs, message=f"{old.message} (retraction {retraction}: without "
                       f"{', '.join(d[:12] for d in step.dropped)})", **options)
    for tag in step.tags:
        ledger.tag(f"{tag}+retracted-{retraction}", new)
    return new


def rebase(ledger: Any, step: Step, onto: Any, retraction: str) -> tuple[Any, list[str]]:
    """Carry out a ``rebase`` step: the tainted version's own stored patch, group by group,
    re-applied onto ``onto`` (the clean replacement of its parent) and committed as a child of
    it: an ``unchanged`` group takes ``onto``'s value, a ``sparse`` one its replacement values at
    its positions, a ``low_rank`` one its factors (stored again as low-rank). Exact for the
    patch, approximate for the model. A group the version stored ``full`` (a dense update) is
    its whole value, still shaped by the tainted parent: it is carried over as it is and
    returned by name, so that the plan can say those groups need retraining. Returns the new
    version and those names."""
    from provenance.history import History, get_object, materialize
    from provenance.kernels.patch import apply_chain

    if step.action != "rebase":
        raise ValueError(f"step for {step.version_id[:12]} is a {step.action}, not a rebase")
    old = ledger.version(step.version_id)
    target = ledger.version(onto)
    history, store = History(ledger), ledger.object_store()
    state, low_rank, carried = {}, {}, []
    for name, row in ledger.manifest(old).items():
        if row.encoding == "removed":
            continue
        base = materialize(history, store, target.version_id, name)[0]
        t = {role: get_object(ledger, store, addr) for role, addr in row.objects.items()}
        if row.encoding == "unchanged":
            state[name] = base
        elif row.encoding == "sparse":
            state[name] = apply_chain(base, [("sparse", t["indices"], t["values"])])
        elif row.encoding == "low_rank":
            state[name] = apply_chain(base, [("low_rank", t["B"], t["A"], row.meta["scale"])])
            low_rank[name] = (t["B"], t["A"], row.meta["scale"])
        else:
            state[name] = t["full"]
            carried.append(name)
    new = ledger.commit(state, parent=target, low_rank=low_rank, author=old.author,
                        message=f"{old.message} (retraction {retraction}: its patch rebased onto "
                                f"{target.version_id[:12]}; approximate)")
    for tag in step.tags:
        ledger.tag(f"{tag}+retracted-{retraction}", new)
    return new, carried


def retract(ledger: Any, *, reason: str, dataset: str | None = None, shard: str | None = None,
            key: str | None = None, text: str | None = None, near: float | None = None,
            author: str | None = None) -> dict[str, Any]:
    """Record a retraction of a document (``key`` in ``dataset``, or a ``text``; with ``near``
    its near-copies in any dataset), a shard or a dataset, with the plan for every version it
    taints; returns the record. A target that taints nothing is refused: nothing to retract."""
    import json
    import uuid

    from provenance.audits import taint_report
    from provenance.errors import InvalidParameterError
    from provenance.ledger._common import _now

    if not isinstance(reason, str) or not reason.strip():
        raise InvalidParameterError("a retraction needs a reason (--reason)")
    report = taint_report(ledger, dataset=dataset, shard=shard, key=key, text=text, near=near)
    if not report.versions:
        raise InvalidParameterError(f"nothing to retract: {report.target} shaped no version")
    graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    steps = plan([v.model_dump() for v in report.versions], graph)
    row = {"retraction_id": uuid.uuid4().hex[:12], "created_at": _now(), "author": author, "reason": reason,
           "target": report.target, "near": near,
           "documents_json": json.dumps([{k: m[k] for k in ("doc_id", "dataset_id", "key") if k in m}
                                         for m in report.matches]),
           "plan_json": json.dumps([s.as_dict() for s in steps])}
    with ledger.transaction() as tx:
        tx.insert_retraction(row)
    return {**row, "steps": steps}


def apply_retraction(ledger: Any, retraction: str, *, rebase_too: bool = False) -> list[dict[str, Any]]:
    """Carry out what a recorded retraction's plan can: every re-merge, and with ``rebase_too``
    every rebase whose parent has a clean replacement. Each version made is recorded as a result
    of the retraction; a step with a result is not done again, so running it again after a
    failure continues where it stopped. Returns the results, in plan order."""
    import json

    from provenance.errors import InvalidParameterError, NotFoundError
    from provenance.ledger._common import _now

    with ledger._cursor() as con:
        found = con.execute("SELECT plan_json FROM retractions WHERE retraction_id = ?", [retraction]).fetchall()
        if not found:
            raise NotFoundError(f"no retraction {retraction!r}")
        done = {v: (a, n, e) for v, a, n, e in con.execute(
            "SELECT version_id, action, new_version_id, exact FROM retraction_results WHERE retraction_id = ?",
            [retraction]).fetchall()}
    steps = [Step(**s) for s in json.loads(found[0][0])]
    replaced = {v: n for v, (_, n, _) in done.items()}
    for step in steps:
        if step.version_id in done:
            continue
        if step.action == "remerge":
            if ledger.receipt(step.version_id) is None:
                raise InvalidParameterError(f"version {step.version_id[:12]} has no merge receipt: it cannot be "
                                            "re-merged; retrain it")
            new, exact = remerge(ledger, step, retraction), True
        elif step.action == "rebase" and rebase_too and step.after in replaced:
            new, _ = rebase(ledger, step, replaced[step.after], retraction)
            exact = False
        else:
            continue
        with ledger.transaction() as tx:
            tx.insert_retraction_result({"retraction_id": retraction, "version_id": step.version_id,
                                         "action": step.action, "new_version_id": new.version_id, "exact": exact,
                                         "applied_at": _now()})
        replaced[step.version_id] = new.version_id
        done[step.version_id] = (step.action, new.version_id, exact)
    return [{"version_id": s.version_id, "action": done[s.version_id][0], "new_version_id": done[s.version_id][1],
             "exact": done[s.version_id][2]} for s in steps if s.version_id in done]
