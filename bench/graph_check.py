"""--cuda-graph on a device: trains the same few steps with the plain step and with the
replay-safe step (tdsa_fast.graph_step; captured in a CUDA graph on CUDA, uncaptured on the
CPU) from the same weights, on the same random batches, with the same mask seeds and an lr
change midway (a recapture), and reports the largest weight difference and the step times.

    python bench/graph_check.py --device cuda [--json OUT.json]
    python bench/graph_check.py --device cpu --tiny     # the dry run of bench/gpu_check.sh

Exit status 1 when a loss's weights differ beyond the tolerance (--rtol: cuDNN's
algorithms are deterministic here, but a graph replay is not bitwise the eager order
everywhere) or a step fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from tdsa_fast import train
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.sharding import step_seed
from tdsa_fast.graph_step import GraphStep


def _parts(args, loss: str, device: torch.device):
    cfg = resolve(build_parser().parse_args([
        "--dataset", "cub", "--data-root", ".", "--model", args.model, "--img-size", str(args.img_size),
        "--loss", loss, "--lr", "0.01", "--epochs", "4", *(["--stem", "standard"] if args.model == "resnet18" else [])]))
    torch.manual_seed(0)
    model = train.build_network(cfg, args.classes).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = train.build_objective(cfg, args.classes).to(device)
    optimizer, scheduler = train.build_optimizer(cfg, model, objective)
    return train.TrainingModule(model, objective), objective, optimizer, scheduler


def _run(args, loss: str, device: torch.device, graph: bool, batches):
    net, objective, optimizer, scheduler = _parts(args, loss, device)
    net.train()
    dtype = torch.bfloat16 if args.bf16 else None
    step = GraphStep(net, objective, optimizer, device, amp_dtype=dtype, capture=device.type == "cuda",
                     log=lambda *_: None) if graph else None
    generator = torch.Generator(device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    times = []
    for k, (images, labels) in enumerate(batches, 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        generator.manual_seed(step_seed(0, k, 0))
        if step is not None:
            sums += step.step(images, labels, generator)
        else:
            with torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False):
                loss_value, ce, scores = net(images, labels, generator)
            optimizer.zero_grad(set_to_none=True)
            (loss_value * 1.0).backward()
            optimizer.step()
            n = labels.shape[0]
            sums += torch.stack([loss_value.detach().double() * n, ce.detach().double() * n,
                                 (scores.detach().argmax(1) == labels).sum().double()])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if k == len(batches) // 2:
            scheduler.step()
            scheduler.step()  # the first milestone: lr x0.1 (the graph is captured again)
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items() if v.is_floating_point()}
    steady = times[len(batches) // 2 + 2:] or times[-1:]  # after the warmup and the recapture
    return state, sums.cpu(), statistics.median(steady) * 1e3, step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="64 px, batch 4, 8 steps (the CPU dry run)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--losses", nargs="+", default=["ce", "mc", "tdsa"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--classes", type=int, default=102)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the comparison then uses --rtol 1e-2)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rtol", type=float, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.img_size, args.batch, args.steps, args.classes = 64, 4, 8, 4
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rtol = args.rtol if args.rtol is not None else (1e-2 if args.bf16 else 1e-4)
    g = torch.Generator().manual_seed(123)
    batches = []
    for _ in range(args.steps):
        images = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batches.append((images, torch.randint(0, args.classes, (args.batch,), generator=g).to(device)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name} | torch {torch.__version__} | {args.model} {args.img_size} px, batch {args.batch}, "
          f"{args.steps} steps, {'bf16' if args.bf16 else 'fp32'}; {'captured' if device.type == 'cuda' else 'uncaptured'}")
    print(f"{'loss':<6} {'max |dw| / max |w|':>19} {'sums rel diff':>14} {'plain ms':>9} {'graph ms':>9} "
          f"{'speed-up':>9} {'captures':>9}")
    rows, ok = [], True
    for loss in args.losses:
        try:
            plain, plain_sums, plain_ms, _ = _run(args, loss, device, False, batches)
            graph, graph_sums, graph_ms, step = _run(args, loss, device, True, batches)
        except Exception as e:  # reported, and the next loss still runs
            print(f"{loss:<6} FAILED: {type(e).__name__}: {e}")
            rows.append(dict(loss=loss, error=f"{type(e).__name__}: {e}"))
            ok = False
            continue
        diff = max(((plain[k] - graph[k]).abs().max() / plain[k].abs().max().clamp_min(1e-12)).item()
                   for k in plain)
        sums_diff = ((plain_sums - graph_sums).abs() / plain_sums.abs().clamp_min(1e-12)).max().item()
        passed = diff <= rtol and sums_diff <= rtol and step.captures == 2
        ok &= passed
        rows.append(dict(loss=loss, weight_rel_diff=diff, sums_rel_diff=sums_diff, plain_ms=plain_ms,
                         graph_ms=graph_ms, speedup=plain_ms / graph_ms, captures=step.captures, passed=passed))
        print(f"{loss:<6} {diff:>19.2e} {sums_diff:>14.2e} {plain_ms:>9.2f} {graph_ms:>9.2f} "
              f"{plain_ms / graph_ms:>8.2f}x {step.captures:>9}{'' if passed else '  FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(card=name, torch=torch.__version__, args=vars(args), rtol=rtol, rows=rows), f, indent=2)
    print(f"graph check: {'PASS' if ok else 'FAIL'} (tolerance {rtol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
