"""The training assets: `nemo_model` (the BF16 checkpoint imported into NeMo) and `sft_model` (the fine-tuned HF
checkpoint under data/models/sft/: the Hugging Face backend, or NeMo in its own environment), their checks, and the
GPU preflight of the node.

Both start their steps through the launcher of the profile's `launch:` section (local | slurm | k8s;
sftc_platform/launchers/), with Dagster Pipes: the step here only submits and watches, so it runs on a CPU node.
The GPU gate checks the target: this node's GPUs for `local`, the Slurm partition's (sinfo) for `slurm`, the node
pool for `k8s` (Kubernetes schedules the pods only where their GPU request fits).
"""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from sftc_assets.sft_data import splits
from sftc_assets.training import hf_backend, hf_entry, hf_launch, lora_rehearsal, nemo_entry, nemo_runner, preflight
from sftc_core.artifacts import Stamp
from sftc_core.configs import FinetuneConfig, profile_path
from sftc_core.io import read_jsonl
from sftc_core.launch import EntryStep
from sftc_core.settings import Settings
from sftc_core.text import format_number, format_share, markdown_table
from sftc_platform.launchers import jobs, targets
from sftc_platform.launchers.pipes import launch_step
from sftc_platform.launchers.plan import Launch, LaunchError
from sftc_platform.launchers.plan_checks import gpu_plan_launch_checks
from sftc_platform.metadata import asset_metadata, code_version, image_markdown, report_summary
from sftc_platform.resources import GpuResource
from sftc_platform.routing import COMPUTE_CLASSES, asset_placement, check_placement
from sftc_platform.writes import data_version, writing

GROUP = "training"
VALIDATION_LOSS_CHECK = "validation_loss_decreased"
STABLE_LOSS_CHECK = "training_loss_stable"
# Run tags that override the profile's launch for one run (the nightly validation sets them where Slurm is present).
LAUNCHER_TAG, NODES_TAG, PROCS_TAG = "sftc/launcher", "sftc/launch_nodes", "sftc/launch_procs_per_node"


class TrainRunConfig(dg.Config):
    """Launchpad overrides, as `sftc train`'s flags; None = the profile's (or the run's sftc/launcher tags)."""

    max_steps: int | None = None
    smoke_test: bool = False
    """10 steps on a few samples: the first run on a new node."""
    launcher: str | None = None
    """local | slurm | k8s"""
    nodes: int | None = None
    procs_per_node: int | None = None


class NemoRunConfig(dg.Config):
    dry_run: bool = False
    """Check the inputs and plan the NeMo run (in the materialization's metadata)
    without importing NeMo or writing files."""


# --- the NeMo backend through Pipes ---------------------------------------------------------------


def _plan_from(invocation: dg.PipesClientCompletedInvocation) -> dict | None:
    plans = [m["plan"] for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("kind") == "plan"]
    return plans[-1] if plans else None


def _require_plan(plan: dict | None) -> dict:
    if plan is None:
        raise dg.Failure("the NeMo entry's dry run reported no plan through Pipes; see its log above")
    return plan


def launch_for(context: dg.AssetExecutionContext, settings: Settings, launcher: str | None = None) -> Launch:
    """The profile's launch, or the launcher the run config or the run's tags ask for."""
    return Launch.from_settings(settings, launcher or context.run.tags.get(LAUNCHER_TAG))


def _tag_int(context: dg.AssetExecutionContext, tag: str) -> int | None:
    value = context.run.tags.get(tag)
    return int(value) if value else None


def _gate(gpu: GpuResource, launch: Launch, step: EntryStep, asset: str, memory_bytes: int) -> None:
    """Fails at once, before any work, when the target cannot hold the step: this node's GPUs (local), the
    partition's (slurm, sinfo) or the node pool's (k8s)."""
    try:
        jobs.refuse_unlaunchable([step], launch)
    except LaunchError as exc:
        raise dg.Failure(description=f"{asset}: {exc}", allow_retries=False) from None
    if not step.gpus_per_node or step.dry_run:
        return
    if launch.launcher == "local":
        gpu.require_gpus(asset, step.gpus_per_node, memory_bytes)
        return
    check = targets.check_target(step, launch)
    if not check.ok:
        raise dg.Failure(
            description=f"{asset}: {check.found} ({check.needed})",
            metadata={"target": dg.MetadataValue.json(check.as_dict())},
            allow_retries=False,
        )


def _require_nemo_here(launch: Launch, settings: Settings) -> None:
    # a local launch runs the NeMo interpreter of this node; on a cluster it lives in the nodes' environment
    if launch.launcher == "local":
        nemo_runner.require_interpreter(settings.nemo_python)


def gate_nemo_finetune(gpu: GpuResource, launch: Launch, config: FinetuneConfig, settings: Settings) -> None:
    """Fails when the launch target cannot hold the fine-tune's steps, or NeMo is not where a local launch needs it."""
    paths = settings.paths
    for step in nemo_runner.planned_steps(
        config, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model
    ):
        _gate(gpu, launch, step, "sft_model", config.gpu_memory_bytes)
    _require_nemo_here(launch, settings)


def run_nemo_finetune_via_pipes(
    context: dg.AssetExecutionContext,
    gpu: GpuResource,
    settings: Settings,
    config: FinetuneConfig,
    *,
    launch: Launch | None = None,
    dry_run: bool = False,
    stamp: Stamp | None = None,
) -> dict:
    """The `sft_model` asset's nemo branch: gate, fine-tune, merge, export to data/models/sft through Pipes.

    Returns metrics.json (the same loss keys as the hf backend: steps, initial/final/best_val_loss, best_val_step,
    final_train_loss, tokens_per_s); on a dry run, the planned recipe instead and nothing is written.
    loss_curve.png, training.csv and val.csv lie beside the HF weights.
    """
    if launch is None:  # a caller that brings its launch has gated it already
        launch = launch_for(context, settings)
        gate_nemo_finetune(gpu, launch, config, settings)
    paths = settings.paths
    waits: dict[str, dict] = {}  # each launched step's wait to start

    def execute(step: EntryStep) -> dict | None:
        # a dry run only checks inputs and plans: on this node, whatever the launcher
        here = Launch.from_settings(settings, "local") if step.dry_run else launch
        invocation, outcome = launch_step(context, step, here)
        waits[step.name] = outcome.pending()
        return _plan_from(invocation) if step.dry_run else None

    result = nemo_runner.nemo_finetune(
        execute, config, paths.bf16_checkpoint, paths.nemo_model, paths.nemo_jsonl, paths.sft_model, dry_run, stamp
    )
    if dry_run:
        return _require_plan(result)
    context.log.info(
        "nemo fine-tune: %s", json.dumps({k: result.get(k) for k in ("steps", "final_val_loss", "best_val_loss")})
    )
    return {**result, **waits.get("finetune", {})}


# --- the Hugging Face backend ---------------------------------------------------------------------


def _train_hf(
    context: dg.AssetExecutionContext, config: TrainRunConfig, settings: Settings, gpu: GpuResource, stamp: Stamp
) -> dict:
    """The fine-tune launched as a job (every node a torchrun agent): trains beside data/models/sft, resuming from its
    last checkpoint on a retry, and only a finished run replaces data/models/sft (with `stamp`'s marker)."""
    paths = settings.paths
    launch = launch_for(context, settings, config.launcher)
    shape = settings.profile.launch
    nodes = config.nodes or _tag_int(context, NODES_TAG) or shape.nodes
    procs = config.procs_per_node or _tag_int(context, PROCS_TAG) or shape.procs_per_node
    if launch.launcher == "local":  # the node is this one: its GPUs decide the device
        device = gpu.device_for_checkpoint(
            "sft_model", paths.bf16_checkpoint, settings.profile.compute.cpu_max_checkpoint_bytes, "bf16_checkpoint"
        )
    else:
        device = "cuda" if shape.gpus_per_node else "cpu"
    step = hf_launch.training_step(
        paths.bf16_checkpoint,
        paths.nemo_jsonl,
        paths.sft_model,
        settings.profile.training,
        settings.sft,
        settings.profile.evaluation,
        nodes=nodes,
        procs_per_node=procs,
        gpus_per_node=shape.gpus_per_node if device == "cuda" else 0,
        max_steps=config.max_steps,
        smoke_test=config.smoke_test,
        device=device,
        stamp=stamp,
    )
    _gate(gpu, launch, step, "sft_model", 0)
    with hf_backend.training_progress(context.log.info) as progress:

        def on_message(message) -> None:
            if isinstance(message, dict) and message.get("kind") == hf_entry.PROGRESS_MESSAGE:
                progress(message)

        _, outcome = launch_step(context, step, launch, on_message)
    job = {"job_dir": str(outcome.job_dir), "job_log": str(outcome.log_path), **outcome.pending()}
    return {**hf_launch.finished_metrics(paths.sft_model), **job}


def with_ids(generations: list[dict], dataset_dir: Path) -> list[dict]:
    """The sample generations with the id and ticker of their validation thesis, so a reader sees a wrong ticker."""
    validation = splits.load_splits(dataset_dir)["validation"]
    return [
        {"id": validation[g["line"] - 1]["id"], "ticker": validation[g["line"] - 1]["ticker"], **g} for g in generations
    ]


def _training_summary(metrics: dict) -> str:
    """`validation loss 6.94 -> 0.586 in 300 steps, parse rate 100%` (a NeMo run reports no parse rate)."""
    initial, final = format_number(metrics["initial_val_loss"]), format_number(metrics["final_val_loss"])
    text = f"validation loss {initial} -> {final} in {metrics['steps']} steps"
    return text + (
        f", parse rate {format_share(metrics['parse_rate'])}" if metrics.get("parse_rate") is not None else ""
    )


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def materialize_nemo_model(
    context: dg.AssetExecutionContext, settings: Settings, config: NemoRunConfig, gpu: GpuResource
) -> dg.MaterializeResult:
    paths = settings.paths
    launch = launch_for(context, settings)
    step = nemo_runner.import_step(paths.bf16_checkpoint, paths.nemo_model, dry_run=config.dry_run)
    if step.dry_run:
        launch = Launch.from_settings(settings, "local")
    _gate(gpu, launch, step, "nemo_model", settings.finetune.gpu_memory_bytes)
    _require_nemo_here(launch, settings)
    with writing(settings, "nemo_model", [paths.nemo_model], inputs=[("bf16_checkpoint", None)]) as stamp:
        invocation, outcome = launch_step(context, step, launch)
        if not config.dry_run:
            stamp(paths.nemo_model, paths.nemo_model)  # the NeMo process wrote it (atomically); marked once it is there
    if config.dry_run:
        # Pipes makes a materialization mandatory; this one says plainly that nothing was written.
        plan = _require_plan(_plan_from(invocation))
        planned = {"dry_run": True, "planned": dg.MetadataValue.json(plan), "written": "nothing (dry run)"}
        return dg.MaterializeResult(metadata=asset_metadata(settings, "nemo_model", planned))
    reported = invocation.get_materialize_result()
    report_summary(context, "nemo_model", f"imported into NeMo by {outcome.launcher} job {outcome.job_id}")
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "nemo_model",
            {
                **(reported.metadata or {}),
                "dry_run": False,
                **outcome.as_metadata(),
                "path": dg.MetadataValue.path(str(paths.nemo_model)),
                "source": dg.MetadataValue.path(str(paths.bf16_checkpoint)),
            },
        ),
        data_version=data_version([paths.nemo_model]),
    )


def materialize_sft_model(
    context: dg.AssetExecutionContext, settings: Settings, config: TrainRunConfig, gpu: GpuResource
) -> dg.MaterializeResult:
    paths = settings.paths
    nemo_backend = settings.train_backend == "nemo"
    # A config or a target the run cannot take is refused first, before the inputs are even looked at.
    launch = launch_for(context, settings, config.launcher)
    if nemo_backend:
        finetune = nemo_runner.run_config(
            settings.finetune, config.max_steps, config.smoke_test, config.nodes, config.procs_per_node
        )
        gate_nemo_finetune(gpu, launch, finetune, settings)
    inputs = [("bf16_checkpoint", None), ("nemo_jsonl", None), ("hf_splits", None)]
    inputs += [("nemo_model", None)] if nemo_backend else []
    with writing(settings, "sft_model", [paths.sft_model], inputs) as stamp:
        if nemo_backend:
            # NeMo resumes from its own checkpoints under the work dir (the recipe's resume_if_exists).
            metrics = run_nemo_finetune_via_pipes(context, gpu, settings, finetune, launch=launch, stamp=stamp)
        else:
            metrics = _train_hf(context, config, settings, gpu, stamp)
    output = paths.sft_model
    report_summary(context, "sft_model", _training_summary(metrics))
    val_rows = [{"step": r["step"], "val_loss": f"{float(r['val_loss']):.4f}"} for r in _csv_rows(output / "val.csv")]
    generations_file = output / "val_generations.jsonl"
    generations = with_ids(read_jsonl(generations_file), paths.hf_splits) if generations_file.is_file() else []
    figures = {
        key: metrics[key]
        for key in (
            "steps",
            "initial_val_loss",
            "final_val_loss",
            "best_val_loss",
            "best_val_step",
            "final_train_loss",
            "tokens_per_s",
            "parse_rate",
            "parse_checked",
            "train_examples",
            "val_examples",
            "truncated_train_examples",
            "peft",
            "trainable_params",
            "device",
            "train_seconds",
            "resumed_from_step",
            "launcher",
            "nodes",
            "world_size",
            "slurm_job_id",
            "job_log",
            "pending_s",
            "pending_reason",
        )
        if metrics.get(key) is not None  # a figure the run did not produce is left out, not shown as null
    }
    generation_columns = ["id", "ticker", "expected", "predicted", "output"]
    return dg.MaterializeResult(
        metadata=asset_metadata(
            settings,
            "sft_model",
            {
                "path": dg.MetadataValue.path(str(output)),
                "backend": settings.train_backend,
                **figures,
                "loss_curve": image_markdown(output / "loss_curve.png", "training and validation loss"),
                "validation_losses": dg.MetadataValue.md(markdown_table(val_rows)),
                "generations": dg.MetadataValue.md(markdown_table(generations, generation_columns, max_cell=160)),
                # the rest of metrics.json: what the figures above do not show already
                "metrics": dg.MetadataValue.json(metrics),
            },
        ),
        data_version=data_version([output]),
    )


def _learning_rate_setting(settings: Settings) -> str:
    """The setting that drives the step size of this backend, named as a person would fix it."""
    if settings.train_backend == "nemo":
        finetune = settings.finetune
        return f"learning_rate {finetune.learning_rate:g} (warmup_steps {finetune.warmup_steps}) in {finetune.source}"
    training = settings.profile.training
    return (
        f"training.learning_rate {training.learning_rate:g} (warmup_steps {training.warmup_steps}, max_grad_norm "
        f"{training.max_grad_norm:g}) in {profile_path(settings.profile_name, settings.config_dir)}"
    )


def check_validation_loss_decreased(model_dir: Path, settings: Settings) -> dg.AssetCheckResult:
    path = model_dir / "metrics.json"
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, description=f"{path} is missing: sft_model has not finished a run")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    initial, final = metrics["initial_val_loss"], metrics["final_val_loss"]
    passed, description = final < initial, None  # a NaN loss did not fall
    if not passed:
        setting = _learning_rate_setting(settings)
        description = f"validation loss did not fall: {initial:.4f} -> {final:.4f}; check {setting} and the data"
    return dg.AssetCheckResult(
        passed=passed,
        description=description,
        metadata={
            "initial_val_loss": initial,
            "final_val_loss": final,
            "best_val_loss": metrics["best_val_loss"],
            "relative_drop": round(1 - final / initial, 4),
            "steps": metrics["steps"],
        },
    )


def check_training_loss_stable(model_dir: Path, settings: Settings) -> dg.AssetCheckResult:
    path = model_dir / "training.csv"
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, description=f"{path} is missing: sft_model has not finished a run")
    losses = [float(r["loss"]) for r in _csv_rows(path) if r["loss"] not in ("", None)]
    rise = hf_backend.loss_rise(losses)
    if rise is None:
        figures = {"steps": len(losses), "first_loss": round(losses[0], 4), "max_loss": round(max(losses), 4)}
        return dg.AssetCheckResult(passed=True, metadata=figures)
    figures = {"step": rise["step"], "rolling_loss": round(rise["average"], 4), "start_loss": round(rise["start"], 4)}
    return dg.AssetCheckResult(
        passed=False,
        description=f"the training loss climbed to {rise['average']:.4f} "
        f"(mean of steps {rise['step'] - rise['window'] + 1}..{rise['step']}) "
        f"from {rise['start']:.4f} at the start: {_learning_rate_setting(settings)} is likely too high; lower it",
        metadata=figures,
    )


def check_lora_rehearsal(settings: Settings, log: Callable[..., None]) -> dg.AssetCheckResult:
    """The profile's lora_rehearsal on sft_model's own inputs (the BF16 base, the NeMo JSONL), judged and shown;
    `log`: where its start and outcome go (the run's log)."""
    paths, profile = settings.paths, settings.profile
    rehearsal = profile.lora_rehearsal
    where = profile_path(settings.profile_name, settings.config_dir)
    log(
        "rehearsing the GPU recipe's LoRA: %d steps on %s (lora_rehearsal of %s)",
        rehearsal.max_steps,
        paths.bf16_checkpoint,
        where,
    )
    try:
        figures = lora_rehearsal.rehearse_lora(
            paths.bf16_checkpoint, paths.nemo_jsonl, profile.training, rehearsal, settings.sft, profile.evaluation, log
        )
    except (ValueError, FileNotFoundError) as exc:  # a target the model lacks, a loss gone non-finite, no input
        return dg.AssetCheckResult(passed=False, description=f"the GPU recipe's LoRA did not run on this base: {exc}")
    problems = lora_rehearsal.rehearsal_problems(figures, rehearsal, str(where))
    summary = lora_rehearsal.rehearsal_summary(figures)
    log("LoRA rehearsal: %s", "; ".join(problems) or summary)
    adapter_files = [{"file": name, "bytes": size} for name, size in figures["adapter_files"].items()]
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or summary,
        metadata={
            "steps": figures["steps"],
            "initial_val_loss": figures["initial_val_loss"],
            "final_val_loss": figures["final_val_loss"],
            "val_loss_drop": figures["val_loss_drop"],
            "min_val_loss_drop": rehearsal.min_val_loss_drop,
            "parse_rate": figures["parse_rate"],
            "min_parse_rate": rehearsal.min_parse_rate,
            "adapters": figures["adapters"],
            "merge_max_abs_diff": figures["merge_max_abs_diff"],
            "seconds": figures["seconds"],
            "adapter_files": dg.MetadataValue.md(markdown_table(adapter_files)),
            "figures": dg.MetadataValue.json(figures),
        },
    )


def check_gpu_preflight(settings: Settings) -> dg.AssetCheckResult:
    # This node's GPU items are required where the GPU run is: the full profile.
    report = preflight.run_preflight(
        settings, require_gpu=settings.profile_name == "full", launch_checks=gpu_plan_launch_checks
    )
    return preflight_result(report)


def preflight_result(report: preflight.PreflightReport) -> dg.AssetCheckResult:
    """`sftc preflight`'s report as the check's result: a warning naming each failed item, the checklist in a table."""
    rows = [{k: v for k, v in check.as_dict().items() if k != "details"} for check in report.checks]
    columns = ["name", "scope", "status", "found", "fix"]
    return dg.AssetCheckResult(
        passed=report.ready,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if report.ready else "; ".join(check.line for check in report.failures),
        metadata={
            "ready": report.ready,
            "checklist": dg.MetadataValue.md(markdown_table(rows, columns, max_cell=200)),
            "report": dg.MetadataValue.json(report.as_dict()),
        },
    )


def defs(settings: Settings) -> dg.Definitions:
    paths = settings.paths

    @dg.asset(
        deps=["bf16_checkpoint"],
        group_name=GROUP,
        code_version=code_version("nemo_model", settings, nemo_runner, nemo_entry, targets),
        kinds={"nvidia", "pytorch"},
        description="The BF16 checkpoint imported into NeMo (llm.import_ckpt), "
        "run in the NeMo environment through Dagster Pipes.",
        **asset_placement(COMPUTE_CLASSES["nemo_model"], settings),
    )
    def nemo_model(context: dg.AssetExecutionContext, config: NemoRunConfig, gpu: GpuResource) -> dg.MaterializeResult:
        return materialize_nemo_model(context, settings, config, gpu)

    nemo_backend = settings.train_backend == "nemo"

    @dg.asset(
        # The NeMo backend fine-tunes the imported checkpoint; the HF backend starts from the BF16 one.
        # hf_splits: the id and ticker of each sample generation (validation.jsonl line N is validation row N).
        deps=["bf16_checkpoint", "nemo_jsonl", "hf_splits", *([nemo_model] if nemo_backend else [])],
        group_name=GROUP,
        code_version=code_version(
            "sft_model",
            settings,
            *((nemo_runner, nemo_entry, targets) if nemo_backend else (hf_backend, hf_entry, hf_launch, targets)),
        ),
        kinds={"pytorch", "huggingface"},
        description="The fine-tuned checkpoint (HF layout, tokenizer with the SFT special tokens) "
        "with training.csv, val.csv, metrics.json and loss_curve.png: "
        "the Hugging Face backend on CPU or GPU, or NeMo on GPU nodes (TRAIN_BACKEND).",
        **asset_placement(COMPUTE_CLASSES["sft_model"], settings),
        # a job the cluster lost (preempted, a failed node) is started again; it resumes from its last checkpoint
        retry_policy=dg.RetryPolicy(max_retries=settings.profile.launch.max_retries, delay=60)
        if settings.profile.launch.max_retries
        else None,
    )
    def sft_model(context: dg.AssetExecutionContext, config: TrainRunConfig, gpu: GpuResource) -> dg.MaterializeResult:
        return materialize_sft_model(context, settings, config, gpu)

    @dg.asset_check(
        asset=sft_model,
        blocking=True,
        description="The validation loss at the end of training is below its value before the first step "
        "(metrics.json).",
        **check_placement(COMPUTE_CLASSES["sft_model"], settings),
    )
    def validation_loss_decreased() -> dg.AssetCheckResult:
        return check_validation_loss_decreased(paths.sft_model, settings)

    @dg.asset_check(
        asset=sft_model,
        blocking=True,
        description="The training loss never climbs above where it started "
        "(moving average over 5 steps, 5% tolerance): "
        "a loss that rises or turns non-finite means a learning rate too high, named in the failure.",
        **check_placement(COMPUTE_CLASSES["sft_model"], settings),
    )
    def training_loss_stable() -> dg.AssetCheckResult:
        return check_training_loss_stable(paths.sft_model, settings)

    @dg.asset_check(
        asset="bf16_checkpoint",
        description="`sftc preflight`: this node's GPUs and memory against configs/nemo/finetune.yaml, "
        "Triton FP8, the base checkpoint and disk (GPU items required in the full profile only), "
        "then the GPU plan of the full profile (the validation report's list). "
        "A warning, not a block: the GPU gate blocks.",
        **check_placement(COMPUTE_CLASSES["sft_model"], settings),
    )
    def gpu_preflight() -> dg.AssetCheckResult:
        return check_gpu_preflight(settings)

    checks = [validation_loss_decreased, training_loss_stable, gpu_preflight]
    if settings.profile.lora_rehearsal is not None and not nemo_backend:  # NeMo's fine-tune runs the recipe itself

        @dg.asset_check(
            asset=sft_model,
            name=lora_rehearsal.CHECK_NAME,
            description="The GPU recipe's LoRA (configs/nemo/finetune.yaml) rehearsed for a few steps on this "
            "fine-tune's base and data (the profile's lora_rehearsal): its targets exist, its validation loss falls "
            "by lora_rehearsal.min_val_loss_drop, min_parse_rate of its answers parse, and its PEFT adapter loads onto "
            "the base and merges exactly.",
            **check_placement(COMPUTE_CLASSES["sft_model"], settings),
        )
        def lora_recipe_rehearsed(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
            return check_lora_rehearsal(settings, context.log.info)

        checks.append(lora_recipe_rehearsed)
    return dg.Definitions(assets=[nemo_model, sft_model], asset_checks=checks)
