"""Makes ``.gpu_data/flowers102`` (git-ignored): a Flowers-102 copy small enough to travel to a
GPU machine with the working tree (the device tool's ``carry``, 64 MiB in all), read there
by ``bash bench/gpu_check.sh data|train`` and ``bash bench/gpu_reproduce.sh``.

* the training split (``trnid`` + ``valid``, 2,040 JPEGs) is copied byte for byte;
* the test split (``tstid``, 6,149 JPEGs) is copied whole when it fits under ``--max-mib``
  with the training split; otherwise a fixed subset: the first images of a seed-0
  permutation of ``tstid`` (the same on every machine and run), kept in id order, as many as
  fit, and never fewer than ``--min-test`` (2,000: an error if even those do not fit);
* ``imagelabels.mat`` is copied, ``setid.mat`` rewritten with the chosen ``tstid``, and
  ``subset.json`` states what was kept (counts, bytes, the test ids).

Files are copied, not re-encoded: the pixels the GPU run trains and tests on are the
originals'.

    python bench/make_gpu_data.py [--src ../shared/data/flowers102] [--dst .gpu_data/flowers102]
        [--max-mib 56] [--min-test 2000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tdsa_fast.data.datasets import load_split  # noqa: E402


def _ids(setid, key) -> np.ndarray:
    return np.asarray(setid[key]).reshape(-1).astype(np.int64)


def choose_test_ids(test_ids: np.ndarray, sizes: dict, budget: int, min_test: int) -> np.ndarray:
    """The test ids kept: all when their bytes fit in ``budget``, else the longest prefix of a
    seed-0 permutation that fits (sorted).

    Raises:
        ValueError: not even ``min_test`` images fit.
    """
    if sum(sizes[i] for i in test_ids) <= budget:
        return np.sort(test_ids)
    order = np.random.default_rng(0).permutation(np.sort(test_ids))
    total, keep = 0, []
    for i in order:
        if total + sizes[i] > budget:
            break
        total += sizes[i]
        keep.append(i)
    if len(keep) < min_test:
        raise ValueError(f"--max-mib: only {len(keep)} test images fit beside the training split, fewer than "
                         f"--min-test {min_test}")
    return np.sort(np.array(keep, dtype=np.int64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "flowers102"))
    ap.add_argument("--dst", default=str(REPO / ".gpu_data" / "flowers102"))
    ap.add_argument("--max-mib", type=float, default=56.0, help="size limit of the whole copy")
    ap.add_argument("--min-test", type=int, default=2000, help="the fewest test images a subset may keep")
    a = ap.parse_args(argv)
    from scipy.io import loadmat, savemat

    src, dst = Path(a.src), Path(a.dst)
    train = load_split("flowers", src, "train").samples  # checks the source's files and ids
    setid = loadmat(str(src / "setid.mat"))
    test_ids = _ids(setid, "tstid")
    name = {i: f"image_{i:05d}.jpg" for i in range(1, int(max(test_ids.max(), 10 ** 4)) + 1)}
    sizes = {int(i): (src / "jpg" / name[int(i)]).stat().st_size for i in test_ids}
    fixed = sum(Path(p).stat().st_size for p, _ in train) + sum((src / f).stat().st_size
                                                                 for f in ("imagelabels.mat", "setid.mat"))
    budget = int(a.max_mib * 2**20) - fixed
    try:
        keep = choose_test_ids(test_ids, sizes, budget, a.min_test)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dst.exists():
        shutil.rmtree(dst)  # a copy made with other settings must not leave extra files
    (dst / "jpg").mkdir(parents=True)
    shutil.copy2(src / "imagelabels.mat", dst / "imagelabels.mat")
    savemat(str(dst / "setid.mat"), dict(trnid=_ids(setid, "trnid")[None], valid=_ids(setid, "valid")[None],
                                         tstid=keep[None]))
    for path, _ in train:
        shutil.copy2(path, dst / "jpg" / Path(path).name)
    for i in keep:
        shutil.copy2(src / "jpg" / name[int(i)], dst / "jpg" / name[int(i)])
    whole = len(keep) == len(test_ids)
    info = dict(train_images=len(train), test_images=int(len(keep)), test_split_images=int(len(test_ids)),
                test_subset=not whole, test_subset_rule=None if whole else
                "the first images of numpy.random.default_rng(0).permutation(sorted tstid) that fit, in id order",
                tstid=keep.tolist())
    (dst / "subset.json").write_text(json.dumps(info))
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    what = "the whole test split" if whole else f"a fixed subset of {len(keep)} of the {len(test_ids)} test images"
    print(f"{len(train)} training images and {what} in {dst} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
