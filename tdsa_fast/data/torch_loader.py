"""The PyTorch data path: a ``Dataset`` + ``DataLoader`` with the augmentation of
:mod:`tdsa_fast.data.augment` and the plan and output of :mod:`tdsa_fast.data.batch` (used when DALI is absent, or with ``--loader torch``).

Two decode modes:

* ``decode="pil"`` (default): worker processes decode with PIL and apply the resize, crop
  and flip on ``uint8`` images; batches travel as ``uint8 [n, s, s, 3]`` (pinned when the
  device is CUDA) and are normalised on the device.
* ``decode="device"``: workers only read the files' bytes; the main process decodes the
  batch with ``torchvision.io.decode_jpeg`` on the loader's device (nvJPEG on CUDA),
  falling back to PIL for anything that is not a baseline JPEG it can decode (PNG, CMYK,
  ...), then resizes (bilinear, antialiased), crops and flips on the device.
"""
from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import sys
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from tdsa_fast.data.augment import apply_augment_pil, apply_augment_tensor, draw_augment, finish_images
from tdsa_fast.data.batch import Batch, ImageLoader
from tdsa_fast.data.decode import (BadImageError, decode_rgb, gpu_jpeg_decodable, load_rgb, read_header,
                                   read_image_bytes)
from tdsa_fast.data.worker_signals import ignore_stop_signals

__all__ = ["TorchImageLoader"]

log = logging.getLogger(__name__)

DECODE_MODES = ("pil", "device")


def _stop_workers(it) -> None:
    shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
    if shutdown is not None:
        shutdown()


# Every multi-process iterator not yet stopped: their workers ignore SIGTERM (worker_signals),
# which multiprocessing's exit handler sends its daemonic children before it joins them, so a
# loader nobody closed would keep the interpreter from exiting.
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def _stop_live_workers() -> None:
    """At interpreter exit, before multiprocessing's and torch's exit handlers (registered
    earlier, so run later): tells the workers of every live iterator to stop, as ``close``
    does, and kills any still alive (one busy past the join's timeout)."""
    for it in list(_LIVE_ITERATORS):
        _stop_workers(it)
        for w in getattr(it, "_workers", ()):
            if w.is_alive():
                w.kill()
                w.join()


atexit.register(_stop_live_workers)


class _Loader(DataLoader):
    """A ``DataLoader`` with deterministic worker shutdown (the torch loader's, and the
    released recipe's baseline in ``bench/released_recipe.py``).

    PyTorch stops worker processes when the iterator is freed.  If that happens inside the
    cyclic garbage collector (a loader reachable from a reference cycle, e.g. a frame kept
    alive by a caught exception's traceback) the queues are finalised first, the workers
    never get the stop signal, and the process stalls 5 s per worker before killing them.
    So:

    * when an exception (e.g. a :class:`BadImageError` from a worker) escapes an epoch,
      the workers are stopped at once and the next ``iter(loader)`` starts fresh ones;
      breaking out of an epoch early keeps the persistent workers;
    * :meth:`close` (also ``with loader:``) stops them explicitly:
      call it when done with a loader that has ``workers > 0``;
    * at interpreter exit, the workers of a loader nobody closed are stopped the same way
      (they ignore the SIGTERM that multiprocessing's exit handler sends: worker_signals).
    """

    def __iter__(self):
        it = super().__iter__()
        if hasattr(it, "_shutdown_workers"):
            _LIVE_ITERATORS.add(it)
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


class _Item(NamedTuple):
    data: object  # uint8 [s, s, 3] array (pil) or the file's bytes (device); None when unreadable
    label: int
    index: int
    real: bool


class _PlanDataset(torch.utils.data.Dataset):
    """``dataset[(index, epoch, real)]`` -> :class:`_Item`; decoding errors raise
    :class:`BadImageError` unless ``skip_bad`` (then ``data`` is ``None``)."""

    def __init__(self, loader: "TorchImageLoader"):
        self.samples = loader.samples
        self.decode = loader.decode
        self.skip_bad = loader.skip_bad
        self.augment_args = dict(train=loader.train, recipe=loader.recipe, img_size=loader.img_size,
                                 seed=loader.seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> _Item:
        index, epoch, real = key
        path, label = self.samples[index]
        try:
            if self.decode == "device":
                data = read_image_bytes(path)
                read_header(data, path)  # the pixel limit, before decode_jpeg sees the bytes
            else:
                img = load_rgb(path)
                aug = draw_augment(epoch=epoch, index=index, width=img.width, height=img.height,
                                   **self.augment_args)
                data = apply_augment_pil(img, aug, self.augment_args["img_size"], self.augment_args["recipe"])
        except BadImageError as e:
            if not self.skip_bad:
                raise
            log.warning("skipping unreadable image: %s", e)
            data = None
        return _Item(data, int(label), int(index), bool(real))


class _PlanBatches(torch.utils.data.Sampler):
    """Yields the current plan's batches as lists of ``(index, epoch, real)`` keys."""

    def __init__(self, loader: "TorchImageLoader"):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.plan) - self.loader.start_batch

    def __iter__(self):
        plan = self.loader.plan
        for k in range(self.loader.start_batch, len(plan)):
            indices, real = plan.batch(k)
            yield [(int(i), plan.epoch, j < real) for j, i in enumerate(indices)]


def _collate(items: list[_Item], img_size: int, decode: str):
    kept = [it for it in items if it.data is not None]
    skipped = sum(1 for it in items if it.data is None and it.real)
    labels = torch.tensor([it.label for it in kept], dtype=torch.int64)
    indices = torch.tensor([it.index for it in kept], dtype=torch.int64)
    num_real = sum(1 for it in kept if it.real)
    if decode == "device":
        data = [torch.frombuffer(bytearray(it.data), dtype=torch.uint8) for it in kept]
    elif kept:
        data = torch.from_numpy(np.stack([it.data for it in kept]))
    else:
        data = torch.empty((0, img_size, img_size, 3), dtype=torch.uint8)
    return data, labels, indices, num_real, skipped


def _worker_context():
    """``fork`` (fast start) unless DALI is loaded: its thread pools hold locks that a
    forked child inherits and can wait on forever, so then ``forkserver``, whose server
    process imports this module (torch, PIL) once: its workers fork from it in well under
    a second, where each would otherwise import torch itself (about 6 s on 2 cores, 12-15 s
    for a 2-worker loader)."""
    if "nvidia.dali" not in sys.modules:
        return "fork"
    ctx = multiprocessing.get_context("forkserver")
    # no effect once the server runs; the last one makes the server ignore SIGTERM (worker_signals)
    ctx.set_forkserver_preload(["__main__", __name__, "tdsa_fast.data.forkserver_signals"])
    return ctx


class TorchImageLoader(ImageLoader):
    """The PyTorch loader (see the module docstring); arguments as
    :class:`~tdsa_fast.data.batch.ImageLoader`, plus ``decode``.  ``workers`` worker
    processes (kept across epochs) or the main process with ``workers=0``."""

    kind = "torch"

    def __init__(self, samples, *, decode: str = "pil", **kwargs):
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {decode!r}; valid modes: {', '.join(DECODE_MODES)}")
        self.decode = decode
        super().__init__(samples, **kwargs)
        self._loader = _Loader(
            _PlanDataset(self),
            batch_sampler=_PlanBatches(self),
            num_workers=self.workers,
            collate_fn=functools.partial(_collate, img_size=self.img_size, decode=decode),
            pin_memory=self.device.type == "cuda" and decode == "pil",
            persistent_workers=self.workers > 0,
            multiprocessing_context=_worker_context() if self.workers > 0 else None,
            worker_init_fn=ignore_stop_signals,  # a stop signal to the process group is the main process's
        )

    def _decode_on_device(self, blobs: list[torch.Tensor], indices: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Decodes, augments and stacks a batch on the device; returns the images
        ``float32 [m, 3, s, s]`` and the positions (into ``blobs``) that were decoded."""
        from torchvision.io import ImageReadMode, decode_jpeg

        jpeg = [k for k, b in enumerate(blobs) if gpu_jpeg_decodable(memoryview(b.numpy()))]
        decoded: dict[int, torch.Tensor] = {}
        if jpeg:
            try:
                for k, img in zip(jpeg, decode_jpeg([blobs[k] for k in jpeg], mode=ImageReadMode.RGB,
                                                    device=self.device)):
                    decoded[k] = img
            except RuntimeError:
                pass  # some image of the batch failed: decode the rest one at a time below
        out, kept = [], []
        for k, blob in enumerate(blobs):
            index = int(indices[k])
            img = decoded.get(k)
            if img is None:
                try:
                    img = self._decode_one_on_host(blob, index)
                except BadImageError as e:
                    if not self.skip_bad:
                        raise
                    log.warning("skipping unreadable image: %s", e)
                    continue
            aug = self.augment(index, width=img.shape[-1], height=img.shape[-2])
            out.append(apply_augment_tensor(img, aug, self.img_size, self.recipe))
            kept.append(k)
        s = self.img_size
        images = torch.stack(out) if out else torch.empty((0, 3, s, s), device=self.device)
        return images, kept

    def _decode_one_on_host(self, blob: torch.Tensor, index: int) -> torch.Tensor:
        rgb = decode_rgb(blob.numpy().tobytes(), self.samples[index][0])
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).to(self.device)

    def __iter__(self):
        finish = functools.partial(finish_images, device=self.device, channels_last=self.channels_last,
                                   dtype=self.dtype)
        for data, labels, indices, num_real, skipped in self._loader:
            if self.decode == "device":
                images, kept = self._decode_on_device(data, indices)
                if len(kept) != len(data):
                    mask = torch.zeros(len(data), dtype=torch.bool)
                    mask[kept] = True
                    skipped += int((~mask[:num_real]).sum())
                    num_real -= int((~mask[:num_real]).sum())
                    labels, indices = labels[mask], indices[mask]
                images = finish(images, layout="NCHW")
            else:
                images = finish(data, layout="NHWC")
            yield Batch(images, labels.to(self.device, non_blocking=True), num_real, skipped, indices)

    def close(self) -> None:
        self._loader.close()

