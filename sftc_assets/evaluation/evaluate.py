"""From the test split to the rows of the eval CSV: the test theses, the model's greedy answers, the parsed action
and the forward return (spec/eval-and-backtest.md).

`evaluate_records` is the one path from test records to the CSV frame (the `sftc evaluate` command and the
`eval_csv` asset both call it); results.py writes and reads the file.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sftc_assets.evaluation.results import SORT_KEYS
from sftc_assets.sft_data.prompts import render_prompt
from sftc_assets.sft_data.splits import load_splits
from sftc_assets.training.generate import generate_greedy
from sftc_core.configs import SftConfig
from sftc_core.market import (
    PriceSource,
    forward_returns,
    load_price_book,
    session_window,
)
from sftc_core.target_format import TargetFormat
from sftc_core.threads import torch_threads

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ("id", "ticker", "as_of_date", "action", "horizon_days", "instruction", "input", "output")


# --- the test split ---------------------------------------------------------------------------


def load_test_records(dataset_dir: Path | str, months: Sequence[str] | None = None, max_samples: int | None = None) -> pd.DataFrame:
    """The `test` split of the hf_splits DatasetDict at `dataset_dir`, in (as_of_date, ticker, id) order.

    `months` (YYYY-MM) keeps the theses whose as_of_date falls in them; `max_samples` keeps the first N after that.
    """
    test = load_splits(dataset_dir)["test"]
    missing = [c for c in SPLIT_COLUMNS if c not in test.column_names]
    if missing:
        raise ValueError(f"{dataset_dir}: test split lacks column(s) {', '.join(missing)}; rebuild hf_splits (`sftc build-dataset`)")
    records = test.select_columns(list(SPLIT_COLUMNS)).to_pandas()
    records["as_of_date"] = records["as_of_date"].astype(str)
    records["horizon_days"] = records["horizon_days"].astype("int64")
    if months is not None:
        records = records[records["as_of_date"].str[:7].isin(list(months))]
    records = records.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)
    return records.head(max_samples).reset_index(drop=True) if max_samples is not None else records


# --- labels and the frame ---------------------------------------------------------------------


def label_forward_returns(records: pd.DataFrame, source: PriceSource, calendar: str = "XNYS") -> pd.DataFrame:
    """entry_date, exit_date, forward_return, return_status per record (same index); prices from `source`."""
    labels = pd.DataFrame(index=records.index, columns=["entry_date", "exit_date", "forward_return", "return_status"])
    if records.empty:
        return labels
    _, exits = session_window(records["as_of_date"], records["horizon_days"].to_numpy(), calendar)
    start = dt.date.fromisoformat(records["as_of_date"].min())
    known_exits = exits[~np.isnat(exits)]
    end = pd.Timestamp(known_exits.max()).date() if len(known_exits) else dt.date.fromisoformat(records["as_of_date"].max())
    book = load_price_book(source, records["ticker"].unique(), start, end)
    parts = []
    for ticker, group in records.groupby("ticker", sort=False):
        part = forward_returns(book.get(ticker), group["as_of_date"], group["horizon_days"].to_numpy(), calendar)
        part.index = group.index
        parts.append(part)
    return pd.concat(parts).loc[records.index]


def build_eval_frame(records: pd.DataFrame, outputs: Sequence[str], labels: pd.DataFrame, target: TargetFormat) -> pd.DataFrame:
    """The eval CSV's rows as a frame (typed: dates as datetime64, forward_return float), sorted per the spec."""
    if len(outputs) != len(records):
        raise ValueError(f"{len(outputs)} model outputs for {len(records)} records")
    predicted = [target.parse_action(text) for text in outputs]
    frame = pd.DataFrame(
        {
            "id": records["id"].astype(str).to_numpy(),
            "ticker": records["ticker"].astype(str).to_numpy(),
            "as_of_date": records["as_of_date"].astype(str).to_numpy(),
            "true_action": records["action"].astype(str).to_numpy(),
            "predicted_action": [p or "" for p in predicted],
            "parse_ok": [p is not None for p in predicted],
            "raw_output": list(outputs),
            "horizon_days": records["horizon_days"].astype("int64").to_numpy(),
            "entry_date": pd.to_datetime(labels["entry_date"]).to_numpy(),
            "exit_date": pd.to_datetime(labels["exit_date"]).to_numpy(),
            "forward_return": pd.to_numeric(labels["forward_return"]).astype("float64").to_numpy(),
            "return_status": labels["return_status"].astype(str).to_numpy(),
        }
    )
    return frame.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def evaluate_records(model, tokenizer, records: pd.DataFrame, source: PriceSource, sft_config: SftConfig, *,
                     max_new_tokens: int, batch_size: int, calendar: str = "XNYS", cpu_threads: int | None = None) -> pd.DataFrame:
    """Generate greedily for each record's prompt, parse the action, label the forward return."""
    prompts = [render_prompt(i, x, sft_config) for i, x in zip(records["instruction"], records["input"])]
    log.info("generating for %d test theses (batch %d, up to %d new tokens)", len(prompts), batch_size, max_new_tokens)
    with torch_threads(cpu_threads):
        outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return build_eval_frame(records, outputs, label_forward_returns(records, source, calendar), sft_config.target_format)


def load_model(model_dir: Path | str, device: str = "cpu"):
    """The fine-tuned HF checkpoint and its tokenizer on `device` (auto, cpu, cuda, cuda:N): float32 on a CPU
    (bf16 matmuls are slow there), bf16 on GPU, spread over the visible GPUs for plain "cuda"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, not a Hugging Face checkpoint; materialize sft_model or pass --model DIR")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this node; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if device == "cpu":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="auto" if device == "cuda" else device)
    return model, tokenizer
