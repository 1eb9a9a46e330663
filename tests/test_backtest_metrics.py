"""Classification, signal and series figures against independent computations (scikit-learn, scipy, pandas, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
)

from sftc_core.configs import BacktestConfig, ConfigError, load_backtest_config
from sftc_core.metrics import (
    action_scores,
    classification_metrics,
    drawn_spearman,
    label_codes,
    scores_from_codes,
    series_metrics,
    signal_metrics,
    signals_by_group,
)
from sftc_core.target_format import ACTIONS

SCORES = load_backtest_config().scores


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """The reference: Spearman rank correlation (average ranks for ties) of all rows through drawn_spearman, the
    bootstrap's; None with fewer than 2 rows or a constant side."""
    value = float(drawn_spearman(x, y)(np.arange(len(x))[None])[0])
    return None if np.isnan(value) else value


def _random_predictions(n: int, seed: int, unparsed_share: float = 0.15):
    rng = np.random.default_rng(seed)
    true = rng.choice(ACTIONS, n, p=[0.1, 0.3, 0.3, 0.2, 0.1]).astype(object)
    predicted = np.where(rng.random(n) < 0.5, true, rng.choice(ACTIONS, n)).astype(object)
    predicted[rng.random(n) < unparsed_share] = ""
    return true, predicted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_scikit_learn(seed):
    true, predicted = _random_predictions(500, seed)
    got = classification_metrics(true, predicted)
    assert got["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert got["macro_f1"] == pytest.approx(
        f1_score(true, predicted, labels=list(ACTIONS), average="macro", zero_division=0)
    )
    assert got["mcc"] == pytest.approx(matthews_corrcoef(true, predicted))
    full = confusion_matrix(true, predicted, labels=[*ACTIONS, ""])
    assert got["confusion_matrix"] == full[:5, :5].tolist()
    assert list(got["unparsed_by_true_action"].values()) == full[:5, 5].tolist()
    assert got["parse_rate"] == pytest.approx(np.mean(predicted != ""))
    majority = pd.Series(true).value_counts().max() / len(true)
    assert got["majority_baseline_accuracy"] == pytest.approx(majority)


def test_classification_by_hand():
    true = np.array(["BUY", "BUY", "SELL", "HOLD"], dtype=object)
    predicted = np.array(["BUY", "", "SELL", "BUY"], dtype=object)
    got = classification_metrics(true, predicted)
    assert got["accuracy"] == 0.5 and got["parse_rate"] == 0.75
    # F1: BUY tp1 fp1 fn1 -> 0.5; SELL 1.0; HOLD 0; STRONG_* absent -> 0. Mean over five = 1.5/5.
    assert got["macro_f1"] == pytest.approx(0.3)
    assert got["f1_by_action"]["BUY"] == pytest.approx(0.5)
    assert got["unparsed_by_true_action"]["BUY"] == 1
    assert got["majority_baseline_accuracy"] == 0.5 and got["majority_class"] == "BUY"


def test_classification_degenerate_cases():
    assert classification_metrics(np.array([], dtype=object), np.array([], dtype=object))["accuracy"] is None
    same = np.array(["BUY"] * 4, dtype=object)
    assert classification_metrics(same, same)["mcc"] == matthews_corrcoef(same, same) == 0.0


@pytest.mark.parametrize(
    "values",
    [
        ["SELL", "", "STRONG_BUY", None, "HOLD", np.nan],
        pd.Series(["SELL", "", "STRONG_BUY", "", "HOLD", ""], dtype="str"),  # Arrow's strings
        pd.Series(pd.Categorical(["SELL", "", "STRONG_BUY", None, "HOLD", ""], [*ACTIONS, ""])),  # read_eval_csv's
    ],
)
def test_label_codes_index_the_labels_and_a_missing_value_is_unparsed(values):
    assert label_codes(values).tolist() == [3, 5, 0, 5, 2, 5]
    assert label_codes(np.array(["BUY", "SELL"])).tolist() == [1, 3] and label_codes([]).tolist() == []


@pytest.mark.parametrize("values", [["BUY", "buy", "FOO"], np.array(["BUY", None, 5, "FOO"], dtype=object)])
def test_label_codes_name_the_first_value_that_is_no_label(values):
    first = "'buy'" if "buy" in list(values) else "5"
    with pytest.raises(ValueError, match=rf"^{first} is not an action \(STRONG_BUY, BUY, HOLD, SELL, STRONG_SELL\)"):
        label_codes(values)


def test_scores_follow_the_config_and_unparsed_is_zero():
    predicted = np.array(["STRONG_BUY", "BUY", "HOLD", "SELL", "STRONG_SELL", ""], dtype=object)
    assert action_scores(predicted, SCORES).tolist() == [1.0, 0.5, 0.0, -0.5, -1.0, 0.0]


def test_signal_metrics_by_hand_and_against_scipy():
    predicted = np.array(["STRONG_BUY", "BUY", "SELL", "HOLD", "", "STRONG_SELL", "BUY"], dtype=object)
    forward = np.array([0.04, -0.01, -0.02, 0.005, 0.03, 0.01, np.nan])
    score = action_scores(predicted, SCORES)
    got = signal_metrics(predicted, SCORES, forward)
    assert got["rows_with_return"] == 6
    rho, _ = spearmanr(score[:6], forward[:6])
    assert got["ic"] == pytest.approx(rho)
    # Long: 0.04, -0.01 -> 0.015; short: -0.02, 0.01 -> -0.005; spread 0.02.
    assert got["long_short_spread"] == pytest.approx(0.02)
    # Non-zero scores with a return: SB +/+ hit, BUY +/- miss, SELL -/- hit, SS -/+ miss.
    assert (got["directional_accuracy"], got["directional_rows"]) == (0.5, 4)
    assert got["mean_return_by_action"]["BUY"] == {"mean_return": pytest.approx(-0.01), "rows": 1}
    assert got["mean_return_by_action"]["UNPARSED"] == {"mean_return": pytest.approx(0.03), "rows": 1}


@pytest.mark.parametrize(
    ("groups", "tied", "sorted_before"),
    [(1, False, False), (1, True, True), (7, True, False), (50, True, True), (60, False, True)],
)
def test_signals_by_group_equal_each_group_computed_alone(groups, tied, sorted_before):
    """Each group's figures from the one pass equal those of its rows alone: the IC `spearman`'s (average ranks for
    ties), the rest by hand; with rows without a return, and groups of no row, of one row, of no return."""
    rng = np.random.default_rng(groups)
    n = 3000
    codes = label_codes(_random_predictions(n, seed=groups)[1])
    score = scores_from_codes(codes, SCORES)
    forward = rng.normal(0.0, 0.03, n)
    if tied:
        forward = np.round(forward, 2)  # a few dozen values, 0 among them: long runs of ties
    forward[rng.random(n) < 0.1] = np.nan
    group = rng.integers(0, groups, n)
    if groups > 3:
        group[group >= groups - 2] = 0
        group[0] = groups - 1  # one row; groups - 2 has none
        forward[group == 1] = np.nan  # rows, none with a return
        forward[group == 2] = np.nanmin(forward[group == 3])  # one run of ties that ends where group 3's first begins
    by_return = np.argsort(forward) if sorted_before else None
    got = signals_by_group(codes, SCORES, forward, group, groups, by_return)
    assert len(got) == groups
    for k, figures in enumerate(got):
        has = (group == k) & np.isfinite(forward)
        s, r, c = score[has], forward[has], codes[has]
        assert figures["rows_with_return"] == has.sum()
        ic = spearman(s, r)
        assert figures["ic"] == (None if ic is None else pytest.approx(ic, abs=1e-12))
        longs, shorts = r[s > 0], r[s < 0]
        spread = longs.mean() - shorts.mean() if len(longs) and len(shorts) else None
        assert figures["long_short_spread"] == (None if spread is None else pytest.approx(spread, rel=1e-12, abs=1e-15))
        directional = s != 0
        hits = np.sign(s[directional]) == np.sign(r[directional])
        assert figures["directional_rows"] == directional.sum()
        assert figures["directional_accuracy"] == (hits.mean() if directional.any() else None)
        for i, label in enumerate([*ACTIONS, "UNPARSED"]):
            mean = r[c == i].mean() if (c == i).any() else None
            expected = {"mean_return": None if mean is None else pytest.approx(mean, rel=1e-12), "rows": (c == i).sum()}
            assert figures["mean_return_by_action"][label] == expected
    if groups == 1:
        assert got[0] == signal_metrics(np.array([*ACTIONS, ""], dtype=object)[codes], SCORES, forward)


def test_spearman_with_ties_matches_scipy_and_is_none_when_undefined():
    rng = np.random.default_rng(5)
    x = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], 300)
    y = rng.normal(size=300) + 0.1 * x
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman(np.ones(5), y[:5]) is None and spearman(x[:1], y[:1]) is None


def test_series_metrics_against_pandas_and_by_hand():
    r = np.array([0.01, -0.02, 0.015, 0.0, -0.01, 0.03])
    got = series_metrics(r, 252, 0.0)
    s = pd.Series(r)
    equity = (1 + s).cumprod()
    assert got["cumulative_return"] == pytest.approx(equity.iloc[-1] - 1)
    assert got["cagr"] == pytest.approx(equity.iloc[-1] ** (252 / 6) - 1)
    assert got["annualised_volatility"] == pytest.approx(s.std(ddof=1) * math.sqrt(252))
    assert got["sharpe"] == pytest.approx(s.mean() / s.std(ddof=1) * math.sqrt(252))
    downside = math.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert got["sortino"] == pytest.approx(s.mean() / downside * math.sqrt(252))
    # Equity 1.01, 0.9898, 1.004647, 1.004647, 0.99460, 1.02444: worst is 0.9898 / 1.01 - 1 = -0.02.
    assert got["max_drawdown"] == pytest.approx(-0.02)
    assert got["calmar"] == pytest.approx(got["cagr"] / 0.02)
    assert got["hit_rate"] == pytest.approx(3 / 6)
    with_rf = series_metrics(r, 252, 0.0252)
    assert with_rf["sharpe"] == pytest.approx((s.mean() - 0.0001) / s.std(ddof=1) * math.sqrt(252))


def test_drawdown_counts_a_fall_from_the_start():
    assert series_metrics(np.array([-0.1, 0.05]))["max_drawdown"] == pytest.approx(-0.1)
    flat = series_metrics(np.zeros(4))
    assert flat["sharpe"] is None and flat["calmar"] is None and flat["max_drawdown"] == 0.0


def test_config_needs_all_five_scores(tmp_path):
    path = tmp_path / "bt.yaml"
    path.write_text("scores: {BUY: 1.0}\n")
    with pytest.raises(ConfigError, match="scores must give exactly the actions"):
        load_backtest_config(path)
    assert BacktestConfig(scores=dict(SCORES)).cost_bps == 5.0
