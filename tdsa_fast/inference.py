"""A trained run as an inference network: load a checkpoint into the backbone and classifier,
with the run's class names and its test transform.

The inference network maps normalised images ``[B, 3, s, s]`` (float32, values in
``[-1, 1]``: ``(pixel - 127.5) / 127.5``, the trainer's ``Normalize(mean 0.5, std 0.5)``)
to class scores ``[B, S]``: the classifier's logits, or, for a baseline loss that owns its
class weights (``lmcl``, ``arcface``, ...), that loss's margin-free logits. The MC/TDSA
terms are training-only and are not part of it. :mod:`tdsa_fast.predict`,
:mod:`tdsa_fast.evaluate` and :mod:`tdsa_fast.export` share it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from tdsa_fast import checkpoint
from tdsa_fast.config import RunFacts, SavedRun, saved_run
from tdsa_fast.runs import build_network, build_objective, load_state

__all__ = ["MEAN", "STD", "TTA_MODES", "ModelInfo", "InferenceNetwork", "checkpoint_file", "load_inference",
           "read_class_names", "tta_probabilities"]

MEAN = (0.5, 0.5, 0.5)  # of the trainer's transforms (tdsa_fast.data.augment), on [0, 1] pixels
STD = (0.5, 0.5, 0.5)
TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class ModelInfo:
    """What a user of the network needs besides its weights (an exported file's metadata).

    ``img_size``: the square input side ``s``; ``mean`` / ``std``: per channel, on pixels
    scaled to ``[0, 1]``; ``resize``: how an image becomes ``s x s``."""

    class_names: tuple[str, ...]
    img_size: int
    model: str
    loss: str
    dataset: str
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    resize: str = "bilinear resize of the whole image to img_size x img_size (no crop), RGB"
    input_range: str = "(pixel / 255 - mean) / std, i.e. [-1, 1]"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metadata(self) -> dict:
        """A JSON-ready dict of every field."""
        d = asdict(self)
        d.update(class_names=list(self.class_names), mean=list(self.mean), std=list(self.std),
                 num_classes=self.num_classes)
        return d


class InferenceNetwork(nn.Module):
    """``forward(x [B, 3, s, s] normalised) -> scores [B, S]`` (``probabilities=True``:
    softmax of the scores, float32)."""

    def __init__(self, model: nn.Module, objective: Optional[nn.Module] = None, *, probabilities: bool = False):
        super().__init__()
        self.model = model
        # a baseline loss with its own class weights replaces the model's last Linear
        self.scores = objective.baseline if objective is not None and objective.owns_class_weights else None
        self.probabilities = bool(probabilities)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        scores = out.logits if self.scores is None else self.scores.logits(out.embedding)
        return F.softmax(scores.float(), dim=1) if self.probabilities else scores


def checkpoint_file(path, option: str = "--checkpoint") -> Path:
    """``path`` itself, or for a run folder its ``best.pt`` (``last.pt`` when the run has no
    best yet)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{option} {path} is a folder without best.pt or last.pt; expected a run folder "
                                "of python -m tdsa_fast.train or a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{option}: no checkpoint at {path}")
    return path


def read_class_names(path) -> list[str]:
    """One class name per line (blank lines ignored), in label order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"--class-names {path}: {e.strerror or e}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ValueError(f"--class-names {path} holds no names")
    return names


def _class_names(facts: RunFacts, path: Path, override: Optional[Sequence[str]], required: bool) -> tuple[str, ...]:
    num_classes = facts.num_classes
    names = list(override) if override is not None else facts.class_names
    if names is None and not required:
        return ()
    if names is None:
        raise ValueError(f"{path} has no class-name table (it was written by a trainer before class names "
                         "were saved); give the names in label order, one per line: --class-names FILE "
                         "(Python: class_names=[...])")
    if len(names) != num_classes:
        where = "the given class names" if override is not None else "its class-name table"
        raise ValueError(f"{path}: {where} has {len(names)} names for a {num_classes}-class network")
    return tuple(str(n) for n in names)


def load_inference(path, *, device="cpu", class_names: Optional[Sequence[str]] = None,
                   probabilities: bool = False, require_class_names: bool = True
                   ) -> tuple[InferenceNetwork, ModelInfo, SavedRun]:
    """(network in eval mode on ``device``, its :class:`ModelInfo`, the run's saved config and facts) of
    the checkpoint ``path`` (a ``.pt`` file or a run folder: its ``best.pt``).

    ``class_names`` replaces the checkpoint's table (needed for checkpoints written before
    it was saved); with ``require_class_names=False`` a checkpoint without them gives
    ``info.class_names == ()`` (the caller takes them from the dataset). Raises FileNotFoundError (no file) or ValueError (a file that is not a
    tdsa_fast checkpoint, of an unknown format, without class names, or whose weights do
    not fit its config), naming the file."""
    path = checkpoint_file(path)
    ckpt = checkpoint.load(path)
    fmt = ckpt.get("format", 1)
    if fmt not in checkpoint.MODEL_FORMATS:
        raise ValueError(f"{path} has checkpoint format {fmt!r}; this version of tdsa_fast reads formats "
                         f"{', '.join(map(str, checkpoint.MODEL_FORMATS))} (a newer tdsa_fast wrote it?)")
    missing = [k for k in ("model", "loss", "num_classes", "img_size") if k not in ckpt["config"]]
    if missing:
        raise ValueError(f"{path}: its config lacks {', '.join(missing)}; not a checkpoint of tdsa_fast.train")
    saved = saved_run(ckpt["config"], f"{path}: config")
    cfg, n = saved.config, saved.facts.num_classes
    names = _class_names(saved.facts, path, class_names, require_class_names)
    model = build_network(cfg, n)
    load_state(model, ckpt["model"], "model", cfg, n)
    objective = build_objective(cfg, n)
    load_state(objective, ckpt.get("objective", {}), "objective", cfg, n)
    net = InferenceNetwork(model, objective, probabilities=probabilities).to(device).eval()
    info = ModelInfo(class_names=names, img_size=int(cfg.img_size), model=cfg.model, loss=cfg.loss,
                     dataset=cfg.dataset)
    return net, info, saved


def tta_probabilities(net: nn.Module, x: Tensor, tta: str = "none") -> Tensor:
    """Softmax probabilities ``[B, S]`` (float32) of ``net``'s scores on ``x``; ``tta="flip"``
    averages them with those of the horizontally mirrored images."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    probs = F.softmax(net(x).float(), dim=1)
    if tta == "flip":
        probs = (probs + F.softmax(net(x.flip(3)).float(), dim=1)) / 2
    return probs
