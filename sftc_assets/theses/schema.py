"""The accepted record and the reject line of docs/thesis-xml.md: field rules in one place.

The parser normalises with these rules; `record_problems` / `reject_problems` re-check lines already
written (the asset's schema check, and any stage that reads the JSONL).
"""

from __future__ import annotations

import datetime as dt
import math
import re

from sftc_core.target_format import ACTIONS

RECORD_FIELDS = (
    "id",
    "ticker",
    "as_of_date",
    "reasoning",
    "support",
    "action",
    "horizon_days",
    "confidence",
    "source_file",
)
REJECT_FIELDS = ("source_file", "index", "field", "reason", "detail")

TICKER_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,14}")
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
REASONING_MAX_CHARS = 20_000
HORIZON_MIN, HORIZON_MAX, HORIZON_DEFAULT = 1, 260, 5

# Every reject reason the parser writes (stable codes; data/samples/README.md says when each happens).
FILE_REASONS = ("malformed_xml", "forbidden_xml", "bad_encoding", "too_large", "wrong_root", "no_theses")
THESIS_REASONS = (
    "missing_field",
    "empty_field",
    "duplicate_field",
    "unexpected_element",
    "invalid_id",
    "invalid_ticker",
    "invalid_date",
    "too_long",
    "invalid_support",
    "invalid_action",
    "invalid_horizon",
    "invalid_confidence",
    "misplaced_thesis",
    "duplicate",
    "duplicate_id",
)
REJECT_REASONS = FILE_REASONS + THESIS_REASONS


def calendar_date(text: str) -> dt.date | None:
    """The date `text` names when it is a real calendar date written YYYY-MM-DD, else None."""
    if not DATE_PATTERN.fullmatch(text):
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def record_problems(row: dict) -> list[str]:
    """What is wrong with one accepted-record line (empty when it follows the spec)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = []
    if tuple(row) != RECORD_FIELDS:
        problems.append(f"keys are {list(row)}, expected {list(RECORD_FIELDS)}")
    record_id, ticker, date = row.get("id"), row.get("ticker"), row.get("as_of_date")
    if not isinstance(record_id, str) or not record_id.strip():
        problems.append(f"id {record_id!r} is not a non-empty string")
    if not isinstance(ticker, str) or not TICKER_PATTERN.fullmatch(ticker):
        problems.append(f"ticker {ticker!r} does not match {TICKER_PATTERN.pattern}")
    if not isinstance(date, str) or calendar_date(date) is None:
        problems.append(f"as_of_date {date!r} is not a calendar date YYYY-MM-DD")
    reasoning = row.get("reasoning")
    if not isinstance(reasoning, str) or not 0 < len(reasoning) <= REASONING_MAX_CHARS:
        problems.append(f"reasoning is not a string of 1..{REASONING_MAX_CHARS} characters")
    support = row.get("support")
    if not isinstance(support, list) or not all(isinstance(p, str) and p for p in support):
        problems.append("support is not a list of non-empty strings")
    if row.get("action") not in ACTIONS:
        problems.append(f"action {row.get('action')!r} is not one of {', '.join(ACTIONS)}")
    horizon = row.get("horizon_days")
    if type(horizon) is not int or not HORIZON_MIN <= horizon <= HORIZON_MAX:
        problems.append(f"horizon_days {horizon!r} is not an integer in {HORIZON_MIN}..{HORIZON_MAX}")
    confidence = row.get("confidence")
    if confidence is not None and (
        type(confidence) not in (int, float) or not math.isfinite(confidence) or not 0 <= confidence <= 1
    ):
        problems.append(f"confidence {confidence!r} is not null or a number in [0, 1]")
    source = row.get("source_file")
    if not isinstance(source, str) or not source.endswith(".xml"):
        problems.append(f"source_file {source!r} is not the relative path of an .xml file")
    return problems


def reject_problems(row: dict) -> list[str]:
    """What is wrong with one reject line (empty when it has the spec's fields and a known reason)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = [f"missing key {key!r}" for key in REJECT_FIELDS if key not in row]
    index, reason = row.get("index"), row.get("reason")
    if reason not in REJECT_REASONS:
        problems.append(f"reason {reason!r} is not a known reject code")
    elif (reason in FILE_REASONS) != (index is None):
        problems.append(f"index {index!r} does not fit reason {reason!r} (null exactly for a whole-file reject)")
    if index is not None and (type(index) is not int or index < 0):
        problems.append(f"index {index!r} is not null or a position >= 0")
    if not isinstance(row.get("detail"), str) or not row.get("detail"):
        problems.append("detail is not a non-empty string")
    return problems


def month_problems(records: list[dict], rejects: list[dict], month: str) -> list[str]:
    """What is wrong with one month's written lines: each line, the records' month and order, duplicate ids."""
    problems = []
    for number, row in enumerate(records, start=1):
        problems += [f"record line {number}: {p}" for p in record_problems(row)]
        if isinstance(row, dict) and str(row.get("as_of_date"))[:7] != month:
            problems.append(f"record line {number}: as_of_date {row.get('as_of_date')!r} is not in {month}")
    for number, row in enumerate(rejects, start=1):
        problems += [f"reject line {number}: {p}" for p in reject_problems(row)]
    if problems:
        return problems
    keys = [(r["as_of_date"], r["ticker"], r["id"]) for r in records]
    if keys != sorted(keys):
        problems.append("records are not sorted by (as_of_date, ticker, id)")
    if len({r["id"] for r in records}) != len(records):
        problems.append("an id appears on more than one record")
    return problems
