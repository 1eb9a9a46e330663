"""Start a step with the chosen launcher, watch it to its end, stream its log, cancel it when interrupted.

The same driver serves the `sftc` command (log to stderr) and the assets (pipes.py adds Dagster Pipes around it),
and a long-running job (a server): `start` returns the job, whose `hosts()` say where it runs.

Before it submits, `run` asks the cluster whether it would start the job (targets.admit: the preflight's check);
while the job waits, `Startup` says why ("pending: Resources"), cancels it on a reason that never clears or past
launch.max_pending, and says "started on <nodes>" only once it runs.
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
from sftc_core.text import format_duration
from sftc_platform.launchers import targets
from sftc_platform.launchers.plan import JobStatus, Launch, LaunchError, LogTail, describe, shell_line, time_seconds

log = logging.getLogger(__name__)
LOCAL_POLL_SECONDS = 0.5
# A job still waiting says so again this often (and at every new reason), with the time so far.
PENDING_LINE_EVERY_S = 60.0


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
    pending_s: float = 0.0  # from submission to the first poll that saw it run, within one poll interval
    pending_reason: str = ""  # the reasons it waited for, in order ("" when it started at its first poll)

    def pending(self) -> dict:
        """How long it waited to start, and why (left out when it had no reason to wait)."""
        reason = {"pending_reason": self.pending_reason} if self.pending_reason else {}
        return {"pending_s": round(self.pending_s, 1), **reason}

    def as_metadata(self) -> dict:
        job = {"launcher": self.launcher, "job_id": self.job_id, "state": self.status.state, "log": str(self.log_path)}
        return {**job, **self.pending()}


def new_job_dir(launch: Launch, step: EntryStep) -> Path:
    """data/launch/<step>-<UTC time>: the script or manifest, the logs, the Pipes messages of one start."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = launch.data_dir / "launch" / f"{step.name}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def refuse_unlaunchable(steps: list[EntryStep], launch: Launch) -> None:
    """Fail before any work on a shape the launcher cannot start (the local launcher has one node)."""
    for step in steps:
        if launch.launcher == "local" and step.nodes > 1:
            raise LaunchError(
                f"{step.name}: the local launcher runs one node, the step asks for {step.nodes}; "
                "use --launcher slurm or k8s"
            )


def start(step: EntryStep, launch: Launch, job_dir: Path, env: dict[str, str] | None = None) -> Job:
    """Submit or spawn the step; returns at once with the job (pending or running)."""
    env = env or {}
    if launch.launcher == "local":
        from sftc_platform.launchers.local import LocalJob

        return LocalJob(step, launch, job_dir, env)
    if launch.launcher == "slurm":
        from sftc_platform.launchers.slurm import SlurmJob

        return SlurmJob(step, launch, job_dir, env)
    from sftc_platform.launchers.k8s import K8sJob, jobset_name

    return K8sJob(step, launch, job_dir, env, jobset_name(step, job_dir.name.rsplit("-", 1)[-1]))


def watch(
    job: Job,
    on_output: Callable[[str], None],
    poll_seconds: float,
    on_poll: Callable[[], None] | None = None,
    on_status: Callable[[JobStatus], None] | None = None,
) -> JobStatus:
    """Poll until the job ends, handing each status to `on_status` and each new piece of its log to `on_output` (and
    calling `on_poll` at every poll); any interruption (Ctrl-C, a terminated Dagster run, `on_status` giving up on a
    job that cannot start) cancels the job before it propagates."""
    try:
        while True:
            status = job.poll()
            if on_status is not None:
                on_status(status)
            text = job.read_log()
            if text:
                on_output(text)
            if on_poll is not None:
                on_poll()
            if status.done:
                return status
            time.sleep(poll_seconds)
    except BaseException as exc:
        why = "cannot start" if isinstance(exc, LaunchError) else "interrupted"
        log.warning("%s job %s %s: cancelling it", job.launcher, job.id, why)
        job.cancel()
        raise


def poll_seconds(launch: Launch) -> float:
    return {
        "local": LOCAL_POLL_SECONDS,
        "slurm": launch.cluster.slurm.poll_seconds,
        "k8s": launch.cluster.kubernetes.poll_seconds,
    }[launch.launcher]


def to_stderr(text: str) -> None:
    """Where a job's log goes by default: this process's stderr, as it comes (the job's own progress stays live)."""
    sys.stderr.write(text)
    sys.stderr.flush()


def tell(line: str, on_line: Callable[[str], None] | None, level: int = logging.INFO) -> None:
    """A line about a job's start, to this module's log and to `on_line` (a Dagster run's log) where given."""
    log.log(level, line)
    if on_line is not None:
        on_line(line)


class Startup:
    """How a submitted job comes to run, said as it happens (to the log and `on_line`): "submitted", then "pending:
    <reason>" at each new reason and every PENDING_LINE_EVERY_S with the time so far, then "started on <nodes>"
    once it runs. A reason that never clears, or a wait longer than launch.max_pending, ends the wait with a
    LaunchError naming the reason and its fix (`watch` cancels the job)."""

    def __init__(self, job: Job, step: EntryStep, launch: Launch, on_line: Callable[[str], None] | None = None):
        self.job, self.step, self.launch, self.on_line = job, step, launch, on_line
        self.max_pending_s = time_seconds(launch.max_pending) if launch.max_pending else None
        self.name = f"{job.launcher} job {job.id} ({step.name})"
        self.pending_s = 0.0
        self.reasons: list[str] = []  # each reason it waited for, once, in order
        self._wait_began: float | None = time.monotonic()  # None while it runs (a requeued job waits again)
        self._said: tuple[str, float] | None = None
        tell(f"{self.name} submitted; log {job.log_path}", on_line)

    def observe(self, status: JobStatus) -> None:
        now = time.monotonic()
        if status.waiting is None:
            if self._wait_began is not None:
                self.pending_s += now - self._wait_began
                if status.nodes or not status.done:  # a job that ended before this poll names the nodes it ran on
                    waited = f" after {format_duration(self.pending_s)} pending" if self.reasons else ""
                    tell(f"{self.name} started on {status.nodes or ', '.join(self.job.hosts())}{waited}", self.on_line)
            self._wait_began = None
            return
        self._wait_began = self._wait_began if self._wait_began is not None else now
        waited = now - self._wait_began
        waiting = status.waiting
        if waiting.reason not in (*self.reasons, "None"):  # None: the scheduler has not looked yet, no reason
            self.reasons.append(waiting.reason)
        if self._said is None or self._said[0] != waiting.reason or now - self._said[1] >= PENDING_LINE_EVERY_S:
            meaning = f" ({waiting.meaning})" if waiting.meaning else ""
            tell(f"{self.name} pending: {waiting.reason}{meaning}, {format_duration(waited)} so far", self.on_line)
            self._said = (waiting.reason, now)
        if not waiting.clears:
            raise LaunchError(
                f"{self.name} cannot start: pending {waiting.reason}, {waiting.meaning}; a reason that never clears, "
                f"so it is cancelled after {format_duration(waited)}. To change: {waiting.fix}"
            )
        if self.max_pending_s is not None and waited > self.max_pending_s:
            reasons = ", ".join(self.reasons) or "no reason given"
            raise LaunchError(
                f"{self.name} waited {format_duration(waited)} to start ({reasons}), "
                f"longer than launch.max_pending {self.launch.max_pending} in {self.launch.profile_file}: cancelled. "
                f"Raise it, or ask for less ({describe(self.step)})"
            )


def admit(step: EntryStep, launch: Launch, job_dir: Path, on_line: Callable[[str], None] | None = None) -> None:
    """The preflight's target-cluster check, before anything is submitted: a cluster that would not start the job
    is a LaunchError in its own words (sinfo, sbatch --test-only, the Kubernetes API) with what to change."""
    if launch.launcher == "local":
        return
    check = targets.admit(step, launch, job_dir)
    if not check.checked:
        line = f"{launch.launcher}: {step.name} goes without the cluster's word first: {check.found}"
        tell(line, on_line, logging.WARNING)
    elif not check.ok:
        raise LaunchError(
            f"{step.name} not submitted: the {launch.launcher} cluster would not start {describe(step)}: "
            f"{check.found}. To change: {targets.refusal_fix(step, launch)}"
        )


def run(
    step: EntryStep,
    launch: Launch,
    on_output: Callable[[str], None] = to_stderr,
    env: dict[str, str] | None = None,
    job_dir: Path | None = None,
    on_poll: Callable[[], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> JobOutcome:
    """Ask the cluster, submit the step, watch it to its end; a job that could not start or did not succeed
    raises LaunchError naming it. `on_line` gets what the log gets of its start (a Dagster run's log)."""
    refuse_unlaunchable([step], launch)
    job_dir = job_dir or new_job_dir(launch, step)
    admit(step, launch, job_dir, on_line)
    return follow(start(step, launch, job_dir, env), step, launch, on_output, on_poll, on_line)


def follow(
    job: Job,
    step: EntryStep,
    launch: Launch,
    on_output: Callable[[str], None] = to_stderr,
    on_poll: Callable[[], None] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> JobOutcome:
    """Watch a submitted job to its end, saying how it comes to start (Startup); its job dir holds its log."""
    startup = Startup(job, step, launch, on_line)
    status = watch(job, on_output, poll_seconds(launch), on_poll, startup.observe)
    reasons = ", ".join(startup.reasons)
    outcome = JobOutcome(job.launcher, job.id, status, job.log_path, job.log_path.parent, startup.pending_s, reasons)
    if not status.ok:
        raise LaunchError(failure_message(step, outcome), retryable=status.retryable)
    return outcome


def failure_message(step: EntryStep, outcome: JobOutcome) -> str:
    code = f", exit code {outcome.status.exit_code}" if outcome.status.exit_code not in (None, 0) else ""
    return (
        f"{outcome.launcher} job {outcome.job_id} ({step.name}) ended {outcome.status.state}{code}: "
        f"{outcome.status.reason}; log {outcome.log_path}; its last lines:\n{LogTail(outcome.log_path).last_lines()}"
    )


def run_for_result(step: EntryStep, launch: Launch, on_output: Callable[[str], None] = to_stderr) -> dict | None:
    """`run` for the command line's NeMo steps: a dry run checks inputs on this node and returns the entry's JSON."""
    if not step.dry_run:
        run(step, launch, on_output)
        return None
    from sftc_platform.launchers.local import LocalJob

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
        from sftc_platform.launchers.local import local_argv

        plan["command"] = shell_line(local_argv(step, launch.pythons[step.environment]))
    elif launch.launcher == "slurm":
        from sftc_platform.launchers.slurm import node_argv, render_sbatch

        plan["sbatch_script"] = render_sbatch(step, launch, job_dir)
        if step.distributed:
            plan["per_node_command"] = shell_line(node_argv(step, launch))
    else:
        from sftc_platform.launchers.k8s import jobset_name, render_jobset

        plan["manifest"] = render_jobset(step, launch, jobset_name(step, "plan"))
        plan["per_node_command"] = shell_line(
            plan["manifest"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
                "command"
            ]
        )
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
