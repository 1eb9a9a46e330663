"""The real dagster-webserver (and daemon) on 127.0.0.1 with a temporary DAGSTER_HOME: what it serves over
GraphQL, and (slow) the nightly job launched over GraphQL and run by the daemon to success."""

from __future__ import annotations

import time

import dagster as dg
import pytest
from orchestration_servers import REPOSITORY, dagster_server, repository
from orchestration_standins import DESIGN_ASSETS

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""
RUNS_TAGGED = """
query Runs($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    ... on Runs { results { runId status jobName tags { key value } } }
  }
}
"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) { __typename ... on StopSensorMutationResult { instigationState { status } } }
}
"""


def test_webserver_serves_every_asset_the_node_sensors_and_the_nightly_schedule(tmp_path):
    with dagster_server(tmp_path) as server:
        repo = repository(server)
        assert repo["location"]["name"] == "sftc"
        keys = {"/".join(node["assetKey"]["path"]) for node in repo["assetNodes"] if node["isMaterializable"]}
        assert DESIGN_ASSETS <= keys, f"not served as materializable assets: {sorted(DESIGN_ASSETS - keys)}"
        assert "cpu_validation" in {job["name"] for job in repo["jobs"]}
        sensors = {s["name"]: s for s in repo["sensors"]}
        assert sensors["automation_cpu_node"]["sensorState"]["status"] == "RUNNING"
        assert sensors["automation_gpu_node"]["sensorState"]["status"] == "STOPPED"  # no GPU node in the toy profile
        assert {s["sensorType"] for s in sensors.values()} == {"AUTOMATION"}
        schedule = next(s for s in repo["schedules"] if s["name"] == "nightly_cpu_validation")
        assert (schedule["cronSchedule"], schedule["executionTimezone"], schedule["scheduleState"]["status"]) == (
            "0 2 * * *",
            "UTC",
            "RUNNING",
        )


def wait_for_run(server, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(5)
    raise AssertionError(f"run {run_id} not finished after {timeout} s\n{server.logs()}")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the whole toy chain: minutes on 2 shared cores
def test_daemon_runs_cpu_validation_launched_over_graphql(tmp_path):
    with dagster_server(tmp_path) as server:
        repo = repository(server)
        # Only the nightly job works here: the CPU automation sensor would start the same chain on its own,
        # so it is stopped before the daemon starts.
        cpu_sensor = next(s for s in repo["sensors"] if s["name"] == "automation_cpu_node")
        stopped = server.graphql(STOP_SENSOR, {"id": cpu_sensor["sensorState"]["id"]})["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped
        server.start_daemon()
        params = {
            "selector": {"repositoryLocationName": "sftc", "repositoryName": REPOSITORY, "jobName": "cpu_validation"},
            "runConfigData": {},
        }
        launched = server.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status = wait_for_run(server, run_id, timeout=3600)
        report = server.data_dir / "reports" / "validation_report.md"
        assert status == "SUCCESS", (report.read_text() if report.is_file() else "") + server.logs()
        assert "Ready for GPU deployment: YES" in report.read_text()
        chain_runs = server.graphql(RUNS_TAGGED, {"key": "sftc/validation_run", "value": run_id})["runsOrError"][
            "results"
        ]
        assert chain_runs and {r["status"] for r in chain_runs} == {"SUCCESS"}
        assert all({"key": "sftc/node", "value": "cpu"} in r["tags"] for r in chain_runs)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_daemon_automation_sensor_builds_the_missing_chain_with_cpu_node_tags(tmp_path):
    """The CPU sensor, live under the daemon, over stand-in assets: it materializes everything missing
    (all partitions, through backfills), in runs tagged for the CPU node, checks included."""
    expected = [dg.AssetKey(name) for name in sorted(DESIGN_ASSETS - {"nemo_model"})]
    with dagster_server(tmp_path, module="orchestration_location") as server:
        repository(server)
        server.start_daemon()
        with dg.DagsterInstance.from_config(str(server.home)) as instance:
            deadline = time.monotonic() + 900
            while not all(instance.get_latest_materialization_event(key) for key in expected):
                assert time.monotonic() < deadline, f"not materialized after 900 s\n{server.logs()}"
                time.sleep(10)
            assert len(instance.get_materialized_partitions(dg.AssetKey("raw_xml"))) == 12
            runs = instance.get_runs()
            # the stand-in location places runs on Kubernetes (standin_settings: placement run):
            # the node tag and the pod's
            assert runs and all(run.tags.get("sftc/node") == "cpu" and "dagster-k8s/config" in run.tags for run in runs)
            assert all(
                run.tags.get("dagster/sensor_name") == "automation_cpu_node" or "dagster/backfill" in run.tags
                for run in runs
            )
            checked = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey("thesis_jsonl"), "accepted_plus_rejected_equals_read")]
            )
            assert checked, "the check did not run with its asset"
