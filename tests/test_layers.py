"""The import contracts of ``[tool.importlinter]`` in pyproject.toml hold, and would catch a
wrong-way import.

kernels/ and cli/ are top-level folders installed as ``provenance.kernels`` and
``provenance.cli``; import-linter reads a package from one folder, so the test assembles the
package as it is installed (a copy) and runs ``lint-imports`` on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ reads pyproject.toml
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"


def _assemble(into: Path) -> Path:
    package = into / "provenance"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "provenance", package, ignore=skip)
    shutil.copytree(ROOT / "kernels", package / "kernels", ignore=skip)
    shutil.copytree(ROOT / "cli", package / "cli", ignore=skip)
    return package


def _lint(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (it is in the test extra)")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(lint), str(CONFIG), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_module_is_named_by_the_contracts(tmp_path):
    package = _assemble(tmp_path)
    modules = {p.stem if p.suffix == ".py" else p.name for p in package.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    contracts = {c["name"]: c for c in tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]}
    kernels = {m.removeprefix("provenance.") for m in contracts["The kernels import nothing of provenance but "
                                                                 "its errors"]["forbidden_modules"]}
    assert kernels | {"kernels", "errors"} == modules
    cli = {m.removeprefix("provenance.") for m in contracts["Nothing imports the CLI"]["source_modules"]}
    assert cli | {"cli"} == modules
    duck = {m.removeprefix("provenance.") for m in contracts["Only the ledger imports duckdb"]["source_modules"]}
    assert duck | {"ledger"} == modules
    layers = next(c for n, c in contracts.items() if n.startswith("The layers"))["layers"]
    layered = [m.strip().removeprefix("provenance.") for layer in layers for m in layer.replace(":", "|").split("|")]
    assert sorted(layered) == sorted(modules)  # each module in exactly one layer


def test_import_contracts_hold(tmp_path):
    _assemble(tmp_path)
    done = _lint(tmp_path)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout + done.stderr


def test_a_wrong_way_import_breaks_a_contract(tmp_path):
    package = _assemble(tmp_path)
    records = package / "records.py"
    records.write_text(records.read_text() + "\nimport provenance.cli.render  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode != 0 and "Nothing imports the CLI BROKEN" in done.stdout, done.stdout


def test_an_upward_import_between_domain_layers_breaks_the_layers(tmp_path):
    """The gateway importing a domain module (the cycle this layout removed) is caught."""
    package = _assemble(tmp_path)
    versions = package / "versions" / "__init__.py"
    versions.write_text(versions.read_text() + "\nimport provenance.lineage  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode != 0 and "provenance.versions is not allowed to import provenance.lineage" in done.stdout, \
        done.stdout


def test_the_kernels_folder_does_not_shadow_the_kernels_package_from_the_repository_s_folder():
    """A Python started in the repository's folder found `kernels/` by the plain name `kernels`,
    Hugging Face's package, which transformers and peft import: `import peft` failed there."""
    import importlib.metadata

    root = Path(__file__).resolve().parent.parent
    code = "import kernels, provenance.kernels.minhash as m; print(kernels.__file__); print(m.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert done.returncode != 0 and "No module named 'kernels'" in done.stderr  # as the plain import would
        return
    assert done.returncode == 0, done.stderr
    real, ours = done.stdout.split()
    assert Path(real).parent.parent != root and Path(ours) == root / "kernels" / "minhash.py"
