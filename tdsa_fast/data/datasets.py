"""Parsers for the fine-grained datasets in their native on-disk layouts, with the
official splits (docs/method.md, "Datasets").

Every parser turns ``root`` (the folder that directly holds the dataset's native files)
and a split name into a :class:`SampleList`: ``(absolute image path, label)`` pairs with
labels in ``0..num_classes-1``, the class count and the class names.  Nothing here opens
an image: whether each listed file exists and decodes is the loader's job
(:mod:`tdsa_fast.data.decode`).  Nothing is silently dropped either: every sample named by
the split file is returned, and any inconsistency (an image id missing from one of the
annotation files, a label out of range, a duplicate id, a malformed line) raises.

Errors:

* a missing split or annotation file -> ``FileNotFoundError`` whose message names the
  full expected path and what that file should contain;
* a malformed file -> ``ValueError`` naming the file and the line (or record);
* a label outside ``[0, num_classes)`` -> ``ValueError`` (checked here, because the loss
  does not check labels);
* an unknown dataset or split name -> ``ValueError`` listing the valid ones.

Sample order (stable, documented per dataset):

* ``cub`` / ``default``: ascending image id (``images.txt`` ids).
* ``aircraft``: the order of the lines in ``data/images_variant_<split>.txt``.
* ``cars``: the order of the ``annotations`` struct array in the ``.mat`` file.
* ``flowers``: ascending image id (``train`` = ``trnid`` ∪ ``valid``, merged and sorted).
* ``folder``: by class index, then by the file's path relative to its class folder.
* ``csv``: the order of the rows in the file.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "DATASETS",
    "SPLITS",
    "IMG_EXTENSIONS",
    "SampleList",
    "load_split",
]

DATASETS = ("default", "cub", "aircraft", "cars", "flowers", "folder", "csv")

#: Valid split names per dataset.  "train" is always the paper's training split:
#: CUB train, Aircraft trainval, Cars train, Flowers-102 train+val (trnid ∪ valid),
#: folder ``root/train``, csv ``root/train.csv``.  The datasets with an official separate
#: validation split also accept "val" and "train_only" (the train split without val).
SPLITS: dict[str, tuple[str, ...]] = {
    "default": ("train", "test"),
    "cub": ("train", "test"),
    "aircraft": ("train", "test", "val", "train_only"),
    "cars": ("train", "test"),
    "flowers": ("train", "test", "val", "train_only"),
    "folder": ("train", "test"),
    "csv": ("train", "test"),
}

#: File extensions (lower case) that the ``folder`` dataset treats as images.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class SampleList:
    """One split of a dataset.

    Attributes:
        samples: ``[(absolute image path as str, label int in 0..num_classes-1), ...]``
            in the dataset's documented order (see the module docstring).
        num_classes: the number of classes of the dataset (the same for every split of
            it, even if a split lacks some classes).
        class_names: ``len == num_classes``; ``class_names[label]`` names the class.

    Construction validates the invariants and raises ``ValueError`` on a violation.
    """

    samples: list[tuple[str, int]] = field(repr=False)
    num_classes: int
    class_names: list[str] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"SampleList: num_classes must be a positive int, got {self.num_classes!r}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"SampleList: {len(self.class_names)} class names for num_classes={self.num_classes}"
            )
        for i, item in enumerate(self.samples):
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError(f"SampleList: sample {i} is not a (path, label) tuple: {item!r}")
            path, label = item
            if not isinstance(path, str) or not isinstance(label, int) or isinstance(label, bool):
                raise ValueError(f"SampleList: sample {i} must be (str, int), got {item!r}")
            if not 0 <= label < self.num_classes:
                raise ValueError(
                    f"SampleList: sample {i} ({path}) has label {label}, "
                    f"outside [0, {self.num_classes})"
                )

    def __len__(self) -> int:
        return len(self.samples)


# ---------------------------------------------------------------------------------------
# Shared helpers


def _missing(dataset: str, path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{dataset}: expected file not found: {path} (it should contain {what})")


def _require_file(dataset: str, path: Path, what: str) -> Path:
    if not path.is_file():
        raise _missing(dataset, path, what)
    return path


def _read_text_lines(dataset: str, path: Path, what: str) -> list[tuple[int, str]]:
    """``[(1-based line number, line stripped of surrounding whitespace)]`` for the
    non-blank lines of a UTF-8 text file (a BOM is tolerated)."""
    _require_file(dataset, path, what)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{dataset}: {path} is not UTF-8 text ({e})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _malformed(dataset: str, path: Path, lineno: int, expected: str, line: str) -> ValueError:
    return ValueError(f"{dataset}: {path}, line {lineno}: expected {expected}, got {line!r}")


_INT_RE = re.compile(r"[+-]?\d+")


def _parse_int(token: str) -> int | None:
    return int(token) if _INT_RE.fullmatch(token) else None


def _check_split(dataset: str, split: str) -> None:
    valid = SPLITS[dataset]
    if split not in valid:
        raise ValueError(
            f"unknown split {split!r} for dataset {dataset!r}; valid splits: {', '.join(valid)}"
        )


def _root_dir(dataset: str, root, contents: str) -> Path:
    if root is None:
        raise ValueError(f"{dataset}: a data root is required (the folder holding {contents})")
    p = Path(os.path.expanduser(os.fspath(root))).absolute()
    if not p.is_dir():
        raise FileNotFoundError(
            f"{dataset}: data root {p} does not exist or is not a directory "
            f"(it should directly hold {contents})"
        )
    return p


# ---------------------------------------------------------------------------------------
# CUB-200-2011 (and the built-in synthetic "default" dataset, written in CUB's layout)

_CUB_CONTENTS = "images.txt, image_class_labels.txt, train_test_split.txt, optional classes.txt, images/"


def _cub_id_table(dataset: str, path: Path, what: str, expected: str,
                  value: Callable[[str], object | None]) -> dict[int, tuple[object, int]]:
    """Parse ``<image_id> <value>`` lines into ``{id: (value, lineno)}``."""
    table: dict[int, tuple[object, int]] = {}
    for lineno, line in _read_text_lines(dataset, path, what):
        parts = line.split(maxsplit=1)
        img_id = _parse_int(parts[0])
        val = value(parts[1].strip()) if len(parts) == 2 else None
        if img_id is None or val is None:
            raise _malformed(dataset, path, lineno, expected, line)
        if img_id in table:
            raise ValueError(
                f"{dataset}: {path}, line {lineno}: image id {img_id} already listed on line "
                f"{table[img_id][1]}"
            )
        table[img_id] = (val, lineno)
    if not table:
        raise ValueError(f"{dataset}: {path} lists no images")
    return table


def _load_cub(root, split: str, dataset: str = "cub") -> SampleList:
    root = _root_dir(dataset, root, _CUB_CONTENTS)
    images = _cub_id_table(
        dataset, root / "images.txt", "lines '<image_id> <path relative to images/>'",
        "'<image_id> <relative path>'", lambda s: s or None)
    labels = _cub_id_table(
        dataset, root / "image_class_labels.txt", "lines '<image_id> <class_id, 1-based>'",
        "'<image_id> <class_id>'", _parse_int)
    is_train = _cub_id_table(
        dataset, root / "train_test_split.txt",
        "lines '<image_id> <is_training_image: 1 = train, 0 = test>'",
        "'<image_id> <0|1>'", lambda s: s if s in ("0", "1") else None)

    # Every image id must appear in all three files.
    for other, other_path in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
        missing = sorted(set(images) - set(other))
        extra = sorted(set(other) - set(images))
        if missing:
            raise ValueError(
                f"{dataset}: {root / other_path} has no entry for image id(s) {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''} listed in {root / 'images.txt'}")
        if extra:
            raise ValueError(
                f"{dataset}: {root / other_path} lists image id(s) {extra[:10]}"
                f"{' ...' if len(extra) > 10 else ''} that are not in {root / 'images.txt'}")

    classes_path = root / "classes.txt"
    if classes_path.is_file():
        names_by_id = _cub_id_table(dataset, classes_path, "lines '<class_id> <class name>'",
                                    "'<class_id> <class name>'", lambda s: s or None)
        ids = sorted(names_by_id)
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"{dataset}: {classes_path}: class ids must be 1..{len(ids)} "
                             f"without gaps, got {ids[:10]}{' ...' if len(ids) > 10 else ''}")
        class_names = [str(names_by_id[i][0]) for i in ids]
        num_classes = len(class_names)
    else:
        # No classes.txt: the class count is the largest label over the whole dataset (so
        # both splits agree); a name is the images' common folder, else "class_NNN".
        num_classes = max(int(v) for v, _ in labels.values())
        if num_classes < 1:
            raise ValueError(f"{dataset}: {root / 'image_class_labels.txt'}: no positive class id")
        folders: dict[int, set[str]] = {}
        for img_id, (cls, _) in labels.items():
            rel = str(images[img_id][0]).replace("\\", "/")
            folders.setdefault(int(cls), set()).add(rel.split("/")[0] if "/" in rel else "")
        class_names = []
        for c in range(1, num_classes + 1):
            f = folders.get(c, set())
            class_names.append(next(iter(f)) if len(f) == 1 and "" not in f else f"class_{c:03d}")

    want = "1" if split == "train" else "0"
    samples = []
    for img_id in sorted(images):
        if is_train[img_id][0] != want:
            continue
        cls, lineno = labels[img_id]
        if not 1 <= int(cls) <= num_classes:
            raise ValueError(
                f"{dataset}: {root / 'image_class_labels.txt'}, line {lineno}: class id {cls} "
                f"of image {img_id} is outside 1..{num_classes}")
        samples.append((str(root / "images" / str(images[img_id][0])), int(cls) - 1))
    return SampleList(samples, num_classes, class_names)


# ---------------------------------------------------------------------------------------
# FGVC-Aircraft (variant level, 100 classes)

_AIRCRAFT_FILES = {
    "train": "images_variant_trainval.txt",
    "test": "images_variant_test.txt",
    "val": "images_variant_val.txt",
    "train_only": "images_variant_train.txt",
}


def _load_aircraft(root, split: str) -> SampleList:
    dataset = "aircraft"
    root = _root_dir(dataset, root, "data/ (variants.txt, images_variant_*.txt, images/)")
    data = root / "data"
    variants_path = data / "variants.txt"
    class_names = [line for _, line in
                   _read_text_lines(dataset, variants_path, "one variant name per line (the class order)")]
    if not class_names:
        raise ValueError(f"{dataset}: {variants_path} lists no variants")
    index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        if name in index:
            raise ValueError(f"{dataset}: {variants_path}: variant {name!r} listed twice")
        index[name] = i

    split_path = data / _AIRCRAFT_FILES[split]
    seen: dict[str, int] = {}
    samples = []
    for lineno, line in _read_text_lines(
            dataset, split_path, "lines '<image_id> <variant name>' (the name may contain spaces)"):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise _malformed(dataset, split_path, lineno, "'<image_id> <variant name>'", line)
        img_id, variant = parts[0], parts[1].strip()
        if variant not in index:
            raise ValueError(f"{dataset}: {split_path}, line {lineno}: variant {variant!r} is not "
                             f"in {variants_path}")
        if img_id in seen:
            raise ValueError(f"{dataset}: {split_path}, line {lineno}: image {img_id} already "
                             f"listed on line {seen[img_id]}")
        seen[img_id] = lineno
        samples.append((str(data / "images" / f"{img_id}.jpg"), index[variant]))
    if not samples:
        raise ValueError(f"{dataset}: {split_path} lists no images")
    return SampleList(samples, len(class_names), class_names)


# ---------------------------------------------------------------------------------------
# Stanford Cars (devkit .mat annotations)


def _loadmat(dataset: str, path: Path, what: str) -> dict:
    from scipy.io import loadmat

    _require_file(dataset, path, what)
    try:
        return loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as e:  # scipy raises a variety of types for unreadable files
        raise ValueError(f"{dataset}: cannot read {path} as a MATLAB (v5/v7) file: "
                         f"{type(e).__name__}: {e}") from None


def _mat_scalar(v):
    """Unwrap a MATLAB value as loadmat returns it (``array([[14]])``, ``array(['a.jpg'])``,
    ``array('a.jpg')``, a plain scalar with ``squeeze_me=True``...) to a Python
    ``int``/``float``/``str``.  Raises ``ValueError`` if it holds more than one value."""
    while True:
        if isinstance(v, np.ndarray):
            if v.dtype.kind in "US":
                if v.size == 0:
                    return ""
                if v.size != 1:
                    # a char matrix stored with chars_as_strings=False
                    return "".join(str(c) for c in v.reshape(-1))
                return str(v.reshape(-1)[0])
            if v.size != 1:
                raise ValueError(f"expected a single value, got an array of shape {v.shape}")
            v = v.reshape(-1)[0]
            continue
        if isinstance(v, (str, np.str_, bytes)):
            return v.decode() if isinstance(v, bytes) else str(v)
        if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, (np.floating, float)):
            return float(v)
        raise ValueError(f"unexpected MATLAB value of type {type(v).__name__}")


def _mat_records(arr, fields: Sequence[str], where: str) -> list[dict]:
    """Rows of a MATLAB struct array as ``[{field: python scalar}]``, whatever loadmat's
    options: a structured ndarray of any shape (``struct_as_record=True``, squeezed or
    not, 0-d for a single struct), or an object array of ``mat_struct``
    (``struct_as_record=False``)."""
    arr = np.asarray(arr)
    out = []
    if arr.dtype.names is not None:
        missing = [f for f in fields if f not in arr.dtype.names]
        if missing:
            raise ValueError(f"{where}: struct has no field(s) {missing}; it has {list(arr.dtype.names)}")
        for i, rec in enumerate(arr.reshape(-1)):
            try:
                out.append({f: _mat_scalar(rec[f]) for f in fields})
            except ValueError as e:
                raise ValueError(f"{where}, record {i}: {e}") from None
        return out
    if arr.dtype == object:
        for i, item in enumerate(arr.reshape(-1)):
            while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
                item = item.reshape(-1)[0]
            if isinstance(item, np.ndarray) and item.dtype.names is not None:
                out.extend(_mat_records(item, fields, f"{where}, record {i}"))
                continue
            names = getattr(item, "_fieldnames", None)
            if names is None:
                raise ValueError(f"{where}, record {i}: not a struct ({type(item).__name__})")
            missing = [f for f in fields if f not in names]
            if missing:
                raise ValueError(f"{where}, record {i}: struct has no field(s) {missing}")
            try:
                out.append({f: _mat_scalar(getattr(item, f)) for f in fields})
            except ValueError as e:
                raise ValueError(f"{where}, record {i}: {e}") from None
        return out
    raise ValueError(f"{where}: expected a struct array, got dtype {arr.dtype}")


def _mat_key(dataset: str, mat: dict, key: str, path: Path):
    if key not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise ValueError(f"{dataset}: {path} has no variable {key!r} (it has {keys})")
    return mat[key]


_CARS_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _load_cars(root, split: str) -> SampleList:
    dataset = "cars"
    root = _root_dir(dataset, root, "cars_train/, cars_test/, devkit/")
    devkit = root / "devkit"
    meta_path = devkit / "cars_meta.mat"
    meta = _loadmat(dataset, meta_path, "the variable 'class_names' (a 1x196 cell array of strings)")
    names_arr = np.asarray(_mat_key(dataset, meta, "class_names", meta_path))
    try:
        class_names = [str(_mat_scalar(v)).strip() for v in names_arr.reshape(-1)]
    except ValueError as e:
        raise ValueError(f"{dataset}: {meta_path}: class_names: {e}") from None
    if not class_names:
        raise ValueError(f"{dataset}: {meta_path}: class_names is empty")
    num_classes = len(class_names)

    if split == "train":
        annos_path = devkit / "cars_train_annos.mat"
        image_dir = root / "cars_train"
        _require_file(dataset, annos_path, "the struct array 'annotations' with fields "
                      + ", ".join(_CARS_FIELDS) + " (class 1-based)")
    else:
        candidates = [devkit / "cars_test_annos_withlabels.mat", root / "cars_test_annos_withlabels.mat"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            hint = ""
            if (devkit / "cars_test_annos.mat").is_file():
                hint = (f"; {devkit / 'cars_test_annos.mat'} exists but has no class labels, "
                        "the separately released cars_test_annos_withlabels.mat is needed")
            raise FileNotFoundError(
                f"{dataset}: expected file not found: {candidates[0]} or {candidates[1]} (it should "
                f"contain the struct array 'annotations' with fields {', '.join(_CARS_FIELDS)}, "
                f"class 1-based){hint}")
        annos_path = found[0]
        image_dir = root / "cars_test"

    mat = _loadmat(dataset, annos_path, "the struct array 'annotations'")
    records = _mat_records(_mat_key(dataset, mat, "annotations", annos_path), _CARS_FIELDS,
                           f"{dataset}: {annos_path}: annotations")
    if not records:
        raise ValueError(f"{dataset}: {annos_path}: annotations is empty")
    samples = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        fname, cls = rec["fname"], rec["class"]
        if not isinstance(fname, str) or not fname.strip():
            raise ValueError(f"{dataset}: {annos_path}: annotations record {i}: empty or "
                             f"non-string fname {fname!r}")
        fname = fname.strip()
        if isinstance(cls, float) and cls.is_integer():
            cls = int(cls)
        if not isinstance(cls, int) or not 1 <= cls <= num_classes:
            raise ValueError(f"{dataset}: {annos_path}: annotations record {i} ({fname}): class "
                             f"{cls!r} is outside 1..{num_classes}")
        if fname in seen:
            raise ValueError(f"{dataset}: {annos_path}: annotations record {i}: {fname} already "
                             f"listed in record {seen[fname]}")
        seen[fname] = i
        samples.append((str(image_dir / fname), cls - 1))
    return SampleList(samples, num_classes, class_names)


# ---------------------------------------------------------------------------------------
# Oxford Flowers-102


def _flowers_class_names(num_classes: int) -> list[str]:
    if num_classes == 102:
        try:
            from torchvision.datasets import Flowers102

            names = list(getattr(Flowers102, "classes", []))
            if len(names) == 102:
                return names
        except Exception:  # torchvision too old / import failure: fall back to numbers
            pass
    return [f"class_{c:03d}" for c in range(1, num_classes + 1)]


def _int_vector(dataset: str, path: Path, key: str, arr) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "iuf" or (a.ndim == 2 and min(a.shape) > 1) or a.ndim > 2:
        raise ValueError(f"{dataset}: {path}: {key!r} must be a 1xN numeric vector, got "
                         f"shape {a.shape} dtype {a.dtype}")
    a = a.reshape(-1)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            bad = int(np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))[0])
            raise ValueError(f"{dataset}: {path}: {key}[{bad}] = {a[bad]} is not an integer")
    return a.astype(np.int64)


def _load_flowers(root, split: str) -> SampleList:
    dataset = "flowers"
    root = _root_dir(dataset, root, "jpg/, imagelabels.mat, setid.mat")
    labels_path = root / "imagelabels.mat"
    setid_path = root / "setid.mat"
    lm = _loadmat(dataset, labels_path, "the variable 'labels' (1xN, classes 1..102)")
    labels = _int_vector(dataset, labels_path, "labels", _mat_key(dataset, lm, "labels", labels_path))
    if labels.size == 0:
        raise ValueError(f"{dataset}: {labels_path}: 'labels' is empty")
    if labels.min() < 1:
        bad = int(np.argmin(labels))
        raise ValueError(f"{dataset}: {labels_path}: labels[{bad}] (image {bad + 1}) = "
                         f"{labels[bad]}; labels must be >= 1")
    # The class count comes from the labels of all images, so every split agrees (102 on
    # the real dataset).
    num_classes = int(labels.max())

    sm = _loadmat(dataset, setid_path, "the variables 'trnid', 'valid', 'tstid' (1-based image ids)")
    sets = {}
    for key in ("trnid", "valid", "tstid"):
        ids = _int_vector(dataset, setid_path, key, _mat_key(dataset, sm, key, setid_path))
        out = ids[(ids < 1) | (ids > labels.size)]
        if out.size:
            raise ValueError(f"{dataset}: {setid_path}: {key} holds image id {int(out[0])}, outside "
                             f"1..{labels.size} (the images labelled in {labels_path})")
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"{dataset}: {setid_path}: {key} lists image id "
                             f"{int(uniq[counts > 1][0])} more than once")
        sets[key] = ids
    for a, b in (("trnid", "valid"), ("trnid", "tstid"), ("valid", "tstid")):
        both = np.intersect1d(sets[a], sets[b])
        if both.size:
            raise ValueError(f"{dataset}: {setid_path}: image id {int(both[0])} is in both {a} and {b}")

    keys = {"train": ("trnid", "valid"), "train_only": ("trnid",), "val": ("valid",),
            "test": ("tstid",)}[split]
    ids = np.sort(np.concatenate([sets[k] for k in keys]))
    jpg = root / "jpg"
    samples = [(str(jpg / f"image_{int(i):05d}.jpg"), int(labels[i - 1]) - 1) for i in ids]
    return SampleList(samples, num_classes, _flowers_class_names(num_classes))


# ---------------------------------------------------------------------------------------
# ImageFolder: root/train/<class>/..., root/test/<class>/...


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _scan_class_dir(d: Path) -> list[str]:
    """Image files under ``d`` (recursively), sorted by path relative to ``d``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for n in filenames:
            if not n.startswith(".") and _is_image(n):
                found.append(os.path.relpath(os.path.join(dirpath, n), d))
    return sorted(found, key=lambda r: r.replace(os.sep, "/"))


def _class_dirs(dataset: str, split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{dataset}: expected directory not found: {split_dir} (it should "
                                "contain one sub-folder of images per class)")
    loose = sorted(p.name for p in split_dir.iterdir() if p.is_file() and _is_image(p.name))
    if loose:
        raise ValueError(f"{dataset}: {split_dir} holds image file(s) outside any class folder, "
                         f"e.g. {loose[0]}; put every image in {split_dir}/<class>/")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_folder(root, split: str) -> SampleList:
    dataset = "folder"
    root = _root_dir(dataset, root, "train/<class>/ and test/<class>/")
    class_names = _class_dirs(dataset, root / "train")
    if not class_names:
        raise ValueError(f"{dataset}: {root / 'train'} has no class sub-folders")
    index = {n: i for i, n in enumerate(class_names)}
    split_dir = root / split
    names = class_names if split == "train" else _class_dirs(dataset, split_dir)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"{dataset}: {split_dir} has class folder(s) {unknown} that are not "
                         f"classes of {root / 'train'} ({class_names})")
    samples = []
    for name in sorted(names, key=index.__getitem__):
        files = _scan_class_dir(split_dir / name)
        if not files and split == "train":
            raise ValueError(f"{dataset}: class folder {split_dir / name} has no image files "
                             f"(extensions {', '.join(IMG_EXTENSIONS)})")
        samples.extend((str(split_dir / name / f), index[name]) for f in files)
    if not samples:
        raise ValueError(f"{dataset}: {split_dir} holds no image files")
    return SampleList(samples, len(class_names), class_names)


# ---------------------------------------------------------------------------------------
# CSV: root/train.csv and root/test.csv with rows "path,label"

_CSV_PATH_HEADERS = {"path", "filepath", "file_path", "file", "filename", "fname", "image",
                     "image_path", "img", "img_path"}
_CSV_LABEL_HEADERS = {"label", "labels", "class", "class_name", "classname", "class_id",
                      "target", "category", "y"}


def _read_csv_rows(dataset: str, path: Path) -> list[tuple[int, str, str]]:
    """``[(line number, path cell, label cell)]``.  A first row whose cells are both
    column names (e.g. ``path,label``; see ``_CSV_*_HEADERS``) is a header and skipped."""
    _require_file(dataset, path, "rows 'path,label' (optional header row 'path,label'; path "
                  "relative to the data root or absolute; label an int >= 0 or a class name)")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise _malformed(dataset, path, lineno, "2 columns 'path,label'", ",".join(row))
                p, lab = row[0].strip(), row[1].strip()
                if not rows and p.lower() in _CSV_PATH_HEADERS and lab.lower() in _CSV_LABEL_HEADERS:
                    rows.append((lineno, None, None))  # header marker, removed below
                    continue
                if not p or not lab:
                    raise _malformed(dataset, path, lineno, "a non-empty path and label", ",".join(row))
                rows.append((lineno, p, lab))
    except UnicodeDecodeError as e:
        raise ValueError(f"{dataset}: {path} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise ValueError(f"{dataset}: {path}: malformed CSV: {e}") from None
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        raise ValueError(f"{dataset}: {path} has no data rows")
    return rows


def _class_range(class_names: list[str], mode: str) -> str:
    if mode == "int":
        return f"its labels are 0..{len(class_names) - 1}"
    shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
    return f"{len(class_names)} classes: {shown}"


def _load_csv(root, split: str) -> SampleList:
    dataset = "csv"
    root = _root_dir(dataset, root, "train.csv and test.csv")
    # Both files (when present) define the label space, so the two splits agree on
    # num_classes and on the name -> index mapping; the requested one must exist.
    order = [split] + [s for s in ("train", "test") if s != split]
    files: dict[str, tuple[Path, list]] = {}
    for s in order:
        p = root / f"{s}.csv"
        if s == split or p.is_file():
            files[s] = (p, _read_csv_rows(dataset, p))

    mode = None  # "int" or "name", fixed by the first data row read
    mode_where = ""
    for p, rows in files.values():
        for lineno, _, lab in rows:
            kind = "int" if _parse_int(lab) is not None else "name"
            if mode is None:
                mode, mode_where = kind, f"{p}, line {lineno}"
            elif kind != mode:
                raise ValueError(
                    f"{dataset}: {p}, line {lineno}: label {lab!r} is "
                    f"{'an integer' if kind == 'int' else 'a class name'}, but {mode_where} set "
                    f"the labels to be {'integers' if mode == 'int' else 'class names'}; use one kind")
    # the training split, when present, defines the classes: a label found only in another
    # split (a typo such as 1000 for 100) would silently add classes the model never learns
    defining = [files["train"]] if "train" in files else list(files.values())
    if mode == "int":
        for p, rows in files.values():
            for lineno, _, lab in rows:
                if int(lab) < 0:
                    raise ValueError(f"{dataset}: {p}, line {lineno}: label {lab} is negative")
        num_classes = 1 + max(int(lab) for _, rows in defining for _, _, lab in rows)
        class_names = [str(i) for i in range(num_classes)]
        to_label = int
    else:
        class_names = sorted({lab for _, rows in defining for _, _, lab in rows})
        num_classes = len(class_names)
        index = {n: i for i, n in enumerate(class_names)}
        to_label = index.__getitem__
    known = set(class_names)
    for p, rows in files.values():
        for lineno, _, lab in rows:
            if (str(int(lab)) if mode == "int" else lab) not in known:
                raise ValueError(f"{dataset}: {p}, line {lineno}: label {lab!r} is not a class of "
                                 f"{files['train'][0]} ({_class_range(class_names, mode)}); every label must "
                                 "occur in the training split")

    p, rows = files[split]
    samples = []
    for _, cell, lab in rows:
        cell = os.path.expanduser(cell)
        path = cell if os.path.isabs(cell) else os.path.join(root, cell)
        samples.append((os.path.normpath(path), to_label(lab)))
    return SampleList(samples, num_classes, class_names)


# ---------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[[object, str], SampleList]] = {
    "default": lambda root, split: _load_cub(root, split, dataset="default"),
    "cub": _load_cub,
    "aircraft": _load_aircraft,
    "cars": _load_cars,
    "flowers": _load_flowers,
    "folder": _load_folder,
    "csv": _load_csv,
}


def load_split(name: str, root, split: str) -> SampleList:
    """Read one split of a dataset from its native files.

    Args:
        name: one of :data:`DATASETS`.  ``"default"`` is read with the CUB parser (the
            built-in synthetic dataset is written in CUB's layout).
        root: ``str`` or path-like, the folder that directly holds the native files
            (CUB: ``images.txt``...; Aircraft: ``data/``; Cars: ``cars_train/``,
            ``cars_test/``, ``devkit/``; Flowers: ``jpg/``, ``imagelabels.mat``,
            ``setid.mat``; folder: ``train/``, ``test/``; csv: ``train.csv``, ``test.csv``).
        split: one of ``SPLITS[name]``.  ``"train"`` is the paper's training split
            (Aircraft trainval, Flowers train+val); ``"val"`` and ``"train_only"`` exist
            for Aircraft and Flowers.

    Returns:
        A :class:`SampleList` with absolute image paths and labels in ``0..num_classes-1``.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    _check_split(name, split)
    return _LOADERS[name](root, split)
