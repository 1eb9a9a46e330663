"""The target cluster asked directly, where it is configured and reachable: the Kubernetes API's nodes of the GPU
pool (node selector of configs/cluster.yaml), their allocatable GPUs and memory against the GPU plan.
"""

from __future__ import annotations

import os

from sftc_assets.training import memory
from sftc_assets.training.architecture import Architecture
from sftc_core.checks import FAIL, NOT_CHECKED, PASS, TARGET_CLUSTER, Check
from sftc_core.configs import GPU_RESOURCE, quantity_bytes
from sftc_core.settings import Settings
from sftc_core.text import format_bytes

API_TIMEOUT_S = 10


def kubernetes_gpu_nodes(settings: Settings, needed: str, arch: Architecture | None) -> Check:
    """Nodes of the GPU pool with the GPUs (and, the architecture known, the host memory of the import) the plan needs."""
    from kubernetes import client, config  # the Kubernetes client comes with dagster-k8s

    try:
        try:
            config.load_incluster_config()
            where = "the in-cluster service account"
        except config.ConfigException:
            # Read KUBECONFIG now: the client fixes its default path when it is first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG", "~/.kube/config"))
            where = "the kubeconfig"
    except (config.ConfigException, OSError) as exc:
        return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed, f"no Kubernetes configuration here ({exc})",
                     "run the check where KUBECONFIG or an in-cluster service account reaches the cluster")  # fmt: skip
    pool = settings.cluster.node_pools.gpu
    selector = ",".join(f"{key}={value}" for key, value in pool.node_selector.items())
    try:
        nodes = client.CoreV1Api().list_node(label_selector=selector, _request_timeout=API_TIMEOUT_S).items
    except Exception as exc:  # the client raises its own ApiException and urllib3's network errors alike
        return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed, f"the Kubernetes API named by {where} did not answer: {exc}".splitlines()[0])
    finetune = settings.finetune
    ram = memory.import_host_memory(arch, None, "").needed_bytes if arch else 0
    usable = []
    for node in nodes:
        allocatable = node.status.allocatable or {}
        gpus = int(allocatable.get(GPU_RESOURCE, "0"))
        node_memory = quantity_bytes(allocatable.get("memory", "0"))
        if gpus >= finetune.gpus_per_node and node_memory >= ram:
            usable.append(node.metadata.name)
    found = f"{len(usable)} of {len(nodes)} node(s) matching {selector or 'any label'} have {finetune.gpus_per_node} {GPU_RESOURCE}" + (
        f" and {format_bytes(ram)} of memory for the import" if ram else ""
    )
    if len(usable) < finetune.nodes:
        return Check("target cluster", TARGET_CLUSTER, FAIL, needed, found,
                     f"add GPU nodes to the pool or lower nodes in {finetune.source}; check node_pools.gpu.node_selector in configs/cluster.yaml")  # fmt: skip
    return Check("target cluster", TARGET_CLUSTER, PASS, needed, found + f" ({where})")
