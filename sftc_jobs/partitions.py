"""Month partitions of the chain: keys are `YYYY-MM`, the same strings as the artifact paths use.

`monthly_partitions` (raw_xml, thesis_jsonl) spans the profile's `partitions.start..end`;
`test_month_partitions` (eval_csv) spans the months of TEST_START_DATE..test end from settings.
Both are built once at import from `load_settings()`, so every asset and job shares one definition.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from sftc_resources.settings import Settings, load_settings

MONTH_FMT = "%Y-%m"


def _month_start(month: str) -> dt.date:
    return dt.datetime.strptime(month, MONTH_FMT).date()


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)


def month_range_partitions(first_month: str, last_month: str) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions `first_month..last_month` inclusive (both YYYY-MM); Dagster's end date is exclusive."""
    start = _month_start(first_month)
    end = _next_month(_month_start(last_month))
    if end <= start:
        raise ValueError(f"month range {first_month}..{last_month}: the last month is before the first")
    return dg.MonthlyPartitionsDefinition(start_date=start.strftime(MONTH_FMT), end_date=end.strftime(MONTH_FMT), fmt=MONTH_FMT)


def profile_months(settings: Settings) -> tuple[str, str]:
    return settings.profile.partitions.start, settings.profile.partitions.end


def eval_months(settings: Settings) -> tuple[str, str]:
    return settings.test_start_date.strftime(MONTH_FMT), settings.test_end_date.strftime(MONTH_FMT)


def months_between(first_month: str, last_month: str) -> list[str]:
    """Every YYYY-MM from `first_month` to `last_month` inclusive (empty when last < first)."""
    months, day, last = [], _month_start(first_month), _month_start(last_month)
    while day <= last:
        months.append(day.strftime(MONTH_FMT))
        day = _next_month(day)
    return months


_SETTINGS = load_settings()

monthly_partitions = month_range_partitions(*profile_months(_SETTINGS))
test_month_partitions = month_range_partitions(*eval_months(_SETTINGS))
