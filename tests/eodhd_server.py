"""A local stand-in for EODHD's end-of-day API on 127.0.0.1, for the client tests.

`GET /api/eod/{SYMBOL}?api_token=…&fmt=json&from=…&to=…` answers the bokeh-sampledata prices in EODHD's JSON
(`date, open, high, low, close, adjusted_close, volume`) for `AAPL.US`, `MSFT.US`, … ; an unknown symbol is
a 404 with EODHD's plain-text body, a wrong key a 401. Faults are scripted per symbol: `server.script(symbol,
fault, …)` queues answers served one per request before the normal one: an HTTP status with a body and
headers, `slow(seconds)`, or `malformed()`. Every request is recorded (path and query) for the assertions.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from sftc_core.market import load_sample_prices, sample_tickers

HTML_ERROR = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


@functools.lru_cache(maxsize=1)
def _eodhd_prices() -> dict:
    return {f"{t}.US": load_sample_prices(t) for t in sample_tickers()}


@dataclass
class Fault:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    passthrough: bool = False  # after the delay, serve the normal answer


def status(code: int, body: str = "", **headers: str) -> Fault:
    return Fault(status=code, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})


def slow(seconds: float) -> Fault:
    return Fault(delay=seconds, passthrough=True)


def malformed() -> Fault:
    return Fault(status=200, body='[{"date": "2012-01-03", "open": 1.0,', headers={"Content-Type": "application/json"})


@dataclass
class Request:
    symbol: str
    query: dict[str, str]


class FakeEodhd:
    """Start with `with FakeEodhd(api_key) as server:`; `server.base_url` is what the client is pointed at."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.requests: list[Request] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._prices = _eodhd_prices()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api"

    def script(self, symbol: str, *faults: Fault) -> None:
        with self._lock:
            self._faults[symbol].extend(faults)

    def requests_for(self, symbol: str) -> list[Request]:
        return [r for r in self.requests if r.symbol == symbol]

    def __enter__(self) -> FakeEodhd:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, symbol: str, query: dict[str, str]) -> tuple[int, dict[str, str], str, float]:
        with self._lock:
            self.requests.append(Request(symbol, query))
            fault = self._faults[symbol].popleft() if self._faults[symbol] else None
        delay = fault.delay if fault else 0.0
        if fault and not fault.passthrough:
            return fault.status, fault.headers, fault.body, delay
        if query.get("api_token") != self.api_key:
            return 401, {"Content-Type": "text/plain"}, "Unauthenticated", delay
        if symbol not in self._prices:
            return 404, {"Content-Type": "text/plain"}, "Ticker Not Found.", delay
        prices = self._prices[symbol]
        mask = (prices["date"] >= query.get("from", "1900-01-01")) & (prices["date"] <= query.get("to", "2100-01-01"))
        rows = [
            {
                "date": row.date.strftime("%Y-%m-%d"),
                "open": row.open,
                "high": row.high,
                "low": row.low,
                "close": row.close,
                "adjusted_close": row.adjusted_close,
                "volume": int(row.volume),
            }
            for row in prices.loc[mask].itertuples()
        ]
        return 200, {"Content-Type": "application/json"}, json.dumps(rows), delay

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                symbol = url.path.rsplit("/", 1)[-1] if url.path.startswith("/api/eod/") else ""
                code, headers, body, delay = server._answer(symbol, query)
                if delay:
                    time.sleep(delay)
                data = body.encode("utf-8")
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args) -> None:
                pass  # the request line holds the key: keep it out of the test output

        return Handler
