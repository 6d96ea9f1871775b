"""``python -m tdsa_fast.train``: train a fine-grained classifier with CE, MC-Loss, TDSA-Loss or a
baseline loss, in one process or several (``torchrun --nproc_per_node=N -m tdsa_fast.train``).

The run folder holds

* ``config.json`` (the resolved options) and ``config.yaml`` (the same but the folder, loadable with ``--config``);
* ``metrics.csv`` (one row per epoch), TensorBoard event files under ``tensorboard/``, and at
  the end ``training_curves.png`` and ``summary.json`` (:mod:`tdsa_fast.reporting`);
* ``last.pt`` (after every epoch, and when a run stops early: SIGTERM, SIGINT, ``--max-steps``)
  and ``best.pt`` (the best test accuracy); atomic writes, loadable with ``weights_only=True``;
  ``--resume`` continues from ``last.pt`` at the step it stopped at;
* ``results.json`` (best and final test accuracy).

Loss and accuracy are accumulated on the device and read back every ``--log-interval``
steps only. Each step's channel masks come from a generator seeded by (seed, step, rank),
so a resumed run draws the masks an uninterrupted one draws.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch
import yaml
from torch import nn

from tdsa_fast import checkpoint
from tdsa_fast.class_metrics import ConfusionCounter, write_confusion_csv, write_per_class_csv
from tdsa_fast.config import (RunFacts, TrainConfig, build_parser, file_view, parse_config, resume_config, saved_record,
                              saved_run)
from tdsa_fast.data.datasets import SampleList, load_split
from tdsa_fast.data.decode import BadImageError
from tdsa_fast.data.loading import build_loader
from tdsa_fast.data.sharding import step_seed
from tdsa_fast.distributed import Processes, StopRequest, pick_device, setup
from tdsa_fast.graph_step import GraphStep
from tdsa_fast.objective import TrainingObjective
from tdsa_fast.pretrained import load_pretrained, summary_line
from tdsa_fast.reporting import METRIC_FIELDS, RunReport
from tdsa_fast.runs import build_network, build_objective, check_run_options, dataset_root, load_state, resolve_loader

__all__ = ["METRIC_FIELDS", "run", "main", "build_network", "build_objective", "build_optimizer", "evaluate",
           "TrainingModule", "pick_device", "dataset_root", "load_splits", "build_loaders"]

# What a run writes into its folder: a folder that holds any of them is refused as --output
# (unless --overwrite) and --overwrite removes them.
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "results.json", "summary.json", "config.json", "config.yaml",
             "training_curves.png", "tensorboard", "per_class.csv", "confusion.csv", "pretrained.json")
# The entries of a checkpoint that --resume reads, and the saved options it cannot do without.
RESUME_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "progress", "rng", "config")
RESUME_CONFIG_KEYS = ("dataset", "data_root", "model", "loss", "epochs", "batch_size", "img_size", "lr", "seed",
                      "num_classes")


def load_splits(cfg: TrainConfig) -> tuple[SampleList, SampleList]:
    root = dataset_root(cfg)
    train, test = load_split(cfg.dataset, root, "train"), load_split(cfg.dataset, root, "test")
    if train.num_classes != test.num_classes:
        raise ValueError(f"train and test splits disagree on the class count: {train.num_classes} vs {test.num_classes}")
    return train, test


def eval_subset(test: SampleList, size: int) -> list:
    """The per-epoch evaluation samples: the whole test split (``size`` 0 or at least its
    length), or a fixed subset of ``size`` of them -- the same for every run and seed (drawn
    with seed 0, kept in the split's order)."""
    samples = list(test.samples)
    if size <= 0 or size >= len(samples):
        return samples
    keep = sorted(torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:size].tolist())
    return [samples[i] for i in keep]


def amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None without ``--amp``: bfloat16 on the CPU."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16
    return getattr(torch, cfg.amp_dtype or "bfloat16")


def loader_options(cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> dict:
    """The ``build_loader`` arguments of ``cfg`` shared by the training and test loaders:
    batches arrive on ``device``, in the autocast dtype under ``--amp`` on CUDA, NHWC under
    ``--channels-last``."""
    kind = resolve_loader(cfg.loader)
    dtype = amp_dtype(cfg, device) if device.type == "cuda" else None
    options = dict(loader=kind, img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers,
                   skip_bad=cfg.skip_bad_images, device=device, channels_last=cfg.channels_last,
                   dtype=dtype or torch.float32, rank=rank, world_size=world_size, seed=cfg.seed)
    if kind == "torch":
        options["decode"] = cfg.torch_decode
    if cfg.loader == "auto" and device.type == "cuda":
        options["loader"] = "auto"  # build_loader picks memory for each split that fits on the card
    if options["loader"] in ("memory", "auto"):
        options.update(cache_dir=cfg.memory_cache, stored_size=cfg.memory_size)
    return options


def build_loaders(cfg: TrainConfig, train_set: SampleList, test_set: SampleList, device: torch.device,
                  rank: int = 0, world_size: int = 1):
    """The training loader (``--augment none``: the test transform on shuffled batches) and
    the per-epoch test loader (``--eval-subset``) of ``cfg``, sharded for ``rank``."""
    common = loader_options(cfg, device, rank, world_size)
    if cfg.augment == "none":
        train_loader = build_loader(train_set.samples, train=False, shuffle=True, **common)
    else:
        train_loader = build_loader(train_set.samples, train=True, recipe=cfg.augment, **common)
    try:
        test_loader = build_loader(eval_subset(test_set, cfg.eval_subset), train=False, **common)
    except BaseException:
        train_loader.close()
        raise
    return train_loader, test_loader


def autocast_context(cfg: TrainConfig, device: torch.device):
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def default_output(cfg: TrainConfig) -> Path:
    return Path(cfg.output or f"runs/{cfg.dataset}-{cfg.model}-{cfg.loss}-{datetime.now():%Y%m%d-%H%M%S}")


def prepare_output(out: Path, *, resuming: bool = False, overwrite: bool = False) -> Path:
    """Creates the run folder and checks it is writable; a folder that holds a run's files
    (:data:`RUN_FILES`) is refused unless the run is being resumed, or ``overwrite`` (they are
    removed then). Temporary files a killed checkpoint write left behind are removed."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not resuming:
        if not overwrite:
            hint = " or --resume it" if "last.pt" in found else ""
            raise ValueError(f"--output {out} already holds a run's files ({', '.join(found)}); choose another "
                             f"folder{hint}, or pass --overwrite to replace them")
        for name in found:
            target = out / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
        checkpoint.remove_stale_temps(out)
    except OSError as e:
        raise ValueError(f"--output {out} is not writable: {e}") from e
    return out


def build_optimizer(cfg: TrainConfig, model: nn.Module, objective: nn.Module, pretrained_loaded=()):
    """SGD over the model's and the objective's parameters, and the schedule, stepped once per
    epoch: ``step`` (x0.1 at 1/2 and 3/4 of the epochs) or ``cosine`` (annealed to 0 over the
    epochs). With ``--pretrained``, the parameters it loaded (``pretrained_loaded``, names)
    form a second group at ``lr * pretrained_lr_scale``; the first group (the new layers and
    the objective) runs at ``lr``."""
    pretrained = set(pretrained_loaded or ()) if cfg.pretrained_lr_scale != 1.0 else set()
    new = [p for n, p in model.named_parameters() if n not in pretrained] + list(objective.parameters())
    groups = [dict(params=new, lr=cfg.lr)]
    loaded = [p for n, p in model.named_parameters() if n in pretrained]
    if loaded:
        groups.append(dict(params=loaded, lr=cfg.lr * cfg.pretrained_lr_scale))
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    milestones = sorted({max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)})
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


class TrainingModule(nn.Module):
    """The model and the objective in one module (what DistributedDataParallel wraps, so the
    objective's own parameters are all-reduced too).

    forward(images [n, 3, s, s], labels [n], generator, masks=None) -> (total loss, ce, class scores
    [n, S]); the channel masks are drawn from ``generator`` unless ``masks`` are given. In training, a batch of one image runs as
    two copies of it (the head's BatchNorm needs two values per channel; the mean loss is the
    image's own), so an epoch whose last batch holds one image does not fail.
    """

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: Optional[torch.Generator] = None,
                masks: Optional[tuple] = None):
        single = self.training and images.shape[0] == 1
        if single:
            images, labels = torch.cat([images, images]), torch.cat([labels, labels])
        out = self.model(images)
        if masks is None:
            masks = self.objective.draw_masks(out, generator)
            # what the replay-safe step (tdsa_fast.graph_step) draws its later masks like
            self.drawn_masks, self.map_shapes = masks, (tuple(out.middle.shape), tuple(out.high.shape))
        total, ce = self.objective(out, labels, masks)
        scores = self.objective.predict(out)
        return total, ce, scores[:1] if single else scores


@torch.no_grad()
def evaluate(model, loader, device, autocast=contextlib.nullcontext, objective=None,
             procs: Optional[Processes] = None, counter: Optional[ConfusionCounter] = None) -> tuple[int, int]:
    """Top-1 counts (correct, total) over ``loader`` (summed over the processes, each reading
    its shard); one host read at the end. The scores are ``objective.predict(out)`` (a loss
    with its own class weights), or the model's logits. ``counter``: also counted into it
    (summed over the processes too)."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    for batch in loader:
        n = batch.num_real  # padding (sharding) and skipped images stay out of the count
        if n == 0:
            continue
        images, labels = batch.images[:n], batch.labels[:n]
        with autocast():
            out = model(images)
            logits = out.logits if objective is None else objective.predict(out)
        counts[0] += (logits.argmax(1) == labels).sum()
        counts[1] += n
        if counter is not None:
            counter.update(logits.float(), labels)
    if procs is not None:
        procs.all_reduce_sum(counts)
        if counter is not None:
            counter.all_reduce(procs)
    correct, total = counts.tolist()
    return int(correct), int(total)


@dataclass
class Progress:
    """Where a run stands: the completed epochs, the batches consumed in all (the mask
    generator's step counter) and, inside an epoch, its consumed batches and running sums."""

    completed_epochs: int = 0
    global_step: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    test_acc: float = float("nan")
    batches_done: int = 0  # of the current epoch
    # float64 [3] on the device: this process's loss, ce, correct (in a checkpoint: all processes')
    sums: Optional[torch.Tensor] = None
    seen: int = 0  # this process's real images of the epoch so far (in a checkpoint: all processes')
    skipped: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0  # of the whole run (training epochs only)
    stopped: Optional[str] = None

    def state(self) -> dict:
        """The checkpoint's ``progress`` entry (every field but ``stopped``; sums on the CPU)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stopped"}
        state["sums"] = None if self.sums is None else self.sums.detach().cpu()
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name != "stopped"})


@dataclass
class Training:
    """Everything one process trains with."""

    cfg: TrainConfig
    device: torch.device
    procs: Processes
    model: nn.Module  # the plain modules (their state is what checkpoints hold)
    objective: TrainingObjective
    net: nn.Module  # TrainingModule, compiled parts, DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    train_loader: object
    test_loader: object
    out: Path
    facts: RunFacts  # saved beside the options in every checkpoint
    report: RunReport
    log: object
    stop: StopRequest
    progress: Progress = field(default_factory=Progress)
    graph_step: Optional[GraphStep] = None  # --cuda-graph: the replay-safe step of the full batches
    evaluated_images: int = 0  # counted by the last evaluation, over all processes
    final_counts: Optional[ConfusionCounter] = None  # the last epoch's evaluation, per class

    def checkpoint_state(self) -> dict:
        rng = dict(cpu=torch.get_rng_state())
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return dict(format=checkpoint.CHECKPOINT_FORMAT, model=self.model.state_dict(), objective=self.objective.state_dict(),
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict(), progress=self.progress.state(), rng=rng,
                    epoch=self.progress.completed_epochs, test_acc=self.progress.test_acc,
                    best_acc=self.progress.best_acc, config=saved_record(self.cfg, self.facts))

    def save(self, name: str = "last.pt") -> None:
        if self.procs.is_main:
            checkpoint.save_atomic(self.checkpoint_state(), self.out / name)

    def restore(self, ckpt: dict) -> None:
        check_resumable(ckpt, self.out / "last.pt")
        load_state(self.model, ckpt["model"], "model", self.cfg, self.facts.num_classes)
        load_state(self.objective, ckpt.get("objective", {}), "objective", self.cfg, self.facts.num_classes)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress.from_state(ckpt["progress"])
        if self.progress.sums is not None:  # all processes' sums, saved by rank 0
            self.progress.sums = self.progress.sums.to(self.device)
            if not self.procs.is_main:
                self.progress.sums.zero_()
                self.progress.seen = 0
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)


def check_resumable(ckpt: dict, path) -> None:
    """Raises ValueError unless ``ckpt`` (loaded from ``path``) holds what ``--resume`` reads:
    this trainer's format, :data:`RESUME_ENTRIES`, every progress counter and the saved
    options of :data:`RESUME_CONFIG_KEYS`."""
    if ckpt.get("format") != checkpoint.CHECKPOINT_FORMAT:
        raise ValueError(f"{path} was written by an older trainer (format "
                         f"{ckpt.get('format', 1)}, this one reads {checkpoint.CHECKPOINT_FORMAT}); it cannot be resumed "
                         "exactly -- evaluate it with python -m tdsa_fast.evaluate, or start a new run")
    missing = [k for k in RESUME_ENTRIES if not isinstance(ckpt.get(k), dict)]
    if not missing:
        missing += [f"progress.{f.name}" for f in fields(Progress) if f.name != "stopped"
                    and f.name not in ckpt["progress"]]
        missing += [f"config.{k}" for k in RESUME_CONFIG_KEYS if k not in ckpt["config"]]
    if missing:
        raise ValueError(f"{path} cannot be resumed: it lacks {', '.join(missing)} (damaged, or not written by "
                         "python -m tdsa_fast.train)")


def wrap_for_training(cfg: TrainConfig, model: nn.Module, objective: nn.Module, device: torch.device,
                      procs: Processes) -> nn.Module:
    """TrainingModule(model, objective), with ``--compile`` (model and loss compiled) and, with
    several processes, DistributedDataParallel (and ``--sync-bn``) around it."""
    net = TrainingModule(torch.compile(model) if cfg.compile else model,
                         torch.compile(objective) if cfg.compile else objective)
    if procs.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if cfg.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=objective.owns_class_weights)
    return net


def _dummy_batch(cfg: TrainConfig, labels_like: torch.Tensor, images_like: torch.Tensor):
    """Two blank images, for a process whose batch lost every image (``--skip-bad-images``)
    while the others still step: it joins the gradient all-reduce with weight zero."""
    s = cfg.img_size
    images = torch.zeros((2, 3, s, s), dtype=images_like.dtype, device=images_like.device)
    if cfg.channels_last:
        images = images.to(memory_format=torch.channels_last)
    return images, torch.zeros(2, dtype=labels_like.dtype, device=labels_like.device)


def _plain_step(t: Training, images, labels, generator, n: int, total: int) -> None:
    """The eager step: forward, loss, backward, optimiser, and the running sums (on the device)."""
    p, procs = t.progress, t.procs
    with autocast_context(t.cfg, t.device):
        loss, ce, scores = t.net(images, labels, generator)
    # the processes' gradients are averaged: weigh each by its share of the step's real samples
    weight = procs.world_size * n / total
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss * weight).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    if n:  # summed on the device: no host read here
        p.sums += torch.stack([loss.detach().double() * n, ce.detach().double() * n,
                               (scores.detach().argmax(1) == labels).sum().double()])
        p.seen += n


def graph_note(cfg: TrainConfig, device: torch.device) -> str:
    """The start line's word on --cuda-graph."""
    if not cfg.cuda_graph:
        return ""
    if device.type == "cuda":
        return ", CUDA-graph step (full batches replayed)"
    return f", replay-safe step uncaptured (--cuda-graph: no CUDA graph on {device.type})"


def train_one_epoch(t: Training, epoch: int) -> Optional[dict]:
    """Trains one epoch (from ``t.progress.batches_done`` on); returns its metrics row, or
    None when a stop was requested (SIGTERM/SIGINT, ``--max-steps``): ``t.progress`` then
    holds the consumed batches and running sums, ready to be saved."""
    cfg, p, procs, device = t.cfg, t.progress, t.procs, t.device
    t.net.train()
    if p.sums is None or p.batches_done == 0:
        p.sums = torch.zeros(3, dtype=torch.float64, device=device)
        p.seen, p.skipped, p.seconds = 0, 0, 0.0
    steps = len(t.train_loader)
    t.train_loader.set_epoch(epoch, start_batch=p.batches_done)
    generator = torch.Generator(device=device)
    start = time.perf_counter()
    seconds_before, first_batch = p.seconds, p.batches_done
    window_start, window_seen = start, _epoch_totals(p, procs)[3]
    for k, batch in enumerate(t.train_loader, p.batches_done + 1):
        stop = t.stop.requested is not None or (cfg.max_steps and p.global_step >= cfg.max_steps)
        n = batch.num_real
        stop_votes, total, skipped = procs.agree([int(bool(stop)), n, batch.skipped])
        if stop_votes:
            p.stopped = t.stop.requested or (f"--max-steps {cfg.max_steps}" if stop else "another process")
            p.seconds = seconds_before + time.perf_counter() - start
            return None
        p.skipped += skipped
        p.batches_done, p.global_step = k, p.global_step + 1
        if total == 0:
            continue  # every process's batch lost all its images: nobody steps
        if n:
            images, labels = batch.images[:n], batch.labels[:n]
        else:
            images, labels = _dummy_batch(cfg, batch.labels, batch.images)
        generator.manual_seed(step_seed(cfg.seed, p.global_step, procs.rank))
        if t.graph_step is not None and n and t.graph_step.fits(images, labels, n):
            p.sums += t.graph_step.step(images, labels, generator)  # a full batch: the graph's replay
            p.seen += n
        else:
            _plain_step(t, images, labels, generator, n, total)
        if k % cfg.log_interval == 0 or k == steps:
            loss_sum, ce_sum, correct, seen = _epoch_totals(p, procs)
            now = time.perf_counter()
            rate = (seen - window_seen) / max(now - window_start, 1e-9)
            step_time = (now - start) / (k - first_batch)
            remaining = (steps - k) + steps * (cfg.epochs - epoch)
            if procs.is_main:
                t.log(f"epoch {epoch}/{cfg.epochs} step {k}/{steps} loss {loss_sum / max(seen, 1):.4f} "
                      f"ce {ce_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.4f} lr {t.optimizer.param_groups[0]['lr']:.4g} "
                      f"{rate:.1f} img/s "
                      f"eta epoch {_duration(step_time * (steps - k))} run {_duration(step_time * remaining)}")
                t.report.step(p.global_step, {"train/loss": loss_sum / max(seen, 1),
                                              "train/ce": ce_sum / max(seen, 1),
                                              "train/acc": correct / max(seen, 1),
                                              "lr": t.optimizer.param_groups[0]["lr"],
                                              "images_per_s": rate})
            window_start, window_seen = now, seen
    loss_sum, ce_sum, correct, seen = _epoch_totals(p, procs)
    if seen and not math.isfinite(loss_sum):
        raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({loss_sum}); lower --lr")
    p.seconds = seconds_before + time.perf_counter() - start
    return dict(train_loss=loss_sum / max(seen, 1), train_ce=ce_sum / max(seen, 1),
                train_acc=correct / max(seen, 1), images_per_s=seen / max(p.seconds, 1e-9),
                epoch_seconds=p.seconds, skipped_images=p.skipped)


def _gather_epoch_sums(p: Progress, procs: Processes) -> None:
    """Before a mid-epoch checkpoint of several processes: the epoch's running sums of all of
    them, which rank 0 saves (on resume the other processes start theirs from zero)."""
    if procs.enabled and p.sums is not None:
        *sums, seen = _epoch_totals(p, procs)
        p.sums, p.seen = p.sums.new_tensor(sums), int(seen)


def _epoch_totals(p: Progress, procs: Processes) -> list[float]:
    """[loss sum, ce sum, correct, images] of the epoch so far over all processes (one host read)."""
    return procs.all_reduce_sum(torch.cat([p.sums, p.sums.new_tensor([p.seen])])).tolist()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def run(cfg: TrainConfig, log=print, resume_from: Optional[dict] = None) -> dict:
    """Trains with the resolved config ``cfg`` (see :mod:`tdsa_fast.config`); returns the
    results dict (``stopped`` set when the run stopped early with a checkpoint).
    ``resume_from``: a checkpoint of this run to continue (``cfg`` is then its config)."""
    procs, device = setup(cfg.device)
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        return _run(cfg, log if procs.is_main else (lambda *a, **k: None), resume_from, procs, device)
    finally:  # process-wide switches go back as they were (run() may be called from a program)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        procs.shutdown()


def _run(cfg, log, resume_from, procs: Processes, device: torch.device) -> dict:
    check_run_options(cfg, device, procs)
    before = saved_run(resume_from["config"])[1] if resume_from is not None else RunFacts()
    if resume_from is not None and before.world_size != procs.world_size:
        raise ValueError(f"the run was trained by {before.world_size} process(es) and this is {procs.world_size}: "
                         "resume it with the same number (the shards, the global batch and the position in the "
                         "epoch depend on it)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    resuming = resume_from is not None
    train_set, test_set = load_splits(cfg)
    num_classes = train_set.num_classes
    if resuming and before.num_classes not in (None, num_classes):
        raise ValueError(f"the data now has {num_classes} classes, but the resumed run was trained on "
                         f"{before.num_classes}")
    model = build_network(cfg, num_classes)
    pretrained, loaded = None, before.pretrained_loaded
    if cfg.pretrained not in (None, "none") and not resuming:  # a resumed run has its weights in the checkpoint
        pretrained = load_pretrained(model, cfg.pretrained)
        loaded = pretrained["loaded"]
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(cfg, num_classes).to(device)  # a bad loss option fails here, before the folder
    optimizer, scheduler = build_optimizer(cfg, model, objective, loaded)  # bad SGD settings fail before the folder
    out = Path(procs.from_main(lambda: str(prepare_output(default_output(cfg), resuming=resuming,
                                                          overwrite=cfg.overwrite))))
    cfg = cfg.replace(output=str(out))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg, device) == torch.float16)
    net = wrap_for_training(cfg, model, objective, device, procs)

    train_loader, test_loader = build_loaders(cfg, train_set, test_set, device, procs.rank, procs.world_size)
    facts = RunFacts(num_classes=num_classes, class_names=train_set.class_names, device_used=str(device),
                     loader_used=train_loader.kind, world_size=procs.world_size, pretrained_loaded=loaded)
    stop = StopRequest()
    t = Training(cfg=cfg, device=device, procs=procs, model=model, objective=objective, net=net,
                 optimizer=optimizer, scheduler=scheduler, scaler=scaler, train_loader=train_loader,
                 test_loader=test_loader, out=out, facts=facts, report=None, log=log, stop=stop)
    if cfg.cuda_graph:
        t.graph_step = GraphStep(net, objective, optimizer, device, amp_dtype=amp_dtype(cfg, device),
                                 capture=device.type == "cuda", log=log)
    try:
        if resuming:
            t.restore(resume_from)
        if procs.is_main:
            if pretrained is not None:
                (out / "pretrained.json").write_text(json.dumps(pretrained, indent=2))
                log(summary_line(pretrained))
            (out / "config.json").write_text(json.dumps(saved_record(cfg, facts), indent=2))
            (out / "config.yaml").write_text(yaml.safe_dump(file_view(cfg), sort_keys=False))
        t.report = RunReport(out, enabled=procs.is_main, tensorboard=cfg.tensorboard,
                             resume_epoch=t.progress.completed_epochs if resuming else None)
        where = (f"resuming at epoch {t.progress.completed_epochs + 1} batch {t.progress.batches_done}"
                 if resuming else "")
        log(f"{cfg.dataset}: {len(train_set.samples)} train / {len(test_set.samples)} test images, "
            f"{num_classes} classes; {cfg.model} + {cfg.loss} on {device}"
            f"{f' x {procs.world_size} processes' if procs.enabled else ''}, {train_loader.kind} loader"
            f"{', ' + str(amp_dtype(cfg, device)).replace('torch.', '') + ' autocast' if cfg.amp else ''}"
            f"{', compiled' if cfg.compile else ''}{graph_note(cfg, device)}; output {out}"
            f"{'; ' + where if where else ''}")
        with stop:  # the stop's checkpoint too: a repeated SIGTERM while it is written is ignored
            _epochs(t)
            if t.progress.stopped:
                _gather_epoch_sums(t.progress, procs)
                t.save()
        if t.progress.stopped:
            procs.barrier()
            p = t.progress
            raise_limit = (" --max-steps N (a larger N, or 0 for none)"
                           if p.stopped.startswith("--max-steps") else "")
            log(f"stopped ({p.stopped}) at epoch {p.completed_epochs + 1} after batch {p.batches_done} of "
                f"{len(train_loader)}; checkpoint {out / 'last.pt'}; continue with: python -m tdsa_fast.train "
                f"--resume {out}{raise_limit}")
            return dict(stopped=p.stopped, epoch=p.completed_epochs + 1, batches_done=p.batches_done,
                        global_step=p.global_step, output=str(out))
        return _finish(t, test_set)
    finally:  # worker processes of persistent loaders are stopped now, not at interpreter exit
        for loader in (train_loader, test_loader):
            loader.close()
        if t.report is not None:
            t.report.close()


def _epochs(t: Training) -> None:
    cfg, p = t.cfg, t.progress
    evaluate_on = lambda: autocast_context(cfg, t.device)  # noqa: E731
    for epoch in range(p.completed_epochs + 1, cfg.epochs + 1):
        lr = t.optimizer.param_groups[0]["lr"]
        row = train_one_epoch(t, epoch)
        if row is None:
            return
        # every process evaluates, and rank 0 saves, the same model: rank 0's BatchNorm statistics
        # (and loss state), where each process had updated its own with its last batch
        t.procs.broadcast_buffers([t.model, t.objective])
        t.scheduler.step()
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            counter = ConfusionCounter(t.facts.num_classes, device=t.device) if epoch == cfg.epochs \
                else None
            correct, total = evaluate(t.model, t.test_loader, t.device, evaluate_on, t.objective, t.procs, counter)
            p.test_acc, t.evaluated_images, t.final_counts = correct / max(total, 1), total, counter
        else:
            p.test_acc = float("nan")
        row.update(epoch=epoch, lr=lr, test_acc=p.test_acc)
        p.completed_epochs, p.batches_done, p.sums = epoch, 0, None
        p.train_seconds += row["epoch_seconds"]
        improved = p.test_acc == p.test_acc and p.test_acc > p.best_acc
        if improved:
            p.best_acc, p.best_epoch = p.test_acc, epoch
        t.report.epoch(row)
        if improved:  # best.pt first: a crash between the two writes leaves last.pt's best_acc true
            t.save("best.pt")
        t.save()
        skipped = f", {row['skipped_images']} unreadable images skipped" if row["skipped_images"] else ""
        t.log(f"epoch {epoch}/{cfg.epochs} done in {row['epoch_seconds']:.1f}s: train loss "
              f"{row['train_loss']:.4f} acc {row['train_acc']:.4f}, test acc {p.test_acc:.4f} "
              f"(best {p.best_acc:.4f} @ {p.best_epoch}){skipped}")
        # agreed, like the in-epoch vote: a process stopping alone would leave the others in a collective
        if t.procs.agree([int(t.stop.requested is not None)])[0] and epoch < cfg.epochs:
            p.stopped = t.stop.requested or "another process"
            return


def _finish(t: Training, test_set: SampleList) -> dict:
    cfg, p, out = t.cfg, t.progress, t.out
    eval_images = len(t.test_loader.samples)
    results = dict(final_test_acc=p.test_acc, best_test_acc=p.best_acc, best_epoch=p.best_epoch,
                   epochs=cfg.epochs, test_images=len(test_set.samples), eval_images=eval_images,
                   train_seconds=p.train_seconds, world_size=t.procs.world_size, output=str(out))
    test_acc = p.test_acc
    if eval_images < len(test_set.samples):  # per-epoch figures are on the subset: the final one on all
        results.update(final_subset_acc=p.test_acc, best_subset_acc=p.best_acc)
        with build_loader(test_set.samples, train=False,
                          **loader_options(cfg, t.device, t.procs.rank, t.procs.world_size)) as full:
            t.final_counts = ConfusionCounter(t.facts.num_classes, device=t.device)
            correct, total = evaluate(t.model, full, t.device, lambda: autocast_context(cfg, t.device),
                                      t.objective, t.procs, t.final_counts)
        results["final_test_acc"] = test_acc = correct / max(total, 1)
        t.evaluated_images = total
    results["evaluated_images"] = t.evaluated_images
    # the last evaluation was over the whole split (the last epoch's, or the one above)
    results["skipped_test_images"] = skipped = len(test_set.samples) - t.evaluated_images
    if t.final_counts is not None:  # the final pass over the whole test split, per class
        report = t.final_counts.report(t.facts.class_names)
        summary = report.summary()
        results.update(final_test_top5=summary["top5"], final_mean_class_acc=summary["mean_class_accuracy"])
        if t.procs.is_main:
            write_per_class_csv(report, out / "per_class.csv")
            write_confusion_csv(report, out / "confusion.csv")
    if t.procs.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        t.report.finish(dict(results, dataset=cfg.dataset, model=cfg.model, loss=cfg.loss))
    on = f"on the {eval_images}-image subset " if eval_images < len(test_set.samples) else ""
    per_class = (f"; top-5 {100 * results['final_test_top5']:.2f}%, mean per-class "
                 f"{100 * results['final_mean_class_acc']:.2f}% (per_class.csv)" if "final_test_top5" in results else "")
    scored = f"{t.evaluated_images} test images" + (f" ({skipped} unreadable, skipped)" if skipped else "")
    chance = 100 / test_set.num_classes
    t.log(f"final test accuracy: {100 * test_acc:.2f}% on {scored}, against {chance:.3g}% by chance for "
          f"{test_set.num_classes} classes (best {on}{100 * p.best_acc:.2f}% at epoch {p.best_epoch}){per_class}; "
          f"run folder {out}")
    return results


def resume_checkpoint(path: str) -> Path:
    """The checkpoint file of ``--resume path`` (a run folder or a checkpoint file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    latest = path.parent / "last.pt"
    if path.name != "last.pt" and latest.is_file():
        raise ValueError(f"--resume {path}: the run's latest checkpoint is {latest}; resuming from {path.name} "
                         f"would rewind the run and overwrite it. Resume the run with --resume {path.parent}, or "
                         f"evaluate {path.name} with python -m tdsa_fast.evaluate")
    return path


def prepare_resume(given: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict]:
    """(config, checkpoint) of ``--resume``: the run's saved config with the allowed command
    line changes; the run continues in the checkpoint's folder."""
    path = resume_checkpoint(given.resume)
    ckpt = checkpoint.load(path)
    check_resumable(ckpt, path)
    folder = path.parent
    if "output" in explicit and Path(given.output).resolve() != folder.resolve():
        raise ValueError(f"--output {given.output} conflicts with --resume {given.resume}: a resumed run "
                         f"continues in its own folder ({folder})")
    saved, _ = saved_run(ckpt["config"], f"{path}: config")
    progress = ckpt.get("progress") or {}
    if progress.get("completed_epochs", ckpt.get("epoch")) == saved.epochs and not progress.get("batches_done"):
        raise ValueError(f"--resume {given.resume}: the run has finished all its {saved.epochs} epochs; "
                         "nothing to resume")
    return resume_config(ckpt["config"], given, explicit).replace(output=str(folder)), ckpt


def main(argv=None) -> int:
    try:
        cfg, explicit = parse_config(argv)
        ckpt = None
        if cfg.resume:
            cfg, ckpt = prepare_resume(cfg, explicit)
    except (ValueError, FileNotFoundError) as e:
        build_parser().error(str(e))
    try:
        run(cfg, resume_from=ckpt)
    except (ValueError, FileNotFoundError, FloatingPointError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
