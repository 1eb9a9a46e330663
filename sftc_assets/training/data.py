"""Supervised pairs for the Hugging Face backend: NeMo JSONL -> token ids with answer-only labels -> batches.

The prompt is the NeMo `input` (already the rendered template), the target is `output` + EOS; the loss sees
target tokens only (labels are -100 on the prompt and on padding), as NeMo's `answer_only_loss`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from sftc_core.nemo_format import read_pairs

IGNORE_INDEX = -100
# Examples are sorted by length inside windows of this many batches, so a batch holds similar lengths
# (little padding) while the order across windows stays shuffled.
BUCKET_WINDOW_BATCHES = 32


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizedSplit:
    examples: list[Example]
    truncated: int
    answers_cut: int = 0  # answers (target + EOS) longer than max_seq_length alone: their end, the action, is lost
    longest_answer: int = 0


def load_pairs(path: Path) -> list[dict[str, str]]:
    """The `{"input", "output"}` lines of a NeMo JSONL file (sftc_core.nemo_format); an empty split is an error too."""
    rows = read_pairs(path)
    if not rows:
        raise ValueError(f"{path}: no records; the split is empty (check the date boundaries of the splits)")
    return rows


def tokenize_pair(tokenizer, prompt: str, target: str, max_seq_length: int) -> tuple[Example, bool]:
    """Token ids and answer-only labels; returns (example, truncated).

    The prompt is encoded as generation will encode it (with the tokenizer's BOS), the target without special
    tokens, then EOS. Too long: the prompt loses tokens from its left (the response cue at its end stays);
    a target alone longer than max_seq_length keeps its beginning.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    overflow = len(prompt_ids) + len(target_ids) - max_seq_length
    truncated = overflow > 0
    if truncated:
        target_ids = target_ids[:max_seq_length]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_seq_length - len(target_ids)) :]
    example = Example(input_ids=prompt_ids + target_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids)
    return example, truncated


def tokenize_split(tokenizer, pairs: list[dict[str, str]], max_seq_length: int) -> TokenizedSplit:
    examples, truncated, answers = [], 0, []
    for pair in pairs:
        example, cut = tokenize_pair(tokenizer, pair["input"], pair["output"], max_seq_length)
        examples.append(example)
        truncated += cut
        answers.append(len(tokenizer(pair["output"], add_special_tokens=False)["input_ids"]) + 1)
    return TokenizedSplit(examples, truncated, sum(1 for n in answers if n > max_seq_length), max(answers, default=0))


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, length-bucketed, the same for the same (seed, epoch)."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class BatchStream:
    """An endless, resumable sequence of batches over the epochs; `position` is (epoch, batch index)."""

    lengths: list[int]
    batch_size: int
    seed: int
    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)

    def next(self) -> list[int]:
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        batch = self._batches[self.index]
        self.index += 1
        return batch

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def at(cls, lengths: list[int], batch_size: int, seed: int, position: dict[str, int]) -> BatchStream:
        stream = cls(lengths, batch_size, seed, epoch=position["epoch"])
        stream.index = position["index"]
        return stream


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sequential_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Fixed batches for validation: sorted by length so padding stays small; order does not change the sum."""
    ordered = sorted(examples, key=lambda example: len(example.input_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
