"""A scripted OpenAI-compatible server on 127.0.0.1 for the client's fault tests, where a real engine cannot be
made to fail on cue (transformers serve is used wherever the behaviour under test is the engine's own).

`POST /v1/completions` answers `answer(prompt)`: the target text of the prompt's ticker, with the format's tags
when the request asks for `skip_special_tokens: false`, without them otherwise (as servers decode by default).
`refuse_skip_special_tokens` answers that field with 422, as `transformers serve` does. Faults are queued with
`script(...)`, one per completion request: an HTTP status (with headers), a delay, a malformed body. `die_after(n)`
closes the server after the n-th answer, as a crashed engine would. Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAGGED = "<reasoning>{ticker} moves.</reasoning><support>Close 1</support><action>{action}"


def action_for(ticker: str) -> str:
    return {"AAPL": "BUY", "MSFT": "SELL", "IBM": "HOLD", "GOOG": "STRONG_BUY"}.get(ticker, "STRONG_SELL")


def answer(prompt: str, keep_tags: bool) -> str:
    match = re.search(r"Ticker: (\S+)", prompt)
    ticker = match.group(1) if match else "?"
    text = TAGGED.format(ticker=ticker, action=action_for(ticker))  # the stop at </action> cut the closing tag
    return text if keep_tags else re.sub(r"</?(reasoning|support|action)>", "", text)


@dataclass
class Fault:
    status: int = 200
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    body: dict | None
    authorization: str | None


class ScriptedServer:
    """`with ScriptedServer() as server:`; `server.url` is the endpoint."""

    def __init__(
        self, port: int = 0, refuse_skip_special_tokens: bool = False, model: str = "sft", lists_models: bool = True
    ):
        self.refuse_skip_special_tokens = refuse_skip_special_tokens
        self.model = model
        self.lists_models = lists_models  # False: /v1/models lists none, as transformers serve before a model is loaded
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        self.answered = 0
        self.in_flight = self.max_in_flight = 0
        self._die_after: int | None = None
        self.dead = False  # once it has died, no request gets an answer, even one accepted before the socket closed
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def script(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def die_after(self, answers: int) -> None:
        self._die_after = answers

    def completions(self) -> list[dict]:
        return [s.body for s in self.seen if s.path == "/v1/completions" and s.body.get("max_tokens", 0) > 1]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _hang_up_if_dead(self) -> bool:
                if server.dead:
                    self.close_connection = True  # no status line: the client sees the connection drop
                return server.dead

            def do_GET(self) -> None:
                if self._hang_up_if_dead():
                    return
                server.seen.append(Seen(self.path, None, self.headers.get("Authorization")))
                if self.path == "/health":
                    self._send(200, {"status": "ok"})
                elif self.path == "/v1/models":
                    listed = [{"id": server.model, "object": "model", "owned_by": "scripted"}]
                    listed = listed if server.lists_models else []
                    self._send(200, {"object": "list", "data": listed})
                elif self.path == "/version":
                    self._send(200, {"version": "1.0-test"})
                else:
                    self._send(404, {"detail": "not found"})

            def do_POST(self) -> None:
                if self._hang_up_if_dead():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.seen.append(Seen(self.path, body, self.headers.get("Authorization")))
                if server.refuse_skip_special_tokens and "skip_special_tokens" in body:
                    return self._send(422, {"detail": "Unexpected fields in the request: {'skip_special_tokens'}"})
                with server._lock:
                    fault = server.faults.popleft() if server.faults and body.get("max_tokens", 0) > 1 else Fault()
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(fault.delay or 0.02)  # a little work, so requests overlap
                    if fault.status != 200:
                        return self._send(
                            fault.status, fault.body or {"error": f"scripted {fault.status}"}, fault.headers
                        )
                    if fault.body is not None:
                        return self._send(200, fault.body)
                    keep = body.get("skip_special_tokens") is False
                    text = answer(body["prompt"], keep)
                    with (
                        server._lock
                    ):  # counted (and dead) before the answer leaves: the client's next request finds it so
                        counted = body.get("max_tokens", 0) > 1
                        server.answered += counted
                        dying = counted and server._die_after is not None and server.answered >= server._die_after
                        if dying:
                            server._die_after, server.dead = None, True
                    self._send(
                        200,
                        {
                            "object": "text_completion",
                            "model": body["model"],
                            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                        },
                    )
                    if dying:
                        threading.Thread(target=server.close, daemon=True).start()
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler
