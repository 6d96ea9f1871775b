"""The additive-margin cosine losses, LMCL (CosFace) and ArcFace, through pytorch-metric-learning.

* LMCL (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, "CosFace: Large Margin Cosine Loss for Deep Face
  Recognition", CVPR 2018), eq. 4:
      L = mean_i -log( e^{s(cos θ_{y_i} - m)} / (e^{s(cos θ_{y_i} - m)} + Σ_{j≠y_i} e^{s cos θ_j}) )
  with both the embedding and the class weights L2-normalised; defaults s = 64, m = 0.35 (§4.1).
* ArcFace (Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
  Recognition", CVPR 2019), eq. 3:
      L = mean_i -log( e^{s cos(θ_{y_i} + m)} / (e^{s cos(θ_{y_i} + m)} + Σ_{j≠y_i} e^{s cos θ_j}) )
  defaults s = 64, m = 0.5 rad (§3.1/§4). Where θ_y + m > π the target logit becomes
  ``s (cos θ_y - m sin m)``, which keeps it decreasing in θ_y, as the authors' released code does.

pytorch-metric-learning's ``CosFaceLoss`` and ``ArcFaceLoss`` implement exactly these (its ArcFace
takes the margin in degrees; the same fallback beyond π - m); ``tests/test_losses.py`` checks both
against the formulas above. They own their weights ``W [D, S]`` (``normal_`` init); we feed them
float32 embeddings with autocast off, since the library casts its ``W`` to the embedding's dtype.
Prediction: ``s cos θ_j`` (the library's ``get_logits``).
"""
from __future__ import annotations

import math

import torch

from .common import ClassWeightLoss, check_float, float32


class _PMLMarginLoss(ClassWeightLoss):
    def __init__(self, num_classes: int, embedding_dim: int, *, scale: float, margin: float, max_margin: float) -> None:
        super().__init__(num_classes, embedding_dim)
        self.scale = check_float("scale", scale, low_open=True)
        self.margin = check_float("margin", margin, high=max_margin)

    @property
    def weight(self) -> torch.Tensor:
        """The class weights as ``[S, D]``."""
        return self.impl.W.t()

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        self._check(embedding)
        with float32(embedding.device):
            return self.impl.get_logits(embedding.float())

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(embedding, target)
        with float32(embedding.device):
            return self.impl(embedding.float(), target)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"


class CosFaceLoss(_PMLMarginLoss):
    """LMCL: forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> s cos θ [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, scale: float = 64.0, margin: float = 0.35) -> None:
        from pytorch_metric_learning.losses import CosFaceLoss as PMLCosFace

        super().__init__(num_classes, embedding_dim, scale=scale, margin=margin, max_margin=2.0)
        self.impl = PMLCosFace(num_classes=num_classes, embedding_size=embedding_dim, margin=self.margin,
                               scale=self.scale)


class ArcFaceLoss(_PMLMarginLoss):
    """forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> s cos θ [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, scale: float = 64.0, margin: float = 0.5) -> None:
        from pytorch_metric_learning.losses import ArcFaceLoss as PMLArcFace

        super().__init__(num_classes, embedding_dim, scale=scale, margin=margin, max_margin=math.pi / 2)  # radians
        self.impl = PMLArcFace(num_classes=num_classes, embedding_size=embedding_dim,
                               margin=math.degrees(self.margin), scale=self.scale)
