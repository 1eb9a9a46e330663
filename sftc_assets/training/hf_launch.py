"""The Hugging Face fine-tune as a launched step (no torch here): its EntryStep, its run settings, its publication.

A launched fine-tune trains in a work dir beside its output (data/models/sft -> data/models/sft_hf, checkpoints
inside) with the settings of the run in `sft_hf.run.json`; every start of the step resumes from the work dir's
latest checkpoint when it is of the same settings and inputs (a retry of a failed or preempted job), else starts
over. Only a finished run is published: the output is replaced whole, so the last good model stays until the new
one is complete; then the work dir goes, so the next materialization trains anew.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sftc_core.configs import EvaluationConfig, SftConfig, TrainingConfig
from sftc_core.io import atomic_dir, atomic_write_json
from sftc_core.launch import EntryStep

ENTRY_MODULE = "sftc_assets.training.hf_entry"
CHECKPOINTS_DIR = "checkpoints"  # hf_backend.CHECKPOINTS_DIR (that module loads torch)


def work_dir_for(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}_hf")


def run_settings_path(work_dir: Path) -> Path:
    work_dir = Path(work_dir)
    return work_dir.with_name(f"{work_dir.name}.run.json")


def training_step(
    model: Path,
    data: Path,
    work_dir: Path,
    training: TrainingConfig,
    sft: SftConfig,
    evaluation: EvaluationConfig,
    *,
    nodes: int = 1,
    procs_per_node: int = 1,
    gpus_per_node: int = 0,
    max_steps: int | None = None,
    smoke_test: bool = False,
    device: str = "auto",
    write: bool = True,
) -> EntryStep:
    """The step every node runs under torchrun; `write=False` (a dry run) leaves the run settings unwritten."""
    settings_file = run_settings_path(work_dir)
    if write:
        atomic_write_json(settings_file, {"training": training.model_dump(mode="json"), "sft": sft.model_dump(mode="json"), "evaluation": evaluation.model_dump(mode="json")})
    args = [
        "--run-settings", str(settings_file), "--model", str(model), "--data", str(data), "--output", str(work_dir),
        "--device", device, "--resume", "auto",
    ]  # fmt: skip
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if smoke_test:
        args.append("--smoke-test")
    return EntryStep("finetune", ENTRY_MODULE, tuple(args), "sftc", nodes, procs_per_node, gpus_per_node, distributed=True)


def publish(work_dir: Path, output: Path) -> dict:
    """The finished run's files (all but its checkpoints) replace `output` whole; the work dir is removed after."""
    work_dir, output = Path(work_dir), Path(output)
    metrics_path = work_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing; the fine-tune did not finish, its checkpoints stay in {work_dir} for a retry")
    with atomic_dir(output) as staging:
        for path in work_dir.iterdir():
            if path.name == CHECKPOINTS_DIR:
                continue
            target = staging / path.name
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                _link_or_copy(path, target)
    shutil.rmtree(work_dir)
    run_settings_path(work_dir).unlink(missing_ok=True)
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))


def _link_or_copy(source: Path, target: Path) -> None:
    # a hard link costs nothing for hundreds of GB of weights; the work dir is removed right after
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
