"""tdsa_fast: fast fine-grained visual classification with the TDSA and Mutual-Channel losses."""
from tdsa_fast import functional
from tdsa_fast._backend import fused_available

__version__ = "0.1.0"


def build_info() -> dict:
    """What this installation can run: the compiled kernels per device, and the torch it runs on."""
    import torch

    return {
        "version": __version__,
        "torch": torch.__version__,
        "fused_cpu": fused_available("cpu"),
        "fused_cuda": fused_available("cuda"),
    }


__all__ = ["functional", "build_info", "fused_available", "__version__"]
