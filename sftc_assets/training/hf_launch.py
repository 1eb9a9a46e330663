"""The Hugging Face fine-tune as a launched step (no torch here): its EntryStep and its run settings.

A launched fine-tune is `hf_backend.run_training` on every rank: it trains in the work dir beside its output
(`.sft.partial`, checkpoints inside) and rank 0 swaps the finished run in whole, with the marker the launching side
hands it, so the last good model stays until the new one is complete. Every start of the step resumes from the
work dir's latest checkpoint when it is of the same settings and inputs (a retry of a failed or preempted job),
else starts over. The settings of the run travel in `.sft.run.json` beside the output.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftc_core.artifacts import Stamp
from sftc_core.configs import EvaluationConfig, SftConfig, TrainingConfig
from sftc_core.io import atomic_write_json
from sftc_core.launch import EntryStep

ENTRY_MODULE = "sftc_assets.training.hf_entry"


def run_settings_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.run.json")


def training_step(
    model: Path,
    data: Path,
    output: Path,
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
    stamp: Stamp | None = None,
    write: bool = True,
) -> EntryStep:
    """The step every node runs under torchrun; `write=False` (a dry run) leaves the run settings unwritten."""
    settings_file = run_settings_path(output)
    if write:
        run = {
            "training": training.model_dump(mode="json"),
            "sft": sft.model_dump(mode="json"),
            "evaluation": evaluation.model_dump(mode="json"),
        }
        atomic_write_json(
            settings_file,
            {**run, "stamp": {"writer": stamp.writer, "config_hash": stamp.config_hash} if stamp else None},
        )
    args = [
        "--run-settings", str(settings_file), "--model", str(model), "--data", str(data), "--output", str(output),
        "--device", device, "--resume", "auto",
    ]  # fmt: skip
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if smoke_test:
        args.append("--smoke-test")
    return EntryStep(
        "finetune", ENTRY_MODULE, tuple(args), "sftc", nodes, procs_per_node, gpus_per_node, distributed=True
    )


def finished_metrics(output: Path) -> dict:
    """The metrics of the run the job published; a job that ended without publishing one is an error."""
    path = Path(output) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; the fine-tune job ended without publishing its model "
            "(its checkpoints stay beside it for a retry)"
        )
    return json.loads(path.read_text(encoding="utf-8"))
