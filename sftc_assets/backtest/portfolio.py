"""The portfolio backtest of docs/eval-and-backtest.md, vectorised over positions.

Each thesis with a non-zero score is a position from the close of entry_date to the close of exit_date with
signed weight = score. On each session the book returns the weighted mean of the open positions' daily
returns, normalised by their gross exposure (sum of |weight|), 0 with nothing open. Costs: cost_bps on
|weight| at entry and at exit, booked with the position's first holding day (the session after entry) and
its last (exit_date), so they are normalised by the same gross exposure as that day's returns.

Daily returns come from adjusted closes on the calendar's sessions; a gap inside a ticker's data carries
the last close forward, so a position's compounded daily returns equal exit/entry - 1. Positions whose
prices the source lacks are left out and counted by reason. The benchmark is an equal-weight buy-and-hold
of the positions' tickers from the close of the first entry to the last exit, without costs.

Prices are loaded once per eval frame (`load_positions`); `book_series` then builds the books of several weight
vectors at once (the model's scores, always long, always short), each over its own window; `daily_book` lays their
daily series side by side (daily_returns.csv).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from sftc_core.market import AdjustedCloses, PriceSource, load_adjusted_closes, trading_sessions
from sftc_core.metrics import series_metrics


@dataclass
class PortfolioResult:
    """The daily series (index: sessions after the first entry) and the figures of the book and the benchmark."""

    daily: pd.DataFrame  # columns: DAILY_COLUMNS
    portfolio: dict
    benchmark: dict
    missing_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Positions:
    """The eval rows that can be positions (a forward return, a ticker the source knows, prices on the entry and
    exit sessions) on one grid of sessions, from the first entry to the last exit of the rows with a return."""

    row: np.ndarray  # the frame row of each position
    entry_idx: np.ndarray  # session index of the entry close
    exit_idx: np.ndarray
    ticker_code: np.ndarray
    tickers: list[str]
    sessions: np.ndarray  # datetime64[ns]
    raw_prices: np.ndarray  # sessions x tickers, NaN where the source has no price
    daily_returns: np.ndarray  # sessions x tickers, closes carried forward over gaps
    not_a_position: np.ndarray  # per frame row: an index into `reasons`, 0 for a position
    ticker_of_row: np.ndarray  # per frame row with return_status ok: its ticker's index in `tickers`; -1 for the others
    reasons: tuple[str, ...]  # why a row is no position ("" first: it is one)
    unknown_tickers: frozenset[str]

    @cached_property
    def reason_and_ticker(self) -> np.ndarray:
        """Per frame row, one key for (not_a_position, ticker_of_row + 1): a book's rows counted by both in one pass."""
        return self.not_a_position * (len(self.tickers) + 1) + self.ticker_of_row + 1


# The daily series of a book (PortfolioResult.daily), per session of its window.
DAILY_COLUMNS = ("book_return", "gross_return", "benchmark_return", "gross_exposure", "open_positions", "traded")
# Why a row with a forward return is still no position, in the order they are checked.
PRICE_REASONS = ("unknown_ticker_at_source", "entry_or_exit_not_a_session", "no_price_at_source")


def _price_matrix(closes: AdjustedCloses, tickers: list[str], sessions: np.ndarray) -> np.ndarray:
    """Adjusted closes, sessions x tickers, NaN where the source has no price on that session (or none above 0)."""
    matrix = np.full((len(sessions), len(tickers)), np.nan)
    position = {t: k for k, t in enumerate(tickers)}
    column_of = np.array([position[t] for t in closes.tickers], dtype=np.int64)
    row = np.searchsorted(sessions, closes.dates)
    on_session = row < len(sessions)
    on_session[on_session] = sessions[row[on_session]] == closes.dates[on_session]
    usable = on_session & np.isfinite(closes.closes) & (closes.closes > 0)
    matrix[row[usable], column_of[closes.ticker_index[usable]]] = closes.closes[usable]
    return matrix


def _session_index(sessions: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per day (none NaT), its index in `sessions` (sorted; where it would go when it is none) and whether it is that
    session: a table of the first session at or after each calendar day the sessions span, looked up by the day's offset
    rounded up (a time past midnight belongs with the next day, as a search places it); no row is hashed or searched."""
    one_day = np.timedelta64(1, "D")
    span = (sessions[-1] - sessions[0]) // one_day
    index_of_day = np.searchsorted(sessions, sessions[0] + np.arange(span + 2) * one_day)  # the last: past the end
    index = index_of_day[np.clip(-((sessions[0] - days) // one_day), 0, span + 1)]
    return index, sessions[np.minimum(index, len(sessions) - 1)] == days


def load_positions(frame: pd.DataFrame, source: PriceSource, calendar: str = "XNYS") -> Positions:
    """Prices of every row with return_status ok, loaded once; `frame` is read_eval_csv's."""
    # Text columns factorized as they are (Arrow strings): never turned into a million Python strings.
    status_codes, statuses = pd.factorize(frame["return_status"])
    reasons = ("", *(f"return_status_{s}" for s in statuses if s != "ok"), *PRICE_REASONS)
    reason = np.array([reasons.index(f"return_status_{s}") if s != "ok" else 0 for s in statuses], dtype=np.int64)[
        status_codes
    ]
    status_ok = reason == 0
    rows = np.flatnonzero(status_ok)
    entry = frame["entry_date"].to_numpy()[rows].astype("datetime64[ns]", copy=False)
    exit_ = frame["exit_date"].to_numpy()[rows].astype("datetime64[ns]", copy=False)
    ticker_codes, all_tickers = pd.factorize(frame["ticker"], sort=True)
    # The tickers of the rows with a return, and each row's among them.
    used = np.flatnonzero(np.bincount(ticker_codes[rows], minlength=len(all_tickers)))
    tickers = [str(all_tickers[u]) for u in used]
    code_of_used = np.zeros(len(all_tickers), dtype=np.int64)
    code_of_used[used] = np.arange(len(used))
    codes = code_of_used[ticker_codes[rows]]
    ticker_of_row = np.full(len(frame), -1, dtype=np.int64)
    ticker_of_row[rows] = codes
    if not len(rows):
        none = np.zeros(0, dtype=np.int64)
        no_prices = np.zeros((0, 0))
        return Positions(
            none,
            none,
            none,
            none,
            [],
            np.zeros(0, "datetime64[ns]"),
            no_prices,
            no_prices,
            reason,
            ticker_of_row,
            reasons,
            frozenset(),
        )

    all_sessions = trading_sessions(calendar).to_numpy()
    sessions = all_sessions[(all_sessions >= entry.min()) & (all_sessions <= exit_.max())]
    closes = load_adjusted_closes(source, tickers, pd.Timestamp(sessions[0]).date(), pd.Timestamp(sessions[-1]).date())
    raw = _price_matrix(closes, tickers, sessions)
    last = len(sessions) - 1
    entry_idx, entry_on_session = _session_index(sessions, entry)
    exit_idx, exit_on_session = _session_index(sessions, exit_)
    is_session = entry_on_session & exit_on_session
    known = np.array([t not in closes.unknown for t in tickers])[codes]
    priced = np.isfinite(raw[np.minimum(entry_idx, last), codes]) & np.isfinite(raw[np.minimum(exit_idx, last), codes])
    for name, bad in zip(PRICE_REASONS, (~known, known & ~is_session, known & is_session & ~priced)):
        reason[rows[bad]] = reasons.index(name)
    valid = known & is_session & priced
    prices = pd.DataFrame(raw).ffill().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        daily_returns = np.zeros_like(prices)
        daily_returns[1:] = prices[1:] / prices[:-1] - 1.0
    return Positions(
        rows[valid],
        entry_idx[valid],
        exit_idx[valid],
        codes[valid],
        tickers,
        sessions,
        raw,
        np.nan_to_num(daily_returns, nan=0.0, posinf=0.0, neginf=0.0),
        reason,
        ticker_of_row,
        reasons,
        frozenset(closes.unknown),
    )


@dataclass(frozen=True)
class BookSeries:
    """Daily series of c books on the sessions grid (c x sessions); book b runs over the sessions after
    `start[b]` (its first entry's close) up to `end[b]` (its last exit), `days` marks them."""

    book_return: np.ndarray
    gross_return: np.ndarray
    gross_exposure: np.ndarray
    open_positions: np.ndarray
    traded: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def days(self) -> np.ndarray:
        index = np.arange(self.book_return.shape[1])
        return (index > self.start[:, None]) & (index <= self.end[:, None])


def book_series(positions: Positions, weights: np.ndarray, cost_bps: float) -> BookSeries:
    """The books of the weight vectors in `weights` (c x positions: a score each), vectorised over books and positions.

    Open weight per (session, ticker): +w from the first holding day (the session after entry), -w after the
    exit day, then a cumulative sum; the book's return is the open weights' P&L over their gross exposure.
    """
    n_days, n_tickers = positions.raw_prices.shape
    size = (n_days + 1) * n_tickers
    # Each event keyed by its (session, ticker) cell, the same keys for every book: a book is a few bincounts over them.
    opens, exits = (day * n_tickers + positions.ticker_code for day in (positions.entry_idx + 1, positions.exit_idx))
    closes = exits + n_tickers  # the session after the exit, when the weight leaves

    def per_cell(keys: np.ndarray, value: np.ndarray) -> np.ndarray:
        return np.bincount(keys, weights=value, minlength=size).reshape(n_days + 1, n_tickers)

    def per_day(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Sum of each book's `values` (c x positions) per session of `keys` (c x days+1), counted per cell and summed
        after: a bincount into one bin per session runs slower (each addition waits for the last one to its bin)."""
        return np.stack([per_cell(keys, value).sum(axis=1) for value in values])

    # Open weight per (session, ticker): +w from the first holding day, -w after the exit day, cumulated over sessions.
    open_weight = np.stack([np.cumsum(per_cell(opens, w) - per_cell(closes, w), axis=0)[:n_days] for w in weights])
    magnitude, held = np.abs(weights), (weights != 0).astype("float64")
    opened, exited = per_day(opens, magnitude), per_day(exits, magnitude)
    gross = np.cumsum(opened - _day_after(exited), axis=1)[:, :n_days]
    open_positions = np.cumsum(per_day(opens, held) - _day_after(per_day(exits, held)), axis=1)[:, :n_days]
    open_positions = np.rint(open_positions).astype(np.int64)
    traded = (opened + exited)[:, :n_days]
    gross = np.where(gross > 1e-12, gross, 0.0)  # cumsum round-off must not leave a phantom open book
    pnl = np.einsum("bdk,dk->bd", open_weight, positions.daily_returns)
    invested = gross > 0
    safe_gross = np.where(invested, gross, 1.0)
    gross_return = np.where(invested, pnl / safe_gross, 0.0)
    traded_share = np.where(invested, traded / safe_gross, 0.0)
    # The first entry's close and the last exit from the sessions' sums (the weights held are > 0): no pass over the
    # positions.
    entered, left = opened > 0, exited > 0
    start = np.where(entered.any(axis=1), entered.argmax(axis=1) - 1, n_days)
    end = np.where(left.any(axis=1), n_days - left[:, ::-1].argmax(axis=1), -1)
    book_return = gross_return - cost_bps / 1e4 * traded_share
    return BookSeries(book_return, gross_return, gross, open_positions, traded_share, start, end)


def _day_after(per_day: np.ndarray) -> np.ndarray:
    """Per-session sums (c x sessions) moved one session later: what exits on a session leaves the book on the next."""
    return np.concatenate([np.zeros((len(per_day), 1)), per_day[:, :-1]], axis=1)


def _unavailable(reason: str, missing: dict[str, int], scored_zero: int) -> dict:
    return {
        "available": False,
        "reason": reason,
        "positions": 0,
        "rows_scored_zero": scored_zero,
        "missing_positions": sum(missing.values()),
        "missing_by_reason": missing,
    }


def backtest_portfolio(
    frame: pd.DataFrame,
    score: np.ndarray,
    source: PriceSource | Positions,
    *,
    cost_bps: float = 5.0,
    calendar: str = "XNYS",
    periods_per_year: int = 252,
    risk_free_rate: float = 0.0,
) -> PortfolioResult:
    """`frame` is read_eval_csv's (entry_date, exit_date, ticker, return_status); `score` the weight per row;
    `source` a price source, or the rows' `load_positions`."""
    return backtest_portfolios(
        frame,
        [score],
        source,
        cost_bps=cost_bps,
        calendar=calendar,
        periods_per_year=periods_per_year,
        risk_free_rate=risk_free_rate,
    )[0]


def backtest_portfolios(
    frame: pd.DataFrame,
    scores: list[np.ndarray],
    source: PriceSource | Positions,
    *,
    cost_bps: float = 5.0,
    calendar: str = "XNYS",
    periods_per_year: int = 252,
    risk_free_rate: float = 0.0,
) -> list[PortfolioResult]:
    """`backtest_portfolio` of several score vectors over the same rows (the model's, always long, always short):
    the prices loaded once, the books built in one pass."""
    positions = source if isinstance(source, Positions) else load_positions(frame, source, calendar)
    series = book_series(positions, np.stack([score[positions.row] for score in scores]).astype("float64"), cost_bps)
    return [
        _portfolio_result(score, positions, series, book, cost_bps, periods_per_year, risk_free_rate)
        for book, score in enumerate(scores)
    ]


def _portfolio_result(
    score: np.ndarray,
    positions: Positions,
    series: BookSeries,
    book: int,
    cost_bps: float,
    periods_per_year: int,
    risk_free_rate: float,
) -> PortfolioResult:
    """The figures of book `book` of `series`, whose weights are `score` on the positions."""
    # The rows with a non-zero score by why they are no position (0: they are one) and by ticker (0: no return), in one
    # count.
    by_reason_and_ticker = np.bincount(
        positions.reason_and_ticker, weights=score != 0, minlength=len(positions.reasons) * (len(positions.tickers) + 1)
    )
    by_reason_and_ticker = by_reason_and_ticker.reshape(len(positions.reasons), -1).round().astype(np.int64)
    counts, held_by_ticker = by_reason_and_ticker.sum(axis=1), by_reason_and_ticker[:, 1:].sum(axis=0)
    scored_zero = len(score) - int(counts.sum())
    found = sorted((name, int(count)) for name, count in zip(positions.reasons[1:], counts[1:]) if count)
    missing: dict[str, int] = dict(
        sorted(found, key=lambda item: not item[0].startswith("return_status_"))
    )  # statuses first
    empty_daily = pd.DataFrame(columns=list(DAILY_COLUMNS), index=pd.DatetimeIndex([], name="session"))
    if not held_by_ticker.any():
        reason = "no row has both a non-zero score and a forward return"
        return PortfolioResult(
            empty_daily, _unavailable(reason, missing, scored_zero), {"available": False, "reason": reason}, missing
        )
    candidate_tickers = {positions.tickers[code] for code in np.flatnonzero(held_by_ticker)}
    missing_tickers = sorted(candidate_tickers & positions.unknown_tickers)
    if not counts[0]:  # no weighted row is a position
        reason = "the price source has no prices for any position"
        return PortfolioResult(
            empty_daily,
            _unavailable(reason, missing, scored_zero) | {"missing_tickers": missing_tickers},
            {"available": False, "reason": reason},
            missing,
        )

    start, end = int(series.start[book]), int(series.end[book])
    window = slice(start + 1, end + 1)  # the first session is the close of the first entry: nothing is held over it
    sessions = positions.sessions[start : end + 1]

    # Benchmark: equal weights at the close of the first entry, held; tickers without a price then are left out.
    tickers = [t for t in positions.tickers if t in candidate_tickers and t not in positions.unknown_tickers]
    columns = [positions.tickers.index(t) for t in tickers]
    raw = positions.raw_prices[start : end + 1][:, columns]
    held = np.isfinite(raw[0])
    prices = pd.DataFrame(raw).ffill().to_numpy()
    benchmark_equity = np.nanmean(prices[:, held] / raw[0, held], axis=1) if held.any() else np.ones(len(sessions))
    benchmark_return = benchmark_equity[1:] / benchmark_equity[:-1] - 1.0

    daily = pd.DataFrame(
        {
            "book_return": series.book_return[book, window],
            "gross_return": series.gross_return[book, window],
            "benchmark_return": benchmark_return,
            "gross_exposure": series.gross_exposure[book, window],
            "open_positions": series.open_positions[book, window],
            "traded": series.traded[book, window],
        },
        index=pd.DatetimeIndex(sessions[1:], name="session"),
    )
    figures = series_metrics(
        daily["book_return"].to_numpy(),
        periods_per_year,
        risk_free_rate,
        invested=daily["gross_exposure"].to_numpy() > 0,
    )
    portfolio = {
        "available": True,
        "positions": int(counts[0]),
        "rows_scored_zero": scored_zero,
        "missing_positions": sum(missing.values()),
        "missing_by_reason": missing,
        "missing_tickers": missing_tickers,
        "start": _day(sessions[0]),
        "end": _day(sessions[-1]),
        "cost_bps": cost_bps,
        "turnover": float(daily["traded"].mean()),
        "gross_cumulative_return": float(np.prod(1.0 + daily["gross_return"].to_numpy()) - 1.0),
        "invested_days": int((daily["gross_exposure"] > 0).sum()),
        **figures,
    }
    benchmark = {
        "available": bool(held.any()),
        "tickers": [t for t, h in zip(tickers, held) if h],
        "tickers_left_out": [t for t, h in zip(tickers, held) if not h],
        "start": _day(sessions[0]),
        "end": _day(sessions[-1]),
        "turnover": 0.0,
        **series_metrics(daily["benchmark_return"].to_numpy(), periods_per_year, risk_free_rate),
    }
    return PortfolioResult(daily, portfolio, benchmark, missing)


def _day(value: np.datetime64) -> str:
    return pd.Timestamp(value).date().isoformat()


def monthly_returns(daily: pd.DataFrame, column: str) -> dict[str, float]:
    """Compounded return of `column` per calendar month (YYYY-MM) of the sessions."""
    if daily.empty:
        return {}
    grouped = (1.0 + daily[column]).groupby(daily.index.strftime("%Y-%m")).prod() - 1.0
    return {month: float(value) for month, value in grouped.items()}


def daily_book(result: PortfolioResult, baselines: dict[str, PortfolioResult]) -> pd.DataFrame:
    """The daily series people take into their own tools (daily_returns.csv): a row per session of any book's window
    with the model's book (its return net of costs, gross exposure, open positions), the benchmark and each baseline
    book's return (`<name>_return`). A cell is empty on a session outside its book's window, so each column's
    non-empty values are the series its figures in the report come from."""
    columns = {
        name: result.daily[name] for name in ("book_return", "gross_exposure", "open_positions", "benchmark_return")
    }
    columns |= {f"{name}_return": book.daily["book_return"] for name, book in baselines.items()}
    frame = pd.DataFrame(columns).astype({"open_positions": "Int64"})
    frame.index.name = "date"
    return frame
