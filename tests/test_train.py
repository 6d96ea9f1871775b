"""End-to-end training on the synthetic data, the trainer's outputs and its errors, and evaluate."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from tdsa_fast import checkpoint
from tdsa_fast.config import build_parser, model_widths, resolve
from tdsa_fast.data.decode import dali_available
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.evaluate import evaluate_checkpoint
from tdsa_fast.models import build_model
from tdsa_fast.objective import TrainingObjective
from tdsa_fast.train import main, run

from cli_helpers import run_main

# A tiny version of the built-in data: 4 classes of 8 training images, so that a CI-sized run
# can learn them; held-out accuracy on this data needs minutes of training (README).
TINY = SyntheticSpec(num_classes=4, train_per_class=8, test_per_class=8, image_size=64, seed=1)
TINY_ARGS = ["--dataset", "cub", "--img-size", "64", "--stem", "standard", "--epochs", "32", "--batch-size", "8",
             "--lr", "0.02", "--workers", "0", "--log-interval", "1000", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _cfg(argv):
    return resolve(build_parser().parse_args(argv))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "mc", "tdsa"])
def test_short_training_lowers_the_loss_and_beats_chance(loss, tiny_root, tmp_path):
    """A CI-sized run learns: the loss falls and the trained model beats chance by a wide margin
    on the images it trained on (evaluated without augmentation). Held-out accuracy needs
    minutes of training on this data (README, "Built-in default data"): it is printed, not asserted."""
    out = tmp_path / loss
    results = run(_cfg(TINY_ARGS + ["--data-root", str(tiny_root), "--loss", loss, "--model", "resnet18",
                                    "--output", str(out)]), log=lambda *_: None)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 32
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first - 0.1 * abs(first), f"{loss}: training loss {first} -> {last}"
    chance = 1 / TINY.num_classes
    train_eval = evaluate_checkpoint(out / "last.pt", split="train")
    assert train_eval["total"] == TINY.num_classes * TINY.train_per_class
    assert train_eval["accuracy"] >= chance + 0.35, f"{loss}: train-split accuracy {train_eval['accuracy']}"
    print(f"{loss}: train-split {train_eval['accuracy']:.3f}, test best {results['best_test_acc']:.3f}")
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), abs=1e-6)
    # evaluate reproduces the final test accuracy from last.pt
    ev = evaluate_checkpoint(out / "last.pt")
    assert ev["total"] == TINY.num_classes * TINY.test_per_class
    assert ev["accuracy"] == pytest.approx(saved["final_test_acc"], abs=1e-9)


def test_tdsa_puts_gradient_on_both_levels_and_through_the_gate():
    torch.manual_seed(0)
    s, xi = 5, 3
    mid, high = model_widths("tdsa", xi, 3)
    model = build_model("resnet18", s, middle_cnum=mid, high_cnum=high, img_size=64)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, s, (4,))
    out = model(x)
    out.middle.retain_grad()
    out.high.retain_grad()
    masks = (torch.ones(1, s * 9), torch.ones(1, s * 3))
    term = TrainingObjective("tdsa", div_form="paper").term
    term(out.middle, out.high, y, masks=masks).backward()
    assert out.middle.grad.abs().sum() > 0, "no gradient on the middle level"
    assert out.high.grad.abs().sum() > 0, "no gradient on the high level"

    # the high level's gradient: its own MC term, plus (with the gate only) the middle term's
    from tdsa_fast import functional as TF
    middle = out.middle.detach()

    def grad_high(loss_of_high):
        high = out.high.detach().requires_grad_(True)
        return torch.autograd.grad(loss_of_high(high), high)[0]

    own = grad_high(lambda h: TF.mc_loss(h, y, 3, mask=masks[1], div_form="paper", mu=1.5))
    gated = grad_high(lambda h: term(middle, h, y, masks=masks))
    ungated = grad_high(lambda h: TrainingObjective("tdsa-noattn", div_form="paper").term(middle, h, y, masks=masks))
    assert (gated - own).abs().sum() > 1e-3 * own.abs().sum(), "the gate's gradient does not reach the high level"
    assert torch.allclose(ungated, own), "without the gate the middle term must not reach the high level"


def test_unknown_dataset_and_model_list_the_valid_ones(capsys):
    for argv, words in ((["--dataset", "imagenet"], ["default", "cub", "aircraft", "cars", "flowers"]),
                        (["--model", "vit"], ["vgg16", "resnet18"]),
                        (["--loss", "triplet"], ["ce", "center", "arcface", "circle", "mc", "tdsa", "tdsa-noattn"])):
        rc, _, err = run_main(main, argv, capsys)
        assert rc == 2
        for w in words:
            assert w in err, (argv, err)


def test_real_dataset_without_data_root_is_refused():
    with pytest.raises(ValueError, match="--dataset flowers needs --data-root"):
        _cfg(["--dataset", "flowers"])


def test_missing_split_file_names_the_file(tmp_path, capsys):
    (tmp_path / "jpg").mkdir()
    rc, _, err = run_main(main, ["--dataset", "flowers", "--data-root", tmp_path, "--output", tmp_path / "out"], capsys)
    assert rc == 2
    assert "imagelabels.mat" in err or "setid.mat" in err, err


def _folder_dataset(root, bad=None):
    from PIL import Image
    for split, n in (("train", 4), ("test", 2)):
        for c, colour in enumerate(((200, 30, 30), (30, 200, 30))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), colour).save(d / f"{i}.jpg")
    if bad is not None:
        bad(root / "train" / "class0" / "0.jpg")
    return root


FAST = ["--dataset", "folder", "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--loss", "ce",
        "--model", "resnet18", "--workers", "0"]


def _loaders():
    """Both data pipelines; DALI's case fails rather than skips in CI (CI=true), which installs it."""
    dali = pytest.param("dali", marks=pytest.mark.skipif(
        not dali_available() and not os.environ.get("CI"), reason="NVIDIA DALI is not installed (the dali extra)"))
    return ["torch", dali]


@pytest.mark.slow
@pytest.mark.parametrize("loader", _loaders())
@pytest.mark.parametrize("kind", ["corrupt", "truncated", "missing"])
def test_bad_image_names_the_file_or_is_skipped_and_counted(kind, loader, tmp_path, capsys):
    def damage(path):
        if kind == "corrupt":
            path.write_bytes(b"this is not a jpeg at all")
        elif kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            path.unlink()

    root = _folder_dataset(tmp_path / "data", damage)
    bad = str(root / "train" / "class0" / "0.jpg")
    if kind == "missing":  # the folder parser lists what exists: a CSV list names the missing file
        (root / "train.csv").write_text(f"{bad},0\n" + "".join(
            f"{root}/train/class{c}/{i}.jpg,{c}\n" for c in (0, 1) for i in range(1, 4)))
        (root / "test.csv").write_text("".join(f"{root}/test/class{c}/{i}.jpg,{c}\n" for c in (0, 1) for i in range(2)))
        args = [a if a != "folder" else "csv" for a in FAST]
    else:
        args = FAST
    args = args + ["--loader", loader]
    rc, _, err = run_main(main, [*args, "--data-root", root, "--output", tmp_path / "out"], capsys)
    assert rc == 2 and bad in err, err

    rc, out, err = run_main(main, [*args, "--data-root", root, "--output", tmp_path / "out2", "--skip-bad-images"],
                            capsys)
    assert rc == 0, err
    assert "1 unreadable images skipped" in out, out
    rows = list(csv.DictReader(open(tmp_path / "out2" / "metrics.csv")))
    assert rows[0]["skipped_images"] == "1"
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["loader_used"] == loader


@pytest.mark.slow
def test_output_folder_with_a_run_is_not_overwritten(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = FAST + ["--data-root", str(root), "--output", str(out)]
    run(_cfg(argv), log=lambda *_: None)
    with pytest.raises(ValueError, match="already holds a run"):
        run(_cfg(argv), log=lambda *_: None)


@pytest.mark.slow
def test_checkpoints_load_safely_and_refuse_pickled_objects(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    run(_cfg(FAST + ["--data-root", str(root), "--output", str(out)]), log=lambda *_: None)
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["num_classes"] == 2
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _Pickled()}, evil)
    with pytest.raises(ValueError, match="not a tdsa_fast checkpoint that loads safely"):
        checkpoint.load(evil)
    assert not list(out.glob(".*.tmp")), "temporary checkpoint files left behind"


class _Pickled:
    pass


@pytest.mark.slow
def test_amp_on_the_cpu_trains_in_bfloat16_with_the_fused_loss(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    lines = []
    results = run(_cfg(FAST + ["--data-root", str(root), "--output", str(tmp_path / "o"), "--amp", "--device", "cpu",
                               "--loss", "tdsa", "--channels-last"]), log=lines.append)
    assert any("bfloat16 autocast" in line for line in lines), lines
    assert results["final_test_acc"] >= 0
    rows = list(csv.DictReader(open(tmp_path / "o" / "metrics.csv")))
    assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in rows)

    # under CPU autocast the maps reach the fused ops in bfloat16 and the gradients come back
    from tdsa_fast.train import TrainingModule, autocast_context
    cfg = _cfg(FAST + ["--data-root", str(root), "--amp", "--loss", "tdsa"])
    torch.manual_seed(0)
    net = TrainingModule(build_model("resnet18", 2, middle_cnum=9, high_cnum=3, img_size=32),
                         TrainingObjective("tdsa", num_classes=2, backend="fused")).train()
    seen = {}
    net.model.register_forward_hook(lambda m, i, out: seen.update(middle=out.middle.dtype, high=out.high.dtype))
    with autocast_context(cfg, torch.device("cpu")):
        loss, ce, scores = net(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0))
    loss.backward()
    assert seen == dict(middle=torch.bfloat16, high=torch.bfloat16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("extra, message", [
    (["--amp-dtype", "float16"], "--amp-dtype needs --amp"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"),
])
def test_conflicting_or_bad_run_flags_are_refused_before_training(extra, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _cfg(FAST + ["--data-root", str(tmp_path)] + extra)


@pytest.mark.parametrize("extra, message", [
    (["--amp", "--amp-dtype", "float16", "--device", "cpu"], "--amp-dtype float16 is CUDA-only"),
    (["--sync-bn", "--device", "cpu"], "--sync-bn needs several processes on CUDA"),
    (["--loader", "dali", "--torch-decode", "device"], "--torch-decode applies to --loader torch"),
    pytest.param(["--loader", "auto", "--torch-decode", "device"], "--loader auto chose DALI",
                 marks=pytest.mark.skipif(not dali_available(), reason="DALI is not installed: auto picks torch")),
])
def test_flags_the_device_rules_out_are_refused_before_training(extra, message, tmp_path, capsys):
    root = _folder_dataset(tmp_path / "data")
    rc, _, err = run_main(main, [*FAST, *extra, "--data-root", root, "--output", tmp_path / "out"], capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_unwritable_output_folder_is_refused(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="is not writable"):
        run(_cfg(FAST + ["--data-root", str(root), "--output", str(blocker / "run")]), log=lambda *_: None)


@pytest.mark.slow
def test_run_folder_has_logs_tensorboard_curves_and_summary(tmp_path, monkeypatch):
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "o"
    lines = []
    run(_cfg(FAST + ["--data-root", str(root), "--output", str(out), "--epochs", "2", "--log-interval", "1"]),
        log=lines.append)
    progress = [line for line in lines if " step " in line]
    assert progress and all(w in progress[0] for w in ("loss", "lr", "img/s", "eta")), progress
    for name in ("config.json", "config.yaml", "metrics.csv", "training_curves.png", "summary.json",
                 "results.json", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event files"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["model"] == "resnet18"
    # the saved config.yaml reproduces the run's options through --config, in a new folder
    from tdsa_fast.config import parse_config, saved_run

    def options(cfg):
        return {k: v for k, v in cfg.options().items() if k != "output"}

    again, _ = parse_config(["--config", str(out / "config.yaml")])
    saved = saved_run(json.loads((out / "config.json").read_text()), "config.json").config
    assert options(again) == options(saved)
    assert again.output is None and "output" not in (out / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)  # the default folder, runs/..., lands here
    run(again, log=lambda *_: None)
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "last.pt").is_file()
    redone = saved_run(json.loads((folders[0] / "config.json").read_text()), "config.json").config
    assert options(redone) == options(saved)


def test_config_file_sets_defaults_that_the_command_line_overrides(tmp_path):
    from tdsa_fast.config import parse_config
    path = tmp_path / "c.yaml"
    path.write_text("loss: mc\nbatch-size: 16\nlr: 0.5\namp: true\ntensorboard: false\nmu: 2\n")
    cfg, explicit = parse_config(["--config", str(path), "--lr", "0.1"])
    assert (cfg.loss, cfg.batch_size, cfg.lr, cfg.amp, cfg.tensorboard, cfg.mu) == \
        ("mc", 16, 0.1, True, False, 2.0)
    assert isinstance(cfg.mu, float) and "lr" in explicit and "loss" not in explicit


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "unknown key 'colour'"),
    ("loss: triplet\n", "loss must be one of"),
    ("batch_size: 3.5\n", "batch_size must be an integer"),
    ("epochs: many\n", "epochs: invalid literal"),
    ("amp: 1\n", "amp must be true or false"),
    ("- loss\n- ce\n", "must hold a mapping"),
    ("loss: [ce\n", "is not valid YAML"),
    ("resume: somewhere\n", "unknown key 'resume'"),
    ("dataset: imagenet\n", "dataset must be one of"),
    ("loss_args: 3\n", "loss_args must be a mapping of a baseline loss's options"),
    ("loss_args: {margin: wide}\n", "loss_args: margin: expected a number (or null), got 'wide'"),
])
def test_bad_config_files_are_refused_with_the_reason(text, message, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    rc, _, err = run_main(main, ["--config", path], capsys)
    assert rc == 2 and message in err, err


def test_baseline_loss_options_from_the_command_line_and_a_config_file_reach_the_loss(tmp_path):
    from tdsa_fast.config import parse_config
    from tdsa_fast.train import build_objective
    cfg = _cfg(FAST + ["--data-root", str(tmp_path), "--loss", "arcface", "--loss-arg", "margin=0.3",
                       "--loss-arg", "scale=30"])
    assert cfg.loss_args == {"margin": 0.3, "scale": 30}
    loss = build_objective(cfg, 5).baseline
    assert (loss.margin, loss.scale) == (0.3, 30.0)
    assert _cfg(FAST + ["--data-root", str(tmp_path), "--loss", "arcface"]).loss_args == {}
    for text in ("loss: coco\nloss_args: {p: 0.9, scale: null}\n", "loss: coco\nloss-args: [p=0.9, scale=none]\n"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        cfg, _ = parse_config(["--config", str(path), "--data-root", str(tmp_path)])
        assert cfg.loss_args == {"p": 0.9, "scale": None}
        assert build_objective(cfg, 5).baseline.p == 0.9


@pytest.mark.parametrize("extra, message", [
    (["--loss", "arcface", "--loss-arg", "margn=0.3"],
     "--loss-arg margn: not an option of --loss arcface; its options: scale (default 64.0), margin (default 0.5)"),
    (["--loss", "tdsa", "--loss-arg", "margin=0.3"], "--loss-arg applies to the baseline losses"),
    (["--loss", "focal", "--loss-arg", "gamma=1", "--loss-arg", "gamma=3"], "--loss-arg gamma is given twice"),
])
def test_bad_baseline_loss_options_are_refused(extra, message, tmp_path):
    with pytest.raises(ValueError) as err:
        _cfg(FAST + ["--data-root", str(tmp_path)] + extra)
    assert message in str(err.value)


@pytest.mark.parametrize("value", ["margin", "margin=", "margin=wide"])
def test_malformed_loss_arg_is_an_argument_error(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(FAST + ["--loss-arg", value])
    assert "--loss-arg" in capsys.readouterr().err


def test_a_baseline_option_out_of_range_fails_before_the_run_folder_is_made(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="margin must lie in"):
        run(_cfg(FAST + ["--data-root", str(root), "--output", str(out), "--loss", "lmcl", "--loss-arg", "margin=5"]),
            log=lambda *_: None)
    assert not out.exists()


@pytest.mark.slow
def test_a_run_with_baseline_options_saves_them_and_evaluate_rebuilds_the_loss(tmp_path):
    root = _folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    results = run(_cfg(FAST + ["--data-root", str(root), "--output", str(out), "--loss", "lmcl",
                               "--loss-arg", "scale=16"]), log=lambda *_: None)
    assert json.loads((out / "config.json").read_text())["loss_args"] == {"scale": 16}
    assert "loss_args:\n  scale: 16" in (out / "config.yaml").read_text()
    ev = evaluate_checkpoint(out / "last.pt", loader="torch")
    assert ev["accuracy"] == pytest.approx(results["final_test_acc"], abs=1e-9)


def test_resume_accepts_the_same_baseline_options_and_refuses_others():
    from tdsa_fast.config import TrainConfig, resume_config
    saved = {"loss": "lmcl", "loss_args": {"scale": 16}, "lr": 0.1}
    same = resume_config(saved, TrainConfig(loss_args=[("scale", 16)], resume="r"), {"loss_args", "resume"})
    assert same.loss_args == {"scale": 16} and same.resume == "r"
    with pytest.raises(ValueError, match="conflicts with the resumed run's saved value"):
        resume_config(saved, TrainConfig(loss_args=[("scale", 32)], resume="r"), {"loss_args", "resume"})


def test_config_file_never_runs_code(tmp_path):
    from tdsa_fast.config import parse_config
    path = tmp_path / "c.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"loss: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        parse_config(["--config", str(path)])
    assert not marker.exists()


@pytest.mark.slow
def test_a_last_batch_of_one_image_trains(tmp_path):
    """BatchNorm needs two values per channel: a batch of one image runs as two copies of it."""
    root = _folder_dataset(tmp_path / "data")  # 8 training images
    results = run(_cfg(FAST + ["--data-root", str(root), "--output", str(tmp_path / "o"), "--batch-size", "7"]),
                  log=lambda *_: None)
    assert results["final_test_acc"] >= 0


@pytest.mark.slow
def test_eval_subset_is_fixed_and_the_final_accuracy_uses_the_whole_split(tiny_root, tmp_path):
    from tdsa_fast.data.datasets import load_split
    from tdsa_fast.train import eval_subset

    test = load_split("cub", tiny_root, "test")
    subset = eval_subset(test, 8)
    assert len(subset) == 8 and subset == eval_subset(test, 8)  # fixed: no dependence on --seed or state
    assert [test.samples.index(s) for s in subset] == sorted(test.samples.index(s) for s in subset)
    assert eval_subset(test, 0) == list(test.samples) == eval_subset(test, 10_000)

    out = tmp_path / "run"
    args = [a if a != "32" else "1" for a in TINY_ARGS]  # one epoch
    results = run(_cfg(args + ["--data-root", str(tiny_root), "--loss", "ce", "--model", "resnet18",
                               "--loader", "torch", "--eval-subset", "8", "--output", str(out)]), log=lambda *_: None)
    assert results["eval_images"] == 8 and results["test_images"] == len(test.samples) == 32
    model_acc = evaluate_checkpoint(out / "last.pt", data_root=str(tiny_root), loader="torch")
    assert model_acc["total"] == 32 and results["final_test_acc"] == pytest.approx(model_acc["accuracy"])
    assert "final_subset_acc" in results
    with pytest.raises(ValueError, match="--eval-subset must be >= 0"):
        _cfg(TINY_ARGS + ["--data-root", str(tiny_root), "--model", "resnet18", "--eval-subset", "-1"])
