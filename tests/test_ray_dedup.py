"""The dedup audit on Ray Data (``prov audit dedup --engine ray``), in Ray's local mode with two
CPUs: on the same documents its pairs, clusters and report equal the local audit's, in every mode
(spanning or all pairs, stored or recomputed band keys, verify, no store, a pairs file); and the
connected-components steps settle to the smallest id of each component on graphs built to be hard
(long paths, cycles, stars, shuffled ids)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from provenance.audits import audit_dedup as local_dedup  # noqa: E402
from provenance.cli.main import main  # noqa: E402
from provenance.errors import InvalidParameterError, NotFoundError  # noqa: E402
from provenance.integrations import ray_dedup  # noqa: E402
from provenance.integrations.ray_dedup import audit_dedup  # noqa: E402
from provenance.synthetic import generate_corpus, template_variants  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _chain(stem: str, n: int) -> list[dict]:
    """``n`` texts, each one word away from the one before: a path of near-duplicates whose ends
    are far apart (the clusters need several rounds)."""
    words = [f"{stem}{j}" for j in range(90)]
    out = []
    for i in range(n):
        words[i % 90] = f"{stem}x{i}"
        out.append({"id": f"{stem}-{i}", "text": " ".join(words)})
    return out


@pytest.fixture(scope="module")
def corpus_ledger(tmp_path_factory):
    from provenance import Ledger

    root = tmp_path_factory.mktemp("raydedup")
    corpus = generate_corpus(1500, mean_words=70, dup_fraction=0.3, mutation=0.02, seed=11)
    docs = corpus.docs + [{"id": f"copy{i}", "text": corpus.docs[i % 40]["text"]} for i in range(120)]
    docs += _chain("chain", 30) + _chain("path", 12)
    random.Random(5).shuffle(docs)
    a, b = docs[: len(docs) // 2], docs[len(docs) // 2:]
    for name, part in (("a", a), ("b", b)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    ledger = Ledger.init(root / "ledger")
    ledger.register_dataset("a", root / "a.jsonl", id_field="id")
    ledger.register_dataset("b", root / "b.jsonl", id_field="id")
    (root / "solo.jsonl").write_text("".join(json.dumps({"text": f"alone {i} " + " ".join(f"s{i}w{j}" for j in range(40))})
                                             + "\n" for i in range(30)))
    ledger.register_dataset("solo", root / "solo.jsonl")  # no two documents alike
    blank = ["", "...", "!?", "a copied text of some words here", "a copied text of some words here", "other words"]
    (root / "blank.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in blank))
    ledger.register_dataset("blank", root / "blank.jsonl")  # three texts with no words: nobody's copy
    return ledger


def _pairs(report) -> list[tuple]:
    return sorted((p["a"], p["b"], p["dataset_a"], p["dataset_b"], p["matches"], p["jaccard"], p["exact"], p["cluster"])
                  for p in report["pairs"])


def _same_report(local, remote) -> None:
    assert _pairs(local) == _pairs(remote)
    for field in ("cluster_sizes", "largest_clusters", "near_copies", "similarity_histogram", "datasets", "targets",
                  "threshold", "verify", "pairs_mode", "bucket_window"):
        assert local[field] == remote[field], field
    drop = {"seconds"}
    assert {k: v for k, v in local["summary"].items() if k not in drop} == \
           {k: v for k, v in remote["summary"].items() if k not in drop}


@pytest.mark.parametrize("threshold,all_pairs", [(0.8, False), (0.8, True), (0.6, False)])
def test_pairs_and_clusters_equal_the_local_audit(corpus_ledger, threshold, all_pairs):
    local = local_dedup(corpus_ledger, ["a", "b"], threshold=threshold, all_pairs=all_pairs)
    remote = audit_dedup(corpus_ledger, ["a", "b"], threshold=threshold, all_pairs=all_pairs)
    s = remote["summary"]
    assert s["pairs"] > 300 and s["clusters"] > 100 and s["largest_cluster"] >= 12  # the chains are whole clusters
    assert s["exact_duplicate_pairs"] >= 120
    assert remote["banding"]["stored_band_keys"] == (threshold == 0.8)  # 0.6: band keys computed by the audit
    _same_report(local, remote)
    assert remote["cluster_rounds"] >= 2
    stored = corpus_ledger.audit(remote["audit_id"])
    assert stored["kind"] == "dedup" and stored["report"]["summary"]["pairs"] == s["pairs"]
    assert corpus_ledger.audit_pairs(remote["audit_id"]).num_rows == s["pairs"]


def test_verify_no_store_and_pairs_file_equal_the_local_audit(corpus_ledger, tmp_path):
    local = local_dedup(corpus_ledger, ["a"], threshold=0.7, verify=True, store=False)
    remote = audit_dedup(corpus_ledger, ["a"], threshold=0.7, verify=True, store=False)
    assert remote["verify"]["checked"] > 0 and remote["stored"] is False
    _same_report(local, remote)
    with pytest.raises(NotFoundError):
        corpus_ledger.audit(remote["audit_id"])
    out = audit_dedup(corpus_ledger, ["b"], threshold=0.8, pairs_file=tmp_path / "pairs.parquet")
    written = pq.read_table(tmp_path / "pairs.parquet")
    assert written.num_rows == out["summary"]["pairs"] > 0
    assert sorted(zip(written.column("a").to_pylist(), written.column("b").to_pylist())) == sorted(
        (p["a"], p["b"]) for p in local_dedup(
        corpus_ledger, ["b"], threshold=0.8)["pairs"])


def test_windowed_buckets_compare_the_local_audit_s_candidates(corpus_ledger, tmp_path):
    """Band buckets wider than twice the window pair each document with the same neighbours as
    the local audit (the same shuffled order), whether the band keys are stored (0.8) or not."""
    rows = template_variants(200, seed=9)
    (tmp_path / "variants.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus_ledger.register_dataset("variants", tmp_path / "variants.jsonl", id_field="id")
    for threshold, window in ((0.8, 4), (0.7, 6)):
        local = local_dedup(corpus_ledger, ["variants", "b"], threshold=threshold, bucket_window=window, store=False)
        remote = audit_dedup(corpus_ledger, ["variants", "b"], threshold=threshold, bucket_window=window, store=False)
        assert remote["summary"]["windowed_buckets"] > 10 and remote["summary"]["largest_cluster"] >= 190
        _same_report(local, remote)
        every = local_dedup(corpus_ledger, ["variants", "b"], threshold=threshold, bucket_window=0, store=False)
        assert every["summary"]["pairs"] > remote["summary"]["pairs"] * 4 // 3
    huge = audit_dedup(corpus_ledger, ["variants"], bucket_window=2**63, store=False)  # failed in numpy's int64
    _same_report(local_dedup(corpus_ledger, ["variants"], bucket_window=0, store=False), huge)


def test_no_pairs_and_bad_arguments(corpus_ledger, tmp_path):
    copies = audit_dedup(corpus_ledger, ["a"], threshold=1.0, partitions=3)
    _same_report(local_dedup(corpus_ledger, ["a"], threshold=1.0), copies)
    alone = audit_dedup(corpus_ledger, ["solo"])
    assert alone["summary"]["documents"] == 30 and alone["summary"]["pairs"] == 0
    assert alone["pairs"] == [] and alone["cluster_rounds"] == 0
    _same_report(local_dedup(corpus_ledger, ["solo"]), alone)
    blank = audit_dedup(corpus_ledger, ["blank"])
    assert (blank["summary"]["pairs"], blank["summary"]["without_words"], blank["summary"]["documents"]) == (1, 3, 6)
    _same_report(local_dedup(corpus_ledger, ["blank"]), blank)
    for bad, message in (({"num_cpus": 0}, "num_cpus"), ({"partitions": True}, "partitions"),
                         ({"partitions": 10**9}, r"^partitions must be at most 10,000, got 1,000,000,000$"),
                         ({"staging": tmp_path / "nowhere"}, "does not exist"),
                         ({"bucket_window": -1}, "bucket_window"), ({"threshold": 2}, "threshold")):
        with pytest.raises(InvalidParameterError, match=message):
            audit_dedup(corpus_ledger, ["a"], **bad)
    with pytest.raises(NotFoundError):
        audit_dedup(corpus_ledger, ["nothing-by-that-name"])
    with pytest.raises(InvalidParameterError, match="local ledger"):
        audit_dedup(object(), ["a"])
    staging = tmp_path / "staging"
    staging.mkdir()
    audit_dedup(corpus_ledger, ["b"], staging=staging)
    assert list(staging.iterdir()) == []  # the exchanged files are gone
    audit_dedup(corpus_ledger, ["b"], store=False)  # by default in the ledger's .prov/tmp/ray, then gone
    assert list((corpus_ledger.root / "tmp" / "ray").iterdir()) == []


def test_a_threshold_too_low_for_the_banding_is_refused_before_ray_is_reached(corpus_ledger, monkeypatch):
    monkeypatch.setattr(ray_dedup, "_connect", lambda *a: pytest.fail("Ray was reached first"))  # 8 s to start it
    with pytest.raises(InvalidParameterError, match="threshold 0.01 is too low for num_perm=128"):
        audit_dedup(corpus_ledger, ["a"], threshold=0.01)


def test_cli_engine_ray(corpus_ledger):
    runner = CliRunner()
    root = str(corpus_ledger.root)
    out = runner.invoke(main, ["--ledger", root, "audit", "dedup", "a", "b", "--engine", "ray", "--num-cpus", "2",
                               "--json"])
    assert out.exit_code == 0, out.output
    remote = json.loads(out.output)
    local = local_dedup(corpus_ledger, ["a", "b"], threshold=0.8)
    assert remote["summary"]["pairs"] == local["summary"]["pairs"]
    assert remote["cluster_sizes"] == local["cluster_sizes"]
    bad = runner.invoke(main, ["--ledger", root, "audit", "dedup", "a", "--num-cpus", "2"])
    assert bad.exit_code == 2 and "--num-cpus applies to --engine ray" in bad.output


# ---- the component steps alone, without Ray: the same functions, shuffled by hand -------------


def _shuffle(table: pa.Table, step, parts: int, both: bool) -> pa.Table:
    """One star step as Ray runs it: rows by node into partitions, ``step`` on each."""
    rows = ray_dedup._by_node(table, parts, both)
    part = rows.column("part").to_numpy()
    outs = [step(rows.filter(pa.array(part == p))) for p in range(parts) if (part == p).any()]
    return pa.concat_tables(outs) if outs else pa.table({"u": pa.array([], pa.int64()), "v": pa.array([], pa.int64())})


def _components(edges: list[tuple[int, int]], parts: int) -> tuple[dict[int, int], int]:
    table = pa.table({"u": np.array([min(e) for e in edges], np.int64), "v": np.array([max(e) for e in edges], np.int64)})
    previous, rounds = None, 0
    while True:
        rounds += 1
        table = _shuffle(table, ray_dedup._large_star, parts, both=True)
        table = _shuffle(table, ray_dedup._small_star, parts, both=False)
        mark = tuple(sum(r[k] for r in ray_dedup._edge_sums(table).to_pylist()) for k in ("n", "hi", "lo"))
        if mark == previous:
            break
        previous = mark
    labels = ray_dedup._labels(table)
    return dict(zip(labels.column("doc").to_pylist(), labels.column("label").to_pylist())), rounds


def _union_find(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent) if find(x) != x}


@pytest.mark.parametrize("seed", range(6))
def test_star_steps_settle_to_each_components_smallest_id(seed):
    rng = random.Random(seed)
    ids = rng.sample(range(10**6), 3000)  # shuffled ids: paths do not run in id order
    edges, at = [], 0
    for size in (400, 150, 60, 30, 7, 3, 2, 2, 2):  # paths: the longest settles last
        path = ids[at:at + size]
        edges += list(zip(path, path[1:]))
        at += size
    ring = ids[at:at + 50]
    edges += list(zip(ring, ring[1:] + ring[:1]))  # a cycle
    at += 50
    hub, spokes = ids[at], ids[at + 1:at + 200]
    edges += [(hub, s) for s in spokes] + [(spokes[i], spokes[i + 1]) for i in range(0, 198, 3)]  # a star with chords
    at += 200
    nodes = ids[at:at + 600]
    edges += [(rng.choice(nodes), rng.choice(nodes)) for _ in range(500)]  # a random graph
    edges = [(a, b) for a, b in edges if a != b]
    edges += edges[:40]  # repeated edges
    rng.shuffle(edges)
    labels, rounds = _components(edges, parts=rng.choice([1, 3, 8]))
    assert labels == _union_find(edges)
    assert rounds < 30


@pytest.mark.slow
def test_a_worker_killed_mid_audit_changes_nothing(tmp_path):
    """SIGKILL the first Ray worker seen running a step of the audit (grouping, band rows,
    candidates, a signature exchange, a component step): Ray runs the task again, and the audit
    equals the local one."""
    from provenance import Ledger
    from tests.killing import kill_during

    corpus = generate_corpus(30_000, mean_words=50, dup_fraction=0.1, mutation=0.02, seed=21)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus.docs))
    ledger = Ledger.init(tmp_path / "ledger")
    ledger.register_dataset("c", tmp_path / "c.jsonl", id_field="id")
    steps = ("_signature_partition", "_identical_signatures", "_band_rows", "_candidates", "_first_signature",
             "_compare", "_large_star", "_small_star")
    outcome, killed = kill_during(lambda: audit_dedup(ledger, ["c"], threshold=0.8),
                                  lambda line: line.startswith("ray::") and any(s in line for s in steps))
    assert killed is not None, "the audit ended before a worker could be killed"
    assert "error" not in outcome, (killed, outcome.get("error"))
    _same_report(local_dedup(ledger, ["c"], threshold=0.8), outcome["result"])
    assert outcome["result"]["summary"]["pairs"] > 1000
