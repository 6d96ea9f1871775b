"""The public functional API of the MC/TDSA terms and losses (docs/contract.md).

Every function takes and returns tensors, works on any device and on float16,
bfloat16, float32 and float64 features (accumulating in float32, or float64 for
float64), contiguous or not. ``backend`` picks the implementation:

* ``"reference"`` — pure PyTorch (:mod:`tdsa_fast.reference`), the oracle;
* ``"fused"`` — the compiled kernels; a ``RuntimeError`` when they are not built for
  the tensors' device;
* ``"auto"`` — the kernels when built for that device, else the reference.

Bad shapes, devices and dtypes raise ``ValueError`` (naming the argument and the
shapes) before anything is computed; the checks read metadata only, so they never
synchronise with a GPU. Labels are not range-checked here: that happens where they
enter (the dataset parsers).

``g`` and ``h`` are returned in float32 for float16/bfloat16/float32 features and in
float64 for float64 features: they are reductions, accumulated in that precision, and
the losses are computed from them without a lossy round trip.

Targets may be any integer dtype (int64, int32, int16, int8, uint8); the losses cast them
to int64. Second-order gradients (``create_graph=True``, e.g. gradient penalties) work
with every backend: the fused ops' backward then runs the reference's differentiable
formula instead of the kernels (see :mod:`tdsa_fast._ops`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tdsa_fast import _checks, reference
from tdsa_fast._backend import resolve
from tdsa_fast.loss_specs import RELEASED_BETA  # β of the released scripts' code form

__all__ = [
    "RELEASED_BETA",
    "channel_mask",
    "mc_terms",
    "topdown_gate",
    "tdsa_terms",
    "mc_objective",
    "mc_loss",
    "tdsa_loss",
]


def channel_mask(
    batch: int,
    num_classes: int,
    cnum: int,
    *,
    shared: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The random channel mask M of eq. 3.

    Returns a float32 tensor ``[1, S*cnum]`` (``shared=True``: one mask for the whole
    batch, as the released code) or ``[batch, S*cnum]``, holding in every class group
    exactly ``cnum // 2`` zeros and ``cnum - cnum // 2`` ones at random positions.
    The random numbers are drawn on ``generator``'s device when a generator is given
    (the result is then moved to ``device``), else on ``device``.
    """
    for name, value in (("batch", batch), ("num_classes", num_classes), ("cnum", cnum)):
        _checks.int_at_least(name, value)
    rows = 1 if shared else batch
    draw_device = generator.device if generator is not None else device
    order = torch.rand(rows, num_classes, cnum, generator=generator, device=draw_device).argsort(dim=-1)
    ones = cnum - cnum // 2
    mask = torch.zeros(rows, num_classes, cnum, device=draw_device)
    mask.scatter_(-1, order[..., :ones], 1.0)
    return mask.reshape(rows, num_classes * cnum).to(device if device is not None else draw_device)


def mc_terms(
    feat: torch.Tensor, mask: torch.Tensor, cnum: int, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminality logits (eq. 3) and diversity (eq. 5) of a grouped feature map.

    feat: [B, S*cnum, H, W]; mask: [B, S*cnum] or [1, S*cnum] (floating or bool).
    Returns (g [B, S], h [B, S]); h lies in [1, min(cnum, H*W)].
    """
    _checks.feature_map("feat", feat)
    _checks.cnum("cnum", cnum, "feat", feat)
    _checks.mask("mask", mask, "feat", feat)
    return _mc_terms(feat, mask, cnum, backend)


def _mc_terms(feat: torch.Tensor, mask: torch.Tensor, cnum: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mc_terms` on inputs the caller has checked."""
    if resolve(backend, feat.device, "mc_terms") == "fused":
        return torch.ops.tdsa_fast.mc_terms(feat, mask.to(feat.dtype), cnum)
    return reference.mc_terms(feat, mask, cnum)


def topdown_gate(
    middle: torch.Tensor, high: torch.Tensor, *, mode: str = "nearest", backend: str = "auto"
) -> torch.Tensor:
    """The top-down gate of eq. 7: ``middle * sigmoid(Upsample(repeat_interleave(high, xi)))``.

    middle: [B, xi*C_h, H_l, W_l]; high: [B, C_h, H_h, W_h] with H_l >= H_h, W_l >= W_h.
    mode: "nearest", "bilinear" or "bicubic" (``F.interpolate``, align_corners=False).
    Returns a tensor shaped like ``middle``, in its dtype.
    """
    _checks.gate_pair(middle, high)
    _checks.choice("mode", mode, _checks.UPSAMPLE_MODES)
    if resolve(backend, middle.device, "topdown_gate") == "fused":
        return torch.ops.tdsa_fast.topdown_gate(middle, high, mode)
    return reference.topdown_gate(middle, high, mode)


def tdsa_terms(
    middle: torch.Tensor,
    high: torch.Tensor,
    mask_middle: torch.Tensor,
    cnum_middle: int,
    *,
    mode: str = "nearest",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mc_terms(topdown_gate(middle, high, mode=mode), mask_middle, cnum_middle)``, fused.

    middle: [B, S*cnum_middle, H_l, W_l]; high: [B, S*cnum_middle/xi, H_h, W_h]; mask_middle: [B or 1, S*cnum_middle].
    Returns (g [B, S], h [B, S]). The gated map stays in the accumulation dtype (it is
    not rounded to ``middle``'s dtype in between), which is what the fused kernel does.
    """
    xi = _checks.gate_pair(middle, high)
    _checks.class_counts(middle, cnum_middle, high, xi)
    _checks.mask("mask_middle", mask_middle, "middle", middle)
    _checks.choice("mode", mode, _checks.UPSAMPLE_MODES)
    return _tdsa_terms(middle, high, mask_middle, cnum_middle, mode, backend)


def _tdsa_terms(middle: torch.Tensor, high: torch.Tensor, mask_middle: torch.Tensor, cnum_middle: int, mode: str,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tdsa_terms` on inputs the caller has checked."""
    if resolve(backend, middle.device, "tdsa_terms") == "fused":
        return torch.ops.tdsa_fast.tdsa_terms(middle, high, mask_middle.to(middle.dtype), cnum_middle, mode)
    return reference.tdsa_terms(middle, high, mask_middle, cnum_middle, mode)


def mc_objective(
    g: torch.Tensor,
    h: torch.Tensor,
    target: torch.Tensor,
    cnum: int,
    *,
    div_form: str = "code",
    lam: float = 10.0,
    mu: float = 1.5,
    beta: float = 15.0,
) -> torch.Tensor:
    """One level's MC objective from its terms (g, h: [B, S]; target: [B]), weighted by ``mu``
    as the total of eq. 9 adds it to the classifier's cross-entropy: the one place that weights
    either form.

    ``div_form="code"`` (the released code, the default: ``docs/method.md`` says why):
    ``mu * CE(g, y) + beta * (1 - mean(h) / cnum)`` (the released code's name for mu: alpha).
    ``div_form="paper"`` (eq. 1 as written, weighted as in eq. 9): ``mu * (CE(g, y) - lam * mean(h))``;
    ``mu=1`` gives eq. 1 itself. The gradient weight on mean(h) is ``beta / cnum`` in the code
    form against ``mu * lam`` in the paper form: different objectives.
    """
    _checks.choice("div_form", div_form, _checks.DIV_FORMS)
    return _mc_objective(g, h, target, cnum, div_form, lam, mu, beta)


def _mc_objective(g: torch.Tensor, h: torch.Tensor, target: torch.Tensor, cnum: int, div_form: str, lam: float,
                  mu: float, beta: float) -> torch.Tensor:
    """:func:`mc_objective` with a checked ``div_form``."""
    dis = F.cross_entropy(g, target.long())  # int32/int16/int8/uint8 class indices too
    div = h.mean()
    if div_form == "paper":
        return mu * (dis - lam * div)
    return mu * dis + beta * (1.0 - div / cnum)


def mc_loss(
    feat: torch.Tensor,
    target: torch.Tensor,
    cnum: int,
    *,
    lam: float = 10.0,
    mask: torch.Tensor | None = None,
    div_form: str = "code",
    mu: float = 1.5,
    beta: float = RELEASED_BETA["mc"],
    backend: str = "auto",
) -> torch.Tensor:
    """The MC loss of one grouped feature map (the released-code form or eq. 1; see :func:`mc_objective`).
    The default β is the released MC-Loss code's.

    feat: [B, S*cnum, H, W]; target: [B] class indices; mask: [B or 1, S*cnum], or None to
    draw a fresh shared mask (on feat's device). Returns a scalar in the accumulation dtype.
    """
    _checks.feature_map("feat", feat)
    s = _checks.cnum("cnum", cnum, "feat", feat)
    _checks.target("target", target, feat.shape[0], feat)
    _checks.choice("div_form", div_form, _checks.DIV_FORMS)
    if mask is None:
        mask = channel_mask(feat.shape[0], s, cnum, device=feat.device)
    else:
        _checks.mask("mask", mask, "feat", feat)
    g, h = _mc_terms(feat, mask, cnum, backend)
    return _mc_objective(g, h, target, cnum, div_form, lam, mu, beta)


def tdsa_loss(
    middle: torch.Tensor,
    high: torch.Tensor,
    target: torch.Tensor,
    *,
    cnum_high: int = 3,
    lam: float = 10.0,
    mode: str = "nearest",
    masks: tuple[torch.Tensor, torch.Tensor] | None = None,
    attention: bool = True,
    div_form: str = "code",
    mu: float = 1.5,
    beta: float = RELEASED_BETA["tdsa"],
    lam_middle: float | None = None,
    beta_middle: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The TDSA loss (eq. 8): ``MC(high; cnum_high) + MC(gate(middle, high); xi*cnum_high)``.

    middle: [B, S*xi*cnum_high, H_l, W_l] (middle level); high: [B, S*cnum_high, H_h, W_h];
    target: [B]. ``masks`` = (mask_middle [B or 1, C_middle], mask_high [B or 1, C_high]) or None to
    draw fresh shared masks. ``attention=False`` drops the gate (the paper's "w/o attention").
    Gradients of the middle term flow through the gate into ``high``. The default β is the
    released TDSA code's.
    ``lam_middle`` / ``beta_middle``: the middle level's λ / β where it differs from the high
    level's (None: ``lam`` / ``beta`` on both levels).
    Returns a scalar in the accumulation dtype; see :func:`mc_objective` for the two forms.
    """
    s, cnum_middle = _checks.high_classes(middle, high, cnum_high)
    _checks.target("target", target, middle.shape[0], middle)
    _checks.choice("mode", mode, _checks.UPSAMPLE_MODES)
    _checks.choice("div_form", div_form, _checks.DIV_FORMS)
    if masks is None:
        mask_middle = channel_mask(middle.shape[0], s, cnum_middle, device=middle.device)
        mask_high = channel_mask(high.shape[0], s, cnum_high, device=high.device)
    else:
        if not isinstance(masks, (tuple, list)) or len(masks) != 2:
            raise ValueError("masks must be a pair (mask_middle, mask_high) or None")
        mask_middle, mask_high = masks
    _checks.mask("mask_middle", mask_middle, "middle", middle)
    _checks.mask("mask_high", mask_high, "high", high)
    lam_middle = lam if lam_middle is None else lam_middle
    beta_middle = beta if beta_middle is None else beta_middle
    g_high, h_high = _mc_terms(high, mask_high, cnum_high, backend)
    if attention:
        g_middle, h_middle = _tdsa_terms(middle, high, mask_middle, cnum_middle, mode, backend)
    else:
        g_middle, h_middle = _mc_terms(middle, mask_middle, cnum_middle, backend)
    return _mc_objective(g_high, h_high, target, cnum_high, div_form, lam, mu, beta) + _mc_objective(
        g_middle, h_middle, target, cnum_middle, div_form, lam_middle, mu, beta_middle
    )
