"""The trainer on a GPU (skipped without CUDA; ``bench/gpu_check.sh train`` runs them): float16
autocast with the gradient scaler, bfloat16 with channels_last and torch.compile, the fused
loss under autocast, and a resume on CUDA that ends where an uninterrupted run ends."""
from __future__ import annotations

import math

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.train import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPEC = SyntheticSpec(num_classes=4, train_per_class=10, test_per_class=5, image_size=64, seed=3)
ARGS = ["--dataset", "cub", "--img-size", "64", "--stem", "standard", "--model", "resnet18", "--loss", "tdsa",
        "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--workers", "0", "--loader", "torch",
        "--device", "cuda", "--log-interval", "1000", "--no-tensorboard"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return ensure_default_dataset(SPEC, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _cfg(argv):
    return resolve(build_parser().parse_args(argv))


@pytest.mark.parametrize("extra", [
    ["--amp", "--amp-dtype", "float16"],
    ["--amp", "--channels-last"],
    ["--amp", "--channels-last", "--compile"],
    ["--amp", "--torch-decode", "device"],
], ids=["fp16-scaler", "bf16-channels-last", "bf16-compile", "bf16-nvjpeg"])
def test_cuda_training_under_autocast(extra, data_root, tmp_path):
    lines = []
    out = tmp_path / "run"
    results = run(_cfg(ARGS + extra + ["--data-root", str(data_root), "--output", str(out)]), log=lines.append)
    assert math.isfinite(results["final_test_acc"]) and results["evaluated_images"] == 20
    ckpt = checkpoint.load(out / "last.pt")
    if "float16" in extra:  # the scaler ran and its state is saved for a resume
        assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0
    else:
        assert not ckpt["scaler"]  # bfloat16 needs no scaler
    assert any("autocast" in line for line in lines), lines


def test_cuda_resume_ends_where_an_uninterrupted_run_ends(data_root, tmp_path):
    base = ARGS + ["--data-root", str(data_root), "--deterministic", "--amp"]
    full = tmp_path / "full"
    run(_cfg(base + ["--output", str(full)]), log=lambda *_: None)
    part = tmp_path / "part"
    stopped = run(_cfg(base + ["--output", str(part), "--max-steps", "7"]), log=lambda *_: None)
    assert stopped["stopped"] == "--max-steps 7" and stopped["batches_done"] == 2
    from tdsa_fast.train import prepare_resume
    from tdsa_fast.config import parse_config
    given, explicit = parse_config(["--resume", str(part), "--max-steps", "0"])
    cfg, ckpt = prepare_resume(given, explicit)
    run(cfg, log=lambda *_: None, resume_from=ckpt)
    a, b = checkpoint.load(part / "last.pt")["model"], checkpoint.load(full / "last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5), key
