"""One writer at a time: two `sftc run` processes with different settings on one data directory do not overlap
(the second waits for the first, says for whom, then redoes what its settings change), so no run reads the
other's half-written or differently configured files; the lock of one artifact holds across processes.
The runs go over the stand-in chain (real instance, real locks and markers, assets that take 0.3 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from sftc_core import locks
from sftc_core.settings import load_settings
from sftc_platform.metadata import config_hash

TESTS = Path(__file__).parent


def _sftc_run(tmp_path: Path, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "SFTC_STANDIN_DELAY_S": "0.3", **env}
    return subprocess.Popen(
        [sys.executable, str(TESTS / "standin_cli.py"), "run"],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_runs_with_other_settings_take_turns(data_dir, tmp_path, monkeypatch):
    first = _sftc_run(tmp_path, TRAIN_END_DATE="2012-04-30")
    # Once the first holds the data directory's lock its instance is set up (two processes creating one SQLite
    # schema at once would race) and it is about to run.
    deadline = time.monotonic() + 300
    while f"pid {first.pid} " not in locks.holder_description(locks.lock_file(data_dir)):
        assert first.poll() is None and time.monotonic() < deadline, (
            first.stderr.read()[-3000:] if first.poll() is not None else "timed out"
        )
        time.sleep(0.1)
    second = _sftc_run(tmp_path, TRAIN_END_DATE="2012-03-30")
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], [err[-3000:] for _, err in outputs]
    assert f"waiting for the data directory {data_dir}" in outputs[1][1]

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with dg.DagsterInstance.get() as instance:
        runs = sorted(instance.get_run_records(), key=lambda record: record.start_time)
        # Never two at once: each run ends before the next begins.
        assert len(runs) == 4 + 3  # the whole chain, then the hf_splits segment and everything after it
        assert all(a.end_time <= b.start_time for a, b in zip(runs, runs[1:]))
        splits = instance.fetch_materializations(dg.AssetKey("hf_splits"), limit=2).records
        model = instance.fetch_materializations(dg.AssetKey("sft_model"), limit=1).records[0]
    # The files are the second run's, made with its settings, and the model was trained on them.
    later = load_settings(env={**os.environ, "TRAIN_END_DATE": "2012-03-30"})
    marker = json.loads((later.paths.hf_splits / ".sftc-artifact.json").read_text())
    assert marker["config_hash"] == config_hash(later, "hf_splits")
    assert (
        splits[0].asset_materialization.tags["dagster/code_version"]
        != splits[1].asset_materialization.tags["dagster/code_version"]
    )
    assert model.storage_id > splits[0].storage_id and model.run_id == splits[0].run_id


HOLD = """
import sys, time
from sftc_core import locks
with locks.exclusive(sys.argv[1], "the test's artifact"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_an_artifact_lock_holds_across_processes_and_names_its_holder(tmp_path, caplog):
    target = tmp_path / "models" / "sft"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(target), "1.5"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="sftc_core.locks"), locks.exclusive(target, "sft_model"):
        waited = time.monotonic() - started
    holder.wait(timeout=60)
    assert waited > 0.5  # it could not take the lock while the other process held it
    assert f"pid {holder.pid}" in caplog.text and "waiting for sft_model" in caplog.text
    assert not target.exists()  # the lock lives outside the artifact
