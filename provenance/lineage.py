"""Lineage: which data shaped a version, through every ancestor, run and merge.

A version's lineage is the set of its ancestors (through all parents) and the shards their runs
trained on. Each ancestor carries a **weight**, its share in the version asked about: the version
itself has weight 1; a fine-tune passes its whole weight to its parent (it contains everything its
parent learnt); a merge passes ``|λᵢ| / Σ|λⱼ|`` of its weight to input ``i``. Weights add up over
the paths of the DAG (an ancestor reached twice counts twice). A dataset's **effective
contribution** is ``Σ weight(version of the run) × examples`` over the runs that trained on it,
and its share is that divided by the sum over all datasets: so a dataset behind one input of a
50/50 merge counts half as much as it would alone.

Versions in the lineage with neither a run nor a merge receipt (an imported base model, a commit
made without a run) trained on data the ledger does not know: they are listed as ``unrecorded``,
because an honest answer to "which data shaped this" has to say where the record stops.

:func:`taint` answers the reverse question: which versions have a dataset, a shard or a document
(or, with ``near``, a near-duplicate of it) in their lineage.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger import LedgerStore
from provenance.records import (
    DatasetRecord,
    DocumentRecord,
    VersionRecord,
    check_document_key,
    check_target_names,
    check_utf8,
)
from provenance.results import LicenseSummary, Lineage


def ancestry(ledger: LedgerStore, version: str | VersionRecord) -> tuple[str, pa.Table]:
    """The version's id and its ancestors (itself included) as rows of the version graph
    (:meth:`~provenance.ledger.Ledger.version_graph`), nearest first, with ``weight`` (the
    ancestor's share, module doc), ``depth`` (fewest steps from the version asked about) and
    ``child`` (the version it was first reached from; :func:`path_to` follows them back). One read
    of the version table; the walk runs over integer indices of the ancestor set only."""
    vid = ledger.version(version).version_id
    table = ledger.version_graph()
    ids = table.column("version_id").combine_chunks()
    parents = table.column("parents").combine_chunks()
    flat = pc.index_in(parents.flatten(), value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False).tolist()
    offsets = parents.offsets.to_numpy().tolist()
    weights = table.column("weights").to_pylist()
    start = ids.index(vid).as_py()
    n = len(ids)
    depth, child = [-1] * n, [-1] * n
    depth[start] = 0
    order = [start]
    for v in order:  # breadth first (the list grows as it is read): every ancestor, by the fewest steps
        for p in flat[offsets[v] : offsets[v + 1]]:
            if p >= 0 and depth[p] < 0:
                depth[p], child[p] = depth[v] + 1, v
                order.append(p)
    children_left = [0] * n  # children within the ancestor set not yet passed on
    for v in order:
        for p in flat[offsets[v] : offsets[v + 1]]:
            if p >= 0:
                children_left[p] += 1
    weight = [0.0] * n
    weight[start] = 1.0
    ready = [start]
    for v in ready:  # topological order from the version down: a weight is complete before it is passed on
        ps = flat[offsets[v] : offsets[v + 1]]
        w = weights[v]
        if w is not None and len(w) == len(ps):
            total = sum(abs(x) for x in w) or 1.0
            shares = [abs(x) / total for x in w]
        else:
            shares = [1.0] * len(ps)
        for p, share in zip(ps, shares):
            if p >= 0:
                weight[p] += weight[v] * share
                children_left[p] -= 1
                if children_left[p] == 0:
                    ready.append(p)
    id_list = ids.to_pylist()
    out = table.take(pa.array(order, pa.int64()))
    out = out.append_column("weight", pa.array([weight[v] for v in order], pa.float64()))
    out = out.append_column("depth", pa.array([depth[v] for v in order], pa.int64()))
    return vid, out.append_column("child", pa.array([id_list[child[v]] if child[v] >= 0 else None for v in order],
                                                    pa.string()))


def path_to(ancestors: pa.Table | dict[str, str | None], version: str) -> list[str]:
    """The versions from the one :func:`ancestry` was asked about down to ``version``
    (``ancestors``: its table, or the mapping of each version to its ``child``)."""
    child = ancestors if isinstance(ancestors, dict) else _children(ancestors)
    path = [version]
    while child[path[-1]] is not None:
        path.append(child[path[-1]])
    return path[::-1]


def _children(ancestors: pa.Table) -> dict[str, str | None]:
    return dict(zip(ancestors.column("version_id").to_pylist(), ancestors.column("child").to_pylist()))


def lineage(ledger: LedgerStore, version: str | VersionRecord) -> Lineage:
    """Every dataset and shard that shaped ``version``, through all its ancestors (module doc)."""
    with ledger.session():
        vid, ancestors = ancestry(ledger, version)
        runs_table = ancestors.select(["run_id", "version_id", "weight", "depth", "step"]).filter(
            pc.is_valid(ancestors.column("run_id")))
        shards, per_dataset = ledger.trained_datasets(runs_table)
        info = {r["dataset_id"]: r for r in ledger.dataset_table(per_dataset.column("dataset_id").to_pylist()).to_pylist()}
        carriers = defaultdict(list)  # per run, its versions in this lineage, nearest first (two checkpoints of it)
        for r in runs_table.select(["run_id", "version_id", "step"]).to_pylist():
            carriers[r["run_id"]].append(r)
        unregistered = [{**r, "version_id": carriers[r["run_id"]][0]["version_id"]}
                        for r in ledger.unregistered_inputs(list(carriers))]
        retracted = []
        for r in ledger.retraction_runs().to_pylist():  # the nearest version in this lineage that carries the run
            seen = [c["version_id"] for c in carriers.get(r["run_id"], []) if not _before(c["step"], r["first_step"])]
            if seen:
                retracted.append({k: v for k, v in r.items() if k != "first_step"} | {"version_id": seen[0]})
        made = ledger.retraction_made([vid]).get(vid)
    datasets = _dataset_rows(per_dataset, info, ancestors)
    unknown = pc.and_(pc.is_null(ancestors.column("run_id")), pc.is_null(ancestors.column("method")))
    unrecorded = ancestors.filter(unknown).column("version_id").to_pylist()
    versions = ancestors.rename_columns(["merge" if c == "method" else "merge_weights" if c == "weights" else c
                                         for c in ancestors.column_names])
    return Lineage(version=vid, versions=versions, shards=shards, datasets=datasets,
                   license=license_summary(info.values()), unrecorded=unrecorded, unregistered_inputs=unregistered,
                   retracted=retracted, made_by_retraction=made)


def _before(step: int | None, first_step: int | None) -> bool:
    """Whether a checkpoint saved at ``step`` (None: not a checkpoint) was trained before the
    ``first_step`` its run saw something at (None: at every step)."""
    return step is not None and first_step is not None and step < first_step


def _dataset_rows(per_dataset: pa.Table, info: dict[str, dict], ancestors: pa.Table) -> list[dict[str, Any]]:
    """Per dataset: the shards' sums, its share of the effective examples, licence, and the
    versions that trained on it (the nearest first) with the path to the nearest."""
    rows = per_dataset.to_pylist()
    total = sum(d["effective_examples"] for d in rows) or 1.0
    child = _children(ancestors)
    out = []
    for d in rows:
        meta = info.get(d["dataset_id"], {})
        out.append({**d, "effective_share": d["effective_examples"] / total, "role": meta.get("role"),
                    "license": meta.get("license"), "non_commercial": meta.get("non_commercial"),
                    "share_alike": meta.get("share_alike"), "attribution": meta.get("attribution"),
                    "model_generated": meta.get("model_generated"),
                    "path": path_to(child, d["via"][0]) if d["via"] else []})
    return out


def license_summary(datasets: Sequence[dict[str, Any]] | Any) -> LicenseSummary:
    """The union of the licence conditions of ``datasets`` (rows with ``license`` and its flags):
    the licences seen, and the datasets that are non-commercial, share-alike, of unknown licence
    or model-generated."""
    rows = list(datasets)
    return LicenseSummary(**{
        "licenses": sorted({r["license"] for r in rows if r["license"]}),
        "non_commercial": sorted(r["dataset_id"] for r in rows if r["non_commercial"]),
        "share_alike": sorted(r["dataset_id"] for r in rows if r["share_alike"]),
        "attribution": sorted(r["dataset_id"] for r in rows if r.get("attribution")),
        "unknown_license": sorted(r["dataset_id"] for r in rows if not r["license"] or r["non_commercial"] is None),
        "model_generated": sorted(r["dataset_id"] for r in rows if r["model_generated"]),
    })


def data_diff(ledger: LedgerStore, a: str | VersionRecord, b: str | VersionRecord) -> dict[str, Any]:
    """The datasets and shards in the lineage of ``a`` and not of ``b``, and the other way round."""
    la, lb = lineage(ledger, a), lineage(ledger, b)

    def keys(lin: Lineage) -> tuple[set[str], set[tuple[str, int, str]]]:
        rows = lin.shards.to_pylist()
        return {r["dataset_id"] for r in rows}, {(r["dataset_id"], r["shard_index"], r["shard"]) for r in rows}

    (da, sa), (db, sb) = keys(la), keys(lb)
    shard = lambda t: {"dataset_id": t[0], "shard_index": t[1], "shard": t[2]}  # noqa: E731
    return {
        "a": la.version, "b": lb.version,
        "datasets_only_in_a": sorted(da - db), "datasets_only_in_b": sorted(db - da), "datasets_in_both": sorted(da & db),
        "shards_only_in_a": [shard(t) for t in sorted(sa - sb)], "shards_only_in_b": [shard(t) for t in sorted(sb - sa)],
    }


def taint(ledger: LedgerStore, *, dataset: str | None = None, shard: str | int | None = None, key: str | None = None,
          doc_ids: Sequence[int] | None = None, targets: list[dict[str, Any]] | None = None,
          graph: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every version whose lineage contains the target: a dataset, one of its shards (index or
    name), a document (``key`` in ``dataset``), or documents by id; a bare dataset name means
    every version of it (:func:`target_rows`; ``targets``: its rows, when the caller has them).
    Per version: how it is tainted (``direct``: its own run trained on it; otherwise the ancestor
    through which) and the examples its runs saw. Newest first. ``graph``:
    :meth:`LedgerStore.version_graph` by version id, when the caller has it already."""
    with ledger.session():
        if doc_ids is None:
            targets = target_rows(ledger, dataset, shard=shard, key=key) if targets is None else targets
            if any(t["doc_id"] is not None for t in targets):  # a document in one version or several
                doc_ids = [t["doc_id"] for t in targets]
        if doc_ids is not None:
            named = [t["dataset_id"] for t in targets] if targets and all(t["doc_id"] is not None for t in targets) else None
            runs = ledger.runs_seeing(list(doc_ids), named).to_pylist()
        else:
            runs = ledger.runs_using([(t["dataset_id"], t["shard_index"]) for t in targets]).to_pylist()
        if graph is None:
            graph = {r["version_id"]: r for r in ledger.version_graph().to_pylist()}
    return tainted_versions(graph, runs)


def check_target(dataset: Any = None, shard: str | int | None = None, key: str | None = None,
                 text: str | None = None) -> None:
    """Refuse a taint or retraction target whose parts do not go together, which took one part and
    dropped the others unsaid: a text is looked for in every dataset (a dataset, shard or key beside
    it was ignored), and a key names its document in whichever shard holds it (a shard beside it
    was ignored, one the dataset does not have included)."""
    if key is not None:  # key=7 was a DuckDB ConversionException, bytes not UTF-8 a traceback
        check_document_key(key)
    if text is not None:  # text=5: an AttributeError from deep in the fingerprinting
        check_utf8(text, "the text")
    check_target_names(dataset, shard)
    if text is not None and (dataset is not None or shard is not None or key is not None):
        raise InvalidParameterError("a text is looked for in every dataset: give it alone, without a dataset, shard "
                                    "or key")
    if shard is not None and key is not None:
        raise InvalidParameterError(f"give a shard or a document key, not both (key {key!r} names its document in "
                                    "whichever shard holds it)")


def target_rows(ledger: LedgerStore, dataset: str | DatasetRecord | None, shard: str | int | None = None,
                key: str | None = None) -> list[dict[str, Any]]:
    """What a taint or retraction target names, as rows ``dataset_id, shard_index, doc_id, key``
    (``shard_index`` None: the dataset version as a whole; ``doc_id`` None: not one document).

    ``NAME@VERSION`` (or a record) names that version. A bare ``NAME`` names **every** version of
    the dataset, newest first: a document that a later version removed or changed still shaped the
    versions trained on an earlier one, and "which versions did this shape" must find them. A key
    is looked for in every version (an error if none holds it); a shard (index, name or file) is
    found in the newest version that has one so named and then, by that shard's name, in every
    version that has it."""
    check_target(dataset, shard, key)
    if key is not None:
        return [{"dataset_id": d.dataset_id, "shard_index": d.shard_index, "doc_id": d.doc_id, "key": key}
                for d in target_documents(ledger, dataset, key)]
    if dataset is None:
        if shard is not None:
            raise InvalidParameterError(f"shard {shard!r} needs the dataset that holds it (dataset: NAME or NAME@N)")
        raise InvalidParameterError("give a dataset, a shard of one, a document key or a text")
    if isinstance(dataset, DatasetRecord) or "@" in str(dataset):
        ds = ledger.dataset(dataset)
        index = shard_index(ledger, ds.dataset_id, shard) if shard is not None else None
        return [{"dataset_id": ds.dataset_id, "shard_index": index, "doc_id": None, "key": None}]
    ids = _version_ids(ledger, dataset)
    if shard is None:
        return [{"dataset_id": i, "shard_index": None, "doc_id": None, "key": None} for i in ids]
    with ledger._cursor() as con:
        # newest first: an index means the shard at that place in the newest version that has one
        named = next((found[1] for found in (_shard(con, i, shard) for i in ids) if found is not None), None)
        rows = [] if named is None else con.execute(
            "SELECT dataset_id, shard_index FROM shards WHERE list_contains($1, dataset_id) AND name = $2",
            [ids, named]).fetchall()
    if not rows:
        shard_index(ledger, ids[0], shard)  # raises: names the newest version's shards
    order = {i: n for n, i in enumerate(ids)}
    return [{"dataset_id": d, "shard_index": int(s), "doc_id": None, "key": None}
            for d, s in sorted(rows, key=lambda r: (order[r[0]], r[1]))]


def target_documents(ledger: LedgerStore, dataset: str | DatasetRecord | None, key: str) -> list[DocumentRecord]:
    """The document ``key`` of ``dataset``: in that version (``NAME@VERSION`` or a record), or in
    every version of a bare ``NAME`` that holds it, newest first (:func:`target_rows`)."""
    if dataset is None:
        raise InvalidParameterError(f"document key {key!r} needs the dataset that holds it (dataset: NAME or NAME@N)")
    if isinstance(dataset, DatasetRecord) or "@" in str(dataset):
        return [ledger.document(dataset, key)]
    ids = _version_ids(ledger, dataset)
    docs = ledger.documents_by_key(ids, key)
    if not docs:
        raise NotFoundError(f"no document {key!r} in any version of dataset {dataset} ({', '.join(ids)})")
    return docs


def _version_ids(ledger: LedgerStore, name: str) -> list[str]:
    """The ids of every version of dataset ``name``, newest first (an error naming the datasets
    there are when it has none)."""
    versions = ledger.datasets(str(name), all_versions=True)[::-1]
    if not versions:
        ledger.dataset(name)  # raises: no such dataset, and names those there are
    return [v.dataset_id for v in versions]


def tainted_versions(graph: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The versions produced by ``runs`` (rows ``run_id, version_id, examples``, and optionally
    ``first_step``), the versions that carry those runs' patches (a retraction's rebase, whose
    ``run_id`` is the run), the checkpoints of those runs saved at ``first_step`` or later (every
    checkpoint where it is null or not given: the run only declared the data) and every
    descendant of them in ``graph``, each with the tainted ancestor it descends from."""
    children = defaultdict(list)
    carrying = defaultdict(list)  # run -> the versions recorded with it
    for v, row in graph.items():
        for p in row["parents"] or []:
            children[p].append(v)
        if row.get("run_id"):
            carrying[row["run_id"]].append(v)
    hit: dict[str, dict[str, Any]] = {}
    queue = deque()
    for r in runs:
        first = r.get("first_step")
        for v in dict.fromkeys([r["version_id"], *carrying[r["run_id"]]]):
            if v is None:
                continue
            if _before(graph[v].get("step"), first):  # a checkpoint trained on the run's steps up to it only
                continue
            entry = hit.setdefault(v, {"version_id": v, "direct": True, "via": v, "runs": [], "examples": 0})
            entry["direct"], entry["via"] = True, v
            entry["runs"].append(r["run_id"])
            entry["examples"] += r["examples"]
            queue.append(v)
    while queue:
        v = queue.popleft()
        for c in children[v]:
            if c not in hit:
                hit[c] = {"version_id": c, "direct": False, "via": hit[v]["via"], "runs": [], "examples": 0}
                queue.append(c)
    for entry in hit.values():
        entry["message"] = graph[entry["version_id"]]["message"]
        entry["tags"] = list(graph[entry["version_id"]].get("tags") or [])
        entry["created_at"] = graph[entry["version_id"]]["created_at"].isoformat()
    return sorted(hit.values(), key=lambda e: (e["created_at"], e["version_id"]), reverse=True)


def shard_index(ledger: LedgerStore, dataset_id: str, shard: str | int) -> int:
    """The index of a shard of ``dataset_id`` given by index, name or file path."""
    with ledger._cursor() as con:
        found = _shard(con, dataset_id, shard)
        if found is not None:
            return found[0]
        names = [r[0] for r in con.execute("SELECT name FROM shards WHERE dataset_id = ? ORDER BY shard_index LIMIT 6",
                                           [dataset_id]).fetchall()]
    raise NotFoundError(f"dataset {dataset_id} has no shard {shard!r} (it has {', '.join(names[:5])}"
                        f"{', ...' if len(names) > 5 else ''})")


def _shard(con: Any, dataset_id: str, shard: str | int) -> tuple[int, str] | None:
    """``(index, name)`` of the shard of ``dataset_id`` given by index (decimal digits only: ``' 0'``
    and ``'0x0'`` were taken as shard 0, by a cast), name or file path, or None. A name that differs
    from the registered one only in its Unicode normalisation form (``café`` typed as NFC, a file
    from macOS named in NFD) is that shard, where none is named exactly so (it said "no shard
    'café.jsonl' (it has café.jsonl)")."""
    text = str(shard)
    found = con.execute(
        """SELECT shard_index, name FROM shards WHERE dataset_id = $1
           AND (shard_index = TRY_CAST($3 AS BIGINT) OR name = $2 OR uri = $2
                OR nfc_normalize(name) = nfc_normalize($2) OR nfc_normalize(uri) = nfc_normalize($2))
           ORDER BY (shard_index = TRY_CAST($3 AS BIGINT) OR name = $2 OR uri = $2) DESC, shard_index LIMIT 1""",
        [dataset_id, text, text if re.fullmatch(r"[0-9]+", text) else None]).fetchall()
    return (int(found[0][0]), found[0][1]) if found else None


def graph_text(lin: Lineage, fmt: str) -> str:
    """The lineage's version DAG with its datasets, as Mermaid (``mermaid``) or Graphviz (``dot``)."""
    if fmt not in ("mermaid", "dot"):
        raise InvalidParameterError(f"unknown graph format {fmt!r}; one of mermaid, dot")
    versions = lin.version_rows()
    ids = {v["version_id"]: f"v{i}" for i, v in enumerate(versions)}
    dsid = {d["dataset_id"]: f"d{i}" for i, d in enumerate(lin.datasets)}
    edges, trained = [], []
    for v in versions:
        for i, p in enumerate(v["parents"] or []):
            if p in ids:
                weight = v["merge_weights"][i] if v["merge"] and v["merge_weights"] else None
                edges.append((ids[p], ids[v["version_id"]], None if weight is None else f"λ={weight:g}"))
    for d in lin.datasets:  # the versions that trained on it (the ten nearest)
        trained += [(dsid[d["dataset_id"]], ids[vid]) for vid in d["via"]]
    # inputs no registered dataset matches, each once, to the versions whose runs named them
    unregistered = {}
    for u in lin.unregistered_inputs:
        node = unregistered.setdefault((u["namespace"], u["name"]), f"u{len(unregistered)}")
        if u["version_id"] in ids:
            trained.append((node, ids[u["version_id"]]))
    trained = sorted(set(trained))
    labels = {node: f"{ns}/{name} (unregistered)" for (ns, name), node in unregistered.items()}

    def label(v: dict[str, Any]) -> str:
        name = v["version_id"][:8] + (f" ({', '.join(v['tags'])})" if v["tags"] else "")
        return f"{name}: {_shortened(v['message'], 40)}" + (f" [{v['merge']} merge]" if v["merge"] else "")

    if fmt == "mermaid":
        lines = ["graph BT"]
        lines += [f'  {ids[v["version_id"]]}["{_esc_mermaid(label(v))}"]' for v in versions]
        lines += [f'  {dsid[d["dataset_id"]]}[("{_esc_mermaid(d["dataset_id"])}")]' for d in lin.datasets]
        lines += [f'  {node}[/"{_esc_mermaid(text)}"/]' for node, text in labels.items()]
        lines += [f"  {a} -->|{e}| {b}" if e else f"  {a} --> {b}" for a, b, e in edges]
        lines += [f"  {a} -.-> {b}" for a, b in trained]
        return "\n".join(lines) + "\n"
    lines = ["digraph lineage {", "  rankdir=BT;", "  node [fontname=\"Helvetica\"];"]
    lines += [f'  {ids[v["version_id"]]} [shape=box, label="{_esc(label(v))}"];' for v in versions]
    lines += [f'  {dsid[d["dataset_id"]]} [shape=cylinder, label="{_esc(d["dataset_id"])}"];' for d in lin.datasets]
    lines += [f'  {node} [shape=note, label="{_esc(text)}"];' for node, text in labels.items()]
    lines += [f'  {a} -> {b}' + (f' [label="{e}"]' if e else "") + ";" for a, b, e in edges]
    lines += [f"  {a} -> {b} [style=dashed];" for a, b in trained]
    return "\n".join([*lines, "}"]) + "\n"


def _shortened(text: str, width: int) -> str:
    """The first line of ``text``, cut at a word boundary to at most ``width`` characters with
    ``…`` where it was cut (a commit message in a graph's box)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= width:
        return line
    cut = line[:width - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:") + "…"


def _esc(text: str) -> str:
    """A Graphviz label's text (inside double quotes, where a backslash escapes)."""
    return text.replace("\\", "\\\\").replace('"', "'").replace("\n", " ")


def _esc_mermaid(text: str) -> str:
    """A Mermaid label's text, shown as written: Mermaid has no backslash escapes (``a\\b`` was
    drawn with two backslashes) and reads ``#name;`` as a character entity and ``<b>`` as HTML, so
    those characters are written as its entities (``#quot;`` where a quote would end the label)."""
    for char, entity in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, entity)
    return text.replace("\n", " ")
