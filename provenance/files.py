"""Atomic file writes: write to a temporary name in the same folder, sync, then rename; and OS
(and JSON) errors worded to name the file and place they are about."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import xxhash


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # it names the temporary file, which the user never asked for: name theirs
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with naming(path), os.fdopen(fd, "wb") as fh:  # a full disk names the file
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_folder(path.parent)
    return path


_COPY_IN_CHILD = """
import json, shutil, sys
try:
    shutil.copyfile(sys.argv[1], sys.argv[2])
except OSError as exc:
    sys.stderr.write(json.dumps([exc.errno, exc.strerror or str(exc), exc.filename, exc.filename2]))
    sys.exit(1)
"""


def copy_apart(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` in a child process: for a file whose lock this process holds
    (the ledger's database: DuckDB's lock is a POSIX record lock). Closing *any* descriptor of a
    file drops every POSIX lock the process holds on it, so a copy opened here let another process
    open the ledger beside the one holding it (a second ``prov serve`` on a served folder after a
    ``prov backup`` through it). An error is raised here as the child's :class:`OSError`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _COPY_IN_CHILD, os.fspath(source), os.fspath(target)],
                          capture_output=True, text=True)
    if done.returncode:
        try:
            code, reason, first, second = json.loads(done.stderr)
        except ValueError:  # the child died before it could say (killed, no interpreter)
            raise OSError(errno.EIO, f"the copying process failed ({done.returncode}): {done.stderr.strip()[-500:]}",
                          os.fspath(source), None, os.fspath(target)) from None
        raise OSError(code, reason, first or os.fspath(source), None, second or os.fspath(target))


def table_format(path: str | os.PathLike) -> str:
    """The format a table asked for at ``path`` is written in (an audit's pairs file): ``"csv"``
    for a name ending in ``.csv`` (any case), else ``"parquet"``. One rule for the local ledger and
    the remote client."""
    return "csv" if os.fspath(path).lower().endswith(".csv") else "parquet"


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Give an OS error raised in the block the file ``path`` it is about, when it names none.

    A write to an open file that the disk refuses (full, over a quota or the process's file size
    limit) raises ``[Errno 28]`` with no file name, and pyarrow's writers raise "Error writing
    bytes to file" the same way; the error is raised again as an :class:`OSError` of the same
    errno, with the system's text for it and ``filename`` set, which ``prov`` prints as
    ``PATH: No space left on device``. Errors that name a file, or have no errno, pass as they are."""
    try:
        yield
    except OSError as exc:
        from provenance.errors import ProvenanceError

        if exc.filename is not None or exc.errno is None or isinstance(exc, ProvenanceError):
            raise
        raise OSError(exc.errno, os.strerror(exc.errno), os.fspath(path)) from exc


def describe(exc: OSError) -> str:
    """An OS error as one line naming its files: ``cannot copy SRC to DST: REASON`` for a copy,
    ``FILE: REASON``, or the reason alone when it names no file (``prov`` and the server say this)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:  # a copy: the source, then the target
        return f"cannot copy {exc.filename} to {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}" if exc.filename else reason


def json_reason(exc: json.JSONDecodeError) -> str:
    """What is wrong in a line ``json`` refused, for a message that says the column itself:
    json's own text ends some reasons with the place ("Unterminated string starting at"), which
    would dangle once the place is cut."""
    return exc.msg.removesuffix(" starting at").removesuffix(" at")


def fsync_folder(folder: str | os.PathLike) -> None:
    """Sync a folder, so that a rename into it survives a crash."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def xxh3_file(path: str | os.PathLike, *, sync: bool = False) -> str:
    """The xxh3-128 (hex) of a file's bytes, read in 4 MiB pieces (``sync``: also sync the file
    to the disk)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_name(path: object, *, folder: bool = False) -> Path:
    """``path``, an output the caller named, as a Path: refuse what is not a path (``output=123``
    failed deep in ``pathlib`` with a TypeError naming no parameter) and, for a file, a name that
    ends in a separator: ``-o out/`` asks for a folder, and ``Path`` drops the slash, so a file
    named ``out`` was written instead."""
    from provenance.errors import InvalidParameterError, UnsafeOutputError

    what = "folder" if folder else "output"
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise InvalidParameterError(f"the {what} must be a path (str or os.PathLike), got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if not folder and text.endswith((os.sep, os.altsep or os.sep)) and text != "-":
        raise UnsafeOutputError(f"refusing to write {text!r}: it ends in {text[-1]!r}, which names a folder; give a "
                                "file name (e.g. " + repr(text + "model.safetensors") + ")")
    return Path(text)


def check_output(given: Path, resolved: Path, *, parents: bool | None = None) -> Path:
    """Check a file about to be written (``given`` as the user wrote it, ``resolved`` after
    symlinks): refuse a folder, and an existing device, FIFO or socket (a rename over it would
    replace it); its parent folder must exist unless ``parents``, which creates it (``None``: the
    caller has no such option, and the error does not offer it)."""
    from provenance.errors import UnsafeOutputError

    if str(given) == "-":
        raise UnsafeOutputError("refusing to write '-': give a file name (the output is written to a file, "
                                "atomically, not to standard output)")
    if resolved.is_dir():
        raise UnsafeOutputError(f"refusing to write {str(given)!r}: it is a folder; give a file name")
    try:  # the path as given, followed: /dev/stdout resolves to a pipe that has no path of its own
        mode = os.stat(given).st_mode
    except OSError:
        mode = None
    if (resolved.exists() and not resolved.is_file()) or (mode is not None and not stat.S_ISREG(mode)):
        raise UnsafeOutputError(
            f"refusing to write {str(given)!r}: {resolved} is not a regular file (a device, FIFO or socket), "
            "which the write would replace")
    if not resolved.parent.is_dir():
        blocking = next((p for p in resolved.parents if os.path.lexists(p)), None)
        if blocking is not None and not blocking.is_dir():  # a file where a folder of the path belongs
            raise UnsafeOutputError(f"cannot write {str(given)!r}: {blocking} is a file, not a folder")
        if not parents:
            offer = "create it first" if parents is None else "create it, or pass parents=True / --parents"
            raise UnsafeOutputError(f"cannot write {str(given)!r}: folder {resolved.parent} does not exist ({offer})")
        resolved.parent.mkdir(parents=True, exist_ok=True)
    # Before the work, not after it: an audit that stored its report and then failed on its --html
    # page said only that it failed. A read-only file system answers this for root too.
    writable = os.access(resolved.parent, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    if not writable:
        raise UnsafeOutputError(f"cannot write {str(given)!r}: folder {resolved.parent} is not writable")
    return resolved


#: A ledger's folder, and its database file in it (:mod:`provenance.ledger`'s layout; here, below
#: it, so that a server's client can tell a ledger folder on its machine).
LEDGER_DIR = ".prov"
DB_FILE = "ledger.duckdb"

#: Pickles by their name: never read (loading one runs code), never stored
#: (:mod:`provenance.checkpoints` refuses one as a checkpoint, :mod:`provenance.model_files` lists one as left out).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not (a symlink that ends at) a regular file: ``"a FIFO (named
    pipe)"``, ``"a broken symlink (to …): its target does not exist"``, ``"a symlink loop"``; None
    for a regular file. Nothing is opened: reading a FIFO or a device would block or never end."""
    link = f" (a symlink to {os.readlink(path)})" if os.path.islink(path) else ""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop: the link never reaches a file"
        if link and exc.errno == errno.ENOENT:
            return f"a broken symlink{link}: its target does not exist"
        return f"not readable: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), f"of file type {stat.S_IFMT(mode):o}") + link


def warn_pickle_name(path: str | os.PathLike) -> None:
    """Warn when a safetensors file is about to be written under a pickle's name (``out.bin``,
    ``model.pt``): loaders choose the format by the name, and ``torch.load`` of it fails."""
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
        from provenance.errors import warn

        warn(f"{path}: a safetensors file is written under a pickle's name; loaders choose the format by the name "
             "(torch.load of it fails, from_pretrained looks for model.safetensors): name it .safetensors")


def non_utf8(path: str | os.PathLike) -> str | None:
    """``path`` shown with its undecodable bytes as ``\\xNN`` when it is not valid UTF-8 (bytes a
    Latin-1 system wrote: Python holds them as surrogates, which no UTF-8 text can hold), else None."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def host_label() -> str:
    """This machine's name, as a folder name may hold it (letters, digits, dots; others as ``_``)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
