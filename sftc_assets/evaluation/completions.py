"""One client for any OpenAI-compatible server (vLLM, SGLang, `transformers serve`, a hosted endpoint): the legacy
`/v1/completions` API with the exact prompt the model was trained on (no chat template), greedy decoding
(temperature 0, a fixed seed), `max_tokens` and a stop at the closing action tag; many requests in flight.

Special tokens: servers decode with `skip_special_tokens` on by default, which drops our `<reasoning>` …
`</action>` tags. vLLM and SGLang take `skip_special_tokens: false` in the request and keep them;
`transformers serve` (5.24) always skips them and answers 422 to the field. `negotiate_special_tokens` asks the
server once; when it refuses, the rows are parsed from what remains (`TargetFormat.parse_action(tags_stripped=True)`).

Failures: 408/429/5xx, timeouts, connection errors and answers that are not a completion are retried with
jittered backoff (Retry-After honoured); what still fails raises `EndpointError` naming the endpoint. The API key
(SFTC_EVAL_API_KEY) is sent as a bearer token and never appears in a message.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import requests
from pydantic import SecretStr

from sftc_core.configs import EndpointClientConfig
from sftc_core.http_retry import RETRIED_STATUS, backoff_seconds, retry_after_seconds

log = logging.getLogger(__name__)

SKIP_SPECIAL_TOKENS = "skip_special_tokens"


class EndpointError(RuntimeError):
    """The endpoint failed past the retries, or refused the request; the message names the endpoint."""


@dataclass(frozen=True)
class Decoding:
    """What every request asks for. `keep_special_tokens` sends skip_special_tokens=false (vLLM, SGLang)."""

    model: str
    max_tokens: int
    stop: tuple[str, ...]
    seed: int = 0
    keep_special_tokens: bool = True

    def body(self, prompt: str) -> dict:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "seed": self.seed,
            "stop": list(self.stop),
        }
        if self.keep_special_tokens:
            # vLLM's detokenizer puts a space between special tokens unless told not to; HF's decode does not.
            body |= {SKIP_SPECIAL_TOKENS: False, "spaces_between_special_tokens": False}
        return body

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "temperature": 0,
            "seed": self.seed,
            "special_tokens": "kept (skip_special_tokens=false)"
            if self.keep_special_tokens
            else "stripped by the server",
        }


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None


# on_progress(done, total, resumed): rows answered of the total, of which `resumed` were staged before this run.
OnProgress = Callable[[int, int, int], None]


def base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all name the same server."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class CompletionsClient:
    """Requests to one server, each on its thread's own HTTP session (a requests.Session is not thread-safe)."""

    def __init__(
        self,
        url: str,
        config: EndpointClientConfig,
        api_key: SecretStr | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.url = base_url(url)
        self.config = config
        self._api_key = api_key  # a SecretStr: revealed only into the sessions' headers
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            if self._api_key is not None and self._api_key.get_secret_value():
                self._local.session.headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return self._local.session

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON object of a 200, after the retries; EndpointError otherwise."""
        url = f"{self.url}{path}"
        attempts = self.config.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self._session().request(method, url, json=body, timeout=self.config.timeout_seconds)
            except requests.Timeout:
                problem = f"no answer within {self.config.timeout_seconds:g} s"
            except requests.ConnectionError as exc:
                problem = f"cannot connect ({type(exc).__name__}): is the server running?"
            else:
                if response.status_code == 200:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = None
                    if isinstance(payload, dict):
                        return payload
                    problem = f"HTTP 200 but the body is not a JSON object ({_excerpt(response)})"
                elif response.status_code in RETRIED_STATUS:
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    problem = f"HTTP {response.status_code} ({_excerpt(response)})"
                else:
                    hint = "; check SFTC_EVAL_API_KEY" if response.status_code in (401, 403) else ""
                    raise EndpointError(f"{url}: HTTP {response.status_code} ({_excerpt(response)}){hint}")
            if attempt < attempts - 1:
                wait_s = backoff_seconds(
                    attempt, self.config.backoff_seconds, self.config.max_backoff_seconds, self._rng, retry_after
                )
                log.warning("%s: %s; retry %d/%d in %.1f s", url, problem, attempt + 1, self.config.max_retries, wait_s)
                self._sleep(wait_s)
        raise EndpointError(f"{url}: still failing after {attempts} attempt(s), last: {problem}")

    def models(self) -> list[dict]:
        """The entries of GET /v1/models (`id`, `owned_by`, ...)."""
        data = self._request("GET", "/v1/models").get("data")
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise EndpointError(f"{self.url}/v1/models: expected {{'data': [{{'id': ...}}, ...]}}, got {data!r:.200}")
        return data

    def version(self) -> str | None:
        """The engine's version where it tells (vLLM and SGLang: GET /version); None otherwise."""
        try:
            response = self._session().get(f"{self.url}/version", timeout=min(self.config.timeout_seconds, 10))
            version = response.json().get("version") if response.status_code == 200 else None
        except (requests.RequestException, ValueError, AttributeError):
            return None
        return str(version) if version else None

    def complete(self, decoding: Decoding, prompt: str) -> Completion:
        payload = self._request("POST", "/v1/completions", decoding.body(prompt))
        choices = payload.get("choices")
        if (
            not isinstance(choices, list)
            or not choices
            or not isinstance(choices[0], dict)
            or not isinstance(choices[0].get("text"), str)
        ):
            raise EndpointError(
                f"{self.url}/v1/completions: the answer has no choices[0].text, not a completion: {str(payload)[:200]}"
            )
        return Completion(choices[0]["text"], choices[0].get("finish_reason"))

    def negotiate_special_tokens(self, decoding: Decoding) -> Decoding:
        """`decoding` with keep_special_tokens as the server allows: one 1-token request with skip_special_tokens=false;
        a 400/422 naming the field means the server decodes its own way, and the tags will be missing."""
        if not decoding.keep_special_tokens:
            return decoding
        probe = Decoding(decoding.model, 1, decoding.stop, decoding.seed, keep_special_tokens=True)
        try:
            self.complete(probe, "a")
        except EndpointError as exc:
            if SKIP_SPECIAL_TOKENS in str(exc) and (" 400 " in str(exc) or " 422 " in str(exc)):
                log.info(
                    "%s refuses %s=false: it decodes without the special tokens; actions are parsed from what remains",
                    self.url,
                    SKIP_SPECIAL_TOKENS,
                )
                return Decoding(
                    decoding.model, decoding.max_tokens, decoding.stop, decoding.seed, keep_special_tokens=False
                )
            raise
        return decoding


def _excerpt(response: requests.Response, limit: int = 200) -> str:
    text = " ".join((response.text or "").split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")


def answer_all(
    client: CompletionsClient,
    decoding: Decoding,
    prompts: Mapping[str, str],
    concurrency: int,
    on_answer: Callable[[str, Completion], None],
    on_progress: OnProgress | None = None,
    resumed: int = 0,
    total: int | None = None,
) -> None:
    """Complete every prompt of `prompts` ({key: prompt}) with at most `concurrency` requests in flight.

    `on_answer(key, completion)` runs on this thread as each answer arrives (the caller stages it); the first failure
    cancels what has not started and is raised once the requests in flight are done. `resumed` rows already answered
    count towards the progress of `total`.
    """
    total = total if total is not None else len(prompts) + resumed
    done = resumed
    if on_progress:
        on_progress(done, total, resumed)
    todo = iter(prompts.items())
    keys: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="completions") as pool:

        def submit_next() -> None:
            item = next(todo, None)
            if item is not None:
                keys[pool.submit(client.complete, decoding, item[1])] = item[0]

        for _ in range(concurrency):
            submit_next()
        error: BaseException | None = None
        while keys and error is None:
            finished, _ = wait(keys, return_when=FIRST_EXCEPTION)
            failed = any(f.exception() is not None for f in finished)
            if failed:
                for future in keys:
                    future.cancel()
                wait(keys)  # the requests in flight end, and their answers are kept, before the error is raised
                finished = set(keys)
            for future in finished:
                key = keys.pop(future)
                if future.cancelled():
                    continue
                if future.exception() is not None:
                    error = error or future.exception()
                    continue
                on_answer(key, future.result())
                done += 1
                if on_progress:
                    on_progress(done, total, resumed)
                if not failed:
                    submit_next()
    if error is not None:
        raise error
