"""python -m tdsa_fast.export: ONNX Runtime and TorchScript give the PyTorch model's
probabilities, for every backbone, at any batch size; the metadata; bad input."""
from __future__ import annotations

import warnings

import pytest
import torch

from tdsa_fast.export import GlobalMaxPool, main, onnx_ready, read_metadata
from tdsa_fast.inference import MEAN, STD, load_inference
from tdsa_fast.models import MODELS, build_model

from inference_helpers import make_checkpoint

ATOL = 1e-4  # on probabilities, float32 on the CPU
CASES = [(model, "tdsa") for model in MODELS] + [("resnet18", "arcface")]  # arcface: its own class weights


def _reference(ckpt, x):
    net, info, _ = load_inference(ckpt, probabilities=True)
    with torch.no_grad():
        return net(x), info


def _run_exported(path, fmt, x):
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        return torch.from_numpy(session.run(["probabilities"], {"images": x.numpy()})[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.load(str(path))(x)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model, loss", CASES)
def test_exported_probabilities_match_pytorch(model, loss, fmt, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="the export extra (onnx, onnxscript) is not installed")
    ckpt = make_checkpoint(tmp_path / "c.pt", model=model, loss=loss, img_size=32, num_classes=3, seed=1)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    assert main(["--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    assert "input images [B, 3, 32, 32]" in capsys.readouterr().out
    torch.manual_seed(0)
    for batch in (1, 5):  # dynamic batch: neither is the size it was traced with
        x = torch.randn(batch, 3, 32, 32)
        expected, info = _reference(ckpt, x)
        got = _run_exported(out, fmt, x)
        assert got.shape == (batch, 3)
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
        assert expected.std() > 1e-3  # not a flat output that any network would match
    meta = read_metadata(out)
    assert meta["class_names"] == ["class A", "class B", "class C"] and meta["num_classes"] == 3
    assert meta["img_size"] == 32 and meta["mean"] == list(MEAN) and meta["std"] == list(STD)
    assert (meta["model"], meta["loss"]) == (model, loss) and "bilinear" in meta["resize"]
    assert meta == info.metadata()


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--out", "OUT/m.pt"], "must end in .onnx"),
    (["--format", "torchscript", "--out", "OUT/m.onnx"], "must end in .pt"),
    (["--format", "torchscript", "--out", "OUT/missing/m.pt"], "does not exist"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "c.pt", model="resnet18")
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert main(["--checkpoint", str(ckpt), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_without_class_names_needs_them(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "c.pt", model="resnet18", drop=("config.class_names",))
    out = tmp_path / "m.pt"
    assert main(["--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 2
    assert "no class-name table" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("x\ny\nz\n")
    assert main(["--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out),
                 "--class-names", str(names)]) == 0
    assert read_metadata(out)["class_names"] == ["x", "y", "z"]


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 1), (3, 4, 2, 9)])
def test_global_max_pool_is_adaptive_max_pool_to_one(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    torch.testing.assert_close(GlobalMaxPool()(x), torch.nn.AdaptiveMaxPool2d(1)(x), rtol=0, atol=0)


def test_onnx_ready_network_gives_the_same_outputs_without_adaptive_max_pool():
    """torch 2.11's ONNX exporter cannot translate aten.adaptive_max_pool2d (the ResNets' pool):
    the exported copy reduces with amax instead, with the same values; the network is untouched."""
    torch.manual_seed(0)
    net = build_model("resnet18", 4, img_size=64).eval()
    ready = onnx_ready(net)
    assert any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in ready.modules())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ready(images).logits, net(images).logits, rtol=0, atol=0)
