"""Atomic checkpoint files and safe loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: loading never runs code from the file.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

#: The format the trainer writes. 2: mid-epoch state, scaler, RNG states, progress counters.
CHECKPOINT_FORMAT = 2
#: The checkpoint formats whose ``model`` / ``objective`` / ``config`` entries prediction,
#: evaluation and export read (1: before the mid-epoch state, no ``format`` key).
MODEL_FORMATS = (1, 2)


def _temp_prefix(name: str) -> str:
    return f".{name}."


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Removes the temporary files (``.NAME.*.tmp``) that a write killed before its rename left
    in ``folder`` (``name``: of that checkpoint only); returns them. Call it where no other
    process writes checkpoints into ``folder`` at the same time."""
    stale = sorted(Path(folder).glob(f"{_temp_prefix(name)}*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Writes ``obj`` to a temporary file beside ``path``, flushes it, then renames it over
    ``path``: a crash or kill leaves either the old file or the new one, never half of one.
    A temporary file of ``path`` left by an earlier killed write is removed first. The file
    gets the mode an ordinary new file gets (0666 less the umask), like the run's other files."""
    path = Path(path)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's files are 0600
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
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a tdsa_fast checkpoint: the file is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a tdsa_fast checkpoint: not a zip archive, the format torch.save writes "
                         "by default and tdsa_fast.train always (a file cut short is not one either)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the safe unpickler refused an object: say which, not a trace
        # torch's message goes on to suggest weights_only=False or an allowlist, which this loader never uses
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise ValueError(f"{path} is not a tdsa_fast checkpoint that loads safely: it holds objects other than "
                         f"tensors and plain containers ({why.split('. Please')[0]})") from e
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a tdsa_fast checkpoint: torch.load cannot read it ({first})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a tdsa_fast checkpoint (expected a dict with 'model' and 'config')")
    return ckpt
