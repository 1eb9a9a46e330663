"""The EODHD client and source against a local server on 127.0.0.1 that speaks EODHD's format
(tests/eodhd_server.py)."""

from __future__ import annotations

import datetime as dt
import logging
import random
import traceback

import pandas as pd
import pytest
from eodhd_server import HTML_ERROR, FakeEodhd, malformed, slow, status
from pydantic import SecretStr

from sftc_core.configs import PricesConfig
from sftc_core.market import (
    UnknownTickerError,
    forward_returns,
    load_price_book,
    load_sample_prices,
)
from sftc_core.settings import load_settings
from sftc_platform.prices import (
    EodhdAuthError,
    EodhdClient,
    EodhdPriceSource,
    EodhdQuotaError,
    EodhdResponseError,
    EodhdUnavailableError,
    eodhd_symbol,
    price_source_from_settings,
)

SENTINEL = "SENTINEL-KEY-3f9a1c77"
START, END = dt.date(2012, 9, 1), dt.date(2012, 12, 31)


@pytest.fixture
def server():
    with FakeEodhd(SENTINEL) as fake:
        yield fake


def _config(server: FakeEodhd, **overrides) -> PricesConfig:
    values = {
        "eodhd_base_url": server.base_url,
        "timeout_seconds": 2.0,
        "max_retries": 3,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "max_retry_after_seconds": 30.0,
    }
    return PricesConfig(**{**values, **overrides})


class SleepRecorder:
    def __init__(self):
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _client(server, key: str = SENTINEL, **overrides) -> tuple[EodhdClient, SleepRecorder]:
    sleep = SleepRecorder()
    return EodhdClient(SecretStr(key), _config(server, **overrides), sleep=sleep, rng=random.Random(0)), sleep


def _all_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def test_symbols_follow_eodhd_naming():
    assert eodhd_symbol("aapl") == "AAPL.US"
    assert eodhd_symbol("AAPL.US") == "AAPL.US"
    assert eodhd_symbol("BRK.B") == "BRK-B.US"
    assert eodhd_symbol("VOD", "LSE") == "VOD.LSE"


def test_fetch_returns_the_served_prices(server):
    client, sleep = _client(server)
    frame = client.fetch_eod("AAPL.US", START, END)
    sample = load_sample_prices("AAPL")
    expected = sample[(sample["date"] >= "2012-09-01") & (sample["date"] <= "2012-12-31")].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    (request,) = server.requests
    assert request.query == {"api_token": SENTINEL, "fmt": "json", "from": "2012-09-01", "to": "2012-12-31"}
    assert sleep.waits == []


def test_429_honours_retry_after_then_succeeds(server):
    server.script(
        "AAPL.US", status(429, "Too Many Requests", Retry_After="2"), status(429, "Too Many Requests", Retry_After="3")
    )
    client, sleep = _client(server)
    frame = client.fetch_eod("AAPL.US", START, END)
    assert len(frame) > 50
    assert len(server.requests_for("AAPL.US")) == 3
    assert sleep.waits[0] >= 2 and sleep.waits[1] >= 3  # at least what the server asked for


def test_429_with_a_long_retry_after_is_a_quota_error_at_once(server):
    server.script("AAPL.US", status(429, "Too Many Requests", Retry_After="3600"))
    client, sleep = _client(server)
    with pytest.raises(EodhdQuotaError, match="3600 s"):
        client.fetch_eod("AAPL.US", START, END)
    assert len(server.requests_for("AAPL.US")) == 1 and sleep.waits == []


def test_429_every_time_is_a_quota_error_after_the_retries(server):
    server.script("AAPL.US", *[status(429, "Too Many Requests")] * 4)
    client, sleep = _client(server)
    with pytest.raises(EodhdQuotaError, match="after 4 attempts"):
        client.fetch_eod("AAPL.US", START, END)
    assert len(server.requests_for("AAPL.US")) == 4 and len(sleep.waits) == 3


def test_5xx_is_retried_with_jittered_exponential_backoff(server):
    server.script(
        "AAPL.US", status(500, "oops"), status(503, HTML_ERROR, Content_Type="text/html"), status(502, HTML_ERROR)
    )
    client, sleep = _client(server, backoff_seconds=1.0, max_backoff_seconds=100.0)
    frame = client.fetch_eod("AAPL.US", START, END)
    assert not frame.empty
    assert len(sleep.waits) == 3
    for attempt, wait in enumerate(sleep.waits):
        ceiling = 2.0**attempt
        assert ceiling / 2 <= wait <= ceiling


def test_5xx_every_time_fails_naming_the_last_error_without_html(server):
    server.script("AAPL.US", *[status(502, HTML_ERROR, Content_Type="text/html")] * 4)
    client, _ = _client(server)
    with pytest.raises(EodhdUnavailableError) as info:
        client.fetch_eod("AAPL.US", START, END)
    message = str(info.value)
    assert "after 4 attempts" in message and "HTTP 502" in message and "502 Bad Gateway" in message
    assert "<" not in message.split("last:")[1]  # tags stripped from the body excerpt


@pytest.mark.parametrize("code", [401, 403])
def test_auth_errors_are_not_retried(server, code):
    server.script("AAPL.US", status(code, "Forbidden"))
    client, sleep = _client(server)
    with pytest.raises(EodhdAuthError, match=f"HTTP {code}"):
        client.fetch_eod("AAPL.US", START, END)
    assert len(server.requests_for("AAPL.US")) == 1 and sleep.waits == []


def test_a_wrong_key_is_an_auth_error(server):
    client, _ = _client(server, key="not-the-key")
    with pytest.raises(EodhdAuthError, match="EODHD_API_KEY"):
        client.fetch_eod("AAPL.US", START, END)


def test_402_is_a_spent_quota(server):
    server.script("AAPL.US", status(402, "You have exceeded your daily API requests limit."))
    client, sleep = _client(server)
    with pytest.raises(EodhdQuotaError, match="402"):
        client.fetch_eod("AAPL.US", START, END)
    assert sleep.waits == []


def test_404_is_an_unknown_symbol(server):
    client, _ = _client(server)
    with pytest.raises(UnknownTickerError, match="NOPE.US") as info:
        client.fetch_eod("NOPE.US", START, END)
    assert isinstance(info.value, KeyError)
    assert len(server.requests_for("NOPE.US")) == 1


def test_malformed_json_is_a_clear_error(server):
    server.script("AAPL.US", malformed())
    client, _ = _client(server)
    with pytest.raises(EodhdResponseError, match="not JSON"):
        client.fetch_eod("AAPL.US", START, END)


def test_a_json_object_instead_of_rows_is_a_clear_error(server):
    server.script("AAPL.US", status(200, '{"error": "something"}', Content_Type="application/json"))
    client, _ = _client(server)
    with pytest.raises(EodhdResponseError, match="expected a JSON list"):
        client.fetch_eod("AAPL.US", START, END)


def test_a_slow_answer_times_out_and_is_retried(server):
    server.script("AAPL.US", slow(3.0))
    client, sleep = _client(
        server, timeout_seconds=1.0
    )  # the retry's quick answer arrives within it on a loaded machine
    frame = client.fetch_eod("AAPL.US", START, END)
    assert not frame.empty and len(sleep.waits) == 1


def test_slow_every_time_fails_after_the_retries(server):
    server.script("AAPL.US", slow(1.0), slow(1.0))
    client, _ = _client(server, timeout_seconds=0.2, max_retries=1)
    with pytest.raises(EodhdUnavailableError, match="Timeout"):
        client.fetch_eod("AAPL.US", START, END)


def test_the_key_never_reaches_logs_messages_or_files(server, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # urllib3 logs each request line, query string included, at DEBUG
    # Whatever an earlier import did to urllib3's loggers (a level, or disabling them through a logging config).
    caplog.set_level(logging.DEBUG, logger="urllib3")
    for name in ("urllib3", "urllib3.connectionpool"):
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    client, _ = _client(server)
    source = EodhdPriceSource(client, tmp_path / "cache", today=lambda: dt.date(2013, 6, 1))
    source.get_prices("AAPL", START, END)
    server.script("MSFT.US", *[status(500, f"echo {SENTINEL}")] * 4)
    with pytest.raises(EodhdUnavailableError) as failed:
        source.get_prices("MSFT", START, END)
    server.script("IBM.US", status(401, f"bad key {SENTINEL}"))
    with pytest.raises(EodhdAuthError) as refused:
        source.get_prices("IBM", START, END)
    # A connection error: requests puts the whole URL, key included, into its message.
    dead = EodhdClient(
        SecretStr(SENTINEL), PricesConfig(eodhd_base_url="http://127.0.0.1:9", max_retries=0, timeout_seconds=1)
    )
    with pytest.raises(EodhdUnavailableError) as unreachable:
        dead.fetch_eod("AAPL.US", START, END)

    assert any("api_token=***" in r.getMessage() for r in caplog.records), (
        "the urllib3 request line should be logged, redacted"
    )
    assert SENTINEL not in caplog.text
    assert all(SENTINEL not in r.getMessage() for r in caplog.records)
    for exc in (failed.value, refused.value, unreachable.value):
        assert SENTINEL not in _all_text(exc)
    assert "ConnectionError" in str(unreachable.value)
    files = list((tmp_path / "cache").rglob("*"))
    assert files and all(SENTINEL.encode() not in f.read_bytes() for f in files if f.is_file())
    assert SENTINEL not in repr(client.config) and SENTINEL not in repr(SecretStr(SENTINEL))


def test_cache_serves_repeats_and_extends_incrementally(server, tmp_path):
    client, _ = _client(server)
    source = EodhdPriceSource(client, tmp_path / "cache", today=lambda: dt.date(2013, 6, 1))
    first = source.get_prices("AAPL", dt.date(2012, 10, 1), dt.date(2012, 10, 31))
    again = source.get_prices("AAPL", dt.date(2012, 10, 5), dt.date(2012, 10, 20))
    assert len(server.requests) == 1
    assert set(again["date"]) <= set(first["date"])
    wider = source.get_prices("AAPL", dt.date(2012, 9, 1), dt.date(2012, 11, 30))
    queries = [(r.query["from"], r.query["to"]) for r in server.requests]
    # Only the missing ends are fetched; the last cached day is fetched again in case it was partial.
    assert queries == [("2012-10-01", "2012-10-31"), ("2012-09-01", "2012-09-30"), ("2012-10-31", "2012-11-30")]
    sample = load_sample_prices("AAPL")
    expected = sample[(sample["date"] >= "2012-09-01") & (sample["date"] <= "2012-11-30")].reset_index(drop=True)
    pd.testing.assert_frame_equal(wider, expected, check_dtype=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["AAPL.US.parquet"]  # no temp files left


def test_a_corrupt_cache_is_detected_and_refetched(server, tmp_path, caplog):
    client, _ = _client(server)
    source = EodhdPriceSource(client, tmp_path / "cache", today=lambda: dt.date(2013, 6, 1))
    source.get_prices("AAPL", START, END)
    cache = source.cache_path("AAPL.US")
    cache.write_bytes(cache.read_bytes()[: len(cache.read_bytes()) // 2])  # a torn write
    frame = source.get_prices("AAPL", START, END)
    assert len(server.requests) == 2 and not frame.empty
    assert "unreadable" in caplog.text
    assert source.get_prices("AAPL", START, END).equals(frame) and len(server.requests) == 2


def test_unknown_tickers_get_a_status_and_the_rest_goes_on(server, tmp_path):
    client, _ = _client(server)
    source = EodhdPriceSource(client, tmp_path / "cache", today=lambda: dt.date(2013, 6, 1))
    book = load_price_book(source, ["AAPL", "NOPE", "MSFT"], START, END)
    assert set(book.frames) == {"AAPL", "MSFT"} and set(book.unknown) == {"NOPE"}
    labels = forward_returns(book.get("NOPE"), ["2012-10-01"], [5])
    assert labels["return_status"].tolist() == ["unknown_ticker"]
    assert not (tmp_path / "cache" / "NOPE.US.parquet").exists()


def test_settings_pick_eodhd_only_with_a_key(monkeypatch, data_dir):
    monkeypatch.setenv("SFTC_PROFILE", "full")
    assert price_source_from_settings(load_settings()).name == "local"
    monkeypatch.setenv("EODHD_API_KEY", SENTINEL)
    source = price_source_from_settings(load_settings())
    assert source.name == "eodhd" and source.cache_dir == data_dir / "prices" / "eodhd"
