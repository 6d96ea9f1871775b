"""The pure-PyTorch reference of the MC/TDSA terms: the oracle every kernel is checked against.

Inputs are assumed validated (see ``tdsa_fast.functional``). Reduced-precision inputs
(float16, bfloat16) are upcast to float32 before any arithmetic, so the reference
accumulates in float32 like the kernels; float64 stays float64 (for gradcheck).

Ties in a cross-channel max: ``torch.max(x, dim)`` returns the lowest maximal index and
its backward sends the whole gradient there, which is the project's rule (docs/method.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mc_terms(feat: torch.Tensor, mask: torch.Tensor, cnum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminality logits g (eq. 3) and diversity h (eq. 5).

    feat: [B, S*cnum, H, W]; mask: [B or 1, S*cnum] (any floating or bool dtype).
    Returns g, h: [B, S] in the accumulation dtype (float32, or float64 for float64 input).
    g[b,i] = mean_{HW} max_{m in group i} mask[b,m]*feat[b,m]
    h[b,i] = sum_{HW}  max_{m in group i} softmax_{HW}(feat[b,m])
    """
    acc = accumulation_dtype(feat.dtype)
    x = feat.to(acc)
    b, c, h, w = x.shape
    s = c // cnum
    masked = x * mask.to(acc)[:, :, None, None]
    g = masked.reshape(b, s, cnum, h * w).max(dim=2).values.mean(dim=-1)
    soft = torch.softmax(x.reshape(b, c, h * w), dim=-1)
    div = soft.reshape(b, s, cnum, h * w).max(dim=2).values.sum(dim=-1)
    return g, div


def upsample(high: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` to ``size`` with align_corners=False for the non-nearest modes."""
    if mode == "nearest":
        return F.interpolate(high, size=size, mode="nearest")
    return F.interpolate(high, size=size, mode=mode, align_corners=False)


def topdown_gate(middle: torch.Tensor, high: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Eq. 7: middle * sigmoid(Upsample(R(high))), R = repeat_interleave(C_middle / C_high, dim=1).

    middle: [B, C_l, H_l, W_l]; high: [B, C_h, H_h, W_h] with C_l = xi*C_h, H_l >= H_h, W_l >= W_h.
    Returns a tensor shaped like middle, in middle's dtype (computed in the accumulation dtype).
    Upsampling commutes with the channel repeat, so the smaller map is upsampled first.
    """
    acc = accumulation_dtype(middle.dtype)
    xi = middle.shape[1] // high.shape[1]
    up = upsample(high.to(acc), (middle.shape[2], middle.shape[3]), mode)
    gate = torch.sigmoid(up).repeat_interleave(xi, dim=1)
    return (middle.to(acc) * gate).to(middle.dtype)


def tdsa_terms(
    middle: torch.Tensor, high: torch.Tensor, mask_middle: torch.Tensor, cnum_middle: int, mode: str = "nearest"
) -> tuple[torch.Tensor, torch.Tensor]:
    """mc_terms of the gated middle map, without rounding the gated map to middle's dtype.

    middle: [B, S*cnum_middle, H_l, W_l]; high: [B, S*cnum_middle/xi, H_h, W_h]; mask_middle: [B or 1, S*cnum_middle].
    Returns g, h: [B, S] in the accumulation dtype.
    """
    acc = accumulation_dtype(middle.dtype)
    xi = middle.shape[1] // high.shape[1]
    up = upsample(high.to(acc), (middle.shape[2], middle.shape[3]), mode)
    gated = middle.to(acc) * torch.sigmoid(up).repeat_interleave(xi, dim=1)
    return mc_terms(gated, mask_middle, cnum_middle)
