"""VGG16-BN backbone as in the released TDSA code.

Layout (``S`` classes; ``Cm = S*middle_cnum`` or 512; ``Ch = S*high_cnum`` or 512)::

    conv1_1..conv1_2   64            \\
    M                                 |  every conv: 3x3, padding 1, bias,
    conv2_1..conv2_2   128            |  then BatchNorm2d + ReLU
    M                                 |  (torchvision's vgg16_bn feature cfg
    conv3_1..conv3_3   256            |   64,64,M,128,128,M,256,256,256,M,
    M                                 |   512,512,512,M,512,512,512)
    conv4_1, conv4_2   512            |
    conv4_3            Cm   -> middle map, img/8  (28x28 at 224)
    M                         (conv5_1 consumes the *ungated* conv4_3 output)
    conv5_1, conv5_2   512
    conv5_3            Ch   -> high map,   img/16 (14x14 at 224)
    head: MaxPool2d(2) -> flatten -> BN1d -> Linear(->512) -> BN1d -> ELU -> Linear(->S)

Both maps are taken after the layer's BatchNorm + ReLU (so they are >= 0). The top-down
gate is applied only inside the loss; the backbone itself is ungated.

Flatten rule. The head flattens the max-pooled high map, so its width is fixed when the
model is built: ``Ch * k * k`` with ``k = (img_size // 16) // 2`` (``MaxPool2d`` floors).
``img_size`` must be a multiple of 16 in [32, 448], which makes the middle map exactly
``img_size/8`` and the high map exactly ``img_size/16`` (so middle = 2 x high, and
nearest / bilinear upsampling in the gate is an exact factor-2 resize). At 224 the flatten
width is ``Ch * 7 * 7``, exactly the released code's; at sizes that are a multiple of 16 but
not of 32 (e.g. 112: high 7x7 -> 3x3) the head's pool drops the last row and column, as
PyTorch's floor-mode pooling does. ``forward`` raises ``ValueError`` for any input whose
spatial size differs from ``img_size``.
"""
from __future__ import annotations

from typing import List, Optional

from torch import Tensor, nn

from tdsa_fast._checks import int_at_least
from tdsa_fast.models.common import ModelOutput, check_cnum, check_img_size, head_forward, init_weights, make_head

__all__ = ["VGG16BN"]

STANDARD_WIDTH = 512


def _conv_bn_relu(cin: int, cout: int) -> List[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class VGG16BN(nn.Module):
    """VGG16-BN with grouped conv4_3 / conv5_3 outputs (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        *,
        middle_cnum: Optional[int] = None,
        high_cnum: Optional[int] = None,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        self.arch = "vgg16"
        self.num_classes = int_at_least("num_classes", num_classes)
        self.middle_cnum = check_cnum("middle_cnum", middle_cnum)
        self.high_cnum = check_cnum("high_cnum", high_cnum)
        self.img_size = check_img_size(img_size, multiple=16)
        self.small_input = False
        self.middle_channels = num_classes * middle_cnum if middle_cnum is not None else STANDARD_WIDTH
        self.high_channels = num_classes * high_cnum if high_cnum is not None else STANDARD_WIDTH
        self.middle_size = img_size // 8
        self.high_size = img_size // 16
        self.pooled_size = self.high_size // 2

        layers: List[nn.Module] = []
        layers += _conv_bn_relu(3, 64) + _conv_bn_relu(64, 64)
        layers += [nn.MaxPool2d(2, 2)]
        layers += _conv_bn_relu(64, 128) + _conv_bn_relu(128, 128)
        layers += [nn.MaxPool2d(2, 2)]
        layers += _conv_bn_relu(128, 256) + _conv_bn_relu(256, 256) + _conv_bn_relu(256, 256)
        layers += [nn.MaxPool2d(2, 2)]
        layers += _conv_bn_relu(256, 512) + _conv_bn_relu(512, 512)
        layers += _conv_bn_relu(512, self.middle_channels)  # conv4_3 -> middle map
        self.stage4 = nn.Sequential(*layers)
        self.stage5 = nn.Sequential(
            nn.MaxPool2d(2, 2),
            *_conv_bn_relu(self.middle_channels, 512),
            *_conv_bn_relu(512, 512),
            *_conv_bn_relu(512, self.high_channels),  # conv5_3 -> high map
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.flatten_features = self.high_channels * self.pooled_size * self.pooled_size
        self.classifier = make_head(self.flatten_features, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(
                f"vgg16 was built for input [B, 3, {self.img_size}, {self.img_size}] "
                f"(its flatten width is fixed by img_size), got x of shape {tuple(x.shape)}"
            )
        middle = self.stage4(x)
        high = self.stage5(middle)
        logits, embedding = head_forward(self.classifier, self.pool(high).flatten(1))
        return ModelOutput(logits, middle, high, embedding)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, middle_cnum={self.middle_cnum}, "
            f"high_cnum={self.high_cnum}, img_size={self.img_size}"
        )
