"""The figures of spec/eval-and-backtest.md: classification, signal and daily-series metrics (numpy, vectorised).

Conventions the spec leaves open, fixed here:
- an unparsed prediction is the label "" (as scikit-learn would see an empty string);
- a class with no true and no predicted rows has F1 0 in the macro mean (scikit-learn's zero_division=0);
- the majority baseline predicts the most frequent true action of the evaluated rows themselves;
- a return of exactly 0 has no direction, so a non-zero score against it is a directional miss;
- Sortino divides by the downside deviation sqrt(mean(min(r - rf, 0)^2)) over all days;
- a figure that is undefined (no rows, zero variance) is None, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from sftc_core.target_format import ACTIONS

UNPARSED = ""
UNPARSED_NAME = "UNPARSED"  # how reports and JSON keys name the empty label


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


LABELS = (*ACTIONS, UNPARSED)  # the order of label codes


def label_codes(values) -> np.ndarray:
    """Index in LABELS per value (0..4 the actions, 5 unparsed); hashing only the distinct values keeps 1M rows fast."""
    codes, uniques = pd.factorize(pd.Series(values, copy=False) if not isinstance(values, pd.Series) else values)
    position = {label: i for i, label in enumerate(LABELS)}
    unknown = [u for u in uniques if u not in position]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not an action ({', '.join(ACTIONS)}) or empty")
    return np.asarray([position[u] for u in uniques], dtype=np.int64)[codes] if len(uniques) else np.zeros(0, dtype=np.int64)


def action_scores(predicted, scores: Mapping[str, float]) -> np.ndarray:
    """Score per predicted action; an unparsed prediction ("") scores 0."""
    return scores_from_codes(label_codes(predicted), scores)


def scores_from_codes(predicted_codes: np.ndarray, scores: Mapping[str, float]) -> np.ndarray:
    return np.asarray([*(scores[a] for a in ACTIONS), 0.0], dtype="float64")[predicted_codes]


def confusion_counts(true_codes: np.ndarray, predicted_codes: np.ndarray) -> np.ndarray:
    """6x6 counts over LABELS: rows true, columns predicted (the last row stays 0: truth is always an action)."""
    size = len(LABELS)
    return np.bincount(true_codes * size + predicted_codes, minlength=size * size).reshape(size, size)


def matthews_from_confusion(counts: np.ndarray) -> float | None:
    """Multiclass Matthews correlation (Gorodkin's R_K, as scikit-learn computes it); 0 when undefined."""
    c = counts.astype("float64")
    total = c.sum()
    if total == 0:
        return None
    correct = np.trace(c)
    true_sum, pred_sum = c.sum(axis=1), c.sum(axis=0)
    cov = correct * total - pred_sum @ true_sum
    denominator = math.sqrt((total**2 - pred_sum @ pred_sum) * (total**2 - true_sum @ true_sum))
    return 0.0 if denominator == 0 else float(cov / denominator)


def classification_metrics(true, predicted) -> dict:
    """Accuracy, macro-F1 over the five actions, MCC, the 5x5 confusion matrix (+ unparsed per true class),
    parse rate and the majority-class baseline."""
    return classification_from_codes(label_codes(true), label_codes(predicted))


def classification_from_codes(true_codes: np.ndarray, predicted_codes: np.ndarray) -> dict:
    n = len(true_codes)
    counts = confusion_counts(true_codes, predicted_codes)
    five = counts[: len(ACTIONS), : len(ACTIONS)]
    tp = np.diag(five).astype("float64")
    predicted_as = five.sum(axis=0)
    true_as = counts[: len(ACTIONS)].sum(axis=1)
    denominator = predicted_as + true_as
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(ACTIONS)), where=denominator > 0)
    return {
        "rows": int(n),
        "accuracy": _none_if_nan(tp.sum() / n) if n else None,
        "macro_f1": float(f1.mean()) if n else None,
        "mcc": matthews_from_confusion(counts),
        "parse_rate": float(1.0 - counts[:, -1].sum() / n) if n else None,
        "majority_baseline_accuracy": float(true_as.max() / n) if n else None,
        "majority_class": ACTIONS[int(true_as.argmax())] if n else None,
        "f1_by_action": {a: float(v) for a, v in zip(ACTIONS, f1)},
        "confusion_labels": list(ACTIONS),
        "confusion_matrix": five.tolist(),
        "unparsed_by_true_action": {a: int(v) for a, v in zip(ACTIONS, counts[: len(ACTIONS), -1])},
    }


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (one sort; scores have 6 values, returns many ties)."""
    n = len(values)
    order = np.argsort(values)
    ordered = values[order]
    starts_group = np.ones(n, dtype=bool)
    starts_group[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], n)
    ranks = np.empty(n)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(starts_group) - 1]  # mean of ranks start+1..end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 2 rows or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = average_ranks(np.asarray(x, dtype="float64")), average_ranks(np.asarray(y, dtype="float64"))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    # Elementwise sums, not BLAS dot products: no thread pool to wake on a busy machine.
    denominator = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return None if denominator == 0 else float((rx * ry).sum() / denominator)


def signal_metrics(predicted, score: np.ndarray, forward_return: np.ndarray) -> dict:
    """Over rows with a return: IC, mean return per predicted action, long-short spread, directional accuracy."""
    return signal_from_codes(label_codes(predicted), score, forward_return)


def signal_from_codes(predicted_codes: np.ndarray, score: np.ndarray, forward_return: np.ndarray) -> dict:
    has_return = np.isfinite(forward_return)
    s, r = score[has_return], forward_return[has_return]
    codes = predicted_codes[has_return]
    counts = np.bincount(codes, minlength=len(LABELS))
    sums = np.bincount(codes, weights=r, minlength=len(LABELS))
    mean_by_action = {
        (label or UNPARSED_NAME): {"mean_return": float(sums[i] / counts[i]) if counts[i] else None, "rows": int(counts[i])}
        for i, label in enumerate(LABELS)
    }
    longs, shorts = r[s > 0], r[s < 0]
    directional = s != 0
    return {
        "rows_with_return": int(has_return.sum()),
        "ic": spearman(s, r),
        "mean_return_by_action": mean_by_action,
        "long_short_spread": float(longs.mean() - shorts.mean()) if len(longs) and len(shorts) else None,
        "directional_accuracy": float((np.sign(s[directional]) == np.sign(r[directional])).mean()) if directional.any() else None,
        "directional_rows": int(directional.sum()),
    }


def series_metrics(daily: np.ndarray, periods_per_year: int = 252, risk_free_rate: float = 0.0, invested: np.ndarray | None = None) -> dict:
    """Figures of a daily return series; `invested` (bool per day) limits the hit rate to days with positions."""
    r = np.asarray(daily, dtype="float64")
    n = len(r)
    if n == 0:
        return {"days": 0, "cumulative_return": None, "cagr": None, "annualised_volatility": None, "sharpe": None,
                "sortino": None, "max_drawdown": None, "calmar": None, "hit_rate": None}
    equity = np.cumprod(1.0 + r)
    cumulative = float(equity[-1] - 1.0)
    cagr = float(equity[-1] ** (periods_per_year / n) - 1.0) if equity[-1] > 0 else -1.0
    excess = r - risk_free_rate / periods_per_year
    std = float(r.std(ddof=1)) if n > 1 else float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    running_max = np.maximum.accumulate(np.concatenate(([1.0], equity)))
    max_drawdown = float(np.min(np.concatenate(([1.0], equity)) / running_max - 1.0))
    hit_days = r[invested] if invested is not None else r
    return {
        "days": int(n),
        "cumulative_return": cumulative,
        "cagr": cagr,
        "annualised_volatility": _none_if_nan(std * math.sqrt(periods_per_year)),
        "sharpe": _none_if_nan(excess.mean() / std * math.sqrt(periods_per_year)) if std and math.isfinite(std) else None,
        "sortino": _none_if_nan(excess.mean() / downside * math.sqrt(periods_per_year)) if downside > 0 else None,
        "max_drawdown": max_drawdown,
        "calmar": _none_if_nan(cagr / abs(max_drawdown)) if max_drawdown < 0 else None,
        "hit_rate": float((hit_days > 0).mean()) if len(hit_days) else None,
    }
