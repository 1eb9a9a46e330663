"""configs/nemo/finetune.yaml: the NeMo fine-tune recipe (parallel layout, LoRA, optimizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PrivateAttr,
)

from sftc_core.configs.base import CONFIG_DIR, ConfigError, Strict, load_yaml_model
from sftc_core.configs.profile import LoraConfig, TrainingConfig
from sftc_core.lora_targets import hf_targets


class ParallelismConfig(Strict):
    tensor: int = Field(ge=1)
    pipeline: int = Field(ge=1)
    context: int = Field(default=1, ge=1)
    expert: int = Field(default=1, ge=1)
    # None: Megatron gives the experts the tensor-parallel size.
    expert_tensor: int | None = Field(default=None, ge=1)
    sequence_parallel: bool = False
    layers_in_first_pipeline_stage: int | None = Field(default=None, ge=1)
    layers_in_last_pipeline_stage: int | None = Field(default=None, ge=1)


class FinetuneConfig(Strict):
    recipe: Literal["deepseek_v3"]
    peft: Literal["lora", "none"]
    nemo_python: str = ".venv-nemo/bin/python"
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gb: float = Field(gt=0)
    parallelism: ParallelismConfig
    seq_length: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    packed_sequence: bool = False
    # Activation recompute: none (NeMo's recipe) or full (each layer keeps only its input and recomputes the rest).
    recompute: Literal["none", "full"] = "none"
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(ge=0)
    max_steps: int = Field(ge=1)
    val_check_interval: int = Field(ge=1)
    limit_val_batches: int | None = Field(default=None, ge=1)
    checkpoint_every_n_steps: int = Field(ge=1)
    seed: int = 1234
    lora: LoraConfig

    _source: str = PrivateAttr(default=str(CONFIG_DIR / "nemo" / "finetune.yaml"))

    @property
    def source(self) -> str:
        """The file this config was read from, for error messages."""
        return self._source

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel_size(self) -> int:
        p = self.parallelism
        return self.world_size // (p.tensor * p.pipeline * p.context)

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu_memory_gb * 1e9)


def layout_problems(config: FinetuneConfig) -> list[tuple[str, str]]:
    """(field, what is wrong and what is expected) for values that only fail together (Megatron's layout rules)."""
    p = config.parallelism
    problems = []
    if p.sequence_parallel and p.tensor < 2:
        problems.append(
            (
                "parallelism.sequence_parallel",
                "needs tensor >= 2 (it splits activations across the tensor-parallel group); "
                "set it false or raise tensor",
            )
        )
    if (p.layers_in_first_pipeline_stage is not None or p.layers_in_last_pipeline_stage is not None) and p.pipeline < 2:
        problems.append(
            (
                "parallelism.layers_in_first_pipeline_stage",
                "layers_in_first/last_pipeline_stage need pipeline >= 2; set them to null",
            )
        )
    model_parallel = p.tensor * p.pipeline * p.context
    if config.world_size % model_parallel:
        problems.append(
            (
                "parallelism",
                f"tensor * pipeline * context = {p.tensor}*{p.pipeline}*{p.context} = {model_parallel} must divide "
                f"nodes * gpus_per_node = {config.nodes}*{config.gpus_per_node} = {config.world_size}",
            )
        )
        return problems  # the data-parallel size below is meaningless then
    expert_parallel = p.expert * (p.expert_tensor or p.tensor) * p.pipeline
    if config.world_size % expert_parallel:
        problems.append(
            (
                "parallelism.expert",
                f"expert * expert_tensor * pipeline = {expert_parallel} "
                f"must divide nodes * gpus_per_node = {config.world_size}",
            )
        )
    per_step = config.micro_batch_size * config.data_parallel_size
    if config.global_batch_size % per_step:
        problems.append(
            (
                "global_batch_size",
                f"{config.global_batch_size} must be a multiple of micro_batch_size * data-parallel size = "
                f"{config.micro_batch_size}*{config.data_parallel_size} = {per_step}",
            )
        )
    if p.context > 1 and config.seq_length % (2 * p.context):
        problems.append(
            ("seq_length", f"{config.seq_length} must be a multiple of 2 * parallelism.context = {2 * p.context}")
        )
    if p.sequence_parallel and config.seq_length % p.tensor:
        problems.append(
            (
                "seq_length",
                f"{config.seq_length} must be a multiple of parallelism.tensor = {p.tensor} with sequence_parallel",
            )
        )
    if config.warmup_steps >= config.max_steps:
        problems.append(("warmup_steps", f"{config.warmup_steps} must be below max_steps {config.max_steps}"))
    if config.val_check_interval > config.max_steps:
        problems.append(
            (
                "val_check_interval",
                f"{config.val_check_interval} exceeds max_steps {config.max_steps}: the run would never validate",
            )
        )
    if config.min_learning_rate > config.learning_rate:
        problems.append(
            ("min_learning_rate", f"{config.min_learning_rate} must not exceed learning_rate {config.learning_rate}")
        )
    return problems


def _checked(config: FinetuneConfig, where: Path | str) -> FinetuneConfig:
    problems = layout_problems(config)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(f"field '{field}': {message}" for field, message in problems))
    return config


def with_nodes(config: FinetuneConfig, nodes: int | None, gpus_per_node: int | None) -> FinetuneConfig:
    """The config on another job shape (--nodes, --procs-per-node), checked against the parallel layout again."""
    update = {k: v for k, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node)) if v is not None}
    if not update:
        return config
    return _checked(
        config.model_copy(update=update), f"{config.source} with " + ", ".join(f"{k}={v}" for k, v in update.items())
    )


def with_max_steps(config: FinetuneConfig, max_steps: int) -> FinetuneConfig:
    """The config for a shorter run (--max-steps, a smoke test): warmup, validation and checkpoints fit inside it."""
    if max_steps < 1:
        raise ConfigError(f"max_steps {max_steps}: must be at least 1")
    shorter = config.model_copy(
        update={
            "max_steps": max_steps,
            "warmup_steps": min(config.warmup_steps, max_steps - 1),
            "val_check_interval": min(config.val_check_interval, max_steps),
            "checkpoint_every_n_steps": min(config.checkpoint_every_n_steps, max_steps),
        }
    )
    return _checked(shorter, f"--max-steps {max_steps}")


def load_finetune_config(path: Path | str | None = None) -> FinetuneConfig:
    """configs/nemo/finetune.yaml with Megatron's layout rules checked; errors name file and field."""
    path = path or CONFIG_DIR / "nemo" / "finetune.yaml"
    config = load_yaml_model(path, FinetuneConfig)
    config._source = str(path)
    return _checked(config, path)


def recipe_lora(training: TrainingConfig, finetune: FinetuneConfig, where: Path | str) -> TrainingConfig:
    """`training` (of the profile file `where`) with the LoRA of the recipe in `finetune`: its rank, alpha, dropout
    and targets in transformers' names, each value the profile states a reason for replaced (lora_overrides)."""
    if training.lora is not None:
        raise ConfigError(
            f"{where}: field 'training.lora': the LoRA comes from {finetune.source}; write a value that must differ "
            "under training.lora_overrides with its reason"
        )
    stated = training.lora_overrides
    overrides = stated.model_dump(exclude={"reason"}, exclude_none=True) if stated is not None else {}
    targets = hf_targets(list(finetune.lora.target_modules))
    lora = finetune.lora.model_copy(update={**overrides, "target_modules": targets})
    return training.model_copy(update={"lora": lora})
