"""Static report on the CUDA kernels (csrc/cuda/*.cu), without a GPU.

Compiles every CUDA translation unit of the package with nvcc for the given
architectures (default sm_90 and sm_80) with ``-Xptxas -v``, disassembles the cubin with
cuobjdump (the one in the ``triton`` wheel's ``backends/nvidia/bin`` when the toolkit has
none) and reports per kernel:

* registers, spill stores / loads (bytes), stack frame, static shared memory (ptxas);
* dynamic shared memory at the paper's shapes and at 448 px inputs (56x56 middle maps),
  from the kernels' own scratch layout (a small host program compiled from the kernel
  headers, ``csrc/emulation/scratch_probe.cpp``), and the resulting resident blocks per SM
  (registers, shared memory, threads, the 32-block limit; 1 KiB reserved per block);
* scratch traffic: generic ``LD``/``ST`` (through a pointer the compiler cannot place)
  against shared ``LDS``/``STS``;
* the width of the global loads (``LDG``) in the load loops: innermost loops of the SASS
  (a backward branch and its target) that load from global memory and store to scratch.

Usage::

    python bench/cuda_static.py [--arch 90 80] [--dtype bf16] [--table] [--json PATH]

``--table`` prints a markdown table (bench/RESULTS.md). The module's ``analyse()`` is what
tests/test_cuda_static.py checks. The compile results are cached under
build/cuda_static/<hash of csrc>/.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
THREADS = 256  # the build's TDSA_CUDA_THREADS

# Per-SM limits used for the blocks-per-SM figure (CUDA programming guide, compute
# capabilities table): shared memory per SM usable by blocks, registers, threads, blocks.
SM_LIMITS = {
    "90": {"smem_per_sm": 228 * 1024, "smem_optin": 227 * 1024, "regs": 65536, "threads": 2048, "blocks": 32},
    "80": {"smem_per_sm": 164 * 1024, "smem_optin": 163 * 1024, "regs": 65536, "threads": 2048, "blocks": 32},
}
RESERVED_SMEM_PER_BLOCK = 1024

# The shapes of one group: the paper's (224 px: high 14x14, middle 28x28, xi = 3) and 448 px
# inputs (high 28x28, middle 56x56, xi up to 5). n = channels per class of the map.
SHAPES = {
    "paper": {"mc": dict(n=3, H=14, W=14), "tdsa": dict(n=9, xi=3, H=28, W=28, Hh=14, Wh=14),
              "gate": dict(xi=3, H=28, W=28, Hh=14, Wh=14)},
    "448": {"mc": dict(n=3, H=28, W=28), "tdsa": dict(n=15, xi=5, H=56, W=56, Hh=28, Wh=28),
            "gate": dict(xi=5, H=56, W=56, Hh=28, Wh=28)},
}

DTYPES = {"BFloat16": "bf16", "Half": "fp16", "float": "fp32", "double": "fp64"}
DTYPE_BYTES = {"bf16": (2, 4), "fp16": (2, 4), "fp32": (4, 4), "fp64": (8, 8)}  # storage, accumulation


class StaticCheckError(RuntimeError):
    """The analysis could not run (a tool missing, a compile failing, output not parsed)."""


def nvcc_path() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    if cand.exists():
        return str(cand)
    return shutil.which("nvcc")


def cuobjdump_path() -> str | None:
    nvcc = nvcc_path()
    if nvcc:
        cand = Path(nvcc).parent / "cuobjdump"
        if cand.exists():
            return str(cand)
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton  # noqa: PLC0415  (optional: only its bundled binaries are used)
    except ImportError:
        return None
    cand = Path(triton.__file__).resolve().parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(cand) if cand.exists() else None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise StaticCheckError(f"{' '.join(cmd[:3])} ... failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(CSRC.rglob("*")):
        if p.suffix in (".h", ".cuh", ".cpp", ".cu"):
            h.update(str(p.relative_to(CSRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _torch_includes() -> list[str]:
    from torch.utils import cpp_extension  # noqa: PLC0415  (heavy import, only when compiling)

    return [f"-I{p}" for p in cpp_extension.include_paths()]


def compile_unit(src: Path, arch: str, work: Path) -> tuple[str, str]:
    """(ptxas -v log, SASS text) of one .cu file for sm_<arch>, cached in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    log_p, sass_p = work / f"{src.stem}.sm{arch}.ptxas", work / f"{src.stem}.sm{arch}.sass"
    if log_p.exists() and sass_p.exists():
        return log_p.read_text(), sass_p.read_text()
    nvcc, objdump = nvcc_path(), cuobjdump_path()
    if nvcc is None or objdump is None:
        raise StaticCheckError(f"needs nvcc ({nvcc}) and cuobjdump ({objdump})")
    cubin = work / f"{src.stem}.sm{arch}.cubin"
    cmd = [nvcc, "-cubin", "-o", str(cubin), str(src), f"-I{CSRC}", *_torch_includes(), f"-arch=sm_{arch}",
           "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-DTDSA_FAST_WITH_CUDA=1"]
    log = _run(cmd).stderr
    sass = _run([objdump, "-sass", str(cubin)]).stdout
    log_p.write_text(log)
    sass_p.write_text(sass)
    return log, sass


@dataclasses.dataclass
class Kernel:
    mangled: str
    name: str = ""
    arch: str = ""
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    static_smem: int = 0
    generic_ld: int = 0
    generic_st: int = 0
    shared_ld: int = 0
    shared_st: int = 0
    load_loop_ldg: dict = dataclasses.field(default_factory=dict)  # width in bytes -> count
    dyn_smem: dict = dataclasses.field(default_factory=dict)  # shape set -> bytes
    blocks_per_sm: dict = dataclasses.field(default_factory=dict)

    @property
    def dtype(self) -> str:
        m = re.search(r"<(?:c10::)?(\w+),", self.name)
        return DTYPES.get(m.group(1), "?") if m else "?"

    @property
    def kind(self) -> str:
        """mc / tdsa / gate, with _fwd / _bwd."""
        args = self._args()
        if self.name.startswith("gate_kernel"):
            return "gate_" + ("bwd" if args[2] == "true" else "fwd")
        return ("tdsa_" if args[2] == "true" else "mc_") + ("bwd" if args[3] == "true" else "fwd")

    def _args(self) -> list[str]:
        if "<" not in self.name:
            return []
        inner = self.name[self.name.index("<") + 1: self.name.rindex(">")]
        return [a.strip() for a in inner.split(",")]

    @property
    def streamed(self) -> bool:
        """The StreamedGroup variant: a dense group too large to copy, read from global memory
        in every pass (its other scratch in shared memory)."""
        return any("StreamedGroup" in a for a in self._args())

    @property
    def global_scratch(self) -> bool:
        """The GlobalScratch fallback: its scratch is a global workspace, no dynamic shared memory."""
        return any("GlobalScratch" in a for a in self._args())

    @property
    def scratch_key(self) -> str:
        """The scratch probe's key of this kernel's layout (kind, plus _streamed)."""
        return self.kind + ("_streamed" if self.streamed else "")

    @property
    def fast_path(self) -> bool:
        """Scratch in shared memory and the dense (vector-load) layout; kernels without
        these template tags (older sources) count as fast path."""
        tags = " ".join(self._args()[4 if not self.name.startswith("gate_kernel") else 3:])
        if "Scratch" not in tags and "Group" not in tags:
            return True
        return "Shared" in tags and "Dense" in tags

    @property
    def short(self) -> str:
        args = self._args()
        if not args:
            return self.name
        args[0] = DTYPES.get(args[0].replace("c10::", ""), args[0])
        args = [re.sub(r"tdsa_fast::cuda::(kernels::)?", "", a) for a in args[:1] + args[2:]]
        return f"{self.name.split('<')[0]}<{','.join(args)}>"


def _demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if filt is None:
        raise StaticCheckError("needs c++filt (binutils) to name the kernels")
    out = _run([filt], input="\n".join(names)).stdout.splitlines()
    res = {}
    for m, d in zip(names, out):
        d = re.sub(r"\(.*\)$", "", d)  # drop the parameter list
        d = re.sub(r"^void ", "", d)
        res[m] = re.sub(r"^tdsa_fast::cuda::kernels::", "", d)
    return res


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str, arch: str) -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {}
    cur = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = kernels.setdefault(m.group(1), Kernel(m.group(1), arch=arch))
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = (int(g) for g in m.groups())
        m = _USED.search(line)
        if m:
            cur.registers = int(m.group(1))
            cur.static_smem = int(m.group(2) or 0)
    if not kernels:
        raise StaticCheckError("no entry function in the ptxas report")
    return kernels


_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def _split_sass(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    cur = None
    for line in sass.splitlines():
        if "Function :" in line:
            cur = funcs.setdefault(line.split("Function :")[1].strip(), [])
            continue
        if cur is None:
            continue
        m = _INSN.search(line)
        if m:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def _ldg_width(op: str) -> int:
    parts = op.split(".")
    for p, w in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if p in parts:
            return w
    return 4


def _is_generic(op: str, kind: str) -> bool:
    base = op.split(".")[0]
    return base == kind  # LD / ST exactly (LDG, LDS, LDL, LDC are other spaces)


def analyse_sass(insns: list[tuple[int, str, str]], k: Kernel) -> None:
    for _, op, _ in insns:
        base = op.split(".")[0]
        k.generic_ld += _is_generic(op, "LD")
        k.generic_st += _is_generic(op, "ST")
        k.shared_ld += base == "LDS"
        k.shared_st += base == "STS"
    loops = []
    for addr, op, args in insns:
        if op.split(".")[0] == "BRA":
            m = re.search(r"0x([0-9a-f]+)", args)
            if m and int(m.group(1), 16) <= addr:
                loops.append((int(m.group(1), 16), addr))
    innermost = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    for lo, hi in innermost:
        body = [op for addr, op, _ in insns if lo <= addr <= hi]
        stores_scratch = any(op.split(".")[0] in ("STS", "ST") for op in body)
        ldg = [op for op in body if op.split(".")[0] == "LDG"]
        if stores_scratch and ldg:
            for op in ldg:
                w = _ldg_width(op)
                k.load_loop_ldg[w] = k.load_loop_ldg.get(w, 0) + 1


def _probe_scratch(work: Path) -> dict:
    """Scratch bytes per group of each kernel kind and dtype at SHAPES, from the kernels'
    headers (older sources, whose layout counted accumulation-type elements, are not
    supported: their figures are in bench/RESULTS.md)."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "scratch_probe.json"
    if out.exists():
        return json.loads(out.read_text())
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise StaticCheckError("needs a C++ compiler for the scratch probe")
    exe = work / "scratch_probe"
    _run([cxx, "-std=c++17", "-O1", f"-I{CSRC}", "-o", str(exe), str(CSRC / "emulation" / "scratch_probe.cpp"),
          "-pthread"])
    res = {}
    for arch, lim in SM_LIMITS.items():
        for shape_set, kinds in SHAPES.items():
            for kind, s in kinds.items():
                for dtype, (ss, acc) in DTYPE_BYTES.items():
                    argv = [str(exe), kind] + [str(s.get(f, 1)) for f in ("n", "xi", "H", "W", "Hh", "Wh")]
                    argv += [str(ss), str(acc), str(lim["smem_optin"]), str(lim["smem_per_sm"])]
                    for line in _run(argv).stdout.splitlines():
                        key, val = line.split()
                        res[f"{arch}:{shape_set}:{key}:{dtype}"] = int(val)
    out.write_text(json.dumps(res))
    return res


def _blocks_per_sm(k: Kernel, dyn: int) -> int:
    lim = SM_LIMITS[k.arch]
    warps = THREADS // 32
    regs_per_warp = -(-max(k.registers, 1) * 32 // 256) * 256
    by_regs = lim["regs"] // (regs_per_warp * warps)
    smem = k.static_smem + dyn
    if smem > lim["smem_optin"]:
        return 0  # does not fit: the global-memory fallback
    by_smem = lim["smem_per_sm"] // (smem + RESERVED_SMEM_PER_BLOCK)
    return min(by_regs, by_smem, lim["threads"] // THREADS, lim["blocks"])


def kernels_of(src: Path, arch: str, work: Path) -> list[Kernel]:
    """The kernels of one .cu file for sm_<arch>: ptxas figures and SASS counts."""
    if arch not in SM_LIMITS:
        raise ValueError(f"arch: one of {sorted(SM_LIMITS)}, got {arch!r}")
    log, sass = compile_unit(src, arch, work)
    kernels = parse_ptxas(log, arch)
    funcs = _split_sass(sass)
    names = _demangle(list(kernels))
    for mangled, k in kernels.items():
        k.name = names[mangled]
        if mangled not in funcs:
            raise StaticCheckError(f"{mangled} has no SASS in {src.name} for sm_{arch}")
        analyse_sass(funcs[mangled], k)
    return list(kernels.values())


def analyse(archs=("90", "80")) -> list[Kernel]:
    """Every kernel of csrc/cuda/*.cu for each architecture, analysed, with its dynamic
    shared memory and blocks per SM at SHAPES."""
    work = REPO / "build" / "cuda_static" / _source_hash()
    scratch = _probe_scratch(work)
    result = []
    for arch in archs:
        for src in sorted((CSRC / "cuda").glob("*.cu")):
            for k in kernels_of(src, arch, work):
                for shape_set in SHAPES:
                    dyn = 0 if k.global_scratch else scratch[f"{arch}:{shape_set}:{k.scratch_key}:{k.dtype}"]
                    k.dyn_smem[shape_set] = dyn
                    k.blocks_per_sm[shape_set] = _blocks_per_sm(k, dyn)
                result.append(k)
    return result


def _fmt_widths(w: dict) -> str:
    return " ".join(f"{b}B×{n}" for b, n in sorted(w.items(), reverse=True)) or "-"


def table(kernels: list[Kernel]) -> str:
    head = ("| kernel | sm | regs | spill st/ld B | static smem B | dyn smem paper / 448 KB | blocks/SM paper / 448 |"
            " generic LD/ST | LDS/STS | LDG in load loops |")
    rows = [head, "|" + "---|" * 10]
    for k in kernels:
        rows.append(
            f"| `{k.short}` | {k.arch} | {k.registers} | {k.spill_stores}/{k.spill_loads} | {k.static_smem} | "
            f"{k.dyn_smem['paper'] / 1024:.1f} / {k.dyn_smem['448'] / 1024:.1f} | "
            f"{k.blocks_per_sm['paper']} / {k.blocks_per_sm['448']} | {k.generic_ld}/{k.generic_st} | "
            f"{k.shared_ld}/{k.shared_st} | {_fmt_widths(k.load_loop_ldg)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["90", "80"], choices=sorted(SM_LIMITS), help="compute capabilities")
    ap.add_argument("--dtype", nargs="+", default=None, choices=sorted(DTYPES.values()),
                    help="only the kernels of these storage dtypes (default: all)")
    ap.add_argument("--table", action="store_true", help="print a markdown table")
    ap.add_argument("--json", type=Path, default=None, help="write the per-kernel figures as JSON")
    args = ap.parse_args(argv)
    try:
        kernels = analyse(tuple(args.arch))
    except StaticCheckError as e:
        print(f"cuda_static: {e}", file=sys.stderr)
        return 1
    if args.dtype:
        kernels = [k for k in kernels if k.dtype in args.dtype]
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(k) | {"short": k.short} for k in kernels], indent=1))
    if args.table:
        print(table(kernels))
    else:
        for k in kernels:
            print(f"sm_{k.arch} {k.short}: {k.registers} regs, spill {k.spill_stores}/{k.spill_loads} B, "
                  f"generic {k.generic_ld}/{k.generic_st}, shared {k.shared_ld}/{k.shared_st}, "
                  f"load-loop LDG {_fmt_widths(k.load_loop_ldg)}, blocks/SM {k.blocks_per_sm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
