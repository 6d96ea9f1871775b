"""``python -m tdsa_fast.evaluate --checkpoint RUN[/best.pt] [--split test] [--tta flip] [--json]``:
how a trained run does on a split, and where it fails.

Prints top-1 and top-5 accuracy and the mean per-class accuracy, and writes into
``--out-dir`` (default: ``RUN/eval-<split>[-flip]``)

* ``per_class.csv``: class, name, images, accuracy, most_confused_with, confused_images
  (how many of the class's images were predicted as that class);
* ``confusion.csv``: the confusion matrix (rows: true class, columns: predicted), with names;
* ``confusion.png``: the row-normalised matrix, classes ordered so that confused classes sit
  together, the least accurate classes labelled (readable at 200 classes);
* ``metrics.json``: the figures printed.

The model and the dataset are rebuilt from the configuration stored in the checkpoint
(a run folder means its ``best.pt``); ``--data-root`` points at the data when it has
moved. The checkpoint is loaded with ``weights_only=True``. ``--tta flip`` averages the
softmax probabilities of each image and its mirror image.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from tdsa_fast.class_metrics import (ClassReport, ConfusionCounter, plot_confusion, write_confusion_csv,
                                     write_per_class_csv)
from tdsa_fast.data.datasets import load_split
from tdsa_fast.data.decode import BadImageError
from tdsa_fast.data.loading import LOADERS, build_loader
from tdsa_fast.distributed import pick_device
from tdsa_fast.inference import TTA_MODES, checkpoint_file, load_inference, tta_probabilities
from tdsa_fast.runs import dataset_root

OUTPUT_FILES = ("per_class.csv", "confusion.csv", "confusion.png", "metrics.json")


def write_report(report: ClassReport, out_dir: Path, summary: dict, title: str = "", plot: bool = True) -> list[str]:
    """Writes the files of :data:`OUTPUT_FILES` (the PNG only with ``plot``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_per_class_csv(report, out_dir / "per_class.csv")
    write_confusion_csv(report, out_dir / "confusion.csv")
    if plot:
        plot_confusion(report, out_dir / "confusion.png", title=title)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return [str(out_dir / name) for name in OUTPUT_FILES if plot or name != "confusion.png"]


def evaluate_checkpoint(path, *, split: str = "test", data_root=None, batch_size=None, workers=0,
                        device="auto", skip_bad_images=False, loader="auto", tta: str = "none",
                        out_dir=None, write: bool = False) -> dict:
    """Evaluates the checkpoint (or run folder) ``path`` on ``split``; returns dict(accuracy
    (top-1), correct, total, split, top5, mean_class_accuracy, ...); with ``write`` (or an
    ``out_dir``) it also writes :data:`OUTPUT_FILES` (the dict's ``files``)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch-size must be an int >= 1, got {batch_size!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    path = checkpoint_file(path)
    device = pick_device(device)
    network, info, (cfg, facts) = load_inference(path, device=device, require_class_names=False)
    if data_root is not None:
        cfg = cfg.replace(data_root=str(data_root))
    samples = load_split(cfg.dataset, dataset_root(cfg), split)
    if samples.num_classes != facts.num_classes:
        raise ValueError(f"the {split} split has {samples.num_classes} classes but the checkpoint "
                         f"was trained on {facts.num_classes}")
    if not info.class_names:  # a checkpoint from before the class names were saved: the data's own
        info = dataclasses.replace(info, class_names=tuple(samples.class_names))
    counter = ConfusionCounter(facts.num_classes, device=device)
    with build_loader(samples.samples, loader=loader, img_size=cfg.img_size, train=False,
                      batch_size=batch_size or cfg.batch_size, workers=workers, skip_bad=skip_bad_images,
                      device=device) as batches, torch.no_grad():
        for batch in batches:
            n = batch.num_real
            if n:
                counter.update(tta_probabilities(network, batch.images[:n], tta), batch.labels[:n])
    report = counter.report(info.class_names)
    summary = report.summary()
    result = dict(accuracy=summary["top1"], correct=summary["correct"], total=summary["total"], split=split,
                  top5=summary["top5"],
                  mean_class_accuracy=summary["mean_class_accuracy"], classes=summary["classes"], tta=tta,
                  checkpoint=str(path), model=info.model, loss=info.loss, dataset=info.dataset)
    if write or out_dir is not None:
        out_dir = Path(out_dir) if out_dir is not None else path.parent / f"eval-{split}{'-flip' if tta == 'flip' else ''}"
        title = f"{info.dataset} {split}: {info.model} + {info.loss}{', flip TTA' if tta == 'flip' else ''}"
        result["files"] = write_report(report, out_dir, result, title)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by tdsa_fast.train, or its "
                                                       "run folder (its best.pt)")
    p.add_argument("--split", default="test", help="split to evaluate (train, test, or val where the dataset has one)")
    p.add_argument("--data-root", default=None, help="override the data folder stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--loader", default="auto", choices=LOADERS, help="data pipeline (see tdsa_fast.train --help)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="flip: average with the mirrored image")
    p.add_argument("--out-dir", default=None, help="folder of the per-class and confusion files "
                                                   "(default: RUN/eval-<split>[-flip])")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = p.parse_args(argv)
    try:
        r = evaluate_checkpoint(a.checkpoint, split=a.split, data_root=a.data_root, batch_size=a.batch_size,
                                workers=a.workers, device=a.device, skip_bad_images=a.skip_bad_images,
                                loader=a.loader, tta=a.tta, out_dir=a.out_dir, write=True)
    except (ValueError, FileNotFoundError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"top-1 accuracy on {r['split']}: {100 * r['accuracy']:.2f}% ({r['correct']}/{r['total']})"
          f"{' with flip TTA' if a.tta == 'flip' else ''}")
    print(f"top-5 accuracy: {100 * r['top5']:.2f}%; mean per-class accuracy: {100 * r['mean_class_accuracy']:.2f}% "
          f"over {r['classes']} classes")
    print("wrote " + ", ".join(r["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
