"""ImageNet initialisation from a state dict in torchvision's key layout (``--pretrained``).

``load_pretrained(model, source)`` copies into ``model`` (a :mod:`tdsa_fast.models` backbone)
every layer whose tensors all have torchvision's shapes, and reports what it did. ``source``:

* ``"torchvision"``: the ImageNet weights torchvision publishes for the backbone
  (``VGG16_BN_Weights.IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``,
  ``ResNet50_Weights.IMAGENET1K_V2``), downloaded into torch's cache (``$TORCH_HOME``) on
  first use; without a network (and no cached copy) a ValueError says how to pass a file;
* a path: a ``.pth`` / ``.pt`` file holding such a state dict (or ``{"state_dict": ...}`` /
  ``{"model": ...}``; a ``module.`` prefix is stripped), read with ``weights_only=True``.

Key map (our name -> torchvision's): ResNet ``stem.0`` / ``stem.1`` -> ``conv1`` / ``bn1``,
``layerN...`` unchanged; VGG16-BN ``stage4.i`` -> ``features.i`` (i < 33) and ``stage5.k`` ->
``features.{33 + k}``. The released classifier head (BN1d, Linear 512, BN1d, ELU, Linear S)
and ResNet's 1x1 middle branch have no torchvision counterpart; torchvision's ``fc`` /
``classifier`` are not used. A layer is loaded whole or not at all (a convolution with all
its tensors, a BatchNorm with its affine parameters and running statistics); a BatchNorm
that follows a convolution which was not loaded stays fresh too (its statistics describe
the pretrained convolution's output). So the layers that the grouped MC/TDSA levels widen
(VGG16 conv4_3 / conv5_3 and the conv5_1 that reads conv4_3; ResNet layer4 when the high
level is grouped, and the small stem's 3x3 convolution) keep their fresh initialisation
(:func:`tdsa_fast.models.init_weights`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["TORCHVISION_WEIGHTS", "torchvision_key", "read_state_dict", "torchvision_state_dict", "load_pretrained"]

TORCHVISION_WEIGHTS = {"vgg16": ("vgg16_bn", "VGG16_BN_Weights", "IMAGENET1K_V1"),
                       "resnet18": ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1"),
                       "resnet50": ("resnet50", "ResNet50_Weights", "IMAGENET1K_V2")}
VGG_STAGE5_OFFSET = 33  # stage5.k is torchvision's features.{33 + k} (its max-pool after conv4_3 first)


def torchvision_key(arch: str, key: str) -> Optional[str]:
    """torchvision's name for our state-dict entry ``key`` of backbone ``arch`` (None: no counterpart)."""
    head, _, rest = key.partition(".")
    if arch == "vgg16":
        index, _, leaf = rest.partition(".")
        if head == "stage4":
            return f"features.{index}.{leaf}"
        if head == "stage5":
            return f"features.{int(index) + VGG_STAGE5_OFFSET}.{leaf}"
        return None
    if head == "stem":
        index, _, leaf = rest.partition(".")
        return {"0": f"conv1.{leaf}", "1": f"bn1.{leaf}"}.get(index)
    if head in ("layer1", "layer2", "layer3", "layer4"):
        return key
    return None


def read_state_dict(path) -> dict:
    """The tensors of a ``.pth`` file (see the module docstring); ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--pretrained {path}: no such file (expected 'none', 'torchvision' or a .pth state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors alike
        raise ValueError(f"--pretrained {path}: not a readable PyTorch state dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--pretrained {path}: expected a mapping of tensor names to tensors (a state_dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def torchvision_state_dict(arch: str) -> dict:
    """torchvision's ImageNet weights for ``arch`` (downloaded into torch's cache on first use)."""
    import torchvision.models as tvm

    name, enum, member = TORCHVISION_WEIGHTS[arch]
    weights = getattr(getattr(tvm, enum), member)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # URLError, socket errors, HTTP errors, a truncated download
        raise ValueError(f"--pretrained torchvision: could not download torchvision's {name} {member} weights "
                         f"({type(e).__name__}: {e}); without a network, download {weights.url} elsewhere and "
                         f"pass the file: --pretrained PATH") from None


def _layers(model: nn.Module):
    """(prefix, module) of the modules that own tensors directly, in registration order."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            yield name, module


def load_pretrained(model: nn.Module, source: str) -> dict:
    """Copies the layers of ``source`` whose shapes match into ``model``; returns the report
    ``dict(source, arch, loaded=[our keys], not_loaded={our key: why}, unused=[its keys],
    loaded_parameters, total_parameters)``. ValueError when ``source`` cannot be read or no
    layer at all matched (a file of another network)."""
    arch = getattr(model, "arch", None)
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"--pretrained: no torchvision weights for model {arch!r}")
    state = torchvision_state_dict(arch) if source == "torchvision" else read_state_dict(source)
    ours = model.state_dict()
    loaded, not_loaded, used = [], {}, set()
    previous_conv_loaded = True
    for prefix, module in _layers(model):
        keys = [k for k in ours if k.rsplit(".", 1)[0] == prefix]
        reason = None
        for key in keys:
            theirs = torchvision_key(arch, key)
            if theirs is None:
                reason = "a layer of its own (no torchvision counterpart): freshly initialised"
            elif theirs not in state:
                reason = f"{theirs} is not in the file"
            elif state[theirs].shape != ours[key].shape:
                reason = (f"widened or reshaped: ours {tuple(ours[key].shape)}, {theirs} "
                          f"{tuple(state[theirs].shape)}: freshly initialised")
            if reason:
                break
        if reason is None and isinstance(module, nn.modules.batchnorm._BatchNorm) and not previous_conv_loaded:
            reason = "follows a freshly initialised convolution: freshly initialised"
        if isinstance(module, nn.Conv2d):
            previous_conv_loaded = reason is None
        if reason is None:
            with torch.no_grad():
                for key in keys:
                    ours[key].copy_(state[torchvision_key(arch, key)])
                    used.add(torchvision_key(arch, key))
            loaded += keys
        else:
            not_loaded.update({key: reason for key in keys})
    if not loaded:
        raise ValueError(f"--pretrained {source}: none of its tensors fits {arch} (is it a torchvision {arch} "
                         f"state dict? its first keys: {', '.join(list(state)[:3])})")
    params = dict(model.named_parameters())
    return dict(source=str(source), arch=arch, loaded=loaded, not_loaded=not_loaded,
                unused=sorted(set(state) - used),
                loaded_parameters=sum(params[k].numel() for k in loaded if k in params),
                total_parameters=sum(p.numel() for p in params.values()))


def summary_line(report: dict) -> str:
    """One line for the run's log."""
    fresh = sorted({k.rsplit(".", 1)[0] for k in report["not_loaded"]})
    shown = ", ".join(fresh[:6]) + (f", ... ({len(fresh)} layers)" if len(fresh) > 6 else "")
    return (f"pretrained {report['arch']} from {report['source']}: {len(report['loaded'])} tensors loaded "
            f"({report['loaded_parameters']:,} of {report['total_parameters']:,} parameters), "
            f"{len(report['not_loaded'])} freshly initialised ({shown}), {len(report['unused'])} of the file's "
            "unused; the list: pretrained.json")
