"""Node routing: which node class (cpu or gpu) an asset's work runs on, and the run/op tags that say so.

(First version; the orchestration work extends it with Kubernetes tags from configs/cluster.yaml.)
"""

from __future__ import annotations

from typing import Literal

ComputeClass = Literal["cpu", "gpu", "auto"]
NodeClass = Literal["cpu", "gpu"]

NODE_TAG = "sftc/node"
GPU_POOL = "gpu"


def node_class(compute_class: ComputeClass, profile_name: str) -> NodeClass:
    """`auto` is GPU work in the full profile and CPU work at toy sizes."""
    if compute_class == "auto":
        return "gpu" if profile_name == "full" else "cpu"
    return compute_class


def asset_placement(compute_class: ComputeClass, profile_name: str) -> dict:
    """Keyword arguments for `dg.asset`: op tags for the node, the GPU pool, the compute class in metadata."""
    node = node_class(compute_class, profile_name)
    return {
        "op_tags": {NODE_TAG: node},
        "pool": GPU_POOL if node == "gpu" else None,
        "metadata": {"compute_class": compute_class, "node": node},
    }
