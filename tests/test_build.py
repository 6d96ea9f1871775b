"""The build of the compiled kernels: what setup.py built is registered, and the CMake
build (CMakeLists.txt, for C++ users) produces a working library too.

The CMake test needs CMake >= 3.27 (``pip install cmake``; Debian's 3.25 cannot parse
torch's CUDA20 dialect) and takes one to two and a half minutes on 2 cores (it compiles
everything, the CUDA kernels for one architecture when a toolkit is found); it is marked
``slow``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdsa_fast import _backend

REPO = Path(__file__).resolve().parent.parent
from tdsa_fast._ops import DATA_OPS, OPS  # noqa: E402  (the schemas of csrc/ops.cpp)
BUILT = _backend._load_library()


def _info() -> dict:
    from tdsa_fast import _ops

    return _ops.build_info()


@pytest.mark.skipif(not BUILT, reason="tdsa_fast._C is not built")
def test_cpu_kernels_are_registered():
    info = _info()
    assert info["compiled"] and "CPU" in info["kernels"], info
    for op in OPS + DATA_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsa_fast::{op}", "CPU"), op
    assert info["cpu_kernels"] in ("DEFAULT", "AVX2", "AVX512")
    assert info["openmp"] is True, "the CPU ops must be compiled with -fopenmp (at::parallel_for)"


def test_cmake_lists_every_source_setup_py_builds():
    """setup.py globs csrc/cpu and csrc/cuda; CMakeLists.txt names its sources, so a new file
    must be added there too (the slow CMake test then checks its ops' kernels)."""
    text = (REPO / "CMakeLists.txt").read_text()
    named = set(re.findall(r"csrc/[\w/]+\.(?:cpp|cu)", text))
    sources = {f"csrc/{p.relative_to(REPO / 'csrc').as_posix()}" for sub in ("cpu", "cuda")
               for p in (REPO / "csrc" / sub).iterdir() if p.suffix in (".cpp", ".cu")}
    assert sources and sources <= named, sorted(sources - named)


def _cuda_build() -> bool:
    return BUILT and bool(_info().get("cuda"))


@pytest.mark.skipif(not BUILT, reason="tdsa_fast._C is not built")
def test_cuda_kernels_are_registered_when_the_build_had_cuda():
    info = _info()
    if not info["cuda"]:
        home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        if (os.environ.get("CI") and torch.version.cuda and os.path.exists(os.path.join(home, "bin", "nvcc"))
                and not os.environ.get("TDSA_FAST_CPU_ONLY")):
            pytest.fail(f"CI builds with nvcc at {home} and a CUDA torch, but the build has no CUDA kernels "
                        f"(build_info: {info}): the CUDA sources were dropped", pytrace=False)
        pytest.skip(f"this build has no CUDA kernels (build_info: {info})")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tdsa_fast::{op}", "CUDA"), op
    assert info["cuda_arch_list"], info
    assert "CUDA" in info["kernels"]


def _cmake() -> tuple[str | None, str]:
    exe = shutil.which("cmake")
    if exe is None:
        return None, "cmake is not installed (pip install 'cmake>=3.27')"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < (3, 27):
        return None, f"cmake >= 3.27 is needed (torch's CUDA20 dialect), found {out.splitlines()[0] if out else '?'}"
    return exe, ""


def _cuda_args() -> list[str]:
    """The docs/toolchain.md flags for torch's CMake config on a CUDA build of torch."""
    if torch.version.cuda is None:
        return ["-DTDSA_FAST_WITH_CUDA=OFF"]
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = Path(home) / "bin" / "nvcc"
    if not nvcc.exists():
        pytest.skip(f"torch is a CUDA build, whose CMake config needs a CUDA toolkit; no {nvcc}")
    args = [f"-DCUDA_TOOLKIT_ROOT_DIR={home}", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    site = Path(torch.__file__).resolve().parent.parent
    for lib in sorted(site.glob("nvidia/cu*/lib/libnvrtc.so.*")) + sorted(site.glob("nvidia/cuda_nvrtc/lib/libnvrtc.so.*")):
        args.append(f"-DCUDA_nvrtc_LIBRARY={lib}")
        break
    return args


@pytest.mark.slow
def test_cmake_build(tmp_path):
    exe, why = _cmake()
    if exe is None:
        pytest.skip(why)
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TDSA_FAST_TEST_CMAKE_ARCH", "9.0"))
    configure = [exe, "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"]
    configure += _cuda_args()
    res = subprocess.run(configure, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    res = subprocess.run([exe, "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    libs = list(build.glob("libtdsa_fast_ops.*"))
    mods = list(build.glob("_C.*"))
    assert libs and mods, sorted(p.name for p in build.iterdir())
    # A fresh process (the ops library must not meet tdsa_fast._C, which registers the same
    # TORCH_LIBRARY): load the C++ library, run the ops against the reference, and import
    # the CMake-built Python module.
    code = (
        "import sys, torch\n"
        f"torch.ops.load_library({str(libs[0])!r})\n"
        "from tdsa_fast import reference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "middle = torch.rand(2, 18, 7, 6, generator=g, requires_grad=True)\n"
        "high = torch.randn(2, 6, 3, 4, generator=g)\n"
        "m = torch.ones(1, 18)\n"
        "a = torch.ops.tdsa_fast.tdsa_terms(middle, high, m, 9, 'bilinear')\n"
        "b = reference.tdsa_terms(middle, high, m, 9, 'bilinear')\n"
        "assert all(((x - y).norm() / y.norm()).item() < 1e-5 for x, y in zip(a, b))\n"
        "gl, gh = torch.ops.tdsa_fast.tdsa_terms_backward(torch.ones(2, 2), torch.ones(2, 2), middle.detach(), high, m, 9, 'bilinear')\n"
        "rl, = torch.autograd.grad(b[0].sum() + b[1].sum(), middle)\n"
        "assert ((gl - rl).norm() / rl.norm()).item() < 1e-5\n"
        f"missing = [op for op in {list(OPS + DATA_OPS)!r} if not torch._C._dispatch_has_kernel_for_dispatch_key("
        "'tdsa_fast::' + op, 'CPU')]\n"
        "assert not missing, missing\n"
        "cuda = torch._C._dispatch_has_kernel_for_dispatch_key('tdsa_fast::tdsa_terms', 'CUDA')\n"
        f"sys.path.insert(0, {str(build)!r})\n"
        "import _C\n"
        "info = _C.build_info()\n"
        "assert info['build_system'] == 'cmake' and info['cuda'] == cuda, info\n"
        "print('ok', info)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
