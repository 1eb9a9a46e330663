"""The automation sensors, evaluated against a real (ephemeral) instance: for the toy and the full
profile, which sensor requests each asset, with which partitions and run tags, tick after tick, as the
requested work is reported done. Then the same facts on the real code location."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
from dagster_k8s.job import get_user_defined_k8s_config
from orchestration_standins import CHAIN, location_facts, standin_definitions

from sftc_core.configs import load_cluster_config
from sftc_core.months import months_between
from sftc_jobs.sensors import SENSOR_NAMES
from sftc_platform.routing import GPU_RESOURCE, NODE_TAG

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def simulate_automation(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursors: dict, max_ticks: int = 10
) -> dict[str, dict]:
    """Tick every automation sensor until none requests anything; each request is then reported as done
    (a runless materialization of every requested asset partition). `cursors` carries the sensors'
    cursors from call to call, as the daemon does. Returns asset -> sensor, tags, partitions."""
    requested: dict[str, dict] = {}
    for _ in range(max_ticks):
        done = []
        for sensor in defs.sensors:
            result = sensor(
                dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursors.get(sensor.name))
            )
            cursors[sensor.name] = result.cursor
            for request in result.run_requests:
                if request.asset_graph_subset is not None:  # a backfill: several partitions or partitions definitions
                    pairs = [
                        (p.asset_key, p.partition_key) for p in request.asset_graph_subset.iterate_asset_partitions()
                    ]
                else:
                    pairs = [(key, request.partition_key) for key in request.asset_selection]
                for key, partition in pairs:
                    entry = requested.setdefault(
                        key.to_user_string(), {"sensor": sensor.name, "tags": dict(request.tags), "partitions": set()}
                    )
                    assert entry["sensor"] == sensor.name, f"{key} requested by two sensors"
                    entry["partitions"].add(partition)
                done += pairs
        if not done:
            return requested
        for key, partition in done:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))
    raise AssertionError(f"automation still requesting after {max_ticks} ticks")


def _gpus_in(tags: dict) -> str | None:
    container = get_user_defined_k8s_config(tags).container_config
    return container.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_toy_profile_every_asset_but_nemo_is_cpu_work_requested_once(instance):
    defs, cursors = standin_definitions("toy", "hf"), {}
    requested = simulate_automation(defs, instance, cursors)
    assert set(requested) == (set(CHAIN) - {"nemo_model"}) | {"validation_report"}
    for asset, entry in requested.items():
        assert entry["sensor"] == SENSOR_NAMES["cpu"], asset
        assert entry["tags"][NODE_TAG] == "cpu" and _gpus_in(entry["tags"]) is None, asset
    assert requested["raw_xml"]["partitions"] == set(months_between("2012-01", "2012-12"))
    assert requested["eval_csv"]["partitions"] == set(months_between("2012-09", "2012-12"))
    status = {s.name: s.default_status for s in defs.sensors}
    assert status == {
        SENSOR_NAMES["cpu"]: dg.DefaultSensorStatus.RUNNING,
        SENSOR_NAMES["gpu"]: dg.DefaultSensorStatus.STOPPED,
    }
    # Nothing left to do: another tick requests nothing.
    assert simulate_automation(defs, instance, cursors) == {}


def test_full_profile_gpu_work_goes_to_the_gpu_sensor_with_gpu_tags(instance):
    defs, cursors = standin_definitions("full", "nemo"), {}
    requested = simulate_automation(defs, instance, cursors)
    gpu_assets = {"bf16_checkpoint", "nemo_model", "sft_model", "eval_csv"}
    assert set(requested) == set(CHAIN) | {"validation_report"}
    gpus = str(load_cluster_config().node_pools.gpu.gpus)
    for asset, entry in requested.items():
        node = "gpu" if asset in gpu_assets else "cpu"
        assert entry["sensor"] == SENSOR_NAMES[node], asset
        assert entry["tags"][NODE_TAG] == node, asset
        assert _gpus_in(entry["tags"]) == (gpus if node == "gpu" else None), asset
    pod = get_user_defined_k8s_config(requested["sft_model"]["tags"]).pod_spec_config
    assert pod["node_selector"] == load_cluster_config().node_pools.gpu.node_selector and pod["tolerations"]
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.RUNNING}


def test_pod_per_step_keeps_the_run_pod_on_cpu_and_gives_gpus_to_the_step(instance):
    """dagster-k8s gives step pods the op tags only: GPU run tags would book GPUs for the orchestrator too."""
    defs, cursors = standin_definitions("full", "nemo", placement="step"), {}
    requested = simulate_automation(defs, instance, cursors)
    sft = requested["sft_model"]
    assert sft["sensor"] == SENSOR_NAMES["gpu"] and sft["tags"][NODE_TAG] == "gpu"
    assert _gpus_in(sft["tags"]) is None
    assert (
        get_user_defined_k8s_config(sft["tags"]).pod_spec_config["node_selector"]
        == load_cluster_config().node_pools.cpu.node_selector
    )
    op_tags = defs.resolve_assets_def("sft_model").op.tags
    assert _gpus_in(op_tags) == str(load_cluster_config().node_pools.gpu.gpus)
    assert defs.executor is not None and defs.executor.name == "k8s"


def test_a_changed_input_is_refreshed_downstream_by_its_own_sensor(instance):
    defs, cursors = standin_definitions("full", "nemo"), {}
    simulate_automation(defs, instance, cursors)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="base_checkpoint"))
    again = simulate_automation(defs, instance, cursors)
    assert again["bf16_checkpoint"]["sensor"] == SENSOR_NAMES["gpu"]
    assert {"sft_model", "eval_csv", "backtest_report"} <= set(again) and "raw_xml" not in again


def test_failed_partition_is_not_retried_every_tick(instance):
    defs = standin_definitions("toy", "hf")
    sensor = next(s for s in defs.sensors if s.name == SENSOR_NAMES["cpu"])
    first = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert first.run_requests
    # A run of raw_xml that failed: the sensor must not request it again until something changes.
    failing = standin_definitions("toy", "hf", failing=("raw_xml",))
    failing.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("raw_xml")], partition_key="2012-01", raise_on_error=False
    )
    later = sensor(dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor))
    raw_partitions = {
        p.partition_key
        for r in later.run_requests
        if r.asset_graph_subset
        for p in r.asset_graph_subset.iterate_asset_partitions()
        if p.asset_key.path == ["raw_xml"]
    }
    assert "2012-01" not in raw_partitions and "2012-02" in raw_partitions


def _check_routing(facts: dict, profile: str) -> None:
    assert facts, "the code location has no assets"
    for asset, fact in facts.items():
        if asset == "nemo_model" and profile == "toy":
            assert fact == {"node": "gpu", "sensors": []}, "the NeMo import is not automated with the hf backend"
            continue
        assert fact["sensors"] == [SENSOR_NAMES[fact["node"]]], asset
    expected_gpu = {"bf16_checkpoint", "nemo_model", "sft_model", "eval_csv"} if profile == "full" else {"nemo_model"}
    assert {a for a, f in facts.items() if f["node"] == "gpu"} == expected_gpu & set(facts)


def test_real_code_location_toy_routes_every_asset_to_one_sensor_of_its_node():
    from sftc_jobs.definitions import defs

    _check_routing(location_facts(defs), "toy")


def test_real_code_location_full_routes_gpu_work_to_the_gpu_sensor():
    # The profile is read when the stage modules load: a fresh interpreter with SFTC_PROFILE=full.
    script = (
        "import json\nfrom sftc_jobs.definitions import defs\n"
        "from orchestration_standins import location_facts\nprint(json.dumps(location_facts(defs)))\n"
    )
    env = {
        **os.environ,
        "SFTC_PROFILE": "full",
        "TRAIN_BACKEND": "nemo",
        "PYTHONPATH": os.path.join(REPO_ROOT, "tests"),
    }
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    _check_routing(json.loads(out.stdout.strip().splitlines()[-1]), "full")
