"""The real dagster-webserver (and daemon) on 127.0.0.1 with a temporary DAGSTER_HOME: what it serves over
GraphQL, and (slow) the nightly job launched over GraphQL and run by the daemon to success."""

from __future__ import annotations

import time

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
mutation Stop($id: String!) { stopSensor(id: $id) { __typename ... on StopSensorMutationResult { instigationState { status } } } }
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
        assert (schedule["cronSchedule"], schedule["executionTimezone"], schedule["scheduleState"]["status"]) == ("0 2 * * *", "UTC", "RUNNING")


def wait_for_run(server, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(5)
    raise AssertionError(f"run {run_id} not finished after {timeout} s\n{server.logs()}")


@pytest.mark.slow
def test_daemon_runs_cpu_validation_launched_over_graphql(tmp_path):
    with dagster_server(tmp_path) as server:
        repo = repository(server)
        # Only the nightly job works here: the CPU automation sensor would start the same chain on its own,
        # so it is stopped before the daemon starts.
        cpu_sensor = next(s for s in repo["sensors"] if s["name"] == "automation_cpu_node")
        stopped = server.graphql(STOP_SENSOR, {"id": cpu_sensor["sensorState"]["id"]})["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped
        server.start_daemon()
        params = {"selector": {"repositoryLocationName": "sftc", "repositoryName": REPOSITORY, "jobName": "cpu_validation"}, "runConfigData": {}}
        launched = server.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status = wait_for_run(server, run_id, timeout=3600)
        report = server.data_dir / "reports" / "validation_report.md"
        assert status == "SUCCESS", (report.read_text() if report.is_file() else "") + server.logs()
        assert "Ready for GPU deployment: YES" in report.read_text()
        chain_runs = server.graphql(RUNS_TAGGED, {"key": "sftc/validation_run", "value": run_id})["runsOrError"]["results"]
        assert chain_runs and {r["status"] for r in chain_runs} == {"SUCCESS"}
        assert all({"key": "sftc/node", "value": "cpu"} in r["tags"] for r in chain_runs)
