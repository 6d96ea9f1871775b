"""Trained runs and hand-made checkpoints for the predict / evaluate / export tests."""
from __future__ import annotations

from pathlib import Path

import torch

from tdsa_fast import checkpoint
from tdsa_fast.config import RunFacts, build_parser, resolve, saved_record
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.runs import build_network, build_objective
from tdsa_fast.train import run

# 4 classes of 8 train / 6 test images at 40 px: a run of a few seconds on a CPU
SPEC = SyntheticSpec(num_classes=4, train_per_class=8, test_per_class=6, image_size=40, seed=3)


def tiny_data(cache: Path) -> Path:
    return ensure_default_dataset(SPEC, cache_dir=cache, verbose=False)


def train_tiny(root: Path, out: Path, *extra: str) -> dict:
    """A 2-epoch ResNet18 + TDSA run (32 px) on ``root`` (cub layout) into ``out``."""
    argv = ["--dataset", "cub", "--data-root", str(root), "--model", "resnet18", "--img-size", "32", "--epochs", "2",
            "--batch-size", "8", "--lr", "0.02", "--workers", "0", "--loader", "torch", "--log-interval", "1000",
            "--no-tensorboard", "--output", str(out), *extra]
    return run(resolve(build_parser().parse_args(argv)), log=lambda *_: None)


def make_checkpoint(path: Path, *, model: str, loss: str = "tdsa", img_size: int = 32, num_classes: int = 3,
                    seed: int = 0, drop=(), **config) -> Path:
    """A checkpoint in the trainer's layout, of an untrained (seeded) network: the BatchNorm
    statistics are set from a few random batches so that eval-mode outputs are not flat.
    ``config``: raw entries put over the saved config; ``drop``: entries (``config.KEY``) left out."""
    argv = ["--dataset", "cub", "--data-root", str(path.parent), "--model", model, "--loss", loss,
            "--img-size", str(img_size)]
    cfg = resolve(build_parser().parse_args(argv))
    facts = RunFacts(num_classes=num_classes, class_names=[f"class {chr(65 + i)}" for i in range(num_classes)])
    torch.manual_seed(seed)
    net, objective = build_network(cfg, num_classes), build_objective(cfg, num_classes)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 3, img_size, img_size))
    state = dict(format=2, model=net.state_dict(), objective=objective.state_dict(),
                 config={**saved_record(cfg, facts), **config})
    for key in drop:
        state.pop(key, None) if "." not in key else state["config"].pop(key.split(".", 1)[1])
    checkpoint.save_atomic(state, path)
    return path
