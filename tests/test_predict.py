"""python -m tdsa_fast.predict and tdsa_fast.Predictor: outputs, bad input, and agreement
with the trainer's own evaluation."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import tdsa_fast
from tdsa_fast.data.datasets import load_split
from tdsa_fast.evaluate import evaluate_checkpoint
from tdsa_fast.predict import Predictor, collect_inputs, main

from inference_helpers import make_checkpoint


def test_predictor_is_exported_at_the_top_level():
    assert tdsa_fast.Predictor is Predictor


def test_predictions_reproduce_the_checkpoints_test_accuracy(trained):
    """The Predictor's argmax over the test images equals what evaluate counts as correct."""
    root, out, _ = trained
    test = load_split("cub", root, "test")
    predictor = Predictor.from_checkpoint(out / "last.pt", device="cpu", batch_size=5)
    probs = predictor.probabilities([path for path, _ in test.samples])
    assert probs.shape == (len(test.samples), test.num_classes)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(test.samples)), rtol=0, atol=1e-5)
    labels = torch.tensor([label for _, label in test.samples])
    ev = evaluate_checkpoint(out / "last.pt", loader="torch")
    assert int((probs.argmax(1) == labels).sum()) == ev["correct"]
    assert predictor.class_names == test.class_names


def test_pil_path_and_tensor_inputs_agree(trained):
    root, out, _ = trained
    path = load_split("cub", root, "test").samples[0][0]
    predictor = Predictor.from_checkpoint(out, device="cpu")  # the run folder: its best.pt
    image = Image.open(path).convert("RGB")
    from_pil, from_path = predictor.probabilities(image), predictor.probabilities(path)
    torch.testing.assert_close(from_pil, from_path, rtol=0, atol=0)
    uint8 = torch.from_numpy(__import__("numpy").asarray(image).copy()).permute(2, 0, 1)
    # antialiased bilinear on the tensor vs PIL's bilinear: the same to a few grey levels
    torch.testing.assert_close(predictor.probabilities(uint8), from_pil, rtol=0, atol=0.05)
    top = predictor(image, top_k=2)[0]
    assert len(top.labels) == 2 and top.probabilities[0] >= top.probabilities[1]
    assert top.labels[0] == predictor.class_names[top.indices[0]]


def test_flip_tta_averages_the_two_views(trained):
    root, out, _ = trained
    path = load_split("cub", root, "test").samples[0][0]
    plain = Predictor.from_checkpoint(out, device="cpu")
    image = Image.open(path).convert("RGB")
    mirrored = image.transpose(Image.FLIP_LEFT_RIGHT)
    expected = (plain.probabilities(image) + plain.probabilities(mirrored)) / 2
    flip = Predictor.from_checkpoint(out, device="cpu", tta="flip")
    torch.testing.assert_close(flip.probabilities(image), expected, rtol=0, atol=1e-5)


def test_the_command_writes_csv_and_json_with_an_unreadable_image_as_a_row(trained, tmp_path, capsys):
    root, out, _ = trained
    folder = tmp_path / "new" / "deeper"
    folder.mkdir(parents=True)
    paths = [p for p, _ in load_split("cub", root, "test").samples[:3]]
    for i, p in enumerate(paths):
        (folder / f"img{i}.jpg").write_bytes(open(p, "rb").read())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored")
    csv_out, json_out = tmp_path / "pred.csv", tmp_path / "pred.json"
    assert main(["--checkpoint", str(out / "best.pt"), str(tmp_path / "new"), "--top-k", "3", "--batch-size", "2",
                 "--out", str(csv_out), "--device", "cpu"]) == 1  # 1: some images unreadable
    printed = capsys.readouterr()
    assert "3 images classified, 1 unreadable" in printed.err
    rows = list(csv.DictReader(open(csv_out)))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["broken.jpg", "img0.jpg", "img1.jpg", "img2.jpg"]
    assert "cannot load image" in rows[0]["error"] and rows[0]["class_1"] == ""
    for r in rows[1:]:
        assert r["error"] == "" and 0 <= float(r["probability_3"]) <= float(r["probability_1"]) <= 1
    assert main(["--checkpoint", str(out / "best.pt"), str(tmp_path / "new"), "--top-k", "3", "--out",
                 str(json_out), "--device", "cpu"]) == 1
    data = json.loads(json_out.read_text())
    assert [len(r["predictions"]) for r in data] == [0, 3, 3, 3]
    for r_csv, r_json in zip(rows[1:], data[1:]):  # the batch size does not change a prediction
        assert r_json["predictions"][0]["class"] == r_csv["class_1"]
        assert r_json["predictions"][0]["probability"] == pytest.approx(float(r_csv["probability_1"]), abs=1e-5)
    # a CSV of paths, relative to its own folder, with a header
    listing = tmp_path / "new" / "list.csv"
    listing.write_text("path\ndeeper/img1.jpg\ndeeper/img0.jpg\n")
    assert [p.name for p in collect_inputs([str(listing)])] == ["img1.jpg", "img0.jpg"]


@pytest.mark.parametrize("argv, message", [
    (["MISSING_DIR"], "no such file or folder"),
    (["EMPTY_DIR"], "no images found"),
    (["EMPTY_DIR", "--top-k", "0"], "--top-k must be an int >= 1"),
    (["EMPTY_DIR", "--batch-size", "0"], "--batch-size must be an int >= 1"),
    (["EMPTY_DIR", "--out", "x.txt"], "must end in .csv or .json"),
])
def test_bad_command_lines_are_refused_with_a_message(argv, message, trained, tmp_path, capsys):
    _, out, _ = trained
    (tmp_path / "empty").mkdir()
    argv = [a.replace("MISSING_DIR", str(tmp_path / "nope")).replace("EMPTY_DIR", str(tmp_path / "empty"))
            for a in argv]
    assert main(["--checkpoint", str(out), *argv]) == 2
    assert message in capsys.readouterr().err


class _Pickled:
    """An object the safe unpickler refuses."""


def test_bad_checkpoints_are_refused_with_a_message(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    future = make_checkpoint(tmp_path / "future.pt", model="resnet18", format_note="x")
    state = torch.load(future, weights_only=True)
    state["format"] = 99
    torch.save(state, future)
    old = make_checkpoint(tmp_path / "old.pt", model="resnet18", drop=("config.class_names",))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}, "config": {}}, legacy, _use_new_zipfile_serialization=False)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "config": {}, "payload": _Pickled()}, pickled)
    for ckpt, message in [(tmp_path / "none.pt", "no checkpoint at"), (tmp_path, "without best.pt or last.pt"),
                          (foreign, "not a tdsa_fast checkpoint"), (future, "format 99"),
                          (old, "no class-name table"), (empty, "the file is empty (0 bytes)"),
                          (image, "not a zip archive"), (legacy, "not a zip archive"),
                          (pickled, "holds objects other than tensors and plain containers (WeightsUnpickler")]:
        assert main(["--checkpoint", str(ckpt), str(image)]) == 2
        err = capsys.readouterr().err
        assert message in err, (ckpt, err)
        assert "weights_only` set to `False`" not in err and len(err) < 400, err  # not torch's advice
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    assert main(["--checkpoint", str(old), str(image), "--class-names", str(names), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.split("\t")[1].split()[0] in ("red", "green", "blue")
    names.write_text("red\ngreen\n")
    assert main(["--checkpoint", str(old), str(image), "--class-names", str(names)]) == 2
    assert "2 names for a 3-class network" in capsys.readouterr().err


def test_the_python_api_refuses_bad_arguments(tmp_path):
    predictor = Predictor.from_checkpoint(make_checkpoint(tmp_path / "c.pt", model="resnet18"), device="cpu")
    with pytest.raises(ValueError, match="tta must be one of"):
        Predictor(predictor.network, predictor.info, tta="crop")
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(predictor.network, predictor.info, batch_size=0)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        predictor.probabilities(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="normalised"):
        predictor.probabilities(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="images is empty"):
        predictor.probabilities([])
    with pytest.raises(ValueError, match="PIL images, paths or tensors"):
        predictor.probabilities([3])
