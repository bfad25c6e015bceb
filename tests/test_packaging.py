"""The wheel a user installs holds every module and data file of the package (pyproject.toml
lists the packages by hand, since four of them live in folders of other names): it left out
``provenance.server`` once, so that ``prov serve`` failed on an installed copy while the
editable checkout worked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where each folder of the repository lands in the installed package.
FOLDERS = {"provenance": "provenance", "kernels": "provenance/kernels", "cli": "provenance/cli",
           "schemas": "provenance/schemas"}


def _shipped() -> set[str]:
    """What the wheel must hold: every module and data file of the package's folders, at its
    installed path (caches, compiled kernels and the OpenLineage spec's checkout left out)."""
    want = set()
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT / folder)
            if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".nbi", ".nbc"):
                continue
            if folder == "provenance" and rel.parts[0] in FOLDERS.values():
                continue
            if folder == "schemas" and rel.as_posix() == "openapi.json":
                continue  # the committed copy of the document a server makes live: the repository's, never read installed
            if path.suffix in (".py", ".sql", ".json"):
                want.add(f"{installed}/{rel.as_posix()}")
    return want


def _setuptools_builds_it() -> bool:
    """Whether the setuptools at hand reads this pyproject.toml (its ``license = "Apache-2.0"``,
    an SPDX expression, needs setuptools 77)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    return int(version("setuptools").split(".")[0]) >= 77


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    """Build the wheel as pip does, then import the server and read the schema files from it
    alone (the checkout off the path)."""
    src = tmp_path / "src"  # a copy: a build in the checkout would leave build/, whose stale files the next wheel takes
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    out = tmp_path / "wheel"
    isolation = ["--no-build-isolation"] if _setuptools_builds_it() else []  # else pip fetches one from the index
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("provenance-*.whl")
    with zipfile.ZipFile(wheel) as z:
        held = set(z.namelist())
        z.extractall(tmp_path / "site")
    missing = sorted(_shipped() - held)
    assert not missing, f"the wheel leaves out {len(missing)} files: {missing[:10]}"
    assert "provenance/server/app.py" in held and "provenance/schemas/migrations/0001_initial.sql" in held
    probe = "import provenance, provenance.server.app, provenance.cli.main; print(provenance.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith(str(tmp_path / "site"))  # the wheel's copy, not the checkout
    init = subprocess.run([sys.executable, "-c", "from provenance import Ledger; import sys; Ledger.init(sys.argv[1])",
                           str(tmp_path / "ledger")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert init.returncode == 0, init.stderr  # the migrations read from the wheel's copy
