"""bench/gpu_check.sh --dry-run on this (GPU-less) machine: the tool checks pass, every step's
command is printed with its timeout, the non-GPU steps (static report, the sanitizer's
workload on the CPU, the summary on a sample JSON) run and succeed, the GPU steps are
listed but not executed. Skipped, with the reason, where the CUDA toolkit is absent. The
static step reuses tests/test_cuda_static.py's compile cache (minutes when cold)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"


def _nvcc():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    p = Path(home) / "bin" / "nvcc"
    return str(p) if p.exists() else shutil.which("nvcc")


@pytest.mark.timeout(1200)
@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    if _nvcc() is None:
        pytest.skip("no nvcc: the dry run checks the CUDA toolkit first")
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_WORK=str(tmp_path.parent / "gpu_check_work"),
               PYTHON=sys.executable, PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "ops"], capture_output=True, text=True, env=env,
                          timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in ("tool checks", "static report", "sanitizer workload on the CPU", "sanitize: memcheck",
                 "sanitize: racecheck", "sanitize: synccheck", "sanitize: initcheck", "build", "CUDA tests",
                 "GPU benchmarks", "graph step on the CPU", "graph step captured", "prediction check", "summary"):
        assert f"=== {name}" in out, name
    assert out.count("(dry run: not executed)") == 10  # build, 3 test steps, benchmarks, graph step, 4 sanitizers
    # the GPU steps in their order: correctness, then speed, then the (slow) sanitizers
    order = [out.index(f"=== {name}") for name in ("build", "CUDA tests: tests/test_ops.py", "GPU benchmarks",
                                                     "sanitize: memcheck")]
    assert order == sorted(order)
    assert "graph check: PASS" in out  # bench/graph_check.py on the CPU, uncaptured
    assert "| `terms_kernel<bf16,true,true,SharedScratch,DenseGroup>`" in out  # the static table ran
    assert "tiny   torch.float32   contiguous" in out and " FAIL" not in out.split("=== summary")[0]
    assert "overall: PASS" in out
    assert (tmp_path / "summary.txt").exists()
    assert "prediction check: " in out and (tmp_path / "predicted_vs_measured.json").exists()
    # what the device tool sends back: at most 8 files, none in a folder; every log in the archive
    published = list(tmp_path.iterdir())
    assert len(published) <= 8 and all(p.is_file() for p in published), published
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as tar:
        assert "./graph_check_cpu.json" in tar.getnames()


def test_gpu_check_rejects_an_unknown_stage(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "nonsense"], capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.timeout(300)
def test_gpu_check_deadline_skips_steps_and_says_so(tmp_path):
    """Past GPU_CHECK_DEADLINE_S a step is skipped, not started: the run ends INCOMPLETE (exit 3),
    still with its summary and log archive in $OUT."""
    if _nvcc() is None:
        pytest.skip("no nvcc: the dry run checks the CUDA toolkit first")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "work"), GPU_CHECK_DEADLINE_S="10",
               PYTHON=sys.executable, PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "ops"], capture_output=True, text=True, env=env,
                          timeout=280)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 3, text[-3000:]
    assert "step 'static report (no GPU): bench/cuda_static.py' skipped" in text
    assert "overall: INCOMPLETE" in text
    assert {p.name for p in out.iterdir()} >= {"gpu_check_logs.tar.gz", "summary.txt"}
