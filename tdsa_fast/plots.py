"""Figures drawn from numbers, with matplotlib's Agg backend (no display needed). A leaf: it imports
nothing of the trainer, so the trainer, ``reporting`` and ``visualize`` can all draw with it."""
from __future__ import annotations

from typing import Sequence

__all__ = ["render_curves"]


def render_curves(runs: Sequence[tuple[str, dict]], title: str = "", loss_column: str = "train_loss"):
    """Figure with test accuracy (%) and training loss per epoch; ``runs``: ``(label, read_metrics(...))``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for label, m in runs:
        ax_acc.plot(m["acc_epochs"], [100 * a for a in m["test_acc"]], marker=".", label=label)
        ax_loss.plot(m["loss_epochs"], m["train_loss"], marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    what = "training loss" if loss_column == "train_loss" else f"training {loss_column.removeprefix('train_')}"
    ax_loss.set(xlabel="epoch", ylabel=what, title=what)
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
