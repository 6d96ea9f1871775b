#!/usr/bin/env bash
# GPU check of the tdsa_fast kernels on a bare CUDA machine (its own torch, e.g. 2.11 with
# Python 3.12; no internet, no DALI). Usage, from anywhere:
#
#   bash bench/gpu_check.sh [--dry-run] [ops|all|data|train|graph]
#
#   --dry-run  (ops / all) on any machine, without a GPU: checks the tools, prints every
#         step's command with its timeout, and executes the steps that need no GPU (the
#         tool checks, the static report bench/cuda_static.py, the sanitizer workload on the
#         CPU at the tiny shape, the prediction check and the summary on a sample JSON),
#         so the script's own bugs show before GPU time is spent. tests/test_gpu_check.py runs it.
#
#   ops   (default) build with `pip install --no-build-isolation --no-deps .` for the visible
#         card's architecture, run the CUDA tests (tests/test_ops.py -k cuda, tests/test_build.py
#         without the CMake build), then the GPU benchmarks (bf16, B=32 and 64: fused and eager
#         for every case and phase, torch.compile(reference) for the tdsa_loss fwd+bwd only, to
#         stay within the stage's 5-minute budget) and print a short table: the card, the
#         ratios, the peak memory of the loss, and tdsa_terms' achieved GB/s against the
#         memory-traffic floor (docs/kernels.md) (read F_l and F_h twice, write dF_l and dF_h once)
#         over a measured device-to-device copy bandwidth; then the prediction check
#         (bench/gpu_predict.py --compare: the kernels' profiler times against the static
#         model, a report).
#   all   ops, then the full benchmark table (torch.compile(reference) for every case / phase).
#   data  no build: the data pipeline's GPU throughput on the Flowers-102 training split
#         (224 px, batch 32, $DATA_WORKERS workers, default 8): the released code's recipe
#         (PIL + torchvision transforms in a DataLoader, batches copied to the GPU) against our
#         PyTorch fallback with PIL workers and with torchvision.io.decode_jpeg on the GPU
#         (DALI is not installable on the bare GPU machine). It reads $DATA_ROOT, default
#         .gpu_data/flowers102, made here with `python bench/make_gpu_data.py` and carried
#         (device tool: carry [".gpu_data"]). Also runs tests/test_loader_cuda.py (the loader on the GPU: placement, dtype,
#         nvJPEG decode against the CPU path) and the CPU loader tests.
#   train no build when the installed tdsa_fast already has the CUDA kernels (else the ops
#         stage's build): runs tests/test_train_cuda.py (fp16 + GradScaler, bf16 channels_last,
#         compile, nvJPEG decode, resume on CUDA), then
#         bench/bench_train.py --mode e2e: end-to-end training img/s on the Flowers-102 training
#         split ($DATA_ROOT as for data), TDSA loss, VGG16 and ResNet18 at 224 px, batch 32 and 64:
#         the released code's recipe (PIL DataLoader, float32, eager reference loss) against ours
#         (decode_jpeg on the GPU, bf16 autocast, channels_last, fused loss), $DATA_WORKERS
#         workers (default 8); prints the card and the ratios, JSON in $OUT/bench_train_cuda.json.
#   graph no data; no build when the installed tdsa_fast has the CUDA kernels (else the ops
#         stage's build): bench/graph_check.py, --cuda-graph's captured step against the plain
#         step on the same random batches (ResNet18, 224 px, batch 32, CE / MC / TDSA, fp32 and
#         bf16 channels_last, an lr change midway that recaptures): the largest weight difference,
#         the loss sums and the step times; JSON in $OUT/graph_check*.json. The train stage runs it
#         too, and the dry run runs it on the CPU (uncaptured, tiny).
#
# Logs and JSON are written to $GPU_CHECK_WORK (default: ${TMPDIR:-/tmp}/tdsa_gpu_check_work_<stage>); after
# every step, $OUT (default: ${TMPDIR:-/tmp}/tdsa_gpu_check) receives what the device tool sends
# back (at most 8 files, so): gpu_check_logs.tar.gz (every log) and the key results (summary.txt,
# the benchmark and prediction JSON, build_info.json). The steps share a deadline,
# $GPU_CHECK_DEADLINE_S seconds after the start (default 450, inside the device call's 480): a
# step gets what is left, one with less than 15 s left is skipped and said so (overall:
# INCOMPLETE, exit 3), and the summary still runs.
set -uo pipefail
export PYTHONUNBUFFERED=1  # logs as they happen, also from a step killed at its timeout

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY_RUN=1
  shift
fi
STAGE="${1:-ops}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-${TMPDIR:-/tmp}/tdsa_gpu_check}"
WORK="${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/tdsa_gpu_check_work_$STAGE}"
mkdir -p "$OUT" "$WORK"
PY="${PYTHON:-python3}"
START_S=$(date +%s)
DEADLINE_S="${GPU_CHECK_DEADLINE_S:-$([ "$DRY_RUN" -eq 1 ] && echo 3600 || echo 450)}"  # the dry run: no GPU call
KEY_RESULTS=(summary.txt bench_cuda_bf16.json predicted_vs_measured.json build_info.json bench_data_cuda.json
             bench_train_cuda.json graph_check.json graph_check_bf16.json)

# $WORK's logs as one archive and the key results, copied to $OUT (at most 8 files in all).
publish() {
  tar -czf "$OUT/gpu_check_logs.tar.gz.tmp" -C "$WORK" . 2>/dev/null && mv -f "$OUT/gpu_check_logs.tar.gz.tmp" "$OUT/gpu_check_logs.tar.gz"
  local f n=1
  for f in "${KEY_RESULTS[@]}"; do
    if [ -f "$WORK/$f" ] && [ $n -lt 8 ]; then cp -f "$WORK/$f" "$OUT/$f"; n=$((n + 1)); fi
  done
}
trap publish EXIT

# Seconds left before the deadline, and a step's timeout: its own, or what is left if less.
seconds_left() { echo $(( DEADLINE_S - ($(date +%s) - START_S) )); }
step_timeout() { local left; left=$(seconds_left); echo $(( $1 < left - 5 ? $1 : left - 5 )); }

has_cuda_kernels() {
  (cd "$WORK" && "$PY" -c "import sys; from tdsa_fast import _ops; sys.exit(0 if 'CUDA' in _ops.build_info().get('kernels', []) else 1)") 2>/dev/null
}

# Builds and installs the extension for the visible card only (halves the CUDA compile);
# CUDA_HOME as setup.py defaults. Fails unless the installed tdsa_fast has the CUDA kernels.
build_extension() {
  # the visible card's architecture only (an inherited list could name ones nvcc 13 refuses, or
  # many, each a compile); TDSA_ARCH_LIST overrides
  TORCH_CUDA_ARCH_LIST="${TDSA_ARCH_LIST:-$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")}"
  export TORCH_CUDA_ARCH_LIST
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
  fi
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  echo; echo "=== build: pip install --no-build-isolation --no-deps . (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, CUDA_HOME=${CUDA_HOME:-auto}) ($(date +%T))"
  local start rc
  start=$(date +%s)
  (cd "$REPO" && timeout 300 "$PY" -m pip install --no-build-isolation --no-deps . ) >"$WORK/build.log" 2>&1
  rc=$?
  echo "build rc=$rc in $(( $(date +%s) - start )) s (log: $WORK/build.log)"
  tail -n 3 "$WORK/build.log"
  if [ $rc -ne 0 ]; then
    grep -n -i -E "error|fatal" "$WORK/build.log" | head -n 40
    return 1
  fi
  (cd "$WORK" && "$PY" -c "from tdsa_fast import _ops; import json; print(json.dumps(_ops.build_info()))") | tee "$WORK/build_info.json"
  if ! has_cuda_kernels; then
    echo "the build has no CUDA kernels (see build_info above and $WORK/build.log)" >&2
    return 1
  fi
}

# --cuda-graph's captured step against the plain one (fp32, then bf16 channels_last), from $WORK.
graph_check() {
  local rc=0
  echo "=== --cuda-graph: captured vs plain step, fp32 ($(date +%T))"
  timeout --kill-after=10 240 "$PY" "$REPO/bench/graph_check.py" --device cuda --json "$WORK/graph_check.json" \
    2>&1 | tee "$WORK/graph_check.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  echo "=== --cuda-graph: captured vs plain step, bf16 channels_last ($(date +%T))"
  timeout --kill-after=10 240 "$PY" "$REPO/bench/graph_check.py" --device cuda --bf16 --channels-last \
    --json "$WORK/graph_check_bf16.json" 2>&1 | tee "$WORK/graph_check_bf16.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  return $rc
}

# The data and train stages: a visible GPU and the carried Flowers-102 copy ($DATA_ROOT).
require_gpu_and_data() {
  DATA_ROOT="${DATA_ROOT:-$REPO/.gpu_data/flowers102}"
  "$PY" -c "import sys, torch; print('torch', torch.__version__, '| card:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'); sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device visible" >&2; exit 1; }
  if [ ! -f "$DATA_ROOT/setid.mat" ]; then
    echo "no Flowers-102 copy at $DATA_ROOT: run 'python bench/make_gpu_data.py' and carry .gpu_data" >&2
    exit 1
  fi
}

case "$STAGE" in
  data)
    require_gpu_and_data
    fail=0
    echo "=== loader tests on CUDA ($(date +%T))"
    (cd "$REPO" && PYTHONPATH="$REPO" "$PY" -m pytest tests/test_loader_cuda.py tests/test_torch_loader.py tests/test_sharding.py -q -p no:cacheprovider -rs \
      2>&1 | tee "$WORK/test_loaders.log" | tail -n 8; exit "${PIPESTATUS[0]}") || fail=1
    echo "=== data pipeline throughput on CUDA ($(date +%T))"
    PYTHONPATH="$REPO" "$PY" "$REPO/bench/bench_data.py" --device cuda --workers "${DATA_WORKERS:-8}" --rounds 3 \
      --data-root "$DATA_ROOT" --loaders released torch torch-device --json "$WORK/bench_data_cuda.json" \
      2>&1 | tee "$WORK/bench_data_cuda.log" || fail=1
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
    echo "results in $OUT; overall: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
    exit $fail
    ;;
  graph)
    "$PY" -c "import sys, torch; print('torch', torch.__version__, '| card:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'); sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device visible" >&2; exit 1; }
    has_cuda_kernels || build_extension || { echo "no CUDA kernels in the installed tdsa_fast; overall: FAIL" >&2; exit 1; }
    cd "$WORK"
    fail=0
    graph_check || fail=1
    echo "results in $OUT; overall: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
    exit $fail
    ;;
  train)
    require_gpu_and_data
    fail=0
    if has_cuda_kernels; then
      echo "=== the installed tdsa_fast has the CUDA kernels (e.g. from the ops stage): no build"
    else
      build_extension || { echo "no CUDA kernels in the installed tdsa_fast: the fused path cannot run; overall: FAIL" >&2; exit 1; }
    fi
    # Run from $WORK so that `import tdsa_fast` is the installed package (with its CUDA kernels).
    cd "$WORK"
    echo "=== CUDA training tests: tests/test_train_cuda.py ($(date +%T))"
    "$PY" -m pytest "$REPO/tests/test_train_cuda.py" -q -p no:cacheprovider -rs 2>&1 | tee "$WORK/test_train_cuda.log" | tail -n 8
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
    # End-to-end training img/s with data: the released code's recipe (PIL DataLoader, fp32, eager
    # reference loss) against ours (nvJPEG decode, bf16 autocast, channels_last, fused loss);
    # VGG16 and ResNet18 at 224 px, batch 32 and 64; 2 interleaved windows of 20 steps per
    # path after 5 warm-up steps (loader start-up not timed).
    graph_check || fail=1
    echo "=== end-to-end training throughput on CUDA ($(date +%T))"
    "$PY" "$REPO/bench/bench_train.py" --mode e2e --device cuda --models vgg16 resnet18 --batches 32 64 \
      --img-size 224 --workers "${DATA_WORKERS:-8}" --warmup 5 --steps 20 --rounds 2 --data-root "$DATA_ROOT" \
      --json "$WORK/bench_train_cuda.json" 2>&1 | tee "$WORK/bench_train_cuda.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
    echo "results in $OUT; overall: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"
    exit $fail
    ;;
  ops | all) ;;
  *)
    echo "usage: $0 [ops|all|data|train|graph]" >&2
    exit 2
    ;;
esac

fail=0
skipped=0
step() { echo; echo "=== $* ($(date +%T))"; }

# run_step NAME SECONDS gpu|cpu LOG CMD...: prints the command; runs it under `timeout` (its
# SECONDS, or what is left before the deadline if less), its output also in $WORK/LOG ("-":
# none), then publishes; except GPU steps in a dry run. With less than 15 s left the step is
# skipped and counted. A failure marks the run FAIL and the script goes on with the next step.
run_step() {
  local name="$1" secs="$2" kind="$3" logf="$4"
  shift 4
  local t
  t=$(step_timeout "$secs")
  step "$name [timeout ${t}s, $kind]"
  echo "+ $*"
  if [ "$DRY_RUN" -eq 1 ] && [ "$kind" = gpu ]; then
    echo "(dry run: not executed)"
    return 0
  fi
  if [ "$t" -lt 15 ]; then
    echo "step '$name' skipped: $(seconds_left) s left before the script's deadline (GPU_CHECK_DEADLINE_S=$DEADLINE_S)" >&2
    skipped=$((skipped + 1))
    return 0
  fi
  local rc
  if [ "$logf" = - ]; then
    timeout --kill-after=10 "$t" "$@"
    rc=$?
  else
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$WORK/$logf" | tail -n 30
    rc=${PIPESTATUS[0]}
  fi
  if { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && [ "$t" -lt "$secs" ]; then
    echo "step '$name' cut at the script's deadline after ${t} s (its own timeout: ${secs} s): counted as skipped" >&2
    skipped=$((skipped + 1))
  elif [ $rc -ne 0 ]; then
    echo "step '$name' failed (rc $rc$([ $rc -eq 124 ] && echo ', timed out'))" >&2
    fail=1
  fi
  publish
  return $rc
}

# Up-front checks (clear messages before any GPU time is spent): python with torch, pytest,
# ninja (else a slow serial build), nvcc of torch's CUDA major version (cpp_extension
# refuses a mismatch), compute-sanitizer (optional: the sanitize step is skipped without it).
step "tool checks"
"$PY" -c "import torch" 2>/dev/null || { echo "python '$PY' has no torch" >&2; exit 1; }
"$PY" -m pytest --version >/dev/null 2>&1 || { echo "pytest missing: $PY -m pip install pytest" >&2; exit 1; }
"$PY" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || { echo "ninja missing (the build would be serial): $PY -m pip install ninja" >&2; exit 1; }
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
[ -x "$NVCC" ] || NVCC="$(command -v nvcc || true)"
[ -n "$NVCC" ] || { echo "no nvcc: set CUDA_HOME to the CUDA toolkit" >&2; exit 1; }
NVCC_MAJOR="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
TORCH_MAJOR="$("$PY" -c "import torch; print((torch.version.cuda or '').split('.')[0])")"
echo "nvcc $NVCC (CUDA $NVCC_MAJOR), torch built for CUDA $TORCH_MAJOR"
[ -n "$TORCH_MAJOR" ] || { echo "torch is not a CUDA build" >&2; exit 1; }
[ "$NVCC_MAJOR" = "$TORCH_MAJOR" ] || { echo "nvcc is CUDA $NVCC_MAJOR but torch is built for CUDA $TORCH_MAJOR: cpp_extension refuses to build" >&2; exit 1; }
SANITIZER="$(dirname "$NVCC")/compute-sanitizer"
[ -x "$SANITIZER" ] || SANITIZER="$(command -v compute-sanitizer || true)"
echo "compute-sanitizer: ${SANITIZER:-none (the sanitize step is skipped)}"

# memcheck and initcheck without torch's caching allocator (PYTORCH_NO_CUDA_MEMORY_CACHING=1):
# inside its pooled segments an out-of-bounds access of a kernel would go unseen. memcheck runs
# every shape; the slower tools the tiny and 448 px ones (between them every scratch plan: copied,
# streamed, global), fastest first.
sanitize_steps() {
  run_step "sanitize: memcheck (tiny, paper and 448 px shapes, B=1)" 60 gpu sanitize_memcheck.log \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZER:-compute-sanitizer}" --tool memcheck --error-exitcode 1 \
    "$PY" "$REPO/bench/gpu_sanitize.py" --shapes tiny paper 448 --batch 1
  run_step "sanitize: synccheck (tiny and 448 px shapes, B=1)" 60 gpu sanitize_synccheck.log \
    "${SANITIZER:-compute-sanitizer}" --tool synccheck --error-exitcode 1 "$PY" "$REPO/bench/gpu_sanitize.py" \
    --shapes tiny 448 --batch 1
  run_step "sanitize: racecheck (tiny and 448 px shapes, B=1)" 60 gpu sanitize_racecheck.log \
    "${SANITIZER:-compute-sanitizer}" --tool racecheck --error-exitcode 1 "$PY" "$REPO/bench/gpu_sanitize.py" \
    --shapes tiny 448 --batch 1
  run_step "sanitize: initcheck (tiny and 448 px shapes, B=1)" 60 gpu sanitize_initcheck.log \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZER:-compute-sanitizer}" --tool initcheck --error-exitcode 1 \
    "$PY" "$REPO/bench/gpu_sanitize.py" --shapes tiny 448 --batch 1
}
# The GPU steps after the build, in the order that gets the most evidence first: the
# correctness tests, the benchmark (then, below, its check against the model), and last the
# sanitizers (the slowest).
gpu_steps() {
  run_step "CUDA tests: tests/test_ops.py -k cuda" 150 gpu test_ops_cuda.log \
    "$PY" -m pytest "$REPO/tests/test_ops.py" -k cuda -q -p no:cacheprovider -rs --junitxml="$WORK/test_ops_cuda.xml"
  run_step "CUDA tests: tests/test_build.py -m 'not slow'" 60 gpu test_build.log \
    "$PY" -m pytest "$REPO/tests/test_build.py" -m "not slow" -q -p no:cacheprovider -rs
  run_step "CUDA tests: the loaders on the GPU (tests/test_loader_cuda.py)" 90 gpu test_loader_cuda.log \
    "$PY" -m pytest "$REPO/tests/test_loader_cuda.py" -q -p no:cacheprovider -rs
  run_step "GPU benchmarks (bf16, B=32 and 64)" 240 gpu bench_cuda_bf16.log \
    "$PY" "$REPO/bench/bench_ops.py" --table --device cuda --dtype bf16 --batch 32 64 --rounds 7 \
    --compiled-cases tdsa_loss --compiled-phases fwdbwd --json "$WORK/bench_cuda_bf16.json"
  if [ "$STAGE" = "all" ]; then
    run_step "full GPU benchmark table (torch.compile(reference) for every case and phase)" 600 gpu \
      bench_cuda_bf16_full.log "$PY" "$REPO/bench/bench_ops.py" --table --device cuda --dtype bf16 --batch 32 64 \
      --rounds 7 --json "$WORK/bench_cuda_bf16_full.json"
  fi
}

if [ "$DRY_RUN" -eq 1 ]; then
  run_step "static report (no GPU): bench/cuda_static.py" 900 cpu - "$PY" "$REPO/bench/cuda_static.py" --arch 90 --dtype bf16 --table
  run_step "sanitizer workload on the CPU (tiny, 448 px)" 300 cpu - env PYTHONPATH="$REPO" "$PY" "$REPO/bench/gpu_sanitize.py" --device cpu --shapes tiny 448
  run_step "build" 300 gpu - "$PY" -m pip install --no-build-isolation --no-deps "$REPO"
  gpu_steps
  run_step "graph step on the CPU (uncaptured, tiny): bench/graph_check.py" 600 cpu - env PYTHONPATH="$REPO" "$PY" "$REPO/bench/graph_check.py" --device cpu --tiny --json "$WORK/graph_check_cpu.json"
  run_step "graph step captured (graph stage)" 240 gpu - "$PY" "$REPO/bench/graph_check.py" --device cuda --json "$WORK/graph_check.json"
  SUMMARY_JSON="$REPO/tests/fixtures/gpu_check/bench_sample.json"
  run_step "prediction check (on the sample JSON, report only)" 60 cpu - "$PY" "$REPO/bench/gpu_predict.py" --compare "$SUMMARY_JSON" --report-only --json "$WORK/predicted_vs_measured.json"
  sanitize_steps
else
step "environment"
"$PY" - <<'EOF' | tee "$WORK/env.txt"
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("card:", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability())
EOF
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible: nothing to check" >&2
  exit 1
fi

build_extension || exit 1
publish
# Run from $WORK so that `import tdsa_fast` is the installed package (with its _C), not the
# source tree.
cd "$WORK"
gpu_steps
SUMMARY_JSON="$WORK/bench_cuda_bf16.json"
# The measured fused times against bench/gpu_predict.py's model (bench/RESULTS.md, "Predicted"):
# the project's kernels alone (bench_ops.py's profiler times) where recorded, else the whole call
# (dispatch and launches, which the model leaves out). A report, not a gate, until the model has
# met a GPU once.
if [ -f "$SUMMARY_JSON" ]; then
  run_step "prediction check (report only): bench/gpu_predict.py --compare" 60 cpu prediction_check.log \
    "$PY" "$REPO/bench/gpu_predict.py" --compare "$SUMMARY_JSON" --report-only --json "$WORK/predicted_vs_measured.json"
fi
if [ -n "$SANITIZER" ]; then
  sanitize_steps
fi
fi

step "summary"
if [ -f "$SUMMARY_JSON" ]; then
"$PY" - "$SUMMARY_JSON" <<'EOF' | tee "$WORK/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"card: {r['card']} | torch {r['torch']} | dtype {r['dtype']} | copy bandwidth {r['copy_GBps']:.0f} GB/s")
print("times: one call of each op between two CUDA events (its dispatch and every launch included); kernels: "
      "the project's kernels alone (profiler); GB/s: the traffic floor over the call's time")
print(f"{'case':<11} {'B':>3} {'fused fwd+bwd ms':>17} {'kernels ms':>11} {'eager':>9} {'vs eager':>9} {'vs compiled':>12} {'GB/s':>7} {'% copy':>7} {'peak MB fused/eager':>20}")
for row in r["rows"]:
    ve = f"x{row['fwdbwd_vs_eager']:.2f}" if "fwdbwd_vs_eager" in row else "-"
    vc = f"x{row['fwdbwd_vs_compiled']:.2f}" if "fwdbwd_vs_compiled" in row else "-"
    gb = f"{row['fused_fwdbwd_GBps']:.0f}" if "fused_fwdbwd_GBps" in row else "-"
    pc = f"{100 * row['fraction_of_copy_bw']:.0f}%" if "fraction_of_copy_bw" in row else "-"
    peak = f"{row['fused_peak_bytes'] / 2**20:.0f}/{row['eager_peak_bytes'] / 2**20:.0f}"
    km = f"{row['fused_fwdbwd_kernels_ms']:.3f}" if row.get("fused_fwdbwd_kernels_ms") else "-"
    print(f"{row['case']:<11} {row['batch']:>3} {row['fused_fwdbwd_ms']:>17.3f} {km:>11} {row['eager_fwdbwd_ms']:>9.3f} {ve:>9} {vc:>12} {gb:>7} {pc:>7} {peak:>20}")
EOF
else
  echo "no benchmark JSON ($SUMMARY_JSON): the benchmark step failed or was skipped" | tee "$WORK/summary.txt"
  fail=1
fi
echo
if [ $fail -ne 0 ]; then
  verdict=FAIL; rc=1
elif [ $skipped -ne 0 ]; then
  verdict="INCOMPLETE ($skipped steps skipped at the deadline)"; rc=3
else
  verdict=PASS; rc=0
fi
echo "results in $OUT (every log: $OUT/gpu_check_logs.tar.gz); overall: $verdict"
exit $rc
