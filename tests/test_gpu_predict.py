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
