"""``python -m tdsa_fast.train``: train a fine-grained classifier with CE, MC-Loss or TDSA-Loss.

The run folder holds ``config.json`` (the resolved options), ``metrics.csv`` (one row per
epoch), ``last.pt`` and ``best.pt`` (atomic writes; loadable with ``weights_only=True``)
and ``results.json`` (best and final test accuracy). Loss and accuracy are accumulated
on the device and read back only every ``--log-interval`` steps.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from tdsa_fast import checkpoint
from tdsa_fast.config import build_parser, model_widths, resolve, small_input
from tdsa_fast.data.datasets import SampleList, load_split
from tdsa_fast.data.images import BadImageError
from tdsa_fast.data.loading import build_loader, dali_available
from tdsa_fast.models import build_model
from tdsa_fast.objective import TrainingObjective

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_ce", "train_acc", "test_acc",
                 "images_per_s", "epoch_seconds", "skipped_images")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def dataset_root(cfg: dict) -> Path:
    """The folder with the native files; for the built-in data, generated on first use."""
    if cfg["dataset"] == "default":
        from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

        return Path(ensure_default_dataset(SyntheticSpec(seed=0), cache_dir=cfg["data_root"]))
    return Path(cfg["data_root"])


def load_splits(cfg: dict) -> tuple[SampleList, SampleList]:
    root = dataset_root(cfg)
    train, test = load_split(cfg["dataset"], root, "train"), load_split(cfg["dataset"], root, "test")
    if train.num_classes != test.num_classes:
        raise ValueError(f"train and test splits disagree on the class count: {train.num_classes} vs {test.num_classes}")
    return train, test


def resolve_loader(name: str) -> str:
    """``auto`` -> ``dali`` when DALI is installed, else ``torch``."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    return name


def eval_subset(test: SampleList, size: int) -> list:
    """The per-epoch evaluation samples: the whole test split (``size`` 0 or at least its
    length), or a fixed subset of ``size`` of them -- the same for every run and seed (drawn
    with seed 0, kept in the split's order)."""
    samples = list(test.samples)
    if size <= 0 or size >= len(samples):
        return samples
    keep = sorted(torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:size].tolist())
    return [samples[i] for i in keep]


def loader_options(cfg: dict, device: torch.device, rank: int = 0, world_size: int = 1) -> dict:
    """The ``build_loader`` arguments of ``cfg`` shared by the training and test loaders:
    batches arrive on ``device``, in bf16 under ``--amp`` on CUDA, NHWC under ``--channels-last``."""
    kind = resolve_loader(cfg["loader"])
    options = dict(loader=kind, img_size=cfg["img_size"], batch_size=cfg["batch_size"], workers=cfg["workers"],
                   skip_bad=cfg["skip_bad_images"], device=device, channels_last=cfg["channels_last"],
                   dtype=torch.bfloat16 if cfg["amp"] and device.type == "cuda" else torch.float32,
                   rank=rank, world_size=world_size, seed=cfg["seed"])
    if kind == "torch":
        options["decode"] = cfg["torch_decode"]
    return options


def build_loaders(cfg: dict, train_set: SampleList, test_set: SampleList, device: torch.device,
                  rank: int = 0, world_size: int = 1):
    """The training loader and the per-epoch test loader (``--eval-subset``) of ``cfg``."""
    common = loader_options(cfg, device, rank, world_size)
    train_loader = build_loader(train_set.samples, train=True, recipe=cfg["augment"], **common)
    try:
        test_loader = build_loader(eval_subset(test_set, cfg["eval_subset"]), train=False, **common)
    except BaseException:
        train_loader.close()
        raise
    return train_loader, test_loader


def autocast_context(cfg: dict, device: torch.device):
    if cfg["amp"] and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_output(cfg: dict) -> Path:
    out = cfg["output"] or f"runs/{cfg['dataset']}-{cfg['model']}-{cfg['loss']}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(out)
    if (out / "last.pt").exists():
        raise ValueError(f"--output {out} already holds a run (last.pt); choose another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--output {out} is not writable: {e}") from e
    return out


@torch.no_grad()
def evaluate(model, loader, device, autocast=contextlib.nullcontext, objective=None) -> tuple[int, int]:
    """Top-1 counts (correct, total) over ``loader``; one host read at the end. The scores are
    ``objective.predict(out)`` (a loss with its own class weights), or the model's logits."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for batch in loader:
        n = batch.num_real  # padding (sharding) and skipped images stay out of the count
        if n == 0:
            continue
        images, labels = batch.images[:n], batch.labels[:n]
        with autocast():
            out = model(images)
            logits = out.logits if objective is None else objective.predict(out)
        correct += (logits.argmax(1) == labels).sum()
        total += n
    return int(correct.item()), total


def build_objective(cfg: dict, num_classes: int) -> TrainingObjective:
    """The objective of the resolved config ``cfg`` (it owns the parameters of the baseline losses)."""
    return TrainingObjective(cfg["loss"], num_classes=num_classes, cnum_high=cfg["cnum_high"], mu=cfg["mu"],
                             lam=cfg["lam"], div_form=cfg["div_form"], beta=cfg["beta"], upsample=cfg["upsample"])


def train_one_epoch(model, objective, optimizer, loader, device, cfg, epoch, log) -> dict:
    model.train()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, ce sum, correct
    seen = skipped = 0
    steps = len(loader)
    start = window_start = time.perf_counter()
    window_seen = 0
    for step, batch in enumerate(loader, 1):
        skipped += batch.skipped
        n = batch.num_real
        if n == 0:
            continue
        images, labels = batch.images[:n], batch.labels[:n]
        with autocast_context(cfg, device):
            out = model(images)
            loss, ce = objective(out, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats += torch.stack([loss.detach().double() * n, ce.detach().double() * n,
                              (objective.predict(out).detach().argmax(1) == labels).sum().double()])
        seen += n
        window_seen += n
        if step % cfg["log_interval"] == 0 or step == steps:
            loss_sum, _, correct = stats.tolist()
            now = time.perf_counter()
            rate = window_seen / max(now - window_start, 1e-9)
            eta = (steps - step) * (now - start) / step
            log(f"epoch {epoch}/{cfg['epochs']} step {step}/{steps} loss {loss_sum / max(seen, 1):.4f} "
                f"acc {correct / max(seen, 1):.4f} lr {optimizer.param_groups[0]['lr']:.4g} "
                f"{rate:.1f} img/s eta {eta:.0f}s")
            window_start, window_seen = now, 0
    loss_sum, ce_sum, correct = stats.tolist()
    if seen and not math.isfinite(loss_sum):
        raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({loss_sum}); lower --lr")
    elapsed = time.perf_counter() - start
    return dict(train_loss=loss_sum / max(seen, 1), train_ce=ce_sum / max(seen, 1),
                train_acc=correct / max(seen, 1), images_per_s=seen / max(elapsed, 1e-9),
                epoch_seconds=elapsed, skipped_images=skipped)


def run(cfg: dict, log=print) -> dict:
    """Trains with the resolved config ``cfg`` (see :mod:`tdsa_fast.config`); returns the results dict."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    device = pick_device(cfg["device"])
    out = prepare_output(cfg)
    if cfg["amp"] and device.type != "cuda":
        log("note: --amp is not yet active on the CPU; training in float32")

    train_set, test_set = load_splits(cfg)
    num_classes = train_set.num_classes

    middle_cnum, high_cnum = model_widths(cfg["loss"], cfg["xi"], cfg["cnum_high"])
    model = build_model(cfg["model"], num_classes, middle_cnum=middle_cnum, high_cnum=high_cnum,
                        img_size=cfg["img_size"], small_input=small_input(cfg)).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(cfg, num_classes).to(device)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(objective.parameters()), lr=cfg["lr"],
                                momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    milestones = sorted({max(1, cfg["epochs"] // 2), max(1, (3 * cfg["epochs"]) // 4)})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    train_loader, test_loader = build_loaders(cfg, train_set, test_set, device)
    saved_cfg = dict(cfg, output=str(out), num_classes=num_classes, class_names=train_set.class_names,
                     device_used=str(device), loader_used=train_loader.kind)
    (out / "config.json").write_text(json.dumps(saved_cfg, indent=2))
    log(f"{cfg['dataset']}: {len(train_set.samples)} train / {len(test_set.samples)} test images, "
        f"{num_classes} classes; {cfg['model']} + {cfg['loss']} on {device}, {train_loader.kind} loader; output {out}")

    try:
        best_acc, best_epoch, test_acc = -1.0, 0, float("nan")
        with open(out / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            for epoch in range(1, cfg["epochs"] + 1):
                lr = optimizer.param_groups[0]["lr"]
                train_loader.set_epoch(epoch)
                row = train_one_epoch(model, objective, optimizer, train_loader, device, cfg, epoch, log)
                scheduler.step()
                if epoch % cfg["eval_every"] == 0 or epoch == cfg["epochs"]:
                    correct, total = evaluate(model, test_loader, device, lambda: autocast_context(cfg, device),
                                              objective)
                    test_acc = correct / max(total, 1)
                else:
                    test_acc = float("nan")
                row.update(epoch=epoch, lr=lr, test_acc=test_acc)
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                f.flush()
                state = dict(model=model.state_dict(), objective=objective.state_dict(),
                             optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), epoch=epoch, test_acc=test_acc,
                             best_acc=max(best_acc, test_acc) if test_acc == test_acc else best_acc,
                             config=saved_cfg)
                checkpoint.save_atomic(state, out / "last.pt")
                if test_acc == test_acc and test_acc > best_acc:
                    best_acc, best_epoch = test_acc, epoch
                    checkpoint.save_atomic(state, out / "best.pt")
                skipped = f", {row['skipped_images']} unreadable images skipped" if row["skipped_images"] else ""
                log(f"epoch {epoch}/{cfg['epochs']} done in {row['epoch_seconds']:.1f}s: train loss "
                    f"{row['train_loss']:.4f} acc {row['train_acc']:.4f}, test acc {test_acc:.4f} "
                    f"(best {best_acc:.4f} @ {best_epoch}){skipped}")
    finally:  # worker processes of persistent loaders are stopped now, not at interpreter exit
        for loader in (train_loader, test_loader):
            loader.close()
    eval_images = len(test_loader.samples)
    results = dict(final_test_acc=test_acc, best_test_acc=best_acc, best_epoch=best_epoch,
                   epochs=cfg["epochs"], test_images=len(test_set.samples), eval_images=eval_images, output=str(out))
    if eval_images < len(test_set.samples):  # per-epoch figures are on the subset: the final one on all
        results.update(final_subset_acc=test_acc, best_subset_acc=best_acc)
        with build_loader(test_set.samples, train=False, **loader_options(cfg, device)) as full:
            correct, total = evaluate(model, full, device, lambda: autocast_context(cfg, device), objective)
        results["final_test_acc"] = test_acc = correct / max(total, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    on = f"on the {eval_images}-image subset " if eval_images < len(test_set.samples) else ""
    log(f"final test accuracy: {100 * test_acc:.2f}% on {len(test_set.samples)} test images (best {on}"
        f"{100 * best_acc:.2f}% at epoch {best_epoch}); run folder {out}")
    return results


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
