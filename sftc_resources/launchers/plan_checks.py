"""The GPU plan's items that need the launcher layer: the full profile's fine-tune rendered with its launcher (the
sbatch script, the JobSet manifest or the local command) and checked against the plan's shape, and the target
cluster asked where it is configured and reachable (sinfo for the named Slurm partition, the Kubernetes API for
the GPU node pool). NOT CHECKED, with the reason, otherwise.

Plain functions (no Dagster): `sftc preflight`, the gpu_preflight check and the validation report hand
`gpu_plan_launch_checks` to `build_gpu_plan`.
"""

from __future__ import annotations

import shutil
import subprocess

from sftc_assets.training import memory, nemo_runner
from sftc_assets.training.architecture import Architecture
from sftc_core.checks import FAIL, GPU_PLAN, NOT_CHECKED, PASS, TARGET_CLUSTER, Check
from sftc_core.configs import GPU_RESOURCE, profile_path
from sftc_core.launch import EntryStep
from sftc_core.settings import Settings
from sftc_core.text import format_bytes
from sftc_resources.launchers import jobs, targets
from sftc_resources.launchers.plan import Launch, LaunchError


def plan_launch(settings: Settings) -> Launch:
    """The launch of the full profile's GPU run (its launcher, time limit and retries), as seen from this node."""
    return Launch.from_settings(settings, profile=settings.full_profile)


def gpu_plan_launch_checks(settings: Settings, arch: Architecture | None) -> list[Check]:
    """["launch plan", "target cluster"] of the full profile's NeMo fine-tune."""
    paths = settings.paths
    steps = nemo_runner.planned_steps(settings.finetune, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model)
    launch = plan_launch(settings)
    return [launch_plan_check(settings, steps, launch), target_cluster_check(settings, steps[0], launch, arch)]


def launch_plan_check(settings: Settings, steps: list[EntryStep], launch: Launch) -> Check:
    profile_file = profile_path(settings.full_profile.name, settings.config_dir)
    finetune = steps[0]
    needed = f"the {launch.launcher} launcher starting {jobs.describe(finetune)} (launch.launcher of {profile_file})"
    try:
        jobs.refuse_unlaunchable(steps, launch)
        plans = [jobs.render_plan(step, launch) for step in steps]
    except LaunchError as exc:
        return Check("launch plan", GPU_PLAN, FAIL, needed, str(exc), f"set launch.launcher: slurm or k8s in {profile_file} (configs/cluster.yaml says where)")
    problems = [problem for step, plan in zip(steps, plans) for problem in _rendered_problems(step, plan)]
    details = tuple(line for plan in plans for line in (_headline(plan), *_directives(plan)))
    if problems:
        return Check("launch plan", GPU_PLAN, FAIL, needed, "; ".join(problems), "fix the slurm: / kubernetes: section of configs/cluster.yaml", details)
    kinds = {"slurm": "sbatch script", "k8s": "JobSet manifest", "local": "command line"}
    return Check("launch plan", GPU_PLAN, PASS, needed, f"{len(plans)} step(s) rendered as {kinds[launch.launcher]}s: " + ", ".join(p["step"] for p in plans), details=details)


def _headline(plan: dict) -> str:
    """The step and, where it has one, the command each node runs."""
    command = plan.get("per_node_command") or plan.get("command")
    return f"{plan['step']}: {command}" if command else plan["step"]


def _directives(plan: dict) -> list[str]:
    script = plan.get("sbatch_script", "")
    return [line for line in script.splitlines() if line.startswith("#SBATCH ")]


def _rendered_problems(step: EntryStep, plan: dict) -> list[str]:
    """What in a rendered job disagrees with the step's shape (nodes, GPUs per node), or does not parse."""
    problems = []
    if "sbatch_script" in plan:
        script = plan["sbatch_script"]
        for directive in [f"--nodes={step.nodes}", *([f"--gpus-per-node={step.gpus_per_node}"] if step.gpus_per_node else [])]:
            if f"#SBATCH {directive}\n" not in script:
                problems.append(f"{step.name}: the sbatch script lacks #SBATCH {directive}")
        bash = shutil.which("bash")
        syntax = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True) if bash else None
        if syntax is not None and syntax.returncode:
            problems.append(f"{step.name}: the sbatch script does not parse: {syntax.stderr.strip().splitlines()[-1]}")
    if "manifest" in plan:
        job = plan["manifest"]["spec"]["replicatedJobs"][0]["template"]["spec"]
        container = job["template"]["spec"]["containers"][0]
        if job["parallelism"] != step.nodes or job["completions"] != step.nodes:
            problems.append(f"{step.name}: the JobSet runs {job['parallelism']} pod(s), the step needs {step.nodes}")
        gpus = container["resources"].get("limits", {}).get(GPU_RESOURCE)
        if step.gpus_per_node and gpus != str(step.gpus_per_node):
            problems.append(f"{step.name}: the pods ask for {gpus} {GPU_RESOURCE}, the step needs {step.gpus_per_node}")
    return problems


def target_cluster_check(settings: Settings, step: EntryStep, launch: Launch, arch: Architecture | None) -> Check:
    needed = f"{step.nodes} node(s) with {step.gpus_per_node} GPU(s) each where the {launch.launcher} launcher runs the fine-tune"
    if launch.launcher == "local":
        return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed,
                     "launcher local: the step runs on whichever node materializes it; `sftc preflight` on that node checks its GPUs")  # fmt: skip
    if launch.launcher == "slurm":
        partition = settings.cluster.slurm.partition
        if partition is None:
            return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed,
                         "configs/cluster.yaml names no slurm.partition: the GPU partition is the cluster's default, not asked from here",
                         "set slurm.partition in configs/cluster.yaml to the GPU partition (then sinfo is asked where it answers)")  # fmt: skip
        ram = _import_ram(arch)
        # a job dir as a submission has one (sbatch reads the script's paths); the same check every launch runs first
        found = targets.admit(step, launch, launch.data_dir / "launch" / f"{step.name}-test-only", ram)
        if not found.checked:
            return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed, found.found)
        fix = (f"a partition with the nodes (slurm.partition in configs/cluster.yaml), fewer nodes in {settings.finetune.source}, "
               f"or a launch.time_limit within the partition's in {profile_path(settings.full_profile.name, settings.config_dir)}")  # fmt: skip
        needed = f"{step.nodes} node(s) of partition {partition} with {step.gpus_per_node} GPU(s){_with_ram(ram)} each, its time limit at least launch.time_limit {launch.time_limit}"
        if found.ok:
            return Check("target cluster", TARGET_CLUSTER, PASS, needed, found.found)
        return Check("target cluster", TARGET_CLUSTER, FAIL, needed, found.found, fix)
    return kubernetes_gpu_nodes(settings, step, launch, needed, arch)


def kubernetes_gpu_nodes(
    settings: Settings, step: EntryStep, launch: Launch, needed: str, arch: Architecture | None
) -> Check:
    """Nodes of the GPU pool with the GPUs and memory (the pods' request; the architecture known, the import's host
    memory) the step needs: the check every launch runs first."""
    found = targets.admit(step, launch, launch.data_dir / "launch" / f"{step.name}-plan", _import_ram(arch))
    if not found.checked:
        return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed, found.found,
                     "run the check where KUBECONFIG or an in-cluster service account reaches the cluster")  # fmt: skip
    if not found.ok:
        return Check("target cluster", TARGET_CLUSTER, FAIL, needed, found.found,
                     f"add GPU nodes to the pool or lower nodes in {settings.finetune.source}; check node_pools.gpu.node_selector in configs/cluster.yaml")  # fmt: skip
    return Check("target cluster", TARGET_CLUSTER, PASS, needed, found.found)


def _import_ram(arch: Architecture | None) -> int:
    """Host memory each GPU node needs for the NeMo import (0 where the architecture is unknown: not asked)."""
    return memory.import_host_memory(arch, None, "").needed_bytes if arch else 0


def _with_ram(ram: int) -> str:
    return f" and {format_bytes(ram)} of memory for the import" if ram else ""
