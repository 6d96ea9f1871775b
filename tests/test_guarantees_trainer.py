"""What the trainer refuses, and what it never loses or leaves behind (docs/guarantees.md),
through ``main(argv)`` in-process on a tiny copy of the built-in data."""
from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.train import main

from cli_helpers import run_main

# 4 classes x 2 training images, batch 4: 2 steps an epoch; 2 test images a class
SPEC = SyntheticSpec(num_classes=4, train_per_class=2, test_per_class=2, image_size=32, seed=11)
BASE = ["--dataset", "cub", "--img-size", "32", "--stem", "standard", "--model", "resnet18", "--loss", "tdsa",
        "--epochs", "2", "--batch-size", "4", "--lr", "0.02", "--workers", "0", "--loader", "torch", "--seed", "0",
        "--threads", "1", "--log-interval", "1000", "--no-tensorboard"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return ensure_default_dataset(SPEC, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _args(data_root, out, *extra) -> list[str]:
    return BASE + ["--data-root", str(data_root), "--output", str(out), *extra]


def _refused(argv, capsys) -> str:
    """The message of a command line refused before training: argparse's exit 2, or main's 2."""
    rc, _, err = run_main(main, argv, capsys)
    assert rc == 2, f"accepted: {argv}"
    return err


# --- 2, 3: nothing overwritten -----------------------------------------------------------------------

def test_a_folder_with_run_files_but_no_last_pt_is_refused_unless_overwrite(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("best.pt", "metrics.csv", "results.json"):
        (out / name).write_text("an earlier run's\n")
    err = _refused(_args(data_root, out, "--max-steps", "1"), capsys)
    assert "already holds a run's files (best.pt, metrics.csv, results.json)" in err and "--overwrite" in err, err
    assert all((out / n).read_text() == "an earlier run's\n" for n in ("best.pt", "metrics.csv", "results.json"))
    assert main(_args(data_root, out, "--max-steps", "1", "--overwrite")) == 0
    assert not (out / "results.json").exists() and not (out / "best.pt").exists()  # replaced by the new run's
    assert checkpoint.load(out / "last.pt")["progress"]["global_step"] == 1
    assert "overwrite" not in (out / "config.yaml").read_text()  # --config RUN/config.yaml must not overwrite


def test_resume_from_best_pt_is_refused_when_the_run_has_a_newer_last_pt(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data_root, out, "--max-steps", "3")) == 0  # epoch 1 done (best.pt), stopped in epoch 2
    capsys.readouterr()
    last = (out / "last.pt").read_bytes()
    err = _refused(["--resume", str(out / "best.pt")], capsys)
    assert f"the run's latest checkpoint is {out / 'last.pt'}" in err and "would rewind the run" in err, err
    assert (out / "last.pt").read_bytes() == last


# --- 8, 10: refused with a message, before anything runs ---------------------------------------------

@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--mu", "nan"), ("--lam", "-inf"),
                                         ("--beta", "nan"), ("--momentum", "nan"), ("--weight-decay", "inf")])
def test_non_finite_float_options_are_refused(flag, value, data_root, tmp_path, capsys):
    err = _refused(_args(data_root, tmp_path / "run", f"{flag}={value}"), capsys)
    assert f"{flag} must be a finite number, got {value}" in err, err
    assert not (tmp_path / "run").exists()


def test_non_finite_values_in_a_config_file_and_a_loss_arg_are_refused(data_root, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: .nan\n")
    err = _refused(_args(data_root, tmp_path / "r", "--config", str(cfg)), capsys)
    assert "--beta must be a finite number, got nan" in err, err
    err = _refused(_args(data_root, tmp_path / "r", "--loss", "arcface", "--loss-arg", "margin=nan"), capsys)
    assert "margin: expected a finite number, got 'nan'" in err, err


@pytest.mark.parametrize("key", ["dataset", "loss", "seed", "xi", "momentum"])
def test_null_in_a_config_file_is_refused_for_an_option_with_a_default(key, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{key}: null\n")
    err = _refused(["--config", str(cfg)], capsys)
    assert f"{cfg}: {key} must not be null" in err and "Traceback" not in err, err


@pytest.mark.parametrize("seed", [str(1 << 64), str(-(1 << 63) - 1)])
def test_a_seed_beyond_64_bits_is_refused(seed, data_root, tmp_path, capsys):
    err = _refused(_args(data_root, tmp_path / "run", "--seed", seed), capsys)
    assert f"--seed must be in [-2**63, 2**64 - 1] (torch.manual_seed's range), got {seed}" in err, err


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_the_built_in_data_in_a_folder_it_cannot_write_is_refused(where, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    root = blocker if where == "a file" else blocker / "cache"
    err = _refused(["--data-root", str(root), "--output", str(tmp_path / "run"), "--max-steps", "1"], capsys)
    assert f"--data-root {root}: cannot write the built-in dataset there" in err, err


@pytest.mark.parametrize("damage", ["progress", "config.dataset", "progress.global_step", "optimizer"])
def test_resuming_a_checkpoint_that_lacks_an_entry_is_refused(damage, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(data_root, out, "--max-steps", "1")) == 0
    capsys.readouterr()
    ckpt = checkpoint.load(out / "last.pt")
    entry, _, key = damage.partition(".")
    if key:
        del ckpt[entry][key]
    else:
        del ckpt[entry]
    checkpoint.save_atomic(ckpt, out / "last.pt")
    err = _refused(["--resume", str(out)], capsys)
    assert f"{out / 'last.pt'} cannot be resumed: it lacks {damage}" in err and "Traceback" not in err, err


# --- 9: the final line counts what was scored ---------------------------------------------------------

def test_the_final_line_counts_the_test_images_scored_and_skipped(data_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    test_ids = {int(line.split()[0]) for line in (root / "train_test_split.txt").read_text().splitlines()
                if line.split()[1] == "0"}
    paths = dict(line.split() for line in (root / "images.txt").read_text().splitlines())
    for i in sorted(test_ids)[:2]:
        (root / "images" / paths[str(i)]).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = tmp_path / "run"
    assert main(_args(root, out, "--epochs", "1", "--skip-bad-images")) == 0
    log = capsys.readouterr().out
    total = SPEC.num_classes * SPEC.test_per_class
    assert f"on {total - 2} test images (2 unreadable, skipped)" in log, log[-1500:]
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated_images"] == total - 2 and results["skipped_test_images"] == 2


# --- 11: no litter ------------------------------------------------------------------------------------

def test_a_rejected_optimiser_setting_leaves_no_run_folder(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    err = _refused(_args(data_root, out, "--momentum", "-1"), capsys)
    assert "momentum" in err.lower() and not out.exists(), err


def test_a_stale_temporary_checkpoint_is_removed_and_checkpoints_get_the_umask_mode(data_root, tmp_path):
    out = tmp_path / "run"
    previous = os.umask(0o022)
    try:
        assert main(_args(data_root, out, "--max-steps", "1")) == 0
        stale = out / ".last.pt.k1ll3d.tmp"  # what a kill during the write leaves
        stale.write_bytes(b"half a checkpoint")
        assert main(["--resume", str(out), "--max-steps", "2"]) == 0
    finally:
        os.umask(previous)
    assert not stale.exists() and not list(out.glob(".*.tmp"))
    for name in ("last.pt", "config.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_save_atomic_removes_its_own_stale_temporary_files_only(tmp_path):
    mine, other = tmp_path / ".best.pt.x.tmp", tmp_path / ".last.pt.y.tmp"
    mine.write_bytes(b"")
    other.write_bytes(b"")
    checkpoint.save_atomic({"model": {}, "config": {}}, tmp_path / "best.pt")
    assert not mine.exists() and other.exists()
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"model": {}, "config": {}}
