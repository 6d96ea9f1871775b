"""Data pipeline throughput (images/s) of one training epoch, measured in the same run:

* ``released``     the released code's recipe: PIL decode + torchvision transforms
                   (``Resize -> RandomCrop(pad 4) -> flip -> ToTensor -> Normalize``) in a
                   DataLoader with ``workers`` processes (``bench/released_recipe.py``);
                   on CUDA its float32 batches are copied to the device, as that code does;
* ``torch``        our PyTorch fallback (PIL decode, uint8 transforms in ``workers``
                   processes, normalisation in the main process / on the device);
* ``torch-device`` our fallback decoding with ``torchvision.io.decode_jpeg`` on the device
                   (nvJPEG; CUDA only by default);
* ``dali``         the DALI pipeline with ``workers`` threads (CPU decode with
                   ``device_id=None`` and the project's fused ``tdsa_resample_window``
                   operator, or ``mixed`` decode and DALI's GPU resize on CUDA);
* ``memory``       ``--loader memory``: the split decoded once (by DALI when installed, else
                   the torch loader) into a ``uint8`` tensor on the device, each batch a gather
                   + crop/flip there; its first epoch (construction + one epoch: the decode and
                   an epoch, or on the CPU with DALI one epoch that decodes) is reported against
                   the other loaders' epochs;
* ``dali-resize``  the CPU DALI pipeline with DALI's own resize and crop_mirror_normalize
                   instead of the fused operator (the fallback when the plugin cannot be
                   built; CPU only).

Real Flowers-102 training split (2,040 images; official ``trnid`` + ``valid``), training
transforms of the released recipe, 224 x 224 output, batch 32.  Each loader is started and
timed cold first: construction and one full epoch (the ``1st`` rows: worker and pipeline
start-up, and for ``memory`` the decode); then ``--rounds`` rounds each run one full epoch of
every loader in turn and then a cold start of every loader again (a fresh loader: interleaved,
so machine noise hits all alike, and the ``1st`` rows are medians of ``rounds + 1`` cold
epochs, not one), and the table gives the median images/s, the ratios against ``released``
and, when ``dali`` ran, against ``dali``: each ``1st`` row both against DALI's median epoch
and against DALI's own first epoch.

    python bench/bench_data.py [--device cpu|cuda] [--workers 2] [--rounds 3]
        [--data-root ../shared/data/flowers102] [--loaders released torch dali dali-resize]
        [--json out.json]

CI smoke (every loader runs on a few generated images):
``python -m pytest bench/bench_data.py --bench-smoke --benchmark-disable -q``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:
    import tdsa_fast  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

from tdsa_fast.data.datasets import load_split  # noqa: E402
from released_recipe import released_recipe_loader  # noqa: E402
from tdsa_fast.data.decode import dali_available  # noqa: E402
from tdsa_fast.data.loading import build_loader  # noqa: E402

KINDS = ("released", "torch", "torch-device", "dali", "dali-resize", "memory")


def make_loader(kind: str, samples, *, device: torch.device, workers: int, batch: int, img_size: int):
    if kind == "released":
        return released_recipe_loader(samples, img_size=img_size, train=True, batch_size=batch, workers=workers,
                                      pin_memory=device.type == "cuda")
    if kind == "memory":
        return build_loader(samples, loader="memory", img_size=img_size, train=True, batch_size=batch,
                            workers=workers, device=device)
    extra = {"decode": "device"} if kind == "torch-device" else {}
    if kind.startswith("dali") and device.type == "cpu":
        extra = {"fused_resize": kind == "dali"}  # "dali": the plugin, or an error when it is missing
    return build_loader(samples, loader="torch" if kind.startswith("torch") else "dali", img_size=img_size,
                        train=True, batch_size=batch, workers=workers, device=device, **extra)


def _batches(kind, loader, device, limit=None):
    """Iterates one epoch (or ``limit`` batches); yields the images of each batch on ``device``."""
    for k, item in enumerate(loader):
        if limit is not None and k >= limit:
            break
        images = item[0]
        if kind == "released":
            images = images.to(device, non_blocking=True)
        yield images


def run_epoch(kind, loader, device, epoch: int, limit=None) -> int:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n = 0
    last = None
    for images in _batches(kind, loader, device, limit):
        n += images.shape[0]
        last = images
    if device.type == "cuda" and last is not None:
        torch.cuda.synchronize(device)
    return n


def cold_epoch(kind, samples, *, device, workers, batch, img_size, epoch: int, keep: bool = False):
    """A fresh loader's construction + one full epoch: ``(img/s, loader)`` (the loader closed
    unless ``keep``)."""
    t0 = time.perf_counter()
    loader = make_loader(kind, samples, device=device, workers=workers, batch=batch, img_size=img_size)
    try:
        n = run_epoch(kind, loader, device, epoch=epoch)
    except BaseException:
        loader.close()
        raise
    rate = n / (time.perf_counter() - t0)
    if not keep:
        loader.close()
    return rate, loader


def measure(samples, kinds, *, device: torch.device, workers: int, batch: int, img_size: int, rounds: int,
            log=print) -> dict:
    """Each loader's first epoch (construction + one epoch; for ``memory`` the decode) and its
    later epochs, interleaved: a cold start of every loader, then ``rounds`` rounds that each run
    one epoch of every started loader and then one cold start of every loader again (a fresh
    loader, closed after its epoch), so both medians see the same machine noise."""
    loaders, first = {}, {kind: [] for kind in kinds}
    opts = dict(device=device, workers=workers, batch=batch, img_size=img_size)
    try:
        for kind in kinds:
            rate, loaders[kind] = cold_epoch(kind, samples, epoch=10_000, keep=True, **opts)
            first[kind].append(rate)
            if kind == "memory":
                what = "the decode" if loaders[kind].decodes_first_epoch else "decode + epoch"
                log(f"memory: decoded in {loaders[kind].decode_seconds:.1f} s ({what})")
            log(f"{kind}: first epoch (construction + one epoch) {rate:.0f} img/s")
        rates = {kind: [] for kind in kinds}
        for r in range(rounds):
            for kind in kinds:
                t0 = time.perf_counter()
                n = run_epoch(kind, loaders[kind], device, epoch=r)
                dt = time.perf_counter() - t0
                rates[kind].append(n / dt)
                log(f"round {r + 1}/{rounds} {kind:<12} {n} images in {dt:.2f} s: {n / dt:.0f} img/s")
            for kind in kinds:
                rate, _ = cold_epoch(kind, samples, epoch=10_001 + r, **opts)
                first[kind].append(rate)
                log(f"round {r + 1}/{rounds} {kind + ' 1st':<12} {rate:.0f} img/s")
    finally:
        for loader in loaders.values():
            loader.close()
    return ({kind: statistics.median(v) for kind, v in rates.items()}
            | {"_all": rates, "_first": {k: statistics.median(v) for k, v in first.items()}, "_first_all": first})


def format_table(result: dict, meta: dict) -> str:
    base, dali = result.get("released"), result.get("dali")
    dali_first = result.get("_first", {}).get("dali")
    lines = [f"{meta['device_name']} | {meta['images']} images, {meta['img_size']} px, batch {meta['batch']}, "
             f"{meta['workers']} workers/threads, median of {meta['rounds']} interleaved epochs "
             f"({meta['rounds'] + 1} cold first epochs)",
             f"{'loader':<13} {'img/s':>8} {'vs released':>12} {'vs dali':>8}"]

    def ratio(rate, against):
        return f"x{rate / against:.2f}" if against else "-"

    for kind in meta["kinds"]:
        lines.append(f"{kind:<13} {result[kind]:>8.0f} {ratio(result[kind], base):>12} {ratio(result[kind], dali):>8}")
    for kind, rate in result.get("_first", {}).items():
        lines.append(f"{kind + ' 1st':<13} {rate:>8.0f} {ratio(rate, base):>12} {ratio(rate, dali):>8}   "
                     f"(construction + first epoch; vs dali 1st: {ratio(rate, dali_first)})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "flowers102"))
    ap.add_argument("--loaders", nargs="+", choices=KINDS, default=None,
                    help="default: released, torch, dali, dali-resize (CPU), memory / torch-device (CUDA); dali only "
                         "when installed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process (default: workers)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads or max(1, a.workers))
    kinds = a.loaders or [k for k in KINDS if (k != "torch-device" or device.type == "cuda")
                          and (k != "dali-resize" or device.type == "cpu")
                          and (not k.startswith("dali") or dali_available())]
    if any(k.startswith("dali") for k in kinds) and not dali_available():
        print("DALI is not installed: pip install '.[dali]'", file=sys.stderr)
        return 2
    root = Path(a.data_root)
    if not (root / "setid.mat").exists():
        print(f"no Flowers-102 at {root} (needs setid.mat, imagelabels.mat, jpg/)", file=sys.stderr)
        return 2
    samples = load_split("flowers", root, "train").samples
    result = measure(samples, kinds, device=device, workers=a.workers, batch=a.batch, img_size=a.img_size,
                     rounds=a.rounds)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    meta = dict(device=str(device), device_name=name, images=len(samples), img_size=a.img_size, batch=a.batch,
                workers=a.workers, rounds=a.rounds, kinds=kinds, torch=torch.__version__, date=str(date.today()),
                torch_threads=torch.get_num_threads())
    print(format_table(result, meta))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(meta, img_per_s={k: result[k] for k in kinds},
                                                rounds_img_per_s=result["_all"],
                                                first_epoch_img_per_s=result["_first"],
                                                rounds_first_epoch_img_per_s=result["_first_all"]), indent=2))
    return 0


# --- pytest-benchmark entry: the CI smoke (and a quick local run on generated images) -------------

def _smoke_samples(tmp_path, n=12):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p, quality=90)
        samples.append((str(p), i % 3))
    return samples


def _smoke_kinds():
    return [k for k in KINDS if not k.startswith("dali") or dali_available()]


if "pytest" in sys.modules:
    import pytest

    @pytest.mark.parametrize("kind", _smoke_kinds())
    def test_data_throughput(benchmark, kind, tmp_path, request):
        smoke = request.config.getoption("--bench-smoke")
        if not smoke:
            pytest.skip("the data benchmark's real figures come from `python bench/bench_data.py`; "
                        "under pytest only the --bench-smoke check runs")
        samples = _smoke_samples(tmp_path)
        loader = make_loader(kind, samples, device=torch.device("cpu"), workers=0, batch=4, img_size=32)
        try:
            n = benchmark.pedantic(run_epoch, args=(kind, loader, torch.device("cpu"), 0), rounds=1, iterations=1)
        finally:
            loader.close()
        assert n == len(samples)


    def test_measure_and_table(tmp_path, request):
        """The cold first epochs, the rounds and the table's ratios on generated images."""
        if not request.config.getoption("--bench-smoke"):
            pytest.skip("runs with --bench-smoke")
        kinds = ["torch", "memory"] + (["dali"] if dali_available() else [])
        samples = _smoke_samples(tmp_path)
        result = measure(samples, kinds, device=torch.device("cpu"), workers=0, batch=4, img_size=32, rounds=2,
                         log=lambda *_: None)
        assert set(result["_first"]) == set(kinds) and all(len(result["_all"][k]) == 2 for k in kinds)
        assert all(len(result["_first_all"][k]) == 3 for k in kinds)
        assert all(result["_first"][k] == sorted(result["_first_all"][k])[1] for k in kinds)
        meta = dict(device_name="CPU", images=len(samples), img_size=32, batch=4, workers=0, rounds=2, kinds=kinds)
        table = format_table(result, meta)
        assert "memory 1st" in table and "torch 1st" in table
        if "dali" in kinds:
            ratio = result["_first"]["memory"] / result["_first"]["dali"]
            assert f"vs dali 1st: x{ratio:.2f}" in table

if __name__ == "__main__":
    sys.exit(main())
