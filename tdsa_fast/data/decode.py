"""Reading and decoding image files, with one set of rules for every loader.

* :func:`load_rgb` decodes a file fully and returns an RGB ``PIL.Image``; a missing,
  empty, truncated or corrupt file raises :class:`BadImageError` naming the file.
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set here (if some other code sets it
  globally, PIL pads truncated JPEGs with grey instead of failing; do not).
* :func:`read_header` reads the size from the header and refuses images of more than
  :data:`MAX_IMAGE_PIXELS` before anything is decoded; transparent pixels are composited
  onto white (:func:`decode_rgb`), in every loader.
* :func:`read_image_bytes` reads a file's bytes with the same errors.

A :class:`BadImageError` raised in a DataLoader worker process reaches the main process
as a ``BadImageError`` whose message holds the worker's traceback, including the file
path (PyTorch re-creates the exception from its formatted text).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

__all__ = ["BadImageError", "MAX_IMAGE_PIXELS", "ImageHeader", "read_header", "decode_rgb", "load_rgb",
           "read_image_bytes", "has_alpha", "to_rgb", "gpu_jpeg_decodable",
           "dali_available"]

log = logging.getLogger(__name__)


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
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
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
            return to_rgb(im)
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


def read_image_bytes(path: str) -> bytes:
    """The file's bytes; a missing, unreadable or empty file raises :class:`BadImageError`
    naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadImageError.for_file(path, "file not found")
    except OSError as e:
        reason = f"{type(e).__name__}: {e}"
        raise BadImageError.for_file(path, reason)
    if not data:
        raise BadImageError.for_file(path, "empty file (0 bytes)")
    return data


#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic):
#: 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def gpu_jpeg_decodable(data) -> bool:
    """Whether ``data`` (bytes, or a byte memoryview) is a JPEG that the GPU decoder (nvJPEG through
    ``torchvision.io.decode_jpeg(device="cuda")``) decodes to the colours PIL gives: one or
    three components and no Adobe APP14 segment.  Four-component (CMYK, YCCK) JPEGs and Adobe's,
    whose colour transform nvJPEG may not follow, go to PIL; so does anything this scan of the
    markers up to the frame header cannot read (PIL then names the problem)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return False
        if marker == 0xEE and data[i + 4:i + 9] == b"Adobe":
            return False
        if marker in _SOF_MARKERS:
            return i + 9 < len(data) and data[i + 9] in (1, 3)
        if marker == 0xDA:  # scan data before any frame header
            return False
        i += 2 + length
    return False


def dali_available() -> bool:
    """Whether NVIDIA DALI (its decoders and pipelines) is installed."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True
