"""The backtest report: eval CSV(s) in, metrics.json, report.md, report.html, equity_curve.png, confusion.png out.

Everything is computed in memory first and the five files are then written into a directory beside the
report that replaces it whole, so a bad input leaves the previous report untouched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sftc_assets.backtest.portfolio import (
    PortfolioResult,
    backtest_portfolio,
    monthly_returns,
)
from sftc_assets.evaluation.results import read_eval_csv
from sftc_core.configs import BacktestConfig
from sftc_core.io import BeforeSwap, atomic_dir
from sftc_core.market import PriceSource
from sftc_core.metrics import (
    UNPARSED_NAME,
    classification_from_codes,
    label_codes,
    scores_from_codes,
    signal_from_codes,
)
from sftc_core.target_format import ACTIONS

REPORT_FILES = ("metrics.json", "report.md", "report.html", "equity_curve.png", "confusion.png")
HEADLINE = ("accuracy", "macro_f1", "mcc", "directional_accuracy", "parse_rate", "majority_baseline_accuracy", "ic", "long_short_spread")
SERIES_FIGURES = ("cumulative_return", "cagr", "annualised_volatility", "sharpe", "sortino", "max_drawdown", "calmar", "hit_rate", "turnover")
PERCENT_FIGURES = {"accuracy", "macro_f1", "directional_accuracy", "parse_rate", "majority_baseline_accuracy", "long_short_spread",
                   "cumulative_return", "cagr", "annualised_volatility", "max_drawdown", "hit_rate", "turnover", "portfolio_return",
                   "benchmark_return", "mean_return"}


def compute_backtest(frame: pd.DataFrame, source: PriceSource, config: BacktestConfig, calendar: str = "XNYS") -> tuple[dict, PortfolioResult]:
    """All figures of the spec over `frame` (read_eval_csv's), plus a per-month table by month of as_of_date."""
    true = label_codes(frame["true_action"])
    predicted = label_codes(frame["predicted_action"])
    forward = frame["forward_return"].to_numpy(dtype="float64")
    score = scores_from_codes(predicted, config.scores)
    classification = classification_from_codes(true, predicted)
    signal = signal_from_codes(predicted, score, forward)
    result = backtest_portfolio(frame, score, source, cost_bps=config.cost_bps, calendar=calendar,
                                periods_per_year=config.periods_per_year, risk_free_rate=config.risk_free_rate)
    book_by_month = monthly_returns(result.daily, "book_return")
    benchmark_by_month = monthly_returns(result.daily, "benchmark_return")

    # Rows grouped by month of as_of_date with one stable sort, not a mask per month.
    month_of_row = frame["as_of_date"].to_numpy().astype("datetime64[M]")
    months, month_index = np.unique(month_of_row, return_inverse=True)
    order = np.argsort(month_index, kind="stable")
    bounds = np.searchsorted(month_index[order], np.arange(len(months) + 1))
    per_month = []
    for i, month in enumerate(np.datetime_as_string(months, unit="M")):
        rows = order[bounds[i] : bounds[i + 1]]
        c = classification_from_codes(true[rows], predicted[rows])
        s = signal_from_codes(predicted[rows], score[rows], forward[rows])
        per_month.append({
            "month": str(month), "rows": c["rows"], "parse_rate": c["parse_rate"], "accuracy": c["accuracy"], "macro_f1": c["macro_f1"],
            "mcc": c["mcc"], "ic": s["ic"], "directional_accuracy": s["directional_accuracy"], "long_short_spread": s["long_short_spread"],
            "portfolio_return": book_by_month.get(str(month)), "benchmark_return": benchmark_by_month.get(str(month)),
        })
    statuses = frame["return_status"].value_counts()
    as_of = frame["as_of_date"]
    metrics = {
        "rows": int(len(frame)),
        "first_as_of_date": as_of.min().date().isoformat() if len(frame) else None,
        "last_as_of_date": as_of.max().date().isoformat() if len(frame) else None,
        "files": sorted(frame["source_file"].unique().tolist()) if "source_file" in frame else [],
        "price_source": source.name,
        "calendar": calendar,
        "config": config.model_dump(),
        "return_status_counts": {str(s): int(n) for s, n in sorted(statuses.items())},
        **classification,
        **signal,
        "portfolio": result.portfolio,
        "benchmark": result.benchmark,
        "per_month": per_month,
    }
    return _json_safe(metrics), result


def _json_safe(value):
    """NaN and infinities become null: metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- text ---------------------------------------------------------------------------------------


def fmt(name: str, value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value * 100:.2f}%" if name in PERCENT_FIGURES else f"{value:.3f}"


def _tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report, shared by the Markdown and the HTML."""
    pf, bm = metrics["portfolio"], metrics["benchmark"]
    headline = [[name, fmt(name, metrics[name])] for name in HEADLINE]
    by_action = [[label, fmt("mean_return", v["mean_return"]), fmt("rows", v["rows"])] for label, v in metrics["mean_return_by_action"].items()]
    series = [[name, fmt(name, pf.get(name)), fmt(name, bm.get(name))] for name in SERIES_FIGURES]
    confusion = [[a, *[str(v) for v in row], str(metrics["unparsed_by_true_action"][a])] for a, row in zip(ACTIONS, metrics["confusion_matrix"])]
    month_columns = list(metrics["per_month"][0]) if metrics["per_month"] else ["month"]
    months = [[fmt(c, m[c]) if c != "month" else m[c] for c in month_columns] for m in metrics["per_month"]]
    return [
        ("Classification and signal", ["figure", "value"], headline),
        ("Mean forward return by predicted action", ["predicted action", "mean return", "rows"], by_action),
        ("Portfolio against the equal-weight buy-and-hold benchmark", ["figure", "portfolio", "benchmark"], series),
        ("Confusion matrix (rows: true action, columns: predicted)", ["true \\ predicted", *ACTIONS, UNPARSED_NAME], confusion),
        ("Per month (by month of as_of_date; portfolio and benchmark over that month's sessions)", month_columns, months),
    ]


def _summary_lines(metrics: dict) -> list[str]:
    pf = metrics["portfolio"]
    lines = [
        f"{metrics['rows']:,} theses from {metrics['first_as_of_date']} to {metrics['last_as_of_date']}, "
        f"prices from the {metrics['price_source']} source on the {metrics['calendar']} calendar.",
        "Return status: " + ", ".join(f"{k} {v:,}" for k, v in metrics["return_status_counts"].items()) + ".",
    ]
    if pf["available"]:
        lines.append(f"Portfolio: {pf['positions']:,} positions from {pf['start']} to {pf['end']}, costs {pf['cost_bps']:g} bp a side; "
                     f"{pf['rows_scored_zero']:,} rows scored 0 (HOLD or unparsed) hold nothing.")
    else:
        lines.append(f"Portfolio: not computed: {pf['reason']}.")
    if pf["missing_positions"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in pf["missing_by_reason"].items())
        tickers = f" Tickers the price source does not know: {', '.join(pf.get('missing_tickers') or [])}." if pf.get("missing_tickers") else ""
        lines.append(f"Missing prices: {pf['missing_positions']:,} scored rows left out of the portfolio ({reasons}).{tickers}")
    return lines


def render_markdown(metrics: dict) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = ["# Backtest report", "", *_summary_lines(metrics), "", "![equity curve](equity_curve.png)", ""]
    for title, header, rows in _tables(metrics):
        parts += [f"## {title}", "", row(header), "|" + "---|" * len(header), *[row(r) for r in rows], ""]
    parts += ["![confusion matrix](confusion.png)", ""]
    return "\n".join(parts)


def render_html(metrics: dict, images: dict[str, bytes]) -> str:
    """A single self-contained page: the images are inlined."""
    def image(name: str, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'

    body = [f"<p>{html.escape(line)}</p>" for line in _summary_lines(metrics)]
    body.append(image("equity_curve.png", "equity curve"))
    for title, header, rows in _tables(metrics):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        body.append(f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    body.append(image("confusion.png", "confusion matrix"))
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}img{max-width:100%}"
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Backtest report</title><style>{style}</style></head><body><h1>Backtest report</h1>{''.join(body)}</body></html>\n"


# --- plots --------------------------------------------------------------------------------------


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # fixed margins: one draw, not two
    plt.close(figure)
    return buffer.getvalue()


def plot_equity_curve(daily: pd.DataFrame, start: str | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1], "left": 0.09, "right": 0.98, "top": 0.94, "bottom": 0.07})
    if daily.empty:
        top.text(0.5, 0.5, "no portfolio: no position had prices", ha="center", va="center", transform=top.transAxes)
    else:
        # The curves start at 1 on the close of the first entry, the session before the first daily return.
        days = pd.DatetimeIndex([pd.Timestamp(start), *daily.index])
        for column, label in (("book_return", "portfolio (net of costs)"), ("gross_return", "portfolio before costs"), ("benchmark_return", "equal-weight buy-and-hold")):
            equity = np.concatenate(([1.0], (1.0 + daily[column].to_numpy()).cumprod()))
            top.plot(days, equity, label=label, linewidth=1.2 if column != "gross_return" else 0.8)
        equity = np.concatenate(([1.0], (1.0 + daily["book_return"].to_numpy()).cumprod()))
        bottom.fill_between(days, equity / np.maximum.accumulate(equity) - 1.0, 0.0, color="tab:red", alpha=0.4)
        top.legend(loc="best")
    top.set_ylabel("equity (start = 1)")
    bottom.set_ylabel("drawdown")
    # Concise dates: a few months or several years both stay readable on one axis.
    bottom.xaxis.set_major_locator(locator := mdates.AutoDateLocator(maxticks=8))
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    top.set_title("Equity curve")
    return _png(figure)


def plot_confusion(metrics: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array([row + [metrics["unparsed_by_true_action"][a]] for a, row in zip(ACTIONS, metrics["confusion_matrix"])])
    figure, axes = plt.subplots(figsize=(7, 5), gridspec_kw={"left": 0.2, "right": 0.97, "top": 0.93, "bottom": 0.2})
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(ACTIONS) + 1), [*ACTIONS, UNPARSED_NAME], rotation=30, ha="right")
    axes.set_yticks(range(len(ACTIONS)), ACTIONS)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        axes.text(j, i, f"{value:,}", ha="center", va="center", color="white" if value > threshold else "black")
    axes.set_title(f"Confusion matrix ({metrics['rows']:,} rows)")
    return _png(figure)


# --- the whole run --------------------------------------------------------------------------------


def run_backtest(
    eval_path: Path | str, report_dir: Path | str, source: PriceSource, config: BacktestConfig, calendar: str = "XNYS", stamp: BeforeSwap | None = None
) -> dict:
    """Read the eval CSV(s), compute every figure, write the five report files (the directory replaced whole);
    returns the metrics."""
    frame = read_eval_csv(eval_path)
    if frame.empty:
        raise ValueError(f"{eval_path}: no rows to backtest (the eval CSV files hold only headers)")
    metrics, result = compute_backtest(frame, source, config, calendar)
    images = {"equity_curve.png": plot_equity_curve(result.daily, result.portfolio.get("start")), "confusion.png": plot_confusion(metrics)}
    texts = {"metrics.json": json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False) + "\n",
             "report.md": render_markdown(metrics), "report.html": render_html(metrics, images)}
    with atomic_dir(report_dir, stamp) as staging:
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for name, data in images.items():
            (staging / name).write_bytes(data)
    return metrics



def sanity_problems(report_dir: Path | str, expected_rows: int | None = None) -> list[str]:
    """What is wrong with a written report: missing files, figures out of their range, counts that disagree."""
    report_dir = Path(report_dir)
    problems = [f"{name} is missing" for name in REPORT_FILES if not (report_dir / name).is_file()]
    if (report_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return [*problems, f"metrics.json is not JSON: {exc}"]
    else:
        return problems

    def within(name: str, value, low: float, high: float) -> None:
        if value is not None and not low <= value <= high:
            problems.append(f"{name} = {value} is outside [{low}, {high}]")

    for name in ("accuracy", "macro_f1", "parse_rate", "majority_baseline_accuracy", "directional_accuracy"):
        within(name, metrics.get(name), 0.0, 1.0)
    for name in ("mcc", "ic"):
        within(name, metrics.get(name), -1.0, 1.0)
    counted = sum(map(sum, metrics["confusion_matrix"])) + sum(metrics["unparsed_by_true_action"].values())
    if counted != metrics["rows"]:
        problems.append(f"the confusion counts add up to {counted}, not the {metrics['rows']} rows")
    if expected_rows is not None and metrics["rows"] != expected_rows:
        problems.append(f"the report covers {metrics['rows']} rows but the eval CSVs hold {expected_rows}")
    if sum(metrics["return_status_counts"].values()) != metrics["rows"]:
        problems.append("return status counts do not add up to the rows")
    for side in ("portfolio", "benchmark"):
        figures = metrics[side]
        if figures.get("available"):
            within(f"{side}.max_drawdown", figures.get("max_drawdown"), -1.0, 0.0)
            within(f"{side}.hit_rate", figures.get("hit_rate"), 0.0, 1.0)
            if figures.get("cumulative_return") is None or figures["cumulative_return"] <= -1.0:
                problems.append(f"{side}.cumulative_return = {figures.get('cumulative_return')}: equity must stay above 0")
            if not figures.get("days"):
                problems.append(f"{side} has no days")
    if metrics["portfolio"].get("turnover") is not None and metrics["portfolio"]["turnover"] < 0:
        problems.append("portfolio.turnover is negative")
    return problems
