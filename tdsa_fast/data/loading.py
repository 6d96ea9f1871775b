"""The factory that picks a loader: :func:`build_loader` (``--loader auto|dali|torch|memory``).

Every loader yields :class:`~tdsa_fast.data.batch.Batch` es and follows the
:class:`~tdsa_fast.data.batch.ImageLoader` interface; they read the same
:class:`~tdsa_fast.data.sharding.ShardPlan` and the same augmentation draws
(:mod:`tdsa_fast.data.augment`), so for the same seed they feed the same pixels within a
grey level.
"""
from __future__ import annotations

import torch

from tdsa_fast.data.batch import ImageLoader
from tdsa_fast.data.decode import dali_available

__all__ = ["LOADERS", "dali_available", "build_loader"]

LOADERS = ("auto", "dali", "torch", "memory")


def _auto_picks_memory(samples, kwargs) -> bool:
    """``auto``'s rule for the memory path: a CUDA device, and the stored split within
    :data:`~tdsa_fast.data.memory_loader.DEFAULT_MEMORY_FRACTION` of its free memory.  (On the
    CPU ``auto`` keeps DALI or torch: the stored split would take the RAM of every CPU run.)"""
    device = torch.device(kwargs.get("device", "cpu"))
    if device.type != "cuda" or kwargs.get("decode", "pil") != "pil":  # decode=: the torch loader was asked for
        return False
    from tdsa_fast.data.memory_loader import DEFAULT_MEMORY_FRACTION, fits_in_memory, stored_size_for

    n = len(samples.samples if hasattr(samples, "samples") else samples)
    size = stored_size_for(kwargs.get("img_size", 0), kwargs.get("recipe", "released"), kwargs.get("train", False),
                           kwargs.get("stored_size"))
    return fits_in_memory(n, size, device, kwargs.get("memory_fraction") or DEFAULT_MEMORY_FRACTION)


_MEMORY_ONLY = ("decoder", "stored_size", "cache_dir", "memory_fraction")


def build_loader(samples, *, loader: str = "auto", **kwargs) -> ImageLoader:
    """The training/evaluation loader: ``loader="dali"``, ``"torch"``, ``"memory"`` or
    ``"auto"`` (on CUDA the memory path when the split fits in half the device's free memory;
    otherwise DALI when it is installed, else torch).  Keyword arguments: those of
    :class:`ImageLoader`, plus ``decode="pil"|"device"`` for the PyTorch loader (see
    :class:`~tdsa_fast.data.torch_loader.TorchImageLoader`) and ``decoder``,
    ``stored_size``, ``cache_dir``, ``memory_fraction`` for the memory loader (see
    :class:`~tdsa_fast.data.memory_loader.MemoryImageLoader`; ignored by the others)."""
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; valid loaders: {', '.join(LOADERS)}")
    if loader == "auto":
        loader = "memory" if _auto_picks_memory(samples, kwargs) else "dali" if dali_available() else "torch"
    if loader == "memory":
        if kwargs.pop("decode", "pil") != "pil":
            raise ValueError("decode= applies to the torch loader only; the memory loader's is decoder=")
        from tdsa_fast.data.memory_loader import MemoryImageLoader

        return MemoryImageLoader(samples, **{k: v for k, v in kwargs.items() if v is not None or k not in _MEMORY_ONLY})
    for key in _MEMORY_ONLY:
        kwargs.pop(key, None)
    if loader == "dali":
        if not dali_available():
            raise ValueError("--loader dali: NVIDIA DALI is not installed (pip install '.[dali]')")
        if kwargs.pop("decode", "pil") != "pil":
            raise ValueError("decode= applies to the torch loader only")
        from tdsa_fast.data.dali_loader import DaliImageLoader

        return DaliImageLoader(samples, **kwargs)
    from tdsa_fast.data.torch_loader import TorchImageLoader

    return TorchImageLoader(samples, **kwargs)
