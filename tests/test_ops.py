"""The compiled ops (``torch.ops.tdsa_fast.*``) against the PyTorch reference.

The reference lives in one place (``REFERENCE`` below, built on ``tdsa_fast.reference``);
every test is parametrized over the device: the CPU kernels run here, the same tests run
the CUDA kernels when a GPU is visible (their ids contain ``cuda``: ``pytest -k cuda``).

Covered: float64 gradcheck of every forward op and of the backward ops' values against
the reference's autograd; ``torch.library.opcheck`` of all six ops; S=1, B=1, odd sizes,
cnum 1..15, non-integer gate ratios and a 1x1 high map, in float32 (norm-relative error
<= 1e-5), bfloat16 and float16 (<= 2e-2 against a float32 reference on the same rounded
inputs), values and gradients; channel slices, transposed views and channels_last;
shared and per-sample masks; requires_grad on and off; ties and post-ReLU zeros; NaN and
Inf patterns; torch.compile(fullgraph=True); bitwise reproducibility; the ValueError
checks of tdsa_fast.functional before any kernel; direct misuse of the ops.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from tdsa_fast import _backend
from tdsa_fast import functional as TF
from tdsa_fast import reference

HAVE_OPS = _backend._load_library()
pytestmark = pytest.mark.skipif(not HAVE_OPS, reason="tdsa_fast._C is not built (pip install -e . builds it)")

if HAVE_OPS:
    from tdsa_fast import _ops  # noqa: F401  (fake + autograd registrations)

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
MODES = ("nearest", "bilinear", "bicubic")


def _cuda_ok() -> bool:
    return HAVE_OPS and torch.cuda.is_available() and _backend.fused_available("cuda")


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not _cuda_ok(),
            reason="no CUDA device visible, or the build has no CUDA kernels" if HAVE_OPS else "not built",
        ),
    ),
]


# ---- the reference, in one place -------------------------------------------------------
def fused_mc(feat, mask, cnum):
    return torch.ops.tdsa_fast.mc_terms(feat, mask.to(feat.dtype), cnum)


def fused_gate(middle, high, mode):
    return torch.ops.tdsa_fast.topdown_gate(middle, high, mode)


def fused_tdsa(middle, high, mask, cnum_middle, mode):
    return torch.ops.tdsa_fast.tdsa_terms(middle, high, mask.to(middle.dtype), cnum_middle, mode)


REFERENCE = {
    "mc_terms": (fused_mc, reference.mc_terms),
    "topdown_gate": (fused_gate, reference.topdown_gate),
    "tdsa_terms": (fused_tdsa, reference.tdsa_terms),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def _outputs_and_grads(fn, args, diff_idx, weights):
    """fn(*args) -> tensor or tuple; returns (outputs, grads of sum_k <w_k, out_k> w.r.t. args[diff_idx])."""
    outs = fn(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o.double() * w).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(total, [args[i] for i in diff_idx])
    return outs, grads


def _compare(op, args, diff_idx, dtype, tol, seed=0, check_grads=True):
    """Runs the fused op on args (in `dtype`) and the reference on the same rounded values
    (float32 for reduced precision, else the same dtype); asserts norm-relative errors <= tol."""
    fused, ref = REFERENCE[op]
    ref_dtype = F32 if dtype in (BF16, F16) else dtype
    fargs = [a.detach().to(dtype).requires_grad_(i in diff_idx) if torch.is_tensor(a) and a.is_floating_point() and a.dim() == 4 else a for i, a in enumerate(args)]
    rargs = [a.detach().to(ref_dtype).requires_grad_(i in diff_idx) if torch.is_tensor(a) and a.is_floating_point() and a.dim() == 4 else a for i, a in enumerate(fargs)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probe = fused(*fargs)
    probe = probe if isinstance(probe, tuple) else (probe,)
    weights = [torch.randn(o.shape, generator=gen, dtype=F64).to(o.device) for o in probe]
    if check_grads and diff_idx:
        fo, fg = _outputs_and_grads(fused, fargs, diff_idx, weights)
        ro, rg = _outputs_and_grads(ref, rargs, diff_idx, weights)
    else:
        with torch.no_grad():
            fo, ro = fused(*fargs), ref(*rargs)
        fo = fo if isinstance(fo, tuple) else (fo,)
        ro = ro if isinstance(ro, tuple) else (ro,)
        fg, rg = (), ()
    for k, (a, b) in enumerate(zip(fo, ro)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert a.device == b.device
        err = _rel(a, b)
        assert err <= tol, f"output {k}: norm-relative error {err:.3g} > {tol}"
    for k, (a, b) in enumerate(zip(fg, rg)):
        assert a.shape == b.shape and a.dtype == fargs[diff_idx[k]].dtype
        err = _rel(a, b)
        assert err <= tol, f"grad {k}: norm-relative error {err:.3g} > {tol}"
    return fo, fg


def _tol(dtype):
    return {F64: 1e-10, F32: 1e-5, BF16: 2e-2, F16: 2e-2}[dtype]


def _mask(batch, s, cnum, shared, gen, device):
    return TF.channel_mask(batch, s, cnum, shared=shared, generator=gen).to(device)


# ---- shapes ------------------------------------------------------------------------------
# (B, S, cnum, H, W): S=1, B=1, odd sizes, cnum across 1..15
MC_CASES = [
    (2, 3, 3, 5, 7),
    (1, 1, 1, 1, 1),
    (1, 4, 9, 3, 3),
    (3, 2, 15, 4, 1),
    (2, 5, 2, 7, 9),
    (1, 1, 11, 6, 5),
    (2, 2, 4, 1, 13),
    (1, 3, 7, 9, 9),
]
# (middle [B, C, H, W], high [B, C_h, H_h, W_h]): non-integer ratios, 1x1 high, xi 1..5
GATE_CASES = [
    ((2, 6, 5, 7), (2, 2, 3, 3)),
    ((1, 6, 28, 28), (1, 3, 14, 14)),
    ((2, 4, 9, 6), (2, 2, 4, 5)),
    ((1, 5, 4, 3), (1, 1, 1, 1)),
    ((2, 3, 3, 3), (2, 3, 3, 3)),
    ((1, 8, 7, 2), (1, 2, 3, 1)),
]
# (B, S, cnum_high, xi, (H, W), (H_h, W_h))
TDSA_CASES = [
    (2, 2, 3, 3, (5, 7), (3, 3)),
    (1, 1, 3, 3, (28, 28), (14, 14)),
    (2, 3, 1, 2, (9, 6), (4, 5)),
    (1, 2, 2, 1, (4, 4), (1, 1)),
    (3, 1, 3, 5, (6, 6), (6, 6)),
    (1, 2, 1, 1, (1, 3), (1, 2)),
]


def _mc_args(case, shared, device, gen, relu=False):
    b, s, cnum, h, w = case
    feat = torch.randn((b, s * cnum, h, w), generator=gen, dtype=F64)
    if relu:
        feat = feat.clamp_min(0)
    return [feat.to(device), _mask(b, s, cnum, shared, gen, device).to(F64), cnum]


def _gate_args(case, mode, device, gen):
    (ls, hs) = case
    middle = torch.rand(ls, generator=gen, dtype=F64) * 2
    high = torch.randn(hs, generator=gen, dtype=F64)
    return [middle.to(device), high.to(device), mode]


def _tdsa_args(case, mode, shared, device, gen, relu=True):
    b, s, ch, xi, (h, w), (hh, wh) = case
    cl = ch * xi
    middle = torch.randn((b, s * cl, h, w), generator=gen, dtype=F64)
    high = torch.randn((b, s * ch, hh, wh), generator=gen, dtype=F64)
    if relu:
        middle, high = middle.clamp_min(0), high.clamp_min(0)
    return [middle.to(device), high.to(device), _mask(b, s, cl, shared, gen, device).to(F64), cl, mode]


# ---- values and gradients across shapes and dtypes ----------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, BF16, F16, F64])
@pytest.mark.parametrize("case", MC_CASES, ids=lambda c: "x".join(map(str, c)))
def test_mc_terms_matches_reference(device, dtype, case):
    gen = torch.Generator().manual_seed(sum(case))
    for shared in (True, False):
        args = _mc_args(case, shared, device, gen, relu=shared)
        _compare("mc_terms", args, [0], dtype, _tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-from-{'x'.join(map(str, c[1]))}")
def test_topdown_gate_matches_reference(device, dtype, mode, case):
    gen = torch.Generator().manual_seed(11)
    args = _gate_args(case, mode, device, gen)
    _compare("topdown_gate", args, [0, 1], dtype, _tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", TDSA_CASES, ids=lambda c: f"B{c[0]}S{c[1]}n{c[2]}xi{c[3]}-{c[4][0]}x{c[4][1]}-from-{c[5][0]}x{c[5][1]}")
def test_tdsa_terms_matches_reference(device, dtype, mode, case):
    gen = torch.Generator().manual_seed(5)
    for shared in (True, False):
        args = _tdsa_args(case, mode, shared, device, gen, relu=shared)
        _compare("tdsa_terms", args, [0, 1], dtype, _tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_large_groups_beyond_shared_memory(device):
    """Groups far larger than a CUDA block's shared memory: on CUDA a dense group is streamed
    from global memory (its other scratch in shared memory), a strided one (channels_last)
    takes the global-memory fallback."""
    gen = torch.Generator().manual_seed(1)
    args = _mc_args((1, 2, 15, 64, 72), False, device, gen)
    _compare("mc_terms", args, [0], F32, 1e-5)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    _compare("mc_terms", args, [0], F32, 1e-5)
    args = _tdsa_args((1, 1, 3, 5, (64, 64), (30, 31)), "bicubic", True, device, gen)
    _compare("tdsa_terms", args, [0, 1], F32, 1e-5)
    args[0] = args[0].contiguous(memory_format=torch.channels_last)
    _compare("tdsa_terms", args, [0, 1], F32, 1e-5)
    args = _gate_args(((1, 2, 150, 140), (1, 1, 70, 33)), "bilinear", device, gen)
    _compare("topdown_gate", args, [0, 1], F32, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_tdsa_terms_at_448_px(device, dtype):
    """448 px inputs: middle 56x56 from 28x28, xi = 5 (on CUDA, fp32 streams the group)."""
    gen = torch.Generator().manual_seed(3)
    args = _tdsa_args((2, 2, 3, 5, (56, 56), (28, 28)), "nearest", False, device, gen)
    _compare("tdsa_terms", args, [0, 1], dtype, _tol(dtype))


# ---- float64 gradcheck --------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_mc_terms(device):
    gen = torch.Generator().manual_seed(0)
    for case, shared in (((2, 2, 3, 3, 4), False), ((1, 1, 5, 2, 3), True), ((2, 3, 1, 1, 2), False)):
        feat, mask, cnum = _mc_args(case, shared, device, gen)
        feat.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda f: fused_mc(f, mask, cnum), (feat,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_topdown_gate(device, mode):
    gen = torch.Generator().manual_seed(1)
    for case in (((1, 6, 5, 7), (1, 2, 3, 3)), ((2, 2, 3, 3), (2, 1, 3, 3)), ((1, 3, 3, 2), (1, 1, 1, 1))):
        middle, high, _ = _gate_args(case, mode, device, gen)
        middle.requires_grad_(True)
        high.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: fused_gate(a, b, mode), (middle, high))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_tdsa_terms(device, mode):
    gen = torch.Generator().manual_seed(2)
    for case, shared in (((2, 2, 3, 2, (5, 4), (2, 3)), False), ((1, 1, 1, 3, (3, 3), (1, 1)), True)):
        middle, high, mask, cl, _ = _tdsa_args(case, mode, shared, device, gen, relu=False)
        middle.requires_grad_(True)
        high.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: fused_tdsa(a, b, mask, cl, mode), (middle, high))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_backward_ops_equal_reference_autograd(device, mode):
    """The backward ops called directly, in float64, against autograd of the reference."""
    gen = torch.Generator().manual_seed(3)
    feat, mask, cnum = _mc_args((2, 3, 4, 5, 3), False, device, gen)
    gg, gh = (torch.randn(2, 3, generator=gen, dtype=F64).to(device) for _ in range(2))
    f = feat.clone().requires_grad_(True)
    g, h = reference.mc_terms(f, mask, cnum)
    (want,) = torch.autograd.grad((g * gg).sum() + (h * gh).sum(), f)
    got = torch.ops.tdsa_fast.mc_terms_backward(gg, gh, feat, mask, cnum)
    assert _rel(got, want) < 1e-12

    middle, high, _ = _gate_args(((2, 6, 7, 5), (2, 3, 3, 2)), mode, device, gen)
    go = torch.randn(middle.shape, generator=gen, dtype=F64).to(device)
    a, b = middle.clone().requires_grad_(True), high.clone().requires_grad_(True)
    want = torch.autograd.grad((reference.topdown_gate(a, b, mode) * go).sum(), (a, b))
    got = torch.ops.tdsa_fast.topdown_gate_backward(go, middle, high, mode)
    assert all(_rel(x, y) < 1e-12 for x, y in zip(got, want))

    middle, high, mask, cl, _ = _tdsa_args((2, 2, 3, 2, (6, 5), (3, 2)), mode, False, device, gen)
    gg, gh = (torch.randn(2, 2, generator=gen, dtype=F64).to(device) for _ in range(2))
    a, b = middle.clone().requires_grad_(True), high.clone().requires_grad_(True)
    g, h = reference.tdsa_terms(a, b, mask, cl, mode)
    want = torch.autograd.grad((g * gg).sum() + (h * gh).sum(), (a, b))
    got = torch.ops.tdsa_fast.tdsa_terms_backward(gg, gh, middle, high, mask, cl, mode)
    assert all(_rel(x, y) < 1e-12 for x, y in zip(got, want))


# ---- opcheck ------------------------------------------------------------------------------
def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(4)
    feat, mask, cnum = _mc_args((2, 2, 3, 4, 5), False, device, gen)
    feat32, mask32 = feat.float(), mask.float()
    middle, high, maskl, cl, _ = _tdsa_args((2, 2, 3, 2, (5, 6), (3, 3)), "bilinear", True, device, gen)
    middle32, high32, maskl32 = middle.float(), high.float(), maskl.float()
    gg, gh = torch.randn(2, 2, generator=gen).to(device), torch.randn(2, 2, generator=gen).to(device)
    go = torch.randn(middle32.shape, generator=gen).to(device)
    return [
        ("mc_terms", (feat32.requires_grad_(), mask32, cnum)),
        ("mc_terms", (feat32.detach().to(memory_format=torch.channels_last), mask32, cnum)),
        ("mc_terms_backward", (gg, gh, feat32.detach(), mask32, cnum)),
        ("topdown_gate", (middle32.clone().requires_grad_(), high32.clone().requires_grad_(), "bicubic")),
        ("topdown_gate_backward", (go, middle32, high32, "nearest")),
        ("tdsa_terms", (middle32.clone().requires_grad_(), high32.clone().requires_grad_(), maskl32, cl, "bilinear")),
        ("tdsa_terms", (middle32.to(torch.bfloat16), high32.to(torch.bfloat16), maskl32.to(torch.bfloat16), cl, "nearest")),
        ("tdsa_terms_backward", (gg, gh, middle32, high32, maskl32, cl, "bicubic")),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_all_ops(device):
    seen = set()
    for name, args in _opcheck_samples(device):
        torch.library.opcheck(getattr(torch.ops.tdsa_fast, name).default, args)
        seen.add(name)
    assert seen == set(_ops.OPS)


# ---- layouts, masks, requires_grad --------------------------------------------------------
def _views(x: torch.Tensor):
    """The same values as x through: a channel slice of a wider tensor, a transposed
    (H/W-swapped storage) view, and channels_last."""
    wide = torch.zeros((x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
    wide[:, 1::2] = x
    return {
        "channel_slice": wide[:, 1::2],
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_non_contiguous_and_channels_last(device, dtype):
    gen = torch.Generator().manual_seed(6)
    feat, mask, cnum = _mc_args((2, 3, 3, 5, 6), False, device, gen)
    middle, high, maskl, cl, mode = _tdsa_args((2, 2, 3, 3, (7, 5), (3, 2)), "bicubic", True, device, gen)
    feat, middle, high = feat.to(dtype), middle.to(dtype), high.to(dtype)
    base_mc = _outputs_and_grads(fused_mc, [feat.clone().requires_grad_(), mask, cnum], [0], [torch.ones(2, 3, dtype=F64, device=device)] * 2)
    base_td = _outputs_and_grads(
        fused_tdsa, [middle.clone().requires_grad_(), high.clone().requires_grad_(), maskl, cl, mode], [0, 1],
        [torch.ones(2, 2, dtype=F64, device=device)] * 2,
    )
    go = torch.randn(middle.shape, generator=gen, dtype=F64).to(device)
    base_gate = _outputs_and_grads(fused_gate, [middle.clone().requires_grad_(), high.clone().requires_grad_(), mode], [0, 1], [go])
    for name, v in _views(feat).items():
        v = v.detach().requires_grad_()
        outs, grads = _outputs_and_grads(fused_mc, [v, mask, cnum], [0], [torch.ones(2, 3, dtype=F64, device=device)] * 2)
        assert all(torch.equal(a, b) for a, b in zip(outs, base_mc[0])), name
        assert torch.equal(grads[0], base_mc[1][0]), name
        if name == "channels_last":
            assert grads[0].is_contiguous(memory_format=torch.channels_last)
    for (name, lv), hv in zip(_views(middle).items(), _views(high).values()):
        lv, hv = lv.detach().requires_grad_(), hv.detach().requires_grad_()
        outs, grads = _outputs_and_grads(fused_tdsa, [lv, hv, maskl, cl, mode], [0, 1], [torch.ones(2, 2, dtype=F64, device=device)] * 2)
        assert all(torch.equal(a, b) for a, b in zip(outs, base_td[0])), name
        assert all(torch.equal(a, b) for a, b in zip(grads, base_td[1])), name
        outs, grads = _outputs_and_grads(fused_gate, [lv, hv, mode], [0, 1], [go])
        assert torch.equal(outs[0], base_gate[0][0]), name
        assert all(torch.equal(a, b) for a, b in zip(grads, base_gate[1])), name
        if name == "channels_last":
            assert outs[0].is_contiguous(memory_format=torch.channels_last)
            assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_shared_mask_equals_expanded_per_sample_mask(device):
    gen = torch.Generator().manual_seed(7)
    feat, mask, cnum = _mc_args((3, 4, 3, 4, 4), True, device, gen)
    a = fused_mc(feat, mask, cnum)
    b = fused_mc(feat, mask.expand(3, -1).contiguous(), cnum)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = fused_mc(feat, mask.bool(), cnum)  # any floating / bool mask dtype
    assert all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("device", DEVICES)
def test_requires_grad_on_and_off(device):
    gen = torch.Generator().manual_seed(8)
    middle, high, maskl, cl, mode = _tdsa_args((2, 2, 3, 2, (6, 6), (3, 3)), "bilinear", False, device, gen)
    middle, high = middle.float(), high.float()
    off = fused_tdsa(middle, high, maskl, cl, mode)
    assert all(o.grad_fn is None and not o.requires_grad for o in off)
    with torch.no_grad():
        nograd = fused_tdsa(middle.requires_grad_(), high, maskl, cl, mode)
    assert all(o.grad_fn is None for o in nograd)
    on = fused_tdsa(middle, high, maskl, cl, mode)  # only middle requires grad
    assert all(o.requires_grad for o in on)
    assert all(torch.equal(a, b) for a, b in zip(off, on))
    (gl,) = torch.autograd.grad(on[0].sum() + on[1].sum(), middle)
    assert gl.shape == middle.shape and torch.isfinite(gl).all()
    # only g used: the backward gets no grad_h (materialised as zeros) and must give g's gradient alone
    a, b = middle.detach().requires_grad_(), middle.detach().requires_grad_()
    g, _ = fused_mc(a, maskl, cl)
    g.sum().backward()
    reference.mc_terms(b, maskl, cl)[0].sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)


# ---- ties, zeros, non-finite values -------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, F32, BF16])
def test_ties_send_the_gradient_to_the_lowest_index(device, dtype):
    # all channels equal everywhere; and post-ReLU maps with many exact zeros
    equal = torch.randn(2, 1, 4, 5, dtype=F64).expand(2, 9, 4, 5).contiguous()
    relu = torch.randn(2, 9, 4, 5, dtype=F64, generator=torch.Generator().manual_seed(9)).clamp_min(0)
    # duplicated members inside a group (adjacent: 1, 2; apart: 3, 5), kept by every mask but the last
    relu[:, 2] = relu[:, 1]
    relu[:, 5] = relu[:, 3]
    for feat in (equal, relu):
        feat = feat.to(device).to(dtype)
        for mask in (torch.ones(1, 9), torch.tensor([[0.0, 1, 1, 1, 0, 1, 1, 1, 0]]), torch.zeros(1, 9)):
            mask = mask.to(device)
            a = feat.clone().requires_grad_()
            b = feat.to(F64 if dtype == F64 else F32).requires_grad_()
            ga, ha = fused_mc(a, mask, 3)
            gb, hb = reference.mc_terms(b, mask, 3)
            w = torch.arange(1.0, 7.0, dtype=F64, device=device).reshape(2, 3)
            # g alone: the lowest-index rule decides exactly which elements get a gradient
            (da,) = torch.autograd.grad((ga.double() * w).sum(), a, retain_graph=True)
            (db,) = torch.autograd.grad((gb.double() * w).sum(), b, retain_graph=True)
            assert torch.equal(da != 0, db != 0), "g: gradient support differs from the reference's"
            assert _rel(da, db) <= _tol(dtype)
            # g and h: channels that win nowhere get exactly zero in both; values agree
            (da,) = torch.autograd.grad(((ga.double() + ha.double()) * w).sum(), a)
            (db,) = torch.autograd.grad(((gb.double() + hb.double()) * w).sum(), b)
            wins = torch.zeros_like(db, dtype=torch.bool)
            soft = torch.softmax(b.detach().reshape(2, 9, -1), -1).reshape(2, 3, 3, -1)
            idx = soft.max(dim=2).indices  # [2, 3, HW], lowest index on ties
            wins.view(2, 3, 3, -1).scatter_(2, idx.unsqueeze(2), True)
            assert torch.all(da[~wins & (db == 0)] == 0), "h: a channel that wins nowhere got a gradient"
            # (when one channel wins everywhere h is constant and its gradient is zero up to
            # rounding: compare against a floor, not relative to a zero norm)
            assert (da.double() - db.double()).norm() <= _tol(dtype) * max(db.double().norm().item(), 1.0)
    # all-equal channels: only channel 0 of each group receives a gradient
    a = equal.to(device).to(dtype).requires_grad_()
    g, h = fused_mc(a, torch.ones(1, 9, device=device), 3)
    (g.sum() + h.sum()).backward()
    grad = a.grad.reshape(2, 3, 3, 4, 5)
    assert torch.all(grad[:, :, 1:] == 0) and torch.any(grad[:, :, 0] != 0)


def _nonfinite_pattern(t):
    return torch.isnan(t), torch.isposinf(t), torch.isneginf(t)


def _assert_same_pattern(a, b, what):
    for x, y, kind in zip(_nonfinite_pattern(a), _nonfinite_pattern(b), ("nan", "+inf", "-inf")):
        assert torch.equal(x.cpu(), y.cpu()), f"{what}: {kind} pattern differs from the reference's"


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_values_propagate_like_the_reference(device):
    """Non-finite outputs and gradients exactly where the reference's are. The kernels
    follow the CPU reference's conventions on every device, so CUDA results are compared
    with the reference run on CPU."""
    nan, inf = float("nan"), float("inf")
    feat = torch.randn(2, 18, 4, 5, dtype=F32, generator=torch.Generator().manual_seed(10))
    feat[0, 1, 2, 3] = nan  # group 0: NaN
    feat[0, 4, 0, 0] = inf  # group 1: +inf (softmax of that channel is NaN)
    feat[0, 7, 1, 1] = -inf  # group 2: -inf (finite softmax)
    feat[0, 9:12] = -inf  # group 3: a whole group at -inf
    feat[1, 13, 3, 4] = inf  # group 4: +inf under a zero mask -> 0 * inf = NaN in g
    feat[1, 15] = -inf  # group 5: one whole channel -inf
    mask = torch.ones(2, 18)
    mask[1, 13] = 0
    mask[0, 7] = 0
    w = torch.randn(2, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    a = feat.to(device).requires_grad_()
    b = feat.clone().requires_grad_()
    ga, ha = fused_mc(a, mask.to(device), 3)
    gb, hb = reference.mc_terms(b, mask, 3)
    _assert_same_pattern(ga, gb, "g")
    _assert_same_pattern(ha, hb, "h")
    (da,) = torch.autograd.grad(((ga.double() + ha.double()) * w.to(device)).sum(), a)
    (db,) = torch.autograd.grad(((gb.double() + hb.double()) * w).sum(), b)
    _assert_same_pattern(da, db, "grad feat")
    fin = torch.isfinite(db)
    assert _rel(da.cpu()[fin], db[fin]) < 1e-5

    for mode in MODES:
        middle = torch.rand(1, 6, 7, 5, generator=torch.Generator().manual_seed(2))
        high = torch.randn(1, 2, 3, 2, generator=torch.Generator().manual_seed(3))
        middle[0, 0, 1, 1] = nan
        middle[0, 4, 6, 4] = inf
        high[0, 1, 1, 0] = -inf
        high[0, 0, 2, 1] = inf
        m = torch.ones(1, 6)
        la, ha_ = middle.to(device).requires_grad_(), high.to(device).requires_grad_()
        lb, hb_ = middle.clone().requires_grad_(), high.clone().requires_grad_()
        oa = fused_gate(la, ha_, mode)
        ob = reference.topdown_gate(lb, hb_, mode)
        _assert_same_pattern(oa, ob, f"gate {mode}")
        go = torch.randn(middle.shape, generator=torch.Generator().manual_seed(4))
        da = torch.autograd.grad((oa * go.to(device)).sum(), (la, ha_))
        db = torch.autograd.grad((ob * go).sum(), (lb, hb_))
        for x, y, n in zip(da, db, ("middle", "high")):
            _assert_same_pattern(x, y, f"gate {mode} grad {n}")
        ta = fused_tdsa(la, ha_, m.to(device), 3, mode)
        tb = reference.tdsa_terms(lb, hb_, m, 3, mode)
        for x, y, n in zip(ta, tb, "gh"):
            _assert_same_pattern(x, y, f"tdsa {mode} {n}")


# ---- compile, determinism, dispatch -------------------------------------------------------
def _compile_case():
    gen = torch.Generator().manual_seed(12)
    middle, high, maskl, cl, _ = _tdsa_args((2, 2, 3, 2, (6, 6), (3, 3)), "nearest", True, "cpu", gen)
    middle, high, maskl = middle.float(), high.float(), maskl.float()
    maskh = _mask(2, 2, 3, True, gen, "cpu")
    return middle, high, maskl, maskh, torch.tensor([0, 1])


def _check_compiled(loss, middle, high):
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")
    a = (middle.clone().requires_grad_(), high.clone().requires_grad_())
    b = (middle.clone().requires_grad_(), high.clone().requires_grad_())
    la, lb = loss(*a), compiled(*b)
    assert torch.allclose(la, lb, rtol=1e-6, atol=1e-6)
    ga, gb = torch.autograd.grad(la, a), torch.autograd.grad(lb, b)
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(ga, gb))


def test_torch_compile_fullgraph_cpu():
    """The ops (with their fake and autograd registrations) inside an inductor graph."""
    middle, high, maskl, maskh, target = _compile_case()

    def loss(lo, hi):
        g1, h1 = torch.ops.tdsa_fast.mc_terms(hi, maskh, 3)
        g2, h2 = torch.ops.tdsa_fast.tdsa_terms(lo, hi, maskl, 6, "nearest")
        gated = torch.ops.tdsa_fast.topdown_gate(lo, hi, "bilinear")
        return (
            TF.mc_objective(g1, h1, target, 3, div_form="paper")
            + TF.mc_objective(g2, h2, target, 6, div_form="code")
            + gated.square().mean()
        )

    _check_compiled(loss, middle, high)


def test_torch_compile_fullgraph_of_the_functional_loss():
    middle, high, maskl, maskh, target = _compile_case()

    def loss(lo, hi):
        return TF.tdsa_loss(lo, hi, target, cnum_high=3, masks=(maskl, maskh), backend="fused")

    _check_compiled(loss, middle, high)


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_calls_are_bitwise_identical(device):
    gen = torch.Generator().manual_seed(13)
    middle, high, maskl, cl, mode = _tdsa_args((4, 5, 3, 3, (14, 14), (7, 7)), "bicubic", False, device, gen)
    middle, high = middle.float(), high.float()
    w = torch.randn(4, 5, generator=gen).to(device)
    results = []
    for _ in range(3):
        a, b = middle.clone().requires_grad_(), high.clone().requires_grad_()
        g, h = fused_tdsa(a, b, maskl, cl, mode)
        grads = torch.autograd.grad((g * w).sum() + (h * w).sum(), (a, b))
        results.append((g, h, *grads))
    for r in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(r, results[0]))


@pytest.mark.parametrize("device", DEVICES)
def test_auto_backend_picks_the_kernels(device):
    for op in ("mc_terms", "topdown_gate", "tdsa_terms"):
        assert _backend.resolve("auto", torch.device(device), op) == "fused"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsa_fast::{op}", device.upper())


@pytest.mark.parametrize("device", DEVICES)
def test_functional_fused_equals_reference_backend(device):
    gen = torch.Generator().manual_seed(14)
    middle = torch.rand(2, 18, 8, 8, generator=gen).to(device)
    high = torch.rand(2, 6, 4, 4, generator=gen).to(device)
    target = torch.tensor([0, 1], device=device)
    masks = (TF.channel_mask(2, 2, 9, generator=gen).to(device), TF.channel_mask(2, 2, 3, shared=False, generator=gen).to(device))
    for form in ("paper", "code"):
        a = TF.tdsa_loss(middle, high, target, masks=masks, div_form=form, backend="fused")
        b = TF.tdsa_loss(middle, high, target, masks=masks, div_form=form, backend="reference")
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_autocast_runs_in_the_input_dtype():
    gen = torch.Generator().manual_seed(15)
    middle, high, maskl, cl, mode = _tdsa_args((2, 2, 3, 2, (6, 6), (3, 3)), "bilinear", True, "cpu", gen)
    middle, high = middle.float(), high.float()
    plain = fused_tdsa(middle, high, maskl, cl, mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fused_tdsa(middle, high, maskl, cl, mode)
        gate = fused_gate(middle, high, mode)
    assert all(o.dtype == torch.float32 for o in auto) and gate.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(plain, auto))


def test_value_errors_come_before_any_kernel(monkeypatch):
    """With backend="fused", bad input raises ValueError from tdsa_fast.functional; the
    kernels are never reached (torch.ops.tdsa_fast is replaced by a tripwire)."""

    class Tripwire:
        def __getattr__(self, name):
            raise AssertionError(f"kernel {name} reached")

    monkeypatch.setattr(torch.ops, "tdsa_fast", Tripwire(), raising=False)
    feat = torch.randn(2, 6, 4, 4)
    middle, high = torch.rand(2, 18, 8, 8), torch.rand(2, 6, 4, 4)
    bad = [
        lambda: TF.mc_terms(feat[0], torch.ones(1, 6), 3, backend="fused"),
        lambda: TF.mc_terms(feat, torch.ones(1, 6), 4, backend="fused"),
        lambda: TF.mc_terms(feat, torch.ones(3, 6), 3, backend="fused"),
        lambda: TF.topdown_gate(middle, torch.rand(2, 7, 4, 4), backend="fused"),
        lambda: TF.topdown_gate(torch.rand(2, 18, 3, 3), high, backend="fused"),
        lambda: TF.topdown_gate(middle, high.double(), backend="fused"),
        lambda: TF.topdown_gate(middle, high, mode="area", backend="fused"),
        lambda: TF.tdsa_terms(middle, high, torch.ones(1, 18), 4, backend="fused"),
        lambda: TF.tdsa_terms(middle, high, torch.ones(1, 18), 9, mode="trilinear", backend="fused"),
        lambda: TF.tdsa_terms(middle, high, torch.ones(1, 17), 9, backend="fused"),
    ]
    for fn in bad:
        with pytest.raises(ValueError):
            fn()


@pytest.mark.parametrize("device", DEVICES)
def test_direct_misuse_of_the_ops_raises(device):
    """The ops check shapes themselves (RuntimeError), so nothing out of bounds is read."""
    feat = torch.randn(2, 6, 4, 4, device=device)
    middle, high = torch.rand(2, 18, 8, 8, device=device), torch.rand(2, 6, 4, 4, device=device)
    ops = torch.ops.tdsa_fast
    bad = [
        lambda: ops.mc_terms(feat, torch.ones(1, 6, device=device), 4),
        lambda: ops.mc_terms(feat, torch.ones(1, 5, device=device), 3),
        lambda: ops.mc_terms(feat[0], torch.ones(1, 6, device=device), 3),
        lambda: ops.mc_terms(feat.long(), torch.ones(1, 6, device=device), 3),
        lambda: ops.mc_terms_backward(torch.ones(2, 3, device=device), torch.ones(2, 2, device=device), feat, torch.ones(1, 6, device=device), 3),
        lambda: ops.topdown_gate(middle, high, "area"),
        lambda: ops.topdown_gate(middle, torch.rand(2, 7, 4, 4, device=device), "nearest"),
        lambda: ops.topdown_gate(middle, high.double(), "nearest"),
        lambda: ops.topdown_gate_backward(torch.ones(2, 18, 8, 7, device=device), middle, high, "nearest"),
        lambda: ops.tdsa_terms(middle, high, torch.ones(1, 18, device=device), 4, "nearest"),
        lambda: ops.tdsa_terms(middle, high, torch.ones(1, 18, device=device), 9, "cubic"),
        lambda: ops.tdsa_terms_backward(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device), middle, high, torch.ones(2, 17, device=device), 9, "nearest"),
    ]
    for fn in bad:
        with pytest.raises(RuntimeError):
            fn()


_ISA_ORDER = ("DEFAULT", "AVX2", "AVX512")


@pytest.mark.parametrize("isa", _ISA_ORDER)
def test_each_cpu_kernel_variant_in_a_subprocess(isa):
    """ATEN_CPU_CAPABILITY selects the variant of the CPU kernels (baseline, AVX2, AVX-512:
    the build has all three on x86-64); each must give the reference's values and gradients,
    in place (float32 NCHW, sizes with a partial last vector) and through scratch
    (channels_last, bfloat16)."""
    best = torch.backends.cpu.get_cpu_capability()
    if best not in _ISA_ORDER or _ISA_ORDER.index(isa) > _ISA_ORDER.index(best):
        pytest.skip(f"this CPU runs torch's {best} kernels, not {isa}")
    if isa != "DEFAULT" and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the AVX variants are built on x86-64 only")
    code = (
        "import torch\n"
        "from tdsa_fast import _ops, reference\n"
        f"assert _ops.build_info()['cpu_kernels'] == {isa!r}, _ops.build_info()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "m = (torch.rand(2, 18, generator=g) > 0.5).float()\n"
        "def close(a, b, tol, what):\n"
        "    for x, y in zip(a, b):\n"
        "        assert ((x.double() - y.double()).norm() / y.double().norm()).item() < tol, what\n"
        "for (h, w), dtype, fmt in [((9, 7), torch.float32, torch.contiguous_format),\n"
        "                           ((28, 28), torch.float32, torch.contiguous_format),\n"
        "                           ((9, 7), torch.float32, torch.channels_last),\n"
        "                           ((9, 7), torch.bfloat16, torch.contiguous_format)]:\n"
        "    tol = 1e-5 if dtype == torch.float32 else 2e-2\n"
        "    middle = torch.rand(2, 18, h, w, generator=g).to(dtype).contiguous(memory_format=fmt).requires_grad_()\n"
        "    high = torch.randn(2, 6, 4, 5, generator=g).to(dtype).requires_grad_()\n"
        "    for mode in ('nearest', 'bilinear', 'bicubic'):\n"
        "        a = torch.ops.tdsa_fast.tdsa_terms(middle, high, m, 9, mode)\n"
        "        b = reference.tdsa_terms(middle.float(), high.float(), m, 9, mode)\n"
        "        ga = torch.autograd.grad(a[0].sum() + a[1].sum(), (middle, high))\n"
        "        gb = torch.autograd.grad(b[0].sum() + b[1].sum(), (middle, high))\n"
        "        close(a + ga, b + gb, tol, (h, w, dtype, fmt, mode))\n"
        "    a = torch.ops.tdsa_fast.mc_terms(middle, m, 9)\n"
        "    b = reference.mc_terms(middle.float(), m, 9)\n"
        "    ga = torch.autograd.grad(a[0].sum() + a[1].sum(), middle)\n"
        "    gb = torch.autograd.grad(b[0].sum() + b[1].sum(), middle)\n"
        "    close(a + ga, b + gb, tol, (h, w, dtype, fmt, 'mc'))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
