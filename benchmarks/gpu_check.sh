#!/usr/bin/env bash
# The GPU checks in one short run (see the tool library's device/METHOD.md): where a CUDA GPU is
# present, run the kernel tests on it, ledger.merge(device="cuda"), the kernel benchmark and the
# MinHash / merge figures, each step under its own time limit, and print the tables last.
# Usage: bash benchmarks/gpu_check.sh [PYTHON]  (default: .venv/bin/python, else python3)
# Logs and JSON go to $OUT (default /tmp/gpu_check). On a bare GPU host (torch and Triton only), the
# project's other dependencies are installed from wheels in .whl/ where that folder exists; make it
# (33 MB, git-ignored through .git/info/exclude) for the host's Python 3.12 with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     duckdb datasketch pydantic pydantic_core annotated-types typing-inspection zstandard orjson \
#     license-expression boolean.py        (pin each to the version .venv has: pip freeze)
# and carry it: run(command="bash benchmarks/gpu_check.sh python3", carry=[".whl"]). Ray's wheel is
# larger than a device call carries (64 MiB): `bash benchmarks/ray_carry.sh` adds a stripped Ray
# (an xz archive of 24 MB, unpacked here into /tmp/site) and the wheels Ray needs that the host
# lacks to .whl/ (56 MB in all), so that the Ray GPU actor step runs; without it, it is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1 && ! "$PY" -c "import duckdb" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ls .whl/ray-*-stripped.tar.xz > /dev/null 2>&1 && ! "$PY" -c "import ray" 2>/dev/null; then
    mkdir -p /tmp/site && tar -xJf .whl/ray-*-stripped.tar.xz -C /tmp/site \
        && case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}";; esac
fi
if ! "$PY" -c "import provenance.kernels" 2>/dev/null; then
    # Not installed here: lay the package out as it installs (pyproject's package-dir) and put it on the path.
    rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r provenance /tmp/pkg/provenance
    for d in kernels cli schemas; do rm -rf "/tmp/pkg/provenance/$d" && cp -r "$d" "/tmp/pkg/provenance/$d"; done
    export PYTHONPATH="/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU here: nothing to check (the CPU suite covers the torch paths and the Triton interpreter)"
    exit 0
fi
unset TRITON_INTERPRET
: > "$OUT/summary.txt"
step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $OUT/NAME.log, note rc and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
"$PY" -c "import torch, triton; print('GPU', torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__)" \
    | tee -a "$OUT/summary.txt"
step kernel_tests 150 "$PY" -P -m pytest -q -p no:cacheprovider --noconftest -k "Gpu or gpu or GPU or cuda" \
    tests/test_merge_kernels.py tests/test_patch_kernels.py tests/test_minhash_gpu.py tests/test_merge_patches.py
# ledger.merge(device="cuda") and its receipt re-run on the GPU (needs the whole stack: duckdb etc.)
step merge_tests 60 "$PY" -P -m pytest -q -p no:cacheprovider tests/test_merges.py -k "device or cuda"
step kernels 100 "$PY" benchmarks/kernels.py --device cuda --elements $((1 << 26)) --json "$OUT/kernels-gpu.json"
step figures 200 "$PY" benchmarks/gpu_figures.py --json "$OUT/gpu-figures.json"
# Ray actors with a GPU each (issue 14), last: where Ray is installed or carried (benchmarks/ray_carry.sh).
if "$PY" -c "import ray, duckdb" 2>/dev/null; then
    # From /tmp: Ray puts the driver's folder first on its workers' path, where provenance/ lacks
    # its kernels (laid out in /tmp/pkg above); seen in a rehearsal with Python 3.12 and the carry.
    step ray_gpu 120 bash -c 'cd /tmp && exec "$@"' _ "$PY" "$PWD/benchmarks/scaleout.py" --size-mb 200 --shards 8 \
        --workers 4 --num-gpus 0.25
else
    echo "Ray not installed here: the Ray GPU actor row stays pending" | tee -a "$OUT/summary.txt"
fi

echo; echo "== failures =="
grep -h -E "^(FAILED|ERROR)|Error:|error:" "$OUT"/kernel_tests.log "$OUT"/merge_tests.log | head -30
echo; echo "== test summaries =="
for t in kernel_tests merge_tests; do echo "$t: $(tail -n 1 "$OUT/$t.log")"; done
[ -f "$OUT/ray_gpu.log" ] && tail -n 6 "$OUT/ray_gpu.log"
echo; echo "== kernels =="; grep -A 200 "copy ceiling" "$OUT/kernels.log" | tail -n +2 | grep "^|\|^NVIDIA\|^$" | tail -40
tail -n 5 "$OUT/kernels.log" | grep -v "^|" || true
echo; echo "== MinHash, TIES thresholds, kernel sweep, ledger.merge =="; grep -E "^\||^NVIDIA|^ledger|^TIES|^The merge|Error" "$OUT/figures.log" | tail -70
echo; cat "$OUT/summary.txt"
