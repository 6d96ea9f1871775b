"""The augmentation of every loader: the random draws, and their application to an image.

Every loader draws every sample's augmentation from a counter-based stream keyed by
``(seed, epoch, sample index)`` (:func:`draw_augment`), so for the same seed the DALI, torch
and memory loaders apply the same crops and flips to the same images; they differ only by
JPEG-decoder and resampling rounding.

Transforms (docs/method.md, "The recipe"), output ``s x s``:

* ``train`` with ``recipe="released"`` (the released TDSA code): ``Resize((s, s))`` ->
  ``RandomCrop(s, padding=4)`` (zero fill) -> horizontal flip with p = 0.5;
* ``train`` with ``recipe="rrc"``: random-resized-crop (scale 0.08-1, ratio 3/4-4/3, as
  torchvision) -> flip;
* ``test``: ``Resize((s, s))``;

then ``(x - 127.5) / 127.5`` (= ``ToTensor`` + ``Normalize(0.5, 0.5)``), giving values in
``[-1, 1]`` (:func:`finish_images`). The resize is PIL's antialiased bilinear one:
:func:`apply_augment_pil` on a ``PIL.Image``, :func:`apply_augment_tensor` with PIL's weights
on a tensor (any device).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch
from PIL import Image

__all__ = ["RECIPES", "PAD", "Augment", "draw_augment", "apply_augment_pil", "apply_augment_tensor",
           "pil_bilinear_weights", "test_image", "finish_images"]

#: Training augmentation recipes accepted by :func:`train_transform`.
RECIPES = ("released", "rrc")


_RRC_SCALE = (0.08, 1.0)


_RRC_RATIO = (3 / 4, 4 / 3)


PAD = 4  # the released recipe's RandomCrop padding


class Augment(NamedTuple):
    """One sample's augmentation.

    ``box = (top, left, height, width)``: for the released recipe the crop window in the
    ``s x s`` resized image (it may reach 4 pixels outside: zero fill); for ``rrc`` the
    window of the decoded image that is resized to ``s x s``; ``None`` for the test
    transform (plain resize).  ``flip``: mirror horizontally after cropping.
    """

    box: Optional[tuple[int, int, int, int]]
    flip: bool


_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit mix (plain Python ints: about 1 µs)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class _SampleStream:
    """The random numbers of one sample in one epoch: a counter-based stream keyed by
    ``(seed, epoch, index)``, cheap to create for every image in every epoch and the same
    in any process, worker or loader."""

    def __init__(self, seed: int, epoch: int, index: int):
        self._key = _mix64(_mix64(_mix64(int(seed) & _M64) ^ (int(epoch) & _M64)) ^ (int(index) & _M64))
        self._count = 0

    def random(self) -> float:
        """Uniform in [0, 1)."""
        self._count += 1
        return (_mix64((self._key + self._count) & _M64) >> 11) * (1.0 / (1 << 53))

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int) -> int:
        """Uniform in ``[low, high)``."""
        return low + min(int(self.random() * (high - low)), high - low - 1)


def _rrc_box(rng: _SampleStream, width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``, drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*_RRC_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    in_ratio = width / height  # fallback: central crop at the nearest allowed ratio
    if in_ratio < _RRC_RATIO[0]:
        w, h = width, int(round(width / _RRC_RATIO[0]))
    elif in_ratio > _RRC_RATIO[1]:
        h, w = height, int(round(height * _RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_augment(*, train: bool, recipe: str, img_size: int, seed: int, epoch: int, index: int,
                 width: Optional[int] = None, height: Optional[int] = None) -> Augment:
    """The augmentation of sample ``index`` in ``epoch`` (``width``/``height``: the decoded
    image's size, needed by ``rrc`` only)."""
    if not train:
        return Augment(None, False)
    rng = _SampleStream(seed, epoch, index)
    if recipe == "released":
        top, left = rng.integers(0, 2 * PAD + 1) - PAD, rng.integers(0, 2 * PAD + 1) - PAD
        box = (top, left, img_size, img_size)
    elif recipe == "rrc":
        if width is None or height is None:
            raise ValueError("the rrc recipe needs the image's width and height")
        box = _rrc_box(rng, int(width), int(height))
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    return Augment(box, bool(rng.random() < 0.5))


def test_image(img: Image.Image, img_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """The test transform of one RGB image, as the loaders apply it: ``(uint8 [s, s, 3] pixels,
    float32 [3, s, s] network input in [-1, 1])``."""
    pixels = apply_augment_pil(img, Augment(None, False), img_size, "released")
    x = finish_images(torch.from_numpy(pixels.copy())[None], device=torch.device("cpu"), channels_last=False,
                      dtype=torch.float32, layout="NHWC")
    return pixels, x[0]


def finish_images(images: torch.Tensor, *, device: torch.device, channels_last: bool, dtype: torch.dtype,
                  layout: str) -> torch.Tensor:
    """Moves a batch to ``device`` and normalises it: ``images`` ``uint8``/``float`` in
    ``[0, 255]``, ``layout`` ``"NHWC"`` or ``"NCHW"`` -> ``[n, 3, s, s]`` ``dtype`` in
    ``[-1, 1]`` (``channels_last`` or contiguous).  The copy is non-blocking (pinned
    sources), and the arithmetic runs on the device."""
    x = images.to(device, non_blocking=True)
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    x = x.to(torch.float32).sub_(127.5).div_(127.5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt)


def apply_augment_pil(img: Image.Image, aug: Augment, img_size: int, recipe: str) -> np.ndarray:
    """RGB ``PIL.Image`` -> ``uint8 [s, s, 3]`` (see :mod:`tdsa_fast.data.loading`)."""
    s = img_size
    if aug.box is not None and recipe == "rrc":
        top, left, h, w = aug.box
        img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
    else:
        img = img.resize((s, s), Image.BILINEAR)
        if aug.box is not None:
            top, left, h, w = aug.box
            img = img.crop((left, top, left + w, top + h))  # outside the image: zeros
    if aug.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


def pil_bilinear_weights(in_size: int, start: float, length: float, out_size: int,
                          device: torch.device) -> torch.Tensor:
    """``float32 [out_size, in_size]``: the row weights of PIL's antialiased bilinear
    resample of the window ``[start, start + length)`` of an axis of ``in_size`` pixels to
    ``out_size`` (``precompute_coeffs`` in PIL's Resample.c: a triangle filter widened by the
    downscaling factor, centred on each output pixel, clipped to the image and normalised).
    Unlike cropping to the window first, pixels just outside the window contribute at its
    edges, as in ``Image.resize(..., box=window)``."""
    scale = length / out_size
    filterscale = max(scale, 1.0)
    centre = start + (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale
    pos = torch.arange(in_size, dtype=torch.float64, device=device) + 0.5
    w = (1.0 - ((pos[None, :] - centre[:, None]) / filterscale).abs()).clamp_(min=0.0)
    return (w / w.sum(1, keepdim=True)).to(torch.float32)


def _resize_like_pil(x: torch.Tensor, size: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """``float32 [3, H, W]`` with integer values -> ``[3, s, s]``: ``Image.resize((s, s),
    BILINEAR, box=(left, top, left + w, top + h))`` for ``box = (top, left, h, w)``, with
    PIL's weights, in float and rounded (half up) once at the end.  PIL rounds to 8 bits
    after each of its two passes (so it is within 1.0 of the exact value) and this within
    0.5: the two differ by at most one grey level."""
    top, left, h, w = box
    _, height, width = x.shape
    if (top, left, h, w) == (0, 0, height, width) and size == height and size == width:
        return x
    wx = pil_bilinear_weights(width, left, w, size, x.device)
    wy = pil_bilinear_weights(height, top, h, size, x.device)
    x = torch.matmul(wy, torch.matmul(x, wx.t()))  # [3, H, s] -> [3, s, s]
    return x.add_(0.5).floor_().clamp_(0, 255)


def apply_augment_tensor(img: torch.Tensor, aug: Augment, img_size: int, recipe: str) -> torch.Tensor:
    """``uint8 [3, H, W]`` (any device) -> ``float32 [3, s, s]`` with integer values in
    ``[0, 255]``: the tensor version of :func:`apply_augment_pil`."""
    s = img_size
    x = img.to(torch.float32)
    if aug.box is not None and recipe == "rrc":
        window = aug.box
    else:
        window = (0, 0, x.shape[-2], x.shape[-1])
    x = _resize_like_pil(x, s, window).unsqueeze(0)
    if aug.box is not None and recipe != "rrc":
        top, left, h, w = aug.box
        out = torch.zeros((1, 3, h, w), dtype=x.dtype, device=x.device)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, s), min(left + w, s)
        out[..., y0 - top:y1 - top, x0 - left:x1 - left] = x[..., y0:y1, x0:x1]
        x = out
    if aug.flip:
        x = x.flip(-1)
    return x[0]
