"""Loss modules: the weighted MC / TDSA term that is added to the classifier's cross-entropy (eq. 9).

``total = CE(logits, y) + loss_module(maps..., y)``, where the module returns

* ``div_form="code"`` (the default): the released code's ``mu * L_dis + beta * (1 - L_div / cnum)``
  per level, with the released β by default (MCLoss: 20, as the MC-Loss code; TDSALoss: 15, as
  the TDSA code);
* ``div_form="paper"``: ``mu * L`` with L the paper's objective as written (eq. 1 per level,
  eq. 8 summed).

``docs/method.md`` gives the measurements behind the default.

Masks are drawn fresh on every call unless given (one shared mask per batch by default,
as the released code; ``shared_mask=False`` draws one per sample).
"""
from __future__ import annotations

import torch
from torch import nn

from tdsa_fast import _checks
from tdsa_fast import functional as TF


class _WeightedMC(nn.Module):
    def __init__(self, *, mu: float, lam: float, div_form: str, beta: float, shared_mask: bool, backend: str):
        super().__init__()
        _checks.choice("div_form", div_form, _checks.DIV_FORMS)
        self.mu, self.lam, self.div_form, self.beta = float(mu), float(lam), div_form, float(beta)
        self.shared_mask, self.backend = shared_mask, backend

    def _form(self) -> dict:
        return dict(lam=self.lam, div_form=self.div_form, mu=self.mu, beta=self.beta, backend=self.backend)

    def _mask(self, feat: torch.Tensor, cnum: int, generator: torch.Generator | None = None) -> torch.Tensor:
        s = _checks.cnum("cnum", cnum, "feat", feat)
        return TF.channel_mask(feat.shape[0], s, cnum, shared=self.shared_mask, generator=generator,
                               device=feat.device)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, lam={self.lam}, div_form={self.div_form!r}, beta={self.beta}, backend={self.backend!r}"


class MCLoss(_WeightedMC):
    """Mutual-Channel loss on one grouped map. forward(feat [B, S*cnum, H, W], target [B], mask=None) -> scalar."""

    def __init__(self, cnum: int = 3, *, mu: float = 1.5, lam: float = 10.0, div_form: str = "code",
                 beta: float = TF.RELEASED_BETA["mc"], shared_mask: bool = True, backend: str = "auto"):
        super().__init__(mu=mu, lam=lam, div_form=div_form, beta=beta, shared_mask=shared_mask, backend=backend)
        self.cnum = cnum

    def draw_mask(self, feat: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A mask for ``feat`` ([1 or B, S*cnum]) drawn from ``generator`` (None: the default one)."""
        _checks.feature_map("feat", feat)
        return self._mask(feat, self.cnum, generator)

    def forward(self, feat: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _checks.feature_map("feat", feat)
        if mask is None:
            mask = self._mask(feat, self.cnum)
        return TF.mc_loss(feat, target, self.cnum, mask=mask, **self._form())


class TDSALoss(_WeightedMC):
    """TDSA loss (eq. 8) on the middle and high maps.

    forward(middle [B, S*xi*cnum_high, H_l, W_l], high [B, S*cnum_high, H_h, W_h], target [B],
    masks=None) -> scalar. ``attention=False`` is the paper's "w/o attention" ablation.
    ``lam_middle`` / ``beta_middle``: the middle level's λ / β where it should differ from the
    high level's (None: ``lam`` / ``beta`` on both).
    """

    def __init__(self, cnum_high: int = 3, *, mu: float = 1.5, lam: float = 10.0, mode: str = "nearest",
                 attention: bool = True, div_form: str = "code", beta: float = TF.RELEASED_BETA["tdsa"],
                 lam_middle: float | None = None, beta_middle: float | None = None,
                 shared_mask: bool = True, backend: str = "auto"):
        super().__init__(mu=mu, lam=lam, div_form=div_form, beta=beta, shared_mask=shared_mask, backend=backend)
        _checks.choice("mode", mode, _checks.UPSAMPLE_MODES)
        self.cnum_high, self.mode, self.attention = cnum_high, mode, attention
        self.lam_middle = None if lam_middle is None else float(lam_middle)
        self.beta_middle = None if beta_middle is None else float(beta_middle)

    def _form(self) -> dict:
        return dict(super()._form(), lam_middle=self.lam_middle, beta_middle=self.beta_middle)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lam_middle={self.lam_middle}, beta_middle={self.beta_middle}"

    def draw_masks(self, middle: torch.Tensor, high: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask_middle, mask_high) for the maps, drawn from ``generator`` (None: the default one)."""
        _, cnum_middle = _checks.high_classes(middle, high, self.cnum_high)
        return self._mask(middle, cnum_middle, generator), self._mask(high, self.cnum_high, generator)

    def forward(self, middle: torch.Tensor, high: torch.Tensor, target: torch.Tensor,
                masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if masks is None:
            masks = self.draw_masks(middle, high)
        return TF.tdsa_loss(middle, high, target, cnum_high=self.cnum_high, mode=self.mode,
                            masks=masks, attention=self.attention, **self._form())
