"""The built-in synthetic default dataset (tdsa_fast/data/synthetic.py): CUB layout,
determinism, caching, atomic generation, class codes, renderer locality."""
from __future__ import annotations

import itertools
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tdsa_fast.data import synthetic as syn
from tdsa_fast.data.datasets import load_split
from tdsa_fast.data.synthetic import (SyntheticSpec, class_codes, dataset_dir, default_cache_dir,
                                      ensure_default_dataset, render_sample, sample_rng)

SMALL = SyntheticSpec(num_classes=4, train_per_class=3, test_per_class=2, image_size=48, seed=0)
N_SMALL = 4 * (3 + 2)


def _read(root: pathlib.Path, name: str) -> list[list[str]]:
    text = (root / name).read_bytes().decode("utf-8")
    assert text.endswith("\n") and "\r" not in text and "\n\n" not in text
    rows = [line.split(" ", 1) for line in text[:-1].split("\n")]
    assert all(len(r) == 2 and r[1] and " " not in r[1] for r in rows), name
    return rows


def _tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> pathlib.Path:
    return ensure_default_dataset(SMALL, tmp_path_factory.mktemp("cache"), verbose=False)


# ------------------------------------------------------------------------------- layout

def test_cub_layout(small_root):
    root = small_root
    assert root == dataset_dir(SMALL, root.parent)
    assert root.name.startswith(f"default-v{syn.GENERATOR_VERSION}-")
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "spec.json"):
        assert (root / name).is_file(), name
    images = _read(root, "images.txt")
    labels = _read(root, "image_class_labels.txt")
    split = _read(root, "train_test_split.txt")
    classes = _read(root, "classes.txt")
    ids = list(range(1, N_SMALL + 1))
    assert [int(a) for a, _ in images] == ids
    assert [int(a) for a, _ in labels] == ids
    assert [int(a) for a, _ in split] == ids
    assert [int(a) for a, _ in classes] == [1, 2, 3, 4]
    assert {v for _, v in split} == {"0", "1"}
    lab = [int(v) for _, v in labels]
    assert sorted(set(lab)) == [1, 2, 3, 4]
    for c in range(1, 5):
        flags = [s for (_, s), l in zip(split, lab) if l == c]
        assert flags.count("1") == 3 and flags.count("0") == 2
    folders = {int(cid): name for cid, name in classes}
    codes = class_codes(SMALL)
    for cid, name in folders.items():
        assert name == f"{cid:03d}.{syn.class_name(codes[cid - 1])}"
    for (_, rel), l in zip(images, lab):
        folder, fname = rel.split("/")
        assert folder == folders[l]
        assert fname.endswith(".jpg")
        assert (root / "images" / rel).is_file()
    # nothing unlisted in images/
    assert len(list((root / "images").rglob("*.jpg"))) == N_SMALL
    rec = json.loads((root / "spec.json").read_text())
    assert rec["generator_version"] == syn.GENERATOR_VERSION
    assert rec["spec"] == {"num_classes": 4, "train_per_class": 3, "test_per_class": 2,
                           "image_size": 48, "seed": 0}
    assert [tuple(c) for c in rec["class_codes"]] == codes
    assert syn.is_complete(root, SMALL)


def test_images_decode_at_stored_size(small_root):
    for p in sorted((small_root / "images").rglob("*.jpg")):
        with Image.open(p) as im:
            assert im.format == "JPEG"
            assert im.size == (48, 48)
            im.load()
            assert im.mode == "RGB"


def test_read_by_cub_parser(small_root):
    train = load_split("cub", small_root, "train")
    test = load_split("cub", small_root, "test")
    assert (len(train), len(test)) == (12, 8)
    assert train.num_classes == test.num_classes == 4
    assert sorted(l for _, l in train.samples) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert train.class_names[0].startswith("001.")
    assert all(os.path.isfile(p) for p, _ in train.samples + test.samples)
    assert load_split("default", small_root, "train").samples == train.samples


# ------------------------------------------------------------------------- determinism

def test_regeneration_is_byte_identical_and_seed_matters(small_root, tmp_path):
    again = ensure_default_dataset(SMALL, tmp_path / "a", verbose=False)
    assert again.name == small_root.name
    assert _tree_bytes(again) == _tree_bytes(small_root)

    other = SyntheticSpec(num_classes=4, train_per_class=3, test_per_class=2, image_size=48, seed=1)
    assert dataset_dir(other, tmp_path) != dataset_dir(SMALL, tmp_path)
    root1 = ensure_default_dataset(other, tmp_path / "b", verbose=False)
    a, b = _tree_bytes(small_root), _tree_bytes(root1)
    jpgs_a = [v for k, v in a.items() if k.endswith(".jpg")]
    jpgs_b = [v for k, v in b.items() if k.endswith(".jpg")]
    assert len(jpgs_a) == len(jpgs_b) == N_SMALL
    assert not set(jpgs_a) & set(jpgs_b)


def test_render_sample_deterministic():
    code = class_codes(SMALL)[0]
    a = render_sample(code, sample_rng(0, 0, 0), 48)
    b = render_sample(code, sample_rng(0, 0, 0), 48)
    c = render_sample(code, sample_rng(0, 0, 1), 48)
    assert a.size == (48, 48) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


# ----------------------------------------------------------------------------- caching

def test_second_call_does_not_regenerate(tmp_path, monkeypatch):
    root = ensure_default_dataset(SMALL, tmp_path, verbose=False)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}

    def boom(*a, **k):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(syn, "generate_dataset", boom)
    monkeypatch.setattr(syn, "render_sample", boom)
    assert ensure_default_dataset(SMALL, tmp_path, verbose=False) == root
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert sorted(os.listdir(tmp_path)) == [root.name]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TDSA_FAST_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert dataset_dir(SMALL).parent == tmp_path / "c"
    monkeypatch.delenv("TDSA_FAST_CACHE")
    assert default_cache_dir() == pathlib.Path.home() / ".cache" / "tdsa_fast"


def test_interrupted_generation_leaves_nothing_complete(tmp_path, monkeypatch):
    real = syn.render_sample
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(syn, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_dataset(SMALL, tmp_path, verbose=False)
    final = dataset_dir(SMALL, tmp_path)
    assert not final.exists()
    assert not syn.is_complete(final, SMALL)
    assert os.listdir(tmp_path) == []  # the temporary folder was removed

    # A hard crash leaves the temporary folder behind: it must never count as the
    # dataset, and the next call generates a complete one beside it.
    monkeypatch.setattr(syn, "render_sample", real)
    leftover = tmp_path / f".{final.name}.tmp-otherhost-12345-deadbeef"
    (leftover / "images").mkdir(parents=True)
    (leftover / "images.txt").write_text("1 x/y.jpg\n")
    root = ensure_default_dataset(SMALL, tmp_path, verbose=False)
    assert root == final and syn.is_complete(root, SMALL)
    assert len(list((root / "images").rglob("*.jpg"))) == N_SMALL


def test_incomplete_final_folder_is_replaced(tmp_path):
    final = dataset_dir(SMALL, tmp_path)
    (final / "images").mkdir(parents=True)
    (final / "images.txt").write_text("1 a/b.jpg\n")
    assert not syn.is_complete(final, SMALL)
    root = ensure_default_dataset(SMALL, tmp_path, verbose=False)
    assert root == final and syn.is_complete(root, SMALL)


def test_lost_rename_race_uses_winner(tmp_path, monkeypatch):
    root = ensure_default_dataset(SMALL, tmp_path, verbose=False)
    winner = _tree_bytes(root)
    real = syn.is_complete
    seen = {"n": 0}

    def first_false(*a, **k):  # the checks before generating miss the concurrent winner
        seen["n"] += 1
        return False if seen["n"] <= 2 else real(*a, **k)

    monkeypatch.setattr(syn, "is_complete", first_false)
    # make the winner's folder survive the "move aside" step, as if it appeared after it
    real_rename = os.rename

    def rename(src, dst):
        if pathlib.Path(src) == root and ".broken-" in str(dst):
            raise OSError("busy")
        return real_rename(src, dst)

    monkeypatch.setattr(syn.os, "rename", rename)
    assert ensure_default_dataset(SMALL, tmp_path, verbose=False) == root
    assert seen["n"] == 3  # it generated, lost the rename, and checked the winner
    assert _tree_bytes(root) == winner
    assert sorted(os.listdir(tmp_path)) == [root.name]  # the loser's copy was discarded


# -------------------------------------------------------------------------- class codes

def test_class_codes_distinct_and_close():
    for spec in (SyntheticSpec(), SMALL, SyntheticSpec(num_classes=40, seed=3)):
        codes = class_codes(spec)
        assert len(codes) == spec.num_classes == len(set(codes))
        assert codes == class_codes(spec)  # deterministic
        for c in codes:
            assert len(c) == len(syn.ATTRIBUTES)
            assert all(0 <= v < len(vals) for v, (_, vals) in zip(c, syn.ATTRIBUTES))
        arr = np.array(codes)
        dist = (arr[:, None, :] != arr[None, :, :]).sum(-1)
        np.fill_diagonal(dist, 99)
        assert dist.min(axis=1).max() <= 2  # every class has a near neighbour
    # the default: many pairs differing in one part, every value of every attribute used
    codes = np.array(class_codes(SyntheticSpec()))
    pairs = [int((a != b).sum()) for a, b in itertools.combinations(codes, 2)]
    assert pairs.count(1) >= 4 and pairs.count(1) + pairs.count(2) >= 9  # of 45 pairs for 10 classes
    for i, (_, vals) in enumerate(syn.ATTRIBUTES):
        counts = np.bincount(codes[:, i], minlength=len(vals))
        assert counts.min() >= 3, (syn.ATTRIBUTES[i][0], counts)
    # the code depends only on the seed
    assert class_codes(SyntheticSpec(train_per_class=5, image_size=48)) == class_codes(SyntheticSpec())
    assert class_codes(SyntheticSpec(seed=1)) != class_codes(SyntheticSpec())


def test_classes_differ_only_in_parts():
    """Same per-image rng, codes differing in one attribute: the images are identical
    except in a small region (the part); the nuisance (pose, colours, background) does
    not depend on the class."""
    base = (0, 0, 0, 0, 0, 0)
    for attr, (_, vals) in enumerate(syn.ATTRIBUTES):
        for k in range(3):
            code = list(base)
            code[attr] = len(vals) - 1
            a = np.asarray(render_sample(base, sample_rng(7, 0, k), 96), dtype=np.int16)
            b = np.asarray(render_sample(code, sample_rng(7, 0, k), 96), dtype=np.int16)
            changed = np.abs(a - b).max(-1) > 8
            frac = changed.mean()
            assert 0 < frac < 0.03, (syn.ATTRIBUTES[attr][0], k, frac)
            ys, xs = np.nonzero(changed)
            # the change is local: it fits in a box well under half the image side
            assert ys.max() - ys.min() < 48 and xs.max() - xs.min() < 48


def test_bad_arguments():
    with pytest.raises(ValueError):
        SyntheticSpec(num_classes=1)
    with pytest.raises(ValueError):
        SyntheticSpec(num_classes=10_000)
    with pytest.raises(ValueError):
        render_sample((0, 0, 0), sample_rng(0, 0, 0), 48)
    with pytest.raises(ValueError):
        render_sample((3, 0, 0, 0, 0, 0), sample_rng(0, 0, 0), 48)
