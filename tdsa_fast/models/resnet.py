"""ResNet18 and ResNet50 backbones with a middle (layer3) and a high (layer4) level.

Layout (``S`` classes)::

    stem     standard (img >= 128): conv7x7/2 (64) + BN + ReLU + maxpool3x3/2   -> img/4
             small    (img <  128): conv3x3/2 (64) + BN + ReLU, no max-pool     -> img/2
    layer1   2 BasicBlocks,  64 planes, stride 1
    layer2   2 BasicBlocks, 128 planes, stride 2
    layer3   2 BasicBlocks, 256 planes, stride 2
             middle map = layer3's output (256 channels)                 if middle_cnum is None
                        = ReLU(BN(conv1x1(layer3 output -> S*middle_cnum)))   otherwise
             (the 1x1 side branch only widens the map the loss sees; layer4 always
              consumes the standard 256-channel layer3 output)
    layer4   2 BasicBlocks, S*high_cnum planes (512 if high_cnum is None), stride 2
             high map = layer4's output
    head     global max-pool -> BN1d -> Linear(->512) -> BN1d -> ELU -> Linear(->S)

Strides. layer4 keeps torchvision's stride 2 (the released MC-Loss ResNet18 uses stride 1
there, but then layer3 and layer4 would have the same size and the top-down gate would
not upsample anything), so the middle map is exactly 2x the high map when the layer3
size is even. Map sizes (layer3 / layer4): 224 standard stem 14x14 / 7x7; 128 standard
8x8 / 4x4; 64 small stem 8x8 / 4x4 (a standard stem would leave 4x4 / 2x2); 96 small
12x12 / 6x6. The small stem at size ``s`` gives the same map sizes as the standard stem
at ``2s``, which is why it is the default below 128 px.

Both maps are post-ReLU (layer outputs end with the residual add + ReLU; the side branch
ends with BN + ReLU), so they are >= 0. The forward accepts any input size in practice
(the head pools globally); ``img_size`` is validated to [32, 448] and picks the stem.

ResNet50 is the same network with torchvision's Bottleneck blocks (v1.5: the stride on the
3x3 conv), [3, 4, 6, 3] of them, and its standard widths: layer3 1024, layer4 2048 channels.
The grouped levels are placed as for ResNet18 (docs/models.md)::

    middle map = layer3's output (1024 channels)                        if middle_cnum is None
               = ReLU(BN(conv1x1(layer3 output -> S*middle_cnum)))      otherwise
    layer4     3 Bottlenecks of bottleneck width 512 whose output (conv3, the shortcut) is
               S*high_cnum channels (2048 if high_cnum is None); high map = layer4's output

so with the TDSA widths the middle level (``S * 3 * xi``) is wider than the high level
(``S * 3``), as for ResNet18 and VGG16; layer4 consumes the standard 1024-channel layer3 output.
Parameter names follow torchvision's (``layerN.M.convK`` / ``bnK`` / ``downsample``) with
``stem.0`` / ``stem.1`` for ``conv1`` / ``bn1`` (see :mod:`tdsa_fast.pretrained`).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from tdsa_fast._checks import int_at_least
from tdsa_fast.models.common import ModelOutput, check_cnum, check_img_size, head_forward, init_weights, make_head

__all__ = ["ResNet", "ResNet18", "ResNet50", "BasicBlock", "Bottleneck"]

SMALL_INPUT_BELOW = 128


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (3x3 -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, out: Optional[int] = None) -> None:
        super().__init__()
        if out is not None and out != planes:
            raise ValueError("a BasicBlock's output width is its planes")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (v1.5): 1x1 -> BN -> ReLU -> 3x3 (stride) -> BN -> ReLU
    -> 1x1 -> BN, + shortcut, ReLU; ``out`` channels (default ``4 * planes``)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, out: Optional[int] = None) -> None:
        super().__init__()
        out = planes * self.expansion if out is None else out
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(block, inplanes: int, planes: int, stride: int, blocks: int = 2,
                out: Optional[int] = None) -> tuple[nn.Sequential, int]:
    """(the layer, its output width)."""
    out = planes * getattr(block, "expansion", 1) if out is None else out
    layers = [block(inplanes, planes, stride, out)]
    layers += [block(out, planes, 1, out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), out


# arch: (block, blocks per layer)
ARCHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """ResNet18 / ResNet50 with grouped middle (layer3 + 1x1 side branch) / high (layer4) levels."""

    def __init__(
        self,
        num_classes: int,
        *,
        arch: str = "resnet18",
        middle_cnum: Optional[int] = None,
        high_cnum: Optional[int] = None,
        img_size: int = 224,
        small_input: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; valid: {', '.join(ARCHS)}")
        self.arch = arch
        block, blocks = ARCHS[arch]
        expansion = getattr(block, "expansion", 1)
        self.num_classes = int_at_least("num_classes", num_classes)
        self.middle_cnum = check_cnum("middle_cnum", middle_cnum)
        self.high_cnum = check_cnum("high_cnum", high_cnum)
        self.img_size = check_img_size(img_size)
        if small_input is None:
            small_input = img_size < SMALL_INPUT_BELOW
        self.small_input = bool(small_input)
        layer3_width = 256 * expansion
        self.middle_channels = num_classes * middle_cnum if middle_cnum is not None else layer3_width
        self.high_channels = num_classes * high_cnum if high_cnum is not None else 512 * expansion

        if self.small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        self.layer1, width = _make_layer(block, 64, 64, 1, blocks[0])
        self.layer2, width = _make_layer(block, width, 128, 2, blocks[1])
        self.layer3, width = _make_layer(block, width, 256, 2, blocks[2])
        self.middle_branch: Optional[nn.Module] = None
        if middle_cnum is not None:
            self.middle_branch = nn.Sequential(
                nn.Conv2d(layer3_width, self.middle_channels, 1, bias=False),
                nn.BatchNorm2d(self.middle_channels),
                nn.ReLU(inplace=True),
            )
        planes4 = self.high_channels if block is BasicBlock else 512
        self.layer4, _ = _make_layer(block, layer3_width, planes4, 2, blocks[3], out=self.high_channels)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = make_head(self.high_channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.arch} expects x of shape [B, 3, H, W], got {tuple(x.shape)}")
        f = self.layer3(self.layer2(self.layer1(self.stem(x))))
        middle = f if self.middle_branch is None else self.middle_branch(f)
        high = self.layer4(f)
        logits, embedding = head_forward(self.classifier, self.pool(high).flatten(1))
        return ModelOutput(logits, middle, high, embedding)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, middle_cnum={self.middle_cnum}, "
            f"high_cnum={self.high_cnum}, img_size={self.img_size}, small_input={self.small_input}"
        )


class ResNet18(ResNet):
    """:class:`ResNet` with BasicBlocks [2, 2, 2, 2]."""

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes, arch="resnet18", **kwargs)


class ResNet50(ResNet):
    """:class:`ResNet` with Bottlenecks [3, 4, 6, 3] (layer3 1024, layer4 2048 channels)."""

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes, arch="resnet50", **kwargs)
