"""Intervals, p-values and baselines (spec v3): each method against the plain resampling it stands for (rows drawn
with replacement, predictions shuffled, arch called directly), within Monte Carlo error; and the report's words."""

from __future__ import annotations

import json
import math
from html import escape as html_escape

import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import IIDBootstrap, StationaryBootstrap, optimal_block_length
from backtest_helpers import hand_rows, write_hand_csv
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, matthews_corrcoef

from sftc_assets.backtest import uncertainty
from sftc_assets.backtest.portfolio import backtest_portfolio
from sftc_assets.backtest.report import compute_backtest, skill_verdict
from sftc_assets.evaluation.results import read_eval_csv
from sftc_core.configs import load_backtest_config
from sftc_core.metrics import CELLS, cell_figures, classification_cells, label_codes, scores_from_codes
from sftc_core.text import format_share
from sftc_jobs.cli import main as sftc
from sftc_platform.prices import LocalPriceSource

CONFIG = load_backtest_config()


@pytest.fixture
def frame(data_dir) -> pd.DataFrame:
    write_hand_csv(data_dir / "eval.csv", hand_rows(60))
    return read_eval_csv(data_dir / "eval.csv")


@pytest.fixture
def source(data_dir) -> LocalPriceSource:
    return LocalPriceSource(data_dir / "prices", sample_fallback=True)


def _arrays(frame: pd.DataFrame):
    true, predicted = label_codes(frame["true_action"]), label_codes(frame["predicted_action"])
    forward = frame["forward_return"].to_numpy(dtype="float64")
    return true, predicted, scores_from_codes(predicted, CONFIG.scores), forward


def _directional(score: np.ndarray, forward: np.ndarray) -> float:
    """Directional accuracy by its definition: over the rows with a non-zero score and a return."""
    directional = (score != 0) & np.isfinite(forward)
    return float(np.mean(np.sign(score[directional]) == np.sign(forward[directional])))


def _row_bootstrap(
    frame: pd.DataFrame, score: np.ndarray, forward: np.ndarray, resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """The plain row bootstrap: rows drawn with replacement, each figure from its definition (MCC: scikit-learn)."""
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[float]] = {"accuracy": [], "mcc": [], "directional_accuracy": []}
    true, predicted = frame["true_action"].to_numpy(), frame["predicted_action"].to_numpy()
    for _ in range(resamples):
        rows = rng.integers(0, len(frame), len(frame))
        drawn["accuracy"].append(np.mean(true[rows] == predicted[rows]))
        drawn["mcc"].append(matthews_corrcoef(true[rows], predicted[rows]))
        drawn["directional_accuracy"].append(_directional(score[rows], forward[rows]))
    return {name: np.array(values) for name, values in drawn.items()}


def test_the_cells_of_drawn_rows_give_the_figures_of_those_rows(frame):
    """The multinomial draws rest on this: a table's counts give accuracy, MCC and directional accuracy exactly."""
    true, predicted, score, forward = _arrays(frame)
    cells = classification_cells(true, predicted, score, forward)
    for rows in np.random.default_rng(3).integers(0, len(frame), size=(12, len(frame))):
        figures = cell_figures(np.bincount(cells[rows], minlength=CELLS))
        drawn = frame.iloc[rows]
        true_action, predicted_action = drawn["true_action"], drawn["predicted_action"]
        assert figures["accuracy"] == pytest.approx(accuracy_score(true_action, predicted_action))
        assert figures["mcc"] == pytest.approx(matthews_corrcoef(true_action, predicted_action))
        assert figures["directional_accuracy"] == pytest.approx(_directional(score[rows], forward[rows]))


def test_the_multinomial_intervals_match_a_plain_row_bootstrap(frame):
    true, predicted, score, forward = _arrays(frame)
    resamples = 1500
    cells = classification_cells(true, predicted, score, forward)
    counted = uncertainty.multinomial_intervals(cells, resamples, 7)
    plain = _row_bootstrap(frame, score, forward, resamples, 11)
    directional_rows = int(((score != 0) & np.isfinite(forward)).sum())
    # Monte Carlo error: the percentiles of 1500 draws of a figure of 60 rows land within a step of it (1/60 for
    # accuracy; seen at most 1 step, and 0.01 for MCC, over four seeds): 2.5 steps, 0.03 for MCC.
    tolerances = {"accuracy": 2.5 / len(frame), "mcc": 0.03, "directional_accuracy": 2.5 / directional_rows}
    for name, tolerance in tolerances.items():
        expected = np.percentile(plain[name], [2.5, 97.5])
        assert counted[name] == pytest.approx(list(expected), abs=tolerance), name
    assert counted == uncertainty.multinomial_intervals(cells, resamples, 7)  # the seed fixes the draws
    assert counted != uncertainty.multinomial_intervals(cells, resamples, 8)


def test_the_shuffled_tables_keep_both_margins_and_match_plain_shuffles(frame):
    true, _, _, _ = _arrays(frame)
    rng = np.random.default_rng(2)
    # A weak signal, so that the p-value lies well inside (0, 1) and can be compared.
    guessed = rng.choice(frame["true_action"], len(frame))
    predicted = label_codes(np.where(rng.random(len(frame)) < 0.15, frame["true_action"], guessed))
    tables = uncertainty.shuffled_tables(true, predicted, 4000, np.random.default_rng(5))
    assert (tables.sum(axis=2) == np.bincount(true, minlength=5)).all()
    assert (tables.sum(axis=1) == np.bincount(predicted, minlength=6)).all()
    correct = np.trace(tables[:, :, :5], axis1=1, axis2=2)
    shuffled = np.array([(true == predicted[rng.permutation(len(true))]).sum() for _ in range(4000)])
    assert correct.mean() == pytest.approx(shuffled.mean(), abs=4 * shuffled.std() / math.sqrt(2000))
    assert correct.std() == pytest.approx(shuffled.std(), rel=0.08)
    observed = int((true == predicted).sum())
    p_counted = uncertainty.accuracy_p_value(true, predicted, 4000, 0)
    p_plain = (1 + (shuffled >= observed).sum()) / 4001
    assert 0.01 < p_plain < 0.5
    assert p_counted == pytest.approx(p_plain, abs=4 * math.sqrt(2 * p_plain * (1 - p_plain) / 4000))  # 4 std errors
    # A prediction that is the truth itself: no shuffle does as well, p is the smallest possible.
    assert uncertainty.accuracy_p_value(true, true, 400, 5) == pytest.approx(1 / 401)


def test_the_ic_below_the_fisher_rows_by_row_bootstrap_and_shuffles(frame):
    """Up to FISHER_ROWS rows with a return: the IC's draws are plain draws of those rows, figure by figure."""
    _, _, score, forward = _arrays(frame)
    config = CONFIG.model_copy(update={"bootstrap_resamples": 300, "permutations": 300, "seed": 5})
    has_return = np.isfinite(forward)
    x, y = score[has_return], forward[has_return]
    ic = spearmanr(x, y).statistic
    interval, method, p, p_method = uncertainty.ic_uncertainty(score, forward, ic, config)
    assert (method, p_method) == (uncertainty.ROW_BOOTSTRAP, uncertainty.SHUFFLES)
    rng = np.random.default_rng([5, uncertainty.IC_BOOTSTRAP_STREAM])
    drawn = [spearmanr(x[rows], y[rows]).statistic for rows in rng.integers(0, len(y), size=(300, len(y)))]
    assert interval == pytest.approx(list(np.percentile(drawn, [2.5, 97.5])))
    rng = np.random.default_rng([5, uncertainty.IC_PERMUTATION_STREAM])
    orders = uncertainty.shuffled_rows(rng, 300, len(y))
    reached = sum(spearmanr(x[order], y).statistic >= ic - 1e-12 for order in orders)
    assert p == pytest.approx((1 + reached) / 301)


def test_the_ic_above_the_fisher_rows_by_its_normal_limits():
    """Over FISHER_ROWS rows with a return the Fisher z interval and the shuffles' normal limit stand in for the
    draws: they agree with a row bootstrap and plain shuffles within Monte Carlo error, and say so."""
    rng = np.random.default_rng(0)
    n = uncertainty.FISHER_ROWS + 1000
    score = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], n)
    forward = 0.02 * rng.standard_normal(n) + 0.0002 * score
    ic = spearmanr(score, forward).statistic
    config = CONFIG.model_copy(update={"bootstrap_resamples": 1000, "permutations": 1000})
    interval, method, p, p_method = uncertainty.ic_uncertainty(score, forward, ic, config)
    assert (method, p_method) == (uncertainty.FISHER_Z, uncertainty.NORMAL_LIMIT)
    drawn = [spearmanr(score[rows], forward[rows]).statistic for rows in rng.integers(0, n, size=(400, n))]
    half_width = (interval[1] - interval[0]) / 2
    assert interval == pytest.approx(list(np.percentile(drawn, [2.5, 97.5])), abs=0.15 * half_width)
    shuffled = np.array([spearmanr(score[rng.permutation(n)], forward).statistic for _ in range(1000)])
    p_plain = (1 + (shuffled >= ic).sum()) / 1001
    assert 0.01 < p < 0.5 and p == pytest.approx(p_plain, abs=4 * math.sqrt(2 * p * (1 - p) / 1000))
    not_drawn = CONFIG.model_copy(update={"bootstrap_resamples": 0, "permutations": 0})  # the config's "not computed"
    nothing = (None, uncertainty.FISHER_Z, None, uncertainty.NORMAL_LIMIT)
    assert uncertainty.ic_uncertainty(score, forward, ic, not_drawn) == nothing


def _autocorrelated_returns(sessions: int, seed: int) -> np.ndarray:
    """Daily returns of a book whose positions last about ten sessions: an AR(1) with coefficient 0.9."""
    rng = np.random.default_rng(seed)
    shocks, daily = rng.normal(0.0, 0.004, sessions), np.zeros(sessions)
    for day in range(1, sessions):
        daily[day] = 0.9 * daily[day - 1] + shocks[day]
    return daily + 0.0005


def _iid_interval(daily: np.ndarray) -> np.ndarray:
    """The Sharpe ratio's interval from an iid bootstrap of the days (arch), at the configured resamples."""
    sharpe = uncertainty.sharpe_of(CONFIG.periods_per_year, CONFIG.risk_free_rate)
    return IIDBootstrap(daily, seed=CONFIG.seed).conf_int(sharpe, CONFIG.bootstrap_resamples, method="percentile")[:, 0]


def test_the_block_interval_is_wider_than_an_iid_day_bootstrap_on_autocorrelated_returns():
    daily = _autocorrelated_returns(750, 1)
    interval, block = uncertainty.sharpe_interval(daily, CONFIG)
    assert block > 5  # Politis and White see the dependence
    iid = _iid_interval(daily)
    assert interval[1] - interval[0] > 1.5 * (iid[1] - iid[0])
    # Independent days: the block length falls to about one session and the two intervals agree.
    independent = np.random.default_rng(2).normal(0.0005, 0.01, 750)
    interval, block = uncertainty.sharpe_interval(independent, CONFIG)
    iid = _iid_interval(independent)
    assert block < 2 and interval == pytest.approx(list(iid), abs=0.15 * (iid[1] - iid[0]))


def test_the_sharpe_interval_is_arch_called_on_daily_returns_csv(data_dir):
    write_hand_csv(data_dir / "eval.csv", hand_rows(60))
    assert sftc(["backtest", "--eval-csv", str(data_dir / "eval.csv"), "--report", str(data_dir / "report")]) == 0
    metrics = json.loads((data_dir / "report" / "metrics.json").read_text())
    daily = pd.read_csv(data_dir / "report" / "daily_returns.csv")["book_return"].dropna().to_numpy()
    block = max(1.0, optimal_block_length(daily)["stationary"].iloc[0])
    sharpe = uncertainty.sharpe_of(CONFIG.periods_per_year, CONFIG.risk_free_rate)
    bootstrap = StationaryBootstrap(block, daily, seed=metrics["uncertainty"]["seed"])
    direct = bootstrap.conf_int(sharpe, CONFIG.bootstrap_resamples, method="percentile")
    assert metrics["ci95"]["sharpe"] == pytest.approx(list(direct[:, 0]), rel=1e-12)
    assert metrics["uncertainty"]["sharpe_mean_block_sessions"] == pytest.approx(block)
    assert metrics["ci95_methods"]["sharpe"] == uncertainty.block_method(block)
    assert metrics["ci95_methods"]["sharpe"].startswith("stationary block bootstrap (mean block ")


def test_baselines_and_the_verdict(frame, source):
    config = CONFIG.model_copy(update={"bootstrap_resamples": 500, "permutations": 500})
    metrics, _, _ = compute_backtest(frame, source, config)
    forward = frame["forward_return"].dropna().to_numpy()
    baselines = metrics["baselines"]
    assert baselines["majority"]["accuracy"] == frame["true_action"].value_counts().max() / len(frame)
    assert baselines["always_long"]["directional_accuracy"] == pytest.approx(np.mean(forward > 0))
    assert baselines["always_short"]["directional_accuracy"] == pytest.approx(np.mean(forward < 0))
    assert baselines["always_long"]["ic"] is None and baselines["always_short"]["ic"] is None
    long_book = backtest_portfolio(frame, np.ones(len(frame)), source).portfolio
    assert baselines["always_long"]["sharpe"] == pytest.approx(long_book["sharpe"])
    assert baselines["buy_and_hold"]["cumulative_return"] == metrics["benchmark"]["cumulative_return"]
    assert metrics["annualised_from_sessions"] == metrics["portfolio"]["days"] < 252
    block = metrics["uncertainty"]["sharpe_mean_block_sessions"]
    assert metrics["uncertainty"] == {
        "resamples": 500,
        "permutations": 500,
        "seed": 0,
        "sharpe_mean_block_sessions": block,
    }
    assert metrics["ci95_methods"] == {
        "accuracy": "multinomial",
        "mcc": "multinomial",
        "ic": "row bootstrap",
        "directional_accuracy": "multinomial",
        "sharpe": uncertainty.block_method(block),
    }
    assert metrics["p_value_methods"] == {"accuracy": "permutation (multivariate hypergeometric)", "ic": "permutation"}
    # Mostly right by construction against a third for the majority: skill; the interval moved onto the baseline: none.
    assert metrics["verdict"]["skill"] and metrics["verdict"]["sentence"].startswith(
        f"Evidence of skill: accuracy {format_share(metrics['accuracy'])} (95% CI "
    )
    no_skill = skill_verdict({**metrics, "ci95": {**metrics["ci95"], "accuracy": [0.2, 0.7]}})
    assert not no_skill["skill"] and "the interval does not lie above the baseline" in no_skill["sentence"]
    no_skill = skill_verdict({**metrics, "p_values": {**metrics["p_values"], "accuracy": 0.2}})
    assert not no_skill["skill"] and "p is not below 0.05" in no_skill["sentence"]


def test_the_report_puts_intervals_their_methods_p_values_and_baselines_beside_the_figures(data_dir, capsys):
    write_hand_csv(data_dir / "eval.csv", hand_rows(60))
    assert sftc(["backtest", "--eval-csv", str(data_dir / "eval.csv"), "--report", str(data_dir / "report")]) == 0
    metrics = json.loads((data_dir / "report" / "metrics.json").read_text())
    printed = json.loads(capsys.readouterr().out)  # the command's summary carries the verdict and the uncertainty too
    assert (
        printed["verdict"] == metrics["verdict"]["sentence"]
        and printed["ci95"] == metrics["ci95"]
        and printed["p_values"] == metrics["p_values"]
    )
    report = (data_dir / "report" / "report.md").read_text()
    low, high = metrics["ci95"]["accuracy"]
    assert (
        f"| accuracy | {format_share(metrics['accuracy'])} | {format_share(low)} to {format_share(high)} | "
        f"multinomial | {metrics['p_values']['accuracy']:.4f} | permutation (multivariate hypergeometric) | "
        "majority (always "
    ) in report
    assert "| ic | " in report and " | row bootstrap | " in report
    sharpe_row = next(line for line in report.splitlines() if line.startswith("| sharpe (annualised from "))
    assert f"| {metrics['ci95_methods']['sharpe']} |" in sharpe_row
    assert "| cumulative_return | " in report
    assert "| CI method | always long | always short | equal-weight buy-and-hold |" in report
    assert "sharpe: stationary block bootstrap (mean block " in report and "seed 0." in report
    assert metrics["verdict"]["sentence"] in report
    assert f"annualised from {metrics['annualised_from_sessions']} sessions, under a year" in report
    assert (
        "IC (information coefficient): Spearman rank correlation" in report
        and "hit rate: share of the sessions" in report
    )
    assert (
        "| month | rows | parse_rate | accuracy | macro_f1 | mcc | rows_with_return | ic | directional_rows |" in report
    )
    for month in metrics["per_month"]:
        assert month["sessions"] > 0 and month["rows_with_return"] <= month["rows"]
    assert "Toy corpus" not in report  # a hand-written CSV is no toy corpus
    html = (data_dir / "report" / "report.html").read_text()
    assert html_escape(metrics["verdict"]["sentence"]) in html and "<h2>Definitions</h2>" in html
