"""``python -m tdsa_fast.export --checkpoint RUN/best.pt --format onnx|torchscript --out FILE``:
the inference network alone, as an ONNX or TorchScript file.

The file holds the backbone and the classifier (the MC/TDSA terms are training-only):
input ``images`` ``float32 [B, 3, s, s]``, normalised as in training
(``(pixel / 255 - 0.5) / 0.5``, after a bilinear resize of the whole image to ``s x s``);
output ``probabilities`` ``float32 [B, S]`` (softmax of the class scores). The batch size
``B`` is dynamic; ``s`` is the run's training size. The metadata (the fields of
:class:`tdsa_fast.inference.ModelInfo`: class names, input size, mean, std, resize rule,
model, loss, dataset) is stored in the file:

* ONNX: ``metadata_props``, one entry per field, each value JSON-encoded
  (``onnx.load(f).metadata_props``; ``onnxruntime``: ``session.get_modelmeta().custom_metadata_map``);
* TorchScript: the extra file ``metadata.json``
  (``torch.jit.load(f, _extra_files={"metadata.json": ""})``).

ONNX export needs the ``export`` extra (``pip install '.[export]'``: onnx, onnxscript,
onnxruntime) and uses PyTorch's ``torch.export``-based exporter.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path

import torch

from tdsa_fast.inference import ModelInfo, load_inference, read_class_names

__all__ = ["FORMATS", "GlobalMaxPool", "export_checkpoint", "export_onnx", "export_torchscript", "onnx_ready",
           "read_metadata", "main"]

FORMATS = ("onnx", "torchscript")
METADATA_FILE = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}


def _example(info: ModelInfo) -> torch.Tensor:
    return torch.zeros(2, 3, info.img_size, info.img_size)  # batch 2: the dynamic dimension is not specialised


class GlobalMaxPool(torch.nn.Module):
    """``[B, C, H, W] -> [B, C, 1, 1]``: ``nn.AdaptiveMaxPool2d(1)``'s values as a reduction,
    which every ``torch.onnx`` exports (ReduceMax); torch 2.11's exporter has no translation
    of ``aten.adaptive_max_pool2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1), keepdim=True)


def onnx_ready(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` with every ``AdaptiveMaxPool2d(1)`` replaced by :class:`GlobalMaxPool`
    (the same outputs; ``network`` itself is left as it is)."""
    network = copy.deepcopy(network)
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, torch.nn.AdaptiveMaxPool2d) and not child.return_indices
                    and child.output_size in (1, (1, 1))):
                setattr(module, name, GlobalMaxPool())
    return network


def export_onnx(network: torch.nn.Module, info: ModelInfo, out: Path, opset: int = 18) -> None:
    """Writes ``network`` (``[B, 3, s, s] -> [B, S]``, on the CPU) to ``out`` as ONNX with
    ``info``'s metadata."""
    try:
        import onnx
    except ImportError:
        raise ValueError("--format onnx needs the onnx, onnxscript and onnxruntime packages: "
                         "pip install 'tdsa_fast[export]' (or pip install onnx onnxscript onnxruntime)") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(onnx_ready(network), (_example(info),), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False)
    model = program.model_proto
    for key, value in info.metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def export_torchscript(network: torch.nn.Module, info: ModelInfo, out: Path) -> None:
    """Writes ``network`` traced (``[B, 3, s, s] -> [B, S]``, on the CPU) to ``out`` with
    ``info``'s metadata as the extra file ``metadata.json``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation of torch.jit and the input checks' TracerWarnings
        traced = torch.jit.trace(network, _example(info), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={METADATA_FILE: json.dumps(info.metadata())})


def read_metadata(path) -> dict:
    """The metadata of an exported file (by its suffix: ``.onnx`` or TorchScript)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: json.loads(p.value) for p in model.metadata_props}
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def export_checkpoint(checkpoint, fmt: str, out, class_names=None) -> ModelInfo:
    """Exports the checkpoint (or run folder) ``checkpoint`` to ``out`` in format ``fmt``;
    returns the metadata written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.suffix.lower() not in _SUFFIXES[fmt]:
        raise ValueError(f"--out {out}: a {fmt} file must end in {' or '.join(_SUFFIXES[fmt])}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    network, info, _ = load_inference(checkpoint, device="cpu", class_names=class_names, probabilities=True)
    (export_onnx if fmt == "onnx" else export_torchscript)(network, info, out)
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint of tdsa_fast.train, or its run folder (best.pt)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.onnx, or FILE.pt / .ts for TorchScript")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="class names, one per line in label order (for checkpoints saved without them)")
    a = p.parse_args(argv)
    try:

        names = read_class_names(a.class_names) if a.class_names else None
        info = export_checkpoint(a.checkpoint, a.format, a.out, class_names=names)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({a.format}): {info.model} + {info.loss}, input {INPUT_NAME} [B, 3, {info.img_size}, "
          f"{info.img_size}] normalised with mean {list(info.mean)} std {list(info.std)}, output {OUTPUT_NAME} "
          f"[B, {info.num_classes}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
