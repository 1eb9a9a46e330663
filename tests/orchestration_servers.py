"""The real `dagster-webserver` (and `dagster-daemon`) on 127.0.0.1 with a temporary DAGSTER_HOME and data
dir, for the web UI, browser and daemon tests; GraphQL over plain HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REPOSITORY = "__repository__"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterServer:
    url: str
    home: Path
    data_dir: Path
    log_dir: Path
    env: dict
    target: list[str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def start_daemon(self) -> None:
        """The daemon (schedules, sensors, run queue, backfills), started when the test is ready for it."""
        self.spawn("daemon", [str(BIN / "dagster-daemon"), "run", *self.target])

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )


REPOSITORY_QUERY = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        assetNodes { assetKey { path } isMaterializable }
        jobs { name }
        schedules { name cronSchedule executionTimezone scheduleState { status } }
        sensors { name sensorType sensorState { id status } }
      }
    }
    ... on PythonError { message }
  }
}
"""


def repository(server: DagsterServer, timeout: float = 240) -> dict:
    """The code location's repository as the webserver serves it (waits for the location to load)."""
    deadline = time.monotonic() + timeout
    while True:
        data = server.graphql(REPOSITORY_QUERY)["repositoriesOrError"]
        nodes = data.get("nodes") or []
        if nodes:
            return nodes[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no repository after {timeout} s: {data}\n{server.logs()}")
        time.sleep(2)


def _wait_until_up(server: DagsterServer, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {process.returncode}\n{server.logs()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/server_info", timeout=5).ok:
                return
        time.sleep(1)
    raise AssertionError(f"dagster-webserver not up after {timeout} s\n{server.logs()}")


def _stop(process: subprocess.Popen) -> None:
    """Stop a server we started, with the children it spawned (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@contextlib.contextmanager
def dagster_server(
    tmp_path: Path, *, module: str | None = None, env: dict | None = None, timeout: float = 240
) -> Iterator[DagsterServer]:
    """The webserver on a free port of 127.0.0.1, DAGSTER_HOME and data dir under `tmp_path`; the daemon
    starts on `start_daemon()`. The code location is workspace.yaml's (`sftc`), or `module`."""
    home, data_dir, log_dir = tmp_path / "dagster_home", tmp_path / "data", tmp_path / "logs"
    for path in (home, data_dir, log_dir):
        path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "configs" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    server_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SFTC_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    target = ["-m", module] if module else ["-w", "workspace.yaml"]
    server = DagsterServer(f"http://127.0.0.1:{port}", home, data_dir, log_dir, server_env, target)
    try:
        webserver = server.spawn(
            "webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), *target]
        )
        _wait_until_up(server, webserver, timeout)
        yield server
    finally:
        for process in reversed(server.processes):
            _stop(process)
