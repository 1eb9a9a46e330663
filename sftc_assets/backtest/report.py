"""The backtest report: eval CSV(s) in, metrics.json, daily_returns.csv, report.md, report.html, equity_curve.png,
confusion.png out.

Everything is computed in memory first and the six files are then written into a directory beside the
report that replaces it whole, so a bad input leaves the previous report untouched.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sftc_assets.backtest import uncertainty
from sftc_assets.backtest.portfolio import (
    PortfolioResult,
    backtest_portfolios,
    daily_book,
    load_positions,
    monthly_returns,
)
from sftc_assets.evaluation.results import read_eval_csv
from sftc_assets.sft_data.splits import load_splits
from sftc_assets.theses.sample_corpus import planted_cue
from sftc_core.configs import BacktestConfig, ProfileConfig
from sftc_core.io import BeforeSwap, atomic_dir
from sftc_core.market import PriceSource, first_unseen_date
from sftc_core.metrics import (
    UNPARSED_NAME,
    classification_cells,
    classification_from_codes,
    classification_from_confusion,
    confusion_counts,
    directional_accuracy,
    label_codes,
    scores_from_codes,
    signal_from_codes,
    signals_by_group,
)
from sftc_core.target_format import ACTIONS
from sftc_core.text import format_number, format_share

REPORT_FILES = ("metrics.json", "daily_returns.csv", "report.md", "report.html", "equity_curve.png", "confusion.png")
# Figures shown for each side of the base model's knowledge cutoff when the test window straddles it.
CUTOFF_FIGURES = ("rows", "parse_rate", "accuracy", "mcc", "directional_accuracy", "ic")
HEADLINE = (
    "accuracy",
    "macro_f1",
    "mcc",
    "directional_accuracy",
    "parse_rate",
    "majority_baseline_accuracy",
    "ic",
    "long_short_spread",
)
SERIES_FIGURES = (
    "cumulative_return",
    "cagr",
    "annualised_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "hit_rate",
    "turnover",
)
ANNUALISED_FIGURES = ("cagr", "annualised_volatility", "sharpe", "sortino", "calmar")
PERCENT_FIGURES = {
    "accuracy",
    "macro_f1",
    "directional_accuracy",
    "parse_rate",
    "majority_baseline_accuracy",
    "long_short_spread",
    "cumulative_return",
    "cagr",
    "annualised_volatility",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "portfolio_return",
    "benchmark_return",
    "mean_return",
    "follows_cue",
    "cue_agrees_with_label",
}
# The evidence of skill (spec): accuracy's interval above the majority baseline and a permutation p-value under this.
SKILL_P_VALUE = 0.05
# The planted cue of the toy corpus must come through far more clearly than "some skill".
CUE_P_VALUE = 0.01
BASELINE_BOOKS = {"always_long": 1.0, "always_short": -1.0}


def compute_backtest(
    frame: pd.DataFrame,
    source: PriceSource,
    config: BacktestConfig,
    calendar: str = "XNYS",
    cues: Mapping[str, str] | None = None,
) -> tuple[dict, PortfolioResult, pd.DataFrame]:
    """All figures of the spec over `frame` (read_eval_csv's), with their intervals, p-values and baselines, and a
    per-month table by month of as_of_date; beside them the model's book and the daily series of every book
    (portfolio.daily_book). `cues`: thesis id -> the action its planted desk note points to (the toy corpus,
    sample_corpus.py); the report then shows how the cued and the uncued theses fared apart."""
    true = label_codes(frame["true_action"])
    predicted = label_codes(frame["predicted_action"])
    forward = frame["forward_return"].to_numpy(dtype="float64")
    score = scores_from_codes(predicted, config.scores)
    classification = classification_from_codes(true, predicted)
    by_return = np.argsort(forward)  # ranks the returns of the whole frame's IC and of every month's
    signal = signal_from_codes(predicted, config.scores, forward, by_return)
    positions = load_positions(frame, source, calendar)
    # The model's book and the baselines' (every row scored +1, or -1) in one pass over the positions.
    result, *baseline_books = backtest_portfolios(
        frame,
        [score, *(np.full(len(frame), side) for side in BASELINE_BOOKS.values())],
        positions,
        cost_bps=config.cost_bps,
        periods_per_year=config.periods_per_year,
        risk_free_rate=config.risk_free_rate,
    )

    daily = result.daily["book_return"].to_numpy(dtype="float64") if result.portfolio["available"] else None
    drawn = uncertainty.uncertainty(true, predicted, score, forward, signal["ic"], daily, config)

    baselines = {
        "majority": {
            "action": classification["majority_class"],
            "accuracy": classification["majority_baseline_accuracy"],
        }
    }
    for (name, side), book in zip(BASELINE_BOOKS.items(), (r.portfolio for r in baseline_books)):
        baselines[name] = {
            "score": side,
            "directional_accuracy": directional_accuracy(np.full(len(frame), side), forward),
            "ic": None,  # a constant score has no rank correlation
            **{k: book.get(k) for k in (*SERIES_FIGURES, "days")},
        }
    baselines["buy_and_hold"] = {k: result.benchmark.get(k) for k in (*SERIES_FIGURES, "days")}

    metrics = {
        "rows": int(len(frame)),
        "first_as_of_date": frame["as_of_date"].min().date().isoformat() if len(frame) else None,
        "last_as_of_date": frame["as_of_date"].max().date().isoformat() if len(frame) else None,
        "files": sorted(frame["source_file"].unique().tolist()) if "source_file" in frame else [],
        "price_source": source.name,
        "calendar": calendar,
        "horizon_days": sorted(int(h) for h in frame["horizon_days"].unique()),
        "config": config.model_dump(),
        # The statuses the rows have: a Categorical's value_counts lists its categories without rows too.
        "return_status_counts": {str(s): int(n) for s, n in sorted(frame["return_status"].value_counts().items()) if n},
        **classification,
        **signal,
        "ci95": drawn.ci95,
        "ci95_methods": drawn.ci95_methods,
        "p_values": drawn.p_values,
        "p_value_methods": drawn.p_value_methods,
        "baselines": baselines,
        "annualised_from_sessions": result.portfolio.get("days"),
        "uncertainty": {
            "resamples": config.bootstrap_resamples,
            "permutations": config.permutations,
            "seed": config.seed,
            "sharpe_mean_block_sessions": drawn.sharpe_mean_block_sessions,
        },
        "portfolio": result.portfolio,
        "benchmark": result.benchmark,
        "per_month": _per_month(frame, true, predicted, config.scores, forward, by_return, result),
    }
    metrics["verdict"] = skill_verdict(metrics)
    if cues is not None:
        cue = frame["id"].map(cues).fillna("").to_numpy(dtype=object)
        metrics["planted_cue"] = planted_cue_figures(true, predicted, cue, config)
        metrics["planted_cue"]["recovered"], metrics["planted_cue"]["verdict"] = cue_verdict(metrics)
    return _json_safe(metrics), result, daily_book(result, dict(zip(BASELINE_BOOKS, baseline_books)))


def _per_month(
    frame: pd.DataFrame,
    true: np.ndarray,
    predicted: np.ndarray,
    scores: Mapping[str, float],
    forward: np.ndarray,
    by_return: np.ndarray,
    result: PortfolioResult,
) -> list[dict]:
    """The figures per month of as_of_date, each beside the count it is computed over; `by_return` is
    np.argsort(forward)."""
    book_by_month = monthly_returns(result.daily, "book_return")
    benchmark_by_month = monthly_returns(result.daily, "benchmark_return")
    sessions_by_month = result.daily.index.strftime("%Y-%m").value_counts().to_dict() if not result.daily.empty else {}
    # The month of each distinct day only (a million date conversions and a sort of them were the slow way); every
    # month's figures then come from counts keyed by month, not from a pass per month.
    day_codes, days = pd.factorize(frame["as_of_date"].to_numpy())
    months, month_of_day = np.unique(days.astype("datetime64[M]"), return_inverse=True)
    month_index = month_of_day[day_codes]
    confusions = confusion_counts(true, predicted, month_index, len(months))
    signals = signals_by_group(predicted, scores, forward, month_index, len(months), by_return)
    per_month = []
    for month, confusion, s in zip(np.datetime_as_string(months, unit="M"), confusions, signals):
        c = classification_from_confusion(confusion)
        per_month.append(
            {
                "month": str(month),
                "rows": c["rows"],
                "parse_rate": c["parse_rate"],
                "accuracy": c["accuracy"],
                "macro_f1": c["macro_f1"],
                "mcc": c["mcc"],
                "rows_with_return": s["rows_with_return"],
                "ic": s["ic"],
                "directional_rows": s["directional_rows"],
                "directional_accuracy": s["directional_accuracy"],
                "long_short_spread": s["long_short_spread"],
                "sessions": int(sessions_by_month.get(str(month), 0)),
                "portfolio_return": book_by_month.get(str(month)),
                "benchmark_return": benchmark_by_month.get(str(month)),
            }
        )
    return per_month


def _accuracy_with_uncertainty(true: np.ndarray, predicted: np.ndarray, config: BacktestConfig) -> dict:
    """Accuracy of a subset of rows with its interval (multinomial), majority baseline and permutation p-value."""
    figures = classification_from_codes(true, predicted)
    cells = classification_cells(true, predicted, np.zeros(len(true)), np.full(len(true), np.nan))
    return {
        "rows": figures["rows"],
        "accuracy": figures["accuracy"],
        "ci95": uncertainty.multinomial_intervals(cells, config.bootstrap_resamples, config.seed)["accuracy"],
        "p_value": uncertainty.accuracy_p_value(true, predicted, config.permutations, config.seed),
        "majority_baseline_accuracy": figures["majority_baseline_accuracy"],
        "majority_class": figures["majority_class"],
    }


def planted_cue_figures(true: np.ndarray, predicted: np.ndarray, cue: np.ndarray, config: BacktestConfig) -> dict:
    """The cued and the uncued theses apart: accuracy with its interval, p-value and majority baseline; how often the
    prediction is the action the cue points to, and how often the cue is right (the best a cue reader can do)."""
    cued = cue != ""
    cue_codes = label_codes(np.where(cued, cue, ""))
    return {
        "cued_rows": int(cued.sum()),
        "uncued_rows": int((~cued).sum()),
        "cue_agrees_with_label": float((cue_codes[cued] == true[cued]).mean()) if cued.any() else None,
        "follows_cue": float((cue_codes[cued] == predicted[cued]).mean()) if cued.any() else None,
        "cued": _accuracy_with_uncertainty(true[cued], predicted[cued], config),
        "uncued": _accuracy_with_uncertainty(true[~cued], predicted[~cued], config),
    }


def methods_text(methods: Mapping[str, str]) -> str:
    """`accuracy, mcc: multinomial; ic: Fisher z`: the figures grouped by the method behind them."""
    by_method: dict[str, list[str]] = {}
    for name, method in methods.items():
        by_method.setdefault(method, []).append(name)
    return "; ".join(f"{', '.join(names)}: {method}" for method, names in by_method.items())


def interval_text(name: str, interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"{fmt(name, interval[0])} to {fmt(name, interval[1])}"


def beats_baseline(
    interval: list[float] | None, baseline: float | None, p: float | None, threshold: float
) -> tuple[bool, str]:
    """The evidence rule of the spec: an interval above its baseline and a p-value below `threshold`; where it
    fails, why, in words."""
    above = interval is not None and baseline is not None and interval[0] > baseline
    significant = p is not None and p < threshold
    why = [
        *([] if above else ["the interval does not lie above the baseline"]),
        *([] if significant else [f"p is not below {threshold:g}"]),
    ]
    return above and significant, " and ".join(why)


def skill_verdict(metrics: dict) -> dict:
    """Whether the evidence shows skill (spec): accuracy's interval above the majority baseline and p < 0.05."""
    accuracy, interval, p = metrics["accuracy"], metrics["ci95"]["accuracy"], metrics["p_values"]["accuracy"]
    majority = metrics["baselines"]["majority"]
    skill, why = beats_baseline(interval, majority["accuracy"], p, SKILL_P_VALUE)
    figures = (
        f"accuracy {fmt('accuracy', accuracy)} (95% CI {interval_text('accuracy', interval)}) "
        f"against the majority baseline {fmt('accuracy', majority['accuracy'])} (always {majority['action']}), "
        f"permutation p = {fmt('p', p)}"
    )
    if skill:
        return {
            "skill": True,
            "sentence": (
                f"Evidence of skill: {figures}; the interval lies above the baseline and p < {SKILL_P_VALUE:g}."
            ),
        }
    return {"skill": False, "sentence": f"No evidence of skill: {figures}; {why}."}


def cue_verdict(metrics: dict) -> tuple[bool, str]:
    """Whether the model recovered the toy corpus's planted cue: accuracy on the cued theses with its interval above
    their majority baseline, and the overall accuracy's permutation p-value under CUE_P_VALUE."""
    cued, p = metrics["planted_cue"]["cued"], metrics["p_values"]["accuracy"]
    interval, majority = cued["ci95"], cued["majority_baseline_accuracy"]
    recovered, why = beats_baseline(interval, majority, p, CUE_P_VALUE)
    figures = (
        f"accuracy on the {cued['rows']} cued theses {fmt('accuracy', cued['accuracy'])} "
        f"(95% CI {interval_text('accuracy', interval)}) "
        f"against their majority baseline {fmt('accuracy', majority)}, overall permutation p = {fmt('p', p)}"
    )
    if recovered:
        return True, f"The planted cue came through: {figures}."
    return False, f"The planted cue did not come through: {figures}; {why}."


def first_unseen(profile: ProfileConfig, calendar: str = "XNYS") -> dt.date | None:
    """The first as-of date past the profile's base model's knowledge cutoff plus the label horizon
    (None: no cutoff)."""
    cutoff = profile.model.knowledge_cutoff
    return first_unseen_date(cutoff, profile.corpus.horizon_days, calendar) if cutoff else None


def cutoff_sides(
    frame: pd.DataFrame, source: PriceSource, config: BacktestConfig, calendar: str, unseen_from: dt.date | None
) -> dict | None:
    """The figures of the theses the base model may have seen the outcome of (as-of before `unseen_from`: its
    knowledge cutoff plus the label horizon) apart from the rest; None when no thesis lies before it."""
    if unseen_from is None:
        return None
    seen = (frame["as_of_date"] < pd.Timestamp(unseen_from)).to_numpy()
    if not seen.any():
        return None
    sides = {}
    for label, mask in (
        (f"before {unseen_from} (outcomes the model may know)", seen),
        (f"from {unseen_from} (unseen)", ~seen),
    ):
        if mask.any():
            figures = compute_backtest(frame[mask].reset_index(drop=True), source, config, calendar)[0]
            sides[label] = {
                **{k: figures[k] for k in CUTOFF_FIGURES},
                "sharpe": figures["portfolio"].get("sharpe"),
                "cumulative_return": figures["portfolio"].get("cumulative_return"),
            }
    return {"unseen_from": unseen_from.isoformat(), "sides": sides}


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
    """A figure for people: 3 significant digits, a percentage for shares and returns, a p-value to 4 decimals."""
    if name == "p" and isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, float) and name in PERCENT_FIGURES:
        return format_share(value)
    return format_number(value)


# What the figures people read most are, in one line each (the report's "Definitions").
DEFINITIONS = (
    "accuracy: share of theses whose predicted action is the true action (an unparsed output counts as wrong); "
    "the majority baseline always predicts the most common true action of these theses.",
    "directional accuracy: share of the theses with a non-zero score and a forward return whose score has the return's "
    "sign; always long / always short score every thesis +1 / -1.",
    "IC (information coefficient): Spearman rank correlation of the predicted score (STRONG_BUY +1 ... STRONG_SELL -1) "
    "with the forward return, over the theses with a return.",
    "hit rate: share of the sessions with open positions on which the book's return was positive.",
    "95% CI: percentiles of a bootstrap. Multinomial: the theses resampled with replacement, drawn as the counts of "
    "the confusion table's cells; row bootstrap: the theses with a return resampled; stationary block bootstrap: the "
    "book's daily returns resampled in blocks of random length (their mean beside it), as positions span sessions; "
    "Fisher z: the normal interval of the IC's Fisher transform (over 5,000 theses with a return).",
    "p: one-sided permutation test, the predicted actions shuffled across theses (true actions and returns kept), "
    "drawn as confusion tables with both margins fixed (multivariate hypergeometric) for accuracy; for the IC over "
    "5,000 theses with a return, the normal limit of the shuffles.",
)


def _baseline_text(metrics: dict, name: str) -> str:
    baselines = metrics["baselines"]
    if name == "accuracy":
        return (
            f"majority (always {baselines['majority']['action']}) {fmt('accuracy', baselines['majority']['accuracy'])}"
        )
    if name == "directional_accuracy":
        return "; ".join(
            f"{label} {fmt(name, baselines[key]['directional_accuracy'])}"
            for key, label in (("always_long", "always long"), ("always_short", "always short"))
        )
    if name == "ic":
        return "0 = no information (undefined for always long / short: a constant score has no ranks)"
    if name == "mcc":
        return "0 (no information)"
    return ""


def _tables(metrics: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report, shared by the Markdown and the HTML."""
    pf, bm, baselines, ci = metrics["portfolio"], metrics["benchmark"], metrics["baselines"], metrics["ci95"]
    ci_methods, p_methods = metrics["ci95_methods"], metrics["p_value_methods"]
    headline = [
        [
            name,
            fmt(name, metrics[name]),
            interval_text(name, ci.get(name)) if name in ci else "",
            ci_methods.get(name, ""),
            fmt("p", metrics["p_values"].get(name)) if name in metrics["p_values"] else "",
            p_methods.get(name, ""),
            _baseline_text(metrics, name),
        ]
        for name in HEADLINE
    ]
    by_action = [
        [label, fmt("mean_return", v["mean_return"]), fmt("rows", v["rows"])]
        for label, v in metrics["mean_return_by_action"].items()
    ]
    sessions = metrics["annualised_from_sessions"]
    short = sessions is not None and sessions < metrics["config"]["periods_per_year"]

    def series_label(name: str) -> str:  # the spec: say so beside the annualised figures of a window under a year
        return f"{name} (annualised from {sessions} sessions)" if short and name in ANNUALISED_FIGURES else name

    series = [
        [
            series_label(name),
            fmt(name, pf.get(name)),
            interval_text(name, ci.get(name)) if name in ci else "",
            ci_methods.get(name, ""),
            fmt(name, baselines["always_long"].get(name)),
            fmt(name, baselines["always_short"].get(name)),
            fmt(name, bm.get(name)),
        ]
        for name in SERIES_FIGURES
    ]
    confusion = [
        [a, *[str(v) for v in row], str(metrics["unparsed_by_true_action"][a])]
        for a, row in zip(ACTIONS, metrics["confusion_matrix"])
    ]
    month_columns = list(metrics["per_month"][0]) if metrics["per_month"] else ["month"]
    months = [[fmt(c, m[c]) if c != "month" else m[c] for c in month_columns] for m in metrics["per_month"]]
    tables = [
        (
            "Classification and signal",
            ["figure", "value", "95% CI", "CI method", "p", "p method", "baseline"],
            headline,
        ),
        ("Mean forward return by predicted action", ["predicted action", "mean return", "rows"], by_action),
        (
            "Portfolio against the baselines",
            ["figure", "portfolio", "95% CI", "CI method", "always long", "always short", "equal-weight buy-and-hold"],
            series,
        ),
        (
            "Confusion matrix (rows: true action, columns: predicted)",
            ["true \\ predicted", *ACTIONS, UNPARSED_NAME],
            confusion,
        ),
        (
            "Per month (by month of as_of_date; each figure over the count beside it; "
            "portfolio and benchmark over that month's sessions)",
            month_columns,
            months,
        ),
    ]
    cue = metrics.get("planted_cue")
    if cue:
        subsets = [
            [
                label,
                fmt("rows", cue[key]["rows"]),
                fmt("accuracy", cue[key]["accuracy"]),
                interval_text("accuracy", cue[key]["ci95"]),
                fmt("p", cue[key]["p_value"]),
                f"always {cue[key]['majority_class']} {fmt('accuracy', cue[key]['majority_baseline_accuracy'])}",
            ]
            for key, label in (("cued", "with the desk note"), ("uncued", "without"))
        ]
        tables.insert(
            1,
            (
                "Planted cue (toy corpus): theses with and without the desk note",
                ["theses", "rows", "accuracy", "95% CI", "p", "majority baseline"],
                subsets,
            ),
        )
    cutoff = metrics.get("knowledge_cutoff")
    if cutoff:
        names = [*CUTOFF_FIGURES, "sharpe", "cumulative_return"]
        rows = [[side, *[fmt(n, figures[n]) for n in names]] for side, figures in cutoff["sides"].items()]
        tables.insert(
            1,
            (
                "The two sides of the base model's knowledge cutoff (the test window straddles it)",
                ["theses", *names],
                rows,
            ),
        )
    return tables


def _summary_lines(metrics: dict) -> list[str]:
    pf = metrics["portfolio"]
    horizons = ", ".join(str(h) for h in metrics["horizon_days"])
    lines = [
        f"{metrics['rows']:,} theses from {metrics['first_as_of_date']} to {metrics['last_as_of_date']}, "
        f"horizon {horizons} sessions, "
        f"prices from the {metrics['price_source']} source on the {metrics['calendar']} calendar.",
        "Return status: " + ", ".join(f"{k} {v:,}" for k, v in metrics["return_status_counts"].items()) + ".",
    ]
    if pf["available"]:
        lines.append(
            f"Portfolio: {pf['positions']:,} positions from {pf['start']} to {pf['end']}, "
            f"costs {pf['cost_bps']:g} bp a side; "
            f"{pf['rows_scored_zero']:,} rows scored 0 (HOLD or unparsed) hold nothing."
        )
        sessions = metrics["annualised_from_sessions"]
        if sessions is not None and sessions < metrics["config"]["periods_per_year"]:
            lines.append(
                f"CAGR, volatility, Sharpe, Sortino and Calmar are annualised from {sessions} sessions, under a year "
                f"({metrics['config']['periods_per_year']}): "
                "read them as the pace of a short window, not as a year's result."
            )
    else:
        lines.append(f"Portfolio: not computed: {pf['reason']}.")
    if pf["missing_positions"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in pf["missing_by_reason"].items())
        tickers = (
            f" Tickers the price source does not know: {', '.join(pf.get('missing_tickers') or [])}."
            if pf.get("missing_tickers")
            else ""
        )
        lines.append(
            f"Missing prices: {pf['missing_positions']:,} scored rows left out of the portfolio ({reasons}).{tickers}"
        )
    u = metrics["uncertainty"]
    lines.append(
        f"Intervals from {u['resamples']:,} bootstrap resamples ({methods_text(metrics['ci95_methods'])}), "
        f"p-values from {u['permutations']:,} permutations ({methods_text(metrics['p_value_methods'])}), "
        f"seed {u['seed']}."
    )
    return lines


def _headline_lines(metrics: dict) -> list[str]:
    """What a reader must see first: the toy caveat, whether there is evidence of skill,
    whether the cue came through."""
    lines = []
    if metrics.get("sample_corpus"):
        lines.append(
            "Toy corpus: these theses were generated from sample prices, half with a planted desk note "
            "(sftc_assets/theses/sample_corpus.py). The figures test the plumbing, not a strategy."
        )
    lines.append(metrics["verdict"]["sentence"])
    if metrics.get("planted_cue"):
        lines.append(metrics["planted_cue"]["verdict"])
    return lines


def render_markdown(metrics: dict) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = [
        "# Backtest report",
        "",
        *[f"**{line}**" for line in _headline_lines(metrics)],
        "",
        *_summary_lines(metrics),
        "",
        "![equity curve](equity_curve.png)",
        "",
    ]
    for title, header, rows in _tables(metrics):
        parts += [f"## {title}", "", row(header), "|" + "---|" * len(header), *[row(r) for r in rows], ""]
    parts += [
        "![confusion matrix](confusion.png)",
        "",
        "## Definitions",
        "",
        *[f"- {line}" for line in DEFINITIONS],
        "",
    ]
    return "\n".join(parts)


def render_html(metrics: dict, images: dict[str, bytes]) -> str:
    """A single self-contained page: the images are inlined."""

    def image(name: str, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'

    body = [f"<p><strong>{html.escape(line)}</strong></p>" for line in _headline_lines(metrics)]
    body += [f"<p>{html.escape(line)}</p>" for line in _summary_lines(metrics)]
    body.append(image("equity_curve.png", "equity curve"))
    for title, header, rows in _tables(metrics):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        body.append(f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    body.append(image("confusion.png", "confusion matrix"))
    body.append("<h2>Definitions</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in DEFINITIONS) + "</ul>")
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Backtest report</title>'
        f"<style>{style}</style></head>"
        f"<body><h1>Backtest report</h1>{''.join(body)}</body></html>\n"
    )


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

    figure, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(9, 5.5),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1], "left": 0.09, "right": 0.98, "top": 0.94, "bottom": 0.07},
    )
    if daily.empty:
        top.text(0.5, 0.5, "no portfolio: no position had prices", ha="center", va="center", transform=top.transAxes)
    else:
        # The curves start at 1 on the close of the first entry, the session before the first daily return.
        days = daily.index.insert(0, pd.Timestamp(start))
        for column, label in (
            ("book_return", "portfolio (net of costs)"),
            ("gross_return", "portfolio before costs"),
            ("benchmark_return", "equal-weight buy-and-hold"),
        ):
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
    top.set_title("Equity curve", y=1.0)  # y given: no tick label above the axes to measure and clear
    return _png(figure)


def plot_confusion(metrics: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(
        [row + [metrics["unparsed_by_true_action"][a]] for a, row in zip(ACTIONS, metrics["confusion_matrix"])]
    )
    figure, axes = plt.subplots(figsize=(7, 5), gridspec_kw={"left": 0.2, "right": 0.97, "top": 0.93, "bottom": 0.2})
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(ACTIONS) + 1), [*ACTIONS, UNPARSED_NAME], rotation=30, ha="right")
    axes.set_yticks(range(len(ACTIONS)), ACTIONS)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), value in np.ndenumerate(counts):
        axes.text(j, i, f"{value:,}", ha="center", va="center", color="white" if value > threshold else "black")
    axes.set_title(f"Confusion matrix ({metrics['rows']:,} rows)", y=1.0)  # as the equity curve's title
    return _png(figure)


# --- the whole run --------------------------------------------------------------------------------


def run_backtest(
    eval_path: Path | str,
    report_dir: Path | str,
    source: PriceSource,
    config: BacktestConfig,
    calendar: str = "XNYS",
    stamp: BeforeSwap | None = None,
    *,
    sample_corpus: bool = False,
    cues: Mapping[str, str] | None = None,
    unseen_from: dt.date | None = None,
) -> dict:
    """Read the eval CSV(s), compute every figure, write the six report files (the directory replaced whole);
    returns the metrics.

    `sample_corpus`: the theses are the toy profile's generated ones (the report says its figures test the plumbing);
    `cues`: thesis id -> the action of its planted desk note (`test_split_cues`), for the planted-cue figures;
    `unseen_from`: the first as-of date past the base model's knowledge cutoff; a window that starts before it is
    also reported on each side of it.
    """
    frame = read_eval_csv(eval_path, raw_output=False)  # the model's text is no figure of the backtest
    if frame.empty:
        raise ValueError(f"{eval_path}: no rows to backtest (the eval CSV files hold only headers)")
    metrics, result, daily = compute_backtest(frame, source, config, calendar, cues)
    metrics["sample_corpus"] = sample_corpus
    metrics["knowledge_cutoff"] = _json_safe(cutoff_sides(frame, source, config, calendar, unseen_from))
    images = {
        "equity_curve.png": plot_equity_curve(result.daily, result.portfolio.get("start")),
        "confusion.png": plot_confusion(metrics),
    }
    texts = {
        "metrics.json": json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False) + "\n",
        "daily_returns.csv": daily.to_csv(date_format="%Y-%m-%d", lineterminator="\n"),
        "report.md": render_markdown(metrics),
        "report.html": render_html(metrics, images),
    }
    with atomic_dir(report_dir, stamp) as staging:
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for name, data in images.items():
            (staging / name).write_bytes(data)
    return metrics


def test_split_cues(dataset_dir: Path | str) -> dict[str, str]:
    """Thesis id -> the action its planted desk note points to, for the test theses of the hf_splits at `dataset_dir`
    that carry one (sample_corpus.planted_cue on their support points, as the generator wrote them)."""
    test = load_splits(dataset_dir)["test"].select_columns(["id", "support"])
    return {row["id"]: cue for row in test if (cue := planted_cue(row["support"])) is not None}


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
                problems.append(
                    f"{side}.cumulative_return = {figures.get('cumulative_return')}: equity must stay above 0"
                )
            if not figures.get("days"):
                problems.append(f"{side} has no days")
    if metrics["portfolio"].get("turnover") is not None and metrics["portfolio"]["turnover"] < 0:
        problems.append("portfolio.turnover is negative")
    for name, interval in metrics.get("ci95", {}).items():
        if interval is not None and not interval[0] <= interval[1]:
            problems.append(f"ci95.{name} = {interval}: the low end is above the high end")
    for name, p in metrics.get("p_values", {}).items():
        within(f"p_values.{name}", p, 0.0, 1.0)
    return problems
