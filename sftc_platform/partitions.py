"""Month partitions, built from the settings by the stages that own them: keys are `YYYY-MM`, the same strings
as the artifact paths use (raw_xml / thesis_jsonl over the profile's months, eval_csv over the test window's)."""

from __future__ import annotations

import dagster as dg

from sftc_core.months import MONTH_FMT, month_start, next_month


def month_partitions(months: list[str]) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions over `months` (consecutive YYYY-MM, first to last); Dagster's end date is exclusive."""
    if not months:
        raise ValueError("no months to partition by: the window's last month is before its first")
    end = next_month(month_start(months[-1]))
    return dg.MonthlyPartitionsDefinition(start_date=months[0], end_date=end.strftime(MONTH_FMT), fmt=MONTH_FMT)
