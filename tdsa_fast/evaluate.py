"""``python -m tdsa_fast.evaluate --checkpoint PATH [--split test]``: top-1 accuracy of a trained run.

The model and the dataset are rebuilt from the configuration stored in the checkpoint;
``--data-root`` points at the data when it has moved. The checkpoint is loaded with
``weights_only=True``.
"""
from __future__ import annotations

import argparse
import sys


from tdsa_fast import checkpoint
from tdsa_fast.data.datasets import load_split
from tdsa_fast.data.decode import BadImageError
from tdsa_fast.data.loading import LOADERS, build_loader
from tdsa_fast.train import build_network, build_objective, dataset_root, evaluate, load_state, pick_device


def evaluate_checkpoint(path, *, split: str = "test", data_root=None, batch_size=None, workers=0,
                        device="auto", skip_bad_images=False, loader="auto") -> dict:
    """Returns dict(accuracy, correct, total, split) for the checkpoint at ``path``."""
    ckpt = checkpoint.load(path)
    cfg = dict(ckpt["config"])
    if data_root is not None:
        cfg["data_root"] = data_root
    device = pick_device(device)
    samples = load_split(cfg["dataset"], dataset_root(cfg), split)
    if samples.num_classes != cfg["num_classes"]:
        raise ValueError(f"the {split} split has {samples.num_classes} classes but the checkpoint "
                         f"was trained on {cfg['num_classes']}")
    model = build_network(cfg, cfg["num_classes"])
    load_state(model, ckpt["model"], "model", cfg)
    model.to(device)
    objective = build_objective(cfg, cfg["num_classes"])  # the scores of a loss with its own class weights
    load_state(objective, ckpt.get("objective", {}), "objective", cfg)
    objective.to(device)
    with build_loader(samples.samples, loader=loader, img_size=cfg["img_size"], train=False,
                      batch_size=batch_size or cfg["batch_size"], workers=workers, skip_bad=skip_bad_images,
                      device=device) as batches:
        correct, total = evaluate(model, batches, device, objective=objective)
    return dict(accuracy=correct / max(total, 1), correct=correct, total=total, split=split)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a last.pt or best.pt written by tdsa_fast.train")
    p.add_argument("--split", default="test", help="split to evaluate (train, test, or val where the dataset has one)")
    p.add_argument("--data-root", default=None, help="override the data folder stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--loader", default="auto", choices=LOADERS, help="data pipeline (see tdsa_fast.train --help)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad-images", action="store_true")
    a = p.parse_args(argv)
    try:
        r = evaluate_checkpoint(a.checkpoint, split=a.split, data_root=a.data_root, batch_size=a.batch_size,
                                workers=a.workers, device=a.device, skip_bad_images=a.skip_bad_images,
                                loader=a.loader)
    except (ValueError, FileNotFoundError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"top-1 accuracy on {r['split']}: {100 * r['accuracy']:.2f}% ({r['correct']}/{r['total']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
