"""Inputs for the NeMo backend's tests, importable in both environments (ours: transformers 5; NeMo's: 4.57)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from sftc_assets.training.nemo_config import (
    FINETUNE_CONFIG_PATH,
    NEMO_DATA_FILES,
    NemoRunPaths,
)

# DeepSeek-V3's architecture at toy size: MLA, one dense layer then MoE layers, sigmoid routing.
TOY_ARCH = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=32,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    max_position_embeddings=512,
)
# Fields of the DeepSeek-V3 release's config.json that transformers' DeepseekV3Config does not write but NeMo's
# importer reads (HFDeepSeekImporter.config: `scoring_func == "sigmoid"` marks V3).
RELEASE_FIELDS = dict(scoring_func="sigmoid", topk_method="noaux_tc", aux_loss_alpha=0.001)
# A BF16 checkpoint's config.json says so (transformers writes it from the saved weights).
BF16 = {"torch_dtype": "bfloat16"}

# A one-GPU layout for the toy model (the shipped config is NeMo's 5-node layout for the 671B model).
ONE_GPU = {
    "nodes": 1,
    "gpus_per_node": 1,
    "parallelism": {
        "tensor": 1,
        "pipeline": 1,
        "context": 1,
        "expert": 1,
        "expert_tensor": None,
        "sequence_parallel": False,
        "layers_in_first_pipeline_stage": None,
        "layers_in_last_pipeline_stage": None,
    },
    "seq_length": 256,
    "micro_batch_size": 2,
    "global_batch_size": 4,
    "max_steps": 10,
    "warmup_steps": 2,
    "val_check_interval": 5,
    "checkpoint_every_n_steps": 5,
}


def toy_hf_config(**overrides) -> dict:
    """config.json of a toy DeepSeek-V3, written by the installed transformers' own DeepseekV3Config."""
    from transformers import DeepseekV3Config

    return {**DeepseekV3Config(**TOY_ARCH).to_dict(), **RELEASE_FIELDS, **BF16, **overrides}


def write_hf_checkpoint(path: Path, hf_config: dict | None = None, weights: bool = True) -> Path:
    """config.json and a real (tiny) safetensors file: what the dry run checks; not loadable weights."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config or toy_hf_config(), indent=2))
    if weights:
        save_file(
            {"model.embed_tokens.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}, str(path / "model.safetensors")
        )
    return path


def write_nemo_jsonl(path: Path, lines: int = 6) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in NEMO_DATA_FILES:
        rows = [
            {
                "input": f"### Input:\nTicker: T{i}\n\n### Response:\n",
                "output": f"<action>{'BUY' if i % 2 else 'SELL'}</action>",
            }
            for i in range(lines)
        ]
        (path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_nemo_checkpoint_dirs(path: Path) -> Path:
    """The layout of an imported NeMo 2 checkpoint (context/ and weights/), for dry runs of the fine-tune."""
    (path / "context").mkdir(parents=True, exist_ok=True)
    (path / "weights").mkdir(parents=True, exist_ok=True)
    return path


def write_finetune_yaml(path: Path, **overrides) -> Path:
    """The shipped configs/nemo/finetune.yaml with top-level fields replaced."""
    raw = yaml.safe_load(FINETUNE_CONFIG_PATH.read_text())
    raw.update(overrides)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_toy_model(path: Path, seed: int = 0) -> Path:
    """A real toy DeepSeek-V3 in BF16 (the installed transformers' own class) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    config = DeepseekV3Config(**TOY_ARCH, **RELEASE_FIELDS, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    DeepseekV3ForCausalLM(config).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    words = {f"w{i}": i for i in range(TOY_ARCH["vocab_size"])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w3"
    ).save_pretrained(path)
    return path


def nemo_run_paths(root: Path) -> NemoRunPaths:
    """A BF16 checkpoint, an imported NeMo checkpoint and NeMo JSONL under `root`, as the entry's inputs."""
    return NemoRunPaths(
        hf_checkpoint=write_hf_checkpoint(root / "bf16"),
        nemo_checkpoint=write_nemo_checkpoint_dirs(root / "nemo"),
        dataset_root=write_nemo_jsonl(root / "nemo_jsonl"),
        output_dir=root / "sft",
        work_dir=root / "sft_nemo",
    )
