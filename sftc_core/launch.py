"""What a launched step is, whatever starts it, and what a launched process knows of its launch.

A stage describes a step as an `EntryStep` (a module of ours with its arguments, the Python environment it needs
and the job's shape); the launchers of sftc_platform/launchers/ decide how it starts (a subprocess here, an
sbatch job, a JobSet) and set `SFTC_LAUNCHER` in its environment. torchrun sets the rest (RANK, WORLD_SIZE,
GROUP_WORLD_SIZE = nodes), Slurm its SLURM_JOB_ID, so `launch_record` tells a training run how it ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sftc_core.configs import PROJECT_ROOT

# sftc: this repository's .venv (or its image); nemo: the NeMo environment (.venv-nemo or the NeMo container).
Environment = Literal["sftc", "nemo"]
LAUNCHER_ENV = "SFTC_LAUNCHER"


@dataclass(frozen=True)
class EntryStep:
    """One run of `python -m module *args` on `nodes` nodes; `distributed`: under torchrun with `procs_per_node`
    processes on every node (a server or a one-process step is not)."""

    name: str
    module: str
    args: tuple[str, ...]
    environment: Environment = "sftc"
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    distributed: bool = False
    # where nodes and gpus_per_node are set, for the fix of a job a cluster cannot take ("": the profile's launch:)
    shape_source: str = ""

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node if self.distributed else 1

    @property
    def dry_run(self) -> bool:
        return "--dry-run" in self.args


def entry_env(project_root: Path | str = PROJECT_ROOT) -> dict[str, str]:
    """Variables an entry needs: the repository on PYTHONPATH (only it: .venv's packages must not leak in)."""
    return {
        "PYTHONPATH": str(project_root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@dataclass(frozen=True)
class PlannedRun:
    """The full profile's GPU run as the training stage plans it, handed to the launcher layer's checks (which then
    need nothing of the stage): its steps and the sizes that decide where they fit."""

    nemo_steps: tuple[EntryStep, ...]  # NeMo's fine-tune and what follows it, in order
    finetune: EntryStep  # the fine-tune of the planned backend (NeMo's first step, or the Hugging Face one)
    import_step: EntryStep  # NeMo's import of the BF16 checkpoint
    checkpoint_bytes: int | None  # the release checkpoint (None: architecture unknown)
    bf16_bytes: int | None  # the BF16 checkpoint the evaluation serves merged
    import_host_bytes: int  # host memory a GPU node needs for the import (0: not known)


def launch_record(environ: Mapping[str, str] | None = None) -> dict:
    """How this process was launched: world_size, nodes, launcher, and slurm_job_id when Slurm ran it."""
    env = os.environ if environ is None else environ
    record = {
        "launcher": env.get(LAUNCHER_ENV, "local"),
        "world_size": int(env.get("WORLD_SIZE", "1")),
        # torchrun's GROUP_WORLD_SIZE counts its agents, one per node.
        "nodes": int(env.get("GROUP_WORLD_SIZE", "1")),
    }
    if "SLURM_JOB_ID" in env:
        record["slurm_job_id"] = env["SLURM_JOB_ID"]
    return record
