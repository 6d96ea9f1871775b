"""Circle loss, class-level (proxy) form (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei, "Circle Loss:
A Unified Perspective of Pair Similarity Optimization", CVPR 2020).

With class-level labels each class has a learnable proxy ``w_j``; the within-class similarity is
``s_p = cos(x, w_y)`` and the between-class ones ``s_n^j = cos(x, w_j)``, j ≠ y. The paper's eq. 6
with one positive (K = 1) and its relaxation (eq. 7-8):

    L = mean_i log[ 1 + Σ_{j≠y_i} exp(γ α_n^j (s_n^j - Δ_n)) · exp(-γ α_p (s_p - Δ_p)) ]
    α_p = [1 + m - s_p]_+,  α_n^j = [s_n^j + m]_+,  Δ_p = 1 - m,  Δ_n = m

which is the cross-entropy of the logits ``γ α_p (s_p - Δ_p)`` (true class) and
``γ α_n^j (s_n^j - Δ_n)`` (the others). The weights α_p, α_n are treated as constants in the
gradient (detached), as in the authors' implementation. Defaults γ = 256, m = 0.25: the paper's
setting for learning with class-level labels (face recognition, §4.1). Prediction: ``γ cos``.

pytorch-metric-learning's ``CircleLoss`` is the pair-based form (similarities between the batch's
embeddings), a different learning setting; this is why the proxy form is written here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import ClassWeightLoss, check_float, float32


class CircleLoss(ClassWeightLoss):
    """forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> γ cos [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, gamma: float = 256.0, margin: float = 0.25) -> None:
        super().__init__(num_classes, embedding_dim)
        self.gamma = check_float("gamma", gamma, low_open=True)
        self.margin = check_float("margin", margin, high=1.0)
        self.weight = self._class_weights()

    def _cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        self._check(embedding)
        with float32(embedding.device):
            return self.gamma * self._cosine(embedding)

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(embedding, target)
        m = self.margin
        with float32(embedding.device):
            s = self._cosine(embedding)
            alpha_p = (1.0 + m - s.detach()).clamp_min(0.0)
            alpha_n = (s.detach() + m).clamp_min(0.0)
            positive = F.one_hot(target, self.num_classes).bool()
            logits = torch.where(positive, alpha_p * (s - (1.0 - m)), alpha_n * (s - m))
            return F.cross_entropy(self.gamma * logits, target)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, margin={self.margin}"
