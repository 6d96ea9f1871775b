"""Backbone tests: shapes, map properties, gradients, memory formats, argument errors.

Small class counts and images so the whole file runs in well under a minute on 2 CPU
cores."""
from __future__ import annotations

import pytest
import torch

from tdsa_fast.models import MODELS, ModelOutput, build_model

S = 3  # classes
XI = 3  # middle/high ratio -> middle_cnum = 3 * XI
# the width combinations the trainer uses: ce, mc, tdsa / tdsa-noattn (xi = 3 and xi = 2)
WIDTHS = [(None, None), (None, 3), (3 * XI, 3), (6, 3)]
STANDARD = {"vgg16": (512, 512), "resnet18": (256, 512), "resnet50": (1024, 2048)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests check shapes and values, not speed. One intra-op thread keeps them fast
    when the 2 cores are shared with other jobs (OpenMP barriers spin badly when
    oversubscribed: measured 54 s with 2 threads vs 22 s with 1 under a concurrent load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _expected_channels(arch, mc, hc):
    std_mid, std_high = STANDARD[arch]
    return (S * mc if mc is not None else std_mid, S * hc if hc is not None else std_high)


def _expected_sizes(arch, img, small_input=None):
    if arch == "vgg16":
        return img // 8, img // 16
    if small_input is None:
        small_input = img < 128
    after_stem = -(-img // 2) if small_input else -(-img // 4)
    mid = -(-after_stem // 4)  # layer2 and layer3 each halve (ceil)
    return mid, -(-mid // 2)


def _input(img, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, img, img, generator=g)


def _check_output(out, arch, img, mc, hc, batch=2):
    assert isinstance(out, ModelOutput)
    logits, middle, high, embedding = out
    # the head's input to its last Linear (the baseline losses read it)
    assert embedding.shape == (batch, 512)
    c_mid, c_high = _expected_channels(arch, mc, hc)
    h_mid, h_high = _expected_sizes(arch, img)
    assert logits.shape == (batch, S)
    assert middle.shape == (batch, c_mid, h_mid, h_mid)
    assert high.shape == (batch, c_high, h_high, h_high)
    # the gate must really upsample
    assert middle.shape[2] > high.shape[2] and middle.shape[3] > high.shape[3]
    # both maps are taken after BN + ReLU
    assert middle.min().item() >= 0.0
    assert high.min().item() >= 0.0
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("img", [64, 96])
@pytest.mark.parametrize("mc,hc", WIDTHS)
def test_output_shapes(arch, img, mc, hc):
    torch.manual_seed(0)
    model = build_model(arch, S, middle_cnum=mc, high_cnum=hc, img_size=img)
    model.train()
    with torch.no_grad():
        out = model(_input(img))
    _check_output(out, arch, img, mc, hc)
    assert model.middle_channels == out.middle.shape[1]
    assert model.high_channels == out.high.shape[1]


@pytest.mark.parametrize("arch", MODELS)
def test_embedding_feeds_the_last_linear(arch):
    torch.manual_seed(0)
    model = build_model(arch, S, img_size=64).eval()
    with torch.no_grad():
        out = model(_input(64))
    torch.testing.assert_close(out.logits, model.classifier[-1](out.embedding))
    assert ModelOutput(out.logits, out.middle, out.high).embedding is None  # three fields still build one


def test_vgg16_released_design_at_224():
    torch.manual_seed(0)
    model = build_model("vgg16", S, middle_cnum=3 * XI, high_cnum=3, img_size=224).eval()
    # the released code's flatten width: C_high x 7 x 7
    assert model.classifier[0].num_features == S * 3 * 7 * 7
    with torch.no_grad():
        out = model(_input(224))
    assert out.middle.shape == (2, S * 3 * XI, 28, 28)
    assert out.high.shape == (2, S * 3, 14, 14)
    _check_output(out, "vgg16", 224, 3 * XI, 3)


def test_resnet18_at_224():
    torch.manual_seed(0)
    model = build_model("resnet18", S, middle_cnum=3 * XI, high_cnum=3, img_size=224).eval()
    assert not model.small_input
    with torch.no_grad():
        out = model(_input(224))
    assert out.middle.shape == (2, S * 3 * XI, 14, 14)
    assert out.high.shape == (2, S * 3, 7, 7)
    _check_output(out, "resnet18", 224, 3 * XI, 3)


def test_resnet18_stem_choice():
    # default: light stem below 128 px -> layer3 8x8 / layer4 4x4 at 64 px
    assert build_model("resnet18", S, img_size=64).small_input
    assert not build_model("resnet18", S, img_size=128).small_input
    model = build_model("resnet18", S, middle_cnum=9, high_cnum=3, img_size=64, small_input=False).eval()
    with torch.no_grad():
        out = model(_input(64))
    assert out.middle.shape[2:] == (4, 4) and out.high.shape[2:] == (2, 2)
    model = build_model("resnet18", S, middle_cnum=9, high_cnum=3, img_size=224, small_input=True).eval()
    with torch.no_grad():
        out = model(_input(64))  # the ResNet head pools globally: any input size runs
    assert out.middle.shape[2:] == (8, 8) and out.high.shape[2:] == (4, 4)


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("mc,hc", [(None, None), (3 * XI, 3)])
def test_gradients_reach_all_parameters(arch, mc, hc):
    torch.manual_seed(0)
    img = 64
    model = build_model(arch, S, middle_cnum=mc, high_cnum=hc, img_size=img).train()
    out = model(_input(img, batch=4))
    (out.logits.sum() + out.middle.sum() + out.high.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        # biases directly followed by a training-mode BatchNorm get an (analytically) zero
        # gradient; every weight must get a real one
        if name.endswith("weight"):
            assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


@pytest.mark.parametrize("arch", MODELS)
def test_channels_last_matches_contiguous(arch):
    # eval mode; norm-relative error <= 1e-4 (float32, different conv algorithms/orders)
    torch.manual_seed(0)
    img = 64
    model = build_model(arch, S, middle_cnum=3 * XI, high_cnum=3, img_size=img).eval()
    x = _input(img)
    with torch.no_grad():
        ref = model(x)
        out_in = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_both = model_cl(x.contiguous(memory_format=torch.channels_last))
    for out in (out_in, out_both):
        for a, b in zip(out, ref):
            assert a.shape == b.shape
            err = (a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)
            assert err.item() <= 1e-4, err.item()


@pytest.mark.parametrize("arch", MODELS)
def test_eval_determinism(arch):
    torch.manual_seed(0)
    img = 64
    model = build_model(arch, S, middle_cnum=3 * XI, high_cnum=3, img_size=img)
    # give the BatchNorms non-trivial running statistics first
    model.train()
    with torch.no_grad():
        model(_input(img, batch=4, seed=1))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _input(img)
    with torch.no_grad():
        a = model(x)
        b = model(x)
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    # eval must not touch the running statistics
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a sample's logits do not depend on the rest of the batch in eval mode
    with torch.no_grad():
        single = model(x[:1]).logits
    torch.testing.assert_close(single, a.logits[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", MODELS)
def test_same_seed_same_model(arch):
    torch.manual_seed(123)
    m1 = build_model(arch, S, middle_cnum=6, high_cnum=3, img_size=64)
    torch.manual_seed(123)
    m2 = build_model(arch, S, middle_cnum=6, high_cnum=3, img_size=64)
    for (n1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        build_model("resnet101", S)
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "arch,kwargs,match",
    [
        ("vgg16", dict(num_classes=0), "num_classes"),
        ("resnet18", dict(num_classes=-2), "num_classes"),
        ("vgg16", dict(num_classes=S, middle_cnum=0), "middle_cnum"),
        ("resnet18", dict(num_classes=S, high_cnum=0), "high_cnum"),
        ("resnet18", dict(num_classes=S, high_cnum=2.5), "high_cnum"),
        ("vgg16", dict(num_classes=S, img_size=16), "img_size"),
        ("resnet18", dict(num_classes=S, img_size=16), "img_size"),
        ("resnet18", dict(num_classes=S, img_size=1024), "img_size"),
        ("vgg16", dict(num_classes=S, img_size=100), "multiple of 16"),
        ("vgg16", dict(num_classes=S, small_input=True), "small_input"),
    ],
)
def test_bad_arguments(arch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(arch, **kwargs)


def test_vgg16_rejects_other_input_size():
    model = build_model("vgg16", S, img_size=64).eval()
    with pytest.raises(ValueError, match="64"):
        model(_input(96))


def test_weight_init():
    model = build_model("resnet18", S, middle_cnum=9, high_cnum=3, img_size=64)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.layer3[0].conv1  # fan_out = 256 * 3 * 3 -> std = sqrt(2 / 2304)
    std = conv.weight.std().item()
    assert abs(std - (2.0 / (256 * 9)) ** 0.5) < 0.1 * std
