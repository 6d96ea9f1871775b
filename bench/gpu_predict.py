"""Predicted GPU time of the fused kernels (no GPU needed), and its check against a
measured bench/bench_ops.py --json run.

The model, per kernel launch at the benchmark's shapes (bench/bench_ops.py: S = 200 classes,
high [B, 600, 14, 14] with cnum 3, middle [B, 1800, 28, 28] with cnum 9 and xi = 3, nearest):

* memory: the bytes the kernel must move (each input read once, each output written once;
  the kernels load every group once into shared memory, so this is also what they move)
  over the bandwidth: T_mem, the floor;
* special functions: the MUFU operations (expf: one MUFU.EX2; the sigmoid: an expf and a
  reciprocal, one MUFU.EX2 and one MUFU.RCP) per element, counted from the kernels' source
  (MUFU_PER_ELEMENT below, with the loops they come from), over the SFU rate of the card:
  T_sfu;
* waves: the groups over the resident blocks (SMs x blocks per SM at the paper shape, from
  bench/cuda_static.py's sm_90 bf16 fast-path figures, BLOCKS_PER_SM below): the last
  wave's idle SMs stretch both times by waves / ceil(waves).

A block loads its group, then computes, then (backward) stores: within one block the
memory and the special-function work do not overlap; across the 3-4 resident blocks of an
SM they can. Hence a range: ``best`` = max(T_mem, T_sfu) (full overlap), ``worst`` =
T_mem + T_sfu (none); the fraction of the floor is T_mem over each. Not modelled: the
instruction issue of the integer / FMA work (no dynamic instruction count without a GPU),
launch overhead (a few microseconds per launch), autograd's own work (the fused ops' outputs
and zero-filled gradients are tiny). The GPU run's measured / predicted ratio is the check
of the model: ``--compare`` prints it (bench/gpu_check.sh runs it after the benchmarks).

Assumptions (H200 SXM): 4.3 TB/s (the device-to-device copy bandwidth measured on the H200
test machine, as issue 14 states it; ``--compare`` also predicts with the run's own measured
copy bandwidth), 132 SMs, 1.98 GHz boost clock, 16 MUFU results per clock per SM (CUDA C++
Programming Guide, arithmetic instruction throughput, compute capability 9.0).

Usage::

    python bench/gpu_predict.py [--batch 32 64] [--table [--measured MEASURED.json]] [--json PATH]
    python bench/gpu_predict.py --compare MEASURED.json [--json PATH] [--tolerance 1.5] [--report-only]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

S, CNUM_HIGH, XI = 200, 3, 3
HIGH_HW, MIDDLE_HW = 14 * 14, 28 * 28
CNUM_MIDDLE = CNUM_HIGH * XI
STORAGE_BYTES = 2  # bf16
ACC_BYTES = 4      # the float g, h, grad_g, grad_h and the float mask

H200 = {"bandwidth": 4.3e12, "sms": 132, "clock": 1.98e9, "mufu_per_clk_sm": 16}

# MUFU operations per element of the kernel's map (middle map for tdsa, high map for mc),
# from csrc/cuda/terms_kernels.cuh, at the paper shape, where the plan keeps exp(x - max) in
# shared memory (p.cache_exp, kernels::terms_cache_exp; bench/cuda_static.py's dyn smem):
#   mc fwd : the per-channel exp sum (1); the per-position softmax values read it back    = 1
#   mc bwd : the exp sum again (the backward saves nothing but the op's inputs); the
#            per-position, dot and dxval passes read it back                              = 1
#   tdsa   : as mc, plus the gate: one sigmoid (2 MUFU) per gate pixel, ch = n / xi gate
#            planes per n channels: 2 / xi per element, in the forward and again in the
#            backward (it recomputes the gate)
# (Without the kept exp, as at 448 px: 2 fwd and 4 bwd per element, plus the gate's.)
MUFU_PER_ELEMENT = {
    "mc_fwd": 1.0,
    "mc_bwd": 1.0,
    "tdsa_fwd": 1.0 + 2.0 / XI,
    "tdsa_bwd": 1.0 + 2.0 / XI,
}
# Resident 256-thread blocks per SM at the paper shape: bench/cuda_static.py --arch 90
# --dtype bf16 --table, the SharedScratch / DenseGroup kernels (bench/RESULTS.md).
BLOCKS_PER_SM = {"mc_fwd": 4, "mc_bwd": 4, "tdsa_fwd": 3, "tdsa_bwd": 3}

CASES = ("mc_terms", "tdsa_terms", "tdsa_loss")
PHASES = ("fwd", "bwd", "fwdbwd")


def kernel_launches(case: str, phase: str) -> list[str]:
    kinds = {"mc_terms": ["mc"], "tdsa_terms": ["tdsa"], "tdsa_loss": ["mc", "tdsa"]}[case]
    dirs = {"fwd": ["fwd"], "bwd": ["bwd"], "fwdbwd": ["fwd", "bwd"]}[phase]
    return [f"{k}_{d}" for k in kinds for d in dirs]


def kernel_bytes(kernel: str, batch: int) -> int:
    """Bytes a launch must move: inputs read once, outputs written once."""
    fh = batch * S * CNUM_HIGH * HIGH_HW * STORAGE_BYTES
    fl = batch * S * CNUM_MIDDLE * MIDDLE_HW * STORAGE_BYTES
    gh = batch * S * ACC_BYTES  # one of g, h, grad_g, grad_h
    kind, d = kernel.split("_")
    mask = S * (CNUM_HIGH if kind == "mc" else CNUM_MIDDLE) * ACC_BYTES  # a shared [1, C] float mask
    maps = fh if kind == "mc" else fl + fh
    if d == "fwd":
        return maps + mask + 2 * gh
    return 2 * maps + mask + 2 * gh  # read the maps and grad_g / grad_h, write the maps' gradients


def kernel_elements(kernel: str, batch: int) -> int:
    kind = kernel.split("_")[0]
    return batch * S * (CNUM_HIGH * HIGH_HW if kind == "mc" else CNUM_MIDDLE * MIDDLE_HW)


def predict_kernel(kernel: str, batch: int, dev: dict = H200) -> dict:
    groups = batch * S
    resident = dev["sms"] * BLOCKS_PER_SM[kernel]
    waves = groups / resident
    stretch = math.ceil(waves) / waves
    t_mem = kernel_bytes(kernel, batch) / dev["bandwidth"]
    mufu = kernel_elements(kernel, batch) * MUFU_PER_ELEMENT[kernel]
    t_sfu = mufu / (dev["sms"] * dev["mufu_per_clk_sm"] * dev["clock"])
    return {"kernel": kernel, "batch": batch, "bytes": kernel_bytes(kernel, batch), "mufu": mufu,
            "groups": groups, "waves": waves, "floor_ms": 1e3 * t_mem, "sfu_ms": 1e3 * t_sfu * stretch,
            "best_ms": 1e3 * max(t_mem, t_sfu) * stretch, "worst_ms": 1e3 * (t_mem + t_sfu) * stretch}


def predict(case: str, phase: str, batch: int, dev: dict = H200) -> dict:
    ks = [predict_kernel(k, batch, dev) for k in kernel_launches(case, phase)]
    row = {"case": case, "phase": phase, "batch": batch, "kernels": [k["kernel"] for k in ks]}
    for f in ("bytes", "floor_ms", "sfu_ms", "best_ms", "worst_ms"):
        row[f] = sum(k[f] for k in ks)
    row["best_fraction_of_floor"] = row["floor_ms"] / row["best_ms"]
    row["worst_fraction_of_floor"] = row["floor_ms"] / row["worst_ms"]
    return row


def table_rows(batches, dev: dict = H200) -> list[dict]:
    rows = [predict_kernel(k, b, dev) for b in batches for k in ("mc_fwd", "mc_bwd", "tdsa_fwd", "tdsa_bwd")]
    return rows


def markdown(batches, dev: dict = H200, measured: dict | None = None) -> str:
    """The kernel table and the op table; the op table's measured columns come from a
    bench_ops.py --json run (`measured`), else read "pending"."""
    got = {}
    for m in (measured or {}).get("rows", []):
        for phase in PHASES:
            if f"fused_{phase}_ms" in m:
                got[(m["case"], phase, m["batch"])] = m[f"fused_{phase}_ms"]
    out = ["| kernel | B | MB moved | floor ms | SFU ms | predicted ms (overlap .. none) | % of floor |",
           "|---|---|---|---|---|---|---|"]
    for r in table_rows(batches, dev):
        out.append(f"| `{r['kernel']}` | {r['batch']} | {r['bytes'] / 1e6:.1f} | {r['floor_ms']:.4f} | "
                   f"{r['sfu_ms']:.4f} | {r['best_ms']:.4f} .. {r['worst_ms']:.4f} | "
                   f"{100 * r['floor_ms'] / r['best_ms']:.0f} .. {100 * r['floor_ms'] / r['worst_ms']:.0f} |")
    out += ["", "| op, phase | B | floor ms | predicted ms (overlap .. none) | predicted % of floor | "
            "measured ms | measured % of floor |", "|---|---|---|---|---|---|---|"]
    for b in batches:
        for case in CASES:
            for phase in PHASES:
                r = predict(case, phase, b, dev)
                t = got.get((case, phase, b))
                meas = f"{t:.4f} | {100 * r['floor_ms'] / t:.0f}" if t else "pending | pending"
                out.append(f"| `{case}` {phase} | {b} | {r['floor_ms']:.4f} | {r['best_ms']:.4f} .. {r['worst_ms']:.4f} | "
                           f"{100 * r['best_fraction_of_floor']:.0f} .. {100 * r['worst_fraction_of_floor']:.0f} | {meas} |")
    return "\n".join(out)


def compare(measured: dict, tolerance: float) -> tuple[list[dict], bool]:
    """Measured fused times (bench_ops.py --json) against the prediction, with the 4.3 TB/s
    assumption and with the run's own copy bandwidth. ok: every measured time within
    `tolerance` x the worst-case prediction (at the run's bandwidth)."""
    dev_run = dict(H200, bandwidth=measured.get("copy_GBps", H200["bandwidth"] / 1e9) * 1e9)
    rows, ok = [], True
    for m in measured["rows"]:
        for phase in PHASES:
            # the project's kernels alone (bench_ops.py's profiler times) when there, as the model
            # counts; else the whole call (dispatch and every launch included)
            key = f"fused_{phase}_kernels_ms" if m.get(f"fused_{phase}_kernels_ms") else f"fused_{phase}_ms"
            if key not in m or m["case"] not in CASES:
                continue
            p = predict(m["case"], phase, m["batch"])
            q = predict(m["case"], phase, m["batch"], dev_run)
            r = {"case": m["case"], "phase": phase, "batch": m["batch"], "measured_ms": m[key],
                 "measured": "kernels" if key.endswith("_kernels_ms") else "call",
                 "predicted_best_ms": p["best_ms"], "predicted_worst_ms": p["worst_ms"],
                 "floor_ms": p["floor_ms"], "measured_fraction_of_floor": p["floor_ms"] / m[key],
                 "run_bandwidth_best_ms": q["best_ms"], "run_bandwidth_worst_ms": q["worst_ms"],
                 "measured_over_worst": m[key] / q["worst_ms"]}
            r["within"] = r["measured_over_worst"] <= tolerance
            ok = ok and r["within"]
            rows.append(r)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--table", action="store_true", help="print the markdown tables (bench/RESULTS.md)")
    ap.add_argument("--compare", type=Path, default=None, help="a bench_ops.py --json result to check")
    ap.add_argument("--tolerance", type=float, default=1.5,
                    help="--compare fails when a measured time exceeds this x the worst-case prediction")
    ap.add_argument("--measured", type=Path, default=None,
                    help="--table: fill the measured columns from a bench_ops.py --json result")
    ap.add_argument("--report-only", action="store_true", help="--compare: exit 0 whatever the check says")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.compare is not None:
        measured = json.loads(a.compare.read_text())
        rows, ok = compare(measured, a.tolerance)
        print(f"card: {measured.get('card')} | copy bandwidth {measured.get('copy_GBps', float('nan')):.0f} GB/s "
              f"| prediction at 4.3 TB/s and at the run's copy bandwidth")
        print(f"{'case':<11} {'phase':<7} {'B':>3} {'measured ms':>12} {'what':>8} {'predicted ms':>18} "
              f"{'run-bw ms':>18} {'% floor':>8} {'meas/worst':>11}")
        for r in rows:
            print(f"{r['case']:<11} {r['phase']:<7} {r['batch']:>3} {r['measured_ms']:>12.4f} {r['measured']:>8} "
                  f"{r['predicted_best_ms']:>8.4f}..{r['predicted_worst_ms']:<8.4f} "
                  f"{r['run_bandwidth_best_ms']:>8.4f}..{r['run_bandwidth_worst_ms']:<8.4f} "
                  f"{100 * r['measured_fraction_of_floor']:>7.0f}% {r['measured_over_worst']:>10.2f}"
                  f"{'' if r['within'] else '  SLOWER THAN THE MODEL'}")
        print(f"prediction check: {'PASS' if ok else 'FAIL'} (tolerance {a.tolerance} x the worst case)")
        if a.json:
            a.json.write_text(json.dumps({"rows": rows, "ok": ok, "tolerance": a.tolerance}, indent=1))
        return 0 if ok or a.report_only else 1
    if a.table:
        print(markdown(a.batch, measured=json.loads(a.measured.read_text()) if a.measured else None))
    if a.json:
        a.json.write_text(json.dumps({"device": H200, "mufu_per_element": MUFU_PER_ELEMENT,
                                      "blocks_per_sm": BLOCKS_PER_SM, "kernels": table_rows(a.batch),
                                      "ops": [predict(c, p, b) for b in a.batch for c in CASES for p in PHASES]},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
