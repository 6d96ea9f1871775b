"""Large-margin Gaussian Mixture loss (Wan, Zhong, Li, Chen, "Rethinking Feature Distribution for
Loss Functions in Image Classification", CVPR 2018).

The embedding follows a Gaussian mixture with one component per class (mean ``μ_k``); with the
identity covariance and equal priors of the authors' released code, the paper's distance is
``d_k = ½ ‖x - μ_k‖²`` and its loss (eq. 18 with eq. 17 and eq. 13) is

    L = mean_i -log( e^{-(1+α) d_{y_i}} / (e^{-(1+α) d_{y_i}} + Σ_{k≠y_i} e^{-d_k}) )   (classification, margin α)
        + λ · mean_i d_{y_i}                                                          (likelihood regulariser)

(the regulariser is the negative log-likelihood of the true component up to a constant).
Defaults α = 0.1, λ = 0.01 (the released ``lgm_logits``). The means are learnable parameters,
Xavier-uniform initialised as there. Prediction: the margin-free logits ``-d_k``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import ClassWeightLoss, check_float, float32


class LGMLoss(ClassWeightLoss):
    """forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> -d [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, alpha: float = 0.1, lam: float = 0.01) -> None:
        super().__init__(num_classes, embedding_dim)
        self.alpha = check_float("alpha", alpha)
        self.lam = check_float("lam", lam)
        self.means = self._class_weights()

    def _half_sq_dist(self, embedding: torch.Tensor) -> torch.Tensor:
        """d [B, S] = ½ ‖x_i - μ_k‖² (the expanded form, clamped at 0 against rounding)."""
        x, mu = embedding.float(), self.means.float()
        d = x.pow(2).sum(1, keepdim=True) - 2.0 * F.linear(x, mu) + mu.pow(2).sum(1)[None, :]
        return 0.5 * d.clamp_min(0.0)

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        self._check(embedding)
        with float32(embedding.device):
            return -self._half_sq_dist(embedding)

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(embedding, target)
        with float32(embedding.device):
            d = self._half_sq_dist(embedding)
            d_y = d.gather(1, target[:, None])
            margin_logits = -d.scatter(1, target[:, None], (1.0 + self.alpha) * d_y)
            return F.cross_entropy(margin_logits, target) + self.lam * d_y.mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, lam={self.lam}"
