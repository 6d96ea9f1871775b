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
])
def test_choose_epochs(budget, startup, per_epoch, cap, expected):
    assert gpu_reproduce.choose_epochs(budget, startup, per_epoch, cap) == expected


@pytest.mark.parametrize("per_epoch", [0.0, -1.0, float("nan")])
def test_choose_epochs_refuses_a_calibration_that_timed_nothing(per_epoch):
    """Epoch lines that reached the log only at exit (a buffered trainer) time 0 s an epoch:
    that must fail, not choose all 300 epochs."""
    with pytest.raises(ValueError, match="per epoch"):
        gpu_reproduce.choose_epochs(500, 20, per_epoch, 300)


def _write_run(folder, rows, results=None):
    folder.mkdir(parents=True)
    lines = ["epoch,lr,train_loss,images_per_s,test_acc"]
    lines += [f"{e},0.1,1.0,{speed},{acc}" for e, speed, acc in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))


def test_read_run_finished_and_stopped_at_the_budget(tmp_path):
    done = dict(final_test_acc=0.8, best_test_acc=0.85, best_epoch=3, epochs=4, test_images=100, train_seconds=9.0)
    _write_run(tmp_path / "done", [(1, 90, 0.5), (2, 100, 0.7), (3, 110, 0.85), (4, 100, 0.8)], done)
    r = gpu_reproduce.read_run(tmp_path / "done")
    assert not r["partial"] and r["final_test_acc"] == 0.8 and r["img_per_s_median"] == 100
    # stopped: no results.json; the tested epochs of metrics.csv (nan: not evaluated that epoch)
    _write_run(tmp_path / "stopped", [(1, 90, "nan"), (2, 100, 0.6), (3, 120, "nan"), (4, 130, 0.55)])
    r = gpu_reproduce.read_run(tmp_path / "stopped")
    assert r["partial"] and r["final_test_acc"] == 0.55 and r["best_test_acc"] == 0.6 and r["best_epoch"] == 2
    assert r["epochs"] == 4 and r["img_per_s_median"] == 120
    _write_run(tmp_path / "untested", [(1, 90, "nan")])
    with pytest.raises(FileNotFoundError, match="no tested epoch"):
        gpu_reproduce.read_run(tmp_path / "untested")


def test_pack_logs_keeps_logs_not_checkpoints(tmp_path):
    import tarfile

    work, out = tmp_path / "work", tmp_path / "out"
    _write_run(work / "reproduce" / "runs" / "ce", [(1, 90, 0.5)])
    (work / "reproduce" / "runs" / "ce" / "train.log").write_text("epoch 1/1 done in 1.0s\n")
    (work / "reproduce" / "runs" / "ce" / "last.pt").write_bytes(b"0" * 1000)
    (work / "memory_cache").mkdir()
    (work / "memory_cache" / "memory-x.pt").write_bytes(b"0" * 1000)
    out.mkdir()
    with tarfile.open(gpu_reproduce.pack_logs(work, out)) as tar:
        names = sorted(tar.getnames())
    assert names == ["reproduce/runs/ce/metrics.csv", "reproduce/runs/ce/train.log"]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHONPATH=str(REPO))
    p = subprocess.run(["bash", str(REPO / "bench" / "gpu_reproduce.sh"), "--dry-run", "--work", str(tmp_path / "work")],
                       capture_output=True,
                       text=True, env=env, timeout=880)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    # what comes back from the device: a few files at the top of $OUT (the tool sends at most 8)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["logs.tar.gz", "reproduce.json"]
    assert summary["dry_run"] and summary["exit_code"] == 0 and summary["epochs"] == 1
    assert not summary["stopped_at_budget"]
    assert summary["calibration"]["per_epoch_s"] > 0
    paper = {"ce": 65.75, "mc": 79.54, "tdsa": 85.34}
    for loss, runs in summary["runs"].items():
        assert 0.0 <= runs["final_test_acc"] <= 1.0 and runs["epochs"] == 1
        assert runs["paper"] == paper[loss]
    assert sorted(summary["runs"]) == ["ce", "mc", "tdsa"]
    for loss in paper:  # every run trained from the memory loader
        assert summary["work"] == str(tmp_path / "work")
        cfg = json.loads((Path(summary["work"]) / "reproduce" / "runs" / loss / "config.json").read_text())
        assert cfg["loader_used"] == "memory"
    assert "1 of the paper's 300 epochs" in p.stdout and "TDSA" in p.stdout, p.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runs_past_the_budget_are_stopped_and_reported(tmp_path):
    """run_grid's deadline: the runner gets SIGTERM, its trainers stop with a checkpoint, and
    a run that had not finished is read from its metrics.csv (partial), the others as usual."""
    data = gpu_reproduce.make_dry_data(tmp_path / "data")
    base = gpu_reproduce.recipe(data, tmp_path / "cache", dry_run=True)
    spec = gpu_reproduce.write_spec(tmp_path / "reproduce", dict(base, epochs=400, eval_every=1))
    lines = []
    rc, wall, seen = gpu_reproduce.run_grid(spec, deadline_s=20, log=lambda *a, **k: lines.append(" ".join(a)))
    assert rc != 0 and wall < 120 and any("past the budget" in line for line in lines)
    runs = {loss: gpu_reproduce.read_run(spec.parent / "runs" / loss) for loss in gpu_reproduce.LOSSES}
    assert all(r["partial"] and 1 <= r["epochs"] < 400 for r in runs.values()), runs
    assert all(len(seen[loss]) == runs[loss]["epochs"] for loss in runs), (seen, runs)
    assert "interrupted" in (spec.parent / "runner.log").read_text()
