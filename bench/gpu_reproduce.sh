#!/usr/bin/env bash
# The paper's Flowers-102 ResNet18 column (Table III: CE 65.75, MC-Loss 79.54, TDSA 85.34) in one
# prepared GPU run: the three trainings at once on the one card with the paper's recipe and
# --loader memory, as many of the 300 epochs as fit (bench/gpu_reproduce.py says how many).
#
#   bash bench/gpu_reproduce.sh [--build|--no-build] [--budget-s S] [--data-root DIR]
#   bash bench/gpu_reproduce.sh --dry-run        # a few steps, 32 px, generated images, CPU (CI)
#
# Needs .gpu_data/flowers102 (python bench/make_gpu_data.py here; device tool: carry [".gpu_data"]).
# The CUDA kernels are built for the visible card (pip install --no-build-isolation --no-deps .;
# a minute or two, taken from the budget) unless the installed tdsa_fast already has them (e.g.
# from bench/gpu_check.sh on the same machine); --build builds in any case, --no-build never (the
# losses then run on their PyTorch reference where no kernels import; printed below).  Results: $OUT
# (default /tmp/tdsa_gpu_reproduce): reproduce.json, logs.tar.gz and build.log, three files (the
# device tool sends back at most 8); the run folders, cache and checkpoints in a folder under $TMPDIR.
set -uo pipefail
export PYTHONUNBUFFERED=1  # progress and logs as they happen, also from a run cut off at the call's limit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export OUT="${OUT:-/tmp/tdsa_gpu_reproduce}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
BUDGET=500
ARGS=()
BUILD=auto
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=1 ;;
    --no-build) BUILD=0 ;;
    --dry-run) DRY=1; ARGS+=("$1") ;;
    --budget-s) BUDGET="$2"; shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

if [ $DRY -eq 0 ]; then
  "$PY" -c "import sys, torch; print('torch', torch.__version__, '| card:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'); sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device visible (use --dry-run for the CPU check)" >&2; exit 1; }
  if [ "$BUILD" = auto ]; then
    # the installed package, not the source tree that PYTHONPATH names
    if (cd "$OUT" && env -u PYTHONPATH "$PY" -c "import sys; from tdsa_fast import _ops; sys.exit(0 if 'CUDA' in _ops.build_info().get('kernels', []) else 1)") 2>/dev/null; then
      BUILD=0
      unset PYTHONPATH
      echo "the installed tdsa_fast has the CUDA kernels: no build"
    else
      BUILD=1
    fi
  fi
  if [ "$BUILD" = 1 ]; then
    echo "building the CUDA kernels for the visible card ($OUT/build.log)"
    TORCH_CUDA_ARCH_LIST="${TDSA_ARCH_LIST:-$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")}" \
      MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip install --no-build-isolation --no-deps "$REPO" >"$OUT/build.log" 2>&1 \
      || { echo "build failed: $OUT/build.log" >&2; tail -n 20 "$OUT/build.log" >&2; exit 1; }
    unset PYTHONPATH  # from here on the installed package, with its kernels (run from $OUT, not the repo)
  fi
fi
(cd "$OUT" && "$PY" -c "from tdsa_fast import _ops; print('kernels:', _ops.build_info())" 2>&1 | tail -n 1) \
  || echo "kernels: none importable; the losses run on their PyTorch reference"
LEFT=$(( BUDGET - ($(date +%s) - START) ))
cd "$OUT" && exec "$PY" "$REPO/bench/gpu_reproduce.py" --out "$OUT" --budget-s "$LEFT" "${ARGS[@]}"
