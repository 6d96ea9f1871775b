"""The experiment runner: spec checks, the grid's runs and their trainer arguments, a real
tiny grid (training, skipping finished runs, resuming interrupted ones, failures), and the
tables with the paper's numbers beside ours."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tdsa_fast import checkpoint
from tdsa_fast import experiments as ex
from tdsa_fast.config import build_parser, resolve
from tdsa_fast.data.synthetic import SyntheticSpec, ensure_default_dataset

from cli_helpers import run_main

TINY = SyntheticSpec(num_classes=4, train_per_class=8, test_per_class=8, image_size=64, seed=1)
FAST = dict(img_size=64, epochs=1, batch_size=8, workers=0, loader="torch", stem="standard", threads=1,
            lr=0.02, log_interval=1000, model="resnet18")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def write_spec(folder: Path, **spec) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("spec,fragment", [
    (dict(output="o", grid={"loss": ["ce"]}, colour="red"), "unknown keys ['colour']"),
    (dict(output="o", grid={"lossy": ["ce"]}), "grid.lossy is not a trainer option"),
    (dict(output="o", base={"output": "x"}), "base.output is set by the runner"),
    (dict(output="o", grid={"loss": "ce"}), "grid.loss must be a non-empty list"),
    (dict(output="o", base={"loss": "ce"}, grid={"loss": ["tdsa"]}), "appear in both base and grid"),
    (dict(grid={"loss": ["ce"]}), "'output' (the folder of the runs) is required"),
    (dict(output="o", table="IX"), "table must be one of"),
    (dict(output="o", grid={"dataset": ["cub"]}), "no data_roots entry for dataset 'cub'"),
    (dict(output="o", base={"loss": "arcface", "loss_args": {"margn": 1}}),
     "run 'run': --loss-arg margn: not an option of --loss arcface"),
    (dict(output="o", grid={"lr": [0.1, -1.0]}), "run 'lr=-1.0': --lr must be positive"),
    (dict(output="o", base={"loss": "arcface", "loss_args": {"margin": -1.0}}), "margin must lie in [0.0, "),
    (dict(output="o", base={"device": "cpu"}, grid={"sync_bn": [False, True]}),
     "run 'sync-bn=True': --sync-bn needs several processes on CUDA"),
])
def test_bad_specs_are_refused_with_the_reason(tmp_path, spec, fragment):
    path = write_spec(tmp_path, **spec)
    with pytest.raises(ValueError, match=None) as err:
        ex.plan_runs(ex.load_spec(path))
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_missing_spec_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="spec file not found"):
        ex.load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        ex.load_spec(tmp_path / "bad.yaml")


def test_grid_order_names_and_trainer_arguments(tmp_path):
    path = write_spec(tmp_path / "specs", table="III", output="../runs", data_roots={"cub": "../data"},
                      base={"model": "resnet18", "channels-last": True, "img_size": 64},
                      grid={"dataset": ["cub"], "loss": ["ce", "tdsa"], "xi": [1, 3]})
    spec = ex.load_spec(path)
    runs = ex.plan_runs(spec)
    assert [r.name for r in runs] == ["cub-ce-xi=1", "cub-ce-xi=3", "cub-tdsa-xi=1", "cub-tdsa-xi=3"]
    assert all(r.folder.parent == (tmp_path / "runs").resolve() for r in runs)
    argv = ex.trainer_argv(runs[3].options, runs[3].folder)
    args = build_parser().parse_args(argv)
    assert (args.loss, args.xi, args.model, args.img_size, args.channels_last) == ("tdsa", 3, "resnet18", 64, True)
    assert args.data_root == str((tmp_path / "data").resolve()) and args.output == str(runs[3].folder)


def test_baseline_options_and_switched_off_flags_become_trainer_arguments(tmp_path):
    path = write_spec(tmp_path, output="runs", base={"loss": "lmcl", "tensorboard": False},
                      grid={"loss_args": [{"margin": 0.2, "scale": 30}, {"margin": 0.4}]})
    runs = ex.plan_runs(ex.load_spec(path))
    assert [r.name for r in runs] == ["loss-args=margin=0.2,scale=30", "loss-args=margin=0.4"]
    argv = ex.trainer_argv(runs[0].options, runs[0].folder)
    assert "--no-tensorboard" in argv and argv[argv.index("--loss-arg") + 1] == "margin=0.2"
    cfg = resolve(build_parser().parse_args(argv))
    assert cfg.loss_args == {"margin": 0.2, "scale": 30} and cfg.tensorboard is False


def test_paper_numbers_are_paired_by_table_method_backbone_and_dataset():
    paper = ex.read_paper_results()
    assert paper[("IV", "TDSA w/o attention", "VGG16", "", "Flowers-102")] == 85.81
    assert paper[("III", "CE", "ResNet18", "", "CUB-200-2011")] > 0
    cfg = dict(loss="tdsa", model="resnet18", xi=2, upsample="nearest", dataset="cars")
    assert ex._paper_key("VI", cfg) == ("VI", "TDSA", "ResNet18", "xi=2", "Stanford Cars")
    assert ex._paper_key("VIII", dict(cfg, xi=1)) == ("VIII", "TDSA", "ResNet18", "xi=1 upsample=nearest",
                                                      "dataset not stated")
    assert ex._paper_key("VIII", dict(cfg, xi=1)) in paper


@pytest.fixture
def runner(capsys):
    """The runner's ``main([spec, *extra])`` in-process, its result shaped as ``subprocess.run``'s."""
    def run(spec_path, *extra):
        rc, out, err = run_main(ex.main, [spec_path, *extra], capsys)
        return SimpleNamespace(returncode=rc, stdout=out, stderr=err)
    return run


def _start_runner_until(path, run, rows: int) -> subprocess.Popen:
    """The runner on spec ``path`` in its own session, once ``run``'s metrics.csv has ``rows`` lines."""
    proc = subprocess.Popen([sys.executable, "-m", "tdsa_fast.experiments", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (run.folder / "metrics.csv").exists() or len((run.folder / "metrics.csv").read_text().splitlines()) < rows:
        assert proc.poll() is None and time.time() < deadline, f"{run.name} did not get going"
        time.sleep(0.2)
    return proc


@pytest.mark.slow
def test_tiny_grid_trains_skips_finished_runs_and_writes_the_table(tmp_path, tiny_root, runner):
    path = write_spec(tmp_path, table="III", output="runs", data_roots={"cub": str(tiny_root)},
                      base=dict(FAST, dataset="cub"), grid={"loss": ["ce", "tdsa", "mc"], "seed": [0]})
    spec = ex.load_spec(path)
    p = runner(path)
    assert p.returncode == 0, p.stdout + p.stderr
    runs = ex.plan_runs(spec)
    assert all(ex.run_state(r.folder) == "done" for r in runs)
    table = (spec.output / "tables.md").read_text()
    for method in ("CE", "TDSA", "MC-Loss"):
        assert f"| {method} |" in table, table
    paper_ce = ex.read_paper_results()[("III", "CE", "ResNet18", "", "CUB-200-2011")]
    assert f"({paper_ce:.2f})" in table, table
    ce = json.loads((runs[0].folder / "results.json").read_text())["final_test_acc"]
    assert f"{100 * ce:.2f} ({paper_ce:.2f})" in table, table
    assert len((spec.output / "results.csv").read_text().splitlines()) == 4

    stamps = [(r.folder / "results.json").stat().st_mtime_ns for r in runs]
    p = runner(path)
    assert p.returncode == 0 and p.stdout.count("finished earlier, skipped") == 3, p.stdout
    assert [(r.folder / "results.json").stat().st_mtime_ns for r in runs] == stamps


@pytest.mark.slow
def test_interrupted_grid_continues_where_it_stopped(tmp_path, tiny_root, runner):
    """Ctrl-C stops the runner and its trainer, which saves a checkpoint at its step; the same
    command resumes that run from it. A run whose options the spec has changed since is
    started again instead, its partial folder set aside."""
    def spec(epochs):
        return write_spec(tmp_path, output="runs", data_roots={"cub": str(tiny_root)},
                          base=dict(FAST, dataset="cub", epochs=epochs), grid={"loss": ["ce", "tdsa"]})

    def interrupt(path, run):
        proc = _start_runner_until(path, run, rows=3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the runner and its trainer
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "continues where the grid stopped" in out, out

    path = spec(12)
    first, second = ex.plan_runs(ex.load_spec(path))
    interrupt(path, first)
    assert ex.run_state(first.folder) == "partial" and ex.run_state(second.folder) == "todo"
    assert "stopped (SIGINT)" in (first.folder / "train.log").read_text()
    stopped_at = checkpoint.load(first.folder / "last.pt")["progress"]["global_step"]
    assert stopped_at >= 2 * 4  # 4 steps an epoch; at least two epochs were done

    p = runner(path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "[1/2] ce: resuming from its checkpoint" in p.stdout, p.stdout
    log = (first.folder / "train.log").read_text()
    assert "stopped (SIGINT)" in log and "resuming at epoch" in log  # one log, both parts
    rows = (first.folder / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, 13)]
    assert ex.run_state(first.folder) == "done" and ex.run_state(second.folder) == "done"

    # a run interrupted under one spec and continued under a changed one starts again
    for run in (first, second):
        shutil.rmtree(run.folder)
    interrupt(path, first)
    short = spec(1)
    p = runner(short)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "interrupted; kept as ce.interrupted-1" in p.stdout.replace("was interrupted", "interrupted"), p.stdout
    assert (first.folder.parent / "ce.interrupted-1" / "metrics.csv").exists()  # nothing of it lost
    assert ex.run_state(first.folder) == "done" and ex.run_state(second.folder) == "done"


@pytest.mark.slow
def test_sigterm_to_the_runner_alone_stops_its_trainer_with_a_checkpoint(tmp_path, tiny_root):
    path = write_spec(tmp_path, output="runs", data_roots={"cub": str(tiny_root)},
                      base=dict(FAST, dataset="cub", epochs=12), grid={"loss": ["ce"]})
    (run,) = ex.plan_runs(ex.load_spec(path))
    proc = _start_runner_until(path, run, rows=2)
    proc.send_signal(signal.SIGTERM)  # the runner only, as `kill RUNNER` does
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continues where the grid stopped" in out, out
    assert "stopped (SIGTERM)" in (run.folder / "train.log").read_text()  # the trainer saved and exited
    assert ex.run_state(run.folder) == "partial" and (run.folder / "last.pt").exists()


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_grid_goes_on(tmp_path, tiny_root, runner):
    empty = tmp_path / "no_aircraft"  # passes the option checks; the run fails reading its data
    empty.mkdir()
    path = write_spec(tmp_path, output="runs", data_roots={"cub": str(tiny_root), "aircraft": str(empty)},
                      base=dict(FAST, device="cpu"), grid={"dataset": ["aircraft", "cub"]})
    spec = ex.load_spec(path)
    bad, good = ex.plan_runs(spec)
    p = runner(path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert ex.run_state(bad.folder) == "failed" and "aircraft: expected file not found" in (bad.folder / "FAILED").read_text()
    assert ex.run_state(good.folder) == "done"
    p = runner(path)
    assert p.returncode == 1 and "failed earlier" in p.stdout and "--retry-failed" in p.stdout, p.stdout


def test_a_second_runner_on_the_same_grid_is_refused(tmp_path, runner):
    path = write_spec(tmp_path, output="runs", grid={"loss": ["ce"]})
    spec = ex.load_spec(path)
    spec.output.mkdir(parents=True)
    (spec.output / ".grid.lock").write_text(str(os.getpid()))  # a live process holds it
    p = runner(path)
    assert p.returncode == 2 and f"another runner (pid {os.getpid()})" in p.stderr, p.stderr
    assert ex.run_state(ex.plan_runs(spec)[0].folder) == "todo"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (spec.output / ".grid.lock").write_text(dead.stdout.strip())  # a runner that died: taken over
    with ex.GridLock(spec.output) as lock:
        assert lock.path.read_text() == str(os.getpid())
    assert not (spec.output / ".grid.lock").exists()
