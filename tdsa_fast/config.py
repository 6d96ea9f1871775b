"""The trainer's configuration: one typed record (:class:`TrainConfig`) whose fields carry their
help text, choices, ranges and whether ``--resume`` may change them. The argparse parser, the
YAML config files, ``config.json``, the resume rules and the experiment grids all derive from it.

Options left unset take the preset of the chosen dataset: the built-in ``default``
data gets a small CPU-sized recipe, the real datasets get the paper's recipe
(docs/method.md: VGG16, SGD momentum 0.9, lr 0.1, weight decay 5e-4, 300 epochs, batch 32,
224 px, lr x0.1 at 1/2 and 3/4 of the epochs).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tdsa_fast._checks import DIV_FORMS, UPSAMPLE_MODES
from tdsa_fast.data.datasets import DATASETS
from tdsa_fast.data.loading import LOADERS
from tdsa_fast.loss_specs import LOSS_NAMES, RELEASED_BETA, loss_spec
from tdsa_fast.losses import BASELINES, baseline_options
from tdsa_fast.models import MODELS

__all__ = ["TrainConfig", "RunFacts", "build_parser", "parse_config", "resolve", "resume_config",
           "SavedRun", "load_config_file", "config_from_options", "trainer_argv", "file_view", "saved_run", "saved_record",
           "OPTION_NAMES", "RESUME_OVERRIDABLE"]

LOSSES = LOSS_NAMES  # ce, the baselines of the paper's Tables II/III, mc, tdsa, tdsa-noattn
UPSAMPLE = UPSAMPLE_MODES
AUGMENTS = ("released", "rrc", "none")
AMP_DTYPES = ("bfloat16", "float16")
SCHEDULES = ("step", "cosine")
RESNETS = ("resnet18", "resnet50")
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # torch.manual_seed's

PAPER_RECIPE = dict(model="vgg16", epochs=300, batch_size=32, img_size=224, lr=0.1, workers=4, stem="auto")
# The built-in data: a few minutes on 2 CPU cores (see README "Built-in default data").
# ResNet18 with the standard stem at 64 px (middle 4x4, high 2x2 maps) runs about 3x faster on a
# CPU than the small stem (8x8 / 4x4); lr 0.01 learns this from-scratch problem where 0.05 did not.
DEFAULT_RECIPE = dict(model="resnet18", epochs=20, batch_size=32, img_size=64, lr=0.01, workers=0, stem="standard")
PRESETS = {name: (DEFAULT_RECIPE if name == "default" else PAPER_RECIPE) for name in DATASETS}
# The usual FGVC fine-tuning recipe (README "Fine-tuning from ImageNet weights"): torchvision's ImageNet
# ResNet50 at 448 px, SGD lr 0.01 for the new layers (head, grouped levels) and 10x lower for the
# pretrained ones, cosine schedule over 50 epochs, batch 16.
FINETUNE_RECIPE = dict(model="resnet50", epochs=50, batch_size=16, img_size=448, lr=0.01, workers=4, stem="auto",
                       pretrained="torchvision", pretrained_lr_scale=0.1, schedule="cosine")
# --recipe: paper (from scratch, PAPER_RECIPE), default (the built-in data's), finetune; unset: the dataset's preset
RECIPES = {"paper": PAPER_RECIPE, "default": DEFAULT_RECIPE, "finetune": FINETUNE_RECIPE}
# what every recipe leaves as is unless it says otherwise
RECIPE_BASE = dict(pretrained="none", pretrained_lr_scale=1.0, schedule="step")


@dataclass(frozen=True)
class Option:
    """What the command line, the config files and the resume rules know of one field."""
    help: str
    group: str
    choices: tuple | None = None
    minimum: int | float | None = None  # the least value (for lr: above 0, see ``positive``)
    positive: bool = False
    resumable: bool = False  # --resume may change it: where and how fast a run runs, not what it computes
    flag: str | None = None  # default: --the-field-name
    metavar: str | None = None
    in_files: bool = True  # a key of --config files, config.json and the experiment specs


def option(default, help: str, group: str, **kw):
    return field(default=default, metadata={"option": Option(help, group, **kw)})


def _loss_arg_help() -> str:
    return ("a hyper-parameter of a baseline loss (repeat for several), e.g. --loss arcface --loss-arg margin=0.3 "
            "--loss-arg scale=30; unset ones keep their paper's default. Options: "
            + "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in baseline_options(n).items()) for n in BASELINES))


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's options. ``None`` in a preset field means "the recipe's value" until
    :func:`resolve` fills it; a resolved config has every preset field set."""
    # data
    dataset: str = option("default", "dataset (native layout)", "data", choices=DATASETS)
    data_root: str | None = option(
        None, "folder that directly holds the dataset's native files (for 'default': the cache folder)", "data")
    img_size: int | None = option(None, "square input size (preset: 64 default data, 224 real)", "data", minimum=1)
    augment: str = option("released", "training augmentation: the released code's resize+pad-crop+flip, "
                          "random-resized-crop, or none (the test transform on shuffled training batches)", "data",
                          choices=AUGMENTS)
    loader: str = option("auto", "data pipeline: NVIDIA DALI (GPU decode on CUDA), the PyTorch DataLoader, memory "
                         "(decode each split once, keep it on the device as uint8, augment there), or auto (on CUDA "
                         "memory when the split fits in half the free GPU memory; else DALI when it is installed, "
                         "else torch)", "data", choices=LOADERS, resumable=True)
    memory_cache: str | None = option(
        None, "--loader memory: keep the decoded splits in DIR (keyed by the file list, size and decoder) so that "
        "the next run loads them instead of decoding", "data", metavar="DIR", resumable=True)
    memory_size: int | None = option(
        None, "--loader memory with --augment rrc: the side of the stored images the crops are resampled from "
        "(default: 2 x --img-size)", "data", minimum=1)
    torch_decode: str = option("pil", "PyTorch loader only: PIL in the worker processes, or "
                               "torchvision.io.decode_jpeg on the training device (nvJPEG on CUDA)", "data",
                               choices=("pil", "device"), resumable=True)
    workers: int | None = option(None, "DataLoader worker processes (PyTorch loader) or decoding threads (DALI, at "
                                 "least 1)", "data", minimum=0, resumable=True)
    skip_bad_images: bool = option(False, "skip unreadable images (counted and reported) instead of stopping with "
                                   "an error", "data")
    # model
    model: str | None = option(None, "backbone (preset: resnet18 default data, vgg16 real, resnet50 --recipe "
                               "finetune)", "model", choices=MODELS)
    pretrained: str | None = option(
        None, "initialise from ImageNet weights in torchvision's layout: torchvision's own (downloaded into torch's "
        "cache; needs a network the first time) or a local .pth state dict; every layer whose shape matches is "
        "loaded, the layers the grouped losses widen and the head are freshly initialised; the list goes to "
        "RUN/pretrained.json (preset: none; torchvision with --recipe finetune)", "model",
        metavar="{none,torchvision,PATH}")
    xi: int = option(3, "middle/high channel ratio ξ (1..5 in the paper)", "model", minimum=1)
    stem: str | None = option(None, "ResNet stem: standard (conv7x7/2 + max-pool), small (conv3x3/2, no max-pool: "
                              "2x larger maps, about 3x the compute), auto = small below 128 px", "model",
                              choices=("auto", "standard", "small"))
    # loss
    loss: str = option("tdsa", "ce; the baselines of the paper's Tables II/III: center (CE + center loss), asoftmax "
                       "(SphereFace), focal, coco, lgm, lmcl (CosFace), arcface, circle (each with its paper's "
                       "defaults, see tdsa_fast.losses); mc (MC-Loss on the high level); tdsa; tdsa-noattn (the "
                       "two MC losses, no gate)", "loss", choices=LOSSES)
    upsample: str = option("nearest", "upsampling of the top-down gate", "loss", choices=UPSAMPLE)
    mu: float = option(1.5, "weight μ of the MC/TDSA term (α in the code form)", "loss")
    lam: float = option(10.0, "λ on the diversity term (paper form)", "loss")
    div_form: str = option("code", "code (the released code's, which produced the paper's tables; "
                           "docs/method.md): μ L_dis + β(1 − L_div/n) per level; paper (eq. 1 as written): "
                           "μ(L_dis − λ L_div)", "loss", choices=DIV_FORMS)
    beta: float | None = option(None, "β of the code form on every level (default: the released code's, "
                                + ", ".join(f"{k} {v:g}" for k, v in RELEASED_BETA.items()) + ")", "loss")
    beta_middle: float | None = option(None, "β of the middle level alone (tdsa, tdsa-noattn; default: --beta)",
                                       "loss")
    lam_middle: float | None = option(None, "λ of the middle level alone (tdsa, tdsa-noattn; default: --lam)",
                                      "loss")
    cnum_high: int = option(3, "channels per class at the high level", "loss", minimum=1)
    loss_args: dict | list | None = option(None, _loss_arg_help(), "loss", flag="--loss-arg", metavar="KEY=VALUE")
    # optimisation
    recipe: str | None = option(
        None, "preset of the unset options: paper (the paper's from-scratch recipe: vgg16, 300 epochs, lr 0.1, "
        "224 px), default (the built-in data's), finetune (resnet50 from torchvision's ImageNet weights, 448 px, "
        "50 epochs, batch 16, lr 0.01 for the new layers and 0.001 for the pretrained ones, cosine schedule); "
        "unset: default for the built-in data, paper else", "optimisation", choices=tuple(RECIPES))
    epochs: int | None = option(None, "epochs (preset: 20 default data, 300 real, 50 --recipe finetune)",
                                "optimisation", minimum=1)
    batch_size: int | None = option(None, "images per optimiser step, over all processes (preset: 32; 16 --recipe "
                                    "finetune)", "optimisation", minimum=1)
    lr: float | None = option(None, "SGD learning rate (of the new layers with --pretrained)", "optimisation",
                              positive=True)
    pretrained_lr_scale: float | None = option(
        None, "with --pretrained: the loaded layers learn at lr x this (preset 1; 0.1 with --recipe finetune)",
        "optimisation", minimum=0)
    schedule: str | None = option(None, "step: lr x0.1 at 1/2 and 3/4 of the epochs (the paper's); cosine: cosine "
                                  "annealing to 0 over the epochs (preset: step; cosine with --recipe finetune)",
                                  "optimisation", choices=SCHEDULES)
    momentum: float = option(0.9, "SGD momentum", "optimisation")
    weight_decay: float = option(5e-4, "SGD weight decay", "optimisation")
    # run
    config: str | None = option(None, "YAML mapping of option names (field or flag spelling) to values; the "
                                "command line overrides it; unknown keys are an error", "run", metavar="FILE.yaml",
                                in_files=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N (under torchrun: each process takes cuda:LOCAL_RANK)",
                         "run", resumable=True)
    amp: bool = option(False, "mixed precision: autocast on CUDA (--amp-dtype) and on the CPU (bfloat16); a "
                       "gradient scaler for float16", "run")
    amp_dtype: str | None = option(None, "autocast dtype under --amp (default bfloat16; float16 is CUDA-only)",
                                   "run", choices=AMP_DTYPES)
    channels_last: bool = option(False, "NHWC memory format for the model and its input batches", "run")
    compile: bool = option(False, "torch.compile the model and the loss", "run")
    cuda_graph: bool = option(False, "capture the fixed-shape training step (forward, loss, backward, SGD) in a "
                              "CUDA graph and replay it for every full batch (the partial last batch runs eagerly); "
                              "one process, no float16 scaler. Without CUDA the same replay-safe step runs "
                              "uncaptured", "run", resumable=True)
    deterministic: bool = option(False, "deterministic algorithms only (torch.use_deterministic_algorithms; no cuDNN "
                                 "autotuning): a resumed run then ends bitwise equal to an uninterrupted one on the "
                                 "CPU", "run")
    sync_bn: bool = option(False, "SyncBatchNorm across processes (torchrun on CUDA only)", "run")
    resume: str | None = option(None, "continue the run in folder RUN (or from its checkpoint file) with its saved "
                                "config, from the step it stopped at; only the options marked as changeable on "
                                "--resume may differ", "run", metavar="RUN", in_files=False)
    max_steps: int = option(0, "stop (with a checkpoint, as on SIGTERM) after this many optimiser steps in all; 0: no "
                            "limit", "run", minimum=0, resumable=True)
    seed: int = option(0, "seed of the initialisation and of every random draw of the data", "run")
    output: str | None = option(None, "run folder (default: runs/<dataset>-<model>-<loss>-<time>)", "run")
    overwrite: bool = option(False, "replace the run files (checkpoints, metrics, results) that --output holds; "
                             "without it such a folder is refused", "run")
    log_interval: int = option(20, "steps between progress lines", "run", minimum=1, resumable=True)
    tensorboard: bool = option(True, "no TensorBoard event files in the run folder", "run", flag="--no-tensorboard",
                               resumable=True)
    eval_subset: int = option(0, "evaluate each epoch on a fixed subset of this many test images (the same for every "
                              "run), and the whole test split once at the end; 0: the whole split every time", "run",
                              minimum=0)
    eval_every: int = option(1, "epochs between test evaluations (the last always runs)", "run", minimum=1)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", "run", minimum=1,
                                 resumable=True)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def options(self) -> dict:
        """The options as a flat mapping of field names (``config.json``'s and the checkpoints'
        format), without the command-line-only ``config`` and ``resume``."""
        return {f.name: getattr(self, f.name) for f in FIELDS.values() if f.metadata["option"].in_files}


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
OPTION_NAMES = tuple(name for name, f in FIELDS.items() if f.metadata["option"].in_files)
RESUME_OVERRIDABLE = tuple(name for name, f in FIELDS.items() if f.metadata["option"].resumable)
_TYPES = typing.get_type_hints(TrainConfig)


def _kind(name: str) -> type:
    """The value type of field ``name``: bool, int, float, str or dict (``loss_args``)."""
    hint = _TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]


def _flag(name: str) -> str:
    return FIELDS[name].metadata["option"].flag or "--" + name.replace("_", "-")


GROUPS = ("data", "model", "loss", "optimisation", "run")


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The trainer's command line, one argument per :class:`TrainConfig` field.
    ``suppress_defaults``: unset options are absent from the namespace (which were given)."""
    p = argparse.ArgumentParser(
        prog="python -m tdsa_fast.train",
        description="Train a fine-grained classifier with CE, MC-Loss, TDSA-Loss or a baseline loss. "
        "With no arguments: the built-in synthetic dataset, ResNet18 + TDSA, a few minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for name, f in FIELDS.items():
        opt: Option = f.metadata["option"]
        kind = _kind(name)
        text = opt.help + ("; may change on --resume" if opt.resumable else "")
        kw = {} if suppress_defaults else dict(default=f.default)
        if kind is bool:
            action = "store_false" if f.default else "store_true"
            groups[opt.group].add_argument(_flag(name), dest=name, action=action, help=text, **kw)
        elif kind is dict:
            groups[opt.group].add_argument(_flag(name), dest=name, action="append", type=loss_arg,
                                           metavar=opt.metavar, help=text, **kw)
        else:
            groups[opt.group].add_argument(_flag(name), dest=name, type=kind, choices=opt.choices,
                                           metavar=opt.metavar, help=text, **kw)
    return p


def loss_arg(text: str) -> tuple[str, int | float | None]:
    """``KEY=VALUE`` of ``--loss-arg``: (key, int, float or None for ``null``/``none``)."""
    key, sep, value = str(text).partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value.lower() in ("null", "none"):
        return key, None
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{key}: expected a finite number, got {value!r}")
        return key, number
    raise argparse.ArgumentTypeError(f"{key}: expected a number (or null), got {value!r}")


def loss_arg_pairs(value) -> list[tuple]:
    """A config file's or an experiment spec's ``loss_args`` -- a mapping (``{margin: 0.3}``) or a
    list of ``"KEY=VALUE"`` -- as ``--loss-arg`` would parse it.

    Raises:
        argparse.ArgumentTypeError: a value that is not a number or null.
        TypeError: neither a mapping nor a list.
    """
    if isinstance(value, dict):
        return [loss_arg(f"{k}={'null' if v is None else v}") for k, v in value.items()]
    if isinstance(value, list):
        return [loss_arg(item) for item in value]
    raise TypeError(f"a mapping of a baseline loss's options, got {value!r}")


def loss_args_dict(value) -> dict:
    """``--loss-arg``'s value (a list of (key, value) pairs, a mapping, or None) as a dict;
    a key given twice is an error."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    out = {}
    for key, v in value:
        if key in out:
            raise ValueError(f"--loss-arg {key} is given twice")
        out[key] = v
    return out


def option_value(name: str, value, where: str):
    """``value`` of option ``name`` from a config file or a spec (``where`` names it in errors),
    checked and converted as the command line would convert its text.

    Raises:
        ValueError: a value of the wrong type or outside the option's choices.
    """
    f, kind = FIELDS[name], _kind(name)
    opt: Option = f.metadata["option"]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value  # a store_false option (--no-tensorboard) is keyed by its field: tensorboard: false
    if value is None:
        if f.default is not None:  # None is "not given" only for the options whose default it is
            raise ValueError(f"{where} must not be null (leave the key out for its default, {f.default!r})")
        return None
    if kind is dict:
        try:
            return loss_arg_pairs(value)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: {e}") from None
        except TypeError as e:
            raise ValueError(f"{where} must be {e}") from None
    if isinstance(value, (list, dict, bool)):
        raise ValueError(f"{where} must be a single value, got {value!r}")
    if kind is int and isinstance(value, float):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    try:
        value = kind(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    if opt.choices is not None and value not in opt.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
    return value


def field_name(key) -> str:
    """A config key in field or flag spelling (``batch_size``, ``batch-size``, ``--no-tensorboard``)
    as its field name; ValueError naming the valid keys for another."""
    text = str(key)
    flags = {_flag(n): n for n in OPTION_NAMES}
    name = flags.get(text if text.startswith("--") else "--" + text, text.lstrip("-").replace("-", "_"))
    if name not in OPTION_NAMES:
        raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(sorted(OPTION_NAMES))}")
    return name


def options_from_mapping(data: dict, where: str) -> dict:
    """``{field: value}`` of a mapping of option names (either spelling) to values, each value
    checked as the command line would check it; ``where`` names the mapping in errors."""
    out = {}
    for key, value in data.items():
        try:
            name = field_name(key)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if name in out:
            raise ValueError(f"{where}: {key!r} is given twice")
        out[name] = option_value(name, value, f"{where}: {key}")
    return out


def load_config_file(path: str | Path) -> dict:
    """The options a YAML config file sets: ``{field: value}`` (keys in field or flag spelling:
    ``batch_size`` or ``batch-size``). Loading never runs code from the file (``yaml.safe_load``).

    Raises:
        ValueError: a missing or unreadable file, a file that is not a mapping, an unknown
            key, or a value of the wrong type or outside the option's choices.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values, not {type(data).__name__}")
    return options_from_mapping(data, f"--config {path}")


def explicit_options(argv) -> set[str]:
    """The fields given on the command line ``argv`` (not from defaults or a config file)."""
    return set(vars(build_parser(suppress_defaults=True).parse_args(argv)))


def parse_config(argv=None) -> tuple[TrainConfig, set[str]]:
    """The trainer's command line ``argv`` (with ``--config``'s file underneath it), resolved
    by :func:`resolve`; also the set of options given explicitly on the command line.
    With ``--resume`` the config is not resolved (the run's saved config is the base; see
    :func:`resume_config`).

    Raises:
        ValueError: as :func:`load_config_file` and :func:`resolve`; argparse errors exit.
    """
    parser = build_parser()
    explicit = explicit_options(argv)
    given = vars(parser.parse_args(argv))
    if given["config"] is not None:
        if given["resume"] is not None:
            raise ValueError("--config and --resume conflict: a resumed run keeps its saved config")
        from_file = load_config_file(given["config"])
        given.update({k: v for k, v in from_file.items() if k not in explicit})
    if given["resume"] is not None:
        return TrainConfig(**given), explicit
    return resolve(given), explicit


def config_from_options(options: dict, where: str) -> TrainConfig:
    """The resolved config of a mapping of options (an experiment spec's run), each value checked
    as in a config file; ``where`` names the mapping in errors.

    Raises:
        ValueError: as :func:`options_from_mapping` and :func:`resolve`.
    """
    return resolve(options_from_mapping(options, where))


def trainer_argv(cfg_options: dict) -> list[str]:
    """``python -m tdsa_fast.train`` arguments that give the options ``cfg_options`` (field names;
    the values as :func:`options_from_mapping` returns them)."""
    argv = []
    for name, value in cfg_options.items():
        flag, kind = _flag(name), _kind(name)
        if kind is bool:
            if value != FIELDS[name].default:
                argv.append(flag)
        elif kind is dict:  # {margin: 0.3} -> --loss-arg margin=0.3
            for k, v in loss_args_dict(value).items():
                argv += [flag, f"{k}={'null' if v is None else v}"]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def check_ranges(cfg: TrainConfig, names) -> None:
    """ValueError for an option of ``names`` outside its range or not finite (``lr <= 0`` is
    false for NaN, so a range check alone would let it through); None, "not given", passes."""
    for name in names:
        opt: Option = FIELDS[name].metadata["option"]
        value, flag = getattr(cfg, name), _flag(name)
        if value is None or _kind(name) not in (int, float):
            continue
        if _kind(name) is float and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
        if opt.minimum is not None and value < opt.minimum:
            raise ValueError(f"{flag} must be >= {opt.minimum}, got {value}")
        if opt.positive and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")


def resolve(given: dict | argparse.Namespace) -> TrainConfig:
    """Fills the preset values of the options ``given`` (field names; unset ones take their
    defaults) and checks the combination.

    Raises:
        ValueError: an option out of range, or a combination the trainer refuses.
    """
    given = dict(vars(given) if isinstance(given, argparse.Namespace) else given)
    cfg = TrainConfig(**given)
    recipe = RECIPES[cfg.recipe] if cfg.recipe else PRESETS[cfg.dataset]
    fills = {k: v for k, v in {**RECIPE_BASE, **recipe}.items() if getattr(cfg, k) is None}
    if cfg.stem is None and (cfg.model or recipe["model"]) != recipe["model"]:
        fills["stem"] = "auto"
    cfg = cfg.replace(**fills)
    if cfg.dataset != "default" and cfg.data_root is None:
        raise ValueError(f"--dataset {cfg.dataset} needs --data-root: the folder that holds its native files")
    check_ranges(cfg, FIELDS)
    if cfg.stem != "auto" and cfg.model not in RESNETS:
        raise ValueError(f"--stem applies to {' and '.join(RESNETS)} only, not to --model {cfg.model}")
    if cfg.pretrained not in ("none", "torchvision"):
        if not Path(cfg.pretrained).is_file():
            raise ValueError(f"--pretrained {cfg.pretrained}: no such file (expected none, torchvision or the "
                             "path of a .pth state dict in torchvision's layout)")
        cfg = cfg.replace(pretrained=str(Path(cfg.pretrained).resolve()))
    if not SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1]:
        raise ValueError(f"--seed must be in [-2**63, 2**64 - 1] (torch.manual_seed's range), got {cfg.seed}")
    if cfg.amp_dtype is not None and not cfg.amp:
        raise ValueError("--amp-dtype needs --amp")
    cfg = cfg.replace(amp_dtype=(cfg.amp_dtype or "bfloat16") if cfg.amp else None)
    return _resolve_loss(cfg)


def _resolve_loss(cfg: TrainConfig) -> TrainConfig:
    """The released code's β of the loss where ``--beta`` is not given; ``--beta-middle`` and
    ``--lam-middle`` only for the losses with a middle level; a baseline's ``--loss-arg``s."""
    spec = loss_spec(cfg.loss)
    for name in ("beta_middle", "lam_middle"):
        if getattr(cfg, name) is not None and not spec.has_middle:
            raise ValueError(f"{_flag(name)} weights the middle level of tdsa and tdsa-noattn; "
                             f"--loss {cfg.loss} has none")
    cfg = cfg.replace(beta=RELEASED_BETA.get(cfg.loss) if cfg.beta is None else cfg.beta,
                      loss_args=loss_args_dict(cfg.loss_args))
    if cfg.loss_args:
        if cfg.loss not in BASELINES:
            raise ValueError(f"--loss-arg applies to the baseline losses ({', '.join(BASELINES)}), not to "
                             f"--loss {cfg.loss} (its weights are --mu, --lam, --div-form, --beta, --cnum-high)")
        valid = baseline_options(cfg.loss)
        unknown = sorted(set(cfg.loss_args) - set(valid))
        if unknown:
            raise ValueError(f"--loss-arg {', '.join(unknown)}: not an option of --loss {cfg.loss}; its options: "
                             + ", ".join(f"{k} (default {v})" for k, v in valid.items()))
    return cfg


@dataclass(frozen=True)
class RunFacts:
    """What a run learns as it starts, saved beside its options in ``config.json`` and in every
    checkpoint's ``config`` (one flat mapping: the options, then these)."""
    num_classes: int | None = None
    class_names: list | None = None
    device_used: str | None = None
    loader_used: str | None = None
    world_size: int = 1
    pretrained_loaded: list | None = None  # the parameters --pretrained loaded (their lr is scaled)


FACT_NAMES = tuple(f.name for f in dataclasses.fields(RunFacts))


class SavedRun(typing.NamedTuple):
    """A saved run's options and facts (a checkpoint's ``config``, ``config.json``)."""
    config: TrainConfig
    facts: RunFacts


def saved_record(cfg: TrainConfig, facts: RunFacts) -> dict:
    """The flat mapping a run saves (``config.json``, a checkpoint's ``config``)."""
    return {**cfg.options(), **dataclasses.asdict(facts)}


def saved_run(record: dict, where: str = "the checkpoint's config") -> SavedRun:
    """(config, facts) of a saved mapping (:func:`saved_record`'s); options newer than the run
    take their defaults.

    Raises:
        ValueError: a key that is neither an option nor a fact of this version.
    """
    unknown = sorted(set(record) - set(OPTION_NAMES) - set(FACT_NAMES))
    if unknown:
        raise ValueError(f"{where} has keys this version of tdsa_fast does not know: {', '.join(unknown)}")
    cfg = TrainConfig(**{k: v for k, v in record.items() if k in OPTION_NAMES})
    facts = RunFacts(**{k: v for k, v in record.items() if k in FACT_NAMES})
    return SavedRun(cfg, facts)


def resume_config(saved: dict, given: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The config of a resumed run: the run's ``saved`` config (:func:`saved_record`'s mapping),
    with the options of :data:`RESUME_OVERRIDABLE` that were given explicitly on the command
    line (``given``, the parsed command line) put over it.

    Raises:
        ValueError: another option given explicitly with a value that differs from the saved
            one, or an overriding value out of range.
    """
    cfg, _ = saved_run(saved)
    changes = {}
    for name in sorted(explicit - {"resume", "config"}):
        value, before = getattr(given, name), getattr(cfg, name)
        if name in RESUME_OVERRIDABLE:
            changes[name] = value
        elif name == "output":
            continue  # checked against the checkpoint's folder by the trainer
        elif name == "loss_args" and loss_args_dict(value) == (before or {}):
            continue
        elif value != before:
            raise ValueError(f"{_flag(name)} {value} conflicts with the resumed run's saved value {before!r}: a "
                             "resumed run keeps its config (only "
                             + ", ".join(_flag(k) for k in RESUME_OVERRIDABLE) + " may change)")
    cfg = cfg.replace(**changes, resume=given.resume)
    check_ranges(cfg, changes)
    return cfg


def file_view(cfg: TrainConfig) -> dict:
    """The config as a ``--config`` file: the options only (no run facts), and not ``output`` or
    ``overwrite``, so that ``--config RUN/config.yaml`` repeats the run in a new folder."""
    return {k: v for k, v in cfg.options().items() if k not in ("output", "overwrite")}


def model_widths(loss: str, xi: int, cnum_high: int) -> tuple[int | None, int | None]:
    """(middle_cnum, high_cnum) of the backbone for a loss: grouped levels only where the loss reads them."""
    return loss_spec(loss).widths(xi, cnum_high)


def small_input(cfg: TrainConfig) -> bool | None:
    """The ``small_input`` argument of ``build_model`` for ``--stem`` (None: the model's own default)."""
    return {"auto": None, "standard": False, "small": True}[cfg.stem or "auto"]
