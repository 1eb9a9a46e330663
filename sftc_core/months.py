"""Months written YYYY-MM: the partition keys of the monthly assets and the names of their files."""

from __future__ import annotations

import datetime as dt
import re

MONTH_FMT = "%Y-%m"
MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def month_start(month: str) -> dt.date:
    return dt.datetime.strptime(month, MONTH_FMT).date()


def next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def months_between(first_month: str, last_month: str) -> list[str]:
    """Every YYYY-MM from `first_month` to `last_month` inclusive (empty when last < first)."""
    months, day, last = [], month_start(first_month), month_start(last_month)
    while day <= last:
        months.append(day.strftime(MONTH_FMT))
        day = next_month(day)
    return months
