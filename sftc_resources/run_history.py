"""What a run did, read from the Dagster instance: its asset check evaluations and the errors of its failed steps.

The one module that calls a `DagsterInstance` method outside Dagster's documented API (`get_records_for_run`):
no documented query returns a run's check evaluations or step failures. tests/test_run_history.py pins what
it returns, so a Dagster upgrade that changes it fails there, not silently in the validation report.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class StepFailure:
    step_key: str
    message: str  # the user's exception message, not Dagster's "error occurred while executing" wrapper


def _records(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=event_type).records]


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    return [entry.dagster_event.event_specific_data for entry in _records(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)]


def step_failures(instance: dg.DagsterInstance, run_id: str) -> list[StepFailure]:
    failures = []
    for entry in _records(instance, run_id, dg.DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.event_specific_data.error
        while error.cause is not None:
            error = error.cause
        failures.append(StepFailure(entry.dagster_event.step_key or "", error.message.strip()))
    return failures
