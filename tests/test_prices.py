"""Sample prices, the forward-return rule on the XNYS calendar, and the local price source."""

from __future__ import annotations

import datetime as dt

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
from bokeh_sampledata import stocks

from sftc_core.market import (
    AdjustedCloses,
    PriceDataError,
    UnknownTickerError,
    forward_return,
    forward_returns,
    load_adjusted_closes,
    load_sample_prices,
)
from sftc_core.settings import load_settings
from sftc_platform.prices import (
    PRICE_COLUMNS,
    LocalPriceSource,
    fill_sample_prices,
    price_source_from_settings,
)


def _adjusted(ticker: str, day: str) -> float:
    """Straight from the package's raw lists, not through load_sample_prices."""
    raw = getattr(stocks, ticker)
    return raw["adj_close"][raw["date"].index(day)]


def test_sample_prices_have_the_columns_and_adjusted_close():
    prices = load_sample_prices("aapl")
    assert tuple(prices.columns) == PRICE_COLUMNS
    assert prices["date"].is_monotonic_increasing and prices["date"].is_unique
    assert prices["date"].iloc[0] == pd.Timestamp("2000-03-01")
    row = prices[prices["date"] == "2012-11-23"].iloc[0]
    assert row["adjusted_close"] == _adjusted("AAPL", "2012-11-23") and row["close"] != row["adjusted_close"]


def test_unknown_sample_ticker_is_a_key_error_naming_the_choices():
    with pytest.raises(KeyError, match="bokeh-sampledata has AAPL, FB, GOOG, IBM, MSFT"):
        load_sample_prices("TSLA")


@pytest.mark.parametrize(
    ("as_of", "entry", "exit_"),
    [
        ("2012-11-21", "2012-11-23", "2012-11-30"),  # Thanksgiving: Thu 22 closed
        ("2012-11-23", "2012-11-26", "2012-12-03"),  # a session as_of: entry is strictly after it
        ("2012-11-24", "2012-11-26", "2012-12-03"),  # Saturday
        ("2012-10-26", "2012-10-31", "2012-11-07"),  # Hurricane Sandy: Mon 29 and Tue 30 closed
        ("2012-10-29", "2012-10-31", "2012-11-07"),  # as_of on a closure day
        ("2012-07-03", "2012-07-05", "2012-07-12"),  # Independence Day
        ("2012-12-21", "2012-12-24", "2013-01-02"),  # Christmas and New Year inside the horizon
    ],
)
def test_entry_is_the_next_session_and_exit_h_sessions_later(as_of, entry, exit_):
    result = forward_return(load_sample_prices("AAPL"), as_of, 5)
    assert (result.entry_date, result.exit_date) == (dt.date.fromisoformat(entry), dt.date.fromisoformat(exit_))
    assert result.return_status == "ok"
    assert result.forward_return == pytest.approx(_adjusted("AAPL", exit_) / _adjusted("AAPL", entry) - 1, rel=1e-12)


def test_the_rule_matches_exchange_calendars_on_random_dates():
    calendar = xcals.get_calendar("XNYS", start="2000-01-01")
    rng = np.random.default_rng(3)
    days = pd.Timestamp("2001-01-01") + pd.to_timedelta(rng.integers(0, 4000, 300), unit="D")
    horizons = rng.integers(1, 30, 300)
    labels = forward_returns(load_sample_prices("IBM"), days, horizons)
    for day, h, (_, row) in zip(days, horizons, labels.iterrows()):
        entry = calendar.date_to_session(day, direction="next")
        entry = calendar.next_session(entry) if entry == day else entry
        assert row["entry_date"] == entry
        assert row["exit_date"] == calendar.session_offset(entry, int(h))


def test_missing_prices_give_a_status_and_no_return_never_zero():
    prices = load_sample_prices("AAPL")
    gap = prices[prices["date"] != "2012-11-30"]
    assert forward_return(gap, "2012-11-21", 5).return_status == "no_price"
    assert forward_return(gap, "2012-11-21", 5).forward_return is None
    end = forward_return(prices, "2013-02-25", 5)  # the data end on 2013-03-01
    assert (end.return_status, end.forward_return, end.exit_date) == ("beyond_data", None, dt.date(2013, 3, 5))
    before_listing = forward_return(load_sample_prices("FB"), "2012-05-01", 5)  # FB listed 2012-05-18
    assert (before_listing.return_status, before_listing.forward_return) == ("no_price", None)
    unknown = forward_return(None, "2012-11-21", 5)
    assert (unknown.return_status, unknown.forward_return, unknown.entry_date) == (
        "unknown_ticker",
        None,
        dt.date(2012, 11, 23),
    )
    future = forward_return(prices, "2099-01-01", 5)
    assert (future.return_status, future.entry_date) == ("beyond_data", None)


def test_a_non_positive_price_is_no_price():
    prices = load_sample_prices("MSFT")
    prices.loc[prices["date"] == "2012-11-23", "adjusted_close"] = 0.0
    assert forward_return(prices, "2012-11-21", 5).return_status == "no_price"


def test_vectorised_and_single_agree():
    prices = load_sample_prices("GOOG")
    days = pd.date_range("2004-08-01", "2013-03-10", freq="11D")
    labels = forward_returns(prices, days, np.full(len(days), 5))
    for day, (_, row) in zip(days[::25], labels.iloc[::25].iterrows()):
        single = forward_return(prices, day.date(), 5)
        assert single.return_status == row["return_status"]
        assert (single.forward_return is None and np.isnan(row["forward_return"])) or single.forward_return == row[
            "forward_return"
        ]
    assert set(labels["return_status"]) == {"ok", "no_price", "beyond_data"}


def test_local_source_fills_sample_files_and_reads_csv(tmp_path):
    source = LocalPriceSource(tmp_path, sample_fallback=True)
    frame = source.get_prices("AAPL", dt.date(2012, 1, 1), dt.date(2012, 1, 31))
    assert (tmp_path / "AAPL.parquet").is_file() and len(frame) == 20
    assert frame["date"].min() >= pd.Timestamp("2012-01-01") and frame["date"].max() <= pd.Timestamp("2012-01-31")
    with pytest.raises(UnknownTickerError, match="no price file for ticker 'ZZZ'"):
        source.get_prices("ZZZ", dt.date(2012, 1, 1), dt.date(2012, 1, 31))
    csv_prices = load_sample_prices("IBM").assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d"))
    csv_prices.to_csv(tmp_path / "XYZ.csv", index=False)
    from_csv = LocalPriceSource(tmp_path).get_prices("xyz", dt.date(2012, 1, 1), dt.date(2012, 1, 31))
    assert (
        from_csv["adjusted_close"].tolist()
        == load_sample_prices("IBM").set_index("date").loc["2012-01"]["adjusted_close"].tolist()
    )
    with pytest.raises(UnknownTickerError):
        LocalPriceSource(tmp_path).get_prices("MSFT", dt.date(2012, 1, 1), dt.date(2012, 1, 31))  # no sample fallback


def test_local_source_names_the_file_and_column_of_a_bad_file(tmp_path):
    (tmp_path / "BAD.csv").write_text("date,open,high,low,close,volume\n2012-01-03,1,1,1,1,1\n")
    with pytest.raises(PriceDataError, match=r"BAD.csv: missing price column\(s\) adjusted_close"):
        LocalPriceSource(tmp_path).get_prices("BAD", dt.date(2012, 1, 1), dt.date(2012, 1, 31))
    (tmp_path / "WORSE.csv").write_text(
        "date,open,high,low,close,adjusted_close,volume\n2012-01-03,1,1,1,1,1,1\nnot-a-date,1,1,1,1,1,1\n"
    )
    with pytest.raises(PriceDataError, match="WORSE.csv: row 2, column date"):
        LocalPriceSource(tmp_path).get_prices("WORSE", dt.date(2012, 1, 1), dt.date(2012, 1, 31))
    (tmp_path / "TORN.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PriceDataError, match="TORN.parquet: cannot read"):
        LocalPriceSource(tmp_path).get_prices("TORN", dt.date(2012, 1, 1), dt.date(2012, 1, 31))


def test_fill_sample_prices_writes_atomically(tmp_path):
    paths = fill_sample_prices(tmp_path, ["MSFT", "GOOG"])
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["GOOG.parquet", "MSFT.parquet"] == sorted(p.name for p in paths)
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "MSFT.parquet"), load_sample_prices("MSFT"))


def test_toy_settings_give_the_local_source_under_their_data_dir(data_dir):
    source = price_source_from_settings(load_settings())
    assert isinstance(source, LocalPriceSource) and source.root == data_dir / "prices" and source.sample_fallback
    other = price_source_from_settings(load_settings(env={"SFTC_DATA_DIR": str(data_dir / "other")}))
    assert other.root == data_dir / "other" / "prices"


def _closes_of(closes: AdjustedCloses) -> dict[str, pd.Series]:
    return {
        t: pd.Series(closes.closes[closes.ticker_index == i], index=closes.dates[closes.ticker_index == i])
        for i, t in enumerate(closes.tickers)
    }


def test_many_tickers_are_read_in_one_scan_with_what_get_prices_gives(tmp_path, monkeypatch):
    """The backtest reads the run's price files in one pass: the files laid out as write_price_file writes them in
    one pyarrow scan (get_prices not called for them), the others one by one; the closes are the same either way."""
    fill_sample_prices(tmp_path, ["AAPL", "MSFT"])
    micro = load_sample_prices("IBM").astype({"date": "datetime64[us]"})
    micro["adjusted_close"] = micro["adjusted_close"].round().astype("int64")  # whole-dollar closes, microsecond dates
    micro.to_parquet(tmp_path / "IBM.parquet", index=False)
    shuffled = load_sample_prices("GOOG").sample(frac=1.0, random_state=0)  # unsorted, one date twice
    unsorted = pd.concat([shuffled, shuffled.iloc[:1].assign(adjusted_close=1.0)])
    unsorted.assign(date=unsorted["date"].dt.strftime("%Y-%m-%d")).to_csv(tmp_path / "GOOG.csv", index=False)
    source = LocalPriceSource(tmp_path, sample_fallback=True)  # FB: no file yet, written from the sample
    start, end = dt.date(2012, 1, 1), dt.date(2012, 12, 31)
    apart = {t: source.get_prices(t, start, end) for t in ("AAPL", "FB", "GOOG", "IBM", "MSFT")}
    read_apart, get_prices = [], LocalPriceSource.get_prices

    def counted(self, ticker, first, last):
        read_apart.append(ticker)
        return get_prices(self, ticker, first, last)

    monkeypatch.setattr(LocalPriceSource, "get_prices", counted)
    closes = load_adjusted_closes(source, ["MSFT", "GOOG", "ZZZ", "IBM", "AAPL", "FB", "MSFT"], start, end)
    assert read_apart == ["GOOG"]  # the CSV; every Parquet file in the one scan
    assert closes.tickers == ("AAPL", "FB", "GOOG", "IBM", "MSFT") and list(closes.unknown) == ["ZZZ"]
    for ticker, series in _closes_of(closes).items():
        expected = apart[ticker].set_index("date")["adjusted_close"]
        pd.testing.assert_series_equal(series, expected, check_names=False, check_index_type=False, check_freq=False)
    assert _closes_of(closes)["GOOG"].index.is_unique and closes.dates.dtype == np.dtype("datetime64[ns]")


def test_the_one_scan_names_a_bad_file_as_get_prices_does(tmp_path):
    fill_sample_prices(tmp_path, ["AAPL"])
    load_sample_prices("IBM").drop(columns=["adjusted_close"]).to_parquet(tmp_path / "BAD.parquet", index=False)
    with pytest.raises(PriceDataError, match=r"BAD.parquet: missing price column\(s\) adjusted_close"):
        load_adjusted_closes(LocalPriceSource(tmp_path), ["AAPL", "BAD"], dt.date(2012, 1, 1), dt.date(2012, 1, 31))


def test_a_source_without_the_one_scan_is_asked_per_ticker(tmp_path):
    """EODHD and any other source offer only get_prices: load_adjusted_closes asks it ticker by ticker, same closes."""
    fill_sample_prices(tmp_path, ["AAPL", "IBM"])
    local = LocalPriceSource(tmp_path)

    class OneByOne:
        name = "one-by-one"
        get_prices = staticmethod(local.get_prices)

    start, end = dt.date(2012, 3, 1), dt.date(2012, 6, 30)
    asked = load_adjusted_closes(OneByOne(), ["IBM", "AAPL", "ZZZ"], start, end)
    scanned = load_adjusted_closes(local, ["IBM", "AAPL", "ZZZ"], start, end)
    assert asked.tickers == scanned.tickers == ("AAPL", "IBM") and list(asked.unknown) == ["ZZZ"]
    for got, expected in zip(_closes_of(asked).values(), _closes_of(scanned).values()):
        pd.testing.assert_series_equal(got, expected)
