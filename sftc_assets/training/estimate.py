"""What the GPU run of the full profile will cost, before anyone books it.

The plan's numbers go to sftc_core/cost.py: the NeMo fine-tune of configs/nemo/finetune.yaml (global batch, sequence
length, steps, validation, the parallel layout and its GPUs; or the config a command line changed), the size of the
full profile's release (the checkpoint's shards where this node sees them, else compute.expected_checkpoint_bytes),
the gpu node pool of configs/cluster.yaml, the serving plan's nodes and this data directory's NeMo JSONL (how many
validation and test prompts); the rates and the price come from the `estimate:` section of configs/cluster.yaml.
`sftc train --dry-run`, `sftc preflight` and the validation report show the same estimate.
"""

from __future__ import annotations

import math
from pathlib import Path

from sftc_assets.training.gpu_plan import GpuPlan, full_architecture, nemo_tokens
from sftc_core.configs import FinetuneConfig, ProfileConfig
from sftc_core.cost import (
    Estimate,
    Rate,
    finetune_phase,
    generation_phase,
    serving_nodes,
    summary_lines,
    transfer_phase,
)
from sftc_core.nemo_format import NEMO_FILES
from sftc_core.settings import Settings

NOT_CONFIGURED = (
    "configs/cluster.yaml has no `estimate:` section: add the price per GPU-hour and the rates to estimate the GPU run"
)


def release_bytes(profile: ProfileConfig) -> tuple[float, str]:
    """(bytes of the FP8 release, where the figure comes from): its shards where this node sees them."""
    path = Path(profile.model.base_checkpoint_path) if profile.model.base_checkpoint_path else None
    measured = sum(p.stat().st_size for p in path.glob("*.safetensors")) if path is not None and path.is_dir() else 0
    if measured:
        return float(measured), f"the shards at {path}"
    if profile.compute.expected_checkpoint_bytes is None:
        raise ValueError(
            f"the {profile.name} profile sets no compute.expected_checkpoint_bytes "
            "and its checkpoint is not on this node"
        )
    return float(
        profile.compute.expected_checkpoint_bytes
    ), f"compute.expected_checkpoint_bytes of the {profile.name} profile"


def bf16_bytes(settings: Settings, fp8: float, plan: GpuPlan | None = None) -> tuple[float, str]:
    """(bytes of the BF16 checkpoint, where the figure comes from): the GPU plan's architecture of the full profile
    (`plan`'s, where the caller built one, else read here), else twice the FP8 release (an upper bound: the release
    keeps norms and embeddings in BF16)."""
    arch = plan.architecture if plan is not None else full_architecture(settings)
    if arch is None:
        return 2 * fp8, "twice the FP8 release (the GPU plan could not read the model architecture)"
    return float(arch.bf16_checkpoint_bytes), f"the GPU plan's model architecture, {arch.source}"


def _example_tokens(settings: Settings, finetune: FinetuneConfig, plan: GpuPlan | None) -> tuple[float, str] | None:
    """(mean tokens of a training example, how counted) from the GPU plan's counts of this data directory's NeMo JSONL
    (`plan`'s, else counted here); None where packed sequences fill every row, or there is no data to count."""
    if finetune.packed_sequence:
        return None
    tokens = plan.tokens if plan is not None else nemo_tokens(settings)
    if tokens is None or not tokens.train:
        return None
    counted = f"{tokens.train:,} training examples of {settings.paths.nemo_jsonl}, counted with {tokens.source}"
    return tokens.mean_train_example(finetune.seq_length), counted


def _line_count(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _layout(config: FinetuneConfig) -> str:
    p = config.parallelism
    return (
        f"TP {p.tensor} x PP {p.pipeline} x CP {p.context} x DP {config.data_parallel_size}, "
        f"EP {p.expert}, peft {config.peft}"
    )


def gpu_run_estimate(
    settings: Settings, finetune: FinetuneConfig | None = None, plan: GpuPlan | None = None
) -> Estimate | None:
    """The estimate of the full profile's GPU run (with `finetune` instead of configs/nemo/finetune.yaml: the config of
    a command line; `plan`: the GPU plan already built, so its model is not read again); None when configs/cluster.yaml
    has no `estimate:` section."""
    config = settings.cluster.estimate
    if config is None:
        return None
    finetune = finetune or settings.finetune
    full = settings.full_profile
    rates = {
        "finetune": Rate(
            config.finetune_tokens_per_s_per_gpu.value,
            "tokens/s per GPU",
            config.finetune_tokens_per_s_per_gpu.source,
            config.finetune_tokens_per_s_per_gpu.published,
        ),
        "storage": Rate(
            config.storage_gb_per_s_per_node.value,
            "GB/s per node",
            config.storage_gb_per_s_per_node.source,
            config.storage_gb_per_s_per_node.published,
        ),
        "generation": Rate(
            config.generation_tokens_per_s_per_gpu.value,
            "output tokens/s per GPU",
            config.generation_tokens_per_s_per_gpu.source,
            config.generation_tokens_per_s_per_gpu.published,
        ),
    }
    fp8, fp8_from = release_bytes(full)
    bf16, bf16_from = bf16_bytes(settings, fp8, plan)
    node_gpus = settings.cluster.node_pools.gpu.gpus
    nemo_jsonl = settings.paths.nemo_jsonl
    validation_pairs = _line_count(nemo_jsonl / NEMO_FILES["validation"])
    test_file = nemo_jsonl / NEMO_FILES["test"]
    if finetune.limit_val_batches is not None:
        validation_batches = finetune.limit_val_batches
    else:
        validation_batches = (
            None if validation_pairs is None else math.ceil(validation_pairs / finetune.global_batch_size)
        )
    serving = full.evaluation.serving
    storage = rates["storage"]
    phases = (
        transfer_phase(
            "conversion", fp8, bf16, node_gpus, storage, f"FP8 -> BF16 (bf16_checkpoint; FP8 size from {fp8_from})"
        ),
        transfer_phase(
            "import",
            bf16,
            bf16,
            node_gpus,
            storage,
            f"the BF16 checkpoint into NeMo (nemo_model; BF16 size from {bf16_from})",
        ),
        finetune_phase(
            global_batch_size=finetune.global_batch_size,
            seq_length=finetune.seq_length,
            steps=finetune.max_steps,
            nodes=finetune.nodes,
            gpus_per_node=finetune.gpus_per_node,
            layout=_layout(finetune),
            finetune=rates["finetune"],
            storage=storage,
            checkpoint_bytes=bf16,
            validation_runs=finetune.max_steps // finetune.val_check_interval,
            validation_batches=validation_batches,
            example_tokens=_example_tokens(settings, finetune, plan),
        ),
        # merge_lora writes the merged NeMo checkpoint, export_ckpt reads it back and writes the HF one.
        transfer_phase(
            "merge and export", 2 * bf16, 2 * bf16, node_gpus, storage, "LoRA merge and the HF export (sft_model)"
        ),
        generation_phase(
            prompts=_line_count(test_file),
            tokens_per_prompt=full.evaluation.max_new_tokens,
            nodes=serving_nodes(bf16, serving.gpus_per_node, serving.gpu_memory_gb, serving.max_weight_fraction),
            gpus_per_node=serving.gpus_per_node,
            generation=rates["generation"],
            storage=storage,
            weight_bytes=bf16,
            where=str(test_file),
        ),
    )
    return Estimate(
        phases, rates, config.gpu_hour_price, config.currency, config.price_source, config.uncertainty_factor
    )


def measured_from(estimate: Estimate, figures: dict[str, dict], node_gpus: int) -> Estimate:
    """The estimate with what a real GPU run measured: `figures` per asset (its materialization's figures, and
    `step_seconds`: the wall time of the steps that wrote it): sft_model's train_seconds on world_size GPUs,
    bf16_checkpoint's conversion seconds and nemo_model's step (the NeMo import) on a node of `node_gpus`, and the
    eval_csv steps of the test months on the serving GPUs the estimate counted."""
    sft = figures.get("sft_model", {})
    if sft.get("train_seconds") and sft.get("world_size"):
        estimate = estimate.measured("fine-tune", sft["train_seconds"] / 3600, int(sft["world_size"]))
    conversion = figures.get("bf16_checkpoint", {})
    if conversion.get("seconds") and str(conversion.get("device", "")).startswith("cuda"):
        estimate = estimate.measured("conversion", conversion["seconds"] / 3600, node_gpus)
    if seconds := figures.get("nemo_model", {}).get("step_seconds"):
        estimate = estimate.measured("import", seconds / 3600, node_gpus)
    if seconds := figures.get("eval_csv", {}).get("step_seconds"):
        estimate = estimate.measured("evaluation", seconds / 3600)
    return estimate


def estimate_text(estimate: Estimate | None, prefix: str = "") -> str:
    """The estimate for people, each line after `prefix` (the commands print it under their plan)."""
    lines = summary_lines(estimate.as_dict()) if estimate is not None else [NOT_CONFIGURED]
    return "\n".join(prefix + line for line in lines)
