#!/usr/bin/env bash
# The test tiers under another torch (by default the GPU machine's: torch 2.11.0, torchvision
# 0.26.0, Python 3.12, no DALI), on a CPU machine, so that a version difference shows here and
# not in the GPU time. Needs a package index that has that torch (pypi.org); not part of CI.
#
#   bash bench/torch_compat.sh [--slow] [TORCH [TORCHVISION [PYTHON]]]
#
# Makes a virtual environment in $WORK (default /tmp/tdsa_torch_compat), clones HEAD there,
# builds the extension (CPU and CUDA kernels, CUDA_HOME=/usr/local/cuda), runs the fast tier
# (--slow: the slow tier too) and the dry runs of bench/gpu_check.sh and bench/gpu_reproduce.sh.
set -euo pipefail

SLOW=0
if [ "${1:-}" = "--slow" ]; then SLOW=1; shift; fi
TORCH="${1:-2.11.0}"
VISION="${2:-0.26.0}"
PYTHON_BIN="${3:-python3.12}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${WORK:-/tmp/tdsa_torch_compat}"
VENV="$WORK/venv-torch$TORCH"
CLONE="$WORK/clone"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

command -v "$PYTHON_BIN" >/dev/null || { echo "no $PYTHON_BIN on the PATH" >&2; exit 1; }
mkdir -p "$WORK"
# the tests find the real data at ../shared beside the repository root: beside the clone too
if [ -d "$REPO/../shared" ] && [ ! -e "$WORK/shared" ]; then ln -s "$(cd "$REPO/../shared" && pwd)" "$WORK/shared"; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON_BIN" -m venv "$VENV"
  # the GPU machine's packages that the tests use (DALI is not among them); pytorch-metric-learning
  # without its dependencies, which would pull another torch
  "$VENV/bin/pip" install -q "torch==$TORCH" "torchvision==$VISION" numpy scipy Pillow PyYAML ninja pybind11 \
    "setuptools>=64" wheel pytest pytest-benchmark pytest-timeout matplotlib tensorboard onnx onnxscript \
    onnxruntime cmake scikit-learn tqdm
  "$VENV/bin/pip" install -q --no-deps "pytorch-metric-learning>=2.9,<3"
fi
PY="$VENV/bin/python"
rm -rf "$CLONE"
git clone -q "$REPO" "$CLONE"
cd "$CLONE"
echo "=== $("$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__)') at $(git log --oneline -1)"
"$VENV/bin/pip" install -q --no-build-isolation --no-deps -e . >"$WORK/build.log" 2>&1 \
  || { tail -n 30 "$WORK/build.log" >&2; exit 1; }
"$PY" -c "from tdsa_fast import _ops; print('built:', _ops.build_info()['kernels'], 'with torch', _ops.build_info()['built_with_torch'])"
fail=0
"$PY" -m pytest -q -p no:cacheprovider 2>&1 | tail -n 3 || fail=1
if [ $SLOW -eq 1 ]; then
  "$PY" -m pytest -q -p no:cacheprovider -m slow 2>&1 | tail -n 3 || fail=1
fi
PYTHON="$PY" OUT="$WORK/gpu_check" bash bench/gpu_check.sh --dry-run >"$WORK/gpu_check.log" 2>&1 || fail=1
tail -n 1 "$WORK/gpu_check.log"
PYTHON="$PY" OUT="$WORK/gpu_reproduce" bash bench/gpu_reproduce.sh --dry-run >"$WORK/gpu_reproduce.log" 2>&1 || fail=1
tail -n 1 "$WORK/gpu_reproduce.log"
echo "torch $TORCH: $([ $fail -eq 0 ] && echo PASS || echo FAIL) (logs in $WORK)"
exit $fail
