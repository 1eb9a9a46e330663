"""`sftc backtest` on eval CSVs written by hand (not by our writer), the report files, the asset and its check."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from backtest_helpers import hand_rows, write_hand_csv
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from sftc_assets.backtest.report import REPORT_FILES, sanity_problems
from sftc_core.artifacts import DIR_MARKER
from sftc_core.target_format import ACTIONS
from sftc_core.text import format_share
from sftc_jobs.cli import main as sftc


def test_backtest_gives_the_spec_figures_on_a_hand_written_csv(data_dir, capsys):
    rows = hand_rows()
    write_hand_csv(data_dir / "in" / "eval.csv", rows)
    assert (
        sftc(["backtest", "--eval-csv", str(data_dir / "in" / "eval.csv"), "--report", str(data_dir / "report")]) == 0
    )
    assert sorted(p.name for p in (data_dir / "report").iterdir()) == sorted(
        [*REPORT_FILES, DIR_MARKER]
    )  # the report and its marker
    metrics = json.loads((data_dir / "report" / "metrics.json").read_text())

    true = [r["true_action"] for r in rows]
    predicted = [r["predicted_action"] for r in rows]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(true, predicted, labels=list(ACTIONS), average="macro", zero_division=0)
    )
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(true, predicted))
    scores = {"STRONG_BUY": 1, "BUY": 0.5, "HOLD": 0, "SELL": -0.5, "STRONG_SELL": -1, "": 0}
    with_return = [r for r in rows if r["forward_return"]]
    ic = spearmanr(
        [scores[r["predicted_action"]] for r in with_return], [float(r["forward_return"]) for r in with_return]
    ).statistic
    assert metrics["ic"] == pytest.approx(ic)
    for key in (
        "directional_accuracy",
        "parse_rate",
        "majority_baseline_accuracy",
        "long_short_spread",
        "mean_return_by_action",
        "confusion_matrix",
    ):
        assert key in metrics
    for side in ("portfolio", "benchmark"):
        for key in (
            "cumulative_return",
            "cagr",
            "annualised_volatility",
            "sharpe",
            "sortino",
            "max_drawdown",
            "calmar",
            "hit_rate",
            "turnover",
        ):
            assert isinstance(metrics[side][key], float), (side, key)
    assert metrics["portfolio"]["missing_by_reason"]["return_status_unknown_ticker"] == sum(
        1 for r in rows if r["ticker"] == "ZZZ" and scores[r["predicted_action"]] != 0
    )
    statuses = Counter(r["return_status"] for r in rows)  # the statuses the rows have, none other
    assert metrics["return_status_counts"] == dict(sorted(statuses.items())) and len(statuses) == 2
    assert [m["month"] for m in metrics["per_month"]] == ["2012-09", "2012-10", "2012-11", "2012-12"]
    assert sum(m["rows"] for m in metrics["per_month"]) == len(rows)
    report = (data_dir / "report" / "report.md").read_text()
    assert "Missing prices:" in report and "## Per month" in report
    html = (data_dir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert (data_dir / "report" / "equity_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sanity_problems(data_dir / "report", len(rows)) == []
    assert '"rows": 60' in capsys.readouterr().out


def _series_figures(daily: pd.Series) -> dict[str, float]:
    """Sharpe, maximum drawdown and cumulative return of a daily series, as a quant computes them from the file."""
    equity = (1 + daily).cumprod()
    drawdown = min((equity / equity.cummax().clip(lower=1.0) - 1).min(), 0.0)  # equity starts at 1
    sharpe = daily.mean() / daily.std() * math.sqrt(252)
    return {"sharpe": sharpe, "max_drawdown": drawdown, "cumulative_return": equity.iloc[-1] - 1}


def test_daily_returns_csv_reproduces_the_reports_figures(data_dir):
    rows = hand_rows()
    write_hand_csv(data_dir / "in" / "eval.csv", rows)
    eval_csv, report_dir = data_dir / "in" / "eval.csv", data_dir / "report"
    assert sftc(["backtest", "--eval-csv", str(eval_csv), "--report", str(report_dir)]) == 0
    metrics = json.loads((report_dir / "metrics.json").read_text())
    daily = pd.read_csv(report_dir / "daily_returns.csv", index_col="date", parse_dates=["date"])
    assert list(daily.columns) == [
        "book_return",
        "gross_exposure",
        "open_positions",
        "benchmark_return",
        "always_long_return",
        "always_short_return",
    ]
    assert daily.index.is_monotonic_increasing and daily.index.is_unique
    baselines = metrics["baselines"]
    books = {
        "book_return": metrics["portfolio"],
        "benchmark_return": metrics["benchmark"],
        "always_long_return": baselines["always_long"],
        "always_short_return": baselines["always_short"],
    }
    for column, figures in books.items():
        series = daily[column].dropna()
        assert len(series) == figures["days"], column
        for name, value in _series_figures(series).items():
            assert value == pytest.approx(figures[name], rel=1e-12, abs=1e-15), (column, name)
    book = daily.dropna(subset=["book_return"])
    assert str(book.index[0].date()) > metrics["portfolio"]["start"]  # the first entry's close: nothing held over it
    assert str(book.index[-1].date()) == metrics["portfolio"]["end"]
    # Open positions and exposure: every scored row with prices is open from the session after its entry to its exit.
    scores = {"STRONG_BUY": 1, "BUY": 0.5, "HOLD": 0, "SELL": -0.5, "STRONG_SELL": -1, "": 0}
    held = [
        (pd.Timestamp(r["entry_date"]), pd.Timestamp(r["exit_date"]), abs(scores[r["predicted_action"]]))
        for r in rows
        if r["return_status"] == "ok" and scores[r["predicted_action"]]
    ]
    for day, session in book.iterrows():
        open_now = [weight for entry, exit_, weight in held if entry < day <= exit_]
        assert session["open_positions"] == len(open_now) and session["gross_exposure"] == pytest.approx(sum(open_now))
    assert metrics["portfolio"]["invested_days"] == int((book["open_positions"] > 0).sum())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"true_action": "ACCUMULATE"}, "row 3, column true_action: 'ACCUMULATE' is not an action"),
        ({"as_of_date": "2012/10/01"}, "row 3, column as_of_date: '2012/10/01' is not a date"),
        ({"forward_return": "n/a"}, "row 3, column forward_return: 'n/a' is not a number"),
    ],
)
def test_bad_input_is_named_and_leaves_no_report(data_dir, capsys, change, message):
    rows = hand_rows(8)
    rows[2] = {**rows[2], **change}
    write_hand_csv(data_dir / "bad.csv", rows)
    assert sftc(["backtest", "--eval-csv", str(data_dir / "bad.csv"), "--report", str(data_dir / "report")]) == 2
    assert message in capsys.readouterr().err
    assert not (data_dir / "report").exists()


def test_missing_columns_are_named(data_dir, capsys):
    write_hand_csv(data_dir / "bad.csv", hand_rows(4))
    frame = pd.read_csv(data_dir / "bad.csv", dtype=str, keep_default_na=False).drop(
        columns=["exit_date", "return_status"]
    )
    frame.to_csv(data_dir / "bad.csv", index=False)
    assert sftc(["backtest", "--eval-csv", str(data_dir / "bad.csv"), "--report", str(data_dir / "report")]) == 2
    assert "missing column(s) exit_date, return_status" in capsys.readouterr().err


def test_all_prices_missing_still_reports_classification_and_says_why(data_dir):
    rows = [{**r, "ticker": "ZZZ", "forward_return": "", "return_status": "unknown_ticker"} for r in hand_rows(12)]
    write_hand_csv(data_dir / "eval.csv", rows)
    assert sftc(["backtest", "--eval-csv", str(data_dir / "eval.csv"), "--report", str(data_dir / "report")]) == 0
    metrics = json.loads((data_dir / "report" / "metrics.json").read_text())
    assert metrics["accuracy"] is not None and metrics["ic"] is None
    assert metrics["portfolio"]["available"] is False and metrics["portfolio"]["missing_positions"] > 0
    assert "Portfolio: not computed" in (data_dir / "report" / "report.md").read_text()
    assert sanity_problems(data_dir / "report", len(rows)) == []


def test_sanity_finds_broken_reports(data_dir):
    write_hand_csv(data_dir / "eval.csv", hand_rows(12))
    sftc(["backtest", "--eval-csv", str(data_dir / "eval.csv"), "--report", str(data_dir / "report")])
    metrics_path = data_dir / "report" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["accuracy"] = 1.5
    metrics["portfolio"]["max_drawdown"] = 0.2
    metrics["ci95"]["accuracy"] = [0.6, 0.4]
    metrics["p_values"]["ic"] = 1.2
    metrics_path.write_text(json.dumps(metrics))
    (data_dir / "report" / "confusion.png").unlink()
    problems = sanity_problems(data_dir / "report", 13)
    assert "confusion.png is missing" in problems
    assert any(p.startswith("accuracy = 1.5") for p in problems)
    assert any(p.startswith("portfolio.max_drawdown = 0.2") for p in problems)
    assert "ci95.accuracy = [0.6, 0.4]: the low end is above the high end" in problems
    assert any(p.startswith("p_values.ic = 1.2") for p in problems)
    assert any("eval CSVs hold 13" in p for p in problems)


def test_backtest_report_asset_reads_every_month_and_passes_its_check(data_dir):
    import dagster as dg
    from stage_helpers import mark_as_written, settings_with, stage_definitions

    from sftc_assets.backtest import assets

    rows = hand_rows(40)
    for month in ("2012-09", "2012-10", "2012-11"):  # 2012-12 not materialized yet: reported, not fatal
        write_hand_csv(
            data_dir / "eval" / f"{month}.csv",
            sorted((r for r in rows if r["as_of_date"].startswith(month)), key=lambda r: r["as_of_date"]),
        )
    write_hand_csv(data_dir / "eval" / "2011-01.csv", hand_rows(3))  # outside the test window: ignored
    mark_as_written("eval_csv", *(data_dir / "eval" / f"{month}.csv" for month in ("2012-09", "2012-10", "2012-11")))
    # Hand-written rows carry no planted cue: the toy settings without one (tests/test_backtest_planted_cue.py has it).
    result = dg.materialize(stage_definitions(assets.defs, settings_with(corpus={"cue_share": 0.0})))
    assert result.success
    (materialization,) = result.asset_materializations_for_node("backtest_report")
    metadata = materialization.metadata
    expected_rows = sum(1 for r in rows if r["as_of_date"][:7] in ("2012-09", "2012-10", "2012-11"))
    assert metadata["rows"].value == expected_rows and metadata["months_missing"].value == "2012-12"
    assert "data:image/png;base64," in metadata["equity_curve"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "backtest_sanity" and check.passed
    metrics = json.loads((data_dir / "backtest" / "metrics.json").read_text())
    assert metrics["rows"] == expected_rows
    # The figures people act on carry their uncertainty, baselines, horizon and sessions in the metadata too.
    assert (
        metadata["verdict"].value == metrics["verdict"]["sentence"]
        and metadata["evidence_of_skill"].value == metrics["verdict"]["skill"]
    )
    low, high = metrics["ci95"]["accuracy"]
    assert metadata["accuracy_ci95"].value == f"{format_share(low)} to {format_share(high)}"
    # metadata figures to 3 significant digits; metrics.json keeps them exact
    assert metadata["p_value_accuracy"].value == pytest.approx(metrics["p_values"]["accuracy"], rel=5e-3)
    assert metadata["p_value_ic"].value == pytest.approx(metrics["p_values"]["ic"], rel=5e-3)
    assert metadata["always_short_directional_accuracy"].value == pytest.approx(
        metrics["baselines"]["always_short"]["directional_accuracy"], rel=5e-3
    )
    assert metadata["majority_baseline_accuracy"].value == pytest.approx(
        metrics["baselines"]["majority"]["accuracy"], rel=5e-3
    )
    assert (
        metadata["horizon_sessions"].value == "5"
        and metadata["annualised_from_sessions"].value == metrics["portfolio"]["days"]
    )
    methods = metadata["interval_methods"].value
    assert methods.startswith(
        "accuracy, mcc, directional_accuracy: multinomial; ic: row bootstrap; "
        "sharpe: stationary block bootstrap (mean block "
    )
    assert metadata["p_value_methods"].value == "accuracy: permutation (multivariate hypergeometric); ic: permutation"
    assert metadata["daily_returns"].value == str(data_dir / "backtest" / "daily_returns.csv")


def test_a_window_straddling_the_knowledge_cutoff_is_reported_on_both_sides(data_dir):
    """The theses whose outcomes the base model may have read about are reported apart from the unseen ones."""
    from sftc_assets.backtest.report import run_backtest
    from sftc_core.configs import BacktestConfig, load_backtest_config
    from sftc_platform.prices import LocalPriceSource

    source = LocalPriceSource(data_dir / "prices", sample_fallback=True)
    rows = hand_rows()
    write_hand_csv(data_dir / "in" / "eval.csv", rows)
    config: BacktestConfig = load_backtest_config()
    boundary = pd.Timestamp("2012-10-15")
    metrics = run_backtest(
        data_dir / "in" / "eval.csv", data_dir / "report", source, config, unseen_from=boundary.date()
    )
    sides = metrics["knowledge_cutoff"]["sides"]
    before, after = (sides[k] for k in sorted(sides))  # "before ..." sorts ahead of "from ..."
    assert metrics["knowledge_cutoff"]["unseen_from"] == "2012-10-15"
    seen = [r for r in rows if pd.Timestamp(r["as_of_date"]) < boundary]
    assert before["rows"] == len(seen) and after["rows"] == len(rows) - len(seen) and 0 < len(seen) < len(rows)
    assert before["accuracy"] == pytest.approx(
        accuracy_score([r["true_action"] for r in seen], [r["predicted_action"] for r in seen])
    )
    report = (data_dir / "report" / "report.md").read_text()
    assert (
        "## The two sides of the base model's knowledge cutoff" in report and "(outcomes the model may know)" in report
    )

    unsplit = run_backtest(
        data_dir / "in" / "eval.csv",
        data_dir / "report2",
        source,
        config,
        unseen_from=pd.Timestamp("2012-01-01").date(),
    )
    assert unsplit["knowledge_cutoff"] is None  # the whole window after the cutoff: one report, no sides


def test_the_sanity_check_called_directly_counts_the_eval_rows_it_was_given(data_dir):
    from sftc_assets.backtest.assets import check_backtest_sanity

    september = data_dir / "eval" / "2012-09.csv"
    write_hand_csv(september, hand_rows(12))
    assert sftc(["backtest", "--eval-csv", str(september), "--report", str(data_dir / "report")]) == 0
    result = check_backtest_sanity(data_dir / "report", [september])
    assert result.passed and result.metadata["problem_count"].value == 0
    write_hand_csv(data_dir / "eval" / "2012-10.csv", hand_rows(3))  # a month the report was not written from
    result = check_backtest_sanity(data_dir / "report", [september, data_dir / "eval" / "2012-10.csv"])
    assert not result.passed and any("eval CSVs hold" in p for p in result.metadata["problems"].value)


def test_the_planted_cue_check_called_directly_reads_the_verdict_of_the_report(tmp_path):
    from sftc_assets.backtest.assets import check_planted_cue_recovered
    from sftc_assets.backtest.report import cue_verdict, planted_cue_figures
    from sftc_core.configs import load_backtest_config
    from sftc_core.metrics import label_codes

    missing = check_planted_cue_recovered(tmp_path)
    assert not missing.passed
    assert missing.description == f"{tmp_path / 'metrics.json'} has no planted_cue figures: materialize backtest_report"
    rng = np.random.default_rng(0)
    true = rng.choice(ACTIONS, 400)
    cue = np.where(rng.random(400) < 0.5, true, "")
    following, scrambled = np.where(cue != "", cue, rng.choice(ACTIONS, 400)), rng.permutation(true)
    for predicted, p_value in ((following, 0.001), (scrambled, 0.4)):
        figures = planted_cue_figures(label_codes(true), label_codes(predicted), cue, load_backtest_config())
        metrics = {"planted_cue": figures, "p_values": {"accuracy": p_value}}
        figures["recovered"], figures["verdict"] = cue_verdict(metrics)
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        result = check_planted_cue_recovered(tmp_path)
        assert result.passed == figures["recovered"] == (p_value < 0.01) and result.description == figures["verdict"]
        assert result.metadata["cued_rows"].value == (cue != "").sum()
        assert result.metadata["p_value_accuracy"].value == p_value
