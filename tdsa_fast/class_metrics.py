"""Where a classifier fails: a confusion matrix accumulated on the device, and what it gives --
top-1 / top-k accuracy, mean per-class accuracy, a per-class table, the matrix as CSV and PNG.

:class:`ConfusionCounter` is updated batch by batch with the scores and labels (no host
read until :meth:`ConfusionCounter.report`); several processes each count their shard and
sum the counts (``all_reduce_sum``). Rows of the matrix are true classes, columns
predicted classes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["ConfusionCounter", "ClassReport", "PER_CLASS_FIELDS", "write_per_class_csv", "write_confusion_csv",
           "plot_confusion", "worst_classes"]

PER_CLASS_FIELDS = ("class", "name", "images", "accuracy", "most_confused_with", "confused_images")


class ConfusionCounter:
    """``update(scores [n, S], labels [n])`` adds the batch's argmax predictions to a
    ``[S, S]`` int64 matrix on the scores' device, and counts the labels among the
    ``top_k`` best scores."""

    def __init__(self, num_classes: int, device="cpu", top_k: int = 5):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes, self.top_k = num_classes, min(top_k, num_classes)
        self.matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.top_k_correct = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        if scores.dim() != 2 or scores.shape[1] != self.num_classes or labels.shape != scores.shape[:1]:
            raise ValueError(f"scores must be [n, {self.num_classes}] and labels [n], got "
                             f"{tuple(scores.shape)} and {tuple(labels.shape)}")
        predicted = scores.argmax(1)
        self.matrix += torch.bincount(labels * self.num_classes + predicted, minlength=self.matrix.numel())
        top = scores.topk(self.top_k, dim=1).indices
        self.top_k_correct += (top == labels[:, None]).any(1).sum()

    def all_reduce(self, procs) -> None:
        """Sums the counts over the processes of ``procs`` (a :class:`tdsa_fast.distributed.Processes`)."""
        summed = procs.all_reduce_sum(torch.cat([self.matrix, self.top_k_correct[None]]))
        self.matrix, self.top_k_correct = summed[:-1], summed[-1]

    def report(self, class_names: Sequence[str]) -> "ClassReport":
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        matrix = self.matrix.view(self.num_classes, self.num_classes).cpu().numpy()
        return ClassReport(matrix, list(class_names), int(self.top_k_correct), self.top_k)


@dataclass
class ClassReport:
    """The counts of an evaluation: ``matrix`` ``int64 [S, S]`` (true x predicted)."""

    matrix: np.ndarray
    class_names: list
    top_k_correct: int
    top_k: int

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.matrix))

    @property
    def images_per_class(self) -> np.ndarray:
        return self.matrix.sum(1)

    @property
    def class_accuracy(self) -> np.ndarray:
        """``float [S]``: the recall of each class; NaN for a class without images."""
        n = self.images_per_class
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, np.diag(self.matrix) / np.maximum(n, 1), np.nan)

    def summary(self) -> dict:
        """top-1, top-5 (``top_k`` = 5, or the class count when there are fewer) and the mean,
        over the classes that have images, of their accuracy."""
        total = max(self.total, 1)
        acc = self.class_accuracy
        return {"top1": self.correct / total, "top5": self.top_k_correct / total, "top_k": self.top_k,
                "mean_class_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
                "correct": self.correct, "total": self.total, "classes": len(self.class_names),
                "classes_with_images": int((self.images_per_class > 0).sum())}

    def rows(self) -> list[dict]:
        """One dict per class (:data:`PER_CLASS_FIELDS`), in label order; the most confused
        class is the one its images are most often predicted as (empty when never wrong)."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        out = []
        for i, (name, n, acc) in enumerate(zip(self.class_names, self.images_per_class, self.class_accuracy)):
            j = int(off[i].argmax())
            wrong = int(off[i, j])
            out.append({"class": i, "name": name, "images": int(n), "accuracy": float(acc),
                        "most_confused_with": self.class_names[j] if wrong else "", "confused_images": wrong})
        return out

    def worst(self, k: int) -> list[int]:
        """The ``k`` classes of lowest accuracy (classes without images last)."""
        return worst_classes(self.class_accuracy, k)


def worst_classes(class_accuracy: np.ndarray, k: int) -> list[int]:
    """The indices of the ``k`` lowest accuracies (NaN, a class without images, last; ties in label order)."""
    acc = np.nan_to_num(np.asarray(class_accuracy, dtype=float), nan=np.inf)
    return [int(i) for i in np.argsort(acc, kind="stable")[:k]]


def write_per_class_csv(report: ClassReport, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PER_CLASS_FIELDS)
        w.writeheader()
        for row in report.rows():
            w.writerow(dict(row, accuracy=f"{row['accuracy']:.6f}"))


def write_confusion_csv(report: ClassReport, path: Path) -> None:
    """Rows: true class; columns: predicted class; first row and column: the class names."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted"] + report.class_names)
        for name, counts in zip(report.class_names, report.matrix.tolist()):
            w.writerow([name] + counts)


def plot_confusion(report: ClassReport, path: Path, *, label_worst: int = 20, title: Optional[str] = None) -> None:
    """The confusion-matrix PNG of ``report`` (drawn by :func:`tdsa_fast.plots.render_confusion`)."""
    from tdsa_fast.plots import render_confusion

    fig = render_confusion(report.matrix, report.class_names, label_worst=label_worst, title=title)
    fig.savefig(path, dpi=120)
