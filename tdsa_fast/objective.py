"""The training objective: eq. 9 (the classifier's cross-entropy plus the weighted MC/TDSA term),
or one of the baseline losses of the paper's Tables II/III (:mod:`tdsa_fast.losses`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tdsa_fast.loss_specs import LOSS_NAMES, loss_spec
from tdsa_fast.losses import ClassWeightLoss, build_baseline
from tdsa_fast.models import HEAD_HIDDEN, ModelOutput
from tdsa_fast.nn import MCLoss, TDSALoss

__all__ = ["LOSS_NAMES", "TrainingObjective"]


class TrainingObjective(nn.Module):
    """forward(out: ModelOutput, target [B]) -> (total, ce), both scalars; predict(out) -> [B, S].

    ``ce``: CE(logits) only. ``mc``: + MCLoss on the high map. ``tdsa``: + TDSALoss on the
    middle and high maps (gate on). ``tdsa-noattn``: the same two MC losses without the gate.
    ``focal``: focal loss on the logits; ``center``: CE + λ·center loss on the embedding.
    ``asoftmax``, ``coco``, ``lgm``, ``lmcl``, ``arcface``, ``circle``: a loss with its own class
    weights on ``out.embedding`` (the model's last Linear is then unused); these need
    ``num_classes`` (and ``embedding_dim``, the model's head width). The objective owns those
    parameters and buffers: give them to the optimiser and save its ``state_dict``. ``loss_args``:
    a baseline's hyper-parameters over its paper's defaults (:func:`tdsa_fast.losses.baseline_options`).
    ``div_form``, ``mu``, ``lam``, ``beta``: the MC/TDSA term's form and weights (:mod:`tdsa_fast.nn`);
    ``beta=None`` takes the released code's β of the loss (:class:`tdsa_fast.loss_specs.LossSpec`);
    ``lam_middle`` / ``beta_middle``: the middle level's own λ / β (TDSA losses only).

    The returned ``ce`` is the cross-entropy of ``predict(out)`` (for logging; for the margin
    losses it is not part of the total and carries no gradient). ``predict`` gives the scores
    used for accuracy: the model's logits, or the loss's own margin-free logits.
    """

    def __init__(self, loss: str, *, num_classes: int | None = None, embedding_dim: int = HEAD_HIDDEN,
                 cnum_high: int = 3, mu: float = 1.5, lam: float = 10.0, div_form: str = "code",
                 beta: float | None = None, lam_middle: float | None = None, beta_middle: float | None = None,
                 upsample: str = "nearest", backend: str = "auto", loss_args: dict | None = None):
        super().__init__()
        self.loss = loss
        self.term = None  # the MC / TDSA term
        self.baseline = None  # a loss of tdsa_fast.losses
        spec = loss_spec(loss)
        if beta is None:
            beta = spec.released_beta
        form = dict(mu=mu, lam=lam, div_form=div_form, beta=beta, backend=backend)
        if not spec.has_middle and (lam_middle is not None or beta_middle is not None):
            raise ValueError(f"lam_middle and beta_middle weight the middle level of the TDSA losses; "
                             f"loss {loss!r} has none")
        if spec.has_middle:
            self.term = TDSALoss(cnum_high, mode=upsample, attention=spec.gate, lam_middle=lam_middle,
                                 beta_middle=beta_middle, **form)
        elif spec.grouped:
            self.term = MCLoss(cnum_high, **form)
        elif spec.baseline:
            if loss != "focal" and num_classes is None:
                raise ValueError(f"loss {loss!r} owns per-class state and needs num_classes")
            self.baseline = build_baseline(loss, num_classes, embedding_dim, **(loss_args or {}))
        if loss_args and self.baseline is None:
            raise ValueError(f"loss_args {loss_args} apply to the baseline losses only, not to {loss!r}")

    @property
    def owns_class_weights(self) -> bool:
        return isinstance(self.baseline, ClassWeightLoss)

    def predict(self, out: ModelOutput) -> torch.Tensor:
        """The class scores [B, S] that accuracy is measured on."""
        if self.owns_class_weights:
            return self.baseline.logits(self._embedding(out))
        return out.logits

    def _embedding(self, out: ModelOutput) -> torch.Tensor:
        if out.embedding is None:
            raise ValueError(f"loss {self.loss!r} reads ModelOutput.embedding, but the model returned None")
        return out.embedding

    def draw_masks(self, out: ModelOutput, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...] | None:
        """The channel masks of the MC/TDSA term for ``out`` (``(mask_high,)`` for ``mc``,
        ``(mask_middle, mask_high)`` for the TDSA losses, None for the others), drawn from
        ``generator``: the trainer seeds one per step and rank so a run can be replayed."""
        if self.term is None:
            return None
        if isinstance(self.term, MCLoss):
            return (self.term.draw_mask(out.high, generator),)
        return self.term.draw_masks(out.middle, out.high, generator)

    def forward(self, out: ModelOutput, target: torch.Tensor,
                masks: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``masks``: as :meth:`draw_masks` gives them, or None to draw fresh ones."""
        if self.owns_class_weights:
            embedding = self._embedding(out)
            total = self.baseline(embedding, target)
            with torch.no_grad():
                ce = F.cross_entropy(self.baseline.logits(embedding), target)
            return total, ce
        ce = F.cross_entropy(out.logits.float(), target)
        if self.loss == "focal":
            return self.baseline(out.logits, target), ce
        if self.loss == "center":
            return self.baseline(out.logits, self._embedding(out), target), ce
        if self.term is None:
            return ce, ce
        if isinstance(self.term, MCLoss):
            return ce + self.term(out.high, target, None if masks is None else masks[0]), ce
        return ce + self.term(out.middle, out.high, target, None if masks is None else tuple(masks)), ce
