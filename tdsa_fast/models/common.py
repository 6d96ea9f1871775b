"""What the backbones share: their output (:class:`ModelOutput`), the size and width checks,
the released classifier head and torchvision's initialisation."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from torch import Tensor, nn

from tdsa_fast._checks import int_at_least

__all__ = ["IMG_SIZE_MIN", "IMG_SIZE_MAX", "HEAD_HIDDEN", "ModelOutput", "check_cnum", "check_img_size", "make_head",
           "head_forward", "init_weights"]

IMG_SIZE_MIN = 32
IMG_SIZE_MAX = 448
HEAD_HIDDEN = 512


class ModelOutput(NamedTuple):
    """What every backbone's ``forward`` returns."""

    logits: Tensor  # [B, S]
    middle: Tensor  # [B, C_mid, Hm, Wm], >= 0
    high: Tensor  # [B, C_high, Hh, Wh], >= 0, Hm > Hh, Wm > Wh
    embedding: Optional[Tensor] = None  # [B, D]: the input of the head's last Linear


def check_cnum(name: str, value) -> Optional[int]:
    if value is None:
        return None
    return int_at_least(name, value)


def check_img_size(img_size, multiple: int = 1) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int):
        raise ValueError(f"img_size must be an int, got {img_size!r}")
    if not IMG_SIZE_MIN <= img_size <= IMG_SIZE_MAX:
        raise ValueError(
            f"img_size={img_size} is outside the supported range "
            f"[{IMG_SIZE_MIN}, {IMG_SIZE_MAX}]"
        )
    if img_size % multiple:
        raise ValueError(
            f"img_size={img_size} must be a multiple of {multiple} for this backbone"
        )
    return img_size


def make_head(in_features: int, num_classes: int, hidden: int = HEAD_HIDDEN) -> nn.Sequential:
    """The released MC-Loss / TDSA classifier: BN1d -> Linear(->512) -> BN1d -> ELU -> Linear(->S)."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ELU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def head_forward(head: nn.Sequential, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Runs a :func:`make_head` head on ``x``; returns ``(logits, embedding)``, where ``embedding``
    is the input of its last ``Linear``."""
    *body, last = head
    for layer in body:
        x = layer(x)
    return last(x), x


def init_weights(module: nn.Module) -> None:
    """torchvision-style init: Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0.

    ``nn.Linear`` keeps PyTorch's default (as the released code's classifier head)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
