"""What both training loaders share: the batch they yield, the augmentation draws, the
final conversion on the device, and :func:`build_loader`, which picks one.

The two loaders (:mod:`tdsa_fast.data.dali_loader` and :mod:`tdsa_fast.data.torch_loader`)
read the same :class:`~tdsa_fast.data.sharding.ShardPlan` and draw every sample's
augmentation from a generator seeded by ``(seed, epoch, sample index)``
(:func:`draw_augment`), so for the same seed they apply the same crops and flips to the
same images: they differ only by JPEG-decoder and resampling rounding.

Transforms (docs/method.md), output ``s x s``:

* ``train`` with ``recipe="released"`` (the released TDSA code): ``Resize((s, s))`` ->
  ``RandomCrop(s, padding=4)`` (zero fill) -> horizontal flip with p = 0.5;
* ``train`` with ``recipe="rrc"``: random-resized-crop (scale 0.08-1, ratio 3/4-4/3, as
  torchvision) -> flip;
* ``test``: ``Resize((s, s))``;

then ``(x - 127.5) / 127.5`` (= ``ToTensor`` + ``Normalize(0.5, 0.5)``), giving values in
``[-1, 1]``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from tdsa_fast.data.images import RECIPES
from tdsa_fast.data.sharding import ShardPlan, plan_epoch

__all__ = ["LOADERS", "Batch", "Augment", "draw_augment", "finish_images", "dali_available", "build_loader",
           "ImageLoader"]

LOADERS = ("auto", "dali", "torch", "memory")
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_RRC_SCALE = (0.08, 1.0)
_RRC_RATIO = (3 / 4, 4 / 3)
_PAD = 4  # the released recipe's RandomCrop padding


class Batch(NamedTuple):
    """One batch, on the loader's device.

    * ``images``: ``[n, 3, s, s]`` in the loader's dtype, ``channels_last`` memory format
      when asked for, values in ``[-1, 1]``;
    * ``labels``: ``int64 [n]``;
    * ``num_real``: ``images[:num_real]`` are real samples; the rest repeat samples of other
      ranks (sharding padding) and must stay out of the loss's count and the metrics;
    * ``skipped``: unreadable real images dropped from this batch (``skip_bad`` only);
    * ``indices``: ``int64 [n]`` on the CPU, the samples' indices in the split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_real: int
    skipped: int
    indices: torch.Tensor


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
        top, left = rng.integers(0, 2 * _PAD + 1) - _PAD, rng.integers(0, 2 * _PAD + 1) - _PAD
        box = (top, left, img_size, img_size)
    elif recipe == "rrc":
        if width is None or height is None:
            raise ValueError("the rrc recipe needs the image's width and height")
        box = _rrc_box(rng, int(width), int(height))
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    return Augment(box, bool(rng.random() < 0.5))


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


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class ImageLoader:
    """Base of the two loaders: the epoch's plan, ``len``, ``set_epoch``, ``close``.

    Iterating yields :class:`Batch` es of the current epoch; call ``set_epoch(e)`` before
    each epoch (as with ``DistributedSampler``), ``set_epoch(e, start_batch=k)`` to resume
    inside it (the iteration then starts at batch ``k``).  ``len(loader)`` is the number of
    batches of the whole epoch, the same on every rank.  ``shuffle`` (default: ``train``)
    reshuffles the order every epoch; ``train=False, shuffle=True`` gives training batches
    without augmentation.
    """

    kind = "?"

    def __init__(self, samples, *, img_size: int, train: bool, batch_size: int, recipe: str = "released",
                 workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu",
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, skip_bad: bool = False,
                 shuffle: Optional[bool] = None):
        self.samples = list(samples.samples if hasattr(samples, "samples") else samples)
        if not self.samples:
            raise ValueError("the sample list is empty")
        for name, value, minimum in (("img_size", img_size, 1), ("batch_size", batch_size, 1),
                                     ("workers", workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, OUTPUT_DTYPES))}, got {dtype}")
        self.img_size, self.train, self.batch_size, self.recipe = img_size, bool(train), batch_size, recipe
        self.workers, self.seed, self.rank, self.world_size = workers, int(seed), rank, world_size
        self.device = torch.device(device)
        self.channels_last, self.dtype, self.skip_bad = bool(channels_last), dtype, bool(skip_bad)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.plan: ShardPlan = plan_epoch(len(self.samples), batch_size=self.batch_size, shuffle=self.shuffle,
                                          seed=self.seed, epoch=epoch, rank=self.rank,
                                          world_size=self.world_size)
        if isinstance(start_batch, bool) or not isinstance(start_batch, int) or not 0 <= start_batch <= len(self.plan):
            raise ValueError(f"start_batch must be an int in [0, {len(self.plan)}], got {start_batch!r}")
        self.start_batch = start_batch

    def augment(self, index: int, width: Optional[int] = None, height: Optional[int] = None) -> Augment:
        return draw_augment(train=self.train, recipe=self.recipe, img_size=self.img_size, seed=self.seed,
                            epoch=self.plan.epoch, index=index, width=width, height=height)

    def __len__(self) -> int:
        return len(self.plan)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _auto_picks_memory(samples, kwargs) -> bool:
    """``auto``'s rule for the memory path: a CUDA device, and the stored split within
    :data:`~tdsa_fast.data.memory_loader.DEFAULT_MEMORY_FRACTION` of its free memory.  (On the
    CPU ``auto`` keeps DALI or torch: the stored split would take the RAM of every CPU run.)"""
    device = torch.device(kwargs.get("device", "cpu"))
    if device.type != "cuda" or kwargs.get("decode", "pil") != "pil":  # decode=: the torch loader was asked for
        return False
    from tdsa_fast.data.memory_loader import DEFAULT_MEMORY_FRACTION, fits_in_memory, stored_size_for

    n = len(samples.samples if hasattr(samples, "samples") else samples)
    size = stored_size_for(kwargs.get("img_size", 0), kwargs.get("recipe", "released"), kwargs.get("train", False),
                           kwargs.get("stored_size"))
    return fits_in_memory(n, size, device, kwargs.get("memory_fraction") or DEFAULT_MEMORY_FRACTION)


_MEMORY_ONLY = ("decoder", "stored_size", "cache_dir", "memory_fraction")


def build_loader(samples, *, loader: str = "auto", **kwargs) -> ImageLoader:
    """The training/evaluation loader: ``loader="dali"``, ``"torch"``, ``"memory"`` or
    ``"auto"`` (on CUDA the memory path when the split fits in half the device's free memory;
    otherwise DALI when it is installed, else torch).  Keyword arguments: those of
    :class:`ImageLoader`, plus ``decode="pil"|"device"`` for the PyTorch loader (see
    :class:`~tdsa_fast.data.torch_loader.TorchImageLoader`) and ``decoder``,
    ``stored_size``, ``cache_dir``, ``memory_fraction`` for the memory loader (see
    :class:`~tdsa_fast.data.memory_loader.MemoryImageLoader`; ignored by the others)."""
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; valid loaders: {', '.join(LOADERS)}")
    if loader == "auto":
        loader = "memory" if _auto_picks_memory(samples, kwargs) else "dali" if dali_available() else "torch"
    if loader == "memory":
        if kwargs.pop("decode", "pil") != "pil":
            raise ValueError("decode= applies to the torch loader only; the memory loader's is decoder=")
        from tdsa_fast.data.memory_loader import MemoryImageLoader

        return MemoryImageLoader(samples, **{k: v for k, v in kwargs.items() if v is not None or k not in _MEMORY_ONLY})
    for key in _MEMORY_ONLY:
        kwargs.pop(key, None)
    if loader == "dali":
        if not dali_available():
            raise ValueError("--loader dali: NVIDIA DALI is not installed (pip install '.[dali]')")
        if kwargs.pop("decode", "pil") != "pil":
            raise ValueError("decode= applies to the torch loader only")
        from tdsa_fast.data.dali_loader import DaliImageLoader

        return DaliImageLoader(samples, **kwargs)
    from tdsa_fast.data.torch_loader import TorchImageLoader

    return TorchImageLoader(samples, **kwargs)
