"""bench/gpu_reproduce.sh: the epoch choice, and its --dry-run (the calibration, the three runs
at once through the experiment runner with --loader memory, the summary and its JSON) on the CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_reproduce", REPO / "bench" / "gpu_reproduce.py")
gpu_reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_reproduce)


@pytest.mark.parametrize("budget,startup,per_epoch,cap,expected", [
    (500, 20, 1.5, 300, 300),     # 300 epochs fit
    (500, 20, 2.0, 300, 240),     # as many as fit
    (500, 20, 2.01, 300, 238),
    (10, 20, 2.0, 300, 1),        # never fewer than one
    (500, 0, 0.0, 300, 300),
])
def test_choose_epochs(budget, startup, per_epoch, cap, expected):
    assert gpu_reproduce.choose_epochs(budget, startup, per_epoch, cap) == expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHONPATH=str(REPO))
    p = subprocess.run(["bash", str(REPO / "bench" / "gpu_reproduce.sh"), "--dry-run"], capture_output=True,
                       text=True, env=env, timeout=880)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert summary["dry_run"] and summary["exit_code"] == 0 and summary["epochs"] == 1
    assert summary["calibration"]["per_epoch_s"] > 0
    paper = {"ce": 65.75, "mc": 79.54, "tdsa": 85.34}
    for loss, runs in summary["runs"].items():
        assert 0.0 <= runs["final_test_acc"] <= 1.0 and runs["epochs"] == 1
        assert runs["paper"] == paper[loss]
    assert sorted(summary["runs"]) == ["ce", "mc", "tdsa"]
    for loss in paper:  # every run trained from the memory loader
        cfg = json.loads((tmp_path / "out" / "reproduce" / "runs" / loss / "config.json").read_text())
        assert cfg["loader_used"] == "memory"
    assert "1 of the paper's 300 epochs" in p.stdout and "TDSA" in p.stdout, p.stdout
