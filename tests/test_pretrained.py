"""--pretrained: torchvision-layout state dicts (written by the tests) loaded into the
backbones, the widened layers fresh, the report, the learning-rate groups, --recipe
finetune, and the resume rules. No network: 'torchvision' must fail with a clear message."""
from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torchvision
from torchvision.models.vgg import cfgs, make_layers

from tdsa_fast.config import build_parser, resolve
from tdsa_fast.models import build_model
from tdsa_fast.pretrained import load_pretrained, torchvision_key
from tdsa_fast.train import build_optimizer, main

from inference_helpers import tiny_data

S = 3


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def torchvision_state(arch: str) -> dict:
    """A randomly initialised torchvision network's state dict (VGG16-BN: its features only,
    built by torchvision's own make_layers; its 100M-parameter classifier is never used)."""
    torch.manual_seed(1)
    if arch == "vgg16":
        return {f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=True).state_dict().items()}
    return getattr(torchvision.models, arch)(weights=None).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for arch in ("vgg16", "resnet18", "resnet50"):
        out[arch] = folder / f"{arch}.pth"
        torch.save(torchvision_state(arch), out[arch])
    return out


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "resnet50"])
def test_every_backbone_tensor_has_a_torchvision_counterpart_of_its_shape(arch, files):
    """At the standard widths (CE), all but the released head (and nothing else) maps onto torchvision."""
    state = torch.load(files[arch], weights_only=True)
    model = build_model(arch, S, img_size=224 if arch != "vgg16" else 64, small_input=None if arch == "vgg16" else False)
    for key, value in model.state_dict().items():
        theirs = torchvision_key(arch, key)
        if key.startswith("classifier."):
            assert theirs is None, key
        else:
            assert theirs in state and state[theirs].shape == value.shape, (key, theirs)
    report = load_pretrained(model, str(files[arch]))
    assert set(report["not_loaded"]) == {k for k in model.state_dict() if k.startswith("classifier.")}
    expected_unused = set() if arch == "vgg16" else {"fc.weight", "fc.bias"}
    assert set(report["unused"]) == expected_unused
    for key in report["loaded"]:
        assert torch.equal(model.state_dict()[key], state[torchvision_key(arch, key)]), key


@pytest.mark.parametrize("arch, widened", [
    ("vgg16", ("stage4.30", "stage4.31", "stage5.1", "stage5.2", "stage5.7", "stage5.8")),  # conv4_3, conv5_1, conv5_3
    ("resnet18", ("middle_branch.", "layer4.")),
    # layer4's bottlenecks keep their 512-wide 3x3 convs (and the first block its 1x1 reading layer3):
    # only the convs that write or read the S*3 grouped channels (and their BatchNorms) are fresh
    ("resnet50", ("middle_branch.", "layer4.0.conv3", "layer4.0.bn3", "layer4.0.downsample", "layer4.1.conv1",
                  "layer4.1.bn1", "layer4.1.conv3", "layer4.1.bn3", "layer4.2.conv1", "layer4.2.bn1",
                  "layer4.2.conv3", "layer4.2.bn3")),
])
def test_the_layers_the_grouped_losses_widen_stay_fresh(arch, widened, files):
    torch.manual_seed(0)
    model = build_model(arch, S, middle_cnum=9, high_cnum=3, img_size=64, small_input=None if arch == "vgg16" else False)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, str(files[arch]))
    state = torch.load(files[arch], weights_only=True)
    after = model.state_dict()
    for key in after:
        if key.startswith(widened) or key.startswith("classifier."):
            assert key in report["not_loaded"], key
            assert torch.equal(after[key], fresh[key]), key
        else:
            assert key in report["loaded"], key
            assert torch.equal(after[key], state[torchvision_key(arch, key)]), key
    assert 0 < report["loaded_parameters"] < report["total_parameters"]
    if arch == "resnet50":  # layer4's first block reads the standard layer3: its 1x1 and 3x3 load
        assert "layer4.0.conv1.weight" in report["loaded"] and "layer4.0.conv2.weight" in report["loaded"]


def test_a_batchnorm_after_a_fresh_conv_stays_fresh(files):
    model = build_model("resnet18", S, img_size=64, small_input=True)  # the small stem's 3x3 conv: not torchvision's
    report = load_pretrained(model, str(files["resnet18"]))
    assert "widened or reshaped" in report["not_loaded"]["stem.0.weight"]
    assert "follows a freshly initialised convolution" in report["not_loaded"]["stem.1.weight"]
    assert "layer1.0.conv1.weight" in report["loaded"]


def test_bad_sources_are_clear_errors(files, tmp_path):
    model = build_model("vgg16", S, img_size=64)
    with pytest.raises(ValueError, match="no such file"):
        load_pretrained(model, str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_pretrained(model, str(tmp_path / "junk.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state_dict"):
        load_pretrained(model, str(tmp_path / "list.pth"))
    with pytest.raises(ValueError, match="none of its tensors fits vgg16"):
        load_pretrained(model, str(files["resnet18"]))
    wrapped = tmp_path / "wrapped.pth"  # {"state_dict": ...} with DataParallel's module. prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch.load(files["vgg16"]).items()}}, wrapped)
    assert load_pretrained(model, str(wrapped))["loaded"]


def test_torchvision_without_a_network_says_what_to_do(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"could not download torchvision's resnet50 .*--pretrained PATH"):
        load_pretrained(build_model("resnet50", S, img_size=64), "torchvision")


def _cfg(*argv):
    return resolve(build_parser().parse_args(list(argv)))


def test_the_finetune_recipe_and_the_option_checks(files, tmp_path):
    cfg = _cfg("--recipe", "finetune")
    assert (cfg.model, cfg.img_size, cfg.pretrained, cfg.schedule) == ("resnet50", 448, "torchvision",
                                                                                  "cosine")
    assert cfg.pretrained_lr_scale == 0.1 and cfg.epochs < 300
    cfg = _cfg("--recipe", "finetune", "--model", "vgg16", "--epochs", "7", "--pretrained", str(files["vgg16"]))
    assert (cfg.model, cfg.epochs, cfg.img_size) == ("vgg16", 7, 448)
    assert cfg.pretrained == str(files["vgg16"].resolve())
    paper = _cfg("--recipe", "paper")
    assert (paper.model, paper.epochs, paper.lr, paper.pretrained, paper.schedule) == \
        ("vgg16", 300, 0.1, "none", "step")
    default = _cfg()
    assert (default.pretrained, default.pretrained_lr_scale, default.schedule) == ("none", 1.0, "step")
    assert _cfg("--model", "resnet50", "--stem", "small").stem == "small"
    with pytest.raises(ValueError, match="no such file"):
        _cfg("--pretrained", str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match="pretrained-lr-scale"):
        _cfg("--pretrained-lr-scale", "-1")


def test_learning_rate_groups_and_the_cosine_schedule():
    cfg = _cfg("--model", "resnet18", "--lr", "0.1", "--epochs", "4", "--schedule", "cosine",
               "--pretrained-lr-scale", "0.1")
    model = build_model("resnet18", S, img_size=64)
    from tdsa_fast.runs import build_objective

    loaded = [n for n, _ in model.named_parameters() if n.startswith("layer1.")]
    optimizer, scheduler = build_optimizer(cfg, model, build_objective(cfg, S), loaded)
    new, old = optimizer.param_groups
    assert new["lr"] == 0.1 and old["lr"] == pytest.approx(0.01)
    assert len(old["params"]) == len(loaded)
    for _ in range(2):
        optimizer.step()  # no gradients: nothing moves
        scheduler.step()
    assert new["lr"] == pytest.approx(0.05) and old["lr"] == pytest.approx(0.005)  # half-way down the cosine


def test_a_run_loads_saves_the_report_and_a_resume_keeps_it(files, tmp_path, capsys):
    root = tiny_data(tmp_path / "cache")
    out = tmp_path / "run"
    weights = tmp_path / "r18.pth"
    weights.write_bytes(files["resnet18"].read_bytes())
    argv = ["--dataset", "cub", "--data-root", str(root), "--model", "resnet18", "--stem", "standard",
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--lr", "0.02", "--workers", "0",
            "--loader", "torch", "--log-interval", "1000", "--no-tensorboard", "--output", str(out),
            "--pretrained", str(weights), "--pretrained-lr-scale", "0.1", "--max-steps", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pretrained resnet18 from" in printed and "pretrained.json" in printed
    report = json.loads((out / "pretrained.json").read_text())
    assert "layer1.0.conv1.weight" in report["loaded"] and "layer4.0.conv1.weight" in report["not_loaded"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["pretrained_loaded"] == report["loaded"] and saved["pretrained"] == str(weights.resolve())
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.02, pytest.approx(0.002)]
    # --pretrained cannot change on resume
    with pytest.raises(SystemExit):
        main(["--resume", str(out), "--pretrained", "none"])
    assert "conflicts with the resumed run" in capsys.readouterr().err
    # a resume does not read the weights again (the checkpoint holds the trained ones)
    weights.unlink()
    assert main(["--resume", str(out), "--max-steps", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 2 and "pretrained resnet18" not in capsys.readouterr().out
