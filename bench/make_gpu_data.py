"""Copies the Flowers-102 training split (2,040 JPEGs, about 21 MiB, and the two .mat files)
into ``.gpu_data/flowers102`` (git-ignored), small enough to travel to a GPU machine with
the working tree (the device tool's ``carry``), where ``bash bench/gpu_check.sh data`` reads it.

    python bench/make_gpu_data.py [--src ../shared/data/flowers102] [--dst .gpu_data/flowers102]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tdsa_fast.data.datasets import load_split  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(REPO.parent / "shared" / "data" / "flowers102"))
    ap.add_argument("--dst", default=str(REPO / ".gpu_data" / "flowers102"))
    a = ap.parse_args(argv)
    src, dst = Path(a.src), Path(a.dst)
    samples = load_split("flowers", src, "train").samples
    (dst / "jpg").mkdir(parents=True, exist_ok=True)
    for name in ("imagelabels.mat", "setid.mat"):
        shutil.copy2(src / name, dst / name)
    for path, _ in samples:
        target = dst / "jpg" / Path(path).name
        if not target.exists():
            shutil.copy2(path, target)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"{len(samples)} training images in {dst} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
