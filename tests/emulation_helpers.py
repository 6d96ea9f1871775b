"""The CPU emulation of the CUDA execution model (csrc/emulation/cuda_emulation.h), shared by
tests/test_ops_cuda.py and tests/test_cuda_emulation.py: the module's build, and the strict
runner that repeats a launch under several schedules and scratch fills and requires the same
bits from each (the kernels are deterministic, so any difference is a shared-memory race, a
missing barrier or a read of scratch that was never written).

The module is compiled on first use with torch.utils.cpp_extension.load (a few minutes on 2
busy cores, cached under build/cuda_emulation/ keyed by a hash of csrc/), with the kernels'
real block size (256 threads: kThreads is not overridden).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"

# (schedule, seed, fill): thread order with NaN bytes; reverse order with seeded random
# bytes; a seeded random interleaving with other random bytes.
STRICT_RUNS = ((0, 0, 0xFF), (1, 1, -1), (2, 2, -1))
# The emulation's defaults: forward schedule, NaN bytes, an H200-like device (132 SMs, the
# 227 KB opt-in of sm_90, 2 resident blocks of a fallback kernel per SM).
DEFAULTS = dict(schedule=0, seed=0, fill=0xFF, sms=132, optin=232448, occupancy=2)


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(CSRC.rglob("*")):
        if p.suffix in (".h", ".cuh", ".cpp", ".cu"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def load_emulation():
    if os.environ.get("TDSA_FAST_SKIP_CUDA_EMULATION") == "1":
        pytest.skip("TDSA_FAST_SKIP_CUDA_EMULATION=1")
    from torch.utils import cpp_extension

    tag = source_hash()
    build = REPO / "build" / "cuda_emulation" / tag
    build.mkdir(parents=True, exist_ok=True)
    mod = cpp_extension.load(
        name=f"tdsa_fast_cuda_emulation_{tag}",
        sources=[str(CSRC / "emulation" / "emulated_kernels.cpp")],
        extra_include_paths=[str(CSRC)],
        extra_cflags=["-O2", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-Wno-psabi"],
        build_directory=str(build),
        with_cuda=False,
        verbose=False,
    )
    mod.configure(**DEFAULTS)
    return mod


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.contiguous(), b.contiguous()
    ia = a.view(torch.int16 if a.element_size() == 2 else torch.int32 if a.element_size() == 4 else torch.int64)
    ib = b.view(ia.dtype)
    return torch.equal(ia, ib)


class ScheduleDependent(AssertionError):
    """The results changed with the schedule or the fill of fresh scratch."""


def strict(emu, fn, *args, runs=STRICT_RUNS, **kwargs):
    """fn(*args, **kwargs) under every (schedule, seed, fill) of `runs`; returns the first
    run's result after checking that every run gave the same bits (ScheduleDependent if not).
    Restores the forward schedule and NaN fill after (the device settings are kept)."""
    first = None
    try:
        for k, (schedule, seed, fill) in enumerate(runs):
            emu.configure(schedule=schedule, seed=seed, fill=fill)
            out = fn(*args, **kwargs)
            if first is None:
                first = out
                continue
            for i, (a, b) in enumerate(zip(_flat(first), _flat(out))):
                if not _same_bits(a, b):
                    raise ScheduleDependent(
                        f"output {i} differs between run 0 {runs[0]} and run {k} {runs[k]} "
                        "((schedule, seed, fill)): a race, a missing barrier or a read of unwritten scratch")
    finally:
        emu.configure(schedule=0, seed=0, fill=0xFF)
    return first
