"""``python -m tdsa_fast.experiments SPEC --parallel N``: several trainers at once, each with its
own folder and log, a failure leaving the others to finish, GPUs handed out round-robin."""
from __future__ import annotations

import os

import pytest

from tdsa_fast import experiments as ex
from tdsa_fast.data.synthetic import ensure_default_dataset

from test_experiments import FAST, TINY, write_spec


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_default_dataset(TINY, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


def _grid(tmp_path, tiny_root, datasets):
    empty = tmp_path / "no_aircraft"  # passes the option checks; the run fails reading its data
    empty.mkdir(exist_ok=True)
    return write_spec(tmp_path, output="runs", data_roots={"cub": str(tiny_root), "aircraft": str(empty)},
                      base=dict(FAST, device="cpu"), grid={"dataset": datasets, "seed": [0, 1]})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_parallel_runs_overlap_and_a_failure_does_not_stop_the_others(tmp_path, tiny_root, capsys):
    path = _grid(tmp_path, tiny_root, ["aircraft", "cub"])
    runs = ex.plan_runs(ex.load_spec(path))  # aircraft x 2 seeds (fail), cub x 2 seeds
    assert ex.main([str(path), "--parallel", "2"]) == 1
    out = capsys.readouterr().out
    bad, good = runs[:2], runs[2:]
    for run in bad:
        assert ex.run_state(run.folder) == "failed" and "FAILED" in out
    for run in good:
        assert ex.run_state(run.folder) == "done", (run.folder / "train.log").read_text()
    # the two cub runs were trained at the same time: each started before the other finished
    a, b = good
    started = [(r.folder / "command.txt").stat().st_mtime for r in good]
    finished = [(r.folder / "results.json").stat().st_mtime for r in good]
    assert started[1] < finished[0] and started[0] < finished[1], (started, finished)
    # resumable as the sequential runner: finished runs are skipped, failed ones kept
    assert ex.main([str(path), "--parallel", "2"]) == 1
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2 and out.count("failed earlier") == 2, out


def test_gpus_are_handed_out_round_robin(tmp_path, monkeypatch):
    """Each run slot's trainer sees one GPU through CUDA_VISIBLE_DEVICES (the trainers are
    replaced by a process that writes what it was given)."""
    path = write_spec(tmp_path, output="runs", base=dict(FAST, device="cpu"), grid={"seed": [0, 1, 2, 3]})
    spec = ex.load_spec(path)
    seen = {}

    def fake_start(run, resume, env=None):
        seen[run.name] = env["CUDA_VISIBLE_DEVICES"]
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "results.json").write_text("{}")  # "finished" (no training: tables are not read here)
        import subprocess
        import sys
        import time

        return subprocess.Popen([sys.executable, "-c", "pass"]), open(os.devnull, "w"), time.perf_counter()

    monkeypatch.setattr(ex, "_start", fake_start)
    monkeypatch.setattr(ex, "write_tables", lambda spec: None)
    assert ex.run_grid(spec, parallel=3, gpus=["4", "7"], log=lambda *_: None) == 0
    assert sorted(seen) == ["seed=0", "seed=1", "seed=2", "seed=3"]
    assert set(seen.values()) <= {"4", "7"}
    assert [seen["seed=0"], seen["seed=1"], seen["seed=2"]] == ["4", "7", "4"]  # slots 0, 1, 2


@pytest.mark.parametrize("parallel", [0, -1, True])
def test_bad_parallel_is_refused(tmp_path, parallel):
    spec = ex.load_spec(write_spec(tmp_path, output="runs", grid={"seed": [0]}))
    with pytest.raises(ValueError, match="--parallel"):
        ex.run_grid(spec, parallel=parallel)


def test_bad_parallel_on_the_command_line(tmp_path, capsys):
    path = write_spec(tmp_path, output="runs", grid={"seed": [0]})
    with pytest.raises(SystemExit):
        ex.main([str(path), "--parallel", "0"])
    assert "--parallel must be >= 1" in capsys.readouterr().err


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5")
    assert ex.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert ex.visible_gpus() == []
