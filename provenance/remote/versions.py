"""The versions of a served ledger: their records, manifests, receipts, tags, diffs and merges;
a commit uploads the state as one safetensors file, made a tensor at a time as it is sent (no
copy on disk), and a checkout streams it back to a file written atomically. Maintenance (backup,
gc, verify) runs on the server. Mixed into :class:`~provenance.remote.RemoteLedger`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from provenance import errors
from provenance.files import output_name, warn_pickle_name
from provenance.records import (
    A_VERSION,
    DatasetRecord,
    ParamRecord,
    TagRecord,
    VersionRecord,
    check_flags,
    check_merge_options,
    check_tag,
    check_utf8,
)
from provenance.remote.transport import ref_of, segment
from provenance.results import MergeReceipt
from provenance.wire import LOW_RANK_PREFIX, ipc_to_table


class RemoteVersions:
    """Versions over HTTP (``self`` is a :class:`~provenance.remote.RemoteLedger`)."""

    def _version_part(self, ref: str | VersionRecord) -> str:
        """A version reference as one part of an API path. A tag whose name holds ``/``
        (``release/1.0``) is resolved to its version's id first: the server's version routes take
        one path part, and an encoded ``/`` reaches them as a ``/``."""
        text = str(ref_of(ref, A_VERSION))
        if "/" not in text:
            return segment(text)
        try:
            return self._call("GET", f"tags/{segment(text)}")["version_id"]
        except errors.NotFoundError:
            raise errors.NotFoundError(f"no version or tag {errors.shown(text)} (a version id is 4 to 32 hex "
                                       "digits)") from None

    def versions(self) -> list[VersionRecord]:
        return [VersionRecord.model_validate(r) for r in self._call("GET", "versions")]

    def version(self, ref: str | VersionRecord) -> VersionRecord:
        return VersionRecord.model_validate(self._call("GET", f"versions/{self._version_part(ref)}"))

    def manifest(self, version: str | VersionRecord) -> dict[str, ParamRecord]:
        return {k: ParamRecord.model_validate(v) for k, v in self._call("GET", f"versions/{self._version_part(version)}/manifest").items()}

    def receipt(self, version: str | VersionRecord) -> MergeReceipt | None:
        data = self._call("GET", f"versions/{self._version_part(version)}/receipt")
        return MergeReceipt.model_validate(data) if data is not None else None

    def tags(self) -> list[TagRecord]:
        return [TagRecord.model_validate(r) for r in self._call("GET", "tags")]

    def tag(self, name: str, version: str | VersionRecord) -> VersionRecord:
        check_tag(name)  # as the ledger checks it: the request made tag(5, v) the tag '5'
        try:
            return VersionRecord.model_validate(self._call("PUT", f"tags/{segment(name)}", json_body={"version": ref_of(version, A_VERSION)}))
        except errors.AlreadyAppliedError:  # the tag was set before the server stopped: the version it was set to
            return self.version(ref_of(version, A_VERSION))

    def find_tag(self, name: str) -> TagRecord:
        return TagRecord.model_validate(self._call("GET", f"tags/{segment(name)}"))

    def delete_tag(self, name: str) -> TagRecord:
        found = self.find_tag(name)
        try:
            return TagRecord.model_validate(self._call("DELETE", f"tags/{segment(name)}"))
        except errors.AlreadyAppliedError:  # removed before the server stopped: the tag as it was
            return found

    def commit(self, state: Any, *, parent: str | VersionRecord | None = None, message: str, author: str | None = None,
               run: str | None = None, encoding: str = "auto", allow_nonfinite: bool = False, progress: Any = None,
               sync: bool = True, low_rank: Mapping[str, tuple[Any, Any, float]] | None = None,
               checkpoint_of: str | None = None, step: int | None = None, **options: Any) -> VersionRecord:
        """Upload ``state`` (a state dict, a module, a safetensors file or a sharded checkpoint)
        and store it on the server as a new version (the server syncs its objects whatever ``sync``
        says: durability is the server's). ``low_rank`` factors travel in the same upload;
        ``checkpoint_of`` and ``step`` make it a checkpoint of a running run, as locally."""
        if options:
            raise errors.InvalidParameterError(
                f"{', '.join(sorted(options))}: not available through a ledger server (commit on the ledger's host)")
        if author is not None:  # a query parameter made author=5 the author '5'
            check_utf8(author, "the commit's author")
        from provenance.versions import check_step

        check_step(step)  # refused here, in the ledger's words (a query parameter took 2.0 as 2)
        if step is not None and checkpoint_of is None:
            raise errors.InvalidParameterError("step is the step of a checkpoint: give checkpoint_of= (the running "
                                               "run) with it")
        params = {"message": message, "parent": ref_of(parent, A_VERSION) if parent is not None else None, "author": author,
                  "run": run, "encoding": encoding, "allow_nonfinite": str(allow_nonfinite).lower()}
        if checkpoint_of is not None:
            params["checkpoint_of"], params["step"] = ref_of(checkpoint_of), step
        if low_rank is not None:  # refused here as the ledger refuses them
            from provenance.objects import check_low_rank

            low_rank = check_low_rank(low_rank)
        if low_rank:
            state = _as_tensors(state)
            for name, (b, a, _scale) in low_rank.items():
                state[f"{LOW_RANK_PREFIX}B:{name}"], state[f"{LOW_RANK_PREFIX}A:{name}"] = b, a
            params["low_rank_scales"] = json.dumps({name: float(f[2]) for name, f in low_rank.items()})
        body = _state_body(state)
        data = self._made("version_id", "versions", lambda: self._call(
            "POST", "versions", params=params, content=body, content_type="application/octet-stream",
            length=getattr(body, "size", None)))
        return VersionRecord.model_validate(data)

    def store_fisher(self, version: str | VersionRecord, fisher: Mapping[str, Any], *, keep: float | None = None,
                     meta: Mapping[str, Any] | None = None, update: bool = False) -> int:
        """Upload the diagonal Fisher of ``version`` (parameter name -> tensor) to the server; see
        :func:`provenance.merges.store_fisher`."""
        from provenance.merges.fishers import check_fisher_mapping

        ver = self.version(version)  # named as locally: dict() of a tensor or a list was a TypeError
        check_fisher_mapping(fisher, f"the Fisher given for version {ver.version_id[:12]}")
        body = _state_body(dict(fisher))
        params = {"meta": json.dumps(dict(meta or {})), "keep": keep, "update": update}
        return self._call("POST", f"versions/{self._version_part(ver)}/fisher", params=params, content=body,
                          content_type="application/octet-stream", length=body.size)["bytes"]

    def fishers(self, version: str | VersionRecord) -> dict[str, dict[str, Any]]:
        """The stored Fisher of ``version``: parameter name -> ``{"kind", "objects", "meta"}``, as
        :meth:`provenance.Ledger.fishers` answers (read from the table ``version_fishers``)."""
        vid = self.version(version).version_id
        rows = self.sql("SELECT name, kind, objects, meta_json FROM version_fishers WHERE version_id = ? ORDER BY name",
                        [vid]).to_pylist()
        return {r["name"]: {"kind": r["kind"], "objects": dict(r["objects"]),
                            "meta": json.loads(r["meta_json"]) if r["meta_json"] else {}} for r in rows}

    def near_duplicates(self, datasets: Sequence[str | DatasetRecord], threshold: float = 0.8) -> pa.Table:
        data = self._call("POST", "near-duplicates", json_body={"datasets": [ref_of(d) for d in datasets],
                                                                "threshold": threshold})
        return ipc_to_table(data, "the pairs")

    def checkout(self, version: str | VersionRecord, output: str | os.PathLike | None = None, *,
                 parents: bool = False, progress: Any = None) -> Any:
        """The version's tensors, bit-identical: a dict, or the safetensors file ``output``."""
        ref = ref_of(version, A_VERSION)
        if output is not None:
            out = self.output_path(output, parents=parents)
            warn_pickle_name(out)
            return self._call("GET", f"versions/{self._version_part(ref)}/tensors", stream_to=out)
        from provenance.tensorfile import read_tensors

        with tempfile.TemporaryDirectory(prefix="prov-checkout-") as tmp:
            path = self._call("GET", f"versions/{self._version_part(ref)}/tensors", stream_to=Path(tmp) / "state.safetensors")
            tensors, _ = read_tensors(path)
            return tensors

    def checkout_hf(self, version: str | VersionRecord, folder: str | os.PathLike, **options: Any) -> Path:
        """Refused: a ledger server does not serve a version's stored files (config, tokenizer)."""
        raise errors.InvalidParameterError(
            "checkout as a Hugging Face folder is not available through a ledger server: it does not serve a "
            "version's stored files (config, tokenizer); check out on the ledger's host, or check out the tensors "
            "to a .safetensors file")

    def model_files(self, version: str | VersionRecord) -> list[Any]:
        """Refused: a ledger server does not serve a version's stored files."""
        raise errors.InvalidParameterError(
            "a version's checkpoint-folder files are not available through a ledger server; list them on the "
            "ledger's host")

    def ancestors(self, version: str | VersionRecord) -> list[VersionRecord]:
        return [VersionRecord.model_validate(r) for r in self._call("GET", f"versions/{self._version_part(version)}/ancestors")]

    def diff(self, old: str | VersionRecord, new: str | VersionRecord) -> list[dict[str, Any]]:
        return self._call("GET", f"versions/{self._version_part(old)}/diff/{self._version_part(new)}")

    def data_diff(self, a: str | VersionRecord, b: str | VersionRecord) -> dict[str, Any]:
        return self._call("GET", f"versions/{self._version_part(a)}/diff/{self._version_part(b)}", params={"data": "true"})

    def merge(self, versions: Sequence[str | VersionRecord], *, gate: Mapping[str, Any] | None = None,
              progress: Any = None, device: Any = None, **options: Any) -> VersionRecord:
        if device is not None:
            raise errors.InvalidParameterError("device: the server merges on its own device")
        if "base" in options and options["base"] is not None:
            options["base"] = ref_of(options["base"], A_VERSION)
        if options.get("author") is not None:
            check_utf8(options["author"], "the merge's author")
        weights = check_merge_options(versions, options.get("weights"), options.get("eps"), options.get("normalize"),
                                      options.get("density"))
        if weights is not None:
            options["weights"] = weights
        if options.get("fisher") is not None:
            raise errors.InvalidParameterError(
                "fisher=: Fishers given for one merge do not travel to a ledger server; store each input's with "
                "ledger.store_fisher(version, fisher) and merge without fisher= (docs/merging.md)")
        for key in ("weights", "density"):  # JSON has no NaN or Inf: said as the ledger says it
            value = options.get(key)
            if any(isinstance(x, float) and not math.isfinite(x) for x in (value if isinstance(value, list) else [value])):
                raise errors.InvalidParameterError(f"{key} must be finite, got {value!r}")
        body = {"versions": [ref_of(v, A_VERSION) for v in versions], **options, "gate": dict(gate) if gate is not None else None}
        data = self._made("version_id", "versions", lambda: self._call("POST", "merges", json_body=body)["version"])
        return VersionRecord.model_validate(data)

    def backup(self, destination: str | os.PathLike, *, link: bool = False, progress: Any = None) -> dict[str, Any]:
        """A consistent copy of the served ledger in ``destination``, a folder on the server's machine
        (an absolute path: the server's working folder is nobody's business)."""
        check_flags(link=link)
        return self._call("POST", "backup", json_body={"destination": os.fspath(output_name(destination, folder=True)),
                                                       "link": link})

    def gc(self, *, apply: bool = False) -> dict[str, Any]:
        return self._call("POST", "gc", json_body={"apply": apply})

    def verify(self, *, objects: bool = False, repair: bool = False, progress: Any = None) -> Any:
        from provenance.verify import VerifyReport

        return VerifyReport.model_validate(self._call("POST", "verify", json_body={"objects": objects, "repair": repair}))


def _warn_files_left(folder: Path) -> None:
    """A ledger server takes a folder's tensors only: say which of its files are not kept."""
    from provenance import model_files

    kept = [path.name for path, reason in model_files.scan(folder, max_file_bytes=1 << 62) if reason is None]
    if kept:
        errors.warn(
            f"{folder}: {', '.join(kept[:6])}{' and more' if len(kept) > 6 else ''} not stored: a ledger server takes "
            "a folder's tensors only (commit on the ledger's host to keep the files `prov model checkout --hf` writes)")


def _state_body(state: Any) -> Callable[[], Any]:
    """``state`` (tensors, a module, a safetensors file, a checkpoint folder) as the body of a
    safetensors upload, made one tensor at a time with no copy on disk, in name order: the order
    a commit stores them in, so that the server stores each as it arrives. A callable: each retry
    sends it again from the start."""
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        from provenance import checkpoints

        if checkpoints.is_lora_adapter(path):
            raise errors.InvalidParameterError(
                f"{path} is a LoRA adapter folder: through a ledger server, commit the state it makes (base + "
                "adapter), or commit the adapter on the ledger's host")
        if not path.exists():
            raise errors.InvalidParameterError(f"{path}: no such file or folder")
        if path.is_dir():
            _warn_files_left(path)
        reader = checkpoints.open_state(path)
        left_out = reader.metadata_left_out()
        if left_out:
            errors.warn(left_out)
        entries = [(n, *reader.info(n)) for n in reader.names]
        return _TensorStream(entries, reader.get)
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise errors.InvalidParameterError(
            f"expected a state dict, a module, a .safetensors file or a checkpoint folder, got {type(state).__name__}")
    for name in state:
        if not isinstance(name, str) or not name:
            raise errors.InvalidParameterError(f"parameter names must be non-empty strings, got {name!r}")
    from provenance.objects import check_storable

    for name, value in state.items():  # refused here as the ledger refuses them (torch's own errors otherwise)
        check_storable(name, value)
    tensors = {k: state[k].detach() for k in sorted(state)}
    return _TensorStream([(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], tensors.__getitem__)


def _as_tensors(state: Any) -> dict[str, Any]:
    """``state`` as a dict of tensors (a file is mapped, not read)."""
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if path.is_file() and path.name.endswith(".safetensors"):
            from provenance.tensorfile import read_tensors

            return dict(read_tensors(path)[0])
        from provenance import checkpoints

        with checkpoints.open_state(path) as reader:
            return {n: reader.get(n) for n in reader.names}
    if hasattr(state, "state_dict") and callable(state.state_dict):
        return dict(state.state_dict())
    return dict(state)


class _TensorStream:
    """A safetensors file's bytes made from tensors (:func:`provenance.tensorfile.file_bytes`);
    its length is known up front (sent as Content-Length, not chunked). Called, it starts again
    (for a retry)."""

    def __init__(self, entries: list, get: Callable[[str], Any]):
        self.entries, self.get = entries, get
        self.size = self._bytes()[0]

    def __call__(self) -> Iterator[Any]:
        return self._bytes()[1]

    def _bytes(self) -> tuple[int, Iterator[Any]]:
        from provenance.tensorfile import file_bytes

        return file_bytes(self.entries, ((name, self.get(name)) for name, _, _ in self.entries))
