"""What a run did, read from the Dagster instance (its asset check evaluations and the errors of its failed
steps), and runs that died marked as failed.

The one module that calls `DagsterInstance` methods outside Dagster's documented API: `get_records_for_run`
(no documented query returns a run's check evaluations, step failures or step times) and `report_run_failed` (no
documented call ends a run whose process died outside a run launcher). tests/test_run_history.py pins what
they do, so a Dagster upgrade that changes them fails there, not silently in the report or `sftc run`.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from sftc_platform.routing import ASSETS_TAG, DATA_DIR_TAG


@dataclass(frozen=True)
class StepFailure:
    step_key: str
    message: str  # the user's exception message, not Dagster's "error occurred while executing" wrapper


def _records(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=event_type).records]


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    return [
        entry.dagster_event.event_specific_data
        for entry in _records(instance, run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]


def failure_message(error) -> str:
    """The message of the exception at the root of a step's error (Dagster's SerializableErrorInfo), without
    Dagster's "error occurred while executing" wrappers and without the class name of a `dg.Failure`."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    return message.split(": ", 1)[1] if error.cls_name in _OWN_WORDS and ": " in message else message


# Exceptions whose message is the project's own sentence: shown without their class name.
_OWN_WORDS = {
    "Failure",
    "ValueError",
    "RuntimeError",
    "OSError",
    "FileNotFoundError",
    "ConfigError",
    "OutputError",
    "LaunchError",
    "CorpusError",
}


def step_failures(instance: dg.DagsterInstance, run_id: str) -> list[StepFailure]:
    return [
        StepFailure(entry.dagster_event.step_key or "", failure_message(entry.dagster_event.event_specific_data.error))
        for entry in _records(instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    ]


def step_seconds(instance: dg.DagsterInstance, run_id: str, step_key: str) -> float | None:
    """Wall seconds of a run's step, from its start to its success (None: it did not run or did not succeed)."""
    starts = [e.timestamp for e in _records(instance, run_id, dg.DagsterEventType.STEP_START) if e.step_key == step_key]
    ends = [e.timestamp for e in _records(instance, run_id, dg.DagsterEventType.STEP_SUCCESS) if e.step_key == step_key]
    return ends[-1] - starts[0] if starts and ends else None


def latest_step_seconds(instance: dg.DagsterInstance, asset: str, partitions: list[str] | None = None) -> float | None:
    """Wall seconds of the steps that wrote the asset's latest materialization (of each partition: each run's step
    counted once); None when one is missing."""
    key = dg.AssetKey(asset)
    if partitions is None:
        events = [instance.get_latest_materialization_event(key)]
    else:
        events = [
            next(
                iter(
                    instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[p]), limit=1
                    ).records
                ),
                None,
            )
            for p in partitions
        ]
    if not events or None in events:
        return None
    seconds = [step_seconds(instance, run_id, asset) for run_id in {event.run_id for event in events}]
    return None if None in seconds else sum(seconds)


UNFINISHED = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]


def fail_interrupted_runs(instance: dg.DagsterInstance, data_dir: str) -> list[str]:
    """Mark failed every unfinished run of the chain (tagged with the assets it materializes) on `data_dir`.
    Call it holding the data directory's lock: every run of the chain holds it while it runs, so an unfinished
    one found then has died (killed, or its machine lost). Runs the daemon launched are its run monitoring's.
    Returns their run ids."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED, tags={DATA_DIR_TAG: data_dir}))
    records = [record for record in records if ASSETS_TAG in record.dagster_run.tags]
    for record in records:
        instance.report_run_failed(
            record.dagster_run,
            "the process running it ended before the run did (killed or lost); marked failed by the next sftc run",
        )
    return [record.dagster_run.run_id for record in records]
