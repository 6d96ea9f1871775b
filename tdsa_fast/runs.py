"""What a run's resolved config rebuilds: its network, its objective, its data folder, and
the checks of its options that need the device and the process count.

The trainer, evaluation, prediction and export all rebuild a run from the ``config`` dict
that the trainer saves in every checkpoint (:func:`tdsa_fast.config.saved_run` reads it), so they
live here, outside the training command.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tdsa_fast.config import TrainConfig, model_widths, small_input
from tdsa_fast.data.decode import dali_available
from tdsa_fast.distributed import Processes
from tdsa_fast.graph_step import check_graph_options
from tdsa_fast.models import build_model
from tdsa_fast.objective import TrainingObjective

__all__ = ["build_network", "build_objective", "load_state", "dataset_root", "resolve_loader", "check_run_options"]


def dataset_root(cfg: TrainConfig) -> Path:
    """The folder with the native files; for the built-in data, generated on first use."""
    if cfg.dataset == "default":
        from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

        try:
            return Path(ensure_default_dataset(SyntheticSpec(seed=0), cache_dir=cfg.data_root))
        except OSError as e:  # an unwritable folder, or a file where the folder should be
            raise ValueError(f"--data-root {cfg.data_root}: cannot write the built-in dataset there: "
                             f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}") from None
    return Path(cfg.data_root)


def build_network(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The backbone of the resolved config ``cfg`` (grouped levels as the loss needs them)."""
    middle_cnum, high_cnum = model_widths(cfg.loss, cfg.xi, cfg.cnum_high)
    return build_model(cfg.model, num_classes, middle_cnum=middle_cnum, high_cnum=high_cnum,
                       img_size=cfg.img_size, small_input=small_input(cfg))


def build_objective(cfg: TrainConfig, num_classes: int) -> TrainingObjective:
    """The objective of the resolved config ``cfg`` (it owns the parameters of the baseline losses)."""
    return TrainingObjective(cfg.loss, num_classes=num_classes, cnum_high=cfg.cnum_high, mu=cfg.mu,
                             lam=cfg.lam, div_form=cfg.div_form, beta=cfg.beta,
                             lam_middle=cfg.lam_middle, beta_middle=cfg.beta_middle,
                             upsample=cfg.upsample, loss_args=cfg.loss_args or {})


def load_state(module: nn.Module, state: dict, what: str, cfg: TrainConfig, num_classes: int | None) -> None:
    """``module.load_state_dict(state)``, with a clear error when the checkpoint holds another
    architecture or class count."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"the checkpoint's {what} does not fit the {cfg.model} / {cfg.loss} / "
                         f"{num_classes}-class network of this run: {' '.join(first[:3])}") from None


def resolve_loader(name: str) -> str:
    """``auto`` -> ``dali`` when DALI is installed, else ``torch``."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    return name


def check_run_options(cfg: TrainConfig, device: torch.device, procs: Processes) -> None:
    """Flag combinations that only the device and process count can rule out."""
    if cfg.amp and cfg.amp_dtype == "float16" and device.type != "cuda":
        raise ValueError("--amp-dtype float16 is CUDA-only (CPU autocast runs bfloat16); use --amp-dtype bfloat16")
    if cfg.sync_bn and (device.type != "cuda" or not procs.enabled):
        raise ValueError("--sync-bn needs several processes on CUDA (torchrun with NCCL); BatchNorm statistics "
                         "stay per process on the CPU")
    check_graph_options(cfg, device, procs.world_size)
    if cfg.torch_decode == "device" and resolve_loader(cfg.loader) == "dali":  # after auto's choice
        raise ValueError("--torch-decode applies to --loader torch; DALI decodes on the training device itself"
                         + (" (--loader auto chose DALI, which is installed)" if cfg.loader == "auto" else ""))
