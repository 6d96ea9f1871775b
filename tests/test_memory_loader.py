"""The device-resident loader (tdsa_fast.data.memory_loader.MemoryImageLoader) against the
PyTorch and DALI loaders: (a) tiny generated JPEGs: the same indices, labels and pixels for
the test transform and the released recipe (exactly those of the loader that decoded the
split, within a grey level of the other), rrc, output dtypes and layouts, sharding, a resumed
epoch, bad images, the memory refusal, the on-disk cache, the trainer's ``--loader memory``;
(b) the real Flowers-102 (../shared/data/flowers102 beside the repo) when it is there."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from loader_helpers import (
    EPS_LEVELS,
    FLOWERS_REAL,
    check_start_batch_resumes_the_epoch,
    drain,
    levels,
    make_jpegs,
    photo_like,
    save_jpeg,
    write_bad,
)
from tdsa_fast import _backend
from tdsa_fast.data import memory_loader
from tdsa_fast.data.decode import BadImageError
from tdsa_fast.data.decode import dali_available
from tdsa_fast.data.loading import build_loader
from tdsa_fast.data.memory_loader import MemoryImageLoader

N = 13
S = 32

#: The decoders of the stored split: the PyTorch loader always, DALI when it is installed.
DECODERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(),
                                                                   reason="NVIDIA DALI is not installed"))]
CONFIGS = [(False, "released"), (True, "released")]
CONFIG_IDS = ["test", "released"]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("jpegs"), N, seed=2)


def args(**kw):
    return dict(dict(img_size=S, train=True, recipe="released", batch_size=4, seed=3), **kw)


def assert_same_batches(a, b, what=""):
    assert torch.equal(a.indices, b.indices), f"{what}: indices {a.indices.tolist()} != {b.indices.tolist()}"
    assert torch.equal(a.labels, b.labels), f"{what}: labels differ"
    assert a.sizes == b.sizes and a.num_real == b.num_real and a.skipped == b.skipped, (
        f"{what}: batches differ: sizes {a.sizes} vs {b.sizes}, num_real {a.num_real} vs {b.num_real}, "
        f"skipped {a.skipped} vs {b.skipped}")


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("train,recipe", CONFIGS, ids=CONFIG_IDS)
def test_same_pixels_as_the_decoding_loader(jpegs, decoder, train, recipe):
    """Two epochs: the batches of the loader that decoded the split, pixel for pixel (crop,
    padding and flip are exact on the stored uint8 images), and within one grey level of the
    PyTorch loader."""
    a = args(train=train, recipe=recipe)
    with build_loader(jpegs, loader="memory", decoder=decoder, **a) as m, \
            build_loader(jpegs, loader=decoder, **a) as same, build_loader(jpegs, loader="torch", **a) as t:
        assert m.kind == "memory" and len(m) == len(same)
        for epoch in (0, 4):
            em, es, et = drain(m, epoch), drain(same, epoch), drain(t, epoch)
            assert_same_batches(em, es, f"epoch {epoch}")
            assert torch.equal(em.images, es.images), f"epoch {epoch}: {levels(em.images, es.images)} levels off"
            assert levels(em.images, et.images) <= 1 + EPS_LEVELS
        if train:
            assert not torch.equal(drain(m, 1).images, em.images), "the augmentation does not change per epoch"


needs_first_epoch_decode = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


def _decoding(samples, **kw):
    m = MemoryImageLoader(samples, decoder="dali", **kw)
    if not m.decodes_first_epoch:
        m.close()
        pytest.skip("the project's DALI operator is not available: the memory loader decodes at construction")
    return m


@needs_first_epoch_decode
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.float16, True),
                                                 (torch.bfloat16, False)], ids=["fp32", "fp16-cl", "bf16"])
@pytest.mark.parametrize("train,recipe", CONFIGS, ids=CONFIG_IDS)
def test_first_epoch_that_decodes_stores_what_the_construction_decode_stores(jpegs, train, recipe, dtype,
                                                                            channels_last):
    """The first epoch is the DALI loader's to the bit; the images it stored equal a decode at
    construction; later epochs equal those of a loader that decoded at construction."""
    a = args(train=train, recipe=recipe, dtype=dtype, channels_last=channels_last)
    with _decoding(jpegs, **a) as m, build_loader(jpegs, loader="dali", **a) as d, \
            MemoryImageLoader(jpegs, decoder="torch", **a) as t:
        monkey = m._decode_into
        m._decode_into = lambda *x: pytest.fail("the first epoch left images to decode")
        e0, d0 = drain(m, 0), drain(d, 0)
        assert_same_batches(e0, d0)
        assert torch.equal(e0.images, d0.images)
        assert m._seen is None and m.decode_seconds > 0
        m._decode_into = monkey
        with MemoryImageLoader(jpegs, decoder="dali", **a) as ref:
            ref.images  # decoded in full, as a later epoch would
            assert torch.equal(m.images, ref.images)
        assert int((m.images.int() - t.images.int()).abs().max()) <= 1
        for epoch in (1, 2):
            assert_same_batches(drain(m, epoch), drain(d, epoch), f"epoch {epoch}")
            assert torch.equal(drain(m, epoch).images, drain(d, epoch).images)


@needs_first_epoch_decode
def test_first_epoch_left_early_or_resumed_decodes_the_rest(jpegs):
    """A first epoch left after two batches, one resumed mid-way and one rank's share: every
    image is stored before the next epoch, the same as a full decode's."""
    with MemoryImageLoader(jpegs, decoder="torch", **args()) as t:
        want = t.images.clone()
    with _decoding(jpegs, **args()) as m:
        it = iter(m)
        next(it), next(it)
        it.close()
        assert 0 < int(m._seen.sum()) < N
        full = drain(m, 1)
        assert m._seen is None and sorted(set(full.indices.tolist())) == list(range(N))
        assert int((m.images.int() - want.int()).abs().max()) <= 1
    with _decoding(jpegs, **args()) as m:
        m.set_epoch(0, start_batch=2)  # not a whole epoch: decoded in full first
        assert len(drain(m).indices) == N - 2 * 4 and m._seen is None
    with _decoding(jpegs, **args(rank=1, world_size=3)) as m:
        decoded, decode_into = [], m._decode_into
        m._decode_into = lambda stored, indices, seen: decoded.append(sorted(indices)) or decode_into(
            stored, indices, seen)
        share = set(drain(m, 0).indices.tolist())
        assert decoded == [sorted(set(range(N)) - share)], "the other ranks' images were not decoded after the epoch"
        assert m._seen is None and int((m.images.int() - want.int()).abs().max()) <= 1


@pytest.mark.parametrize("first_epoch", [
    False, pytest.param(True, marks=needs_first_epoch_decode)], ids=["decoded", "decoding"])
def test_a_closed_loader_says_so(jpegs, first_epoch):
    """After close the stored split is gone: a new epoch, an epoch left suspended, ``images``
    and ``bad`` all raise a named error instead of failing on an empty store."""
    m = _decoding(jpegs, **args()) if first_epoch else MemoryImageLoader(jpegs, decoder="torch", **args())
    it = iter(m)
    next(it)
    m.close()
    for what in (lambda: next(it), lambda: next(iter(m)), lambda: m.images, lambda: m.bad):
        with pytest.raises(RuntimeError, match="MemoryImageLoader is closed"):
            what()


@needs_first_epoch_decode
def test_first_epoch_abandoned_with_batches_in_flight_keeps_the_store_alive(jpegs):
    """The operator writes the store through its address while DALI decodes ahead: closing the
    loader, dropping the epoch's iterator or the whole loader mid-epoch leaves the store to the
    pipeline until DALI has shut it down (run under ASan or valgrind this is where a write after
    free would show)."""
    import gc
    import weakref

    m = _decoding(jpegs, **args(batch_size=2))
    it = iter(m)
    next(it)
    store = weakref.ref(m._images)
    m.close()  # the loader lets go of the store; the suspended epoch still holds a pipeline
    assert store() is not None
    del it
    gc.collect()
    assert store() is None  # released with the pipeline (after its Pipeline.__del__ shut it down)
    m = _decoding(jpegs, **args(batch_size=2))
    it = iter(m)
    next(it)
    del m, it  # no close at all: a reference cycle through the pipeline's source
    gc.collect()


@needs_first_epoch_decode
def test_first_epoch_that_decodes_fills_the_cache(jpegs, tmp_path):
    cache = tmp_path / "cache"
    with _decoding(jpegs, cache_dir=cache, **args()) as m:
        assert not m.cache_path.exists()
        drain(m, 0)
        assert m.cache_path.is_file()
        stored = m.images.clone()
    with MemoryImageLoader(jpegs, decoder="dali", cache_dir=cache, **args()) as again:
        assert not again.decodes_first_epoch and again.decode_seconds == 0.0
        assert torch.equal(again.images, stored)


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.zeros((N, 3, S, S), dtype=torch.float32), "uint8"),
    (lambda: torch.zeros((N - 1, 3, S, S), dtype=torch.uint8), r"shape \(13, 3, 32, 32\)"),
    (lambda: torch.zeros((N, 3, S + 1, S), dtype=torch.uint8), "shape"),
    (lambda: torch.zeros((N, 3, S, 2 * S), dtype=torch.uint8)[..., ::2], "not contiguous"),
    (lambda: torch.zeros((N, 3, S, S), dtype=torch.uint8, device="meta"), "CPU"),
    (lambda: np.zeros((N, 3, S, S), dtype=np.uint8), "ndarray")], ids=["dtype", "rows", "size", "strided", "meta",
                                                                       "numpy"])
def test_dali_store_is_checked(jpegs, bad, match):
    """The store the operator writes through its address must be exactly the split's."""
    if not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    from tdsa_fast.data import dali_plugin
    from tdsa_fast.data.dali_loader import DaliImageLoader

    if not dali_plugin.load():
        pytest.skip("the DALI plugin is not available")
    with pytest.raises(ValueError, match=match):
        DaliImageLoader(jpegs, store=bad(), **args())
    ok = torch.zeros((N, 3, S, S), dtype=torch.uint8)
    with pytest.raises(ValueError, match="store needs"):
        DaliImageLoader(jpegs, store=ok, **args(recipe="rrc"))
    with pytest.raises(ValueError, match="store needs"):
        DaliImageLoader(jpegs, store=ok, fused_resize=False, **args())


@pytest.mark.parametrize("dtype,channels_last,tol", [
    (torch.float32, False, 0.0), (torch.float32, True, 0.0), (torch.bfloat16, False, 2 ** -8),
    (torch.float16, True, 2 ** -11)])
def test_output_dtype_and_layout(jpegs, dtype, channels_last, tol):
    with build_loader(jpegs, loader="memory", decoder="torch", dtype=dtype, channels_last=channels_last,
                      **args()) as m, build_loader(jpegs, loader="torch", **args()) as t:
        b, ref = next(iter(m)), next(iter(t))
    assert b.images.dtype == dtype and b.images.shape == (4, 3, S, S)
    assert b.images.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert float((b.images.float() - ref.images).abs().max()) <= tol


def _same_size_jpegs(folder, n=9, side=48):
    rng = np.random.default_rng(0)
    return [(str(save_jpeg(folder / f"{i}.jpg", photo_like(rng, side, side))), i % 3) for i in range(n)]


def test_rrc_from_a_stored_image_of_the_original_size_matches_the_torch_loader(tmp_path):
    """With the stored side equal to the (square) originals' the stored image is the decoded
    one, and every crop-resize is the torch loader's within a grey level."""
    samples = _same_size_jpegs(tmp_path)
    a = args(recipe="rrc")
    with build_loader(samples, loader="memory", decoder="torch", stored_size=48, **a) as m, \
            build_loader(samples, loader="torch", **a) as t:
        em, et = drain(m, 1), drain(t, 1)
    assert_same_batches(em, et)
    assert levels(em.images, et.images) <= 1 + EPS_LEVELS


def test_rrc_from_the_default_stored_size_is_close(jpegs):
    """The default stored side (2 x img_size) resamples twice: the same windows, close pixels."""
    a = args(recipe="rrc")
    with build_loader(jpegs, loader="memory", decoder="torch", **a) as m, build_loader(jpegs, loader="torch", **a) as t:
        assert m.stored_size == 2 * S and m.images.shape == (N, 3, 2 * S, 2 * S)
        em, et = drain(m, 2), drain(t, 2)
    assert_same_batches(em, et)
    mean = float((em.images - et.images).abs().mean()) * 127.5
    assert mean < 1.0, f"mean difference {mean:.2f} grey levels"


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_and_padding_as_the_torch_loader(jpegs, world_size):
    for rank in range(world_size):
        a = args(rank=rank, world_size=world_size)
        with build_loader(jpegs, loader="memory", decoder="torch", **a) as m, \
                build_loader(jpegs, loader="torch", **a) as t:
            em, et = drain(m, 1), drain(t, 1)
        assert_same_batches(em, et, f"rank {rank}/{world_size}")
        assert torch.equal(em.images, et.images)


def test_an_epoch_resumed_mid_way(jpegs):
    check_start_batch_resumes_the_epoch(lambda s, **a: MemoryImageLoader(s, decoder="torch", **a), jpegs, S)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", ["corrupt", "truncated", "missing"])
def test_bad_image_names_the_file_or_is_skipped_and_counted(jpegs, tmp_path, decoder, kind):
    """Without ``skip_bad``: named at construction, or, when the first epoch decodes, by that
    epoch and by every later use (never an epoch without the image).  With it: left out and
    counted in every epoch, the first (decoding) one included, its stored row zeros."""
    samples = list(jpegs)
    bad = str(write_bad(tmp_path / "bad.jpg", kind))
    samples[5] = (bad, samples[5][1])
    with pytest.raises(BadImageError, match="bad.jpg"):
        m = MemoryImageLoader(samples, decoder=decoder, **args())
        assert m.decodes_first_epoch, "construction decoded the split without finding the bad image"
        with m:
            with pytest.raises(BadImageError, match="bad.jpg"):
                drain(m, 0)
            with pytest.raises(BadImageError, match="bad.jpg"):
                drain(m, 1)
            m.images
    a = args(skip_bad=True)
    with build_loader(samples, loader="memory", decoder=decoder, **a) as m, \
            build_loader(samples, loader="torch", **a) as t:
        for epoch in (0, 1):  # counted in every epoch, as the torch loader does
            em, et = drain(m, epoch), drain(t, epoch)
            assert sum(em.skipped) == 1 and 5 not in em.indices.tolist()
            assert_same_batches(em, et, f"epoch {epoch}")
        assert m.bad.tolist() == [i == 5 for i in range(N)]
        assert not m.images[5].any()  # the unreadable image's row is zeros, not uninitialised memory


def test_a_split_that_does_not_fit_is_refused_naming_dali(jpegs, monkeypatch):
    monkeypatch.setattr(memory_loader, "free_memory", lambda device: 1000)
    need = memory_loader.stored_bytes(N, S)
    with pytest.raises(ValueError, match="--loader dali") as e:
        MemoryImageLoader(jpegs, decoder="torch", **args())
    assert f"{need / 2**30:.2f} GiB" in str(e.value)
    monkeypatch.setattr(memory_loader, "free_memory", lambda device: 2 * need)
    assert MemoryImageLoader(jpegs, decoder="torch", memory_fraction=1.0, **args()).images.shape[0] == N
    with pytest.raises(ValueError, match="--loader dali"):
        MemoryImageLoader(jpegs, decoder="torch", memory_fraction=0.4, **args())


@pytest.mark.parametrize("bad", [dict(decoder="nvjpeg"), dict(stored_size=0), dict(stored_size=True),
                                 dict(memory_fraction=0), dict(memory_fraction=1.5)])
def test_bad_arguments_are_named(jpegs, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MemoryImageLoader(jpegs, **args(), **bad)


def test_decode_argument_is_refused(jpegs):
    with pytest.raises(ValueError, match="decode= applies to the torch loader only"):
        build_loader(jpegs, loader="memory", decode="device", **args())


def test_auto_keeps_dali_or_torch_on_the_cpu(jpegs):
    with build_loader(jpegs, loader="auto", **args()) as L:
        assert L.kind == ("dali" if dali_available() else "torch")


def test_cache_is_loaded_by_the_next_run_and_keyed(jpegs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with MemoryImageLoader(jpegs, decoder="torch", cache_dir=cache, **args()) as first:
        assert first.decode_seconds > 0 and first.cache_path.is_file()
        stored = first.images.clone()
        path = first.cache_path

    def no_decode(self, stored, indices, seen):
        raise AssertionError("decoded although the cache holds the split")

    monkeypatch.setattr(MemoryImageLoader, "_decode_into", no_decode)
    with MemoryImageLoader(jpegs, decoder="torch", cache_dir=cache, **args()) as again:
        assert again.cache_path == path and again.decode_seconds == 0.0
        assert torch.equal(again.images, stored)
    monkeypatch.undo()
    others = [dict(img_size=S + 1), dict(decoder="dali") if dali_available() else dict(img_size=S + 2)]
    files = list(jpegs[:-1])
    with MemoryImageLoader(files, decoder="torch", cache_dir=cache, **args()) as fewer:
        keys = {path, fewer.cache_path}
    for other in others:
        a = dict(args(), decoder="torch") | other
        with MemoryImageLoader(jpegs, cache_dir=cache, **a) as L:
            keys.add(L.cache_path)
    assert len(keys) == 2 + len(others), "the file list, size and decoder must each change the key"
    assert not list(cache.glob("*.tmp*")), "a temporary file was left behind"


@pytest.mark.parametrize("damage", ["cut_short", "empty", "foreign", "wrong_shape"])
def test_a_damaged_cache_is_decoded_again_and_rewritten(jpegs, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    with MemoryImageLoader(jpegs, decoder="torch", cache_dir=cache, **args()) as first:
        stored, path = first.images.clone(), first.cache_path
    data = path.read_bytes()
    if damage == "cut_short":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        torch.save(dict(images=stored[:-1], bad=torch.zeros(N - 1, dtype=torch.bool), reasons="{}"), path)
    with caplog.at_level("WARNING", logger="tdsa_fast.data.memory_loader"):
        with MemoryImageLoader(jpegs, decoder="torch", cache_dir=cache, **args()) as again:
            assert again.decode_seconds > 0 and torch.equal(again.images, stored)
    assert "cannot be used" in caplog.text and "decoding the split again" in caplog.text
    with MemoryImageLoader(jpegs, decoder="torch", cache_dir=cache, **args()) as third:  # rewritten
        assert third.decode_seconds == 0.0 and torch.equal(third.images, stored)


def test_cache_keeps_bad_images_out(jpegs, tmp_path):
    samples = list(jpegs)
    samples[2] = (str(write_bad(tmp_path / "bad.jpg", "corrupt")), 0)
    cache = tmp_path / "cache"
    MemoryImageLoader(samples, decoder="torch", cache_dir=cache, skip_bad=True, **args()).close()
    with MemoryImageLoader(samples, decoder="torch", cache_dir=cache, skip_bad=True, **args()) as m:
        assert m.decode_seconds == 0.0 and m.bad.tolist()[2]
        assert sum(drain(m, 0).skipped) == 1
    with pytest.raises(BadImageError, match="bad.jpg"):
        MemoryImageLoader(samples, decoder="torch", cache_dir=cache, **args())


def test_trainer_runs_with_the_memory_loader_and_its_cache(tmp_path):
    from test_train import FAST, _folder_dataset
    from tdsa_fast.train import main

    root = _folder_dataset(tmp_path / "data", lambda p: p.write_bytes(b"not a jpeg"))
    common = FAST + ["--data-root", str(root), "--loader", "memory", "--memory-cache", str(tmp_path / "cache")]
    assert main(common + ["--output", str(tmp_path / "out")]) == 2  # the bad image, named on stderr
    assert main(common + ["--output", str(tmp_path / "out2"), "--skip-bad-images", "--epochs", "2"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out2" / "metrics.csv")))
    assert [r["skipped_images"] for r in rows] == ["1", "1"]
    assert json.loads((tmp_path / "out2" / "config.json").read_text())["loader_used"] == "memory"
    assert len(list((tmp_path / "cache").glob("memory-*.pt"))) == 2  # the train and test splits


# ---------------------------------------------------------------------------------------
# (b) the real Flowers-102


@pytest.fixture(scope="module")
def flowers_train():
    if not (FLOWERS_REAL / "imagelabels.mat").is_file():
        pytest.skip(f"the real Flowers-102 is not at {FLOWERS_REAL.resolve()} (../shared/data/flowers102 "
                    "beside the repo)")
    from tdsa_fast.data.datasets import load_split

    return load_split("flowers", FLOWERS_REAL, "train").samples


@pytest.mark.timeout(600)
def test_real_train_split_three_loaders_same_pixels(flowers_train):
    """One training epoch of the 2040 training images (released recipe, 64 px, batch 64): the
    memory loader (decoded by DALI when it is installed, else by the torch loader), the
    torch loader and the DALI loader read the same samples in the same batches, and every
    pixel is within one grey level of the others'."""
    assert len(flowers_train) == 2040
    a = dict(img_size=64, train=True, batch_size=64, workers=2, seed=1)
    kinds = ["memory", "torch"] + (["dali"] if dali_available() else [])
    epochs = {}
    for kind in kinds:
        with build_loader(flowers_train, loader=kind, **a) as L:
            epochs[kind] = drain(L, 3)
    m = epochs["memory"]
    assert sorted(m.indices.tolist()) == list(range(2040))
    for kind in kinds[1:]:
        assert_same_batches(m, epochs[kind], kind)
        err = levels(m.images, epochs[kind].images)
        assert err <= 1 + EPS_LEVELS, f"memory vs {kind}: {err:.2f} grey levels"


@pytest.mark.parametrize("s", [1, 5, 12])
def test_both_crop_paths_give_the_same_windows(s):
    """``shifted_windows``' gather (the CUDA path) and slices (the CPU path) agree on every
    shift and flip, and both equal a padded crop by hand."""
    g = torch.Generator().manual_seed(s)
    images = torch.randint(0, 256, (7, 3, s, s), dtype=torch.uint8, generator=g)
    draws = [(t, l, f) for t in (-4, -1, 0, 3, 4) for l in (-4, 0, 2, 4) for f in (False, True)]
    idx = [k % 7 for k in range(len(draws))]
    tops, lefts, flips = zip(*draws)
    got = memory_loader.shifted_windows(images, idx, tops, lefts, flips, how="gather")
    assert torch.equal(got, memory_loader.shifted_windows(images, idx, tops, lefts, flips, how="slices"))
    padded = torch.nn.functional.pad(images, (4,) * 4)
    for j, (t, l, f) in enumerate(draws):
        ref = padded[idx[j], :, t + 4:t + 4 + s, l + 4:l + 4 + s]
        assert torch.equal(got[j], ref.flip(-1) if f else ref), (t, l, f)
    with pytest.raises(ValueError, match="how must be"):
        memory_loader.shifted_windows(images, idx, tops, lefts, flips, how="loop")
    for how in ("gather", "slices"):  # a batch whose every image was skipped as unreadable
        empty = memory_loader.shifted_windows(images, [], [], [], [], how=how)
        assert empty.shape == (0, 3, s, s) and empty.dtype == torch.uint8


@pytest.mark.parametrize("recipe", ["released", "rrc"])
def test_a_batch_of_only_unreadable_images_is_empty_and_counted(jpegs, tmp_path, recipe):
    """With ``skip_bad`` and one image a batch, the bad image's batch is empty (0 images, one
    skipped), as in the other loaders; the rrc path and the gather see no image at all."""
    samples = list(jpegs)
    samples[2] = (str(write_bad(tmp_path / "bad.jpg", "corrupt")), samples[2][1])
    a = args(skip_bad=True, batch_size=1, recipe=recipe)
    with build_loader(samples, loader="memory", decoder="torch", **a) as m:
        for epoch in (0, 1):
            m.set_epoch(epoch)
            batches = list(m)
            empty = [b for b in batches if b.images.shape[0] == 0]
            assert len(empty) == 1 and empty[0].skipped == 1 and empty[0].num_real == 0
            assert empty[0].images.shape == (0, 3, S, S)
            assert sum(b.images.shape[0] for b in batches) == N - 1


HAVE_WINDOWS_OP = _backend.fused_available("cpu", "released_windows")
WINDOW_PATHS = ["python", pytest.param("op", marks=pytest.mark.skipif(
    not HAVE_WINDOWS_OP, reason="tdsa_fast._C is not built (pip install -e . builds it)"))]


def _windows(path, images, idx, tops, lefts, flips, **kw):
    if path == "op":
        return memory_loader.cpu_windows(images, idx, tops, lefts, flips, **kw)
    return memory_loader.finished_windows(images, idx, tops, lefts, flips, **kw)


@pytest.mark.parametrize("path", WINDOW_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("s", [1, 2, 5, 12, 33])
def test_cpu_windows_are_finish_images_of_the_gathered_windows_bitwise(s, channels_last, dtype, path):
    """The CPU batch -- the windows pasted into the float batch (``finished_windows``) or the
    compiled op (``cpu_windows``) -- equals ``finish_images(shifted_windows(...))`` to the
    bit, in every output dtype and layout, for every shift of the recipe (images smaller than
    the shift too)."""
    from tdsa_fast.data.augment import finish_images

    g = torch.Generator().manual_seed(s)
    images = torch.randint(0, 256, (7, 3, s, s), dtype=torch.uint8, generator=g)
    images[0] = torch.tensor([0, 255, 127, 128], dtype=torch.uint8).repeat(3 * s * s)[:3 * s * s].view(3, s, s)
    draws = [(t, l, f) for t in (-4, -1, 0, 3, 4) for l in (-4, 0, 2, 4) for f in (False, True)]
    idx = [k % 7 for k in range(len(draws))]
    tops, lefts, flips = zip(*draws)
    ref = finish_images(memory_loader.shifted_windows(images, idx, tops, lefts, flips, how="gather"),
                        device=torch.device("cpu"), channels_last=channels_last, dtype=dtype, layout="NCHW")
    got = _windows(path, images, idx, tops, lefts, flips, channels_last=channels_last, dtype=dtype)
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.stride() == ref.stride()
    assert torch.equal(got, ref)


@pytest.mark.parametrize("path", WINDOW_PATHS)
@pytest.mark.parametrize("shift", [-9, 7, 40])
def test_cpu_windows_shifted_past_the_image_are_the_zero_level(path, shift):
    """A window wholly outside its image (a shift of more than ``s``) is the zero level
    everywhere; the rest of the batch is unaffected."""
    images = torch.randint(0, 256, (2, 3, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    got = _windows(path, images, [0, 1, 1], [shift, 0, 0], [0, shift, 0], [True, False, False],
                   channels_last=False, dtype=torch.float32)
    assert torch.equal(got[:2], torch.full((2, 3, 3, 3), -1.0))
    assert torch.equal(got[2], (images[1].float() - 127.5) / 127.5)


def test_cpu_windows_of_an_empty_batch():
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    for channels_last in (False, True):
        got = memory_loader.cpu_windows(images, [], [], [], [], channels_last=channels_last, dtype=torch.float16)
        assert got.shape == (0, 3, 4, 4) and got.dtype == torch.float16


@pytest.mark.skipif(not HAVE_WINDOWS_OP, reason="tdsa_fast._C is not built (pip install -e . builds it)")
def test_released_windows_op_refuses_bad_input():
    """The op names what is wrong instead of reading outside the stored split."""
    op = torch.ops.tdsa_fast.released_windows
    images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    z, f = torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.bool)
    for bad_idx in (2, -1):
        with pytest.raises(RuntimeError, match=r"idx\[0\] = .* is outside \[0, 2\)"):
            op(images, torch.tensor([bad_idx]), z, z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match="contiguous uint8"):
        op(images.float(), z, z, z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match="contiguous uint8"):
        op(images.transpose(2, 3), z, z, z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"\[N, 3, s, s\]"):
        op(torch.zeros((2, 3, 4, 5), dtype=torch.uint8), z, z, z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match="int64"):
        op(images, z.int(), z, z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match="int64"):
        op(images, z, torch.zeros(2, dtype=torch.int64), z, f, torch.float32, False)
    with pytest.raises(RuntimeError, match="bool"):
        op(images, z, z, z, z, torch.float32, False)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        op(images, z, z, z, f, torch.float64, False)


@pytest.mark.skipif(not HAVE_WINDOWS_OP, reason="tdsa_fast._C is not built (pip install -e . builds it)")
def test_released_windows_opcheck():
    images = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    args = (images, torch.tensor([2, 0]), torch.tensor([-4, 1]), torch.tensor([3, 0]), torch.tensor([True, False]))
    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        torch.library.opcheck(torch.ops.tdsa_fast.released_windows.default, (*args, dtype, channels_last))


def test_cpu_windows_falls_back_to_the_python_path(monkeypatch):
    """Without the compiled op (or for a dtype it does not write) the Python path runs."""
    calls = []
    real = memory_loader.finished_windows
    monkeypatch.setattr(memory_loader, "finished_windows", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    got = memory_loader.cpu_windows(images, [0], [1], [0], [False], channels_last=False, dtype=torch.float64)
    assert calls == [1] and got.dtype == torch.float64
    monkeypatch.setattr(_backend, "fused_available", lambda *a, **k: False)
    memory_loader.cpu_windows(images, [0], [1], [0], [False], channels_last=False, dtype=torch.float32)
    assert calls == [1, 1]


@pytest.mark.parametrize("normalised", [False, True], ids=["uint8", "float32"])
@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [1, 2], [0, 2, 3]], ids=["all", "consecutive", "gap"])
def test_decoded_levels_are_stored_exactly(indices, normalised):
    """Every level ``v`` is stored as it is decoded (the DALI decode's uint8) or survives
    ``(v - 127.5) / 127.5`` in float32 and back (the torch decode), in both of ``_store``'s copies."""
    levels_ = torch.arange(256, dtype=torch.uint8).repeat(4 * 3)[:4 * 3 * 8 * 8].reshape(4, 3, 8, 8)
    stored = torch.zeros((4, 3, 8, 8), dtype=torch.uint8)
    images = levels_[indices].float().sub(127.5).div(127.5) if normalised else levels_[indices]
    memory_loader._store(stored, torch.tensor(indices), images)
    assert torch.equal(stored[indices], levels_[indices])
    assert not stored[[i for i in range(4) if i not in indices]].any()
