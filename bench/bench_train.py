"""Training throughput (images/s) with the TDSA loss, measured in the same run.

Two measurements (``--mode``):

* ``step`` (default on the CPU): one training step -- model forward, the objective
  (``TrainingObjective("tdsa")``: CE + TDSA, xi = 3, cnum_high = 3), ``zero_grad``, backward,
  ``SGD.step`` (lr 0.01, momentum 0.9, weight decay 5e-4) -- on random input tensors (the data
  pipeline is benchmarked in ``bench/bench_data.py``), for the three loss paths:

  - ``reference``  ``TrainingObjective(backend="reference")``, eager;
  - ``compiled``   ``torch.compile`` of that reference objective (``dynamic=False``, compiled
                   afresh for every size; warmed up before timing, the first step -- which
                   holds the compilation -- is reported separately and not timed);
  - ``fused``      ``TrainingObjective(backend="fused")`` (the compiled kernels).

  The model is eager and float32 in all three paths (each path has its own copy of the same
  initial model and its own optimiser). Default: the built-in default recipe's model
  (``tdsa_fast.config.DEFAULT_RECIPE``: ResNet18, standard stem, batch 32, 10 classes) at
  64 px and at 112 px (where the loss maps are larger). After warm-up, ``--rounds`` rounds
  each run ``--steps`` steps of every path in turn (interleaved, so machine noise hits all
  alike); the table gives the median images/s and the ratio to ``reference``, plus each
  path's objective forward + backward alone (on the model's detached outputs, median ms):
  the most a loss path can change in a step.

* ``e2e`` (default on CUDA): end-to-end training with data (Flowers-102 training split,
  TDSA loss, the dataset's 102 classes) -- the released code's recipe against ours, per model
  and batch size:

  - ``released``  PIL + torchvision transforms in a DataLoader (``bench/released_recipe.py``,
                  ``--workers`` processes, pinned), float32 batches copied to the device, the
                  model in float32, the eager reference loss;
  - ``ours``      ``build_loader(loader="torch", decode="device")`` (nvJPEG on CUDA) yielding
                  ``channels_last`` bf16 batches on the device, the model in ``channels_last``
                  under ``torch.autocast(dtype=torch.bfloat16)``, the fused loss.

  Both loaders are started (and warmed up with the model, ``--warmup`` steps) before timing,
  so start-up is not counted; epochs roll over inside the timed window as in training. A
  timed window is ``--steps`` steps with one device synchronisation at its end (none per
  step); ``--rounds`` windows per path, interleaved. Before each window the path takes
  ``2 * workers`` batches without training (what its DataLoader prefetched while the other
  path ran) and runs 2 untimed steps, so every window starts from that path's steady state.
  The table gives the median images/s and the ratio to ``released``.

    python bench/bench_train.py [--mode step] [--sizes 64 112] [--rounds 5] [--steps 8] [--json out.json]
    python bench/bench_train.py --mode e2e --device cuda [--models vgg16 resnet18] [--batches 32 64]
        [--img-size 224] [--workers 8] [--steps 20] [--rounds 2] [--data-root .gpu_data/flowers102] [--json ...]

CI smoke (every path once on tiny shapes on the CPU, the end-to-end one on a few generated
JPEGs): ``python -m pytest bench/bench_train.py --bench-smoke --benchmark-disable -q``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:  # the installed package (pip install . / -e .), which has the compiled kernels
    import tdsa_fast
except ImportError:
    sys.path.insert(0, str(REPO))
    import tdsa_fast

from tdsa_fast.config import DEFAULT_RECIPE, model_widths  # noqa: E402
from tdsa_fast.models import build_model  # noqa: E402
from tdsa_fast.objective import TrainingObjective  # noqa: E402

LOSS, XI, CNUM_HIGH = "tdsa", 3, 3
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
STEP_PATHS = ("reference", "compiled", "fused")
STEP_LABELS = {"reference": "reference (eager)", "compiled": "torch.compile(reference)", "fused": "fused"}
E2E_PATHS = ("released", "ours")
DEFAULT_CLASSES = 10  # the built-in default data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _kernels():
    try:
        from tdsa_fast import _ops
        return _ops.build_info().get("kernels")
    except Exception as e:  # noqa: BLE001 -- reported, the reference paths still run
        return f"unavailable: {e}"


def _small_input(stem: str):
    return {"auto": None, "standard": False, "small": True}[stem]


def make_model(arch: str, num_classes: int, img_size: int, stem: str = "standard") -> torch.nn.Module:
    middle_cnum, high_cnum = model_widths(LOSS, XI, CNUM_HIGH)
    return build_model(arch, num_classes, middle_cnum=middle_cnum, high_cnum=high_cnum, img_size=img_size,
                       small_input=_small_input(stem) if arch == "resnet18" else None)


def make_objective(backend: str, num_classes: int) -> TrainingObjective:
    return TrainingObjective(LOSS, num_classes=num_classes, cnum_high=CNUM_HIGH, backend=backend)


def make_optimizer(model, objective) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(model.parameters()) + list(objective.parameters()), lr=LR, momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)


def train_step(model, objective, optimizer, images, labels, autocast=contextlib.nullcontext):
    with autocast():
        out = model(images)
        loss, _ = objective(out, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 -- a diagnostic only
        return -1


# --- step mode: the three loss paths on random tensors ---------------------------------------------

class StepPath:
    """One loss path: its own model (a copy of the same initial weights), objective, optimiser."""

    def __init__(self, name: str, base_model, num_classes: int, device: torch.device):
        self.name = name
        self.model = copy.deepcopy(base_model).to(device).train()
        objective = make_objective("fused" if name == "fused" else "reference", num_classes).to(device)
        self.optimizer = make_optimizer(self.model, objective)
        self.objective = torch.compile(objective, dynamic=False) if name == "compiled" else objective

    def step(self, images, labels):
        return train_step(self.model, self.objective, self.optimizer, images, labels)


def measure_steps(*, arch: str, num_classes: int, img_size: int, batch: int, stem: str, device: torch.device,
                  paths, rounds: int, steps: int, warmup: int, loss_reps: int, seed: int = 0, log=print) -> dict:
    torch.manual_seed(seed)
    if "compiled" in paths:
        torch._dynamo.reset()  # a fresh, static-shape compilation for this size
    base = make_model(arch, num_classes, img_size, stem)
    runners = {name: StepPath(name, base, num_classes, device) for name in paths}
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)

    first_step_s = {}
    for name, r in runners.items():
        t0 = time.perf_counter()
        r.step(images, labels)
        _sync(device)
        first_step_s[name] = time.perf_counter() - t0
        for _ in range(max(0, warmup - 1)):
            r.step(images, labels)
        _sync(device)
        log(f"{img_size} px {name:<10} first step {first_step_s[name]:.2f} s, warmed up ({warmup} steps)")
    graphs_before = _compiled_graphs()

    rates = {name: [] for name in paths}
    for k in range(rounds):
        for name, r in runners.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                r.step(images, labels)
            _sync(device)
            dt = time.perf_counter() - t0
            rates[name].append(batch * steps / dt)
            log(f"{img_size} px round {k + 1}/{rounds} {name:<10} {steps} steps in {dt:.2f} s: "
                f"{batch * steps / dt:.1f} img/s")

    # The objective alone (forward + backward on the model's detached outputs): its share of a step.
    with torch.no_grad():
        out = base.to(device).train()(images)
    leaves = type(out)(*(t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in out))
    loss_ms = {name: [] for name in paths}
    for name, r in runners.items():
        r.objective(leaves, labels)[0].backward()  # warm-up (the compiled path may specialise once more)
    for _ in range(rounds):
        for name, r in runners.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(loss_reps):
                r.objective(leaves, labels)[0].backward()
            _sync(device)
            loss_ms[name].append(1e3 * (time.perf_counter() - t0) / loss_reps)
    graphs_after = _compiled_graphs()
    if "compiled" in paths and graphs_after != graphs_before:
        log(f"note: torch.compile produced {graphs_after - graphs_before} new graph(s) after warm-up "
            "(the loss-only calls: leaf inputs)")

    med = {name: statistics.median(v) for name, v in rates.items()}
    ref = med.get("reference")
    return dict(img_size=img_size, batch=batch, arch=arch, stem=stem, num_classes=num_classes,
                shapes=dict(middle=list(out.middle.shape), high=list(out.high.shape)),
                img_per_s=med, rounds_img_per_s=rates,
                vs_reference={n: med[n] / ref for n in paths} if ref else {},
                step_ms={n: 1e3 * batch / med[n] for n in paths},
                loss_fwdbwd_ms={n: statistics.median(v) for n, v in loss_ms.items()},
                first_step_s=first_step_s)


def format_step_table(results: list, meta: dict) -> str:
    lines = [f"{meta['device_name']} | {meta['arch']} ({meta['stem']} stem), TDSA (xi={XI}, cnum_high={CNUM_HIGH}), "
             f"{meta['num_classes']} classes, batch {meta['batch']}, float32, SGD | median of {meta['rounds']} "
             f"interleaved rounds x {meta['steps']} steps",
             f"{'px':>4} {'loss path':<25} {'img/s':>8} {'step ms':>8} {'vs reference':>13} "
             f"{'loss fwd+bwd ms':>16} {'first step s':>13}"]
    for res in results:
        for name in meta["paths"]:
            ratio = f"x{res['vs_reference'][name]:.2f}" if res["vs_reference"] else "-"
            lines.append(f"{res['img_size']:>4} {STEP_LABELS[name]:<25} {res['img_per_s'][name]:>8.1f} "
                         f"{res['step_ms'][name]:>8.1f} {ratio:>13} {res['loss_fwdbwd_ms'][name]:>16.2f} "
                         f"{res['first_step_s'][name]:>13.2f}")
    return "\n".join(lines)


# --- e2e mode: the released recipe against ours, with data -----------------------------------------

def make_e2e_loader(kind: str, samples, *, device: torch.device, workers: int, batch: int, img_size: int):
    if kind == "released":
        from released_recipe import released_recipe_loader
        return released_recipe_loader(samples, img_size=img_size, train=True, batch_size=batch, workers=workers,
                                      pin_memory=device.type == "cuda")
    from tdsa_fast.data.loading import build_loader
    return build_loader(samples, loader="torch", decode="device", train=True, img_size=img_size, batch_size=batch,
                        workers=workers, device=device, channels_last=True, dtype=torch.bfloat16)


def endless_batches(kind: str, loader, device: torch.device):
    """(images, labels, n) on ``device``, epoch after epoch; ``n`` is a host int (no sync)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for item in loader:
            if kind == "released":
                images, labels = item[0], item[1]
                n = images.shape[0]
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
            else:
                n = item.num_real
                images, labels = item.images[:n], item.labels[:n]
            if n:
                yield images, labels, n
        epoch += 1


class E2EPath:
    """One recipe's model, objective and optimiser, fed from a shared endless batch stream."""

    def __init__(self, kind: str, base_model, num_classes: int, device: torch.device, stream):
        self.kind, self.stream = kind, stream
        model = copy.deepcopy(base_model).to(device).train()
        if kind == "ours":
            model = model.to(memory_format=torch.channels_last)
            self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext
        self.model = model
        self.objective = make_objective("fused" if kind == "ours" else "reference", num_classes).to(device)
        self.optimizer = make_optimizer(self.model, self.objective)

    def drain(self, batches: int) -> None:
        """Takes ``batches`` batches without training: empties what the loader's workers
        prefetched while the other path ran, so that a timed window does not start with a full
        queue (up to ``2 * workers`` batches ready, which would flatter a data-bound path)."""
        for _ in range(batches):
            next(self.stream)

    def run(self, steps: int) -> int:
        n_images = 0
        for _ in range(steps):
            images, labels, n = next(self.stream)
            train_step(self.model, self.objective, self.optimizer, images, labels, self.autocast)
            n_images += n
        return n_images


def measure_e2e(samples, num_classes: int, *, archs, batches, img_size: int, device: torch.device, workers: int,
                rounds: int, steps: int, warmup: int, paths=E2E_PATHS, drain: int | None = None, settle: int = 2,
                seed: int = 0, log=print) -> list:
    """Before every timed window: ``drain`` batches taken without training (default
    ``2 * workers``, the DataLoader's prefetch) and ``settle`` untimed training steps, so the
    window starts from the path's steady state rather than from a queue filled while the other
    path ran."""
    drain = 2 * workers if drain is None else drain
    results = []
    for batch in batches:
        loaders, streams = {}, {}
        try:
            for kind in paths:
                t0 = time.perf_counter()
                loaders[kind] = make_e2e_loader(kind, samples, device=device, workers=workers, batch=batch,
                                                img_size=img_size)
                streams[kind] = endless_batches(kind, loaders[kind], device)
                next(streams[kind])  # start the workers (not timed)
                log(f"B={batch} {kind}: loader ready in {time.perf_counter() - t0:.1f} s")
            for arch in archs:
                torch.manual_seed(seed)
                base = make_model(arch, num_classes, img_size)
                runners = {kind: E2EPath(kind, base, num_classes, device, streams[kind]) for kind in paths}
                del base
                for kind, r in runners.items():
                    t0 = time.perf_counter()
                    r.run(warmup)
                    _sync(device)
                    log(f"{arch} B={batch} {kind}: {warmup} warm-up steps in {time.perf_counter() - t0:.1f} s")
                rates = {kind: [] for kind in paths}
                for k in range(rounds):
                    for kind, r in runners.items():
                        r.drain(drain)
                        r.run(settle)
                        _sync(device)
                        t0 = time.perf_counter()
                        n = r.run(steps)
                        _sync(device)
                        dt = time.perf_counter() - t0
                        rates[kind].append(n / dt)
                        log(f"{arch} B={batch} round {k + 1}/{rounds} {kind:<8} {n} images in {dt:.2f} s: "
                            f"{n / dt:.0f} img/s")
                med = {kind: statistics.median(v) for kind, v in rates.items()}
                base_rate = med.get("released")
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
                results.append(dict(arch=arch, batch=batch, img_size=img_size, img_per_s=med, rounds_img_per_s=rates,
                                    vs_released={k: med[k] / base_rate for k in paths} if base_rate else {},
                                    peak_allocated_bytes_both_paths=peak))
                del runners
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
        finally:
            for loader in loaders.values():
                loader.close()
    return results


def format_e2e_table(results: list, meta: dict) -> str:
    lines = [f"{meta['device_name']} | Flowers-102 train ({meta['images']} images, {meta['num_classes']} classes), "
             f"TDSA, {meta['img_size']} px, {meta['workers']} workers | median of {meta['rounds']} interleaved "
             f"windows x {meta['steps']} steps",
             "released = PIL DataLoader, fp32 model, eager reference loss; "
             "ours = device decode, bf16 autocast, channels_last, fused loss",
             f"{'model':<9} {'B':>3} {'released img/s':>15} {'ours img/s':>11} {'ours vs released':>17}"]
    for res in results:
        rel, ours = res["img_per_s"].get("released"), res["img_per_s"].get("ours")
        ratio = f"x{res['vs_released']['ours']:.2f}" if res["vs_released"] and ours else "-"
        lines.append(f"{res['arch']:<9} {res['batch']:>3} {rel if rel is None else f'{rel:.0f}':>15} "
                     f"{ours if ours is None else f'{ours:.0f}':>11} {ratio:>17}")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("step", "e2e"), default=None, help="default: step on cpu, e2e on cuda")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    ap.add_argument("--rounds", type=int, default=None, help="default: 5 (step), 2 (e2e)")
    ap.add_argument("--steps", type=int, default=None, help="steps per path per round; default: 8 (step), 20 (e2e)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per path; default: 3 (step), 5 (e2e)")
    ap.add_argument("--json", default=None)
    s = ap.add_argument_group("step mode")
    s.add_argument("--sizes", type=int, nargs="+", default=[DEFAULT_RECIPE["img_size"], 112])
    s.add_argument("--batch", type=int, default=DEFAULT_RECIPE["batch_size"])
    s.add_argument("--model", default=DEFAULT_RECIPE["model"], choices=("resnet18", "vgg16"))
    s.add_argument("--stem", default=DEFAULT_RECIPE.get("stem", "standard"), choices=("auto", "standard", "small"))
    s.add_argument("--classes", type=int, default=DEFAULT_CLASSES)
    s.add_argument("--paths", nargs="+", choices=STEP_PATHS, default=list(STEP_PATHS))
    s.add_argument("--loss-reps", type=int, default=10, help="objective-only calls per path per round")
    e = ap.add_argument_group("e2e mode")
    e.add_argument("--models", nargs="+", choices=("vgg16", "resnet18"), default=["vgg16", "resnet18"])
    e.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    e.add_argument("--img-size", type=int, default=224)
    e.add_argument("--workers", type=int, default=8)
    e.add_argument("--data-root", default=str(REPO / ".gpu_data" / "flowers102"))
    e.add_argument("--recipes", nargs="+", choices=E2E_PATHS, default=list(E2E_PATHS))
    e.add_argument("--drain", type=int, default=None,
                   help="batches taken without training before each timed window (default: 2 x workers)")
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    mode = a.mode or ("e2e" if device.type == "cuda" else "step")
    common = dict(device=str(device), device_name=_device_name(device), torch=torch.__version__,
                  date=str(date.today()), torch_threads=torch.get_num_threads(), mode=mode,
                  tdsa_fast=str(Path(tdsa_fast.__file__).parent), kernels=_kernels())

    if mode == "step":
        rounds, steps, warmup = a.rounds or 5, a.steps or 8, a.warmup or 3
        meta = dict(common, arch=a.model, stem=a.stem, num_classes=a.classes, batch=a.batch, rounds=rounds,
                    steps=steps, warmup=warmup, paths=a.paths, sizes=a.sizes, loss_reps=a.loss_reps)
        results = []
        for size in a.sizes:
            results.append(measure_steps(arch=a.model, num_classes=a.classes, img_size=size, batch=a.batch,
                                         stem=a.stem, device=device, paths=a.paths, rounds=rounds, steps=steps,
                                         warmup=warmup, loss_reps=a.loss_reps))
        print(format_step_table(results, meta))
    else:
        from tdsa_fast.data.datasets import load_split

        rounds, steps, warmup = a.rounds or 2, a.steps or 20, a.warmup or 5
        root = Path(a.data_root)
        if not (root / "setid.mat").exists():
            print(f"no Flowers-102 at {root} (needs setid.mat, imagelabels.mat, jpg/): "
                  "run 'python bench/make_gpu_data.py'", file=sys.stderr)
            return 2
        split = load_split("flowers", root, "train")
        results = measure_e2e(split.samples, split.num_classes, archs=a.models, batches=a.batches,
                              img_size=a.img_size, device=device, workers=a.workers, rounds=rounds, steps=steps,
                              warmup=warmup, paths=a.recipes, drain=a.drain)
        meta = dict(common, images=len(split.samples), num_classes=split.num_classes, img_size=a.img_size,
                    workers=a.workers, rounds=rounds, steps=steps, warmup=warmup, recipes=a.recipes,
                    drain=2 * a.workers if a.drain is None else a.drain, settle=2,
                    models=a.models, batches=a.batches)
        print(format_e2e_table(results, meta))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(meta, results=results), indent=2))
    return 0


# --- pytest entry: the CI smoke (every path once, tiny shapes, CPU) --------------------------------

def _smoke_samples(tmp_path, n=8, classes=3):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p, quality=90)
        samples.append((str(p), i % classes))
    return samples


if "pytest" in sys.modules:
    import pytest

    def _need_smoke(request):
        if not request.config.getoption("--bench-smoke"):
            pytest.skip("the training benchmark's real figures come from `python bench/bench_train.py`; "
                        "under pytest only the --bench-smoke check runs")

    def test_train_step_paths(benchmark, request):
        """Every loss path (reference, torch.compile(reference), fused) through one timed step."""
        _need_smoke(request)
        torch.set_num_threads(2)
        res = benchmark.pedantic(
            measure_steps, kwargs=dict(arch="resnet18", num_classes=3, img_size=32, batch=2, stem="standard",
                                       device=torch.device("cpu"), paths=STEP_PATHS, rounds=1, steps=1, warmup=1,
                                       loss_reps=1, log=lambda *_: None),
            rounds=1, iterations=1)
        assert set(res["img_per_s"]) == set(STEP_PATHS) and all(v > 0 for v in res["img_per_s"].values())
        table = format_step_table([res], dict(device_name="CPU", arch="resnet18", stem="standard", num_classes=3,
                                              batch=2, rounds=1, steps=1, paths=STEP_PATHS))
        assert "torch.compile(reference)" in table

    def test_train_e2e_paths(benchmark, request, tmp_path):
        """The GPU stage's code path (both recipes, both models) on the CPU: 8 images in batches of 4,
        so the timed window starts a new epoch (1 batch to start the loader, 1 warm-up step)."""
        _need_smoke(request)
        torch.set_num_threads(2)
        samples = _smoke_samples(tmp_path)
        results = benchmark.pedantic(
            measure_e2e, args=(samples, 3),
            kwargs=dict(archs=("resnet18", "vgg16"), batches=(4,), img_size=32, device=torch.device("cpu"),
                        workers=0, rounds=1, steps=2, warmup=1, drain=1, settle=1, log=lambda *_: None),
            rounds=1, iterations=1)
        assert [(r["arch"], r["batch"]) for r in results] == [("resnet18", 4), ("vgg16", 4)]
        for r in results:
            assert set(r["img_per_s"]) == set(E2E_PATHS) and r["vs_released"]["released"] == 1.0
        table = format_e2e_table(results, dict(device_name="CPU", images=len(samples), num_classes=3, img_size=32,
                                               workers=0, rounds=1, steps=2))
        assert "ours vs released" in table


if __name__ == "__main__":
    sys.exit(main())
