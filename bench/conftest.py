"""pytest options and the summary of bench/bench_ops.py.

Options:
  --bench-device cpu|cuda|all   where to run (default cpu; "all" adds cuda when visible)
  --bench-dtype fp32|bf16|fp16  storage dtype (default: fp32 on CPU, bf16 on CUDA)
  --bench-batch N [N ...]       batch sizes (default: 4 on CPU, 32 and 64 on CUDA)
  --bench-smoke                 tiny shapes, one round: checks that every path runs (CI)

The terminal summary prints, per case / phase / device / batch, the median times of the
three implementations with the ratios fused vs eager and fused vs compiled, and the bytes
the autograd graph saves for backward (beyond the inputs themselves).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def pytest_addoption(parser):
    group = parser.getgroup("tdsa_fast benchmarks")
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda", "all"))
    group.addoption("--bench-dtype", default=None, choices=("fp32", "bf16", "fp16"))
    group.addoption("--bench-batch", type=int, nargs="+", default=None)
    group.addoption("--bench-smoke", action="store_true", default=False)


def pytest_generate_tests(metafunc):
    if "bench_setting" not in metafunc.fixturenames:
        return
    from bench_ops import DTYPES

    cfg = metafunc.config
    want = cfg.getoption("--bench-device")
    devices = ["cpu"] if want in ("cpu", "all") else []
    if want in ("cuda", "all"):
        devices.append("cuda")
    smoke = cfg.getoption("--bench-smoke")
    params, ids = [], []
    for dev in devices:
        dtype = DTYPES[cfg.getoption("--bench-dtype") or ("bf16" if dev == "cuda" else "fp32")]
        batches = cfg.getoption("--bench-batch") or ([2] if smoke else ([32, 64] if dev == "cuda" else [4]))
        for b in batches:
            marks = []
            if dev == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason="no CUDA device visible"))
            params.append(pytest.param((dev, dtype, b, smoke), marks=marks))
            ids.append(f"{dev}-B{b}-{str(dtype).replace('torch.', '')}")
    metafunc.parametrize("bench_setting", params, ids=ids)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = list(getattr(session, "benchmarks", []) or [])
    if not benches:
        return
    rows: dict = {}
    saved: dict = {}
    for b in benches:
        info = b.extra_info
        if not info or b.stats is None:
            continue
        key = (info["case"], info["device"], info["batch"])
        rows.setdefault(key, {})[(info["phase"], info["impl"])] = b.stats.median
        if "saved_bytes_beyond_inputs" in info:
            saved.setdefault(key, {})[info["impl"]] = info["saved_bytes_beyond_inputs"]
    if not rows:
        return
    tr = terminalreporter
    tr.section("tdsa_fast: fused vs eager reference vs torch.compile(reference) (median ms)")
    tr.write_line(f"{'case':<11} {'device':<5} {'B':>3} {'phase':<7} {'fused':>9} {'eager':>9} {'compiled':>9} {'vs eager':>9} {'vs compiled':>12}")
    for key in sorted(rows):
        for phase in ("fwd", "bwd", "fwdbwd"):
            t = {impl: rows[key].get((phase, impl)) for impl in ("fused", "eager", "compiled")}
            if t["fused"] is None:
                continue
            cells = " ".join(f"{1e3 * v:9.2f}" if v is not None else f"{'-':>9}" for v in t.values())
            r_e = f"x{t['eager'] / t['fused']:.2f}" if t["eager"] else "-"
            r_c = f"x{t['compiled'] / t['fused']:.2f}" if t["compiled"] else "-"
            tr.write_line(f"{key[0]:<11} {key[1]:<5} {key[2]:>3} {phase:<7} {cells} {r_e:>9} {r_c:>12}")
        if key in saved:
            s = saved[key]
            tr.write_line(
                f"{'':<11} saved for backward beyond the inputs (MB): "
                + ", ".join(f"{impl} {s[impl] / 2**20:.2f}" for impl in ("fused", "eager", "compiled") if impl in s)
            )
