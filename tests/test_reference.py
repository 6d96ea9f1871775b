"""The reference backend against direct transcriptions of eqs. 3, 5 and 7 (values and gradients),
plus the mask, tie and range properties of docs/method.md; the last few properties (gate composition,
mask dtypes, layouts, non-finite inputs) on the fused CPU kernels too."""
from __future__ import annotations

import pytest
import torch

from tdsa_fast import _backend
from tdsa_fast import functional as TF
from transcription import eq3_g, eq5_h, eq7_gate

F64 = torch.float64
# The last tests state properties both backends must have: the reference always, the fused
# CPU kernels when the extension is built.
BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not _backend.fused_available("cpu"), reason="tdsa_fast._C is not built (pip install -e . builds it)"))]


def _grads(fn, inputs, weights):
    """d(sum_k <weights_k, out_k>)/d(inputs)."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o * w).sum() for o, w in zip(outs, weights))
    return torch.autograd.grad(total, inputs)


def _assert_close(a, b, tol=1e-12):
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.allclose(x, y, rtol=tol, atol=tol), (x - y).abs().max()


@pytest.mark.parametrize("shape,cnum", [((2, 6, 3, 4), 3), ((1, 9, 2, 3), 9), ((3, 4, 1, 5), 2), ((2, 5, 3, 3), 1)])
@pytest.mark.parametrize("shared", [True, False])
def test_mc_terms_equal_eq3_and_eq5(shape, cnum, shared):
    gen = torch.Generator().manual_seed(sum(shape) + cnum)
    feat = torch.randn(shape, dtype=F64, generator=gen, requires_grad=True)
    mask = TF.channel_mask(shape[0], shape[1] // cnum, cnum, shared=shared, generator=gen).to(F64)
    g, h = TF.mc_terms(feat, mask, cnum, backend="reference")
    _assert_close((g, h), (eq3_g(feat, mask, cnum), eq5_h(feat, cnum)))
    weights = (torch.randn(g.shape, dtype=F64, generator=gen), torch.randn(h.shape, dtype=F64, generator=gen))
    ours = _grads(lambda f: TF.mc_terms(f, mask, cnum, backend="reference"), (feat,), weights)
    theirs = _grads(lambda f: (eq3_g(f, mask, cnum), eq5_h(f, cnum)), (feat,), weights)
    _assert_close(ours, theirs)


GATE_SHAPES = [
    ((2, 6, 4, 4), (2, 3, 2, 2)),   # exact 2x
    ((1, 6, 5, 7), (1, 2, 3, 3)),   # non-integer ratios, xi = 3
    ((2, 4, 3, 3), (2, 4, 3, 3)),   # same size, xi = 1
    ((1, 2, 6, 4), (1, 1, 1, 3)),   # one-pixel high map
]


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("middle_shape,high_shape", GATE_SHAPES)
def test_topdown_gate_equals_eq7(mode, middle_shape, high_shape):
    gen = torch.Generator().manual_seed(7)
    middle = torch.rand(middle_shape, dtype=F64, generator=gen, requires_grad=True)
    high = torch.randn(high_shape, dtype=F64, generator=gen, requires_grad=True)
    ours = TF.topdown_gate(middle, high, mode=mode, backend="reference")
    theirs = eq7_gate(middle, high, mode)
    _assert_close((ours,), (theirs,))
    w = (torch.randn(ours.shape, dtype=F64, generator=gen),)
    _assert_close(
        _grads(lambda a, b: TF.topdown_gate(a, b, mode=mode, backend="reference"), (middle, high), w),
        _grads(lambda a, b: eq7_gate(a, b, mode), (middle, high), w),
    )


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_tdsa_terms_equal_the_composed_equations(mode):
    gen = torch.Generator().manual_seed(3)
    middle = torch.rand((2, 12, 5, 4), dtype=F64, generator=gen, requires_grad=True)  # S=2, cnum_middle=6, xi=2
    high = torch.randn((2, 6, 2, 3), dtype=F64, generator=gen, requires_grad=True)  # cnum_high=3
    mask = TF.channel_mask(2, 2, 6, shared=False, generator=gen).to(F64)
    g, h = TF.tdsa_terms(middle, high, mask, 6, mode=mode, backend="reference")
    gated = eq7_gate(middle, high, mode)
    _assert_close((g, h), (eq3_g(gated, mask, 6), eq5_h(gated, 6)))
    w = (torch.randn(g.shape, dtype=F64, generator=gen), torch.randn(h.shape, dtype=F64, generator=gen))
    ours = _grads(lambda a, b: TF.tdsa_terms(a, b, mask, 6, mode=mode, backend="reference"), (middle, high), w)
    theirs = _grads(lambda a, b: (eq3_g(eq7_gate(a, b, mode), mask, 6), eq5_h(eq7_gate(a, b, mode), 6)), (middle, high), w)
    _assert_close(ours, theirs)
    assert ours[1].abs().sum() > 0, "the gate's gradient must reach the high level"


@pytest.mark.parametrize("cnum", list(range(1, 16)))
@pytest.mark.parametrize("shared", [True, False])
def test_mask_has_floor_half_zeros_per_group(cnum, shared):
    gen = torch.Generator().manual_seed(cnum)
    m = TF.channel_mask(4, 7, cnum, shared=shared, generator=gen)
    assert m.shape == (1 if shared else 4, 7 * cnum) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    zeros = (m.reshape(m.shape[0], 7, cnum) == 0).sum(-1)
    assert torch.all(zeros == cnum // 2)


def test_mask_positions_are_random_and_seeded():
    a = TF.channel_mask(1, 50, 9, generator=torch.Generator().manual_seed(1))
    b = TF.channel_mask(1, 50, 9, generator=torch.Generator().manual_seed(1))
    c = TF.channel_mask(1, 50, 9, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    groups = a.reshape(50, 9)
    assert len({tuple(r.tolist()) for r in groups}) > 10, "zero positions must vary between groups"
    freq = torch.stack([TF.channel_mask(1, 1, 3, generator=torch.Generator().manual_seed(s)) for s in range(600)])
    assert torch.all((freq.mean(0) - 2 / 3).abs() < 0.08), "each position is kept 2/3 of the time for n=3"


@pytest.mark.parametrize("cnum,hw", [(1, (4, 4)), (3, (7, 5)), (9, (2, 2)), (15, (1, 3))])
def test_h_lies_in_one_to_n(cnum, hw):
    gen = torch.Generator().manual_seed(cnum)
    for scale in (0.0, 1.0, 30.0):
        feat = torch.randn((3, 2 * cnum, *hw), generator=gen) * scale
        _, h = TF.mc_terms(feat, torch.ones(1, 2 * cnum), cnum, backend="reference")
        assert torch.all(h >= 1 - 1e-5) and torch.all(h <= min(cnum, hw[0] * hw[1]) + 1e-5)
    peaked = torch.full((1, cnum, 4, 4), -50.0)
    for m in range(cnum):  # every channel peaks at its own position: h reaches min(n, HW)
        peaked[0, m, m // 4 % 4, m % 4] = 50.0
    _, h = TF.mc_terms(peaked, torch.ones(1, cnum), cnum, backend="reference")
    assert abs(h.item() - min(cnum, 16)) < 1e-4


def test_ties_send_the_gradient_to_the_lowest_index():
    feat = torch.zeros(1, 3, 2, 2, dtype=F64, requires_grad=True)  # every channel ties everywhere
    g, h = TF.mc_terms(feat, torch.ones(1, 3, dtype=F64), 3, backend="reference")
    (g.sum() + h.sum()).backward()
    assert torch.all(feat.grad[0, 0] != 0) and torch.all(feat.grad[0, 1:] == 0)
    # a masked channel ties with a later unmasked one at zero: still the lowest index
    feat2 = torch.tensor([[[[0.0]], [[0.0]], [[-1.0]]]], dtype=F64, requires_grad=True)
    g2, _ = TF.mc_terms(feat2, torch.tensor([[0.0, 1.0, 1.0]], dtype=F64), 3, backend="reference")
    g2.sum().backward()
    assert feat2.grad[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]  # channel 0 wins but its mask is 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_matches_float32_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    middle = torch.rand((2, 18, 8, 8), generator=gen).to(dtype)
    high = torch.rand((2, 6, 4, 4), generator=gen).to(dtype)
    mask = TF.channel_mask(1, 2, 9, generator=gen)
    g, h = TF.tdsa_terms(middle, high, mask, 9, backend="reference")
    g32, h32 = TF.tdsa_terms(middle.float(), high.float(), mask, 9, backend="reference")
    assert g.dtype == torch.float32 and h.dtype == torch.float32
    assert torch.allclose(g, g32) and torch.allclose(h, h32)
    assert TF.topdown_gate(middle, high, backend="reference").dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_tdsa_terms_is_mc_terms_of_the_gate(backend):
    gen = torch.Generator().manual_seed(5)
    middle, high = torch.rand((2, 18, 6, 6), generator=gen), torch.rand((2, 6, 3, 3), generator=gen)
    mask = TF.channel_mask(2, 2, 9, shared=False, generator=gen)
    for mode in ("nearest", "bilinear", "bicubic"):
        a = TF.tdsa_terms(middle, high, mask, 9, mode=mode, backend=backend)
        b = TF.mc_terms(TF.topdown_gate(middle, high, mode=mode, backend=backend), mask, 9, backend=backend)
        assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bool_and_half_masks_are_cast(backend):
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn((2, 6, 3, 3), generator=gen)
    mask = TF.channel_mask(1, 2, 3, generator=gen)
    ref = TF.mc_terms(feat, mask, 3, backend=backend)
    for m in (mask.bool(), mask.half(), mask.double()):
        out = TF.mc_terms(feat, m, 3, backend=backend)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_channels_last_inputs(backend):
    gen = torch.Generator().manual_seed(2)
    base = torch.randn((2, 9, 5, 6), generator=gen)
    mask = TF.channel_mask(2, 3, 3, shared=False, generator=gen)
    ref = TF.mc_terms(base, mask, 3, backend=backend)
    for feat in (base.to(memory_format=torch.channels_last), base.transpose(2, 3).contiguous().transpose(2, 3)):
        out = TF.mc_terms(feat, mask, 3, backend=backend)
        assert torch.allclose(out[0], ref[0]) and torch.allclose(out[1], ref[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_inputs_propagate_where_expected(backend):
    feat = torch.randn(1, 6, 3, 3)
    feat[0, 4, 1, 1] = float("nan")
    g, h = TF.mc_terms(feat, torch.ones(1, 6), 3, backend=backend)
    assert torch.isfinite(g[0, 0]) and torch.isfinite(h[0, 0])
    assert torch.isnan(g[0, 1]) and torch.isnan(h[0, 1])
