#!/usr/bin/env bash
# Ray for the GPU host, small enough to carry: a device call carries 64 MiB in all, and Ray's
# wheel alone is 79 MB. This puts in .whl/ (git-ignored, beside the wheels gpu_check.sh installs):
#   ray-VERSION-stripped.tar.xz  Ray's Python 3.12 wheel unpacked, without the parts Ray Data and
#                                the actors never load (Java jars, RLlib, Tune, Serve, Train, LLM,
#                                the dashboard's web client), packed with xz: about 24 MB;
#   the wheels of jsonschema and its own needs, which Ray needs and the GPU host lacks (its other
#   needs are there: the device library's KINDS.md lists the host's packages).
# gpu_check.sh unpacks the archive into its /tmp/site when Ray is not importable there, so the
# Ray GPU actor step (benchmarks/scaleout.py --num-gpus) runs. Same Ray version as .venv's.
# Usage: bash benchmarks/ray_carry.sh [PYTHON]  (default .venv/bin/python: the pins come from it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
RAY=$(version ray)
mkdir -p .whl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
download -d "$work" "ray==$RAY"
download -d .whl "jsonschema==$(version jsonschema)" "jsonschema-specifications==$(version jsonschema-specifications)" \
    "referencing==$(version referencing)" "rpds-py==$(version rpds-py)"
unzip -q "$work"/ray-"$RAY"-*.whl -d "$work/unpacked"
rm -rf "$work"/unpacked/ray/{jars,rllib,llm,tune,serve,train} "$work/unpacked/ray/dashboard/client"
rm -f .whl/ray-*-stripped.tar.xz
tar -C "$work/unpacked" -cf - . | xz -9 -T0 > ".whl/ray-$RAY-stripped.tar.xz.tmp"
mv ".whl/ray-$RAY-stripped.tar.xz.tmp" ".whl/ray-$RAY-stripped.tar.xz"
du -sh .whl ".whl/ray-$RAY-stripped.tar.xz"
