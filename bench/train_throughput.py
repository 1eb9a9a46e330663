"""Tokens/s of the Hugging Face backend's loop against a bare torch loop, same model and batches, one process.

Builds the toy inputs in a temp dir (sample-corpus theses from real prices -> NeMo pairs -> the toy
DeepSeek-V3 with its tokenizer), then runs `run_training` for --steps steps with a bare torch loop
interleaved step by step: after each of our steps, its `on_step` hook runs the bare loop's step on the same
batch with a second copy of the model (loaded the same way), so load from other processes on
the machine falls on both alike.
- ours: the time between two hooks, i.e. one iteration of `run_training`'s loop (batch assembly, forward,
  backward, clipping, optimizer and scheduler steps, bookkeeping);
- bare: collate, forward, loss, backward, AdamW step, nothing else.
Steps 2..N-1 count (step 1 warms up; step N of `run_training` also validates and saves). Prints tokens/s
of each and ours / bare, over all counted steps and as the median of the per-step ratios (goal >= 0.9).

    .venv/bin/python bench/train_throughput.py [--steps 30] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import Measurement, add_results_option, record

from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_checkpoint
from sftc_assets.training.data import BatchStream, collate, load_pairs, tokenize_split
from sftc_assets.training.hf_backend import (
    RunPlan,
    load_model_and_tokenizer,
    run_training,
    target_loss_sum,
)
from sftc_assets.training.toy_inputs import write_pairs
from sftc_core.nemo_format import split_file
from sftc_core.settings import load_settings


def load_like_run_training(model_dir: Path, data_dir: Path, training, sft, steps: int):
    """The model and the batches, in order, that `run_training` starts with."""
    torch.manual_seed(training.seed)
    plan = RunPlan(training, steps, sft.max_seq_length, False)
    model, tokenizer, _ = load_model_and_tokenizer(model_dir, plan, torch.device("cpu"), list(sft.special_tokens))
    examples = tokenize_split(tokenizer, load_pairs(split_file(data_dir, "train")), sft.max_seq_length).examples
    stream = BatchStream([len(e.input_ids) for e in examples], training.batch_size, training.seed)
    batches = [[examples[i] for i in stream.next()] for _ in range(steps)]
    return model, tokenizer.pad_token_id, batches


class InterleavedBareLoop:
    """`run_training`'s on_step hook: times our step since the last hook, then runs and times a bare step."""

    def __init__(self, model, pad_token_id: int, batches: list, learning_rate: float) -> None:
        self.model, self.pad_token_id, self.batches = model.train(), pad_token_id, batches
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95))
        self.ours: dict[int, float] = {}
        self.bare: dict[int, float] = {}
        self.hook_end: float | None = None

    def __call__(self, row: dict) -> None:
        started = time.perf_counter()
        step = row["step"]
        if self.hook_end is not None:
            self.ours[step] = started - self.hook_end
        batch = collate(self.batches[step - 1], self.pad_token_id)
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        loss = target_loss_sum(logits, batch["labels"]) / (batch["labels"][:, 1:] != -100).sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bare[step] = time.perf_counter() - started
        self.hook_end = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    add_results_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = load_settings(env={"SFTC_PROFILE": "toy"})  # the toy's training section with the recipe's LoRA filled in
    profile, sft = settings.profile, settings.sft
    training = profile.training.model_copy(
        update={
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": args.steps,
            "save_every": args.steps,
            "parse_check_samples": 0,
        }
    )
    with tempfile.TemporaryDirectory(prefix="sftc-bench-train-") as tmp:
        root = Path(tmp)
        data_dir, model_dir = root / "nemo_jsonl", root / "bf16"
        write_pairs(
            data_dir, profile, sft, {"train": ["2010-03", "2010-04", "2010-05", "2010-06"], "validation": ["2010-07"]}
        )
        make_toy_checkpoint(model_dir, corpus_texts_from(data_dir), seed=0)
        model, pad_token_id, batches = load_like_run_training(model_dir, data_dir, training, sft, args.steps)
        interleaved = InterleavedBareLoop(model, pad_token_id, batches, training.learning_rate)
        run_training(model_dir, data_dir, root / "out", training, sft, profile.evaluation, on_step=interleaved)
    counted = range(2, args.steps)
    tokens = {step: sum(len(e.input_ids) for e in batches[step - 1]) for step in counted}
    ours_rate = sum(tokens.values()) / sum(interleaved.ours[s] for s in counted)
    bare_rate = sum(tokens.values()) / sum(interleaved.bare[s] for s in counted)
    ratios = sorted(interleaved.bare[s] / interleaved.ours[s] for s in counted)
    print(
        f"toy DeepSeek-V3, batch {args.batch_size}, steps 2..{args.steps - 1} of {args.steps}, "
        f"{sum(tokens.values())} tokens, {training.cpu_threads or torch.get_num_threads()} intra-op thread(s)"
    )
    print(f"tokens/s: ours {ours_rate:.0f}, bare torch loop {bare_rate:.0f}")
    print(
        f"ours / bare = {ours_rate / bare_rate:.3f} over all steps, "
        f"median per step {statistics.median(ratios):.3f} (goal >= 0.9)"
    )
    record(
        "train_throughput",
        [Measurement("run_training tokens/s", ours_rate, "bare torch loop", bare_rate, "tokens/s", ">= 0.9")],
        args.results,
    )


if __name__ == "__main__":
    main()
