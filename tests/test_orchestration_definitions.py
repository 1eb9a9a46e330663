"""The real code location: it loads and validates with Dagster's own CLI, holds every asset of the
design with a compute class, the `cpu_validation` job and the nightly schedule on the CPU node."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from orchestration_standins import DESIGN_ASSETS

from sftc_core.settings import load_settings
from sftc_core.text import format_bytes
from sftc_platform.routing import K8S_CONFIG_TAG, NODE_TAG

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from sftc_jobs.definitions import defs

    return defs


def test_dagster_cli_validates_the_code_location(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m", "sftc_jobs.definitions"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Validation successful for code location sftc_jobs.definitions" in out.stdout + out.stderr


def test_every_design_asset_is_there_with_a_compute_class(defs):
    graph = defs.resolve_asset_graph()
    materializable = {key.to_user_string() for key in graph.materializable_asset_keys}
    assert DESIGN_ASSETS <= materializable, f"missing from the code location: {sorted(DESIGN_ASSETS - materializable)}"
    for assets_def in defs.assets:
        if isinstance(assets_def, dg.AssetsDefinition) and assets_def.is_materializable:
            tags = assets_def.op.tags
            assert tags.get(NODE_TAG) in ("cpu", "gpu"), f"{assets_def.key.to_user_string()} declares no compute class"
            assert K8S_CONFIG_TAG in tags, assets_def.key.to_user_string()
            assert assets_def.metadata_by_key[assets_def.key]["compute_class"] in ("cpu", "gpu", "auto")


def test_cpu_validation_job_and_nightly_schedule_on_the_cpu_node(defs):
    job = defs.resolve_job_def("cpu_validation")
    assert job.tags[NODE_TAG] == "cpu"
    schedule = defs.resolve_schedule_def("nightly_cpu_validation")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 2 * * *",
        "UTC",
        "cpu_validation",
    )
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING  # the toy profile
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 1, 2, 2, 0, tzinfo=dt.UTC))
    requests = schedule.evaluate_tick(context).run_requests
    # One machine (SFTC_K8S_PLACEMENT unset): the run says its node, and carries no pod configuration nobody reads.
    assert len(requests) == 1 and requests[0].tags[NODE_TAG] == "cpu" and K8S_CONFIG_TAG not in requests[0].tags
    assert list(requests[0].tags)[0] == NODE_TAG  # the tag a person reads first
    assert {s.name for s in defs.sensors} == {"automation_cpu_node", "automation_gpu_node"}


def test_the_web_ui_shows_stages_node_classes_and_automation(defs):
    """What the graph and the catalog show: a group per stage, the node class as a kind and in words, the
    automation condition on every automated asset (not on the NeMo import, which no sensor targets here), and
    sensor targets a person can read."""
    specs = {
        spec.key.to_user_string(): spec
        for assets_def in defs.assets
        if isinstance(assets_def, dg.AssetsDefinition)
        for spec in assets_def.specs
    }
    assert {name: spec.group_name for name, spec in specs.items()} == {
        "raw_xml": "theses",
        "thesis_jsonl": "theses",
        "hf_splits": "sft_data",
        "nemo_jsonl": "sft_data",
        "base_checkpoint": "checkpoints",
        "bf16_checkpoint": "checkpoints",
        "nemo_model": "training",
        "sft_model": "training",
        "eval_csv": "evaluation",
        "backtest_report": "backtest",
        "validation_report": "reports",
    }
    for name, spec in specs.items():
        node = spec.tags[NODE_TAG]
        assert node in spec.kinds and ({"cpu", "gpu"} - {node}).isdisjoint(spec.kinds), name
        assert spec.description.endswith(")."), name
        assert ("Runs on the CPU node" if node == "cpu" else "Runs on a GPU node") in spec.description, name
        assert (spec.automation_condition is None) == (name == "nemo_model"), name
    toy_size = format_bytes(load_settings(env={}).profile.compute.expected_checkpoint_bytes)
    auto = f"compute class auto: a GPU node above a 1.9 GiB checkpoint; this profile's checkpoint is {toy_size}"
    assert auto in specs["sft_model"].description
    targets = {sensor.name: str(sensor.asset_selection) for sensor in defs.sensors}
    assert targets == {
        "automation_cpu_node": 'tag:"sftc/node"="cpu"',
        "automation_gpu_node": 'tag:"sftc/node"="gpu" and not key:"nemo_model"',
    }


def test_sftc_automation_off_starts_every_sensor_and_the_schedule_stopped():
    from sftc_jobs.location import build_definitions

    defs = build_definitions(load_settings(env={"SFTC_AUTOMATION": "off"}))
    assert {s.name: s.default_status for s in defs.sensors} == dict.fromkeys(
        ("automation_cpu_node", "automation_gpu_node"), dg.DefaultSensorStatus.STOPPED
    )
    assert defs.resolve_schedule_def("nightly_cpu_validation").default_status == dg.DefaultScheduleStatus.STOPPED
    with pytest.raises(Exception, match="SFTC_AUTOMATION='maybe': expected one of on, off"):
        load_settings(env={"SFTC_AUTOMATION": "maybe"})
