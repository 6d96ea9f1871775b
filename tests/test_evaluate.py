"""python -m tdsa_fast.evaluate: top-1 / top-5 / mean per-class accuracy, the per-class and
confusion files, --tta flip, --json, bad input; the trainer's own per-class table; the
per-class computation and the confusion plot at 200 classes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tdsa_fast.class_metrics import PER_CLASS_FIELDS, ClassReport, ConfusionCounter
from tdsa_fast.evaluate import OUTPUT_FILES, evaluate_checkpoint, main
from tdsa_fast.plots import confusion_order, render_confusion

from inference_helpers import SPEC


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_command_writes_the_per_class_and_confusion_files(trained, tmp_path, capsys):
    root, out, results = trained
    assert main(["--checkpoint", str(out / "last.pt"), "--loader", "torch", "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 accuracy on test" in printed and "mean per-class accuracy" in printed
    for name in OUTPUT_FILES:
        assert (tmp_path / name).is_file(), name
    rows = _rows(tmp_path / "per_class.csv")
    assert list(rows[0]) == list(PER_CLASS_FIELDS) and len(rows) == SPEC.num_classes
    assert all(int(r["images"]) == SPEC.test_per_class for r in rows)
    with open(tmp_path / "confusion.csv", newline="") as f:
        table = list(csv.reader(f))
    matrix = np.array([[int(v) for v in line[1:]] for line in table[1:]])
    assert matrix.shape == (SPEC.num_classes, SPEC.num_classes)
    assert table[0][1:] == [r["name"] for r in rows] == [line[0] for line in table[1:]]
    assert matrix.sum() == SPEC.num_classes * SPEC.test_per_class
    # the diagonal is the per-class accuracy, its trace the trainer's final top-1 of last.pt
    np.testing.assert_allclose(np.diag(matrix) / matrix.sum(1), [float(r["accuracy"]) for r in rows], atol=1e-6)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(results["final_test_acc"], abs=1e-12)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mean_class_accuracy"] == pytest.approx(np.mean(np.diag(matrix) / matrix.sum(1)))
    for r in rows:  # most confused: the largest off-diagonal count of the row
        i = int(r["class"])
        off = matrix[i].copy()
        off[i] = 0
        assert int(r["confused_images"]) == off.max()
        assert (r["most_confused_with"] == "") == (off.max() == 0)
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_the_trainer_writes_the_same_per_class_table(trained, tmp_path):
    root, out, results = trained
    assert (out / "per_class.csv").is_file() and (out / "confusion.csv").is_file()
    evaluate_checkpoint(out / "last.pt", loader="torch", out_dir=tmp_path)
    assert _rows(out / "per_class.csv") == _rows(tmp_path / "per_class.csv")
    assert (out / "confusion.csv").read_text() == (tmp_path / "confusion.csv").read_text()
    assert results["final_mean_class_acc"] == pytest.approx(
        np.mean([float(r["accuracy"]) for r in _rows(out / "per_class.csv")]))
    assert results["final_test_top5"] == 1.0  # 4 classes: top-5 is top-4, every label is in it


def test_json_and_flip_tta(trained, capsys):
    root, out, _ = trained
    assert main(["--checkpoint", str(out), "--loader", "torch", "--tta", "flip", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tta"] == "flip" and r["total"] == SPEC.num_classes * SPEC.test_per_class
    assert 0 <= r["accuracy"] <= r["top5"] <= 1 and r["top5"] == 1.0 and r["classes"] == SPEC.num_classes
    assert r["checkpoint"].endswith("best.pt")  # a run folder means its best.pt
    assert all(f.startswith(str(out / "eval-test-flip")) for f in r["files"])
    plain = evaluate_checkpoint(out, loader="torch")
    assert "files" not in plain and plain["tta"] == "none"


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "/nonexistent/run/best.pt"], "no checkpoint"),
    (["--batch-size", "0"], "--batch-size must be an int >= 1"),
    (["--split", "nosuchsplit"], ""),
])
def test_bad_input_is_a_clear_error(trained, capsys, argv, message):
    root, out, _ = trained
    if argv[0] != "--checkpoint":
        argv = ["--checkpoint", str(out / "last.pt"), "--loader", "torch", *argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_an_unknown_tta_is_refused_by_the_parser(trained):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(trained[1]), "--tta", "crop"])


def test_class_report_by_hand():
    counter = ConfusionCounter(4, top_k=2)
    # class 0: 3 images, 2 right, 1 as class 2; class 1: 2 images, both as class 0; class 2: 1 right; class 3: none
    scores = torch.tensor([[9., 0, 1, 0], [9., 0, 1, 0], [1., 0, 9, 0], [9., 8, 0, 0], [9., 0, 8, 0],
                           [0., 0, 9, 0]])
    counter.update(scores, torch.tensor([0, 0, 0, 1, 1, 2]))
    report = counter.report(["a", "b", "c", "d"])
    s = report.summary()
    assert (s["correct"], s["total"], s["top_k"]) == (3, 6, 2)
    assert s["top1"] == 0.5 and s["top5"] == pytest.approx(5 / 6)  # in the top 2: all but the last class-1 image
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)  # class d has no images: left out
    assert s["classes_with_images"] == 3
    rows = report.rows()
    assert [r["most_confused_with"] for r in rows] == ["c", "a", "", ""]
    assert [r["confused_images"] for r in rows] == [1, 2, 0, 0]
    assert np.isnan(rows[3]["accuracy"]) and rows[3]["images"] == 0
    assert report.worst(4) == [1, 0, 2, 3]
    with pytest.raises(ValueError, match="scores must be"):
        counter.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="class names"):
        counter.report(["a"])


def test_the_confusion_plot_at_200_classes(tmp_path):
    rng = np.random.default_rng(0)
    s = 200
    matrix = np.diag(rng.integers(0, 10, s))
    for i in range(0, s, 2):  # pairs of classes confused with each other
        matrix[i, i + 1] = matrix[i + 1, i] = rng.integers(1, 5)
    names = [f"species {i:03d} with a long name" for i in range(s)]
    order = confusion_order(matrix)
    assert sorted(order) == list(range(s))
    pos = {c: k for k, c in enumerate(order)}
    assert all(abs(pos[i] - pos[i + 1]) == 1 for i in range(0, s, 2))  # confused pairs sit together
    fig = render_confusion(matrix, names, label_worst=20, title="t")
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == len(ax.get_yticks()) == 20
    report = ClassReport(matrix, names, 0, 5)
    worst = set(report.worst(20))
    labelled = {order[int(k)] for k in ax.get_xticks()}
    assert labelled == worst
    fig.savefig(tmp_path / "c.png", dpi=120)
    assert (tmp_path / "c.png").stat().st_size > 10_000
    small = render_confusion(matrix[:5, :5], names[:5])
    assert len(small.axes[0].get_xticks()) == 5  # few classes: every one named
    with pytest.raises(ValueError):
        render_confusion(matrix, names[:3])
