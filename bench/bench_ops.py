"""Benchmarks of the fused MC / TDSA terms against the eager reference and
``torch.compile(reference)``, measured in the same run.

Cases (docs/method.md paper shapes: S = 200 classes, xi = 3, upsample "nearest"):

* ``mc_terms``   high level  [B, 600, 14, 14], cnum 3
* ``tdsa_terms`` middle level [B, 1800, 28, 28] gated by the high level [B, 600, 14, 14], cnum 9
* ``tdsa_loss``  both together (mc_terms(high) + tdsa_terms(middle, high)): the loss terms of one
  training step, the case of the targets (fused >= 5x eager, >= 2x compiled, fwd+bwd, CPU B=4)

Phases: ``fwd`` (no grad), ``bwd`` (backward only, from a fresh forward per round),
``fwdbwd`` (forward + backward). Implementations: ``fused`` (tdsa_fast.functional with
backend="fused"), ``eager`` (tdsa_fast.reference), ``compiled`` (torch.compile of the reference).

Two ways to run:

* pytest-benchmark: ``python -m pytest bench/bench_ops.py`` (options in bench/conftest.py:
  ``--bench-device cpu|cuda|all``, ``--bench-smoke``); the summary prints the ratios and the
  bytes saved for backward. CI smoke: ``python -m pytest bench/bench_ops.py --bench-smoke
  --benchmark-disable -q`` (tiny shapes, every code path once).
* table: ``python bench/bench_ops.py --table [--device cuda] [--dtype bf16] [--batch 32 64]
  [--json results.json]`` (used by bench/gpu_check.sh); on CUDA it also reports the peak memory
  of the loss and the achieved GB/s of tdsa_terms against the memory-traffic floor (docs/kernels.md)
  (read F_l and F_h twice, write dF_l and dF_h once) and a measured device-to-device copy bandwidth.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
try:  # the installed package (pip install . / -e .), which has the compiled kernels
    import tdsa_fast  # noqa: F401
except ImportError:  # a bare checkout: the reference still runs
    sys.path.insert(0, str(REPO))

from tdsa_fast import functional as TF  # noqa: E402
from tdsa_fast import reference  # noqa: E402

CASES = ("mc_terms", "tdsa_terms", "tdsa_loss")
PHASES = ("fwd", "bwd", "fwdbwd")
IMPLS = ("fused", "eager", "compiled")
S, CNUM_HIGH, XI = 200, 3, 3
CNUM_MIDDLE = CNUM_HIGH * XI
MODE = "nearest"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shapes(smoke: bool):
    """(classes, high HxW, middle HxW): the paper's middle / high levels, or tiny ones."""
    return (4, (4, 4), (8, 8)) if smoke else (S, (14, 14), (28, 28))


def make_inputs(batch: int, device: str, dtype: torch.dtype, smoke: bool = False, seed: int = 0) -> dict:
    """Post-ReLU feature maps (as the backbone's BN+ReLU outputs), shared masks, weights."""
    s, (hh, wh), (hl, wl) = shapes(smoke)
    gen = torch.Generator().manual_seed(seed)
    high = torch.randn(batch, s * CNUM_HIGH, hh, wh, generator=gen).clamp_min(0)
    middle = torch.randn(batch, s * CNUM_MIDDLE, hl, wl, generator=gen).clamp_min(0)
    return {
        "middle": middle.to(device=device, dtype=dtype),
        "high": high.to(device=device, dtype=dtype),
        "mask_middle": TF.channel_mask(1, s, CNUM_MIDDLE, generator=gen).to(device),
        "mask_high": TF.channel_mask(1, s, CNUM_HIGH, generator=gen).to(device),
        "w": torch.randn(4, batch, s, generator=gen).to(device),
    }


def _weighted(w, *terms):
    return sum((t * w[k]).sum() for k, t in enumerate(terms))


def _loss_fused(case):
    def mc(x):
        return _weighted(x["w"], *TF.mc_terms(x["high"], x["mask_high"], CNUM_HIGH, backend="fused"))

    def td(x):
        return _weighted(x["w"], *TF.tdsa_terms(x["middle"], x["high"], x["mask_middle"], CNUM_MIDDLE, mode=MODE, backend="fused"))

    return {"mc_terms": mc, "tdsa_terms": td, "tdsa_loss": lambda x: mc(x) + td(x)}[case]


def _loss_ref(case):
    def mc(middle, high, mask_middle, mask_high, w):
        return _weighted(w, *reference.mc_terms(high, mask_high, CNUM_HIGH))

    def td(middle, high, mask_middle, mask_high, w):
        return _weighted(w, *reference.tdsa_terms(middle, high, mask_middle, CNUM_MIDDLE, MODE))

    def both(middle, high, mask_middle, mask_high, w):
        return mc(middle, high, mask_middle, mask_high, w) + td(middle, high, mask_middle, mask_high, w)

    return {"mc_terms": mc, "tdsa_terms": td, "tdsa_loss": both}[case]


_COMPILED: dict = {}


def loss_fn(case: str, impl: str):
    """x (the dict of make_inputs) -> scalar loss, for one implementation."""
    if impl == "fused":
        return _loss_fused(case)
    fn = _loss_ref(case)
    if impl == "compiled":
        if case not in _COMPILED:
            _COMPILED[case] = torch.compile(fn)
        fn = _COMPILED[case]
    return lambda x: fn(x["middle"], x["high"], x["mask_middle"], x["mask_high"], x["w"])


def differentiable(x: dict, case: str) -> list[torch.Tensor]:
    return [x["high"]] if case == "mc_terms" else [x["middle"], x["high"]]


def fresh(x: dict, case: str, grad: bool) -> dict:
    """A shallow copy of x whose feature maps are new leaves (requires_grad as asked)."""
    y = dict(x)
    for k in ("middle", "high"):
        y[k] = x[k].detach().requires_grad_(grad and (k == "high" or case != "mc_terms"))
    return y


def phase_callables(case: str, impl: str, x: dict):
    """(setup, run) for each phase: setup() -> args for run(*args)."""
    fn = loss_fn(case, impl)

    def fwd_setup():
        return (fresh(x, case, False),)

    def fwd_run(y):
        with torch.no_grad():
            return fn(y)

    def bwd_setup():
        y = fresh(x, case, True)
        return (fn(y),)

    def bwd_run(loss):
        loss.backward()

    def fb_setup():
        return (fresh(x, case, True),)

    def fb_run(y):
        fn(y).backward()

    return {"fwd": (fwd_setup, fwd_run), "bwd": (bwd_setup, bwd_run), "fwdbwd": (fb_setup, fb_run)}


def saved_bytes(case: str, impl: str, x: dict) -> dict:
    """Bytes the autograd graph of one forward keeps for backward: all saved tensors, and
    those that are not the inputs themselves (the memory the loss adds to the step)."""
    y = fresh(x, case, True)
    inputs = {t.data_ptr() for t in (y["middle"], y["high"], y["mask_middle"], y["mask_high"], y["w"])}
    seen: dict = {}

    def pack(t):
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(case, impl)(y)
    del loss
    total = sum(seen.values())
    extra = sum(v for k, v in seen.items() if k[0] not in inputs)
    return {"saved_bytes": total, "saved_bytes_beyond_inputs": extra}


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(setup, run, device: str) -> float:
    """Seconds of one run(*setup()) (setup not timed): CUDA events on a GPU, else the wall clock."""
    args = setup()
    _sync(device)
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(*args)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    run(*args)
    return time.perf_counter() - t0


def time_phase(setup, run, device: str, rounds: int, warmup: int = 2) -> float:
    """Median seconds of run(*setup()) (setup not timed)."""
    times = [_timed(setup, run, device) for _ in range(warmup + rounds)]
    return statistics.median(times[warmup:])


def kernel_ms(setup, run, device: str, iters: int = 5):
    """CUDA: GPU milliseconds per call from the profiler's kernel records over ``iters`` calls,
    ``(every kernel, the project's kernels only: names in the tdsa_fast namespace)``; launch
    gaps and host time left out, unlike :func:`time_phase`.  None when the profiler gives no
    kernel record, or fails (its error printed)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    calls = [setup() for _ in range(iters)]
    _sync(device)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for args in calls:
                run(*args)
            _sync(device)
        kernels = [a for a in prof.key_averages() if getattr(a, "device_type", None) == DeviceType.CUDA]
    except Exception as e:  # a profiler that cannot run here must not cost the benchmark
        print(f"kernel times unavailable: {type(e).__name__}: {e}", flush=True)
        return None
    if not kernels:
        return None
    total = sum(a.self_device_time_total for a in kernels) / iters / 1e3
    ours = sum(a.self_device_time_total for a in kernels if "tdsa_fast" in a.key) / iters / 1e3  # mangled or not
    return total, ours


def peak_memory(case: str, impl: str, x: dict) -> int:
    """CUDA: peak bytes allocated by one forward + backward of the loss, above the inputs."""
    setup, run = phase_callables(case, impl, x)["fwdbwd"]
    args = setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    t = time_phase(lambda: (), lambda: b.copy_(a), device, rounds=10, warmup=3)
    return 2 * nbytes / t


def traffic_floor(x: dict) -> int:
    """The traffic floor (docs/kernels.md): tdsa_terms fwd + bwd reads F_l and F_h twice and writes dF_l and dF_h once."""
    fl = x["middle"].numel() * x["middle"].element_size()
    fh = x["high"].numel() * x["high"].element_size()
    return 2 * (fl + fh) + (fl + fh)


def time_interleaved(calls: dict, device: str, rounds: int, warmup: int = 2) -> dict:
    """calls: name -> (setup, run). Median seconds of each, measured in interleaved rounds
    (one run of every implementation per round), so that load from other processes on a
    shared machine hits all of them alike and the ratios stay meaningful."""
    times: dict = {k: [] for k in calls}
    for i in range(warmup + rounds):
        for name, (setup, run) in calls.items():
            dt = _timed(setup, run, device)
            if i >= warmup:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def table(device: str, dtype: torch.dtype, batches: list[int], rounds: int, smoke: bool, impls=IMPLS,
          compiled_cases=CASES, compiled_phases=PHASES) -> dict:
    """Times every (case, phase, impl); torch.compile(reference) only for compiled_cases x
    compiled_phases (its compilation dominates short runs)."""
    results = {"device": device, "dtype": str(dtype).replace("torch.", ""), "rows": [], "torch": torch.__version__,
               "rounds": rounds, "statistic": "median of interleaved rounds"}
    if device.startswith("cuda"):
        results["card"] = torch.cuda.get_device_name()
        results["copy_GBps"] = copy_bandwidth(device, 1 << 26 if smoke else 1 << 30) / 1e9
    else:
        results["threads"] = torch.get_num_threads()
    for batch in batches:
        x = make_inputs(batch, device, dtype, smoke)
        for case in CASES:
            row = {"case": case, "batch": batch}
            use = [i for i in impls if i != "compiled" or case in compiled_cases]
            per_impl = {impl: phase_callables(case, impl, x) for impl in use}
            for phase in PHASES:
                calls = {impl: per_impl[impl][phase] for impl in use if impl != "compiled" or phase in compiled_phases}
                for impl, t in time_interleaved(calls, device, rounds).items():
                    row[f"{impl}_{phase}_ms"] = 1e3 * t
            if device.startswith("cuda"):
                for phase in PHASES:
                    got = kernel_ms(*per_impl["fused"][phase], device)
                    if got is not None:
                        row[f"fused_{phase}_all_kernels_ms"], row[f"fused_{phase}_kernels_ms"] = got
            for impl in use:
                row.update({f"{impl}_{k}": v for k, v in saved_bytes(case, impl, x).items()})
                if device.startswith("cuda"):
                    row[f"{impl}_peak_bytes"] = peak_memory(case, impl, x)
            for phase in PHASES:
                for other in ("eager", "compiled"):
                    if f"{other}_{phase}_ms" in row:
                        row[f"{phase}_vs_{other}"] = row[f"{other}_{phase}_ms"] / row[f"fused_{phase}_ms"]
            if device.startswith("cuda") and case == "tdsa_terms":
                floor = traffic_floor(x)
                row["floor_bytes"] = floor
                row["fused_fwdbwd_GBps"] = floor / (row["fused_fwdbwd_ms"] / 1e3) / 1e9
                row["fraction_of_copy_bw"] = row["fused_fwdbwd_GBps"] / results["copy_GBps"]
                if row.get("fused_fwdbwd_kernels_ms"):  # the kernels alone, without launch gaps
                    row["kernels_fwdbwd_GBps"] = floor / (row["fused_fwdbwd_kernels_ms"] / 1e3) / 1e9
                    row["kernels_fraction_of_copy_bw"] = row["kernels_fwdbwd_GBps"] / results["copy_GBps"]
            results["rows"].append(row)
            print(format_row(row, impls), flush=True)
    return results


def format_row(row: dict, impls=IMPLS) -> str:
    parts = [f"{row['case']:<11} B={row['batch']:<3}"]
    for phase in PHASES:
        times = " ".join(
            f"{impl[:5]} {row[f'{impl}_{phase}_ms']:8.2f}" if f"{impl}_{phase}_ms" in row else f"{impl[:5]} {'-':>8}"
            for impl in impls
        )
        ratios = " ".join(f"x{row[f'{phase}_vs_{o}']:.2f} vs {o}" for o in ("eager", "compiled") if f"{phase}_vs_{o}" in row)
        parts.append(f"  {phase:<6} ms: {times} | {ratios}")
    parts.append(
        "  saved for backward (MB, beyond inputs): "
        + " ".join(f"{impl} {row[f'{impl}_saved_bytes_beyond_inputs'] / 2**20:.1f}" for impl in impls
                   if f"{impl}_saved_bytes_beyond_inputs" in row)
    )
    if "fused_peak_bytes" in row:
        parts.append("  peak memory of the loss (MB): " + " ".join(
            f"{impl} {row[f'{impl}_peak_bytes'] / 2**20:.1f}" for impl in impls if f"{impl}_peak_bytes" in row))
    if "fused_fwdbwd_GBps" in row:
        parts.append(
            f"  tdsa_terms fwd+bwd: {row['fused_fwdbwd_GBps']:.0f} GB/s over the traffic floor "
            f"({row['floor_bytes'] / 2**20:.0f} MB) = {100 * row['fraction_of_copy_bw']:.0f}% of copy bandwidth"
        )
    if "kernels_fwdbwd_GBps" in row:
        parts.append(f"  the kernels alone (profiler): {row['kernels_fwdbwd_GBps']:.0f} GB/s = "
                     f"{100 * row['kernels_fraction_of_copy_bw']:.0f}% of copy bandwidth")
    kernel_times = [f"{phase} {row[f'fused_{phase}_kernels_ms']:.4f} ({row[f'fused_{phase}_all_kernels_ms']:.4f})"
                    for phase in PHASES if f"fused_{phase}_kernels_ms" in row]
    if kernel_times:
        parts.append("  fused, GPU ms of the project's kernels (of every kernel): " + ", ".join(kernel_times))
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="store_true", help="run the table mode (default when run as a script)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: 4 on CPU, 32 64 on CUDA")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round")
    ap.add_argument("--no-compiled", action="store_true", help="skip torch.compile(reference)")
    ap.add_argument("--compiled-cases", nargs="+", default=list(CASES), choices=CASES,
                    help="cases to run torch.compile(reference) for (default: all)")
    ap.add_argument("--compiled-phases", nargs="+", default=list(PHASES), choices=PHASES,
                    help="phases to run torch.compile(reference) for (default: all)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    batches = args.batch or ([32, 64] if cuda else [4])
    rounds = 1 if args.smoke else args.rounds
    impls = tuple(i for i in IMPLS if not (args.no_compiled and i == "compiled"))
    from tdsa_fast import _backend

    if not _backend.fused_available(args.device, "tdsa_terms"):
        print(f"the fused kernels are not built for {args.device}", file=sys.stderr)
        return 2
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)")
          + f", dtype {dtype}, torch {torch.__version__}", flush=True)
    res = table(args.device, dtype, batches, rounds, args.smoke, impls, args.compiled_cases, args.compiled_phases)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


# ---- pytest-benchmark --------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - table mode only
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("impl", IMPLS)
    @pytest.mark.parametrize("phase", PHASES)
    @pytest.mark.parametrize("case", CASES)
    def test_bench(benchmark, bench_setting, case, phase, impl):
        device, dtype, batch, smoke = bench_setting
        from tdsa_fast import _backend

        if impl == "fused" and not _backend.fused_available(device, case.replace("tdsa_loss", "tdsa_terms")):
            pytest.skip(f"the fused kernels are not built for {device}")
        x = make_inputs(batch, device, dtype, smoke)
        setup, run = phase_callables(case, impl, x)[phase]
        benchmark.group = f"{case} {phase} {device} B={batch} {str(dtype).replace('torch.', '')}"
        benchmark.extra_info.update({"case": case, "phase": phase, "impl": impl, "device": device, "batch": batch})
        if phase == "fwdbwd":
            benchmark.extra_info.update(saved_bytes(case, impl, x))
        for _ in range(2):  # warm-up (and compilation) outside the measurement
            run(*setup())

        def timed(*args):
            run(*args)
            _sync(device)

        def setup_synced():
            a = setup()
            _sync(device)
            return a, {}

        benchmark.pedantic(timed, setup=setup_synced, rounds=1 if smoke else 7, iterations=1)


if __name__ == "__main__":
    sys.exit(main())
