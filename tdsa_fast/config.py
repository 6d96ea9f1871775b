"""The trainer's command line: argument groups, per-dataset presets, validation.

Options left unset take the preset of the chosen dataset: the built-in ``default``
data gets a small CPU-sized recipe, the real datasets get the paper's recipe
(docs/method.md: VGG16, SGD momentum 0.9, lr 0.1, weight decay 5e-4, 300 epochs, batch 32,
224 px, lr x0.1 at 1/2 and 3/4 of the epochs).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from tdsa_fast.data.datasets import DATASETS
from tdsa_fast.data.loading import LOADERS
from tdsa_fast.loss_specs import LOSS_NAMES, RELEASED_BETA, loss_spec
from tdsa_fast.losses import BASELINES, baseline_options
from tdsa_fast.models import MODELS

LOSSES = LOSS_NAMES  # ce, the baselines of the paper's Tables II/III, mc, tdsa, tdsa-noattn
UPSAMPLE = ("nearest", "bilinear", "bicubic")
AUGMENTS = ("released", "rrc", "none")
AMP_DTYPES = ("bfloat16", "float16")
# Options that may differ from the saved config when a run is resumed: where and how fast it
# runs, not what it computes (the data pipeline's rounding aside).
RESUME_OVERRIDABLE = ("device", "workers", "threads", "log_interval", "loader", "torch_decode", "tensorboard",
                      "max_steps", "memory_cache", "cuda_graph")
# The least value of the integer options (checked by resolve, and again for what --resume overrides).
MINIMUMS = dict(epochs=1, batch_size=1, img_size=1, xi=1, cnum_high=1, log_interval=1, eval_every=1,
                eval_subset=0, workers=0, max_steps=0, threads=1, memory_size=1)
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
SCHEDULES = ("step", "cosine")
RESNETS = ("resnet18", "resnet50")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tdsa_fast.train",
        description="Train a fine-grained classifier with CE, MC-Loss, TDSA-Loss or a baseline loss. "
        "With no arguments: the built-in synthetic dataset, ResNet18 + TDSA, a few minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="default", choices=DATASETS, help="dataset (native layout)")
    d.add_argument("--data-root", default=None,
                   help="folder that directly holds the dataset's native files (for 'default': the cache folder)")
    d.add_argument("--img-size", type=int, default=None, help="square input size (preset: 64 default data, 224 real)")
    d.add_argument("--augment", default="released", choices=AUGMENTS,
                   help="training augmentation: the released code's resize+pad-crop+flip, random-resized-crop, "
                        "or none (the test transform on shuffled training batches)")
    d.add_argument("--loader", default="auto", choices=LOADERS,
                   help="data pipeline: NVIDIA DALI (GPU decode on CUDA), the PyTorch DataLoader, memory (decode "
                        "each split once, keep it on the device as uint8, augment there), or auto (on CUDA memory "
                        "when the split fits in half the free GPU memory; else DALI when it is installed, else torch)")
    d.add_argument("--memory-cache", default=None, metavar="DIR",
                   help="--loader memory: keep the decoded splits in DIR (keyed by the file list, size and decoder) "
                        "so that the next run loads them instead of decoding")
    d.add_argument("--memory-size", type=int, default=None,
                   help="--loader memory with --augment rrc: the side of the stored images the crops are resampled "
                        "from (default: 2 x --img-size)")
    d.add_argument("--torch-decode", default="pil", choices=("pil", "device"),
                   help="PyTorch loader only: PIL in the worker processes, or torchvision.io.decode_jpeg on the "
                        "training device (nvJPEG on CUDA)")
    d.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (PyTorch loader) or decoding threads (DALI, at least 1)")
    d.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (counted and reported) instead of stopping with an error")

    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, choices=MODELS,
                   help="backbone (preset: resnet18 default data, vgg16 real, resnet50 --recipe finetune)")
    m.add_argument("--pretrained", default=None, metavar="{none,torchvision,PATH}",
                   help="initialise from ImageNet weights in torchvision's layout: torchvision's own (downloaded "
                        "into torch's cache; needs a network the first time) or a local .pth state dict; every "
                        "layer whose shape matches is loaded, the layers the grouped losses widen and the head "
                        "are freshly initialised; the list goes to RUN/pretrained.json (preset: none; "
                        "torchvision with --recipe finetune)")
    m.add_argument("--xi", type=int, default=3, help="middle/high channel ratio ξ (1..5 in the paper)")
    m.add_argument("--stem", default=None, choices=("auto", "standard", "small"),
                   help="ResNet stem: standard (conv7x7/2 + max-pool), small (conv3x3/2, no max-pool: "
                        "2x larger maps, about 3x the compute), auto = small below 128 px")

    lo = p.add_argument_group("loss")
    lo.add_argument("--loss", default="tdsa", choices=LOSSES,
                    help="ce; the baselines of the paper's Tables II/III: center (CE + center loss), asoftmax "
                         "(SphereFace), focal, coco, lgm, lmcl (CosFace), arcface, circle (each with its "
                         "paper's defaults, see tdsa_fast.losses); mc (MC-Loss on the high level); tdsa; "
                         "tdsa-noattn (the two MC losses, no gate)")
    lo.add_argument("--upsample", default="nearest", choices=UPSAMPLE, help="upsampling of the top-down gate")
    lo.add_argument("--mu", type=float, default=1.5, help="weight μ of the MC/TDSA term (α in the code form)")
    lo.add_argument("--lam", type=float, default=10.0, help="λ on the diversity term (paper form)")
    lo.add_argument("--div-form", default="code", choices=("code", "paper"),
                    help="code (the released code's, which produced the paper's tables; docs/method.md): "
                         "μ L_dis + β(1 − L_div/n) per level; paper (eq. 1 as written): μ(L_dis − λ L_div)")
    lo.add_argument("--beta", type=float, default=None,
                    help="β of the code form on every level (default: the released code's, "
                         + ", ".join(f"{k} {v:g}" for k, v in RELEASED_BETA.items()) + ")")
    lo.add_argument("--beta-middle", type=float, default=None,
                    help="β of the middle level alone (tdsa, tdsa-noattn; default: --beta)")
    lo.add_argument("--lam-middle", type=float, default=None,
                    help="λ of the middle level alone (tdsa, tdsa-noattn; default: --lam)")
    lo.add_argument("--cnum-high", type=int, default=3, help="channels per class at the high level")
    lo.add_argument("--loss-arg", dest="loss_args", action="append", type=loss_arg, default=None,
                    metavar="KEY=VALUE",
                    help="a hyper-parameter of a baseline loss (repeat for several), e.g. --loss arcface "
                    "--loss-arg margin=0.3 --loss-arg scale=30; unset ones keep their paper's default. "
                    + "Options: " + "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in baseline_options(n).items())
                                              for n in BASELINES))

    o = p.add_argument_group("optimisation")
    o.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="preset of the unset options: paper (the paper's from-scratch recipe: vgg16, 300 epochs, "
                        "lr 0.1, 224 px), default (the built-in data's), finetune (resnet50 from torchvision's "
                        "ImageNet weights, 448 px, 50 epochs, batch 16, lr 0.01 for the new layers and 0.001 for "
                        "the pretrained ones, cosine schedule); unset: default for the built-in data, paper else")
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--batch-size", type=int, default=None)
    o.add_argument("--lr", type=float, default=None, help="SGD learning rate (of the new layers with --pretrained)")
    o.add_argument("--pretrained-lr-scale", type=float, default=None,
                   help="with --pretrained: the loaded layers learn at lr x this (preset 1; 0.1 with --recipe finetune)")
    o.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="step: lr x0.1 at 1/2 and 3/4 of the epochs (the paper's); cosine: cosine annealing to 0 "
                        "over the epochs (preset: step; cosine with --recipe finetune)")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=5e-4)

    r = p.add_argument_group("run")
    r.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="YAML mapping of option names (dest or flag spelling) to values; the command line "
                        "overrides it; unknown keys are an error")
    r.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (under torchrun: each process takes cuda:LOCAL_RANK)")
    r.add_argument("--amp", action="store_true",
                   help="mixed precision: autocast on CUDA (--amp-dtype) and on the CPU (bfloat16); a gradient "
                        "scaler for float16")
    r.add_argument("--amp-dtype", default=None, choices=AMP_DTYPES,
                   help="autocast dtype under --amp (default bfloat16; float16 is CUDA-only)")
    r.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format for the model and its input batches")
    r.add_argument("--compile", action="store_true", help="torch.compile the model and the loss")
    r.add_argument("--cuda-graph", action="store_true",
                   help="capture the fixed-shape training step (forward, loss, backward, SGD) in a CUDA graph "
                        "and replay it for every full batch (the partial last batch runs eagerly); one process, "
                        "no float16 scaler. Without CUDA the same replay-safe step runs uncaptured")
    r.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (torch.use_deterministic_algorithms; no cuDNN autotuning): "
                        "a resumed run then ends bitwise equal to an uninterrupted one on the CPU")
    r.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across processes (torchrun on CUDA only)")
    r.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN (or from its checkpoint file) with its saved config, "
                        "from the step it stopped at; only " + ", ".join("--" + k.replace("_", "-")
                                                                         for k in RESUME_OVERRIDABLE)
                        + " may change")
    r.add_argument("--max-steps", type=int, default=0,
                   help="stop (with a checkpoint, as on SIGTERM) after this many optimiser steps in all; 0: no limit")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--output", default=None, help="run folder (default: runs/<dataset>-<model>-<loss>-<time>)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run files (checkpoints, metrics, results) that --output holds; without it such "
                        "a folder is refused")
    r.add_argument("--log-interval", type=int, default=20, help="steps between progress lines")
    r.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="no TensorBoard event files in the run folder")
    r.add_argument("--eval-subset", type=int, default=0,
                   help="evaluate each epoch on a fixed subset of this many test images (the same for every run), "
                        "and the whole test split once at the end; 0: the whole split every time")
    r.add_argument("--eval-every", type=int, default=1, help="epochs between test evaluations (the last always runs)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _config_value(action: argparse.Action, key: str, value, path: Path):
    """``value`` of config-file key ``key`` checked and converted as the command line would."""
    where = f"{path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        # a store_false option (--no-tensorboard) is keyed by its dest: tensorboard: false
        return value
    if value is None:
        if action.default is not None:  # None is "not given" only for the options whose default it is
            raise ValueError(f"{where} must not be null (leave the key out for its default, {action.default!r})")
        return None
    if action.dest == "loss_args":
        try:
            return loss_arg_pairs(value)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: {e}") from None
        except TypeError as e:
            raise ValueError(f"{where} must be {e}") from None
    if isinstance(value, (list, dict, bool)):
        raise ValueError(f"{where} must be a single value, got {value!r}")
    if action.type is int and isinstance(value, float):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def load_config_file(parser: argparse.ArgumentParser, path: str | Path) -> dict:
    """The defaults a YAML config file sets: ``{dest: value}``, checked against ``parser``
    (keys in dest or flag spelling: ``batch_size`` or ``batch-size``).  Loading never runs
    code from the file (``yaml.safe_load``).

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
    actions = _actions(parser)
    out = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest in ("config", "resume") or dest not in actions:
            known = ", ".join(sorted(k for k in actions if k not in ("config", "resume")))
            raise ValueError(f"--config {path}: unknown key {key!r}; valid keys: {known}")
        out[dest] = _config_value(actions[dest], str(key), value, path)
    return out


def explicit_options(argv) -> set[str]:
    """The dests given on the command line ``argv`` (not from defaults or a config file)."""
    parser = build_parser()
    for a in parser._actions:
        a.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def parse_config(argv=None) -> tuple[dict, set[str]]:
    """The trainer's command line ``argv`` (with ``--config``'s file underneath it), resolved
    by :func:`resolve`; also the set of options given explicitly on the command line.
    With ``--resume`` the config is not resolved yet (the run's saved config is the base; see
    :func:`resume_config`).

    Raises:
        ValueError: as :func:`load_config_file` and :func:`resolve`; argparse errors exit.
    """
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        if known.resume is not None:
            raise ValueError("--config and --resume conflict: a resumed run keeps its saved config")
        parser.set_defaults(**load_config_file(parser, known.config))
    args = parser.parse_args(argv)
    explicit = explicit_options(argv)
    if args.resume is not None:
        return dict(vars(args)), explicit
    return resolve(args), explicit


def resume_config(saved: dict, given: dict, explicit: set[str]) -> dict:
    """The config of a resumed run: the run's ``saved`` config, with the options of
    :data:`RESUME_OVERRIDABLE` that were given explicitly on the command line (``given``,
    the parsed command line) put over it.

    Raises:
        ValueError: another option given explicitly with a value that differs from the saved
            one, or an overriding value out of range.
    """
    cfg = dict(saved)
    for dest, action in _actions(build_parser()).items():  # options newer than the run: their defaults
        cfg.setdefault(dest, action.default)
    for key in sorted(explicit - {"resume", "config"}):
        if key in RESUME_OVERRIDABLE:
            cfg[key] = given[key]
        elif key == "output":
            continue  # checked against the checkpoint's folder by the trainer
        elif key == "loss_args" and loss_args_dict(given[key]) == (saved.get(key) or {}):
            continue
        elif given[key] != saved.get(key):
            raise ValueError(f"--{key.replace('_', '-')} {given[key]} conflicts with the resumed run's saved "
                             f"value {saved.get(key)!r}: a resumed run keeps its config (only "
                             + ", ".join("--" + k.replace("_", "-") for k in RESUME_OVERRIDABLE) + " may change)")
    check_minimums(cfg, explicit & set(RESUME_OVERRIDABLE))
    cfg["resume"] = given["resume"]
    return cfg


def check_minimums(cfg: dict, keys) -> None:
    """Raises ValueError for an integer option of ``keys`` below its :data:`MINIMUMS` entry
    (None, an option's "not given", passes)."""
    for key in keys:
        if key in MINIMUMS and cfg.get(key) is not None and cfg[key] < MINIMUMS[key]:
            raise ValueError(f"--{key.replace('_', '-')} must be >= {MINIMUMS[key]}, got {cfg[key]}")


def check_finite(cfg: dict) -> None:
    """Raises ValueError for a float option of ``cfg`` that is NaN or infinite (``lr <= 0`` is
    false for NaN, so the range checks alone would let it through)."""
    for dest, action in _actions(build_parser()).items():
        value = cfg.get(dest)
        if action.type is float and value is not None and not math.isfinite(value):
            raise ValueError(f"--{dest.replace('_', '-')} must be a finite number, got {value}")


def resolve(args: argparse.Namespace) -> dict:
    """Fills preset values and checks the combination; returns a plain dict (saved with the run)."""
    cfg = dict(vars(args))
    stem_given = cfg["stem"] is not None
    recipe = RECIPES[cfg["recipe"]] if cfg.get("recipe") else PRESETS[cfg["dataset"]]
    for key, value in {**RECIPE_BASE, **recipe}.items():
        if cfg.get(key) is None:
            cfg[key] = value
    if not stem_given and cfg["model"] != recipe["model"]:
        cfg["stem"] = "auto"
    if cfg["dataset"] not in ("default",) and cfg["data_root"] is None:
        raise ValueError(f"--dataset {cfg['dataset']} needs --data-root: the folder that holds its native files")
    check_minimums(cfg, MINIMUMS)
    if cfg["stem"] != "auto" and cfg["model"] not in RESNETS:
        raise ValueError(f"--stem applies to {' and '.join(RESNETS)} only, not to --model {cfg['model']}")
    check_finite(cfg)
    if cfg["lr"] <= 0:
        raise ValueError(f"--lr must be positive, got {cfg['lr']}")
    if cfg["pretrained_lr_scale"] < 0:
        raise ValueError(f"--pretrained-lr-scale must be >= 0, got {cfg['pretrained_lr_scale']}")
    if cfg["pretrained"] not in ("none", "torchvision"):
        if not Path(cfg["pretrained"]).is_file():
            raise ValueError(f"--pretrained {cfg['pretrained']}: no such file (expected none, torchvision or the "
                             "path of a .pth state dict in torchvision's layout)")
        cfg["pretrained"] = str(Path(cfg["pretrained"]).resolve())
    if not SEED_RANGE[0] <= cfg["seed"] <= SEED_RANGE[1]:
        raise ValueError(f"--seed must be in [-2**63, 2**64 - 1] (torch.manual_seed's range), got {cfg['seed']}")
    if cfg["amp_dtype"] is not None and not cfg["amp"]:
        raise ValueError("--amp-dtype needs --amp")
    cfg["amp_dtype"] = (cfg["amp_dtype"] or "bfloat16") if cfg["amp"] else None
    resolve_loss_weights(cfg)
    cfg["loss_args"] = loss_args_dict(cfg["loss_args"])
    if cfg["loss_args"]:
        if cfg["loss"] not in BASELINES:
            raise ValueError(f"--loss-arg applies to the baseline losses ({', '.join(BASELINES)}), not to "
                             f"--loss {cfg['loss']} (its weights are --mu, --lam, --div-form, --beta, --cnum-high)")
        valid = baseline_options(cfg["loss"])
        unknown = sorted(set(cfg["loss_args"]) - set(valid))
        if unknown:
            raise ValueError(f"--loss-arg {', '.join(unknown)}: not an option of --loss {cfg['loss']}; its options: "
                             + ", ".join(f"{k} (default {v})" for k, v in valid.items()))
    return cfg


def resolve_loss_weights(cfg: dict) -> None:
    """The released code's β of the loss where ``--beta`` is not given; ``--beta-middle`` and
    ``--lam-middle`` only for the losses with a middle level."""
    if cfg.get("beta") is None:
        cfg["beta"] = RELEASED_BETA.get(cfg["loss"])
    for key in ("beta_middle", "lam_middle"):
        if cfg.get(key) is not None and not loss_spec(cfg["loss"]).has_middle:
            raise ValueError(f"--{key.replace('_', '-')} weights the middle level of tdsa and tdsa-noattn; "
                             f"--loss {cfg['loss']} has none")


def model_widths(loss: str, xi: int, cnum_high: int) -> tuple[int | None, int | None]:
    """(middle_cnum, high_cnum) of the backbone for a loss: grouped levels only where the loss reads them."""
    return loss_spec(loss).widths(xi, cnum_high)


def small_input(cfg: dict) -> bool | None:
    """The ``small_input`` argument of ``build_model`` for ``--stem`` (None: the model's own default)."""
    return {"auto": None, "standard": False, "small": True}[cfg.get("stem", "auto")]
