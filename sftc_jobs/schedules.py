"""The nightly CPU validation: 02:00 UTC, on a CPU node, running `cpu_validation` over the toy chain."""

from __future__ import annotations

import dagster as dg

from sftc_core.settings import Settings
from sftc_platform.routing import launched_run_tags


def nightly_cpu_validation_schedule(job: dg.JobDefinition, settings: Settings, running: bool) -> dg.ScheduleDefinition:
    """`running`: on by default (the toy profile); a full-profile code location carries it stopped."""
    return dg.ScheduleDefinition(
        name="nightly_cpu_validation",
        job=job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        tags=launched_run_tags("cpu", settings),
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description=(
            "Every night at 02:00 UTC: the toy chain end to end on a CPU node, its checks, and validation_report."
        ),
    )
