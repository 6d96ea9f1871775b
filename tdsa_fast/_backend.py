"""Which implementation of the ops runs: the PyTorch reference or the compiled kernels."""
from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "reference", "fused")


@functools.lru_cache(maxsize=None)
def _load_library() -> bool:
    """Imports the compiled extension if it was built; True when it registered the ops."""
    try:
        from tdsa_fast import _C  # noqa: F401  (registers torch.ops.tdsa_fast.*)
    except ImportError:
        return False
    from tdsa_fast import _ops  # noqa: F401  (their fake and autograd registrations)

    return hasattr(torch.ops, "tdsa_fast") and hasattr(torch.ops.tdsa_fast, "mc_terms")


@functools.lru_cache(maxsize=None)
def _has_kernel(op: str, dispatch_key: str) -> bool:
    if not _load_library():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsa_fast::{op}", dispatch_key)


@torch.compiler.assume_constant_result
def _kernel_registered(op: str, device_type: str) -> bool:
    """Constant for torch.compile (dynamo cannot trace the dispatcher query itself)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and _has_kernel(op, key)


def fused_available(device: torch.device | str, op: str = "mc_terms") -> bool:
    """True when the compiled kernel of ``op`` is registered for ``device``'s type."""
    return _kernel_registered(op, torch.device(device).type)


def resolve(backend: str, device: torch.device, op: str) -> str:
    """Maps ``backend`` to "reference" or "fused" for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "reference":
        return "reference"
    available = fused_available(device, op)
    if backend == "fused" and not available:
        raise RuntimeError(
            f"backend='fused': the tdsa_fast kernels are not built for {torch.device(device).type} "
            f"(op {op}); build them with `pip install .` from the repository, or use backend='auto' "
            "to fall back to the PyTorch reference"
        )
    return "fused" if available else "reference"
