"""The released TDSA / MC-Loss code's data path, kept as the baseline of the benchmarks and
the tests (not part of the package): torchvision transforms in a ``DataLoader``.

* :func:`train_transform` / :func:`test_transform` are the released code's augmentation
  (docs/method.md, "The recipe"): ``Resize((s, s)) -> RandomCrop(s, padding=4) ->
  RandomHorizontalFlip -> ToTensor -> Normalize(0.5, 0.5)`` for training, ``Resize((s, s)) ->
  ToTensor -> Normalize(0.5, 0.5)`` for testing; outputs are float32 ``[3, s, s]`` in ``[-1, 1]``.
* :func:`released_recipe_loader` yields ``(images [B, 3, s, s] float32, labels [B] int64,
  num_skipped int)``.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from tdsa_fast.data.augment import RECIPES
from tdsa_fast.data.decode import BadImageError, load_rgb
from tdsa_fast.data.torch_loader import _Loader

__all__ = ["train_transform", "test_transform", "ImageListDataset", "collate_skipping", "released_recipe_loader"]

log = logging.getLogger(__name__)

_MEAN = (0.5, 0.5, 0.5)


_STD = (0.5, 0.5, 0.5)


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
