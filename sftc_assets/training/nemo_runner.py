"""Our side of the NeMo backend (no Dagster): the command lines that run nemo_entry in the NeMo environment.

The NeMo environment has its own interpreter (`Settings.nemo_python`: env SFTC_NEMO_PYTHON, else `nemo_python`
in configs/nemo/finetune.yaml, default .venv-nemo/bin/python). The same `EntryStep`s are run by the `sftc`
command (plain subprocesses, `run_nemo_import` / `run_nemo_training`) and by the assets (Dagster Pipes, through
sftc_resources/nemo_launch.py): the caller hands in how a step is executed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sftc_assets.training.nemo_config import NEMO_DATA_FILES, NemoRunPaths
from sftc_core.configs import PROJECT_ROOT, ConfigError, FinetuneConfig, with_max_steps
from sftc_core.io import BeforeSwap, atomic_dir

log = logging.getLogger(__name__)

ENTRY_MODULE = "sftc_assets.training.nemo_entry"
SMOKE_TEST_STEPS = 10


class NemoEntryError(RuntimeError):
    """nemo_entry exited non-zero; its own message (file, field, fix) went to stderr before this."""


@dataclass(frozen=True)
class EntryStep:
    """One run of nemo_entry: `argv` starts with the NeMo interpreter."""

    name: str  # import | finetune | export
    argv: list[str]


def require_interpreter(python: Path) -> Path:
    if not Path(python).is_file():
        raise FileNotFoundError(
            f"{python}: the NeMo environment's interpreter is not there; create it with `make .venv-nemo` "
            "(requirements-nemo.txt), or point SFTC_NEMO_PYTHON / nemo_python in configs/nemo/finetune.yaml at one"
        )
    return Path(python)


def entry_env(project_root: Path | str = PROJECT_ROOT) -> dict[str, str]:
    """Variables the entry needs: the repository on PYTHONPATH (only it: .venv's packages must not leak in)."""
    return {
        "PYTHONPATH": str(project_root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _entry(python: Path, command: str, args: list[str], dry_run: bool, nproc: int = 1) -> EntryStep:
    launcher = [str(python), "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [str(python)]
    return EntryStep(command, [*launcher, "-m", ENTRY_MODULE, command, *args, *(["--dry-run"] if dry_run else [])])


def import_step(python: Path, hf_checkpoint: Path, output: Path, dry_run: bool = False) -> EntryStep:
    return _entry(python, "import", ["--hf-checkpoint", str(hf_checkpoint), "--output", str(output)], dry_run)


def nemo_work_dir(output: Path) -> Path:
    """NeMo's logs and checkpoints of a fine-tune, beside its output (data/models/sft -> data/models/sft_nemo)."""
    output = Path(output)
    return output.with_name(f"{output.name}_nemo")


def require_one_node(config: FinetuneConfig) -> None:
    if config.nodes != 1:
        raise ConfigError(
            f"{config.source}: field 'nodes' = {config.nodes}: Dagster's launchers here (subprocess, k8s) start one node "
            f"of {config.gpus_per_node} GPUs; run a multi-node fine-tune with a multi-node job launcher, or set nodes: 1 "
            "with a parallelism that fits one node"
        )


def finetune_steps(
    python: Path,
    config: FinetuneConfig,
    config_path: Path | str,
    paths: NemoRunPaths,
    max_steps: int | None = None,
    dry_run: bool = False,
) -> list[EntryStep]:
    """finetune (torchrun, one process per GPU) then export (one process); a dry run plans the fine-tune only."""
    args = [
        "--config", str(config_path),
        "--hf-checkpoint", str(paths.hf_checkpoint),
        "--nemo-checkpoint", str(paths.nemo_checkpoint),
        "--data", str(paths.dataset_root),
        "--work-dir", str(paths.work_dir),
        "--output", str(paths.output_dir),
    ]  # fmt: skip
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    steps = [_entry(python, "finetune", args, dry_run, nproc=1 if dry_run else config.gpus_per_node)]
    if not dry_run:
        export_args = ["--hf-checkpoint", str(paths.hf_checkpoint), "--work-dir", str(paths.work_dir), "--output", str(paths.output_dir)]
        steps.append(_entry(python, "export", export_args, dry_run=False))
    return steps


def stage_dataset(dataset_root: Path, work_dir: Path) -> Path:
    """A copy of the NeMo JSONL in the work dir: NeMo writes index files beside its data, not into nemo_jsonl's folder."""
    target = Path(work_dir) / "dataset"
    with atomic_dir(target) as tmp:
        for name in NEMO_DATA_FILES:
            source = Path(dataset_root) / name
            if not source.is_file():
                raise FileNotFoundError(f"{source}: missing; materialize nemo_jsonl first (sftc export-nemo)")
            shutil.copy2(source, tmp / name)
    return target


def read_loss_rows(output_dir: Path) -> tuple[list[dict], list[dict]]:
    """training.csv and val.csv as numbers (rows without a loss left out)."""

    def rows(name: str, value: str) -> list[dict]:
        with open(Path(output_dir) / name, encoding="utf-8") as fh:
            return [{**r, "step": int(r["step"]), value: float(r[value])} for r in csv.DictReader(fh) if r[value] not in ("", None)]

    return rows("training.csv", "loss"), rows("val.csv", "val_loss")


def add_loss_curve(output_dir: Path) -> Path:
    """loss_curve.png beside the NeMo run's CSVs, drawn as the hf backend draws its own."""
    from sftc_assets.training.hf_backend import (
        plot_loss_curve,  # matplotlib and torch load only here
    )

    train_rows, val_rows = read_loss_rows(output_dir)
    return plot_loss_curve(Path(output_dir) / "loss_curve.png", train_rows, val_rows)


# Runs one step and returns the entry's JSON result (or None where the launcher does not hand stdout back).
Execute = Callable[[EntryStep], "dict | None"]


def run_subprocess(step: EntryStep) -> dict:
    """The `sftc` command's launcher: stderr (logs) streams through, stdout is the entry's JSON."""
    log.info("running %s", " ".join(step.argv))
    completed = subprocess.run(step.argv, cwd=PROJECT_ROOT, env={**os.environ, **entry_env()}, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise NemoEntryError(f"nemo_entry {step.name} failed with exit code {completed.returncode} (its error is above)")
    return json.loads(completed.stdout)


def run_config(config: FinetuneConfig, max_steps: int | None = None, smoke_test: bool = False, dry_run: bool = False) -> FinetuneConfig:
    """The fine-tune config with --max-steps / --smoke-test applied; a real run must fit one node."""
    max_steps = SMOKE_TEST_STEPS if smoke_test else max_steps
    if max_steps is not None:
        config = with_max_steps(config, max_steps)
    if not dry_run:
        require_one_node(config)
    return config


def nemo_finetune(
    execute: Execute,
    python: Path,
    config: FinetuneConfig,
    hf_checkpoint: Path,
    nemo_checkpoint: Path,
    dataset_root: Path,
    output: Path,
    dry_run: bool = False,
    stamp: BeforeSwap | None = None,
) -> dict | None:
    """Fine-tune, merge and export to HF at `output` (training.csv, val.csv, metrics.json, loss_curve.png beside
    the weights, all appearing at once); returns metrics.json, or the plan on a dry run. The entry reads the
    config from the file it came from (`config.source`) with `config.max_steps` on its command line."""
    output = Path(output)
    work_dir = nemo_work_dir(output)
    if dry_run:
        paths = NemoRunPaths(Path(hf_checkpoint), Path(nemo_checkpoint), Path(dataset_root), output, work_dir)
        (step,) = finetune_steps(python, config, config.source, paths, config.max_steps, dry_run=True)
        return execute(step)
    staged = stage_dataset(dataset_root, work_dir)
    with atomic_dir(output, stamp) as staging:
        paths = NemoRunPaths(Path(hf_checkpoint), Path(nemo_checkpoint), staged, staging, work_dir)
        for step in finetune_steps(python, config, config.source, paths, config.max_steps):
            execute(step)
        add_loss_curve(staging)
        return json.loads((staging / "metrics.json").read_text(encoding="utf-8"))


def run_nemo_import(python: Path, hf_checkpoint: Path, output: Path, dry_run: bool = False) -> dict:
    """`sftc import-nemo`: BF16 HF checkpoint -> NeMo checkpoint; returns the entry's summary (the plan on a dry run)."""
    return run_subprocess(import_step(require_interpreter(python), hf_checkpoint, output, dry_run))


def run_nemo_training(
    python: Path,
    config: FinetuneConfig,
    hf_checkpoint: Path,
    nemo_checkpoint: Path,
    dataset_root: Path,
    output: Path,
    max_steps: int | None = None,
    smoke_test: bool = False,
    dry_run: bool = False,
    stamp: BeforeSwap | None = None,
) -> dict:
    """`sftc train --backend nemo` on this node: see `nemo_finetune`."""
    config = run_config(config, max_steps, smoke_test, dry_run)
    return nemo_finetune(run_subprocess, require_interpreter(python), config, hf_checkpoint, nemo_checkpoint, dataset_root, output, dry_run, stamp)
