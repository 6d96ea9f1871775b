"""What the baseline losses share: argument checks, the float32 region, and the base class of
the losses that own one weight vector per class.

Checks read metadata only (shapes, dtypes, devices; no host synchronisation) and raise
``ValueError`` naming the argument. Label range is checked where labels enter (dataset,
loader), not here (docs/contract.md).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from tdsa_fast._checks import int_at_least


def check_float(name: str, value, *, low: float = 0.0, low_open: bool = False,
                high: float = math.inf, high_open: bool = True) -> float:
    """A finite (or +inf when ``high`` allows it) real in the interval described by the flags."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}")
    return float(value)


def check_target(target: torch.Tensor, batch: int, ref_name: str, ref: torch.Tensor) -> None:
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must have shape [{batch}] to match {ref_name} of shape "
                         f"{tuple(ref.shape)}, got {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    if target.device != ref.device:
        raise ValueError(f"target is on {target.device} but {ref_name} is on {ref.device}")


def check_matrix(name: str, x: torch.Tensor, width: int | None = None, width_name: str = "") -> None:
    """``x`` must be a floating ``[B, width]`` tensor with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0 or (width is not None and x.shape[1] != width):
        want = f"[B, {width}] ({width_name})" if width is not None else "[B, C]"
        raise ValueError(f"{name} must have shape {want} with B >= 1, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")


def float32(device: torch.device):
    """A region where autocast is off, so a loss computes in float32 whatever the caller's autocast."""
    return torch.autocast(device_type=device.type, enabled=False)


class ClassWeightLoss(nn.Module):
    """A loss that owns one learnable vector per class and reads the model's embedding.

    ``forward(embedding [B, D], target [B]) -> scalar`` (mean over the batch) and
    ``logits(embedding) -> [B, S]``: the scores used for prediction (the loss's logits
    without its margin). Both compute in float32, also under autocast.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = int_at_least("num_classes", num_classes, 2)
        self.embedding_dim = int_at_least("embedding_dim", embedding_dim, 1)

    def _check(self, embedding: torch.Tensor, target: torch.Tensor | None = None) -> None:
        check_matrix("embedding", embedding, self.embedding_dim, "embedding_dim")
        if target is not None:
            check_target(target, embedding.shape[0], "embedding", embedding)

    def _class_weights(self) -> nn.Parameter:
        """A ``[S, D]`` parameter, Xavier-uniform initialised (the released SphereFace and LGM code)."""
        w = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.xavier_uniform_(w)
        return w

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"
