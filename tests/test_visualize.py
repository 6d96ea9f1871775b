"""``python -m tdsa_fast.visualize``: the channel selection of Fig. 6 on known values, and both
figures (fig6, curves) from real tiny checkpoints trained on the built-in data."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from tdsa_fast import reference
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.models import ModelOutput
from tdsa_fast.train import run
from tdsa_fast.reporting import read_metrics
from tdsa_fast.visualize import class_maps, curves, fig6, main

TINY = SyntheticSpec(num_classes=4, train_per_class=8, test_per_class=8, image_size=64, seed=1)


def _synthetic_output(s=3, k=3, xi=2, b=2):
    """Every channel is filled with its own index (+100 per sample), so a selection is readable."""
    high = (torch.arange(s * k, dtype=torch.float32)[None, :, None, None] + 100 * torch.arange(b)[:, None, None, None])
    mid = (torch.arange(s * k * xi, dtype=torch.float32)[None, :, None, None]
           + 100 * torch.arange(b)[:, None, None, None])
    high = high.expand(b, s * k, 2, 2).clone()
    mid = mid.expand(b, s * k * xi, 4, 4).clone()
    high[:, :, 0, 0] += 0.5  # a spatial pattern, so the upsampling matters
    return ModelOutput(torch.zeros(b, s), mid, high)


def test_class_maps_select_exactly_the_class_channels_and_their_gate():
    s, k, xi = 3, 3, 2
    out = _synthetic_output(s, k, xi)
    m = class_maps(out, 1, k, sample=1, mode="bilinear")
    assert m.high_channels == [3, 4, 5] and m.middle_channels == list(range(6, 12))
    assert m.high.shape == (3, 2, 2) and m.middle.shape == (6, 4, 4) and m.gate.shape == (3, 4, 4)
    torch.testing.assert_close(m.high, out.high[1, 3:6])
    torch.testing.assert_close(m.middle, out.middle[1, 6:12])
    assert m.middle[:, 1, 1].tolist() == [106.0 + j for j in range(6)]
    # the gate of high channel c: sigmoid of the upsampled channel (eq. 7), gating middle rows [c·ξ, (c+1)·ξ)
    up = reference.upsample(out.high[1:2, 3:6], (4, 4), "bilinear")[0]
    torch.testing.assert_close(m.gate, torch.sigmoid(up))
    torch.testing.assert_close(m.gated_middle, out.middle[1, 6:12] * torch.sigmoid(up).repeat_interleave(xi, 0))
    # the same slice as gating the whole map and taking the class's channels
    torch.testing.assert_close(m.gated_middle, reference.topdown_gate(out.middle, out.high, "bilinear")[1, 6:12])
    # without a grouped middle level (mc) or without the gate (tdsa-noattn)
    hi_only = class_maps(out, 2, k, middle_grouped=False)
    assert hi_only.middle is None and hi_only.gate is None and hi_only.high_channels == [6, 7, 8]
    assert class_maps(out, 0, k, gate=False).gate is None
    with pytest.raises(ValueError, match="out of range"):
        class_maps(out, 3, k)
    with pytest.raises(ValueError, match="multiple"):
        class_maps(out, 0, 4)


def test_read_metrics_skips_nan_points(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,lr,train_loss,train_ce,train_acc,test_acc\n1,0.1,2.0,1.5,0.3,nan\n2,0.1,1.0,1.2,0.5,0.4\n"
        "3,0.1,nan,1.0,0.6,\n4,0.1,0.5,0.9,0.7,0.6\n")
    m = read_metrics(tmp_path)
    assert m["acc_epochs"] == [2.0, 4.0] and m["test_acc"] == [0.4, 0.6]
    assert m["loss_epochs"] == [1.0, 2.0, 4.0] and m["train_loss"] == [2.0, 1.0, 0.5]
    assert read_metrics(tmp_path, "train_ce")["train_loss"] == [1.5, 1.2, 1.0, 0.9]


# --------------------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch TDSA run (evaluated at epoch 2 only: epoch 1's test_acc is nan) and a 1-epoch CE run."""
    root = ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)
    base = tmp_path_factory.mktemp("runs")
    common = ["--dataset", "cub", "--data-root", str(root), "--img-size", "64", "--batch-size", "8", "--workers", "0",
              "--loader", "torch", "--model", "resnet18", "--stem", "standard", "--threads", "1",
              "--log-interval", "1000"]
    out = {}
    for loss, epochs in (("tdsa", 2), ("ce", 1)):
        out[loss] = base / loss
        run(resolve(build_parser().parse_args(common + ["--loss", loss, "--epochs", str(epochs), "--eval-every", "2",
                                                        "--output", str(out[loss])])), log=lambda *_: None)
    return out


def _check_png(path, min_w=400, min_h=300):
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_w and h >= min_h, (w, h)
        assert np.asarray(im.convert("RGB"), dtype=np.float32).std() > 0, "blank image"


@pytest.mark.slow
def test_fig6_of_a_real_checkpoint(runs, tmp_path):
    ckpt = runs["tdsa"] / "best.pt"
    r = fig6(ckpt, tmp_path / "pred.png", split="test", index=3)
    assert r["class_index"] == r["predicted"] and r["label"] == 0
    _check_png(tmp_path / "pred.png")
    other = (r["predicted"] + 1) % TINY.num_classes
    image = r["path"]
    assert main(["fig6", "--checkpoint", str(ckpt), "--image", image, "--class-index", str(other),
                 "--middle", "gated", "--out", str(tmp_path / "cls.png")]) == 0
    _check_png(tmp_path / "cls.png")
    assert main(["fig6", "--checkpoint", str(ckpt), "--image", image, "--class-index", "4",
                 "--out", str(tmp_path / "bad.png")]) == 2  # 4 classes: 0..3


@pytest.mark.slow
def test_fig6_refuses_a_checkpoint_without_grouped_channels(runs, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--loss ce.*tdsa.*tdsa-noattn.*mc"):
        fig6(runs["ce"] / "best.pt", tmp_path / "x.png", index=0)
    assert main(["fig6", "--checkpoint", str(runs["ce"] / "best.pt"), "--index", "0",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "no channels grouped by class" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_curves_of_two_runs(runs, tmp_path):
    rows = list(csv.DictReader(open(runs["tdsa"] / "metrics.csv")))
    assert rows[0]["test_acc"] == "nan"  # epoch 1 was not evaluated
    out = tmp_path / "fig5.png"
    got = curves([runs["tdsa"], runs["ce"]], out)
    assert [label for label, _ in got] == ["tdsa / resnet18 / cub", "ce / resnet18 / cub"]
    tdsa = got[0][1]
    assert tdsa["acc_epochs"] == [2.0] and tdsa["loss_epochs"] == [1.0, 2.0]
    _check_png(out)
    assert main(["curves", str(runs["tdsa"]), str(runs["ce"]), "--labels", "A", "B", "--loss-column", "train_ce",
                 "--out", str(tmp_path / "lab.png")]) == 0
    _check_png(tmp_path / "lab.png")
    assert main(["curves", str(runs["tdsa"]), "--labels", "A", "B", "--out", str(tmp_path / "n.png")]) == 2
