"""A stop signal to the trainer's whole process group (Slurm, systemd, ``kill -TERM -- -PGID``)
saves the run: the trainer is started under its own session (``setsid``) and the signal goes
to the group with ``os.killpg``, so its DataLoader workers (and the forkserver they come from
when DALI is loaded) get it too. docs/guarantees.md, "A stop signal"."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdsa_fast import checkpoint
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from loader_helpers import require_dali

pytestmark = pytest.mark.slow  # every test here trains (a subprocess trainer, or several)

REPO = Path(__file__).resolve().parents[1]
SPEC = SyntheticSpec(num_classes=4, train_per_class=10, test_per_class=3, image_size=32, seed=5)
ARGS = ["--dataset", "cub", "--img-size", "32", "--stem", "standard", "--model", "resnet18", "--loss", "tdsa",
        "--epochs", "2", "--batch-size", "2", "--lr", "0.02", "--seed", "0", "--threads", "1",
        "--log-interval", "1", "--no-tensorboard"]
STEPS = 20
# the trainer run as a program that imports DALI first: the torch loader then forks its workers
# from a forkserver (tdsa_fast.data.torch_loader._worker_context), as it does when DALI is installed
WITH_DALI_LOADED = ("import sys, nvidia.dali; from tdsa_fast.train import main; sys.exit(main(sys.argv[1:]))",)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return ensure_default_dataset(SPEC, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _group_stop(argv: list[str], sig: signal.Signals, at_step: int = 3, steps: int = STEPS) -> tuple[int, str, str]:
    """Runs ``python argv`` in a new session and sends ``sig`` to its whole process group when
    it reports step ``at_step`` of ``steps`` in epoch 1; returns (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO, start_new_session=True)
    lines, sent, deadline = [], False, time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if not sent and line.startswith(f"epoch 1/2 step {at_step}/{steps} "):
                os.killpg(proc.pid, sig)  # the session leader's pid is the group's id
                sent = True
            assert time.monotonic() < deadline, "the trainer ran too long"
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert sent, "the progress line never came:\n" + "".join(lines) + stderr
    return proc.returncode, "".join(lines), stderr


def _assert_saved(rc: int, out: str, err: str, run: Path, sig: signal.Signals, steps: int = STEPS) -> None:
    assert rc == 0, out[-2000:] + err[-3000:]
    assert f"stopped ({sig.name})" in out, out[-2000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    progress = checkpoint.load(run / "last.pt")["progress"]
    assert progress["completed_epochs"] == 0 and 3 <= progress["batches_done"] < steps, progress


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_a_stop_signal_to_the_group_saves_a_torch_loader_run(start, sig, data_root, tmp_path):
    if start == "forkserver":
        require_dali()
    run = tmp_path / "run"
    args = ARGS + ["--loader", "torch", "--workers", "2", "--data-root", str(data_root), "--output", str(run)]
    program = ["-m", "tdsa_fast.train"] if start == "fork" else ["-c", *WITH_DALI_LOADED]
    _assert_saved(*_group_stop(program + args, sig), run, sig)


@pytest.mark.timeout(600)
def test_a_stop_signal_to_the_group_saves_a_dali_loader_run(data_root, tmp_path):
    require_dali()
    run = tmp_path / "run"
    args = ARGS + ["--loader", "dali", "--workers", "2", "--data-root", str(data_root), "--output", str(run)]
    _assert_saved(*_group_stop(["-m", "tdsa_fast.train"] + args, signal.SIGTERM), run, signal.SIGTERM)


@pytest.mark.timeout(900)
def test_a_stop_signal_to_the_group_saves_a_torchrun_run_of_two_processes(data_root, tmp_path):
    """torchrun's agent, both trainer processes and their DataLoader workers share the group:
    the processes agree on the stop step and rank 0 saves. The agent itself, by torchrun's own
    convention, re-raises the signal as ``SignalException`` and exits 1 after its workers have
    exited; it never had to kill one (no SIGKILL)."""
    run = tmp_path / "run"
    args = ARGS + ["--loader", "torch", "--workers", "1", "--data-root", str(data_root), "--output", str(run)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tdsa_fast.train"]
    rc, out, err = _group_stop(launcher + args, signal.SIGTERM, steps=STEPS // 2)
    assert rc == 1 and "SignalException" in err, (rc, err[-3000:])
    assert "x 2 processes" in out and "stopped (SIGTERM)" in out, out[-2000:]
    assert "SIGKILL" not in err and "killed by signal" not in err and "tdsa_fast" not in err, err[-3000:]
    progress = checkpoint.load(run / "last.pt")["progress"]
    assert progress["completed_epochs"] == 0 and 3 <= progress["batches_done"] < STEPS // 2, progress
