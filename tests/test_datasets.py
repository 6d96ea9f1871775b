"""Dataset parsers (tdsa_fast.data.datasets) on fixture trees in each native format
(tests/fixtures, made by tests/fixtures/make_fixtures.py) and on the real Flowers-102."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from tdsa_fast.data.datasets import DATASETS, SPLITS, SampleList, load_split

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
FLOWERS_REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers102"

_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
mf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mf)


def rel(sl: SampleList, name: str) -> list[tuple[str, int]]:
    """Samples as (path relative to the fixture root, label)."""
    root = (FIXTURES / name).absolute()
    out = []
    for p, label in sl.samples:
        assert os.path.isabs(p), p
        out.append((Path(p).relative_to(root).as_posix(), label))
    return out


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def colour_class(path: str) -> int:
    """The fixture class whose colour is nearest the image's mean colour."""
    with Image.open(path) as im:
        mean = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    d = [np.abs(mean - np.array(c)).sum() for c in mf.CLASS_COLOURS]
    assert min(d) < 30, (path, mean)
    return int(np.argmin(d))


# ---------------------------------------------------------------------------------------
# Exact contents of every fixture split (counts, labels, order, class names)

EXPECTED = {
    ("cub", "train"): [
        ("images/001.Red_Tanager/Red_Tanager_0001.jpg", 0),
        ("images/001.Red_Tanager/Red_Tanager_0003.jpg", 0),
        ("images/001.Red_Tanager/Red_Tanager_0004.jpg", 0),
        ("images/002.Green_Jay/Green_Jay_0007.jpg", 1),
        ("images/002.Green_Jay/Green_Jay_0008.jpg", 1),
        ("images/003.Blue_Grosbeak/Blue_Grosbeak_0009.jpg", 2),
        ("images/003.Blue_Grosbeak/Blue_Grosbeak_0012.jpg", 2)],
    ("cub", "test"): [
        ("images/001.Red_Tanager/Red_Tanager_0002.jpg", 0),
        ("images/001.Red_Tanager/Red_Tanager_0005.jpg", 0),
        ("images/002.Green_Jay/Green_Jay_0006.jpg", 1),
        ("images/003.Blue_Grosbeak/Blue_Grosbeak_0010.jpg", 2),
        ("images/003.Blue_Grosbeak/Blue_Grosbeak_0011.jpg", 2)],
    ("aircraft", "train"): [  # trainval
        ("data/images/0034309.jpg", 0), ("data/images/0056978.jpg", 1),
        ("data/images/0062781.jpg", 1), ("data/images/0102563.jpg", 2),
        ("data/images/0110421.jpg", 2), ("data/images/1001423.jpg", 0),
        ("data/images/1514522.jpg", 0)],
    ("aircraft", "train_only"): [
        ("data/images/0034309.jpg", 0), ("data/images/0056978.jpg", 1),
        ("data/images/0102563.jpg", 2), ("data/images/1514522.jpg", 0)],
    ("aircraft", "val"): [
        ("data/images/0062781.jpg", 1), ("data/images/0110421.jpg", 2),
        ("data/images/1001423.jpg", 0)],
    ("aircraft", "test"): [
        ("data/images/0045601.jpg", 2), ("data/images/0061129.jpg", 0),
        ("data/images/0098215.jpg", 1), ("data/images/1200034.jpg", 1),
        ("data/images/2033551.jpg", 2)],
    ("cars", "train"): [(f"cars_train/{i + 1:05d}.jpg", c) for i, c in enumerate([2, 0, 1, 1, 2, 0])],
    ("cars", "test"): [(f"cars_test/{i + 1:05d}.jpg", c) for i, c in enumerate([1, 2, 0, 0, 2])],
    ("flowers", "train"): [  # trnid {5, 9, 3} + valid {12, 1, 2}, by image id
        ("jpg/image_00001.jpg", 1), ("jpg/image_00002.jpg", 0), ("jpg/image_00003.jpg", 2),
        ("jpg/image_00005.jpg", 0), ("jpg/image_00009.jpg", 1), ("jpg/image_00012.jpg", 2)],
    ("flowers", "train_only"): [
        ("jpg/image_00003.jpg", 2), ("jpg/image_00005.jpg", 0), ("jpg/image_00009.jpg", 1)],
    ("flowers", "val"): [
        ("jpg/image_00001.jpg", 1), ("jpg/image_00002.jpg", 0), ("jpg/image_00012.jpg", 2)],
    ("flowers", "test"): [
        ("jpg/image_00004.jpg", 2), ("jpg/image_00006.jpg", 1), ("jpg/image_00007.jpg", 0),
        ("jpg/image_00008.jpg", 2), ("jpg/image_00010.jpg", 1), ("jpg/image_00011.jpg", 0)],
    ("folder", "train"): [
        ("train/alpha/a1.jpg", 0), ("train/alpha/a2.jpg", 0), ("train/beta/b1.jpeg", 1),
        ("train/beta/b2.png", 1), ("train/beta/sub/b3.JPG", 1), ("train/gamma/g1.jpg", 2),
        ("train/gamma/g2.jpg", 2)],
    ("folder", "test"): [("test/alpha/t2.jpg", 0), ("test/alpha/t3.jpg", 0), ("test/beta/t1.jpg", 1)],
    ("csv", "train"): [("images/s1.jpg", 1), ("images/f1.jpg", 0), ("images/s2.jpg", 1),
                       ("images/f2.jpg", 0), ("images/w2.jpg", 2)],
    ("csv", "test"): [("images/w1.jpg", 2), ("images/f3.jpg", 0), ("images/s3.jpg", 1)],
}

CLASS_NAMES = {
    "cub": ["001.Red_Tanager", "002.Green_Jay", "003.Blue_Grosbeak"],
    "aircraft": ["A340-500", "Cessna 172", "F/A-18"],
    "cars": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"],
    "flowers": ["class_001", "class_002", "class_003"],
    "folder": ["alpha", "beta", "gamma"],
    "csv": ["finch", "sparrow", "wren"],
}


@pytest.mark.parametrize("name,split", sorted(EXPECTED))
def test_fixture_split_contents(name, split):
    sl = load_split(name, FIXTURES / name, split)
    assert rel(sl, name) == EXPECTED[(name, split)]
    assert len(sl) == len(EXPECTED[(name, split)])
    assert sl.num_classes == 3
    assert sl.class_names == CLASS_NAMES[name]
    # every (path, label) really points at an image of that class (colour-coded fixtures)
    for path, label in sl.samples:
        assert colour_class(path) == label, path


def test_root_given_as_str_and_relative(monkeypatch):
    monkeypatch.chdir(FIXTURES)
    sl = load_split("cub", "cub", "train")
    assert rel(sl, "cub") == EXPECTED[("cub", "train")]
    assert load_split("cub", str(FIXTURES / "cub"), "test").samples == load_split(
        "cub", FIXTURES / "cub", "test").samples


def test_default_is_read_as_cub():
    for split in ("train", "test"):
        assert load_split("default", FIXTURES / "cub", split) == load_split("cub", FIXTURES / "cub", split)


def test_train_is_union_of_train_only_and_val():
    for name in ("aircraft", "flowers"):
        tr = load_split(name, FIXTURES / name, "train").samples
        only = load_split(name, FIXTURES / name, "train_only").samples
        val = load_split(name, FIXTURES / name, "val").samples
        assert sorted(tr) == sorted(only + val)
        assert not set(only) & set(val)
        test = load_split(name, FIXTURES / name, "test").samples
        assert not {p for p, _ in tr} & {p for p, _ in test}


def test_split_names():
    assert DATASETS == ("default", "cub", "aircraft", "cars", "flowers", "folder", "csv")
    assert set(SPLITS) == set(DATASETS)
    for name in DATASETS:
        assert SPLITS[name][:2] == ("train", "test")
    assert set(SPLITS["aircraft"]) == set(SPLITS["flowers"]) == {"train", "test", "val", "train_only"}


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as e:
        load_split("imagenet", FIXTURES / "cub", "train")
    for name in DATASETS:
        assert name in str(e.value)
    assert "imagenet" in str(e.value)


@pytest.mark.parametrize("name,split", [("cub", "val"), ("cars", "train_only"), ("csv", "valid"),
                                        ("flowers", "trainval"), ("aircraft", "training")])
def test_unknown_split_lists_valid_names(name, split):
    with pytest.raises(ValueError) as e:
        load_split(name, FIXTURES / name, split)
    msg = str(e.value)
    assert repr(split) in msg
    for s in SPLITS[name]:
        assert s in msg


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split("cub", tmp_path / "nowhere", "train")


# ---------------------------------------------------------------------------------------
# Missing files name the full expected path and its contents


@pytest.mark.parametrize("name,split,remove,contents", [
    ("cub", "train", "train_test_split.txt", "is_training_image"),
    ("cub", "test", "images.txt", "image_id"),
    ("cub", "train", "image_class_labels.txt", "class_id"),
    ("aircraft", "val", "data/images_variant_val.txt", "variant name"),
    ("aircraft", "train", "data/images_variant_trainval.txt", "variant name"),
    ("aircraft", "test", "data/variants.txt", "variant name"),
    ("cars", "train", "devkit/cars_train_annos.mat", "annotations"),
    ("cars", "test", "devkit/cars_meta.mat", "class_names"),
    ("flowers", "test", "setid.mat", "tstid"),
    ("flowers", "train", "imagelabels.mat", "labels"),
    ("csv", "test", "test.csv", "path,label"),
    ("csv", "train", "train.csv", "path,label"),
])
def test_missing_file_names_expected_path(tmp_path, name, split, remove, contents):
    root = copy_fixture(name, tmp_path)
    (root / remove).unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_split(name, root, split)
    assert str(root / remove) in str(e.value)
    assert contents in str(e.value)


def test_cars_test_labels_file_beside_or_in_devkit(tmp_path):
    root = copy_fixture("cars", tmp_path)
    expected = [(f"{root}/cars_test/{i + 1:05d}.jpg", c) for i, c in enumerate([1, 2, 0, 0, 2])]
    # beside devkit/ (the fixture's layout)
    assert load_split("cars", root, "test").samples == expected
    # inside devkit/
    shutil.move(root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat")
    assert load_split("cars", root, "test").samples == expected
    # nowhere: both candidate paths named, and the unlabelled devkit file is pointed out
    (root / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_split("cars", root, "test")
    msg = str(e.value)
    assert str(root / "devkit" / "cars_test_annos_withlabels.mat") in msg
    assert str(root / "cars_test_annos_withlabels.mat") in msg
    assert "no class labels" in msg
    # the train split does not need it
    assert len(load_split("cars", root, "train")) == 6


def test_folder_missing_split_dir(tmp_path):
    root = copy_fixture("folder", tmp_path)
    shutil.rmtree(root / "test")
    with pytest.raises(FileNotFoundError, match=str(root / "test")):
        load_split("folder", root, "test")
    assert len(load_split("folder", root, "train")) == 7


# ---------------------------------------------------------------------------------------
# Malformed files: ValueError naming the file and line


def _replace_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("fname,lineno,bad", [
    ("images.txt", 3, "3"),                       # no path
    ("images.txt", 4, "four images/x.jpg"),       # non-integer id
    ("image_class_labels.txt", 2, "2 two"),       # non-integer class
    ("train_test_split.txt", 5, "5 2"),           # not 0/1
    ("classes.txt", 2, "2"),                      # no class name
])
def test_cub_malformed_line(tmp_path, fname, lineno, bad):
    root = copy_fixture("cub", tmp_path)
    _replace_line(root / fname, lineno, bad)
    with pytest.raises(ValueError) as e:
        load_split("cub", root, "train")
    assert str(root / fname) in str(e.value)
    assert f"line {lineno}" in str(e.value)


def test_cub_duplicate_and_missing_ids(tmp_path):
    root = copy_fixture("cub", tmp_path)
    _replace_line(root / "image_class_labels.txt", 3, "2 1")  # id 2 twice, id 3 missing
    with pytest.raises(ValueError, match=r"line 3: image id 2 already listed on line 2"):
        load_split("cub", root, "train")
    root2 = copy_fixture("cub", tmp_path / "b")
    lines = (root2 / "train_test_split.txt").read_text().splitlines()
    (root2 / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")  # drop id 12
    with pytest.raises(ValueError, match=r"train_test_split.txt has no entry for image id\(s\) \[12\]"):
        load_split("cub", root2, "test")


def test_aircraft_malformed_line(tmp_path):
    root = copy_fixture("aircraft", tmp_path)
    path = root / "data" / "images_variant_test.txt"
    _replace_line(path, 2, "0061129")
    with pytest.raises(ValueError) as e:
        load_split("aircraft", root, "test")
    assert str(path) in str(e.value) and "line 2" in str(e.value)


def test_csv_malformed_row(tmp_path):
    root = copy_fixture("csv", tmp_path)
    _replace_line(root / "train.csv", 3, "images/f1.jpg,finch,extra")
    with pytest.raises(ValueError) as e:
        load_split("csv", root, "train")
    assert str(root / "train.csv") in str(e.value) and "line 3" in str(e.value)
    # the other split also reads train.csv (shared label space), so it fails too
    with pytest.raises(ValueError, match="line 3"):
        load_split("csv", root, "test")


def test_corrupt_mat_file(tmp_path):
    root = copy_fixture("flowers", tmp_path)
    (root / "setid.mat").write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(ValueError, match=str(root / "setid.mat")):
        load_split("flowers", root, "train")


# ---------------------------------------------------------------------------------------
# Labels out of range (checked here; the loss does not check them)


@pytest.mark.parametrize("bad", ["7 4", "7 0"])
def test_cub_label_out_of_range(tmp_path, bad):
    root = copy_fixture("cub", tmp_path)
    _replace_line(root / "image_class_labels.txt", 7, bad)
    with pytest.raises(ValueError, match=r"line 7: class id -?\d+ of image 7 is outside 1..3"):
        load_split("cub", root, "train")


def test_cub_without_classes_txt(tmp_path):
    root = copy_fixture("cub", tmp_path)
    (root / "classes.txt").unlink()
    sl = load_split("cub", root, "train")
    assert sl.num_classes == 3
    assert sl.class_names == CLASS_NAMES["cub"]  # taken from the image folders
    assert [lab for _, lab in sl.samples] == [lab for _, lab in EXPECTED[("cub", "train")]]
    # the class count covers both splits: a class seen only in test still counts
    _replace_line(root / "image_class_labels.txt", 11, "11 4")  # id 11 is a test image
    (root / "images" / "004.Extra").mkdir()
    assert load_split("cub", root, "train").num_classes == 4
    assert load_split("cub", root, "test").samples[-1][1] == 3


def test_aircraft_unknown_variant(tmp_path):
    root = copy_fixture("aircraft", tmp_path)
    path = root / "data" / "images_variant_trainval.txt"
    _replace_line(path, 4, "0102563 Boeing 747")
    with pytest.raises(ValueError) as e:
        load_split("aircraft", root, "train")
    assert str(path) in str(e.value) and "line 4" in str(e.value) and "Boeing 747" in str(e.value)


def _rewrite_cars(root: Path, rel_path: str, classes) -> None:
    sio.savemat(root / rel_path, {"annotations": mf.cars_annotations(classes)})


@pytest.mark.parametrize("bad_class", [3, -1])  # 0-based 3 -> 1-based 4; -1 -> 0
def test_cars_label_out_of_range(tmp_path, bad_class):
    root = copy_fixture("cars", tmp_path)
    _rewrite_cars(root, "devkit/cars_train_annos.mat", [0, 1, bad_class])
    with pytest.raises(ValueError, match=r"record 2 \(00003.jpg\): class \d+ is outside 1..3"):
        load_split("cars", root, "train")


def test_cars_mat_layouts(tmp_path):
    """The parser reads the annotations whatever their MATLAB shape (Nx1 instead of 1xN)
    and the internal record reader accepts every loadmat style."""
    from tdsa_fast.data.datasets import _mat_records, _CARS_FIELDS

    root = copy_fixture("cars", tmp_path)
    ann = mf.cars_annotations([2, 0, 1, 1, 2, 0])
    sio.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": ann.T})  # Nx1
    assert rel_to(load_split("cars", root, "train"), root) == EXPECTED[("cars", "train")]
    path = FIXTURES / "cars" / "devkit" / "cars_train_annos.mat"
    want = [(f"{i + 1:05d}.jpg", c + 1) for i, c in enumerate([2, 0, 1, 1, 2, 0])]
    for kwargs in ({}, {"squeeze_me": True}, {"struct_as_record": False},
                   {"squeeze_me": True, "struct_as_record": False}):
        recs = _mat_records(sio.loadmat(path, **kwargs)["annotations"], _CARS_FIELDS, "x")
        assert [(r["fname"], r["class"]) for r in recs] == want, kwargs
        assert recs[0]["bbox_x1"] == 1 and recs[5]["bbox_x2"] == 12
    # a single-record struct array squeezes to a 0-d array
    sio.savemat(tmp_path / "one.mat", {"annotations": mf.cars_annotations([1])})
    recs = _mat_records(sio.loadmat(tmp_path / "one.mat", squeeze_me=True)["annotations"], _CARS_FIELDS, "x")
    assert recs == [{"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 7, "bbox_y2": 6, "class": 2, "fname": "00001.jpg"}]


def rel_to(sl: SampleList, root: Path):
    return [(Path(p).relative_to(root).as_posix(), lab) for p, lab in sl.samples]


def test_cars_duplicate_fname_and_missing_field(tmp_path):
    root = copy_fixture("cars", tmp_path)
    ann = mf.cars_annotations([0, 1])
    ann[0, 1]["fname"] = np.array(["00001.jpg"])
    sio.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": ann})
    with pytest.raises(ValueError, match="00001.jpg already listed"):
        load_split("cars", root, "train")
    sio.savemat(root / "cars_test_annos_withlabels.mat",
                {"annotations": mf.cars_annotations([0, 1], with_class=False)})
    with pytest.raises(ValueError, match=r"no field\(s\) \['class'\]"):
        load_split("cars", root, "test")


def test_flowers_bad_labels_and_ids(tmp_path):
    root = copy_fixture("flowers", tmp_path)
    labels = np.array([mf.FLOWERS_LABELS], dtype=np.uint8)
    labels[0, 4] = 0
    sio.savemat(root / "imagelabels.mat", {"labels": labels})
    with pytest.raises(ValueError, match=r"labels\[4\] \(image 5\) = 0"):
        load_split("flowers", root, "train")

    root = copy_fixture("flowers", tmp_path / "b")
    sets = {k: np.array([v], dtype=np.uint16) for k, v in mf.FLOWERS_SETS.items()}
    sets["tstid"] = np.array([[4, 6, 7, 8, 10, 13]], dtype=np.uint16)  # 13 > 12 images
    sio.savemat(root / "setid.mat", sets)
    with pytest.raises(ValueError, match=r"tstid holds image id 13, outside 1..12"):
        load_split("flowers", root, "test")

    sets["tstid"] = np.array([[4, 6, 7, 8, 10, 5]], dtype=np.uint16)  # 5 is also in trnid
    sio.savemat(root / "setid.mat", sets)
    with pytest.raises(ValueError, match=r"image id 5 is in both trnid and tstid"):
        load_split("flowers", root, "test")


def test_flowers_float_labels_accepted(tmp_path):
    """Re-saved .mat files often hold doubles; integral values are fine."""
    root = copy_fixture("flowers", tmp_path)
    sio.savemat(root / "imagelabels.mat", {"labels": np.array([mf.FLOWERS_LABELS], dtype=np.float64)})
    assert rel_to(load_split("flowers", root, "test"), root) == EXPECTED[("flowers", "test")]


def test_folder_unknown_test_class(tmp_path):
    root = copy_fixture("folder", tmp_path)
    (root / "test" / "delta").mkdir()
    shutil.copy(root / "test" / "beta" / "t1.jpg", root / "test" / "delta" / "d1.jpg")
    with pytest.raises(ValueError, match=r"\['delta'\] that are not classes of"):
        load_split("folder", root, "test")


def test_folder_empty_class_and_loose_file(tmp_path):
    root = copy_fixture("folder", tmp_path)
    (root / "train" / "epsilon").mkdir()
    with pytest.raises(ValueError, match="epsilon has no image files"):
        load_split("folder", root, "train")
    (root / "train" / "epsilon").rmdir()
    shutil.copy(root / "train" / "alpha" / "a1.jpg", root / "train" / "loose.jpg")
    with pytest.raises(ValueError, match="outside any class folder"):
        load_split("folder", root, "train")


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_csv_integer_labels_absolute_paths(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    abs_img = (FIXTURES / "csv" / "images" / "s1.jpg").absolute()
    _write(root / "train.csv", f"a.jpg,0\nsub/b.jpg,2\n{abs_img},1\n")
    _write(root / "test.csv", "image,label\nc.jpg,2\n\nd.jpg,0\n")
    tr = load_split("csv", root, "train")
    te = load_split("csv", root, "test")
    assert tr.num_classes == te.num_classes == 3  # max over train.csv + 1 (a larger test label is refused)
    assert tr.class_names == ["0", "1", "2"]
    assert tr.samples == [(str(root / "a.jpg"), 0), (str(root / "sub" / "b.jpg"), 2), (str(abs_img), 1)]
    assert te.samples == [(str(root / "c.jpg"), 2), (str(root / "d.jpg"), 0)]


def test_csv_header_detection_and_quoting(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    # no header; a name label that happens to look like a header word is data on row 2+
    _write(root / "train.csv", 'x.jpg,cat\n"with, comma.jpg",label\n')
    _write(root / "test.csv", "path,label\ny.jpg,cat\n")
    tr = load_split("csv", root, "train")
    assert tr.class_names == ["cat", "label"]
    assert tr.samples == [(str(root / "x.jpg"), 0), (str(root / "with, comma.jpg"), 1)]
    assert load_split("csv", root, "test").samples == [(str(root / "y.jpg"), 0)]


@pytest.mark.parametrize("train,test,match", [
    ("a.jpg,0\nb.jpg,-1\n", "c.jpg,0\n", r"train.csv, line 2: label -1 is negative"),
    ("a.jpg,0\nb.jpg,1\n", "c.jpg,0\nd.jpg,dog\n", r"test.csv, line 2: label 'dog' is a class name"),
    ("a.jpg,cat\nb.jpg,3\n", "c.jpg,dog\n", r"train.csv, line 2: label '3' is an integer"),
    ("a.jpg,\n", "c.jpg,0\n", r"train.csv, line 1: expected a non-empty path and label"),
    ("path,label\n", "c.jpg,0\n", r"train.csv has no data rows"),
])
def test_csv_bad_labels(tmp_path, train, test, match):
    root = tmp_path / "c"
    root.mkdir()
    _write(root / "train.csv", train)
    _write(root / "test.csv", test)
    with pytest.raises(ValueError, match=match):
        load_split("csv", root, "train")


def test_csv_train_only_file(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    _write(root / "train.csv", "a.jpg,1\n")
    assert load_split("csv", root, "train").num_classes == 2
    with pytest.raises(FileNotFoundError, match=str(root / "test.csv")):
        load_split("csv", root, "test")


def test_samplelist_validates():
    with pytest.raises(ValueError, match="outside"):
        SampleList([("/a.jpg", 3)], 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside"):
        SampleList([("/a.jpg", -1)], 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="class names"):
        SampleList([("/a.jpg", 0)], 3, ["a", "b"])
    with pytest.raises(ValueError, match=r"\(str, int\)"):
        SampleList([("/a.jpg", 1.0)], 3, ["a", "b", "c"])
    sl = SampleList([("/a.jpg", 2)], 3, ["a", "b", "c"])
    assert len(sl) == 1 and "num_classes=3" in repr(sl)


# ---------------------------------------------------------------------------------------
# The real Oxford Flowers-102 (docs/method.md, "Datasets")


def test_real_flowers102():
    root = FLOWERS_REAL.resolve()
    if not (root / "setid.mat").is_file():
        pytest.skip(f"the real Flowers-102 is not present at {root} (only the fixtures are tested)")
    tr = load_split("flowers", root, "train")
    te = load_split("flowers", root, "test")
    only = load_split("flowers", root, "train_only")
    val = load_split("flowers", root, "val")
    assert (len(tr), len(te), len(only), len(val)) == (2040, 6149, 1020, 1020)
    assert sorted(tr.samples) == sorted(only.samples + val.samples)
    everything = tr.samples + te.samples
    assert len({p for p, _ in everything}) == 8189
    assert {p for p, _ in everything} == {str(root / "jpg" / f"image_{i:05d}.jpg") for i in range(1, 8190)}
    for sl in (tr, te, only, val):
        assert sl.num_classes == 102 and len(sl.class_names) == 102
    labels = sio.loadmat(root / "imagelabels.mat")["labels"].ravel().astype(int)
    assert labels.min() == 1 and labels.max() == 102
    got = {p: lab for p, lab in everything}
    for i, lab in enumerate(labels, 1):
        assert got[str(root / "jpg" / f"image_{i:05d}.jpg")] == lab - 1
    assert {lab for _, lab in tr.samples} == set(range(102))  # 20 per class in train+val
    assert all(os.path.isfile(p) for p, _ in everything)
    assert [p for p, _ in tr.samples] == sorted(p for p, _ in tr.samples)  # ascending id order
