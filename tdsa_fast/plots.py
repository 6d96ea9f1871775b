"""Figures drawn from numbers, with matplotlib's Agg backend (no display needed). A leaf: it imports
nothing of the trainer, so the trainer, ``reporting`` and ``visualize`` can all draw with it."""
from __future__ import annotations

from typing import Sequence

__all__ = ["render_curves"]


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
