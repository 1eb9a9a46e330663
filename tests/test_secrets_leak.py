"""EODHD_API_KEY and SFTC_EVAL_API_KEY are written nowhere: with the keys set to a sentinel, the chain runs through
a Dagster instance on disk, then every file under DAGSTER_HOME (SQLite event log, compute logs), the data dir
(artifacts, reports) and logs/ is searched for it. Fast: the data half of the chain. Slow: the whole
toy chain with `sftc run` twice and `sftc rerun`, as `make run` does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import dagster as dg
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RANGE = {"dagster/asset_partition_range_start": "2012-01", "dagster/asset_partition_range_end": "2012-12"}


def files_containing(roots: list[Path], secret: str) -> list[str]:
    needle = secret.encode()
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                hits.append(str(path))
    return hits


@pytest.fixture
def sentinel_env(tmp_path, monkeypatch):
    """A fresh DAGSTER_HOME, data dir and working directory (logs/), with the key set to a sentinel."""
    sentinel = f"sftc-sentinel-{uuid.uuid4().hex}"
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(REPO_ROOT / "configs" / "dagster.yaml", home / "dagster.yaml")
    # The evaluation endpoint's key too: the toy's eval goes through transformers serve,
    # which gets it as a bearer token.
    env = {
        "EODHD_API_KEY": sentinel,
        "SFTC_EVAL_API_KEY": sentinel,
        "DAGSTER_HOME": str(home),
        "SFTC_DATA_DIR": str(data),
        "HF_HUB_OFFLINE": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("TRAIN_START_DATE", "TRAIN_END_DATE", "TEST_START_DATE", "TRAIN_BACKEND", "SFTC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return sentinel, [home, data, tmp_path / "logs"], env


def test_scanner_finds_a_planted_secret(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "x.bin").write_bytes(b"\x00prefix-s3cr3t-suffix")
    assert files_containing([tmp_path], "s3cr3t") == [str(tmp_path / "deep" / "er" / "x.bin")]


def test_settings_hold_the_key_but_never_show_it(sentinel_env):
    from sftc_core.settings import load_settings
    from sftc_platform.metadata import manifest_metadata

    sentinel, _, _ = sentinel_env
    settings = load_settings()
    assert settings.eodhd_api_key.get_secret_value() == sentinel  # the test would prove nothing without the key loaded
    for shown in (
        repr(settings),
        str(settings),
        repr(settings.model_dump()),
        repr(manifest_metadata(settings, "hf_splits")),
    ):
        assert sentinel not in shown


def test_data_half_of_the_chain_writes_the_key_nowhere(sentinel_env, monkeypatch):
    sentinel, roots, _ = sentinel_env
    # A shorter training window keeps every split non-empty with twelve months of theses.
    monkeypatch.setenv("TRAIN_START_DATE", "2012-01-01")
    from sftc_core.settings import load_settings
    from sftc_jobs.chain import Chain
    from sftc_jobs.location import build_definitions

    settings = load_settings()
    chain = Chain.of(build_definitions(settings), settings)

    def materialize(keys: list[str], **kwargs):
        return dg.materialize(chain.definitions, instance=instance, resources=chain.resources, selection=keys, **kwargs)

    with dg.DagsterInstance.get() as instance:
        assert materialize(["raw_xml", "thesis_jsonl"], tags=RANGE).success
        assert materialize(["hf_splits", "base_checkpoint", "nemo_jsonl"]).success
        assert instance.get_latest_materialization_event(dg.AssetKey("nemo_jsonl")) is not None
    assert any(Path(roots[1], "nemo_jsonl").iterdir())
    assert files_containing(roots, sentinel) == []


def _sftc(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("sftc")), *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=3600,
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the whole toy chain: minutes on 2 shared cores
def test_whole_toy_chain_run_twice_and_rerun_write_the_key_nowhere(sentinel_env, tmp_path):
    sentinel, roots, env = sentinel_env
    first = _sftc(["run"], env, tmp_path)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    data = Path(env["SFTC_DATA_DIR"])
    shown = (
        data.relative_to(tmp_path) if data.is_relative_to(tmp_path) else data
    )  # paths inside the working directory: relative
    assert f"Validation report: {shown / 'reports' / 'validation_report.md'} (ready for GPU: YES)\n" in first.stdout
    # What a person reads on the terminal: a line per run and per asset start and end, progress, the table; no
    # Dagster event, no traceback (those are in the log file). Progress lines come every 30 s, however slow the machine.
    terminal = (first.stdout + first.stderr).splitlines()
    progress = [
        line
        for line in terminal
        if re.match(r"(training|eval_csv \d{4}-\d{2}|parsing theses|raw_xml: writing theses): ", line)
    ]
    assert len(terminal) - len(progress) <= 50 and not any(
        "DEBUG" in line or "Traceback" in line for line in terminal
    ), "\n".join(terminal)
    assert "Ready for GPU deployment: YES" in (data / "reports" / "validation_report.md").read_text()
    assert (data / "backtest" / "report.md").is_file()

    # The second run is quick because it starts no run at all: everything is up to date.
    second = _sftc(["run"], env, tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    rows = [line for line in second.stdout.splitlines() if line.startswith("| ") and "asset" not in line]
    assert rows and all("| up to date |" in row for row in rows), second.stdout
    assert len((second.stdout + second.stderr).splitlines()) <= 20, second.stdout + second.stderr

    outside, inside = data / "jsonl" / "2012-06.jsonl", data / "jsonl" / "2012-10.jsonl"
    outside_mtime, inside_mtime = outside.stat().st_mtime_ns, inside.stat().st_mtime_ns
    rerun = _sftc(["rerun", "--from", "2012-10", "--to", "2012-11"], env, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert outside.stat().st_mtime_ns == outside_mtime and inside.stat().st_mtime_ns != inside_mtime
    assert "materialized 2012-10..2012-11" in rerun.stdout

    assert files_containing(roots, sentinel) == []
    report = (data / "reports" / "validation_report.md").read_text()
    assert (
        "## What the GPU run will cost" in report and " GPU-hours, " in report
    )  # the full profile's GPU run, estimated

    # The bundle for the reviewer and the GPU team: the chain's reports, eval CSVs and manifests, and no key.
    bundled = _sftc(["bundle", "--out", str(tmp_path / "bundle.tar.gz")], env, tmp_path)
    assert bundled.returncode == 0, bundled.stderr[-4000:]
    with tarfile.open(tmp_path / "bundle.tar.gz", "r:gz") as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert not [name for name, data in members.items() if sentinel.encode() in data]
    assert {
        "reports/validation_report.md",
        "backtest/report.md",
        "eval/2012-09.csv",
        "run_manifests.json",
        "artifacts.json",
    } <= set(members)
    assert not [name for name in members if name.endswith((".safetensors", ".bin", ".env"))]
    manifests = json.loads(members["run_manifests.json"])
    assert {row["asset"] for row in manifests} >= {"sft_model", "eval_csv", "validation_report"}
    assert all(row["run_manifest"]["git_commit"] for row in manifests)
