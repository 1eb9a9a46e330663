"""Eval CSVs written by hand (not by our writer: its own quoting, sessions and returns from the package's raw
lists), for the backtest tests and the error tests. The columns are the contract's (EVAL_COLUMNS). Training pairs of
thesis records with the sample corpus's desk notes, for the planted cue's preconditions."""

from __future__ import annotations

import csv
import random

import numpy as np
from bokeh_sampledata import stocks

from sftc_assets.evaluation.results import EVAL_COLUMNS
from sftc_assets.sft_data.prompts import build_example, render_prompt
from sftc_assets.theses.sample_corpus import CUE_PHRASES
from sftc_core.configs import SftConfig
from sftc_core.io import atomic_write_jsonl
from sftc_core.target_format import ACTIONS


def hand_rows(count: int = 60, seed: int = 4) -> list[dict]:
    """Rows as another tool might write them: sessions and returns taken from the package's raw lists."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        ticker = ["AAPL", "MSFT", "IBM", "ZZZ"][i % 4]
        raw = getattr(stocks, "IBM" if ticker == "ZZZ" else ticker)
        start = raw["date"].index("2012-09-04")
        k = start + int(rng.integers(0, 70))
        as_of, entry, exit_ = raw["date"][k - 1], raw["date"][k], raw["date"][k + 5]
        true = ACTIONS[int(rng.integers(0, 5))]
        predicted = true if rng.random() < 0.6 else ("" if rng.random() < 0.3 else ACTIONS[int(rng.integers(0, 5))])
        known = ticker != "ZZZ"
        rows.append(
            {
                "id": f"t{i}",
                "ticker": ticker,
                "as_of_date": as_of,
                "true_action": true,
                "predicted_action": predicted,
                "parse_ok": "true" if predicted else "false",
                "raw_output": (
                    f'<reasoning>thinking, "quoted"\nline two</reasoning><action>{predicted or "??"}</action>'
                ),
                "horizon_days": "5",
                "entry_date": entry,
                "exit_date": exit_,
                "forward_return": repr(raw["adj_close"][k + 5] / raw["adj_close"][k] - 1) if known else "",
                "return_status": "ok" if known else "unknown_ticker",
            }
        )
    return rows


def write_hand_csv(path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=EVAL_COLUMNS, quoting=csv.QUOTE_ALL)  # not our quoting style
        writer.writeheader()
        writer.writerows(rows)


def cued_records(count: int = 200, seed: int = 0) -> list[dict]:
    """Half with a desk note that names the record's action 80% of the time, as the sample corpus plants it."""
    rng, records = random.Random(seed), []
    for i in range(count):
        action = rng.choice(ACTIONS)
        note = None
        if rng.random() < 0.5:
            note = action if rng.random() < 0.8 else rng.choice([a for a in ACTIONS if a != action])
        support = ["Return over 20 sessions +1.0%", *([CUE_PHRASES[note][i % 3]] if note else [])]
        reasoning = (f"{CUE_PHRASES[note][i % 3]}. " if note else "") + "The trend is flat."
        record = {"ticker": "IBM", "as_of_date": "2011-03-01", "horizon_days": 5, "reasoning": reasoning}
        records.append(record | {"support": support, "action": action})
    return records


def write_training_pairs(nemo_dir, records: list[dict], sft: SftConfig, actions: list[str] | None = None) -> None:
    """nemo_jsonl's training.jsonl of `records` as the export renders them (each target with `actions`' where given)."""
    rows = []
    for record, action in zip(records, actions or [r["action"] for r in records]):
        example = build_example(record | {"action": action}, sft)
        prompt = render_prompt(example["instruction"], example["input"], sft)
        rows.append({"input": prompt, "output": example["output"]})
    atomic_write_jsonl(nemo_dir / "training.jsonl", rows)
