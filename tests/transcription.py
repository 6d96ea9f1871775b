"""Direct, loop-by-loop transcriptions of the paper's equations 3, 5 and 7 in float64.

Deliberately naive (Python loops over samples, classes, positions; explicit exp-sum
softmax; the upsampling source-index formulas written out), so they share no code
with :mod:`tdsa_fast.reference`. Built from differentiable scalar torch ops so that
autograd gives their gradients too. Only for tiny shapes.
"""
from __future__ import annotations

import math

import torch


def eq3_g(feat: torch.Tensor, mask: torch.Tensor, cnum: int) -> torch.Tensor:
    """g[b,i] = 1/(HW) sum_{j,k} max_{m in group i} M[b,m] F[b,m,j,k]."""
    b_, c_, h_, w_ = feat.shape
    rows = []
    for b in range(b_):
        mrow = mask[b if mask.shape[0] > 1 else 0]
        row = []
        for i in range(c_ // cnum):
            total = 0.0
            for j in range(h_):
                for k in range(w_):
                    best = None
                    for m in range(i * cnum, (i + 1) * cnum):
                        v = mrow[m] * feat[b, m, j, k]
                        if best is None or v > best:  # strict: the lowest index wins ties
                            best = v
                    total = total + best
            row.append(total / (h_ * w_))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def eq5_h(feat: torch.Tensor, cnum: int) -> torch.Tensor:
    """h[b,i] = sum_{j,k} max_{m in group i} exp(F[b,m,j,k]) / sum_{j',k'} exp(F[b,m,j',k'])."""
    b_, c_, h_, w_ = feat.shape
    rows = []
    for b in range(b_):
        soft = []
        for m in range(c_):
            shift = max(float(feat[b, m, j, k].detach()) for j in range(h_) for k in range(w_))
            e = [[torch.exp(feat[b, m, j, k] - shift) for k in range(w_)] for j in range(h_)]
            z = sum(e[j][k] for j in range(h_) for k in range(w_))
            soft.append([[e[j][k] / z for k in range(w_)] for j in range(h_)])
        row = []
        for i in range(c_ // cnum):
            total = 0.0
            for j in range(h_):
                for k in range(w_):
                    best = None
                    for m in range(i * cnum, (i + 1) * cnum):
                        if best is None or soft[m][j][k] > best:
                            best = soft[m][j][k]
                    total = total + best
            row.append(total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _cubic_weights(t: float) -> list[float]:
    """Keys' cubic convolution with A = -0.75 (what PyTorch's bicubic uses), taps at -1, 0, 1, 2."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _taps(dst: int, in_size: int, out_size: int, mode: str) -> list[tuple[int, float]]:
    """(source index, weight) pairs along one axis, per F.interpolate with align_corners=False."""
    scale = in_size / out_size
    if mode == "nearest":
        return [(min(int(math.floor(dst * scale)), in_size - 1), 1.0)]
    src = (dst + 0.5) * scale - 0.5
    if mode == "bilinear":
        src = max(src, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        return [(i0, 1.0 - lam), (i1, lam)]
    i0 = int(math.floor(src))
    weights = _cubic_weights(src - i0)
    return [(min(max(i0 - 1 + t, 0), in_size - 1), weights[t]) for t in range(4)]


def eq7_gate(middle: torch.Tensor, high: torch.Tensor, mode: str) -> torch.Tensor:
    """F_l' = F_l * sigmoid(Upsample(R(F_h))), R repeating every high channel xi times consecutively."""
    b_, cl, hl, wl = middle.shape
    _, ch, hh, wh = high.shape
    xi = cl // ch
    out = []
    for b in range(b_):
        chans = []
        for c in range(cl):
            src_c = c // xi
            plane = []
            for j in range(hl):
                line = []
                for k in range(wl):
                    up = 0.0
                    for sj, wj in _taps(j, hh, hl, mode):
                        for sk, wk in _taps(k, wh, wl, mode):
                            up = up + wj * wk * high[b, src_c, sj, sk]
                    line.append(middle[b, c, j, k] / (1.0 + torch.exp(-up)))
                plane.append(torch.stack(line))
            chans.append(torch.stack(plane))
        out.append(torch.stack(chans))
    return torch.stack(out)
