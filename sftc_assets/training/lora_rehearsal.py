"""The GPU recipe's LoRA rehearsed on the toy's own base (the profile's `lora_rehearsal`, sft_model's check).

Where the toy's fine-tune is a full one (its planted cue needs the output layer trained: docs/toy-recipe.md), a short
run of the recipe's LoRA (configs/nemo/finetune.yaml's rank, alpha, dropout and targets in transformers' names) on the
same BF16 base and NeMo JSONL proves what the GPU run's LoRA needs of the model class and the data: every target is a
Linear module of the model (checked before step 1), the validation loss falls, and the adapter, written in the PEFT
layout, loads onto the base with peft and merges to exactly the merged checkpoint saved beside it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sftc_assets.checkpoints.mtp import mtp_prefixes
from sftc_assets.checkpoints.safetensors_io import load_weight_map
from sftc_assets.training.hf_backend import run_training, training_progress
from sftc_core.configs import EvaluationConfig, LoraRehearsalConfig, SftConfig, TrainingConfig
from sftc_core.paths import ADAPTER_DIR
from sftc_core.threads import torch_threads

# sft_model's asset check that runs the rehearsal (the validation report reads it by this name).
CHECK_NAME = "lora_recipe_rehearsed"


def rehearsal_training(training: TrainingConfig, rehearsal: LoraRehearsalConfig) -> TrainingConfig:
    """The profile's training with the recipe's LoRA (training.lora) and the rehearsal's steps: one validation at
    the end, one checkpoint."""
    return training.model_copy(
        update={
            "peft": "lora",
            "max_steps": rehearsal.max_steps,
            "learning_rate": rehearsal.learning_rate,
            "warmup_steps": rehearsal.warmup_steps,
            "eval_every": rehearsal.max_steps,
            "save_every": rehearsal.max_steps,
            "keep_checkpoints": 1,
            "parse_check_samples": rehearsal.parse_check_samples,
        }
    )


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for shard in set(load_weight_map(checkpoint).values())
        for name, tensor in load_file(checkpoint / shard).items()
    }


def adapter_round_trip(base_dir: Path, run_dir: Path, scratch: Path) -> dict:
    """peft loads `run_dir`'s adapter onto the base at `base_dir` and merges it; the merged weights against
    `run_dir`'s merged checkpoint (the MTP layer, which transformers does not build, is carried there and left out)."""
    from peft import PeftModel  # only LoRA runs need it

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # saved, to compare the on-disk names (transformers fuses the experts in memory)
    PeftModel.from_pretrained(base, run_dir / ADAPTER_DIR).merge_and_unload().save_pretrained(scratch)
    by_peft, merged = _tensors(scratch), _tensors(run_dir)
    mtp = tuple(mtp_prefixes(json.loads((base_dir / "config.json").read_text(encoding="utf-8"))))
    served = {name for name in merged if not name.startswith(mtp)}
    shared = sorted(served & set(by_peft))
    differences = [(by_peft[name].float() - merged[name].float()).abs().max().item() for name in shared]
    adapter = load_file(run_dir / ADAPTER_DIR / "adapter_model.safetensors")
    return {
        "adapters": sum(".lora_A." in name for name in adapter),
        "adapter_files": {p.name: p.stat().st_size for p in sorted((run_dir / ADAPTER_DIR).iterdir())},
        "merged_tensors_compared": len(shared),
        "tensors_only_in_one": sorted(served ^ set(by_peft)),
        "merge_max_abs_diff": max(differences, default=0.0),
    }


def rehearse_lora(
    model_dir: Path,
    data_dir: Path,
    training: TrainingConfig,
    rehearsal: LoraRehearsalConfig,
    sft: SftConfig,
    evaluation: EvaluationConfig,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The recipe's LoRA for `rehearsal.max_steps` steps on `model_dir` and the NeMo JSONL in `data_dir`, in a
    temporary directory (nothing kept but the figures): its losses, parse rate and adapter round trip; its steps as
    progress on `log` (the check's run log, the command's logger)."""
    started = time.perf_counter()
    lora_training = rehearsal_training(training, rehearsal)
    with (
        tempfile.TemporaryDirectory(prefix="sftc-lora-rehearsal-") as scratch,
        training_progress(log, task="LoRA rehearsal") as progress,
    ):
        run = run_training(
            model_dir, data_dir, Path(scratch) / "lora", lora_training, sft, evaluation, on_step=progress
        )
        with torch_threads(training.cpu_threads):
            round_trip = adapter_round_trip(Path(model_dir), run.output_dir, Path(scratch) / "merged_by_peft")
    metrics = run.metrics
    return {
        "lora_rank": metrics["lora_rank"],
        "lora_alpha": metrics["lora_alpha"],
        "lora_dropout": training.lora.dropout,
        "lora_targets": metrics["lora_targets"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "steps": metrics["steps"],
        "learning_rate": lora_training.learning_rate,
        "initial_val_loss": metrics["initial_val_loss"],
        "final_val_loss": metrics["final_val_loss"],
        "val_loss_drop": metrics["initial_val_loss"] - metrics["final_val_loss"],
        "parse_rate": metrics["parse_rate"],
        "parse_checked": metrics["parse_checked"],
        "max_new_tokens": evaluation.max_new_tokens,
        "longest_checked_answer_tokens": metrics["longest_checked_answer_tokens"],
        **round_trip,
        "seconds": round(time.perf_counter() - started, 1),
    }


def rehearsal_problems(figures: dict, rehearsal: LoraRehearsalConfig, where: str) -> list[str]:
    """What the rehearsal's figures say would go wrong with the GPU run's LoRA, each with its fix (none: it holds).
    `where`: the profile file that holds `lora_rehearsal`."""
    problems = []
    drop = figures["val_loss_drop"]
    if not drop >= rehearsal.min_val_loss_drop:  # a NaN loss did not fall either
        problems.append(
            f"the recipe's LoRA (rank {figures['lora_rank']}, alpha {figures['lora_alpha']}, on "
            f"{', '.join(figures['lora_targets'])}) moved the validation loss {figures['initial_val_loss']:.4f} -> "
            f"{figures['final_val_loss']:.4f} in {figures['steps']} steps, a fall under lora_rehearsal."
            f"min_val_loss_drop {rehearsal.min_val_loss_drop:g}: the adapters learn too little; check the rank, alpha "
            f"and targets of configs/nemo/finetune.yaml, or lora_rehearsal.learning_rate {figures['learning_rate']:g} "
            f"in {where}"
        )
    parse_rate = figures["parse_rate"]
    if parse_rate is not None and parse_rate < rehearsal.min_parse_rate:
        parsed = (
            f"{figures['parse_checked'] * parse_rate:.0f} of the {figures['parse_checked']} validation answers of the "
            f"rehearsed LoRA parse (parse rate {parse_rate:.0%}, under lora_rehearsal.min_parse_rate "
            f"{rehearsal.min_parse_rate:.0%})"
        )
        budget, needed = figures["max_new_tokens"], figures["longest_checked_answer_tokens"]
        problems.append(
            f"{parsed}: the answers need up to {needed} tokens, but evaluation.max_new_tokens {budget} in {where} cuts "
            "them (eval_csv's parse-rate check names it too); raise it"
            if budget < needed
            else f"{parsed}: the adapters do not learn the answer's layout; check the rank, alpha and targets of "
            "configs/nemo/finetune.yaml and the target format of configs/sft_config.yaml"
        )
    if figures["tensors_only_in_one"] or not figures["merge_max_abs_diff"] == 0.0:
        only = figures["tensors_only_in_one"]
        problems.append(
            "the adapter loaded onto the base by peft does not merge to the merged checkpoint saved with it "
            f"(largest difference {figures['merge_max_abs_diff']:g}"
            + (f"; tensors in one only: {', '.join(only[:5])}" if only else "")
            + "): a served merge would not be the trained model; see sftc_assets/training/hf_backend.py's save"
        )
    return problems


def rehearsal_summary(figures: dict) -> str:
    """`LoRA r32/a32 on 5 targets (20 adapters): validation loss 4.10 -> 2.33 in 100 steps, ...` for people."""
    parse = (
        f", parse rate {figures['parse_rate']:.0%} of {figures['parse_checked']}"
        if figures["parse_rate"] is not None
        else ""
    )
    return (
        f"the recipe's LoRA, rank {figures['lora_rank']} / alpha {figures['lora_alpha']} on "
        f"{len(figures['lora_targets'])} targets ({figures['adapters']} adapters, {figures['trainable_params']:,} "
        f"trainable weights): validation loss {figures['initial_val_loss']:.2f} -> {figures['final_val_loss']:.2f} "
        f"in {figures['steps']} steps{parse}; the PEFT adapter loads onto the base and merges to the merged "
        f"checkpoint exactly ({figures['merged_tensors_compared']} tensors)"
    )
