"""Our side of the NeMo backend (no Dagster): the steps that run nemo_entry in the NeMo environment.

The steps are `EntryStep`s of the "nemo" environment (its interpreter: `Settings.nemo_python`, env
SFTC_NEMO_PYTHON, else `nemo_python` in configs/nemo/finetune.yaml; its image on a cluster). The fine-tune is
distributed: every one of `nodes` nodes runs it under torchrun with one process per GPU. The same steps are run
by the `sftc` command and by the assets (with Dagster Pipes) through the launchers of sftc_platform/launchers/:
the caller hands in how a step is executed.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from sftc_assets.training.nemo_config import NEMO_DATA_FILES, NemoRunPaths
from sftc_core.configs import FinetuneConfig, with_max_steps, with_nodes
from sftc_core.io import BeforeSwap, atomic_dir
from sftc_core.launch import EntryStep

log = logging.getLogger(__name__)

ENTRY_MODULE = "sftc_assets.training.nemo_entry"
SMOKE_TEST_STEPS = 10


# The NeMo import builds the model through Megatron on one device.
IMPORT_GPUS = 1


def require_interpreter(python: Path) -> Path:
    if not Path(python).is_file():
        raise FileNotFoundError(
            f"{python}: the NeMo environment's interpreter is not there; create it with `make .venv-nemo` "
            "(requirements-nemo.txt), or point SFTC_NEMO_PYTHON / nemo_python in configs/nemo/finetune.yaml at one"
        )
    return Path(python)


def _entry(command: str, args: list[str], dry_run: bool, **shape) -> EntryStep:
    """A dry run checks inputs and plans: one process, no GPUs, whatever the step's real shape."""
    shape = {} if dry_run else shape
    return EntryStep(command, ENTRY_MODULE, (command, *args, *(["--dry-run"] if dry_run else [])), "nemo", **shape)


def import_step(hf_checkpoint: Path, output: Path, dry_run: bool = False) -> EntryStep:
    args = ["--hf-checkpoint", str(hf_checkpoint), "--output", str(output)]
    fixed = "NeMo's import (nemo_runner.IMPORT_GPUS, not a setting)"
    return _entry("import", args, dry_run, gpus_per_node=IMPORT_GPUS, shape_source=fixed)


def nemo_work_dir(output: Path) -> Path:
    """NeMo's logs and checkpoints of a fine-tune, beside its output (data/models/sft -> data/models/sft_nemo)."""
    output = Path(output)
    return output.with_name(f"{output.name}_nemo")


def finetune_steps(
    config: FinetuneConfig,
    config_path: Path | str,
    paths: NemoRunPaths,
    max_steps: int | None = None,
    dry_run: bool = False,
) -> list[EntryStep]:
    """finetune (on every node, torchrun with one process per GPU) then export (one process); a dry run plans the
    fine-tune only."""
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
    shape = {
        "nodes": config.nodes,
        "procs_per_node": config.gpus_per_node,
        "gpus_per_node": config.gpus_per_node,
        "distributed": True,
        "shape_source": f"nodes and gpus_per_node in {config_path} (sftc train --nodes overrides)",
    }
    steps = [_entry("finetune", args, dry_run, **shape)]
    if not dry_run:
        export_args = [
            "--hf-checkpoint",
            str(paths.hf_checkpoint),
            "--work-dir",
            str(paths.work_dir),
            "--output",
            str(paths.output_dir),
        ]
        steps.append(_entry("export", export_args, dry_run=False))
    return steps


def stage_dataset(dataset_root: Path, work_dir: Path) -> Path:
    """A copy of the NeMo JSONL in the work dir: NeMo writes index files beside its data,
    not into nemo_jsonl's folder."""
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
            return [
                {**r, "step": int(r["step"]), value: float(r[value])}
                for r in csv.DictReader(fh)
                if r[value] not in ("", None)
            ]

    return rows("training.csv", "loss"), rows("val.csv", "val_loss")


def add_loss_curve(output_dir: Path) -> Path:
    """loss_curve.png beside the NeMo run's CSVs, drawn as the hf backend draws its own."""
    from sftc_assets.training.hf_backend import (
        plot_loss_curve,  # matplotlib and torch load only here
    )

    train_rows, val_rows = read_loss_rows(output_dir)
    return plot_loss_curve(Path(output_dir) / "loss_curve.png", train_rows, val_rows)


# Runs one step and returns the entry's result of a dry run (the plan); None for the others.
Execute = Callable[[EntryStep], "dict | None"]


def run_config(
    config: FinetuneConfig,
    max_steps: int | None = None,
    smoke_test: bool = False,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
) -> FinetuneConfig:
    """The fine-tune config with --max-steps / --smoke-test and another job shape (--nodes, --procs-per-node) applied,
    each checked against the parallel layout."""
    max_steps = SMOKE_TEST_STEPS if smoke_test else max_steps
    if max_steps is not None:
        config = with_max_steps(config, max_steps)
    return with_nodes(config, nodes, gpus_per_node)


def nemo_finetune(
    execute: Execute,
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
        (step,) = finetune_steps(config, config.source, paths, config.max_steps, dry_run=True)
        return execute(step)
    staged = stage_dataset(dataset_root, work_dir)
    with atomic_dir(output, stamp) as staging:
        paths = NemoRunPaths(Path(hf_checkpoint), Path(nemo_checkpoint), staged, staging, work_dir)
        for step in finetune_steps(config, config.source, paths, config.max_steps):
            execute(step)
        add_loss_curve(staging)
        return json.loads((staging / "metrics.json").read_text(encoding="utf-8"))


def planned_steps(
    config: FinetuneConfig, hf_checkpoint: Path, nemo_checkpoint: Path, dataset_root: Path, output: Path
) -> list[EntryStep]:
    """The steps a fine-tune will launch (finetune on every node, then export), as `sftc train --dry-run` shows them."""
    output = Path(output)
    paths = NemoRunPaths(
        Path(hf_checkpoint), Path(nemo_checkpoint), nemo_work_dir(output) / "dataset", output, nemo_work_dir(output)
    )
    return finetune_steps(config, config.source, paths, config.max_steps)
