"""The `k8s` launcher: a JobSet (jobset.x-k8s.io/v1alpha2) of `nodes` pods, each a torchrun agent on the GPU node
pool, created through the Kubernetes API, watched to completion, deleted on cancel, its rank-0 pod's log streamed.

Why a JobSet: it is the Kubernetes SIG's multi-node job primitive (Kubeflow Trainer's TrainJob is built on it),
needs one controller and no training-framework runtime, and leaves the pod's command ours: the same torchrun line
as on Slurm, with c10d rendezvous at the first pod's stable DNS name (<jobset>-node-0-0.<jobset>).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from sftc_core.launch import EntryStep
from sftc_resources.launchers.plan import JobStatus, Launch, LaunchError, single_argv, time_seconds, torchrun_argv
from sftc_resources.routing import GPU_RESOURCE, k8s_config

GROUP, VERSION, PLURAL, KIND = "jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet"
REPLICATED_JOB = "node"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
CONTAINER = "step"


def jobset_name(step: EntryStep, suffix: str) -> str:
    """A DNS-1035 label short enough for the pods' hostnames (<name>-node-0-0 under 63 characters)."""
    raw = f"sftc-{step.name}-{suffix}".lower()
    return re.sub(r"[^a-z0-9-]+", "-", raw)[:40].strip("-")


def render_jobset(step: EntryStep, launch: Launch, name: str, env: dict[str, str] | None = None) -> dict:
    """The JobSet manifest: one replicated Job of `nodes` indexed pods on the node pool the step needs."""
    kube = launch.cluster.kubernetes
    image = kube.images.get(step.environment)
    if not image:
        raise LaunchError(f"configs/cluster.yaml: field 'kubernetes.images.{step.environment}' is not set; the {step.name} step needs an image for its environment")
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
    variables = {**launch.job_env(step), "SFTC_LAUNCHER": "k8s", "PYTHONPATH": "/app", "SFTC_DATA_DIR": kube.data_mount_path, **(env or {})}
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
                "volumeMounts": [{"name": "data", "mountPath": kube.data_mount_path}, {"name": "dshm", "mountPath": "/dev/shm"}],
            }
        ],
    }
    if kube.service_account:
        pod_spec["serviceAccountName"] = kube.service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": kube.namespace, "labels": {"app.kubernetes.io/managed-by": "sftc", "sftc.dev/step": step.name}},
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
    conditions = {c.get("type"): c for c in (jobset.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Completed" in conditions:
        return JobStatus("Completed", done=True, ok=True)
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return JobStatus("Failed", done=True, reason=f"{failed.get('reason', '')}: {failed.get('message', '')}".strip(": "))
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
        self.namespace = launch.cluster.kubernetes.namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.name = self.id = name
        self.manifest = render_jobset(step, launch, name, env)
        self.log_path = Path(job_dir) / "rank0.log"
        self._offset = 0
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.manifest)

    def poll(self) -> JobStatus:
        return status_of(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name))

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
        return [f"{self.name}-{REPLICATED_JOB}-0-{i}.{self.name}" for i in range(self.manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"])]

    def cancel(self) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, propagation_policy="Foreground")
