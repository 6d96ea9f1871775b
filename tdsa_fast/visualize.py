"""``python -m tdsa_fast.visualize``: the paper's channel visualisations (Fig. 6) and accuracy curves (Fig. 5).

Two subcommands::

    python -m tdsa_fast.visualize fig6 --checkpoint runs/RUN/best.pt --image bird.jpg --out fig6.png
    python -m tdsa_fast.visualize fig6 --checkpoint runs/RUN/best.pt --split test --index 7 [--class-index 3]
    python -m tdsa_fast.visualize curves runs/A runs/B [--labels A B] --out fig5.png

``fig6`` (Fig. 6). For one image and one class ``i`` (the predicted class unless
``--class-index`` is given) the figure has one row per high-level channel of the class:

* column 1: the input image, as the model saw it (the trainer's test transform: ``Resize((s, s))``);
* column 2: high-level channel ``c`` of class ``i`` -- channel ``i·cnum_high + c`` of
  ``ModelOutput.high`` ``[B, S·cnum_high, h, w]``;
* column 3 (``--loss tdsa`` only): its top-down gate ``sigmoid(Upsample(F_h[c]))`` at the
  middle level's size (eq. 7, :func:`tdsa_fast.reference.topdown_gate`, same upsampling mode as training);
* columns 4..: the ``ξ`` middle-level channels that channel gates -- channels
  ``i·n + c·ξ + j`` (``n = cnum_high·ξ``, ``j < ξ``) of ``ModelOutput.middle`` ``[B, S·n, H, W]``,
  raw (default) or gated (``--middle gated``, ``F_l ⊙ gate``, what the TDSA loss sees).

Every map is upsampled bilinearly to the image size and overlaid as a heat map, scaled to
its own range (the range is printed in each panel's title, so dead channels read as
"max 0"). Runs trained with ``--loss tdsa`` or ``tdsa-noattn`` have both grouped levels;
``--loss mc`` groups only the high level, so its figure has no middle columns; ``ce`` and the
other baselines keep the backbone's standard widths (no class grouping) and are refused.

``curves`` (Fig. 5). Test accuracy per epoch (left) and training loss per epoch (right) of
several run folders, read from their ``metrics.csv``; epochs without a test evaluation
(``test_acc`` = ``nan``) are skipped. Legend: ``loss / model / dataset`` from each run's
``config.json``, or ``--labels``. ``--loss-column train_ce`` plots the cross-entropy part of
the objective instead of the whole (the paper-form MC/TDSA objective is negative, so the
whole objectives of different losses are on different scales).

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tdsa_fast import checkpoint, reference
from tdsa_fast.config import TrainConfig, saved_run
from tdsa_fast.loss_specs import LOSSES
from tdsa_fast.models import ModelOutput
from tdsa_fast.plots import render_curves
from tdsa_fast.reporting import read_metrics, run_label

__all__ = ["ClassMaps", "class_maps", "load_model", "preprocess", "render_fig6", "fig6",
           "curves", "main"]


class ClassMaps(NamedTuple):
    """One sample's maps of one class (``k = cnum_high``, ``ξ = n / k``):

    * ``high`` ``[k, h, w]``: the class's high-level channels;
    * ``middle`` ``[k·ξ, H, W]`` or ``None``: the class's middle-level channels (ungated);
      row ``c·ξ + j`` is gated by ``high[c]``;
    * ``gate`` ``[k, H, W]`` or ``None``: ``sigmoid(Upsample(high[c]))`` at the middle size;
    * ``gated_middle`` ``[k·ξ, H, W]`` or ``None``: ``middle ⊙ gate`` repeated ξ times (eq. 7);
    * ``high_channels`` / ``middle_channels``: the indices of those channels in the full maps.
    """

    high: torch.Tensor
    middle: Optional[torch.Tensor]
    gate: Optional[torch.Tensor]
    gated_middle: Optional[torch.Tensor]
    high_channels: list[int]
    middle_channels: list[int]


def class_maps(out: ModelOutput, class_index: int, cnum_high: int, *, sample: int = 0, middle_grouped: bool = True,
               gate: bool = True, mode: str = "nearest") -> ClassMaps:
    """Selects class ``class_index``'s channels of sample ``sample`` from ``out``.

    ``out.high``: ``[B, S·cnum_high, h, w]``; ``out.middle``: ``[B, S·cnum_high·ξ, H, W]``
    when ``middle_grouped`` (class ``i`` owns channels ``[i·n, (i+1)·n)`` at each level).
    ``gate``: also compute the top-down gate and the gated middle channels with the
    reference implementation of eq. 7 (upsampling ``mode``). See :class:`ClassMaps`.
    Raises ``ValueError`` for a class or sample out of range or channel counts that do not
    fit the grouping.
    """
    high_all = out.high.detach()
    b, c_high = high_all.shape[:2]
    if not 0 <= sample < b:
        raise ValueError(f"sample {sample} is out of range for a batch of {b}")
    if cnum_high < 1 or c_high % cnum_high:
        raise ValueError(f"the high map has {c_high} channels, not a multiple of cnum_high={cnum_high}")
    s = c_high // cnum_high
    if isinstance(class_index, bool) or not isinstance(class_index, int) or not 0 <= class_index < s:
        raise ValueError(f"class index {class_index!r} is out of range: the model has {s} classes (0..{s - 1})")
    hs = list(range(class_index * cnum_high, (class_index + 1) * cnum_high))
    high = high_all[sample:sample + 1, hs[0]:hs[-1] + 1].float()  # [1, k, h, w]
    if not middle_grouped:
        return ClassMaps(high[0], None, None, None, hs, [])
    mid_all = out.middle.detach()
    c_mid = mid_all.shape[1]
    if c_mid % c_high:
        raise ValueError(f"the middle map has {c_mid} channels, not a multiple of the high map's {c_high}")
    n = c_mid // c_high * cnum_high  # middle channels per class
    ms = list(range(class_index * n, (class_index + 1) * n))
    middle = mid_all[sample:sample + 1, ms[0]:ms[-1] + 1].float()  # [1, k·ξ, H, W]
    if not gate:
        return ClassMaps(high[0], middle[0], None, None, hs, ms)
    # Slicing one class commutes with the gate: R repeats each high channel inside its class group.
    xi = n // cnum_high
    gates = reference.topdown_gate(torch.ones_like(middle), high, mode)[0, ::xi]  # [k, H, W]
    gated = reference.topdown_gate(middle, high, mode)[0]
    return ClassMaps(high[0], middle[0], gates, gated, hs, ms)


def load_model(path, device: str | torch.device = "cpu"):
    """Rebuilds the model of the checkpoint at ``path`` (with :mod:`tdsa_fast.runs`, as evaluation,
    prediction and export do) and
    returns ``(model in eval mode, SavedRun: the run's config and facts)``. Raises ``ValueError`` for a checkpoint of a
    loss whose model has no class-grouped channels."""
    from tdsa_fast.runs import build_network, load_state

    ckpt = checkpoint.load(path)
    saved = saved_run(ckpt["config"], f"{path}: config")
    cfg, loss = saved.config, saved.config.loss
    if loss not in LOSSES or not LOSSES[loss].grouped:
        raise ValueError(
            f"{path} was trained with --loss {loss}, whose model keeps the backbone's standard widths: "
            f"no channels grouped by class to visualise. fig6 supports checkpoints of --loss tdsa and "
            f"tdsa-noattn (middle and high levels) and mc (the high level only)")
    model = build_network(cfg, saved.facts.num_classes)
    load_state(model, ckpt["model"], "model", cfg, saved.facts.num_classes)
    return model.to(device).eval(), saved


def preprocess(path, img_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The trainer's test transform: ``(uint8 [s, s, 3] shown image, float32 [1, 3, s, s] in [-1, 1])``."""
    from tdsa_fast.data.augment import test_image
    from tdsa_fast.data.decode import load_rgb

    shown, x = test_image(load_rgb(path), img_size)
    return shown, x[None]


def _overlay(ax, image: np.ndarray, fmap: torch.Tensor, title: str) -> None:
    """Draws ``image`` ``[s, s, 3]`` with ``fmap`` ``[h, w]`` upsampled to ``s x s`` as a heat map."""
    s = image.shape[:2]
    up = F.interpolate(fmap[None, None].float(), size=s, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(fmap.min()), float(fmap.max())
    heat = ((up - lo) / (hi - lo)).clamp_(0, 1) if hi > lo else torch.zeros_like(up)
    ax.imshow(image)
    ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def render_fig6(image: np.ndarray, maps: ClassMaps, *, middle: str = "raw", title: str = ""):
    """The Fig. 6 figure (a ``matplotlib.figure.Figure``) for ``image`` ``uint8 [s, s, 3]`` and ``maps``.

    One row per high-level channel ``c``: image | high ``c`` | gate ``c`` (when ``maps.gate``)
    | its ξ middle channels (raw, or ``middle="gated"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if middle not in ("raw", "gated"):
        raise ValueError(f"middle must be 'raw' or 'gated', got {middle!r}")
    if middle == "gated" and maps.gated_middle is None:
        raise ValueError("--middle gated needs a run trained with the top-down gate (--loss tdsa)")
    k = maps.high.shape[0]
    mids = maps.gated_middle if middle == "gated" else maps.middle
    xi = 0 if mids is None else mids.shape[0] // k
    cols = 2 + (maps.gate is not None) + xi
    width = max(1.9 * cols, 6.0)  # inches
    if title:  # about 12 characters per inch at 9 pt
        title = "\n".join(textwrap.fill(line, int(width * 12)) for line in title.splitlines())
    fig = Figure(figsize=(width, 2.0 * k + 0.22 * (title.count("\n") + 1) * bool(title)), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(k, cols, squeeze=False)
    for c in range(k):
        row = axes[c]
        row[0].imshow(image)
        row[0].set_title("image", fontsize=7)
        row[0].set_axis_off()
        h = maps.high[c]
        _overlay(row[1], image, h, f"high ch {maps.high_channels[c]} (max {float(h.max()):.3g})")
        col = 2
        if maps.gate is not None:
            g = maps.gate[c]
            _overlay(row[col], image, g, f"gate {float(g.min()):.2f}-{float(g.max()):.2f}")
            col += 1
        for j in range(xi):
            m = mids[c * xi + j]
            name = "gated mid" if middle == "gated" else "mid"
            _overlay(row[col + j], image, m, f"{name} ch {maps.middle_channels[c * xi + j]} (max {float(m.max()):.3g})")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _pick_image(cfg: TrainConfig, image, split: str, index, data_root) -> tuple[str, Optional[int]]:
    """``(path, true label or None)`` of ``--image`` or of ``--split``/``--index``."""
    if image is not None:
        return str(image), None
    from tdsa_fast.data.datasets import load_split
    from tdsa_fast.runs import dataset_root

    if data_root is not None:
        cfg = cfg.replace(data_root=str(data_root))
    samples = load_split(cfg.dataset, dataset_root(cfg), split).samples
    if not 0 <= index < len(samples):
        raise ValueError(f"--index {index} is out of range: the {split} split has {len(samples)} images")
    return samples[index]


@torch.no_grad()
def fig6(checkpoint_path, out_path, *, image=None, split: str = "test", index: Optional[int] = None,
         class_index: Optional[int] = None, middle: str = "raw", data_root=None, device: str = "cpu") -> dict:
    """Writes the Fig. 6 PNG for one image (``image`` path, or ``split``/``index`` of the run's
    dataset) and returns ``dict(out, class_index, predicted, label, path, probability)``."""
    if (image is None) == (index is None):
        raise ValueError("give exactly one of --image PATH and --index N (with --split)")
    model, (cfg, facts) = load_model(checkpoint_path, device)
    path, label = _pick_image(cfg, image, split, index, data_root)
    shown, x = preprocess(path, cfg.img_size)
    out = model(x.to(device))
    probs = out.logits.float().softmax(1)[0].cpu()
    predicted = int(probs.argmax())
    cls = predicted if class_index is None else class_index
    spec = LOSSES[cfg.loss]
    maps = class_maps(ModelOutput(*(t.cpu() if t is not None else None for t in out)), cls, cfg.cnum_high,
                      middle_grouped=spec.has_middle, gate=spec.gate, mode=cfg.upsample)
    names = facts.class_names or []

    def name(i):
        if i >= len(names):
            return str(i)
        return f"{i} ({names[i] if len(names[i]) <= 48 else names[i][:45] + '...'})"

    widths = f"ξ={cfg.xi}, cnum_high={cfg.cnum_high}" if spec.has_middle else f"cnum_high={cfg.cnum_high}"
    title = (f"{Path(path).name}: {cfg.model} + {cfg.loss} ({widths})\n"
             f"class {name(cls)}, p={float(probs[cls]):.2f}\npredicted {name(predicted)}"
             + (f"; true {name(label)}" if label is not None else ""))
    fig = render_fig6(shown, maps, middle=middle, title=title)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return dict(out=str(out_path), class_index=cls, predicted=predicted, label=label, path=path,
                probability=float(probs[cls]))


# ---------------------------------------------------------------------------------------
# Fig. 5: curves
# ---------------------------------------------------------------------------------------

def curves(run_dirs: Sequence, out_path, *, labels: Optional[Sequence[str]] = None, title: str = "",
           loss_column: str = "train_loss") -> list:
    """Writes the Fig. 5 PNG for ``run_dirs``; returns ``[(label, read_metrics(run)), ...]``."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(run_dirs)} run folders")
    if labels is None:
        labels = [run_label(r) for r in run_dirs]
        for i, lab in enumerate(labels):  # tell runs of the same setting apart by their folder
            if labels.count(lab) > 1:
                labels[i] = f"{lab} ({Path(run_dirs[i]).name})"
    runs = [(lab, read_metrics(r, loss_column)) for lab, r in zip(labels, run_dirs)]
    fig = render_curves(runs, title, loss_column)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.visualize", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f6 = sub.add_parser("fig6", help="channel visualisation of one image and one class (the paper's Fig. 6)")
    f6.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of a tdsa, tdsa-noattn or mc run")
    src = f6.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image file")
    src.add_argument("--index", type=int, help="the N-th image of --split of the run's dataset")
    f6.add_argument("--split", default="test", help="split for --index")
    f6.add_argument("--data-root", default=None, help="override the data folder stored in the checkpoint")
    f6.add_argument("--class-index", type=int, default=None, help="class to show (default: the predicted one)")
    f6.add_argument("--middle", default="raw", choices=("raw", "gated"),
                    help="middle channels as the model outputs them, or multiplied by the gate (tdsa)")
    f6.add_argument("--device", default="cpu")
    f6.add_argument("--out", default="fig6.png")
    cv = sub.add_parser("curves", help="test accuracy and training loss per epoch of several runs (Fig. 5)")
    cv.add_argument("runs", nargs="+", help="run folders (with metrics.csv and config.json)")
    cv.add_argument("--labels", nargs="+", default=None, help="legend labels, one per run folder")
    cv.add_argument("--loss-column", default="train_loss", choices=("train_loss", "train_ce"),
                    help="right panel: the whole training objective, or its cross-entropy part (comparable "
                         "across losses; the paper-form MC/TDSA objective is negative)")
    cv.add_argument("--title", default="")
    cv.add_argument("--out", default="fig5.png")
    a = p.parse_args(argv)
    from tdsa_fast.data.decode import BadImageError

    try:
        if a.command == "fig6":
            r = fig6(a.checkpoint, a.out, image=a.image, split=a.split, index=a.index, class_index=a.class_index,
                     middle=a.middle, data_root=a.data_root, device=a.device)
            print(f"wrote {r['out']}: class {r['class_index']} (p={r['probability']:.3f}, predicted "
                  f"{r['predicted']}) of {r['path']}")
        else:
            runs = curves(a.runs, a.out, labels=a.labels, title=a.title, loss_column=a.loss_column)
            print(f"wrote {a.out}: {len(runs)} runs, " + ", ".join(
                f"{lab}: {len(m['test_acc'])} evaluated epochs" for lab, m in runs))
    except (ValueError, FileNotFoundError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
