"""Center loss (Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016).

Joint supervision, the paper's eq. 5 with its batch sums turned into batch means (both terms
alike, so their ratio is the paper's; the authors' Caffe layer also divides by the batch size):

    L = mean_i [ -log softmax(z_i)_{y_i} ]  +  λ · mean_i ½ ‖x_i - c_{y_i}‖²

``z`` = the model's logits, ``x`` = its embedding (the input of the classifier's last layer),
``c_j`` = the class centres. The centres are not learned by the optimiser but updated by the
paper's rule (Algorithm 1, eq. 4) once per training forward, after the loss is computed:

    Δc_j = Σ_i δ(y_i = j) (c_j - x_i) / (1 + Σ_i δ(y_i = j)),      c_j ← c_j - α Δc_j

Defaults: λ = 0.003 and α = 0.5 (the paper's face-recognition setting, §4.2). The centres start at
zero and are a buffer: saved in the state_dict (so in checkpoints), outside the optimiser (no weight
decay, no momentum). They are updated only in training mode with gradients enabled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tdsa_fast._checks import int_at_least

from .common import check_float, check_matrix, check_target, float32


class CenterLoss(nn.Module):
    """forward(logits [B, S], embedding [B, D], target [B]) -> scalar: CE + λ·center term."""

    def __init__(self, num_classes: int, embedding_dim: int, *, lam: float = 0.003, alpha: float = 0.5) -> None:
        super().__init__()
        self.num_classes = int_at_least("num_classes", num_classes, 2)
        self.embedding_dim = int_at_least("embedding_dim", embedding_dim, 1)
        self.lam = check_float("lam", lam)
        self.alpha = check_float("alpha", alpha, low_open=True, high=1.0, high_open=False)
        self.register_buffer("centers", torch.zeros(num_classes, embedding_dim))

    def center_term(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean_i ½ ‖x_i - c_{y_i}‖² (float32)."""
        diff = embedding.float() - self.centers[target]
        return 0.5 * diff.pow(2).sum(1).mean()

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_matrix("logits", logits, self.num_classes, "num_classes")
        check_matrix("embedding", embedding, self.embedding_dim, "embedding_dim")
        check_target(target, logits.shape[0], "logits", logits)
        check_target(target, embedding.shape[0], "embedding", embedding)
        with float32(embedding.device):
            loss = F.cross_entropy(logits.float(), target) + self.lam * self.center_term(embedding, target)
        if self.training and torch.is_grad_enabled():
            self.update_centers(embedding.detach(), target)
        return loss

    @torch.no_grad()
    def update_centers(self, embedding: torch.Tensor, target: torch.Tensor) -> None:
        """The paper's eq. 4 update with rate α (no host synchronisation)."""
        x = embedding.float()
        count = torch.zeros(self.num_classes, device=x.device).index_add_(0, target, torch.ones_like(target, dtype=x.dtype))
        total = torch.zeros_like(self.centers).index_add_(0, target, x)
        delta = (count[:, None] * self.centers - total) / (1.0 + count[:, None])  # zero for absent classes
        self.centers.sub_(self.alpha * delta)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
                f"lam={self.lam}, alpha={self.alpha}")
