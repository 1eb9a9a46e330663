"""The `sft_model` asset (the fine-tuned HF checkpoint under data/models/sft/) and its check `validation_loss_decreased`."""

import csv
import json
from pathlib import Path

import dagster as dg

from sftc_assets.common.asset_helpers import code_version, image_markdown, manifest_metadata, markdown_table
from sftc_assets.common.io import read_jsonl
from sftc_assets.training import data, hf_backend, nemo_runner
from sftc_assets.training.nemo_assets import run_nemo_finetune_via_pipes
from sftc_resources.resources import GpuResource
from sftc_resources.resources import ProjectResource
from sftc_resources.routing import asset_placement
from sftc_resources.settings import load_settings, load_sft_config

_PLACEMENT = asset_placement("auto", load_settings().profile_name)
VALIDATION_LOSS_CHECK = "validation_loss_decreased"


class TrainRunConfig(dg.Config):
    """Launchpad overrides, as `sftc train`'s flags; None = the profile's."""

    max_steps: int | None = None
    smoke_test: bool = False
    """10 steps on a few samples: the first run on a new node."""
    resume: bool = False
    """Continue from the latest checkpoint under data/models/sft/checkpoints (same settings only)."""


def _train_hf(context: dg.AssetExecutionContext, config: TrainRunConfig, project: ProjectResource, gpu: GpuResource) -> dict:
    settings, paths = project.settings(), project.paths()
    checkpoint_bytes = sum(p.stat().st_size for p in paths.bf16_checkpoint.glob("*.safetensors"))
    if not checkpoint_bytes:
        raise dg.Failure(f"{paths.bf16_checkpoint}: no *.safetensors checkpoint; materialize bf16_checkpoint first", allow_retries=False)
    device = gpu.choose_device("sft_model", checkpoint_bytes, settings.profile.compute.cpu_max_checkpoint_bytes)

    def log_progress(row: dict) -> None:
        if "val_loss" in row:
            context.log.info("step %d: training loss %.4f, validation loss %.4f, %.0f tokens/s", row["step"], row["loss"], row["val_loss"], row["tokens_per_s"])

    result = hf_backend.run_training(
        paths.bf16_checkpoint,
        paths.nemo_jsonl,
        paths.sft_model,
        settings.profile.training,
        load_sft_config(),
        settings.profile.evaluation,
        max_steps=config.max_steps,
        smoke_test=config.smoke_test,
        resume=config.resume,
        device=device,
        on_step=log_progress,
    )
    return result.metrics


@dg.asset(
    deps=["bf16_checkpoint", "nemo_jsonl"],
    code_version=code_version(hf_backend, data, nemo_runner),
    kinds={"pytorch", "huggingface"},
    description="The fine-tuned checkpoint (HF layout, tokenizer with the SFT special tokens) with training.csv, val.csv, "
    "metrics.json and loss_curve.png: the Hugging Face backend on CPU or GPU, or NeMo on GPU nodes (TRAIN_BACKEND).",
    **_PLACEMENT,
)
def sft_model(
    context: dg.AssetExecutionContext,
    config: TrainRunConfig,
    project: ProjectResource,
    gpu: GpuResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    settings, paths = project.settings(), project.paths()
    if settings.train_backend == "nemo":
        # NeMo resumes from its own checkpoints under the work dir, so `resume` needs no flag there.
        metrics = run_nemo_finetune_via_pipes(
            context, pipes_subprocess_client, gpu, paths, max_steps=config.max_steps, smoke_test=config.smoke_test
        )
    else:
        metrics = _train_hf(context, config, project, gpu)
    output = paths.sft_model
    val_rows = [{"step": r["step"], "val_loss": f"{float(r['val_loss']):.4f}"} for r in _csv_rows(output / "val.csv")]
    generations = read_jsonl(output / "val_generations.jsonl") if (output / "val_generations.jsonl").is_file() else []
    figures = {
        key: metrics[key]
        for key in (
            "steps", "initial_val_loss", "final_val_loss", "best_val_loss", "best_val_step", "final_train_loss",
            "tokens_per_s", "parse_rate", "parse_checked", "train_examples", "val_examples", "truncated_train_examples",
            "peft", "trainable_params", "device", "train_seconds", "resumed_from_step",
        )
        if metrics.get(key) is not None  # a figure the run did not produce is left out, not shown as null
    }
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(output)),
            "backend": settings.train_backend,
            **figures,
            "loss_curve": image_markdown(output / "loss_curve.png", "training and validation loss"),
            "validation_losses": dg.MetadataValue.md(markdown_table(val_rows)),
            "generations": dg.MetadataValue.md(markdown_table(generations, ["expected", "predicted", "output"], max_cell=160)),
            "metrics": dg.MetadataValue.json(metrics),
            **manifest_metadata("sft_config.yaml"),
        }
    )


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dg.asset_check(
    asset=sft_model,
    blocking=True,
    description="The validation loss at the end of training is below its value before the first step (metrics.json).",
    **_PLACEMENT,
)
def validation_loss_decreased(project: ProjectResource) -> dg.AssetCheckResult:
    path = project.paths().sft_model / "metrics.json"
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, description=f"{path} is missing: sft_model has not finished a run")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    initial, final = metrics["initial_val_loss"], metrics["final_val_loss"]
    return dg.AssetCheckResult(
        passed=final < initial,
        description=None if final < initial else f"validation loss did not fall: {initial:.4f} -> {final:.4f}",
        metadata={
            "initial_val_loss": initial,
            "final_val_loss": final,
            "best_val_loss": metrics["best_val_loss"],
            "relative_drop": round(1 - final / initial, 4),
            "steps": metrics["steps"],
        },
    )
