"""The model half of the demo: three training runs on registered data, each committed as a
version, and a Fisher merge of the two contributors' patches.

A small bag-of-words classifier (hashed word ids, ``EmbeddingBag`` → hidden layer → 2 classes)
learns to tell the demo's web text from its forum posts, on CPU, in seconds:

1. **base**: trained from scratch on ``web-crawl`` and ``forum-posts``: a root version (full).
2. **fish**: fine-tuned on ``forum-posts`` with a FISH-style mask: the empirical Fisher (squared
   gradient of the log-likelihood at the true label) over 256 examples picks the top 0.5% of
   parameters, and only those are trained. Committed, it is a sparse patch.
3. **lora**: a rank-4 update ``scale · B @ A`` of the hidden layer, also on **base**, trained on
   part of ``web-crawl`` with everything else frozen, committed with its factors: a low-rank patch.
4. **merge**: the exact diagonal Fisher of each contributor's model on its own data (128
   examples) is stored with its version, and ``ledger.merge(..., method="fisher")`` merges the two
   patches into a version with both as parents.

Every batch goes through :func:`provenance.torch.track`, so each version knows which documents
shaped it. Running the demo again finds the tagged versions and trains nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import xxhash
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from provenance.api import Ledger
from provenance.errors import NotFoundError
from provenance.fisher import diagonal_fisher, fish_mask
from provenance.kernels.patch import apply_low_rank
from provenance.torch import RegisteredDataset, track

BUCKETS = 1 << 14  # hashed vocabulary
TAGS = ("demo-base", "demo-fish", "demo-lora", "demo-merge")


class BagOfWords(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 64):
        super().__init__()
        self.embed = nn.EmbeddingBag(BUCKETS, dim, mode="mean", padding_idx=0)
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 2)
        self.lora: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (B, A, scale) on hidden

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for bags of word ids: flat ``ids`` with ``offsets``, or padded (B, L) ``ids`` (0 pads)."""
        x = self.embed(ids, offsets)
        weight = self.hidden.weight
        if self.lora is not None:
            b, a, scale = self.lora
            weight = weight + scale * (b @ a)
        return self.out(torch.relu(nn.functional.linear(x, weight, self.hidden.bias)))


def _word_ids(text: str) -> list[int]:
    """Hashed word ids in 1..BUCKETS-1 (0 is padding)."""
    return [1 + xxhash.xxh32_intdigest(w.lower().encode()) % (BUCKETS - 1) for w in text.split()] or [1]


def _padded(items: list[tuple[dict, int]]) -> dict[str, torch.Tensor]:
    """Examples as padded (B, L) word ids and labels: one example per row, as the Fisher needs."""
    rows = [_word_ids(item["text"]) for item, _ in items]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return {"ids": ids, "labels": torch.tensor([label for _, label in items])}


def _fisher(model: BagOfWords, data, mode: str, n: int) -> dict[str, torch.Tensor]:
    loader = DataLoader(Subset(data, range(min(n, len(data)))), batch_size=32, collate_fn=_padded)
    with warnings.catch_warnings():  # torch.func has no batching rule for embedding_bag yet: slower, still exact
        warnings.filterwarnings("ignore", message="There is a performance drop")
        return diagonal_fisher(model, loader, mode=mode, forward=lambda m, batch: m(batch["ids"]))


def _collate(items: list[tuple[dict, int]]) -> dict[str, Any]:
    ids, offsets, labels, keys = [], [0], [], []
    for item, label in items:
        words = _word_ids(item["text"])
        ids.extend(words)
        offsets.append(offsets[-1] + len(words))
        labels.append(label)
        keys.append(item["key"])
    return {"ids": torch.tensor(ids), "offsets": torch.tensor(offsets[:-1]), "labels": torch.tensor(labels), "key": keys}


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, data: RegisteredDataset, label: int):
        self.data, self.label = data, label

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[dict, int]:
        return self.data[i], self.label


def _loss(model: BagOfWords, batch: dict) -> torch.Tensor:
    # Label smoothing keeps the gradients from vanishing once the (easy) task is learnt, so the
    # later runs still have something to learn.
    return nn.functional.cross_entropy(model(batch["ids"], batch["offsets"]), batch["labels"], label_smoothing=0.1)


def train_story(ledger: Ledger, seed: int = 0) -> list[dict[str, Any]]:
    """Run (or, when already done, find) the three runs; per version what it is and what it saw."""
    if not all(_tagged(ledger, t) for t in TAGS):
        _train(ledger, seed)
    story = []
    for tag in TAGS:
        version = ledger.version(tag)
        run = ledger.run(version.run_id) if version.run_id else None
        manifest = ledger.manifest(version)
        encodings: dict[str, int] = {}
        for p in manifest.values():
            encodings[p.encoding] = encodings.get(p.encoding, 0) + 1
        consumed: dict[str, dict[str, float]] = {}
        for s in ledger.run_shards(run) if run else []:
            c = consumed.setdefault(s.dataset_id, {"examples": 0, "documents": 0, "epochs": 0.0, "logged": s.logged})
            c["examples"] += s.examples
            c["documents"] += s.distinct_documents
        for dataset_id, c in consumed.items():
            c["epochs"] = c["examples"] / max(1, ledger.dataset(dataset_id).n_documents)
        story.append({
            "tag": tag, "version_id": version.version_id, "parents": version.parents, "message": version.message,
            "run_id": version.run_id, "params": run.params if run else {}, "stored_bytes": version.stored_bytes,
            "full_bytes": version.full_bytes, "encodings": encodings, "consumed": consumed,
        })
    return story


def _tagged(ledger: Ledger, tag: str) -> bool:
    try:
        ledger.version(tag)
        return True
    except NotFoundError:
        return False


def _train(ledger: Ledger, seed: int) -> None:
    torch.manual_seed(seed)
    web = _Labelled(RegisteredDataset(ledger, "web-crawl"), 0)
    forum = _Labelled(RegisteredDataset(ledger, "forum-posts"), 1)
    both = ConcatDataset([web, forum])
    g = torch.Generator().manual_seed(seed)
    model = BagOfWords()

    # 1. base: everything trained, from scratch
    params = {"epochs": 2, "lr": 0.01, "batch_size": 32, "optimizer": "adam"}
    with ledger.start_run(datasets=["web-crawl", "forum-posts"], params=params, message="base classifier") as run:
        opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
        for _ in range(params["epochs"]):
            for batch in track(DataLoader(both, batch_size=32, shuffle=True, collate_fn=_collate, generator=g), run):
                opt.zero_grad()
                _loss(model, batch).backward()
                opt.step()
        base = run.commit(model.state_dict())
    ledger.tag("demo-base", base)

    # 2. fish: the top 0.5% of parameters by empirical Fisher on forum posts, nothing else
    keep = 0.005
    masks = fish_mask(_fisher(model, forum, "empirical", 256), keep)
    params = {"keep_ratio": keep, "fisher_examples": min(256, len(forum)), "lr": 0.5, "optimizer": "sgd"}
    with ledger.start_run(base=base, datasets=["forum-posts"], params=params, message="FISH-mask fine-tune on forum posts") as run:
        opt = torch.optim.SGD(model.parameters(), lr=params["lr"])
        for batch in track(DataLoader(forum, batch_size=16, shuffle=True, collate_fn=_collate, generator=g), run):
            opt.zero_grad()
            _loss(model, batch).backward()
            for n, p in model.named_parameters():
                p.grad.mul_(masks[n])
            opt.step()
        fish = run.commit(model.state_dict())
    ledger.tag("demo-fish", fish)
    ledger.store_fisher(fish, _fisher(model, forum, "exact", 128), meta={"mode": "exact", "examples": 128})

    # 3. lora: rank-4 update of the hidden layer on part of the web text, the rest frozen, also on base
    model.load_state_dict(ledger.checkout(base))
    rank, alpha = 4, 8.0
    b = torch.zeros(model.hidden.out_features, rank, requires_grad=True)
    a = (torch.randn(rank, model.hidden.in_features, generator=g) * 0.1).requires_grad_()
    model.lora = (b, a, alpha / rank)
    for p in model.parameters():
        p.requires_grad_(False)
    params = {"rank": rank, "alpha": alpha, "lr": 0.01, "batches": 20, "optimizer": "adam"}
    with ledger.start_run(base=base, datasets=["web-crawl"], params=params, message="LoRA on the hidden layer") as run:
        opt = torch.optim.Adam([b, a], lr=params["lr"])
        loader = DataLoader(web, batch_size=32, shuffle=True, collate_fn=_collate, generator=g)
        for i, batch in enumerate(track(loader, run)):
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
            if i + 1 == params["batches"]:
                break
        model.lora = None
        factors = (b.detach(), a.detach(), alpha / rank)
        state = dict(model.state_dict())
        state["hidden.weight"] = apply_low_rank(state["hidden.weight"], *factors)
        lora = run.commit(state, low_rank={"hidden.weight": factors})
    ledger.tag("demo-lora", lora)
    model.load_state_dict(ledger.checkout(lora))
    for p in model.parameters():
        p.requires_grad_(True)
    ledger.store_fisher(lora, _fisher(model, web, "exact", 128), meta={"mode": "exact", "examples": 128})

    # 4. the maintainer merges the two contributors' patches, weighting each element by its Fisher
    #    after the pre-merge gate: how much of their data overlaps, and whether any is evaluation data.
    #    The planted evaluation leaks break its default policy (no contamination); the demo merges
    #    anyway to show the rest, and the merge's receipt cites the failed audit.
    gate = ledger.audit_merge([fish, lora], max_overlap=0.25)
    merged = ledger.merge([fish, lora], method="fisher", message="Fisher merge of the FISH and LoRA patches",
                          audit=gate["audit_id"])
    ledger.tag("demo-merge", merged)
