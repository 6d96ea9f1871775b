"""Shared helpers of the loader tests (test_torch_loader, test_dali_loader,
test_dali_bad_data): tiny generated images, bad files, draining a loader, a resumed
epoch, the DALI skip-or-fail rule.  Images are made by the tests themselves in tmp_path."""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from tdsa_fast.data.decode import load_rgb

REPO = Path(__file__).resolve().parents[1]
FLOWERS_REAL = REPO / ".." / "shared" / "data" / "flowers102"

#: One grey level of the normalised output ``(x - 127.5) / 127.5``.
LEVEL = 1 / 127.5
#: Slack for float32 rounding when a difference is stated in grey levels.
EPS_LEVELS = 1e-3

#: CI must not skip the DALI tests silently (CI sets CI=true).
IN_CI = bool(os.environ.get("CI"))


def dali_import_error() -> str | None:
    """None when ``nvidia.dali`` imports, else why not."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def require_dali_plugin() -> None:
    """Skips the calling test when the project's DALI plugin (tdsa_fast.data.dali_plugin)
    cannot be built or loaded here, or fails it under CI.  DALI must be importable."""
    from tdsa_fast.data import dali_plugin

    if dali_plugin.load():
        return
    msg = f"the tdsa_fast DALI plugin is not available: {dali_plugin.why_not_loaded() or 'turned off'}"
    if IN_CI:
        pytest.fail(f"{msg}. CI is set, so the plugin must be tested", pytrace=False)
    pytest.skip(msg)


def require_dali() -> None:
    """Skips the calling test, or the calling module when called at its top, when DALI is
    missing; fails instead under CI."""
    err = dali_import_error()
    if err is None:
        return
    msg = (f"NVIDIA DALI is not importable ({err}); install it with `pip install nvidia-dali-cuda130` "
           "to run the DALI tests")
    if IN_CI:
        pytest.fail(f"{msg}. CI is set, so these tests must not be skipped", pytrace=False)
    pytest.skip(msg, allow_module_level=True)


# ---------------------------------------------------------------------------------------
# Images


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``uint8 [h, w, 3]``: smooth colour gradients with a blob and mild noise, so that
    JPEG keeps it close to the pixels and crops / flips visibly change the content."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    blob = np.exp(-(((x - cx) / (0.25 * width)) ** 2 + ((y - cy) / (0.25 * height)) ** 2))
    base = rng.uniform(20, 235, size=3)
    gx, gy = rng.uniform(-120, 120, size=(2, 3))
    a = base + gx * (x / width)[..., None] + gy * (y / height)[..., None] + 90 * blob[..., None] * rng.choice([-1, 1], 3)
    a = a + rng.normal(0, 6, size=a.shape)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def save_jpeg(path: Path, array: np.ndarray, quality: int = 90) -> Path:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)
    return path


def make_jpegs(folder: Path, n: int, *, seed: int = 0, num_classes: int = 5, prefix: str = "img"):
    """``n`` JPEGs of assorted sizes (aspect ratios from 1:2 to 2:1) in ``folder``;
    returns ``[(path, label)]`` with ``label = i % num_classes``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        w, h = int(rng.integers(24, 97)), int(rng.integers(24, 97))
        if max(w, h) > 2 * min(w, h):
            w = min(w, 2 * h)
        p = save_jpeg(folder / f"{prefix}_{i:04d}.jpg", photo_like(rng, w, h))
        samples.append((str(p), i % num_classes))
    return samples


def jpeg_bytes(seed: int = 0, size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_like(np.random.default_rng(seed), *size)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_bad(path: Path, kind: str) -> Path:
    """A bad image file of ``kind``: ``corrupt`` (a JPEG header then garbage),
    ``truncated`` (the first half of a real JPEG), ``empty`` (0 bytes), ``missing``."""
    if kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg, just garbage bytes " * 8)
    elif kind == "truncated":
        data = jpeg_bytes(seed=zlib.crc32(path.name.encode()))  # deterministic, differs per file
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing":
        if path.exists():
            path.unlink()
    else:
        raise ValueError(kind)
    return path


def write_odd_format(folder: Path, kind: str, seed: int = 0) -> Path:
    """A good image in an unusual format: ``png`` (RGB), ``grey`` (an L-mode JPEG),
    ``cmyk`` (a CMYK JPEG), ``exif`` (an RGB JPEG whose EXIF orientation says "rotate 90°":
    decoded as stored, as ``load_rgb`` and torchvision do)."""
    a = photo_like(np.random.default_rng(seed), 52, 40)
    if kind == "png":
        p = folder / f"odd_{seed}.png"
        Image.fromarray(a).save(p, format="PNG")
    elif kind == "grey":
        p = folder / f"grey_{seed}.jpg"
        Image.fromarray(a).convert("L").save(p, format="JPEG", quality=92)
    elif kind == "cmyk":
        p = folder / f"cmyk_{seed}.jpg"
        Image.fromarray(a).convert("CMYK").save(p, format="JPEG", quality=92)
    elif kind == "exif":
        p = folder / f"exif_{seed}.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        Image.fromarray(a).save(p, format="JPEG", quality=92, exif=exif.tobytes())
    else:
        raise ValueError(kind)
    with Image.open(p) as im:
        assert im.mode == {"png": "RGB", "grey": "L", "cmyk": "CMYK", "exif": "RGB"}[kind], (p, im.mode)
        assert kind != "exif" or im.getexif().get(0x0112) == 6
    return p


def reference_test_image(path, img_size: int) -> torch.Tensor:
    """The test transform by hand: ``load_rgb`` -> PIL bilinear resize to ``s x s`` ->
    ``(x - 127.5) / 127.5``, ``float32 [3, s, s]``."""
    a = np.asarray(load_rgb(path).resize((img_size, img_size), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1).sub(127.5).div(127.5)


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between two normalised image tensors, in grey levels."""
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.numel() == 0:
        return 0.0
    return float((a.float() - b.float()).abs().max()) / LEVEL


# ---------------------------------------------------------------------------------------
# Draining a loader


class Epoch(NamedTuple):
    """One epoch of a loader, batches concatenated."""

    images: torch.Tensor    # float32 [n, 3, s, s]
    labels: torch.Tensor    # int64 [n]
    indices: torch.Tensor   # int64 [n]
    real: torch.Tensor      # bool [n]: counted as real (not sharding padding)
    sizes: list             # images per batch
    num_real: list          # Batch.num_real per batch
    skipped: list           # Batch.skipped per batch


def drain(loader, epoch: int | None = None) -> Epoch:
    if epoch is not None:
        loader.set_epoch(epoch)
    images, labels, indices, real, sizes, num_real, skipped = [], [], [], [], [], [], []
    for b in loader:
        n = b.images.shape[0]
        assert b.labels.shape == (n,) and b.indices.shape == (n,), (
            f"batch of {n} images has labels {tuple(b.labels.shape)} and indices {tuple(b.indices.shape)}")
        assert 0 <= b.num_real <= n, f"num_real {b.num_real} outside [0, {n}]"
        images.append(b.images.float().cpu())
        labels.append(b.labels.cpu())
        indices.append(b.indices.cpu())
        real.append(torch.arange(n) < b.num_real)
        sizes.append(n)
        num_real.append(b.num_real)
        skipped.append(b.skipped)
    return Epoch(torch.cat(images), torch.cat(labels), torch.cat(indices), torch.cat(real), sizes, num_real,
                 skipped)


def by_index(ep: Epoch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, images)`` of the epoch's real samples, sorted by sample index."""
    idx = ep.indices[ep.real]
    order = torch.argsort(idx)
    return idx[order], ep.images[ep.real][order]


def check_start_batch_resumes_the_epoch(make, samples, img_size: int) -> None:
    """``set_epoch(e, start_batch=k)`` (a resumed run) on loaders built by ``make(samples,
    **args)``: batches k.. of epoch e exactly as an uninterrupted epoch yields them,
    augmentation and shuffle included; ``len`` stays the epoch's."""
    args = dict(img_size=img_size, train=True, recipe="released", batch_size=4, seed=5)
    with make(samples, **args) as full, make(samples, **args) as part:
        full.set_epoch(2)
        whole = list(full)
        part.set_epoch(2, start_batch=3)
        rest = list(part)
        assert len(part) == len(whole)
        with pytest.raises(ValueError, match="start_batch must be an int in"):
            part.set_epoch(2, start_batch=len(whole) + 1)
    assert len(rest) == len(whole) - 3
    for a, b in zip(rest, whole[3:]):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images) and a.num_real == b.num_real
    # no augmentation, shuffled: the test transform on the training order
    with make(samples, **dict(args, train=False, shuffle=True)) as plain:
        plain.set_epoch(2)
        order = torch.cat([b.indices for b in plain])
    assert torch.equal(order, torch.cat([b.indices for b in whole])), "shuffle=True ignores the epoch's order"
