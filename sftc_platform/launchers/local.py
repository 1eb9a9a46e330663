"""The `local` launcher: the step as a subprocess on this node, one node (torchrun --standalone when distributed)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from sftc_core.launch import EntryStep
from sftc_platform.launchers.plan import TORCHRUN, JobStatus, Launch, LogTail, single_argv


def local_argv(step: EntryStep, python: str) -> list[str]:
    """The command on this node (one node: a multi-node step is refused before, by jobs.refuse_unlaunchable)."""
    if not step.distributed:
        return single_argv(step, python)
    return [
        python,
        *TORCHRUN,
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={step.procs_per_node}",
        "--max-restarts=0",
        "-m",
        step.module,
        *step.args,
    ]


class LocalJob:
    """A subprocess in its own session (so a cancel reaches torchrun's workers);
    stderr is the log, stdout the result."""

    launcher = "local"

    def __init__(self, step: EntryStep, launch: Launch, job_dir: Path, env: dict[str, str]):
        self.step, self.job_dir = step, Path(job_dir)
        self.log_path = self.job_dir / "job.log"
        self.stdout_path = self.job_dir / "stdout.txt"
        self.argv = local_argv(step, launch.pythons[step.environment])
        with open(self.log_path, "wb") as log, open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=launch.project_root,
                env={**os.environ, **launch.job_env(step), **env},
                stdout=out,
                stderr=log,
                start_new_session=True,
            )
        self.id = str(self.process.pid)
        self.tail = LogTail(self.log_path)

    def poll(self) -> JobStatus:
        code = self.process.poll()
        if code is None:
            return JobStatus("RUNNING")
        if code == 0:
            return JobStatus("COMPLETED", done=True, ok=True, exit_code=0)
        return JobStatus("FAILED", done=True, exit_code=code, reason=f"exit code {code}")

    def read_log(self) -> str:
        return self.tail.read()

    def hosts(self) -> list[str]:
        return ["127.0.0.1"]

    def cancel(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")
