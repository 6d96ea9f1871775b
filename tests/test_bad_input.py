"""Every bad input of docs/contract.md raises ValueError naming the argument and the shapes, before any compute."""
from __future__ import annotations

import pytest
import torch

from tdsa_fast import functional as TF
from tdsa_fast.nn import MCLoss, TDSALoss

MIDDLE = torch.rand(2, 18, 8, 8)    # S=2, cnum_middle=9
HIGH = torch.rand(2, 6, 4, 4)    # S=2, cnum_high=3, xi=3
MASK_MIDDLE = torch.ones(1, 18)
MASK_HIGH = torch.ones(1, 6)
Y = torch.tensor([0, 1])


def raises(match):
    return pytest.raises(ValueError, match=match)


def test_feature_map_not_4d():
    with raises(r"feat must be 4-D.*\(2, 6, 16\)"):
        TF.mc_terms(torch.rand(2, 6, 16), MASK_HIGH, 3)
    with raises(r"middle must be 4-D"):
        TF.topdown_gate(torch.rand(18, 8, 8), HIGH)
    with raises(r"high must be 4-D"):
        TF.tdsa_terms(MIDDLE, torch.rand(2, 6, 4, 4, 1), MASK_MIDDLE, 9)


def test_channels_not_divisible_by_cnum():
    with raises(r"feat has 6 channels.*not divisible by cnum=4"):
        TF.mc_terms(HIGH, torch.ones(1, 6), 4)
    with raises(r"middle has 18 channels.*not divisible by cnum_middle=4"):
        TF.tdsa_terms(MIDDLE, HIGH, MASK_MIDDLE, 4)
    with raises(r"high has 6 channels.*not divisible by cnum_high=4"):
        TF.tdsa_loss(MIDDLE, HIGH, Y, cnum_high=4)


def test_middle_channels_not_a_multiple_of_high_channels():
    with raises(r"middle channels must be a multiple of high channels.*\(2, 18, 8, 8\).*\(2, 4, 4, 4\)"):
        TF.topdown_gate(MIDDLE, torch.rand(2, 4, 4, 4))


def test_class_counts_disagree_between_levels():
    # xi = 3: 9 classes of 2 middle channels would need 2/3 of a high channel each
    with raises(r"class counts disagree.*middle \(2, 18, 8, 8\) with cnum_middle=2 holds 9 classes"):
        TF.tdsa_terms(MIDDLE, HIGH, MASK_MIDDLE, 2)


def test_middle_spatially_smaller_than_high():
    with raises(r"middle must be at least as large as high.*\(2, 18, 3, 8\).*\(2, 6, 4, 4\)"):
        TF.topdown_gate(torch.rand(2, 18, 3, 8), HIGH)
    with raises(r"middle must be at least as large"):
        TF.tdsa_loss(torch.rand(2, 18, 8, 2), HIGH, Y)


def test_mask_of_the_wrong_shape():
    with raises(r"mask must have shape \[2, 6\] or \[1, 6\].*got \(1, 5\)"):
        TF.mc_terms(HIGH, torch.ones(1, 5), 3)
    with raises(r"mask must have shape"):
        TF.mc_terms(HIGH, torch.ones(3, 6), 3)
    with raises(r"mask must have shape"):
        TF.mc_terms(HIGH, torch.ones(6), 3)
    with raises(r"mask_middle must have shape \[2, 18\]"):
        TF.tdsa_terms(MIDDLE, HIGH, MASK_HIGH, 9)
    with raises(r"mask_high must have shape \[2, 6\]"):
        TF.tdsa_loss(MIDDLE, HIGH, Y, masks=(MASK_MIDDLE, MASK_MIDDLE))
    with raises(r"mask must be a floating or bool tensor"):
        TF.mc_terms(HIGH, torch.ones(1, 6, dtype=torch.int64), 3)


def test_features_on_different_devices():
    meta_high = torch.empty(2, 6, 4, 4, device="meta")
    with raises(r"middle is on cpu but high is on meta"):
        TF.topdown_gate(MIDDLE, meta_high)
    with raises(r"mask is on meta but feat is on cpu"):
        TF.mc_terms(HIGH, torch.ones(1, 6, device="meta"), 3)
    with raises(r"target is on meta"):
        TF.mc_loss(HIGH, Y.to("meta"), 3)


def test_features_of_different_dtypes():
    with raises(r"middle has dtype torch.float32 but high has dtype torch.float16"):
        TF.tdsa_terms(MIDDLE, HIGH.half(), MASK_MIDDLE, 9)
    with raises(r"feat must be float16, bfloat16, float32 or float64"):
        TF.mc_terms(HIGH.to(torch.int32), MASK_HIGH, 3)


def test_batch_sizes_differ():
    with raises(r"same batch size"):
        TF.topdown_gate(MIDDLE, torch.rand(3, 6, 4, 4))
    with raises(r"target must have shape \[2\]"):
        TF.mc_loss(HIGH, torch.tensor([0, 1, 1]), 3)


def test_unknown_options_list_the_valid_ones():
    with raises(r"mode must be one of nearest, bilinear, bicubic; got 'area'"):
        TF.topdown_gate(MIDDLE, HIGH, mode="area")
    with raises(r"div_form must be one of paper, code"):
        TF.mc_loss(HIGH, Y, 3, div_form="other")
    with raises(r"backend must be one of auto, reference, fused"):
        TF.mc_terms(HIGH, MASK_HIGH, 3, backend="cuda")
    with raises(r"cnum must be an int >= 1"):
        TF.mc_terms(HIGH, MASK_HIGH, 0)
    with raises(r"num_classes must be an int >= 1"):
        TF.channel_mask(2, 0, 3)
    with raises(r"div_form"):
        MCLoss(div_form="x")
    with raises(r"mode"):
        TDSALoss(mode="x")


def test_fused_backend_without_kernels_is_a_clear_error(monkeypatch):
    import tdsa_fast._backend as backend
    monkeypatch.setattr(backend, "fused_available", lambda device, op="mc_terms": False)  # as on a build without kernels
    with pytest.raises(RuntimeError, match=r"kernels are not built for cpu"):
        TF.mc_terms(HIGH, MASK_HIGH, 3, backend="fused")
    g, _ = TF.mc_terms(HIGH, MASK_HIGH, 3, backend="auto")  # auto falls back
    assert g.shape == (2, 2)


def test_checks_run_before_compute_and_read_only_metadata():
    # meta tensors have no data: a check that touched values would fail differently
    middle = torch.empty(2, 18, 8, 8, device="meta")
    with raises(r"mask_middle must have shape"):
        TF.tdsa_terms(middle, torch.empty(2, 6, 4, 4, device="meta"), torch.empty(1, 17, device="meta"), 9)


@pytest.mark.parametrize("call", [
    lambda: TF.mc_loss(HIGH, Y, 3, mask=MASK_HIGH),
    lambda: TF.tdsa_loss(MIDDLE, HIGH, Y, masks=(MASK_MIDDLE, MASK_HIGH)),
    lambda: TF.tdsa_loss(MIDDLE, HIGH, Y, masks=(MASK_MIDDLE, MASK_HIGH), attention=False),
    lambda: TF.tdsa_terms(MIDDLE, HIGH, MASK_MIDDLE, 9),
    lambda: TF.mc_terms(HIGH, MASK_HIGH, 3),
], ids=["mc_loss", "tdsa_loss", "tdsa_loss-noattn", "tdsa_terms", "mc_terms"])
def test_each_call_checks_each_input_once(call, monkeypatch):
    """The public functions check their inputs, then run unchecked implementations: no tensor,
    mask or option is validated twice in Python on one call (the C++ ops check again)."""
    from tdsa_fast import _checks
    seen = []
    for name in ("feature_map", "mask", "choice", "target"):
        original = getattr(_checks, name)

        def counted(arg_name, *rest, _name=name, _original=original):
            seen.append((_name, arg_name))
            return _original(arg_name, *rest)
        monkeypatch.setattr(_checks, name, counted)
    call()
    assert seen, "no check ran"
    assert len(seen) == len(set(seen)), f"checked more than once: {sorted(seen)}"
