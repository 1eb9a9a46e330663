"""Intervals, p-values and baselines: the vectorised bootstrap and permutations against plain loops over the
definitions (the same draws, figure by figure), and the report's words about them."""

from __future__ import annotations

import json
from html import escape as html_escape

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, matthews_corrcoef
from backtest_helpers import hand_rows, write_hand_csv

from sftc_assets.backtest import uncertainty
from sftc_assets.backtest.portfolio import backtest_portfolio, load_positions
from sftc_assets.backtest.report import compute_backtest, skill_verdict
from sftc_assets.evaluation.results import read_eval_csv
from sftc_core.configs import load_backtest_config
from sftc_core.metrics import label_codes, scores_from_codes
from sftc_core.text import format_share
from sftc_jobs.cli import main as sftc
from sftc_resources.prices import LocalPriceSource

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


def test_each_resample_gives_the_figures_of_the_rows_it_drew(frame, source):
    true, predicted, score, forward = _arrays(frame)
    positions = load_positions(frame, source)
    figures = uncertainty.eval_figures(true, predicted, score, forward, positions, CONFIG)
    drawn = np.random.default_rng(3).integers(0, len(frame), size=(12, len(frame)))
    vectorised = figures(drawn)
    for b, rows in enumerate(drawn):
        resample = frame.iloc[rows].reset_index(drop=True)  # a row drawn twice is there twice
        t, p = resample["true_action"], resample["predicted_action"]
        assert vectorised["accuracy"][b] == pytest.approx(accuracy_score(t, p))
        assert vectorised["mcc"][b] == pytest.approx(matthews_corrcoef(t, p))
        with_return = np.isfinite(forward[rows])
        assert vectorised["ic"][b] == pytest.approx(spearmanr(score[rows][with_return], forward[rows][with_return]).statistic)
        directional = (score[rows] != 0) & with_return
        assert vectorised["directional_accuracy"][b] == pytest.approx(np.mean(np.sign(score[rows][directional]) == np.sign(forward[rows][directional])))
        rebuilt = backtest_portfolio(resample, score[rows], source, cost_bps=CONFIG.cost_bps)
        assert vectorised["sharpe"][b] == pytest.approx(rebuilt.portfolio["sharpe"], rel=1e-9)


def test_intervals_are_the_percentiles_of_the_resamples_and_fixed_by_the_seed(frame, source):
    true, predicted, score, forward = _arrays(frame)
    figures = uncertainty.eval_figures(true, predicted, score, forward, load_positions(frame, source), CONFIG)
    intervals = uncertainty.bootstrap_intervals(len(frame), 300, 7, figures)
    # The same draws by hand: the generator of the bootstrap stream, the same chunks.
    rng = np.random.default_rng([7, uncertainty.BOOTSTRAP_STREAM])
    accuracies = np.concatenate([figures(rng.integers(0, len(frame), size=(size, len(frame))))["accuracy"] for size in uncertainty._chunks(300, len(frame))])
    assert intervals["accuracy"] == pytest.approx(list(np.percentile(accuracies, [2.5, 97.5])))
    observed = accuracy_score(frame["true_action"], frame["predicted_action"])
    for name in uncertainty.CI_FIGURES:
        low, high = intervals[name]
        assert low < high
    assert intervals["accuracy"][0] < observed < intervals["accuracy"][1]
    assert uncertainty.bootstrap_intervals(len(frame), 300, 7, figures) == intervals
    assert uncertainty.bootstrap_intervals(len(frame), 300, 8, figures) != intervals


def test_p_values_count_the_permutations_that_reach_the_observed_figure(frame):
    true, predicted, score, forward = _arrays(frame)
    shuffled = uncertainty.shuffled_figures(true, predicted, score, forward)
    observed = {"accuracy": accuracy_score(frame["true_action"], frame["predicted_action"]),
                "ic": spearmanr(score[np.isfinite(forward)], forward[np.isfinite(forward)]).statistic}
    p = uncertainty.permutation_p_values(len(frame), 400, 5, observed, shuffled)
    # By hand: the same permutations, each figure from its definition.
    rng = np.random.default_rng([5, uncertainty.PERMUTATION_STREAM])
    reached = {"accuracy": 0, "ic": 0}
    with_return = np.isfinite(forward)
    for size in uncertainty._chunks(400, len(frame)):
        for order in uncertainty.shuffled_rows(rng, size, len(frame)):
            reached["accuracy"] += accuracy_score(frame["true_action"], frame["predicted_action"].to_numpy()[order]) >= observed["accuracy"] - 1e-12
            reached["ic"] += spearmanr(score[order][with_return], forward[with_return]).statistic >= observed["ic"] - 1e-12
    assert p == {name: pytest.approx((1 + reached[name]) / 401) for name in reached}
    orders = uncertainty.shuffled_rows(np.random.default_rng(0), 50, 7)
    assert (np.sort(orders, axis=1) == np.arange(7)).all() and len({tuple(o) for o in orders}) > 40  # permutations, varied
    assert p["accuracy"] < 0.01  # most of these predictions are right by construction
    # A prediction that is the truth itself: no permutation does as well, p is the smallest possible.
    perfect = uncertainty.shuffled_figures(true, true, score, forward)
    assert uncertainty.permutation_p_values(len(frame), 400, 5, {"accuracy": 1.0}, perfect)["accuracy"] == pytest.approx(1 / 401)


def test_baselines_and_the_verdict(frame, source):
    metrics, _ = compute_backtest(frame, source, CONFIG.model_copy(update={"bootstrap_resamples": 500, "permutations": 500}))
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
    assert metrics["uncertainty"] == {"method": "percentile bootstrap over theses; permutation of predicted actions",
                                      "resamples": 500, "permutations": 500, "seed": 0}
    # Mostly right by construction against a third for the majority: skill; the interval moved onto the baseline: none.
    assert metrics["verdict"]["skill"] and metrics["verdict"]["sentence"].startswith(f"Evidence of skill: accuracy {format_share(metrics['accuracy'])} (95% CI ")
    no_skill = skill_verdict({**metrics, "ci95": {**metrics["ci95"], "accuracy": [0.2, 0.7]}})
    assert not no_skill["skill"] and "the interval does not lie above the baseline" in no_skill["sentence"]
    no_skill = skill_verdict({**metrics, "p_values": {**metrics["p_values"], "accuracy": 0.2}})
    assert not no_skill["skill"] and "p is not below 0.05" in no_skill["sentence"]


def test_the_report_puts_intervals_p_values_and_baselines_beside_the_figures(data_dir, capsys):
    write_hand_csv(data_dir / "eval.csv", hand_rows(60))
    assert sftc(["backtest", "--eval-csv", str(data_dir / "eval.csv"), "--report", str(data_dir / "report")]) == 0
    metrics = json.loads((data_dir / "report" / "metrics.json").read_text())
    printed = json.loads(capsys.readouterr().out)  # the command's summary carries the verdict and the uncertainty too
    assert printed["verdict"] == metrics["verdict"]["sentence"] and printed["ci95"] == metrics["ci95"] and printed["p_values"] == metrics["p_values"]
    report = (data_dir / "report" / "report.md").read_text()
    low, high = metrics["ci95"]["accuracy"]
    assert f"| accuracy | {format_share(metrics['accuracy'])} | {format_share(low)} to {format_share(high)} | {metrics['p_values']['accuracy']:.4f} | majority (always " in report
    assert f"| sharpe (annualised from {metrics['annualised_from_sessions']} sessions) | " in report
    assert "| cumulative_return | " in report and "| always long | always short | equal-weight buy-and-hold |" in report
    assert metrics["verdict"]["sentence"] in report
    assert f"annualised from {metrics['annualised_from_sessions']} sessions, under a year" in report
    assert "IC (information coefficient): Spearman rank correlation" in report and "hit rate: share of the sessions" in report
    assert "| month | rows | parse_rate | accuracy | macro_f1 | mcc | rows_with_return | ic | directional_rows |" in report
    for month in metrics["per_month"]:
        assert month["sessions"] > 0 and month["rows_with_return"] <= month["rows"]
    assert "Toy corpus" not in report  # a hand-written CSV is no toy corpus
    html = (data_dir / "report" / "report.html").read_text()
    assert html_escape(metrics["verdict"]["sentence"]) in html and "<h2>Definitions</h2>" in html
