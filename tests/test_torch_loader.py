"""The PyTorch loader (tdsa_fast.data.torch_loader.TorchImageLoader) on tiny generated
JPEGs: output format, the transforms against PIL references, reproducible augmentation
(seed, epoch, worker count), decode="device" against decode="pil", and sharding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loader_helpers import (
    EPS_LEVELS,
    check_start_batch_resumes_the_epoch,
    by_index,
    drain,
    levels,
    make_jpegs,
    photo_like,
    reference_test_image,
    write_odd_format,
)
from tdsa_fast.data.decode import dali_available, gpu_jpeg_decodable, load_rgb
from tdsa_fast.data.augment import draw_augment
from tdsa_fast.data.batch import Batch
from tdsa_fast.data.loading import build_loader
from tdsa_fast.data.torch_loader import TorchImageLoader

N = 13  # odd, so that batches and shards do not divide evenly
S = 32


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("jpegs"), N, seed=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, jpegs):
    """The JPEGs plus a PNG, a greyscale and a CMYK JPEG (the device decoder's PIL fallback)."""
    folder = tmp_path_factory.mktemp("odd")
    return list(jpegs[:6]) + [(str(write_odd_format(folder, k, seed=i)), 1)
                              for i, k in enumerate(["png", "grey", "cmyk"])] + list(jpegs[6:])


def loader(samples, **kwargs) -> TorchImageLoader:
    args = dict(img_size=S, train=False, batch_size=4)
    args.update(kwargs)
    return TorchImageLoader(samples, **args)


# ---------------------------------------------------------------------------------------
# Output format


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_output_format(jpegs, dtype, channels_last):
    with loader(jpegs, train=True, seed=4, dtype=dtype, channels_last=channels_last) as L:
        assert len(L) == 4, f"len(loader) {len(L)}, want ceil(13 / 4) = 4"
        plan = L.plan
        got = list(L)
    with loader(jpegs, train=True, seed=4) as L:
        ref = drain(L)
    assert len(got) == 4
    for k, b in enumerate(got):
        assert isinstance(b, Batch)
        idx, real = plan.batch(k)
        n = len(idx)
        assert b.images.shape == (n, 3, S, S), f"batch {k}: images {tuple(b.images.shape)}, want {(n, 3, S, S)}"
        assert b.images.dtype == dtype, f"batch {k}: dtype {b.images.dtype}, want {dtype}"
        if channels_last:
            assert b.images.stride()[1] == 1 and b.images.is_contiguous(memory_format=torch.channels_last), (
                f"batch {k}: strides {b.images.stride()} are not channels_last")
        else:
            assert b.images.is_contiguous() and b.images.stride()[-1] == 1 and b.images.stride()[1] == S * S, (
                f"batch {k}: strides {b.images.stride()} are not contiguous NCHW")
        assert float(b.images.min()) >= -1 and float(b.images.max()) <= 1, "values outside [-1, 1]"
        assert b.indices.dtype == torch.int64 and b.labels.dtype == torch.int64
        assert b.indices.tolist() == idx.tolist(), f"batch {k}: indices {b.indices.tolist()} != plan {idx.tolist()}"
        assert b.labels.tolist() == [jpegs[i][1] for i in idx], f"batch {k}: labels do not match the samples"
        assert (b.num_real, b.skipped) == (real, 0)
    images = torch.cat([b.images.float() for b in got])
    tol = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 4e-3}[dtype]  # about an ulp just below 1
    err = float((images - ref.images).abs().max())
    assert err <= tol, f"{dtype} output differs from float32 by {err} > {tol}"


def test_build_loader_picks_torch(jpegs):
    with build_loader(jpegs, loader="torch", img_size=S, train=False, batch_size=5) as L:
        assert isinstance(L, TorchImageLoader) and L.kind == "torch"
        ep = drain(L)
    assert ep.sizes == [5, 5, 3] and ep.indices.tolist() == list(range(N))
    assert ep.labels.tolist() == [label for _, label in jpegs]


# ---------------------------------------------------------------------------------------
# Transforms against PIL references


def test_test_transform_matches_pil_reference(jpegs):
    s = 48
    with loader(jpegs, img_size=s, batch_size=5) as L:
        ep = drain(L)
    assert ep.indices.tolist() == list(range(N)), "the test loader does not keep dataset order"
    for i, (path, label) in enumerate(jpegs):
        ref = reference_test_image(path, s)
        err = levels(ep.images[i], ref)
        assert err <= 1 + EPS_LEVELS, f"{path}: {err:.2f} grey levels from load_rgb + PIL bilinear resize"
        assert int(ep.labels[i]) == label


def reference_augmented(path, aug, s: int, recipe: str) -> torch.Tensor:
    """The recipe by hand from ``draw_augment``'s draw (numpy crop/pad/flip)."""
    img = load_rgb(path)
    top, left, h, w = aug.box
    if recipe == "released":  # Resize((s, s)) -> RandomCrop(s, padding=4) (zero fill)
        a = np.pad(np.asarray(img.resize((s, s), Image.BILINEAR)), ((4, 4), (4, 4), (0, 0)))
        a = a[top + 4:top + 4 + h, left + 4:left + 4 + w]
    else:  # random-resized-crop: the window (top, left, h, w) of the image resized to s x s
        assert 0 <= top and 0 <= left and top + h <= img.height and left + w <= img.width, (aug, img.size)
        a = np.asarray(img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h)))
    if aug.flip:
        a = a[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1).sub(127.5).div(127.5)


@pytest.mark.parametrize("recipe", ["released", "rrc"])
def test_train_transform_applies_the_drawn_augmentation(jpegs, recipe):
    with loader(jpegs, train=True, recipe=recipe, seed=3, batch_size=5) as L:
        ep = drain(L, epoch=2)
    assert sorted(ep.indices.tolist()) == list(range(N))
    flips, boxes = set(), set()
    for j, i in enumerate(ep.indices.tolist()):
        path = jpegs[i][0]
        with Image.open(path) as im:
            width, height = im.size
        aug = draw_augment(train=True, recipe=recipe, img_size=S, seed=3, epoch=2, index=i, width=width,
                           height=height)
        flips.add(aug.flip)
        boxes.add(aug.box)
        err = levels(ep.images[j], reference_augmented(path, aug, S, recipe))
        assert err <= 1 + EPS_LEVELS, f"sample {i} ({aug}): {err:.2f} grey levels from the reference"
    assert flips == {False, True} and len(boxes) > N // 2, f"augmentation hardly varies: {flips}, {boxes}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("recipe", ["released", "rrc"])
def test_augmentation_reproducible_and_independent_of_workers(jpegs, recipe):
    args = dict(train=True, recipe=recipe, batch_size=4)
    with loader(jpegs, seed=7, **args) as L:
        e0, e1 = drain(L, 0), drain(L, 1)
        e0_again = drain(L, 0)  # a resumed run: set_epoch(0) again
    with loader(jpegs, seed=7, **args) as L:
        fresh = drain(L, 0)
    with loader(jpegs, seed=7, workers=2, **args) as L:  # worker processes, persistent across epochs
        w0, w1 = drain(L, 0), drain(L, 1)
    with loader(jpegs, seed=8, **args) as L:
        other_seed = drain(L, 0)

    for name, ep in [("the same epoch again", e0_again), ("a new loader", fresh), ("workers=2", w0)]:
        assert torch.equal(ep.indices, e0.indices), f"{name}: epoch 0 order {ep.indices.tolist()} != {e0.indices.tolist()}"
        assert torch.equal(ep.images, e0.images), f"{name}: epoch 0 images differ"
    assert torch.equal(w1.indices, e1.indices) and torch.equal(w1.images, e1.images), "workers=2: epoch 1 differs"

    assert not torch.equal(e1.indices, e0.indices), "epoch 1 repeats epoch 0's order"
    _, x0 = by_index(e0)
    _, x1 = by_index(e1)
    _, xs = by_index(other_seed)
    changed = [(x0[i] != x1[i]).any().item() for i in range(N)]
    assert sum(changed) >= N - 2, f"epoch 1 repeats the augmentation of {N - sum(changed)} of {N} images"
    assert sum((x0[i] != xs[i]).any().item() for i in range(N)) >= N - 2, "another seed repeats the augmentation"


# ---------------------------------------------------------------------------------------
# decode="device" (torchvision.io.decode_jpeg on the loader's device, here the CPU)


@pytest.mark.parametrize("train,recipe", [(False, "released"), (True, "released"), (True, "rrc")],
                         ids=["test", "released", "rrc"])
def test_decode_device_matches_pil(mixed, train, recipe):
    """Within one grey level: the same libjpeg-turbo decode (PIL for the PNG, grey and
    CMYK files in both modes), and a PIL-weighted resize rounded once where PIL rounds after
    each of its two passes."""
    args = dict(train=train, recipe=recipe, seed=2, batch_size=5, img_size=40)
    with loader(mixed, decode="pil", **args) as L:
        pil = drain(L, 1)
    with loader(mixed, decode="device", **args) as L:
        dev = drain(L, 1)
    assert torch.equal(dev.indices, pil.indices) and torch.equal(dev.labels, pil.labels)
    assert dev.sizes == pil.sizes and dev.num_real == pil.num_real and sum(dev.skipped) == 0
    err = levels(dev.images, pil.images)
    assert err <= 1 + EPS_LEVELS, f"decode='device' is {err:.2f} grey levels from decode='pil'"
    assert float((dev.images - pil.images).abs().mean()) * 127.5 < 0.25, "decode='device' differs in many pixels"


# ---------------------------------------------------------------------------------------
# Sharding through the loader


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_sharding_through_loader(jpegs, world_size, train):
    eps, lens = [], []
    for rank in range(world_size):
        with loader(jpegs, train=train, seed=5, batch_size=3, rank=rank, world_size=world_size) as L:
            lens.append(len(L))
            eps.append(drain(L, 1))
    assert len(set(lens)) == 1, f"ranks have different len(loader): {lens}"
    assert all(len(ep.sizes) == lens[0] for ep in eps), "a rank yielded another number of batches than len()"
    assert len({tuple(ep.sizes) for ep in eps}) == 1, f"batch sizes differ across ranks: {[ep.sizes for ep in eps]}"
    real = torch.cat([ep.indices[ep.real] for ep in eps])
    counts = torch.bincount(real, minlength=N)
    assert len(real) == N and bool((counts == 1).all()), (
        f"real indices over {world_size} ranks: {sorted(real.tolist())}, want each of range({N}) once")
    if not train:
        for rank, ep in enumerate(eps):
            assert ep.indices[ep.real].tolist() == list(range(rank, N, world_size))
    # labels follow the indices, and a padding sample is the same image its own rank reads
    images = {int(i): x for ep in eps for i, x in zip(ep.indices[ep.real], ep.images[ep.real])}
    for ep in eps:
        assert ep.labels.tolist() == [jpegs[i][1] for i in ep.indices.tolist()]
        for j in torch.nonzero(~ep.real).flatten().tolist():
            i = int(ep.indices[j])
            assert torch.equal(ep.images[j], images[i]), f"padding sample {i} differs from its real copy"


# ---------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=0), "img_size"),
    (dict(img_size=32.0), "img_size"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(workers=-1), "workers"),
    (dict(recipe="autoaugment"), "recipe"),
    (dict(dtype=torch.float64), "dtype"),
    (dict(dtype=torch.uint8), "dtype"),
    (dict(decode="gpu"), "decode"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(rank=-1), "rank"),
    (dict(world_size=0), "world_size"),
])
def test_bad_arguments_raise_value_error(jpegs, kwargs, match):
    args = dict(img_size=S, train=True, batch_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TorchImageLoader(jpegs, **args)


def test_build_loader_bad_arguments(jpegs):
    with pytest.raises(ValueError, match="loader"):
        build_loader(jpegs, loader="opencv", img_size=S, train=False, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        build_loader([], loader="torch", img_size=S, train=False, batch_size=4)
    # decode= is the torch loader's; where DALI is missing, --loader dali is refused first
    with pytest.raises(ValueError, match="decode" if dali_available() else "DALI is not installed"):
        build_loader(jpegs, loader="dali", img_size=S, train=False, batch_size=4, decode="device")


def test_epoch_started_mid_way_yields_the_rest_of_the_same_epoch(jpegs):
    """``set_epoch(e, start_batch=k)`` (a resumed run) on the torch loader (DALI's case is in
    test_dali_loader.py, which is skipped where DALI is missing)."""
    check_start_batch_resumes_the_epoch(TorchImageLoader, jpegs, S)


@pytest.mark.parametrize("kind,want", [("rgb", True), ("progressive", True), ("grey", True), ("cmyk", False),
                                       ("adobe", False), ("png", False), ("truncated", False), ("empty", False)])
def test_which_images_the_gpu_decoder_gets(tmp_path, kind, want):
    """decode="device" sends nvJPEG only JPEGs with 1 or 3 components and no Adobe segment
    (nvJPEG may not follow CMYK/YCCK or Adobe's colour transform); the rest go to PIL."""
    a = photo_like(np.random.default_rng(0), 30, 20)
    p = tmp_path / "image"
    if kind in ("rgb", "progressive", "adobe"):
        Image.fromarray(a).save(p, format="JPEG", quality=90, progressive=kind == "progressive")
    elif kind in ("grey", "cmyk", "png"):
        p = write_odd_format(tmp_path, kind)
    if kind == "adobe":  # an APP14 "Adobe" segment after SOI, as Photoshop writes (transform 1: YCbCr)
        data = p.read_bytes()
        app14 = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"
        p.write_bytes(data[:2] + app14 + data[2:])
        assert Image.open(p).mode == "RGB"
    data = {"truncated": b"\xff\xd8\xff\xe0\x00", "empty": b""}.get(kind)
    assert gpu_jpeg_decodable(p.read_bytes() if data is None else data) is want


_UNCLOSED = """
import sys
{preload}
from tdsa_fast.data.loading import build_loader
if __name__ == "__main__":
    samples = [(p, int(c)) for p, c in (line.rsplit(" ", 1) for line in sys.argv[1:])]
    loader = build_loader(samples, loader="torch", img_size={s}, train=True, batch_size=4, seed=0, workers=2)
    it = iter(loader)
    {epoch}
    print("left", flush=True)
"""


@pytest.mark.parametrize("preload", [
    "",
    pytest.param("import nvidia.dali", marks=[pytest.mark.slow, pytest.mark.skipif(
        not dali_available(), reason="DALI is not installed (the forkserver workers' case)")]),
], ids=["fork", "forkserver"])
@pytest.mark.parametrize("epoch", ["next(it)", pytest.param("list(it)", marks=pytest.mark.slow)],
                         ids=["mid_epoch", "whole_epoch"])
def test_a_loader_left_open_does_not_hold_up_the_exit(jpegs, tmp_path, preload, epoch):
    """The workers ignore SIGTERM (worker_signals), the signal multiprocessing's exit handler
    stops its daemonic children with; a script that never closes its loader must still exit."""
    import subprocess
    import sys

    script = tmp_path / "unclosed.py"
    script.write_text(_UNCLOSED.format(preload=preload, s=S, epoch=epoch))
    argv = [sys.executable, str(script)] + [f"{p} {c}" for p, c in jpegs]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the process did not exit within 90 s of its last line; stdout: {e.stdout!r}") from e
    assert res.returncode == 0 and "left" in res.stdout, res.stderr[-3000:]
