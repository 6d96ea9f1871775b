"""``python -m tdsa_fast.experiments SPEC.yaml``: run a grid of training runs and write tables
shaped like the paper's, with the paper's number beside each measured one.

A spec (YAML, read with ``yaml.safe_load``; relative paths are relative to the spec file)::

    table: IV                      # the paper table the results are paired with (II..VIII), or null
    output: ../runs/table4         # the root of the run folders and of tables.md / results.csv
    data_roots:                    # per dataset, its --data-root (not needed for "default")
      flowers: ../../shared/data/flowers102
    base:                          # trainer options for every run (names as in --help, "-" or "_")
      model: resnet18
      img_size: 112
      epochs: 18
    grid:                          # the cartesian product of these lists, in this order
      dataset: [flowers]
      loss: [ce, mc, tdsa-noattn, tdsa]
      seed: [0]

``base`` and ``grid`` values are as in a ``--config`` file (``loss_args: {margin: 0.3}`` for a
baseline's hyper-parameters); every run's options pass the trainer's checks before the first
run starts.

Each run trains in a subprocess (``python -m tdsa_fast.train``) into
``output/<name>`` (the name lists the grid values), logging to ``train.log`` there.

Resuming: a run whose folder holds ``results.json`` is finished and skipped, so the grid
can be stopped at any point (Ctrl-C, or SIGTERM to the runner) and the same command continues where it stopped. A
run that was interrupted mid-training (Ctrl-C or SIGTERM: the trainer saves a checkpoint
at the step it is in) continues from that step with ``python -m tdsa_fast.train --resume``;
one that cannot (no checkpoint, or the spec now gives it other options) is started again
from scratch, its partial folder kept as ``<name>.interrupted-<k>``. A run that failed (non-zero exit) leaves
``FAILED`` with the exit code and the log's tail in its folder; the runner goes on with
the others, exits with 1 at the end, and retries failed runs only with ``--retry-failed``.
A second runner on the same grid is refused while the first is alive (``output/.grid.lock``).

``--parallel N`` trains N runs at once, each in its own trainer process with its own folder
and log, resumable as above; a run that fails frees its slot for the next.  With GPUs visible
(``CUDA_VISIBLE_DEVICES``, else all that torch counts) run slot ``k`` sees GPU
``k mod (number of GPUs)`` alone: N runs share one card, or spread over several.

Tables (``tables.md``, also ``--tables-only``): one row per method (Tables II-IV), ξ
(V-VI) or upsampling mode (VII-VIII), one column per dataset; each cell
``final test accuracy % (paper %)``, averaged over seeds with the range when there are
several. ``results.csv`` lists every finished run.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tdsa_fast._checks import int_at_least

from tdsa_fast.config import OPTION_NAMES, config_from_options, options_from_mapping, saved_run
from tdsa_fast.config import trainer_argv as options_argv
from tdsa_fast.loss_specs import LOSSES

__all__ = ["Spec", "RunPlan", "load_spec", "plan_runs", "run_grid", "visible_gpus", "write_tables", "main"]

SPEC_KEYS = ("table", "output", "data_roots", "base", "grid", "description")
TABLES = ("II", "III", "IV", "V", "VI", "VII", "VIII")
ROW_KEY = {"II": "loss", "III": "loss", "IV": "loss", "V": "xi", "VI": "xi", "VII": "upsample", "VIII": "upsample"}
METHOD = {name: spec.label for name, spec in LOSSES.items()}  # the row labels of the paper's tables
BACKBONE = {"vgg16": "VGG16", "resnet18": "ResNet18", "resnet50": "ResNet50"}
DATASET_COLUMN = {"cub": "CUB-200-2011", "aircraft": "FGVC-Aircraft", "cars": "Stanford Cars",
                  "flowers": "Flowers-102"}
UNNAMED_COLUMN = "dataset not stated"  # Tables VII and VIII
PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.csv"
# Options the runner sets itself.
RESERVED = ("output", "data_root")


@dataclass(frozen=True)
class Spec:
    path: Path
    table: str | None
    output: Path
    data_roots: dict
    base: dict
    grid: dict


@dataclass(frozen=True)
class RunPlan:
    name: str
    options: dict  # trainer option -> value (dest names)
    folder: Path


def _norm_key(key) -> str:
    return str(key).replace("-", "_")


def load_spec(path) -> Spec:
    """Reads and checks a spec; raises ValueError naming the file and the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"spec file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a spec is a mapping with the keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {', '.join(SPEC_KEYS)}")
    table = raw.get("table")
    if table is not None and str(table) not in TABLES:
        raise ValueError(f"{path}: table must be one of {', '.join(TABLES)} or null, got {table!r}")
    if not raw.get("output"):
        raise ValueError(f"{path}: 'output' (the folder of the runs) is required")
    base = {_norm_key(k): v for k, v in (raw.get("base") or {}).items()}
    grid = {_norm_key(k): v for k, v in (raw.get("grid") or {}).items()}
    for where, mapping in (("base", base), ("grid", grid)):
        for key in mapping:
            if key not in OPTION_NAMES:
                raise ValueError(f"{path}: {where}.{key} is not a trainer option (python -m tdsa_fast.train --help)")
            if key in RESERVED:
                raise ValueError(f"{path}: {where}.{key} is set by the runner (use 'output' / 'data_roots')")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    both = sorted(set(base) & set(grid))
    if both:
        raise ValueError(f"{path}: {both} appear in both base and grid")
    here = path.resolve().parent
    data_roots = {str(k): str((here / str(v)).resolve()) for k, v in (raw.get("data_roots") or {}).items()}
    return Spec(path=path, table=None if table is None else str(table), output=(here / str(raw["output"])).resolve(),
                data_roots=data_roots, base=base, grid=grid)


def _value_tag(key: str, value) -> str:
    """A run name's part for one grid value: bare for dataset/model/loss/upsample, else key=value."""
    if isinstance(value, dict):  # loss_args: margin=0.3,scale=30
        value = ",".join(f"{k}={v}" for k, v in value.items())
    text = str(value).replace("/", "_").replace(" ", "")
    return text if key in ("dataset", "model", "loss", "upsample") else f"{key.replace('_', '-')}={text}"


def plan_runs(spec: Spec) -> list[RunPlan]:
    """The runs of the grid, in grid order (later keys vary fastest)."""
    keys = list(spec.grid)
    runs, names = [], set()
    for values in itertools.product(*(spec.grid[k] for k in keys)) if keys else [()]:
        options = dict(spec.base, **dict(zip(keys, values)))
        dataset = options.get("dataset", "default")
        if dataset in spec.data_roots:  # for "default": the cache folder of the generated data
            options["data_root"] = spec.data_roots[dataset]
        elif dataset != "default":
            raise ValueError(f"{spec.path}: no data_roots entry for dataset {dataset!r}")
        name = "-".join(_value_tag(k, v) for k, v in zip(keys, values)) or "run"
        if name in names:
            raise ValueError(f"{spec.path}: two runs share the name {name!r}")
        names.add(name)
        runs.append(RunPlan(name, options, spec.output / name))
        _check_options(spec, runs[-1])
    return runs


def _check_options(spec: Spec, run: RunPlan) -> None:
    """The trainer's own checks of ``run``'s options, so a bad grid fails before its first run:
    names, types and choices (its parser), a baseline's option values (by building the loss)
    and the flag combinations that depend on this machine's device (each run is one process)."""
    from tdsa_fast.distributed import Processes, pick_device
    from tdsa_fast.runs import build_objective, check_run_options

    try:
        cfg = config_from_options({**run.options, "output": str(run.folder)}, "options")
        build_objective(cfg, num_classes=2)
        check_run_options(cfg, pick_device(cfg.device), Processes())
    except ValueError as e:
        raise ValueError(f"{spec.path}: run {run.name!r}: {e}") from None


def trainer_argv(options: dict, output: Path) -> list[str]:
    """``python -m tdsa_fast.train`` arguments for a run's ``options`` (field names)."""
    return options_argv(options_from_mapping(options, "options")) + ["--output", str(output)]


def run_state(folder: Path) -> str:
    """``done``, ``failed``, ``partial`` (started, not finished) or ``todo``."""
    if (folder / "results.json").exists():
        return "done"
    if (folder / "FAILED").exists():
        return "failed"
    if folder.exists() and any(folder.iterdir()):
        return "partial"
    return "todo"


def _set_aside(folder: Path) -> Path:
    k = 1
    while (target := folder.with_name(f"{folder.name}.interrupted-{k}")).exists():
        k += 1
    folder.rename(target)
    return target


def _command(run: RunPlan) -> list[str]:
    return ["-m", "tdsa_fast.train", *trainer_argv(run.options, run.folder)]


def resumable(run: RunPlan) -> bool:
    """A partial run that ``--resume`` can continue: its checkpoint loads and was written by
    this trainer, and the spec still gives the run the options it was started with."""
    command = run.folder / "command.txt"
    if not (run.folder / "last.pt").is_file() or not command.is_file():
        return False
    if command.read_text().strip() != shlex.join(_command(run)):
        return False
    from tdsa_fast import checkpoint
    from tdsa_fast.checkpoint import CHECKPOINT_FORMAT

    try:
        return checkpoint.load(run.folder / "last.pt").get("format") == CHECKPOINT_FORMAT
    except (ValueError, FileNotFoundError):
        return False


def _start(run: RunPlan, resume: bool, env: dict | None = None):
    """Starts ``run``'s trainer (``resume``: from its checkpoint) logging to its ``train.log``;
    returns ``(process, log file, start time)``."""
    run.folder.mkdir(parents=True, exist_ok=True)
    if resume:
        argv = [sys.executable, "-m", "tdsa_fast.train", "--resume", str(run.folder)]
    else:
        argv = [sys.executable, *_command(run)]
        (run.folder / "command.txt").write_text(shlex.join(_command(run)) + "\n")
    logf = open(run.folder / "train.log", "a" if resume else "w")
    try:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
    except BaseException:
        logf.close()
        raise
    return proc, logf, time.perf_counter()


def _stop(proc) -> None:
    """A Ctrl-C reached the trainer too (it saves a checkpoint at its step and exits); a
    SIGINT sent to the runner alone did not: SIGTERM asks the same of it (a second SIGINT
    would interrupt the trainer's save)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait()


def _finish(run: RunPlan, rc: int, start: float, log, label: str = "") -> int:
    """Records how ``run`` ended (``FAILED`` with the log's tail on a non-zero exit); returns
    ``rc``.  Raises KeyboardInterrupt when the trainer stopped early on a signal."""
    prefix = f"{label}: " if label else "  "
    if rc == 0 and not (run.folder / "results.json").exists():
        log(f"{prefix}stopped early (a signal) after {time.perf_counter() - start:.0f} s; its checkpoint is kept")
        raise KeyboardInterrupt
    if rc != 0:
        tail = (run.folder / "train.log").read_text().splitlines()[-20:]
        (run.folder / "FAILED").write_text(f"exit code {rc}\n" + "\n".join(tail) + "\n")
        log(f"{prefix}FAILED (exit {rc}) after {time.perf_counter() - start:.0f} s; see {run.folder / 'train.log'}")
    else:
        log(f"{prefix}done in {time.perf_counter() - start:.0f} s")
    return rc


def run_one(run: RunPlan, log=print, resume: bool = False) -> int:
    """Trains ``run`` (``resume``: continues it from its checkpoint); returns the exit code.

    Raises:
        KeyboardInterrupt: the runner was interrupted, or the trainer stopped early on a
            signal (it saved a checkpoint; the grid stops so the same command resumes it).
    """
    proc, logf, start = _start(run, resume)
    with logf:
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
    return _finish(run, rc, start, log)


def visible_gpus() -> list[str]:
    """The GPUs a run may be given: ``CUDA_VISIBLE_DEVICES``'s entries when it is set, else
    ``0 .. n-1`` for the ``n`` devices torch counts (none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver: the runs get the environment as it is
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GridLock:
    """``output/.grid.lock`` holds the pid of the runner working on a grid: a second runner on
    the same grid (which would train the same runs twice) is refused; a lock left by a runner
    that died is taken over."""

    def __init__(self, output: Path):
        self.path = output / ".grid.lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid):
                    raise ValueError(f"another runner (pid {pid}) is working on {self.path.parent}; "
                                     f"wait for it, or stop it (a lock of a dead runner is taken over)") from None
                self.path.unlink(missing_ok=True)  # stale
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def run_grid(spec: Spec, *, retry_failed: bool = False, dry_run: bool = False, parallel: int = 1,
             gpus: list[str] | None = None, log=print) -> int:
    """Runs what is left of the grid, ``parallel`` runs at once (each its own trainer process;
    with ``gpus``, run slot ``k`` sees GPU ``gpus[k % len(gpus)]`` alone through
    ``CUDA_VISIBLE_DEVICES``); returns the number of runs that failed."""
    int_at_least("--parallel", parallel)
    if dry_run:
        return _run_grid(spec, retry_failed=retry_failed, dry_run=True, parallel=parallel, gpus=gpus, log=log)
    with GridLock(spec.output):
        return _run_grid(spec, retry_failed=retry_failed, dry_run=False, parallel=parallel, gpus=gpus, log=log)


def _pending(spec: Spec, *, retry_failed: bool, dry_run: bool, log) -> tuple[list, int]:
    """The runs left to train as ``(label, run, resume)``, and the count of earlier failures
    left alone; logs what is skipped (and, with ``dry_run``, what would run)."""
    runs = plan_runs(spec)
    todo, failed = [], 0
    for i, run in enumerate(runs, 1):
        state = run_state(run.folder)
        label = f"[{i}/{len(runs)}] {run.name}"
        if state == "done":
            log(f"{label}: finished earlier, skipped")
            continue
        if state == "failed" and not retry_failed:
            log(f"{label}: failed earlier (see {run.folder / 'FAILED'}); --retry-failed runs it again")
            failed += 1
            continue
        if dry_run:
            log(f"{label}: would run ({state})")
            continue
        todo.append((label, run, state))
    return todo, failed


def _prepare(label: str, run: RunPlan, state: str, log) -> bool:
    """Sets an earlier attempt aside unless it can be resumed; returns whether to resume."""
    resume = state == "partial" and resumable(run)
    if state in ("partial", "failed") and not resume:
        kept = _set_aside(run.folder)
        log(f"{label}: the earlier attempt was {'interrupted' if state == 'partial' else 'failed'}; "
            f"kept as {kept.name}, starting again")
    log(f"{label}: {'resuming from its checkpoint' if resume else 'training'}")
    return resume


def _run_grid(spec: Spec, *, retry_failed: bool, dry_run: bool, parallel: int, gpus, log) -> int:
    todo, failed = _pending(spec, retry_failed=retry_failed, dry_run=dry_run, log=log)
    if parallel == 1 and not gpus:
        for label, run, state in todo:
            failed += run_one(run, log, resume=_prepare(label, run, state, log)) != 0
            write_tables(spec)  # the tables follow the grid as it goes
        return failed
    return failed + _run_parallel(spec, todo, parallel, gpus or [], log)


def _run_parallel(spec: Spec, todo: list, parallel: int, gpus: list[str], log) -> int:
    """Keeps ``parallel`` trainers busy until ``todo`` is done; a failed run frees its slot for
    the next.  On an interrupt every running trainer is asked to save and stop."""
    failed = 0
    running: dict[int, tuple] = {}  # slot -> (label, run, proc, logf, start)
    queue = list(todo)
    try:
        while queue or running:
            for slot in range(parallel):
                if slot in running or not queue:
                    continue
                label, run, state = queue.pop(0)
                resume = _prepare(label, run, state, log)
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                    log(f"{label}: on GPU {env['CUDA_VISIBLE_DEVICES']}")
                running[slot] = (label, run) + _start(run, resume, env)
            time.sleep(0.2)
            for slot, (label, run, proc, logf, start) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                logf.close()
                del running[slot]
                failed += _finish(run, rc, start, log, label) != 0
                write_tables(spec)
    except KeyboardInterrupt:
        for label, run, proc, logf, start in running.values():
            _stop(proc)
            logf.close()
        raise
    return failed


# --- tables ------------------------------------------------------------------------------------

def read_paper_results(path: Path = PAPER_RESULTS) -> dict:
    """``{(table, method, backbone, variant, column): accuracy}`` from the paper's tables."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for column in list(DATASET_COLUMN.values()) + [UNNAMED_COLUMN]:
                if row.get(column):
                    out[(row["table"], row["method"], row["backbone"], row["variant"], column)] = float(row[column])
    return out


def _paper_key(table: str, row: dict) -> tuple:
    """The paper's cell of a results row (:func:`collect_results`'s)."""
    method = METHOD.get(row["loss"], row["loss"])
    backbone = BACKBONE.get(row["model"], row["model"])
    if table in ("V", "VI"):
        variant = f"xi={row['xi']}"
    elif table in ("VII", "VIII"):
        variant = f"xi={row['xi']} upsample={row['upsample']}"
    else:
        variant = ""
    column = UNNAMED_COLUMN if table in ("VII", "VIII") else DATASET_COLUMN.get(row["dataset"], row["dataset"])
    return (table, method, backbone, variant, column)


def collect_results(spec: Spec) -> list[dict]:
    rows = []
    for run in plan_runs(spec):
        if run_state(run.folder) != "done":
            continue
        results = json.loads((run.folder / "results.json").read_text())
        cfg = saved_run(json.loads((run.folder / "config.json").read_text()), str(run.folder / "config.json")).config
        rows.append(dict(name=run.name, dataset=cfg.dataset, model=cfg.model, loss=cfg.loss, xi=cfg.xi,
                         upsample=cfg.upsample, seed=cfg.seed, img_size=cfg.img_size, epochs=cfg.epochs,
                         final_test_acc=results["final_test_acc"], best_test_acc=results["best_test_acc"],
                         best_epoch=results["best_epoch"]))
    return rows


def _cell(values: list[float], paper) -> str:
    mean = sum(values) / len(values)
    text = f"{100 * mean:.2f}"
    if len(values) > 1:
        text += f" ({100 * min(values):.2f}–{100 * max(values):.2f}, {len(values)} seeds)"
    return text + (f" ({paper:.2f})" if paper is not None else " (–)")


def format_table(spec: Spec, rows: list[dict]) -> str:
    table = spec.table
    paper = read_paper_results() if table else {}
    row_key = ROW_KEY.get(table, "loss")
    columns, labels = [], []
    cells: dict = {}
    for r in rows:
        column = (r["dataset"], r["model"])
        label = (r[row_key], r["model"]) if row_key != "loss" else (r["loss"], r["model"])
        if column not in columns:
            columns.append(column)
        if label not in labels:
            labels.append(label)
        cells.setdefault((label, column), []).append(r)
    head = "| " + {"loss": "method", "xi": "ξ", "upsample": "upsample"}[row_key] + " | " + " | ".join(
        f"{DATASET_COLUMN.get(d, d)} ({BACKBONE.get(m, m)})" for d, m in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for label in labels:
        shown = METHOD.get(label[0], label[0]) if row_key == "loss" else f"{row_key} = {label[0]}"
        out = [shown]
        for column in columns:
            runs = cells.get((label, column))
            if not runs:
                out.append("")
                continue
            ref = paper.get(_paper_key(table, runs[0])) if table else None
            out.append(_cell([r["final_test_acc"] for r in runs], ref))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def write_tables(spec: Spec) -> Path:
    """Writes ``tables.md`` and ``results.csv`` under the spec's output; returns the table's path."""
    rows = collect_results(spec)
    spec.output.mkdir(parents=True, exist_ok=True)
    total = len(plan_runs(spec))
    title = f"Table {spec.table} of the paper" if spec.table else "Results"
    text = [f"# {title}: {spec.path.name}", "",
            f"{len(rows)} of {total} runs finished. Each cell: final test accuracy % of our run "
            "(mean over seeds, with the range), then the paper's number in parentheses "
            "(– where the paper has none for this setting).", ""]
    text.append(format_table(spec, rows) if rows else "(no finished runs yet)")
    text += ["", "Regenerate: `python -m tdsa_fast.experiments " + str(spec.path) + "`", ""]
    path = spec.output / "tables.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(text))
    os.replace(tmp, path)
    if rows:
        tmp = spec.output / "results.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else v)
                              for k, v in r.items()} for r in rows)
        os.replace(tmp, spec.output / "results.csv")
    return path


def _interrupt(signum, frame):
    """SIGTERM to the runner: the path of Ctrl-C (its trainer is asked to save and stop; the
    runner is not left to die with the trainer running on unsupervised)."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdsa_fast.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a YAML spec (see experiments/*.yaml)")
    p.add_argument("--retry-failed", action="store_true", help="run the runs that failed earlier again")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    p.add_argument("--tables-only", action="store_true", help="only (re)write tables.md and results.csv")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="train N runs at once, each in its own process; with GPUs visible, run slot k gets GPU "
                        "k mod (number of GPUs) through CUDA_VISIBLE_DEVICES")
    a = p.parse_args(argv)
    if a.parallel < 1:
        p.error(f"--parallel must be >= 1, got {a.parallel}")
    try:
        spec = load_spec(a.spec)
        plan_runs(spec)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.tables_only:
        print(write_tables(spec).read_text())
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # `kill RUNNER` stops the grid as Ctrl-C does
    try:
        failed = run_grid(spec, retry_failed=a.retry_failed, dry_run=a.dry_run, parallel=a.parallel,
                          gpus=visible_gpus() if a.parallel > 1 else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the same command continues where the grid stopped", file=sys.stderr)
        return 130
    if not a.dry_run:
        print(write_tables(spec).read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
