"""tdsa_fast: fast fine-grained visual classification with the TDSA and Mutual-Channel losses."""
from tdsa_fast import functional
from tdsa_fast._backend import fused_available

__version__ = "0.1.0"


def build_info() -> dict:
    """What this installation can run: how the compiled kernels were built (``compiled``,
    ``cuda``, ``cuda_arch_list``, ``kernels`` registered per device, ...; see
    :func:`tdsa_fast._ops.build_info`), whether they are usable here, and the torch it runs on."""
    import torch

    try:
        from tdsa_fast import _ops

        info = _ops.build_info()
    except ImportError as e:  # the package without its compiled library
        info = {"compiled": False, "error": str(e)}
    info.update(version=__version__, torch=torch.__version__,
                fused_cpu=fused_available("cpu"), fused_cuda=fused_available("cuda"))
    return info


def __getattr__(name: str):
    """``tdsa_fast.Predictor``, imported on first use (it loads the models and losses)."""
    if name == "Predictor":
        from tdsa_fast.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'tdsa_fast' has no attribute {name!r}")


__all__ = ["functional", "build_info", "fused_available", "Predictor", "__version__"]
