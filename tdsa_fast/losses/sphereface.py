"""A-Softmax loss (Liu, Wen, Yu, Li, Raj, Song, "SphereFace: Deep Hypersphere Embedding for Face
Recognition", CVPR 2017).

The paper's eq. 7, with unit-norm class weights ``W_j`` and no bias, ``θ_j`` the angle between the
embedding ``x`` and ``W_j``:

    L = mean_i -log( e^{‖x_i‖ ψ(θ_{y_i})} / (e^{‖x_i‖ ψ(θ_{y_i})} + Σ_{j≠y_i} e^{‖x_i‖ cos θ_j}) )
    ψ(θ) = (-1)^k cos(mθ) - 2k,   θ ∈ [kπ/m, (k+1)π/m],  k ∈ {0, …, m-1}

``cos(mθ)`` is evaluated as the Chebyshev polynomial T_m(cos θ) (no arccos in the gradient);
``k`` is piecewise constant. Training uses the paper's annealing (Appendix G): the target logit
is ``‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)``, with λ = max(λ_min, base·(1 + γ·it)^(-power)) at
training step ``it`` (counted from 0). Defaults are those of the released SphereFace model
(``margin_inner_product_param``: type QUADRUPLE, i.e. m = 4; base 1000, gamma 0.12, power 1,
lambda_min 5). The step counter is a buffer (saved with the checkpoint) and advances once per
training forward. Prediction: the margin-free logits ``‖x‖ cos θ_j``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tdsa_fast._checks import int_at_least

from .common import ClassWeightLoss, check_float, float32


def chebyshev(c: torch.Tensor, m: int) -> torch.Tensor:
    """T_m(c) = cos(m·arccos c) for c in [-1, 1]."""
    prev, cur = torch.ones_like(c), c
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * c * cur - prev
    return cur


class ASoftmaxLoss(ClassWeightLoss):
    """forward(embedding [B, D], target [B]) -> scalar; logits(embedding) -> ‖x‖ cos θ [B, S]."""

    def __init__(self, num_classes: int, embedding_dim: int, *, margin: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin = int_at_least("margin", margin, 1)
        self.base = check_float("base", base)
        self.gamma = check_float("gamma", gamma)
        self.power = check_float("power", power)
        self.lambda_min = check_float("lambda_min", lambda_min)
        self.weight = self._class_weights()
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def annealing_lambda(self) -> torch.Tensor:
        """λ of the current step, a 0-d float32 tensor on the weight's device (no host read)."""
        it = self.iteration.to(torch.float32)
        return torch.clamp(self.base * (1.0 + self.gamma * it) ** (-self.power), min=self.lambda_min)

    def _cosine(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = embedding.float()
        norm = x.norm(dim=1, keepdim=True)
        cos = F.linear(F.normalize(x, dim=1), F.normalize(self.weight.float(), dim=1))
        return cos.clamp(-1.0, 1.0), norm

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        self._check(embedding)
        with float32(embedding.device):
            cos, norm = self._cosine(embedding)
            return norm * cos

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(embedding, target)
        with float32(embedding.device):
            cos, norm = self._cosine(embedding)
            cos_y = cos.gather(1, target[:, None])
            with torch.no_grad():
                k = torch.floor(torch.acos(cos_y) * self.margin / math.pi).clamp_(0, self.margin - 1)
            psi = (1.0 - 2.0 * torch.remainder(k, 2)) * chebyshev(cos_y, self.margin) - 2.0 * k
            lam = self.annealing_lambda()
            target_logit = (lam * cos_y + psi) / (1.0 + lam)
            logits = norm * cos.scatter(1, target[:, None], target_logit)
            loss = F.cross_entropy(logits, target)
        if self.training and torch.is_grad_enabled():
            self.iteration.add_(1)
        return loss

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, margin={self.margin}, base={self.base}, gamma={self.gamma}, "
                f"power={self.power}, lambda_min={self.lambda_min}")
