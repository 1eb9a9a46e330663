"""The sample corpus: determinism, both file shapes, labels from the forward return, text from the past only."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
from bokeh_sampledata import stocks

from sftc_assets.theses import sample_corpus
from sftc_assets.theses.parser import parse_corpus
from sftc_core.artifacts import is_marker
from sftc_core.configs import CorpusConfig
from sftc_core.market import load_sample_prices
from sftc_jobs.cli import main as sftc

CONFIG = CorpusConfig(
    source="sample",
    tickers=["AAPL", "MSFT", "IBM", "GOOG"],
    per_month=6,
    seed=11,
    horizon_days=5,
    cue_share=0.5,
    cue_accuracy=0.8,
)
ORDER = ("STRONG_SELL", "SELL", "HOLD", "BUY", "STRONG_BUY")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """The theses written (their markers record when they were written, not what)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not is_marker(p)
    }


def theses_in(root: Path) -> list[dict]:
    found = []
    for path in sorted(root.rglob("*.xml")):
        top = ET.parse(path).getroot()
        for elem in [top] if top.tag == "thesis" else list(top):
            found.append(
                {
                    "root": top.tag,
                    "file": path,
                    "id": elem.get("id"),
                    "ticker": elem.findtext("ticker"),
                    "as_of_date": elem.findtext("as_of_date"),
                    "reasoning": elem.findtext("reasoning"),
                    "support": [p.text for p in elem.find("support")],
                    "action": elem.findtext("action"),
                    "horizon_days": int(elem.findtext("horizon_days")),
                }
            )
    return found


def independent_labels(ticker: str, horizon: int) -> tuple[pd.Series, np.ndarray]:
    """Forward returns and quintile cuts straight from bokeh-sampledata and the XNYS calendar (no sftc code)."""
    raw = getattr(stocks, ticker)
    frame = pd.DataFrame({"date": pd.to_datetime(raw["date"]), "adj": raw["adj_close"]}).set_index("date")
    sessions = xcals.get_calendar("XNYS", start="1995-01-01").sessions.tz_localize(None)
    span = sessions[(sessions >= frame.index[0]) & (sessions <= frame.index[-1])]
    assert list(span) == list(frame.index), (
        "the sample prices have exactly the XNYS sessions, so a row shift is a session shift"
    )
    entry, exit_ = frame["adj"].shift(-1), frame["adj"].shift(-(1 + horizon))
    forward = exit_ / entry - 1
    return forward, np.quantile(forward.dropna().to_numpy(), [0.2, 0.4, 0.6, 0.8])


def expected_action(value: float, cuts: np.ndarray) -> str:
    if value < cuts[0]:
        return "STRONG_SELL"
    if value < cuts[1]:
        return "SELL"
    if value < cuts[2]:
        return "HOLD"
    if value < cuts[3]:
        return "BUY"
    return "STRONG_BUY"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for month in ("2011-03", "2011-04", "2012-11"):
        sample_corpus.write_sample_corpus_month(root, month, CONFIG)
    return root


def test_month_is_byte_identical_for_a_seed_and_changes_with_it(tmp_path):
    for name in ("a", "b"):
        sample_corpus.write_sample_corpus_month(tmp_path / name, "2011-06", CONFIG)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    sample_corpus.write_sample_corpus_month(tmp_path / "c", "2011-06", CONFIG.model_copy(update={"seed": 12}))
    assert tree_bytes(tmp_path / "c") != tree_bytes(tmp_path / "a")


def test_layout_counts_and_both_file_shapes(corpus):
    theses = theses_in(corpus)
    for month in ("2011-03", "2011-04", "2012-11"):
        in_month = [t for t in theses if t["as_of_date"].startswith(month)]
        year, mm = month.split("-")
        assert all(t["file"].parent == corpus / year / mm for t in in_month)
        per_ticker = Counter(t["ticker"] for t in in_month)
        assert per_ticker == {ticker: CONFIG.per_month for ticker in CONFIG.tickers}
        assert {t["root"] for t in in_month} == {"thesis", "theses"}
    assert len({t["id"] for t in theses}) == len(theses)
    assert len({(t["ticker"], t["as_of_date"]) for t in theses}) == len(theses)  # distinct sessions per ticker
    sessions = set(xcals.get_calendar("XNYS", start="2010-01-01").sessions.strftime("%Y-%m-%d"))
    assert all(t["as_of_date"] in sessions for t in theses)


def test_the_parser_accepts_every_thesis(corpus):
    result = parse_corpus(corpus)
    assert result.rejects == []
    assert len(result.records) == len(theses_in(corpus))


def test_text_stays_modest(corpus):
    for thesis in theses_in(corpus):
        cued = sample_corpus.planted_cue(thesis["support"]) is not None
        assert 3 + cued <= len(thesis["support"]) <= 5 + cued
        assert 1 + cued <= len(re.findall(r"\.(?:\s|$)", thesis["reasoning"])) <= 3 + cued
        assert len(thesis["reasoning"]) < 300 + 80 * cued
        assert all(";" not in point for point in thesis["support"])


def test_the_planted_cue_is_where_the_generator_says_and_names_the_action_mostly():
    table = sample_corpus.sample_ticker_table("IBM", 5)
    months = [f"{year}-{month:02d}" for year in (2010, 2011, 2012) for month in range(1, 13)]
    config = CONFIG.model_copy(update={"per_month": 20})
    cued = [
        t
        for m in months
        for t in sample_corpus.month_theses("IBM", table, m, config)
        if sample_corpus.planted_cue(t.support)
    ]
    total = sum(len(sample_corpus.month_theses("IBM", table, m, config)) for m in months)
    # ~half the theses carry the note, last among the facts and opening the reasoning;
    # it names the label ~80% of the time.
    assert 0.42 < len(cued) / total < 0.58
    assert all(
        t.support[-1].startswith(sample_corpus.CUE_PREFIX) and t.reasoning.startswith(t.support[-1] + ". ")
        for t in cued
    )
    agrees = np.mean([sample_corpus.planted_cue(t.support) == t.action for t in cued])
    assert 0.74 < agrees < 0.86
    # Every wording belongs to one action's bank, and a wrong note points to another action.
    assert {sample_corpus.planted_cue([p]) for phrases in sample_corpus.CUE_PHRASES.values() for p in phrases} == set(
        ORDER
    )
    assert sample_corpus.planted_cue(["Desk note: something else"]) is None


def test_without_the_cue_the_text_is_the_same_and_no_note_appears():
    table = sample_corpus.sample_ticker_table("MSFT", 5)
    with_cue = sample_corpus.month_theses("MSFT", table, "2011-08", CONFIG.model_copy(update={"per_month": 20}))
    without = sample_corpus.month_theses(
        "MSFT", table, "2011-08", CONFIG.model_copy(update={"per_month": 20, "cue_share": 0.0})
    )
    assert all(sample_corpus.planted_cue(t.support) is None for t in without)
    for a, b in zip(with_cue, without):
        note = sample_corpus.planted_cue(a.support)
        assert (
            (a.support[:-1], a.reasoning.split(". ", 1)[1]) == (b.support, b.reasoning)
            if note
            else (a.support, a.reasoning) == (b.support, b.reasoning)
        )
        assert a.action == b.action


def test_labels_are_the_forward_return_quintiles(corpus):
    theses = theses_in(corpus)
    checked = 0
    for ticker in CONFIG.tickers:
        forward, cuts = independent_labels(ticker, CONFIG.horizon_days)
        for thesis in (t for t in theses if t["ticker"] == ticker):
            value = forward.loc[pd.Timestamp(thesis["as_of_date"])]
            assert np.isfinite(value), f"{thesis['id']}: the forward window must exist in the data"
            assert thesis["action"] == expected_action(value, cuts), thesis["id"]
            checked += 1
    assert checked == len(theses) > 0


def test_stated_returns_match_the_trailing_prices(corpus):
    adj = {
        t: pd.Series(getattr(stocks, t)["adj_close"], index=pd.to_datetime(getattr(stocks, t)["date"]))
        for t in CONFIG.tickers
    }
    pattern = re.compile(r"^Return over 5 sessions ([+-]\d+\.\d)%, over 20 sessions ([+-]\d+\.\d)%$")
    seen = 0
    for thesis in theses_in(corpus):
        series = adj[thesis["ticker"]].loc[: thesis["as_of_date"]]
        for point in thesis["support"]:
            match = pattern.match(point)
            if match:
                assert float(match[1]) == pytest.approx(100 * (series.iloc[-1] / series.iloc[-6] - 1), abs=0.051)
                assert float(match[2]) == pytest.approx(100 * (series.iloc[-1] / series.iloc[-21] - 1), abs=0.051)
                seen += 1
    assert seen > 0


def test_text_uses_only_past_prices_while_labels_follow_the_future():
    prices = load_sample_prices("IBM")
    cut = pd.Timestamp("2011-05-13")
    rng = np.random.default_rng(0)
    altered = prices.copy()
    later = altered["date"] > cut
    for column in ("open", "high", "low", "close", "adjusted_close", "volume"):
        altered.loc[later, column] *= rng.uniform(0.5, 1.5, later.sum())
    # Without the planted cue: the desk note is the one text that follows the label, on purpose (tested above).
    config = CONFIG.model_copy(update={"per_month": 20, "cue_share": 0.0})
    original = sample_corpus.month_theses("IBM", sample_corpus.ticker_table(prices, 5), "2011-05", config)
    changed = sample_corpus.month_theses("IBM", sample_corpus.ticker_table(altered, 5), "2011-05", config)
    assert [t.as_of_date for t in original] == [t.as_of_date for t in changed]
    before_cut = [(a, b) for a, b in zip(original, changed) if pd.Timestamp(a.as_of_date) <= cut]
    after_cut = [(a, b) for a, b in zip(original, changed) if pd.Timestamp(a.as_of_date) > cut]
    assert before_cut and after_cut
    assert all((a.reasoning, a.support) == (b.reasoning, b.support) for a, b in before_cut)
    assert any(a.action != b.action for a, b in before_cut), "labels of theses before the cut depend on prices after it"
    assert any((a.reasoning, a.support) != (b.reasoning, b.support) for a, b in after_cut)


def test_classes_are_balanced_ish_over_the_toy_window(tmp_path):
    result = sample_corpus.write_sample_corpus(tmp_path, "2010-01", "2012-12", CONFIG)
    assert result["months"] == 36 and result["theses"] == 36 * 4 * CONFIG.per_month
    shares = {action: result["actions"].get(action, 0) / result["theses"] for action in ORDER}
    assert all(0.1 <= share <= 0.3 for share in shares.values()), shares


def test_a_month_beyond_the_data_is_empty_and_replaces_what_was_there(tmp_path):
    stale = tmp_path / "2013" / "06" / "old.xml"
    stale.parent.mkdir(parents=True)
    stale.write_text("<theses/>")
    result = sample_corpus.write_sample_corpus_month(tmp_path, "2013-06", CONFIG)
    assert (result["files"], result["theses"]) == (0, 0)
    assert list((tmp_path / "2013" / "06").iterdir()) == []


def test_unknown_ticker_is_a_clear_error_and_writes_nothing(tmp_path):
    config = CONFIG.model_copy(update={"tickers": ["AAPL", "NOPE"]})
    with pytest.raises(ValueError, match="'NOPE'.*--tickers"):
        sample_corpus.write_sample_corpus(tmp_path / "out", "2011-01", "2011-02", config)
    assert not (tmp_path / "out").exists()


def test_cli_make_sample_corpus(tmp_path, data_dir, capsys):
    args = [
        "make-sample-corpus",
        "--out",
        str(tmp_path / "a"),
        "--start",
        "2012-01-01",
        "--end",
        "2012-02-29",
        "--per-month",
        "3",
        "--seed",
        "5",
    ]
    assert sftc(args) == 0
    assert "24 theses" in capsys.readouterr().out
    assert sftc([*args[:2], str(tmp_path / "b"), *args[3:]]) == 0
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert sftc(["make-sample-corpus", "--out", str(tmp_path / "c"), "--tickers", "ZZZZ"]) == 2
    assert "ZZZZ" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
