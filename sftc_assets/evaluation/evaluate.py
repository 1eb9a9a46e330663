"""From the test split to the rows of the eval CSV: the test theses, the model's answers, the parsed action and
the forward return (docs/eval-and-backtest.md).

`evaluate_records` is the one path from test records to the CSV frame (the `sftc evaluate` command and the
`eval_csv` asset both call it); the answers come from answers.py (a served endpoint, or the in-process
fallback); results.py writes and reads the file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sftc_assets.evaluation.answers import AnswerStaging
from sftc_assets.evaluation.completions import OnProgress
from sftc_assets.evaluation.results import SORT_KEYS, write_eval_csv
from sftc_assets.sft_data.prompts import render_prompt
from sftc_assets.sft_data.splits import load_splits
from sftc_core.configs import SftConfig
from sftc_core.io import BeforeSwap
from sftc_core.market import (
    PriceSource,
    forward_returns,
    load_price_book,
    session_window,
)
from sftc_core.target_format import TargetFormat

SPLIT_COLUMNS = ("id", "ticker", "as_of_date", "action", "horizon_days", "instruction", "input", "output")


# --- the test split ---------------------------------------------------------------------------


def load_test_records(
    dataset_dir: Path | str, months: Sequence[str] | None = None, max_samples: int | None = None
) -> pd.DataFrame:
    """The `test` split of the hf_splits DatasetDict at `dataset_dir`, in (as_of_date, ticker, id) order.

    `months` (YYYY-MM) keeps the theses whose as_of_date falls in them; `max_samples` keeps the first N after that.
    """
    test = load_splits(dataset_dir)["test"]
    missing = [c for c in SPLIT_COLUMNS if c not in test.column_names]
    if missing:
        raise ValueError(
            f"{dataset_dir}: test split lacks column(s) {', '.join(missing)}; rebuild hf_splits (`sftc build-dataset`)"
        )
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
    end = (
        pd.Timestamp(known_exits.max()).date()
        if len(known_exits)
        else dt.date.fromisoformat(records["as_of_date"].max())
    )
    book = load_price_book(source, records["ticker"].unique(), start, end)
    parts = []
    for ticker, group in records.groupby("ticker", sort=False):
        part = forward_returns(book.get(ticker), group["as_of_date"], group["horizon_days"].to_numpy(), calendar)
        part.index = group.index
        parts.append(part)
    return pd.concat(parts).loc[records.index]


def build_eval_frame(
    records: pd.DataFrame,
    outputs: Sequence[str],
    labels: pd.DataFrame,
    target: TargetFormat,
    tags_stripped: bool = False,
) -> pd.DataFrame:
    """The eval CSV's rows as a frame (typed: dates as datetime64, forward_return float), sorted per the spec.
    `tags_stripped`: the outputs came from a server that decoded without the special tokens."""
    if len(outputs) != len(records):
        raise ValueError(f"{len(outputs)} model outputs for {len(records)} records")
    predicted = [target.parse_action(text, tags_stripped) for text in outputs]
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


def test_prompts(records: pd.DataFrame, sft_config: SftConfig) -> list[str]:
    """The exact text the model was trained to answer (the NeMo `input`), one per record."""
    return [render_prompt(i, x, sft_config) for i, x in zip(records["instruction"], records["input"])]


def evaluate_records(
    records: pd.DataFrame,
    answers,
    source: PriceSource,
    sft_config: SftConfig,
    *,
    calendar: str = "XNYS",
    staging: Path | None = None,
    on_progress: OnProgress | None = None,
) -> pd.DataFrame:
    """The model's answer to each record's prompt (`answers`: answers.ServedAnswers or InProcessAnswers, staged
    under `staging`; None when there are no records), the parsed action and the forward return."""
    outputs = answers.answer(test_prompts(records, sft_config), staging, on_progress) if len(records) else []
    labels = label_forward_returns(records, source, calendar)
    return build_eval_frame(records, outputs, labels, sft_config.target_format, bool(answers and answers.tags_stripped))


def evaluate_to_csv(
    records: pd.DataFrame,
    answers,
    source: PriceSource,
    sft_config: SftConfig,
    csv_path: Path,
    *,
    staging: Path | None = None,
    calendar: str = "XNYS",
    on_progress: OnProgress | None = None,
    stamp: BeforeSwap | None = None,
) -> pd.DataFrame:
    """evaluate_records, then the CSV written whole (atomically, with `stamp`'s marker) and the staged answers
    dropped: a run interrupted before this point resumes from the staging file."""
    frame = evaluate_records(
        records, answers, source, sft_config, calendar=calendar, staging=staging, on_progress=on_progress
    )
    write_eval_csv(frame, csv_path, stamp)
    if staging is not None:
        AnswerStaging(staging).discard()
    return frame


def cut_at_budget(outputs: Sequence[str], model_dir: Path, max_new_tokens: int, target: TargetFormat) -> int | None:
    """Outputs that stop before the closing action tag having used the whole generation budget (cut, not finished),
    counted with the model's tokenizer; None where the model's files are not on this node (served elsewhere)."""
    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        return None
    from sftc_assets.sft_data.nemo_export import load_local_tokenizer

    tokenizer, closing = load_local_tokenizer(model_dir), target.action[1]
    # Decoding and encoding again may merge a token or two: within 2 of the budget counts as the budget.
    return sum(
        1
        for text in outputs
        if closing not in text and len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 2
    )
