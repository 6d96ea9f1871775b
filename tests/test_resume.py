"""Exact resume: a real SIGTERM or SIGINT stops a training subprocess mid-epoch with a
checkpoint, ``--resume`` continues it, and the final weights equal an uninterrupted run's,
bitwise on the CPU with ``--deterministic``. Also ``--max-steps`` stops, and what a resume refuses."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast.data.decode import dali_available
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

pytestmark = pytest.mark.slow  # every test here trains (a subprocess trainer, or several)

REPO = Path(__file__).resolve().parents[1]
# 4 classes x 10 training images, batch 5: 8 steps an epoch, 3 epochs (the lr drops after
# epochs 1 and 2, so the scheduler's state matters on resume).
SPEC = SyntheticSpec(num_classes=4, train_per_class=10, test_per_class=5, image_size=64, seed=3)
ARGS = ["--dataset", "cub", "--img-size", "64", "--stem", "standard", "--model", "resnet18", "--loss", "tdsa",
        "--epochs", "3", "--batch-size", "5", "--lr", "0.02", "--workers", "0", "--seed", "7", "--threads", "1",
        "--deterministic", "--log-interval", "1", "--no-tensorboard"]
STEPS = 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return ensure_default_dataset(SPEC, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "tdsa_fast.train", *args], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """The reference runs, one per loader, without interruption."""
    cache = {}

    def get(loader):
        if loader not in cache:
            out = tmp_path_factory.mktemp(f"full-{loader}")
            _train(*ARGS, "--loader", loader, "--data-root", str(data_root), "--output", str(out / "run"))
            cache[loader] = out / "run"
        return cache[loader]
    return get


def _interrupt(args, sig, at_epoch: int, at_step: int) -> subprocess.CompletedProcess:
    """Starts the trainer and sends ``sig`` when it reports step ``at_step`` of epoch ``at_epoch``."""
    proc = subprocess.Popen([sys.executable, "-m", "tdsa_fast.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    lines = []
    deadline = time.monotonic() + 600
    sent = False
    for line in proc.stdout:
        lines.append(line)
        if not sent and line.startswith(f"epoch {at_epoch}/3 step {at_step}/{STEPS} "):
            proc.send_signal(sig)
            sent = True
        assert time.monotonic() < deadline, "the trainer ran too long"
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert sent, "the progress line never came:\n" + "".join(lines) + stderr
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), stderr)


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def _optimizer_tensors(state: dict) -> dict:
    return {f"{i}.{name}": v for i, s in state["state"].items() for name, v in s.items()}


# DALI's case fails rather than skips in CI (CI=true), which installs it
_NO_DALI = pytest.mark.skipif(not dali_available() and not os.environ.get("CI"),
                              reason="NVIDIA DALI is not installed (the dali extra)")


@pytest.mark.timeout(900)  # a trainer that hangs fails the test instead of blocking the suite
@pytest.mark.parametrize("sig, loader", [(signal.SIGTERM, "torch"), (signal.SIGINT, "torch"),
                                         pytest.param(signal.SIGTERM, "dali", marks=_NO_DALI)])
def test_signal_mid_epoch_then_resume_equals_an_uninterrupted_run(sig, loader, data_root, uninterrupted, tmp_path):
    out = tmp_path / "run"
    args = ARGS + ["--loader", loader, "--data-root", str(data_root), "--output", str(out)]
    p = _interrupt(args, sig, at_epoch=2, at_step=3)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"stopped ({signal.Signals(sig).name})" in p.stdout, p.stdout[-2000:]
    assert "Traceback" not in p.stderr, p.stderr
    ckpt = checkpoint.load(out / "last.pt")
    progress = ckpt["progress"]
    # stopped inside epoch 2 (the signal lands while a step runs: that step finishes first)
    assert progress["completed_epochs"] == 1 and 3 <= progress["batches_done"] < STEPS, progress
    assert progress["global_step"] == STEPS + progress["batches_done"]
    assert not list(out.glob(".*.tmp")), "temporary checkpoint files left behind"

    r = _train("--resume", str(out))
    assert f"resuming at epoch 2 batch {progress['batches_done']}" in r.stdout, r.stdout[-2000:]
    full = uninterrupted(loader)
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(full / "last.pt")
    _assert_same_state(a["model"], b["model"], "model")
    _assert_same_state(_optimizer_tensors(a["optimizer"]), _optimizer_tensors(b["optimizer"]), "optimizer")
    assert a["scheduler"] == b["scheduler"]
    rows_a = list(csv.DictReader(open(out / "metrics.csv")))
    rows_b = list(csv.DictReader(open(full / "metrics.csv")))
    assert [r["epoch"] for r in rows_a] == ["1", "2", "3"]
    for ra, rb in zip(rows_a, rows_b):  # the interrupted epoch's sums were carried over
        for key in ("lr", "train_loss", "train_ce", "train_acc", "test_acc"):
            assert ra[key] == rb[key], (key, ra, rb)


def test_max_steps_stops_with_a_checkpoint_and_resume_continues(data_root, tmp_path):
    out = tmp_path / "run"
    base = ARGS + ["--loader", "torch", "--data-root", str(data_root), "--output", str(out)]
    p = _train(*base, "--epochs", "2", "--max-steps", "5")
    assert "stopped (--max-steps 5) at epoch 1 after batch 5" in p.stdout, p.stdout[-2000:]
    assert f"--resume {out} --max-steps N (a larger N, or 0 for none)" in p.stdout, p.stdout[-2000:]
    assert not (out / "results.json").exists()
    # the config is kept: a different lr is refused, before any training
    p = _train("--resume", str(out), "--lr", "0.5", check=False)
    assert p.returncode == 2 and "--lr 0.5 conflicts with the resumed run's saved value 0.02" in p.stderr, p.stderr
    p = _train("--resume", str(out), "--config", str(out / "config.yaml"), check=False)
    assert p.returncode == 2 and "--config and --resume conflict" in p.stderr, p.stderr
    p = _train("--resume", str(out), "--output", str(tmp_path / "elsewhere"), check=False)
    assert p.returncode == 2 and "continues in its own folder" in p.stderr, p.stderr
    p = _train("--resume", str(out), "--log-interval", "0", check=False)  # an override is range-checked too
    assert p.returncode == 2 and "--log-interval must be >= 1, got 0" in p.stderr, p.stderr
    # another process count is refused: shards, global batch and position depend on it
    other = tmp_path / "copy"
    shutil.copytree(out, other)
    ckpt = checkpoint.load(other / "last.pt")
    ckpt["config"]["world_size"] = 2
    checkpoint.save_atomic(ckpt, other / "last.pt")
    p = _train("--resume", str(other), check=False)
    assert p.returncode == 2 and "trained by 2 process(es) and this is 1" in p.stderr, p.stderr
    # --max-steps may change: 0 lifts the limit
    p = _train("--resume", str(out), "--max-steps", "0")
    assert "resuming at epoch 1 batch 5" in p.stdout and (out / "results.json").is_file()
    assert checkpoint.load(out / "last.pt")["progress"]["global_step"] == 2 * STEPS
    p = _train("--resume", str(out), check=False)
    assert p.returncode == 2 and "nothing to resume" in p.stderr, p.stderr


def test_resume_refuses_a_checkpoint_with_a_pickled_object(tmp_path):
    evil = tmp_path / "last.pt"
    torch.save({"model": {}, "config": {"epochs": 3}, "payload": _Pickled()}, evil)
    p = _train("--resume", str(tmp_path), check=False)
    assert p.returncode == 2 and "not a tdsa_fast checkpoint that loads safely" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


class _Pickled:
    pass


def test_resume_refuses_a_checkpoint_of_another_class_count(data_root, tmp_path):
    out = tmp_path / "run"
    _train(*ARGS, "--loader", "torch", "--data-root", str(data_root), "--output", str(out), "--max-steps", "1")
    other = ensure_default_dataset(SyntheticSpec(num_classes=3, train_per_class=4, test_per_class=2, image_size=64,
                                                 seed=3), cache_dir=tmp_path / "cache3", verbose=False)
    ckpt = checkpoint.load(out / "last.pt")
    ckpt["config"]["data_root"] = str(other)
    checkpoint.save_atomic(ckpt, out / "last.pt")
    p = _train("--resume", str(out), check=False)
    assert p.returncode == 2 and "the data now has 3 classes, but the resumed run was trained on 4" in p.stderr, \
        p.stderr


def test_resume_refuses_weights_of_another_model(data_root, tmp_path):
    """A checkpoint whose weights do not fit its config (a file put together by hand)."""
    out = tmp_path / "run"
    _train(*ARGS, "--loader", "torch", "--data-root", str(data_root), "--output", str(out), "--max-steps", "1")
    ckpt = checkpoint.load(out / "last.pt")
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("layer4")}
    checkpoint.save_atomic(ckpt, out / "last.pt")
    p = _train("--resume", str(out), check=False)
    assert p.returncode == 2 and "the checkpoint's model does not fit the resnet18" in p.stderr, p.stderr
