"""The training objective of eq. 9: the classifier's cross-entropy plus the weighted MC/TDSA term."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tdsa_fast.models import ModelOutput
from tdsa_fast.nn import MCLoss, TDSALoss


class TrainingObjective(nn.Module):
    """forward(out: ModelOutput, target [B]) -> (total, ce), both scalars.

    ``ce``: CE(logits) only. ``mc``: + MCLoss on the high map. ``tdsa``: + TDSALoss on the
    middle and high maps (gate on). ``tdsa-noattn``: the same two MC losses without the gate.
    """

    def __init__(self, loss: str, *, cnum_high: int = 3, mu: float = 1.5, lam: float = 10.0,
                 div_form: str = "paper", beta: float = 15.0, upsample: str = "nearest", backend: str = "auto"):
        super().__init__()
        self.loss = loss
        form = dict(mu=mu, lam=lam, div_form=div_form, beta=beta, backend=backend)
        if loss == "ce":
            self.term = None
        elif loss == "mc":
            self.term = MCLoss(cnum_high, **form)
        elif loss in ("tdsa", "tdsa-noattn"):
            self.term = TDSALoss(cnum_high, mode=upsample, attention=(loss == "tdsa"), **form)
        else:
            raise ValueError(f"loss must be one of ce, mc, tdsa, tdsa-noattn; got {loss!r}")

    def forward(self, out: ModelOutput, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(out.logits.float(), target)
        if self.term is None:
            return ce, ce
        if isinstance(self.term, MCLoss):
            return ce + self.term(out.high, target), ce
        return ce + self.term(out.middle, out.high, target), ce
