"""The CUDA kernels' source, run on the CPU by an emulation of the CUDA execution model.

This workplace has no GPU, so the CUDA kernels (csrc/cuda/*.cuh) and their host launch code
(csrc/cuda/*.cu) are also compiled with the host compiler against
csrc/emulation/cuda_emulation.h — each block runs its 256 threads as fibers with real
barriers and warp exchanges, shared memory and the global workspace start as NaN bytes
between checked guard zones, a divergent barrier raises — and compared with the reference:
values, gradients, non-finite patterns, layouts, dtypes, and both scratch placements (shared
memory through the real plan, and the global-memory fallback forced with fewer blocks than
groups). tests/test_cuda_emulation.py runs the paper's and 448 px shapes under several
schedules and fills, and the planted defects. What this cannot check:
compilation by nvcc (the package build does that), performance, and hardware-specific
behaviour (real warp scheduling, memory model); tests/test_ops.py's `cuda` tests run the
real kernels on a GPU (bench/gpu_check.sh).

The emulation module is compiled on first use (tests/emulation_helpers.py, cached under
build/cuda_emulation/ keyed by a hash of csrc/).
"""
from __future__ import annotations

import pytest
import torch

from emulation_helpers import load_emulation
from tdsa_fast import reference

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
MODES = ("nearest", "bilinear", "bicubic")


@pytest.fixture(scope="module")
def emu():
    return load_emulation()


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _tol(dtype):
    return {F64: 1e-10, F32: 1e-5, BF16: 2e-2}[dtype]


def _views(x, kind):
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.transpose(2, 3).contiguous().transpose(2, 3)


def _mask(b, c, seed, shared):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1 if shared else b, c, generator=g) > 0.4).double()


MC_CASES = [(2, 3, 3, 5, 7), (1, 2, 9, 4, 4), (2, 1, 1, 1, 1), (1, 2, 15, 3, 2), (3, 4, 2, 6, 1)]


@pytest.mark.parametrize("force_global", [False, True], ids=["smem", "global"])
@pytest.mark.parametrize("dtype", [F32, BF16, F64])
@pytest.mark.parametrize("case", MC_CASES, ids=lambda c: "x".join(map(str, c)))
def test_emulated_mc_terms(emu, case, dtype, force_global):
    b, s, cnum, h, w = case
    gen = torch.Generator().manual_seed(sum(case))
    base = torch.randn(b, s * cnum, h, w, generator=gen, dtype=F64).clamp_min(-0.5)
    mask = _mask(b, s * cnum, sum(case), shared=(b % 2 == 0))
    wg, wh = torch.randn(b, s, generator=gen, dtype=F64), torch.randn(b, s, generator=gen, dtype=F64)
    ref_dtype = F64 if dtype == F64 else F32
    layouts = ("contiguous", "channels_last", "transposed") if dtype == F32 else ("channels_last",)
    for layout in layouts:
        x = _views(base.to(dtype), layout)
        g, hh = emu.terms([], x, mask.to(dtype), cnum, None, "nearest", force_global)
        r = x.detach().to(ref_dtype).requires_grad_()
        gr, hr = reference.mc_terms(r, mask, cnum)
        assert _rel(g, gr) <= _tol(dtype) and _rel(hh, hr) <= _tol(dtype), layout
        (dx,) = emu.terms([wg, wh], x, mask.to(dtype), cnum, None, "nearest", force_global)
        (dr,) = torch.autograd.grad((gr.double() * wg).sum() + (hr.double() * wh).sum(), r)
        assert dx.dtype == dtype and dx.stride() == torch.empty_like(x).stride()
        assert _rel(dx, dr) <= _tol(dtype), layout


TDSA_CASES = [
    (2, 2, 3, 3, (5, 7), (3, 3)),
    (1, 2, 1, 2, (9, 6), (4, 5)),
    (1, 1, 3, 1, (4, 4), (4, 4)),  # same size: bicubic backward is ATen's identity case
    (2, 1, 2, 2, (6, 5), (1, 1)),
]


@pytest.mark.parametrize("force_global", [False, True], ids=["smem", "global"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", TDSA_CASES, ids=lambda c: f"B{c[0]}S{c[1]}n{c[2]}xi{c[3]}-{c[4]}-from-{c[5]}")
def test_emulated_tdsa_terms(emu, case, mode, force_global):
    b, s, ch, xi, (h, w), (hh, wh) = case
    cl = ch * xi
    gen = torch.Generator().manual_seed(7)
    middle = torch.randn(b, s * cl, h, w, generator=gen, dtype=F64).clamp_min(0)
    high = torch.randn(b, s * ch, hh, wh, generator=gen, dtype=F64)
    mask = _mask(b, s * cl, 3, shared=False)
    wg, wh_ = torch.randn(b, s, generator=gen, dtype=F64), torch.randn(b, s, generator=gen, dtype=F64)
    combos = ((F32, "contiguous"), (F32, "channels_last"), (BF16, "transposed"), (F64, "contiguous"))
    for dtype, layout in combos if not force_global else combos[1:3]:
        lo, hi = _views(middle.to(dtype), layout), _views(high.to(dtype), layout)
        g, hh_ = emu.terms([], lo, mask.to(dtype), cl, hi, mode, force_global)
        ref_dtype = F64 if dtype == F64 else F32
        rl, rh = lo.detach().to(ref_dtype).requires_grad_(), hi.detach().to(ref_dtype).requires_grad_()
        gr, hr = reference.tdsa_terms(rl, rh, mask, cl, mode)
        assert _rel(g, gr) <= _tol(dtype) and _rel(hh_, hr) <= _tol(dtype), (dtype, layout)
        dl, dh = emu.terms([wg, wh_], lo, mask.to(dtype), cl, hi, mode, force_global)
        rdl, rdh = torch.autograd.grad((gr.double() * wg).sum() + (hr.double() * wh_).sum(), (rl, rh))
        assert _rel(dl, rdl) <= _tol(dtype) and _rel(dh, rdh) <= _tol(dtype), (dtype, layout)


GATE_CASES = [((2, 6, 5, 7), (2, 2, 3, 3)), ((1, 4, 9, 6), (1, 2, 4, 5)), ((1, 3, 3, 3), (1, 3, 3, 3)), ((1, 5, 4, 3), (1, 1, 1, 1))]


@pytest.mark.parametrize("force_global", [False, True], ids=["smem", "global"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: f"{c[0]}-from-{c[1]}")
def test_emulated_topdown_gate(emu, case, mode, force_global):
    gen = torch.Generator().manual_seed(11)
    middle = torch.rand(case[0], generator=gen, dtype=F64)
    high = torch.randn(case[1], generator=gen, dtype=F64)
    go = torch.randn(case[0], generator=gen, dtype=F64)
    combos = ((F32, "contiguous"), (F32, "channels_last"), (BF16, "transposed"), (F64, "contiguous"))
    for dtype, layout in combos if not force_global else combos[1:3]:
        lo, hi = _views(middle.to(dtype), layout), _views(high.to(dtype), layout)
        (out,) = emu.gate(None, lo, hi, mode, force_global)
        ref_dtype = F64 if dtype == F64 else F32
        rl, rh = lo.detach().to(ref_dtype).requires_grad_(), hi.detach().to(ref_dtype).requires_grad_()
        ro = reference.topdown_gate(rl, rh, mode)
        assert out.dtype == dtype and _rel(out, ro) <= _tol(dtype), (dtype, layout)
        dl, dh = emu.gate(go.to(dtype), lo, hi, mode, force_global)
        rdl, rdh = torch.autograd.grad((ro.double() * go).sum(), (rl, rh))
        assert _rel(dl, rdl) <= _tol(dtype) and _rel(dh, rdh) <= _tol(dtype), (dtype, layout)


def _pattern(t):
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


def _same_pattern(a, b, what):
    for x, y, kind in zip(_pattern(a), _pattern(b), ("nan", "+inf", "-inf")):
        assert torch.equal(x, y), f"{what}: {kind} pattern differs"


def test_emulated_non_finite_patterns(emu):
    nan, inf = float("nan"), float("inf")
    feat = torch.randn(2, 12, 4, 5, generator=torch.Generator().manual_seed(10))
    feat[0, 1, 2, 3] = nan
    feat[0, 4, 0, 0] = inf
    feat[0, 7, 1, 1] = -inf
    feat[0, 9:12] = -inf
    feat[1, 4, 3, 4] = inf
    mask = torch.ones(2, 12)
    mask[1, 4] = 0
    w = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    g, h = emu.terms([], feat, mask, 3, None, "nearest", False)
    r = feat.clone().requires_grad_()
    gr, hr = reference.mc_terms(r, mask, 3)
    _same_pattern(g, gr, "g")
    _same_pattern(h, hr, "h")
    (dx,) = emu.terms([w, w], feat, mask, 3, None, "nearest", False)
    (dr,) = torch.autograd.grad((gr * w).sum() + (hr * w).sum(), r)
    _same_pattern(dx, dr, "grad")
    for mode in MODES:
        middle = torch.rand(1, 6, 7, 5, generator=torch.Generator().manual_seed(2))
        high = torch.randn(1, 2, 3, 2, generator=torch.Generator().manual_seed(3))
        middle[0, 0, 1, 1] = nan
        middle[0, 4, 6, 4] = inf
        high[0, 1, 1, 0] = -inf
        high[0, 0, 2, 1] = inf
        (out,) = emu.gate(None, middle, high, mode, False)
        rl, rh = middle.clone().requires_grad_(), high.clone().requires_grad_()
        ro = reference.topdown_gate(rl, rh, mode)
        _same_pattern(out, ro, f"gate {mode}")
        go = torch.randn(middle.shape, generator=torch.Generator().manual_seed(4))
        dl, dh = emu.gate(go, middle, high, mode, False)
        rdl, rdh = torch.autograd.grad((ro * go).sum(), (rl, rh))
        _same_pattern(dl, rdl, f"gate {mode} grad middle")
        _same_pattern(dh, rdh, f"gate {mode} grad high")
        g, h = emu.terms([], middle, torch.ones(1, 6), 3, high, mode, False)
        gr, hr = reference.tdsa_terms(middle, high, torch.ones(1, 6), 3, mode)
        _same_pattern(g, gr, f"tdsa {mode} g")
        _same_pattern(h, hr, f"tdsa {mode} h")


def test_emulated_ties_go_to_the_lowest_index(emu):
    equal = torch.randn(2, 1, 4, 5, dtype=F64).expand(2, 9, 4, 5).contiguous()
    (dx,) = emu.terms([torch.ones(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)], equal, torch.ones(1, 9, dtype=F64), 3, None, "nearest", False)
    grad = dx.reshape(2, 3, 3, 4, 5)
    assert torch.all(grad[:, :, 1:] == 0) and torch.all(grad[:, :, 0] != 0)
