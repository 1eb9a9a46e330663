"""Tokens/s of the Hugging Face backend's loop against a bare torch loop, same model and batches, one process.

Builds the toy inputs in a temp dir (sample-corpus theses from real prices -> NeMo pairs -> the toy
DeepSeek-V3 with its tokenizer), then alternates, --repeats times:
- ours: `run_training` for --steps steps (validation only at the start and the end, one checkpoint, no
  generation); tokens/s is its own figure: tokens over the time of the loop body (batch assembly, forward,
  backward, clipping, optimizer and scheduler steps, bookkeeping);
- bare: the same model loaded and extended the same way, the same batches in the same order, and only
  forward, loss, backward, AdamW step, timed the same way.
Prints the best tokens/s of each and ours / bare (goal >= 0.9).

    .venv/bin/python bench/train_throughput.py [--steps 30] [--repeats 2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_checkpoint
from sftc_assets.common.io import atomic_write_jsonl
from sftc_assets.datasets.prompts import build_example, render_prompt
from sftc_assets.theses.sample_corpus import month_theses, sample_ticker_table
from sftc_assets.training.data import BatchStream, collate, load_pairs, split_path, tokenize_split
from sftc_assets.training.hf_backend import RunPlan, load_model_and_tokenizer, run_training, target_loss_sum
from sftc_resources.settings import load_profile, load_sft_config


def write_pairs(data_dir: Path, months: list[str]) -> None:
    """NeMo pairs of the toy profile's sample theses for `months` (train) and one month more (validation)."""
    profile, sft = load_profile("toy"), load_sft_config()
    tables = {t: sample_ticker_table(t, profile.corpus.horizon_days) for t in profile.corpus.tickers}

    def pairs(month: str) -> list[dict]:
        rows = []
        for ticker, table in tables.items():
            for thesis in month_theses(ticker, table, month, profile.corpus):
                record = {**dataclasses.asdict(thesis), "support": list(thesis.support)}
                example = build_example(record, sft)
                rows.append({"input": render_prompt(example["instruction"], example["input"], sft), "output": example["output"]})
        return rows

    atomic_write_jsonl(split_path(data_dir, "train"), [row for month in months[:-1] for row in pairs(month)])
    atomic_write_jsonl(split_path(data_dir, "validation"), pairs(months[-1]))


def bare_loop(model_dir: Path, data_dir: Path, training, sft, steps: int) -> float:
    """Tokens/s of the plainest loop over the batches `run_training` draws."""
    torch.manual_seed(training.seed)
    plan = RunPlan(training, steps, sft.max_seq_length, tuple(sft.special_tokens), False)
    model, tokenizer, _, _ = load_model_and_tokenizer(model_dir, plan, torch.device("cpu"))
    examples = tokenize_split(tokenizer, load_pairs(split_path(data_dir, "train")), sft.max_seq_length).examples
    stream = BatchStream([len(e.input_ids) for e in examples], training.batch_size, training.seed)
    order = [stream.next() for _ in range(steps)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, betas=(0.9, 0.95))
    model.train()
    tokens, seconds = 0, 0.0
    for indices in order:
        started = time.perf_counter()
        batch = collate([examples[i] for i in indices], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = target_loss_sum(logits, batch["labels"]) / (batch["labels"][:, 1:] != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        tokens += int(batch["attention_mask"].sum())
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    profile, sft = load_profile("toy"), load_sft_config()
    training = profile.training.model_copy(
        update={"max_steps": args.steps, "batch_size": args.batch_size, "eval_every": args.steps, "save_every": args.steps, "parse_check_samples": 0}
    )
    with tempfile.TemporaryDirectory(prefix="sftc-bench-train-") as tmp:
        root = Path(tmp)
        data_dir, model_dir = root / "nemo_jsonl", root / "bf16"
        write_pairs(data_dir, ["2010-03", "2010-04", "2010-05", "2010-06", "2010-07"])
        make_toy_checkpoint(model_dir, corpus_texts_from(data_dir), seed=0)
        ours, bare = [], []
        for repeat in range(args.repeats):
            result = run_training(model_dir, data_dir, root / f"out-{repeat}", training, sft, profile.evaluation)
            ours.append(result.metrics["tokens_per_s"])
            bare.append(bare_loop(model_dir, data_dir, training, sft, args.steps))
            print(f"repeat {repeat}: ours {ours[-1]:.0f} tokens/s, bare {bare[-1]:.0f} tokens/s")
    print(f"toy DeepSeek-V3, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"best tokens/s: ours {max(ours):.0f}, bare torch loop {max(bare):.0f}")
    print(f"ours / bare = {max(ours) / max(bare):.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
