"""Datasets in their native layouts, the built-in synthetic default dataset, and image loading.

* :mod:`tdsa_fast.data.datasets` — ``load_split(name, root, split) -> SampleList`` for CUB-200-2011,
  FGVC-Aircraft, Stanford Cars, Flowers-102, an ImageFolder tree and a CSV list;
* :mod:`tdsa_fast.data.synthetic` — ``ensure_default_dataset()``, the procedurally generated
  fine-grained birds, written once in CUB's layout;
* :mod:`tdsa_fast.data.loading` — ``build_loader(samples, loader="auto"|"dali"|"torch", ...)``, the
  training loaders (:mod:`~tdsa_fast.data.dali_loader`, :mod:`~tdsa_fast.data.torch_loader`) over
  the shard plan of :mod:`~tdsa_fast.data.sharding`, yielding :class:`~tdsa_fast.data.loading.Batch`;
* :mod:`tdsa_fast.data.images` — decoding with clear errors (``load_rgb``, ``BadImageError``), and the
  released code's recipe (torchvision transforms in a DataLoader), kept as the benchmark baseline.
"""
from tdsa_fast.data.datasets import DATASETS, SampleList, load_split
from tdsa_fast.data.images import BadImageError
from tdsa_fast.data.loading import Batch, build_loader
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

__all__ = ["DATASETS", "SampleList", "load_split", "BadImageError", "Batch", "build_loader",
           "SyntheticSpec", "ensure_default_dataset"]
