"""Can the target hold the step? The GPUs of where the step will run, not of the node that submits it: this
node (local), the Slurm partition's nodes (sinfo, their gres), the Kubernetes GPU node pool (configs/cluster.yaml).
And will the cluster start the job as rendered (`admit`): Slurm's own verdict on the script, the pool's nodes
asked through the Kubernetes API. Plain functions, for the GPU gate of the assets, the GPU plan (preflight) and
every launch before it submits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from sftc_core.configs import GPU_RESOURCE
from sftc_core.gpu import probe_gpus
from sftc_core.launch import EntryStep
from sftc_core.text import format_bytes
from sftc_platform.launchers import k8s, slurm
from sftc_platform.launchers.plan import CLUSTER_FILE, Launch, LaunchError, shape_source


@dataclass(frozen=True)
class TargetCheck:
    launcher: str
    ok: bool
    needed: str
    found: str
    checked: bool = True  # False: the target could not be asked (`found` says why), so nothing is known against it

    def as_dict(self) -> dict:
        return asdict(self)


def needed(step: EntryStep) -> str:
    return f"{step.nodes} node(s) x {step.gpus_per_node} GPU(s)"


def check_target(step: EntryStep, launch: Launch, host_memory_bytes: int = 0) -> TargetCheck:
    """`host_memory_bytes`: what each node must also hold in host memory (the GPU plan asks for the NeMo import's)."""
    if launch.launcher == "local":
        probe = probe_gpus()
        return TargetCheck(
            "local",
            step.nodes == 1 and probe.device_count >= step.gpus_per_node,
            needed(step),
            f"this node: {probe.describe()}",
        )
    if launch.launcher == "slurm":
        partition = launch.cluster.slurm.partition
        try:
            nodes = slurm.partition_nodes(partition)
        except LaunchError as exc:
            return TargetCheck("slurm", False, needed(step), str(exc))
        problems = [
            slurm.gpu_capacity_problem(step, nodes, partition, host_memory_bytes),
            slurm.node_limit_problem(step, nodes, partition),
            slurm.time_limit_problem(launch.time_limit, nodes, partition),
        ]
        problems = [problem for problem in problems if problem]
        summary = ", ".join(
            f"{n.name}: {n.gpus} GPU(s)"
            + (f", {format_bytes(n.memory_bytes)}" if n.memory_bytes else "")
            + f" {n.state}"
            for n in nodes[:8]
        )
        found = f"{len(nodes)} node(s): {summary}" + (" ..." if len(nodes) > 8 else "")
        return TargetCheck(
            "slurm", not problems, needed(step), "; ".join(problems) + f" ({found})" if problems else found
        )
    pool = launch.cluster.node_pools.gpu
    ok = pool.gpus >= step.gpus_per_node
    found = f"node pool gpu (selector {pool.node_selector}): {pool.gpus} GPU(s) per node in configs/cluster.yaml"
    return TargetCheck("k8s", ok, needed(step), found if ok else f"{found}, fewer than the step's {step.gpus_per_node}")


def admit(step: EntryStep, launch: Launch, job_dir: Path, host_memory_bytes: int = 0) -> TargetCheck:
    """Will the cluster start the job as rendered, asked before anything is submitted: on Slurm the partition's nodes
    (check_target) and sbatch --test-only on the script; on Kubernetes the pool's nodes through the API, their
    allocatable GPUs and memory against the pods' requests (and `host_memory_bytes`, where the plan asks more).
    `local`: not asked here (the GPU gate probes this node)."""
    if launch.launcher == "slurm":
        if not slurm.slurm_available():  # then sbatch says why it cannot submit either
            partition = launch.cluster.slurm.partition
            asked = f"partition {partition}" if partition else "the cluster"
            said = f"sinfo does not answer on this node: {asked} not asked"
            return TargetCheck("slurm", True, needed(step), said, checked=False)
        found = check_target(step, launch, host_memory_bytes)
        try:
            script = slurm.render_sbatch(step, launch, job_dir)
            starts, said = slurm.sbatch_test_only(script, launch.cluster.slurm.partition)
        except LaunchError as exc:  # sbatch not answering
            starts, said = False, str(exc)
        return TargetCheck("slurm", found.ok and starts, found.needed, f"{found.found}; sbatch --test-only: {said}")
    if launch.launcher == "k8s":
        return _admit_on_kubernetes(step, launch, host_memory_bytes)
    return TargetCheck("local", True, needed(step), "this node: its GPUs are the gate's to probe", checked=False)


def _admit_on_kubernetes(step: EntryStep, launch: Launch, host_memory_bytes: int) -> TargetCheck:
    from kubernetes import client, config  # the Kubernetes client comes with dagster-k8s

    try:
        where = k8s.load_kube_config()  # the same cluster a JobSet would be created in
    except (config.ConfigException, OSError) as exc:
        return TargetCheck("k8s", True, needed(step), f"no Kubernetes configuration here ({exc})", checked=False)
    try:
        pool = k8s.pool_capacity(client.CoreV1Api(), step, launch, host_memory_bytes)
    except Exception as exc:  # the client's ApiException (a 403 where nodes may not be listed) and urllib3's errors
        said = f"the Kubernetes API named by {where} did not list the nodes: {k8s.api_error_text(exc)}"
        return TargetCheck("k8s", True, needed(step), said, checked=False)
    selector = k8s.node_selector_text(getattr(launch.cluster.node_pools, k8s.pool_of(step))) or "any label"
    found = (
        f"{len(pool.usable)} of {len(pool.nodes)} node(s) matching {selector} have {step.gpus_per_node} "
        f"{GPU_RESOURCE} and {format_bytes(pool.memory_bytes)} of memory allocatable ({where})"
    )
    return TargetCheck("k8s", len(pool.usable) >= step.nodes, needed(step), found)


def refusal_fix(step: EntryStep, launch: Launch) -> str:
    """What to change when the cluster would not start the job, and where."""
    shape = shape_source(step, launch)
    if launch.launcher == "k8s":
        return f"{shape}; or node_pools.{k8s.pool_of(step)} in {CLUSTER_FILE} (node_selector, resources)"
    cluster = f"slurm.partition, account, qos or sbatch_options in {CLUSTER_FILE}"
    return f"{shape}; launch.time_limit in {launch.profile_file}; {cluster}"
