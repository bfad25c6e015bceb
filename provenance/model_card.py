"""Model cards: a version's Hugging Face model card (``huggingface_hub.ModelCard``), its metadata
and text made from what the ledger records of the version's lineage.

**Metadata.** ``datasets``: the datasets of the lineage, largest share first. ``license``: from
the union of their licences (:func:`provenance.lineage.license_summary`): one licence, known
for every dataset, gives its Hub id (``other`` with ``license_name`` when the Hub has no id for
it); several, or one beside datasets of unknown licence, give ``other``, and the text lists them;
no known licence at all (or no data recorded) gives ``unknown``. ``base_model``: the Hub name given, else the one the
version's stored ``config.json`` records (``_name_or_path``, which transformers 4 writes when a
model is loaded by name; local ledgers only: a ledger server does not serve a version's files),
else none, and the text names the lineage's root versions instead. ``provenance``: the version
id and each dataset's effective share, for programs.

**Text.** The training-data table with each dataset's examples, effective examples and share
(the lineage's numbers, :mod:`provenance.lineage`), the licence conditions (non-commercial,
share-alike, attribution, unknown licences, model-generated data), ancestors whose data the
ledger does not know, retractions of data the lineage's runs trained on, and the latest audits that concern the version: the pre-merge gate its
merge cites (else the latest one whose inputs include it or are its parents), the latest dedup
audit of it or of a dataset of its lineage, the latest memorization audit of it; or a line saying
that none was run.

It reads the ledger through the facade's verbs only (``version``, ``lineage``, ``receipt``,
``audits``, ``audit``), so a remote ledger makes the same card.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from provenance.errors import InvalidParameterError, NotFoundError
from provenance.ledger import LedgerStore
from provenance.plain import counted, printable
from provenance.records import VersionRecord
from provenance.results import LicenseSummary, Lineage

# Licence ids the Hugging Face Hub knows (huggingface.co/docs/hub/repositories-licenses), those a
# dataset's SPDX licence maps to; anything else is "other" with its name.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "eupl-1.2",
    "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl",
    "mpl-2.0", "odc-by", "odbl", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
})
_HUB_SPELLING = {"odbl-1.0": "odbl", "odc-by-1.0": "odc-by", "pddl-1.0": "pddl"}
#: How many versions without a run, or unregistered inputs, the card names before "and N more".
LISTED = 10
#: Markdown's inline marks, and what starts a heading, a list or a rule at the start of a line.
_MD_MARK = re.compile(r"([\\`*_\[\]|~])")
_MD_LINE_START = re.compile(r"^(\d*)([#+=.)-])", re.M)
#: Bidirectional embeddings, overrides and isolates, shown as ``\\u202e``: an author's U+202E
#: turned the rest of its paragraph (the card's own words, a retraction's id) right to left.
_BIDI = {c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def model_card(ledger: Any, version: str | VersionRecord, *, base_model: str | None = None) -> Any:
    """The Hugging Face model card of ``version`` (module doc), a ``huggingface_hub.ModelCard``;
    ``base_model`` is the Hub name of the model the lineage starts from, when the ledger does not
    record it. ``ledger`` is a local or a remote ledger."""
    try:
        from huggingface_hub import ModelCard, ModelCardData
    except ImportError as exc:  # pragma: no cover - transformers brings it
        raise ImportError("model cards need huggingface_hub: pip install huggingface_hub (or 'provenance[hf]')") from exc

    if base_model is not None and not (isinstance(base_model, str) and _HUB_NAME.fullmatch(base_model)):
        # it went into the YAML and the link as given: '' made `base_model: ''`, a space or a newline a broken link
        raise InvalidParameterError(f"base model {base_model!r} is not a Hugging Face Hub name (NAME or ORG/NAME: "
                                    "ASCII letters, digits, '.', '_', '-')")
    ver = ledger.version(version)
    lin = ledger.lineage(ver)
    if base_model is None and isinstance(ledger, LedgerStore):
        base_model = recorded_base_model(ledger, ver)
    datasets = sorted(lin.datasets, key=lambda d: (-d.effective_share, d.dataset_id))
    unlicensed = _unlicensed(datasets)
    license_id, license_name = hub_license(lin.license, unlicensed)
    data = ModelCardData(
        base_model=base_model, datasets=[d.dataset_id for d in datasets] or None, license=license_id,
        license_name=license_name, tags=["provenance"],
        provenance={"version": ver.version_id,
                    "datasets": [{"id": d.dataset_id, "effective_share": d.effective_share} for d in datasets]},
    )
    sections = [_heading(ver), _base(lin, base_model), _training_data(lin, datasets),
                _licence(lin.license, license_id, unlicensed), _audits(ledger, ver, lin)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _unlicensed(datasets: list[Any]) -> list[str]:
    """The datasets with no licence recorded (a licence whose conditions are unknown, such as a
    ``LicenseRef-``, is still a licence)."""
    return [d.dataset_id for d in datasets if not d.license]


def hub_license(summary: LicenseSummary, unlicensed: list[str] | None = None) -> tuple[str | None, str | None]:
    """``(license, license_name)`` of the card's metadata for the licence union (module doc);
    ``unlicensed``: the datasets with no licence (default: those of unknown licence or conditions)."""
    unlicensed = summary.unknown_license if unlicensed is None else unlicensed
    if not summary.licenses:
        return "unknown", None  # no data recorded, or none of it licensed
    if len(summary.licenses) == 1 and not unlicensed:
        spdx = summary.licenses[0].lower().removesuffix("-only")
        spdx = _HUB_SPELLING.get(spdx, spdx)
        if spdx in HUB_LICENSES:
            return spdx, None
    names = list(summary.licenses) + (["unknown"] if unlicensed else [])
    return "other", re.sub(r"[^a-z0-9.]+", "-", " and ".join(names).lower()).strip("-")


def recorded_base_model(ledger: LedgerStore, version: VersionRecord) -> str | None:
    """The Hub name the version's stored ``config.json`` records as the model it was loaded from
    (``_name_or_path``), when it has the form of one and is not a folder here; else None."""
    import json

    from provenance import model_files

    config = next((f for f in model_files.version_files(ledger, version) if f.name == model_files.CONFIG and f.object),
                  None)
    if config is None:
        return None
    try:
        name = json.loads(model_files.read_file(ledger.object_store(), config)).get("_name_or_path")
    except (ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not _HUB_NAME.fullmatch(name) or Path(name).exists():
        return None
    return name


# ---- the text ------------------------------------------------------------------------------------


def _heading(ver: VersionRecord) -> str:
    by = f" by {_plain(ver.author)}" if ver.author else ""
    return (f"# Model version {ver.label()}\n\n{_plain(ver.message, lines=True)}\n\nCommitted {ver.created_at:%Y-%m-%d %H:%M} UTC{by}. "
            "This card was made by provenance from the ledger's records: the data, licences and audits below are "
            "what the ledger knows of this version's lineage.")


def _base(lin: Lineage, base_model: str | None) -> str:
    rows = lin.version_rows()
    roots = [r for r in rows if not r["parents"]]
    named = ", ".join(f"`{r['version_id'][:12]}` ({_plain(r['message'])})" for r in roots)
    if [r["version_id"] for r in roots] == [lin.version]:  # no ancestor: its own run started from nothing
        text = "## Base model\n\nNone in the ledger: this version has no parent (trained from scratch, or imported)."
    else:
        text = f"## Base model\n\nThe lineage starts at version{'s' if len(roots) > 1 else ''} {named}."
    if base_model:
        text += f" Base model on the Hugging Face Hub: [{base_model}](https://huggingface.co/{base_model})."
    return text


def _training_data(lin: Lineage, datasets: list[Any]) -> str:
    lines = ["## Training data", ""]
    if not datasets and lin.unregistered_inputs:  # "no run recorded any" above the inputs its runs did name
        lines.append("No registered dataset is recorded for this version: its runs named only inputs that are not "
                     "registered datasets (below).")
    elif not datasets:
        lines.append("No training data is recorded for this version: no run in its lineage recorded any.")
    else:
        lines += ["| dataset | role | licence | examples | effective examples | share |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {d.dataset_id} | {d.role or ''} | {d.license or 'unknown'} | {d.examples:,} | "
                  f"{d.effective_examples:,.2f} | {d.effective_share:.2%} |" for d in datasets]
        lines += ["", "Effective examples weight the examples of each run by its version's share of this one (a merge "
                  "passes λᵢ / Σλⱼ of its share to input i); a dataset's share is its effective examples over "
                  "all datasets'."]
    if lin.retracted:
        listed = "; ".join(f"{_plain(r['target'])} ({_plain(r['reason'])}; retraction `{r['retraction_id']}`)"
                           for r in {r["retraction_id"]: r for r in lin.retracted}.values())
        lines += ["", f"**Retracted data**: runs in this lineage trained on data retracted since: {listed}. "
                      "`prov retractions ID` says what replaces this version."]
    if lin.unrecorded:
        listed = _listed([f"`{v[:12]}`" for v in lin.unrecorded], lin.version)
        lines += ["", f"Versions in the lineage with neither a run nor a merge, whose training data the ledger does not "
                      f"know: {listed}."]
    if lin.unregistered_inputs:
        listed = _listed(list(dict.fromkeys(_code(f"{i.namespace}/{i.name}") for i in lin.unregistered_inputs)),
                         lin.version)  # one row per run that named it: each input once
        lines += ["", f"Inputs the runs named that are not registered datasets: {listed}."]
    return "\n".join(lines)


def _listed(items: list[str], version: str) -> str:
    """The first :data:`LISTED` of ``items``, and how many more (a deep history has thousands of
    versions without a run: the card listed 1,997 ids in one paragraph)."""
    more = len(items) - LISTED
    return ", ".join(items[:LISTED]) + (f" and {more:,} more (`prov lineage {version[:12]} --json` lists them)"
                                        if more > 0 else "")


def _plain(text: str, lines: bool = False) -> str:
    """Free text a person wrote (a commit message, an author, a retraction's reason) as it reads:
    ``&``, ``<`` and ``>`` as entities, so that an ``<!--`` or a ``<details>`` in a message does
    not hide the rest of the card; Markdown's marks backslash-escaped, so that a line of three
    backticks does not open a code block holding the rest of the card (its data and licence), a
    ``---`` line does not make the message a heading and a lone backtick does not pair with the
    next version id's; control characters as ``\\xNN`` and bidirectional controls as ``\\u202e``;
    on one line unless ``lines`` (a paragraph of the card)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = "\n".join(line.strip() for line in text.strip().splitlines()) if lines else " ".join(text.split())
    return _MD_LINE_START.sub(r"\1\\\2", _MD_MARK.sub(r"\\\1", printable(text).translate(_BIDI)))


def _code(text: str) -> str:
    """``text`` as a Markdown code span, shown as written: an input's name comes from another
    system's events, and written raw an ``<!--`` in it hid the rest of the card (its licence)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _licence(summary: LicenseSummary, license_id: str | None, unlicensed: list[str]) -> str:
    lines = ["## Licence", ""]
    if not summary.licenses and not summary.unknown_license:
        lines.append("No dataset is recorded, so no licence follows from the training data.")
    elif len(summary.licenses) == 1 and not unlicensed:
        lines.append(f"The training data is under {summary.licenses[0]}.")
    elif summary.licenses:
        lines.append(f"The training data comes under {'several licences' if len(summary.licenses) > 1 else 'the licence'}:"
                     f" {', '.join(summary.licenses)}"
                     + (", and some of it under no known licence" if unlicensed else "")
                     + f"; the card's licence is `{license_id}`.")
    else:  # data is recorded, none of it under a licence: the section said nothing above its list
        lines.append(f"No licence is recorded for the training data; the card's licence is `{license_id}`.")
    conditions = [
        ("Non-commercial", summary.non_commercial, "their licences forbid commercial use"),
        ("Share-alike", summary.share_alike, "derivatives may have to be shared under the same licence"),
        ("Attribution", summary.attribution, "their licences require attribution"),
        ("Unknown licence", summary.unknown_license, "no licence is recorded, or its conditions are unknown"),
        ("Model-generated", summary.model_generated, "text generated by a model, under its terms of use"),
    ]
    listed = [f"- **{label}**: {', '.join(ids)} ({why})." for label, ids, why in conditions if ids]
    return "\n".join(lines + ([""] + listed if listed else []))


def _audits(ledger: Any, ver: VersionRecord, lin: Lineage) -> str:
    gate, dedup, memo = latest_audits(ledger, ver, lin)
    lines = ["## Audits", "", "### Pre-merge gate", ""]
    if gate and "missing" in gate:
        lines.append(f"The merge's receipt cites the pre-merge gate audit `{gate['missing'][:12]}`, which is not in the "
                     "ledger (`prov verify` reports it).")
    else:
        lines.append(_gate_text(gate) if gate else "No pre-merge gate was run for this version.")
    lines += ["", "### Duplicates and memorization", ""]
    lines.append(_dedup_text(dedup) if dedup else "No deduplication audit was run on this version or its datasets.")
    lines.append("")
    lines.append(_memorization_text(memo) if memo else "No memorization audit was run on this version.")
    return "\n".join(lines)


def latest_audits(ledger: Any, ver: VersionRecord, lin: Lineage) -> tuple[dict | None, dict | None, dict | None]:
    """The stored audits (rows of ``ledger.audit``) that concern ``ver`` (module doc): the
    pre-merge gate, the dedup audit and the memorization audit, each None when none was run (the
    gate ``{"missing": id}`` when the merge's receipt cites an audit the ledger no longer has)."""
    vid = ver.version_id
    gate = None
    receipt = ledger.receipt(ver)
    if receipt is not None and receipt.audit_id:
        try:
            gate = ledger.audit(receipt.audit_id)
        except NotFoundError:  # deleted by other means: the card says so (as prov verify does)
            gate = {"missing": receipt.audit_id}
    else:
        for row in ledger.audits("merge"):
            inputs = row["target"].split()
            if vid in inputs or (ver.parents and sorted(inputs) == sorted(ver.parents)):
                gate = ledger.audit(row["audit_id"])
                break
    datasets = {d.dataset_id for d in lin.datasets}
    dedup = None
    for row in ledger.audits("dedup"):
        audit = ledger.audit(row["audit_id"])
        if any(t.get("id") == vid or t.get("id") in datasets for t in audit["report"].get("targets", [])):
            dedup = audit
            break
    memo = next((ledger.audit(r["audit_id"]) for r in ledger.audits("memorization") if r["target"] == vid), None)
    return gate, dedup, memo


def _when(audit: dict) -> str:
    created = audit["created_at"]
    return f"audit `{audit['audit_id'][:12]}`, {str(created)[:16].replace('T', ' ')} UTC"


def _gate_text(audit: dict) -> str:
    r = audit["report"]
    labels = r.get("labels", {})
    versions = ", ".join(labels.get(v, v[:12]) for v in r.get("versions", []))
    lines = [f"{'Passed' if audit['passed'] else 'Failed'} ({_when(audit)}) for the merge of {versions}, at "
             f"estimated Jaccard ≥ {r.get('threshold')}.", ""]
    for o in r.get("overlap", []):
        lines.append(f"- Overlap of the training data: {o['a_fraction']:.2%} of {labels.get(o['a'], o['a'][:12])}'s "
                     f"documents and {o['b_fraction']:.2%} of {labels.get(o['b'], o['b'][:12])}'s have a copy in "
                     "the other's.")
    c = r.get("contamination")
    if c:
        lines.append(f"- Contamination with {', '.join(c['eval_datasets'])}: {c['contaminated_eval_documents']} of "
                     f"{c['eval_documents']} evaluation documents have an exact or near copy in the training data "
                     f"({c['training_exact']} exact and {c['training_near']} near training copies).")
    else:
        lines.append("- Contamination: no evaluation dataset was checked.")
    lines += [f"- Violation ({v['policy']}): {v['message']}" for v in r.get("violations", [])]
    return "\n".join(lines)


def _dedup_text(audit: dict) -> str:
    r = audit["report"]
    s = r["summary"]
    targets = ", ".join(t.get("label") or t["target"] for t in r.get("targets", []))
    return (f"Deduplication ({_when(audit)}) of {targets} at estimated Jaccard ≥ {r['threshold']}: "
            f"{s['redundant_documents']:,} of {s['documents']:,} documents are redundant copies "
            f"(duplicate rate {s['duplicate_rate']:.2%}, {counted(s['clusters'], 'cluster')}).")


def _memorization_text(audit: dict) -> str:
    r = audit["report"]
    s = r["summary"]
    return (f"Memorization ({_when(audit)}) at estimated Jaccard ≥ {r['threshold']}: "
            f"{s['samples_matching_training']} of {s['samples']} generated samples reproduce training documents "
            f"(training documents matched: {s['training_documents_matched']}; the most exposed of them was seen "
            f"{s['max_exposure']:g} {'time' if s['max_exposure'] == 1 else 'times'} in training, near-copies included).")
