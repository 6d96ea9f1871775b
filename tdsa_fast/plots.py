"""Figures drawn from numbers, with matplotlib's Agg backend (no display needed). A leaf: it imports
nothing of the trainer, so the trainer, ``reporting`` and ``visualize`` can all draw with it."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["render_curves", "render_confusion", "confusion_order"]

LABEL_ALL_UP_TO = 40  # classes: up to this many, every class is named on the confusion axes


def render_curves(runs: Sequence[tuple[str, dict]], title: str = "", loss_column: str = "train_loss",
                  with_ce: bool = False):
    """Figure with test accuracy (%) and training loss per epoch, and with ``with_ce`` a third
    panel with the training cross-entropy alone (the total of the channel-grouped losses is
    dominated by their own terms); ``runs``: ``(label, read_metrics(...))``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(16 if with_ce else 11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if with_ce else 2)
    ax_acc, ax_loss = axes[:2]
    for label, m in runs:
        ax_acc.plot(m["acc_epochs"], [100 * a for a in m["test_acc"]], marker=".", label=label)
        ax_loss.plot(m["loss_epochs"], m["train_loss"], marker=".", label=label)
        if with_ce:
            axes[2].plot(m.get("ce_epochs", []), m.get("train_ce", []), marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    what = "training loss" if loss_column == "train_loss" else f"training {loss_column.removeprefix('train_')}"
    ax_loss.set(xlabel="epoch", ylabel=what, title=what)
    if with_ce:
        axes[2].set(xlabel="epoch", ylabel="training cross-entropy", title="training cross-entropy")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def confusion_order(matrix: np.ndarray) -> list[int]:
    """An order of the classes that puts classes confused with each other next to each other:
    the leaves of an average-linkage clustering of the symmetrised, row-normalised confusion
    (distance ``1 - (R_ij + R_ji) / 2``, scaled by the largest off-diagonal rate); the label
    order when there are fewer than 3 classes or no confusion at all."""
    matrix = np.asarray(matrix, dtype=float)
    s = matrix.shape[0]
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0)
    if s < 3 or similarity.max() <= 0:
        return list(range(s))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = 1.0 - similarity / similarity.max()
    np.fill_diagonal(distance, 0)
    return [int(i) for i in leaves_list(linkage(squareform(distance, checks=False), method="average"))]


def render_confusion(matrix, class_names: Sequence[str], *, label_worst: int = 20, title: Optional[str] = None):
    """Figure of the row-normalised confusion matrix ``matrix`` (``[S, S]`` counts, rows: true
    class, columns: predicted): classes in :func:`confusion_order` (confused classes sit
    together near the diagonal), a square-root colour scale (a few confused images stay
    visible), on both axes the names and accuracies of the ``label_worst`` least accurate
    classes (of every class when there are at most ``LABEL_ALL_UP_TO``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    s = len(class_names)
    if matrix.shape != (s, s):
        raise ValueError(f"a [{s}, {s}] matrix for {s} class names, got {matrix.shape}")
    images = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(images > 0, np.diag(matrix) / np.maximum(images, 1), np.nan)
    order = confusion_order(matrix)
    rates = matrix / np.maximum(images[:, None], 1)
    shown = rates[np.ix_(order, order)]
    if s <= LABEL_ALL_UP_TO:
        labelled = set(range(s))
    else:
        labelled = set(int(i) for i in np.argsort(np.nan_to_num(acc, nan=np.inf), kind="stable")[:label_worst])
    side = min(max(6.0, 0.07 * s + 4), 20.0)
    fig = Figure(figsize=(side + 2, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="share of the true class's images")
    ticks = [k for k, c in enumerate(order) if c in labelled]
    names = [f"{str(class_names[order[k]])[:28]} ({'-' if np.isnan(acc[order[k]]) else f'{100 * acc[order[k]]:.0f}%'})"
             for k in ticks]
    fontsize = 7 if s > LABEL_ALL_UP_TO else max(5, min(9, 300 // max(s, 1)))
    ax.set_xticks(ticks, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = max(int(matrix.sum()), 1)
    top1 = float(np.trace(matrix)) / total
    mean = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    worst = "" if s <= LABEL_ALL_UP_TO else f"; labelled: the {len(labelled)} least accurate classes"
    ax.set_title((title + "\n" if title else "") + f"top-1 {100 * top1:.2f}%, mean per-class {100 * mean:.2f}% "
                 f"over {s} classes (ordered by confusion{worst})", fontsize=9)
    fig.tight_layout()
    return fig
