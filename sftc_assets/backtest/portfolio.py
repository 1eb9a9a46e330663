"""The portfolio backtest of spec/eval-and-backtest.md, vectorised over positions.

Each thesis with a non-zero score is a position from the close of entry_date to the close of exit_date with
signed weight = score. On each session the book returns the weighted mean of the open positions' daily
returns, normalised by their gross exposure (sum of |weight|), 0 with nothing open. Costs: cost_bps on
|weight| at entry and at exit, booked with the position's first holding day (the session after entry) and
its last (exit_date), so they are normalised by the same gross exposure as that day's returns.

Daily returns come from adjusted closes on the calendar's sessions; a gap inside a ticker's data carries
the last close forward, so a position's compounded daily returns equal exit/entry - 1. Positions whose
prices the source lacks are left out and counted by reason. The benchmark is an equal-weight buy-and-hold
of the positions' tickers from the close of the first entry to the last exit, without costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sftc_core.market import PriceSource, load_price_book, trading_sessions
from sftc_core.metrics import series_metrics


@dataclass
class PortfolioResult:
    """The daily series (index: sessions after the first entry) and the figures of the book and the benchmark."""

    daily: pd.DataFrame  # columns: book_return, gross_return, benchmark_return, gross_exposure, traded
    portfolio: dict
    benchmark: dict
    missing_by_reason: dict[str, int] = field(default_factory=dict)


def _price_matrix(book, tickers: list[str], sessions: np.ndarray) -> np.ndarray:
    """Adjusted closes, sessions x tickers, NaN where the source has no price on that session."""
    matrix = np.full((len(sessions), len(tickers)), np.nan)
    for k, ticker in enumerate(tickers):
        frame = book.get(ticker)
        if frame is None or frame.empty:
            continue
        dates = frame["date"].to_numpy().astype("datetime64[ns]")
        adjusted = frame["adjusted_close"].to_numpy(dtype="float64")
        idx = np.searchsorted(dates, sessions)
        found = idx < len(dates)
        found[found] = dates[idx[found]] == sessions[found]
        values = np.where(found, adjusted[np.minimum(idx, len(dates) - 1)], np.nan)
        matrix[:, k] = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    return matrix


def _unavailable(reason: str, missing: dict[str, int], scored_zero: int) -> dict:
    return {"available": False, "reason": reason, "positions": 0, "rows_scored_zero": scored_zero,
            "missing_positions": sum(missing.values()), "missing_by_reason": missing}


def backtest_portfolio(
    frame: pd.DataFrame,
    score: np.ndarray,
    source: PriceSource,
    *,
    cost_bps: float = 5.0,
    calendar: str = "XNYS",
    periods_per_year: int = 252,
    risk_free_rate: float = 0.0,
) -> PortfolioResult:
    """`frame` is read_eval_csv's (entry_date, exit_date, ticker, return_status); `score` the weight per row."""
    weighted = score != 0
    scored_zero = int((~weighted).sum())
    status_ok = (frame["return_status"] == "ok").to_numpy()
    no_return = frame["return_status"][weighted & ~status_ok].value_counts()
    missing: dict[str, int] = {f"return_status_{reason}": int(count) for reason, count in sorted(no_return.items())}
    candidate = weighted & status_ok
    empty_daily = pd.DataFrame(columns=["book_return", "gross_return", "benchmark_return", "gross_exposure", "traded"])
    if not candidate.any():
        reason = "no row has both a non-zero score and a forward return"
        return PortfolioResult(empty_daily, _unavailable(reason, missing, scored_zero), {"available": False, "reason": reason}, missing)

    entry = frame["entry_date"].to_numpy()[candidate].astype("datetime64[ns]")
    exit_ = frame["exit_date"].to_numpy()[candidate].astype("datetime64[ns]")
    weight = score[candidate].astype("float64")
    ticker_codes, tickers = pd.factorize(frame["ticker"][candidate], sort=True)
    tickers = [str(t) for t in tickers]

    all_sessions = trading_sessions(calendar).to_numpy()
    sessions = all_sessions[(all_sessions >= entry.min()) & (all_sessions <= exit_.max())]
    book = load_price_book(source, tickers, pd.Timestamp(sessions[0]).date(), pd.Timestamp(sessions[-1]).date())
    raw = _price_matrix(book, tickers, sessions)

    # A position needs its entry and exit to be sessions with a price at the source.
    entry_idx = np.searchsorted(sessions, entry)
    exit_idx = np.searchsorted(sessions, exit_)
    is_session = (sessions[np.minimum(entry_idx, len(sessions) - 1)] == entry) & (sessions[np.minimum(exit_idx, len(sessions) - 1)] == exit_)
    known = np.array([t not in book.unknown for t in tickers])[ticker_codes]
    priced = np.isfinite(raw[np.minimum(entry_idx, len(sessions) - 1), ticker_codes]) & np.isfinite(raw[np.minimum(exit_idx, len(sessions) - 1), ticker_codes])
    for reason, bad in (("unknown_ticker_at_source", ~known), ("entry_or_exit_not_a_session", known & ~is_session),
                        ("no_price_at_source", known & is_session & ~priced)):
        if bad.any():
            missing[reason] = int(bad.sum())
    valid = known & is_session & priced
    missing_tickers = sorted(book.unknown)
    if not valid.any():
        reason = "the price source has no prices for any position"
        return PortfolioResult(empty_daily, _unavailable(reason, missing, scored_zero) | {"missing_tickers": missing_tickers},
                               {"available": False, "reason": reason}, missing)

    entry_idx, exit_idx, weight, codes = entry_idx[valid], exit_idx[valid], weight[valid], ticker_codes[valid]
    n_days, n_tickers = len(sessions), len(tickers)
    prices = pd.DataFrame(raw).ffill().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        daily_returns = np.zeros_like(prices)
        daily_returns[1:] = prices[1:] / prices[:-1] - 1.0
    daily_returns = np.nan_to_num(daily_returns, nan=0.0, posinf=0.0, neginf=0.0)

    # Open weight per (session, ticker): +w from the first holding day, -w after the exit day; then cumsum.
    first_day = entry_idx + 1
    cells = (n_days + 1) * n_tickers
    delta = np.bincount(first_day * n_tickers + codes, weights=weight, minlength=cells)
    delta -= np.bincount((exit_idx + 1) * n_tickers + codes, weights=weight, minlength=cells)
    open_weight = np.cumsum(delta.reshape(n_days + 1, n_tickers), axis=0)[:n_days]
    magnitude = np.abs(weight)
    gross = np.cumsum(np.bincount(first_day, weights=magnitude, minlength=n_days + 1)
                      - np.bincount(exit_idx + 1, weights=magnitude, minlength=n_days + 1))[:n_days]
    traded = (np.bincount(first_day, weights=magnitude, minlength=n_days + 1) + np.bincount(exit_idx, weights=magnitude, minlength=n_days + 1))[:n_days]
    gross = np.where(gross > 1e-12, gross, 0.0)  # cumsum round-off must not leave a phantom open book
    pnl = np.einsum("dk,dk->d", open_weight, daily_returns)
    invested = gross > 0
    safe_gross = np.where(invested, gross, 1.0)
    gross_return = np.where(invested, pnl / safe_gross, 0.0)
    traded_share = np.where(invested, traded / safe_gross, 0.0)
    book_return = gross_return - cost_bps / 1e4 * traded_share

    # Benchmark: equal weights at the close of the first session, held; tickers without a price then are left out.
    held = np.isfinite(raw[0])
    benchmark_equity = np.nanmean(prices[:, held] / raw[0, held], axis=1) if held.any() else np.ones(n_days)
    benchmark_return = np.zeros(n_days)
    benchmark_return[1:] = benchmark_equity[1:] / benchmark_equity[:-1] - 1.0

    daily = pd.DataFrame(
        {"book_return": book_return, "gross_return": gross_return, "benchmark_return": benchmark_return,
         "gross_exposure": gross, "traded": traded_share},
        index=pd.DatetimeIndex(sessions, name="session"),
    ).iloc[1:]  # the first session is the close of the first entry: nothing is held over it
    figures = series_metrics(daily["book_return"].to_numpy(), periods_per_year, risk_free_rate, invested=daily["gross_exposure"].to_numpy() > 0)
    portfolio = {
        "available": True,
        "positions": int(valid.sum()),
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

