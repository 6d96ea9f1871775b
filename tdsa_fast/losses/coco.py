"""COCO loss, congenerous cosine (Liu, Li, Wang, "Rethinking Feature Discrimination and
Polymerization for Large-scale Recognition", arXiv:1710.00870, 2017 — COCO v2).

Features are L2-normalised and scaled by α, the learnable class centroids ``c_k`` are
L2-normalised, and the loss is the softmax cross-entropy of their inner products:

    f̂_i = α f_i / ‖f_i‖,   ĉ_k = c_k / ‖c_k‖,
    L = mean_i -log( exp(ĉ_{y_i}ᵀ f̂_i) / Σ_m exp(ĉ_mᵀ f̂_i) )

Scale: v2's contribution over v1 is a rule for α, the lower bound at which a feature lying on its
own centroid (cosine 1) and opposite the other K-1 centroids (cosine -1) gets the posterior ``p``:
e^{α} / (e^{α} + (K-1) e^{-α}) = p, i.e. α = ½ ln((K-1) p / (1 - p)). Default ``p = 0.99``
(α ≈ 4.9 for K = 200, ≈ 2.8 for K = 4); ``scale`` sets α directly. Prediction: ``α cos``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import ClassWeightLoss, check_float, float32


def coco_scale(num_classes: int, p: float) -> float:
    """α = ½ ln((K-1) p / (1-p))."""
    return 0.5 * math.log((num_classes - 1) * p / (1.0 - p))


class COCOLoss(ClassWeightLoss):
    """forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> α cos [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, scale: float | None = None,
                 p: float = 0.99) -> None:
        super().__init__(num_classes, embedding_dim)
        self.p = check_float("p", p, low_open=True, high=1.0)
        if scale is None:
            scale = coco_scale(self.num_classes, self.p)
            if scale <= 0:
                raise ValueError(f"p={p} gives the scale α={scale:.3g} <= 0 for {num_classes} classes; raise p")
        self.scale = check_float("scale", scale, low_open=True)
        self.centroids = self._class_weights()

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        self._check(embedding)
        with float32(embedding.device):
            return self._logits(embedding)

    def _logits(self, embedding: torch.Tensor) -> torch.Tensor:
        f = self.scale * F.normalize(embedding.float(), dim=1)
        return F.linear(f, F.normalize(self.centroids.float(), dim=1))

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(embedding, target)
        with float32(embedding.device):
            return F.cross_entropy(self._logits(embedding), target)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:.4g}"
