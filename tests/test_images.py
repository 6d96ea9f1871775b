"""Image decoding (tdsa_fast.data.decode), and the released recipe's transforms and DataLoader
(bench/released_recipe.py, the benchmarks' baseline).  Bad images are
made in tmp_path by the tests themselves."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from released_recipe import ImageListDataset, collate_skipping, released_recipe_loader, train_transform
from released_recipe import test_transform as eval_transform  # not a test: renamed for pytest
from tdsa_fast.data.decode import BadImageError, load_rgb

REPO = Path(__file__).resolve().parents[1]
FLOWERS_REAL = REPO / ".." / "shared" / "data" / "flowers102"


def px(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img, dtype=np.int32)


def solid_jpeg(path: Path, colour, size=(12, 10), mode="RGB") -> Path:
    Image.new(mode, size, colour).save(path, format="JPEG", quality=95)
    return path


# ---------------------------------------------------------------------------------------
# load_rgb: colour modes


def test_rgb_jpeg(tmp_path):
    img = load_rgb(solid_jpeg(tmp_path / "a.jpg", (200, 100, 50), size=(12, 10)))
    assert img.size == (12, 10)
    a = px(img)
    assert a.shape == (10, 12, 3)
    assert np.abs(a - [200, 100, 50]).max() <= 3


def test_path_may_be_str(tmp_path):
    p = solid_jpeg(tmp_path / "a.jpg", (10, 20, 30))
    assert np.array_equal(px(load_rgb(str(p))), px(load_rgb(p)))


def test_greyscale_jpeg(tmp_path):
    p = solid_jpeg(tmp_path / "g.jpg", 77, mode="L")
    with Image.open(p) as im:
        assert im.mode == "L"
    a = px(load_rgb(p))
    assert a.shape == (10, 12, 3)
    assert np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 1] == a[..., 2])
    assert np.abs(a - 77).max() <= 2


@pytest.mark.parametrize("cmyk,rgb", [((0, 255, 255, 0), (255, 0, 0)),
                                      ((255, 0, 255, 0), (0, 255, 0)),
                                      ((0, 0, 0, 128), (127, 127, 127)),
                                      ((0, 0, 0, 0), (255, 255, 255))])
def test_cmyk_jpeg(tmp_path, cmyk, rgb):
    p = solid_jpeg(tmp_path / "c.jpg", cmyk, mode="CMYK")
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    assert np.abs(px(load_rgb(p)) - rgb).max() <= 6


def test_png_with_alpha_composited_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)    # opaque: kept exactly
    a[0, 1] = (0, 0, 0, 0)         # fully transparent: white
    a[0, 2] = (0, 0, 255, 128)     # half: blended with white
    a[1, :] = (200, 0, 0, 255)
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    out = px(load_rgb(p))
    assert out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    alpha = 128 / 255
    want = np.array([255 * (1 - alpha), 255 * (1 - alpha), 255])
    assert np.abs(out[0, 2] - want).max() <= 1
    assert np.all(out[1] == (200, 0, 0))


def test_greyscale_alpha_png(tmp_path):
    a = np.array([[[50, 255], [50, 0]]], np.uint8)  # LA: opaque grey 50, transparent
    p = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(p)
    out = px(load_rgb(p))
    assert tuple(out[0, 0]) == (50, 50, 50) and tuple(out[0, 1]) == (255, 255, 255)


def test_palette_png(tmp_path):
    im = Image.new("P", (3, 1))
    palette = [255, 0, 0, 0, 128, 0, 1, 2, 3] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.putdata([0, 1, 2])
    p = tmp_path / "p.png"
    im.save(p)
    with Image.open(p) as chk:
        assert chk.mode == "P"
    out = px(load_rgb(p))
    assert out.tolist() == [[[255, 0, 0], [0, 128, 0], [1, 2, 3]]]
    # palette index 1 transparent (tRNS) -> white
    p2 = tmp_path / "pt.png"
    im.save(p2, transparency=1)
    with Image.open(p2) as chk:
        assert chk.mode == "P" and "transparency" in chk.info
    assert px(load_rgb(p2)).tolist() == [[[255, 0, 0], [255, 255, 255], [1, 2, 3]]]


def test_16bit_greyscale_png(tmp_path):
    a = np.array([[0, 32896, 65535]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as chk:
        assert chk.mode.startswith("I")
    assert px(load_rgb(p))[0, :, 0].tolist() == [0, 128, 255]


def test_returned_image_is_independent_of_file(tmp_path):
    p = solid_jpeg(tmp_path / "a.jpg", (1, 2, 3))
    img = load_rgb(p)
    p.unlink()
    assert px(img).shape == (10, 12, 3)  # fully decoded, not lazily tied to the file


# ---------------------------------------------------------------------------------------
# load_rgb: bad files


def _real_jpeg_bytes(tmp_path) -> bytes:
    real = FLOWERS_REAL / "jpg" / "image_00001.jpg"
    if real.is_file():
        return real.read_bytes()
    rng = np.random.default_rng(0)  # a noisy photo-sized image, so half a file is mid-scan
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _assert_bad(path, *fragments):
    with pytest.raises(BadImageError) as e:
        load_rgb(path)
    msg = str(e.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg
    assert e.value.path == str(path)
    return e.value


def test_truncated_jpeg(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = _real_jpeg_bytes(tmp_path)
    good = tmp_path / "good.jpg"
    good.write_bytes(data)
    assert load_rgb(good).mode == "RGB"
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    _assert_bad(half, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_files(tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("definitely not an image\n" * 20)
    _assert_bad(text)
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_bad(noise)
    # a PNG whose IDAT chunk was damaged (PIL checks the CRC)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT") + 6
    data[i] ^= 0xFF
    broken = tmp_path / "broken.png"
    broken.write_bytes(bytes(data))
    _assert_bad(broken)


def test_empty_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    _assert_bad(empty, "empty")
    _assert_bad(tmp_path / "missing.jpg", "not found")
    (tmp_path / "dir.jpg").mkdir()
    _assert_bad(tmp_path / "dir.jpg")


def test_bad_image_error_pickles():
    e = BadImageError("cannot load image /x.jpg: boom", path="/x.jpg", reason="boom")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, BadImageError) and isinstance(e2, RuntimeError)
    assert (str(e2), e2.path, e2.reason) == (str(e), "/x.jpg", "boom")
    assert str(BadImageError("only a message")) == "only a message"  # how DataLoader re-creates it


# ---------------------------------------------------------------------------------------
# Transforms


def test_test_transform_shape_and_values(tmp_path):
    img = Image.new("RGB", (30, 17), (255, 0, 51))
    t = eval_transform(16)
    x = t(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    want = torch.tensor([1.0, -1.0, 51 / 255 * 2 - 1]).view(3, 1, 1).expand(3, 16, 16)
    assert torch.allclose(x, want, atol=1e-6)
    assert torch.equal(t(img), x)  # deterministic


def test_train_transform_released():
    torch.manual_seed(0)
    img = Image.new("RGB", (40, 25), (255, 255, 255))
    t = train_transform(16)
    outs = [t(img) for _ in range(20)]
    for x in outs:
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        assert set(torch.unique(x).tolist()) <= {-1.0, 1.0}  # white, or the zero padding
        assert (x == 1).sum() >= 3 * 12 * 12  # the crop moves by at most 4 px per axis
    # RandomCrop(padding=4) shows the zero border (-1 after normalising) in some draws
    assert any((x == -1).any() for x in outs)
    # the flip: an image with a left/right edge comes out mirrored in some draws
    half = Image.fromarray(np.concatenate([np.zeros((16, 8, 3), np.uint8),
                                           np.full((16, 8, 3), 255, np.uint8)], 1))
    lefts = {float(t(half)[0, 8, 1]) for _ in range(30)}  # column 1, row 8 (inside the crop)
    assert lefts >= {-1.0, 1.0}


def test_train_transform_rrc_and_bad_args():
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    x = train_transform(24, recipe="rrc")(img)
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="released, rrc"):
        train_transform(24, recipe="autoaugment")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="img_size"):
            eval_transform(bad)


# ---------------------------------------------------------------------------------------
# Dataset, collate, loader


COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def make_samples(tmp_path, n=9, bad=()):
    """n small solid JPEGs, label = index % 3; indices in `bad` are corrupt files."""
    samples = []
    for i in range(n):
        p = tmp_path / f"img_{i:03d}.jpg"
        if i in bad:
            p.write_bytes(b"\xff\xd8\xff\xe0 garbage, not a jpeg")
        else:
            solid_jpeg(p, COLOURS[i % 3], size=(10 + i % 5, 12))
        samples.append((str(p), i % 3))
    return samples


def test_dataset_items(tmp_path):
    samples = make_samples(tmp_path, n=3)
    ds = ImageListDataset(samples, eval_transform(8))
    assert len(ds) == 3
    x, y = ds[1]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 1 and type(y) is int
    want = torch.tensor(COLOURS[1], dtype=torch.float32) / 255 * 2 - 1
    assert torch.allclose(x.mean((1, 2)), want, atol=0.03)


def test_dataset_bad_image_raises_or_skips(tmp_path):
    samples = make_samples(tmp_path, n=4, bad={2})
    ds = ImageListDataset(samples, eval_transform(8))
    with pytest.raises(BadImageError, match="img_002.jpg"):
        ds[2]
    skipping = ImageListDataset(samples, eval_transform(8), skip_bad=True)
    assert skipping[2] is None
    images, labels, skipped = collate_skipping([skipping[i] for i in range(4)])
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0] and labels.dtype == torch.int64
    assert skipped == 1


def test_collate_all_bad():
    images, labels, skipped = collate_skipping([None, None])
    assert images.shape == (0, 3, 0, 0) and images.dtype == torch.float32
    assert labels.shape == (0,) and labels.dtype == torch.int64 and skipped == 2
    images, _, _ = collate_skipping([None], image_shape=(3, 16, 16))
    assert images.shape == (0, 3, 16, 16)


def _drain(loader):
    out = []
    for images, labels, skipped in loader:
        out.append((images, labels, skipped))
    return out


def test_loader_eval_order_and_shapes(tmp_path):
    samples = make_samples(tmp_path, n=7)
    loader = released_recipe_loader(samples, img_size=8, train=False, batch_size=3)
    batches = _drain(loader)
    assert [b[0].shape[0] for b in batches] == [3, 3, 1]
    assert torch.cat([b[1] for b in batches]).tolist() == [i % 3 for i in range(7)]
    assert all(b[2] == 0 for b in batches)
    assert batches[0][0].shape == (3, 3, 8, 8) and batches[0][0].dtype == torch.float32
    assert len(released_recipe_loader(samples, img_size=8, train=False, batch_size=3, drop_last=True)) == 2


def test_loader_accepts_samplelist():
    from tdsa_fast.data.datasets import load_split

    sl = load_split("cub", REPO / "tests" / "fixtures" / "cub", "test")
    (images, labels, skipped), = _drain(released_recipe_loader(sl, img_size=8, train=False, batch_size=8))
    assert images.shape == (5, 3, 8, 8) and labels.tolist() == [0, 0, 1, 2, 2] and skipped == 0


def _order(samples, seed, epochs=2, workers=0):
    # label == sample index here, so the labels give the visiting order
    indexed = [(p, i) for i, (p, _) in enumerate(samples)]
    loader = released_recipe_loader(indexed, img_size=8, train=True, batch_size=4, seed=seed, workers=workers)
    return [torch.cat([b[1] for b in _drain(loader)]).tolist() for _ in range(epochs)]


def test_train_loader_order_reproducible(tmp_path):
    samples = make_samples(tmp_path, n=12)
    a = _order(samples, seed=3)
    assert a == _order(samples, seed=3)
    assert sorted(a[0]) == list(range(12))
    assert a[0] != list(range(12))        # shuffled
    assert a[0] != a[1]                   # a new order each epoch
    assert _order(samples, seed=4) != a   # the seed matters


def _worker_error_message(loader) -> str:
    # in a helper, so that the caught exception's traceback does not keep the test's frame
    # (and its loaders) in a reference cycle
    with pytest.raises(BadImageError) as e:
        _drain(loader)
    return str(e.value)


def test_loader_workers_bad_image_names_file(tmp_path):
    samples = make_samples(tmp_path, n=8, bad={5})
    with released_recipe_loader(samples, img_size=8, train=False, batch_size=2, workers=2) as loader:
        assert loader.persistent_workers and loader.num_workers == 2
        msg = _worker_error_message(loader)
        assert "in DataLoader worker process" in msg and "img_005.jpg" in msg
        # the failed epoch's workers were stopped at once, and the loader still works
        assert loader._iterator is None
        images, labels, skipped = next(iter(loader))
        assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    # the same with skip_bad: the bad image is dropped and counted, nothing else lost
    with released_recipe_loader(samples, img_size=8, train=False, batch_size=2, workers=2,
                      skip_bad=True) as loader:
        batches = _drain(loader)
    assert sum(b[2] for b in batches) == 1
    assert torch.cat([b[1] for b in batches]).tolist() == [i % 3 for i in range(8) if i != 5]
    assert [b[0].shape[0] for b in batches] == [2, 2, 1, 2]


def test_loader_close_stops_persistent_workers(tmp_path):
    samples = make_samples(tmp_path, n=4)
    loader = released_recipe_loader(samples, img_size=8, train=True, batch_size=2, workers=2)
    _drain(loader)
    workers = list(loader._iterator._workers)
    assert all(w.is_alive() for w in workers)  # persistent across epochs
    assert len(_drain(loader)) == 2 and loader._iterator._workers == workers
    loader.close()
    assert all(not w.is_alive() for w in workers)
    assert len(_drain(loader)) == 2  # usable again, with fresh workers
    loader.close()


def test_loader_all_bad_batch_shape(tmp_path):
    samples = make_samples(tmp_path, n=4, bad={2, 3})
    batches = _drain(released_recipe_loader(samples, img_size=8, train=False, batch_size=2, skip_bad=True))
    assert batches[1][0].shape == (0, 3, 8, 8) and batches[1][1].shape == (0,) and batches[1][2] == 2


def test_train_loader_workers_reproducible(tmp_path):
    """With workers, the order and the augmentation follow the seed."""
    samples = make_samples(tmp_path, n=8)
    samples = [(p, i) for i, (p, _) in enumerate(samples)]

    def run(seed):
        with released_recipe_loader(samples, img_size=8, train=True, batch_size=4, workers=2, seed=seed) as loader:
            batches = _drain(loader)
        return torch.cat([b[1] for b in batches]), torch.cat([b[0] for b in batches])

    (l1, x1), (l2, x2) = run(5), run(5)
    assert torch.equal(l1, l2) and torch.equal(x1, x2)
    assert sorted(l1.tolist()) == list(range(8))


def test_build_loader_bad_args(tmp_path):
    samples = make_samples(tmp_path, n=2)
    with pytest.raises(ValueError, match="batch_size"):
        released_recipe_loader(samples, img_size=8, train=True, batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        released_recipe_loader(samples, img_size=8, train=True, batch_size=2, workers=-1)
    with pytest.raises(ValueError, match="recipe"):
        released_recipe_loader(samples, img_size=8, train=True, batch_size=2, recipe="nope")
