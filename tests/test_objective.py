"""The training objective as the paper writes it, against the code that computes it.

Eq. 9 (``CE(logits) + mu * L``, with eq. 1 per level and eq. 8 for TDSA) and the released
code's form (``CE(logits) + sum over levels of alpha * L_dis + beta * (1 - L_div / n)``) are
written out here from the loop-by-loop transcriptions of eqs. 3, 5 and 7
(``transcription.py``) and ``F.cross_entropy``, and compared, values and gradients, with
:class:`TrainingObjective`, the loss modules and the functional losses, on both backends.
Weights other than the defaults (mu, lam, beta) make a swapped or dropped weight visible.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tdsa_fast import _backend
from tdsa_fast import functional as TF
from tdsa_fast.models import ModelOutput
from tdsa_fast.nn import MCLoss, TDSALoss
from tdsa_fast.objective import TrainingObjective
from transcription import eq3_g, eq5_h, eq7_gate

F64 = torch.float64
S, CNUM_HIGH, XI = 3, 3, 2  # classes, high-level channels per class, middle/high ratio
CNUM_MIDDLE = CNUM_HIGH * XI
MU, LAM, BETA = 0.7, 3.0, 11.0

BACKENDS = ["reference", pytest.param("fused", marks=pytest.mark.skipif(
    not _backend.fused_available("cpu"), reason="tdsa_fast._C is not built (pip install -e . builds it)"))]


def _inputs(seed: int = 0):
    """Post-ReLU-like maps (middle 4x5 above high 2x3), logits, targets, and masks: a
    per-sample one for the middle level, a shared one for the high level."""
    gen = torch.Generator().manual_seed(seed)
    b = 2
    middle = torch.rand(b, S * CNUM_MIDDLE, 4, 5, generator=gen, dtype=F64)
    high = torch.rand(b, S * CNUM_HIGH, 2, 3, generator=gen, dtype=F64) * 2
    logits = torch.randn(b, S, generator=gen, dtype=F64)
    target = torch.tensor([2, 0])
    mask_middle = TF.channel_mask(b, S, CNUM_MIDDLE, shared=False, generator=gen).to(F64)
    mask_high = TF.channel_mask(1, S, CNUM_HIGH, generator=gen).to(F64)
    return middle, high, logits, target, (mask_middle, mask_high)


def _level(feat, mask, cnum, target, div_form):
    """One level's MC objective from eqs. 3-6, weighted as eq. 9 adds it: mu * eq. 1 (paper) or
    the released code's form."""
    dis = F.cross_entropy(eq3_g(feat, mask, cnum), target)
    div = eq5_h(feat, cnum).mean()
    if div_form == "paper":
        return MU * (dis - LAM * div)
    return MU * dis + BETA * (1 - div / cnum)


def _written_out(loss, middle, high, logits, target, masks, div_form, mode):
    """The whole objective of ``loss`` (mc, tdsa, tdsa-noattn) from the equations."""
    mask_middle, mask_high = masks
    levels = _level(high, mask_high, CNUM_HIGH, target, div_form)
    if loss != "mc":
        gated = eq7_gate(middle, high, mode) if loss == "tdsa" else middle
        levels = levels + _level(gated, mask_middle, CNUM_MIDDLE, target, div_form)
    return F.cross_entropy(logits, target) + levels


def _grads(total, tensors):
    """d total / d each tensor; zeros where the total does not use it."""
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div_form", ["paper", "code"])
@pytest.mark.parametrize("loss,mode", [("mc", "nearest"), ("tdsa-noattn", "nearest"), ("tdsa", "nearest"),
                                       ("tdsa", "bilinear")])
def test_training_objective_is_eq_9(loss, mode, div_form, backend):
    middle, high, logits, target, masks = _inputs()
    leaves = [t.clone().requires_grad_() for t in (middle, high, logits)]
    expected = _written_out(loss, *leaves, target, masks, div_form, mode)
    want = _grads(expected, leaves)

    objective = TrainingObjective(loss, mu=MU, lam=LAM, beta=BETA, div_form=div_form, upsample=mode,
                                  cnum_high=CNUM_HIGH, backend=backend)
    leaves = [t.clone().requires_grad_() for t in (middle, high, logits)]
    out = ModelOutput(logits=leaves[2], middle=leaves[0], high=leaves[1])
    total, ce = objective(out, target, masks=masks if loss != "mc" else masks[1:])
    got = _grads(total, leaves)

    # the classifier's CE is computed in float32 (as under autocast); the MC/TDSA part in float64
    ce64 = F.cross_entropy(logits, target)
    assert torch.allclose(ce.double(), ce64, rtol=1e-6)
    assert torch.allclose(total - ce, expected - ce64, rtol=1e-10, atol=1e-10), (total.item(), expected.item())
    for name, g, w, rtol in zip(("middle", "high", "logits"), got, want, (1e-8, 1e-8, 1e-6)):
        assert torch.allclose(g.double(), w, rtol=rtol, atol=1e-10), f"d total / d {name}"
    if loss == "mc":
        assert not got[0].any(), "MC-Loss must leave the middle level alone"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div_form", ["paper", "code"])
def test_functional_losses_and_modules_are_eq_1_and_eq_8(div_form, backend):
    """``TF.mc_loss`` (eq. 1 per level) and ``TF.tdsa_loss`` (eq. 8), each level weighted by mu
    as in eq. 9 (in the code form mu weights the level's CE), and the modules, which equal them."""
    middle, high, _, target, (mask_middle, mask_high) = _inputs(1)
    form = dict(div_form=div_form, lam=LAM, mu=MU, beta=BETA, backend=backend)
    mc_high = _level(high, mask_high, CNUM_HIGH, target, div_form)
    for attention in (True, False):
        gated = eq7_gate(middle, high, "nearest") if attention else middle
        eq8 = mc_high + _level(gated, mask_middle, CNUM_MIDDLE, target, div_form)
        got = TF.tdsa_loss(middle, high, target, cnum_high=CNUM_HIGH, masks=(mask_middle, mask_high),
                           attention=attention, **form)
        assert torch.allclose(got, eq8, rtol=1e-10), (attention, got.item(), eq8.item())
        module = TDSALoss(CNUM_HIGH, mu=MU, lam=LAM, div_form=div_form, beta=BETA, attention=attention,
                          backend=backend)
        assert torch.allclose(module(middle, high, target, (mask_middle, mask_high)), eq8, rtol=1e-10)
    assert torch.allclose(TF.mc_loss(high, target, CNUM_HIGH, mask=mask_high, **form), mc_high, rtol=1e-10)
    module = MCLoss(CNUM_HIGH, mu=MU, lam=LAM, div_form=div_form, beta=BETA, backend=backend)
    assert torch.allclose(module(high, target, mask_high), mc_high, rtol=1e-10)


def _released_form(loss, middle, high, logits, target, masks, beta_high, beta_middle, alpha=1.5):
    """The released code's total: CE + per level alpha * CE(g) + beta * (1 - mean(h) / n)."""
    mask_middle, mask_high = masks
    total = F.cross_entropy(logits, target) + alpha * F.cross_entropy(eq3_g(high, mask_high, CNUM_HIGH), target) \
        + beta_high * (1 - eq5_h(high, CNUM_HIGH).mean() / CNUM_HIGH)
    if loss != "mc":
        gated = eq7_gate(middle, high, "nearest") if loss == "tdsa" else middle
        total = total + alpha * F.cross_entropy(eq3_g(gated, mask_middle, CNUM_MIDDLE), target) \
            + beta_middle * (1 - eq5_h(gated, CNUM_MIDDLE).mean() / CNUM_MIDDLE)
    return total


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,beta", [("mc", 20.0), ("tdsa", 15.0), ("tdsa-noattn", 15.0)])
def test_the_trainers_default_objective_is_the_released_codes(loss, beta, backend):
    """With no loss options, the trainer's objective is the released code's formula with each
    script's own beta (MC-Loss 20, TDSA 15) and alpha = 1.5: values and gradients."""
    from tdsa_fast.config import parse_config
    from tdsa_fast.train import build_objective

    cfg, _ = parse_config(["--loss", loss])
    assert (cfg.div_form, cfg.beta, cfg.mu) == ("code", beta, 1.5)
    objective = build_objective(cfg.replace(cnum_high=CNUM_HIGH), num_classes=S)
    objective.term.backend = backend
    middle, high, logits, target, masks = _inputs(2)
    leaves = [t.clone().requires_grad_() for t in (middle, high, logits)]
    want = _released_form(loss, *leaves, target, masks, beta, beta)
    want_grads = _grads(want, leaves)
    leaves = [t.clone().requires_grad_() for t in (middle, high, logits)]
    out = ModelOutput(logits=leaves[2], middle=leaves[0], high=leaves[1])
    total, _ = objective(out, target, masks=masks if loss != "mc" else masks[1:])
    assert torch.allclose(total.double(), want, rtol=1e-6), (total.item(), want.item())
    for name, g, w in zip(("middle", "high", "logits"), _grads(total, leaves), want_grads):
        assert torch.allclose(g.double(), w, rtol=1e-5, atol=1e-8), f"d total / d {name}"
    # the modules and the functional losses default to the same
    module = MCLoss(CNUM_HIGH) if loss == "mc" else TDSALoss(CNUM_HIGH, attention=loss == "tdsa")
    assert (module.div_form, module.beta) == ("code", beta)
    fn = TF.mc_loss(high, target, CNUM_HIGH, mask=masks[1]) if loss == "mc" else TF.tdsa_loss(
        middle, high, target, cnum_high=CNUM_HIGH, masks=masks, attention=loss == "tdsa")
    assert torch.allclose(fn, want.detach() - F.cross_entropy(logits, target), rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div_form", ["paper", "code"])
@pytest.mark.parametrize("loss", ["tdsa", "tdsa-noattn"])
def test_the_middle_levels_own_weights(loss, div_form, backend):
    """lam_middle / beta_middle weight the middle level only; the high level keeps lam / beta."""
    middle, high, logits, target, masks = _inputs(3)
    lam_mid, beta_mid = 0.4, 2.5
    objective = TrainingObjective(loss, mu=MU, lam=LAM, beta=BETA, lam_middle=lam_mid, beta_middle=beta_mid,
                                  div_form=div_form, cnum_high=CNUM_HIGH, backend=backend)
    leaves = [t.clone().requires_grad_() for t in (middle, high, logits)]
    total, ce = objective(ModelOutput(logits=leaves[2], middle=leaves[0], high=leaves[1]), target, masks=masks)
    gated = eq7_gate(middle, high, "nearest") if loss == "tdsa" else middle
    dis_h, div_h = F.cross_entropy(eq3_g(high, masks[1], CNUM_HIGH), target), eq5_h(high, CNUM_HIGH).mean()
    dis_m, div_m = F.cross_entropy(eq3_g(gated, masks[0], CNUM_MIDDLE), target), eq5_h(gated, CNUM_MIDDLE).mean()
    if div_form == "paper":
        want = MU * (dis_h - LAM * div_h + dis_m - lam_mid * div_m)
    else:
        want = MU * (dis_h + dis_m) + BETA * (1 - div_h / CNUM_HIGH) + beta_mid * (1 - div_m / CNUM_MIDDLE)
    assert torch.allclose(total - ce, want, rtol=1e-10), (total.item() - ce.item(), want.item())
    same = TrainingObjective(loss, mu=MU, lam=LAM, beta=BETA, div_form=div_form, cnum_high=CNUM_HIGH,
                             backend=backend)(ModelOutput(logits=logits, middle=middle, high=high), target, masks=masks)[0]
    assert not torch.allclose(total, same), "the middle level's own weight changed nothing"
    with pytest.raises(ValueError, match="middle level"):
        TrainingObjective("mc", beta_middle=1.0)


def test_the_two_forms_differ_and_the_default_weights():
    """Default weights: mu = 1.5, lam = 10 for the paper form; the code form (the default) with
    beta = 15 for TDSA."""
    middle, high, logits, target, masks = _inputs(2)
    out = ModelOutput(logits=logits, middle=middle, high=high)
    paper = TrainingObjective("tdsa", cnum_high=CNUM_HIGH, div_form="paper")(out, target, masks=masks)[0]
    code = TrainingObjective("tdsa", cnum_high=CNUM_HIGH)(out, target, masks=masks)[0]
    ce = F.cross_entropy(logits, target)
    gated = eq7_gate(middle, high, "nearest")
    terms = [(eq3_g(high, masks[1], CNUM_HIGH), eq5_h(high, CNUM_HIGH), CNUM_HIGH),
             (eq3_g(gated, masks[0], CNUM_MIDDLE), eq5_h(gated, CNUM_MIDDLE), CNUM_MIDDLE)]
    want_paper = ce + 1.5 * sum(F.cross_entropy(g, target) - 10.0 * h.mean() for g, h, _ in terms)
    want_code = ce + sum(1.5 * F.cross_entropy(g, target) + 15.0 * (1 - h.mean() / n) for g, h, n in terms)
    assert torch.allclose(paper, want_paper, rtol=1e-6) and torch.allclose(code, want_code, rtol=1e-6)
    assert not torch.allclose(paper, code)


def test_the_trainers_loss_weight_options():
    """--beta defaults per loss; --beta-middle / --lam-middle only where there is a middle level;
    a run saved before an option existed resumes with that option's default."""
    from tdsa_fast.config import parse_config, resume_config

    assert parse_config(["--loss", "mc"])[0].beta == 20.0
    assert parse_config(["--loss", "tdsa", "--beta", "7"])[0].beta == 7.0
    assert parse_config(["--loss", "tdsa-noattn", "--div-form", "paper"])[0].div_form == "paper"
    cfg, _ = parse_config(["--loss", "tdsa", "--beta-middle", "2", "--lam-middle", "0.5"])
    assert (cfg.beta_middle, cfg.lam_middle) == (2.0, 0.5)
    for loss in ("mc", "ce"):
        for flag in ("--beta-middle", "--lam-middle"):
            with pytest.raises(ValueError, match="middle level"):
                parse_config(["--loss", loss, flag, "1"])
    saved, _ = parse_config(["--loss", "tdsa", "--div-form", "paper"])
    old = {k: v for k, v in saved.options().items() if k not in ("beta_middle", "lam_middle")}
    given, explicit = parse_config(["--resume", "RUN"])
    resumed = resume_config(old, given, explicit)
    assert (resumed.div_form, resumed.beta_middle, resumed.lam_middle) == ("paper", None, None)
