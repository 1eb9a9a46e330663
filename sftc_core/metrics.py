"""The figures of docs/eval-and-backtest.md: classification, signal and daily-series metrics (numpy, vectorised).

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
import pyarrow as pa
import pyarrow.compute as pc

from sftc_core.target_format import ACTIONS

UNPARSED = ""
UNPARSED_NAME = "UNPARSED"  # how reports and JSON keys name the empty label


def none_if_nan(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


LABELS = (*ACTIONS, UNPARSED)  # the order of label codes
LABELS_ARROW = pa.array(LABELS, type=pa.large_string())


def label_codes(values) -> np.ndarray:
    """Index in LABELS per value (0..4 the actions, 5 unparsed, as is a missing value), looked up in Arrow's hash of the
    six labels: text never becomes a million Python strings. A Categorical (read_eval_csv's columns) has only its
    categories looked up, each of which must be a label."""

    def not_a_label(value) -> ValueError:
        return ValueError(f"{value!r} is not an action ({', '.join(ACTIONS)}) or empty")

    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        return np.append(label_codes(values.cat.categories), len(LABELS) - 1)[values.cat.codes]  # code -1: missing
    try:
        array = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a value that is no text
        raise not_a_label(next(v for v in values if not isinstance(v, str) and not pd.isna(v))) from None
    codes = pc.index_in(array, value_set=LABELS_ARROW)
    if codes.null_count:
        unknown = pc.and_(pc.is_null(codes), pc.is_valid(array))
        if pc.any(unknown).as_py():
            raise not_a_label(array[pc.index(unknown, True).as_py()].as_py())
        codes = pc.fill_null(codes, len(LABELS) - 1)
    return codes.to_numpy().astype(np.int64)


def action_scores(predicted, scores: Mapping[str, float]) -> np.ndarray:
    """Score per predicted action; an unparsed prediction ("") scores 0."""
    return scores_from_codes(label_codes(predicted), scores)


def label_scores(scores: Mapping[str, float]) -> np.ndarray:
    """The score of each label of LABELS; an unparsed prediction ("") scores 0."""
    return np.asarray([*(scores[a] for a in ACTIONS), 0.0], dtype="float64")


def scores_from_codes(predicted_codes: np.ndarray, scores: Mapping[str, float]) -> np.ndarray:
    return label_scores(scores)[predicted_codes]


def confusion_counts(
    true_codes: np.ndarray, predicted_codes: np.ndarray, group: np.ndarray | None = None, groups: int = 1
) -> np.ndarray:
    """6x6 counts over LABELS: rows true, columns predicted (the last row stays 0: truth is always an action); with
    `group` (an id in 0..groups-1 per row) one such table per group, groups x 6 x 6, from one count."""
    size = len(LABELS)
    if group is None:
        return np.bincount(true_codes * size + predicted_codes, minlength=size * size).reshape(size, size)
    keys = (np.asarray(group, dtype=np.int64) * size + true_codes) * size + predicted_codes
    return np.bincount(keys, minlength=groups * size * size).reshape(groups, size, size)


def matthews_from_confusions(counts: np.ndarray) -> np.ndarray:
    """Multiclass Matthews correlation (Gorodkin's R_K, as scikit-learn computes it) of each K x K confusion matrix
    of `counts` (..., K, K); 0 where undefined, NaN where a matrix counts no rows."""
    c = counts.astype("float64")
    total = c.sum(axis=(-2, -1))
    correct = np.trace(c, axis1=-2, axis2=-1)
    true_sum, pred_sum = c.sum(axis=-1), c.sum(axis=-2)
    cov = correct * total - (pred_sum * true_sum).sum(axis=-1)
    denominator = np.sqrt((total**2 - (pred_sum**2).sum(axis=-1)) * (total**2 - (true_sum**2).sum(axis=-1)))
    mcc = np.divide(cov, denominator, out=np.zeros_like(cov), where=denominator > 0)
    return np.where(total > 0, mcc, np.nan)


def matthews_from_confusion(counts: np.ndarray) -> float | None:
    """`matthews_from_confusions` of one matrix; None when it counts no rows."""
    return none_if_nan(float(matthews_from_confusions(counts)))


def classification_metrics(true, predicted) -> dict:
    """Accuracy, macro-F1 over the five actions, MCC, the 5x5 confusion matrix (+ unparsed per true class),
    parse rate and the majority-class baseline."""
    return classification_from_codes(label_codes(true), label_codes(predicted))


def classification_from_codes(true_codes: np.ndarray, predicted_codes: np.ndarray) -> dict:
    return classification_from_confusion(confusion_counts(true_codes, predicted_codes))


def classification_from_confusion(counts: np.ndarray) -> dict:
    """The classification figures of a 6x6 table of `confusion_counts`."""
    n = int(counts.sum())
    five = counts[: len(ACTIONS), : len(ACTIONS)]
    tp = np.diag(five).astype("float64")
    predicted_as = five.sum(axis=0)
    true_as = counts[: len(ACTIONS)].sum(axis=1)
    denominator = predicted_as + true_as
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(ACTIONS)), where=denominator > 0)
    return {
        "rows": int(n),
        "accuracy": none_if_nan(tp.sum() / n) if n else None,
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


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Per value, the index of its group of equal values in ascending order (NaN: the group after the last), and
    the number of groups of finite values."""
    finite = np.isfinite(values)
    distinct, inverse = np.unique(values[finite], return_inverse=True)
    groups = np.full(len(values), len(distinct), dtype=np.int64)
    groups[finite] = inverse
    return groups, len(distinct)


def per_row_counts(keys: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """bincount of each row of `keys` (c x k ids in 0..size, `size` meaning none): c x size."""
    c = keys.shape[0]
    flat = (keys + (size + 1) * np.arange(c)[:, None]).ravel()
    counts = np.bincount(flat, weights=None if weights is None else weights.ravel(), minlength=c * (size + 1))
    return counts.reshape(c, size + 1)[:, :size]


def drawn_spearman(x: np.ndarray, y: np.ndarray):
    """A function of drawn rows giving the Spearman rank correlation of x with y over them, one value per draw.

    It takes `rows` (c x k row indices, one resample or permutation per row of the array) and optionally `x_rows`
    (x read from other rows than y: a permutation of x), and pairs x[x_rows[b, j]] with y[rows[b, j]] where y is
    finite; ties share their average rank; NaN under 2 pairs or with a constant side. The values are grouped once,
    so a draw costs a few passes over its rows and no sort.
    """
    x_groups, nx = _tie_groups(np.asarray(x, dtype="float64"))
    y_groups, ny = _tie_groups(np.asarray(y, dtype="float64"))

    def of(rows: np.ndarray, x_rows: np.ndarray | None = None) -> np.ndarray:
        gy = y_groups[rows]
        gx = np.where(gy < ny, x_groups[rows if x_rows is None else x_rows], nx)  # a pair without y counts nowhere
        count_x, count_y = per_row_counts(gx, nx), per_row_counts(gy, ny)
        pairs = count_y.sum(axis=1)
        mean_rank = ((pairs + 1) / 2)[:, None]
        # A tie group of count G after C pairs holds the ranks C+1..C+G: their mean is C + (G + 1) / 2.
        rank_x = np.cumsum(count_x, axis=1) - (count_x - 1) / 2 - mean_rank
        rank_y = np.cumsum(count_y, axis=1) - (count_y - 1) / 2 - mean_rank
        rank_y_of_pair = np.take_along_axis(np.concatenate([rank_y, np.zeros((len(rows), 1))], axis=1), gy, axis=1)
        cross = per_row_counts(gx, nx, rank_y_of_pair)  # per x group, the sum of its pairs' centred y ranks
        cov = (rank_x * cross).sum(axis=1)
        var_x, var_y = (count_x * rank_x * rank_x).sum(axis=1), (count_y * rank_y * rank_y).sum(axis=1)
        denominator = np.sqrt(var_x * var_y)
        rho = np.divide(
            cov, denominator, out=np.full(len(rows), np.nan), where=denominator > 1e-9 * np.maximum(pairs, 1) ** 3
        )
        return np.where(pairs >= 2, rho, np.nan)

    return of


# Per (true, predicted) pair of labels three cells: no direction (a zero score or no return), a directional miss, a hit.
DIRECTION_KINDS = 3
CELLS = len(LABELS) * len(LABELS) * DIRECTION_KINDS


def direction_kinds(score: np.ndarray, forward_return: np.ndarray) -> np.ndarray:
    """Per row: 0 no direction (a zero score or no return), 1 a directional miss, 2 a hit (the score has the return's
    sign)."""
    score_sign = np.sign(score)
    directional = (score_sign != 0) & np.isfinite(forward_return)
    return np.where(directional, 1 + (score_sign == np.sign(forward_return)), 0)


def classification_cells(
    true_codes: np.ndarray, predicted_codes: np.ndarray, score: np.ndarray, forward_return: np.ndarray
) -> np.ndarray:
    """Each row's cell (0..CELLS-1) of the table of true label x predicted label x direction kind: every
    classification figure is a function of the table's counts, so a row bootstrap can draw the counts instead."""
    size = len(LABELS)
    return (true_codes * size + predicted_codes) * DIRECTION_KINDS + direction_kinds(score, forward_return)


def cell_figures(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, Matthews correlation and directional accuracy of each table of counts (..., CELLS), NaN where a
    figure counts no rows."""
    size = len(LABELS)
    cells = counts.reshape(*counts.shape[:-1], size, size, DIRECTION_KINDS)
    confusion = cells.sum(axis=-1)
    total = confusion.sum(axis=(-2, -1))
    correct = np.trace(confusion[..., : len(ACTIONS), : len(ACTIONS)], axis1=-2, axis2=-1)
    hits, directional_rows = cells[..., 2].sum(axis=(-2, -1)), cells[..., 1:].sum(axis=(-3, -2, -1))
    return {
        "accuracy": np.divide(correct, total, out=np.full(total.shape, np.nan), where=total > 0),
        "mcc": matthews_from_confusions(confusion),
        "directional_accuracy": np.divide(
            hits, directional_rows, out=np.full(total.shape, np.nan), where=directional_rows > 0
        ),
    }


def directional_accuracy(score: np.ndarray, forward_return: np.ndarray) -> float | None:
    """Share of the rows with a non-zero score and a return whose score has the return's sign;
    None without such rows."""
    kinds = direction_kinds(np.asarray(score, dtype="float64"), forward_return)
    directional_rows = np.count_nonzero(kinds)
    return float(np.count_nonzero(kinds == 2) / directional_rows) if directional_rows else None


def signal_metrics(predicted, scores: Mapping[str, float], forward_return: np.ndarray) -> dict:
    """Over rows with a return: IC, mean return per predicted action, long-short spread, directional accuracy; each
    row scored by its predicted action (`scores`)."""
    return signal_from_codes(label_codes(predicted), scores, forward_return)


def signal_from_codes(
    predicted_codes: np.ndarray,
    scores: Mapping[str, float],
    forward_return: np.ndarray,
    by_return: np.ndarray | None = None,
) -> dict:
    """The signal figures over every row: `signals_by_group` of one group."""
    return signals_by_group(predicted_codes, scores, forward_return, by_return=by_return)[0]


def signals_by_group(
    predicted_codes: np.ndarray,
    scores: Mapping[str, float],
    forward_return: np.ndarray,
    group: np.ndarray | None = None,
    groups: int = 1,
    by_return: np.ndarray | None = None,
) -> list[dict]:
    """`signal_metrics` of each group of rows (`group`: an id in 0..groups-1 per row; None: every row in one), from
    counts keyed by (group, predicted label), not a pass per group. `by_return` is np.argsort(forward_return) (NaN
    last) where the caller has it: one sort of the returns ranks them for every grouping of the rows."""
    size = len(LABELS)
    key = predicted_codes if group is None else np.asarray(group, dtype=np.int64) * size + predicted_codes
    has_return = np.isfinite(forward_return)
    returns, label_key = forward_return[has_return], key[has_return]
    # Rows per (group, label, sign of the return: falling, flat, rising) and their returns' sum, in row order.
    by_sign = np.bincount(label_key * 3 + np.sign(returns).astype(np.int64) + 1, minlength=groups * size * 3)
    by_sign = by_sign.reshape(groups, size, 3)
    by_label = by_sign.sum(axis=2)
    return_by_label = np.bincount(label_key, weights=returns, minlength=groups * size).reshape(groups, size)
    score = label_scores(scores)
    ranked = (np.argsort(forward_return) if by_return is None else by_return)[: len(returns)]
    ic = _ic_by_group(key, group, groups, forward_return, ranked, by_label, score)
    long, short = score > 0, score < 0
    longs, shorts = by_label[:, long].sum(axis=1), by_label[:, short].sum(axis=1)
    long_sum, short_sum = return_by_label[:, long].sum(axis=1), return_by_label[:, short].sum(axis=1)
    hits = by_sign[:, long, 2].sum(axis=1) + by_sign[:, short, 0].sum(axis=1)
    figures = []
    for k in range(groups):
        mean_by_action = {
            (label or UNPARSED_NAME): {
                "mean_return": float(return_by_label[k, i] / by_label[k, i]) if by_label[k, i] else None,
                "rows": int(by_label[k, i]),
            }
            for i, label in enumerate(LABELS)
        }
        directional_rows = int(longs[k] + shorts[k])
        figures.append(
            {
                "rows_with_return": int(by_label[k].sum()),
                "ic": none_if_nan(ic[k]),
                "mean_return_by_action": mean_by_action,
                "long_short_spread": (
                    float(long_sum[k] / longs[k] - short_sum[k] / shorts[k]) if longs[k] and shorts[k] else None
                ),
                "directional_accuracy": int(hits[k]) / directional_rows if directional_rows else None,
                "directional_rows": directional_rows,
            }
        )
    return figures


def _ic_by_group(
    key: np.ndarray,
    group: np.ndarray | None,
    groups: int,
    forward_return: np.ndarray,
    ranked: np.ndarray,
    by_label: np.ndarray,
    score: np.ndarray,
) -> np.ndarray:
    """The Spearman rank correlation (average ranks for ties) of the score with the return over each group's rows with
    a return (NaN where undefined); `key` is group * len(LABELS) + label per row, `ranked` those rows in ascending
    return, `by_label` their count per (group, label), `score` each label's.

    The rows grouped by a stable sort of the small group ids (a radix sort) keep their returns in order, so a run of
    equal ones within a group shares its average rank; a score's average rank comes from the counts of the labels
    scored below it. Ranks are centred on the group's mean rank (n + 1) / 2: half-integers, so their sums stay exact."""
    size = len(LABELS)
    pairs = by_label.sum(axis=1)
    if groups > 1:
        ranked = ranked[np.argsort(group.astype(np.min_scalar_type(groups - 1))[ranked], kind="stable")]
    # The keys gathered from their smallest integer type: a gather in return order reads at random, fewer cache lines.
    ranked_key, r = key.astype(np.min_scalar_type(groups * size - 1))[ranked], forward_return[ranked]
    g = ranked_key // size
    new_run = np.ones(len(r), dtype=bool)
    new_run[1:] = (r[1:] != r[:-1]) | (g[1:] != g[:-1])
    run_first = np.flatnonzero(new_run)
    run_last = np.append(run_first[1:], len(r)) - 1
    run_group = g[run_first]
    # A run at positions first..last of its group (from 0) holds the ranks first+1..last+1; their mean less the
    # group's mean rank.
    first_of_group = np.cumsum(pairs) - pairs
    run_rank = (run_first + run_last - 2 * first_of_group[run_group] - pairs[run_group] + 1) / 2
    rank_y = run_rank[np.cumsum(new_run) - 1]
    # Each group's sum over its runs pairwise (numpy's sum of a slice): a bincount's running sum drifts by ~1e-13
    # over a million runs.
    run_terms = (run_last - run_first + 1) * run_rank * run_rank
    run_bounds = np.searchsorted(run_group, np.arange(groups + 1))
    var_y = np.array([run_terms[a:b].sum() for a, b in zip(run_bounds[:-1], run_bounds[1:])])
    values, value_of_label = np.unique(score, return_inverse=True)
    # Labels that share a score (HOLD and unparsed) are one tie of it: counts and rank sums added up per score value.
    same_score = np.eye(len(values))[value_of_label]
    count_x = by_label @ same_score
    cross = np.bincount(ranked_key, weights=rank_y, minlength=groups * size).reshape(groups, size) @ same_score
    rank_x = np.cumsum(count_x, axis=1) - (count_x - 1) / 2 - ((pairs + 1) / 2)[:, None]
    cov = (rank_x * cross).sum(axis=1)
    var_x = (count_x * rank_x * rank_x).sum(axis=1)
    denominator = np.sqrt(var_x * var_y)
    return np.divide(
        cov, denominator, out=np.full(groups, np.nan), where=denominator > 1e-9 * np.maximum(pairs, 1) ** 3
    )


def series_metrics(
    daily: np.ndarray, periods_per_year: int = 252, risk_free_rate: float = 0.0, invested: np.ndarray | None = None
) -> dict:
    """Figures of a daily return series; `invested` (bool per day) limits the hit rate to days with positions."""
    r = np.asarray(daily, dtype="float64")
    n = len(r)
    if n == 0:
        return {
            "days": 0,
            "cumulative_return": None,
            "cagr": None,
            "annualised_volatility": None,
            "sharpe": None,
            "sortino": None,
            "max_drawdown": None,
            "calmar": None,
            "hit_rate": None,
        }
    equity = np.cumprod(1.0 + r)
    cumulative = float(equity[-1] - 1.0)
    cagr = float(equity[-1] ** (periods_per_year / n) - 1.0) if equity[-1] > 0 else -1.0
    excess = r - risk_free_rate / periods_per_year
    std = float(r.std(ddof=1)) if n > 1 else float("nan")
    sharpe = float(sharpe_ratios(r[None], np.ones((1, n), dtype=bool), periods_per_year, risk_free_rate)[0])
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    running_max = np.maximum.accumulate(np.concatenate(([1.0], equity)))
    max_drawdown = float(np.min(np.concatenate(([1.0], equity)) / running_max - 1.0))
    hit_days = r[invested] if invested is not None else r
    return {
        "days": int(n),
        "cumulative_return": cumulative,
        "cagr": cagr,
        "annualised_volatility": none_if_nan(std * math.sqrt(periods_per_year)),
        "sharpe": none_if_nan(sharpe),
        "sortino": none_if_nan(excess.mean() / downside * math.sqrt(periods_per_year)) if downside > 0 else None,
        "max_drawdown": max_drawdown,
        "calmar": none_if_nan(cagr / abs(max_drawdown)) if max_drawdown < 0 else None,
        "hit_rate": float((hit_days > 0).mean()) if len(hit_days) else None,
    }


def sharpe_ratios(
    daily: np.ndarray, days: np.ndarray, periods_per_year: int = 252, risk_free_rate: float = 0.0
) -> np.ndarray:
    """Annualised Sharpe ratio of each row of `daily` (c x D) over its days where `days` (c x D, bool) holds: mean
    excess return over the sample standard deviation (ddof 1) times sqrt(periods_per_year); NaN where undefined."""
    count = days.sum(axis=1)
    safe = np.maximum(count, 1)
    mean = np.where(days, daily, 0.0).sum(axis=1) / safe
    deviation = np.where(days, daily - mean[:, None], 0.0)
    std = np.sqrt((deviation * deviation).sum(axis=1) / np.maximum(count - 1, 1))
    excess = mean - risk_free_rate / periods_per_year
    defined = (count > 1) & (std > 1e-15)
    return np.where(defined, excess / np.where(defined, std, 1.0) * math.sqrt(periods_per_year), np.nan)
