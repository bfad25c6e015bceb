"""The demo: a generated corpus with planted near-duplicates, registered in an embedded ledger,
and a small model trained on it in three runs, each committed as a version.

``prov demo`` writes three datasets (two training sets in JSONL and gzipped JSONL, and an
evaluation set that leaks a few training documents) into ``PATH/.prov``, asks the ledger which
near-duplicate pairs it holds and how many of the planted ones it found, then trains a base
model, a FISH-mask sparse fine-tune and a LoRA update (:mod:`provenance.demo_model`), runs the
pre-merge gate on the two contributors (some forum posts are reposted web pages: a planted overlap,
and the evaluation set leaks web text), merges them by Fisher merging citing that gate, and ends
with the merged version's lineage. Running it again on the same folder registers and trains
nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.api import Ledger
from provenance.errors import InvalidParameterError, LedgerNotFoundError, ProvenanceError
from provenance.ledger import LEDGER_DIR
from provenance.progress import Progress
from provenance.records import RegistrationResult
from provenance.synthetic import Corpus, generate_corpus


@dataclass
class DemoReport:
    ledger: str
    registrations: list[RegistrationResult]
    summary: dict[str, Any]
    planted: int
    found: int
    pairs: list[dict] = field(default_factory=list)
    contaminated: int = 0
    contamination_found: int = 0
    models: list[dict] = field(default_factory=list)
    gate: dict[str, Any] | None = None  # the pre-merge gate the demo's merge cites
    lineage: Any = None  # provenance.lineage.Lineage of the merged version
    datasets: list = field(default_factory=list)  # the ledger's datasets at the end
    server: dict[str, Any] | None = None  # prov demo --server: the server the story went through

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger,
            "registrations": [r.model_dump(mode="json") for r in self.registrations],
            "summary": self.summary,
            "planted_near_duplicates": self.planted,
            "found_near_duplicates": self.found,
            "planted_eval_leaks": self.contaminated,
            "found_eval_leaks": self.contamination_found,
            "pairs": self.pairs,
            "models": self.models,
            "gate": self.gate,
            "lineage": self.lineage.to_dict() if self.lineage is not None else None,
            "server": self.server,
        }


def _check_made_with(data: Path, n_docs: int, seed: int) -> None:
    """Record the options the folder's corpus is generated with (``data/demo.json``), or refuse
    others: the files are kept when the demo runs again, so other options would silently give
    the old corpus."""
    import json

    mark = data / "demo.json"
    asked = {"docs": n_docs, "seed": seed}
    if mark.exists():
        try:
            made = json.loads(mark.read_text(encoding="utf-8"))
        except ValueError:
            made = {}
        if made != asked:
            raise InvalidParameterError(
                f"{data.parent} holds the demo made with "
                + (f"--docs {made.get('docs')} --seed {made.get('seed')}" if made else f"other options ({mark} unreadable)")
                + f", which it keeps; for --docs {n_docs} --seed {seed} give another folder (or remove this one)")
    elif not any(data.iterdir()):
        mark.write_text(json.dumps(asked), encoding="utf-8")


def _write(path: Path, corpus: Corpus, *, compress: bool = False) -> Path:
    if not path.exists():
        corpus.write_jsonl(path, compress=compress)
    return path


#: What the demo registers and tags: a ledger holding anything else is not the demo's.
DEMO_DATASETS = frozenset({"web-crawl", "forum-posts", "qa-eval"})
DEMO_TAGS = frozenset({"demo-base", "demo-fish", "demo-lora", "demo-merge"})
MAX_DOCS = 1_000_000


def check_options(n_docs: int, seed: int) -> None:
    """The demo's corpus size and seed, checked before anything is written."""
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or not 20 <= n_docs <= MAX_DOCS:
        raise InvalidParameterError(f"the demo's documents (--docs) must be 20 to {MAX_DOCS:,}, got {n_docs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidParameterError(f"the demo's seed (--seed) must be a whole number >= 0, got {seed!r}")


def demo_folder(path: str | Path) -> Path:
    """The demo's folder: ``path``, or the folder holding it when ``path`` names the ledger folder
    itself (``prov demo work/.prov`` put the generated data and the server's log inside the ledger)."""
    root = Path(path)
    return root.parent if root.name == LEDGER_DIR else root


def demo_ledger(root: Path) -> Ledger:
    """The ledger in ``root``: made there if there is none; an existing one only if it is empty
    or holds only what an earlier demo made (running the demo again adds nothing), never a
    ledger of real work, which the demo's datasets, versions and tags would land in."""
    try:
        ledger = Ledger.open(root)
    except LedgerNotFoundError:
        return Ledger.init(root)
    names = {d.name for d in ledger.datasets()}
    tags = {t.name for t in ledger.tags()}
    versions = ledger.sql("SELECT count(*) AS n FROM versions").column("n")[0].as_py()
    foreign = sorted(names - DEMO_DATASETS) + sorted(tags - DEMO_TAGS)
    if foreign or (versions and "demo-base" not in tags):
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "") if foreign else f"{versions} model version{'s' * (versions != 1)}"
        raise InvalidParameterError(
            f"{ledger.root} is a ledger the demo did not make (it holds {shown}); the demo would add its datasets, "
            "versions and tags to it: give it a new folder (prov demo FOLDER)")
    return ledger


def run_demo(path: str | Path = "prov-demo", *, n_docs: int = 2000, seed: int = 0, progress: Progress | None = None,
             train: bool = True, ledger: Any = None) -> DemoReport:
    """Generate the demo corpus under ``path``, register it in ``path/.prov`` (or in ``ledger``,
    a ledger server's), train and commit the three model versions of :mod:`provenance.demo_model`
    (unless ``train`` is False) and report. An existing ledger in ``path`` that the demo did not
    make is refused (:func:`demo_ledger`)."""
    check_options(n_docs, seed)
    root = demo_folder(path)
    if ledger is None:
        ledger = demo_ledger(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    _check_made_with(data, n_docs, seed)
    web = generate_corpus(n_docs, seed=seed, prefix="web", dup_fraction=0.05)
    forum = generate_corpus(max(1, n_docs // 4), seed=seed + 1, prefix="forum", dup_fraction=0.05, mean_words=120)
    # Forum users reposting web pages: a planted overlap between the two contributors' data, which
    # the pre-merge gate reports (half exact copies, half with the last words cut: near-copies).
    for i, doc in enumerate(web.docs[7 :: max(1, n_docs // 20)][:20]):
        text = doc["text"] if i % 2 == 0 else " ".join(doc["text"].split(" ")[:-3])
        forum.docs.append({"id": f"forum-repost-{i:03d}", "text": text})
    # The evaluation set: fresh questions plus near-copies of a few training documents (a leak).
    evals = generate_corpus(max(1, n_docs // 20), seed=seed + 2, prefix="eval", dup_fraction=0.0, mean_words=150)
    leaked = web.docs[:: max(1, len(web.docs) // 10)][:10]
    leaks = []
    w = evals.docs
    for i, doc in enumerate(leaked):
        key = f"eval-leak-{i:03d}"
        w.append({"id": key, "text": doc["text"] + " answer"})
        leaks.append((key, doc["id"]))

    _write(data / "web" / "part-0000.jsonl", Corpus(web.docs[: n_docs // 2]))
    _write(data / "web" / "part-0001.jsonl.gz", Corpus(web.docs[n_docs // 2 :]), compress=True)
    _write(data / "forum.jsonl", forum)
    _write(data / "eval.jsonl", evals)

    results = [
        ledger.register_dataset(
            "web-crawl", str(data / "web"), id_field="id", license="CC-BY-4.0", source="generated web-like text",
            creator="provenance demo", description="Generated web-like text with planted near-duplicates",
            model_generated=True, progress=progress,
        ),
        ledger.register_dataset(
            "forum-posts", str(data / "forum.jsonl"), id_field="id", license="CC-BY-NC-SA-4.0",
            creator="provenance demo", description="Generated forum posts", model_generated=True, progress=progress,
        ),
        ledger.register_dataset(
            "qa-eval", str(data / "eval.jsonl"), id_field="id", role="eval", license="CC-BY-4.0",
            creator="provenance demo", description="Generated evaluation questions; a few leak training text",
            model_generated=True, progress=progress,
        ),
    ]
    pairs = ledger.near_duplicates(["web-crawl", "forum-posts", "qa-eval"], threshold=0.6).to_pylist()
    found = {frozenset((p["key_a"], p["key_b"])) for p in pairs}
    planted = {frozenset(p) for p in web.planted + forum.planted}
    leak_pairs = {frozenset(p) for p in leaks}
    models, gate, lineage = [], None, None
    if train:
        from provenance.demo_model import train_story

        models = train_story(ledger, seed=seed)
        receipt = ledger.receipt("demo-merge")
        audit_id = receipt.audit_id if receipt is not None else None
        gate = ledger.audit(audit_id)["report"] if audit_id else None
        lineage = ledger.lineage("demo-merge")
    return DemoReport(
        ledger=str(ledger.root),
        registrations=results,
        summary=ledger.summary(),
        planted=len(planted),
        found=len(planted & found),
        pairs=pairs,
        contaminated=len(leak_pairs),
        contamination_found=len(leak_pairs & found),
        models=models,
        gate=gate,
        lineage=lineage,
        datasets=ledger.datasets(),
    )


def run_served_demo(path: str | Path = "prov-demo", *, n_docs: int = 2000, seed: int = 0,
                    progress: Progress | None = None) -> DemoReport:
    """The demo's story told through a ledger server: create the ledger in ``path`` with an admin
    token, start ``prov serve`` on a free loopback port as a subprocess, give the demo a write
    token and run it against ``http://127.0.0.1:PORT``, then stop the server."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    check_options(n_docs, seed)
    root = demo_folder(path)
    root.mkdir(parents=True, exist_ok=True)
    local = demo_ledger(root)
    names = {t.name for t in local.tokens()}
    suffix = f"-{len(names)}" if {"demo-admin", "demo-trainer"} & names else ""
    _, admin = local.issue_token(f"demo-admin{suffix}", "admin")
    _, write = local.issue_token(f"demo-trainer{suffix}", "write")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = root / "demo-server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "provenance.cli.main", "--ledger", str(root), "serve",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise ProvenanceError(f"prov serve exited with status {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ProvenanceError(f"prov serve did not answer in 120 s; see {log}")
            time.sleep(0.2)
        remote = Ledger.open(url, token=write)
        report = run_demo(root, n_docs=n_docs, seed=seed, progress=progress, ledger=remote)
        writes = Ledger.open(url, token=admin).sql(  # the access log is an admin's to read
            "SELECT count(*) AS n FROM access_log WHERE token = ? AND method <> 'GET'",
            [f"demo-trainer{suffix}"]).to_pylist()[0]["n"]
        report.server = {"url": url, "pid": proc.pid, "token": f"demo-trainer{suffix}", "writes": writes, "log": str(log)}
        report.ledger = str(local.root)
        return report
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
