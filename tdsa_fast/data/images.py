"""Image decoding with clear errors, and the released code's recipe (torchvision transforms in a
DataLoader), kept as the benchmark baseline; the trainer reads batches through
:mod:`tdsa_fast.data.loading`.

* :func:`load_rgb` decodes a file fully and returns an RGB ``PIL.Image``; a missing,
  empty, truncated or corrupt file raises :class:`BadImageError` naming the file.
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here (if some other code sets it
  globally, PIL pads truncated JPEGs with grey instead of failing; do not).
* :func:`train_transform` / :func:`test_transform` are the released code's augmentation
  (docs/method.md): ``Resize((s, s)) -> RandomCrop(s, padding=4) -> RandomHorizontalFlip ->
  ToTensor -> Normalize(0.5, 0.5)`` for training, ``Resize((s, s)) -> ToTensor ->
  Normalize(0.5, 0.5)`` for testing; outputs are float32 ``[3, s, s]`` in ``[-1, 1]``.
* :func:`released_recipe_loader` yields ``(images [B, 3, s, s] float32, labels [B] int64,
  num_skipped int)``.

A :class:`BadImageError` raised in a DataLoader worker process reaches the main process
as a ``BadImageError`` whose message holds the worker's traceback, including the file
path (PyTorch re-creates the exception from its formatted text).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

__all__ = [
    "BadImageError",
    "RECIPES",
    "MAX_IMAGE_PIXELS",
    "ImageHeader",
    "read_header",
    "decode_rgb",
    "load_rgb",
    "train_transform",
    "test_transform",
    "ImageListDataset",
    "collate_skipping",
    "released_recipe_loader",
]

log = logging.getLogger(__name__)

#: Training augmentation recipes accepted by :func:`train_transform`.
RECIPES = ("released", "rrc")

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)

#: Colour that transparent pixels are composited onto (white, as most viewers show them).
_ALPHA_BACKGROUND = (255, 255, 255)

#: The most pixels (width x height) an image may have, in both loaders: Pillow's
#: decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``'s default), checked from the
#: file's header before anything is decoded (a 2 KB JPEG can claim 20000 x 20000 pixels).
MAX_IMAGE_PIXELS = 89_478_485


class BadImageError(RuntimeError):
    """An image file that cannot be decoded.  ``str(err)`` names the file and the reason;
    ``err.path`` / ``err.reason`` hold them separately (``None`` when the error was
    re-created from its message, as DataLoader does for errors raised in workers)."""

    def __init__(self, message: str, path: Optional[str] = None, reason: Optional[str] = None):
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path: str, reason: str) -> "BadImageError":
        """The error for ``path``: ``"cannot load image <path>: <reason>"``."""
        return cls(f"cannot load image {path}: {reason}", path=path, reason=reason)

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.reason))


def _too_large(path: str, size: str) -> "BadImageError":
    return BadImageError.for_file(path, f"too large: {size} is more than the limit of {MAX_IMAGE_PIXELS:,} pixels "
                                        "(checked from the header before decoding: a decompression bomb, a corrupt "
                                        "header, or an image to downscale first)")


def _check_pixels(im: Image.Image, path: str) -> None:
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(path, f"{width} x {height} = {width * height:,} pixels")


def has_alpha(im: Image.Image) -> bool:
    """Whether ``im`` (opened, not necessarily decoded) has transparency: an alpha band, or a
    palette / grey / RGB image with a ``transparency`` entry."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info)


class ImageHeader(NamedTuple):
    """What the loaders read from a file's header before decoding it."""

    width: int
    height: int
    alpha: bool  # composited onto white by :func:`decode_rgb`


@contextlib.contextmanager
def _decoding(path: str):
    """Pillow's errors inside the block as a :class:`BadImageError` naming ``path``."""
    try:
        yield
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise _too_large(path, f"its size ({e})") from None
    except Exception as e:  # PIL and its plugins raise OSError, SyntaxError, ValueError...
        reason = f"{type(e).__name__}: {e}"
        raise BadImageError.for_file(path, reason) from None


def read_header(data: bytes, path: str) -> ImageHeader:
    """The header of the encoded image ``data`` (the bytes of file ``path``), without decoding it.

    Raises:
        BadImageError: not an image Pillow can identify, or more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    with _decoding(path), Image.open(io.BytesIO(data)) as im:
        _check_pixels(im, path)
        return ImageHeader(im.width, im.height, has_alpha(im))


def decode_rgb(data: bytes, path: str) -> Image.Image:
    """The encoded image ``data`` (the bytes of file ``path``) decoded to RGB as :func:`load_rgb`
    does (same limits, same conversions); errors as :func:`read_header`, or a corrupt file."""
    with _decoding(path), Image.open(io.BytesIO(data)) as im:
        _check_pixels(im, path)
        im.load()
        return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to ``RGB``.

    * ``RGB``: copied as is.
    * ``L``, ``1``, ``P`` without transparency, ``CMYK``, ``YCbCr``...: ``Image.convert``
      (CMYK uses PIL's ``R = (255 - C)(255 - K) / 255`` rule; embedded ICC profiles are
      not applied).
    * 16/32-bit greyscale (``I;16*``, ``I``): scaled from ``0..65535`` to ``0..255``.
    * anything with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency entry...):
      alpha-composited onto white.
    """
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if has_alpha(im):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Decode the image at ``path`` (str or path-like) completely and return it as an
    ``RGB`` ``PIL.Image.Image`` (8 bits per channel, ``H x W`` as stored; EXIF orientation
    is not applied, as in torchvision's default loader).

    Raises:
        BadImageError: the file is missing, unreadable, empty, truncated, corrupt, in an
            unsupported format, or larger than :data:`MAX_IMAGE_PIXELS` (checked before
            decoding); the message names the file and the reason.
    """
    p = os.fspath(path)
    try:
        with Image.open(p) as im:
            _check_pixels(im, p)
            im.load()  # force the full decode here, so truncation is caught now
            return _to_rgb(im)
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as e:
        raise _too_large(p, f"its size ({e})") from None
    except FileNotFoundError:
        reason = "file not found"
    except IsADirectoryError:
        reason = "is a directory, not an image file"
    except Exception as e:  # PIL and its plugins raise OSError, SyntaxError, ValueError...
        reason = f"{type(e).__name__}: {e}"
        try:
            if os.path.getsize(p) == 0:
                reason = "empty file (0 bytes)"
        except OSError:
            pass
    raise BadImageError.for_file(p, reason)


def _normalize():
    return [T.ToTensor(), T.Normalize(_MEAN, _STD)]


def train_transform(img_size: int, recipe: str = "released") -> Callable[[Image.Image], torch.Tensor]:
    """Training augmentation: RGB ``PIL.Image`` -> float32 tensor ``[3, s, s]`` in [-1, 1].

    ``recipe="released"`` (the released TDSA/MC-Loss code): ``Resize((s, s))`` ->
    ``RandomCrop(s, padding=4)`` (zero padding) -> ``RandomHorizontalFlip()`` ->
    ``ToTensor()`` -> ``Normalize(mean 0.5, std 0.5)``.
    ``recipe="rrc"``: ``RandomResizedCrop(s)`` (scale 0.08-1, ratio 3/4-4/3) -> flip ->
    ``ToTensor()`` -> ``Normalize``.

    The random draws use ``torch``'s global generator (seeded per worker by the
    DataLoader).
    """
    s = _check_size(img_size)
    if recipe == "released":
        ops = [T.Resize((s, s)), T.RandomCrop(s, padding=4), T.RandomHorizontalFlip()]
    elif recipe == "rrc":
        ops = [T.RandomResizedCrop(s), T.RandomHorizontalFlip()]
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    return T.Compose(ops + _normalize())


def test_transform(img_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation transform: ``Resize((s, s))`` -> ``ToTensor()`` -> ``Normalize(0.5, 0.5)``;
    RGB ``PIL.Image`` -> float32 tensor ``[3, s, s]`` in [-1, 1]; deterministic."""
    s = _check_size(img_size)
    return T.Compose([T.Resize((s, s))] + _normalize())


def _check_size(img_size) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    return int(img_size)


class ImageListDataset(Dataset):
    """A map-style dataset over ``[(image path, label)]``.

    ``dataset[i]`` is ``(transform(load_rgb(path)), label)`` -- with the transforms of
    this module an image float32 tensor ``[3, s, s]`` and a Python ``int`` -- or ``None``
    when the image cannot be decoded and ``skip_bad`` is true (the file is also logged at
    WARNING level).  With ``skip_bad=False`` the :class:`BadImageError` naming the file
    propagates.  Pair ``skip_bad=True`` with :func:`collate_skipping`.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Optional[Callable],
                 skip_bad: bool = False):
        self.samples = list(samples.samples if hasattr(samples, "samples") else samples)
        self.transform = transform
        self.skip_bad = bool(skip_bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_rgb(path)
        except BadImageError as e:
            if not self.skip_bad:
                raise
            log.warning("skipping unreadable image: %s", e)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, int(label)


def collate_skipping(batch, image_shape: Optional[Sequence[int]] = None):
    """Collate ``[(image [3, H, W], label) or None]`` into
    ``(images [B, 3, H, W] float32, labels [B] int64, num_skipped)``, dropping the
    ``None`` entries (unreadable images under ``skip_bad``) and counting them.

    A batch in which every image is bad gives ``images`` of shape ``[0, *image_shape]``
    (``released_recipe_loader`` passes ``(3, s, s)``; without it ``[0, 3, 0, 0]``), ``labels`` of
    shape ``[0]`` and ``num_skipped == len(batch)``: callers should skip such a batch
    (``images.shape[0] == 0``) but still add ``num_skipped`` to their count.
    """
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        shape = tuple(image_shape) if image_shape is not None else (3, 0, 0)
        return torch.empty((0,) + shape, dtype=torch.float32), torch.empty(0, dtype=torch.int64), skipped
    images = torch.stack([torch.as_tensor(img) for img, _ in kept]).to(torch.float32)
    labels = torch.tensor([int(lab) for _, lab in kept], dtype=torch.int64)
    return images, labels, skipped


def _stop_workers(it) -> None:
    shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
    if shutdown is not None:
        shutdown()


class _Loader(DataLoader):
    """The ``DataLoader`` returned by :func:`released_recipe_loader`, with deterministic worker
    shutdown.

    PyTorch stops worker processes when the iterator is freed.  If that happens inside the
    cyclic garbage collector (a loader reachable from a reference cycle, e.g. a frame kept
    alive by a caught exception's traceback) the queues are finalised first, the workers
    never get the stop signal, and the process stalls 5 s per worker before killing them.
    So:

    * when an exception (e.g. a :class:`BadImageError` from a worker) escapes an epoch,
      the workers are stopped at once and the next ``iter(loader)`` starts fresh ones;
      breaking out of an epoch early keeps the persistent workers;
    * :meth:`close` (also ``with released_recipe_loader(...) as loader:``) stops them explicitly:
      call it when done with a loader that has ``workers > 0``.
    """

    def __iter__(self):
        it = super().__iter__()
        try:
            yield from it
        except Exception:
            _stop_workers(it)
            if getattr(self, "_iterator", None) is it:
                self._iterator = None
            raise

    def close(self) -> None:
        """Stop the persistent worker processes (if any); the loader stays usable."""
        it = getattr(self, "_iterator", None)
        self._iterator = None
        if it is not None:
            _stop_workers(it)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def released_recipe_loader(samples, *, img_size: int, train: bool, batch_size: int, workers: int = 0,
                 skip_bad: bool = False, seed: int = 0, recipe: str = "released",
                 pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``samples`` (``[(path, label)]`` or a ``SampleList``) yielding
    ``(images [B, 3, s, s] float32 in [-1, 1], labels [B] int64, num_skipped int)``.

    * ``train=True``: :func:`train_transform` with ``recipe`` and a shuffled order drawn
      from a ``torch.Generator`` seeded with ``seed``: the sequence of epoch orders is the
      same for the same seed.  Worker processes get their RNG seeds from that generator
      too, so with ``workers > 0`` the augmentation is reproducible as well; with
      ``workers == 0`` it draws from the main process's global torch RNG.
    * ``train=False``: :func:`test_transform`, samples in the given order.
    * ``workers > 0`` uses that many worker processes, kept alive across epochs
      (``persistent_workers``).  An unreadable image raises :class:`BadImageError`
      (naming the file, also from a worker) unless ``skip_bad``, in which case it is
      dropped from its batch and counted in ``num_skipped`` (a batch can then be smaller
      than ``batch_size``, or empty: see :func:`collate_skipping`).  When an error escapes
      an epoch the workers are stopped at once; call ``loader.close()`` (or use the loader
      as a context manager) to stop them when done (see ``_Loader`` for why).
    """
    s = _check_size(img_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    transform = train_transform(s, recipe) if train else test_transform(s)
    dataset = ImageListDataset(samples, transform, skip_bad=skip_bad)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(train),
        num_workers=workers,
        collate_fn=functools.partial(collate_skipping, image_shape=(3, s, s)),
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )
