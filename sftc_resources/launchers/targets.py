"""Can the target hold the step? The GPUs of where the step will run, not of the node that submits it: this
node (local), the Slurm partition's nodes (sinfo, their gres), the Kubernetes GPU node pool (configs/cluster.yaml).
Plain functions, for the GPU gate of the assets and for the GPU plan (preflight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sftc_core.gpu import probe_gpus
from sftc_core.launch import EntryStep
from sftc_core.text import format_bytes
from sftc_resources.launchers import slurm
from sftc_resources.launchers.plan import Launch, LaunchError


@dataclass(frozen=True)
class TargetCheck:
    launcher: str
    ok: bool
    needed: str
    found: str

    def as_dict(self) -> dict:
        return asdict(self)


def needed(step: EntryStep) -> str:
    return f"{step.nodes} node(s) x {step.gpus_per_node} GPU(s)"


def check_target(step: EntryStep, launch: Launch, host_memory_bytes: int = 0) -> TargetCheck:
    """`host_memory_bytes`: what each node must also hold in host memory (the GPU plan asks for the NeMo import's)."""
    if launch.launcher == "local":
        probe = probe_gpus()
        return TargetCheck("local", step.nodes == 1 and probe.device_count >= step.gpus_per_node, needed(step), f"this node: {probe.describe()}")
    if launch.launcher == "slurm":
        partition = launch.cluster.slurm.partition
        try:
            nodes = slurm.partition_nodes(partition)
        except LaunchError as exc:
            return TargetCheck("slurm", False, needed(step), str(exc))
        problems = [p for p in (slurm.gpu_capacity_problem(step, nodes, partition, host_memory_bytes), slurm.time_limit_problem(launch.time_limit, nodes, partition)) if p]
        summary = ", ".join(f"{n.name}: {n.gpus} GPU(s)" + (f", {format_bytes(n.memory_bytes)}" if n.memory_bytes else "") + f" {n.state}" for n in nodes[:8])
        found = f"{len(nodes)} node(s): {summary}" + (" ..." if len(nodes) > 8 else "")
        return TargetCheck("slurm", not problems, needed(step), "; ".join(problems) + f" ({found})" if problems else found)
    pool = launch.cluster.node_pools.gpu
    ok = pool.gpus >= step.gpus_per_node
    found = f"node pool gpu (selector {pool.node_selector}): {pool.gpus} GPU(s) per node in configs/cluster.yaml"
    return TargetCheck("k8s", ok, needed(step), found if ok else f"{found}, fewer than the step's {step.gpus_per_node}")
