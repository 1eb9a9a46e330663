"""Node routing: which node class (cpu or gpu) an asset's work runs on, and the run/op tags that say so.

Every asset declares a compute class: `cpu`, `gpu`, or `auto` (GPU when the profile's checkpoint is
bigger than what a CPU may handle: the toy model's work is CPU work). The node class becomes the asset
tag `sftc/node` (the graph, the catalog and the sensors read it), the same op tag, and a
`dagster-k8s/config` tag (node selector, tolerations, resources, `nvidia.com/gpu` limits) built from
configs/cluster.yaml, read by the step-per-pod executor (op tags) and by the Kubernetes run launcher (run tags:
only where SFTC_K8S_PLACEMENT says Kubernetes places the runs; elsewhere a run carries `sftc/node` alone).
No Dagster here: the tags are plain strings.
"""

from __future__ import annotations

import json
from typing import Literal

from sftc_core.configs import GPU_RESOURCE, ClusterConfig, NodePool, ProfileConfig
from sftc_core.settings import Placement, Settings
from sftc_core.text import format_bytes

ComputeClass = Literal["cpu", "gpu", "auto"]
NodeClass = Literal["cpu", "gpu"]
NODE_CLASSES: tuple[NodeClass, ...] = ("cpu", "gpu")

NODE_TAG = "sftc/node"
# The data directory a chain run writes: one run per data directory at a time (the lock, the run queue's limit).
DATA_DIR_TAG = "sftc/data_dir"
# Tag on every run of the chain: the assets it materializes, comma-separated (the validation report finds them by it).
ASSETS_TAG = "sftc/assets"
# Tag on every run of one `cpu_validation`: its value is the id of the validation's own run.
VALIDATION_RUN_TAG = "sftc/validation_run"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_POOL = "gpu"
# The compute class of each asset that may need a GPU (every other asset is cpu work): the assets' placement and the GPU
# plan's routing rows both read it here.
COMPUTE_CLASSES: dict[str, ComputeClass] = {
    "bf16_checkpoint": "auto",
    "nemo_model": "gpu",
    "sft_model": "auto",
    "eval_csv": "auto",
}


def node_class(compute_class: ComputeClass, profile: ProfileConfig) -> NodeClass:
    """`auto` is decided by the profile's checkpoint size (CPU work at toy sizes, GPU work in the full profile)."""
    if compute_class == "auto":
        return profile.compute.auto_node
    if compute_class not in NODE_CLASSES:
        raise ValueError(f"compute class {compute_class!r}: expected one of cpu, gpu, auto")
    return compute_class


def k8s_config(node: NodeClass, cluster: ClusterConfig) -> dict:
    """The `dagster-k8s/config` object for a node class (dagster-k8s's UserDefinedDagsterK8sConfig shape)."""
    pool: NodePool = getattr(cluster.node_pools, node)
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


def node_tags(node: NodeClass, cluster: ClusterConfig) -> dict[str, str]:
    """Run (or op) tags placing work on a node class: `sftc/node` and `dagster-k8s/config` (JSON)."""
    return {NODE_TAG: node, K8S_CONFIG_TAG: json.dumps(k8s_config(node, cluster), sort_keys=True)}


def run_tags(node: NodeClass, placement: Placement, cluster: ClusterConfig) -> dict[str, str]:
    """Run tags for the runs of one node class that a run launcher starts (sensors, the schedule, the nightly job):
    `sftc/node` first, for people and the run queue; `dagster-k8s/config` only where Kubernetes places the runs.
    With a pod per step, the run's own pod only orchestrates: it stays on the CPU pool (dagster-k8s gives step
    pods the op tags, not the run's), while `sftc/node` still feeds the run queue's GPU limit."""
    if placement == "none":
        return {NODE_TAG: node}
    if placement == "step":
        return {**node_tags("cpu", cluster), NODE_TAG: node}
    return node_tags(node, cluster)


def launched_run_tags(node: NodeClass, settings: Settings) -> dict[str, str]:
    """`run_tags` plus the data directory (the run queue's limit and the interrupted-run sweep read it): the tags of
    every run the sensors, the schedule and the nightly job start."""
    return {**run_tags(node, settings.k8s_placement, settings.cluster), DATA_DIR_TAG: str(settings.data_dir)}


def node_reason(compute_class: ComputeClass, profile: ProfileConfig) -> str:
    """Why an asset runs where it does: its compute class, for `auto` the profile's checkpoint against the CPU limit."""
    if compute_class != "auto":
        return f"compute class {compute_class}"
    size, limit = profile.compute.expected_checkpoint_bytes, profile.compute.cpu_max_checkpoint_bytes
    checkpoint = (
        f"this profile's checkpoint is {format_bytes(size)}"
        if size is not None
        else "this profile does not say how big its checkpoint is"
    )
    return f"compute class auto: a GPU node above a {format_bytes(limit)} checkpoint; {checkpoint}"


def node_sentence(compute_class: ComputeClass, profile: ProfileConfig) -> str:
    """Where an asset runs, in words, for its description in the web UI."""
    where = "the CPU node" if node_class(compute_class, profile) == "cpu" else "a GPU node"
    in_profile = f" in the {profile.name} profile" if compute_class == "auto" else ""
    return f"Runs on {where}{in_profile} ({node_reason(compute_class, profile)})."


def asset_placement(compute_class: ComputeClass, settings: Settings) -> dict:
    """Keyword arguments for `dg.asset`: the node as asset tag and op tags, the GPU pool,
    the compute class in metadata."""
    node = node_class(compute_class, settings.profile)
    return {
        "tags": {NODE_TAG: node},
        "op_tags": node_tags(node, settings.cluster),
        "pool": GPU_POOL if node == "gpu" else None,
        "metadata": {"compute_class": compute_class, "node": node},
    }


def check_placement(compute_class: ComputeClass, settings: Settings) -> dict:
    """The same placement for an asset check (checks carry no asset tags or metadata of their own)."""
    placement = asset_placement(compute_class, settings)
    return {"op_tags": placement["op_tags"], "pool": placement["pool"]}
