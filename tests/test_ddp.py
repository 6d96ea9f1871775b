"""Distributed training on the CPU: ``torchrun`` starts 2 gloo processes, and the weights after
an epoch equal those of one process that accumulates the gradients of the same per-rank
micro-batches, in the same order, with the same masks (seeded by step and rank) and no
augmentation; and a 2-process run stopped mid-epoch resumes to the uninterrupted one. The epoch ends with a padded batch (27 images over 2 ranks), so the loss
weighting of the padding is checked too. BatchNorm statistics stay per micro-batch (the
running buffers are not compared: DDP broadcasts rank 0's)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.sharding import step_seed
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.evaluate import evaluate_checkpoint
from tdsa_fast.train import (TrainingModule, build_loaders, build_network, build_objective, build_optimizer,
                             load_splits)

REPO = Path(__file__).resolve().parents[1]
SPEC = SyntheticSpec(num_classes=3, train_per_class=9, test_per_class=5, image_size=64, seed=5)
WORLD = 2
ARGS = ["--dataset", "cub", "--img-size", "64", "--stem", "standard", "--model", "resnet18", "--loss", "tdsa",
        "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--workers", "0", "--loader", "torch",
        "--augment", "none", "--seed", "11", "--device", "cpu", "--threads", "1", "--no-tensorboard"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return ensure_default_dataset(SPEC, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _accumulated_reference(cfg: dict, *, weights=None) -> dict:
    """One process: per step, the ranks' micro-batches in rank order, each loss weighted by its
    share of the step's real samples (``weights(step, ns)`` overrides that), then one SGD step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # as each rank: the same kernels, the same rounding
    try:
        return _accumulate(cfg, weights)
    finally:
        torch.set_num_threads(threads)


def _accumulate(cfg: dict, weights) -> dict:
    torch.manual_seed(cfg.seed)
    train_set, test_set = load_splits(cfg)
    model = build_network(cfg, train_set.num_classes)
    objective = build_objective(cfg, train_set.num_classes)
    optimizer, _ = build_optimizer(cfg, model, objective)
    net = TrainingModule(model, objective).train()
    loaders = [build_loaders(cfg, train_set, test_set, torch.device("cpu"), rank, WORLD)[0] for rank in range(WORLD)]
    generator = torch.Generator()
    try:
        for loader in loaders:
            loader.set_epoch(1)
        for step, batches in enumerate(zip(*loaders), 1):
            ns = [b.num_real for b in batches]
            optimizer.zero_grad(set_to_none=True)
            for rank, (batch, n) in enumerate(zip(batches, ns)):
                generator.manual_seed(step_seed(cfg.seed, step, rank))
                loss, _, _ = net(batch.images[:n], batch.labels[:n], generator)
                w = n / sum(ns) if weights is None else weights(step, ns)[rank]
                (loss * w).backward()
            optimizer.step()
    finally:
        for loader in loaders:
            loader.close()
    return {k: v.detach() for k, v in model.named_parameters()}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                        "-m", "tdsa_fast.train", *args], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def ddp_run(data_root, tmp_path_factory):
    """An uninterrupted 2-process run: (its folder, its stdout)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, _torchrun(*ARGS, "--data-root", str(data_root), "--output", str(out)).stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_gloo_processes_equal_one_process_accumulating_their_micro_batches(data_root, ddp_run):
    out, stdout = ddp_run
    assert f"x {WORLD} processes" in stdout, stdout[-2000:]
    # rank 0 alone logs and writes
    assert stdout.count("final test accuracy") == 1, stdout[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == WORLD
    # evaluation over the shards counts every test image once (15 over 2 ranks: one padded)
    assert results["evaluated_images"] == SPEC.num_classes * SPEC.test_per_class

    ddp = checkpoint.load(out / "last.pt")["model"]
    cfg = resolve(build_parser().parse_args(ARGS + ["--data-root", str(data_root)]))
    reference = _accumulated_reference(cfg)
    diffs = {k: (ddp[k] - v).abs().max().item() for k, v in reference.items()}
    worst = max(diffs, key=diffs.get)
    tol = 1e-5
    assert diffs[worst] < tol, f"{worst}: DDP and accumulation differ by {diffs[worst]:.3g}"

    # the tolerance tells apart a wrong weighting of the last (padded) step: equal weights there
    steps = 4  # 27 images -> 14 per rank -> batches of 4, 4, 4, 2 (rank 1's last holds 1 real image)
    wrong = _accumulated_reference(cfg, weights=lambda step, ns: [0.5] * WORLD if step == steps
                                   else [n / sum(ns) for n in ns])
    wrong_diff = max((ddp[k] - v).abs().max().item() for k, v in wrong.items())
    print(f"DDP vs accumulation: {diffs[worst]:.3g} ({worst}); with a wrong last-step weighting: {wrong_diff:.3g}")
    assert wrong_diff > 10 * tol, f"a wrong weighting differs by only {wrong_diff:.3g}"

    # every process evaluated the model rank 0 saved (rank 0's BatchNorm statistics are copied
    # to all before the evaluation): one process evaluating last.pt counts the same
    assert evaluate_checkpoint(out / "last.pt")["accuracy"] == pytest.approx(results["final_test_acc"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_stopped_mid_epoch_resume_to_the_same_run(data_root, ddp_run, tmp_path):
    """Stopped after 2 of the epoch's 4 steps and resumed by 2 processes: the same weights and
    the same epoch metrics as the uninterrupted run (the running sums of both processes are in
    rank 0's checkpoint)."""
    whole, _ = ddp_run
    out = tmp_path / "run"
    p = _torchrun(*ARGS, "--data-root", str(data_root), "--output", str(out), "--max-steps", "2")
    assert "stopped (--max-steps 2) at epoch 1 after batch 2" in p.stdout, p.stdout[-2000:]
    _torchrun("--resume", str(out), "--max-steps", "0")
    a, b = checkpoint.load(whole / "last.pt")["model"], checkpoint.load(out / "last.pt")["model"]
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-6, f"resumed weights differ by {worst:.3g}"
    rows_a = list(csv.DictReader((whole / "metrics.csv").open()))
    rows_b = list(csv.DictReader((out / "metrics.csv").open()))
    for field in ("train_loss", "train_ce", "train_acc", "test_acc"):
        assert float(rows_b[0][field]) == pytest.approx(float(rows_a[0][field]), rel=1e-5, abs=1e-7), field
