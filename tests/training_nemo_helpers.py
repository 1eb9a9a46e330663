"""Inputs for the NeMo backend's tests, importable in both environments (ours: transformers 5; NeMo's: 4.57)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from sftc_assets.checkpoints.toy_model import toy_config
from sftc_assets.training.nemo_config import (
    FINETUNE_CONFIG_PATH,
    NEMO_DATA_FILES,
    NemoRunPaths,
)

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
    """config.json of the project's toy DeepSeek-V3 (toy_model.toy_config), as the installed transformers writes it."""
    return {**toy_config().to_dict(), **BF16, **overrides}


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
    from transformers import DeepseekV3ForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = toy_config()
    DeepseekV3ForCausalLM(config).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    words = {f"w{i}": i for i in range(config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w3"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # word i has id i: the special tokens are the words of the toy config's special ids, unknown words the next one
    special = {
        "bos_token": f"w{config.bos_token_id}",
        "eos_token": f"w{config.eos_token_id}",
        "pad_token": f"w{config.pad_token_id}",
    }
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w3", **special).save_pretrained(path)
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
