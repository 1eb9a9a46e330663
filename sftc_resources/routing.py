"""Node routing: which node class (cpu or gpu) an asset's work runs on, and the run/op tags that say so.

Every asset declares a compute class: `cpu`, `gpu`, or `auto` (GPU when the profile's checkpoint is
bigger than what a CPU may handle: the toy model's work is CPU work). The node class becomes
`sftc/node` on ops and runs, and a `dagster-k8s/config` tag (node selector, tolerations, resources,
`nvidia.com/gpu` limits) built from configs/cluster.yaml, read by the Kubernetes run launcher (run
tags) and the step-per-pod executor (op tags). No Dagster here: the tags are plain strings.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from sftc_resources.settings import CONFIG_DIR, ConfigError, ProfileConfig, _Strict, load_profile, load_yaml_model

ComputeClass = Literal["cpu", "gpu", "auto"]
NodeClass = Literal["cpu", "gpu"]
NODE_CLASSES: tuple[NodeClass, ...] = ("cpu", "gpu")
# Where a Kubernetes deployment places work: the whole run in one pod on its node ("run"), or one pod
# per step with the step-per-pod executor ("step"); SFTC_K8S_PLACEMENT, see deploy/README.md.
Placement = Literal["run", "step"]
PLACEMENT_VAR = "SFTC_K8S_PLACEMENT"

NODE_TAG = "sftc/node"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_POOL = "gpu"
GPU_RESOURCE = "nvidia.com/gpu"
CLUSTER_CONFIG = CONFIG_DIR / "cluster.yaml"


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ContainerResources(_Strict):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class NodePool(_Strict):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: ContainerResources = Field(default_factory=ContainerResources)
    gpus: int = Field(default=0, ge=0)


class NodePools(_Strict):
    cpu: NodePool
    gpu: NodePool


class ClusterConfig(_Strict):
    node_pools: NodePools


@functools.cache
def load_cluster_config(path: Path | str = CLUSTER_CONFIG) -> ClusterConfig:
    config = load_yaml_model(path, ClusterConfig)
    if config.node_pools.gpu.gpus < 1:
        raise ConfigError(f"{path}: field 'node_pools.gpu.gpus' must be at least 1 (GPUs per GPU step), got 0")
    return config


def auto_node_class(profile: ProfileConfig) -> NodeClass:
    """GPU when the profile's checkpoint is bigger than a CPU may handle; an unknown size counts as big."""
    size = profile.compute.expected_checkpoint_bytes
    return "cpu" if size is not None and size <= profile.compute.cpu_max_checkpoint_bytes else "gpu"


def node_class(compute_class: ComputeClass, profile_name: str) -> NodeClass:
    """`auto` is decided by the profile's checkpoint size (CPU work at toy sizes, GPU work in the full profile)."""
    if compute_class == "auto":
        return auto_node_class(load_profile(profile_name))
    if compute_class not in NODE_CLASSES:
        raise ValueError(f"compute class {compute_class!r}: expected one of cpu, gpu, auto")
    return compute_class


def k8s_config(node: NodeClass, cluster: ClusterConfig | None = None) -> dict:
    """The `dagster-k8s/config` object for a node class (dagster-k8s's UserDefinedDagsterK8sConfig shape)."""
    pool: NodePool = getattr((cluster or load_cluster_config()).node_pools, node)
    limits = dict(pool.resources.limits)
    requests = dict(pool.resources.requests)
    if pool.gpus:
        # Kubernetes requires extended resources such as GPUs to have request == limit.
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE] = str(pool.gpus)
    return {
        "container_config": {"resources": {"requests": requests, "limits": limits}},
        "pod_spec_config": {
            "node_selector": dict(pool.node_selector),
            "tolerations": [t.model_dump(exclude_none=True) for t in pool.tolerations],
        },
    }


def node_tags(node: NodeClass, cluster: ClusterConfig | None = None) -> dict[str, str]:
    """Run (or op) tags placing work on a node class: `sftc/node` and `dagster-k8s/config` (JSON)."""
    return {NODE_TAG: node, K8S_CONFIG_TAG: json.dumps(k8s_config(node, cluster), sort_keys=True)}


def placement_mode(environ: Mapping[str, str] | None = None) -> Placement:
    value = (os.environ if environ is None else environ).get(PLACEMENT_VAR, "").strip().lower() or "run"
    if value not in ("run", "step"):
        raise ConfigError(f"{PLACEMENT_VAR}={value!r}: expected run (one pod per run) or step (one pod per step)")
    return value


def automated_run_tags(node: NodeClass, placement: Placement, cluster: ClusterConfig | None = None) -> dict[str, str]:
    """Run tags for automated runs of one node class. With a pod per step, the run's own pod only
    orchestrates: it stays on the CPU pool (dagster-k8s gives step pods the op tags, not the run's),
    while `sftc/node` still feeds the run queue's GPU limit."""
    if placement == "step":
        return {**node_tags("cpu", cluster), NODE_TAG: node}
    return node_tags(node, cluster)


def asset_placement(compute_class: ComputeClass, profile_name: str) -> dict:
    """Keyword arguments for `dg.asset`: op tags for the node, the GPU pool, the compute class in metadata."""
    node = node_class(compute_class, profile_name)
    return {
        "op_tags": node_tags(node),
        "pool": GPU_POOL if node == "gpu" else None,
        "metadata": {"compute_class": compute_class, "node": node},
    }
