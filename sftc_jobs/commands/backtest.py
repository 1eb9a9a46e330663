"""`sftc backtest`: metrics, portfolio and report from eval CSV(s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftc_core.configs import load_backtest_config
from sftc_core.settings import Settings
from sftc_jobs.commands.outputs import add_force, writing_output


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="backtest eval CSV(s): metrics.json, daily_returns.csv, report.md/.html, equity_curve.png, confusion.png",
        description="Classification, signal and portfolio figures of docs/eval-and-backtest.md over an eval CSV "
        "or a directory of them (the eval_csv partitions), with bootstrap intervals, permutation p-values, the trivial "
        "baselines and a verdict on skill; prices from the profile's price source.",
    )
    parser.add_argument("--eval-csv", type=Path, required=True, help="an eval CSV, or a directory of them")
    parser.add_argument("--report", type=Path, required=True, help="directory for the report files")
    parser.add_argument(
        "--config",
        type=Path,
        help="scores, cost_bps, risk-free rate, bootstrap resamples, permutations, seed "
        "(default: configs/backtest_config.yaml)",
    )
    add_force(parser)
    parser.set_defaults(func=run_backtest_command)


def run_backtest_command(args: argparse.Namespace, settings: Settings) -> int:
    from sftc_assets.backtest.report import HEADLINE, first_unseen, run_backtest
    from sftc_platform.prices import price_source_from_settings

    config = load_backtest_config(args.config) if args.config else settings.backtest
    calendar = settings.prices.calendar
    with writing_output(args, [args.report], inputs=[args.eval_csv], option="--report") as stamp:
        metrics = run_backtest(
            args.eval_csv,
            args.report,
            price_source_from_settings(settings),
            config,
            calendar,
            stamp,
            unseen_from=first_unseen(settings.profile, calendar),
        )
    keys = ("cumulative_return", "cagr", "sharpe", "max_drawdown")
    summary = {
        "report": str(args.report),
        "rows": metrics["rows"],
        "verdict": metrics["verdict"]["sentence"],
        **{k: metrics[k] for k in HEADLINE},
        "ci95": metrics["ci95"],
        "p_values": metrics["p_values"],
        "portfolio": {k: metrics["portfolio"].get(k) for k in ("available", "positions", "missing_positions", *keys)},
        "benchmark": {k: metrics["benchmark"].get(k) for k in keys},
    }
    print(json.dumps(summary, indent=2))
    return 0
