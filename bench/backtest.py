"""Backtest speed against the floor of reading the same eval CSV with pandas, measured side by side in one process.

A synthetic eval CSV (default 1M rows over 5 years of XNYS sessions, ~200 tickers, random-walk prices written as
local price files in a temp dir) is backtested with `run_backtest` (read + validate + every metric + portfolio +
daily book + plots + report files) twice: without its uncertainty figures (goal: <= 3x the read), and whole, with
every interval and p-value at the counts of configs/backtest_config.yaml (2000 each; goal: <= 5x the read). The
reference is `pandas.read_csv` of the same file with its three date columns parsed, interleaved with both.
Usage: python bench/backtest.py [--rows N] [--tickers N] [--repeats N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from record import Measurement, add_results_option, record

from sftc_assets.backtest.report import run_backtest
from sftc_assets.evaluation.results import write_eval_csv
from sftc_core.configs import load_backtest_config
from sftc_core.market import forward_returns, trading_sessions
from sftc_core.target_format import ACTIONS
from sftc_platform.prices import LocalPriceSource, write_price_file

GOAL = 3.0
# The whole backtest, every interval and p-value included.
WHOLE_GOAL = 5.0


def synthetic_prices(
    root: Path, tickers: list[str], sessions: pd.DatetimeIndex, rng: np.random.Generator
) -> dict[str, pd.DataFrame]:
    frames = {}
    for ticker in tickers:
        adjusted = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.018, len(sessions))))
        frame = pd.DataFrame(
            {
                "date": sessions,
                "open": adjusted,
                "high": adjusted * 1.01,
                "low": adjusted * 0.99,
                "close": adjusted,
                "adjusted_close": adjusted,
                "volume": 1e6,
            }
        )
        write_price_file(root / f"{ticker}.parquet", frame)
        frames[ticker] = frame
    return frames


def synthetic_eval_csv(
    path: Path, rows: int, prices: dict[str, pd.DataFrame], sessions: pd.DatetimeIndex, rng: np.random.Generator
) -> None:
    tickers = np.array(sorted(prices))
    ticker = tickers[rng.integers(0, len(tickers), rows)]
    as_of = sessions[rng.integers(0, len(sessions) - 10, rows)]
    horizon = np.full(rows, 5)
    true = np.array(ACTIONS)[rng.integers(0, 5, rows)]
    guess = np.where(rng.random(rows) < 0.4, true, np.array(ACTIONS)[rng.integers(0, 5, rows)])
    predicted = np.where(rng.random(rows) < 0.05, "", guess)
    frame = pd.DataFrame(
        {
            "id": [f"{t}-{i}" for i, t in enumerate(ticker)],
            "ticker": ticker,
            "as_of_date": as_of.strftime("%Y-%m-%d"),
            "true_action": true,
            "predicted_action": predicted,
            "parse_ok": predicted != "",
            "horizon_days": horizon,
        }
    )
    frame["raw_output"] = (
        "<reasoning>Momentum and margins, see support.</reasoning>\n<support>a; b</support><action>"
        + frame["predicted_action"]
        + "</action>"
    )
    labels = []
    for name, group in frame.groupby("ticker", sort=False):
        part = forward_returns(prices[name], group["as_of_date"], group["horizon_days"].to_numpy())
        part.index = group.index
        labels.append(part)
    labels = pd.concat(labels).loc[frame.index]
    for column in labels:
        frame[column] = labels[column].to_numpy()
    write_eval_csv(frame.sort_values(["as_of_date", "ticker", "id"]), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tickers", type=int, default=200)
    # Best of 5, interleaved: on a shared 2-core machine two tries of each often both land in another job's burst.
    parser.add_argument("--repeats", type=int, default=5)
    add_results_option(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sessions = trading_sessions("XNYS")
    sessions = sessions[(sessions >= "2015-01-01") & (sessions <= "2019-12-31")]
    with tempfile.TemporaryDirectory(prefix="sftc-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        prices = synthetic_prices(tmp / "prices", [f"T{i:03d}" for i in range(args.tickers)], sessions, rng)
        csv_path = tmp / "eval.csv"
        synthetic_eval_csv(csv_path, args.rows, prices, sessions, rng)
        print(
            f"setup: {args.rows:,} rows, {args.tickers} tickers, {len(sessions)} sessions, "
            f"{csv_path.stat().st_size / 2**20:.0f} MiB CSV in {time.perf_counter() - started:.1f} s"
        )
        source, config = LocalPriceSource(tmp / "prices"), load_backtest_config()
        configs = {"plain": config.model_copy(update={"bootstrap_resamples": 0, "permutations": 0}), "whole": config}
        times: dict[str, list[float]] = {"read": [], "plain": [], "whole": []}
        for _ in range(args.repeats):  # interleaved, so load on the machine hits all three alike
            started = time.perf_counter()
            pd.read_csv(csv_path, parse_dates=["as_of_date", "entry_date", "exit_date"])
            times["read"].append(time.perf_counter() - started)
            for name, figures_config in configs.items():
                started = time.perf_counter()
                metrics = run_backtest(csv_path, tmp / "report", source, figures_config)
                times[name].append(time.perf_counter() - started)
        read, plain, whole = (min(times[name]) for name in ("read", "plain", "whole"))
        print(f"pandas read_csv + dates: {read:.2f} s (best of {args.repeats})")
        print(f"run_backtest, no intervals: {plain:.2f} s; positions {metrics['portfolio']['positions']:,}")
        print(
            f"run_backtest, every interval and p-value ({config.bootstrap_resamples:,} resamples, "
            f"{config.permutations:,} permutations): {whole:.2f} s"
        )
        for label, seconds, goal in (("plain backtest", plain, GOAL), ("whole backtest", whole, WHOLE_GOAL)):
            verdict = "ok" if seconds / read <= goal else "ABOVE GOAL"
            print(f"ratio {label} / read: {seconds / read:.2f}x (goal <= {goal:g}x): {verdict}")
        reference = "pandas read_csv + dates"
        record(
            "backtest",
            [
                Measurement("run_backtest time", plain, reference, read, "s", f"<= {GOAL:g}"),
                Measurement("run_backtest with every interval time", whole, reference, read, "s", f"<= {WHOLE_GOAL:g}"),
            ],
            args.results,
        )


if __name__ == "__main__":
    main()
