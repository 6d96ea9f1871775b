"""The device-resident data path (``--loader memory``): decode a split once, keep it on the
training device, augment every batch there with batched tensor ops.

Construction decodes every image of the split once and applies the recipe's deterministic
first step, ``Resize((S, S))`` (Pillow's bilinear arithmetic), keeping the result as one
``uint8 [N, 3, S, S]`` tensor on the loader's device (GPU memory, or RAM on the CPU).
``S`` is ``img_size`` for the released recipe and the test transform, and ``stored_size``
(default ``2 * img_size``) for ``rrc``, whose crop windows are then resampled from the stored
image.  The decode runs through one of the other loaders, with the test transform in dataset
order (``decoder``):

* ``"dali"``: the DALI pipeline (``workers`` threads; the CPU pipeline's fused Pillow resize,
  or nvJPEG and DALI's resize on CUDA), returning the ``uint8`` levels (``levels=True``);
* ``"torch"``: the PyTorch loader, PIL in ``workers`` processes on the CPU, and
  ``torchvision.io.decode_jpeg(device="cuda")`` (nvJPEG) on CUDA;
* ``"auto"``: DALI when it is installed, else torch.

On the CPU with the DALI decoder and the project's DALI operator (the released recipe or the
test transform), the decode is the first epoch instead: construction decodes nothing, and the
first full epoch is the DALI loader's own training (or test) epoch, whose operator also
writes every image's whole resized levels straight into the store; the images that
epoch did not read (other ranks' shares, an epoch left early) are decoded when the next
epoch starts or ``images`` is first read.  That first epoch costs about one DALI epoch
instead of a decode plus an epoch (bench/RESULTS.md); its batches are the DALI loader's,
the same pixels as the stored path's to the bit.  On the CPU the store's pages are faulted in
while the decode runs, by a thread that takes only idle cores (:mod:`tdsa_fast.data.prefault`).

Each batch of the epoch's :class:`~tdsa_fast.data.sharding.ShardPlan` is then a gather from
the stored tensor plus, for training, the augmentation drawn by
:func:`~tdsa_fast.data.augment.draw_augment` from ``(seed, epoch, index)`` -- the same draws as
the DALI and PyTorch loaders, so the three feed the same pixels (within the decoders' grey
level):

* released recipe: the shifted ``s x s`` window with 4-pixel zero padding and the flip are one
  index gather of the ``uint8`` images (exact: cropping and mirroring do not round);
* ``rrc``: each window, scaled to the stored image, is resampled to ``s x s`` with Pillow's
  antialiased bilinear weights as one batched matrix product (the stored image is already a
  resample of the original, so this path is close to, not the same as, the other loaders');

then ``(x - 127.5) / 127.5`` in the output dtype, NCHW or ``channels_last``.

Before decoding, the stored tensor's size is compared with ``memory_fraction`` of the device's
free memory (CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable``): a split that does not
fit is refused with a ``ValueError`` that names ``--loader dali``.  With ``cache_dir`` the
decoded tensor is saved there (keyed by the file list with sizes and modification times, the
stored size and the decoder) and the next run with the same key loads it instead of
decoding.  Unreadable images: a :class:`~tdsa_fast.data.decode.BadImageError` naming the file
at construction (in the first epoch when that epoch decodes), or with ``skip_bad`` left out of
every batch and counted in ``Batch.skipped``, as the other loaders do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from tdsa_fast import _backend
from tdsa_fast._checks import int_at_least

from tdsa_fast.data.augment import PAD, finish_images, pil_bilinear_weights
from tdsa_fast.data.batch import Batch, ImageLoader
from tdsa_fast.data.decode import BadImageError, dali_available, load_rgb
from tdsa_fast.data.prefault import IdlePrefault

__all__ = ["MemoryImageLoader", "DECODERS", "shifted_windows", "stored_bytes", "free_memory", "fits_in_memory",
           "DEFAULT_MEMORY_FRACTION"]

log = logging.getLogger(__name__)

DECODERS = ("auto", "dali", "torch")
#: The share of the device's free memory the stored split may take (``--loader auto`` uses
#: the memory path only below it, ``--loader memory`` refuses above it).
DEFAULT_MEMORY_FRACTION = 0.5
_DECODE_BATCH = 64
_CACHE_VERSION = 1


def stored_size_for(img_size: int, recipe: str, train: bool, stored_size: Optional[int]) -> int:
    """The side ``S`` of the stored images: ``img_size``, or for ``rrc`` training
    ``stored_size`` (default ``2 * img_size``)."""
    if train and recipe == "rrc":
        return int(stored_size) if stored_size is not None else 2 * img_size
    return img_size


def stored_bytes(num_images: int, size: int) -> int:
    """Bytes of the stored ``uint8 [num_images, 3, size, size]`` tensor."""
    return int(num_images) * 3 * int(size) * int(size)


def free_memory(device) -> int:
    """Free bytes of ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` of
    ``/proc/meminfo`` (else the free physical pages) on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def fits_in_memory(num_images: int, size: int, device, fraction: float = DEFAULT_MEMORY_FRACTION) -> bool:
    """Whether the stored split takes at most ``fraction`` of the device's free memory."""
    return stored_bytes(num_images, size) <= fraction * free_memory(device)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _resolve_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid decoders: {', '.join(DECODERS)}")
    if decoder == "auto":
        return "dali" if dali_available() else "torch"
    if decoder == "dali" and not dali_available():
        raise ValueError("decoder='dali': NVIDIA DALI is not installed (pip install '.[dali]')")
    return decoder


def _decoder_name(decoder: str, device: torch.device) -> str:
    """What actually decodes, for the cache key and the log: e.g. ``dali-cuda``, ``torch-cpu``."""
    return f"{decoder}-{device.type}"


def _cache_key(samples, size: int, decoder: str) -> str:
    """sha256 of the file list (path, size, mtime of each), the stored size and the decoder."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(version=_CACHE_VERSION, size=size, decoder=decoder)).encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{path}\0{int(label)}\0{stamp}".encode())
    return h.hexdigest()


def _store(stored: torch.Tensor, indices: torch.Tensor, images: torch.Tensor) -> None:
    """``stored[indices] = images`` for a decoded batch: ``uint8`` levels as they are, or the
    ``float32`` ``(v - 127.5) / 127.5`` of integer levels ``v`` turned back into them (exactly);
    one slice copy when ``indices`` are consecutive (the decode reads the split, or the images
    a first epoch left, in order)."""
    if images.dtype != torch.uint8:
        images = images.mul(127.5).add_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    if len(indices) and int(indices[-1]) - int(indices[0]) + 1 == len(indices):
        stored[int(indices[0]):int(indices[-1]) + 1].copy_(images)
    else:
        stored[indices.to(stored.device)] = images.to(stored.device)


def shifted_windows(images: torch.Tensor, idx, tops, lefts, flips, how: str = "gather") -> torch.Tensor:
    """The released recipe's crops: for each ``j``, the ``s x s`` window of
    ``images[idx[j]]`` (``uint8 [N, 3, s, s]``) whose corner is ``(tops[j], lefts[j])`` (in
    ``[-4, 4]``; zeros outside the image), mirrored when ``flips[j]`` -> ``uint8 [n, 3, s, s]``.

    ``how="gather"``: one indexing kernel over the zero-padded batch (the CUDA path: no launch
    per image); ``"slices"``: a copy of each window's part inside the image (what the CPU path,
    :func:`finished_windows`, does straight into the float batch).  The two give the same tensor."""
    n, s, dev = len(idx), images.shape[-1], images.device
    if how not in ("gather", "slices"):
        raise ValueError(f"how must be 'gather' or 'slices', got {how!r}")
    if n == 0:  # every image of the batch skipped as unreadable
        return images.new_zeros((0, 3, s, s))
    if how == "gather":
        ar = torch.arange(s, device=dev)
        rows = torch.as_tensor(tops, device=dev)[:, None] + PAD + ar                 # [n, s]
        cols = torch.as_tensor(lefts, device=dev)[:, None] + PAD + ar
        cols = torch.where(torch.as_tensor(flips, device=dev)[:, None], cols.flip(-1), cols)
        padded = torch.nn.functional.pad(images[torch.as_tensor(idx, device=dev)], (PAD,) * 4)
        return padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]
    return _paste_windows(torch.zeros((n, 3, s, s), dtype=images.dtype), images, idx, tops, lefts, flips)


def _paste_windows(out: torch.Tensor, images: torch.Tensor, idx, tops, lefts, flips) -> torch.Tensor:
    """Copies each window's part inside its image into ``out`` ``[n, 3, s, s]`` (zeros
    elsewhere, in ``out``'s dtype: a float ``out`` converts the levels in the same copy)."""
    s = images.shape[-1]
    for j, (i, top, left, flip) in enumerate(zip(idx, tops, lefts, flips)):
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, s), min(left + s, s)
        if y0 >= y1 or x0 >= x1:  # a shift past the whole image (s < 4): zeros only
            continue
        window = images[int(i), :, y0:y1, x0:x1]
        if flip:  # the mirrored window sits mirrored in the output too
            out[j, :, y0 - top:y1 - top, s - (x1 - left):s - (x0 - left)].copy_(window.flip(-1))
        else:
            out[j, :, y0 - top:y1 - top, x0 - left:x1 - left].copy_(window)
    return out


def finished_windows(images: torch.Tensor, idx, tops, lefts, flips, *, channels_last: bool,
                     dtype: torch.dtype) -> torch.Tensor:
    """``finish_images(shifted_windows(...))`` for CPU ``images``, bitwise, with the windows
    pasted straight into the float32 batch (one pass fewer over it): ``[n, 3, s, s]``
    ``dtype`` in ``[-1, 1]``, ``channels_last`` or contiguous."""
    n, s = len(idx), images.shape[-1]
    x = _paste_windows(torch.zeros((n, 3, s, s), dtype=torch.float32), images, idx, tops, lefts, flips)
    return finish_images(x, device=images.device, channels_last=channels_last, dtype=dtype, layout="NCHW")


def cpu_windows(images: torch.Tensor, idx, tops, lefts, flips, *, channels_last: bool,
                dtype: torch.dtype) -> torch.Tensor:
    """:func:`finished_windows`, bitwise: the compiled op ``tdsa_fast::released_windows``
    (each window read once and written once, in ``dtype``, the images in parallel) when it is
    built, else the Python path."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and _backend.fused_available("cpu", "released_windows"):
        as_long = lambda v: torch.as_tensor(np.asarray(v, dtype=np.int64))  # noqa: E731
        return torch.ops.tdsa_fast.released_windows(images, as_long(idx), as_long(tops), as_long(lefts),
                                                    torch.as_tensor(np.asarray(flips, dtype=bool)), dtype,
                                                    channels_last)
    return finished_windows(images, idx, tops, lefts, flips, channels_last=channels_last, dtype=dtype)


class MemoryImageLoader(ImageLoader):
    """The device-resident loader (see the module docstring); arguments as
    :class:`~tdsa_fast.data.batch.ImageLoader` (``workers``: the decoder's processes or
    threads), plus ``decoder`` (``auto``/``dali``/``torch``), ``stored_size`` (``rrc`` only,
    default ``2 * img_size``), ``cache_dir`` (None: no cache) and ``memory_fraction``.

    Attributes: ``images`` ``uint8 [N, 3, S, S]`` and ``labels`` ``int64 [N]`` on the device,
    ``bad`` ``bool [N]`` on the CPU (unreadable images, only with ``skip_bad``) -- reading
    ``images`` or ``bad`` while the first epoch is still to decode decodes the rest first --,
    ``decode_seconds`` (the time spent decoding, or producing the first epoch's batches when it
    decodes; 0 when loaded from the cache), ``decodes_first_epoch`` (whether the first epoch
    decodes), ``cache_path``.

    Raises:
        ValueError: a bad ``decoder``, ``stored_size`` or ``memory_fraction``, or a split
            that does not fit (the message names ``--loader dali``).
        BadImageError: an unreadable image without ``skip_bad`` (at construction, or from
            the first epoch when it decodes).
    """

    kind = "memory"

    def __init__(self, samples, *, decoder: str = "auto", stored_size: Optional[int] = None,
                 cache_dir=None, memory_fraction: float = DEFAULT_MEMORY_FRACTION, **kwargs):
        super().__init__(samples, **kwargs)
        if stored_size is not None:
            int_at_least("stored_size", stored_size)
        if not isinstance(memory_fraction, (int, float)) or not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        self.decoder = _resolve_decoder(decoder)
        self.stored_size = stored_size_for(self.img_size, self.recipe, self.train, stored_size)
        self.memory_fraction = float(memory_fraction)
        self._check_fits()
        n, s = len(self.samples), self.stored_size
        name = _decoder_name(self.decoder, self.device)
        self.cache_path = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / f"memory-{_cache_key(self.samples, s, name)[:32]}.pt"
        self.decode_seconds = 0.0
        self._prefault: Optional[IdlePrefault] = None
        self.labels = torch.tensor([int(label) for _, label in self.samples], dtype=torch.int64, device=self.device)
        self._seen: Optional[np.ndarray] = None  # while the first epoch decodes: the images stored so far
        self._known_bad: set[int] = set()
        self._closed = False
        cached = self._load_cache(n, s) if self.cache_path is not None and self.cache_path.is_file() else None
        self.decodes_first_epoch = cached is None and self._can_decode_in_first_epoch()
        if cached is not None:
            self._keep(*cached)
        elif self.decodes_first_epoch:
            self._images = self._empty_store(n, s)
            self._seen = np.zeros(n, dtype=bool)
        else:
            t0 = time.perf_counter()
            stored = self._empty_store(n, s)
            seen = self._decode_into(stored, np.arange(n), np.zeros(n, dtype=bool))
            self._stop_prefault()
            self.decode_seconds = time.perf_counter() - t0
            self._keep(stored, *self._bad_and_reasons(stored, seen), save=True)
        self._sizes = self._original_sizes() if self.train and self.recipe == "rrc" else None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MemoryImageLoader is closed: its stored split was freed; build a new loader "
                               "(with cache_dir, the next one starts from the cached split)")

    @property
    def images(self) -> torch.Tensor:
        """``uint8 [N, 3, S, S]`` on the device: the stored split (decoded in full first)."""
        self._check_open()
        self._complete()
        return self._images

    @property
    def bad(self) -> torch.Tensor:
        """``bool [N]`` on the CPU: the unreadable images (decoded in full first)."""
        self._check_open()
        self._complete()
        return self._bad

    # --- building the stored tensor ---------------------------------------------------------

    def _check_fits(self) -> None:
        need = stored_bytes(len(self.samples), self.stored_size)
        free = free_memory(self.device)
        if need > self.memory_fraction * free:
            raise ValueError(
                f"--loader memory: the split's {len(self.samples)} images at {self.stored_size}x{self.stored_size} "
                f"take {_gib(need)}, more than {self.memory_fraction:g} of the {self.device.type} device's free "
                f"{_gib(free)}; use --loader dali (or --loader torch), which decode every batch")

    def _empty_store(self, n: int, s: int) -> torch.Tensor:
        """The uninitialised ``uint8 [n, 3, s, s]`` store; on the CPU its pages are faulted in
        by an idle-priority thread while the decode runs (:mod:`tdsa_fast.data.prefault`)."""
        stored = torch.empty((n, 3, s, s), dtype=torch.uint8, device=self.device)
        self._prefault = IdlePrefault(stored)  # does nothing for a CUDA tensor
        return stored

    def _stop_prefault(self) -> None:
        if self._prefault is not None:
            self._prefault.stop()
            self._prefault = None

    def _can_decode_in_first_epoch(self) -> bool:
        """The first epoch is the DALI loader's, storing its operator's whole resized images:
        the DALI decoder on the CPU, the operator available, and a recipe whose stored image
        is that resize (not ``rrc`` training)."""
        if self.decoder != "dali" or self.device.type != "cpu" or (self.train and self.recipe == "rrc"):
            return False
        from tdsa_fast.data import dali_plugin

        return dali_plugin.load()

    def _keep(self, stored: torch.Tensor, bad: np.ndarray, reasons: dict, save: bool = False) -> None:
        """Takes the decoded split (saved to the cache when ``save``); raises the first
        unreadable image without ``skip_bad``."""
        if save and self.cache_path is not None:
            self._save_cache(stored, bad, reasons)
        if bad.any() and not self.skip_bad:
            i = int(np.flatnonzero(bad)[0])
            raise BadImageError.for_file(self.samples[i][0], reasons.get(i, "unreadable"))
        self._images = stored.to(self.device)
        self._bad = torch.from_numpy(bad)

    def _bad_and_reasons(self, stored: torch.Tensor, seen: np.ndarray) -> tuple[np.ndarray, dict]:
        """The images never stored are the unreadable ones: their rows zeroed, and why."""
        bad = ~seen
        if bad.any():
            stored[torch.from_numpy(np.flatnonzero(bad)).to(stored.device)] = 0
        return bad, {int(i): self._reason(int(i)) for i in np.flatnonzero(bad)}

    def _complete(self) -> None:
        """After a first epoch that decoded: decodes the images it did not store (bar those it
        found unreadable) and takes the split."""
        if self._seen is None:
            return
        self._stop_prefault()
        seen, self._seen = self._seen, None
        try:
            todo = np.setdiff1d(np.flatnonzero(~seen), sorted(self._known_bad))
            if len(todo):
                t0 = time.perf_counter()
                seen = self._decode_into(self._images, todo, seen)
                self.decode_seconds += time.perf_counter() - t0
            self._keep(self._images, *self._bad_and_reasons(self._images, seen), save=True)
        except BaseException:
            self._seen = seen  # still to complete, e.g. after a BadImageError without skip_bad
            raise

    def _decoding_epoch(self):
        """The first epoch, decoding: the DALI loader's epoch (same plan and draws), whose
        operator writes each image's whole resized levels straight into the store; an image
        counts as stored once its batch is yielded."""
        from tdsa_fast.data.dali_loader import DaliImageLoader

        with DaliImageLoader(self.samples, **self.options, fused_resize=True, store=self._images) as dali:
            dali.set_epoch(self.plan.epoch)
            batches = iter(dali)
            log.info("--loader memory: decoding %d images to %dx%d in the first epoch (%s)", len(self.samples),
                     self.stored_size, self.stored_size, _gib(stored_bytes(len(self.samples), self.stored_size)))
            try:
                while True:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    self._check_open()  # closed while the epoch was suspended
                    self.decode_seconds += time.perf_counter() - t0
                    if batch is None:
                        break
                    self._seen[batch.indices.numpy()] = True
                    yield batch
            finally:
                self._known_bad |= dali.known_bad

    def _decode_into(self, stored: torch.Tensor, indices: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Decodes images ``indices`` (in that order) into ``stored`` (``uint8 [N, 3, s, s]``
        on the device); returns ``seen`` with those stored marked (the unreadable ones left
        out with ``skip_bad``)."""
        s = stored.shape[-1]
        samples = [self.samples[int(i)] for i in indices]
        if self.decoder == "dali":
            from tdsa_fast.data.dali_loader import DaliImageLoader as Decoding
        else:
            from tdsa_fast.data.torch_loader import TorchImageLoader as Decoding
        if self.decoder == "torch":
            extra = {"decode": "device" if self.device.type == "cuda" else "pil"}
        else:
            extra = {"levels": True}  # uint8 batches: stored as they come
        n = len(samples)
        seen = seen.copy()
        done, t0, next_report = 0, time.perf_counter(), 0.1
        log.info("--loader memory: decoding %d images to %dx%d (%s decoder, %s)", n, s, s, self.decoder,
                 _gib(stored_bytes(n, s)))
        with Decoding(samples, img_size=s, train=False, batch_size=_DECODE_BATCH,
                      workers=self.workers, device=self.device, skip_bad=self.skip_bad, dtype=torch.float32,
                      **extra) as decoding:
            for batch in decoding:
                where = torch.from_numpy(indices[batch.indices.numpy()])
                _store(stored, where, batch.images)
                seen[where.numpy()] = True
                done += _DECODE_BATCH
                if done >= next_report * n:
                    rate = min(done, n) / max(time.perf_counter() - t0, 1e-9)
                    log.info("--loader memory: decoded %d/%d images (%.0f img/s)", min(done, n), n, rate)
                    next_report += 0.1
        return seen

    def _reason(self, index: int) -> str:
        """Why image ``index`` is unreadable (the decoder only logged it): PIL's message."""
        try:
            load_rgb(self.samples[index][0])
        except BadImageError as e:
            return e.reason or str(e)
        return "the decoder could not read it"

    def _load_cache(self, n: int, s: int) -> Optional[tuple[torch.Tensor, np.ndarray, dict]]:
        """The cached split; None (with a warning) when the file cannot be read or does not hold
        this split's tensors (cut short, damaged, foreign): the split is decoded again and the
        cache rewritten."""
        try:
            data = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            stored, bad = data["images"], data["bad"]
            reasons = {int(k): str(v) for k, v in json.loads(data["reasons"]).items()}
            if tuple(stored.shape) != (n, 3, s, s) or stored.dtype != torch.uint8 or tuple(bad.shape) != (n,):
                raise ValueError(f"it holds {tuple(stored.shape)} {stored.dtype} images and {tuple(bad.shape)} flags, "
                                 f"not uint8 {(n, 3, s, s)} and ({n},)")
        except Exception as e:  # a derived file: any fault means decoding again, never training on it
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("--memory-cache: %s cannot be used (%s): decoding the split again", self.cache_path, why)
            return None
        log.info("--loader memory: %d images loaded from the cache %s", n, self.cache_path)
        return stored, bad.numpy().astype(bool), reasons

    def _save_cache(self, stored: torch.Tensor, bad: np.ndarray, reasons: dict) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
        torch.save(dict(images=stored.cpu(), bad=torch.from_numpy(bad), reasons=json.dumps(reasons)), tmp)
        os.replace(tmp, self.cache_path)  # a crash mid-write leaves no half cache under the key
        log.info("--loader memory: decoded split cached in %s", self.cache_path)

    def _original_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image as decoded (``rrc`` draws its windows from them)."""
        sizes = []
        for i, (path, _) in enumerate(self.samples):
            if self._bad[i]:
                sizes.append((1, 1))
                continue
            with Image.open(path) as im:
                sizes.append(im.size)
        return sizes

    # --- batches ----------------------------------------------------------------------------

    def _draws(self, idx: np.ndarray) -> tuple[list, list, list]:
        """The released recipe's (tops, lefts, flips) of images ``idx`` this epoch."""
        augs = [self.augment(int(i)) for i in idx]
        return [a.box[0] for a in augs], [a.box[1] for a in augs], [a.flip for a in augs]

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        return finish_images(images, device=self.device, channels_last=self.channels_last, dtype=self.dtype,
                             layout="NCHW")

    def _released(self, idx: np.ndarray) -> torch.Tensor:
        """The finished batch of the shifted windows (zero fill) of the stored images, flipped
        where drawn: on CUDA one gather, on the CPU :func:`cpu_windows`."""
        tops, lefts, flips = self._draws(idx)
        if self.device.type == "cpu":
            return cpu_windows(self._images, idx, tops, lefts, flips, channels_last=self.channels_last,
                               dtype=self.dtype)
        return self._finish(shifted_windows(self._images, idx, tops, lefts, flips, how="gather"))

    def _rrc(self, idx: np.ndarray) -> torch.Tensor:
        """``float32 [n, 3, s, s]`` with integer values: each drawn window (in the original
        image's pixels) scaled to the stored image and resampled with Pillow's weights."""
        s, big, dev = self.img_size, self.stored_size, self.device
        if len(idx) == 0:  # every image of the batch skipped as unreadable
            return torch.zeros((0, 3, s, s), dtype=torch.float32, device=dev)
        wys, wxs, flips = [], [], []
        for i in idx:
            width, height = self._sizes[int(i)]
            aug = self.augment(int(i), width=width, height=height)
            top, left, h, w = aug.box
            sy, sx = big / height, big / width
            wys.append(pil_bilinear_weights(big, top * sy, h * sy, s, dev))
            wxs.append(pil_bilinear_weights(big, left * sx, w * sx, s, dev))
            flips.append(aug.flip)
        x = self._images[torch.as_tensor(idx, device=dev)].to(torch.float32)       # [n, 3, S, S]
        wy, wx = torch.stack(wys)[:, None], torch.stack(wxs)[:, None]            # [n, 1, s, S]
        x = torch.matmul(torch.matmul(wy, x), wx.transpose(-1, -2)).add_(0.5).floor_().clamp_(0, 255)
        flip = torch.tensor(flips, device=dev)[:, None, None, None]
        return torch.where(flip, x.flip(-1), x)

    def __iter__(self):
        self._check_open()
        if self._seen is not None and self.start_batch == 0:
            yield from self._decoding_epoch()
            self._complete()
            return
        self._complete()
        plan = self.plan
        for k in range(self.start_batch, len(plan)):
            self._check_open()
            indices, real = plan.batch(k)
            keep = ~self._bad[torch.from_numpy(indices)].numpy()
            skipped = int((~keep[:real]).sum())
            num_real = real - skipped
            indices = indices[keep]
            if not self.train and self.device.type == "cpu":
                n = len(indices)
                images = cpu_windows(self._images, indices, [0] * n, [0] * n, [False] * n,
                                     channels_last=self.channels_last, dtype=self.dtype)
            elif not self.train:
                images = self._finish(self._images[torch.as_tensor(indices, device=self.device)])
            elif self.recipe == "rrc":
                images = self._finish(self._rrc(indices))
            else:
                images = self._released(indices)
            index_t = torch.from_numpy(indices)
            yield Batch(images, self.labels[index_t.to(self.device)], num_real, skipped, index_t)

    def close(self) -> None:
        self._closed = True
        self._stop_prefault()
        self._seen = None  # nothing left to decode
        s = self.stored_size  # the stored split is freed with the loader, not at exit (a view would keep it)
        self._images = torch.empty((0, 3, s, s), dtype=torch.uint8, device=self.device)
