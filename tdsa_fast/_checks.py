"""Argument checks: the one integer check every module uses (:func:`int_at_least`), and the
shape, device and dtype checks of the public functional API.

Every tensor check reads tensor metadata only (shape, dtype, device): nothing here
synchronises with a GPU. Each failure raises ``ValueError`` naming the argument
and the shapes involved, before any computation runs.
"""
from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")
DIV_FORMS = ("paper", "code")


def int_at_least(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int``; ``ValueError`` naming ``name`` unless it is an integer (Python's or
    numpy's, not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def feature_map(name: str, x: torch.Tensor) -> None:
    """A feature map must be a 4-D floating tensor ``[B, C, H, W]``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(x.shape)}")


def cnum(name: str, value: int, feat_name: str, feat: torch.Tensor) -> int:
    """``value`` channels per class must divide the channel count of ``feat``; returns S."""
    int_at_least(name, value)
    channels = feat.shape[1]
    if channels % value != 0:
        raise ValueError(
            f"{feat_name} has {channels} channels (shape {tuple(feat.shape)}), "
            f"not divisible by {name}={value}"
        )
    return channels // value


def mask(name: str, m: torch.Tensor, feat_name: str, feat: torch.Tensor) -> None:
    """A channel mask is ``[B, C]`` (per sample) or ``[1, C]`` (shared), floating or bool."""
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
    b, c = feat.shape[0], feat.shape[1]
    if m.dim() != 2 or m.shape[1] != c or m.shape[0] not in (1, b):
        raise ValueError(
            f"{name} must have shape [{b}, {c}] or [1, {c}] to match {feat_name} "
            f"of shape {tuple(feat.shape)}, got {tuple(m.shape)}"
        )
    if not (m.dtype.is_floating_point or m.dtype == torch.bool):
        raise ValueError(f"{name} must be a floating or bool tensor, got {m.dtype}")
    if m.device != feat.device:
        raise ValueError(f"{name} is on {m.device} but {feat_name} is on {feat.device}")


def same_device_dtype(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} has dtype {a.dtype} but {b_name} has dtype {b.dtype}")


def gate_pair(middle: torch.Tensor, high: torch.Tensor) -> int:
    """Checks ``middle`` [B, C_l, H_l, W_l] against ``high`` [B, C_h, H_h, W_h]; returns xi = C_l / C_h."""
    feature_map("middle", middle)
    feature_map("high", high)
    same_device_dtype("middle", middle, "high", high)
    if middle.shape[0] != high.shape[0]:
        raise ValueError(
            f"middle and high must have the same batch size, got middle {tuple(middle.shape)} and high {tuple(high.shape)}"
        )
    if middle.shape[1] % high.shape[1] != 0:
        raise ValueError(
            f"middle channels must be a multiple of high channels, got middle {tuple(middle.shape)} and high {tuple(high.shape)}"
        )
    if middle.shape[2] < high.shape[2] or middle.shape[3] < high.shape[3]:
        raise ValueError(
            f"middle must be at least as large as high spatially, got middle {tuple(middle.shape)} and high {tuple(high.shape)}"
        )
    return middle.shape[1] // high.shape[1]


def class_counts(middle: torch.Tensor, cnum_middle: int, high: torch.Tensor, xi: int) -> int:
    """The gate keeps each class inside its group only when both levels hold the same
    classes: ``C_middle / cnum_middle == C_high / cnum_high`` with ``cnum_high = cnum_middle / xi``."""
    s_middle = cnum("cnum_middle", cnum_middle, "middle", middle)
    if cnum_middle % xi != 0:
        raise ValueError(
            f"class counts disagree between the levels: middle {tuple(middle.shape)} with cnum_middle={cnum_middle} "
            f"holds {s_middle} classes, but high {tuple(high.shape)} would need {cnum_middle}/{xi} = "
            f"{cnum_middle / xi:g} channels per class (xi = C_middle/C_high = {xi})"
        )
    return s_middle


def high_classes(middle: torch.Tensor, high: torch.Tensor, cnum_high: int) -> tuple[int, int]:
    """For the loss: S from ``high`` and ``cnum_high``; returns (S, cnum_middle = xi * cnum_high).
    With cnum_middle derived this way both levels always hold the same S classes."""
    xi = gate_pair(middle, high)
    s_high = cnum("cnum_high", cnum_high, "high", high)
    return s_high, cnum_high * xi


def choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def target(name: str, t: torch.Tensor, batch: int, feat: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}], got {tuple(t.shape)}")
    if t.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        raise ValueError(f"{name} must hold integer class indices, got {t.dtype}")
    if t.device != feat.device:
        raise ValueError(f"{name} is on {t.device} but the features are on {feat.device}")
