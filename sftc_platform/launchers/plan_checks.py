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

from sftc_core.checks import FAIL, GPU_PLAN, NOT_CHECKED, PASS, TARGET_CLUSTER, WARN, Check
from sftc_core.configs import GPU_RESOURCE, profile_path
from sftc_core.cost import serving_nodes
from sftc_core.launch import EntryStep, PlannedRun
from sftc_core.settings import Settings
from sftc_core.text import format_bytes
from sftc_platform.launchers import jobs, targets
from sftc_platform.launchers.plan import Launch, LaunchError
from sftc_platform.routing import COMPUTE_CLASSES, node_class, node_reason


def plan_launch(settings: Settings) -> Launch:
    """The launch of the full profile's GPU run (its launcher, time limit and retries), as seen from this node."""
    return Launch.from_settings(settings, profile=settings.full_profile)


def gpu_plan_launch_checks(settings: Settings, run: PlannedRun) -> list[Check]:
    """Where each GPU asset of the full profile runs ("routing: <asset>"), then "launch plan" and "target cluster" of
    its NeMo fine-tune."""
    launch = plan_launch(settings)
    return [
        *routing_checks(settings, run, launch),
        launch_plan_check(settings, list(run.nemo_steps), launch),
        target_cluster_check(settings, run.nemo_steps[0], launch, run.import_host_bytes),
    ]


# What each GPU asset does with the full profile's model, for people.
GPU_WORK = {
    "bf16_checkpoint": "the FP8 -> BF16 conversion",
    "nemo_model": "the NeMo import",
    "sft_model": "the fine-tune",
    "eval_csv": "the evaluation's serving",
}


def routing_checks(settings: Settings, run: PlannedRun, launch: Launch) -> list[Check]:
    """A row per GPU asset of the full profile, the GPU run: its node class (its compute class, for `auto` the declared
    checkpoint size), why, and what starts its work. One routed to a CPU node fails, naming the setting to change."""
    full = settings.full_profile
    compute, profile_file = full.compute, profile_path(full.name, settings.config_dir)
    size = run.checkpoint_bytes
    model = f"the {format_bytes(size)} model" if size is not None else "the full profile's model"
    if size is not None and size <= compute.cpu_max_checkpoint_bytes:
        fix = f"lower compute.cpu_max_checkpoint_bytes in {profile_file} below {model}'s {size:,} B"
    else:
        fix = f"set compute.expected_checkpoint_bytes: {size or 'the checkpoint size'} in {profile_file}"
    starters = _starters(settings, run, launch)
    checks = []
    for asset, compute_class in COMPUTE_CLASSES.items():
        node = node_class(compute_class, full)
        status, started, asset_fix = starters[asset]
        if node == "cpu":
            status, asset_fix = FAIL, fix
        found = f"{node} node ({node_reason(compute_class, full)}); started by {started}"
        needed = f"a GPU node for {GPU_WORK[asset]} of {model}"
        checks.append(Check(f"routing: {asset}", GPU_PLAN, status, needed, found, asset_fix))
    return checks


def _starters(settings: Settings, run: PlannedRun, launch: Launch) -> dict[str, tuple]:
    """asset -> (status, what starts its work, the fix where that cannot start it) in the full profile."""
    by_launcher = f"the {launch.launcher} launcher (launch.launcher)"
    return {
        "bf16_checkpoint": (PASS, "its own Dagster step (no launcher: the run placed on that node converts)", ""),
        "nemo_model": (PASS, f"{by_launcher}: {jobs.describe(run.import_step)}", ""),
        "sft_model": (PASS, f"{by_launcher}: {jobs.describe(run.finetune)}", ""),
        "eval_csv": _serving_starter(settings, run.bf16_bytes),
    }


def _serving_starter(settings: Settings, bf16_bytes: int | None) -> tuple[str, str, str]:
    """What answers the evaluation's prompts: an endpoint, the step itself, or a server it starts, on as many GPU nodes
    as hold the merged BF16 fine-tune (as the cost estimate counts them; `sftc evaluate --dry-run` shows the plan)."""
    evaluation = settings.full_profile.evaluation
    if evaluation.endpoint:
        return PASS, f"nothing: evaluation.endpoint {evaluation.endpoint} answers (a server already running)", ""
    if evaluation.server in ("transformers", "none"):
        return PASS, f"the eval_csv step itself ({evaluation.server}, on its node)", ""
    serving = evaluation.serving
    declared = settings.full_profile.compute.expected_checkpoint_bytes or 0
    weights = bf16_bytes if bf16_bytes is not None else 2 * declared
    nodes = serving_nodes(weights, serving.gpus_per_node, serving.gpu_memory_gb, serving.max_weight_fraction)
    shape = f"{nodes} node(s) x {serving.gpus_per_node} GPU(s)"
    started = f"the eval_csv step: {evaluation.server} on {shape} for the {format_bytes(weights)} merged fine-tune"
    if nodes == 1:
        return PASS, started + ", a child process on its node", ""
    # The evaluation's one server launcher (servers.LocalLauncher) starts one-node plans only.
    fix = "start the server from `sftc evaluate --dry-run` on the GPU nodes and set evaluation.endpoint to it"
    return WARN, started + ": a multi-node server, which no launcher here starts yet (the step stops at its start)", fix


def launch_plan_check(settings: Settings, steps: list[EntryStep], launch: Launch) -> Check:
    profile_file = profile_path(settings.full_profile.name, settings.config_dir)
    finetune = steps[0]
    needed = f"the {launch.launcher} launcher starting {jobs.describe(finetune)} (launch.launcher of {profile_file})"
    try:
        jobs.refuse_unlaunchable(steps, launch)
        plans = [jobs.render_plan(step, launch) for step in steps]
    except LaunchError as exc:
        return Check(
            "launch plan",
            GPU_PLAN,
            FAIL,
            needed,
            str(exc),
            f"set launch.launcher: slurm or k8s in {profile_file} (configs/cluster.yaml says where)",
        )
    problems = [problem for step, plan in zip(steps, plans) for problem in _rendered_problems(step, plan)]
    details = tuple(line for plan in plans for line in (_headline(plan), *_directives(plan)))
    if problems:
        return Check(
            "launch plan",
            GPU_PLAN,
            FAIL,
            needed,
            "; ".join(problems),
            "fix the slurm: / kubernetes: section of configs/cluster.yaml",
            details,
        )
    kinds = {"slurm": "sbatch script", "k8s": "JobSet manifest", "local": "command line"}
    return Check(
        "launch plan",
        GPU_PLAN,
        PASS,
        needed,
        f"{len(plans)} step(s) rendered as {kinds[launch.launcher]}s: " + ", ".join(p["step"] for p in plans),
        details=details,
    )


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
        for directive in [
            f"--nodes={step.nodes}",
            *([f"--gpus-per-node={step.gpus_per_node}"] if step.gpus_per_node else []),
        ]:
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


def target_cluster_check(settings: Settings, step: EntryStep, launch: Launch, import_host_bytes: int) -> Check:
    needed = (
        f"{step.nodes} node(s) with {step.gpus_per_node} GPU(s) each "
        f"where the {launch.launcher} launcher runs the fine-tune"
    )
    if launch.launcher == "local":
        return Check(
            "target cluster",
            TARGET_CLUSTER,
            NOT_CHECKED,
            needed,
            (
                "launcher local: the step runs on whichever node materializes it; "
                "`sftc preflight` on that node checks its GPUs"
            ),
        )
    if launch.launcher == "slurm":
        partition = settings.cluster.slurm.partition
        if partition is None:
            return Check(
                "target cluster",
                TARGET_CLUSTER,
                NOT_CHECKED,
                needed,
                (
                    "configs/cluster.yaml names no slurm.partition: "
                    "the GPU partition is the cluster's default, not asked from here"
                ),
                (
                    "set slurm.partition in configs/cluster.yaml to the GPU partition "
                    "(then sinfo is asked where it answers)"
                ),
            )
        ram = import_host_bytes
        # a job dir as a submission has one (sbatch reads the script's paths); the same check every launch runs first
        found = targets.admit(step, launch, launch.data_dir / "launch" / f"{step.name}-test-only", ram)
        if not found.checked:
            return Check("target cluster", TARGET_CLUSTER, NOT_CHECKED, needed, found.found)
        fix = (
            "a partition with the nodes (slurm.partition in configs/cluster.yaml), "
            f"fewer nodes in {settings.finetune.source}, or a launch.time_limit within the partition's in "
            f"{profile_path(settings.full_profile.name, settings.config_dir)}"
        )
        needed = (
            f"{step.nodes} node(s) of partition {partition} with {step.gpus_per_node} GPU(s){_with_ram(ram)} each, "
            f"its time limit at least launch.time_limit {launch.time_limit}"
        )
        if found.ok:
            return Check("target cluster", TARGET_CLUSTER, PASS, needed, found.found)
        return Check("target cluster", TARGET_CLUSTER, FAIL, needed, found.found, fix)
    return kubernetes_gpu_nodes(settings, step, launch, needed, import_host_bytes)


def kubernetes_gpu_nodes(
    settings: Settings, step: EntryStep, launch: Launch, needed: str, import_host_bytes: int
) -> Check:
    """Nodes of the GPU pool with the GPUs and memory (the pods' request; the architecture known, the import's host
    memory) the step needs: the check every launch runs first."""
    found = targets.admit(step, launch, launch.data_dir / "launch" / f"{step.name}-plan", import_host_bytes)
    if not found.checked:
        return Check(
            "target cluster",
            TARGET_CLUSTER,
            NOT_CHECKED,
            needed,
            found.found,
            "run the check where KUBECONFIG or an in-cluster service account reaches the cluster",
        )
    if not found.ok:
        return Check(
            "target cluster",
            TARGET_CLUSTER,
            FAIL,
            needed,
            found.found,
            (
                f"add GPU nodes to the pool or lower nodes in {settings.finetune.source}; "
                "check node_pools.gpu.node_selector in configs/cluster.yaml"
            ),
        )
    return Check("target cluster", TARGET_CLUSTER, PASS, needed, found.found)


def _with_ram(ram: int) -> str:
    return f" and {format_bytes(ram)} of memory for the import" if ram else ""
