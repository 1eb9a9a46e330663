"""The `slurm` launcher: a thin layer over Slurm's own commands (sbatch --parsable, scontrol/sacct, scancel, sinfo).

The sbatch script is rendered from the launch and the step: one task per node, each a torchrun agent with one
process per GPU (c10d rendezvous on the first node's address, a port from the job id), containers through
pyxis/enroot (`srun --container-image`) when the environment has an image. The log is one file in the job dir on
the shared filesystem; a requeued job (preemption) appends to it and resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sftc_core.launch import EntryStep
from sftc_core.text import format_bytes
from sftc_platform.launchers.plan import (
    CLUSTER_FILE,
    JobStatus,
    Launch,
    LaunchError,
    LogTail,
    Waiting,
    describe,
    shape_source,
    shell_line,
    single_argv,
    time_seconds,
    torchrun_argv,
)

# Slurm's job states (squeue(1) "JOB STATE CODES"): still going, or how it ended and what that means.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
END_STATES = {
    "COMPLETED": "every task exited 0",
    "FAILED": "a task exited non-zero (one rank failing ends them all: srun --kill-on-bad-exit)",
    "TIMEOUT": "it reached its time limit (launch.time_limit in the profile); a retry resumes from the last checkpoint",
    "PREEMPTED": "the scheduler preempted it; a retry resumes from the last checkpoint",
    "NODE_FAIL": "one of its nodes failed; a retry resumes from the last checkpoint",
    "BOOT_FAIL": "a node failed to boot",
    "OUT_OF_MEMORY": "a task ran out of host memory (raise --mem in slurm.sbatch_options, or lower the batch size)",
    "CANCELLED": "it was cancelled (scancel, an administrator, or the Dagster run was terminated)",
    "DEADLINE": "it missed its deadline",
    "REVOKED": "a federated sibling ran it",
    "SPECIAL_EXIT": "it ended in Slurm's special exit state",
}
# Lost through no fault of the step: worth the automatic retries of launch.max_retries.
RETRYABLE_STATES = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL"})
# Active but not started: the job holds no nodes yet (CONFIGURING: they are being allocated and booted).
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
COMMAND_TIMEOUT_S = 60

# Why a job pends (Slurm's job reason codes, squeue's REASON) where the reason clears by itself: what it means.
CLEARING_REASONS = {
    "None": "the scheduler has not looked at it yet",
    "Priority": "jobs of higher priority are ahead of it",
    "Resources": "the nodes it needs are busy with other jobs",
    "BeginTime": "its start time has not come yet",
    "Dependency": "it waits for another job to end",
    "JobHeldUser": "it is held (scontrol release lets it go)",
    "JobHeldAdmin": "an administrator holds it",
    "NodeDown": "a node it needs is down",
    "Reservation": "it waits for its advanced reservation",
    "PartitionDown": "its partition is down until an administrator brings it up",
    "PartitionInactive": "its partition is inactive until an administrator brings it up",
    "CONFIGURING": "its nodes are being allocated and booted",
}
# Per-job limits of a QOS or an association (AssocMaxNodesPerJob, QOSMaxWallDurationPerJobLimit, QOSMinGRES...): the
# job asks for more than any one job may, so it never starts; aggregate limits (QOSGrp*, AssocGrp*, *PerUser) clear.
PER_JOB_LIMIT = re.compile(r"^(?:(?:QOS|Assoc)Max\w*PerJob|QOSMin)\w*$")


def status_of(state: str, exit_code: int | None = None) -> JobStatus:
    """Slurm's state word (e.g. "CANCELLED by 0", "NODE_FAIL") as a JobStatus with its meaning."""
    word = state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"
    if word in ACTIVE_STATES:
        return JobStatus(word)
    if word == "COMPLETED":
        return JobStatus(word, done=True, ok=True, exit_code=exit_code)
    reason = END_STATES.get(word, "an end state sftc does not know")
    return JobStatus(word, done=True, exit_code=exit_code, reason=reason, retryable=word in RETRYABLE_STATES)


def rendezvous_port(launch: Launch) -> str:
    return f"$(({launch.cluster.slurm.rendezvous_base_port} + SLURM_JOB_ID % 1000))"


def node_python(step: EntryStep, launch: Launch) -> str:
    """The interpreter on the nodes: the environment's configured one, `python` inside its image,
    else this node's path."""
    env = launch.cluster.slurm.environments.get(step.environment)
    if env and env.python:
        return env.python
    if env and env.container_image:
        return "python"
    return launch.pythons[step.environment]


def _directive(option: str) -> str:
    """An #SBATCH option with its value in double quotes where it holds a space
    (sbatch ends an unquoted value there)."""
    key, equals, value = option.partition("=")
    return f'{key}="{value}"' if equals and any(c.isspace() for c in value) and not value.startswith('"') else option


def node_argv(step: EntryStep, launch: Launch) -> list[str]:
    """What srun starts on each node: a torchrun agent rendezvousing at the first node, or the one process."""
    python = node_python(step, launch)
    return (
        torchrun_argv(step, python, "$head_addr:$rdzv_port", "$SLURM_JOB_ID")
        if step.distributed
        else single_argv(step, python)
    )


def render_sbatch(step: EntryStep, launch: Launch, job_dir: Path, job_name: str | None = None) -> str:
    """The batch script of `step`: directives from the launch and cluster.yaml's slurm section, then one srun."""
    slurm = launch.cluster.slurm
    job_dir = Path(job_dir)
    name = job_name or f"sftc-{step.name}"
    directives = [
        f"--job-name={name}",
        f"--nodes={step.nodes}",
        "--ntasks-per-node=1",
        f"--time={launch.time_limit}",
        f"--output={job_dir / 'slurm-%j.log'}",
        "--open-mode=append",  # a requeued job (preemption) continues the same log
        "--requeue",
        f"--chdir={launch.project_root}",
    ]
    if step.gpus_per_node:
        directives.append(f"--gpus-per-node={step.gpus_per_node}")
    if slurm.cpus_per_task:
        directives.append(f"--cpus-per-task={slurm.cpus_per_task}")
    directives += [
        f"--{key}={value}"
        for key, value in (("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos))
        if value
    ]
    directives += slurm.sbatch_options

    env = {**launch.job_env(step), **slurm.env}
    environment = slurm.environments.get(step.environment)
    image = environment.container_image if environment else None
    if image:
        env["PYTHONPATH"] = "/app"  # the images hold this repository at /app (deploy/slurm.md)
    srun = (
        ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
        if step.distributed
        else ["srun", "--nodes=1", "--ntasks=1"]
    )
    if image:
        srun += [f"--container-image={image}", "--no-container-mount-home"]
        if slurm.container_mounts:
            srun.append(f"--container-mounts={','.join(slurm.container_mounts)}")
    command = node_argv(step, launch)

    lines = [
        "#!/bin/bash",
        *(f"#SBATCH {_directive(d)}" for d in directives),
        f"# {describe(step)}; rendered by sftc (sftc_platform/launchers/slurm.py)",
        "set -euo pipefail",
    ]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    lines += slurm.setup
    lines += [
        # the first node hosts the c10d rendezvous; its address from Slurm (node names need not resolve in DNS)
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "head_addr=$(scontrol show node \"$head_node\" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')",
        f"rdzv_port={rendezvous_port(launch)}",
        (
            'echo "sftc: Slurm job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
            'rendezvous $head_addr:$rdzv_port"'
        ),
        shell_line(srun + command),
    ]
    return "\n".join(lines) + "\n"


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, **kwargs)
    except FileNotFoundError:
        raise LaunchError(
            f"{argv[0]}: not found; the slurm launcher needs Slurm's commands on this node (a login or submit node)"
        ) from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT_S} s; is slurmctld up?") from None


def slurm_available() -> bool:
    """Slurm's commands are here and the controller answers (the nightly validation then launches through it)."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return _run(["sinfo", "-h", "-o", "%P"]).returncode == 0
    except LaunchError:
        return False


def submit(script: Path, env: dict[str, str]) -> str:
    """sbatch --parsable; returns the job id."""
    done = _run(["sbatch", "--parsable", str(script)], env={**os.environ, **env})
    if done.returncode != 0:
        raise LaunchError(f"sbatch {script} refused the job: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def query(job_id: str) -> JobStatus:
    """The job's state: scontrol while the controller holds it (with Slurm's reason while it waits, its nodes once it
    runs), sacct (accounting) after it has left."""
    done = _run(["scontrol", "show", "job", "-o", job_id])
    if done.returncode == 0 and "JobState=" in done.stdout:
        fields = dict(re.findall(r"(\w+)=(\S+)", done.stdout))
        nodes = fields.get("NodeList", "")
        status = status_of(fields["JobState"], _exit_code(fields.get("ExitCode")))
        status = replace(status, nodes="" if nodes == "(null)" else nodes)
        if status.done:
            return status
        # scontrol writes the reason's spaces as underscores (ReqNodeNotAvail,_UnavailableNodes:node3)
        reason = fields.get("Reason", "None").replace("_", " ")
        if reason == "None" and status.state != "PENDING":
            reason = status.state  # CONFIGURING, REQUEUED: the state says why it has not started
        return replace(status, reason=reason)
    done = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
    if done.returncode == 0 and done.stdout.strip():
        state, _, code = done.stdout.strip().splitlines()[0].partition("|")
        return status_of(state, _exit_code(code))
    raise LaunchError(f"Slurm job {job_id}: neither scontrol nor sacct knows it ({done.stderr.strip()})")


def _exit_code(text: str | None) -> int | None:
    return int(text.split(":")[0]) if text and text.split(":")[0].isdigit() else None


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])


def pending_reason(
    reason: str, step: EntryStep, launch: Launch, unknown_nodes: Callable[[str], list[str]] | None = None
) -> Waiting:
    """Slurm's reason for a pending job as a Waiting: what it means, whether it clears by itself, and what to change
    (and where) when it never does. `unknown_nodes` names, of a Slurm node list, the nodes the cluster lacks."""
    code, _, detail = reason.partition(",")
    if " " in code:  # a sentence, not a code ("Nodes required for job are DOWN, DRAINED or reserved ..."): as it is
        return Waiting(reason)
    slurm = launch.cluster.slurm
    partition = f"partition {slurm.partition}" if slurm.partition else "the default partition"
    shape = shape_source(step, launch)
    options = f"slurm.sbatch_options of {CLUSTER_FILE}"
    elsewhere = f"or name a partition that takes it (slurm.partition in {CLUSTER_FILE})"
    never = {
        "PartitionNodeLimit": (
            f"it asks for more nodes than {partition} allows",
            f"ask for fewer: {shape}; {elsewhere}",
        ),
        # what Slurm 22.05 says at submission of a job over any of the partition's limits, before the precise reason
        "PartitionConfig": (
            f"it asks for more than {partition} allows: nodes, time, or CPUs, memory or GPUs per node",
            f"ask for less: {shape}; launch.time_limit {launch.time_limit} in {launch.profile_file}; "
            f"slurm.cpus_per_task and slurm.sbatch_options in {CLUSTER_FILE} (scontrol show partition: its limits); "
            f"{elsewhere}",
        ),
        "PartitionTimeLimit": (
            f"its time limit {launch.time_limit} is above {partition}'s",
            f"lower launch.time_limit in {launch.profile_file} (sinfo -o '%P %l' lists the limits), {elsewhere}",
        ),
        "InvalidAccount": (
            f"account {slurm.account} is not one it may use",
            f"set slurm.account in {CLUSTER_FILE} to one of yours (sacctmgr show assoc user=$USER)",
        ),
        "InvalidQOS": (
            f"QOS {slurm.qos} is not one it may use",
            f"set slurm.qos in {CLUSTER_FILE} to one of yours (sacctmgr show assoc user=$USER format=qos)",
        ),
        "AccountNotAllowed": (
            f"{partition} does not admit account {slurm.account}",
            f"set slurm.account or slurm.partition in {CLUSTER_FILE}",
        ),
        "BadConstraints": ("its constraints match no node", f"fix --constraint in {options}"),
        "DependencyNeverSatisfied": ("a job it depends on ended the wrong way", f"fix --dependency in {options}"),
        # per-job limits of a QOS or an association: see PER_JOB_LIMIT
        "PerJobLimit": (
            f"it asks for more than one job may (QOS {slurm.qos or 'default'}, account {slurm.account or 'default'})",
            f"ask for less ({shape}; launch.time_limit {launch.time_limit}), or set another slurm.qos or slurm.account "
            f"in {CLUSTER_FILE}",
        ),
    }
    limit = "PerJobLimit" if PER_JOB_LIMIT.match(code) else code
    if limit in never:
        meaning, fix = never[limit]
        return Waiting(code, meaning, clears=False, fix=fix)
    if code == "ReqNodeNotAvail":
        names = detail.strip().removeprefix("UnavailableNodes:")
        missing = (unknown_nodes or _unknown_nodes)(names) if names else []
        if missing:
            fix = f"remove them from --nodelist in {options} (sinfo -N lists the nodes)"
            return Waiting(code, f"it asks for nodes that do not exist: {', '.join(missing)}", clears=False, fix=fix)
        return Waiting(code, f"nodes it asks for are down, drained or reserved ({names or 'unnamed'}); they may return")
    if code.startswith(("AssocGrp", "QOSGrp")) or code.endswith(("PerUser", "PerUserLimit", "PerAccount")):
        return Waiting(code, "an aggregate limit of its account or QOS is reached; it starts as other jobs end")
    return Waiting(code, CLEARING_REASONS.get(code, "see squeue(1), JOB REASON CODES; sftc keeps waiting"))


def _unknown_nodes(names: str) -> list[str]:
    """Of a Slurm node list (node[3-4]), the nodes the cluster does not have (sinfo -N lists those it has)."""
    wanted = _run(["scontrol", "show", "hostnames", names]).stdout.split()
    known = set(_run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split())
    return [name for name in wanted if name not in known]


def job_hosts(job_id: str) -> list[str]:
    done = _run(["scontrol", "show", "job", "-o", job_id])
    nodelist = dict(re.findall(r"(\w+)=(\S+)", done.stdout)).get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        return []
    return _run(["scontrol", "show", "hostnames", nodelist]).stdout.split()


class SlurmJob:
    """A submitted sbatch job: its id, state, log, hosts; cancel is scancel."""

    launcher = "slurm"

    def __init__(
        self, step: EntryStep, launch: Launch, job_dir: Path, env: dict[str, str], job_name: str | None = None
    ):
        self.step, self.launch, self.job_dir = step, launch, Path(job_dir)
        self.script = self.job_dir / "job.sbatch"
        self.script.write_text(render_sbatch(step, launch, job_dir, job_name), encoding="utf-8")
        # Pipes' bootstrap variables travel in sbatch's environment (--export=ALL), not in the script file.
        self.id = submit(self.script, env)
        self.log_path = self.job_dir / f"slurm-{self.id}.log"
        self.tail = LogTail(self.log_path)

    def poll(self) -> JobStatus:
        status = query(self.id)
        if status.state in WAITING_STATES:
            return replace(status, waiting=pending_reason(status.reason, self.step, self.launch))
        return status

    def read_log(self) -> str:
        return self.tail.read()

    def hosts(self) -> list[str]:
        return job_hosts(self.id)

    def cancel(self) -> None:
        cancel(self.id)


# --- the target's GPUs (the GPU gate checks the partition, not the submitting node) ---------------


@dataclass(frozen=True)
class PartitionNode:
    name: str
    gpus: int
    state: str
    memory_bytes: int | None = None  # the node's RealMemory (sinfo %m), None where sinfo does not say
    time_limit_s: int | None = None  # its partition's MaxTime (sinfo %l), None: infinite
    max_nodes: int | None = None  # the most nodes its partition gives one job (MaxNodes, sinfo %s), None: no limit


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a node's GRES string: "gpu:h100:8(S:0-1)", "gpu:8", "gpu:a100:4,gpu:h100:4" -> 8, 8, 8."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", gres))


def _memory_bytes(text: str) -> int | None:
    """sinfo's %m: megabytes (MiB), with a "+" where the nodes of a line differ."""
    digits = re.match(r"\d+", text.strip())
    return int(digits.group()) << 20 if digits else None


def _time_limit(text: str) -> int | None:
    try:
        return time_seconds(text)
    except ValueError:  # "n/a" and the like: not known, so no limit the plan can hold against the job
        return None


def default_partition() -> str | None:
    """The partition a job without --partition goes to (sinfo marks it with a *), None where there is none."""
    done = _run(["sinfo", "-h", "-o", "%P"])
    return next((name.rstrip("*") for name in done.stdout.split() if name.endswith("*")), None)


def partition_nodes(partition: str | None) -> list[PartitionNode]:
    """The partition's nodes with their GPUs, states, memory and time limit, from sinfo
    (the default partition when None)."""
    partition = partition or default_partition()
    argv = ["sinfo", "-h", "-N", "-o", "%N|%G|%t|%m|%l|%s", *(["-p", partition] if partition else [])]
    done = _run(argv)
    if done.returncode != 0:
        raise LaunchError(f"{' '.join(argv)}: {done.stderr.strip()}")
    nodes = {}
    for line in done.stdout.strip().splitlines():
        name, gres, state, memory, limit, job_size = line.split("|")
        largest = job_size.rpartition("-")[2]  # "1-infinite", "2-4", or "1" where the least and most are one
        max_nodes = int(largest) if largest.isdigit() else None
        gpus, memory_bytes = parse_gres_gpus(gres), _memory_bytes(memory)
        nodes[name] = PartitionNode(name, gpus, state, memory_bytes, _time_limit(limit), max_nodes)
    return list(nodes.values())


def gpu_capacity_problem(
    step: EntryStep, nodes: list[PartitionNode], partition: str | None, memory_bytes: int = 0
) -> str | None:
    """Why the partition cannot hold the step (too few up nodes with its GPUs and, where asked, `memory_bytes` of
    host memory), or None."""
    usable = [
        n
        for n in nodes
        if n.gpus >= step.gpus_per_node
        and not n.state.rstrip("*~#$@").startswith(("down", "drain", "fail"))
        and (n.memory_bytes is None or n.memory_bytes >= memory_bytes)
    ]
    if len(usable) >= step.nodes:
        return None
    where = f"partition {partition}" if partition else "the default partition"
    memory = f" and {format_bytes(memory_bytes)} of memory" if memory_bytes else ""
    return (
        f"{step.name} needs {step.nodes} node(s) with {step.gpus_per_node} GPU(s){memory} each; "
        f"{where} has {len(usable)} usable of {len(nodes)}"
    )


def time_limit_problem(time_limit: str, nodes: list[PartitionNode], partition: str | None) -> str | None:
    """Why Slurm would not start the job for its --time (longer than the partition's MaxTime), or None."""
    limits = [n.time_limit_s for n in nodes if n.time_limit_s is not None]
    wanted = time_seconds(time_limit)
    if not limits or wanted <= min(limits):
        return None
    where = f"partition {partition}" if partition else "the default partition"
    return (
        f"launch.time_limit {time_limit} is longer than {where}'s time limit of {_clock(min(limits))}: "
        "Slurm refuses the job or holds it pending for ever (PartitionTimeLimit)"
    )


def node_limit_problem(step: EntryStep, nodes: list[PartitionNode], partition: str | None) -> str | None:
    """Why Slurm would hold the job for its node count (more than the partition's MaxNodes), or None."""
    limits = [n.max_nodes for n in nodes if n.max_nodes is not None]
    if not limits or step.nodes <= min(limits):
        return None
    where = f"partition {partition}" if partition else "the default partition"
    return f"{step.name} asks for {step.nodes} node(s), {where} gives a job at most {min(limits)} (MaxNodes)"


def sbatch_test_only(script: str, partition: str | None) -> tuple[bool, str]:
    """Slurm's own verdict on a rendered job, nothing submitted (sbatch --test-only):
    where and when it would start, or why not."""
    done = _run(["sbatch", "--test-only", *([f"--partition={partition}"] if partition else [])], input=script)
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return done.returncode == 0, (said[-1].removeprefix("sbatch: ") if said else f"exit {done.returncode}")


def _clock(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return (f"{days}-" if days else "") + f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
