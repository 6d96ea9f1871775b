"""Datasets in their native layouts, the built-in synthetic default dataset, and the loaders,
in the order data flows:

* :mod:`~tdsa_fast.data.datasets` — ``load_split(name, root, split) -> SampleList`` for CUB-200-2011,
  FGVC-Aircraft, Stanford Cars, Flowers-102, an ImageFolder tree and a CSV list;
* :mod:`~tdsa_fast.data.synthetic` — ``ensure_default_dataset()``, the procedurally generated
  fine-grained birds, written once in CUB's layout;
* :mod:`~tdsa_fast.data.decode` — reading and decoding files with clear errors (``load_rgb``,
  ``BadImageError``, the pixel limit);
* :mod:`~tdsa_fast.data.sharding` — every epoch's order and each process's share of it;
* :mod:`~tdsa_fast.data.augment` — the ``(seed, epoch, index)`` augmentation draws and their
  application, shared by every loader;
* :mod:`~tdsa_fast.data.batch` — :class:`Batch` and the ``ImageLoader`` interface;
* the loaders: :mod:`~tdsa_fast.data.dali_loader`, :mod:`~tdsa_fast.data.torch_loader`,
  :mod:`~tdsa_fast.data.memory_loader`;
* :mod:`~tdsa_fast.data.loading` — ``build_loader(samples, loader="auto"|"dali"|"torch"|"memory", ...)``,
  the factory that picks one.
"""
from tdsa_fast.data.batch import Batch
from tdsa_fast.data.datasets import DATASETS, SampleList, load_split
from tdsa_fast.data.decode import BadImageError
from tdsa_fast.data.loading import build_loader
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

__all__ = ["DATASETS", "SampleList", "load_split", "BadImageError", "Batch", "build_loader",
           "SyntheticSpec", "ensure_default_dataset"]
