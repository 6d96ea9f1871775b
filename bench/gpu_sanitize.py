"""Runs every CUDA op of tdsa_fast once, forward and backward, at a tiny shape, at the
paper's shapes (bf16, NCHW and channels_last; fp32 tiny) and at 448 px with two classes
(56x56 from 28x28, xi = 5: bf16 NCHW copies its group into the > 48 KB opt-in, fp32 NCHW
streams it, fp32 channels_last takes the global-memory fallback), checking the values against
the reference: the workload bench/gpu_check.sh runs under compute-sanitizer (memcheck,
racecheck, synccheck, initcheck). Exits non-zero on a mismatch.

    python bench/gpu_sanitize.py [--shapes tiny paper 448] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:  # the installed package (with the CUDA kernels) first
    import tdsa_fast  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

from tdsa_fast import functional as TF  # noqa: E402
from tdsa_fast import reference  # noqa: E402

# (classes, cnum_high, xi, high HxW, middle HxW)
SHAPES = {"tiny": (2, 3, 3, (3, 5), (7, 9)), "paper": (200, 3, 3, (14, 14), (28, 28)),
          "448": (2, 3, 5, (28, 28), (56, 56))}
# (dtype, layout) per shape: each scratch plan of the terms kernels at least once
COMBOS = {
    "tiny": [(torch.bfloat16, "contiguous"), (torch.bfloat16, "channels_last"), (torch.float32, "contiguous")],
    "paper": [(torch.bfloat16, "contiguous"), (torch.bfloat16, "channels_last")],
    "448": [(torch.bfloat16, "contiguous"), (torch.float32, "contiguous"), (torch.float32, "channels_last")],
}


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(shape: str, dtype: torch.dtype, layout: str, device: str, batch: int) -> float:
    s, cnum, xi, (hh, wh), (hl, wl) = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    high = torch.randn(batch, s * cnum, hh, wh, generator=gen).clamp_min(0).to(device, dtype)
    middle = torch.randn(batch, s * cnum * xi, hl, wl, generator=gen).clamp_min(0).to(device, dtype)
    if layout == "channels_last":
        high, middle = (t.contiguous(memory_format=torch.channels_last) for t in (high, middle))
    mask = TF.channel_mask(1, s, cnum * xi, generator=gen).to(device)
    worst = 0.0
    for fn, ref in ((lambda lo, hi: TF.tdsa_terms(lo, hi, mask, cnum * xi, backend="fused"),
                     lambda lo, hi: reference.tdsa_terms(lo, hi, mask, cnum * xi, "nearest")),
                    (lambda lo, hi: (TF.topdown_gate(lo, hi, backend="fused"),),
                     lambda lo, hi: (reference.topdown_gate(lo, hi, "nearest"),))):
        lo, hi = middle.detach().clone().requires_grad_(), high.detach().clone().requires_grad_()
        rl, rh = middle.detach().float().clone().requires_grad_(), high.detach().float().clone().requires_grad_()
        out, rout = fn(lo, hi), ref(rl, rh)
        sum(o.float().sum() * (k + 1) for k, o in enumerate(out)).backward()
        sum(o.sum() * (k + 1) for k, o in enumerate(rout)).backward()
        for a, b in [*zip(out, rout), (lo.grad, rl.grad), (hi.grad, rh.grad)]:
            worst = max(worst, _rel(a, b))
    mask_high = TF.channel_mask(1, s, cnum, generator=gen).to(device)
    got = TF.mc_terms(high, mask_high, cnum, backend="fused")
    want = reference.mc_terms(high.float(), mask_high, cnum)
    worst = max(worst, *(_rel(a, b) for a, b in zip(got, want)))
    if device == "cuda":
        torch.cuda.synchronize()
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "paper"], choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args(argv)
    fail = 0
    for shape in args.shapes:
        for dtype, layout in COMBOS[shape]:
            err = check(shape, dtype, layout, args.device, args.batch)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            ok = err <= tol
            fail |= not ok
            print(f"{shape:6} {str(dtype):15} {layout:14} max rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
