"""The portfolio rules on a tiny hand case, against a day-by-day loop written from the spec's words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sftc_assets.backtest.portfolio import _session_index, backtest_portfolio, monthly_returns
from sftc_core.configs import load_backtest_config
from sftc_core.market import trading_sessions
from sftc_core.metrics import action_scores, series_metrics
from sftc_platform.prices import LocalPriceSource, write_price_file

SCORES = load_backtest_config().scores
COST = 5.0


@pytest.fixture
def prices(tmp_path):
    """Two tickers over Oct-Nov 2012 (Sandy closed 29-30 Oct): AAA rises 1 a session from 100, BBB alternates."""
    sessions = trading_sessions("XNYS")
    days = sessions[(sessions >= "2012-09-28") & (sessions <= "2012-11-30")]
    aaa = 100.0 + np.arange(len(days))
    bbb = 50.0 * np.cumprod(np.where(np.arange(len(days)) % 2 == 0, 1.02, 0.99))
    for name, adjusted in (("AAA", aaa), ("BBB", bbb)):
        frame = pd.DataFrame(
            {
                "date": days,
                "open": adjusted,
                "high": adjusted,
                "low": adjusted,
                "close": adjusted * 2,
                "adjusted_close": adjusted,
                "volume": 1000.0,
            }
        )
        write_price_file(tmp_path / f"{name}.parquet", frame)
    return LocalPriceSource(tmp_path), pd.Series(aaa, index=days), pd.Series(bbb, index=days)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ticker", "predicted_action", "entry_date", "exit_date", "return_status"])
    for column in ("entry_date", "exit_date"):
        frame[column] = pd.to_datetime(frame[column]).astype("datetime64[ns]")
    return frame


ROWS = [
    ("AAA", "STRONG_BUY", "2012-10-02", "2012-10-05", "ok"),
    ("BBB", "SELL", "2012-10-04", "2012-10-10", "ok"),
    ("AAA", "HOLD", "2012-10-03", "2012-10-09", "ok"),  # score 0: holds nothing
    ("AAA", "BUY", "2012-10-26", "2012-11-02", "ok"),  # across the Sandy closure
    ("BBB", "", "2012-10-05", "2012-10-12", "ok"),  # unparsed: score 0
]


def _by_hand(rows, series: dict[str, pd.Series], cost_bps: float) -> pd.Series:
    """The spec's words as a loop: weighted mean of open positions' daily returns over gross exposure,
    costs at both ends."""
    sessions = series["AAA"].index
    positions = [
        (t, SCORES.get(a, 0.0), pd.Timestamp(e), pd.Timestamp(x)) for t, a, e, x, _ in rows if SCORES.get(a, 0.0) != 0
    ]
    first_entry = min(e for _, _, e, _ in positions)
    last_exit = max(x for _, _, _, x in positions)
    out = {}
    days = [d for d in sessions if first_entry < d <= last_exit]
    for day in days:
        previous = sessions[sessions.get_loc(day) - 1]
        open_now = [(t, w, e, x) for t, w, e, x in positions if e < day <= x]
        gross = sum(abs(w) for _, w, _, _ in open_now)
        if not gross:
            out[day] = 0.0
            continue
        pnl = sum(w * (series[t][day] / series[t][previous] - 1) for t, w, _, _ in open_now)
        first_day = lambda e: sessions[sessions.get_loc(e) + 1]  # noqa: E731
        traded = sum(abs(w) for _, w, e, x in open_now if first_day(e) == day) + sum(
            abs(w) for _, w, _, x in open_now if x == day
        )
        out[day] = (pnl - cost_bps / 1e4 * traded) / gross
    return pd.Series(out)


def test_book_returns_follow_the_spec(prices):
    source, aaa, bbb = prices
    frame = _frame(ROWS)
    result = backtest_portfolio(
        frame, action_scores(frame["predicted_action"].to_numpy(object), SCORES), source, cost_bps=COST
    )
    expected = _by_hand(ROWS, {"AAA": aaa, "BBB": bbb}, COST)
    got = result.daily["book_return"]
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-15)
    # Spot values by hand: 3 Oct only AAA (w 1) is open, its first day: 103/102 - 1 - 5bp.
    assert got["2012-10-03"] == pytest.approx(103 / 102 - 1 - 0.0005)
    # 5 Oct: AAA (exit day, w 1) and BBB (first day, w -0.5): (1*r_A - 0.5*r_B - 5bp*(1 + 0.5)) / 1.5.
    r_a, r_b = aaa["2012-10-05"] / aaa["2012-10-04"] - 1, bbb["2012-10-05"] / bbb["2012-10-04"] - 1
    assert got["2012-10-05"] == pytest.approx((r_a - 0.5 * r_b - 0.0005 * 1.5) / 1.5)
    assert got["2012-10-15"] == 0.0  # nothing open
    assert pd.Timestamp("2012-10-29") not in got.index  # closed: no session


def test_a_lone_position_compounds_to_its_forward_return(prices):
    source, aaa, _ = prices
    frame = _frame([ROWS[3]])
    result = backtest_portfolio(frame, np.array([0.5]), source, cost_bps=0.0)
    assert np.prod(1 + result.daily["gross_return"]) - 1 == pytest.approx(aaa["2012-11-02"] / aaa["2012-10-26"] - 1)
    assert result.portfolio["positions"] == 1 and result.portfolio["turnover"] == pytest.approx(2 / len(result.daily))


def test_costs_equal_turnover_times_the_rate(prices):
    source, _, _ = prices
    frame = _frame(ROWS)
    result = backtest_portfolio(
        frame, action_scores(frame["predicted_action"].to_numpy(object), SCORES), source, cost_bps=COST
    )
    drag = (result.daily["gross_return"] - result.daily["book_return"]).mean()
    assert drag == pytest.approx(result.portfolio["turnover"] * COST / 1e4)
    assert result.portfolio["rows_scored_zero"] == 2 and result.portfolio["positions"] == 3


def test_figures_are_the_series_figures_and_the_benchmark_holds_equal_weights(prices):
    source, aaa, bbb = prices
    frame = _frame(ROWS)
    result = backtest_portfolio(
        frame, action_scores(frame["predicted_action"].to_numpy(object), SCORES), source, cost_bps=COST
    )
    invested = result.daily["gross_exposure"].to_numpy() > 0
    figures = series_metrics(result.daily["book_return"].to_numpy(), invested=invested)
    assert {k: result.portfolio[k] for k in figures} == figures
    window = aaa.loc["2012-10-02":"2012-11-02"].index
    equity = (aaa[window] / aaa[window[0]] + bbb[window] / bbb[window[0]]) / 2
    np.testing.assert_allclose(
        (1 + result.daily["benchmark_return"]).cumprod().to_numpy(), (equity / equity.iloc[0]).iloc[1:].to_numpy()
    )
    assert result.benchmark["tickers"] == ["AAA", "BBB"] and result.benchmark["turnover"] == 0.0
    months = monthly_returns(result.daily, "book_return")
    assert list(months) == ["2012-10", "2012-11"]
    assert months["2012-11"] == pytest.approx(np.prod(1 + result.daily.loc["2012-11", "book_return"]) - 1)


def test_missing_prices_are_counted_and_the_rest_is_backtested(prices):
    source, _, _ = prices
    rows = ROWS + [
        ("NOPE", "BUY", "2012-10-02", "2012-10-09", "ok"),  # unknown to the source though the CSV has a return
        ("AAA", "SELL", "2012-11-26", "2012-12-03", "ok"),  # exit after the price file ends
        ("BBB", "BUY", "2012-10-02", "2012-10-09", "unknown_ticker"),
        ("AAA", "STRONG_SELL", "2012-11-27", "2012-12-04", "beyond_data"),
    ]
    frame = _frame(rows)
    result = backtest_portfolio(
        frame, action_scores(frame["predicted_action"].to_numpy(object), SCORES), source, cost_bps=COST
    )
    assert result.portfolio["available"] and result.portfolio["positions"] == 3
    assert result.portfolio["missing_by_reason"] == {
        "return_status_beyond_data": 1,
        "return_status_unknown_ticker": 1,
        "unknown_ticker_at_source": 1,
        "no_price_at_source": 1,
    }
    assert result.portfolio["missing_tickers"] == ["NOPE"]


def test_no_position_at_all_says_why(prices):
    source, _, _ = prices
    frame = _frame(
        [("AAA", "HOLD", "2012-10-02", "2012-10-09", "ok"), ("AAA", "BUY", "2012-10-02", "2012-10-09", "no_price")]
    )
    result = backtest_portfolio(frame, action_scores(frame["predicted_action"].to_numpy(object), SCORES), source)
    assert not result.portfolio["available"] and result.daily.empty
    assert "no row has both a non-zero score and a forward return" in result.portfolio["reason"]
    assert result.portfolio["missing_by_reason"] == {"return_status_no_price": 1}


def test_session_index_is_a_search_of_the_sessions():
    """Each day's index is where np.searchsorted puts it among the sessions, and it is a session only when it is one:
    days before, between (a weekend, a closed session, a time within a day) and after them."""
    sessions = trading_sessions("XNYS")
    sessions = sessions[(sessions >= "2012-10-01") & (sessions <= "2012-11-30")].to_numpy()
    days = np.array(
        ["2012-01-01", "2012-10-01", "2012-10-06", "2012-10-29", "2012-10-31T09:30", "2012-11-30", "2012-12-01"],
        dtype="datetime64[ns]",
    )
    days = np.concatenate([days, sessions])
    index, on_session = _session_index(sessions, days)
    assert index.tolist() == np.searchsorted(sessions, days).tolist()
    assert on_session.tolist() == np.isin(days, sessions).tolist()
