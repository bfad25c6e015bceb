"""Accuracy of the dedup audit on real text: files that ship with the operating system and Python.

The corpus is built from files already on the machine (nothing is downloaded): licence texts
(``/usr/share/common-licenses``), Debian package copyright files (``/usr/share/doc/*/copyright``,
which repeat licence texts: natural near-duplicates) and the Python standard library's modules.
Each file (its first ``--max-bytes``) is one document. On top, ``--planted`` copies of randomly
chosen documents are edited by known amounts: the last part of the words is replaced by words of
another document, so that the 5-shingle Jaccard lands near a chosen level in [0.5, 1].

Reported, at each threshold: recall on planted pairs whose exact Jaccard is at least threshold +
0.05 (the tests' criterion, which asks for ≥ 0.95), and, over every pair the audit reports
(natural and planted), the share whose exact Jaccard is below threshold − 0.1 (the tests ask for
≤ 5%), computed from the text.

Usage: ``.venv/bin/python benchmarks/audit_accuracy.py [--planted 300] [--max-bytes 20000]``
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np


def machine_files(max_files: int) -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    found += sorted(str(p) for p in stdlib.glob("*.py")) + sorted(str(p) for p in stdlib.glob("*/*.py"))
    return [Path(p) for p in found if Path(p).is_file()][:max_files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", type=int, default=300)
    parser.add_argument("--max-bytes", type=int, default=20_000)
    parser.add_argument("--max-files", type=int, default=5000)
    parser.add_argument("--thresholds", default="0.7,0.8,0.9")
    args = parser.parse_args()

    from provenance import Ledger
    from provenance.audits import audit_dedup, exact_jaccard

    docs = []
    for path in machine_files(args.max_files):
        text = path.read_bytes()[: args.max_bytes].decode("utf-8", errors="ignore")
        if len(text.split()) >= 20:
            docs.append({"id": str(path), "text": text})
    rng = np.random.default_rng(0)
    planted = []
    for i in range(args.planted):
        a, b = rng.choice(len(docs), 2, replace=False).tolist()
        words = docs[a]["text"].split()
        level = float(rng.uniform(0.5, 1.0))
        keep = min(len(words), round(2 * level * len(words) / (1 + level)))
        filler = docs[b]["text"].split()
        copy = words[:keep] + (filler * (1 + len(words) // max(1, len(filler))))[: len(words) - keep]
        key = f"planted-{i:04d}"
        docs.append({"id": key, "text": " ".join(copy)})
        planted.append((key, docs[a]["id"]))
    texts = {d["id"]: d["text"] for d in docs}
    print(f"{len(docs):,} documents ({len(docs) - len(planted):,} files, {len(planted)} planted copies)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        ledger = Ledger.init(Path(tmp) / "ledger")
        ledger.register_dataset("machine-text", path, id_field="id")
        cfg = ledger.dataset("machine-text").config
        exact_planted = {tuple(sorted(p)): exact_jaccard(cfg, texts[p[0]], texts[p[1]]) for p in planted}
        print("| threshold | pairs reported | planted pairs ≥ t+0.05 | recall on them | reported pairs with exact "
              "J < t−0.1 | share | seconds |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for t in (float(x) for x in args.thresholds.split(",")):
            report = audit_dedup(ledger, ["machine-text"], threshold=t)
            found = {tuple(sorted((p["a"], p["b"]))) for p in report["pairs"]}
            should = [p for p, j in exact_planted.items() if j >= t + 0.05]
            recall = sum(p in found for p in should) / max(1, len(should))
            low = sum(1 for a, b in found if exact_jaccard(cfg, texts[a], texts[b]) < t - 0.1)
            print(f"| {t} | {len(found):,} | {len(should)} | {recall:.4f} | {low} | {low / max(1, len(found)):.2%} | "
                  f"{report['summary']['seconds']:.2f} |", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
