"""The DALI loader (tdsa_fast.data.dali_loader.DaliImageLoader) against the PyTorch one:
(a) tiny generated JPEGs: the same indices and images within a grey level for the test
transform and both training recipes, output dtypes and layouts, sharding, set_epoch;
(b) the real Flowers-102 (../shared/data/flowers102 beside the repo) when it is there.
The CPU pipeline's two resize paths are both checked where they differ: ``fused`` (the
project's DALI operator, the default) and ``dali_resize`` (DALI's resize and
crop_mirror_normalize: the GPU pipeline's ops, and the fallback when the plugin cannot be
built; the plugin itself is tested in test_dali_plugin.py).

DALI missing: the module is skipped, except under CI (CI set), where it fails."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from loader_helpers import (
    check_start_batch_resumes_the_epoch,
    EPS_LEVELS,
    FLOWERS_REAL,
    by_index,
    drain,
    levels,
    make_jpegs,
    reference_test_image,
    require_dali,
    require_dali_plugin,
    save_jpeg,
)

require_dali()

from tdsa_fast.data.dali_loader import DaliImageLoader  # noqa: E402
from tdsa_fast.data.loading import build_loader  # noqa: E402
from tdsa_fast.data.torch_loader import TorchImageLoader  # noqa: E402

N = 13
#: At 64 px every generated (smooth) image is within one grey level of PIL's; at 32 px a few
#: border pixels are two levels off (DALI's border handling: see BORDER_REASON below).
S = 64

LEVEL_TOL = (1 + EPS_LEVELS) / 127.5  # one grey level, normalised

CONFIGS = [(False, "released"), (True, "released"), (True, "rrc")]
CONFIG_IDS = ["test", "released", "rrc"]

#: The DALI loader's CPU resize paths: ``fused_resize`` True (the plugin) or False.
RESIZE_PATHS = [True, False]
RESIZE_IDS = ["fused", "dali_resize"]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("jpegs"), N, seed=2)


def both(samples, fused_resize=None, **kwargs):
    """A DALI and a torch loader with the same arguments (the torch one without worker
    processes: ``workers`` only sets DALI's threads here)."""
    args = dict(img_size=S, train=False, batch_size=4, seed=3)
    args.update(kwargs)
    if fused_resize:
        require_dali_plugin()
    return (DaliImageLoader(samples, fused_resize=fused_resize, **args),
            TorchImageLoader(samples, **{**args, "workers": 0}))


def assert_same_epoch(dali, torch_, what=""):
    assert torch.equal(dali.indices, torch_.indices), (
        f"{what}: DALI indices {dali.indices.tolist()} != torch {torch_.indices.tolist()}")
    assert torch.equal(dali.labels, torch_.labels), f"{what}: labels differ"
    assert dali.sizes == torch_.sizes and dali.num_real == torch_.num_real and dali.skipped == torch_.skipped, (
        f"{what}: batches differ: sizes {dali.sizes} vs {torch_.sizes}, num_real {dali.num_real} vs "
        f"{torch_.num_real}")
    err = levels(dali.images, torch_.images)
    assert err <= 1 + EPS_LEVELS, f"{what}: DALI images are {err:.2f} grey levels from the torch loader's"


# ---------------------------------------------------------------------------------------
# (a) generated images


@pytest.mark.parametrize("fused", RESIZE_PATHS, ids=RESIZE_IDS)
@pytest.mark.parametrize("train,recipe", CONFIGS, ids=CONFIG_IDS)
def test_parity_with_torch_loader(jpegs, train, recipe, fused):
    d, t = both(jpegs, train=train, recipe=recipe, fused_resize=fused)
    with d, t:
        assert d.fused_resize is fused
        assert len(d) == len(t) == 4
        for epoch in (0, 1):
            de, te = drain(d, epoch), drain(t, epoch)
            assert_same_epoch(de, te, f"epoch {epoch}")
            assert sorted(de.indices.tolist()) == list(range(N))
            mean_err = float((de.images - te.images).abs().mean()) * 127.5
            assert mean_err < 0.25, f"epoch {epoch}: mean difference {mean_err:.3f} grey levels"
    if train:
        assert de.indices.tolist() != list(range(N)), "training order not shuffled"


def test_build_loader_auto_picks_dali(jpegs):
    require_dali_plugin()
    with build_loader(jpegs, img_size=S, train=False, batch_size=5) as L:
        assert isinstance(L, DaliImageLoader) and L.kind == "dali"
        assert L.fused_resize, "the CPU pipeline does not use the plugin although it loads"
        ep = drain(L)
    assert ep.sizes == [5, 5, 3] and ep.indices.tolist() == list(range(N))
    assert ep.labels.tolist() == [label for _, label in jpegs]


@pytest.mark.parametrize("fused", RESIZE_PATHS, ids=RESIZE_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_output_dtype_and_layout(jpegs, dtype, channels_last, fused):
    d, t = both(jpegs, train=True, recipe="released", dtype=dtype, channels_last=channels_last, workers=2,
                fused_resize=fused)
    with d, t:
        dali_batches = list(d)
        ref = drain(t)
    assert len(dali_batches) == len(ref.sizes)
    for k, b in enumerate(dali_batches):
        n = ref.sizes[k]
        assert b.images.shape == (n, 3, S, S), f"batch {k}: {tuple(b.images.shape)}"
        assert b.images.dtype == dtype, f"batch {k}: dtype {b.images.dtype}, want {dtype}"
        if channels_last:
            assert b.images.stride()[1] == 1 and b.images.is_contiguous(memory_format=torch.channels_last), (
                f"batch {k}: strides {b.images.stride()} are not channels_last")
        else:
            assert b.images.is_contiguous() and b.images.stride()[1] == S * S, (
                f"batch {k}: strides {b.images.stride()} are not contiguous NCHW")
        assert float(b.images.min()) >= -1 and float(b.images.max()) <= 1
        assert b.labels.dtype == torch.int64 and b.indices.dtype == torch.int64
    images = torch.cat([b.images.float() for b in dali_batches])
    rounding = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 4e-3}[dtype]
    err = float((images - ref.images).abs().max())
    assert err <= LEVEL_TOL + rounding, f"{dtype}: {err * 127.5:.2f} grey levels from the torch loader"
    assert torch.equal(torch.cat([b.indices for b in dali_batches]), ref.indices)


@pytest.mark.parametrize("fused", RESIZE_PATHS, ids=RESIZE_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("train,recipe", CONFIGS, ids=CONFIG_IDS)
def test_levels_are_the_uint8_values_that_the_float_batches_normalise(jpegs, train, recipe, channels_last, fused):
    """``levels=True`` (the memory loader's decode): uint8 batches of the same pixels as the
    float32 batches normalise (DALI's crop_mirror_normalize multiplies by 1 / 127.5: one ulp
    off the division, so the levels are compared), zeros where the window overhangs."""
    common = dict(img_size=S, train=train, recipe=recipe, batch_size=5, workers=2, channels_last=channels_last,
                  fused_resize=fused)
    with DaliImageLoader(jpegs, levels=True, **common) as u, DaliImageLoader(jpegs, **common) as f:
        got, ref = list(u), drain(f)
    assert {b.images.dtype for b in got} == {torch.uint8}
    assert torch.equal(torch.cat([b.indices for b in got]), ref.indices)
    images = torch.cat([b.images for b in got]).float()
    assert torch.equal(images, ref.images.mul(127.5).add(127.5).round())


@pytest.mark.parametrize("fused", RESIZE_PATHS, ids=RESIZE_IDS)
def test_kept_batches_are_not_overwritten(jpegs, fused):
    """The CPU pipeline hands its output buffers to torch without a copy: batches kept by the
    caller must stay as they were while DALI produces the following ones."""
    if fused:
        require_dali_plugin()
    args = dict(img_size=S, train=True, batch_size=1, seed=4, prefetch=2, fused_resize=fused)
    with DaliImageLoader(jpegs, **args) as d:
        d.set_epoch(5)
        kept = [b.images for b in d]
        d.set_epoch(5)
        copied = [b.images.clone() for b in d]
    assert len(kept) == N
    assert len({x.data_ptr() for x in kept}) == N, "batches share storage"
    for k, (a, b) in enumerate(zip(kept, copied)):
        assert torch.equal(a, b), f"batch {k} changed after later batches were produced"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_sharding_through_dali_loader(jpegs, world_size, train):
    eps, lens = [], []
    for rank in range(world_size):
        d, t = both(jpegs, train=train, batch_size=3, rank=rank, world_size=world_size)
        with d, t:
            lens.append(len(d))
            ep = drain(d, 2)
            assert_same_epoch(ep, drain(t, 2), f"rank {rank}/{world_size}")
        eps.append(ep)
    assert len(set(lens)) == 1, f"ranks have different len(loader): {lens}"
    assert all(len(ep.sizes) == lens[0] for ep in eps), "a rank yielded another number of batches than len()"
    assert len({tuple(ep.sizes) for ep in eps}) == 1, f"batch sizes differ: {[ep.sizes for ep in eps]}"
    real = torch.cat([ep.indices[ep.real] for ep in eps])
    counts = torch.bincount(real, minlength=N)
    assert len(real) == N and bool((counts == 1).all()), (
        f"real indices over {world_size} ranks: {sorted(real.tolist())}, want each of range({N}) once")
    if not train:  # evaluation: each test image counted exactly once, in dataset order per rank
        for rank, ep in enumerate(eps):
            assert ep.indices[ep.real].tolist() == list(range(rank, N, world_size))


def test_set_epoch_reproducible(jpegs):
    args = dict(img_size=S, train=True, recipe="rrc", batch_size=4, seed=9)
    with DaliImageLoader(jpegs, **args) as d:
        e0, e1 = drain(d, 0), drain(d, 1)
        d.set_epoch(0)
        next(iter(d))  # an epoch abandoned after one batch ...
        again = drain(d, 0)  # ... does not disturb the next one
    with DaliImageLoader(jpegs, **args) as d:
        fresh1 = drain(d, 1)
    assert torch.equal(again.indices, e0.indices) and torch.equal(again.images, e0.images), (
        "set_epoch(0) again gave another epoch 0")
    assert torch.equal(fresh1.indices, e1.indices) and torch.equal(fresh1.images, e1.images), (
        "a new loader's epoch 1 differs")
    assert not torch.equal(e0.indices, e1.indices), "epoch 1 repeats epoch 0's order"
    _, x0 = by_index(e0)
    _, x1 = by_index(e1)
    changed = sum((x0[i] != x1[i]).any().item() for i in range(N))
    assert changed >= N - 2, f"epoch 1 repeats the augmentation of {N - changed} of {N} images"


# ---------------------------------------------------------------------------------------
# (b) the real Flowers-102


@pytest.fixture(scope="module")
def flowers():
    if not (FLOWERS_REAL / "imagelabels.mat").is_file():
        pytest.skip(f"the real Flowers-102 is not at {FLOWERS_REAL.resolve()} (../shared/data/flowers102 "
                    "beside the repo)")
    from tdsa_fast.data.datasets import load_split

    return {split: load_split("flowers", FLOWERS_REAL, split) for split in ("train", "test")}


def _channel_stats(loader):
    """Per-channel mean and std over the epoch (float64 sums), labels, real indices."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count, labels, indices = 0, [], []
    for b in loader:
        x = b.images.double()
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
        labels += b.labels.tolist()
        indices += b.indices[:b.num_real].tolist()
        assert b.skipped == 0
    mean = total / count
    return mean, (squares / count - mean * mean).sqrt(), labels, indices


@pytest.mark.timeout(300)
def test_real_train_split_epoch_statistics(flowers):
    """One training epoch (released recipe, 2040 images, 64 px, batch 64, 2 workers): the same
    samples in the same order, the same labels, and per channel mean and std within 0.02 grey
    levels (measured: at most 0.0013)."""
    samples = flowers["train"].samples
    assert len(samples) == 2040
    args = dict(img_size=64, train=True, batch_size=64, workers=2, seed=1)
    stats = {}
    for kind in ("dali", "torch"):
        with build_loader(samples, loader=kind, **args) as L:
            L.set_epoch(3)
            stats[kind] = _channel_stats(L)
    (dm, ds, dl, di), (tm, ts, tl, ti) = stats["dali"], stats["torch"]
    assert sorted(di) == list(range(2040)) and di == ti, "the loaders read other samples or another order"
    assert collections.Counter(dl) == collections.Counter(tl) == collections.Counter(l for _, l in samples), (
        "label multisets differ")
    tol = 0.02 / 127.5
    assert float((dm - tm).abs().max()) <= tol, f"channel means differ: DALI {dm.tolist()} vs torch {tm.tolist()}"
    assert float((ds - ts).abs().max()) <= tol, f"channel stds differ: DALI {ds.tolist()} vs torch {ts.tolist()}"
    assert 0.2 < float(ts.min()) and float(ts.max()) < 0.9, f"implausible std {ts.tolist()}: images not normalised?"


#: DALI's resize repeats the edge pixel where PIL (and so the torch loader) renormalises its
#: filter over the pixels inside the image: when an axis is downscaled, the outermost row or
#: column of the output differs, by up to 18 grey levels on Flowers-102 at 64 px and 5 at 224
#: px (the interior stays within one level).  This holds for the GPU pipeline and the CPU
#: fallback without the plugin; the plugin's operator uses PIL's filter and has no such
#: difference (the ``fused`` cases below).
BORDER_REASON = ("DALI's resize repeats the edge pixel where PIL renormalises its filter inside the image: "
                 "downscaled images differ in their outermost output pixels")
BORDER_LEVELS = 24  # bound on that border difference (measured: 18 at 64 px)


def _ring(x: torch.Tensor) -> torch.Tensor:
    """The outermost row and column of ``[n, c, h, w]`` images, flattened."""
    return torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)


@pytest.mark.parametrize("fused", [
    True, pytest.param(False, marks=pytest.mark.xfail(strict=True, reason=BORDER_REASON))], ids=RESIZE_IDS)
def test_downscaled_borders_match_pil(tmp_path, fused):
    """A noisy 200x160 image downscaled to 32 px: every pixel within one grey level of PIL's."""
    if fused:
        require_dali_plugin()
    a = np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    path = str(save_jpeg(tmp_path / "noise.jpg", a, quality=95))
    with DaliImageLoader([(path, 0)], img_size=32, train=False, batch_size=1, fused_resize=fused) as d:
        (b,) = list(d)
    ref = reference_test_image(path, 32)[None]
    assert levels(b.images[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1]) <= 1 + EPS_LEVELS, "the interior differs"
    err = levels(b.images, ref)
    assert err <= 1 + EPS_LEVELS, f"{err:.0f} grey levels from PIL at the borders"


@pytest.fixture(scope="module", params=RESIZE_PATHS, ids=RESIZE_IDS)
def test_split_comparison(flowers, request):
    """The whole test split (6149 images, 64 px) through both loaders, batch by batch."""
    fused = request.param
    if fused:
        require_dali_plugin()
    samples = flowers["test"].samples
    assert len(samples) == 6149
    args = dict(img_size=64, train=False, batch_size=128)
    out = dict(batches=0, n=0, order_ok=True, labels_ok=True, interior=0.0, ring=0.0, total=0.0, sum_abs=0.0,
               numel=0, fused=fused)
    with build_loader(samples, loader="dali", workers=2, fused_resize=fused, **args) as d, \
            build_loader(samples, loader="torch", workers=0, **args) as t:
        out["lens"] = (len(d), len(t))
        for bd, bt in zip(d, t, strict=True):
            n = out["n"]
            out["order_ok"] &= bd.indices.tolist() == bt.indices.tolist() == list(range(n, n + len(bd.indices)))
            out["labels_ok"] &= bd.labels.tolist() == bt.labels.tolist() == [samples[i][1] for i in bd.indices]
            diff = (bd.images - bt.images).abs()
            out["interior"] = max(out["interior"], float(diff[..., 1:-1, 1:-1].max()) * 127.5)
            out["ring"] = max(out["ring"], float(_ring(diff).max()) * 127.5)
            out["sum_abs"] += float(diff.sum()) * 127.5
            out["numel"] += diff.numel()
            out["n"] += len(bd.indices)
            out["batches"] += 1
    return out


@pytest.mark.timeout(300)
def test_real_test_split_same_tensors(test_split_comparison):
    """The whole test split at 64 px: the same indices (dataset order), labels and images:
    within one grey level inside the outermost pixel ring, within BORDER_LEVELS on it."""
    c = test_split_comparison
    assert c["lens"] == (49, 49) and c["batches"] == 49 and c["n"] == 6149, c
    assert c["order_ok"], "the loaders read other samples, or not in dataset order"
    assert c["labels_ok"], "labels differ between the loaders or from the split"
    assert c["interior"] <= 1 + EPS_LEVELS, f"interior pixels differ by up to {c['interior']:.2f} grey levels"
    assert c["ring"] <= BORDER_LEVELS, f"border pixels differ by up to {c['ring']:.2f} grey levels"
    mean = c["sum_abs"] / c["numel"]
    assert mean < 0.25, f"mean difference {mean:.3f} grey levels"


def test_real_test_split_borders_within_one_level(test_split_comparison, request):
    """With the plugin, every pixel of the test split is within one grey level of the torch
    loader's (the decoders' rounding); with DALI's resize the borders are not (BORDER_REASON)."""
    if not test_split_comparison["fused"]:
        request.applymarker(pytest.mark.xfail(strict=True, reason=BORDER_REASON))
    assert test_split_comparison["ring"] <= 1 + EPS_LEVELS, (
        f"border pixels differ by up to {test_split_comparison['ring']:.0f} grey levels")


def test_epoch_started_mid_way_yields_the_rest_of_the_same_epoch(jpegs):
    """``set_epoch(e, start_batch=k)`` (a resumed run): batches k.. of epoch e, as an
    uninterrupted epoch yields them (the torch loader's case is in test_torch_loader.py)."""
    check_start_batch_resumes_the_epoch(DaliImageLoader, jpegs, S)
