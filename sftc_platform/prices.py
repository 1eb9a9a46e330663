"""The two price sources behind `sftc_core.market.PriceSource`: EODHD over HTTP (with a Parquet cache) and local
per-ticker files, and the choice between them from the settings. Plain Python for the command line and the
assets (no Dagster); the evaluation and the backtest are handed a source.
The EODHD key is a `pydantic.SecretStr`: it is revealed only where a request is sent, and redacted from every URL, log
record, exception message and cached file.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import requests
from pydantic import SecretStr

from sftc_core.configs import ConfigError, PricesConfig
from sftc_core.http_retry import RETRIED_STATUS, backoff_seconds, retry_after_seconds
from sftc_core.io import atomic_path
from sftc_core.market import (
    PRICE_COLUMNS,
    AdjustedCloses,
    PriceDataError,
    PriceSource,
    UnknownTickerError,
    empty_prices,
    load_sample_prices,
    normalise_prices,
    sample_tickers,
)
from sftc_core.settings import Settings

log = logging.getLogger(__name__)


class EodhdAuthError(PriceDataError):
    """401/403: the key is wrong or lacks the plan; never retried."""


class EodhdQuotaError(PriceDataError):
    """402 (daily quota spent) or 429 still refused after the retries."""


class EodhdUnavailableError(PriceDataError):
    """5xx, 408, timeouts or connection errors still failing after the retries."""


class EodhdResponseError(PriceDataError):
    """An answer that is not the EODHD end-of-day JSON (malformed JSON, HTML, wrong shape, other 4xx)."""


def _between(frame: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Rows from `start` to `end` inclusive of a normalised (sorted) frame."""
    dates = frame["date"].to_numpy()
    first, last = (
        np.searchsorted(dates, np.datetime64(start, "ns")),
        np.searchsorted(dates, np.datetime64(end, "ns"), side="right"),
    )
    return frame if (first, last) == (0, len(frame)) else frame.iloc[first:last].reset_index(drop=True)


def _safe_file_name(ticker: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,30}", ticker):
        raise UnknownTickerError(f"ticker {ticker!r} is not a valid symbol (letters, digits, '.', '-')")
    return ticker.upper()


class LocalPriceSource:
    """Per-ticker files under `root`: `<TICKER>.parquet` or `<TICKER>.csv` with PRICE_COLUMNS; `read_adjusted_closes`
    reads the closes of many tickers in one scan (the backtest's way in).

    With `sample_fallback` (the toy profile), a missing file for a ticker of bokeh-sampledata is written first.
    """

    name = "local"

    def __init__(self, root: Path | str, sample_fallback: bool = False):
        self.root = Path(root)
        self.sample_fallback = sample_fallback

    def path_for(self, ticker: str) -> Path | None:
        stem = _safe_file_name(ticker)
        for suffix in (".parquet", ".csv"):
            if (self.root / f"{stem}{suffix}").is_file():
                return self.root / f"{stem}{suffix}"
        return None

    def _file(self, ticker: str) -> Path:
        """The ticker's price file (the sample's written first where allowed); UnknownTickerError if there is none."""
        path = self.path_for(ticker)
        if path is None and self.sample_fallback and ticker.upper() in sample_tickers():
            path = write_price_file(self.root / f"{_safe_file_name(ticker)}.parquet", load_sample_prices(ticker))
        if path is None:
            hint = " or add the ticker to the sample corpus" if self.sample_fallback else ""
            raise UnknownTickerError(
                f"no price file for ticker {ticker!r} under {self.root} "
                f"(expected {_safe_file_name(ticker)}.parquet or .csv{hint})"
            )
        return path

    def read_adjusted_closes(self, tickers: Iterable[str], start: dt.date, end: dt.date) -> AdjustedCloses:
        """The adjusted closes of many tickers at once: the Parquet files laid out as `write_price_file` writes them
        read in one scan of one pyarrow dataset; any other file (CSV, other column types) through `get_prices`,
        which names what is wrong with it. An unknown ticker is recorded, as `load_price_book` does."""
        files, unknown = {}, {}
        for ticker in sorted(set(tickers)):
            try:
                files[ticker] = self._file(ticker)
            except UnknownTickerError as exc:
                log.warning("prices: %s", exc)
                unknown[ticker] = str(exc)
        known = sorted(files)
        parquet = [i for i, t in enumerate(known) if files[t].suffix == ".parquet"]
        dataset = ds.dataset([str(files[known[i]]) for i in parquet], format="parquet", schema=SCANNED_SCHEMA)
        # Each file's footer is read once: its schema checked here, and its fragment keeps it for the scan.
        scanned = {i: fragment for i, fragment in zip(parquet, dataset.get_fragments()) if _scannable(fragment)}
        index, dates, closes = [np.zeros(0, dtype=np.int64)], [np.zeros(0, "datetime64[ns]")], [np.zeros(0)]
        for i, ticker in enumerate(known):
            if i not in scanned:
                frame = self.get_prices(ticker, start, end)
                index.append(np.full(len(frame), i))
                dates.append(frame["date"].to_numpy(dtype="datetime64[ns]"))
                closes.append(frame["adjusted_close"].to_numpy(dtype="float64"))
        if scanned:
            ticker_of_file = {fragment.path: i for i, fragment in scanned.items()}
            dataset = ds.FileSystemDataset(list(scanned.values()), SCANNED_SCHEMA, dataset.format, dataset.filesystem)
            for tagged in dataset.scanner(columns=list(SCANNED_SCHEMA.names)).scan_batches():
                batch = tagged.record_batch
                index.append(np.full(batch.num_rows, ticker_of_file[tagged.fragment.path]))
                dates.append(batch.column("date").to_numpy(zero_copy_only=False))
                closes.append(batch.column("adjusted_close").to_numpy(zero_copy_only=False))
        columns = (np.concatenate(index), np.concatenate(dates), np.concatenate(closes))
        return AdjustedCloses.from_columns(known, *columns, unknown, start, end)

    def get_prices(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        path = self._file(ticker)
        try:
            raw = (
                pq.ParquetFile(path).read(use_threads=False).to_pandas()
                if path.suffix == ".parquet"
                else pd.read_csv(path)
            )
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise PriceDataError(
                f"{path}: cannot read the price file ({exc}); rewrite it with columns {', '.join(PRICE_COLUMNS)}"
            ) from None
        return _between(normalise_prices(raw, str(path)), start, end)


# The columns a scan of many price files reads, as write_price_file writes them.
SCANNED_SCHEMA = pa.schema([("date", pa.timestamp("ns")), ("adjusted_close", pa.float64())])


def _scannable(fragment: ds.ParquetFileFragment) -> bool:
    """Whether a Parquet price file can join the one scan: every price column there, dates as naive timestamps and
    numeric closes; another file is read on its own, and its error names it."""
    try:
        schema = fragment.physical_schema
    except (OSError, pa.ArrowException):
        return False
    if any(name not in schema.names for name in PRICE_COLUMNS):
        return False
    date, close = schema.field("date").type, schema.field("adjusted_close").type
    numeric = pa.types.is_floating(close) or pa.types.is_integer(close)
    return pa.types.is_timestamp(date) and date.tz is None and numeric


def write_price_file(path: Path, prices: pd.DataFrame, metadata: dict[str, str] | None = None) -> Path:
    """Write a price frame as Parquet, atomically; `metadata` goes into the file's schema metadata."""
    table = pa.Table.from_pandas(prices[list(PRICE_COLUMNS)], preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def fill_sample_prices(root: Path | str, tickers: Iterable[str]) -> list[Path]:
    """Write the bokeh-sampledata prices of `tickers` as local price files (the toy profile's price source)."""
    return [write_price_file(Path(root) / f"{_safe_file_name(t)}.parquet", load_sample_prices(t)) for t in tickers]


# --- EODHD ------------------------------------------------------------------------------------

_TOKEN_IN_TEXT = re.compile(r"(api_token=)[^&\s'\"]*")


def redact(text: str, secret: SecretStr | None = None) -> str:
    """Mask `api_token=...` in URLs and, if given, the secret's value anywhere in `text`."""
    text = _TOKEN_IN_TEXT.sub(r"\1***", text)
    if secret is not None and secret.get_secret_value():
        text = text.replace(secret.get_secret_value(), "***")
    return text


class _RedactTokenFilter(logging.Filter):
    """urllib3 logs each request line, query string included, at DEBUG: mask the token there."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_token=" in message:
            record.msg, record.args = redact(message), ()
        return True


def _install_log_redaction() -> None:
    for name in ("urllib3.connectionpool", "requests"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokenFilter) for f in logger.filters):
            logger.addFilter(_RedactTokenFilter())


def eodhd_symbol(ticker: str, exchange: str = "US") -> str:
    """EODHD's `{TICKER}.{EXCHANGE}`: a ticker already ending in an exchange code (AAPL.US) is kept; a share
    class dot (BRK.B) becomes a hyphen, as EODHD writes it (BRK-B.US)."""
    ticker = ticker.strip().upper()
    if re.fullmatch(r"[A-Z0-9\-]+(\.[A-Z0-9]+)?\.[A-Z]{2,}", ticker):
        return ticker
    return f"{ticker.replace('.', '-')}.{exchange}"


def _body_excerpt(response: requests.Response, secret: SecretStr, limit: int = 200) -> str:
    """The start of an error body as one plain line: HTML tags stripped, the key masked."""
    text = response.text or ""
    if "<" in text and ">" in text:
        text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    text = redact(text, secret)
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")


class EodhdClient:
    """`GET {base_url}/eod/{SYMBOL}?api_token=…&fmt=json&from=…&to=…` with timeouts and retries.

    408/429/5xx, timeouts and connection errors are retried with jittered exponential backoff (a Retry-After
    header sets the least wait); 401/403 are auth errors, 402 a spent quota, 404 an unknown symbol.
    """

    def __init__(
        self,
        api_key: SecretStr,
        config: PricesConfig | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if not isinstance(api_key, SecretStr) or not api_key.get_secret_value():
            raise ConfigError("EODHD_API_KEY: the EODHD source needs a key (set EODHD_API_KEY in .env)")
        self._key = api_key
        self.config = config if config is not None else PricesConfig()
        self.session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()
        _install_log_redaction()

    def close(self) -> None:
        self.session.close()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff_seconds(
            attempt, self.config.backoff_seconds, self.config.max_backoff_seconds, self._rng, retry_after
        )

    def fetch_eod(self, symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        url = f"{self.config.eodhd_base_url.rstrip('/')}/eod/{symbol}"
        shown = f"{url}?api_token=***&fmt=json&from={start}&to={end}"
        params = {
            "api_token": self._key.get_secret_value(),
            "fmt": "json",
            "from": start.isoformat(),
            "to": end.isoformat(),
        }
        attempts = self.config.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self.session.get(url, params=params, timeout=self.config.timeout_seconds)
            except requests.RequestException as exc:
                # requests' messages carry the full URL, key included: keep only the kind of failure.
                problem = f"{type(exc).__name__} ({redact(str(exc), self._key)})"
            else:
                status = response.status_code
                if status == 200:
                    return self._parse(response, symbol, shown)
                if status in (401, 403):
                    raise EodhdAuthError(
                        f"EODHD {shown}: HTTP {status}, the API key was refused "
                        f"({_body_excerpt(response, self._key)}); check EODHD_API_KEY and the plan"
                    )
                if status == 402:
                    raise EodhdQuotaError(
                        f"EODHD {shown}: HTTP 402, the daily API quota is spent "
                        f"({_body_excerpt(response, self._key)}); retry tomorrow or raise the plan"
                    )
                if status == 404:
                    raise UnknownTickerError(
                        f"EODHD does not know symbol {symbol} "
                        f"(HTTP 404 from {shown}: {_body_excerpt(response, self._key)})"
                    )
                if status not in RETRIED_STATUS:
                    raise EodhdResponseError(f"EODHD {shown}: HTTP {status} ({_body_excerpt(response, self._key)})")
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                problem = f"HTTP {status} ({_body_excerpt(response, self._key)})"
                if status == 429 and retry_after is not None and retry_after > self.config.max_retry_after_seconds:
                    raise EodhdQuotaError(
                        f"EODHD {shown}: HTTP 429, rate limited for {retry_after:.0f} s "
                        f"(more than {self.config.max_retry_after_seconds:.0f} s); retry later"
                    )
                if status == 429 and attempt == attempts - 1:
                    raise EodhdQuotaError(
                        f"EODHD {shown}: HTTP 429 (too many requests) after {attempts} attempts; "
                        "retry later or lower the request rate"
                    )
            if attempt < attempts - 1:
                wait = self._backoff(attempt, retry_after)
                log.warning(
                    "EODHD %s: %s; retry %d/%d in %.1f s", symbol, problem, attempt + 1, self.config.max_retries, wait
                )
                self._sleep(wait)
        raise EodhdUnavailableError(f"EODHD {shown}: still failing after {attempts} attempts, last: {problem}")

    def _parse(self, response: requests.Response, symbol: str, shown: str) -> pd.DataFrame:
        try:
            rows = response.json()
        except ValueError:
            raise EodhdResponseError(
                f"EODHD {shown}: the answer is not JSON ({_body_excerpt(response, self._key)})"
            ) from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise EodhdResponseError(
                f"EODHD {shown}: expected a JSON list of daily rows, got {type(rows).__name__} "
                f"({_body_excerpt(response, self._key)})"
            )
        frame = (
            pd.DataFrame(rows, columns=list(PRICE_COLUMNS)) if rows else pd.DataFrame({c: [] for c in PRICE_COLUMNS})
        )
        if rows and any(c not in rows[0] for c in PRICE_COLUMNS):
            missing = [c for c in PRICE_COLUMNS if c not in rows[0]]
            raise EodhdResponseError(f"EODHD {shown}: rows lack field(s) {', '.join(missing)}")
        return normalise_prices(frame, f"EODHD {symbol}")


class EodhdPriceSource:
    """EODHD prices with a Parquet cache per symbol under `cache_dir`, extended incrementally.

    The cache file records the date range it has fetched (schema metadata `sftc_from` / `sftc_to`), so a
    later, wider request fetches only the missing ends; a file that cannot be read is dropped and refetched.
    """

    name = "eodhd"

    def __init__(self, client: EodhdClient, cache_dir: Path | str, today: Callable[[], dt.date] = dt.date.today):
        self.client = client
        self.cache_dir = Path(cache_dir)
        self._today = today

    def cache_path(self, symbol: str) -> Path:
        return self.cache_dir / f"{_safe_file_name(symbol)}.parquet"

    def _read_cache(self, path: Path) -> tuple[pd.DataFrame, dt.date, dt.date] | None:
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            fetched = (
                dt.date.fromisoformat(meta[b"sftc_from"].decode()),
                dt.date.fromisoformat(meta[b"sftc_to"].decode()),
            )
            frame = normalise_prices(table.to_pandas(), str(path))
        except (OSError, ValueError, KeyError, PriceDataError, pa.ArrowException) as exc:
            log.warning("price cache %s is unreadable (%s); fetching again", path, type(exc).__name__)
            path.unlink(missing_ok=True)
            return None
        return frame, *fetched

    def get_prices(self, ticker: str, start: dt.date, end: dt.date) -> pd.DataFrame:
        symbol = eodhd_symbol(ticker, self.client.config.eodhd_exchange)
        end = min(end, self._today())
        if start > end:
            return empty_prices()
        path = self.cache_path(symbol)
        cached = self._read_cache(path)
        if cached is None:
            frame, have_from, have_to = self.client.fetch_eod(symbol, start, end), start, end
        else:
            frame, have_from, have_to = cached
            parts = [frame]
            if start < have_from:
                parts.insert(0, self.client.fetch_eod(symbol, start, have_from - dt.timedelta(days=1)))
            if end > have_to:
                # The last cached day is fetched again: it may have been a partial day when cached.
                parts.append(self.client.fetch_eod(symbol, have_to, end))
            if len(parts) == 1:
                return _between(frame, start, end)
            frame = normalise_prices(pd.concat(parts, ignore_index=True), f"EODHD {symbol}")
            have_from, have_to = min(start, have_from), max(end, have_to)
        write_price_file(
            path, frame, {"sftc_from": have_from.isoformat(), "sftc_to": have_to.isoformat(), "sftc_symbol": symbol}
        )
        return _between(frame, start, end)


def price_source_from_settings(settings: Settings) -> PriceSource:
    """EODHD when the profile asks for it and a key is set; otherwise the local files under data/prices/."""
    paths = settings.paths
    if settings.profile.price_source == "eodhd":
        if settings.eodhd_api_key is not None:
            return EodhdPriceSource(EodhdClient(settings.eodhd_api_key, settings.prices), paths.prices / "eodhd")
        log.warning(
            "profile %s asks for EODHD prices but EODHD_API_KEY is not set; using local price files under %s",
            settings.profile_name,
            paths.prices,
        )
    return LocalPriceSource(paths.prices, sample_fallback=settings.profile.corpus.source == "sample")
