#!/usr/bin/env bash
# One GPU window, one command: install facepriv from this checkout and run `facepriv bench gpu`.
#
# Runs on a bare GPU machine with no network: nothing is downloaded and no dependency is
# installed (--no-deps --no-index): the machine's own torch/CUDA build is used, which is the
# point of the check. Results (gpu.json, gpu.md) go to OUT_DIR as each section finishes; the
# real run's checkpoints go to a scratch folder so OUT_DIR stays small.
#
# Usage: .ci/gpu_window.sh OUT_DIR [PACK_DIR] [BUDGET_S] [more `facepriv bench gpu` options...]
#   PACK_DIR  an LFW-half pack from `facepriv data bundle` (optional: without it the real run is skipped)
#   BUDGET_S  hard time budget of the bench in seconds (default 480)
# CI checks this file with `bash -n` (tests/eval/test_bench_gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: .ci/gpu_window.sh OUT_DIR [PACK_DIR] [BUDGET_S]}
pack=${2:-}
budget=${3:-480}
shift $(( $# < 3 ? $# : 3 ))
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# wheels of dependencies the GPU image lacks (e.g. cryptography + cffi + pycparser for DCTDP's
# keystream), carried in .whl/ (fetch them with `pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl NAME==VERSION`)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps .whl/*.whl >/tmp/facepriv-wheels.log 2>&1 \
        || { tail -20 /tmp/facepriv-wheels.log; echo "gpu_window: installing .whl/ failed" >&2; exit 1; }
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/facepriv-install.log 2>&1 \
    || { tail -20 /tmp/facepriv-install.log; echo "gpu_window: installing facepriv failed" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
args=(bench gpu --out "$out" --budget-s "$budget" --work-dir "${TMPDIR:-/tmp}/facepriv-gpu-real")
if [ -n "$pack" ]; then
    args+=(--pack "$pack")
fi
exec facepriv "${args[@]}" "$@"
