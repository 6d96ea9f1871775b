"""The baseline losses of the paper's Tables II and III (besides CE and MC-Loss).

Each module cites its own paper and writes out the formula and default hyper-parameters:

=========== =================================== ========================================
name        class                               reads
=========== =================================== ========================================
``center``  :class:`CenterLoss` (CE + λ·centre)  the model's logits and embedding
``focal``   :class:`FocalLoss`                   the model's logits
``asoftmax``:class:`ASoftmaxLoss` (SphereFace)   the embedding; owns its class weights
``coco``    :class:`COCOLoss`                    the embedding; owns its class centroids
``lgm``     :class:`LGMLoss`                     the embedding; owns its class means
``lmcl``    :class:`CosFaceLoss` (CosFace)       the embedding; owns its class weights
``arcface`` :class:`ArcFaceLoss`                 the embedding; owns its class weights
``circle``  :class:`CircleLoss` (proxy form)     the embedding; owns its class proxies
=========== =================================== ========================================

The embedding is ``ModelOutput.embedding``: the input of the classifier head's last Linear.
The losses that own class weights (:class:`ClassWeightLoss`) replace that Linear: their
``logits(embedding)`` give the scores used for prediction. LMCL and ArcFace come from
pytorch-metric-learning (see :mod:`.additive_margin`); the others are written here.
"""
from __future__ import annotations

import inspect

from torch import nn

from .additive_margin import ArcFaceLoss, CosFaceLoss
from .center import CenterLoss
from .circle import CircleLoss
from .coco import COCOLoss
from .common import ClassWeightLoss
from .focal import FocalLoss
from .lgm import LGMLoss
from .sphereface import ASoftmaxLoss

__all__ = ["ArcFaceLoss", "ASoftmaxLoss", "CenterLoss", "CircleLoss", "ClassWeightLoss", "COCOLoss",
           "CosFaceLoss", "FocalLoss", "LGMLoss", "CLASS_WEIGHT_LOSSES", "BASELINES", "baseline_options",
           "build_baseline"]

CLASS_WEIGHT_LOSSES = {
    "asoftmax": ASoftmaxLoss,
    "coco": COCOLoss,
    "lgm": LGMLoss,
    "lmcl": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "circle": CircleLoss,
}
BASELINES = ("center", "asoftmax", "focal", "coco", "lgm", "lmcl", "arcface", "circle")


def _baseline_class(name: str) -> type[nn.Module]:
    classes = dict(CLASS_WEIGHT_LOSSES, focal=FocalLoss, center=CenterLoss)
    if name not in classes:
        raise ValueError(f"unknown baseline loss {name!r}; valid choices: {', '.join(BASELINES)}")
    return classes[name]


def baseline_options(name: str) -> dict:
    """The hyper-parameters of baseline ``name`` that a caller may set, with their defaults
    (the keyword arguments of its class besides ``num_classes`` and ``embedding_dim``)."""
    params = inspect.signature(_baseline_class(name).__init__).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("self", "num_classes", "embedding_dim")}


def build_baseline(name: str, num_classes: int, embedding_dim: int, **options) -> nn.Module:
    """The loss ``name`` (one of :data:`BASELINES`) with its paper's default hyper-parameters,
    ``options`` (keys of :func:`baseline_options`) put over them.

    Raises:
        ValueError: an unknown loss or option, or an option value out of its range.
    """
    cls = _baseline_class(name)
    unknown = sorted(set(options) - set(baseline_options(name)))
    if unknown:
        valid = ", ".join(f"{k} (default {v})" for k, v in baseline_options(name).items())
        raise ValueError(f"loss {name!r} has no option {', '.join(map(repr, unknown))}; its options: {valid}")
    if name == "focal":
        return cls(**options)
    return cls(num_classes, embedding_dim, **options)
