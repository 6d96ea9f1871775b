"""bench/gpu_predict.py: the predicted GPU time's inputs agree with the benchmark's shapes and
traffic floor, and --compare flags a measured time slower than the model."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_floor_is_the_benchmarks_traffic_floor():
    gp, bo = _load("gpu_predict"), _load("bench_ops")
    x = bo.make_inputs(2, "cpu", __import__("torch").bfloat16)
    small = 2 * gp.S * gp.CNUM_MIDDLE * 4 + 2 * 2 * 2 * gp.S * 4  # the mask twice, g / h and their gradients
    assert sum(gp.kernel_bytes(k, 2) for k in ("tdsa_fwd", "tdsa_bwd")) - small == bo.traffic_floor(x)
    row = gp.predict("tdsa_terms", "fwdbwd", 64)
    assert abs(row["floor_ms"] - bo.traffic_floor(bo.make_inputs(1, "cpu", __import__("torch").bfloat16)) * 64
               / 4.3e12 * 1e3) < 1e-3
    assert row["floor_ms"] <= row["best_ms"] <= row["worst_ms"]


def test_compare_flags_a_time_slower_than_the_model(tmp_path):
    gp = _load("gpu_predict")
    worst = gp.predict("tdsa_terms", "fwdbwd", 64, dict(gp.H200, bandwidth=4.0e12))["worst_ms"]
    for factor, rc in ((1.2, 0), (2.0, 1)):
        measured = {"card": "test", "copy_GBps": 4000.0,
                    "rows": [{"case": "tdsa_terms", "batch": 64, "fused_fwdbwd_ms": factor * worst}]}
        path = tmp_path / "m.json"
        path.write_text(json.dumps(measured))
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_predict.py"), "--compare", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == rc, proc.stdout + proc.stderr
        assert ("SLOWER THAN THE MODEL" in proc.stdout) == (rc == 1)


def test_compare_uses_the_kernels_alone_when_measured():
    """bench_ops.py's profiler times of the project's kernels, when the JSON has them, are what
    the model is compared with (the whole call holds dispatch and launches the model leaves out)."""
    gp = _load("gpu_predict")
    worst = gp.predict("tdsa_terms", "fwdbwd", 64, dict(gp.H200, bandwidth=4.0e12))["worst_ms"]
    row = {"case": "tdsa_terms", "batch": 64, "fused_fwdbwd_ms": 5 * worst, "fused_fwdbwd_kernels_ms": 1.1 * worst}
    rows, ok = gp.compare({"copy_GBps": 4000.0, "rows": [row]}, tolerance=1.5)
    assert ok and rows[0]["measured"] == "kernels" and rows[0]["measured_ms"] == row["fused_fwdbwd_kernels_ms"]
    rows, ok = gp.compare({"copy_GBps": 4000.0, "rows": [dict(row, fused_fwdbwd_kernels_ms=None)]}, tolerance=1.5)
    assert not ok and rows[0]["measured"] == "call"


def test_kernel_times_are_none_without_cuda_kernels():
    """bench_ops.kernel_ms reads the profiler's CUDA kernel rows; a run that launched none (the
    CPU here) gives None rather than zeros that would read as infinitely fast kernels."""
    import torch

    bo = _load("bench_ops")
    assert bo.kernel_ms(lambda: (torch.ones(8),), lambda t: t + 1, "cpu", iters=2) is None
