"""tdsa_fast.reporting.RunReport: metrics.csv, TensorBoard events, the curves and summary.json,
new runs, resumes and rank != 0."""
from __future__ import annotations

import csv
import json
import logging
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdsa_fast import reporting
from tdsa_fast.reporting import METRIC_FIELDS, RunReport

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(epoch, test_acc=None, **kw):
    row = dict(epoch=epoch, lr=0.1 / epoch, train_loss=2.0 / epoch, train_ce=1.5 / epoch, train_acc=0.1 * epoch,
               test_acc=0.05 * epoch if test_acc is None else test_acc, images_per_s=123.456789,
               epoch_seconds=10.0 + epoch, skipped_images=0)
    row.update(kw)
    return row


def _read(out):
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _scalars(log_dir):
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _train(report, epochs, steps_per_epoch=4, start_epoch=1, start_step=0):
    for e in range(start_epoch, epochs + 1):
        for s in range(start_step + 1, steps_per_epoch + 1):
            g = (e - 1) * steps_per_epoch + s
            report.step(g, {"train/loss": 100.0 + g, "lr": 0.1})
        start_step = 0
        report.epoch(_row(e, test_acc=float("nan") if e % 2 else None))


def test_rows_are_written_flushed_and_read_back(tmp_path):
    with RunReport(tmp_path, tensorboard=False) as report:
        report.epoch(_row(1, test_acc=float("nan")))
        fields, rows = _read(tmp_path)  # flushed before close
        assert tuple(fields) == METRIC_FIELDS and len(rows) == 1
        report.epoch(_row(2, skipped_images=3))
    _, rows = _read(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["test_acc"] == "nan" and rows[1]["test_acc"] == "0.1"
    assert rows[1]["images_per_s"] == "123.457" and rows[1]["lr"] == "0.05" and rows[1]["skipped_images"] == "3"
    assert math.isnan(float(rows[0]["test_acc"]))
    assert not (tmp_path / "tensorboard").exists()


def test_a_row_with_other_keys_is_refused(tmp_path):
    with RunReport(tmp_path, tensorboard=False) as report:
        with pytest.raises(ValueError, match="exactly the keys"):
            report.epoch({**_row(1), "extra": 1.0})
        with pytest.raises(ValueError, match="exactly the keys"):
            report.epoch({k: v for k, v in _row(1).items() if k != "lr"})
    assert _read(tmp_path)[1] == []


def test_new_run_overwrites_an_old_metrics_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text("whatever,columns\n1,2\n")
    with RunReport(tmp_path, tensorboard=False) as report:
        report.epoch(_row(1))
    fields, rows = _read(tmp_path)
    assert tuple(fields) == METRIC_FIELDS and [r["epoch"] for r in rows] == ["1"]


def test_resume_keeps_completed_epochs_drops_later_rows_and_appends(tmp_path):
    with RunReport(tmp_path, tensorboard=False) as report:
        for e in (1, 2, 3):  # epoch 3's row was written, then the run was killed before its checkpoint
            report.epoch(_row(e))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,0.1,1.")  # and a torn row
    with RunReport(tmp_path, resume_epoch=2, tensorboard=False) as report:
        assert [r["epoch"] for r in _read(tmp_path)[1]] == ["1", "2"]
        report.epoch(_row(3, train_loss=9.0))
        report.epoch(_row(4))
    _, rows = _read(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[2]["train_loss"] == "9"


def test_resume_onto_another_header_is_refused(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss\n1,0.1,2.0\n")
    with pytest.raises(ValueError, match=r"cannot resume into .*metrics\.csv.*epoch,lr,train_loss"):
        RunReport(tmp_path, resume_epoch=1)
    assert (tmp_path / "metrics.csv").read_text() == "epoch,lr,train_loss\n1,0.1,2.0\n"  # untouched


def test_disabled_report_creates_nothing(tmp_path):
    out = tmp_path / "run"
    with RunReport(out, enabled=False) as report:
        report.step(1, {"train/loss": 1.0})
        report.epoch(_row(1))
        assert report.finish({"final_test_acc": 0.5}) is None
    report.close()
    assert not out.exists()


def test_finish_writes_the_curves_and_summary(tmp_path, monkeypatch):
    figures = []

    def spy(*args, **kwargs):
        figures.append(render(*args, **kwargs))
        return figures[-1]

    render = reporting.render_curves
    monkeypatch.setattr(reporting, "render_curves", spy)
    (tmp_path / "config.json").write_text(json.dumps(dict(loss="tdsa", model="resnet18", dataset="cub")))
    with RunReport(tmp_path, tensorboard=False) as report:
        for e, acc in ((1, float("nan")), (2, 0.4), (3, 0.6), (4, 0.6)):
            report.epoch(_row(e, test_acc=acc, skipped_images=e))
        png = report.finish({"final_test_acc": 0.6, "best_epoch": 3, "note": float("nan"), "output": tmp_path})
    assert png == tmp_path / "training_curves.png"
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    (fig,) = figures
    assert len(fig.axes) == 3
    # acc (3 evaluated epochs), loss and cross-entropy (4 epochs each)
    assert [len(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()] == [3, 4, 4]
    assert fig.axes[2].get_title() == "training cross-entropy"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == dict(final_test_acc=0.6, best_epoch=3, note=None, output=str(tmp_path), epochs_completed=4,
                           best_test_acc=0.6, train_seconds=50.0, skipped_images=10, metrics="metrics.csv",
                           curves="training_curves.png", tensorboard=None)
    assert not list(tmp_path.glob(".*.tmp"))


def test_finish_without_epochs_writes_only_the_summary(tmp_path):
    with RunReport(tmp_path, tensorboard=False) as report:
        assert report.finish({}) is None
    assert not (tmp_path / "training_curves.png").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_completed"] is None and summary["best_epoch"] is None and summary["curves"] is None


def test_tensorboard_holds_step_and_epoch_scalars(tmp_path):
    with RunReport(tmp_path) as report:
        _train(report, epochs=2)
        report.finish({})
    steps = _scalars(tmp_path / "tensorboard" / "steps")
    assert steps["train/loss"] == [(g, 100.0 + g) for g in range(1, 9)]
    assert [s for s, _ in steps["lr"]] == list(range(1, 9))
    epochs = _scalars(tmp_path / "tensorboard" / "epochs")
    assert set(epochs) == {f"epoch/{k}" for k in METRIC_FIELDS[1:]}
    assert epochs["epoch/test_acc"] == [(2, pytest.approx(0.1))]  # epoch 1 was not evaluated
    assert epochs["epoch/train_loss"] == [(1, 2.0), (2, 1.0)]
    assert json.loads((tmp_path / "summary.json").read_text())["tensorboard"] == "tensorboard"


@pytest.mark.parametrize("resume_step", [0, 2], ids=["at-epoch-end", "inside-the-epoch"])
def test_resume_purges_later_tensorboard_events(tmp_path, resume_step):
    with RunReport(tmp_path) as report:  # epochs 1-3 and half of 4, checkpoint after epoch 2 (+ resume_step)
        _train(report, epochs=3)
        for g in (13, 14):
            report.step(g, {"train/loss": -1.0, "lr": 0.1})
    with RunReport(tmp_path, resume_epoch=2) as report:
        for g in range(9 + resume_step, 13):
            report.step(g, {"train/loss": 200.0 + g, "lr": 0.01})
        report.epoch(_row(3, train_loss=7.0))
        _train(report, epochs=4, start_epoch=4)
    steps = _scalars(tmp_path / "tensorboard" / "steps")
    old = [(g, 100.0 + g) for g in range(1, 9 + resume_step)]
    assert steps["train/loss"] == old + [(g, 200.0 + g) for g in range(9 + resume_step, 13)] + \
        [(g, 100.0 + g) for g in range(13, 17)]
    epochs = _scalars(tmp_path / "tensorboard" / "epochs")
    assert epochs["epoch/train_loss"] == [(1, 2.0), (2, 1.0), (3, 7.0), (4, 0.5)]
    assert [r["epoch"] for r in _read(tmp_path)[1]] == ["1", "2", "3", "4"]


def test_a_new_run_removes_old_event_files(tmp_path):
    with RunReport(tmp_path) as report:
        _train(report, epochs=2)
    with RunReport(tmp_path) as report:
        report.step(1, {"train/loss": 5.0})
        report.epoch(_row(1))
    assert _scalars(tmp_path / "tensorboard" / "steps")["train/loss"] == [(1, 5.0)]
    assert [s for s, _ in _scalars(tmp_path / "tensorboard" / "epochs")["epoch/lr"]] == [1]


def test_without_tensorboard_training_goes_on_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails with ImportError
    with caplog.at_level(logging.WARNING, logger="tdsa_fast.reporting"):
        with RunReport(tmp_path) as report:
            _train(report, epochs=2)
            assert report.finish({}) is not None
    assert len([r for r in caplog.records if "TensorBoard is not available" in r.getMessage()]) == 1
    assert len(_read(tmp_path)[1]) == 2 and not (tmp_path / "tensorboard").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["tensorboard"] is None


def test_close_is_idempotent_and_a_closed_report_refuses_rows(tmp_path):
    report = RunReport(tmp_path)
    report.epoch(_row(1))
    report.close()
    report.close()
    with pytest.raises(RuntimeError, match="closed"):
        report.epoch(_row(2))
    assert report.finish({}) == tmp_path / "training_curves.png"  # still readable after close
