"""The stricter CPU emulation of the CUDA execution model (csrc/emulation/cuda_emulation.h):
the real kernels at the paper's shapes and at 448 px through their real host path, and
planted defects that it must catch.

* Blocks of the kernels' real size (256 threads, as fibers), group loops that go round
  several times (28x28 and 56x56 maps: 784 and 3136 positions, up to 47,040 elements a
  group), the host code of csrc/cuda/*.cu executed (plan_scratch, the > 48 KB opt-in set
  once per kernel, the global-memory fallback's grid from the occupancy and its
  workspace), against an emulated H200-like device that refuses what CUDA refuses.
* Every launch is repeated under three schedules (thread order, reverse order, a seeded
  random interleaving of the barrier phases) and two scratch fills (NaN bytes, seeded
  random bytes) and must give the same bits each time (emulation_helpers.strict), with
  guard zones around the dynamic shared memory and the global workspace checked at every
  __syncthreads: a race, a missing barrier, a read of unwritten scratch or a write out of
  bounds fails the test.
* A test-only kernel (csrc/emulation/planted_defects.h) with each defect planted shows that
  the emulation catches it, and without the defect passes.
"""
from __future__ import annotations

import pytest
import torch

from emulation_helpers import ScheduleDependent, load_emulation, strict
from tdsa_fast import reference

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
TOL = {F64: 1e-10, F32: 1e-5, BF16: 2e-2}


@pytest.fixture(scope="module")
def emu():
    mod = load_emulation()
    yield mod
    mod.configure(schedule=0, seed=0, fill=0xFF, sms=132, optin=232448, occupancy=2)


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _neighbour_dot_ref(x):
    x = x.double()
    return (x * torch.roll(x, -1, dims=1)).sum(1)


# ---- planted defects ---------------------------------------------------------------------

def test_the_planted_kernel_without_a_defect_passes(emu):
    assert emu.stats()["threads"] == 256
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))  # 4 rounds of 256 threads, 3 blocks for 5 groups
    out = strict(emu, emu.neighbour_dot, x, 0)
    assert _rel(out, _neighbour_dot_ref(x)) < 1e-6


def test_a_missing_barrier_is_caught(emu):
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ScheduleDependent):
        strict(emu, emu.neighbour_dot, x, 1)


def test_the_schedule_alone_catches_the_missing_barrier_and_the_fill_alone_the_unwritten_read(emu):
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(1))
    one_fill = ((0, 0, 0), (1, 0, 0), (2, 5, 0))
    one_schedule = ((0, 0, 0xFF), (0, 1, -1))
    with pytest.raises(ScheduleDependent):
        strict(emu, emu.neighbour_dot, x, 1, runs=one_fill)
    strict(emu, emu.neighbour_dot, x, 1, runs=((0, 0, 0), (0, 0, 0)))  # one schedule, one fill: unseen
    with pytest.raises(ScheduleDependent):
        strict(emu, emu.neighbour_dot, x, 2, runs=one_schedule)
    strict(emu, emu.neighbour_dot, x, 2, runs=one_fill[:1] * 2)


def test_a_read_of_unwritten_shared_memory_is_caught(emu):
    x = torch.randn(5, 1000, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ScheduleDependent):
        strict(emu, emu.neighbour_dot, x, 2)


def test_a_shared_memory_write_out_of_bounds_is_caught(emu):
    x = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    with pytest.raises(RuntimeError, match="shared memory out of bounds: a write at byte 0 past the end"):
        emu.neighbour_dot(x, 3)


def test_a_divergent_barrier_is_caught(emu):
    x = torch.randn(2, 300, generator=torch.Generator().manual_seed(4))
    with pytest.raises(RuntimeError, match="divergent barrier in block 0"):
        emu.neighbour_dot(x, 4)


def test_more_than_48_kb_without_the_opt_in_is_refused(emu):
    # the planted kernel's host never calls cudaFuncSetAttribute: 13,000 floats (51 KB) must fail
    x = torch.randn(1, 13000)
    with pytest.raises(RuntimeError, match="too many resources requested for launch"):
        emu.neighbour_dot(x, 0)


# ---- the real kernels, real host path, strict runs ------------------------------------------

def _views(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


def _tdsa_case(emu, b, s, ch, xi, hw, hhw, dtype, layout, mode, seed=0):
    cl = ch * xi
    gen = torch.Generator().manual_seed(seed)
    middle = torch.randn(b, s * cl, *hw, generator=gen, dtype=F64).clamp_min(0)
    high = torch.randn(b, s * ch, *hhw, generator=gen, dtype=F64)
    mask = (torch.rand(1, s * cl, generator=gen) > 0.4).double()
    wg, wh = torch.randn(b, s, generator=gen, dtype=F64), torch.randn(b, s, generator=gen, dtype=F64)
    lo, hi = _views(middle.to(dtype), layout), _views(high.to(dtype), layout)
    g, h = strict(emu, emu.terms, [], lo, mask.to(dtype), cl, hi, mode, False)
    dl, dh = strict(emu, emu.terms, [wg, wh], lo, mask.to(dtype), cl, hi, mode, False)
    ref_dtype = F64 if dtype == F64 else F32
    rl, rh = lo.detach().to(ref_dtype).requires_grad_(), hi.detach().to(ref_dtype).requires_grad_()
    gr, hr = reference.tdsa_terms(rl, rh, mask, cl, mode)
    rdl, rdh = torch.autograd.grad((gr.double() * wg).sum() + (hr.double() * wh).sum(), (rl, rh))
    tol = TOL[dtype]
    assert _rel(g, gr) <= tol and _rel(h, hr) <= tol
    assert _rel(dl, rdl) <= tol and _rel(dh, rdh) <= tol
    assert dl.stride() == lo.stride() and dh.stride() == hi.stride()


@pytest.mark.parametrize("dtype,layout,mode", [(BF16, "contiguous", "nearest"), (BF16, "channels_last", "nearest"),
                                               (F32, "contiguous", "bilinear")])
def test_tdsa_terms_at_the_paper_shape(emu, dtype, layout, mode):
    # middle 28x28 (784 positions: 4 rounds of 256 threads), n = 9, xi = 3, from 14x14
    emu.stats(reset=True)
    _tdsa_case(emu, 1, 2, 3, 3, (28, 28), (14, 14), dtype, layout, mode)
    st = emu.stats()
    assert st["launches"] == 6 and st["blocks"] == 12  # 3 strict runs x (fwd, bwd), a block per group
    assert st["threads"] == 256 and st["switches"] > 12 * 256
    if dtype == F32:
        assert st["opt_in_launches"] > 0  # fp32's gated backward needs more than 48 KB


@pytest.mark.parametrize("dtype,optin", [(BF16, 48 * 1024), (F32, 60 * 1024)], ids=["bf16", "fp32"])
def test_kept_exp_and_recomputed_exp_plans_agree_bitwise(emu, dtype, optin):
    """At the paper shape the plan keeps exp(x - max) in shared memory where that costs no
    resident blocks (bf16: both directions, 54 / 62 KB; fp32: the forward only, since its
    backward would drop from 4 to 2 blocks per SM); with a smaller opt-in (``optin``) it
    recomputes it everywhere. Both plans give the same values and gradients to the bit."""
    gen = torch.Generator().manual_seed(7)
    lo = torch.randn(1, 18, 28, 28, generator=gen).clamp_min(0).to(dtype)
    hi = torch.randn(1, 6, 14, 14, generator=gen).to(dtype)
    mask = (torch.rand(1, 18, generator=gen) > 0.4).to(dtype)
    grads = [torch.randn(1, 2, generator=gen, dtype=F64), torch.randn(1, 2, generator=gen, dtype=F64)]

    def run():
        emu.stats(reset=True)
        out = [*emu.terms([], lo, mask, 9, hi, "nearest", False), *emu.terms(grads, lo, mask, 9, hi, "nearest", False)]
        return out, emu.stats()["max_dynamic_smem"]

    kept, smem_kept = run()
    default_optin = emu.config()["optin"]
    emu.configure(optin=optin)
    try:
        recomputed, smem_recomputed = run()
    finally:
        emu.configure(optin=default_optin)
    assert smem_kept > smem_recomputed
    if dtype == BF16:
        assert smem_kept - smem_recomputed == 9 * 784 * 4  # ex [n][HW] in float, in the backward
    for a, b in zip(kept, recomputed):
        assert torch.equal(a, b)


def test_tdsa_terms_at_448_px_opts_in_once_per_kernel(emu):
    # middle 56x56 (3136 positions), n = 15, xi = 5, from 28x28: 138 / 166 KB of shared memory
    emu.stats(reset=True)
    _tdsa_case(emu, 1, 2, 3, 5, (56, 56), (28, 28), BF16, "contiguous", "nearest", seed=1)
    st = emu.stats()
    assert st["opt_in_launches"] == st["launches"] == 6
    assert st["max_dynamic_smem"] > 128 * 1024
    assert st["set_attribute"] <= 2  # once for the forward kernel and once for the backward's, at most
    _tdsa_case(emu, 1, 2, 3, 5, (56, 56), (28, 28), BF16, "contiguous", "nearest", seed=2)
    assert emu.stats()["set_attribute"] == st["set_attribute"]  # not again


def test_tdsa_terms_at_448_px_in_fp32_streams_the_group(emu):
    # fp32 at 448 px: the copied group (15 x 3136 x 4 B = 184 KB) plus its gate does not fit
    # the 227 KB opt-in; the plan streams the dense group from global memory (StreamedGroup)
    # and keeps the rest of the scratch in shared memory: no global workspace
    emu.stats(reset=True)
    _tdsa_case(emu, 1, 2, 3, 5, (56, 56), (28, 28), F32, "contiguous", "nearest", seed=4)
    st = emu.stats()
    assert st["launches"] == 6 and st["max_grid"] == 2  # a block per group, not the fallback's grid
    assert 48 * 1024 < st["max_dynamic_smem"] < 15 * 3136 * 4 and st["no_dynamic_smem_launches"] == 0


def test_the_streamed_and_copied_plans_agree_bitwise(emu):
    """tdsa_terms with n = 15, xi = 5 and mc_terms with n = 20, at 28x28 in fp32: the copied
    groups (47 / 63 KB) fit the default opt-in; at an opt-in of 48 KB only the streamed plans
    fit (their scratch without the group: under 30 KB). Both read the same values in the same
    order: the same values and gradients to the bit."""
    gen = torch.Generator().manual_seed(8)
    lo = torch.randn(1, 30, 28, 28, generator=gen).clamp_min(0)
    hi = torch.randn(1, 6, 14, 14, generator=gen)
    mask = (torch.rand(1, 30, generator=gen) > 0.4).float()
    feat = torch.randn(1, 40, 28, 28, generator=gen)
    mc_mask = (torch.rand(1, 40, generator=gen) > 0.4).float()
    grads = [torch.randn(1, 2, generator=gen, dtype=F64), torch.randn(1, 2, generator=gen, dtype=F64)]

    def run():
        emu.stats(reset=True)
        out = [*strict(emu, emu.terms, [], lo, mask, 15, hi, "bilinear", False),
               *strict(emu, emu.terms, grads, lo, mask, 15, hi, "bilinear", False),
               *strict(emu, emu.terms, [], feat, mc_mask, 20, None, "nearest", False),
               *strict(emu, emu.terms, grads, feat, mc_mask, 20, None, "nearest", False)]
        st = emu.stats()
        assert st["launches"] == 12 and st["no_dynamic_smem_launches"] == 0  # no global-scratch kernel
        return out, st["max_dynamic_smem"]

    copied, smem_copied = run()
    default_optin = emu.config()["optin"]
    emu.configure(optin=48 * 1024)
    try:
        streamed, smem_streamed = run()
    finally:
        emu.configure(optin=default_optin)
    assert smem_copied > 20 * 784 * 4 > 30 * 1024 > smem_streamed > 0
    assert len(copied) == 7  # g, h, d low, d high; g, h, d x
    for a, b in zip(copied, streamed):
        assert torch.equal(a, b)


def test_the_global_fallback_grid_comes_from_the_occupancy(emu):
    # channels_last fp64 at 448 px (a strided group: not streamed) does not fit the 227 KB
    # opt-in: the real plan picks the global-scratch kernel with a grid of SMs x occupancy
    # (here 1 x 1) and a workspace of one slice per block
    emu.configure(sms=1, occupancy=1)
    try:
        emu.stats(reset=True)
        _tdsa_case(emu, 1, 2, 3, 5, (56, 56), (28, 28), F64, "channels_last", "bilinear", seed=3)
        st = emu.stats()
        assert st["max_grid"] == 1 and st["opt_in_launches"] == 0 and st["max_dynamic_smem"] == 0
        assert st["no_dynamic_smem_launches"] == st["launches"] == 6
    finally:
        emu.configure(sms=132, occupancy=2)


@pytest.mark.parametrize("dtype,layout", [(BF16, "contiguous"), (F32, "channels_last")])
def test_mc_terms_at_the_paper_shape(emu, dtype, layout):
    # the high level: 14x14, n = 3 (588 elements for 256 threads)
    b, s, cnum = 2, 3, 3
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(b, s * cnum, 14, 14, generator=gen, dtype=F64)
    mask = (torch.rand(b, s * cnum, generator=gen) > 0.4).double()
    wg, wh = torch.randn(b, s, generator=gen, dtype=F64), torch.randn(b, s, generator=gen, dtype=F64)
    x = _views(base.to(dtype), layout)
    g, h = strict(emu, emu.terms, [], x, mask.to(dtype), cnum, None, "nearest", False)
    (dx,) = strict(emu, emu.terms, [wg, wh], x, mask.to(dtype), cnum, None, "nearest", False)
    r = x.detach().to(F32).requires_grad_()
    gr, hr = reference.mc_terms(r, mask, cnum)
    (dr,) = torch.autograd.grad((gr.double() * wg).sum() + (hr.double() * wh).sum(), r)
    assert _rel(g, gr) <= TOL[dtype] and _rel(h, hr) <= TOL[dtype] and _rel(dx, dr) <= TOL[dtype]


@pytest.mark.parametrize("mode,layout", [("nearest", "contiguous"), ("bicubic", "contiguous"),
                                         ("nearest", "channels_last")])
def test_topdown_gate_at_the_paper_shape(emu, mode, layout):
    gen = torch.Generator().manual_seed(6)
    middle = torch.rand(1, 9, 28, 28, generator=gen, dtype=F64)
    high = torch.randn(1, 3, 14, 14, generator=gen, dtype=F64)
    go = torch.randn(1, 9, 28, 28, generator=gen, dtype=F64)
    lo, hi = _views(middle.to(BF16), layout), _views(high.to(BF16), layout)
    (out,) = strict(emu, emu.gate, None, lo, hi, mode, False)
    dl, dh = strict(emu, emu.gate, _views(go.to(BF16), layout), lo, hi, mode, False)
    assert out.stride() == lo.stride() and dl.stride() == lo.stride() and dh.stride() == hi.stride()
    rl, rh = lo.detach().float().requires_grad_(), hi.detach().float().requires_grad_()
    ro = reference.topdown_gate(rl, rh, mode)
    rdl, rdh = torch.autograd.grad((ro.double() * go).sum(), (rl, rh))
    assert _rel(out, ro) <= TOL[BF16] and _rel(dl, rdl) <= TOL[BF16] and _rel(dh, rdh) <= TOL[BF16]
