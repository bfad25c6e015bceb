"""Which files a dataset's sources name, as shards: paths, folders (walked in sorted order,
hidden files, Croissant exports and symlink loops left out), glob patterns, and URLs of object
storage (:mod:`provenance.sources.urls`). Only regular files are registered (a FIFO or a device
is named and refused, never opened), with UTF-8 names; the shards are named by their paths
relative to the folder they share."""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from provenance.errors import SourceError, warn
from provenance.files import non_utf8
from provenance.sources.base import HIDDEN, _unknown_type, file_format
from provenance.sources.files import FileShard, ObjectShard

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _folders(folder: str, keep=lambda name: not name.startswith(HIDDEN)):
    """``os.walk(folder)`` top-down, following symlinks to folders, with the folders ``keep``
    accepts (by name) in sorted order. A symlink to a folder of the tree (``current -> v2``) is not
    followed: the walk reaches that folder under its own name, so its files keep theirs. Nor is one
    that leads back into a folder already walked (a loop, `up -> ..`): that one is left out with a
    warning naming it."""
    root = os.path.realpath(folder)
    walked = {root}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if keep(d)):
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            inside = os.path.relpath(real, root).split(os.sep) if real.startswith(root + os.sep) else None
            if os.path.islink(path) and inside and all(keep(part) for part in inside):
                continue  # walked (or to be) as itself
            if any(real == w or w.startswith(real + os.sep) for w in walked):
                warn(f"{path}: a symlink back into a folder already read ({real}); left out")
                continue
            walked.add(real)
            kept.append(d)
        dirnames[:] = kept
        yield dirpath, kept, filenames


def _walk(folder: str) -> list[str]:
    """The files under ``folder``, recursively and in sorted order (see :func:`_folders`), leaving
    out hidden files and folders (names starting with ``.`` or ``_``) and Croissant exports."""
    found: list[str] = []
    for dirpath, _dirnames, filenames in _folders(folder):
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)  # hidden files, and a Croissant
                     if not f.startswith(HIDDEN) and not f.endswith(CROISSANT_SUFFIX))  # export beside its data
        for f in sorted(f for f in filenames if f.startswith("_") and file_format(f) is not None):
            warn(f"{os.path.join(dirpath, f)}: left out, as every name starting with '_' is (a job's bookkeeping, "
                 "as Spark's _SUCCESS); name the file itself to register it")  # data by its suffix: said
    return found


def _magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def _glob(spec: str) -> list[str]:
    """``glob.glob(spec, recursive=True)``, sorted; but a ``**`` walks its folder as a folder
    source is walked (:func:`_folders`): Python's glob follows a symlink back up the tree
    (``up -> ..``) until the path is too long, with two such links never ending."""
    parts = spec.split(os.sep)
    if "**" not in parts:
        return sorted(glob.glob(spec, recursive=True))
    fixed = next(i for i, part in enumerate(parts) if _magic(part))
    base = os.sep.join(parts[:fixed]) or (os.sep if spec.startswith(os.sep) else "")
    pattern = parts[fixed:]
    if not os.path.isdir(base or os.curdir):
        return []
    dotted = any(part.startswith(".") for part in pattern)  # as glob: `*` and `**` skip dot names
    found = [os.path.join(base, "")] if base and _matches([], pattern) else []  # `a/**` holds `a/`
    for dirpath, dirnames, filenames in _folders(base or os.curdir, lambda d: dotted or not d.startswith(".")):
        rel = os.path.relpath(dirpath, base or os.curdir)
        above = [] if rel == os.curdir else rel.split(os.sep)
        found.extend(os.path.join(dirpath, name) if base else os.path.join(*above, name)
                     for name in dirnames + filenames if _matches([*above, name], pattern))
    return sorted(found)


def _matches(names: list[str], pattern: list[str]) -> bool:
    """Whether the path ``names`` matches the glob ``pattern`` component by component (``**``: any
    number of folders; a dot name only by a pattern that starts with a dot)."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return _matches(names, pattern[1:]) or (
            bool(names) and not names[0].startswith(".") and _matches(names[1:], pattern))
    return (bool(names) and fnmatch.fnmatchcase(names[0], pattern[0])
            and (pattern[0].startswith(".") or not names[0].startswith(".")) and _matches(names[1:], pattern[1:]))


#: A Croissant export written beside the data it describes (as mlcroissant wants a multi-file
#: dataset's): a folder registered again leaves it out, as it leaves out hidden files.
CROISSANT_SUFFIX = ".croissant.json"


def _regular_file(path: str) -> Path:
    """``path`` if it is (a symlink that ends at) a regular file; else an error that says what it
    is. Nothing is opened: reading a FIFO or a device would block or never end."""
    link = f" (a symlink to {os.readlink(path)})" if os.path.islink(path) else ""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(f"{path}: symlink loop: the link never reaches a file") from None
        if link and exc.errno == errno.ENOENT:
            raise SourceError(f"{path}: broken symlink{link}: its target does not exist") from None
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), f"of file type {stat.S_IFMT(mode):o}")
        raise SourceError(f"{path}: not a regular file: it is {kind}{link}; only regular files can be registered")
    return Path(path)


def _object_shards(specs: list[str]) -> list[FileShard]:
    from provenance.sources.urls import object_shards, relative_names

    objects, seen = [], set()
    for spec in specs:
        for found in object_shards(spec):
            same = (id(found[1]), found[2])  # an object is its path in its file system: `s3a://b/k` is `s3://b/k`
            if same not in seen:  # (it was two shards of one name, refused as duplicate documents)
                seen.add(same)
                objects.append(found)
    names = relative_names([path for _url, _fs, path, _size in objects])
    return [ObjectShard(url, name, file_format(path), fs, path, size)
            for (url, fs, path, size), name in zip(objects, names)]


#: What a folder that Hugging Face ``datasets`` wrote with ``save_to_disk`` is said to be: its
#: ``.arrow`` files and JSON bookkeeping were each an "unknown file type", with no word of the way in.
_HF_SAVED = ("; the folder is a Hugging Face dataset written by save_to_disk: register it from Python as "
             "ledger.register_dataset(NAME, datasets.load_from_disk(FOLDER)) (docs/hugging-face.md)")


def _saved_by_datasets(path: Path) -> bool:
    """Whether ``path`` is a file of a folder written by ``datasets``' ``save_to_disk`` (a
    ``Dataset``'s ``state.json`` beside its ``.arrow`` files, or a ``DatasetDict``'s
    ``dataset_dict.json``)."""
    return any((path.parent / name).is_file() for name in ("state.json", "dataset_dict.json"))


def _utf8_name(path: Path) -> None:
    """Refuse a file whose path is not UTF-8 (bytes a Latin-1 system wrote: Python holds them as
    surrogates): the ledger keeps shard names and paths as text, and could not name it."""
    if (shown := non_utf8(path)) is not None:
        raise SourceError(f"{shown}: the file's name is not valid UTF-8; rename it (the ledger keeps shard names "
                          "and paths as UTF-8 text)") from None


def _file_url(spec: str) -> str:
    """The local path a ``file://`` URL names (``file:///data/a%20b.jsonl`` is ``/data/a b.jsonl``);
    any other spec as it is (it was taken for a path and refused: no such file or folder)."""
    if not spec.startswith("file://"):
        return spec
    parts = urlsplit(spec)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise SourceError(f"{spec}: a file:// URL names a file of this machine, as file:///path/to/file "
                          "(a '#' or '?' in a name is written %23 or %3F)")
    return url2pathname(parts.path)


def _file_shards(specs: list[str]) -> list[FileShard]:
    from provenance.sources.urls import is_url

    specs = [_file_url(s) for s in specs]
    urls = [s for s in specs if is_url(s)]
    if urls:
        if len(urls) != len(specs):
            raise SourceError(f"{urls[0]}: local files and URLs cannot be registered together as one dataset's "
                              "shards; register them as two datasets (or copy the files to the same storage)")
        return _object_shards(urls)
    files: list[Path] = []
    for spec in specs:
        if any(ch in spec for ch in "*?[") and not os.path.lexists(spec):  # `[1].jsonl` that exists is a file
            everything = _glob(spec)
            matched = [m for m in everything if not os.path.isdir(m)]
            if not matched:
                folders = [m for m in everything if os.path.isdir(m)]  # not walked: said, so a folder is given as one
                raise SourceError(f"{spec}: pattern matched no files" + (
                    f" (only folders, which a pattern does not walk: {', '.join(folders[:3])}"
                    f"{', ...' if len(folders) > 3 else ''}; give the folder itself, or a pattern of its files "
                    f"such as {os.path.join(folders[0], '*.jsonl')})" if folders else ""))
            files.extend(_regular_file(m) for m in matched)
        elif os.path.isdir(spec):
            found = _walk(spec)
            if not found:
                raise SourceError(f"{spec}: folder holds no files")
            files.extend(sorted(_regular_file(f) for f in found))
        elif os.path.lexists(spec):
            files.append(_regular_file(spec))
        else:
            raise SourceError(f"{spec}: no such file or folder")
    real = [f.resolve() for f in files]
    chosen: dict[Path, Path] = {}  # one shard a file, named as itself rather than as a symlink to it
    for f, r in zip(files, real):
        if r not in chosen or (chosen[r].is_symlink() and not f.is_symlink()):
            chosen[r] = f
    unique = [f for f, r in zip(files, real) if chosen[r] is f]
    for f in unique:
        _utf8_name(f)
        if file_format(f) is None:
            raise _unknown_type(str(f), _HF_SAVED if _saved_by_datasets(f) else "")
    # names from the paths as given (a symlink keeps its own name; a link leading out of the folder
    # does not rename every other shard), made absolute without resolving links
    given = [Path(os.path.abspath(f)) for f in unique]
    root = given[0].parent if len(given) == 1 else Path(os.path.commonpath([str(g.parent) for g in given]))
    return [FileShard(f, g.relative_to(root).as_posix(), file_format(f)) for f, g in zip(unique, given)]
