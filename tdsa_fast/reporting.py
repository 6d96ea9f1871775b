"""What a training run writes for people to read: :class:`RunReport`.

In the run folder ``out``:

* ``metrics.csv``: a header of :data:`METRIC_FIELDS`, then one row per epoch; integers as
  written, other numbers with ``'%.6g'``; an epoch without a test evaluation has
  ``test_acc`` = ``nan``. Each row is flushed as soon as it is written.
* ``tensorboard/steps``: the periodic training scalars of :meth:`RunReport.step`, at the
  global step (tags as given, e.g. ``train/loss``).
* ``tensorboard/epochs``: every number of every metrics row except ``epoch`` itself, as
  ``epoch/<field>`` at step ``epoch`` (NaN values, i.e. epochs not evaluated, are left out).
  ``tensorboard --logdir out/tensorboard`` shows the two folders as two runs.
* ``training_curves.png`` (at the end): test accuracy and training loss per epoch, two
  panels, the paper's Fig. 5 style (:func:`tdsa_fast.plots.render_curves`).
* ``summary.json`` (at the end): the trainer's summary plus what :meth:`RunReport.finish`
  reads back from ``metrics.csv``; NaN and infinities are written as ``null`` (strict JSON).

Resuming (``resume_epoch=k``: the checkpoint's last completed epoch is ``k``) keeps the
rows of epochs ``<= k`` and appends after them; a row of a later epoch (written before a
kill that came before its checkpoint) is dropped. TensorBoard's ``purge_step`` hides the
events at or after a step, and the two kinds of scalars count steps differently, hence the
two folders: the epochs writer opens with ``purge_step = k + 1``; the steps writer opens at
the first :meth:`RunReport.step` call with ``purge_step`` = that call's global step, the first
step the resumed run repeats (this is exact whether the checkpoint was taken at an epoch's
end or inside one, provided the global step counts on across the restart and the logging
interval is unchanged: events an older schedule wrote before that step would stay).
A new run (``resume_epoch=None``) starts ``metrics.csv`` afresh and removes the event files
an earlier run left in those two folders.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import time
from pathlib import Path
from typing import Optional

from tdsa_fast.config import saved_run
from tdsa_fast.plots import render_curves

__all__ = ["METRIC_FIELDS", "RunReport", "read_metrics", "run_label"]

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_ce", "train_acc", "test_acc",
                 "images_per_s", "epoch_seconds", "skipped_images")

CURVES_NAME = "training_curves.png"
_EVENTS_PREFIX = "events.out.tfevents."

logger = logging.getLogger(__name__)


def _cell(v) -> str:
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return "%.6g" % v
    return str(v)


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _read_csv(path: Path) -> tuple[Optional[list[str]], list[list[str]]]:
    """``(header or None for an empty file, rows)`` of ``path``, cells as strings."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else (None, [])


def read_metrics(run_dir, loss_column: str = "train_loss") -> dict:
    """Reads ``run_dir/metrics.csv``: ``dict(acc_epochs, test_acc, loss_epochs, train_loss, ce_epochs,
    train_ce)`` (lists; points whose value is nan or missing are left out). ``train_loss`` holds the
    column ``loss_column`` (``train_loss``: the whole objective; ``train_ce``: its cross-entropy);
    ``train_ce`` the cross-entropy alone (empty for a file without that column)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.csv (not a tdsa_fast run folder?)")
    header, rows = _read_csv(path)
    if not header or not {"epoch", "test_acc", loss_column} <= set(header):
        raise ValueError(f"{path}: expected the columns epoch, {loss_column} and test_acc")
    column = {k: i for i, k in enumerate(header)}
    acc_e, acc, loss_e, loss, ce_e, ce = [], [], [], [], [], []
    for row in rows:
        cell = lambda k: _number(row[column[k]]) if column[k] < len(row) else float("nan")  # noqa: E731
        e = cell("epoch")
        if math.isnan(e):
            continue
        a, t = cell("test_acc"), cell(loss_column)
        if not math.isnan(a):
            acc_e.append(e), acc.append(a)
        if not math.isnan(t):
            loss_e.append(e), loss.append(t)
        c = cell("train_ce") if "train_ce" in column else float("nan")
        if not math.isnan(c):
            ce_e.append(e), ce.append(c)
    return dict(acc_epochs=acc_e, test_acc=acc, loss_epochs=loss_e, train_loss=loss, ce_epochs=ce_e, train_ce=ce)


def run_label(run_dir) -> str:
    """``loss / model / dataset`` from ``run_dir/config.json`` (the folder's name without one)."""
    cfg_path = Path(run_dir) / "config.json"
    try:
        cfg = saved_run(json.loads(cfg_path.read_text()), str(cfg_path)).config
        return f"{cfg.loss} / {cfg.model} / {cfg.dataset}"
    except (OSError, ValueError, TypeError):
        return Path(run_dir).name


def _write_atomic(path: Path, write) -> None:
    """Calls ``write(temporary path)``, then renames the file over ``path`` (a kill leaves the old
    file or the new one). The temporary file is made by ``open``, so it gets the umask's mode."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v) if math.isfinite(v) else None
    return str(v)  # paths, devices, ...


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(_EVENTS_PREFIX + "*")) if folder.is_dir() else []


def _wait_past_event_files(folder: Path) -> None:
    """Sleeps (under a second) until the clock is past the newest event file's timestamp.

    TensorBoard reads a folder's event files in name order and the name starts with the
    writer's creation time in whole seconds, then host, pid and a counter compared as text
    (".10" sorts before ".9"); a file made in the same second as an older one could be
    read first, and then its purge would run before the events it should hide."""
    stamps = [p.name[len(_EVENTS_PREFIX):].split(".")[0] for p in _event_files(folder)]
    newest = max((int(t) for t in stamps if t.isdigit()), default=None)
    give_up = time.time() + 1.1  # a file stamped in the future (clock changes): do not wait for it
    while newest is not None and time.time() < min(newest + 1, give_up):
        time.sleep(0.05)


class RunReport:
    """What a training run writes for people to read, in its run folder ``out`` (rank 0 only:
    with ``enabled=False`` every method is a no-op and nothing is created): metrics.csv (one
    row per epoch, :data:`METRIC_FIELDS`), TensorBoard event files under ``out/"tensorboard"``,
    at the end ``training_curves.png`` (training loss and test accuracy per epoch, the paper's
    Fig. 5 style, two panels) and ``summary.json``. See the module's docstring for the formats
    and for what ``resume_epoch`` keeps.

    ``tensorboard=False``, or TensorBoard not installed (one warning), writes no event files.
    Raises ``ValueError`` when resuming onto a metrics.csv whose header is not
    :data:`METRIC_FIELDS`. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, out, *, enabled: bool = True, resume_epoch: int | None = None, tensorboard: bool = True):
        self.out = Path(out)
        self.enabled = enabled
        self.resume_epoch = resume_epoch
        self._csv_file = None
        self._writer_cls = None
        self._epochs_tb = self._steps_tb = None
        self._closed = False
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "metrics.csv"
        self.tensorboard_dir = self.out / "tensorboard"
        self._start_csv()
        if resume_epoch is None:
            for folder in ("epochs", "steps"):
                for p in _event_files(self.tensorboard_dir / folder):
                    p.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                logger.warning("TensorBoard is not available (%s): no TensorBoard event files for this run "
                               "(pip install tensorboard)", e)
            else:
                self._writer_cls = SummaryWriter
                self._epochs_tb = self._open_writer("epochs", None if resume_epoch is None else resume_epoch + 1)

    def _start_csv(self) -> None:
        """Opens metrics.csv for appending: afresh for a new run, after the kept rows on a resume."""
        kept = []
        k = self.resume_epoch
        if k is not None and self.metrics_path.is_file():
            header, rows = _read_csv(self.metrics_path)
            if header is not None and tuple(header) != METRIC_FIELDS:
                raise ValueError(
                    f"cannot resume into {self.metrics_path}: its columns are {','.join(header)}, "
                    f"not {','.join(METRIC_FIELDS)} (a run of another tdsa_fast version?); "
                    f"move the file away or start a new run in another folder")
            kept = [r for r in rows if len(r) == len(METRIC_FIELDS) and _number(r[0]) <= k]
        elif k:
            logger.warning("resuming after epoch %d but %s is missing: it starts empty", k, self.metrics_path)

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([METRIC_FIELDS, *kept])

        _write_atomic(self.metrics_path, write)
        self._csv_file = open(self.metrics_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)

    def _open_writer(self, folder: str, purge_step: Optional[int]):
        log_dir = self.tensorboard_dir / folder
        if purge_step is not None:
            _wait_past_event_files(log_dir)
        return self._writer_cls(log_dir=str(log_dir), purge_step=purge_step)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the RunReport of {self.out} is closed")

    def step(self, global_step: int, values: dict[str, float]) -> None:
        """Periodic training scalars (e.g. ``{"train/loss": .., "train/acc": .., "lr": ..,
        "images_per_s": ..}``, tags as given) to TensorBoard at ``global_step``, which must count
        on across a resume (e.g. ``(epoch - 1) * steps_per_epoch + step``)."""
        if not self.enabled:
            return
        self._check_open()
        if self._writer_cls is None:
            return
        if self._steps_tb is None:
            self._steps_tb = self._open_writer("steps", None if self.resume_epoch is None else global_step)
        for tag, value in values.items():
            self._steps_tb.add_scalar(tag, float(value), global_step)

    def epoch(self, row: dict) -> None:
        """One metrics.csv row (keys :data:`METRIC_FIELDS`; floats written with ``'%.6g'``; a NaN
        ``test_acc`` -- an epoch without evaluation -- written as ``nan``), flushed at once, and
        the row's finite numbers to TensorBoard as ``epoch/<field>`` at step ``row["epoch"]``.
        Raises ``ValueError`` when the keys are not :data:`METRIC_FIELDS`."""
        if not self.enabled:
            return
        self._check_open()
        if set(row) != set(METRIC_FIELDS):
            raise ValueError(f"a metrics row needs exactly the keys {', '.join(METRIC_FIELDS)}; "
                             f"got {', '.join(map(str, row))}")
        self._csv.writerow([_cell(row[k]) for k in METRIC_FIELDS])
        self._csv_file.flush()
        if self._epochs_tb is not None:
            step = int(row["epoch"])
            for k in METRIC_FIELDS[1:]:
                v = row[k]
                if isinstance(v, numbers.Real) and math.isfinite(v):
                    self._epochs_tb.add_scalar(f"epoch/{k}", float(v), step)
            self._epochs_tb.flush()

    def finish(self, summary: dict) -> Path | None:
        """Writes ``training_curves.png`` and ``summary.json`` from metrics.csv; returns the PNG's
        path (``None`` when disabled or when no epoch was recorded, and then no PNG is written).

        ``summary.json`` (atomic write) holds ``summary`` and, where ``summary`` has no such key:
        ``epochs_completed`` (last epoch in metrics.csv), ``best_epoch`` / ``best_test_acc``
        (highest test_acc, earliest epoch on ties; ``null`` without an evaluation),
        ``train_seconds`` (sum of epoch_seconds), ``skipped_images`` (sum), and the file names
        ``metrics`` (``"metrics.csv"``), ``curves`` (``"training_curves.png"`` or ``null``),
        ``tensorboard`` (``"tensorboard"`` or ``null``), relative to the run folder.
        May be called before or after :meth:`close`."""
        if not self.enabled:
            return None
        for w in (self._epochs_tb, self._steps_tb):
            if w is not None:
                w.flush()
        if self._csv_file is not None:
            self._csv_file.flush()
        rows = [r for r in _read_csv(self.metrics_path)[1] if len(r) == len(METRIC_FIELDS)]
        cols = {k: [_number(r[i]) for r in rows] for i, k in enumerate(METRIC_FIELDS)}
        evaluated = [(a, e) for e, a in zip(cols["epoch"], cols["test_acc"]) if math.isfinite(a)]
        best_acc, best_epoch = max(evaluated, key=lambda p: (p[0], -p[1])) if evaluated else (None, None)
        png = self.out / CURVES_NAME if cols["epoch"] else None
        if png is not None:
            fig = render_curves([(run_label(self.out), read_metrics(self.out))], with_ce=True)
            _write_atomic(png, lambda tmp: fig.savefig(tmp, format="png"))
        finite = {k: [x for x in v if math.isfinite(x)] for k, v in cols.items()}
        added = dict(epochs_completed=int(max(finite["epoch"])) if finite["epoch"] else None,
                     best_epoch=None if best_epoch is None else int(best_epoch), best_test_acc=best_acc,
                     train_seconds=sum(finite["epoch_seconds"]), skipped_images=int(sum(finite["skipped_images"])),
                     metrics=self.metrics_path.name, curves=CURVES_NAME if png is not None else None,
                     tensorboard=self.tensorboard_dir.name if self._writer_cls is not None else None)
        text = json.dumps(_json_safe({**added, **summary}), indent=2, allow_nan=False) + "\n"

        def write(tmp):
            Path(tmp).write_text(text)

        _write_atomic(self.out / "summary.json", write)
        return png

    def close(self) -> None:
        """Closes metrics.csv and the TensorBoard writers; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        for w in (self._epochs_tb, self._steps_tb):
            if w is not None:
                w.close()
        if self._csv_file is not None:
            self._csv_file.close()
        self._epochs_tb = self._steps_tb = self._csv_file = None

    def __enter__(self) -> "RunReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
