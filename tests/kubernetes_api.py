"""A stand-in Kubernetes API server over real HTTP on 127.0.0.1: the kubernetes client talks to it as to a cluster
(`serve`, the `kubernetes_cluster` fixture of conftest.py, writes a kubeconfig naming it). It serves what the
launcher layer asks for: nodes
by label selector, JobSets (create, get, delete), their pods by label selector, events by field selector and pod
logs. No scheduler runs here: a test says what the cluster does at each poll of a JobSet (`StandinCluster.on_poll`).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from sftc_platform.launchers.k8s import COMPLETION_INDEX_LABEL, CONTAINER, GROUP, JOBSET_NAME_LABEL, PLURAL, VERSION

JOBSETS = f"/apis/{GROUP}/{VERSION}/namespaces/"


@dataclass
class StandinCluster:
    nodes: list[dict] = field(default_factory=list)
    jobsets: dict[str, dict] = field(default_factory=dict)
    pods: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # True: listing nodes answers 403, as for a service account that may create JobSets but not read nodes
    nodes_forbidden: bool = False
    # (cluster, JobSet name, how many times it was read): what the cluster has done by then
    on_poll: Callable[[StandinCluster, str, int], None] | None = None
    polls: Counter = field(default_factory=Counter)

    def set_pods(self, jobset: str, pods: list[dict]) -> None:
        self.pods = [p for p in self.pods if p["metadata"]["labels"][JOBSET_NAME_LABEL] != jobset] + pods

    def unschedulable(self, jobset: str, pods: int, message: str, event: bool = True) -> None:
        """The JobSet's pods pending, none placed, with the scheduler's message (and its FailedScheduling event)."""
        self.set_pods(jobset, [pod(jobset, i, "Pending", unscheduled=message) for i in range(pods)])
        if event:
            self.events.append(failed_scheduling(f"{jobset}-node-0-0", message))

    def complete(self, jobset: str) -> None:
        self.jobsets[jobset]["status"] = {"conditions": [{"type": "Completed", "status": "True"}]}


def node(name: str, labels: dict, gpus: int, memory: str) -> dict:
    allocatable = {"nvidia.com/gpu": str(gpus), "memory": memory, "cpu": "224"}
    return {"metadata": {"name": name, "labels": labels}, "status": {"allocatable": allocatable}}


def pod(jobset: str, index: int, phase: str, node_name: str | None = None, unscheduled: str | None = None) -> dict:
    """A pod of the JobSet's replicated job; `unscheduled`: the PodScheduled condition's message of a pod not placed."""
    labels = {JOBSET_NAME_LABEL: jobset, COMPLETION_INDEX_LABEL: str(index)}
    spec = {"containers": [{"name": CONTAINER, "image": "sftc:test"}], **({"nodeName": node_name} if node_name else {})}
    not_placed = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unscheduled}
    status = {"phase": phase, "conditions": [not_placed] if unscheduled else []}
    return {"metadata": {"name": f"{jobset}-node-0-{index}", "labels": labels}, "spec": spec, "status": status}


def failed_scheduling(pod_name: str, message: str, at: str = "2026-01-05T10:00:00Z") -> dict:
    return {
        "metadata": {"name": f"{pod_name}.{at}", "creationTimestamp": at},
        "involvedObject": {"kind": "Pod", "name": pod_name},
        "reason": "FailedScheduling",
        "type": "Warning",
        "message": message,
        "lastTimestamp": at,
    }


def _selected(wanted: str, labels: dict) -> bool:
    return dict(pair.split("=", 1) for pair in wanted.split(",") if pair).items() <= labels.items()


class _Api(BaseHTTPRequestHandler):
    cluster: StandinCluster

    def _send(self, status: int, body: dict | str) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _not_found(self) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_GET(self):  # noqa: N802 (the handler's API)
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        cluster = self.cluster
        if url.path == "/api/v1/nodes":
            if cluster.nodes_forbidden:
                said = 'nodes is forbidden: User "system:serviceaccount:sftc:default" cannot list resource "nodes"'
                self._send(403, {"kind": "Status", "reason": "Forbidden", "code": 403, "message": said})
                return
            items = [n for n in cluster.nodes if _selected(query.get("labelSelector", ""), n["metadata"]["labels"])]
            self._send(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items})
        elif url.path.startswith(JOBSETS) and parts[-2] == PLURAL:
            name = parts[-1]
            if name not in cluster.jobsets:
                self._not_found()
                return
            cluster.polls[name] += 1
            if cluster.on_poll is not None:
                cluster.on_poll(cluster, name, cluster.polls[name])
            self._send(200, cluster.jobsets[name])
        elif parts[-1] == "pods":
            items = [p for p in cluster.pods if _selected(query.get("labelSelector", ""), p["metadata"]["labels"])]
            self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        elif parts[-1] == "events":
            wanted = dict(pair.split("=", 1) for pair in query.get("fieldSelector", "").split(",") if pair)
            items = [
                e
                for e in cluster.events
                if wanted.get("involvedObject.name", e["involvedObject"]["name"]) == e["involvedObject"]["name"]
                and wanted.get("reason", e["reason"]) == e["reason"]
            ]
            self._send(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})
        elif parts[-1] == "log":
            self._send(200, "")
        else:
            self._not_found()

    def do_POST(self):  # noqa: N802
        body = self._body()
        if not self.path.startswith(JOBSETS):
            self._not_found()
            return
        self.cluster.jobsets[body["metadata"]["name"]] = {**body, "status": {}}
        self._send(201, body)

    def do_DELETE(self):  # noqa: N802
        self._body()
        name = urlparse(self.path).path.strip("/").split("/")[-1]
        if self.cluster.jobsets.pop(name, None) is None:
            self._not_found()
            return
        self.cluster.deleted.append(name)
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def log_message(self, *args):
        pass


def serve(tmp_path: Path, monkeypatch) -> Iterator[StandinCluster]:
    """A StandinCluster served on 127.0.0.1, named by KUBECONFIG (no in-cluster service account here)."""
    cluster = StandinCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Api", (_Api,), {"cluster": cluster}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield cluster
    server.shutdown()
