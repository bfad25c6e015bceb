#!/usr/bin/env bash
# The GPU checks in one short run (see the tool library's device/METHOD.md): where a CUDA GPU is
# present, run the kernel tests at full size on it, then the kernel benchmark, and print its
# table last. Usage: bash benchmarks/gpu_check.sh [PYTHON]  (default: .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-/tmp}"
if ! "$PY" -c "import provenance.kernels" 2>/dev/null; then
    # Not installed here (a bare GPU host has torch and Triton only): lay the package out as it
    # installs (kernels/ is provenance.kernels) and put it on the path. provenance.kernels needs
    # nothing but torch and Triton; tests that need more of the stack skip or fail visibly.
    rm -rf "$OUT/pkg" && mkdir -p "$OUT/pkg" && cp -r provenance "$OUT/pkg/provenance"
    rm -rf "$OUT/pkg/provenance/kernels" && cp -r kernels "$OUT/pkg/provenance/kernels"
    export PYTHONPATH="$OUT/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU here: nothing to check (the CPU suite covers the torch paths and the Triton interpreter)"
    exit 0
fi
"$PY" -c "import torch, triton; print('GPU', torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__)"
unset TRITON_INTERPRET
"$PY" -m pytest -q -p no:cacheprovider --noconftest -k "Gpu or gpu or GPU or cuda" \
    tests/test_merge_kernels.py tests/test_patch_kernels.py tests/test_minhash_gpu.py tests/test_merge_patches.py 2>&1 | tail -15 || true
# ledger.merge(device="cuda") and its receipt re-run on the GPU (needs the whole stack: duckdb etc.)
"$PY" -m pytest -q -p no:cacheprovider tests/test_merges.py -k "device or cuda" 2>&1 | tail -5 || true
# Ray actors with a GPU each (issue 14): only where Ray is installed (not on a bare GPU host).
if "$PY" -c "import ray, duckdb" 2>/dev/null; then
    "$PY" benchmarks/scaleout.py --size-mb 200 --shards 8 --workers 4 --num-gpus 0.25 2>&1 | tail -5 || true
else
    echo "Ray or DuckDB not installed here: the Ray GPU actor row stays pending"
fi
"$PY" benchmarks/kernels.py --device cuda --elements $((1 << 26)) --json "$OUT/kernels-gpu.json" | tail -25
