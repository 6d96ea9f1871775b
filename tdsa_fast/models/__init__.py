"""Backbones for the TDSA / MC-Loss trainer.

``build_model(arch, num_classes, middle_cnum=..., high_cnum=..., img_size=...)`` returns an
``nn.Module`` whose ``forward(x)`` (``x``: ``[B, 3, img_size, img_size]``, contiguous or
``torch.channels_last``) returns a :class:`ModelOutput`:

* ``logits`` ``[B, S]`` -- the classifier head's output (the only thing evaluation uses);
* ``middle`` ``[B, C_mid, Hm, Wm]`` -- the middle-level map, taken after BN + ReLU (>= 0);
* ``high`` ``[B, C_high, Hh, Wh]`` -- the high-level map, taken after BN + ReLU (>= 0),
  with ``Hm > Hh`` and ``Wm > Wh`` for every supported size, so the top-down gate
  (docs/method.md, eq. 7) really upsamples;
* ``embedding`` ``[B, D]`` -- the head's input to its last ``Linear`` (``D`` = ``HEAD_HIDDEN`` = 512,
  after BN1d + ELU): the deep feature that the baseline losses with their own class weights
  (:mod:`tdsa_fast.losses`) and Center loss read. Last field, default ``None``, so that code that
  builds a ``ModelOutput`` from three tensors keeps working.

Widths. ``middle_cnum=None`` keeps the backbone's standard width at the middle level
(VGG16-BN conv4_3: 512; ResNet18 layer3: 256; ResNet50 layer3: 1024); an int ``n`` makes that level
``num_classes * n`` channels, grouped contiguously by class (class ``i`` owns channels
``[i*n, (i+1)*n)``). The same holds for ``high_cnum`` (standard widths: 512 for VGG16-BN
and ResNet18, 2048 for ResNet50). The trainer maps its losses to widths as::

    ce and the other baselines (center, asoftmax, focal, coco, lgm, lmcl, arcface, circle)
                       -> (None, None)
    mc                 -> (None, 3)
    tdsa / tdsa-noattn -> (3 * xi, 3)

Sizes. ``img_size`` must lie in ``[IMG_SIZE_MIN, IMG_SIZE_MAX]`` = [32, 448] for both
backbones. VGG16-BN additionally needs a multiple of 16 (its classifier's flatten width is
fixed at construction, see :mod:`tdsa_fast.models.vgg`), and its forward raises
``ValueError`` for any other input size. ResNet18 ends in a global max-pool, so its
forward accepts any spatial size; ``img_size`` there only picks the stem (``small_input``
defaults to ``img_size < 128``, see :mod:`tdsa_fast.models.resnet`).

Initialisation (both backbones, as torchvision does): convolutions Kaiming-normal
(``mode="fan_out"``, ``nonlinearity="relu"``) with zero bias; every BatchNorm weight 1,
bias 0. The ``nn.Linear`` layers of the classifier head keep PyTorch's default init, as
in the released MC-Loss / TDSA code, which builds its head after the backbone's init.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from tdsa_fast._checks import int_at_least
from tdsa_fast.models.common import HEAD_HIDDEN, IMG_SIZE_MAX, IMG_SIZE_MIN, ModelOutput, check_cnum, head_forward
from tdsa_fast.models.resnet import ResNet, ResNet18, ResNet50
from tdsa_fast.models.vgg import VGG16BN

__all__ = [
    "MODELS",
    "IMG_SIZE_MIN",
    "IMG_SIZE_MAX",
    "ModelOutput",
    "build_model",
    "head_forward",
    "HEAD_HIDDEN",
    "VGG16BN",
    "ResNet",
    "ResNet18",
    "ResNet50",
]

MODELS = ("vgg16", "resnet18", "resnet50")


def build_model(
    arch: str,
    num_classes: int,
    *,
    middle_cnum: Optional[int] = None,
    high_cnum: Optional[int] = None,
    img_size: int = 224,
    small_input: Optional[bool] = None,
) -> nn.Module:
    """Build a backbone + the released classifier head.

    arch: one of :data:`MODELS`. ``middle_cnum`` / ``high_cnum``: channels per class at the
    middle / high level (``None``: standard width). ``img_size``: the training/eval input
    size (see the module docstring for the rules). ``small_input`` (the ResNets only; ``None``
    means ``img_size < 128``): use the light stem. Bad arguments raise ``ValueError``.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(MODELS)}")
    int_at_least("num_classes", num_classes)
    middle_cnum = check_cnum("middle_cnum", middle_cnum)
    high_cnum = check_cnum("high_cnum", high_cnum)
    if small_input is not None and not isinstance(small_input, bool):
        raise ValueError(f"small_input must be None or a bool, got {small_input!r}")
    if arch == "vgg16":
        if small_input:
            raise ValueError("small_input=True applies to the ResNets only (vgg16 has no stem option)")
        return VGG16BN(num_classes, middle_cnum=middle_cnum, high_cnum=high_cnum, img_size=img_size)
    return ResNet(
        num_classes,
        arch=arch,
        middle_cnum=middle_cnum,
        high_cnum=high_cnum,
        img_size=img_size,
        small_input=small_input,
    )
