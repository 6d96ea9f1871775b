"""What a loader yields and how it is driven: :class:`Batch` and the :class:`ImageLoader`
interface that the DALI, torch and memory loaders implement."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from tdsa_fast._checks import int_at_least

from tdsa_fast.data.augment import RECIPES, Augment, draw_augment
from tdsa_fast.data.sharding import ShardPlan, plan_epoch

__all__ = ["OUTPUT_DTYPES", "Batch", "ImageLoader"]

OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
            int_at_least(name, value, minimum)
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, OUTPUT_DTYPES))}, got {dtype}")
        self.img_size, self.train, self.batch_size, self.recipe = img_size, bool(train), batch_size, recipe
        self.workers, self.seed, self.rank, self.world_size = workers, int(seed), rank, world_size
        self.device = torch.device(device)
        self.channels_last, self.dtype, self.skip_bad = bool(channels_last), dtype, bool(skip_bad)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        #: The keyword arguments above as this loader resolved them: another loader built with
        #: them reads the same plans and draws (the memory loader's decoding first epoch).
        self.options = dict(img_size=img_size, train=self.train, batch_size=batch_size, recipe=recipe,
                            workers=workers, seed=self.seed, rank=rank, world_size=world_size, device=self.device,
                            channels_last=self.channels_last, dtype=dtype, skip_bad=self.skip_bad,
                            shuffle=self.shuffle)
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
