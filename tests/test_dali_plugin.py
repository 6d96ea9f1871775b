"""The project's DALI plugin (tdsa_fast.data.dali_plugin, sources in tdsa_fast/data/dali_ops):
``fn.tdsa_resample_window`` fed raw uint8 images, against

* a transcription, in this file, of Pillow's fixed-point bilinear resample (Resample.c:
  horizontal pass, then vertical, rounding to 8 bits after each) followed by the window,
  zero fill, flip and normalisation: equal to the last bit;
* the installed Pillow's ``Image.resize``: within one grey level everywhere, and equal where
  Pillow runs its passes in that order (images no taller than the output);

over odd, tiny and large images, boxes (whole, integer, fractional), windows inside, across
and outside the resized image, flips, both layouts and both output types; bad inputs; and
the build: the cache, and the fallback to DALI's resize when it cannot be compiled.

DALI missing: skipped, except under CI (CI set), where it fails; so does a plugin that does
not build under CI."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from loader_helpers import require_dali, require_dali_plugin, save_jpeg

require_dali()

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from tdsa_fast.data import dali_plugin  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def plugin():
    require_dali_plugin()


# ---------------------------------------------------------------------------------------
# The reference: Pillow's Resample.c for 8-bit images, transcribed

PRECISION_BITS = 22


def pil_taps(in_size: int, in0: float, in1: float, out_size: int) -> np.ndarray:
    """``int64 [out_size, in_size]``: precompute_coeffs + normalize_coeffs_8bpc."""
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale
    taps = np.zeros((out_size, in_size), np.int64)
    for i in range(out_size):
        center = in0 + (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        k = np.array([max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(count)])
        if k.sum() != 0:
            k = k / k.sum()
        one = 1 << PRECISION_BITS
        taps[i, xmin:xmin + count] = [int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in k]
    return taps


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(acc >> PRECISION_BITS, 0, 255)


def reference(image: np.ndarray, size: int, box=None, top=0, left=0, mirror=False) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``float32 [3, size, size]``: Pillow's bilinear resize of ``box``
    (x0, y0, x1, y1; default the whole image), horizontal pass first, then the ``size x size``
    window at (top, left) with zeros outside, the flip, and ``(v - 127.5) / 127.5``."""
    h, w, _ = image.shape
    x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
    half = 1 << (PRECISION_BITS - 1)
    rows = _clip8(half + np.einsum("yxc,ox->yoc", image.astype(np.int64), pil_taps(w, x0, x1, size)))
    resized = _clip8(half + np.einsum("yxc,oy->oxc", rows, pil_taps(h, y0, y1, size))).astype(np.float32)
    pad = 2 * size + abs(top) + abs(left)
    canvas = np.zeros((size + 2 * pad, size + 2 * pad, 3), np.float32)
    canvas[pad:pad + size, pad:pad + size] = resized
    out = canvas[pad + top:pad + top + size, pad + left:pad + left + size]
    if mirror:
        out = out[:, ::-1]
    return ((out - 127.5) / 127.5).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------
# Running the operator


def _run(images, params, size: int, **kw) -> tuple:
    """One batch through ``decoded images -> tdsa_resample_window(size, **kw)``: its outputs."""
    @pipeline_def(batch_size=len(images), num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        img = fn.external_source(source=lambda: [np.ascontiguousarray(a) for a in images], batch=True,
                                 dtype=types.UINT8, layout="HWC" if images[0].ndim == 3 else None)
        par = fn.external_source(source=lambda: [np.asarray(p, np.float32) for p in params], batch=True,
                                 dtype=types.FLOAT)
        out = fn.tdsa_resample_window(img, par, size=size, **kw)
        return tuple(out) if isinstance(out, list) else out

    p = pipe()
    p.build()
    return p.run()


def run_op(images, params, size: int, *, half=False, channels_last=False) -> list[np.ndarray]:
    """One batch through ``decoded images -> tdsa_resample_window``; float32 outputs."""
    (out,) = _run(images, params, size, half=half, channels_last=channels_last)
    return [np.array(out.at(i)).astype(np.float32) for i in range(len(images))]


def run_op_resized(images, params, size: int, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    """As :func:`run_op` with ``resized=True``: (window output as float32, whole resized uint8)."""
    out, whole = _run(images, params, size, resized=True, **kw)
    return [(np.array(out.at(i)).astype(np.float32), np.array(whole.at(i))) for i in range(len(images))]


def run_op_store(images, params, size: int, store: np.ndarray, **kw) -> list[np.ndarray]:
    """As :func:`run_op` with ``store``: the whole resized images go into rows of ``store``."""
    (out,) = _run(images, params, size, store=store.ctypes.data, store_rows=store.shape[0], **kw)
    return [np.array(out.at(i)).astype(np.float32) for i in range(len(images))]


def params_of(box=None, top=0, left=0, mirror=False):
    x0, y0, x1, y1 = box if box is not None else (0, 0, 0, 0)
    return [x0, y0, x1, y1, top, left, 1.0 if mirror else 0.0]


def noise(h, w, seed):
    """A smooth-plus-noise image (so that resampling errors show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(x[..., None] / 3.1 + np.arange(3)) * np.cos(y[..., None] / 4.3)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


# (image height, width), output size: tiny, odd, one-pixel axes, up- and downscaling, portrait
# and landscape, the identity, and full-size FGVC photos at the recipe's 224 and at 448
SHAPES = [((1, 1), 7), ((1, 37), 5), ((29, 1), 8), ((5, 7), 16), ((160, 239), 64), ((239, 160), 64),
          ((300, 500), 32), ((64, 64), 64), ((33, 71), 1), ((500, 667), 224), ((333, 500), 448)]


@pytest.mark.parametrize("shape,size", SHAPES, ids=[f"{h}x{w}-to-{s}" for (h, w), s in SHAPES])
def test_whole_image_equals_the_transcription(shape, size):
    image = noise(*shape, seed=size)
    (got,) = run_op([image], [params_of()], size)
    want = reference(image, size)
    assert got.shape == (3, size, size)
    np.testing.assert_array_equal(got, want)


WINDOWS = [(0, 0, False), (-4, 3, True), (4, -4, False), (2, 4, True), (-70, 0, False), (0, 64, True),
           (-63, 63, False)]


@pytest.mark.parametrize("top,left,mirror", WINDOWS, ids=[f"top{t}-left{l}-{'flip' if m else 'keep'}"
                                                          for t, l, m in WINDOWS])
def test_released_recipe_window_equals_the_transcription(top, left, mirror):
    """The window (the released recipe's RandomCrop(s, padding=4) is top, left in -4..4) inside,
    across and wholly outside the resized image, with and without the flip; down- and upscaled
    (the upscaling filter's taps padded to a fixed 3, the image 3 rows high exactly that)."""
    images = [noise(120, 90, 1), noise(70, 150, 2), noise(40, 52, 3), noise(3, 61, 4)]
    got = run_op(images, [params_of(top=top, left=left, mirror=mirror)] * len(images), 64)
    for g, image in zip(got, images):
        np.testing.assert_array_equal(g, reference(image, 64, top=top, left=left, mirror=mirror))


BOXES = [(0, 0, 90, 120), (10, 5, 60, 100), (3, 40, 4, 41), (0.5, 1.25, 77.75, 119.5), (80, 0, 90, 17)]


@pytest.mark.parametrize("box", BOXES, ids=[str(b) for b in BOXES])
@pytest.mark.parametrize("mirror", [False, True], ids=["keep", "flip"])
def test_box_equals_the_transcription(box, mirror):
    """The rrc recipe's source box (integer in the loader; fractional allowed), pixels just
    outside it contributing at its edges as in ``Image.resize(..., box=...)``."""
    image = noise(120, 90, 3)
    (got,) = run_op([image], [params_of(box=box, mirror=mirror)], 48)
    np.testing.assert_array_equal(got, reference(image, 48, box=box, mirror=mirror))


@pytest.mark.parametrize("top,left,mirror", WINDOWS, ids=[f"top{t}-left{l}-{'flip' if m else 'keep'}"
                                                          for t, l, m in WINDOWS])
@pytest.mark.parametrize("shape,size", [((120, 90), 64), ((40, 52), 64), ((7, 5), 3), ((1, 1), 1)],
                         ids=["64", "64-up", "3", "1"])
def test_resized_output_is_the_whole_resized_image(top, left, mirror, shape, size):
    """``resized=True``: the second output is the whole resized image in uint8 CHW (the
    transcription's levels, whatever the window), and the first is the window as without it."""
    image = noise(*shape, seed=size)
    top, left = max(min(top, size + 4), -size - 4), max(min(left, size + 4), -size - 4)
    ((out, whole),) = run_op_resized([image], [params_of(top=top, left=left, mirror=mirror)], size)
    assert whole.dtype == np.uint8 and whole.shape == (3, size, size)
    np.testing.assert_array_equal(whole.astype(np.float32), reference(image, size) * 127.5 + 127.5)
    np.testing.assert_array_equal(out, reference(image, size, top=top, left=left, mirror=mirror))
    (plain,) = run_op([image], [params_of(top=top, left=left, mirror=mirror)], size)
    np.testing.assert_array_equal(out, plain)


@pytest.mark.parametrize("levels", [False, True], ids=["normalised", "levels"])
def test_resized_output_beside_every_main_output(levels):
    """The second output beside the levels output and the channels_last float16 one."""
    image = noise(50, 70, 4)
    kw = dict(levels=True) if levels else dict(half=True, channels_last=True)
    ((out, whole),) = run_op_resized([image], [params_of(top=-2, left=3, mirror=True)], 32, **kw)
    np.testing.assert_array_equal(whole.astype(np.float32), reference(image, 32) * 127.5 + 127.5)
    want = reference(image, 32, top=-2, left=3, mirror=True)
    if levels:
        np.testing.assert_array_equal(out, want * 127.5 + 127.5)
    else:
        np.testing.assert_allclose(out.transpose(2, 0, 1), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("kw", [{}, dict(levels=True), dict(half=True, channels_last=True)],
                         ids=["float32", "levels", "float16-HWC"])
def test_store_rows_hold_the_whole_resized_images(kw):
    """``store``: each sample's whole resized image lands in its row (the same bytes as the
    ``resized`` output), the other rows are untouched, the window output is unchanged."""
    images = [noise(120, 90, 1), noise(40, 52, 3), noise(7, 5, 2)]
    params = [params_of(top=-3, left=2, mirror=True), params_of(top=4, left=-4), params_of(top=0, left=1)]
    rows = [4, 0, 2]
    store = np.full((5, 3, 24, 24), 77, dtype=np.uint8)
    got = run_op_store(images, [p + [r] for p, r in zip(params, rows)], 24, store, **kw)
    for image, p, row, out in zip(images, params, rows, got):
        ((want_out, whole),) = run_op_resized([image], [p], 24, **kw)
        np.testing.assert_array_equal(store[row], whole)
        np.testing.assert_array_equal(out, want_out)
    assert (store[[1, 3]] == 77).all()


@pytest.mark.parametrize("row", [5.0, -1.0, 1.5])
def test_store_row_outside_the_store_is_refused(row):
    store = np.zeros((5, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="store row"):
        run_op_store([noise(9, 9, 1)], [params_of() + [row]], 8, store)
    assert not store.any()


def test_store_needs_the_row_and_excludes_the_resized_output():
    store = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="must hold 8 values"):
        run_op_store([noise(9, 9, 1)], [params_of()], 8, store)
    with pytest.raises(RuntimeError, match="excludes the resized output"):
        run_op_store([noise(9, 9, 1)], [params_of() + [0]], 8, store, resized=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["CHW", "HWC"])
@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_layout_and_dtype(half, channels_last):
    image = noise(50, 70, 4)
    (got,) = run_op([image], [params_of(top=-2, left=3, mirror=True)], 32, half=half, channels_last=channels_last)
    want = reference(image, 32, top=-2, left=3, mirror=True)
    if channels_last:
        assert got.shape == (32, 32, 3)
        got = got.transpose(2, 0, 1)
    tol = 1e-3 if half else 0.0  # float16 rounding of values in [-1, 1]
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_a_batch_of_different_sizes_and_params():
    """Every sample uses its own size and parameters (the work is split over DALI's threads)."""
    rng = np.random.default_rng(5)
    images = [noise(int(rng.integers(1, 200)), int(rng.integers(1, 200)), k) for k in range(12)]
    params = []
    for k, im in enumerate(images):
        h, w, _ = im.shape
        if k % 3 == 0:
            params.append(params_of(top=int(rng.integers(-4, 5)), left=int(rng.integers(-4, 5)), mirror=k % 2 == 0))
        elif k % 3 == 1:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            params.append(params_of(box=(x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))),
                                    mirror=k % 2 == 1))
        else:
            params.append(params_of())
    got = run_op(images, params, 40)
    for k, (g, im, p) in enumerate(zip(got, images, params)):
        box = None if p[2] <= 0 else tuple(p[:4])
        np.testing.assert_array_equal(g, reference(im, 40, box=box, top=int(p[4]), left=int(p[5]),
                                                   mirror=bool(p[6])), err_msg=f"sample {k}, {im.shape}, {p}")


PIL_CASES = [((120, 200), 64), ((150, 150), 224), ((239, 160), 224), ((500, 300), 224), ((97, 131), 32)]


@pytest.mark.parametrize("shape,size", PIL_CASES, ids=[f"{h}x{w}-to-{s}" for (h, w), s in PIL_CASES])
def test_against_the_installed_pillow(shape, size):
    """Within one grey level of ``Image.resize(BILINEAR)`` everywhere; the same values when the
    image is no taller than the output (Pillow then runs its horizontal pass first)."""
    image = noise(*shape, seed=7)
    box = (3, 2, shape[1] - 5, shape[0] - 1)
    got = run_op([image, image], [params_of(), params_of(box=box)], size)
    for g, b in zip(got, (None, box)):
        pil = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=b), np.float32)
        want = ((pil - 127.5) / 127.5).transpose(2, 0, 1)
        err = np.abs(g - want).max() * 127.5
        assert err <= 1 + 1e-3, f"box {b}: {err:.2f} grey levels from Pillow"
        if shape[0] <= size:
            np.testing.assert_array_equal(g, want, err_msg=f"box {b}: not Pillow's values")


# ---------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("image,what", [(np.zeros((8, 8, 1), np.uint8), "3 channels"),
                                        (np.zeros((8, 8, 4), np.uint8), "3 channels")], ids=["grey", "rgba"])
def test_not_rgb_is_refused(image, what):
    with pytest.raises(RuntimeError, match=what):
        run_op([image], [params_of()], 8)


def test_wrong_params_length_is_refused():
    with pytest.raises(RuntimeError, match="7 values"):
        run_op([noise(8, 8, 0)], [[0, 0, 0, 0]], 8)


# ---------------------------------------------------------------------------------------
# The build


def test_cached_library_is_reused():
    path = dali_plugin.library_path()
    assert path.is_file(), f"load() succeeded but {path} is missing"
    before = path.stat().st_mtime_ns
    assert dali_plugin.build() == path and path.stat().st_mtime_ns == before, "the cached library was rebuilt"


def test_compiled_for_this_cpu_with_the_cpu_in_the_cache_key(monkeypatch):
    """-march=native where the compiler takes it; what it expands to is part of the cache key
    (a cache shared with a machine of another CPU gets a build of its own)."""
    targets = {"a": (["-march=native"], "cc1plus -march=znver4 -mavx512f"),
               "b": (["-march=native"], "cc1plus -march=skylake -mavx2"), "none": ([], "")}
    paths = {}
    for name, target in targets.items():
        monkeypatch.setattr(dali_plugin, "_native_target", lambda cxx, t=target: t)
        paths[name] = dali_plugin.library_path()
        command = dali_plugin._compile_command(paths[name])
        assert ("-march=native" in command) == (name != "none"), command
    assert len(set(paths.values())) == 3, paths
    monkeypatch.undo()
    flags, expansion = dali_plugin._native_target("/nonexistent/c++")
    assert flags == [] and expansion == ""


def _python(code: str, env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_build_failure_falls_back_to_dali_resize(tmp_path):
    """No compiler: load() says why, ``fused_resize=True`` is refused with that reason, and the
    default loader uses DALI's resize and still gives the torch loader's images."""
    path = str(save_jpeg(tmp_path / "a.jpg", noise(40, 50, 9), quality=95))
    code = f"""
        import torch
        from tdsa_fast.data import dali_plugin
        from tdsa_fast.data.dali_loader import DaliImageLoader
        from tdsa_fast.data.torch_loader import TorchImageLoader
        assert dali_plugin.load() is False
        print("WHY", dali_plugin.why_not_loaded())
        try:
            DaliImageLoader([({path!r}, 0)], img_size=16, train=False, batch_size=1, fused_resize=True)
        except RuntimeError as e:
            print("REFUSED", e)
        with DaliImageLoader([({path!r}, 0)], img_size=16, train=False, batch_size=1) as d:
            assert d.fused_resize is False
            (b,) = list(d)
        with TorchImageLoader([({path!r}, 0)], img_size=16, train=False, batch_size=1, workers=0) as t:
            (r,) = list(t)
        diff = (b.images - r.images).abs() * 127.5
        print("INTERIOR", float(diff[..., 1:-1, 1:-1].max()))
        print("BORDER", float(diff.max()))
        """
    done = _python(code, {"CXX": "/nonexistent/c++", "TDSA_FAST_CACHE": str(tmp_path / "cache")}, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert "no C++ compiler" in lines["WHY"], done.stdout
    assert "not available" in lines["REFUSED"] and "no C++ compiler" in lines["REFUSED"], done.stdout
    # DALI's resize: within a grey level inside; its border handling differs from PIL's on
    # the outermost pixels of shrunk images (test_dali_loader.BORDER_REASON, BORDER_LEVELS)
    assert float(lines["INTERIOR"]) <= 1.001 and float(lines["BORDER"]) <= 24, done.stdout
    assert "DALI plugin is not available" in done.stderr, "the fallback was not logged"


def test_turned_off_by_environment(tmp_path):
    done = _python("""
        from tdsa_fast.data import dali_plugin
        print(dali_plugin.load())
        """, {"TDSA_FAST_DALI_PLUGIN": "0"}, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr


def test_compiled_once_by_concurrent_processes(tmp_path):
    """Two processes building into an empty cache at once: one compiles, the other waits for
    it, both load the library."""
    code = """
        import time
        from tdsa_fast.data import dali_plugin
        print(dali_plugin.load(), dali_plugin.library_path().stat().st_mtime_ns)
        """
    env = {**os.environ, "TDSA_FAST_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [o[0].split() for o in outs]
    assert all(r[0] == "True" for r in results), results
    assert results[0][1] == results[1][1], f"the library was written twice: {results}"
    libs = list((tmp_path / "cache").rglob("*.so"))
    assert len(libs) == 1, f"the cache holds {libs}"
