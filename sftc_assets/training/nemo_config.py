"""The NeMo fine-tune's inputs checked, and the recipe that configs/nemo/finetune.yaml plans for them.

Importable in both environments (ours and the NeMo one: pydantic, pyyaml and python-dotenv only, no Dagster,
no NeMo), so `nemo_entry --dry-run`, the assets and `sftc preflight` share one reading of the config
(`FinetuneConfig` in sftc_core/configs/finetune.py).
`plan_recipe` turns the config and the paths of one run into a JSON-able plan whose keys are the exact
attribute names of NeMo 2.7.3's recipe objects; nemo_entry applies it to
`llm.deepseek_v3.finetune_recipe(...)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sftc_core.configs import CONFIG_DIR, ConfigError, FinetuneConfig
from sftc_core.lora_targets import HF_TO_NEMO_MODULES, NEMO_TO_HF_MODULES, leaf
from sftc_core.nemo_format import NEMO_FILES, read_pairs

FINETUNE_CONFIG_PATH = CONFIG_DIR / "nemo" / "finetune.yaml"
NEMO_DATA_FILES = tuple(NEMO_FILES.values())
RECIPE_FACTORIES = {"deepseek_v3": "nemo.collections.llm.recipes.deepseek_v3.finetune_recipe"}

# The Linear modules of a DeepSeek-V3 layer in NeMo 2.7.3 (Megatron's names, which llm.peft.LoRA's target_modules
# match; a name that matches nothing adds no adapter, silently): the keys of the NeMo-to-HF name table (linear_q_proj
# only exists without a q_lora_rank, as in V2-Lite). tests/test_training_nemo_env.py reads the list from NeMo's own
# DeepSeek-V3 layer spec.
NEMO_LINEAR_MODULES = tuple(NEMO_TO_HF_MODULES)


def lora_target_problems(targets: list[str]) -> list[str]:
    """What is wrong with each LoRA target that names no Linear module of NeMo's DeepSeek-V3 (a wildcard pattern
    such as `*.layers.0.*.linear_proj` counts by its last part)."""
    problems = []
    for target in targets:
        name = leaf(target)
        if name in NEMO_LINEAR_MODULES:
            continue
        nemo_name = HF_TO_NEMO_MODULES.get(name)
        hint = (
            f"that is the transformers name; NeMo calls it {nemo_name}"
            if nemo_name
            else "DeepSeek-V3 has no fused QKV projection (MLA)"
            if name == "linear_qkv"
            else "not a module of NeMo's DeepSeek-V3"
        )
        problems.append(f"{target!r} ({hint})")
    return problems


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
        raise FileNotFoundError(
            f"{checkpoint_dir}: checkpoint directory not found; materialize bf16_checkpoint first (sftc convert-fp8)"
        )
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: missing; a Hugging Face checkpoint needs config.json beside its weights"
        )
    if not any(checkpoint_dir.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{checkpoint_dir}: no *.safetensors weights; expected the BF16 checkpoint in Hugging Face layout"
        )
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
            f"{config_path}: field 'dtype' (or 'torch_dtype') is {dtype!r}; "
            "NeMo's importer takes the model's precision from it and sftc imports BF16 checkpoints: "
            'expected "bfloat16"'
        )
    return hf_config


def check_nemo_dataset(dataset_root: Path) -> dict[str, int]:
    """The three NeMo JSONL files, each line checked by the one contract (sftc_core.nemo_format);
    returns line counts."""
    counts = {}
    for name in NEMO_DATA_FILES:
        path = Path(dataset_root) / name
        count = len(read_pairs(path))
        if count == 0 and name != NEMO_FILES["test"]:
            raise ConfigError(f"{path}: no lines; NeMo needs at least one {name.split('.')[0]} example")
        counts[name] = count
    return counts


def check_nemo_checkpoint(nemo_checkpoint: Path) -> None:
    """An imported NeMo 2 checkpoint is a directory with context/ and weights/."""
    for part in ("context", "weights"):
        if not (Path(nemo_checkpoint) / part).is_dir():
            raise FileNotFoundError(
                f"{nemo_checkpoint / part}: missing; materialize nemo_model first (sftc import-nemo)"
            )


# --- the plan ------------------------------------------------------------------------------------


def model_config_from_hf(hf_config: dict, config_path: Path | str = "config.json") -> dict:
    """DeepSeekV3Config fields from an HF DeepSeek-V3 config.json, the same mapping as NeMo 2.7.3's
    HFDeepSeekImporter.config (nemo/collections/llm/gpt/model/deepseek.py), so the recipe's model matches
    the imported checkpoint whatever its size (the real 671B or the toy)."""
    required = (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "q_lora_rank",
        "n_routed_experts",
        "moe_intermediate_size",
        "n_shared_experts",
        "first_k_dense_replace",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "routed_scaling_factor",
        "kv_lora_rank",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "v_head_dim",
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


def stage_layers(config: FinetuneConfig, num_layers: int) -> list[int] | None:
    """Transformer layers on each pipeline stage, first to last; None when the split does not add up."""
    p = config.parallelism
    first, last = p.layers_in_first_pipeline_stage, p.layers_in_last_pipeline_stage
    if p.pipeline > num_layers:
        return None
    middle_stages = p.pipeline - (first is not None) - (last is not None)
    middle_layers = num_layers - (first or 0) - (last or 0)
    if middle_layers < 0 or (middle_stages and middle_layers % middle_stages) or (not middle_stages and middle_layers):
        return None
    middle = [middle_layers // middle_stages] * middle_stages if middle_stages else []
    return ([first] if first is not None else []) + middle + ([last] if last is not None else [])


def model_fit_problems(config: FinetuneConfig, model_config: dict) -> list[tuple[str, str]]:
    """(field, what is wrong) where the layout cannot take the model: experts, heads and layers must divide."""
    p = config.parallelism
    problems = []
    experts = model_config["num_moe_experts"]
    if experts % p.expert:
        problems.append(("parallelism.expert", f"= {p.expert} must divide the model's {experts} routed experts"))
    heads = model_config["num_attention_heads"]
    if heads % p.tensor:
        problems.append(("parallelism.tensor", f"= {p.tensor} must divide the model's {heads} attention heads"))
    layers = model_config["num_layers"]
    first, last = p.layers_in_first_pipeline_stage, p.layers_in_last_pipeline_stage
    if p.pipeline > layers:
        problems.append(("parallelism.pipeline", f"= {p.pipeline} exceeds the model's {layers} layers"))
    elif stage_layers(config, layers) is None:
        if first is None and last is None:
            problems.append(
                (
                    "parallelism.pipeline",
                    f"= {p.pipeline} must divide the model's {layers} layers, "
                    "or set layers_in_first/last_pipeline_stage",
                )
            )
        else:
            middle_stages = p.pipeline - (first is not None) - (last is not None)
            middle_layers = layers - (first or 0) - (last or 0)
            problems.append(
                (
                    "parallelism.layers_in_first/last_pipeline_stage",
                    f"= {first}/{last} leave {middle_layers} of the model's {layers} layers "
                    f"for {middle_stages} middle stages; they must split evenly",
                )
            )
    return problems


def _check_model_fits(config: FinetuneConfig, model_config: dict, config_path: Path) -> None:
    problems = model_fit_problems(config, model_config)
    if problems:
        raise ConfigError(
            f"{config.source}: "
            + "; ".join(f"field '{field}' {message}" for field, message in problems)
            + f" ({config_path})"
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
        # recipe.model.config's recompute fields (Megatron's full, uniform recompute of every layer).
        "recompute": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
        if config.recompute == "full"
        else {},
        "optimizer": {"lr": config.learning_rate, "min_lr": config.min_learning_rate},
        "scheduler": {"warmup_steps": config.warmup_steps, "min_lr": config.min_learning_rate},
        "checkpoint": {"every_n_train_steps": config.checkpoint_every_n_steps},
        "peft": (
            {
                "dim": config.lora.rank,
                "alpha": config.lora.alpha,
                "dropout": config.lora.dropout,
                "target_modules": list(config.lora.target_modules),
            }
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
