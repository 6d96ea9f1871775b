"""The paper's Flowers-102 ResNet18 column (Table III: CE, MC-Loss, TDSA) in one prepared GPU
run: the three trainings at once on the one card (``python -m tdsa_fast.experiments SPEC
--parallel 3``), with the paper's recipe -- 224 px, batch 32, SGD lr 0.1 (x0.1 at 1/2 and 3/4
of the epochs), momentum 0.9, weight decay 5e-4, the released augmentation, the trainer's
defaults for the loss form -- and ``--loader memory``, bf16 autocast, channels_last.

300 epochs when they fit in ``--budget-s``; otherwise as many as fit (the schedule's
milestones stay at 1/2 and 3/4 of the epochs run), said in the output.  To choose, a
calibration first trains the three for 2 epochs at once and times, from their logs, the
start-up (process, decode of the splits into the memory cache) and one epoch (training,
test evaluation, checkpoint); the real runs then load the decoded splits from that cache.

Prints each method's final and best test accuracy beside the paper's, the wall time and the
training img/s, and a progress line every 30 s.  The run folders, the memory cache and the
checkpoints stay in ``--work`` (default: a new folder under ``$TMPDIR``); ``--out`` receives
two files, small enough for the device tool to send back (at most 8 files, 2 folders down):
``reproduce.json`` and ``logs.tar.gz`` (every run's ``train.log``, ``metrics.csv`` and config,
and the runner's log; written after the calibration and again at the end).
Runs still going when the budget is spent are stopped (SIGTERM: each saves a checkpoint) and
reported from their ``metrics.csv``.  A failed run's last log lines are printed.

    python bench/gpu_reproduce.py [--data-root .gpu_data/flowers102] [--out $OUT] [--work DIR] [--budget-s 500]
    python bench/gpu_reproduce.py --dry-run    # a few steps at 32 px on generated images, CPU

(``bash bench/gpu_reproduce.sh`` wraps it with the GPU machine's checks.)
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
try:
    import tdsa_fast
except ImportError:
    sys.path.insert(0, str(REPO))
    import tdsa_fast

from tdsa_fast.experiments import read_paper_results  # noqa: E402

LOSSES = ("ce", "mc", "tdsa")
METHOD = {"ce": "CE", "mc": "MC-Loss", "tdsa": "TDSA"}
PAPER_EPOCHS = 300
CALIBRATION_EPOCHS = 2
#: Seconds kept back from the budget for the final whole-split evaluation, the summary and noise.
RESERVE_S = 25.0
#: Seconds the runs may overrun the budget before they are stopped (they then save a checkpoint).
OVERRUN_S = 20.0
PROGRESS_EVERY_S = 30.0


def recipe(data_root: Path, cache: Path, *, dry_run: bool) -> dict:
    """The trainer options shared by the three runs (``epochs`` and ``eval_every`` added later)."""
    if dry_run:
        return dict(dataset="csv", data_root=str(data_root), model="resnet18", img_size=32, batch_size=4, lr=0.1,
                    workers=0, device="cpu", loader="memory", memory_cache=str(cache), threads=1,
                    log_interval=1000, tensorboard=False)
    return dict(dataset="flowers", data_root=str(data_root), model="resnet18", img_size=224, batch_size=32, lr=0.1,
                momentum=0.9, weight_decay=5e-4, augment="released", workers=4, device="cuda", loader="memory",
                memory_cache=str(cache), amp=True, amp_dtype="bfloat16", channels_last=True, log_interval=1000,
                tensorboard=False)


def write_spec(folder: Path, base: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data_root = base["data_root"]
    spec = dict(output="runs", data_roots={base["dataset"]: data_root},
                base={k: v for k, v in base.items() if k != "data_root"}, grid=dict(loss=list(LOSSES)))
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _epochs_done(logf: Path) -> int:
    if not logf.is_file():
        return 0
    return sum(1 for line in logf.read_text(errors="replace").splitlines()
               if line.startswith("epoch ") and " done in " in line)


def run_grid(spec: Path, deadline_s: float = math.inf, log=print) -> tuple[int, float, dict]:
    """Runs the spec's three runs at once (the runner's output in ``runner.log`` beside the
    spec); returns ``(exit code, wall seconds, {run: [seconds after the start at which each
    "epoch k/..." line appeared]})``.  After ``deadline_s`` the runner is sent SIGTERM (its
    trainers save a checkpoint and stop), then killed 60 s later."""
    package_root = str(Path(tdsa_fast.__file__).resolve().parent.parent)  # the trainers import what this did
    env = dict(os.environ, PYTHONUNBUFFERED="1",  # the epoch lines reach train.log as they are printed
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    runs = spec.parent / "runs"
    start = time.perf_counter()
    seen: dict[str, list[float]] = {loss: [] for loss in LOSSES}

    def count(now: float) -> None:
        for loss in LOSSES:
            done = _epochs_done(runs / loss / "train.log")
            seen[loss] += [now] * (done - len(seen[loss]))

    with open(spec.parent / "runner.log", "w") as runner_log:
        proc = subprocess.Popen([sys.executable, "-m", "tdsa_fast.experiments", str(spec), "--parallel",
                                 str(len(LOSSES))], env=env, cwd=spec.parent, stdout=runner_log,
                                stderr=subprocess.STDOUT, text=True)
        stopped, next_report = None, PROGRESS_EVERY_S
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                now = time.perf_counter() - start
                count(now)
                if now >= next_report:
                    log(f"  {now:.0f} s: epochs done " + ", ".join(f"{k} {len(v)}" for k, v in seen.items()), flush=True)
                    next_report += PROGRESS_EVERY_S
                if stopped is None and now > deadline_s:
                    log(f"  {now:.0f} s: past the budget, stopping the runs (SIGTERM)", flush=True)
                    proc.send_signal(signal.SIGTERM)
                    stopped = now
                elif stopped is not None and now > stopped + 60:
                    proc.kill()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    count(time.perf_counter() - start)  # the lines written after the last look
    return proc.returncode, time.perf_counter() - start, seen


def log_tails(folder: Path, lines: int = 40, log=print) -> None:
    """The last ``lines`` lines of the runner's and every run's log (what failed, and why)."""
    for path in [folder / "runner.log", *(folder / "runs" / loss / "train.log" for loss in LOSSES)]:
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            log(f"--- last {len(tail)} lines of {path}:\n" + "\n".join(tail))
        else:
            log(f"--- {path}: not written")


def pack_logs(work: Path, out: Path) -> Path:
    """``out/logs.tar.gz``: the logs, metrics and configs under ``work`` (no checkpoints, no cache)."""
    keep = {"train.log", "metrics.csv", "config.json", "results.json", "runner.log", "spec.yaml"}
    target = out / "logs.tar.gz"
    tmp = out / "logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.name in keep:
                tar.add(path, arcname=str(path.relative_to(work)))
    os.replace(tmp, target)
    return target


def choose_epochs(budget: float, startup: float, per_epoch: float, cap: int = PAPER_EPOCHS) -> int:
    """The most epochs (at most ``cap``, at least 1) whose ``startup + epochs * per_epoch``
    fits in ``budget`` seconds.  Raises ValueError for a ``per_epoch`` that is not positive (a
    calibration that timed nothing must not choose the whole schedule)."""
    if not per_epoch > 0:
        raise ValueError(f"the calibration measured {per_epoch!r} s per epoch; cannot choose the epochs")
    return int(max(1, min(cap, math.floor((budget - startup) / per_epoch))))


def read_run(folder: Path) -> dict:
    """A run's accuracies and speed: from ``results.json`` when it finished, else (stopped at
    the budget) from the epochs its ``metrics.csv`` holds (``partial``)."""
    rows = list(csv.DictReader(open(folder / "metrics.csv"))) if (folder / "metrics.csv").is_file() else []
    speeds = [float(r["images_per_s"]) for r in rows[1:]] or [float(r["images_per_s"]) for r in rows]
    speed = sorted(speeds)[len(speeds) // 2] if speeds else float("nan")
    if (folder / "results.json").is_file():
        results = json.loads((folder / "results.json").read_text())
        return dict(final_test_acc=results["final_test_acc"], best_test_acc=results["best_test_acc"],
                    best_epoch=results["best_epoch"], epochs=results["epochs"], test_images=results["test_images"],
                    train_seconds=results["train_seconds"], img_per_s_median=speed, partial=False)
    tested = [r for r in rows if r.get("test_acc") not in (None, "", "nan")]
    if not tested:
        raise FileNotFoundError(f"{folder}: no results.json and no tested epoch in metrics.csv")
    best = max(tested, key=lambda r: float(r["test_acc"]))
    return dict(final_test_acc=float(tested[-1]["test_acc"]), best_test_acc=float(best["test_acc"]),
                best_epoch=int(best["epoch"]), epochs=int(rows[-1]["epoch"]), test_images=None, train_seconds=None,
                img_per_s_median=speed, partial=True)


def make_dry_data(folder: Path) -> Path:
    """Two classes of six tiny JPEGs for training, three for testing, as ``--dataset csv``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        rows = []
        for c in (0, 1):
            for i in range(n):
                p = folder / split / f"{c}_{i}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                base = np.array([200, 40, 40] if c == 0 else [40, 200, 40], dtype=np.int16)
                a = np.clip(base + rng.integers(-30, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(p, quality=90)
                rows.append(f"{p},{c}\n")
        (folder / f"{split}.csv").write_text("".join(rows))
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(REPO / ".gpu_data" / "flowers102"))
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/tdsa_gpu_reproduce",
                    help="reproduce.json and logs.tar.gz (what the device tool sends back)")
    ap.add_argument("--work", default=None,
                    help="the run folders, the memory cache and the checkpoints (default: a new folder under $TMPDIR)")
    ap.add_argument("--budget-s", type=float, default=500.0,
                    help="wall seconds for the calibration and the runs together (the build not included)")
    ap.add_argument("--dry-run", action="store_true", help="a few steps at 32 px on generated images, on the CPU")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="tdsa_gpu_reproduce_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"run folders in {work}; results in {out}", flush=True)
    if a.dry_run:
        data_root, cap, a.budget_s = make_dry_data(work / "dry_data"), 1, min(a.budget_s, 600.0)
    else:
        data_root, cap = Path(a.data_root).resolve(), PAPER_EPOCHS
        if not (data_root / "setid.mat").is_file():
            print(f"error: no Flowers-102 copy at {data_root}: run `python bench/make_gpu_data.py` and carry "
                  ".gpu_data", file=sys.stderr)
            return 2
    subset = data_root / "subset.json"
    subset_note = ""
    if subset.is_file():
        info = json.loads(subset.read_text())
        if info["test_subset"]:
            subset_note = (f"test accuracy on a fixed subset of {info['test_images']} of the {info['test_split_images']} "
                           f"test images ({info['test_subset_rule']})")
    base = recipe(data_root, work / "memory_cache", dry_run=a.dry_run)

    print(f"=== calibration: the three runs at once for {CALIBRATION_EPOCHS} epochs", flush=True)
    spec = write_spec(work / "calibration", dict(base, epochs=CALIBRATION_EPOCHS, eval_every=1))
    rc, wall, seen = run_grid(spec, deadline_s=a.budget_s - RESERVE_S)
    pack_logs(work, out)
    if rc != 0 or any(len(v) < CALIBRATION_EPOCHS for v in seen.values()):
        print(f"error: the calibration failed (exit {rc}; epochs seen: {({k: len(v) for k, v in seen.items()})})",
              file=sys.stderr)
        log_tails(spec.parent)
        return 1
    per_epoch = max(v[1] - v[0] for v in seen.values())  # three at once: the slowest run's epoch
    startup = max(v[0] for v in seen.values()) - per_epoch
    left = a.budget_s - (time.perf_counter() - t0) - RESERVE_S
    try:
        epochs = choose_epochs(left, startup, per_epoch, cap)
    except ValueError as e:
        print(f"error: {e} (epoch lines seen at {seen})", file=sys.stderr)
        log_tails(spec.parent)
        return 1
    eval_every = max(1, epochs // 50)
    note = (f"{epochs} epochs (the paper's {PAPER_EPOCHS} fit)" if epochs == PAPER_EPOCHS else
            f"{epochs} of the paper's {PAPER_EPOCHS} epochs: as many as fit in the budget "
            f"(lr x0.1 at epochs {epochs // 2} and {3 * epochs // 4})")
    print(f"calibration: start-up {startup:.1f} s, {per_epoch:.2f} s per epoch (three at once, with evaluation "
          f"and checkpoint); {left:.0f} s left -> {note}; test evaluated every {eval_every} epochs", flush=True)

    print(f"=== the three runs at once: {epochs} epochs", flush=True)
    spec = write_spec(work / "reproduce", dict(base, epochs=epochs, eval_every=eval_every))
    deadline = a.budget_s - (time.perf_counter() - t0) + OVERRUN_S
    rc, wall, _ = run_grid(spec, deadline_s=deadline)
    pack_logs(work, out)
    paper = read_paper_results()
    rows = {}
    for loss in LOSSES:
        try:
            rows[loss] = read_run(spec.parent / "runs" / loss)
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"{METHOD[loss]}: no result ({e})", file=sys.stderr)
            continue
        rows[loss]["paper"] = paper.get(("III", METHOD[loss], "ResNet18", "", "Flowers-102"))
    partial = any(r["partial"] for r in rows.values())
    if partial:
        ran = ", ".join(f"{METHOD[k]} {r['epochs']}" for k, r in rows.items())
        note += f"; stopped at the budget after {ran} epochs"
    total_img_s = sum(r["img_per_s_median"] for r in rows.values())
    summary = dict(dry_run=a.dry_run, epochs=epochs, paper_epochs=PAPER_EPOCHS, all_epochs=epochs == PAPER_EPOCHS,
                   eval_every=eval_every, calibration=dict(startup_s=startup, per_epoch_s=per_epoch),
                   wall_s=wall, total_s=time.perf_counter() - t0, train_img_per_s_sum=total_img_s,
                   test_note=subset_note or "the whole test split", recipe=base, runs=rows, exit_code=rc,
                   stopped_at_budget=partial, work=str(work))
    (out / "reproduce.json").write_text(json.dumps(summary, indent=2))
    print(f"\nResNet18 on Flowers-102, {note}; {summary['test_note']}")
    print(f"{'method':<9} {'final %':>8} {'best %':>8} {'(epoch)':>8} {'paper %':>8} {'img/s':>8}")
    for loss in LOSSES:
        r = rows.get(loss)
        if r is None:
            print(f"{METHOD[loss]:<9} FAILED")
            continue
        ref = f"{r['paper']:.2f}" if r["paper"] is not None else "-"
        print(f"{METHOD[loss]:<9} {100 * r['final_test_acc']:>8.2f} {100 * r['best_test_acc']:>8.2f} "
              f"{r['best_epoch']:>8} {ref:>8} {r['img_per_s_median']:>8.0f}")
    print(f"wall {wall:.0f} s for the three runs ({summary['total_s']:.0f} s with the calibration); training "
          f"{total_img_s:.0f} img/s summed over the three; JSON: {out / 'reproduce.json'}, logs: {out / 'logs.tar.gz'}")
    ok = rc == 0 and len(rows) == len(LOSSES) and not partial
    if not ok:
        log_tails(spec.parent)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
