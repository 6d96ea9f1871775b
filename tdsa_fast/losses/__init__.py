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
           "CosFaceLoss", "FocalLoss", "LGMLoss", "CLASS_WEIGHT_LOSSES", "BASELINES", "build_baseline"]

CLASS_WEIGHT_LOSSES = {
    "asoftmax": ASoftmaxLoss,
    "coco": COCOLoss,
    "lgm": LGMLoss,
    "lmcl": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "circle": CircleLoss,
}
BASELINES = ("center", "asoftmax", "focal", "coco", "lgm", "lmcl", "arcface", "circle")


def build_baseline(name: str, num_classes: int, embedding_dim: int) -> nn.Module:
    """The loss ``name`` (one of :data:`BASELINES`) with its paper's default hyper-parameters."""
    if name == "focal":
        return FocalLoss()
    if name == "center":
        return CenterLoss(num_classes, embedding_dim)
    if name in CLASS_WEIGHT_LOSSES:
        return CLASS_WEIGHT_LOSSES[name](num_classes, embedding_dim)
    raise ValueError(f"unknown baseline loss {name!r}; valid choices: {', '.join(BASELINES)}")
