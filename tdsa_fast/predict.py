"""``python -m tdsa_fast.predict --checkpoint RUN/best.pt INPUT... [--top-k 5] [--out FILE.csv|.json]``:
classify new images with a trained run.

INPUT: image files, folders (searched recursively for ``.jpg .jpeg .png .bmp .gif .tif
.tiff .webp``) or ``.csv`` files whose first column holds image paths (a header row
``path`` is skipped; relative paths are taken from the CSV's folder). Each image gets the
run's test transform (bilinear resize to the training size, ``Normalize(0.5, 0.5)``), in
batches of ``--batch-size`` on ``--device``; ``--tta flip`` averages the probabilities
with those of the mirrored image. The output lists, per image, the ``--top-k`` class names
(the dataset's own, saved in the checkpoint) and their probabilities; an unreadable image
is a row with its error, and the other images of its batch are still classified.
Exit status: 0 when every image was classified, 1 when some were unreadable (the others'
predictions are printed and written all the same), 2 when the command line or the
checkpoint is refused.

Python: ``Predictor.from_checkpoint(path)`` loads once; ``predictor(images)`` takes PIL
images, image tensors or file paths.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from tdsa_fast._checks import int_at_least

from tdsa_fast.data.augment import test_image
from tdsa_fast.data.decode import BadImageError, load_rgb, to_rgb
from tdsa_fast.distributed import pick_device
from tdsa_fast.inference import MEAN, STD, TTA_MODES, ModelInfo, load_inference, read_class_names, tta_probabilities

__all__ = ["IMAGE_SUFFIXES", "Prediction", "Predictor", "collect_inputs", "main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class Prediction(NamedTuple):
    """The ``k`` most probable classes of one image, most probable first."""

    labels: List[str]
    indices: List[int]
    probabilities: List[float]


class Predictor:
    """A trained network with its test transform, loaded once.

    ``predictor(images, top_k=5) -> list[Prediction]`` and ``predictor.probabilities(images)
    -> Tensor [N, S]`` (float32, on the CPU) take a list (or one) of: ``PIL.Image`` (any mode;
    converted to RGB), file paths, or image tensors ``[3, H, W]`` -- ``uint8`` in ``[0, 255]``
    or floating in ``[0, 1]`` -- and resize each to the training size. A floating tensor
    ``[B, 3, s, s]`` is taken as an already normalised batch (the network's input).
    """

    def __init__(self, network: torch.nn.Module, info: ModelInfo, *, device="cpu", batch_size: int = 32,
                 tta: str = "none"):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.network, self.info = network.eval(), info
        self.device = torch.device(device)
        self.batch_size = int_at_least("batch_size", batch_size)
        self.tta = tta
        self.class_names = list(info.class_names)
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path, *, device="auto", batch_size: int = 32, tta: str = "none",
                        class_names: Optional[Sequence[str]] = None) -> "Predictor":
        """Loads ``path`` (a checkpoint or a run folder: its ``best.pt``) onto ``device``
        (``auto``: CUDA when available)."""
        device = pick_device(device) if isinstance(device, str) else torch.device(device)
        network, info, _ = load_inference(path, device=device, class_names=class_names)
        return cls(network, info, device=device, batch_size=batch_size, tta=tta)

    def preprocess(self, image) -> Tensor:
        """One image (PIL, path or ``[3, H, W]`` tensor) -> the network's input ``[3, s, s]``."""
        if isinstance(image, (str, Path)):
            image = load_rgb(image)
        if isinstance(image, Image.Image):
            return test_image(to_rgb(image), self.info.img_size)[1]
        if isinstance(image, Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"an image tensor must be [3, H, W], got {tuple(image.shape)}")
            x = image.float() / 255 if image.dtype == torch.uint8 else image.float()
            s = self.info.img_size
            x = torch.nn.functional.interpolate(x[None], size=(s, s), mode="bilinear", antialias=True,
                                                align_corners=False)[0]
            return (x - self._mean) / self._std
        raise ValueError(f"images must be PIL images, paths or tensors, got {type(image).__name__}")

    def _batch(self, images) -> Tensor:
        if isinstance(images, Tensor) and images.dim() == 4:
            s = self.info.img_size
            if images.shape[1:] != (3, s, s) or not images.dtype.is_floating_point:
                raise ValueError(f"a batch tensor must be floating [B, 3, {s}, {s}] (normalised), "
                                 f"got {images.dtype} {tuple(images.shape)}")
            return images
        if isinstance(images, (Image.Image, Tensor, str, Path)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images is empty")
        return torch.stack([self.preprocess(im) for im in images])

    @torch.no_grad()
    def probabilities(self, images) -> Tensor:
        """Class probabilities ``[N, S]`` (float32, CPU), in batches of ``batch_size``."""
        x = self._batch(images)
        parts = [tta_probabilities(self.network, x[i:i + self.batch_size].to(self.device), self.tta).cpu()
                 for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts)

    def top_k(self, probs: Tensor, k: int) -> List[Prediction]:
        """The ``k`` best classes of each row of ``probs`` ``[N, S]``."""
        k = min(int_at_least("top_k", k), probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [Prediction([self.class_names[i] for i in idx], idx, [float(v) for v in vals])
                for idx, vals in zip(indices.tolist(), values.tolist())]

    def __call__(self, images, top_k: int = 5) -> List[Prediction]:
        return self.top_k(self.probabilities(images), top_k)


# ---------------------------------------------------------------------------
# the command


def _csv_paths(path: Path) -> list[Path]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"INPUT {path}: cannot read the CSV: {e}") from None
    if rows and rows[0][0].strip().lower() in ("path", "image", "file", "filename"):
        rows = rows[1:]
    return [p if p.is_absolute() else path.parent / p for p in (Path(r[0].strip()) for r in rows)]


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """The image paths of the INPUT arguments, in order (folders sorted, recursively).

    Raises ValueError when an input does not exist or nothing is found."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix.lower() == ".csv" and p.is_file():
            paths += _csv_paths(p)
        elif p.is_file() or p.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(p)  # a listed image that is missing becomes an error row
        else:
            raise ValueError(f"INPUT {item}: no such file or folder")
    if not paths:
        raise ValueError(f"no images found in {', '.join(inputs)} (searched for {' '.join(IMAGE_SUFFIXES)})")
    return paths


def predict_files(predictor: Predictor, paths: Sequence[Path], top_k: int) -> list[dict]:
    """One row per path: ``{"path", "predictions": [{"class", "index", "probability"}], "error"}``;
    an unreadable image has an ``error`` and no predictions."""
    rows = []
    for start in range(0, len(paths), predictor.batch_size):
        chunk = paths[start:start + predictor.batch_size]
        images, errors = [], {}
        for i, path in enumerate(chunk):
            try:
                images.append(predictor.preprocess(load_rgb(path)))
            except BadImageError as e:
                errors[i] = str(e)
        preds = iter(predictor.top_k(predictor.probabilities(torch.stack(images)), top_k) if images else [])
        for i, path in enumerate(chunk):
            if i in errors:
                rows.append(dict(path=str(path), predictions=[], error=errors[i]))
                continue
            p = next(preds)
            rows.append(dict(path=str(path), error="", predictions=[
                dict(index=j, probability=v, **{"class": name})
                for name, j, v in zip(p.labels, p.indices, p.probabilities)]))
    return rows


def write_rows(rows: list[dict], out: Path, top_k: int) -> None:
    """``.json``: the rows as a list; ``.csv``: path, class_1, probability_1, ..., error."""
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2))
        return
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [c for r in range(1, top_k + 1) for c in (f"class_{r}", f"probability_{r}")]
                   + ["error"])
        for row in rows:
            cells = [c for p in row["predictions"] for c in (p["class"], f"{p['probability']:.6f}")]
            w.writerow([row["path"]] + cells + [""] * (2 * top_k - len(cells)) + [row["error"]])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or CSVs of paths")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of tdsa_fast.train, or its run folder (best.pt)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image")
    p.add_argument("--out", default=None, metavar="FILE.csv|FILE.json", help="also write the predictions here")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="flip: average with the mirrored image")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="class names, one per line in label order (for checkpoints saved without them)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        for name in ("top_k", "batch_size"):
            int_at_least("--" + name.replace("_", "-"), getattr(a, name))
        if a.out is not None and Path(a.out).suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"--out {a.out}: the file must end in .csv or .json")
        paths = collect_inputs(a.inputs)
        names = read_class_names(a.class_names) if a.class_names else None
        predictor = Predictor.from_checkpoint(a.checkpoint, device=a.device, batch_size=a.batch_size, tta=a.tta,
                                              class_names=names)
        rows = predict_files(predictor, paths, a.top_k)
        if a.out is not None:
            write_rows(rows, Path(a.out), a.top_k)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        shown = row["error"] or ", ".join(f"{p['class']} {p['probability']:.4f}" for p in row["predictions"])
        print(f"{row['path']}\t{shown}")
    failed = sum(bool(r["error"]) for r in rows)
    print(f"{len(rows) - failed} images classified" + (f", {failed} unreadable" if failed else "")
          + (f"; written to {a.out}" if a.out else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
