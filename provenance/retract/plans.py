"""A retraction's plan: one :class:`Step` per version it taints, parents before children
(``remerge``, ``retrain`` or ``rebase``, as the package doc says), and the re-merges of a plan
recorded before stand-ins that leave out an input made clean again (:func:`outdated_steps`).
"""

from __future__ import annotations

import heapq
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from provenance import merge as methods

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
    stand_ins: list[str] = field(default_factory=list)  # remerge: tainted inputs replaced by their step's result
    method: str | None = None
    onto: str | None = None  # rebase: the version to re-apply the patch onto (a step's version when after)
    after: str | None = None  # rebase: the step whose result it goes onto
    exact: bool = True
    run_id: str | None = None  # retrain: the run that made the version
    settings: dict[str, Any] = field(default_factory=dict)  # retrain: the run's recorded settings
    datasets: dict[str, float] = field(default_factory=dict)  # retrain: the run's datasets and epochs
    remove: dict[str, list[str]] = field(default_factory=dict)  # retrain: per dataset, the keys to remove

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(taint_rows: list[dict[str, Any]], graph: dict[str, dict[str, Any]], *,
         runs: dict[str, dict[str, Any]] | None = None,
         retracted: dict[str, list[str]] | None = None, without: dict[str, str] | None = None,
         newer: dict[str, str] | None = None) -> list[Step]:
    """One :class:`Step` per tainted version, parents before children (module doc). ``runs``:
    per run id, its ``params`` and ``datasets`` (for the retrain steps); ``retracted``: per
    dataset id, the retracted keys in it; ``without``: per dataset id, a later version of the
    dataset that holds none of them (a retrain trains on it); ``newer``: per dataset id, a later
    version that still holds some (``prov dataset remove`` starts from the latest version)."""
    tainted = {r["version_id"]: r for r in taint_rows}
    order = _parents_first(tainted, graph)
    steps: dict[str, Step] = {}
    clean_of: dict[str, str | None] = {}  # per tainted version, its nearest clean ancestor by first parents
    for vid in order:
        row, hit = graph[vid], tainted[vid]
        tags = list(row.get("tags") or [])
        parents = list(row.get("parents") or [])
        first = parents[0] if parents else None
        clean_of[vid] = first if first is None or first not in tainted else clean_of.get(first)
        if row.get("method"):
            steps[vid] = _remerge(vid, row, parents, tainted, tags, steps)
        elif len(parents) > 1:
            steps[vid] = Step(vid, "retrain", "a merge with no merge receipt: it cannot be made again without its "
                              "tainted inputs", tags)
        elif hit["direct"]:
            steps[vid] = Step(vid, "retrain", "its own run trained on the target", tags)
        else:
            steps[vid] = _rebase(vid, first, steps, clean_of.get(first) if first in tainted else first, tags, hit)
        if steps[vid].action == "retrain":
            _retrain_settings(steps[vid], row.get("run_id"), runs or {}, retracted or {}, without or {}, newer or {})
    return [steps[v] for v in order]


def _parents_first(versions: Collection[str], graph: dict[str, dict[str, Any]]) -> list[str]:
    """``versions`` with each after those of its ancestors among them, otherwise by creation time
    and id: the order of the ancestry, not of clocks (a clock stepped back made a merge look older
    than its input, and the plan dropped the input)."""
    wanted = set(versions)
    waiting_on = {v: {p for p in graph[v].get("parents") or [] if p in wanted} for v in wanted}
    children: dict[str, list[str]] = {}
    for v, parents in waiting_on.items():
        for p in parents:
            children.setdefault(p, []).append(v)
    ready = [(graph[v]["created_at"], v) for v, parents in waiting_on.items() if not parents]
    heapq.heapify(ready)
    order = []
    while ready:
        _, v = heapq.heappop(ready)
        order.append(v)
        for child in children.get(v, []):
            waiting_on[child].discard(v)
            if not waiting_on[child]:
                heapq.heappush(ready, (graph[child]["created_at"], child))
    return order


def _rebase(vid: str, parent: str | None, steps: dict[str, Step], clean: str | None, tags: list[str],
            hit: dict[str, Any]) -> Step:
    """``clean``: the parent's nearest clean ancestor by first parents (None: none)."""
    before = steps.get(parent) if parent is not None else None
    if before is None:
        return Step(vid, "retrain", f"tainted through {hit['via'][:12]}, which has no step", tags)
    if before.action in ("remerge", "rebase"):
        return Step(vid, "rebase", f"its parent {parent[:12]} is {before.action}d without the target; its patch is "
                    "re-applied onto the result (exact for the patch, approximate for the model), or retrain it",
                    tags, onto=parent, after=parent, exact=False)
    if clean is None:
        return Step(vid, "retrain", f"its parent {parent[:12]} needs retraining and has no clean ancestor to re-apply "
                    "its patch onto", tags)
    return Step(vid, "rebase", f"its parent {parent[:12]} needs retraining; its patch is re-applied onto "
                f"{clean[:12]}, the nearest clean ancestor (approximate for the model), or retrain it after "
                f"{parent[:12]}", tags, onto=clean, exact=False)


def _retrain_settings(step: Step, run_id: str | None, runs: dict[str, dict[str, Any]],
                      retracted: dict[str, list[str]], without: dict[str, str], newer: dict[str, str]) -> None:
    """What a retrain needs: the run's settings and datasets, and which keys to remove from each."""
    run = runs.get(run_id) if run_id else None
    if run is None:
        return
    step.run_id, step.settings, step.datasets = run_id, dict(run.get("params") or {}), dict(run.get("datasets") or {})
    step.remove = {d: sorted(retracted[d]) for d in step.datasets if retracted.get(d)}
    if step.settings:
        shown = ", ".join(f"{k}={v}" for k, v in list(step.settings.items())[:6])
        step.why += f"; as run {run_id[:8]} did ({shown}{', ...' if len(step.settings) > 6 else ''})"
    if step.remove:
        ready = {d: without[d] for d in step.remove if d in without}
        if ready:
            step.why += ("; train on " + ", ".join(dict.fromkeys(ready.values()))  # two versions' latest: once
                         + " (already without the retracted documents)")
        commands: dict[str, list[str]] = {}  # one command per dataset name and keys: a run trained on two
        for d, keys in step.remove.items():  # versions of a dataset was told the same command twice
            if d not in ready:
                command = f"prov dataset remove {shlex.join([d.split('@')[0], *keys[:5]])}{' ...' if len(keys) > 5 else ''}"
                commands.setdefault(command, []).append(d)
        said = []
        for command, ds in commands.items():
            older = [d for d in ds if d in newer]  # versions the latest (where the removal starts) differs from
            own = " and ".join(f"{d}'s" for d in older)
            said.append(command + (f" (it starts from {newer[older[0]]}, the latest version, whose documents may "
                                   f"differ from {own}, which the run trained on; for {own} own, write its files "
                                   "without them and register those)" if older else ""))
        if said:
            step.why += "; make its data without the retracted documents with " + "; ".join(said)
    elif any(d in retracted for d in step.datasets):
        step.why += "; the retraction covers a whole dataset or shard it trained on: retrain without it"


def _remerge(vid: str, row: dict[str, Any], parents: list[str], tainted: dict[str, Any], tags: list[str],
             steps: dict[str, Step]) -> Step:
    method = row["method"]
    weights = list(row.get("weights") or [1.0 / len(parents)] * len(parents))
    stand_ins = [p for p in parents if p in tainted and steps.get(p) is not None
                 and steps[p].action in ("remerge", "rebase")]  # made again clean: its result takes its place
    keep = [i for i, p in enumerate(parents) if p not in tainted or p in stand_ins]
    dropped = [p for p in parents if p in tainted and p not in stand_ins]
    if not dropped and not stand_ins:  # cannot happen for a merge unless its own inputs are the target
        return Step(vid, "retrain", "a merge tainted though none of its inputs is", tags, method=method)
    if not keep:
        return Step(vid, "retrain", "every input of this merge is tainted: nothing clean is left to merge", tags,
                    dropped=dropped, method=method)
    kept = [weights[i] for i in keep]
    fishers = " and Fishers" if methods.get(method).needs_fisher else ""
    replaced = (f"{', '.join(p[:12] for p in stand_ins)} replaced by the result of {'its' if len(stand_ins) == 1 else 'their'} "
                "own step" if stand_ins else "")
    if not dropped:
        why = f"re-merge with the same {method} method{fishers} and weights, {replaced}"
    elif method in RENORMALISED:
        total, now = sum(weights), sum(kept)
        kept = [w * total / now for w in kept] if now else [total / len(kept)] * len(kept)
        why = (f"re-merge the {len(keep)} clean input(s) with the same {method} method{fishers}, weights "
               f"renormalised over them{'; ' + replaced if replaced else ''}")
    else:
        why = (f"re-merge the {len(keep)} clean input(s) with {method}; its weights scale task vectors and are not "
               f"renormalised: they are kept as recorded{'; ' + replaced if replaced else ''}")
    return Step(vid, "remerge", why, tags, inputs=[parents[i] for i in keep], weights=kept, dropped=dropped,
                stand_ins=stand_ins, method=method)


def outdated_steps(steps: list[Step]) -> dict[str, str]:
    """The re-merges of a plan recorded by provenance before stand-ins (2026-12-05) that leave out
    an input another step makes again clean (a merge of merges re-made from its other inputs
    alone, losing what the inner merge's clean inputs gave): re-merged version -> the input."""
    remade = {s.version_id for s in steps if s.action in ("remerge", "rebase")}
    return {s.version_id: p for s in steps if s.action == "remerge" for p in s.dropped if p in remade}
