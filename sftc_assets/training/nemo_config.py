"""configs/nemo/finetune.yaml: the NeMo fine-tune settings, validated, and the recipe they plan.

Importable in both environments (ours and the NeMo one: pydantic, pyyaml and python-dotenv only, no Dagster,
no NeMo), so `nemo_entry --dry-run`, the assets and the `sftc preflight` check share one reading of it.
`plan_recipe` turns the config and the paths of one run into a JSON-able plan whose keys are the exact
attribute names of NeMo 2.7.3's recipe objects; nemo_entry applies it to
`llm.deepseek_v3.finetune_recipe(...)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr

from sftc_assets.common.io import iter_jsonl
from sftc_resources.settings import CONFIG_DIR, ConfigError, _Strict, load_yaml_model

FINETUNE_CONFIG_PATH = CONFIG_DIR / "nemo" / "finetune.yaml"
NEMO_DATA_FILES = ("training.jsonl", "validation.jsonl", "test.jsonl")
RECIPE_FACTORIES = {"deepseek_v3": "nemo.collections.llm.recipes.deepseek_v3.finetune_recipe"}


class ParallelismConfig(_Strict):
    tensor: int = Field(ge=1)
    pipeline: int = Field(ge=1)
    context: int = Field(default=1, ge=1)
    expert: int = Field(default=1, ge=1)
    # None: Megatron gives the experts the tensor-parallel size.
    expert_tensor: int | None = Field(default=None, ge=1)
    sequence_parallel: bool = False
    layers_in_first_pipeline_stage: int | None = Field(default=None, ge=1)
    layers_in_last_pipeline_stage: int | None = Field(default=None, ge=1)


class LoraConfig(_Strict):
    dim: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: list[str] = Field(min_length=1)


class K8sLaunchConfig(_Strict):
    image: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    data_volume_claim: str = Field(min_length=1)
    data_mount_path: str = Field(pattern=r"^/")
    shm_size: str = Field(pattern=r"^[0-9]+(Mi|Gi)$")


class FinetuneConfig(_Strict):
    recipe: Literal["deepseek_v3"]
    peft: Literal["lora", "none"]
    nemo_python: str = ".venv-nemo/bin/python"
    launcher: Literal["subprocess", "k8s"] = "subprocess"
    k8s: K8sLaunchConfig | None = None
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gb: float = Field(gt=0)
    parallelism: ParallelismConfig
    seq_length: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    packed_sequence: bool = False
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(ge=0)
    max_steps: int = Field(ge=1)
    val_check_interval: int = Field(ge=1)
    limit_val_batches: int | None = Field(default=None, ge=1)
    checkpoint_every_n_steps: int = Field(ge=1)
    seed: int = 1234
    lora: LoraConfig

    _source: str = PrivateAttr(default=str(FINETUNE_CONFIG_PATH))

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
        problems.append(("parallelism.sequence_parallel", "needs tensor >= 2 (it splits activations across the tensor-parallel group); set it false or raise tensor"))
    if (p.layers_in_first_pipeline_stage is not None or p.layers_in_last_pipeline_stage is not None) and p.pipeline < 2:
        problems.append(("parallelism.layers_in_first_pipeline_stage", "layers_in_first/last_pipeline_stage need pipeline >= 2; set them to null"))
    model_parallel = p.tensor * p.pipeline * p.context
    if config.world_size % model_parallel:
        problems.append((
            "parallelism",
            f"tensor * pipeline * context = {p.tensor}*{p.pipeline}*{p.context} = {model_parallel} must divide "
            f"nodes * gpus_per_node = {config.nodes}*{config.gpus_per_node} = {config.world_size}",
        ))
        return problems  # the data-parallel size below is meaningless then
    expert_parallel = p.expert * (p.expert_tensor or p.tensor) * p.pipeline
    if config.world_size % expert_parallel:
        problems.append(("parallelism.expert", f"expert * expert_tensor * pipeline = {expert_parallel} must divide nodes * gpus_per_node = {config.world_size}"))
    per_step = config.micro_batch_size * config.data_parallel_size
    if config.global_batch_size % per_step:
        problems.append((
            "global_batch_size",
            f"{config.global_batch_size} must be a multiple of micro_batch_size * data-parallel size = "
            f"{config.micro_batch_size}*{config.data_parallel_size} = {per_step}",
        ))
    if p.context > 1 and config.seq_length % (2 * p.context):
        problems.append(("seq_length", f"{config.seq_length} must be a multiple of 2 * parallelism.context = {2 * p.context}"))
    if p.sequence_parallel and config.seq_length % p.tensor:
        problems.append(("seq_length", f"{config.seq_length} must be a multiple of parallelism.tensor = {p.tensor} with sequence_parallel"))
    if config.warmup_steps >= config.max_steps:
        problems.append(("warmup_steps", f"{config.warmup_steps} must be below max_steps {config.max_steps}"))
    if config.min_learning_rate > config.learning_rate:
        problems.append(("min_learning_rate", f"{config.min_learning_rate} must not exceed learning_rate {config.learning_rate}"))
    if config.launcher == "k8s" and config.k8s is None:
        problems.append(("k8s", "launcher k8s needs the k8s: section (image, namespace, data_volume_claim, data_mount_path, shm_size)"))
    return problems


def _checked(config: FinetuneConfig, path: Path | str) -> FinetuneConfig:
    problems = layout_problems(config)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(f"field '{field}': {message}" for field, message in problems))
    return config


def load_finetune_config(path: Path | str | None = None) -> FinetuneConfig:
    """Read and validate configs/nemo/finetune.yaml; a wrong value raises ConfigError naming file and field."""
    path = path or FINETUNE_CONFIG_PATH
    config = load_yaml_model(path, FinetuneConfig)
    config._source = str(path)
    return _checked(config, path)


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


@dataclass(frozen=True)
class NemoRunPaths:
    """The files one NeMo run reads and writes."""

    hf_checkpoint: Path  # BF16 HF checkpoint: the import source; its config.json gives the architecture
    nemo_checkpoint: Path  # the imported NeMo checkpoint (import writes it, finetune starts from it)
    dataset_root: Path  # nemo_jsonl: training/validation/test.jsonl
    output_dir: Path  # finetune: the exported HF checkpoint at top level
    work_dir: Path  # finetune: NeMo's experiment logs and checkpoints

    def as_json(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.__dict__.items()}


# --- input checks (both environments; no NeMo) ---------------------------------------------------


def read_hf_config(checkpoint_dir: Path) -> dict:
    """config.json of a BF16 HF checkpoint with safetensors weights and no quantization_config."""
    checkpoint_dir = Path(checkpoint_dir)
    config_path = checkpoint_dir / "config.json"
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"{checkpoint_dir}: checkpoint directory not found; materialize bf16_checkpoint first (sftc convert-fp8)")
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; a Hugging Face checkpoint needs config.json beside its weights")
    if not any(checkpoint_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights; expected the BF16 checkpoint in Hugging Face layout")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc.msg})") from None
    if "quantization_config" in hf_config:
        raise ConfigError(
            f"{config_path}: field 'quantization_config' present: NeMo imports BF16 only; point at the BF16 "
            "checkpoint (bf16_checkpoint, made by sftc convert-fp8), not the FP8 release"
        )
    dtype = hf_config.get("dtype") or hf_config.get("torch_dtype")
    if dtype != "bfloat16":
        raise ConfigError(
            f"{config_path}: field 'dtype' (or 'torch_dtype') is {dtype!r}; NeMo's importer takes the model's precision "
            'from it and sftc imports BF16 checkpoints: expected "bfloat16"'
        )
    return hf_config


def check_nemo_dataset(dataset_root: Path) -> dict[str, int]:
    """The three NeMo JSONL files, each line an object with string `input` and `output`; returns line counts."""
    dataset_root = Path(dataset_root)
    counts = {}
    for name in NEMO_DATA_FILES:
        path = dataset_root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; materialize nemo_jsonl first (sftc export-nemo)")
        count = 0
        for lineno, row in iter_jsonl(path):
            for field in ("input", "output"):
                if not isinstance(row.get(field), str):
                    raise ConfigError(f"{path}:{lineno}: field '{field}' missing or not a string; lines are {{\"input\": ..., \"output\": ...}}")
            count += 1
        if count == 0 and name != "test.jsonl":
            raise ConfigError(f"{path}: no lines; NeMo needs at least one {name.split('.')[0]} example")
        counts[name] = count
    return counts


def check_nemo_checkpoint(nemo_checkpoint: Path) -> None:
    """An imported NeMo 2 checkpoint is a directory with context/ and weights/."""
    for part in ("context", "weights"):
        if not (Path(nemo_checkpoint) / part).is_dir():
            raise FileNotFoundError(f"{nemo_checkpoint / part}: missing; materialize nemo_model first (sftc import-nemo)")


# --- the plan ------------------------------------------------------------------------------------


def model_config_from_hf(hf_config: dict, config_path: Path | str = "config.json") -> dict:
    """DeepSeekV3Config fields from an HF DeepSeek-V3 config.json, the same mapping as NeMo 2.7.3's
    HFDeepSeekImporter.config (nemo/collections/llm/gpt/model/deepseek.py), so the recipe's model matches
    the imported checkpoint whatever its size (the real 671B or the toy)."""
    required = (
        "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
        "q_lora_rank", "n_routed_experts", "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace",
        "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "kv_lora_rank",
        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    )
    missing = [key for key in required if key not in hf_config]
    if missing:
        raise ConfigError(f"{config_path}: fields {', '.join(missing)} missing; expected a DeepSeek-V3 config.json")
    # NeMo tells V3 from V2 by the router (HFDeepSeekImporter.config); transformers' own DeepseekV3Config does
    # not write this field, the DeepSeek-V3 release's config.json does.
    if hf_config.get("scoring_func") != "sigmoid":
        raise ConfigError(
            f"{config_path}: field 'scoring_func' is {hf_config.get('scoring_func')!r}; NeMo's DeepSeek importer needs "
            '"sigmoid" (as in the DeepSeek-V3 release config.json) to import the checkpoint as DeepSeek-V3'
        )
    layers = hf_config["num_hidden_layers"]
    dense = hf_config["first_k_dense_replace"]
    return {
        "num_layers": layers,
        "hidden_size": hf_config["hidden_size"],
        "ffn_hidden_size": hf_config["intermediate_size"],
        "num_attention_heads": hf_config["num_attention_heads"],
        "kv_channels": hf_config["num_key_value_heads"],
        "q_lora_rank": hf_config["q_lora_rank"],
        "num_moe_experts": hf_config["n_routed_experts"],
        "moe_ffn_hidden_size": hf_config["moe_intermediate_size"],
        "moe_shared_expert_intermediate_size": hf_config["moe_intermediate_size"] * hf_config["n_shared_experts"],
        "moe_layer_freq": [0] * dense + [1] * (layers - dense),
        "moe_router_topk": hf_config["num_experts_per_tok"],
        "moe_router_num_groups": hf_config["n_group"],
        "moe_router_group_topk": hf_config["topk_group"],
        "moe_router_topk_scaling_factor": hf_config["routed_scaling_factor"],
        "moe_aux_loss_coeff": hf_config.get("aux_loss_alpha", 0.001),
        "kv_lora_rank": hf_config["kv_lora_rank"],
        "qk_head_dim": hf_config["qk_nope_head_dim"],
        "qk_pos_emb_head_dim": hf_config["qk_rope_head_dim"],
        "v_head_dim": hf_config["v_head_dim"],
    }


def _check_model_fits(config: FinetuneConfig, model_config: dict, config_path: Path) -> None:
    p = config.parallelism
    experts = model_config["num_moe_experts"]
    if experts % p.expert:
        raise ConfigError(f"{config.source}: field 'parallelism.expert' = {p.expert} must divide the model's {experts} routed experts ({config_path})")
    heads = model_config["num_attention_heads"]
    if heads % p.tensor:
        raise ConfigError(f"{config.source}: field 'parallelism.tensor' = {p.tensor} must divide the model's {heads} attention heads ({config_path})")
    layers = model_config["num_layers"]
    if p.pipeline > layers:
        raise ConfigError(f"{config.source}: field 'parallelism.pipeline' = {p.pipeline} exceeds the model's {layers} layers ({config_path})")
    first, last = p.layers_in_first_pipeline_stage, p.layers_in_last_pipeline_stage
    if first is not None or last is not None:
        middle_stages = p.pipeline - (first is not None) - (last is not None)
        middle_layers = layers - (first or 0) - (last or 0)
        if middle_layers < 0 or (middle_stages and middle_layers % middle_stages) or (not middle_stages and middle_layers):
            raise ConfigError(
                f"{config.source}: fields 'parallelism.layers_in_first/last_pipeline_stage' = {first}/{last} leave "
                f"{middle_layers} of the model's {layers} layers for {middle_stages} middle stages; they must split evenly ({config_path})"
            )
    elif layers % p.pipeline:
        raise ConfigError(
            f"{config.source}: field 'parallelism.pipeline' = {p.pipeline} must divide the model's {layers} layers, "
            f"or set layers_in_first/last_pipeline_stage ({config_path})"
        )


def plan_recipe(config: FinetuneConfig, paths: NemoRunPaths, name: str = "sftc") -> dict:
    """The fine-tune run as data: recipe factory arguments and the overrides for each recipe object.

    Keys under `trainer`, `strategy`, `data`, `optimizer`, `scheduler`, `checkpoint`, `peft` and
    `model_config` are attribute names of recipe.trainer, recipe.trainer.strategy, recipe.data,
    recipe.optim.config, recipe.optim.lr_scheduler, recipe.log.ckpt, recipe.peft, recipe.model.config.
    """
    config_path = Path(paths.hf_checkpoint) / "config.json"
    model_config = model_config_from_hf(read_hf_config(paths.hf_checkpoint), config_path)
    model_config["seq_length"] = config.seq_length
    _check_model_fits(config, model_config, config_path)
    p = config.parallelism
    lora = config.peft == "lora"
    return {
        "recipe": config.recipe,
        "factory": RECIPE_FACTORIES[config.recipe],
        "factory_kwargs": {
            "dir": str(paths.work_dir),
            "name": name,
            "num_nodes": config.nodes,
            "num_gpus_per_node": config.gpus_per_node,
            "peft_scheme": config.peft,
            "seq_length": config.seq_length,
            "packed_sequence": config.packed_sequence,
        },
        "restore_path": str(paths.nemo_checkpoint),
        "world_size": config.world_size,
        "data_parallel_size": config.data_parallel_size,
        "model_config": model_config,
        "trainer": {
            "max_steps": config.max_steps,
            "val_check_interval": config.val_check_interval,
            "limit_val_batches": config.limit_val_batches,
            "num_nodes": config.nodes,
            "devices": config.gpus_per_node,
        },
        "strategy": {
            "tensor_model_parallel_size": p.tensor,
            "pipeline_model_parallel_size": p.pipeline,
            "context_parallel_size": p.context,
            "expert_model_parallel_size": p.expert,
            "expert_tensor_parallel_size": p.expert_tensor,
            "sequence_parallel": p.sequence_parallel,
            "num_layers_in_first_pipeline_stage": p.layers_in_first_pipeline_stage,
            "num_layers_in_last_pipeline_stage": p.layers_in_last_pipeline_stage,
        },
        # llm.FineTuningDataModule's own arguments (dataset_root holds training/validation/test.jsonl).
        "data": {
            "dataset_root": str(paths.dataset_root),
            "seq_length": config.seq_length,
            "micro_batch_size": config.micro_batch_size,
            "global_batch_size": config.global_batch_size,
            "seed": config.seed,
        },
        "optimizer": {"lr": config.learning_rate, "min_lr": config.min_learning_rate},
        "scheduler": {"warmup_steps": config.warmup_steps, "min_lr": config.min_learning_rate},
        "checkpoint": {"every_n_train_steps": config.checkpoint_every_n_steps},
        "peft": (
            {"dim": config.lora.dim, "alpha": config.lora.alpha, "dropout": config.lora.dropout, "target_modules": list(config.lora.target_modules)}
            if lora
            else None
        ),
        "export": {
            "merge_lora": lora,
            "target": "hf",
            "output_path": str(paths.output_dir),
            # DeepSeek's HF exporter builds the HF model from a local config (transformers has no hub access here).
            "target_model_name": str(paths.hf_checkpoint),
        },
    }
