"""Focal loss (Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017).

The paper's eq. 5, FL(p_t) = -α_t (1 - p_t)^γ log(p_t), in its softmax (multi-class) form,
with p_t the softmax probability of the true class, averaged over the batch:

    L = mean_i  -α (1 - p_{i,y_i})^γ log p_{i,y_i}

Defaults: γ = 2 (the paper's best, Table 1a); α = 1. The paper pairs γ = 2 with α = 0.25, but
there α weights the rare foreground class of binary (sigmoid) detection against the background;
a multi-class classifier has no such class, and one α for every class would only rescale the loss
(the same as a 4x smaller learning rate), so it is left at 1 and kept as an argument.
γ = 0, α = 1 is cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_float, check_matrix, check_target, float32


class FocalLoss(nn.Module):
    """forward(logits [B, S], target [B]) -> scalar."""

    def __init__(self, gamma: float = 2.0, alpha: float = 1.0) -> None:
        super().__init__()
        self.gamma = check_float("gamma", gamma)
        self.alpha = check_float("alpha", alpha, low_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_matrix("logits", logits)
        check_target(target, logits.shape[0], "logits", logits)
        with float32(logits.device):
            log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
            weight = (1.0 - log_p.exp()).clamp_min(0.0).pow(self.gamma)
            return -(self.alpha * weight * log_p).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
