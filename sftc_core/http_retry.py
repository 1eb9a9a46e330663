"""Retries of our HTTP clients (EODHD prices, the evaluation's completions endpoint): which answers are worth
another try, and how long to wait before it (jittered exponential backoff, a Retry-After header honoured).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random

# Request timeout, rate limit, and the server-side failures a later attempt may not meet.
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def backoff_seconds(
    attempt: int, base: float, ceiling: float, rng: random.Random, retry_after: float | None = None
) -> float:
    """The wait before retry `attempt` + 1: base * 2**attempt capped at `ceiling`, jittered down to half (so parallel
    clients spread out), and never shorter than the server's Retry-After."""
    top = min(ceiling, base * 2**attempt)
    return max(rng.uniform(top / 2, top), retry_after or 0.0)
