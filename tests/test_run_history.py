"""The two DagsterInstance methods outside Dagster's documented API that sftc_platform.run_history calls, pinned:
`get_records_for_run` (a run's check evaluations, step failures and step times) and `report_run_failed` (ending a run
whose process died). A Dagster upgrade that changes either fails here, not silently in the report or `sftc run`."""

from __future__ import annotations

import time

import dagster as dg

from sftc_platform import run_history
from sftc_platform.routing import ASSETS_TAG, DATA_DIR_TAG


@dg.asset
def counted() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset_check(asset=counted)
def has_rows() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="no rows at all")


@dg.asset
def broken() -> None:
    raise ValueError("the price file AAPL.parquet cannot be read")


def test_check_evaluations_and_step_failures_of_a_run():
    with dg.DagsterInstance.ephemeral() as instance:
        ok = dg.materialize([counted, has_rows], instance=instance)
        (evaluation,) = run_history.check_evaluations(instance, ok.run_id)
        assert (evaluation.asset_key, evaluation.check_name, evaluation.passed) == (
            dg.AssetKey("counted"),
            "has_rows",
            False,
        )
        failed = dg.materialize([broken], instance=instance, raise_on_error=False)
        # The user's exception, not Dagster's "error occurred while executing" wrapper around it.
        assert run_history.step_failures(instance, failed.run_id) == [
            run_history.StepFailure("broken", "the price file AAPL.parquet cannot be read")
        ]


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["2012-09", "2012-10"]))
def slow_month(context) -> None:
    time.sleep(0.3 if context.partition_key == "2012-09" else 0.6)


def test_step_seconds_time_the_steps_of_the_latest_materializations():
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_history.latest_step_seconds(instance, "slow_month", ["2012-09"]) is None  # never materialized
        runs = {
            month: dg.materialize([slow_month], instance=instance, partition_key=month)
            for month in ("2012-09", "2012-10")
        }
        first = run_history.step_seconds(instance, runs["2012-09"].run_id, "slow_month")
        second = run_history.step_seconds(instance, runs["2012-10"].run_id, "slow_month")
        assert 0.3 <= first < second and second >= 0.6
        assert run_history.step_seconds(instance, runs["2012-09"].run_id, "counted") is None  # no such step in that run
        assert run_history.latest_step_seconds(instance, "slow_month", ["2012-09", "2012-10"]) == first + second
        again = dg.materialize([slow_month], instance=instance, partition_key="2012-09")  # the latest one counts
        assert run_history.latest_step_seconds(instance, "slow_month", ["2012-09"]) == run_history.step_seconds(
            instance, again.run_id, "slow_month"
        )
        assert (
            run_history.latest_step_seconds(instance, "slow_month", ["2012-09", "2012-11"]) is None
        )  # a month not written
        whole = dg.materialize([counted], instance=instance)
        assert (
            run_history.latest_step_seconds(instance, "counted")
            == run_history.step_seconds(instance, whole.run_id, "counted")
            > 0
        )


def test_unfinished_chain_runs_of_a_data_directory_are_marked_failed():
    """Runs as a killed process leaves them: STARTED. Only the chain's runs (tagged with their assets) on the data
    directory are ended, with report_run_failed."""
    with dg.DagsterInstance.ephemeral() as instance:

        def started(run_id: str, tags: dict) -> str:
            instance.add_run(
                dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
            )
            return run_id

        mine = started("mine", {ASSETS_TAG: "counted", DATA_DIR_TAG: "/data/a"})
        elsewhere = started("elsewhere", {ASSETS_TAG: "counted", DATA_DIR_TAG: "/data/b"})
        not_chain = started("not-chain", {DATA_DIR_TAG: "/data/a"})
        assert run_history.fail_interrupted_runs(instance, "/data/a") == [mine]
        assert instance.get_run_by_id(mine).status == dg.DagsterRunStatus.FAILURE
        assert {instance.get_run_by_id(run_id).status for run_id in (elsewhere, not_chain)} == {
            dg.DagsterRunStatus.STARTED
        }
        assert run_history.fail_interrupted_runs(instance, "/data/a") == []  # ended once
