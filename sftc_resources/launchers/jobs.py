"""Start a step with the chosen launcher, watch it to its end, stream its log, cancel it when interrupted.

The same driver serves the `sftc` command (log to stderr) and the assets (pipes.py adds Dagster Pipes around it),
and a long-running job (a server): `start` returns the job, whose `hosts()` say where it runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sftc_core.launch import EntryStep
from sftc_resources.launchers.plan import JobStatus, Launch, LaunchError, LogTail, describe, shell_line

log = logging.getLogger(__name__)
LOCAL_POLL_SECONDS = 0.5


class Job(Protocol):
    launcher: str
    id: str
    log_path: Path

    def poll(self) -> JobStatus: ...
    def read_log(self) -> str: ...
    def hosts(self) -> list[str]: ...
    def cancel(self) -> None: ...


@dataclass(frozen=True)
class JobOutcome:
    launcher: str
    job_id: str
    status: JobStatus
    log_path: Path
    job_dir: Path

    def as_metadata(self) -> dict:
        return {"launcher": self.launcher, "job_id": self.job_id, "state": self.status.state, "log": str(self.log_path)}


def new_job_dir(launch: Launch, step: EntryStep) -> Path:
    """data/launch/<step>-<UTC time>: the script or manifest, the logs, the Pipes messages of one start."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = launch.data_dir / "launch" / f"{step.name}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def refuse_unlaunchable(steps: list[EntryStep], launch: Launch) -> None:
    """Fail before any work on a shape the launcher cannot start (the local launcher has one node)."""
    for step in steps:
        if launch.launcher == "local" and step.nodes > 1:
            raise LaunchError(f"{step.name}: the local launcher runs one node, the step asks for {step.nodes}; use --launcher slurm or k8s")


def start(step: EntryStep, launch: Launch, job_dir: Path, env: dict[str, str] | None = None) -> Job:
    """Submit or spawn the step; returns at once with the job (pending or running)."""
    env = env or {}
    if launch.launcher == "local":
        from sftc_resources.launchers.local import LocalJob

        return LocalJob(step, launch, job_dir, env)
    if launch.launcher == "slurm":
        from sftc_resources.launchers.slurm import SlurmJob

        return SlurmJob(step, launch, job_dir, env)
    from sftc_resources.launchers.k8s import K8sJob, jobset_name

    return K8sJob(step, launch, job_dir, env, jobset_name(step, job_dir.name.rsplit("-", 1)[-1]))


def watch(job: Job, on_output: Callable[[str], None], poll_seconds: float, on_poll: Callable[[], None] | None = None) -> JobStatus:
    """Poll until the job ends, handing each new piece of its log to `on_output` (and calling `on_poll` at every
    poll); any interruption (Ctrl-C, a terminated Dagster run) cancels the job before it propagates."""
    try:
        while True:
            status = job.poll()
            text = job.read_log()
            if text:
                on_output(text)
            if on_poll is not None:
                on_poll()
            if status.done:
                return status
            time.sleep(poll_seconds)
    except BaseException:
        log.warning("%s job %s interrupted: cancelling it", job.launcher, job.id)
        job.cancel()
        raise


def poll_seconds(launch: Launch) -> float:
    return {"local": LOCAL_POLL_SECONDS, "slurm": launch.cluster.slurm.poll_seconds, "k8s": launch.cluster.kubernetes.poll_seconds}[launch.launcher]


def to_stderr(text: str) -> None:
    """Where a job's log goes by default: this process's stderr, as it comes (the job's own progress stays live)."""
    sys.stderr.write(text)
    sys.stderr.flush()


def run(
    step: EntryStep, launch: Launch, on_output: Callable[[str], None] = to_stderr, env: dict[str, str] | None = None, job_dir: Path | None = None,
    on_poll: Callable[[], None] | None = None,
) -> JobOutcome:
    """Start the step, watch it to its end; a job that did not succeed raises LaunchError naming it."""
    refuse_unlaunchable([step], launch)
    job_dir = job_dir or new_job_dir(launch, step)
    log.info("launching %s with the %s launcher (job dir %s)", describe(step), launch.launcher, job_dir)
    job = start(step, launch, job_dir, env)
    log.info("%s job %s started; log %s", job.launcher, job.id, job.log_path)
    status = watch(job, on_output, poll_seconds(launch), on_poll)
    outcome = JobOutcome(job.launcher, job.id, status, job.log_path, job_dir)
    if not status.ok:
        raise LaunchError(failure_message(step, outcome), retryable=status.retryable)
    return outcome


def failure_message(step: EntryStep, outcome: JobOutcome) -> str:
    code = f", exit code {outcome.status.exit_code}" if outcome.status.exit_code not in (None, 0) else ""
    return (
        f"{outcome.launcher} job {outcome.job_id} ({step.name}) ended {outcome.status.state}{code}: {outcome.status.reason}; "
        f"log {outcome.log_path}; its last lines:\n{LogTail(outcome.log_path).last_lines()}"
    )


def run_for_result(step: EntryStep, launch: Launch, on_output: Callable[[str], None] = to_stderr) -> dict | None:
    """`run` for the command line's NeMo steps: a dry run checks inputs on this node and returns the entry's JSON."""
    if not step.dry_run:
        run(step, launch, on_output)
        return None
    from sftc_resources.launchers.local import LocalJob

    here = Launch(**{**launch.__dict__, "launcher": "local"})
    job_dir = new_job_dir(here, step)
    job = LocalJob(step, here, job_dir, {})
    status = watch(job, on_output, LOCAL_POLL_SECONDS)
    if not status.ok:
        raise LaunchError(failure_message(step, JobOutcome("local", job.id, status, job.log_path, job_dir)))
    return json.loads(job.stdout())


def render_plan(step: EntryStep, launch: Launch, job_dir: Path | None = None) -> dict:
    """The launch of `step` as data: the per-node command and the sbatch script, the JobSet manifest or the local
    command line (for `sftc train --dry-run` and the GPU plan). Renders only: nothing is written or started."""
    job_dir = job_dir or launch.data_dir / "launch" / f"{step.name}-<start time>"
    plan = {"launcher": launch.launcher, "step": describe(step), "job_dir": str(job_dir)}
    if launch.launcher == "local":
        from sftc_resources.launchers.local import local_argv

        plan["command"] = shell_line(local_argv(step, launch.pythons[step.environment]))
    elif launch.launcher == "slurm":
        from sftc_resources.launchers.slurm import node_argv, render_sbatch

        plan["sbatch_script"] = render_sbatch(step, launch, job_dir)
        if step.distributed:
            plan["per_node_command"] = shell_line(node_argv(step, launch))
    else:
        from sftc_resources.launchers.k8s import jobset_name, render_jobset

        plan["manifest"] = render_jobset(step, launch, jobset_name(step, "plan"))
        plan["per_node_command"] = shell_line(plan["manifest"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"])
    return plan


def plan_text(steps: list[EntryStep], launch: Launch) -> str:
    """The plans of `steps` for people: each step, its per-node command, its script or manifest."""
    import yaml

    parts = []
    for step in steps:
        plan = render_plan(step, launch)
        parts.append(f"# --- {plan['step']} [{launch.launcher}] ---")
        if "per_node_command" in plan:
            parts.append(f"# every node runs:\n#   {plan['per_node_command']}")
        if "command" in plan:
            parts.append(plan["command"])
        if "sbatch_script" in plan:
            parts.append(plan["sbatch_script"])
        if "manifest" in plan:
            parts.append(yaml.safe_dump(plan["manifest"], sort_keys=False))
    return "\n".join(parts)
