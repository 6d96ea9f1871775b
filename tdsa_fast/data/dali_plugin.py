"""The project's DALI plugin: ``fn.tdsa_resample_window``, built on first use and cached.

DALI's own CPU resize is the slowest stage of the CPU pipeline (about 1 ms per 224 x 224
image; bench/RESULTS.md).  The plugin (sources in ``dali_ops/``) does the resize, the
released recipe's window crop, the flip and the normalisation in one pass per sample with
Pillow's fixed-point bilinear arithmetic.  It is a shared library linked against the
installed DALI, so it is compiled here, at run time, for that DALI: the first CPU DALI
pipeline of a machine compiles it (about 10 s) into the project's cache folder
(``$TDSA_FAST_CACHE``, default ``~/.cache/tdsa_fast``, as for the built-in data), keyed
by the DALI version, the compiler, the CPU it compiles for (``-march=native`` where the
compiler takes it) and the sources; later
pipelines and processes load the cached library.  A file lock makes concurrent processes
(torchrun ranks) wait for one build.

Needs a C++20 compiler (``$CXX``, default ``c++``) and the CUDA runtime headers that DALI's
headers include (``$CUDA_HOME/include``, else /usr/local/cuda/include).  When either is
missing or the build fails, :func:`load` logs why once and returns False, and the loader
uses DALI's resize and crop_mirror_normalize instead (also what the GPU pipeline uses).
``TDSA_FAST_DALI_PLUGIN=0`` turns the plugin off.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from tdsa_fast.data.synthetic import default_cache_dir

__all__ = ["PluginBuildError", "build", "enabled", "library_path", "load", "why_not_loaded"]

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent / "dali_ops"
_LIBRARY = "libtdsa_dali_ops.so"

_loaded: Optional[bool] = None  # this process's outcome of load()
_why_not: str = ""


class PluginBuildError(RuntimeError):
    """The plugin could not be compiled or loaded; the message says why."""


def enabled() -> bool:
    return os.environ.get("TDSA_FAST_DALI_PLUGIN", "1").strip().lower() not in ("0", "false", "no", "off")


def _cuda_include() -> Optional[str]:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in homes:
        if home and (Path(home) / "include" / "crt" / "host_config.h").exists():
            return str(Path(home) / "include")
    return None


@functools.lru_cache(maxsize=None)
def _native_target(cxx: str) -> tuple[list[str], str]:
    """``(["-march=native"], what it expands to)`` when the compiler takes it, else ``([], "")``.
    The plugin's loops are integer sums and one float expression, exact under any instruction
    set; compiled for this CPU they vectorise (bench/RESULTS.md).  The expansion (the CPU's
    model and features) goes into the cache key, so that a cache folder shared by machines
    with other CPUs never hands one of them a library it cannot run."""
    try:
        done = subprocess.run([cxx, "-march=native", "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return [], ""
    if done.returncode != 0:
        return [], ""
    # the target flags only (gcc: -march=znver4 -mavx512f ...; clang: -target-cpu znver4,
    # -target-feature +avx512f ...), not the run's temporary file names
    tokens = [t.strip('"') for t in done.stderr.split()]
    target = [t for i, t in enumerate(tokens)
              if t.startswith("-m") or (i and tokens[i - 1] in ("-target-cpu", "-target-feature"))]
    return ["-march=native"], " ".join(target)


def _compile_command(output: Path) -> list[str]:
    import nvidia.dali.sysconfig as sysconfig

    cuda = _cuda_include()
    if cuda is None:
        raise PluginBuildError("the CUDA runtime headers that DALI's headers include were not found "
                               "(set CUDA_HOME to a CUDA toolkit)")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise PluginBuildError(f"no C++ compiler ({cxx!r} is not on PATH; set CXX)")
    dali_lib = str(Path(sysconfig.get_lib_dir()))
    return [cxx, "-std=c++20", "-O3", *_native_target(cxx)[0], "-shared", "-fPIC", "-w",
            *sysconfig.get_compile_flags(), f"-I{cuda}",
            str(SOURCES / "resample_window_op.cc"), "-o", str(output), *sysconfig.get_link_flags(),
            f"-Wl,-rpath,{dali_lib}"]


def library_path() -> Path:
    """Where the library for this DALI, compiler and source version is (or will be) cached."""
    import nvidia.dali

    digest = hashlib.sha256()
    digest.update(nvidia.dali.__version__.encode())
    digest.update(os.environ.get("CXX", "c++").encode())
    digest.update(_native_target(os.environ.get("CXX", "c++"))[1].encode())
    for path in sorted(SOURCES.glob("*.[ch]*")):  # the operator and every header it includes
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return default_cache_dir() / f"dali_plugin-{nvidia.dali.__version__}-{digest.hexdigest()[:16]}" / _LIBRARY


def build() -> Path:
    """Compiles the plugin unless the cache has it; returns the library's path.  Raises
    :class:`PluginBuildError` with the compiler's message on failure."""
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it
        if path.exists():
            return path
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            command = _compile_command(Path(tmp))
            print(f"[tdsa_fast] compiling the DALI plugin (once per DALI version, about 10 s) into {path.parent} ...",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip()[-2000:]
                raise PluginBuildError(f"compiling {SOURCES / 'resample_window_op.cc'} failed:\n{tail}")
            os.replace(tmp, path)  # atomic: a half-written library is never seen
            print(f"[tdsa_fast] done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def load() -> bool:
    """Builds (if needed) and loads the plugin into DALI; True when ``fn.tdsa_resample_window``
    is available.  The outcome is kept for the process; a failure is logged once."""
    global _loaded, _why_not
    if not enabled():
        return False
    if _loaded is not None:
        return _loaded
    try:
        import nvidia.dali.plugin_manager as plugin_manager

        plugin_manager.load_library(str(build()))
        _loaded = True
    except Exception as e:  # a missing compiler or header, a DALI that rejects the library...
        _loaded, _why_not = False, f"{type(e).__name__}: {e}"
        log.warning("the tdsa_fast DALI plugin is not available, the CPU pipeline uses DALI's own "
                    "resize (slower): %s", _why_not)
    return _loaded


def why_not_loaded() -> str:
    """Why :func:`load` returned False ("" when it did not, or was not called)."""
    return _why_not
