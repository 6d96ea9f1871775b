"""The NVIDIA DALI data path (``--loader dali``; the default when DALI is installed).

The main process reads each batch's files (the plan of :mod:`tdsa_fast.data.sharding`)
and feeds their bytes, with the augmentation drawn by
:func:`~tdsa_fast.data.augment.draw_augment`, into a DALI pipeline through
``external_source``:

    decode (``device="mixed"``: nvJPEG on CUDA; ``"cpu"`` with ``device_id=None``; EXIF
    orientation not applied, as PIL)
    -> resize to ``s x s`` (bilinear, antialiased; for ``rrc`` the crop window's box)
    -> released recipe: the shifted ``s x s`` window, zero fill outside
    -> flip, ``(x - 127.5) / 127.5``, CHW or HWC, fp32/fp16

On the CPU the three steps after decoding are one pass of the project's DALI operator
``tdsa_resample_window`` (:mod:`tdsa_fast.data.dali_plugin`: Pillow's bilinear arithmetic,
so the same pixels as the PyTorch fallback up to the decoders' rounding); on the GPU, or
when the plugin cannot be built, they are DALI's ``resize`` and ``crop_mirror_normalize``.

The pipeline keeps ``prefetch`` batches in flight, so decoding overlaps the training step.

Bad data: a missing or empty file, a header Pillow cannot read, and an image of more than
:data:`~tdsa_fast.data.decode.MAX_IMAGE_PIXELS` pixels are caught before DALI sees them;
a transparent image is composited onto white by Pillow (as the PyTorch loader does) and fed
as an RGB PNG.  When DALI fails on a
batch (corrupt or truncated JPEG, unknown format...), the batch's files are checked one by
one (PIL, then DALI alone) to name the culprit: it raises :class:`BadImageError` naming the
file, or with ``skip_bad`` is dropped and counted, the pipeline rebuilt and the epoch
continued from that batch.  Files found bad are remembered and skipped in later epochs.
"""
from __future__ import annotations

import io
import logging
from collections import deque
from typing import NamedTuple, Optional

import numpy as np
import torch

from tdsa_fast.data.batch import Batch, ImageLoader
from tdsa_fast.data.decode import BadImageError, decode_rgb, load_rgb, read_header, read_image_bytes

__all__ = ["DaliImageLoader"]

log = logging.getLogger(__name__)


# The pipeline's inputs: (DALI type name, ndim) per sample.
_FEED_TYPES = {"encoded": ("UINT8", 1), "roi_start": ("FLOAT", 1), "roi_end": ("FLOAT", 1), "size": ("FLOAT", 1),
               "pad_pos": ("FLOAT", 1), "mirror": ("INT32", 0), "window": ("FLOAT", 1)}


class _Fed(NamedTuple):
    """A batch handed to the pipeline (or an empty one that was not)."""

    k: int
    indices: np.ndarray  # the images fed, in order
    labels: np.ndarray
    num_real: int
    skipped: int


def _window_roi(box, s: int) -> tuple[np.ndarray, ...]:
    """For the released recipe's window ``box = (top, left, s, s)`` of the ``s x s`` resized
    image: the part inside the image as a relative ROI ``(start, end)`` (y, x), its size in
    output pixels, and where crop_mirror_normalize must put the padding (``crop_pos``)."""
    top, left = box[0], box[1]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, s), min(left + s, s)
    return (np.array([y0 / s, x0 / s], dtype=np.float32), np.array([y1 / s, x1 / s], dtype=np.float32),
            np.array([y1 - y0, x1 - x0], dtype=np.float32),
            np.array([1.0 if top < 0 else 0.0, 1.0 if left < 0 else 0.0], dtype=np.float32))


def _as_rgb_png(data: bytes, path: str) -> bytes:
    """A transparent image decoded (composited onto white) by :func:`decode_rgb`, as the PyTorch
    loader does, and re-encoded as an RGB PNG (lossless): DALI's decoder would drop the alpha."""
    buf = io.BytesIO()
    decode_rgb(data, path).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _plugin_window(aug, recipe: str, store_row: Optional[int] = None) -> np.ndarray:
    """The ``tdsa_resample_window`` parameters of one image: source box (x0, y0, x1, y1;
    x1 = 0: the whole image), the window's corner (top, left) and the flip, and the store row
    when there is a store."""
    box, corner = (0.0, 0.0, 0.0, 0.0), (0.0, 0.0)
    if aug.box is not None and recipe == "rrc":
        top, left, h, w = aug.box
        box = (left, top, left + w, top + h)
    elif aug.box is not None:
        corner = (aug.box[0], aug.box[1])
    row = () if store_row is None else (store_row,)
    return np.array([*box, *corner, 1.0 if aug.flip else 0.0, *row], dtype=np.float32)


# The operator reads a store row from a float32 parameter: exact below 2 ** 24.
_MAX_STORE_ROWS = 1 << 24


class DaliImageLoader(ImageLoader):
    """The DALI loader; arguments as :class:`~tdsa_fast.data.batch.ImageLoader`
    (``workers``: DALI CPU threads, at least 1), plus ``prefetch`` (batches in flight) and
    ``fused_resize`` (the CPU pipeline's ``tdsa_resample_window`` operator: None uses it
    when the plugin builds, True requires it, False uses DALI's resize; never on CUDA) and
    ``levels`` (``uint8`` batches of the 0..255 values, not normalised, whatever ``dtype``
    says: the memory loader's decode) and ``store`` (a contiguous CPU ``uint8 [len(samples),
    3, s, s]`` tensor; CPU operator only: the operator writes each image's whole resized
    levels straight into row ``index`` as it decodes, no later than the batch is yielded, also
    for batches decoded ahead and never yielded; the pipeline holds the tensor as long as it
    may write it).  The memory loader's first epoch fills its store so."""

    kind = "dali"

    def __init__(self, samples, *, prefetch: int = 2, fused_resize: Optional[bool] = None, levels: bool = False,
                 store: Optional[torch.Tensor] = None, **kwargs):
        super().__init__(samples, **kwargs)
        self.prefetch = int(prefetch)
        self.levels = bool(levels)
        self.store = store
        self._out_dtype = torch.uint8 if self.levels else self.dtype
        self.known_bad: set[int] = set()
        self._pipe = None
        if self.device.type == "cuda":
            self._device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        else:
            self._device_id = None
        if fused_resize and self._device_id is not None:
            raise ValueError("fused_resize is the CPU pipeline's operator; the GPU pipeline resizes on the GPU")
        if self._device_id is not None or fused_resize is False:
            self.fused_resize = False
        else:
            from tdsa_fast.data import dali_plugin

            self.fused_resize = dali_plugin.load()
            if fused_resize and not self.fused_resize:
                raise RuntimeError("fused_resize=True but the tdsa_fast DALI plugin is not available: "
                                   + (dali_plugin.why_not_loaded() or "TDSA_FAST_DALI_PLUGIN=0"))
        if store is not None and not (self.fused_resize and (self.recipe != "rrc" or not self.train)):
            raise ValueError("store needs the CPU pipeline's tdsa_resample_window operator and a whole-image "
                             "resize (not the rrc recipe)")
        if store is not None:
            self._check_store(store)

    def _check_store(self, store: torch.Tensor) -> None:
        shape = (len(self.samples), 3, self.img_size, self.img_size)
        if not isinstance(store, torch.Tensor) or store.device.type != "cpu" or store.dtype != torch.uint8 \
                or tuple(store.shape) != shape or not store.is_contiguous():
            got = (f"{store.device.type} {store.dtype} {tuple(store.shape)}"
                   f"{'' if store.is_contiguous() else ' (not contiguous)'}" if isinstance(store, torch.Tensor)
                   else type(store).__name__)
            raise ValueError(f"store must be a contiguous CPU uint8 tensor of shape {shape}, got {got}")
        if len(self.samples) > _MAX_STORE_ROWS:
            raise ValueError(f"store: at most {_MAX_STORE_ROWS} images, got {len(self.samples)}")

    # -- the pipeline ------------------------------------------------------------------
    def _build_pipeline(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self._device_id is not None
        s, train, rrc = self.img_size, self.train, self.recipe == "rrc"
        levels = self.levels
        out_dtype = types.UINT8 if levels else types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        mean, std = (0.0, 1.0) if levels else (127.5, 127.5)
        normalize = dict(mean=[mean] * 3, std=[std] * 3, output_layout="HWC" if self.channels_last else "CHW",
                         dtype=out_dtype)

        @pipeline_def(batch_size=self.batch_size, num_threads=max(1, self.workers), device_id=self._device_id,
                      prefetch_queue_depth=self.prefetch, seed=0, exec_dynamic=True)
        def pipeline():
            names = self._feed_names()
            inputs = fn.external_source(source=self._next_feed, num_outputs=len(names),
                                        dtype=[getattr(types, _FEED_TYPES[n][0]) for n in names],
                                        ndim=[_FEED_TYPES[n][1] for n in names])
            feed = dict(zip(names, inputs))
            # EXIF orientation is not applied (as load_rgb / torchvision); fancy upsampling makes
            # the "mixed" (nvJPEG) decoder upsample chroma as libjpeg-turbo (PIL, DALI CPU) does
            img = fn.decoders.image(feed["encoded"], device="mixed" if gpu else "cpu", output_type=types.RGB,
                                    adjust_orientation=False, jpeg_fancy_upsampling=True)
            if self.fused_resize:
                store = {} if self.store is None else dict(store=self.store.data_ptr(),
                                                             store_rows=self.store.shape[0])
                out = fn.tdsa_resample_window(img, feed["window"], size=s, half=out_dtype == types.FLOAT16,
                                              levels=levels, channels_last=self.channels_last, mean=mean, std=std,
                                              **store)
                return out
            if train and rrc:
                img = fn.resize(img, size=[s, s], roi_start=feed["roi_start"], roi_end=feed["roi_end"],
                                roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=True)
            elif train:
                # The released recipe (resize to s x s, then an s x s window shifted by up to 4
                # pixels, zero outside) in two passes instead of three: resize only the part of
                # the image that the window keeps (a relative ROI: same sampling positions as the
                # full resize), then let crop_mirror_normalize pad it back to s x s on the side
                # the window overhangs (crop_pos 1: pad before, 0: pad after).
                img = fn.resize(img, size=feed["size"], roi_start=feed["roi_start"], roi_end=feed["roi_end"],
                                roi_relative=True, interp_type=types.INTERP_LINEAR, antialias=True)
                return fn.crop_mirror_normalize(img, crop=[s, s], crop_pos_y=feed["pad_pos"][0],
                                                crop_pos_x=feed["pad_pos"][1], out_of_bounds_policy="pad",
                                                fill_values=(0.0 - mean) / std,  # black
                                                mirror=feed["mirror"], **normalize)
            else:
                img = fn.resize(img, size=[s, s], interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.crop_mirror_normalize(img, mirror=feed["mirror"] if train else 0, **normalize)

        pipe = pipeline()
        # The operator writes the store through its address: the pipeline holds the tensor, which
        # is released only after DALI's Pipeline.__del__ has shut the pipeline's threads down.
        pipe._tdsa_store = self.store
        pipe.build()
        return pipe

    # -- feeding -----------------------------------------------------------------------
    def _prepare(self, k: int):
        """Reads batch ``k``'s files; returns ``(_Fed, feed dict)`` (feed is None when
        every image of the batch was skipped)."""
        indices, real = self.plan.batch(k)
        blobs, kept, skipped, kept_real, sizes = [], [], 0, 0, []
        for j, index in enumerate(indices):
            index = int(index)
            path = self.samples[index][0]
            if self.skip_bad and index in self.known_bad:  # without skip_bad: raise again, not drop
                skipped += j < real
                continue
            try:
                data = read_image_bytes(path)
                header = read_header(data, path)  # the loaders' one pixel limit, before DALI decodes
                if header.alpha:
                    data = _as_rgb_png(data, path)
                sizes.append((header.width, header.height))
            except BadImageError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping unreadable image: %s", e)
                self.known_bad.add(index)
                skipped += j < real
                continue
            blobs.append(np.frombuffer(data, dtype=np.uint8))
            kept.append(index)
            kept_real += j < real
        kept_arr = np.asarray(kept, dtype=np.int64)
        fed = _Fed(k, kept_arr, np.asarray([self.samples[i][1] for i in kept], dtype=np.int64), kept_real, skipped)
        if not kept:
            return fed, None
        feed = {"encoded": blobs}
        if self.fused_resize or self.train:
            augs = [self.augment(i, *sizes[n]) for n, i in enumerate(kept)]
        if self.fused_resize:
            rows = kept if self.store is not None else [None] * len(kept)
            feed["window"] = [_plugin_window(a, self.recipe, row) for a, row in zip(augs, rows)]
        elif self.train:
            feed["mirror"] = [np.array(a.flip, dtype=np.int32) for a in augs]
            if self.recipe == "rrc":
                feed["roi_start"] = [np.array([a.box[0], a.box[1]], dtype=np.float32) for a in augs]
                feed["roi_end"] = [np.array([a.box[0] + a.box[2], a.box[1] + a.box[3]], dtype=np.float32)
                                   for a in augs]
            else:
                feed.update(zip(("roi_start", "roi_end", "size", "pad_pos"),
                                zip(*(_window_roi(a.box, self.img_size) for a in augs))))
        return fed, feed

    def _feed_names(self) -> tuple[str, ...]:
        if self.fused_resize:
            return ("encoded", "window")
        if not self.train:
            return ("encoded",)
        if self.recipe == "rrc":
            return ("encoded", "roi_start", "roi_end", "mirror")
        return ("encoded", "roi_start", "roi_end", "size", "pad_pos", "mirror")

    def _next_feed(self):
        """The pipeline's source, called by DALI once per iteration: the next batch that
        has an image left; raises StopIteration at the end of the epoch."""
        while True:
            k = next(self._todo)  # StopIteration ends DALI's epoch
            fed, feed = self._prepare(k)
            self._fed.append(fed)
            if feed is not None:
                return tuple(feed[name] for name in self._feed_names())

    def __iter__(self):
        start = self.start_batch
        while True:
            failed = yield from self._run_from(start)
            if failed is None:
                return
            start = failed

    def _run_from(self, start: int):
        """Yields batches ``start..``; returns None at the end of the epoch, or the batch
        to restart from after a bad image was found and dropped (``skip_bad``)."""
        self._todo = iter(range(start, len(self.plan)))
        self._fed: deque[_Fed] = deque()
        pipe = self._pipe if self._pipe is not None else self._build_pipeline()
        self._pipe = None  # owned by this generator until the epoch ends cleanly
        while True:
            try:
                (images,) = pipe.run()
                out = self._to_torch(images)
            except StopIteration:
                pipe.reset()
                self._pipe = pipe
                while self._fed:  # trailing batches whose every image was skipped
                    yield self._empty_batch(self._fed.popleft())
                return None
            except BadImageError:
                raise  # a missing or empty file, found while reading (skip_bad is off)
            except Exception as err:  # DALI raises RuntimeError; its exact type is not API
                candidates = [f for f in self._fed if len(f.indices)]
                if not candidates:
                    raise  # not a decoding failure: no image was in flight
                del pipe
                bad = self._find_bad(np.concatenate([f.indices for f in candidates]), err)
                if not self.skip_bad:
                    raise bad from None
                log.warning("skipping unreadable image: %s", bad)
                # restart from the first batch not yet yielded, which may be an all-skipped
                # one queued before the failing batch (restarting from the first batch with
                # images would silently drop it, and its skipped count, from the epoch)
                return self._fed[0].k
            while not len(self._fed[0].indices):
                yield self._empty_batch(self._fed.popleft())
            fed = self._fed.popleft()
            labels = torch.from_numpy(fed.labels).to(self.device, non_blocking=True)
            yield Batch(out, labels, fed.num_real, fed.skipped, torch.from_numpy(fed.indices))

    def close(self) -> None:
        """Frees the pipeline (its threads and buffers) now rather than at the next garbage
        collection: it refers back to the loader through its source."""
        self._pipe = None

    def _empty_batch(self, fed: _Fed) -> Batch:
        s = self.img_size
        images = torch.empty((0, 3, s, s), dtype=self._out_dtype, device=self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return Batch(images, torch.empty(0, dtype=torch.int64, device=self.device), 0, fed.skipped,
                     torch.empty(0, dtype=torch.int64))

    def _to_torch(self, images) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = images.as_tensor()
        if self._device_id is None:
            # Zero-copy: with DALI's dynamic executor (exec_dynamic, DALI 2.4's default) an
            # output buffer is reference-counted and not reused while the tensor holds it.  Copying
            # 19 MB per 224 px batch cost the CPU pipeline about a quarter of its throughput.
            out = torch.from_dlpack(dense)
            if self.channels_last:
                out = out.permute(0, 3, 1, 2)
            return out.to(self._out_dtype)
        storage_dtype = torch.uint8 if self.levels else torch.float16 if self.dtype == torch.float16 else torch.float32
        out = torch.empty(dense.shape(), dtype=storage_dtype, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, out, cuda_stream=stream)
        if self.channels_last:
            out = out.permute(0, 3, 1, 2)  # NHWC storage = channels_last NCHW
        return out.to(self._out_dtype)

    # -- naming the bad file -----------------------------------------------------------
    def _find_bad(self, indices: np.ndarray, err: Exception) -> BadImageError:
        """The first of ``indices`` whose file cannot be decoded, as a BadImageError (and
        remembered in ``known_bad``); the DALI error itself when no single file fails."""
        for index in dict.fromkeys(int(i) for i in indices):
            try:
                load_rgb(self.samples[index][0])
            except BadImageError as e:
                self.known_bad.add(index)
                return e
        for index in dict.fromkeys(int(i) for i in indices):
            path = self.samples[index][0]
            reason = _dali_decode_error(path)
            if reason is not None:
                self.known_bad.add(index)
                return BadImageError(f"cannot load image {path}: DALI cannot decode it: {reason}", path=path,
                                     reason=reason)
        raise RuntimeError(f"the DALI pipeline failed on a batch whose files all decode one by one: {err}") from err


def _dali_decode_error(path: str) -> Optional[str]:
    """None if DALI's CPU decoder decodes ``path`` alone, else the first line of its error."""
    from nvidia.dali import fn, pipeline_def, types

    data = np.fromfile(path, dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def single():
        return fn.decoders.image(fn.external_source(name="encoded", dtype=types.UINT8, ndim=1), device="cpu",
                                 output_type=types.RGB, adjust_orientation=False)

    pipe = single()
    pipe.build()
    pipe.feed_input("encoded", [data])
    try:
        pipe.run()
    except Exception as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return next((ln for ln in lines if "rror" in ln and "pipeline" not in ln.lower()), lines[0] if lines else "")
    return None
