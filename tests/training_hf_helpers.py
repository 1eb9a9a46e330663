"""Test inputs for the Hugging Face backend: synthetic NeMo JSONL pairs and the toy DeepSeek-V3 built on them.

The pairs go through the project's own prompt functions, so they look exactly like `nemo_jsonl` lines; the
action follows from the facts, so a model can learn it.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from sftc_assets.checkpoints.toy_model import corpus_texts_from, make_toy_checkpoint
from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_assets.sft_data.splits import FEATURES
from sftc_core.configs import load_sft_config
from sftc_core.io import atomic_write_jsonl

TICKERS = ("AAPL", "MSFT", "IBM", "GOOG")


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """The toy model gains little from a second thread, and on a shared 2-core machine two OpenMP threads per
    process spin against other processes (10x slower measured under load); results are compared within one process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _action(momentum: float) -> str:
    for bound, action in ((-6, "STRONG_SELL"), (-2, "SELL"), (2, "HOLD"), (6, "BUY")):
        if momentum < bound:
            return action
    return "STRONG_BUY"


def synthetic_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        ticker = rng.choice(TICKERS)
        day = dt.date(2010, 1, 4) + dt.timedelta(days=i)
        momentum = round(rng.uniform(-10, 10), 1)
        week = round(rng.uniform(-4, 4), 1)
        close = round(rng.uniform(20, 400), 2)
        direction = "up" if momentum >= 0 else "down"
        records.append(
            {
                "ticker": ticker,
                "as_of_date": day.isoformat(),
                "horizon_days": 5,
                "support": [f"Close {close}", f"20-session return {momentum:+.1f}%", f"5-session return {week:+.1f}%"],
                "reasoning": f"{ticker} is {direction} {abs(momentum):.1f}% over 20 sessions.",
                "action": _action(momentum),
            }
        )
    return records


def nemo_pairs(records: list[dict]) -> list[dict]:
    sft = load_sft_config()
    pairs = []
    for record in records:
        example = build_example(record, sft)
        pairs.append(
            {"input": render_prompt(example["instruction"], example["input"], sft), "output": example["output"]}
        )
    return pairs


def write_nemo_jsonl(data_dir: Path, train: int, validation: int, seed: int = 0) -> Path:
    records = synthetic_records(train + validation, seed)
    pairs = nemo_pairs(records)
    atomic_write_jsonl(data_dir / "training.jsonl", pairs[:train])
    atomic_write_jsonl(data_dir / "validation.jsonl", pairs[train:])
    atomic_write_jsonl(data_dir / "test.jsonl", pairs[train:])
    return data_dir


def write_hf_splits(dataset_dir: Path, train: int, validation: int, seed: int = 0) -> Path:
    """The hf_splits the NeMo lines of `write_nemo_jsonl` come from: line N of a split's file is row N here."""
    sft = load_sft_config()
    rows = [
        record
        | build_example(record, sft)
        | {"id": f"{record['ticker'].lower()}-{record['as_of_date']}", "confidence": None, "source_file": "synthetic"}
        for record in synthetic_records(train + validation, seed)
    ]
    parts = {"train": rows[:train], "validation": rows[train:], "test": rows[train:]}
    DatasetDict({name: Dataset.from_list(part, features=FEATURES) for name, part in parts.items()}).save_to_disk(
        str(dataset_dir)
    )
    return dataset_dir


def build_toy_inputs(root: Path, train: int = 48, validation: int = 8) -> tuple[Path, Path]:
    """(model_dir, data_dir): NeMo JSONL and the toy checkpoint whose tokenizer was trained on it; the hf_splits
    they come from beside them (root / "hf_splits")."""
    data_dir = write_nemo_jsonl(root / "nemo_jsonl", train, validation)
    write_hf_splits(root / "hf_splits", train, validation)
    model_dir = root / "bf16"
    make_toy_checkpoint(model_dir, corpus_texts_from(data_dir), seed=0)
    return model_dir, data_dir


def place_as_upstream(data_dir: Path, model_dir: Path, nemo_dir: Path) -> Path:
    """data_dir holding bf16_checkpoint, nemo_jsonl and the hf_splits they come from (beside nemo_dir, see
    build_toy_inputs) as the upstream assets leave them (copied, marked as theirs)."""
    import shutil

    from stage_helpers import mark_as_written

    shutil.copytree(model_dir, data_dir / "checkpoints" / "bf16")
    shutil.copytree(nemo_dir, data_dir / "nemo_jsonl")
    shutil.copytree(nemo_dir.parent / "hf_splits", data_dir / "hf_splits")
    mark_as_written("bf16_checkpoint", data_dir / "checkpoints" / "bf16")
    mark_as_written("nemo_jsonl", data_dir / "nemo_jsonl")
    mark_as_written("hf_splits", data_dir / "hf_splits")
    return data_dir
