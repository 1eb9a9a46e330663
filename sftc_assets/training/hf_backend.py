"""The Hugging Face training backend: one readable loop (nanoGPT style), CPU or GPU, one process or many.

Loads the BF16 checkpoint (the tags are text to its tokenizer: nothing added, sftc_core/target_format.py), trains on
the NeMo JSONL pairs with answer-only loss (AdamW, warmup + cosine, clipping, accumulation; LoRA on the recipe's
targets, or a full fine-tune), and writes the fine-tuned HF checkpoint (merged) with, under LoRA, the adapter in the
PEFT layout beside it (`adapter/`), training.csv, val.csv, metrics.json and loss_curve.png. A run works in a hidden
directory beside OUTPUT (`.OUTPUT.partial`) and replaces OUTPUT only when complete, so the last good model and
its checkpoints stay until then. Checkpoints under checkpoints/step-N hold everything a killed run needs to
continue with the same losses (`resume=True`: the interrupted run's, else the finished OUTPUT's; "auto": the
interrupted run's when it is of the same settings and inputs, as a retried job wants).

Under torchrun (WORLD_SIZE > 1) the loop is data-parallel (DDP over gloo on CPU, NCCL on GPU): every rank draws the
same global batches in the same order and trains on its share of each, the loss is normalised by the global target
count, so the run follows the 1-process trajectory; rank 0 alone writes checkpoints, logs, metrics and the model.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftc_assets.checkpoints.mtp import carry_mtp_layers
from sftc_assets.checkpoints.safetensors_io import file_sha256
from sftc_assets.sft_data.nemo_export import tag_tokens
from sftc_assets.training.data import (
    IGNORE_INDEX,
    BatchStream,
    Example,
    collate,
    load_pairs,
    sequential_batches,
    tokenize_split,
)
from sftc_assets.training.generate import generate_greedy
from sftc_core.configs import EvaluationConfig, LoraConfig, SftConfig, TrainingConfig
from sftc_core.gpu import check_device
from sftc_core.io import (
    BeforeSwap,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    normalise_modes,
    replace_dir,
)
from sftc_core.launch import launch_record
from sftc_core.nemo_format import split_file
from sftc_core.paths import ADAPTER_DIR
from sftc_core.progress import reporting
from sftc_core.target_format import TargetFormat
from sftc_core.threads import torch_threads

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINING_CSV_COLUMNS = ("step", "loss", "lr", "tokens_per_s")
# --smoke-test: the first run on a new node proves the path end to end, not learning.
SMOKE_STEPS, SMOKE_TRAIN_SAMPLES, SMOKE_VAL_SAMPLES, SMOKE_NEW_TOKENS = 10, 16, 8, 16
GENERATIONS_PREVIEW = 5
Resume = bool | Literal["auto"]


@dataclass(frozen=True)
class RunPlan:
    """Everything that fixes a run's trajectory; a resumed run must match the checkpoint's plan."""

    training: TrainingConfig
    max_steps: int
    max_seq_length: int
    smoke_test: bool
    # Fingerprints of the model and data the run reads: a checkpoint of other inputs is not resumed.
    inputs: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "training": self.training.model_dump(),
            "max_steps": self.max_steps,
            "max_seq_length": self.max_seq_length,
            "smoke_test": self.smoke_test,
            "inputs": dict(self.inputs),
        }


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    train_rows: list[dict] = field(default_factory=list)
    val_rows: list[dict] = field(default_factory=list)


# --- data parallelism ----------------------------------------------------------------------------


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_sum(*values: float) -> list[float]:
    """The values summed over the ranks (themselves in one process)."""
    if not dist.is_initialized():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- pieces with their own tests ---------------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based): linear warmup, cosine decay."""
    warmup_steps = min(warmup_steps, max_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class TrainingDivergedError(ValueError):
    """The loss turned non-finite: the message names the learning-rate settings that drove it there."""


def loss_rise(losses: list[float], window: int = 5, tolerance: float = 0.05) -> dict | None:
    """Where the training loss climbed above where it started (its moving average over `window` steps more than
    `tolerance` above the first window's), the step and both averages: the signature of a learning rate too high
    for the model. None when it never did."""
    if len(losses) < 2 * window:
        return None
    start = sum(losses[:window]) / window
    for end in range(2 * window, len(losses) + 1):
        average = sum(losses[end - window : end]) / window
        if not math.isfinite(average) or average > start * (1 + tolerance):
            return {"step": end, "average": average, "start": start, "window": window}
    return None


def target_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over target positions (labels -100 elsewhere)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def checkpoint_parameter_count(model_dir: Path) -> int:
    """Parameters of a safetensors checkpoint, read from the file headers without loading any tensor."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total


# --- model, data and optimizer -----------------------------------------------------------------


def _uses_lora(training: TrainingConfig, parameter_count: int) -> bool:
    if training.peft == "auto":
        return parameter_count > training.full_finetune_max_params
    return training.peft == "lora"


def load_model_and_tokenizer(model_dir: Path, plan: RunPlan, device: torch.device, tags: list[str]):
    """The checkpoint on `device`, its tokenizer reading the tags as text, wrapped in LoRA when the plan asks for it."""
    model_dir = Path(model_dir)
    for required in ("config.json", "tokenizer_config.json"):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(
                f"{model_dir}: not an HF checkpoint with its tokenizer ({required} missing); "
                "materialize bf16_checkpoint or pass --model DIR"
            )
    parameter_count = checkpoint_parameter_count(model_dir)
    lora = _uses_lora(plan.training, parameter_count)
    # Full fine-tunes keep fp32 master weights (bf16 autocast on GPU); LoRA freezes the base, bf16 on GPU.
    dtype = torch.bfloat16 if lora and device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no EOS token; the target needs one to end on")
    tag_tokens(tokenizer, tags)  # the tags must be text to this tokenizer (ValueError naming them otherwise)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; generation batches need a pad id
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora:
        model = _wrap_lora(model, plan.training, model_dir)
    return model, tokenizer, lora


def _wrap_lora(model, training: TrainingConfig, model_dir: Path):
    """`model` with LoRA adapters on the targets of `training.lora` (the recipe's, in transformers' names); a target
    that names no Linear module of the model fails here, before step 1 (peft would skip it silently)."""
    import peft  # only LoRA runs need it

    if training.lora is None:
        raise ValueError(
            "training.lora is not set: the LoRA settings come from configs/nemo/finetune.yaml through load_settings "
            "(configs.recipe_lora)"
        )
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [target for target in training.lora.target_modules if target not in linear]
    if missing:
        raise ValueError(
            f"LoRA target(s) {', '.join(missing)} name no Linear module of the model in {model_dir} "
            f"(it has {', '.join(sorted(linear))}); fix lora.target_modules in configs/nemo/finetune.yaml or the name "
            "table in sftc_core/lora_targets.py"
        )
    config = peft.LoraConfig(
        r=training.lora.rank,
        lora_alpha=training.lora.alpha,
        lora_dropout=training.lora.dropout,
        target_modules=list(training.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


def _lora_figures(lora: LoraConfig) -> dict:
    targets = list(lora.target_modules)
    return {"lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_targets": targets, "adapter": ADAPTER_DIR}


def _optimizer(model, training: TrainingConfig, plan_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": training.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=training.learning_rate, betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, training.warmup_steps, plan_steps, training.min_lr_ratio)
    )
    return optimizer, scheduler


def _logits(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Forward pass without a KV cache (training reads each sequence once); bf16 autocast on GPU, fp32 on CPU."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


@torch.no_grad()
def validation_loss(model, examples: list[Example], batch_size: int, pad_token_id: int, device: torch.device) -> float:
    """Mean cross-entropy per target token over the whole validation set (each rank takes its share of the batches)."""
    rank, world = rank_and_world()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch_examples in sequential_batches(examples, batch_size)[rank::world]:
        batch = {k: v.to(device) for k, v in collate(batch_examples, pad_token_id).items()}
        total += target_loss_sum(_logits(model, batch, device), batch["labels"]).item()
        count += int((batch["labels"][:, 1:] != -100).sum())
    model.train(was_training)
    total, count = all_sum(total, count)
    return total / count


def train_step(
    model, optimizer, scheduler, micro_batches: list[dict], trainable: list, max_grad_norm: float, device
) -> float:
    """One optimizer step over the micro-batches (gradient accumulation); returns the mean loss per target token.

    Data-parallel, `model` is the DDP wrapper and `micro_batches` this rank's shares: the target count is the global
    one and DDP averages gradients over the ranks, so each rank's loss is scaled by the world size."""
    _, world = rank_and_world()
    (target_count,) = all_sum(sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in micro_batches))
    step_loss = 0.0
    for i, batch in enumerate(micro_batches):
        # gradients are exchanged once per step, on the last micro-batch
        sync = nullcontext() if i == len(micro_batches) - 1 or world == 1 else model.no_sync()
        with sync:
            # normalise by the step's target count so accumulation (and data parallelism) equals one large batch
            loss = target_loss_sum(_logits(model, batch, device), batch["labels"]) * world / target_count
            loss.backward()
        step_loss += loss.item() / world
    (step_loss,) = all_sum(step_loss)
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


# --- checkpoints ---------------------------------------------------------------------------------


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, stream: BatchStream, state: dict) -> Path:
    """OUTPUT/checkpoints/step-N, written whole or not at all."""
    target = Path(output_dir) / CHECKPOINTS_DIR / f"step-{step}"
    with atomic_dir(target) as tmp:
        save_file(_trainable_state(model), tmp / "trainable.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng}, tmp / "optimizer.pt"
        )
        atomic_write_json(tmp / "trainer_state.json", {**state, "step": step, "data_position": stream.position})
    return target


def latest_checkpoint(output_dir: Path) -> Path | None:
    root = Path(output_dir) / CHECKPOINTS_DIR
    steps = [(int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit()]
    return max(steps)[1] if steps else None


def _prune_checkpoints(output_dir: Path, keep: int) -> None:
    root = Path(output_dir) / CHECKPOINTS_DIR
    steps = sorted((int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit())
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"training": {"lora": {"rank": 8}}} -> {"training.lora.rank": 8}, so a refusal names the changed fields."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _restore(checkpoint: Path, model, optimizer, scheduler, plan: RunPlan) -> dict:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    saved, wanted = _flatten(state["plan"]), _flatten(plan.as_dict())
    if saved != wanted:
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        raise ValueError(
            f"{checkpoint}: cannot resume, the run's settings changed since this checkpoint ({', '.join(changed)}); "
            "resume with the same settings, or run without --resume to start over"
        )
    trainable = load_file(checkpoint / "trainable.safetensors")
    missing = set(_trainable_state(model)) - set(trainable)
    if missing:
        raise ValueError(
            f"{checkpoint}: trainable.safetensors lacks {len(missing)} tensors (e.g. {sorted(missing)[0]})"
        )
    model.load_state_dict(trainable, strict=False)
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return state


# --- outputs -------------------------------------------------------------------------------------


def _csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_logs(output_dir: Path, train_rows: list[dict], val_rows: list[dict]) -> None:
    atomic_write_text(output_dir / "training.csv", _csv_text(train_rows, TRAINING_CSV_COLUMNS))
    atomic_write_text(output_dir / "val.csv", _csv_text(val_rows, ("step", "val_loss")))


def plot_loss_curve(path: Path, train_rows: list[dict], val_rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in train_rows], [float(r["loss"]) for r in train_rows], lw=1, alpha=0.7, label="training")
    ax.plot([r["step"] for r in val_rows], [float(r["val_loss"]) for r in val_rows], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def work_dir(output_dir: Path) -> Path:
    """Where a run trains before its output is complete: a hidden sibling of OUTPUT (same filesystem: one rename)."""
    return output_dir.parent / f".{output_dir.name}.partial"


def _plan_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["plan"]


def _prepare_work_dir(output_dir: Path, resume: Resume, plan: RunPlan) -> tuple[Path, Path | None]:
    """The run's work directory and the checkpoint to resume from: the interrupted run's latest (for "auto" only
    when it is of this plan), else with `resume=True` the finished OUTPUT's (copied in); a fresh run starts from
    an empty work directory. OUTPUT is not touched. Every rank decides alike from what is on disk; rank 0 alone
    changes it, the others wait for it."""
    rank, _ = rank_and_world()
    work = work_dir(output_dir)
    checkpoint = latest_checkpoint(work) if resume else None
    if resume == "auto" and checkpoint is not None and _plan_of(checkpoint) != plan.as_dict():
        log.info("%s: the latest checkpoint is of other settings or inputs; starting at step 0", checkpoint)
        checkpoint = None
    finished = latest_checkpoint(output_dir) if resume is True and checkpoint is None else None
    if resume and checkpoint is None and finished is None:
        log.info("%s: no checkpoint to resume from; starting at step 0", output_dir)
    _barrier()  # every rank has looked before rank 0 changes anything
    if rank == 0:
        if finished is not None:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(finished, work / CHECKPOINTS_DIR / finished.name)
        elif checkpoint is None:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    _barrier()
    return work, (work / CHECKPOINTS_DIR / finished.name if finished is not None else checkpoint)


def _publish(work: Path, output_dir: Path, stamp: BeforeSwap | None) -> None:
    """The finished work directory becomes OUTPUT in one rename (with its marker)."""
    normalise_modes(work)
    if stamp is not None:
        stamp(work, output_dir)
    replace_dir(work, output_dir)


def input_fingerprints(model_dir: Path, data_dir: Path) -> dict[str, str]:
    """sha256 of the training and validation files and the model's config; name and size of its weights
    (hashing hundreds of GB for a resume check would cost more than it protects)."""
    prints = {
        f"data/{path.name}": file_sha256(path)
        for path in (split_file(data_dir, "train"), split_file(data_dir, "validation"))
    }
    prints["model/config.json"] = file_sha256(Path(model_dir) / "config.json")
    prints["model/weights"] = ",".join(
        f"{p.name}:{p.stat().st_size}" for p in sorted(Path(model_dir).glob("*.safetensors"))
    )
    return prints


# --- the run -------------------------------------------------------------------------------------


@contextmanager
def training_progress(log: Callable[[str], None] | None, task: str = "training") -> Iterator[Callable[[dict], None]]:
    """An `on_step` for run_training: the steps as progress (step, loss, learning rate, tokens/s, ETA) on a
    command's terminal and now and then to `log`, named `task`."""
    # A launched job's rows reach the launching side in batches: the time a step ended, not its arrival, makes the rate.
    step_ended = [time.time()]
    with reporting(task, "step", log=log, clock=lambda: step_ended[0]) as report:

        def on_step(row: dict) -> None:
            step_ended[0] = row.get("time", time.time())
            figures = {
                "loss": row["loss"],
                "lr": row["lr"],
                "tokens/s": row["tokens_per_s"],
                **({"val loss": row["val_loss"]} if "val_loss" in row else {}),
            }
            # the first step reported tells where a resumed run began
            report(row["step"], row["max_steps"], initial=row["step"] - 1, **figures)

        yield on_step


def _resolve_device(device: str | None) -> torch.device:
    if device is not None:
        check_device(device)
    # torchrun gives each process of a node its GPU by LOCAL_RANK
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this node; use --device cpu")
    return torch.device(f"cuda:{local_rank}" if device == "cuda" else device)


@contextmanager
def process_group(device: torch.device):
    """The torch.distributed group of a torchrun launch (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs; else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_training(
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    training: TrainingConfig,
    sft: SftConfig,
    evaluation: EvaluationConfig,
    **options,
) -> TrainResult:
    """Fine-tune `model_dir` on the NeMo JSONL pairs in `data_dir`; results under `output_dir` (see module doc).

    Options (keywords of `_run_training`): max_steps, smoke_test, resume (True: continue from the latest checkpoint,
    refusing other settings; "auto": continue when it is of the same settings and inputs, else start over), device
    (None or "auto": CUDA when present, "cpu", "cuda[:N]") and on_step, called on rank 0 with each training.csv row
    (plus `max_steps`, and `val_loss` on validation steps: `training_progress` turns them into progress). Under
    torchrun every rank calls it; the metrics come back on rank 0.
    """
    with torch_threads(training.cpu_threads), process_group(_resolve_device(options.get("device"))):
        return _run_training(model_dir, data_dir, output_dir, training, sft, evaluation, **options)


def _run_training(
    model_dir: Path,
    data_dir: Path,
    output_dir: Path,
    training: TrainingConfig,
    sft: SftConfig,
    evaluation: EvaluationConfig,
    *,
    max_steps: int | None = None,
    smoke_test: bool = False,
    resume: Resume = False,
    device: str | None = None,
    on_step: Callable[[dict], None] | None = None,
    stamp: BeforeSwap | None = None,
) -> TrainResult:
    model_dir, data_dir, output_dir = Path(model_dir), Path(data_dir), Path(output_dir)
    rank, world = rank_and_world()
    steps = SMOKE_STEPS if smoke_test else (max_steps or training.max_steps)
    torch_device = _resolve_device(device)
    # inputs are read and checked before anything under OUTPUT changes
    train_pairs = load_pairs(split_file(data_dir, "train"))
    val_pairs = load_pairs(split_file(data_dir, "validation"))
    if smoke_test:
        train_pairs, val_pairs = train_pairs[:SMOKE_TRAIN_SAMPLES], val_pairs[:SMOKE_VAL_SAMPLES]
    plan = RunPlan(training, steps, sft.max_seq_length, smoke_test)

    torch.manual_seed(training.seed)
    model, tokenizer, lora = load_model_and_tokenizer(model_dir, plan, torch_device, list(sft.special_tokens))
    plan = replace(plan, inputs=input_fingerprints(model_dir, data_dir))  # the model dir is known to be one now
    train_set = tokenize_split(tokenizer, train_pairs, sft.max_seq_length)
    val_set = tokenize_split(tokenizer, val_pairs, sft.max_seq_length)
    if train_set.answers_cut:
        raise ValueError(
            f"{train_set.answers_cut} of {len(train_pairs)} training answers are longer than max_seq_length "
            f"{sft.max_seq_length} (configs/sft_config.yaml) on their own: cut there, they would lose their action; "
            f"raise max_seq_length to at least {train_set.longest_answer + 1} before training"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(model, training, steps)
    stream = BatchStream([len(e.input_ids) for e in train_set.examples], training.batch_size, training.seed)

    # DDP finds the experts no token was routed to in a step: their gradients stay unset, as in one process
    ddp_model = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    work, checkpoint = _prepare_work_dir(output_dir, resume, plan)
    state = {"plan": plan.as_dict(), "train_rows": [], "val_rows": [], "train_seconds": 0.0, "train_tokens": 0}
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, plan)
        stream = BatchStream.at(stream.lengths, training.batch_size, training.seed, state["data_position"])
        log.info("resuming from %s", checkpoint)
    start_step = state.get("step", 0)
    resumed_from = start_step if checkpoint is not None else None
    pad_id = tokenizer.pad_token_id

    def validate(step: int) -> float:
        loss = validation_loss(model, val_set.examples, training.batch_size, pad_id, torch_device)
        state["val_rows"].append({"step": step, "val_loss": loss})
        if rank == 0:
            log.info("step %d: validation loss %.4f", step, loss)
        return loss

    if start_step == 0:
        validate(0)
    model.train()
    for step in range(start_step + 1, steps + 1):
        started = time.perf_counter()  # tokens/s counts batch assembly too, not only the model
        # every rank draws the same global batches and takes its share of each
        indices = [stream.next() for _ in range(training.gradient_accumulation_steps)]
        micro_batches = [
            {k: v.to(torch_device) for k, v in _share_batch(train_set.examples, batch, rank, world, pad_id).items()}
            for batch in indices
        ]
        (tokens,) = all_sum(sum(len(train_set.examples[i].input_ids) for batch in indices for i in batch[rank::world]))
        tokens = int(tokens)
        lr = scheduler.get_last_lr()[0]
        loss = train_step(
            ddp_model, optimizer, scheduler, micro_batches, trainable, training.max_grad_norm, torch_device
        )
        if not math.isfinite(loss):
            # The first step's loss comes before any update: the weights or the data are broken, not the step size.
            cause = (
                f"before any update, so the weights or the data are: check {model_dir} "
                "(bf16_checkpoint's finite-tensor check)"
                if step == start_step + 1
                else f"training.learning_rate {training.learning_rate} of the profile "
                f"(warmup_steps {training.warmup_steps}, max_grad_norm {training.max_grad_norm}) is too high for this "
                "model; lower it"
            )
            raise TrainingDivergedError(f"step {step}: the training loss is {loss}, {cause}")
        seconds = time.perf_counter() - started
        state["train_seconds"] += seconds
        state["train_tokens"] += tokens
        row = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": round(tokens / seconds, 1)}
        state["train_rows"].append(row)
        report = {**row, "max_steps": steps, "time": time.time()}
        if step % training.eval_every == 0 or step == steps:
            report["val_loss"] = validate(step)
        if rank == 0 and (step % training.save_every == 0 or step == steps):
            save_checkpoint(work, step, model, optimizer, scheduler, stream, state)
            _prune_checkpoints(work, training.keep_checkpoints)
            _write_logs(work, state["train_rows"], state["val_rows"])
        if on_step is not None and rank == 0:
            on_step(report)

    model.eval()
    if rank != 0:
        _barrier()  # rank 0 checks generation and publishes
        return TrainResult(output_dir, {}, state["train_rows"], state["val_rows"])
    parse = _parse_check(model, tokenizer, val_pairs, training, evaluation, sft.target_format, smoke_test)
    if lora:
        model.save_pretrained(work / ADAPTER_DIR)  # the PEFT layout, before the merge folds the adapters into the base
        model = model.merge_and_unload()
    model.save_pretrained(work)
    carry_mtp_layers(model_dir, work)  # transformers drops the MTP layer: the base's goes back, as the release lays it
    tokenizer.save_pretrained(work)
    _write_logs(work, state["train_rows"], state["val_rows"])
    plot_loss_curve(work / "loss_curve.png", state["train_rows"], state["val_rows"])
    atomic_write_jsonl(work / "val_generations.jsonl", parse.pop("preview"))
    val_losses = [r["val_loss"] for r in state["val_rows"]]
    metrics = {
        "backend": "hf",
        "device": str(torch_device),
        "steps": steps,
        "resumed_from_step": resumed_from,
        "smoke_test": smoke_test,
        "peft": "lora" if lora else "none",
        **(_lora_figures(training.lora) if lora else {}),
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "train_examples": len(train_set.examples),
        "val_examples": len(val_set.examples),
        "truncated_train_examples": train_set.truncated,
        "truncated_val_examples": val_set.truncated,
        "initial_val_loss": val_losses[0],
        "final_val_loss": val_losses[-1],
        "best_val_loss": min(val_losses),
        "best_val_step": state["val_rows"][val_losses.index(min(val_losses))]["step"],
        "final_train_loss": state["train_rows"][-1]["loss"] if state["train_rows"] else None,
        "train_tokens": state["train_tokens"],
        "train_seconds": round(state["train_seconds"], 3),
        "tokens_per_s": round(state["train_tokens"] / state["train_seconds"], 1) if state["train_seconds"] else None,
        **parse,
        **launch_record(),
    }
    atomic_write_json(work / "metrics.json", metrics)
    _publish(work, output_dir, stamp)
    _barrier()
    log.info(
        "trained %d steps: val loss %.4f -> %.4f, parse rate %s",
        steps,
        metrics["initial_val_loss"],
        metrics["final_val_loss"],
        metrics["parse_rate"],
    )
    return TrainResult(output_dir, metrics, state["train_rows"], state["val_rows"])


def _share_batch(
    examples: list[Example], batch: list[int], rank: int, world: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """This rank's share of a global batch, collated; a rank whose share is empty (a batch smaller than the world)
    runs one example with every label masked: DDP needs each rank's backward, and it adds no target and no gradient."""
    share = batch[rank::world]
    if share:
        return collate([examples[i] for i in share], pad_id)
    empty = collate([examples[batch[0]]], pad_id)
    empty["labels"].fill_(IGNORE_INDEX)
    return empty


def _parse_check(
    model,
    tokenizer,
    pairs: list[dict],
    training: TrainingConfig,
    evaluation: EvaluationConfig,
    target: TargetFormat,
    smoke_test: bool,
) -> dict:
    """Greedy generation on the first validation prompts: the share that yields a parseable action."""
    pairs = pairs[: training.parse_check_samples]
    prompts = [pair["input"] for pair in pairs]
    if not prompts:
        return {
            "parse_rate": None,
            "parse_checked": 0,
            "parse_ok": 0,
            "longest_checked_answer_tokens": 0,
            "preview": [],
        }
    max_new_tokens = min(SMOKE_NEW_TOKENS, evaluation.max_new_tokens) if smoke_test else evaluation.max_new_tokens
    texts = generate_greedy(model, tokenizer, prompts, max_new_tokens, evaluation.batch_size)
    actions = [target.parse_action(text) for text in texts]
    ok = sum(action is not None for action in actions)
    preview = [
        {"line": line, "expected": target.parse_action(pair["output"]), "predicted": action, "output": text}
        for line, (pair, text, action) in enumerate(zip(pairs, texts, actions), start=1)  # line of validation.jsonl
    ][:GENERATIONS_PREVIEW]
    # + 1: the EOS that ends an answer; a generation budget below it cuts answers, whatever the model learnt
    longest = max(len(tokenizer(pair["output"], add_special_tokens=False)["input_ids"]) + 1 for pair in pairs)
    return {
        "parse_rate": ok / len(prompts),
        "parse_checked": len(prompts),
        "parse_ok": ok,
        "longest_checked_answer_tokens": longest,
        "preview": preview,
    }
