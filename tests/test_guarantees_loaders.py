"""What both loaders promise to agree on (docs/guarantees.md): one pixel limit, read from the
header before decoding (the same error, or the same skip, in both), and one rule for
transparent images (composited onto white), within one grey level of each other. On real
files, for the PyTorch loader (both decode modes) and the DALI CPU pipeline."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tdsa_fast.data.images import MAX_IMAGE_PIXELS, BadImageError
from tdsa_fast.data.loading import build_loader
from loader_helpers import dali_import_error, drain, levels, photo_like, reference_test_image, save_jpeg

S = 24
# (loader, build_loader options); DALI's row is skipped without DALI, and fails instead under CI
LOADERS = [("torch", {}), ("torch", {"decode": "device"}),
           pytest.param("dali", {}, marks=pytest.mark.skipif(
               dali_import_error() is not None and not __import__("os").environ.get("CI"),
               reason="NVIDIA DALI is not installed (the dali extra)"))]
IDS = ["torch-pil", "torch-device", "dali"]


def _loader(kind: str, options: dict, samples, skip_bad: bool):
    return build_loader(samples, loader=kind, img_size=S, train=False, batch_size=4, skip_bad=skip_bad,
                        **options)


def _patched_jpeg(path, width: int, height: int):
    """A small real JPEG whose SOF header claims ``width x height`` pixels (a decompression
    bomb's header on 2 KB of data)."""
    save_jpeg(path, photo_like(np.random.default_rng(0), 40, 30))
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind, options", LOADERS, ids=IDS)
@pytest.mark.parametrize("side", [20000, 9500], ids=["above-pillows-error", "above-the-limit-only"])
def test_an_image_over_the_pixel_limit_is_refused_or_skipped_by_both_loaders(kind, options, side, tmp_path):
    assert side * side > MAX_IMAGE_PIXELS
    good = save_jpeg(tmp_path / "good.jpg", photo_like(np.random.default_rng(1), 40, 30))
    bomb = _patched_jpeg(tmp_path / "bomb.jpg", side, side)
    samples = [(str(good), 0), (str(bomb), 1), (str(good), 0)]
    with pytest.raises(BadImageError, match=r"bomb\.jpg: too large: .*more than the limit of 89,478,485 pixels"):
        with _loader(kind, options, samples, skip_bad=False) as loader:
            drain(loader)
    with _loader(kind, options, samples, skip_bad=True) as loader:
        ep = drain(loader)
    assert sum(ep.skipped) == 1 and ep.indices.tolist() == [0, 2], (ep.skipped, ep.indices)


def _transparent(path, mode: str):
    """A half-transparent image of ``mode`` (RGBA, LA, or P with a transparent palette entry):
    a photo whose left half is fully transparent and whose right half is 50 % opaque, with
    dark colours under the transparency, so that dropping the alpha is far from compositing."""
    rgb = photo_like(np.random.default_rng(2), 32, 24) // 3
    alpha = np.full(rgb.shape[:2], 128, dtype=np.uint8)
    alpha[:, :16] = 0
    if mode == "RGBA":
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(path)
    else:  # P: a 16-colour palette whose entry 0 is transparent, used on the left half
        im = Image.fromarray(rgb).quantize(16)
        idx = np.asarray(im).copy()
        idx[:, :16] = 0
        pal = Image.fromarray(idx, "P")
        pal.putpalette(im.getpalette())
        pal.save(path, transparency=0)
    with Image.open(path) as im:
        assert im.mode == mode and (mode != "P" or "transparency" in im.info)
    return path


@pytest.mark.parametrize("kind, options", LOADERS, ids=IDS)
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_images_are_composited_onto_white_by_both_loaders(kind, options, mode, tmp_path):
    path = _transparent(tmp_path / f"t_{mode}.png", mode)
    with _loader(kind, options, [(str(path), 0)], skip_bad=False) as loader:
        got = drain(loader).images[0]
    want = reference_test_image(path, S)  # load_rgb: onto white
    assert levels(got, want) <= 1.0, f"{kind}: {levels(got, want):.1f} grey levels from the composited image"
    assert float(want[:, :, : S // 2 - 1].min()) == 1.0  # the transparent half is white
