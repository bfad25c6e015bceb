# Set-up and checks for provenance. `make demo` and `make test` work from a fresh clone:
# they create the virtual environment and install what they need.
#
# torch: the project asks for torch>=2.1, so a torch you already have (a CUDA build, say) is kept
# when you point VENV at your own environment (make test VENV=/path/to/env). In a new
# environment, TORCH is installed first; its default, torch==2.13.0, is the CPU build that pip
# finds on this project's machines. Elsewhere, to avoid the multi-gigabyte CUDA download, use
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.provenance-installed

.PHONY: demo test test-fast install lint docs docs-reference bench clean

demo: $(STAMP)
	$(BIN)/prov demo prov-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --progress-bar off -q $(TORCH)
	$(BIN)/python -m pip install --progress-bar off -q -e ".[test,bench]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/python -m pip install --progress-bar off -q ruff
	$(BIN)/ruff check .

docs-reference: $(STAMP)
	$(BIN)/python -m provenance.cli.reference > docs/cli.md
	$(BIN)/python -m provenance.schema_export

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/fingerprint.py

clean:
	rm -rf prov-demo site build *.egg-info
