"""Interruptions lose nothing: a fresh `sftc train` killed half-way leaves the last good model whole (it
trains beside it and swaps only when complete), and a killed `sftc run` does not leave its run STARTED in the
instance: the next `sftc run` marks it failed. Real processes, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from safety_helpers import tree_digest
from training_hf_helpers import build_toy_inputs

from sftc_assets.training.hf_backend import work_dir
from sftc_core import locks
from sftc_core.artifacts import integrity_problems, read_marker

TESTS = Path(__file__).parent


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _sftc(argv: list, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sftc_jobs.cli", *map(str, argv)],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory):
    return build_toy_inputs(tmp_path_factory.mktemp("toy"), train=48, validation=8)


def test_a_killed_fresh_fine_tune_keeps_the_last_good_model(toy_inputs, tmp_path):
    model, data = toy_inputs
    output = tmp_path / "models" / "sft"
    train = ["train", "--model", model, "--data", data, "--output", output, "--device", "cpu"]
    done = _sftc([*train, "--max-steps", "3"], tmp_path)
    assert done.wait(timeout=600) == 0, done.stderr.read()[-3000:]
    good = tree_digest(output)
    assert read_marker(output).writer == "sftc train" and (output / "model.safetensors").is_file()

    fresh = _sftc([*train, "--max-steps", "10000"], tmp_path)  # far longer than the test waits
    # The old code cleared OUTPUT first thing: once the new run has its work directory, it is past that point.
    _wait_for(lambda: work_dir(output).is_dir() or fresh.poll() is not None, 300, "the new run's work directory")
    time.sleep(2)
    assert fresh.poll() is None, fresh.stderr.read()[-3000:]
    _kill(fresh)

    assert tree_digest(output) == good and integrity_problems(output) == []  # the last good model, whole
    assert work_dir(output).is_dir()  # the killed run's work, beside it (resumable with --resume)
    again = _sftc([*train, "--max-steps", "2"], tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    assert tree_digest(output) != good and integrity_problems(output) == [] and not work_dir(output).exists()


def _instance_runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs())


def test_a_killed_chain_run_is_marked_failed_by_the_next(data_dir, tmp_path):
    home = tmp_path / "dagster_home"
    standin_run = [sys.executable, str(TESTS / "standin_cli.py"), "run"]
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    killed = subprocess.Popen(
        standin_run,
        cwd=tmp_path,
        env={**env, "SFTC_STANDIN_DELAY_S": "600"},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Its instance is set up once it holds the data directory's lock
    # (opening it before would race the schema's creation).
    _wait_for(
        lambda: f"pid {killed.pid} " in locks.holder_description(locks.lock_file(data_dir)), 300, "the chain run's lock"
    )
    _wait_for(lambda: any(r.status == dg.DagsterRunStatus.STARTED for r in _instance_runs(home)), 300, "a started run")
    _kill(killed)
    (dead,) = [run for run in _instance_runs(home) if run.status == dg.DagsterRunStatus.STARTED]

    done = subprocess.run(standin_run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"marked 1 interrupted run(s) of {data_dir} failed: {dead.run_id}" in done.stderr
    runs = {run.run_id: run for run in _instance_runs(home)}
    assert runs[dead.run_id].status == dg.DagsterRunStatus.FAILURE
    assert not [run for run in runs.values() if run.status == dg.DagsterRunStatus.STARTED]
