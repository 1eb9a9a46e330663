"""What a launch is made of: the launcher, the interpreters of each environment, the time limit, the cluster,
and the command each node runs (the same entry under torchrun, c10d rendezvous on the first node).

Plain data and functions: `sftc train --dry-run` prints them, the GPU plan (preflight) can read them.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from sftc_core.configs import PROJECT_ROOT, ClusterConfig, ConfigError, Launcher, ProfileConfig, profile_path
from sftc_core.launch import LAUNCHER_ENV, EntryStep, Environment, entry_env
from sftc_core.settings import Settings

LAUNCHERS: tuple[Launcher, ...] = ("local", "slurm", "k8s")
TORCHRUN = ("-m", "torch.distributed.run")
CLUSTER_FILE = "configs/cluster.yaml"  # where the slurm:, kubernetes: and node_pools: sections are, named in fixes


class LaunchError(RuntimeError):
    """A launched job did not succeed; the message names the launcher, the job, its state and its log."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Launch:
    """Where and how steps start: one object per launch, built from the settings (and command-line overrides)."""

    launcher: Launcher
    pythons: dict[Environment, str]  # interpreters on this node, per environment
    time_limit: str
    max_retries: int
    cluster: ClusterConfig
    data_dir: Path
    project_root: Path = PROJECT_ROOT
    max_pending: str | None = None  # how long a submitted job may wait to start (launch.max_pending); None: unbounded
    profile_file: Path | None = None  # where launch.* is set, named in the fixes of a job that cannot start

    @classmethod
    def from_settings(
        cls, settings: Settings, launcher: Launcher | None = None, profile: ProfileConfig | None = None
    ) -> Launch:
        """The launch of `profile` (the settings' own unless given: the GPU plan asks for the full profile's)."""
        profile = profile or settings.profile
        config = profile.launch
        launcher = launcher or config.launcher
        if launcher not in LAUNCHERS:
            raise ConfigError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
        return cls(
            launcher=launcher,
            pythons={"sftc": sys.executable, "nemo": str(settings.nemo_python)},
            time_limit=config.time_limit,
            max_retries=config.max_retries,
            cluster=settings.cluster,
            data_dir=settings.data_dir,
            max_pending=config.max_pending,
            profile_file=profile_path(profile.name, settings.config_dir),
        )

    def job_env(self, step: EntryStep) -> dict[str, str]:
        """Variables every process of the step gets (no secrets: nothing of the settings' API key)."""
        return {
            **entry_env(self.project_root),
            LAUNCHER_ENV: self.launcher,
            "SFTC_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }


def torchrun_argv(step: EntryStep, python: str, rendezvous: str, rendezvous_id: str) -> list[str]:
    """The command of one node: a torchrun agent with `procs_per_node` workers, c10d rendezvous at `rendezvous`."""
    return [
        python, *TORCHRUN,
        f"--nnodes={step.nodes}", f"--nproc-per-node={step.procs_per_node}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous}", f"--rdzv-id={rendezvous_id}",
        "--max-restarts=0",  # a failed rank fails the job; the retry resumes from the checkpoint
        "-m", step.module, *step.args,
    ]  # fmt: skip


def single_argv(step: EntryStep, python: str) -> list[str]:
    return [python, "-m", step.module, *step.args]


def shell_line(argv: list[str]) -> str:
    """argv quoted for a shell, except words that are shell variables meant to expand ($head_addr:$port)."""
    return " ".join(
        word if word.startswith(("--rdzv-endpoint=$", "--rdzv-id=$")) else shlex.quote(word) for word in argv
    )


def describe(step: EntryStep) -> str:
    shape = f"{step.nodes} node(s) x {step.procs_per_node} process(es)" if step.distributed else "one process"
    gpus = f", {step.gpus_per_node} GPU(s) per node" if step.gpus_per_node else ""
    return f"{step.name} ({step.module}): {shape}{gpus}"


def shape_source(step: EntryStep, launch: Launch) -> str:
    """Where the job's shape is set, for the fix of a job the cluster cannot take."""
    profile = f"sftc train --nodes, or launch.nodes and launch.gpus_per_node in {launch.profile_file}"
    where = step.shape_source or profile
    return f"its {step.nodes} node(s) x {step.gpus_per_node} GPU(s) come from {where}"


def time_seconds(text: str) -> int | None:
    """A Slurm time ("minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours[:minutes[:seconds]]") in
    seconds; None for "infinite" / "UNLIMITED" (no limit)."""
    if text.strip().lower() in ("infinite", "unlimited"):
        return None
    days, dash, clock = text.strip().rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if dash:  # after days the clock starts at hours
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Waiting:
    """Why a submitted job has not started, in its launcher's words (Slurm's reason code, Kubernetes' scheduling
    event), whether that clears by itself (Resources, Priority) or never does (PartitionNodeLimit), and the fix."""

    reason: str
    meaning: str = ""
    clears: bool = True
    fix: str = ""


@dataclass(frozen=True)
class JobStatus:
    """A job's state in its launcher's words (Slurm's COMPLETED, FAILED, ...; a JobSet's or a process's likewise):
    `waiting` while it is queued and not started, `nodes` where it runs once it does."""

    state: str
    done: bool = False
    ok: bool = False
    exit_code: int | None = None
    reason: str = ""
    retryable: bool = False
    waiting: Waiting | None = None
    nodes: str = ""


class LogTail:
    """What a log file gained since the last read (the file may not exist yet: a pending job has written nothing)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def read(self) -> str:
        if not self.path.is_file():
            return ""
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")

    def last_lines(self, count: int = 20) -> str:
        if not self.path.is_file():
            return "(no log written)"
        return "\n".join(self.path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:])
