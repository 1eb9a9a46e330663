"""Daily prices as frames, the exchange session calendar and forward returns (docs/eval-and-backtest.md), the
sample prices that ship in a package, and the `PriceSource` interface the price sources (EODHD over HTTP, local
per-ticker files: sftc_platform/prices.py) implement. The evaluation and the backtest take a source; they never
build one.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from sftc_core.configs import ConfigError

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("date", "open", "high", "low", "close", "adjusted_close", "volume")
RETURN_STATUSES = ("ok", "no_price", "beyond_data", "unknown_ticker")
ReturnStatus = Literal["ok", "no_price", "beyond_data", "unknown_ticker"]

# The calendar is built from here on; earlier as_of dates get status no_price.
CALENDAR_START = "1990-01-01"


# --- errors -----------------------------------------------------------------------------------


class PriceDataError(RuntimeError):
    """Prices could not be had; the message names the ticker and what to do."""


class UnknownTickerError(PriceDataError, KeyError):
    """The source does not know the ticker (a KeyError, so `except KeyError` works too)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --- price frames -----------------------------------------------------------------------------


def normalise_prices(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """The canonical price frame: PRICE_COLUMNS, dates as datetime64[ns] (midnight), sorted, one row a date.

    `origin` (a file name or "EODHD AAPL.US") goes into the error when a column is missing or a value is bad.
    """
    missing = [c for c in PRICE_COLUMNS if c not in frame.columns]
    if missing:
        raise PriceDataError(
            f"{origin}: missing price column(s) {', '.join(missing)}; expected {', '.join(PRICE_COLUMNS)}"
        )
    dates = frame["date"]
    if not pd.api.types.is_datetime64_any_dtype(dates):
        dates = pd.to_datetime(dates, errors="coerce")
        if dates.isna().any():
            row = int(np.flatnonzero(dates.isna().to_numpy())[0])
            raise PriceDataError(
                f"{origin}: row {row + 1}, column date: {frame['date'].iloc[row]!r} is not a date (expected YYYY-MM-DD)"
            )
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    days = dates.to_numpy().astype("datetime64[D]").astype("datetime64[ns]")  # midnight, whatever the unit was
    columns = {"date": days}
    for column in PRICE_COLUMNS[1:]:
        values = frame[column].to_numpy()
        columns[column] = (
            values
            if values.dtype == np.float64
            else pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64")
        )
    out = pd.DataFrame(columns)
    if len(days) > 1 and not (days[1:] > days[:-1]).all():  # sorting is the rare case: files are written sorted
        out = out.sort_values("date", kind="stable").drop_duplicates("date", keep="last").reset_index(drop=True)
    return out


def empty_prices() -> pd.DataFrame:
    return normalise_prices(pd.DataFrame({c: [] for c in PRICE_COLUMNS}), "empty")


def sample_tickers() -> tuple[str, ...]:
    from bokeh_sampledata import stocks

    return tuple(name for name in stocks.__all__ if name != "data")


def load_sample_prices(ticker: str) -> pd.DataFrame:
    """Real daily prices (2000-2013, Quandl WIKI) from the bokeh-sampledata package; `adj_close` is adjusted close."""
    from bokeh_sampledata import stocks

    symbol = ticker.strip().upper()
    if symbol not in sample_tickers():
        raise UnknownTickerError(
            f"no sample prices for ticker {ticker!r}; bokeh-sampledata has {', '.join(sample_tickers())}"
        )
    raw = getattr(stocks, symbol)
    frame = pd.DataFrame(
        {**{c: raw[c] for c in ("date", "open", "high", "low", "close", "volume")}, "adjusted_close": raw["adj_close"]}
    )
    return normalise_prices(frame, f"bokeh-sampledata stocks.{symbol}")


# --- the session calendar and forward returns --------------------------------------------------


@functools.lru_cache(maxsize=8)
def trading_sessions(calendar: str = "XNYS") -> pd.DatetimeIndex:
    """All sessions of the exchange calendar from CALENDAR_START to about a year ahead (cached per process)."""
    import exchange_calendars as xcals

    try:
        cal = xcals.get_calendar(calendar, start=CALENDAR_START)
    except xcals.errors.InvalidCalendarName:
        raise ConfigError(f"calendar {calendar!r} is not an exchange-calendars name (e.g. XNYS, XLON)") from None
    return pd.DatetimeIndex(cal.sessions.tz_localize(None) if cal.sessions.tz is not None else cal.sessions).astype(
        "datetime64[ns]"
    )


def _as_datetime64(values: Sequence | pd.Series | np.ndarray) -> np.ndarray:
    return pd.to_datetime(pd.Series(values)).dt.normalize().to_numpy().astype("datetime64[ns]")


def session_window(
    as_of_dates: Sequence | pd.Series | np.ndarray, horizons: Sequence[int] | np.ndarray, calendar: str = "XNYS"
) -> tuple[np.ndarray, np.ndarray]:
    """Entry (first session strictly after as_of) and exit (h sessions after entry) per row;
    NaT outside the calendar."""
    sessions = trading_sessions(calendar).to_numpy()
    as_of = _as_datetime64(as_of_dates)
    entry_idx = np.searchsorted(sessions, as_of, side="right")
    exit_idx = entry_idx + np.asarray(horizons, dtype=np.int64)
    nat = np.datetime64("NaT", "ns")
    known = as_of >= sessions[0]  # before the calendar starts no entry session is knowable (NaT compares False)
    entry = np.where(known & (entry_idx < len(sessions)), sessions[np.minimum(entry_idx, len(sessions) - 1)], nat)
    exit_ = np.where(known & (exit_idx < len(sessions)), sessions[np.minimum(exit_idx, len(sessions) - 1)], nat)
    return entry, exit_


def first_unseen_date(cutoff: dt.date, horizon_days: int, calendar: str = "XNYS") -> dt.date:
    """The first as-of date after a model's knowledge cutoff plus the label horizon: the day after the exit session
    of a thesis written on the cutoff day (theses before it may have outcomes the model has read about)."""
    _, exit_ = session_window([cutoff], [horizon_days], calendar)
    return exit_[0].astype("datetime64[D]").item() + dt.timedelta(days=1)


def forward_returns(
    prices: pd.DataFrame | None,
    as_of_dates: Sequence | pd.Series | np.ndarray,
    horizons: Sequence[int] | np.ndarray,
    calendar: str = "XNYS",
) -> pd.DataFrame:
    """Vectorised `forward_return`: columns entry_date, exit_date (datetime64, NaT when unknown), forward_return
    (float, NaN when missing), return_status. `prices` None means the source does not know the ticker."""
    as_of = _as_datetime64(as_of_dates)
    entry, exit_ = session_window(as_of, horizons, calendar)
    result = pd.DataFrame({"entry_date": entry, "exit_date": exit_})
    if prices is None:
        result["forward_return"] = np.nan
        result["return_status"] = np.full(len(entry), "unknown_ticker", dtype=object)
        return result
    dates = prices["date"].to_numpy().astype("datetime64[ns]")
    adjusted = prices["adjusted_close"].to_numpy(dtype="float64")
    adjusted = np.where(np.isfinite(adjusted) & (adjusted > 0), adjusted, np.nan)  # a price <= 0 is no price

    def price_on(days: np.ndarray) -> np.ndarray:
        if len(dates) == 0:
            return np.full(len(days), np.nan)
        idx = np.minimum(np.searchsorted(dates, days), len(dates) - 1)
        return np.where(dates[idx] == days, adjusted[idx], np.nan)  # NaT never equals a date

    entry_price, exit_price = price_on(entry), price_on(exit_)
    # Beyond the data: the exit is after the last price, or after the calendar's end (known as_of, no exit session).
    beyond = np.isnat(exit_) & (as_of >= trading_sessions(calendar).to_numpy()[0])
    if len(dates):
        beyond |= exit_ > dates[-1]
    ok = np.isfinite(entry_price) & np.isfinite(exit_price)
    result["forward_return"] = np.where(ok, exit_price / np.where(ok, entry_price, 1.0) - 1.0, np.nan)
    result["return_status"] = np.where(ok, "ok", np.where(beyond, "beyond_data", "no_price")).astype(object)
    return result


@dataclass(frozen=True)
class ForwardReturn:
    entry_date: dt.date | None
    exit_date: dt.date | None
    forward_return: float | None
    return_status: ReturnStatus


def forward_return(
    prices: pd.DataFrame | None, as_of_date: dt.date | str, horizon_days: int, calendar: str = "XNYS"
) -> ForwardReturn:
    """adjusted_close(exit) / adjusted_close(entry) - 1 with entry the first session strictly after `as_of_date`
    and exit `horizon_days` sessions after entry; a missing price gives None and a status, never 0."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be >= 1, got {horizon_days}")
    row = forward_returns(prices, [as_of_date], [horizon_days], calendar).iloc[0]

    def day(value) -> dt.date | None:
        return None if pd.isna(value) else pd.Timestamp(value).date()

    value = row["forward_return"]
    return ForwardReturn(
        day(row["entry_date"]), day(row["exit_date"]), None if pd.isna(value) else float(value), row["return_status"]
    )


# --- price sources ----------------------------------------------------------------------------


class PriceSource(Protocol):
    """Daily prices of one ticker between two dates (inclusive), as `normalise_prices` gives them.

    Raises UnknownTickerError when the source does not know the ticker, PriceDataError when it cannot answer.
    A source that can read many tickers at once also offers `read_adjusted_closes(tickers, start, end)`
    (`load_adjusted_closes` uses it).
    """

    name: str

    def get_prices(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame: ...


@dataclass
class PriceBook:
    """Prices of several tickers from one source: a frame per known ticker, an error text per unknown one."""

    frames: dict[str, pd.DataFrame]
    unknown: dict[str, str]

    def get(self, ticker: str) -> pd.DataFrame | None:
        return self.frames.get(ticker)


def load_price_book(source: PriceSource, tickers: Iterable[str], start: dt.date, end: dt.date) -> PriceBook:
    """Prices for every ticker; an unknown ticker is recorded (its rows get status unknown_ticker), the rest go on."""
    frames, unknown = {}, {}
    for ticker in sorted(set(tickers)):
        try:
            frames[ticker] = source.get_prices(ticker, start, end)
        except UnknownTickerError as exc:
            log.warning("prices: %s", exc)
            unknown[ticker] = str(exc)
    return PriceBook(frames, unknown)


@dataclass(frozen=True)
class AdjustedCloses:
    """The adjusted closes of several tickers as one long table, a row per ticker and date (sorted by ticker, then
    date; one row a date); `unknown`: an error text per ticker the source does not know."""

    tickers: tuple[str, ...]  # the known tickers, sorted
    ticker_index: np.ndarray  # per row, its ticker's index in `tickers`
    dates: np.ndarray  # datetime64[ns], midnight
    closes: np.ndarray  # float64
    unknown: dict[str, str]

    @classmethod
    def from_columns(
        cls,
        tickers: Iterable[str],
        ticker_index: np.ndarray,
        dates: np.ndarray,
        closes: np.ndarray,
        unknown: dict[str, str],
        start: dt.date,
        end: dt.date,
    ) -> AdjustedCloses:
        """From rows in any order: those from `start` to `end` kept, sorted, the last row of a repeated date kept
        (as `normalise_prices` keeps it)."""
        days = dates.astype("datetime64[D]").astype("datetime64[ns]")
        within = (days >= np.datetime64(start, "ns")) & (days <= np.datetime64(end, "ns"))
        index, days, closes = ticker_index[within], days[within], closes[within]
        in_order = (index[1:] > index[:-1]) | ((index[1:] == index[:-1]) & (days[1:] >= days[:-1]))
        if not in_order.all():  # a scan's rows come sorted already: the sort only where they do not
            order = np.lexsort((days, index))  # stable: rows of a repeated date keep their order
            index, days, closes = index[order], days[order], closes[order]
        last = np.ones(len(days), dtype=bool)
        last[:-1] = (index[1:] != index[:-1]) | (days[1:] != days[:-1])
        return cls(tuple(tickers), index[last], days[last], closes[last], unknown)

    @classmethod
    def from_book(cls, book: PriceBook, start: dt.date, end: dt.date) -> AdjustedCloses:
        tickers = sorted(book.frames)
        frames = [book.frames[t] for t in tickers]
        index = np.repeat(np.arange(len(tickers)), [len(f) for f in frames])
        dates = [np.zeros(0, "datetime64[ns]"), *(f["date"].to_numpy(dtype="datetime64[ns]") for f in frames)]
        closes = [np.zeros(0), *(f["adjusted_close"].to_numpy(dtype="float64") for f in frames)]
        return cls.from_columns(
            tickers, index, np.concatenate(dates), np.concatenate(closes), dict(book.unknown), start, end
        )


def load_adjusted_closes(source: PriceSource, tickers: Iterable[str], start: dt.date, end: dt.date) -> AdjustedCloses:
    """The adjusted closes of every ticker from `start` to `end`: in one pass where the source offers it (the local
    files), else a `get_prices` call per ticker (`load_price_book`)."""
    read_many = getattr(source, "read_adjusted_closes", None)
    if read_many is not None:
        return read_many(tickers, start, end)
    return AdjustedCloses.from_book(load_price_book(source, tickers, start, end), start, end)
