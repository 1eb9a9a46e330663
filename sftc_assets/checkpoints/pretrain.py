"""The toy base's pretraining: a causal LM on the prompt text of the training window, before the base is quantized.

The GPU run fine-tunes a pretrained DeepSeek-V3 with LoRA; a LoRA on random weights has nothing to steer. So the toy
base learns the corpus's language first, from the prompt side of the train split's records, each dated inside the
training window: the rendered prompt (instruction, the thesis's facts, the response cue) and the same facts as the
corpus writes them in its XML (ticker, date, support points, horizon: docs/thesis-xml.md), so the base knows markup
as any pretrained model does. Never the answers (reasoning, the target's layout, action), nor anything of the
validation or test windows: the answer format and the action stay the fine-tune's to teach.

Documents are `BOS prompt`, packed end to end and cut into sequences of `sequence_length` tokens; every step
draws `batch_size` of them (a seeded shuffle, epoch after epoch) under AdamW with linear warmup and cosine decay.
No loss falls on a BOS: what follows a prompt's response cue is the answer, which the base must not learn to end
there (an EOS or BOS learnt after the cue stopped the fine-tuned model's answers before they began).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Callable, Collection
from pathlib import Path
from xml.sax.saxutils import escape

import torch

from sftc_assets.sft_data.prompts import render_prompt
from sftc_assets.sft_data.splits import load_splits
from sftc_core.configs import PROMPT_SLOTS, PretrainingConfig, SftConfig
from sftc_core.progress import Tracker
from sftc_core.threads import torch_threads

IGNORE_INDEX = -100  # transformers' label for "no loss here"
# The corpus's XML order of the fields a prompt may carry (docs/thesis-xml.md; sftc_core/configs/sft.py PROMPT_SLOTS).
XML_FIELDS = ("ticker", "as_of_date", "support", "horizon_days")
# The loss reported as final: the mean of the last steps (one batch's loss is noisy).
FINAL_LOSS_STEPS = 20


def prompt_side_xml(record: dict, fields: Collection[str]) -> str:
    """A record's `fields` (those its prompt carries) as the corpus's XML writes them: never the reasoning, the action
    or a field the prompt leaves out on purpose (prompt.omit_fields)."""
    elements = []
    for field in (field for field in XML_FIELDS if field in fields):
        if field == "support":
            elements.append(
                "<support>" + "".join(f"<point>{escape(point)}</point>" for point in record[field]) + "</support>"
            )
        else:
            elements.append(f"<{field}>{escape(str(record[field]))}</{field}>")
    return "<thesis>" + "".join(elements) + "</thesis>"


def pretraining_texts(dataset_dir: Path | str, sft: SftConfig, train_start: dt.date, train_end: dt.date) -> list[str]:
    """Per record of the train split of `dataset_dir` (hf_splits), its rendered prompt and the fields the prompt
    carries as XML; ValueError naming the record when one is dated outside [train_start, train_end], so nothing past
    the training window is ever read."""
    fields = [PROMPT_SLOTS[slot] for slot in sft.prompt.carried_slots]
    split = load_splits(dataset_dir)["train"].select_columns([*XML_FIELDS, "id", "instruction", "input"])
    outside = [
        (r["id"], r["as_of_date"])
        for r in split
        if not train_start.isoformat() <= r["as_of_date"] <= train_end.isoformat()
    ]
    if outside:
        (first_id, first_date), count = outside[0], len(outside)
        raise ValueError(
            f"{dataset_dir}: the train split holds {count} record(s) dated outside the training window "
            f"{train_start}..{train_end} (first: {first_id} of {first_date}); the pretraining reads none of them: "
            "re-materialize hf_splits for these dates"
        )
    return [
        text for r in split for text in (render_prompt(r["instruction"], r["input"], sft), prompt_side_xml(r, fields))
    ]


def packed_sequences(documents: list[list[int]], sequence_length: int) -> torch.Tensor:
    """The documents end to end, cut into rows of `sequence_length` tokens (the tail shorter than a row is left out)."""
    stream = [token for document in documents for token in document]
    rows = len(stream) // sequence_length
    if rows == 0:
        raise ValueError(
            f"{len(stream)} pretraining tokens do not fill one sequence of {sequence_length}; "
            "lower model.pretraining.sequence_length"
        )
    return torch.tensor(stream[: rows * sequence_length]).view(rows, sequence_length)


def _schedule(optimizer: torch.optim.Optimizer, config: PretrainingConfig) -> torch.optim.lr_scheduler.LRScheduler:
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, config.steps - config.warmup_steps, eta_min=config.learning_rate * config.min_lr_ratio
    )
    if not config.warmup_steps:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / config.warmup_steps, total_iters=config.warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[config.warmup_steps])


def pretrain(
    model,
    documents: list[list[int]],
    bos_token_id: int,
    config: PretrainingConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train `model` (in place) as a causal LM on `documents` (token ids, each opening with `bos_token_id`); returns
    the figures."""
    sequences = packed_sequences(documents, config.sequence_length)
    rng = random.Random(f"sftc-pretrain:{seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = _schedule(optimizer, config)
    losses: list[float] = []
    order: list[int] = []
    started = time.perf_counter()
    model.train()
    with (
        torch_threads(config.cpu_threads),
        torch.random.fork_rng(devices=[]),
        Tracker("pretraining", config.steps, "step", log=log) as tracker,
    ):
        torch.manual_seed(seed)
        for step in range(1, config.steps + 1):
            while len(order) < config.batch_size:
                epoch = list(range(len(sequences)))
                rng.shuffle(epoch)
                order += epoch
            batch = sequences[[order.pop() for _ in range(config.batch_size)]]
            loss = model(
                input_ids=batch, labels=batch.masked_fill(batch == bos_token_id, IGNORE_INDEX), use_cache=False
            ).loss
            if not math.isfinite(loss.item()):
                raise ValueError(
                    f"pretraining step {step}: the loss is {loss.item()}; "
                    f"lower model.pretraining.learning_rate {config.learning_rate:g}"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tracker.update(step, loss=loss.item())
    model.eval()
    tail = losses[-FINAL_LOSS_STEPS:]
    return {
        "steps": config.steps,
        "documents": len(documents),
        "corpus_tokens": sum(len(document) for document in documents),
        "tokens": config.steps * config.batch_size * config.sequence_length,
        "epochs": round(config.steps * config.batch_size / len(sequences), 2),
        "initial_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "seconds": round(time.perf_counter() - started, 1),
    }
