"""Atomic checkpoint files and safe loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: loading never runs code from the file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Writes ``obj`` to a temporary file beside ``path``, flushes it, then renames it over
    ``path``: a crash or kill leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Loads a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # an unpicklable or foreign file: say so instead of a pickle trace
        raise ValueError(f"{path} is not a tdsa_fast checkpoint that loads safely: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a tdsa_fast checkpoint (expected a dict with 'model' and 'config')")
    return ckpt
