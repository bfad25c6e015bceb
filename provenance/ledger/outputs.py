"""Checks of the files and folders a command is about to write: never inside the ledger folder
(after symlinks); a file never where a folder, a device, FIFO or socket is; a folder never over a
file or a folder that is not empty. Mixed into :class:`~provenance.ledger.LedgerStore`; the
checks of a file itself are :func:`provenance.files.check_output`.
"""

from __future__ import annotations

import os
from pathlib import Path

from provenance.errors import UnsafeOutputError
from provenance.files import check_output, output_name


class OutputChecks:
    """Where a command may write (``self`` is a :class:`~provenance.ledger.LedgerStore`)."""

    def output_path(self, path: str | os.PathLike, *, parents: bool | None = None) -> Path:
        """Check a file that a command is about to write: refuse one that resolves (after
        symlinks) inside the ledger folder, that is a folder, or that is a registered dataset's
        source file; its parent folder must exist unless ``parents``, which creates it. Returns
        the resolved path."""
        given = output_name(path)
        resolved = given.resolve()
        if resolved == self.root or self.root in resolved.parents:
            raise UnsafeOutputError(
                f"refusing to write {str(given)!r}: it resolves to {resolved}, inside the ledger folder {self.root}"
            )
        checked = check_output(given, resolved, parents=parents)
        if resolved.is_file():  # a registered source: audits and checks read it back, and it would be lost
            shard = self.shard_at(str(resolved))
            if shard is not None:
                raise UnsafeOutputError(
                    f"refusing to write {str(given)!r}: it is the source file of dataset {shard[0]} (shard {shard[1]}), "
                    "which audits read back to verify pairs and find shared spans; write the output elsewhere")
        return checked

    def output_folder(self, path: str | os.PathLike, *, parents: bool = False) -> Path:
        """Check a folder that a command is about to create: refuse one that resolves inside the
        ledger folder, a file, a folder that is not empty, or the current folder; its parent folder
        must exist unless ``parents``, which creates it. Returns the resolved path."""
        given = output_name(path, folder=True)
        resolved = given.resolve()
        if resolved == self.root or self.root in resolved.parents:
            raise UnsafeOutputError(
                f"refusing to write {str(given)!r}: it resolves to {resolved}, inside the ledger folder {self.root}")
        if not resolved.exists():
            return check_output(given, resolved, parents=parents)
        if resolved == _cwd():  # `--hf .` renamed a new folder over it: the shell was left in the removed one
            raise UnsafeOutputError(
                f"refusing to write folder {str(given)!r}: it is the current folder, which the checkout would replace "
                "by a new folder of that name (this shell would be left in the old, removed one, seeing no files); "
                "run it from the folder above, naming the folder")
        if not resolved.is_dir():
            raise UnsafeOutputError(f"refusing to write folder {str(given)!r}: it is a file")
        if any(resolved.iterdir()):
            raise UnsafeOutputError(f"refusing to write folder {str(given)!r}: it is not empty")
        return resolved


def _cwd() -> Path | None:
    try:
        return Path.cwd()
    except OSError:  # removed from under this process
        return None
