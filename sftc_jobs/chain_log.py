"""What a chain run tells people, from Dagster's own event stream: one line as each asset starts and one as it ends
(its partitions, the seconds it took, its key figure), a line for a failed check, and for a failed step one block
with the asset, the partitions, the cause in the project's own words, and where the details are.

The chain's runs carry `chain_logger(...)` as their only Dagster logger: each of its records goes to the Python
logger `sftc.dagster` (the command's log file, the terminal with -v) and through `RunReport` to the chain's log
(`sftc run`'s terminal; in `cpu_validation`, the op's Dagster log). An asset names its key figure with
`sftc_platform.metadata.report_summary`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dagster as dg

from sftc_core.text import format_duration
from sftc_jobs import terminal
from sftc_platform.metadata import SUMMARY_EXTRA
from sftc_platform.run_history import failure_message

DAGSTER_EVENTS = logging.getLogger(terminal.DAGSTER_EVENTS)  # the logger the terminal keeps off the screen
EVENT = "dagster_event"
META = "dagster_meta"


class RunReport:
    """Turns one run's Dagster records into the chain's lines on `log`; `failure` is the block of a failed step."""

    def __init__(self, log, keys: Sequence[dg.AssetKey], span: tuple[str, str] | None):
        self.log = log
        self.assets = {key.to_user_string() for key in keys}
        self.partitions = "" if span is None else f" {span[0]}" if span[0] == span[1] else f" {span[0]}..{span[1]}"
        self.started: dict[str, float] = {}
        self.summaries: dict[str, str] = {}
        self.failure: str | None = None
        self.failed_asset: str | None = None
        # A blocking check's own words name the cause; Dagster's step failure only says that it failed.
        self.failed_checks: list[str] = []

    def handle(self, record: logging.LogRecord) -> None:
        step = (getattr(record, META, None) or {}).get("step_key") or ""
        if SUMMARY_EXTRA in record.__dict__:
            self.summaries[step] = record.__dict__[SUMMARY_EXTRA]
        event: dg.DagsterEvent | None = getattr(record, EVENT, None)
        if event is None:
            if record.levelno >= logging.WARNING and step:
                self.log.warning(
                    "  %s: %s", step, (getattr(record, META, None) or {}).get("orig_message", record.getMessage())
                )
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START and step in self.assets:
            self.started[step] = record.created
            self.log.info("  %s%s ...", step, self.partitions)
        elif kind == dg.DagsterEventType.STEP_SUCCESS and step in self.assets:
            seconds = record.created - self.started.get(step, record.created)
            summary = self.summaries.get(step)
            self.log.info(
                "  %s%s done in %s%s",
                step,
                self.partitions,
                format_duration(seconds),
                f": {summary}" if summary else "",
            )
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation: dg.AssetCheckEvaluation = event.event_specific_data
            if not evaluation.passed:
                severity = "warning" if evaluation.severity == dg.AssetCheckSeverity.WARN else "FAILED"
                detail = f": {evaluation.description}" if evaluation.description else ""
                if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                    self.failed_checks.append(f"check {evaluation.check_name} failed{detail}")
                self.log.warning(
                    "  check %s of %s %s%s",
                    evaluation.check_name,
                    evaluation.asset_key.to_user_string(),
                    severity,
                    detail,
                )
        elif kind == dg.DagsterEventType.STEP_FAILURE:
            seconds = record.created - self.started.get(step, record.created)
            asset = (
                step
                if step in self.assets
                else next((a for a in sorted(self.assets, key=len, reverse=True) if step.startswith(f"{a}_")), step)
            )
            self.failed_asset = asset
            what = asset if asset == step else f"{asset} (its check step {step})"
            cause = failure_message(event.event_specific_data.error)
            self.failure = f"FAILED: {what}{self.partitions} (after {format_duration(seconds)})\n  cause: {cause}"
            self.failure += "".join(f"\n  {line}" for line in self.failed_checks)
            self.log.error("  %s%s FAILED after %s", asset, self.partitions, format_duration(seconds))


class _ToReport(logging.Handler):
    def __init__(self, report: RunReport):
        super().__init__()
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        DAGSTER_EVENTS.handle(record)
        self.report.handle(record)


def chain_logger(report: RunReport) -> dg.LoggerDefinition:
    """The Dagster logger of one chain run: its records to the log file and to `report` (Dagster's console
    logger, which prints every DEBUG event, is left out)."""

    @dg.logger(
        description=(
            "sftc chain run: Dagster's event stream to the log file, each asset's start and end to the chain's log"
        )
    )
    def sftc_chain(_init_context) -> logging.Logger:
        logger = logging.Logger(DAGSTER_EVENTS.name, logging.DEBUG)
        logger.addHandler(_ToReport(report))
        return logger

    return sftc_chain
