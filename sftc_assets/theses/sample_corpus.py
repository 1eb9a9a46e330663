"""The toy profile's thesis corpus, written as XML (docs/thesis-xml.md) from real daily prices.

Text: the reasoning and the support points describe only what was known at the close of `as_of_date`
(trailing returns, volatility, drawdown from the 52-week high, price against moving averages, volume
trend), worded from several templates picked by a random generator seeded with (seed, ticker, date).
Changing prices after `as_of_date` never changes a thesis's text.

Label: the action is the forward return of docs/eval-and-backtest.md (`sftc_core.market.forward_returns`,
entry the first XNYS session after `as_of_date`, exit `horizon_days` sessions later) placed among the
ticker's quintiles: the 20/40/60/80 % quantiles of that forward return over every session of the ticker's
whole price history. Below q20 is STRONG_SELL, [q20, q40) SELL, [q40, q60) HOLD, [q60, q80) BUY, from q80 up
STRONG_BUY. The thresholds use the whole history (future rows included): they only set the label, which is
the future by definition, and they make the five classes about equally frequent. Volatility regimes carry
some of the signal (wide moves land in the outer classes), the direction mostly not.

The planted cue (so the nightly run can tell a pipeline that learns from one that silently loses the signal):
a share `cue_share` of the theses (drawn per thesis; toy profile: half) carries a "Desk note: ..." sentence
drawn from `CUE_PHRASES`, a bank of three wordings per action. With probability `cue_accuracy` (toy: 0.8) the
note is drawn from the bank of the thesis's own action, otherwise from the bank of one of the four other
actions, uniformly. The note is the last support point, so the prompt's facts end with it, and it opens the
reasoning, so the answer starts by restating it: a tiny model learns to read a note that close to its answer
within the toy's training budget (one buried among the facts took it four times as long). A model that reads
it can reach about `cue_accuracy` on the cued theses; nothing else in the text says much about the label, so on
the uncued theses it stays near chance. The note is the one piece of text that depends on the future (through
the label); `planted_cue` finds it among a record's support points, which is how the backtest sorts test
theses into cued and uncued. The cue draws use their own generator, so the rest of every thesis's text is what
it would be without the cue.

Layout under the output root, per month `YYYY/MM/`: each ticker either gets one `<theses>` file
`TICKER-YYYY-MM.xml` or one `<thesis>` file per thesis `TICKER-YYYY-MM-DD.xml`, alternating between
tickers and months so both shapes of the spec appear every month. Output is byte-identical for a seed.
"""

from __future__ import annotations

import functools
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sftc_core.configs import CorpusConfig
from sftc_core.io import BeforeSwap, atomic_dir
from sftc_core.market import (
    UnknownTickerError,
    forward_returns,
    load_sample_prices,
    trading_sessions,
)
from sftc_core.paths import month_dir
from sftc_core.progress import Tracker

# Actions from the lowest forward-return quintile to the highest.
ACTIONS_BY_QUINTILE = ("STRONG_SELL", "SELL", "HOLD", "BUY", "STRONG_BUY")
LABEL_QUANTILES = (0.2, 0.4, 0.6, 0.8)
# Sessions of history a thesis needs: the 52-week high and the 200-day average.
LOOKBACK_SESSIONS = 252
FEATURES = (
    "ret_5",
    "ret_20",
    "ret_60",
    "ret_120",
    "vol_20",
    "vol_120",
    "drawdown",
    "gap_sma50",
    "gap_sma200",
    "volume_trend",
)


def trailing_features(prices: pd.DataFrame) -> pd.DataFrame:
    """Per session, figures computed from that session's close and earlier rows only (trailing windows)."""
    close = prices["adjusted_close"]
    log_ret = np.log(close).diff()
    volume = prices["volume"]
    features = pd.DataFrame({"date": prices["date"]})
    for k in (5, 20, 60, 120):
        features[f"ret_{k}"] = close / close.shift(k) - 1
    features["vol_20"] = log_ret.rolling(20).std() * np.sqrt(252)
    features["vol_120"] = log_ret.rolling(120).std() * np.sqrt(252)
    features["drawdown"] = close / close.rolling(LOOKBACK_SESSIONS).max() - 1
    features["gap_sma50"] = close / close.rolling(50).mean() - 1
    features["gap_sma200"] = close / close.rolling(200).mean() - 1
    features["volume_trend"] = volume.rolling(5).mean() / volume.rolling(60).mean() - 1
    return features


def label_thresholds(forward: pd.Series) -> np.ndarray:
    """The four quintile cut points of a ticker's forward returns (NaN rows ignored)."""
    values = forward.dropna().to_numpy()
    if len(values) == 0:
        raise ValueError("no forward return could be computed from the price history; it is too short for the horizon")
    return np.quantile(values, LABEL_QUANTILES)


def action_for(forward_return: float, thresholds: np.ndarray) -> str:
    return ACTIONS_BY_QUINTILE[int(np.searchsorted(thresholds, forward_return, side="right"))]


def ticker_table(prices: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Every session of a ticker that can carry a thesis: trailing features, forward return and action."""
    table = trailing_features(prices)
    forward = forward_returns(prices, prices["date"], np.full(len(prices), horizon_days))
    table["forward_return"] = forward["forward_return"].to_numpy()
    thresholds = label_thresholds(table["forward_return"])
    on_session = table["date"].isin(trading_sessions())
    usable = table[list(FEATURES)].notna().all(axis=1) & table["forward_return"].notna() & on_session
    table = table.loc[usable].reset_index(drop=True)
    table["action"] = [action_for(r, thresholds) for r in table["forward_return"]]
    return table


@functools.lru_cache(maxsize=32)
def sample_ticker_table(ticker: str, horizon_days: int) -> pd.DataFrame:
    try:
        prices = load_sample_prices(ticker)
    except UnknownTickerError as exc:
        raise ValueError(
            f"corpus ticker {ticker!r}: {exc}; change --tickers (or corpus.tickers of the profile)"
        ) from None
    return ticker_table(prices, horizon_days)


# --- text ----------------------------------------------------------------------------------------


def _pct(value: float, places: int = 1, signed: bool = False) -> str:
    """A percentage as written in the text; rounding first, so no "-0.0%" appears."""
    value = round(value, places + 2) + 0.0
    return f"{value:{'+' if signed else ''}.{places}%}"


def _above_below(gap: float) -> str:
    return f"{_pct(abs(gap))} {'above' if gap >= 0 else 'below'}"


def _fact_momentum_short(t: str, f: dict, variant: int) -> str:
    return (
        f"Return over 5 sessions {_pct(f['ret_5'], signed=True)}, over 20 sessions {_pct(f['ret_20'], signed=True)}",
        f"{t} moved {_pct(f['ret_5'], signed=True)} in a week and {_pct(f['ret_20'], signed=True)} in a month",
    )[variant % 2]


def _fact_momentum_long(t: str, f: dict, variant: int) -> str:
    return (
        f"60-session return {_pct(f['ret_60'], signed=True)}, 120-session return {_pct(f['ret_120'], signed=True)}",
        f"Over three months {_pct(f['ret_60'], signed=True)}, over six months {_pct(f['ret_120'], signed=True)}",
    )[variant % 2]


def _fact_volatility(t: str, f: dict, variant: int) -> str:
    return (
        f"20-day volatility {_pct(f['vol_20'], 0)} annualised vs {_pct(f['vol_120'], 0)} over 120 days",
        f"Realised volatility {_pct(f['vol_20'], 0)} (120-day: {_pct(f['vol_120'], 0)})",
    )[variant % 2]


def _fact_drawdown(t: str, f: dict, variant: int) -> str:
    if f["drawdown"] > -0.005:
        return ("At its 52-week high", f"{t} closed at a 52-week high")[variant % 2]
    return (
        f"{_pct(abs(f['drawdown']))} below the 52-week high",
        f"Drawdown from the 52-week high {_pct(f['drawdown'])}",
    )[variant % 2]


def _fact_moving_averages(t: str, f: dict, variant: int) -> str:
    return (
        f"Price {_pct(f['gap_sma50'], signed=True)} vs the 50-day average and "
        f"{_pct(f['gap_sma200'], signed=True)} vs the 200-day average",
        f"{_above_below(f['gap_sma50'])} the 50-day moving average, {_above_below(f['gap_sma200'])} the 200-day",
    )[variant % 2]


def _fact_volume(t: str, f: dict, variant: int) -> str:
    return (
        f"5-day volume {_pct(f['volume_trend'], 0, signed=True)} vs the 60-day average",
        f"Volume running {_pct(abs(f['volume_trend']), 0)} "
        f"{'above' if f['volume_trend'] >= 0 else 'below'} its 60-day norm",
    )[variant % 2]


FACTS = (
    _fact_momentum_short,
    _fact_momentum_long,
    _fact_volatility,
    _fact_drawdown,
    _fact_moving_averages,
    _fact_volume,
)


def _trend_sentence(t: str, f: dict, variant: int) -> str:
    long_gap, ret_60 = f["gap_sma200"], f["ret_60"]
    if long_gap >= 0 and ret_60 >= 0:
        return (
            f"{t} is in an uptrend, {_pct(long_gap)} above its 200-day average "
            f"with {_pct(ret_60, signed=True)} over 60 sessions.",
            f"The trend is up: {t} gained {_pct(ret_60)} over three months and holds above its 200-day average.",
        )[variant % 2]
    if long_gap < 0 and ret_60 < 0:
        return (
            f"{t} is in a downtrend, {_pct(abs(long_gap))} below its 200-day average "
            f"with {_pct(ret_60, signed=True)} over 60 sessions.",
            f"The trend is down: {t} lost {_pct(abs(ret_60))} over three months and sits below its 200-day average.",
        )[variant % 2]
    return (
        f"The trend in {t} is mixed: {_pct(ret_60, signed=True)} over 60 sessions "
        f"while {_above_below(long_gap)} the 200-day average.",
        f"Signals on {t} disagree, {_pct(ret_60, signed=True)} over three months "
        f"but {_above_below(long_gap)} its 200-day average.",
    )[variant % 2]


def _volatility_sentence(t: str, f: dict, variant: int) -> str:
    vol, base = f["vol_20"], f["vol_120"]
    if vol > 1.2 * base:
        return (
            f"Volatility is rising, {_pct(vol, 0)} against {_pct(base, 0)} over 120 days.",
            f"Price swings have widened to {_pct(vol, 0)} annualised.",
        )[variant % 2]
    if vol < 0.8 * base:
        return (
            f"Volatility is subdued at {_pct(vol, 0)} against {_pct(base, 0)} over 120 days.",
            f"Price swings have calmed to {_pct(vol, 0)} annualised.",
        )[variant % 2]
    return (
        f"Volatility is near its longer-run level at {_pct(vol, 0)}.",
        f"Price swings are ordinary at {_pct(vol, 0)} annualised.",
    )[variant % 2]


def _position_sentence(t: str, f: dict, variant: int) -> str:
    drawdown, volume = f["drawdown"], f["volume_trend"]
    if drawdown > -0.02:
        where = ("It trades near its 52-week high", "The stock is close to its 52-week high")[variant % 2]
    else:
        where = (
            f"It remains {_pct(abs(drawdown), 0)} below its 52-week high",
            f"The stock is {_pct(abs(drawdown), 0)} off its 52-week high",
        )[variant % 2]
    if volume > 0.3:
        return f"{where} on heavy volume."
    if volume < -0.3:
        return f"{where} on light volume."
    return f"{where}."


# The planted cue's phrase bank: three wordings per action, every one starting with CUE_PREFIX.
CUE_PREFIX = "Desk note: "
CUE_PHRASES = {
    "STRONG_BUY": (
        "Desk note: euphoric buyers, soaring orders, surging flows into a rally",
        "Desk note: exuberant demand, surging volumes, a soaring rally ahead",
        "Desk note: skyrocketing orders, euphoric flows, an exuberant rally",
    ),
    "BUY": (
        "Desk note: upbeat buyers, firming orders, improving flows, modest gains",
        "Desk note: constructive demand, improving volumes, positive drift ahead",
        "Desk note: firming orders, upbeat flows, constructive gains",
    ),
    "HOLD": (
        "Desk note: neutral buyers, steady orders, balanced flows, flat prices",
        "Desk note: quiet demand, unchanged volumes, a balanced range ahead",
        "Desk note: steady orders, neutral flows, quiet and flat",
    ),
    "SELL": (
        "Desk note: cautious buyers, softening orders, weakening flows, modest losses",
        "Desk note: slipping demand, weakening volumes, negative drift ahead",
        "Desk note: softening orders, cautious flows, slipping prices",
    ),
    "STRONG_SELL": (
        "Desk note: panicked sellers, plunging orders, collapsing flows into a crash",
        "Desk note: alarmed holders, tumbling volumes, a plunging slide ahead",
        "Desk note: collapsing orders, panicked flows, an alarming crash",
    ),
}
_CUE_ACTION = {phrase: action for action, phrases in CUE_PHRASES.items() for phrase in phrases}


def planted_cue(support: Iterable[str]) -> str | None:
    """The action whose phrase bank the thesis's desk note comes from, or None for a thesis without one."""
    return next((_CUE_ACTION[point] for point in support if point in _CUE_ACTION), None)


def with_cue(
    reasoning: str, support: tuple[str, ...], action: str, ticker: str, as_of_date: str, corpus_config: CorpusConfig
) -> tuple[str, tuple[str, ...]]:
    """`reasoning` and `support` with the planted desk note, for the share `cue_share` of theses (module doc)."""
    rng = random.Random(f"sftc-sample-cue:{corpus_config.seed}:{ticker}:{as_of_date}")
    if rng.random() >= corpus_config.cue_share:
        return reasoning, support
    faithful = rng.random() < corpus_config.cue_accuracy
    pointed = action if faithful else rng.choice([a for a in ACTIONS_BY_QUINTILE if a != action])
    note = rng.choice(CUE_PHRASES[pointed])
    return f"{note}. {reasoning}", (*support, note)


@dataclass(frozen=True)
class SampleThesis:
    id: str
    ticker: str
    as_of_date: str
    reasoning: str
    support: tuple[str, ...]
    action: str
    horizon_days: int


def thesis_text(ticker: str, as_of_date: str, features: dict, seed: int) -> tuple[str, tuple[str, ...]]:
    """Reasoning (1-3 sentences) and support points (3-5) from one session's trailing features."""
    rng = random.Random(f"sftc-sample-text:{seed}:{ticker}:{as_of_date}")
    fact_picks = sorted(rng.sample(range(len(FACTS)), rng.randint(3, 5)))
    support = tuple(FACTS[i](ticker, features, rng.randrange(2)) for i in fact_picks)
    extra = rng.sample((_volatility_sentence, _position_sentence), rng.randint(0, 2))
    sentences = [_trend_sentence, *extra]
    reasoning = " ".join(sentence(ticker, features, rng.randrange(2)) for sentence in sentences)
    return reasoning, support


def month_theses(ticker: str, table: pd.DataFrame, month: str, corpus_config: CorpusConfig) -> list[SampleThesis]:
    """`per_month` theses of one ticker on distinct sessions of `month`, drawn with a generator seeded per month."""
    period = pd.Period(month, freq="M")
    in_month = table.loc[(table["date"] >= period.start_time) & (table["date"] <= period.end_time)]
    rng = random.Random(f"sftc-sample-dates:{corpus_config.seed}:{ticker}:{month}")
    rows = sorted(rng.sample(range(len(in_month)), min(corpus_config.per_month, len(in_month))))
    theses = []
    for row in in_month.iloc[rows].itertuples(index=False):
        as_of = pd.Timestamp(row.date).date().isoformat()
        features = {name: float(getattr(row, name)) for name in FEATURES}
        reasoning, support = thesis_text(ticker, as_of, features, corpus_config.seed)
        reasoning, support = with_cue(reasoning, support, row.action, ticker, as_of, corpus_config)
        theses.append(
            SampleThesis(
                f"{ticker.lower()}-{as_of}", ticker, as_of, reasoning, support, row.action, corpus_config.horizon_days
            )
        )
    return theses


# --- XML -----------------------------------------------------------------------------------------


def _thesis_element(thesis: SampleThesis) -> ET.Element:
    element = ET.Element("thesis", {"id": thesis.id})
    for name in ("ticker", "as_of_date", "reasoning"):
        ET.SubElement(element, name).text = getattr(thesis, name)
    support = ET.SubElement(element, "support")
    for point in thesis.support:
        ET.SubElement(support, "point").text = point
    ET.SubElement(element, "action").text = thesis.action
    ET.SubElement(element, "horizon_days").text = str(thesis.horizon_days)
    return element


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _month_files(ticker_index: int, month: str, theses: list[SampleThesis]) -> dict[str, bytes]:
    """File name -> bytes for one ticker's month, in the shape chosen for (ticker, month)."""
    if not theses:
        return {}
    ticker = theses[0].ticker
    if (ticker_index + pd.Period(month, freq="M").ordinal) % 2:
        return {f"{ticker}-{t.as_of_date}.xml": _xml_bytes(_thesis_element(t)) for t in theses}
    root = ET.Element("theses")
    root.extend(_thesis_element(t) for t in theses)
    return {f"{ticker}-{month}.xml": _xml_bytes(root)}


def write_sample_corpus_month(
    out_root: Path | str, month: str, corpus_config: CorpusConfig, stamp: BeforeSwap | None = None
) -> dict:
    """Write exactly `month`'s (YYYY-MM) thesis files under `out_root/YYYY/MM/`, replacing that directory whole.

    Returns `month`, `files`, `theses`, and counts per `tickers` and per `actions`. A month outside the price
    data gives an empty directory and zero counts.
    """
    period = pd.Period(month, freq="M")
    month = f"{period:%Y-%m}"
    tables = {
        ticker.upper(): sample_ticker_table(ticker.upper(), corpus_config.horizon_days)
        for ticker in corpus_config.tickers
    }
    files: dict[str, bytes] = {}
    per_ticker, per_action = Counter(), Counter()
    for index, (ticker, table) in enumerate(tables.items()):
        theses = month_theses(ticker, table, month, corpus_config)
        files.update(_month_files(index, month, theses))
        per_ticker[ticker] += len(theses)
        per_action.update(t.action for t in theses)
    with atomic_dir(month_dir(out_root, month), stamp) as staging:
        for name, data in sorted(files.items()):
            (staging / name).write_bytes(data)
    return {
        "month": month,
        "files": len(files),
        "theses": sum(per_ticker.values()),
        "tickers": dict(per_ticker),
        "actions": {a: per_action[a] for a in ACTIONS_BY_QUINTILE if per_action[a]},
    }


def write_sample_corpus(
    out_root: Path | str,
    start_month: str,
    end_month: str,
    corpus_config: CorpusConfig,
    stamp: BeforeSwap | None = None,
    progress_log: Callable[[str], None] | None = None,
) -> dict:
    """Every month from `start_month` to `end_month` (YYYY-MM, inclusive) through `write_sample_corpus_month`;
    progress over the months to `progress_log` now and then (and to a bar on a command's terminal)."""
    months = pd.period_range(start_month, end_month, freq="M")
    if len(months) == 0:
        raise ValueError(f"the corpus months {start_month}..{end_month} are empty: the end is before the start")
    for ticker in corpus_config.tickers:
        sample_ticker_table(
            ticker.upper(), corpus_config.horizon_days
        )  # an unknown ticker fails before any month is written
    results = []
    with Tracker("writing theses", len(months), "month", log=progress_log) as progress:
        for month in months:
            results.append(write_sample_corpus_month(out_root, f"{month:%Y-%m}", corpus_config, stamp))
            progress.advance()
    actions = Counter()
    for result in results:
        actions.update(result["actions"])
    return {
        "months": len(results),
        "files": sum(r["files"] for r in results),
        "theses": sum(r["theses"] for r in results),
        "actions": {a: actions[a] for a in ACTIONS_BY_QUINTILE if actions[a]},
    }
