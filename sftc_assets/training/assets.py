"""The training assets: `nemo_model` (the BF16 checkpoint imported into NeMo, through Dagster Pipes) and `sft_model`
(the fine-tuned HF checkpoint under data/models/sft/: the Hugging Face backend here, or NeMo in its own environment),
their checks, and the GPU preflight of the node.

The NeMo steps run nemo_entry through the launcher of configs/nemo/finetune.yaml (sftc_resources/nemo_launch.py);
with `launcher: subprocess` the GPU gate (resource "gpu") checks this node first, with `launcher: k8s` the pod's
GPU request is the gate (Kubernetes schedules it only where the GPUs are).
"""

import csv
import json
from pathlib import Path

import dagster as dg

from sftc_assets.training import hf_backend, nemo_entry, nemo_runner, preflight
from sftc_assets.training.nemo_runner import EntryStep
from sftc_core.artifacts import Stamp
from sftc_core.configs import FinetuneConfig
from sftc_core.io import read_jsonl
from sftc_core.settings import Settings
from sftc_core.text import markdown_table
from sftc_resources.metadata import code_version, image_markdown, manifest_metadata
from sftc_resources.nemo_launch import launch_step
from sftc_resources.resources import GpuResource
from sftc_resources.routing import asset_placement, check_placement
from sftc_resources.writes import data_version, writing

GROUP = "training"
VALIDATION_LOSS_CHECK = "validation_loss_decreased"
# The NeMo import builds the model through Megatron on one device.
IMPORT_GPUS = 1


class TrainRunConfig(dg.Config):
    """Launchpad overrides, as `sftc train`'s flags; None = the profile's."""

    max_steps: int | None = None
    smoke_test: bool = False
    """10 steps on a few samples: the first run on a new node."""
    resume: bool = False
    """Continue from the latest checkpoint under data/models/sft/checkpoints (same settings only)."""


class NemoRunConfig(dg.Config):
    dry_run: bool = False
    """Check the inputs and plan the NeMo run (in the materialization's metadata) without importing NeMo or writing files."""


# --- the NeMo backend through Pipes ---------------------------------------------------------------


def _plan_from(invocation: dg.PipesClientCompletedInvocation) -> dict | None:
    plans = [m["plan"] for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("kind") == "plan"]
    return plans[-1] if plans else None


def _require_plan(plan: dict | None) -> dict:
    if plan is None:
        raise dg.Failure("the NeMo entry's dry run reported no plan through Pipes; see its log above")
    return plan


def _gate(gpu: GpuResource, settings: Settings, asset: str, count: int) -> None:
    """Fails at once, before any work, on a node without the GPUs (subprocess launcher: the work runs here)."""
    if settings.finetune.launcher == "subprocess":
        gpu.require_gpus(asset, count, settings.finetune.gpu_memory_bytes)


def _python(settings: Settings) -> Path:
    # In the NeMo image the interpreter is `python` on PATH (nemo_launch.k8s_argv); locally it must exist.
    return nemo_runner.require_interpreter(settings.nemo_python) if settings.finetune.launcher == "subprocess" else Path("python")


def run_nemo_finetune_via_pipes(
    context: dg.AssetExecutionContext,
    pipes_client: dg.PipesSubprocessClient,
    gpu: GpuResource,
    settings: Settings,
    config: FinetuneConfig,
    *,
    dry_run: bool = False,
    stamp: Stamp | None = None,
) -> dict:
    """The `sft_model` asset's nemo branch: gate, fine-tune, merge, export to data/models/sft through Pipes.

    Returns metrics.json (the same loss keys as the hf backend: steps, initial/final/best_val_loss, best_val_step,
    final_train_loss, tokens_per_s); on a dry run, the planned recipe instead and nothing is written.
    loss_curve.png, training.csv and val.csv lie beside the HF weights.
    """
    _gate(gpu, settings, "sft_model", config.gpus_per_node)

    def execute(step: EntryStep) -> dict | None:
        invocation = launch_step(context, pipes_client, settings, step, config.gpus_per_node)
        return _plan_from(invocation) if step.argv[-1] == "--dry-run" else None

    paths = settings.paths
    result = nemo_runner.nemo_finetune(
        execute, _python(settings), config, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model, dry_run, stamp
    )
    if dry_run:
        return _require_plan(result)
    context.log.info("nemo fine-tune: %s", json.dumps({k: result.get(k) for k in ("steps", "final_val_loss", "best_val_loss")}))
    return result


# --- the Hugging Face backend ---------------------------------------------------------------------


def _train_hf(context: dg.AssetExecutionContext, config: TrainRunConfig, settings: Settings, gpu: GpuResource, stamp: Stamp) -> dict:
    paths = settings.paths
    device = gpu.device_for_checkpoint("sft_model", paths.bf16_checkpoint, settings.profile.compute.cpu_max_checkpoint_bytes, "bf16_checkpoint")

    def log_progress(row: dict) -> None:
        if "val_loss" in row:
            context.log.info("step %d: training loss %.4f, validation loss %.4f, %.0f tokens/s", row["step"], row["loss"], row["val_loss"], row["tokens_per_s"])

    result = hf_backend.run_training(
        paths.bf16_checkpoint,
        paths.nemo_jsonl,
        paths.sft_model,
        settings.profile.training,
        settings.sft,
        settings.profile.evaluation,
        max_steps=config.max_steps,
        smoke_test=config.smoke_test,
        resume=config.resume,
        device=device,
        on_step=log_progress,
        stamp=stamp,
    )
    return result.metrics


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths

    @dg.asset(
        deps=["bf16_checkpoint"],
        group_name=GROUP,
        code_version=code_version("nemo_model", settings, nemo_runner, nemo_entry),
        kinds={"nvidia", "pytorch"},
        description="The BF16 checkpoint imported into NeMo (llm.import_ckpt), run in the NeMo environment through Dagster Pipes.",
        **asset_placement("gpu", settings),
    )
    def nemo_model(
        context: dg.AssetExecutionContext, config: NemoRunConfig, gpu: GpuResource, pipes_subprocess_client: dg.PipesSubprocessClient
    ) -> dg.MaterializeResult:
        _gate(gpu, settings, "nemo_model", IMPORT_GPUS)
        step = nemo_runner.import_step(_python(settings), paths.bf16_checkpoint, paths.nemo_model, dry_run=config.dry_run)
        with writing(settings, "nemo_model", [paths.nemo_model], inputs=[("bf16_checkpoint", None)]) as stamp:
            invocation = launch_step(context, pipes_subprocess_client, settings, step, IMPORT_GPUS)
            if not config.dry_run:
                stamp(paths.nemo_model, paths.nemo_model)  # the NeMo process wrote it (atomically); marked once it is there
        if config.dry_run:
            # Pipes makes a materialization mandatory; this one says plainly that nothing was written.
            plan = _require_plan(_plan_from(invocation))
            return dg.MaterializeResult(
                metadata={"dry_run": True, "planned": dg.MetadataValue.json(plan), "written": "nothing (dry run)", **manifest_metadata(settings, "nemo_model")}
            )
        reported = invocation.get_materialize_result()
        return dg.MaterializeResult(
            metadata={
                **(reported.metadata or {}),
                "dry_run": False,
                "path": dg.MetadataValue.path(str(paths.nemo_model)),
                "source": dg.MetadataValue.path(str(paths.bf16_checkpoint)),
                **manifest_metadata(settings, "nemo_model"),
            },
            data_version=data_version([paths.nemo_model]),
        )

    nemo_backend = settings.train_backend == "nemo"

    @dg.asset(
        # The NeMo backend fine-tunes the imported checkpoint; the HF backend starts from the BF16 one.
        deps=["bf16_checkpoint", "nemo_jsonl", *([nemo_model] if nemo_backend else [])],
        group_name=GROUP,
        code_version=code_version("sft_model", settings, *((nemo_runner, nemo_entry) if nemo_backend else (hf_backend,))),
        kinds={"pytorch", "huggingface"},
        description="The fine-tuned checkpoint (HF layout, tokenizer with the SFT special tokens) with training.csv, val.csv, "
        "metrics.json and loss_curve.png: the Hugging Face backend on CPU or GPU, or NeMo on GPU nodes (TRAIN_BACKEND).",
        **asset_placement("auto", settings),
    )
    def sft_model(
        context: dg.AssetExecutionContext, config: TrainRunConfig, gpu: GpuResource, pipes_subprocess_client: dg.PipesSubprocessClient
    ) -> dg.MaterializeResult:
        # A config the run cannot take is refused first, before the inputs are even looked at.
        finetune = nemo_runner.run_config(settings.finetune, config.max_steps, config.smoke_test) if nemo_backend else None
        inputs = [("bf16_checkpoint", None), ("nemo_jsonl", None), *([("nemo_model", None)] if nemo_backend else [])]
        with writing(settings, "sft_model", [paths.sft_model], inputs) as stamp:
            if nemo_backend:
                # NeMo resumes from its own checkpoints under the work dir, so `resume` needs no flag there.
                metrics = run_nemo_finetune_via_pipes(context, pipes_subprocess_client, gpu, settings, finetune, stamp=stamp)
            else:
                metrics = _train_hf(context, config, settings, gpu, stamp)
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
        }  # fmt: skip
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(output)),
                "backend": settings.train_backend,
                **figures,
                "loss_curve": image_markdown(output / "loss_curve.png", "training and validation loss"),
                "validation_losses": dg.MetadataValue.md(markdown_table(val_rows)),
                "generations": dg.MetadataValue.md(markdown_table(generations, ["expected", "predicted", "output"], max_cell=160)),
                "metrics": dg.MetadataValue.json(metrics),
                **manifest_metadata(settings, "sft_model"),
            },
            data_version=data_version([output]),
        )

    @dg.asset_check(
        asset=sft_model,
        blocking=True,
        description="The validation loss at the end of training is below its value before the first step (metrics.json).",
        **check_placement("auto", settings),
    )
    def validation_loss_decreased() -> dg.AssetCheckResult:
        path = paths.sft_model / "metrics.json"
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

    @dg.asset_check(
        asset="bf16_checkpoint",
        description="`sftc preflight` on the node: GPUs and memory against configs/nemo/finetune.yaml, Triton FP8, disk, "
        "NeMo importable (GPU items required in the full profile only). A warning, not a block: the GPU gate blocks.",
        **check_placement("auto", settings),
    )
    def gpu_preflight() -> dg.AssetCheckResult:
        report = preflight.run_preflight(settings, require_gpu=settings.profile_name == "full", check_nemo=nemo_backend)
        return dg.AssetCheckResult(
            passed=report.ready,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "ready": report.ready,
                "checklist": dg.MetadataValue.md(markdown_table(report.as_dict()["items"], max_cell=160)),
                "report": dg.MetadataValue.json(report.as_dict()),
            },
        )

    return dg.Definitions(assets=[nemo_model, sft_model], asset_checks=[validation_loss_decreased, gpu_preflight])
