"""The baseline losses of the paper's Tables II/III (tdsa_fast.losses): each against its own paper's
formula, written out here independently on a tiny input (plain Python / math per sample, or
straightforward torch), gradients, argument errors; the objective that owns them; and a short
end-to-end training run with each on a tiny version of the built-in data."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tdsa_fast import checkpoint
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset
from tdsa_fast.evaluate import evaluate_checkpoint
from tdsa_fast.losses import (BASELINES, ArcFaceLoss, ASoftmaxLoss, CenterLoss, CircleLoss, COCOLoss, CosFaceLoss,
                              FocalLoss, LGMLoss, baseline_options, build_baseline)
from tdsa_fast.models import ModelOutput
from tdsa_fast.objective import TrainingObjective
from tdsa_fast.train import run

S, D, B = 4, 3, 5  # classes, embedding width, batch


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64).float()
    y = torch.tensor([0, 1, 2, 3, 1])
    return x, y


def _weights(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, D, generator=g)


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _norm(u):
    return math.sqrt(sum(a * a for a in u))


def _nll(logits_row, y):
    """-log softmax(row)[y], in plain Python."""
    return -logits_row[y] + math.log(sum(math.exp(v) for v in logits_row))


def _set_weights(loss, w):
    with torch.no_grad():
        if isinstance(loss, (CosFaceLoss, ArcFaceLoss)):
            loss.impl.W.copy_(w.t())
        else:
            param = {ASoftmaxLoss: "weight", CircleLoss: "weight", COCOLoss: "centroids", LGMLoss: "means"}
            getattr(loss, param[type(loss)]).copy_(w)


# ------------------------------------------------------------------------------------------------
# each loss against its paper's formula
# ------------------------------------------------------------------------------------------------

def test_focal_matches_the_paper_and_reduces_to_ce():
    x, y = _data()
    logits = torch.randn(B, S, generator=torch.Generator().manual_seed(3))
    want = 0.0
    for row, t in zip(logits.tolist(), y.tolist()):
        p = math.exp(-_nll(row, t))
        want += -0.25 * (1 - p) ** 2 * math.log(p)  # FL = -α (1 - p_t)^γ log p_t
    got = FocalLoss(gamma=2.0, alpha=0.25)(logits, y)
    assert got.item() == pytest.approx(want / B, rel=1e-5)
    assert FocalLoss(gamma=0.0)(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert FocalLoss().gamma == 2.0 and FocalLoss().alpha == 1.0


def test_center_loss_value_and_the_papers_center_update():
    x, y = _data()
    logits = torch.randn(B, S, generator=torch.Generator().manual_seed(3))
    loss = CenterLoss(S, D, lam=0.5, alpha=0.5)
    c0 = torch.randn(S, D, generator=torch.Generator().manual_seed(4))
    loss.centers.copy_(c0)
    want_center = sum(0.5 * sum((a - b) ** 2 for a, b in zip(x[i].tolist(), c0[y[i]].tolist())) for i in range(B)) / B
    want = F.cross_entropy(logits, y).item() + 0.5 * want_center
    got = loss(logits, x, y)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # Algorithm 1: c_j <- c_j - α Σ_i δ(y_i=j)(c_j - x_i) / (1 + Σ_i δ(y_i=j)), for every class j
    for j in range(S):
        members = [i for i in range(B) if y[i] == j]
        delta = [sum(c0[j, d].item() - x[i, d].item() for i in members) / (1 + len(members)) for d in range(D)]
        expected = [c0[j, d].item() - 0.5 * delta[d] for d in range(D)]
        assert loss.centers[j].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # no update in eval mode or without gradients
    before = loss.centers.clone()
    with torch.no_grad():
        loss(logits, x, y)
    loss.eval()
    loss(logits, x, y)
    assert torch.equal(loss.centers, before)
    assert "centers" in loss.state_dict() and not list(loss.parameters())


def _psi(theta, m):
    k = min(int(theta * m / math.pi), m - 1)  # θ in [kπ/m, (k+1)π/m]
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("iteration,lam", [(0, 1000.0), (10, 1000 / (1 + 0.12 * 10)), (100000, 5.0)])
def test_asoftmax_matches_the_paper_with_its_annealing(iteration, lam):
    # spread the true-class angles over several k intervals (m = 4: [0, π/4), [π/4, π/2), ...)
    x, y = _data()
    w = _weights()
    loss = ASoftmaxLoss(S, D)
    _set_weights(loss, w)
    loss.iteration.fill_(iteration)
    assert loss.annealing_lambda().item() == pytest.approx(lam, rel=1e-5)
    ks = set()
    want = 0.0
    for i in range(B):
        xi, t = x[i].tolist(), int(y[i])
        cosines = [_cos(xi, w[j].tolist()) for j in range(S)]
        theta = math.acos(cosines[t])
        ks.add(min(int(theta * 4 / math.pi), 3))
        row = [_norm(xi) * c for c in cosines]
        row[t] = _norm(xi) * (lam * cosines[t] + _psi(theta, 4)) / (1 + lam)  # Appendix G, f_y
        want += _nll(row, t)
    assert len(ks) >= 2, ks  # the input exercises more than one piece of ψ
    got = loss(x, y)
    assert got.item() == pytest.approx(want / B, rel=1e-5)
    assert loss.iteration.item() == iteration + 1  # one training step counted


def test_asoftmax_without_annealing_is_eq_7():
    x, y = _data(5)
    w = _weights(6)
    loss = ASoftmaxLoss(S, D, margin=3, base=0.0, lambda_min=0.0)  # λ = 0: ψ alone
    _set_weights(loss, w)
    want = 0.0
    for i in range(B):
        xi, t = x[i].tolist(), int(y[i])
        cosines = [_cos(xi, w[j].tolist()) for j in range(S)]
        row = [_norm(xi) * c for c in cosines]
        row[t] = _norm(xi) * _psi(math.acos(cosines[t]), 3)
        want += _nll(row, t)
    assert loss(x, y).item() == pytest.approx(want / B, rel=1e-5)
    prediction = loss.logits(x)
    assert prediction[0, 1].item() == pytest.approx(_norm(x[0].tolist()) * _cos(x[0].tolist(), w[1].tolist()), rel=1e-5)


def test_coco_matches_the_paper_and_its_scale_rule():
    x, y = _data()
    w = _weights()
    loss = COCOLoss(S, D)
    # α = ½ ln((K-1) p / (1-p)): at that α, cosine 1 to its own centroid and -1 to the others gives p
    alpha = loss.scale
    assert math.exp(alpha) / (math.exp(alpha) + (S - 1) * math.exp(-alpha)) == pytest.approx(0.99)
    _set_weights(loss, w)
    want = 0.0
    for i in range(B):
        row = [alpha * _cos(x[i].tolist(), w[j].tolist()) for j in range(S)]
        want += _nll(row, int(y[i]))
    assert loss(x, y).item() == pytest.approx(want / B, rel=1e-5)
    assert COCOLoss(S, D, scale=10.0).scale == 10.0


def test_lgm_matches_the_paper():
    x, y = _data()
    mu = _weights()
    loss = LGMLoss(S, D, alpha=0.3, lam=0.2)
    _set_weights(loss, mu)
    want_cls = want_lkd = 0.0
    for i in range(B):
        t = int(y[i])
        d = [0.5 * sum((a - b) ** 2 for a, b in zip(x[i].tolist(), mu[k].tolist())) for k in range(S)]
        row = [-(1 + 0.3 * (k == t)) * d[k] for k in range(S)]  # margin on the true class
        want_cls += _nll(row, t)
        want_lkd += d[t]
    assert loss(x, y).item() == pytest.approx((want_cls + 0.2 * want_lkd) / B, rel=1e-5)
    d0 = 0.5 * sum((a - b) ** 2 for a, b in zip(x[0].tolist(), mu[2].tolist()))
    assert loss.logits(x)[0, 2].item() == pytest.approx(-d0, rel=1e-5)
    assert (LGMLoss(S, D).alpha, LGMLoss(S, D).lam) == (0.1, 0.01)


def test_lmcl_cosface_matches_the_paper():
    x, y = _data()
    w = _weights()
    loss = CosFaceLoss(S, D)
    _set_weights(loss, w)
    s, m = 64.0, 0.35
    want = 0.0
    for i in range(B):
        t = int(y[i])
        row = [s * (_cos(x[i].tolist(), w[j].tolist()) - (m if j == t else 0.0)) for j in range(S)]
        want += _nll(row, t)
    assert loss(x, y).item() == pytest.approx(want / B, rel=1e-5)
    assert loss.logits(x)[1, 3].item() == pytest.approx(s * _cos(x[1].tolist(), w[3].tolist()), rel=1e-5)


def test_arcface_matches_the_paper():
    x, y = _data()
    w = _weights()
    loss = ArcFaceLoss(S, D)
    _set_weights(loss, w)
    s, m = 64.0, 0.5
    want, beyond = 0.0, 0
    for i in range(B):
        t = int(y[i])
        row = [s * _cos(x[i].tolist(), w[j].tolist()) for j in range(S)]
        theta = math.acos(_cos(x[i].tolist(), w[t].tolist()))
        if theta + m <= math.pi:
            row[t] = s * math.cos(theta + m)
        else:  # the released code's fallback past π - m
            beyond += 1
            row[t] = s * (math.cos(theta) - m * math.sin(m))
        want += _nll(row, t)
    assert loss(x, y).item() == pytest.approx(want / B, rel=1e-5)
    # a feature opposite its class weight takes the fallback branch
    x2 = -w[y].clone()
    got = loss(x2, y)
    row_want = 0.0
    for i in range(B):
        t = int(y[i])
        row = [s * _cos(x2[i].tolist(), w[j].tolist()) for j in range(S)]
        row[t] = s * (-1.0 - m * math.sin(m))
        row_want += _nll(row, t)
    assert got.item() == pytest.approx(row_want / B, rel=1e-4)


def test_circle_matches_the_paper_and_detaches_its_weights():
    x, y = _data()
    w = _weights()
    gamma, m = 32.0, 0.25
    loss = CircleLoss(S, D, gamma=gamma, margin=m)
    _set_weights(loss, w)
    want = 0.0
    for i in range(B):
        t = int(y[i])
        sims = [_cos(x[i].tolist(), w[j].tolist()) for j in range(S)]
        sp = sims[t]
        ap = max(1 + m - sp, 0.0)
        neg = sum(math.exp(gamma * max(sn + m, 0.0) * (sn - m)) for j, sn in enumerate(sims) if j != t)
        want += math.log(1 + neg * math.exp(-gamma * ap * (sp - (1 - m))))  # eq. 6, K = 1
    assert loss(x, y).item() == pytest.approx(want / B, rel=1e-5)
    # gradient: α_p, α_n are constants (the authors' implementation)
    xe = x.clone().requires_grad_(True)
    loss(xe, y).backward()
    xr = x.clone().requires_grad_(True)
    sim = F.normalize(xr, dim=1) @ F.normalize(w, dim=1).t()
    ap = (1 + m - sim.detach()).clamp_min(0)
    an = (sim.detach() + m).clamp_min(0)
    onehot = F.one_hot(y, S).bool()
    lp = (-gamma * ap * (sim - (1 - m)))[onehot]
    ln = torch.where(onehot, torch.full_like(sim, -math.inf), gamma * an * (sim - m))
    F.softplus(torch.logsumexp(ln, 1) + lp).mean().backward()  # log(1 + e^z), stable
    torch.testing.assert_close(xe.grad, xr.grad, rtol=1e-4, atol=1e-6)
    assert (CircleLoss(S, D).gamma, CircleLoss(S, D).margin) == (256.0, 0.25)


# ------------------------------------------------------------------------------------------------
# gradients, precision, arguments
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_the_embedding_and_the_loss_parameters(name):
    torch.manual_seed(0)
    x, y = _data()
    x.requires_grad_(True)
    logits = torch.randn(B, S, requires_grad=True)
    loss = build_baseline(name, S, D)
    if name == "focal":
        value = loss(logits, y)
    elif name == "center":
        loss.centers.normal_()
        value = loss(logits, x, y)
    else:
        value = loss(x, y)
    value.backward()
    assert torch.isfinite(value)
    if name == "focal":
        assert logits.grad.abs().sum() > 0
    else:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["asoftmax", "lmcl", "arcface", "circle", "lgm", "coco", "center"])
def test_losses_compute_in_float32_under_autocast(name):
    torch.manual_seed(0)
    x, y = _data()
    loss = build_baseline(name, S, D)
    args = (torch.randn(B, S), x, y) if name == "center" else (x, y)
    loss.train(False)  # no state updates: the two calls must see the same state
    low_args = [a.bfloat16() if a.is_floating_point() else a for a in args]
    # the same bf16-rounded inputs in float32 without autocast: any bf16 step inside the loss
    # (a matmul, a norm) would show as a relative error of about 1e-3 or more
    ref = loss(*[a.float() if a.is_floating_point() else a for a in low_args])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(*low_args)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert all(p.dtype == torch.float32 for p in loss.parameters())  # the library does not recast its W


@pytest.mark.parametrize("make", [
    lambda: ASoftmaxLoss(1, D), lambda: ASoftmaxLoss(S, 0), lambda: ASoftmaxLoss(S, D, margin=0),
    lambda: ASoftmaxLoss(S, D, margin=2.5), lambda: ASoftmaxLoss(S, D, lambda_min=-1.0),
    lambda: COCOLoss(S, D, scale=0.0), lambda: COCOLoss(S, D, p=1.0), lambda: COCOLoss(S, D, p=0.1),
    lambda: LGMLoss(S, D, alpha=-0.1), lambda: LGMLoss(S, D, lam=float("nan")),
    lambda: CosFaceLoss(S, D, scale=-1.0), lambda: CosFaceLoss(S, D, margin=-0.1), lambda: CosFaceLoss(0, D),
    lambda: ArcFaceLoss(S, D, margin=2.0), lambda: ArcFaceLoss(S, D, scale=0), lambda: ArcFaceLoss(S, True),
    lambda: CircleLoss(S, D, gamma=0.0), lambda: CircleLoss(S, D, margin=1.0),
    lambda: FocalLoss(gamma=-1.0), lambda: FocalLoss(alpha=0.0), lambda: FocalLoss(gamma="2"),
    lambda: CenterLoss(S, D, alpha=1.5), lambda: CenterLoss(S, D, lam=-1.0), lambda: CenterLoss(S, 2.0),
    lambda: build_baseline("triplet", S, D),
])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("name", BASELINES)
def test_bad_inputs_raise_value_error(name):
    loss = build_baseline(name, S, D)
    x, y = _data()
    logits = torch.randn(B, S)

    def call(emb=x, target=y, lg=logits):
        if name == "focal":
            return loss(lg, target)
        if name == "center":
            return loss(lg, emb, target)
        return loss(emb, target)

    bad_targets = [y[:3], y.float(), y[:, None], y.bool(), y.tolist()]
    if name == "focal":
        cases = [dict(lg=logits[0]), dict(lg=logits.long()), dict(lg=logits[:0])]
    else:
        cases = [dict(emb=x[:, :2]), dict(emb=x[0]), dict(emb=x.long()), dict(emb=x[:0])]
        if name == "center":
            cases += [dict(lg=logits[:, :3]), dict(lg=logits[:3])]
    cases += [dict(target=t) for t in bad_targets]
    for case in cases:
        with pytest.raises(ValueError):
            call(**case)


# ------------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------------

def _output(seed=0, dim=D, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, generator=g).requires_grad_(requires_grad)
    emb = torch.randn(B, dim, generator=g).requires_grad_(requires_grad)
    fmap = torch.zeros(B, 1, 1, 1)
    return ModelOutput(logits, fmap, fmap, emb)


@pytest.mark.parametrize("name", BASELINES)
def test_objective_owns_the_loss_state_and_predicts_with_it(name):
    _, y = _data()
    obj = TrainingObjective(name, num_classes=S, embedding_dim=D)
    out = _output(requires_grad=True)
    total, ce = obj(out, y)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(ce)
    pred = obj.predict(out)
    assert pred.shape == (B, S)
    if name in ("focal", "center"):
        assert pred is out.logits
        assert ce.item() == pytest.approx(F.cross_entropy(out.logits, y).item())
        if name == "focal":
            assert total.item() == pytest.approx(FocalLoss()(out.logits, y).item())
    else:
        torch.testing.assert_close(pred, obj.baseline.logits(out.embedding))
        assert ce.item() == pytest.approx(F.cross_entropy(pred, y).item(), rel=1e-5)
        assert not ce.requires_grad
        assert out.logits.grad is None  # the model's own last layer is not used
        assert list(obj.parameters()), "the objective must expose the loss's class weights"
    # the state round-trips through a state_dict
    other = TrainingObjective(name, num_classes=S, embedding_dim=D)
    other.load_state_dict(obj.state_dict())
    for (k, a), (_, b) in zip(obj.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(other.predict(out), obj.predict(out))


def test_objective_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        TrainingObjective("arcface")
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainingObjective("triplet")
    obj = TrainingObjective("lmcl", num_classes=S, embedding_dim=D)
    with pytest.raises(ValueError, match="embedding"):
        obj(ModelOutput(torch.randn(B, S), torch.zeros(1), torch.zeros(1)), torch.zeros(B, dtype=torch.long))


def _changed(default):
    """A value other than ``default`` inside every option's range."""
    if default is None:  # COCO's scale: derived from p unless given
        return 7.0
    return default - 2 if isinstance(default, int) else default / 2


def _inputs(name):
    """The arguments of baseline ``name``'s forward on the tiny input."""
    x, y = _data()
    logits = torch.randn(B, S, generator=torch.Generator().manual_seed(1))
    return {"focal": (logits, y), "center": (logits, x, y)}.get(name, (x, y))


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_option_reaches_the_loss_and_changes_its_value(name):
    default = build_baseline(name, S, D)
    for key, value in baseline_options(name).items():
        if name == "asoftmax":  # λ = max(lambda_min, base·(1 + gamma·it)^-power) at step it: mid-anneal or annealed
            default.iteration.fill_(10 ** 6 if key == "lambda_min" else 100)
        assert value is None or getattr(default, key) == value, key
        loss = build_baseline(name, S, D, **{key: _changed(value)})
        assert getattr(loss, key) == _changed(value), key
        if (name, key) == ("center", "alpha"):  # the centres' update rate: acts on the buffer, not the value
            continue
        loss.load_state_dict(default.state_dict())
        assert not torch.allclose(loss(*_inputs(name)), default(*_inputs(name))), f"{name}.{key} leaves the loss as it was"


def test_baseline_options_are_checked_by_name_and_range():
    with pytest.raises(ValueError, match=r"loss 'arcface' has no option 'margn'; its options: scale \(default 64.0\)"):
        build_baseline("arcface", S, D, margn=0.3)
    with pytest.raises(ValueError, match="margin must lie in"):
        build_baseline("lmcl", S, D, margin=5.0)
    with pytest.raises(ValueError, match="loss_args .* apply to the baseline losses only"):
        TrainingObjective("tdsa", loss_args={"margin": 0.3})
    obj = TrainingObjective("arcface", num_classes=S, embedding_dim=D, loss_args={"margin": 0.3, "scale": 30})
    assert obj.baseline.margin == 0.3 and obj.baseline.impl.margin == pytest.approx(0.3)  # PML keeps radians
    assert obj.baseline.impl.scale == 30


# ------------------------------------------------------------------------------------------------
# end to end on a tiny version of the built-in data
# ------------------------------------------------------------------------------------------------

TINY = SyntheticSpec(num_classes=4, train_per_class=8, test_per_class=4, image_size=64, seed=1)
TINY_ARGS = ["--dataset", "cub", "--img-size", "64", "--stem", "standard", "--epochs", "2", "--batch-size", "8",
             "--lr", "0.01", "--workers", "0", "--loader", "torch", "--log-interval", "1000", "--seed", "0",
             "--model", "resnet18", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.fixture
def _restore_threads():
    """``--threads 1`` (one intra-op thread: these runs are tiny, and the 2 cores may be shared)
    sets torch's global thread count; put it back afterwards."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_end_to_end(name, tiny_root, tmp_path, _restore_threads):
    torch.manual_seed(0)
    out = tmp_path / name
    cfg = resolve(build_parser().parse_args(TINY_ARGS + ["--data-root", str(tiny_root), "--loss", name,
                                                         "--output", str(out)]))
    results = run(cfg, log=lambda *_: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["epochs"] == 2 and 0.0 <= saved["final_test_acc"] <= 1.0
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 2
    for row in rows:
        train_loss = float(row.split(",")[2])
        assert math.isfinite(train_loss), row
    ckpt = checkpoint.load(out / "last.pt")
    assert set(ckpt["objective"]) == set(TrainingObjective(name, num_classes=4).state_dict())
    # evaluate rebuilds the objective from the checkpoint and reproduces the final test accuracy
    ev = evaluate_checkpoint(out / "last.pt", loader="torch")
    assert ev["accuracy"] == pytest.approx(results["final_test_acc"], abs=1e-9)
