"""Static checks of the CUDA kernels without a GPU (bench/cuda_static.py).

nvcc compiles csrc/cuda/*.cu for sm_90 and sm_80 with ``-Xptxas -v``; the SASS is read with
cuobjdump. Every kernel must run without register spills; the fast-path kernels (scratch
in shared memory, dense groups) must access their scratch with LDS/STS only (no generic
LD/ST), load their groups with 16-byte vector loads and no scalar 2-byte load in a load
loop, and fit the paper's shapes with at least 2 resident blocks per SM; the streamed
kernels (a dense group too large to copy, read from global memory) keep the rest of their
scratch in shared memory, and at 448 px no dense group takes the global-memory fallback.

Skipped, with the reason, where nvcc is absent; where nvcc is present but the analysis
cannot run (no cuobjdump, a compile error), it fails under CI=true and skips otherwise.
The first run compiles every kernel (a few minutes on 2 cores); results are cached under
build/cuda_static/<hash of csrc>/.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "cuda_static" / "bad_kernel.cu"
ARCHS = ("90", "80")


def _load_tool():
    spec = importlib.util.spec_from_file_location("cuda_static", REPO / "bench" / "cuda_static.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cuda_static"] = mod
    spec.loader.exec_module(mod)
    return mod


cs = _load_tool()


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: nvcc is present but the static check cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def kernels():
    if cs.nvcc_path() is None:
        pytest.skip("no nvcc (set CUDA_HOME): the static check needs the CUDA compiler")
    try:
        return cs.analyse(ARCHS)
    except cs.StaticCheckError as e:
        _unavailable(str(e))


def _fast(kernels, arch):
    sel = [k for k in kernels if k.arch == arch and k.fast_path]
    assert sel, f"no fast-path kernel for sm_{arch}"
    return sel


@pytest.mark.parametrize("arch", ARCHS)
def test_no_register_spills(kernels, arch):
    bad = [(k.short, k.spill_stores, k.spill_loads, k.stack) for k in kernels
           if k.arch == arch and (k.spill_stores or k.spill_loads or k.stack)]
    assert not bad, f"sm_{arch}: kernels with spills / stack (name, stores, loads, stack bytes): {bad}"


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_scratch_is_shared_memory(kernels, arch):
    for k in _fast(kernels, arch):
        assert k.generic_ld == 0 and k.generic_st == 0, (k.short, k.generic_ld, k.generic_st)
        assert k.shared_ld > 0 and k.shared_st > 0, k.short


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_kernels_keep_their_scratch_in_shared_memory(kernels, arch):
    """The StreamedGroup kernels read the group from global memory; everything else is
    shared-memory scratch (LDS/STS, no generic LD/ST)."""
    sel = [k for k in kernels if k.arch == arch and k.streamed]
    assert len(sel) == 16, [k.short for k in sel]  # mc / tdsa x fwd / bwd x 4 dtypes
    for k in sel:
        assert k.generic_ld == 0 and k.generic_st == 0, (k.short, k.generic_ld, k.generic_st)
        assert k.shared_ld > 0 and k.shared_st > 0, k.short


@pytest.mark.parametrize("arch", ARCHS)
def test_448_px_dense_groups_never_take_the_global_fallback(kernels, arch):
    """The host's plan for a dense group (terms_kernels.cu): the copy into shared memory
    when it fits, else the streamed group. At 448 px one of the two fits every dtype (fp64
    included) on sm_90 and sm_80: none takes the global-memory fallback."""
    by = {(k.dtype, k.kind, k.streamed): k for k in kernels
          if k.arch == arch and k.name.startswith("terms_kernel") and "Shared" in k.short
          and ("Dense" in k.short or k.streamed)}
    for dtype in ("bf16", "fp16", "fp32", "fp64"):
        for kind in ("mc_fwd", "mc_bwd", "tdsa_fwd", "tdsa_bwd"):
            copied, streamed = by[(dtype, kind, False)], by[(dtype, kind, True)]
            chosen = copied if copied.blocks_per_sm["448"] >= 1 else streamed
            assert chosen.blocks_per_sm["448"] >= 1, (arch, dtype, kind, copied.dyn_smem, streamed.dyn_smem)
            assert streamed.dyn_smem["448"] < copied.dyn_smem["448"], (arch, dtype, kind)
    # fp32's gated kernels are the case: their copy does not fit sm_90's 227 KB at 448 px
    assert by[("fp32", "tdsa_bwd", False)].blocks_per_sm["448"] == 0
    assert by[("fp32", "tdsa_bwd", True)].blocks_per_sm["448"] >= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_load_loops_are_vector_loads(kernels, arch):
    for k in _fast(kernels, arch):
        assert k.load_loop_ldg.get(16, 0) > 0, (k.short, k.load_loop_ldg)
        assert k.load_loop_ldg.get(2, 0) == 0 and k.load_loop_ldg.get(1, 0) == 0, (k.short, k.load_loop_ldg)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_occupancy_at_the_paper_shape(kernels, arch):
    for k in _fast(kernels, arch):
        if k.dtype == "fp64" and arch == "80":
            continue  # fp64 (gradcheck only) gated groups get 1 block in sm_80's 164 KB
        assert k.blocks_per_sm["paper"] >= 2, (k.short, k.registers, k.dyn_smem, k.blocks_per_sm)
        # 448 px in half precision: shared memory, not the global fallback, on sm_90 (227 KB
        # opt-in) and on sm_80 (163 KB: the xi=5 gated backward takes 154 KB with 2-byte winners)
        if k.dtype in ("bf16", "fp16"):
            assert k.blocks_per_sm["448"] >= 1, (k.short, k.dyn_smem, k.blocks_per_sm)


def test_the_checks_catch_a_bad_kernel(tmp_path):
    """The counts are not vacuous: a kernel with a generic scratch pointer, scalar 2-byte
    loads into it and a stack array shows all three."""
    if cs.nvcc_path() is None:
        pytest.skip("no nvcc (set CUDA_HOME)")
    try:
        (k,) = cs.kernels_of(FIXTURE, "90", tmp_path)
    except cs.StaticCheckError as e:
        _unavailable(str(e))
    assert k.name == "bad_kernel" and k.fast_path
    assert k.generic_st > 0 and k.generic_ld > 0
    assert k.load_loop_ldg.get(2, 0) > 0
    assert k.stack > 0 or k.spill_stores > 0


SASS = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;
        /*0020*/                   STS [R3], R2 ;
        /*0030*/              @P0 BRA 0x10 ;
        /*0040*/                   LDG.E.128 R8, desc[UR4][R4.64] ;
        /*0050*/                   LD.E R9, desc[UR4][R6.64] ;
        /*0060*/                   ST.E desc[UR4][R6.64], R9 ;
        /*0070*/                   LDS.64 R10, [R3] ;
        /*0080*/                   EXIT ;
"""


@pytest.mark.parametrize(
    "op, width", [("LDG.E.U16", 2), ("LDG.E.S8", 1), ("LDG.E", 4), ("LDG.E.64.CONSTANT", 8), ("LDG.E.128", 16)])
def test_load_width(op, width):
    assert cs._ldg_width(op) == width


def test_sass_counts_on_a_hand_written_listing():
    (insns,) = cs._split_sass(SASS).values()
    k = cs.Kernel("k", name="k")
    cs.analyse_sass(insns, k)
    assert (k.generic_ld, k.generic_st, k.shared_ld, k.shared_st) == (1, 1, 1, 1)
    assert k.load_loop_ldg == {2: 1}  # the 128-bit load is outside the loop


def test_ptxas_report_parsing():
    log = ("ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
           "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 80 registers, used 1 barriers, 32 bytes smem\n")
    (k,) = cs.parse_ptxas(log, "90").values()
    assert (k.stack, k.spill_stores, k.spill_loads, k.registers, k.static_smem) == (8, 4, 12, 80, 32)


def test_main_table(kernels, capsys):
    assert cs.main(["--arch", "90", "--dtype", "bf16", "--table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| kernel |") and "terms_kernel<bf16,true,true,SharedScratch,DenseGroup>" in out


def test_main_rejects_an_unknown_arch(capsys):
    with pytest.raises(SystemExit):
        cs.main(["--arch", "70"])


def test_the_gpu_models_blocks_per_sm_are_the_static_figures(kernels):
    """bench/gpu_predict.py's last-wave stretch uses the sm_90 bf16 fast-path kernels'
    resident blocks per SM at the paper shape: they must be this tool's figures."""
    spec = importlib.util.spec_from_file_location("gpu_predict", REPO / "bench" / "gpu_predict.py")
    gp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gp)
    seen = {}
    for k in _fast(kernels, "90"):
        if k.dtype == "bf16" and k.kind in gp.BLOCKS_PER_SM:
            seen[k.kind] = k.blocks_per_sm["paper"]
    assert seen == gp.BLOCKS_PER_SM
