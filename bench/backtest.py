"""Backtest speed against the floor of reading the same eval CSV with pandas, measured side by side in one process.

A synthetic eval CSV (default 1M rows over 5 years of XNYS sessions, ~200 tickers, random-walk prices written as
local price files in a temp dir) is backtested with `run_backtest` (read + validate + every metric + portfolio +
plots + report files) without its uncertainty figures; the reference is `pandas.read_csv` of the same file with its
three date columns parsed. The goal is backtest / read <= 3x.

The uncertainty figures are measured apart, on a smaller CSV (default 100k rows): the bootstrap (accuracy, MCC,
IC, directional accuracy and the rebuilt portfolio's Sharpe on each resample) and the permutation tests, at the
counts of configs/backtest_config.yaml (2000 each), against two references run beside them: the same backtest
budget (GOAL x the read of the big CSV), and a plain loop over resamples (the figure functions on each resampled
frame, a few resamples timed and scaled per resample).
Usage: python bench/backtest.py [--rows N] [--tickers N] [--repeats N] [--uncertainty-rows N] [--loop-resamples N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from record import Measurement, add_results_option, record

from sftc_assets.backtest import uncertainty
from sftc_assets.backtest.portfolio import backtest_portfolio, load_positions
from sftc_assets.backtest.report import run_backtest
from sftc_assets.evaluation.results import read_eval_csv, write_eval_csv
from sftc_core.configs import load_backtest_config
from sftc_core.market import forward_returns, trading_sessions
from sftc_core.metrics import classification_from_codes, label_codes, scores_from_codes, signal_from_codes
from sftc_core.target_format import ACTIONS
from sftc_resources.prices import LocalPriceSource, write_price_file

GOAL = 3.0


def synthetic_prices(root: Path, tickers: list[str], sessions: pd.DatetimeIndex, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    frames = {}
    for ticker in tickers:
        adjusted = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.018, len(sessions))))
        frame = pd.DataFrame({"date": sessions, "open": adjusted, "high": adjusted * 1.01, "low": adjusted * 0.99,
                              "close": adjusted, "adjusted_close": adjusted, "volume": 1e6})
        write_price_file(root / f"{ticker}.parquet", frame)
        frames[ticker] = frame
    return frames


def synthetic_eval_csv(path: Path, rows: int, prices: dict[str, pd.DataFrame], sessions: pd.DatetimeIndex, rng: np.random.Generator) -> None:
    tickers = np.array(sorted(prices))
    ticker = tickers[rng.integers(0, len(tickers), rows)]
    as_of = sessions[rng.integers(0, len(sessions) - 10, rows)]
    horizon = np.full(rows, 5)
    true = np.array(ACTIONS)[rng.integers(0, 5, rows)]
    guess = np.where(rng.random(rows) < 0.4, true, np.array(ACTIONS)[rng.integers(0, 5, rows)])
    predicted = np.where(rng.random(rows) < 0.05, "", guess)
    frame = pd.DataFrame({"id": [f"{t}-{i}" for i, t in enumerate(ticker)], "ticker": ticker, "as_of_date": as_of.strftime("%Y-%m-%d"),
                          "true_action": true, "predicted_action": predicted, "parse_ok": predicted != "", "horizon_days": horizon})
    frame["raw_output"] = "<reasoning>Momentum and margins, see support.</reasoning>\n<support>a; b</support><action>" + frame["predicted_action"] + "</action>"
    labels = []
    for name, group in frame.groupby("ticker", sort=False):
        part = forward_returns(prices[name], group["as_of_date"], group["horizon_days"].to_numpy())
        part.index = group.index
        labels.append(part)
    labels = pd.concat(labels).loc[frame.index]
    for column in labels:
        frame[column] = labels[column].to_numpy()
    write_eval_csv(frame.sort_values(["as_of_date", "ticker", "id"]), path)


def uncertainty_seconds(csv_path: Path, source: LocalPriceSource, config, loop_resamples: int) -> tuple[float, float, float]:
    """(bootstrap s, permutations s, plain loop s per resample) on one eval CSV, at the config's counts."""
    frame = read_eval_csv(csv_path)
    true, predicted = label_codes(frame["true_action"]), label_codes(frame["predicted_action"])
    forward = frame["forward_return"].to_numpy(dtype="float64")
    score = scores_from_codes(predicted, config.scores)
    positions = load_positions(frame, source)
    started = time.perf_counter()
    uncertainty.bootstrap_intervals(len(frame), config.bootstrap_resamples, config.seed,
                                    uncertainty.eval_figures(true, predicted, score, forward, positions, config), uncertainty.book_cells(positions))
    bootstrap = time.perf_counter() - started
    started = time.perf_counter()
    uncertainty.permutation_p_values(len(frame), config.permutations, config.seed, {"accuracy": 0.0, "ic": 0.0},
                                     uncertainty.shuffled_figures(true, predicted, score, forward))
    permutations = time.perf_counter() - started
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(loop_resamples):  # the baseline: each resample's figures from the plain functions
        rows = rng.integers(0, len(frame), len(frame))
        classification_from_codes(true[rows], predicted[rows])
        signal_from_codes(predicted[rows], score[rows], forward[rows])
        backtest_portfolio(frame.iloc[rows].reset_index(drop=True), score[rows], source, cost_bps=config.cost_bps)
    return bootstrap, permutations, (time.perf_counter() - started) / loop_resamples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tickers", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--uncertainty-rows", type=int, default=100_000)
    parser.add_argument("--loop-resamples", type=int, default=5)
    add_results_option(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sessions = trading_sessions("XNYS")
    sessions = sessions[(sessions >= "2015-01-01") & (sessions <= "2019-12-31")]
    with tempfile.TemporaryDirectory(prefix="sftc-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        prices = synthetic_prices(tmp / "prices", [f"T{i:03d}" for i in range(args.tickers)], sessions, rng)
        csv_path, small_path = tmp / "eval.csv", tmp / "eval_small.csv"
        synthetic_eval_csv(csv_path, args.rows, prices, sessions, rng)
        synthetic_eval_csv(small_path, args.uncertainty_rows, prices, sessions, rng)
        print(f"setup: {args.rows:,} rows, {args.tickers} tickers, {len(sessions)} sessions, "
              f"{csv_path.stat().st_size / 2**20:.0f} MiB CSV in {time.perf_counter() - started:.1f} s")
        source, config = LocalPriceSource(tmp / "prices"), load_backtest_config()
        point_figures = config.model_copy(update={"bootstrap_resamples": 0, "permutations": 0})
        read_times, backtest_times = [], []
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            started = time.perf_counter()
            pd.read_csv(csv_path, parse_dates=["as_of_date", "entry_date", "exit_date"])
            read_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            metrics = run_backtest(csv_path, tmp / "report", source, point_figures)
            backtest_times.append(time.perf_counter() - started)
        read, backtest = min(read_times), min(backtest_times)
        ratio = backtest / read
        print(f"pandas read_csv + dates: {read:.2f} s (best of {args.repeats})")
        print(f"run_backtest:            {backtest:.2f} s (best of {args.repeats}); positions {metrics['portfolio']['positions']:,}")
        print(f"ratio backtest / read: {ratio:.2f}x (goal <= {GOAL:g}x): {'ok' if ratio <= GOAL else 'ABOVE GOAL'}")

        bootstrap, permutations, loop = uncertainty_seconds(small_path, source, config, args.loop_resamples)
        total = bootstrap + permutations
        print(f"uncertainty on {args.uncertainty_rows:,} rows: {config.bootstrap_resamples:,} resamples {bootstrap:.2f} s "
              f"({bootstrap / max(config.bootstrap_resamples, 1) * 1e3:.2f} ms each), {config.permutations:,} permutations {permutations:.2f} s")
        print(f"ratio uncertainty / read of the {args.rows:,}-row CSV: {total / read:.2f}x (the backtest's budget: <= {GOAL:g}x): "
              f"{'ok' if total / read <= GOAL else 'ABOVE BUDGET'}")
        per_resample = bootstrap / max(config.bootstrap_resamples, 1)
        print(f"plain loop: {loop * 1e3:.1f} ms a resample; vectorised bootstrap {loop / per_resample:.1f}x faster")
        record("backtest", [
            Measurement("run_backtest time", backtest, "pandas read_csv + dates", read, "s", f"<= {GOAL:g}"),
            Measurement("uncertainty time", total, f"pandas read_csv of the {args.rows:,}-row CSV", read, "s", f"<= {GOAL:g}"),
            Measurement("bootstrap resample time", per_resample, "a plain loop's resample", loop, "s"),
        ], args.results)  # fmt: skip


if __name__ == "__main__":
    main()
