"""The `k8s` launcher: a JobSet (jobset.x-k8s.io/v1alpha2) of `nodes` pods, each a torchrun agent on the GPU node
pool, created through the Kubernetes API, watched to completion, deleted on cancel, its rank-0 pod's log streamed.

Why a JobSet: it is the Kubernetes SIG's multi-node job primitive (Kubeflow Trainer's TrainJob is built on it),
needs one controller and no training-framework runtime, and leaves the pod's command ours: the same torchrun line
as on Slurm, with c10d rendezvous at the first pod's stable DNS name (<jobset>-node-0-0.<jobset>).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from sftc_core.configs import NodePool, quantity_bytes
from sftc_core.launch import EntryStep
from sftc_platform.launchers.plan import (
    CLUSTER_FILE,
    JobStatus,
    Launch,
    LaunchError,
    Waiting,
    shape_source,
    single_argv,
    time_seconds,
    torchrun_argv,
)
from sftc_platform.routing import GPU_RESOURCE, NodeClass, k8s_config

GROUP, VERSION, PLURAL, KIND = "jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet"
REPLICATED_JOB = "node"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
CONTAINER = "step"
API_TIMEOUT_S = 10


def jobset_name(step: EntryStep, suffix: str) -> str:
    """A DNS-1035 label short enough for the pods' hostnames (<name>-node-0-0 under 63 characters)."""
    raw = f"sftc-{step.name}-{suffix}".lower()
    return re.sub(r"[^a-z0-9-]+", "-", raw)[:40].strip("-")


def render_jobset(step: EntryStep, launch: Launch, name: str, env: dict[str, str] | None = None) -> dict:
    """The JobSet manifest: one replicated Job of `nodes` indexed pods on the node pool the step needs."""
    kube = launch.cluster.kubernetes
    image = kube.images.get(step.environment)
    if not image:
        raise LaunchError(
            f"configs/cluster.yaml: field 'kubernetes.images.{step.environment}' is not set; "
            f"the {step.name} step needs an image for its environment"
        )
    pool = k8s_config("gpu" if step.gpus_per_node else "cpu", launch.cluster)
    resources = {kind: dict(values) for kind, values in pool["container_config"]["resources"].items()}
    for kind in ("requests", "limits"):
        resources[kind].pop(GPU_RESOURCE, None)
        if step.gpus_per_node:
            resources[kind][GPU_RESOURCE] = str(step.gpus_per_node)  # request == limit, as Kubernetes requires
    head = f"{name}-{REPLICATED_JOB}-0-0.{name}:{kube.rendezvous_port}"
    # the data volume is mounted at data_mount_path: paths under the data dir are handed over as the pods see them
    in_pod = replace(step, args=tuple(arg.replace(str(launch.data_dir), kube.data_mount_path) for arg in step.args))
    command = torchrun_argv(in_pod, "python", head, name) if step.distributed else single_argv(in_pod, "python")
    variables = {
        **launch.job_env(step),
        "SFTC_LAUNCHER": "k8s",
        "PYTHONPATH": "/app",
        "SFTC_DATA_DIR": kube.data_mount_path,
        **(env or {}),
    }
    pod_spec = {
        "restartPolicy": "Never",
        "subdomain": name,
        "nodeSelector": pool["pod_spec_config"]["node_selector"],
        "tolerations": pool["pod_spec_config"]["tolerations"],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": kube.data_volume_claim}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": kube.shm_size}},
        ],
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "workingDir": "/app",
                "command": command,
                "env": [{"name": key, "value": value} for key, value in variables.items()],
                "ports": [{"containerPort": kube.rendezvous_port, "name": "rendezvous"}],
                "resources": resources,
                "volumeMounts": [
                    {"name": "data", "mountPath": kube.data_mount_path},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
    }
    if kube.service_account:
        pod_spec["serviceAccountName"] = kube.service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": kube.namespace,
            "labels": {"app.kubernetes.io/managed-by": "sftc", "sftc.dev/step": step.name},
        },
        "spec": {
            # a failed pod fails the JobSet: the retry (Dagster's) resumes from the last checkpoint
            "failurePolicy": {"maxRestarts": 0},
            "network": {"enableDNSHostnames": True, "subdomain": name},
            "successPolicy": {"operator": "All"},
            "replicatedJobs": [
                {
                    "name": REPLICATED_JOB,
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "parallelism": step.nodes,
                            "completions": step.nodes,
                            "completionMode": "Indexed",
                            "backoffLimit": 0,
                            "activeDeadlineSeconds": time_seconds(launch.time_limit),
                            "template": {"metadata": {"labels": {"sftc.dev/step": step.name}}, "spec": pod_spec},
                        }
                    },
                }
            ],
        },
    }


def pool_of(step: EntryStep) -> NodeClass:
    """The node pool a step's pods go to: the GPU pool when it asks for GPUs."""
    return "gpu" if step.gpus_per_node else "cpu"


@dataclass(frozen=True)
class PoolNode:
    """A node of a pool as the API reports it: what a pod may be given there (status.allocatable)."""

    name: str
    gpus: int
    memory_bytes: int


def node_selector_text(pool: NodePool) -> str:
    return ",".join(f"{key}={value}" for key, value in pool.node_selector.items())


@dataclass(frozen=True)
class PoolCapacity:
    """The nodes of a step's pool, and those that could hold one of its pods were they idle."""

    nodes: list[PoolNode]
    usable: list[str]
    memory_bytes: int  # what each pod needs: its memory request, or more where the plan asks it


def pool_capacity(core, step: EntryStep, launch: Launch, memory_bytes: int = 0) -> PoolCapacity:
    """The nodes carrying the labels of the step's pool (`core`: a CoreV1Api), and which of them have the GPUs and
    memory its pods request allocatable (node_pools.<pool>.resources.requests.memory, at least `memory_bytes`)."""
    pool = getattr(launch.cluster.node_pools, pool_of(step))
    memory_bytes = max(memory_bytes, quantity_bytes(pool.resources.requests.get("memory", "0")))
    nodes = []
    for node in core.list_node(label_selector=node_selector_text(pool), _request_timeout=API_TIMEOUT_S).items:
        allocatable = node.status.allocatable or {}
        gpus, memory = int(allocatable.get(GPU_RESOURCE, "0")), quantity_bytes(allocatable.get("memory", "0"))
        nodes.append(PoolNode(node.metadata.name, gpus, memory))
    usable = [node.name for node in nodes if node.gpus >= step.gpus_per_node and node.memory_bytes >= memory_bytes]
    return PoolCapacity(nodes, usable, memory_bytes)


# The scheduler's FailedScheduling message: "0/5 nodes are available: 3 Insufficient nvidia.com/gpu, 2 node(s) had
# untolerated taint {dedicated: gpu}. preemption: ..."; each count a reason that held those nodes back.
_UNSCHEDULABLE = re.compile(r"0/\d+ nodes are available: (.*?)(?:\. preemption:.*|\.)?$", re.S)
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found')


def scheduling_waiting(message: str, step: EntryStep, launch: Launch, pool_holds_pods: bool | None) -> Waiting:
    """A pod the scheduler could place on no node, as a Waiting. It never clears when every node is held back for
    good: a missing data volume claim, the pool's labels or taints, or resources no node of the pool has
    (`pool_holds_pods` False: its allocatable is below the request; None: not known, so not held permanent)."""
    pool = f"node_pools.{pool_of(step)}"
    claim = _MISSING_CLAIM.search(message)
    if claim:
        namespace = launch.cluster.kubernetes.namespace
        fix = f"create it in namespace {namespace}, or set kubernetes.data_volume_claim in {CLUSTER_FILE}"
        return Waiting("Unschedulable", f"its data volume claim {claim.group(1)} does not exist", clears=False, fix=fix)
    said = message.split(". preemption:")[0].strip()
    parsed = _UNSCHEDULABLE.match(message.strip())
    if not parsed:
        return Waiting("Unschedulable", said or "the scheduler has not placed it yet")
    fixes = {}
    for held_back in re.split(r",\s*(?=\d+ )", parsed.group(1)):
        if "didn't match Pod's node affinity/selector" in held_back:
            fixes["labels"] = f"set {pool}.node_selector in {CLUSTER_FILE} to labels of the nodes (kubectl get nodes)"
        elif "untolerated taint" in held_back:
            fixes["taints"] = f"add the taint to {pool}.tolerations in {CLUSTER_FILE} (kubectl describe node shows it)"
        elif "Insufficient" in held_back and pool_holds_pods is False:
            shape = shape_source(step, launch)
            fixes["size"] = f"no node of the pool can hold a pod: {shape}; or lower {pool}.resources in {CLUSTER_FILE}"
        else:
            return Waiting("Unschedulable", said)  # busy, cordoned, or not known to be for good: it may clear
    return Waiting("Unschedulable", said, clears=False, fix="; ".join(fixes.values()))


def container_waiting(reason: str, message: str, step: EntryStep) -> Waiting:
    """A scheduled pod whose container has not started (ContainerCreating, ImagePullBackOff): an image name that
    cannot be pulled at all never clears."""
    fix = f"set kubernetes.images.{step.environment} in {CLUSTER_FILE} to an image the nodes can pull"
    never = reason in ("InvalidImageName", "ErrImageNeverPull")
    return Waiting(reason, message or "its container is being created", clears=not never, fix=fix)


def api_error_text(exc: Exception) -> str:
    """An API error in one line: the status, its reason and the server's message (a 403's names what is forbidden)."""
    status, reason, body = (getattr(exc, name, None) for name in ("status", "reason", "body"))
    if status is None:
        return str(exc).splitlines()[0]  # urllib3's network errors
    try:
        message = json.loads(body or "{}").get("message", "")
    except ValueError:
        message = ""
    return f"{status} {reason}" + (f": {message}" if message else "")


def load_kube_config() -> str:
    """Point the Kubernetes client at the cluster: the in-cluster service account, else the kubeconfig KUBECONFIG
    names now (the client fixes its default path when it is first imported); says which."""
    from kubernetes import config

    try:
        config.load_incluster_config()
        return "the in-cluster service account"
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG", "~/.kube/config"))
        return "the kubeconfig"


def status_of(jobset: dict) -> JobStatus:
    """The JobSet's state from its status conditions (Completed / Failed / Suspended), else running."""
    conditions = {
        c.get("type"): c for c in (jobset.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    }
    if "Completed" in conditions:
        return JobStatus("Completed", done=True, ok=True)
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return JobStatus(
            "Failed", done=True, reason=f"{failed.get('reason', '')}: {failed.get('message', '')}".strip(": ")
        )
    if "Suspended" in conditions:
        return JobStatus("Suspended")
    return JobStatus("Running")


class K8sJob:
    """A created JobSet; its log is the rank-0 pod's (index 0), read again from the last offset on each poll."""

    launcher = "k8s"

    def __init__(self, step: EntryStep, launch: Launch, job_dir: Path, env: dict[str, str], name: str, api_client=None):
        from kubernetes import client  # the kubernetes client loads only where a JobSet is created

        if api_client is None:
            load_kube_config()
        self.step, self.launch = step, launch
        self.namespace = launch.cluster.kubernetes.namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.name = self.id = name
        self.manifest = render_jobset(step, launch, name, env)
        self.log_path = Path(job_dir) / "rank0.log"
        self._offset = 0
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.manifest)

    def poll(self) -> JobStatus:
        """The JobSet's state; before it ends, whether all its pods run (and where) or why they wait: the scheduler's
        FailedScheduling event of a pod it could not place, or the container's waiting reason of a placed one."""
        status = status_of(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name))
        if status.done:
            return status
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOBSET_NAME_LABEL}={self.name}").items
        waiting = [pod for pod in pods if pod.status.phase == "Pending"]
        if waiting:
            return replace(status, state="Pending", waiting=self._why_waiting(waiting[0]))
        if len(pods) < self.step.nodes:
            created = Waiting("NoPods", f"{len(pods)} of {self.step.nodes} pod(s) created so far")
            return replace(status, state="Pending", waiting=created)
        return replace(status, nodes=", ".join(sorted({pod.spec.node_name for pod in pods if pod.spec.node_name})))

    def _why_waiting(self, pod) -> Waiting:
        if pod.spec.node_name:  # placed: its container has not started
            states = [c.state.waiting for c in pod.status.container_statuses or [] if c.state and c.state.waiting]
            if not states:
                return Waiting("ContainerCreating")
            return container_waiting(states[0].reason, states[0].message or "", self.step)
        selector = f"involvedObject.name={pod.metadata.name},reason=FailedScheduling"
        events = self.core.list_namespaced_event(self.namespace, field_selector=selector).items
        latest = max(events, key=lambda event: event.last_timestamp or event.metadata.creation_timestamp, default=None)
        conditions = [c.message for c in pod.status.conditions or [] if (c.type, c.status) == ("PodScheduled", "False")]
        message = latest.message if latest is not None else next(iter(conditions), "") or ""
        holds = self.pool_holds_pods if "Insufficient" in message else None  # asked only where it matters
        return scheduling_waiting(message, self.step, self.launch, holds)

    @cached_property
    def pool_holds_pods(self) -> bool | None:
        """Whether enough nodes of the pool could give the pods what they request, were they idle (None: not known)."""
        try:
            return len(pool_capacity(self.core, self.step, self.launch).usable) >= self.step.nodes
        except Exception:  # listing nodes may be forbidden to the job's account: then not known
            return None

    def _rank0_pod(self) -> str | None:
        selector = f"{JOBSET_NAME_LABEL}={self.name},{COMPLETION_INDEX_LABEL}=0"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return pods[0].metadata.name if pods else None

    def read_log(self) -> str:
        from kubernetes.client.exceptions import ApiException

        pod = self._rank0_pod()
        if pod is None:
            return ""
        try:
            text = self.core.read_namespaced_pod_log(pod, self.namespace, container=CONTAINER)
        except ApiException:
            return ""  # the container has not started yet
        new, self._offset = text[self._offset :], len(text)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(new)
        return new

    def hosts(self) -> list[str]:
        return [
            f"{self.name}-{REPLICATED_JOB}-0-{i}.{self.name}"
            for i in range(self.manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"])
        ]

    def cancel(self) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, propagation_policy="Foreground"
        )
