"""The evaluation CSV (spec/eval-and-backtest.md): the test split's theses, the model's answers, forward returns.

`evaluate_records` is the one path from test records to the CSV frame (the `sftc evaluate` command and the
`eval_csv` asset both call it); `read_eval_csv` is the one reader (the backtest uses it), strict about the
format: a bad value is an error naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from sftc_assets.common.io import atomic_path
from sftc_assets.evaluation.actions import parse_action
from sftc_resources.prices import RETURN_STATUSES, PriceSource, PricesConfig, forward_returns, load_price_book, session_window
from sftc_resources.settings import ACTIONS, CONFIG_DIR, SftConfig, load_yaml_model

log = logging.getLogger(__name__)

EVAL_COLUMNS = (
    "id",
    "ticker",
    "as_of_date",
    "true_action",
    "predicted_action",
    "parse_ok",
    "raw_output",
    "horizon_days",
    "entry_date",
    "exit_date",
    "forward_return",
    "return_status",
)
NUMERIC_COLUMNS = ("horizon_days", "forward_return")
TEXT_COLUMNS = tuple(c for c in EVAL_COLUMNS if c not in (*NUMERIC_COLUMNS, "parse_ok"))
SPLIT_COLUMNS = ("id", "ticker", "as_of_date", "action", "horizon_days", "instruction", "input", "output")
SORT_KEYS = ["as_of_date", "ticker", "id"]


class EvalConfig(BaseModel):
    """configs/eval_config.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_parse_rate: float = Field(ge=0, le=1)
    prices: PricesConfig = PricesConfig()


def load_eval_config(path: Path | str | None = None) -> EvalConfig:
    return load_yaml_model(path or CONFIG_DIR / "eval_config.yaml", EvalConfig)


# --- the test split ---------------------------------------------------------------------------


def load_test_records(dataset_dir: Path | str, months: Sequence[str] | None = None, max_samples: int | None = None) -> pd.DataFrame:
    """The `test` split of the hf_splits DatasetDict at `dataset_dir`, in (as_of_date, ticker, id) order.

    `months` (YYYY-MM) keeps the theses whose as_of_date falls in them; `max_samples` keeps the first N after that.
    """
    import datasets

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{dataset_dir}: not a saved DatasetDict (no dataset_dict.json); materialize hf_splits or pass --dataset DIR")
    splits = datasets.load_from_disk(str(dataset_dir))
    if "test" not in splits:
        raise ValueError(f"{dataset_dir}: the DatasetDict has no 'test' split (splits: {', '.join(splits)})")
    test = splits["test"]
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


def build_eval_frame(records: pd.DataFrame, outputs: Sequence[str], labels: pd.DataFrame) -> pd.DataFrame:
    """The eval CSV's rows as a frame (typed: dates as datetime64, forward_return float), sorted per the spec."""
    if len(outputs) != len(records):
        raise ValueError(f"{len(outputs)} model outputs for {len(records)} records")
    predicted = [parse_action(text) for text in outputs]
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
    from sftc_assets.common.torch_threads import torch_threads
    from sftc_assets.datasets.prompts import render_prompt
    from sftc_assets.evaluation.generate import generate_greedy

    prompts = [render_prompt(i, x, sft_config) for i, x in zip(records["instruction"], records["input"])]
    log.info("generating for %d test theses (batch %d, up to %d new tokens)", len(prompts), batch_size, max_new_tokens)
    with torch_threads(cpu_threads):
        outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return build_eval_frame(records, outputs, label_forward_returns(records, source, calendar))


def load_model(model_dir: Path | str, device: str = "cpu"):
    """The fine-tuned HF checkpoint and its tokenizer on `device` (auto, cpu, cuda, cuda:N): float32 on a CPU
    (bf16 matmuls are slow there), bf16 on GPU, spread over the visible GPUs for plain "cuda"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, not a Hugging Face checkpoint; materialize sft_model or pass --model DIR")
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


# --- the file ---------------------------------------------------------------------------------


def _iso_dates(values: pd.Series) -> pd.Series:
    dates = pd.to_datetime(values)
    return dates.dt.strftime("%Y-%m-%d").fillna("")


def write_eval_csv(frame: pd.DataFrame, path: Path | str) -> Path:
    """UTF-8, header, EVAL_COLUMNS in order, minimal quoting (raw_output keeps its newlines inside quotes)."""
    out = frame.loc[:, list(EVAL_COLUMNS)].copy()
    out["parse_ok"] = np.where(out["parse_ok"].astype(bool), "true", "false")
    for column in ("as_of_date", "entry_date", "exit_date"):
        out[column] = _iso_dates(out[column])
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n", quoting=csv.QUOTE_MINIMAL, na_rep="")
    return Path(path)


def eval_csv_files(path: Path | str) -> list[Path]:
    """A CSV file, or the `*.csv` files of a directory (the eval_csv partitions), in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.csv eval files (materialize eval_csv or pass --eval-csv FILE)")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: eval CSV not found")
    return [path]


def read_eval_csv(path: Path | str | Sequence[Path]) -> pd.DataFrame:
    """Every row of the eval CSV(s) at `path` (a file, a directory of them, or a list of files), validated and
    typed; `source_file` says where each row came from. Errors name the file, the row (1 = first data row) and
    the column.
    """
    files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else eval_csv_files(path)
    if not files:
        raise FileNotFoundError("no eval CSV files given (materialize eval_csv first)")
    frames = []
    for file in files:
        try:
            # "NA" is a ticker, not a missing value: only an empty number is missing. Types are inferred (forcing
            # str costs 2x on 1M rows); a text column that came out numeric ("007" ids) is read again as text.
            raw = pd.read_csv(file, keep_default_na=False, na_values={c: [""] for c in NUMERIC_COLUMNS}, encoding="utf-8")
            numeric_text = [c for c in TEXT_COLUMNS if c in raw.columns and not pd.api.types.is_string_dtype(raw[c])]
            if numeric_text:
                raw[numeric_text] = pd.read_csv(file, usecols=numeric_text, dtype=str, keep_default_na=False, encoding="utf-8")[numeric_text]
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ValueError(f"{file}: not a readable CSV ({type(exc).__name__}: {exc}); expected the columns {', '.join(EVAL_COLUMNS)}") from None
        frames.append(_validated(file, raw))
    frames = [f for f in frames if len(f)] or frames[:1]  # a header-only month would turn text columns into object
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _days(text: pd.Series) -> pd.Series:
    """YYYY-MM-DD strings to datetime64[ns] (NaT where not a date); parsed once per distinct value."""
    codes, uniques = pd.factorize(text)
    parsed = pd.to_datetime(pd.Series(uniques, dtype=object), format="%Y-%m-%d", errors="coerce").to_numpy().astype("datetime64[ns]")
    return pd.Series(np.where(codes >= 0, parsed[np.maximum(codes, 0)], np.datetime64("NaT", "ns")), index=text.index)


def _numbers(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(values as float64 with NaN for empty, rows whose text is not a finite number)."""
    if pd.api.types.is_numeric_dtype(column):
        values = column.astype("float64")
        return values, (np.isinf(values) & values.notna()).to_numpy()
    values = pd.to_numeric(column, errors="coerce").astype("float64")
    return values, ((values.isna() & column.notna()) | np.isinf(values)).to_numpy()


def _validated(file: Path, raw: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in EVAL_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{file}: missing column(s) {', '.join(missing)}; an eval CSV has {', '.join(EVAL_COLUMNS)}")

    def check(column: str, bad: np.ndarray, expected: str) -> None:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = raw[column].iloc[row]
            raise ValueError(f"{file}: row {row + 1}, column {column}: {'(empty)' if pd.isna(value) else repr(value)} {expected}")

    def dates(column: str, required: bool) -> pd.Series:
        parsed = _days(raw[column])
        check(column, (parsed.isna() & ((raw[column] != "") | required)).to_numpy(), "is not a date written YYYY-MM-DD" + ("" if required else " (or empty)"))
        return parsed

    check("id", (raw["id"] == "").to_numpy(), "is empty; every row needs an id")
    check("ticker", (raw["ticker"] == "").to_numpy(), "is empty; every row needs a ticker")
    check("true_action", ~raw["true_action"].isin(ACTIONS).to_numpy(), f"is not an action ({', '.join(ACTIONS)})")
    check("predicted_action", ~raw["predicted_action"].isin((*ACTIONS, "")).to_numpy(), f"is not an action ({', '.join(ACTIONS)}) or empty")
    if pd.api.types.is_bool_dtype(raw["parse_ok"]):  # the reader recognised true/false
        parse_ok = raw["parse_ok"].to_numpy()
    else:
        check("parse_ok", ~raw["parse_ok"].astype(str).isin(("true", "false")).to_numpy(), "must be true or false")
        parse_ok = (raw["parse_ok"].astype(str) == "true").to_numpy()
    check("parse_ok", parse_ok != (raw["predicted_action"] != "").to_numpy(), "disagrees with predicted_action (true exactly when an action was parsed)")
    horizon, not_number = _numbers(raw["horizon_days"])
    check("horizon_days", not_number | (horizon.isna() | (horizon < 1) | (horizon != horizon.round())).to_numpy(), "is not a whole number of sessions >= 1")
    as_of, entry, exit_ = dates("as_of_date", True), dates("entry_date", False), dates("exit_date", False)
    check("entry_date", (entry <= as_of).to_numpy(), "is not after as_of_date (no look-ahead: entry is the first session after it)")
    check("exit_date", (exit_ <= entry).to_numpy(), "is not after entry_date")
    check("return_status", ~raw["return_status"].isin(RETURN_STATUSES).to_numpy(), f"is not a return status ({', '.join(RETURN_STATUSES)})")
    forward, not_number = _numbers(raw["forward_return"])
    check("forward_return", not_number, "is not a number (or empty)")
    status_ok = (raw["return_status"] == "ok").to_numpy()
    check("forward_return", status_ok & forward.isna().to_numpy(), "is empty but return_status is ok")
    check("forward_return", ~status_ok & forward.notna().to_numpy(), "is set but return_status says there is no return")
    check("entry_date", status_ok & (entry.isna() | exit_.isna()).to_numpy(), "is empty but return_status is ok (entry and exit dates are needed)")
    typed = raw.loc[:, list(EVAL_COLUMNS)]
    typed = typed.assign(as_of_date=as_of, parse_ok=parse_ok, horizon_days=horizon.astype("int64"), entry_date=entry,
                         exit_date=exit_, forward_return=forward, source_file=file.name)
    return typed
