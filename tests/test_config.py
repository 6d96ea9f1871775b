"""The typed configuration: the parser, the config files, the saved record, the resume rules
and the experiment runner's argv all derive from :class:`tdsa_fast.config.TrainConfig`."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tdsa_fast import config as C
from tdsa_fast.config import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "tdsa_fast"

# one value per option that differs from its default and passes resolve (file paths aside)
NON_DEFAULT = dict(dataset="cub", data_root="/data/cub", img_size=96, augment="rrc", loader="torch",
                   memory_cache="/tmp/cache", memory_size=200, torch_decode="device", workers=3,
                   skip_bad_images=True, model="resnet50", pretrained="none", xi=2, stem="small", loss="tdsa-noattn",
                   upsample="bilinear", mu=2.5, lam=3.0, div_form="paper", beta=7.0, beta_middle=2.0, lam_middle=0.5,
                   cnum_high=4, loss_args=None, recipe="paper", epochs=7, batch_size=12, lr=0.05,
                   pretrained_lr_scale=0.5, schedule="cosine", momentum=0.8, weight_decay=1e-3, device="cpu",
                   amp=True, amp_dtype="bfloat16", channels_last=True, compile=True, cuda_graph=True,
                   deterministic=True, sync_bn=True, max_steps=9, seed=123, output="/tmp/run", overwrite=True,
                   log_interval=5, tensorboard=False, eval_subset=50, eval_every=2, threads=1)


def test_every_option_is_one_field_and_one_argument():
    parser = C.build_parser()
    help_text = parser.format_help()
    for name, f in C.FIELDS.items():
        assert C._flag(name) in help_text, name
        assert f.metadata["option"].help, f"{name} has no help text"
    assert set(vars(parser.parse_args([]))) == set(C.FIELDS)
    assert set(C.OPTION_NAMES) == set(C.FIELDS) - {"config", "resume"}
    assert set(NON_DEFAULT) == set(C.OPTION_NAMES), "NON_DEFAULT must cover every option"


def test_the_resume_rules_come_from_the_fields():
    assert set(C.RESUME_OVERRIDABLE) == {"device", "workers", "threads", "log_interval", "loader", "torch_decode",
                                         "tensorboard", "max_steps", "memory_cache", "cuda_graph"}
    help_text = " ".join(C.build_parser().format_help().split())
    assert help_text.count("may change on --resume") == len(C.RESUME_OVERRIDABLE)


def test_argv_of_the_options_parses_back_to_the_same_config():
    argv = C.trainer_argv(NON_DEFAULT)
    parsed = TrainConfig(**vars(C.build_parser().parse_args(argv)))
    assert parsed.options() == NON_DEFAULT
    assert C.trainer_argv({}) == [] and C.trainer_argv(dict(amp=False, tensorboard=True)) == []
    args = C.trainer_argv(dict(loss="arcface", loss_args={"margin": 0.3, "scale": None}))
    assert args == ["--loss", "arcface", "--loss-arg", "margin=0.3", "--loss-arg", "scale=null"]


def test_a_mapping_is_checked_as_the_command_line_checks_it():
    assert C.options_from_mapping({"batch-size": 8, "--no-tensorboard": False, "lr": 1}, "m") == \
        dict(batch_size=8, tensorboard=False, lr=1.0)
    for mapping, message in [({"epoch": 3}, "unknown key 'epoch'; valid keys: "),
                             ({"epochs": 2.5}, "m: epochs must be an integer"),
                             ({"loss": "tdsaa"}, "m: loss must be one of ce, "),
                             ({"amp": "yes"}, "m: amp must be true or false"),
                             ({"xi": None}, "must not be null"),
                             ({"resume": "RUN"}, "unknown key 'resume'"),
                             ({"lr": 0.1, "--lr": 0.2}, "given twice")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            C.options_from_mapping(mapping, "m")
    with pytest.raises(ValueError, match="--epochs must be >= 1, got 0"):
        C.config_from_options({"epochs": 0}, "m")
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        C.config_from_options({"lr": float("nan")}, "m")


def test_the_saved_record_round_trips_and_refuses_unknown_keys():
    cfg = C.resolve({"loss": "mc", "epochs": 3})
    facts = C.RunFacts(num_classes=5, class_names=list("abcde"), device_used="cpu", loader_used="torch",
                       world_size=1, pretrained_loaded=None)
    record = C.saved_record(cfg, facts)
    assert set(record) == set(C.OPTION_NAMES) | set(C.FACT_NAMES)
    assert C.saved_run(record) == (cfg, facts)
    older = {k: v for k, v in record.items() if k not in ("cuda_graph", "pretrained_loaded")}
    assert C.saved_run(older) == (cfg, facts)  # options newer than the run: their defaults
    with pytest.raises(ValueError, match="RUN/config.json has keys this version of tdsa_fast does not know: "
                                         "colour"):
        C.saved_run(dict(record, colour="red"), "RUN/config.json")


def test_the_config_is_frozen_and_typed():
    cfg = C.resolve({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert (cfg.model, cfg.epochs, cfg.img_size, cfg.beta) == ("resnet18", 20, 64, 15.0)
    assert C.file_view(cfg) == {k: v for k, v in cfg.options().items() if k not in ("output", "overwrite")}


def test_no_module_reads_a_config_by_string_key():
    """A config is read by attribute (``cfg.lr``), never as ``cfg["lr"]``: a misspelt name fails
    where it is written, and the fields are the one list of options."""
    found = [f"{path.relative_to(PACKAGE)}:{n}" for path in PACKAGE.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bcfg(\.get\(|\[)", line)]
    assert found == []
